//! Turns a CSV record into the request body ([`InboundMessage`]) or the list of what is wrong
//! with it. The [`Mapping`] is built once from the header and the user's `--map` / `--set`
//! (DESIGN "Mapping rows to the request body"); [`Mapping::map`] is then pure per row.

use std::collections::HashMap;

use anyhow::{Result, bail};
use csv::ByteRecord;

use crate::message::{
    CallData, CallStatus, Direction, InboundMessage, MessageType, SpecEnum, fold,
};
use crate::reader::{Column, RowError};
use crate::validate::{self, DateReader, Invalid, Problem};

macro_rules! fields {
    ($($variant:ident = $name:literal),+ $(,)?) => {
        /// A field of the request body that a column or `--set` can fill.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Field { $($variant),+ }
        impl Field {
            pub const ALL: &'static [Field] = &[$(Field::$variant),+];
            /// The spec's name (`call.to` for the call object's fields).
            pub fn name(self) -> &'static str {
                match self { $(Field::$variant => $name),+ }
            }
        }
    };
}

fields!(
    Type = "type",
    ConversationId = "conversationId",
    ContactId = "contactId",
    ConversationProviderId = "conversationProviderId",
    Message = "message",
    Attachments = "attachments",
    Html = "html",
    Subject = "subject",
    EmailFrom = "emailFrom",
    EmailTo = "emailTo",
    EmailCc = "emailCc",
    EmailBcc = "emailBcc",
    EmailMessageId = "emailMessageId",
    AltId = "altId",
    Direction = "direction",
    Date = "date",
    CallTo = "call.to",
    CallFrom = "call.from",
    CallStatus = "call.status",
    // Not sent: they find or create the contact when a row has no contactId (issue 7).
    ContactPhone = "contactPhone",
    ContactEmail = "contactEmail",
    ContactName = "contactName",
    FirstName = "firstName",
    LastName = "lastName",
    LocationId = "locationId",
);

impl Field {
    /// Reads a field name as a user writes it (`conversation_id`, `Call To`), or says which
    /// names exist.
    pub fn from_user(name: &str) -> Result<Field, String> {
        let folded = fold(name);
        if let Some(f) = Field::ALL.iter().find(|f| fold(f.name()) == folded) {
            return Ok(*f);
        }
        let hint =
            crate::message::closest(&folded, Field::ALL.iter().map(|f| (fold(f.name()), *f)))
                .map(|f| format!("; did you mean {}?", f.name()))
                .unwrap_or_default();
        Err(format!(
            "'{name}' is not a field of the request body{hint} Fields: {}",
            Field::ALL
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    fn index(self) -> usize {
        Field::ALL
            .iter()
            .position(|f| *f == self)
            .expect("every field is in Field::ALL")
    }
}

/// Fields every message needs. `direction` is among them because the API's default is
/// `outbound`, which would silently misfile inbound history (FACTS §2). With ID resolution on,
/// `contactId` and `conversationId` may be left for [`crate::resolve`] to find.
const REQUIRED: &[Field] = &[
    Field::Type,
    Field::ConversationId,
    Field::ContactId,
    Field::Direction,
];

/// Fields that say who the contact is when a row has no HighLevel IDs; any of them turns ID
/// resolution on.
const RESOLUTION: &[Field] = &[Field::ContactPhone, Field::ContactEmail, Field::LocationId];

/// Fields only used to create a contact: matched to columns only when resolution is on, so an
/// export that merely carries a `contact_name` column is not changed by their existence.
const CONTACT_DETAILS: &[Field] = &[Field::ContactName, Field::FirstName, Field::LastName];

/// A row mapped: the request body and, when its IDs are to be resolved, who its contact is.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MappedRow {
    /// `contactId` / `conversationId` are empty when `lookup` is to find them.
    pub message: InboundMessage,
    pub lookup: Option<Box<crate::resolve::Lookup>>,
}

/// What the user said about columns: the raw `--map`, `--set` and reading options.
#[derive(Clone, Debug)]
pub struct MappingOptions {
    /// `--map FIELD=COLUMN`, in order; a later one for the same field wins.
    pub maps: Vec<(String, String)>,
    /// `--set FIELD=VALUE`, in order; a later one for the same field wins.
    pub sets: Vec<(String, String)>,
    pub list_sep: char,
    pub dates: DateReader,
    /// `--key-column`; else `altId` when mapped, else a hash of the record.
    pub key_column: Option<String>,
    /// `--default-country`: how national phone numbers in `contactPhone` are read.
    pub default_country: Option<crate::resolve::phone::Country>,
}

impl Default for MappingOptions {
    fn default() -> Self {
        MappingOptions {
            maps: Vec::new(),
            sets: Vec::new(),
            list_sep: ';',
            dates: DateReader::default(),
            key_column: None,
            default_country: None,
        }
    }
}

/// Where a field's value comes from.
#[derive(Clone, Debug)]
enum Source {
    Column(usize),
    /// A `--set` value, already checked.
    Constant(String),
}

/// The plan for turning every record of one input into a request body.
#[derive(Clone, Debug)]
pub struct Mapping {
    header: Vec<String>,
    sources: Vec<Option<Source>>,
    key: Option<usize>,
    list_sep: char,
    dates: DateReader,
    default_country: Option<crate::resolve::phone::Country>,
    /// A contactPhone, contactEmail or locationId source exists: rows may leave their IDs to
    /// [`crate::resolve`].
    resolving: bool,
    /// Said once, before the first row: columns that map to nothing, and similar.
    pub warnings: Vec<String>,
}

impl Mapping {
    /// Builds the plan from a header. Errors are the user's configuration (exit 2): a `--map`
    /// naming a field or column that does not exist, two columns for one field, a bad `--set`.
    pub fn new(header: &[String], options: &MappingOptions) -> Result<Mapping> {
        let mut sources: Vec<Option<Source>> = vec![None; Field::ALL.len()];
        let mut used = vec![false; header.len()];
        let mut warnings = Vec::new();

        // Explicit --map first: they take a column away from default matching.
        let mut mapped: HashMap<Field, usize> = HashMap::new();
        for (field, column) in &options.maps {
            let field = Field::from_user(field)
                .map_err(|e| anyhow::anyhow!("--map {field}={column}: {e}"))?;
            let index = find_column(header, column)
                .map_err(|e| anyhow::anyhow!("--map {}={column}: {e}", field.name()))?;
            mapped.insert(field, index);
        }
        for (field, index) in &mapped {
            sources[field.index()] = Some(Source::Column(*index));
            used[*index] = true;
        }

        // Resolution is on when the user maps or sets a field that names the contact, or a
        // column of that name exists.
        let resolving = RESOLUTION.iter().any(|f| {
            mapped.contains_key(f)
                || options
                    .sets
                    .iter()
                    .any(|(name, v)| Field::from_user(name) == Ok(*f) && !v.trim().is_empty())
                || header.iter().any(|h| fold(h) == fold(f.name()))
        });

        // Default matching: a column whose folded name is a field's folded name.
        for field in Field::ALL {
            if mapped.contains_key(field) || (!resolving && CONTACT_DETAILS.contains(field)) {
                continue;
            }
            let folded = fold(field.name());
            let matches: Vec<usize> = header
                .iter()
                .enumerate()
                .filter(|(i, name)| !used[*i] && fold(name) == folded)
                .map(|(i, _)| i)
                .collect();
            match matches.as_slice() {
                [] => {}
                [i] => {
                    sources[field.index()] = Some(Source::Column(*i));
                    used[*i] = true;
                }
                [a, b, ..] => bail!(
                    "columns {} ({}) and {} ({}) both match field {}: rename one, or choose with --map {}=COLUMN",
                    a + 1,
                    header[*a],
                    b + 1,
                    header[*b],
                    field.name(),
                    field.name()
                ),
            }
        }

        // --set: a constant for every row, checked once below so a bad one stops at once.
        let mut constants = Vec::new();
        for (field, value) in &options.sets {
            let field = Field::from_user(field)
                .map_err(|e| anyhow::anyhow!("--set {field}={value}: {e}"))?;
            let value = value.trim().to_owned();
            if let Some(Source::Column(i)) = &sources[field.index()] {
                used[*i] = true;
                warnings.push(format!(
                    "column {} ({}) is ignored: --set {}={} gives every row's {}",
                    i + 1,
                    header[*i],
                    field.name(),
                    value,
                    field.name()
                ));
            }
            sources[field.index()] = Some(Source::Constant(value.clone()));
            constants.push((field, value));
        }

        // A required field with no source would make every row invalid: say so once, now.
        let names_contact = sources[Field::ContactPhone.index()].is_some()
            || sources[Field::ContactEmail.index()].is_some();
        for field in REQUIRED {
            let resolved = match field {
                Field::ConversationId => resolving,
                Field::ContactId => resolving && names_contact,
                _ => false,
            };
            if sources[field.index()].is_none() && !resolved {
                let how = match field {
                    Field::Type => format!("add a column named type, or --set type=SMS (one of {})", MessageType::list()),
                    Field::Direction => "add a column named direction, or --set direction=inbound (or outbound); the API would otherwise file every message as outbound".to_owned(),
                    Field::ContactId if resolving => "add a column named contactId, or contactPhone / contactEmail columns to find the contact by".to_owned(),
                    Field::ContactId | Field::ConversationId => format!("add a column named {0}, or --map {0}=COLUMN; or, to look the IDs up from phone numbers and e-mail addresses, contactPhone / contactEmail columns and --location-id", field.name()),
                    _ => format!("add a column named {0}, or --map {0}=COLUMN", field.name()),
                };
                bail!(
                    "no column maps to {}, which every message needs: {how}",
                    field.name()
                );
            }
        }

        let key = match &options.key_column {
            Some(column) => Some(
                find_column(header, column)
                    .map_err(|e| anyhow::anyhow!("--key-column {column}: {e}"))?,
            ),
            None => match &sources[Field::AltId.index()] {
                Some(Source::Column(i)) => Some(*i),
                _ => None,
            },
        };
        if let Some(k) = key {
            used[k] = true;
        }

        let unmapped: Vec<String> = header
            .iter()
            .enumerate()
            .filter(|(i, _)| !used[*i])
            .map(|(i, name)| {
                if name.is_empty() {
                    format!("#{}", i + 1)
                } else {
                    name.clone()
                }
            })
            .collect();
        if !unmapped.is_empty() {
            const SHOWN: usize = 12;
            let mut list = unmapped
                .iter()
                .take(SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if unmapped.len() > SHOWN {
                list.push_str(&format!(" and {} more", unmapped.len() - SHOWN));
            }
            let (count, verb) = match unmapped.len() {
                1 => ("1 column maps".to_owned(), "is"),
                n => (format!("{n} columns map"), "are"),
            };
            warnings.push(format!(
                "{count} to no field and {verb} not sent: {list} (use --map FIELD=COLUMN to send one)"
            ));
        }

        let needs_location = sources[Field::ConversationId.index()].is_none()
            || sources[Field::ContactId.index()].is_none();
        if resolving && needs_location && sources[Field::LocationId.index()].is_none() {
            bail!(
                "looking up contacts and conversations needs the sub-account: give --location-id ID, or a locationId column"
            );
        }

        let mapping = Mapping {
            header: header.to_vec(),
            sources,
            key,
            list_sep: options.list_sep,
            dates: options.dates.clone(),
            default_country: options.default_country,
            resolving,
            warnings,
        };
        for (field, value) in constants {
            if !value.is_empty()
                && let Err(e) = mapping.convert(field, &value)
            {
                bail!("--set {}={value}: {e}", field.name());
            }
        }
        Ok(mapping)
    }

    /// The column a field is read from, if any.
    pub fn column_of(&self, field: Field) -> Option<&str> {
        match &self.sources[field.index()] {
            Some(Source::Column(i)) => Some(&self.header[*i]),
            _ => None,
        }
    }

    /// The row's `conversationId` as written in its cell (or `--set`), trimmed; not checked.
    pub fn conversation_cell<'a>(&'a self, cells: &'a ByteRecord) -> Option<&'a str> {
        match self.sources[Field::ConversationId.index()].as_ref()? {
            Source::Constant(v) => Some(v.as_str()),
            Source::Column(i) => std::str::from_utf8(cells.get(*i)?).ok().map(str::trim),
        }
    }

    /// The identity of a record as read: [`Mapping::key`], or the hash of every cell when the
    /// record is broken (its cells are shifted, so the key column cannot be trusted).
    pub fn record_key(&self, record: &crate::reader::Record<'_>) -> String {
        match record.broken {
            Some(_) => record_hash(record.cells),
            None => self.key(record.cells),
        }
    }

    /// The row's identity for resume and duplicate detection: the key column's value, or
    /// `h:` and a 128-bit hash of every cell (also when the key cell is empty).
    pub fn key(&self, cells: &ByteRecord) -> String {
        if let Some(k) = self.key
            && let Some(value) = cells.get(k).and_then(|v| std::str::from_utf8(v).ok())
        {
            let value = value.trim();
            if !value.is_empty() {
                return value.to_owned();
            }
        }
        record_hash(cells)
    }

    /// Whether rows may leave `contactId` / `conversationId` to be looked up.
    pub fn resolving(&self) -> bool {
        self.resolving
    }

    /// Maps and validates one record. Every problem of the row is reported, not just the first.
    pub fn map(&self, cells: &ByteRecord, line: u64) -> Result<InboundMessage, Vec<RowError>> {
        self.map_row(cells, line).map(|row| row.message)
    }

    /// [`Mapping::map`], with who the contact is when its IDs are to be looked up.
    pub fn map_row(&self, cells: &ByteRecord, line: u64) -> Result<MappedRow, Vec<RowError>> {
        let mut errors = Vec::new();
        let mut m = InboundMessage::default();
        let mut call = CallData::default();
        let mut lookup = crate::resolve::Lookup::default();
        for field in Field::ALL {
            let before = errors.len();
            let Some(value) = self.read_field(cells, line, *field, &mut errors) else {
                let resolved =
                    self.resolving && matches!(field, Field::ConversationId | Field::ContactId);
                if errors.len() == before && REQUIRED.contains(field) && !resolved {
                    errors.push(self.missing(line, *field));
                }
                continue;
            };
            match value {
                Value::Text(text) => match field {
                    Field::ContactPhone => lookup.phone = Some(text),
                    Field::ContactEmail => lookup.email = Some(text),
                    Field::ContactName => lookup.name = Some(text),
                    Field::FirstName => lookup.first_name = Some(text),
                    Field::LastName => lookup.last_name = Some(text),
                    Field::LocationId => lookup.location_id = text,
                    Field::ConversationId => m.conversation_id = text,
                    Field::ContactId => m.contact_id = text,
                    Field::ConversationProviderId => m.conversation_provider_id = Some(text),
                    Field::Message => m.message = Some(text),
                    Field::Html => m.html = Some(text),
                    Field::Subject => m.subject = Some(text),
                    Field::EmailFrom => m.email_from = Some(text),
                    Field::EmailTo => m.email_to = Some(text),
                    Field::EmailMessageId => m.email_message_id = Some(text),
                    Field::AltId => m.alt_id = Some(text),
                    Field::Date => m.date = Some(text),
                    Field::CallTo => call.to = Some(text),
                    Field::CallFrom => call.from = Some(text),
                    _ => unreachable!("read_field gives text only for text fields"),
                },
                Value::List(items) => match field {
                    Field::Attachments => m.attachments = items,
                    Field::EmailCc => m.email_cc = items,
                    Field::EmailBcc => m.email_bcc = items,
                    _ => unreachable!("read_field gives lists only for list fields"),
                },
                Value::Type(t) => m.kind = t,
                Value::Direction(d) => m.direction = d,
                Value::CallStatus(s) => call.status = Some(s),
            }
        }
        if call != CallData::default() {
            m.call = Some(call);
        }
        let lookup = if self.resolving && errors.is_empty() {
            self.check_lookup(&m, lookup, line, &mut errors)
        } else {
            None
        };
        if errors.is_empty() {
            for invalid in validate::check_message(&m) {
                errors.push(RowError {
                    line,
                    column: None,
                    invalid,
                });
            }
        }
        if errors.is_empty() {
            Ok(MappedRow { message: m, lookup })
        } else {
            Err(errors)
        }
    }

    /// With resolution on: a row needs a contactId or a contactPhone / contactEmail to find it
    /// by, and a location for any lookup. `None` when the row has both IDs already.
    fn check_lookup(
        &self,
        m: &InboundMessage,
        lookup: crate::resolve::Lookup,
        line: u64,
        errors: &mut Vec<RowError>,
    ) -> Option<Box<crate::resolve::Lookup>> {
        if !m.contact_id.is_empty() && !m.conversation_id.is_empty() {
            return None;
        }
        if m.contact_id.is_empty() && lookup.phone.is_none() && lookup.email.is_none() {
            errors.push(RowError {
                line,
                column: None,
                invalid: Invalid::new(
                    Problem::Missing,
                    "the row has no contactId, contactPhone or contactEmail: one of them is needed to find its contact",
                ),
            });
        }
        if lookup.location_id.is_empty() {
            errors.push(RowError {
                line,
                column: self.column(Field::LocationId),
                invalid: Invalid::new(
                    Problem::Missing,
                    "locationId is empty: looking up the contact or conversation needs the sub-account; give --location-id ID",
                ),
            });
        }
        Some(Box::new(lookup))
    }

    fn column(&self, field: Field) -> Option<Column> {
        match &self.sources[field.index()] {
            Some(Source::Column(i)) => Some(Column::Csv(*i, self.header[*i].clone())),
            _ => None,
        }
    }

    fn missing(&self, line: u64, field: Field) -> RowError {
        let column = match &self.sources[field.index()] {
            Some(Source::Column(i)) => Some(Column::Csv(*i, self.header[*i].clone())),
            _ => None,
        };
        let accepted = match field {
            Field::Type => format!("one of {}; or --set type=SMS for every row", MessageType::list()),
            Field::Direction => {
                "inbound or outbound, or --set direction=inbound for every row; the API would otherwise file the message as outbound".to_owned()
            }
            Field::ConversationId | Field::ContactId => {
                format!("the HighLevel ID; or --map {}=COLUMN", field.name())
            }
            _ => String::new(),
        };
        RowError {
            line,
            column,
            invalid: Invalid::new(
                Problem::Missing,
                format!(
                    "{} is empty: every message needs it; expected {accepted}",
                    field.name()
                ),
            ),
        }
    }

    /// Reads, normalises and checks one field. `None` when empty or broken (then `errors` has it).
    fn read_field(
        &self,
        cells: &ByteRecord,
        line: u64,
        field: Field,
        errors: &mut Vec<RowError>,
    ) -> Option<Value> {
        let (raw, column) = match self.sources[field.index()].as_ref()? {
            Source::Constant(v) => (v.as_str(), Column::Set(field.name())),
            Source::Column(i) => {
                let bytes = cells.get(*i)?;
                let column = Column::Csv(*i, self.header[*i].clone());
                match std::str::from_utf8(bytes) {
                    Ok(s) => (s, column),
                    Err(e) => {
                        errors.push(RowError {
                            line,
                            column: Some(column),
                            invalid: Invalid::new(
                                Problem::Encoding,
                                format!(
                                    "the cell is not valid UTF-8 (byte {} of the cell is not): save the export as UTF-8",
                                    e.valid_up_to() + 1
                                ),
                            ),
                        });
                        return None;
                    }
                }
            }
        };
        let value = match field {
            // Bodies are sent as written; only an all-blank cell counts as empty.
            Field::Message | Field::Html | Field::Subject => {
                if raw.trim().is_empty() {
                    return None;
                } else {
                    raw
                }
            }
            _ => {
                let t = raw.trim();
                if t.is_empty() {
                    return None;
                }
                t
            }
        };
        let result = self.convert(field, value);
        match result {
            Ok(v) => Some(v),
            Err(invalid) => {
                errors.push(RowError {
                    line,
                    column: Some(column),
                    invalid,
                });
                None
            }
        }
    }

    fn convert(&self, field: Field, value: &str) -> Result<Value, Invalid> {
        let name = field.name();
        Ok(match field {
            Field::Type => Value::Type(enum_value::<MessageType>(name, value, Problem::Type)?),
            Field::Direction => {
                Value::Direction(enum_value::<Direction>(name, value, Problem::Direction)?)
            }
            Field::CallStatus => {
                Value::CallStatus(enum_value::<CallStatus>(name, value, Problem::CallStatus)?)
            }
            Field::ConversationId
            | Field::ContactId
            | Field::ConversationProviderId
            | Field::LocationId => {
                validate::check_id(name, value)?;
                Value::Text(value.to_owned())
            }
            Field::EmailFrom | Field::EmailTo => {
                validate::check_email(name, value)?;
                Value::Text(value.to_owned())
            }
            Field::EmailCc | Field::EmailBcc => {
                let items = validate::split_list(name, value, self.list_sep)?;
                for item in &items {
                    validate::check_email(name, item)?;
                }
                Value::List(items)
            }
            Field::Attachments => {
                let items = validate::split_list(name, value, self.list_sep)?;
                for item in &items {
                    validate::check_attachment(item)?;
                }
                Value::List(items)
            }
            Field::Date => Value::Text(self.dates.read(value)?),
            Field::CallTo | Field::CallFrom => Value::Text(validate::normalize_phone(name, value)?),
            Field::ContactPhone => Value::Text(crate::resolve::phone::normalize(
                name,
                value,
                self.default_country,
            )?),
            Field::ContactEmail => {
                validate::check_email(name, value)?;
                // The key of the ID map; HighLevel matches addresses without regard to case.
                Value::Text(value.to_lowercase())
            }
            Field::ContactName | Field::FirstName | Field::LastName => {
                Value::Text(value.to_owned())
            }
            Field::Message
            | Field::Html
            | Field::Subject
            | Field::EmailMessageId
            | Field::AltId => Value::Text(value.to_owned()),
        })
    }
}

enum Value {
    Text(String),
    List(Vec<String>),
    Type(MessageType),
    Direction(Direction),
    CallStatus(CallStatus),
}

fn enum_value<E: SpecEnum>(name: &str, value: &str, problem: Problem) -> Result<E, Invalid> {
    E::parse_lenient(value).map_err(|suggestion| {
        let hint = suggestion
            .map(|s| format!("; did you mean {}?", s.as_str()))
            .unwrap_or_default();
        Invalid::new(
            problem,
            format!(
                "{name} {} is not one of {}{hint}",
                validate::quote(value),
                E::list()
            ),
        )
    })
}

/// Finds a header column by exact name, else by folded name; errors list what exists.
fn find_column(header: &[String], column: &str) -> Result<usize, String> {
    if let Some(i) = header.iter().position(|h| h == column) {
        return Ok(i);
    }
    let folded = fold(column);
    let matches: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| fold(h) == folded)
        .map(|(i, _)| i)
        .collect();
    match matches.as_slice() {
        [i] => Ok(*i),
        [] => {
            let hint =
                crate::message::closest(&folded, header.iter().map(|h| (fold(h), h.clone())))
                    .map(|h| format!("; did you mean '{h}'?"))
                    .unwrap_or_default();
            let mut names: Vec<&str> = header.iter().map(String::as_str).take(20).collect();
            if header.len() > 20 {
                names.push("…");
            }
            Err(format!(
                "the input has no column '{column}'{hint} Columns: {}",
                names.join(", ")
            ))
        }
        several => Err(format!(
            "'{column}' matches {} columns ({}): name the column exactly as in the header",
            several.len(),
            several
                .iter()
                .map(|i| header[*i].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// `h:` and the hex of a 128-bit hash over every cell, length-prefixed so that cell
/// boundaries count (`a,bc` and `ab,c` differ).
pub fn record_hash(cells: &ByteRecord) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for cell in cells.iter() {
        hasher.update(&(cell.len() as u64).to_le_bytes());
        hasher.update(cell);
    }
    format!("h:{:032x}", hasher.digest128())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HEADER: &str = "Conversation ID,contact_id,TYPE,Direction,message,date,attachments,emailCc,call_to,call.status,conversationProviderId,notes";

    fn header() -> Vec<String> {
        HEADER.split(',').map(str::to_owned).collect()
    }

    fn record(cells: &[&str]) -> ByteRecord {
        let mut full: Vec<&str> = cells.to_vec();
        full.resize(header().len(), "");
        ByteRecord::from(full)
    }

    fn mapping(options: MappingOptions) -> Mapping {
        Mapping::new(&header(), &options).unwrap()
    }

    fn body(m: &Mapping, cells: &[&str]) -> serde_json::Value {
        serde_json::to_value(m.map(&record(cells), 2).unwrap()).unwrap()
    }

    fn errors(m: &Mapping, cells: &[&str]) -> Vec<String> {
        m.map(&record(cells), 7)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn default_names_ignore_case_and_separators() {
        let m = mapping(MappingOptions::default());
        assert_eq!(m.column_of(Field::ConversationId), Some("Conversation ID"));
        assert_eq!(m.column_of(Field::ContactId), Some("contact_id"));
        assert_eq!(m.column_of(Field::Type), Some("TYPE"));
        assert_eq!(m.column_of(Field::CallTo), Some("call_to"));
        assert_eq!(m.column_of(Field::CallStatus), Some("call.status"));
        assert_eq!(m.column_of(Field::Html), None);
        assert_eq!(
            m.warnings,
            vec![
                "1 column maps to no field and is not sent: notes (use --map FIELD=COLUMN to send one)"
            ]
        );
    }

    #[test]
    fn a_full_row_becomes_exactly_the_spec_body() {
        let m = mapping(MappingOptions::default());
        let got = body(
            &m,
            &[
                "c1",
                "k1",
                "sms",
                "Inbound",
                " hello ",
                "2024-03-01T14:30:00+02:00",
                "https://f.example.com/a.png; https://f.example.com/b.png",
                "",
                "",
                "",
                "",
                "a note",
            ],
        );
        assert_eq!(
            got,
            json!({
                "type": "SMS", "conversationId": "c1", "contactId": "k1", "direction": "inbound",
                "message": " hello ", "date": "2024-03-01T12:30:00Z",
                "attachments": ["https://f.example.com/a.png", "https://f.example.com/b.png"]
            })
        );
    }

    #[test]
    fn call_fields_build_the_call_object() {
        let m = mapping(MappingOptions::default());
        let got = body(
            &m,
            &[
                "c1",
                "k1",
                "call",
                "outbound",
                "",
                "",
                "",
                "",
                "+1 (503) 708-1210",
                "No Answer",
                "prov1",
            ],
        );
        assert_eq!(
            got,
            json!({
                "type": "Call", "conversationId": "c1", "contactId": "k1", "direction": "outbound",
                "conversationProviderId": "prov1",
                "call": {"to": "+15037081210", "status": "no-answer"}
            })
        );
    }

    #[test]
    fn each_rule_names_line_column_and_what_is_accepted() {
        let m = mapping(MappingOptions::default());
        let ok = [
            "c1", "k1", "SMS", "inbound", "hi", "", "", "", "", "", "", "",
        ];
        let with = |i: usize, v: &'static str| {
            let mut cells = ok;
            cells[i] = v;
            errors(&m, &cells)
        };
        let cases: &[(usize, &str, &str)] = &[
            (
                2,
                "Text",
                "line 7, column 3 (TYPE): type 'Text' is not one of SMS, RCS, Email, WhatsApp, GMB, IG, FB, Custom, WebChat, Live_Chat, Call, IVR_Call, Campaign_Call, Campaign_VoiceMail, TIKTOK, ALL_IN_ONE_CHAT, FORM_SUBMISSION; did you mean SMS?",
            ),
            (
                3,
                "sideways",
                "line 7, column 4 (Direction): direction 'sideways' is not one of inbound, outbound",
            ),
            (
                3,
                "",
                "line 7, column 4 (Direction): direction is empty: every message needs it; expected inbound or outbound, or --set direction=inbound for every row; the API would otherwise file the message as outbound",
            ),
            (
                0,
                "",
                "line 7, column 1 (Conversation ID): conversationId is empty: every message needs it; expected the HighLevel ID; or --map conversationId=COLUMN",
            ),
            (
                1,
                "ann@example.com",
                "line 7, column 2 (contact_id): contactId 'ann@example.com' is not a HighLevel ID (it looks like an e-mail address, not an ID): expected letters and digits such as ve9EPM428h8vShlRW1KT",
            ),
            (
                5,
                "2024-03-01 10:00",
                "line 7, column 6 (date): date '2024-03-01 10:00' has no UTC offset",
            ),
            (
                6,
                "photo.jpg",
                "line 7, column 7 (attachments): attachment 'photo.jpg' is not absolute",
            ),
            (
                7,
                "a@example.com;not-an-address",
                "line 7, column 8 (emailCc): emailCc 'not-an-address' is not an e-mail address",
            ),
            (
                8,
                "5037081210",
                "line 7, column 9 (call_to): call.to '5037081210' is not an E.164 phone number (the country code with a leading + is missing)",
            ),
            (
                9,
                "hung up",
                "line 7, column 10 (call.status): call.status 'hung up' is not one of pending, completed, answered, busy, no-answer, failed, canceled, voicemail",
            ),
            (
                4,
                "  ",
                "line 7: the message is empty: a row needs at least one of message, html, attachments or call.*",
            ),
        ];
        for (i, value, want) in cases {
            let got = with(*i, value);
            assert_eq!(got.len(), 1, "{value}: {got:?}");
            assert!(
                got[0].starts_with(want),
                "{value}:\n got {}\nwant {want}",
                got[0]
            );
        }
    }

    #[test]
    fn cross_field_rules_apply_to_mapped_rows() {
        let m = mapping(MappingOptions::default());
        let got = errors(&m, &["c1", "k1", "Custom", "inbound", "hi"]);
        assert_eq!(got.len(), 1);
        assert!(
            got[0].contains("type Custom needs a conversationProviderId"),
            "{got:?}"
        );
    }

    #[test]
    fn every_problem_of_a_row_is_reported() {
        let m = mapping(MappingOptions::default());
        let got = errors(&m, &["", "k 1", "Txt", "up", "hi"]);
        assert_eq!(got.len(), 4, "{got:?}");
    }

    #[test]
    fn invalid_utf8_is_a_cell_error() {
        let m = mapping(MappingOptions::default());
        let mut r = record(&["c1", "k1", "SMS", "inbound"]);
        let mut cells: Vec<Vec<u8>> = r.iter().map(<[u8]>::to_vec).collect();
        cells[4] = b"caf\xe9".to_vec();
        r = ByteRecord::from(cells);
        let got: Vec<String> = m
            .map(&r, 3)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            vec![
                "line 3, column 5 (message): the cell is not valid UTF-8 (byte 4 of the cell is not): save the export as UTF-8"
            ]
        );
    }

    #[test]
    fn map_and_set() {
        let m = mapping(MappingOptions {
            maps: vec![("message".into(), "notes".into())],
            sets: vec![
                ("type".into(), "email".into()),
                ("conversationProviderId".into(), "".into()),
            ],
            ..Default::default()
        });
        assert_eq!(m.column_of(Field::Message), Some("notes"));
        assert!(
            m.warnings
                .iter()
                .any(|w| w.contains("column 3 (TYPE) is ignored: --set type=email"))
        );
        let got = body(
            &m,
            &[
                "c1",
                "k1",
                "SMS",
                "inbound",
                "ignored",
                "",
                "",
                "",
                "",
                "",
                "",
                "from notes",
            ],
        );
        assert_eq!(got["type"], "Email");
        assert_eq!(got["message"], "from notes");
        assert!(got.get("conversationProviderId").is_none());
    }

    #[test]
    fn configuration_errors_stop_before_any_row() {
        let cases: &[(MappingOptions, &str)] = &[
            (
                MappingOptions {
                    maps: vec![("mesage".into(), "notes".into())],
                    ..Default::default()
                },
                "--map mesage=notes: 'mesage' is not a field of the request body; did you mean message?",
            ),
            (
                MappingOptions {
                    maps: vec![("message".into(), "Body".into())],
                    ..Default::default()
                },
                "--map message=Body: the input has no column 'Body' Columns: Conversation ID, contact_id",
            ),
            (
                MappingOptions {
                    sets: vec![("type".into(), "Text".into())],
                    ..Default::default()
                },
                "--set type=Text: type 'Text' is not one of SMS",
            ),
            (
                MappingOptions {
                    key_column: Some("id".into()),
                    ..Default::default()
                },
                "--key-column id: the input has no column 'id'",
            ),
        ];
        for (options, want) in cases {
            let err = Mapping::new(&header(), options).unwrap_err().to_string();
            assert!(err.starts_with(want), "\n got {err}\nwant {want}");
        }
        let no_direction: Vec<String> = ["conversationId", "contactId", "type", "message"]
            .map(String::from)
            .to_vec();
        let err = Mapping::new(&no_direction, &MappingOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("no column maps to direction"), "{err}");
        let twice: Vec<String> = [
            "conversationId",
            "contactId",
            "type",
            "direction",
            "message",
            "Message",
        ]
        .map(String::from)
        .to_vec();
        let err = Mapping::new(&twice, &MappingOptions::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "columns 5 (message) and 6 (Message) both match field message: rename one, or choose with --map message=COLUMN"
        );
    }

    #[test]
    fn keys() {
        let m = mapping(MappingOptions::default());
        let a = m.key(&record(&["c1", "k1", "SMS"]));
        assert!(a.starts_with("h:") && a.len() == 34, "{a}");
        assert_eq!(a, m.key(&record(&["c1", "k1", "SMS"])));
        assert_ne!(a, m.key(&record(&["c1", "k1", "SMs"])));
        // Cell boundaries count.
        assert_ne!(
            record_hash(&ByteRecord::from(vec!["ab", "c"])),
            record_hash(&ByteRecord::from(vec!["a", "bc"]))
        );
        let keyed = mapping(MappingOptions {
            key_column: Some("notes".into()),
            ..Default::default()
        });
        let mut cells = ["c1", "k1", "SMS", "", "", "", "", "", "", "", "", " ext-9 "];
        assert_eq!(keyed.key(&record(&cells)), "ext-9");
        cells[11] = "";
        assert!(
            keyed.key(&record(&cells)).starts_with("h:"),
            "an empty key cell falls back to the hash"
        );
    }

    #[test]
    fn rows_without_ids_name_their_contact_and_location() {
        let header: Vec<String> = [
            "contactPhone",
            "Contact Email",
            "locationId",
            "type",
            "direction",
            "message",
            "contact_name",
        ]
        .map(String::from)
        .to_vec();
        let options = MappingOptions {
            default_country: Some("US".parse().unwrap()),
            ..Default::default()
        };
        let m = Mapping::new(&header, &options).unwrap();
        assert!(m.resolving());
        assert_eq!(m.column_of(Field::ContactName), Some("contact_name"));
        let row = |cells: &[&str]| m.map_row(&ByteRecord::from(cells.to_vec()), 4);
        let ok = row(&[
            "(503) 708-1210",
            "Ann@Example.com",
            "L1",
            "SMS",
            "inbound",
            "hi",
            "Ann",
        ])
        .unwrap();
        let lookup = ok.lookup.unwrap();
        assert_eq!(lookup.phone.as_deref(), Some("+15037081210"));
        assert_eq!(lookup.email.as_deref(), Some("ann@example.com"));
        assert_eq!(lookup.name.as_deref(), Some("Ann"));
        assert_eq!(ok.message.contact_id, "");
        let errs = |cells: &[&str]| -> Vec<String> {
            row(cells)
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            errs(&["", "", "L1", "SMS", "inbound", "hi", ""]),
            [
                "line 4: the row has no contactId, contactPhone or contactEmail: one of them is needed to find its contact"
            ]
        );
        assert_eq!(
            errs(&["+15037081210", "", "", "SMS", "inbound", "hi", ""]),
            [
                "line 4, column 3 (locationId): locationId is empty: looking up the contact or conversation needs the sub-account; give --location-id ID"
            ]
        );
        assert!(
            errs(&["708", "", "L1", "SMS", "inbound", "hi", ""])[0]
                .contains("is not an E.164 phone number")
        );

        // Without a location source, or without any way to name the contact: refused at once.
        let no_location: Vec<String> = ["contactPhone", "type", "direction", "message"]
            .map(String::from)
            .to_vec();
        let err = Mapping::new(&no_location, &MappingOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("give --location-id ID"), "{err}");
        let no_contact: Vec<String> = ["locationId", "type", "direction", "message"]
            .map(String::from)
            .to_vec();
        let err = Mapping::new(&no_contact, &MappingOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("no column maps to contactId"), "{err}");
        // Without resolution a contact_name column is left alone, as before.
        assert_eq!(
            mapping(MappingOptions::default()).column_of(Field::ContactName),
            None
        );
    }
}
