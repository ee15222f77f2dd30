//! Turns a CSV record into the request body ([`InboundMessage`]) or the list of what is wrong
//! with it. The [`Mapping`] is built once from the header and the user's `--map` / `--set`
//! (DESIGN "Mapping rows to the request body"); [`Mapping::map`] is then pure per row.
//!
//! The work is split by stage: `columns` builds the [`Mapping`] from the header
//! ([`Mapping::new`]), `row` maps and checks one record ([`Mapping::map_row`]), and `key` gives a
//! record its identity for resume and duplicate detection ([`Mapping::record_key`]). This module
//! holds the fields of the request body and the plan they share.

mod columns;
mod key;
mod row;

use csv::ByteRecord;

pub use key::record_hash;
pub use row::ThreadPlace;

use crate::message::{Direction, InboundMessage, fold};
use crate::reader::Column;
use crate::validate::DateReader;

macro_rules! fields {
    ($($(#[$vmeta:meta])* $variant:ident = $name:literal),+ $(,)?) => {
        /// A field that a column or `--set` can fill: of the request body, or one that finds the
        /// contact (not sent).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Field { $($(#[$vmeta])* $variant),+ }
        impl Field {
            /// Every field, in the order a row is read.
            pub const ALL: &'static [Field] = &[$(Field::$variant),+];
            /// The spec's name (`call.to` for the call object's fields).
            pub fn name(self) -> &'static str {
                match self { $(Field::$variant => $name),+ }
            }
        }
    };
}

fields!(
    /// `type`: the channel of the message (SMS, Email, …).
    Type = "type",
    /// `conversationId`: the conversation the message goes in.
    ConversationId = "conversationId",
    /// `contactId`: the contact the message belongs to.
    ContactId = "contactId",
    /// `conversationProviderId`: the custom provider (needed for Custom and Call).
    ConversationProviderId = "conversationProviderId",
    /// `message`: the text of the message.
    Message = "message",
    /// `attachments`: URLs of the attached files (a list cell).
    Attachments = "attachments",
    /// `html`: the HTML body of an e-mail.
    Html = "html",
    /// `subject`: the subject of an e-mail.
    Subject = "subject",
    /// `emailFrom`: the sender's address of an e-mail.
    EmailFrom = "emailFrom",
    /// `emailTo`: the recipient's address of an e-mail.
    EmailTo = "emailTo",
    /// `emailCc`: the Cc addresses of an e-mail (a list cell).
    EmailCc = "emailCc",
    /// `emailBcc`: the Bcc addresses of an e-mail (a list cell).
    EmailBcc = "emailBcc",
    /// `emailMessageId`: the e-mail's own Message-ID.
    EmailMessageId = "emailMessageId",
    /// `altId`: the message's ID in the system it was exported from.
    AltId = "altId",
    /// `direction`: inbound or outbound.
    Direction = "direction",
    /// `date`: the message's date and time (read as `--date-format` and `--timezone` say).
    Date = "date",
    /// `call.to`: the number that was called.
    CallTo = "call.to",
    /// `call.from`: the number that called.
    CallFrom = "call.from",
    /// `call.status`: how the call went.
    CallStatus = "call.status",
    // Not sent: they find or create the contact when a row has no contactId (issue 7).
    /// `contactPhone`: the contact's phone number, to find or create the contact by.
    ContactPhone = "contactPhone",
    /// `contactEmail`: the contact's e-mail address, to find or create the contact by.
    ContactEmail = "contactEmail",
    /// `contactName`: the full name of a contact to create.
    ContactName = "contactName",
    /// `firstName`: the first name of a contact to create.
    FirstName = "firstName",
    /// `lastName`: the last name of a contact to create.
    LastName = "lastName",
    /// `locationId`: the sub-account (location) IDs are looked up in (`--location-id`).
    LocationId = "locationId",
    // Not sent: it names the source thread an e-mail belongs to (issue 15).
    /// `threadId`: the source system's thread of an e-mail (Gmail's `X-GM-THRID`, the root of
    /// `References`, a ticket number); e-mails of one thread are sent threaded in HighLevel.
    ThreadId = "threadId",
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
    /// Who the contact is, when an ID is to be looked up; `None` when the row has both.
    pub lookup: Option<Box<crate::resolve::Lookup>>,
    /// The source thread of an e-mail (`threadId`); `None` for other types and empty cells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
}

/// `--map FIELD=COLUMN` (every row), `--map-inbound` / `--map-outbound` (rows of that
/// direction only): a field taken from a named column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnMap {
    /// The field, as the user wrote it.
    pub field: String,
    /// The column, as the user wrote it.
    pub column: String,
    /// `Some`: only rows of this direction read the field from this column.
    pub only: Option<Direction>,
}

impl ColumnMap {
    /// `--map FIELD=COLUMN`: every row.
    pub fn new(field: &str, column: &str) -> ColumnMap {
        ColumnMap {
            field: field.to_owned(),
            column: column.to_owned(),
            only: None,
        }
    }
}

/// `--value FIELD:FROM=TO`: a cell of `field` written `from` (ignoring ASCII case and the
/// spaces around it) is read as `to`, the API's spelling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueMap {
    /// The field, as the user wrote it.
    pub field: String,
    /// The export's spelling.
    pub from: String,
    /// What it means, as the field accepts it.
    pub to: String,
}

/// A cell of `field` that starts with `prefix` (ASCII case ignored) loses the prefix and gives
/// the row the `sets` (`[prefix.contactPhone] "whatsapp:" = { type = "WhatsApp" }`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixRule {
    /// The field whose cells carry the prefix.
    pub field: String,
    /// The prefix, such as `whatsapp:`.
    pub prefix: String,
    /// `FIELD = VALUE` pairs the row takes instead of its own.
    pub sets: Vec<(String, String)>,
}

/// In what order rows are sent (`--order`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// As the file lists them (the default).
    #[default]
    Input,
    /// Oldest first, whatever the file's order (for exports that list newest first).
    Date,
}

impl std::str::FromStr for Order {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "input" | "file" => Ok(Order::Input),
            "date" | "oldest-first" => Ok(Order::Date),
            other => Err(format!(
                "order '{other}' is not one of input (as the file lists rows), date (each conversation oldest first)"
            )),
        }
    }
}

impl MappedRow {
    /// The scheduler lane of the row: its conversation ID, else (IDs to be looked up) its
    /// contact's key in its location, so rows of one contact go one at a time, in order.
    pub fn lane(&self) -> String {
        match &self.lookup {
            Some(lookup) if self.message.conversation_id.is_empty() => {
                lookup.lane(&self.message.contact_id)
            }
            _ => self.message.conversation_id.clone(),
        }
    }
}

/// What the user said about columns: the raw `--map`, `--set` and reading options.
#[derive(Clone, Debug)]
pub struct MappingOptions {
    /// `--map FIELD=COLUMN` and the per-direction maps, in order; a later one for the same field
    /// (and direction) wins.
    pub maps: Vec<ColumnMap>,
    /// `--value FIELD:FROM=TO`, in order; a later one for the same spelling wins.
    pub values: Vec<ValueMap>,
    /// Prefixes that say something about the row (`whatsapp:` numbers are WhatsApp messages).
    pub prefixes: Vec<PrefixRule>,
    /// `--skip-if COLUMN=VALUE`: rows whose cell in COLUMN is VALUE (ASCII case ignored) are
    /// left out on purpose, recorded `skipped`.
    pub skips: Vec<(String, String)>,
    /// `--order`: as the file lists rows, or each conversation oldest first.
    pub order: Order,
    /// Whether `--order` (or the `--config` file, or a preset) said it. Without it, an input
    /// with a thread column is sent in date order (a thread's replies go after its start).
    pub order_given: bool,
    /// Columns left out without a warning (`ignore-columns` in the file; presets use it).
    pub ignore_columns: Vec<String>,
    /// `--set FIELD=VALUE`, in order; a later one for the same field wins.
    pub sets: Vec<(String, String)>,
    /// `--list-sep`: what separates the items of a list cell that is not a JSON array.
    pub list_sep: char,
    /// `--date-format` and `--timezone`: how `date` cells are read.
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
            values: Vec::new(),
            prefixes: Vec::new(),
            skips: Vec::new(),
            order: Order::Input,
            order_given: false,
            ignore_columns: Vec::new(),
            sets: Vec::new(),
            list_sep: ';',
            dates: DateReader::default(),
            key_column: None,
            default_country: None,
        }
    }
}

/// A prefix (ASCII-lowercased) and the fields it sets on the row.
type Prefix = (String, Vec<(Field, String)>);

/// Where a field's value comes from.
#[derive(Clone, Debug)]
enum Source {
    Column(usize),
    /// One column on inbound rows, another on outbound rows (`None`: the field is empty there).
    ByDirection {
        inbound: Option<usize>,
        outbound: Option<usize>,
    },
    /// A `--set` value, already checked.
    Constant(String),
}

/// The plan for turning every record of one input into a request body.
///
/// # Example
///
/// A header and the user's options give the plan; each record then maps to the JSON body.
///
/// ```
/// use csv::ByteRecord;
/// use lc_import::mapping::{Mapping, MappingOptions};
/// use serde_json::json;
///
/// // Column names are matched ignoring case and separators; `direction` has no column, so
/// // `--set direction=inbound` gives every row's.
/// let header: Vec<String> = ["Conversation ID", "contact_id", "Type", "message"]
///     .map(String::from)
///     .to_vec();
/// let options = MappingOptions {
///     sets: vec![("direction".into(), "inbound".into())],
///     ..MappingOptions::default()
/// };
/// let mapping = Mapping::new(&header, &options)?;
///
/// let record = ByteRecord::from(vec!["ve9EPM428h8vShlRW1KT", "k1", "sms", "Hello"]);
/// let row = mapping.map_row(&record, 2).expect("the row is valid");
/// assert!(row.lookup.is_none(), "the row has both IDs: nothing to look up");
/// assert_eq!(
///     serde_json::to_value(&row.message)?,
///     json!({
///         "type": "SMS",
///         "conversationId": "ve9EPM428h8vShlRW1KT",
///         "contactId": "k1",
///         "direction": "inbound",
///         "message": "Hello",
///     })
/// );
/// # Ok::<(), anyhow::Error>(())
/// ```
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
    /// Per field (by [`Field::index`]): the export's spellings, ASCII-lowercased, and the value
    /// each stands for. Empty for most fields, which then cost nothing.
    values: Vec<Vec<(String, String)>>,
    /// Per field: prefixes (ASCII-lowercased) and the fields they set on the row.
    prefixes: Vec<Vec<Prefix>>,
    /// Row filters: a column and the values (ASCII-lowercased) that leave a row out.
    skips: Vec<(usize, Vec<String>)>,
    /// Some field is read by direction: the row's direction is read first.
    by_direction: bool,
    /// `--order`.
    pub order: Order,
}

impl Mapping {
    /// The column a field is read from, if any (on every row).
    pub fn column_of(&self, field: Field) -> Option<&str> {
        match &self.sources[field.index()] {
            Some(Source::Column(i)) => Some(&self.header[*i]),
            _ => None,
        }
    }

    /// The column → field table, as `validate --show` prints it: every field with a source,
    /// its per-direction columns, value maps and prefixes resolved; then the row filters.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let name = |i: &Option<usize>| match i {
            Some(i) => format!("column {:?}", self.header[*i]),
            None => "(empty)".to_owned(),
        };
        let mut out = String::from("columns → fields:\n");
        for field in Field::ALL {
            let Some(source) = &self.sources[field.index()] else {
                continue;
            };
            let from = match source {
                Source::Column(i) => name(&Some(*i)),
                Source::Constant(v) => format!("{v:?} on every row (--set)"),
                Source::ByDirection { inbound, outbound } => format!(
                    "{} on inbound rows, {} on outbound rows",
                    name(inbound),
                    name(outbound)
                ),
            };
            let _ = write!(out, "  {:<22} ← {from}", field.name());
            let values = &self.values[field.index()];
            if !values.is_empty() {
                let list: Vec<String> = values
                    .iter()
                    .map(|(from, to)| format!("{from:?} → {to:?}"))
                    .collect();
                let _ = write!(out, "; values {}", list.join(", "));
            }
            for (prefix, sets) in &self.prefixes[field.index()] {
                let list: Vec<String> = sets
                    .iter()
                    .map(|(f, v)| format!("{}={v}", f.name()))
                    .collect();
                let _ = write!(
                    out,
                    "; {prefix:?} prefix removed, the row gets {}",
                    list.join(", ")
                );
            }
            out.push('\n');
        }
        if let Some(k) = self.key {
            let _ = writeln!(out, "  {:<22} ← column {:?}", "(row key)", self.header[k]);
        }
        for (column, values) in &self.skips {
            let _ = writeln!(
                out,
                "  rows whose {:?} is {} are skipped",
                self.header[*column],
                values.join(" or ")
            );
        }
        if self.order == Order::Date {
            out.push_str("  rows are sent oldest first in each conversation (--order date)\n");
        }
        if self.has_threads() {
            out.push_str("  e-mails of one threadId in a conversation are sent as one thread: the first by date as it is, the others with its emailMessageId\n");
        }
        out
    }

    /// Why the row is left out on purpose (a `--skip-if` filter matched), if it is.
    pub fn skip_reason(&self, cells: &ByteRecord, line: u64) -> Option<String> {
        for (column, values) in &self.skips {
            let Some(cell) = cells.get(*column).and_then(|c| std::str::from_utf8(c).ok()) else {
                continue;
            };
            let cell = cell.trim();
            if values.iter().any(|v| v.eq_ignore_ascii_case(cell)) {
                return Some(format!(
                    "line {line}: {} is {cell:?}: left out by the row filter (skip-if {}={})",
                    self.header[*column],
                    self.header[*column],
                    values.join("|")
                ));
            }
        }
        None
    }

    /// The row's `conversationId` as written in its cell (or `--set`), trimmed; not checked.
    pub fn conversation_cell<'a>(&'a self, cells: &'a ByteRecord) -> Option<&'a str> {
        match self.sources[Field::ConversationId.index()].as_ref()? {
            Source::Constant(v) => Some(v.as_str()),
            Source::Column(i) => std::str::from_utf8(cells.get(*i)?).ok().map(str::trim),
            Source::ByDirection { .. } => None,
        }
    }

    /// The row's `threadId` cell, trimmed, when it is not empty (whatever the row's type).
    pub fn thread_cell<'a>(&'a self, cells: &'a ByteRecord) -> Option<&'a str> {
        let cell = match self.sources[Field::ThreadId.index()].as_ref()? {
            Source::Constant(v) => v.as_str(),
            Source::Column(i) => std::str::from_utf8(cells.get(*i)?).ok()?.trim(),
            Source::ByDirection { .. } => return None,
        };
        (!cell.is_empty()).then_some(cell)
    }

    /// Whether a thread column (`threadId`) is mapped: e-mails of one thread are threaded.
    pub fn has_threads(&self) -> bool {
        self.sources[Field::ThreadId.index()].is_some()
    }

    /// Whether rows may leave `contactId` / `conversationId` to be looked up.
    pub fn resolving(&self) -> bool {
        self.resolving
    }

    /// The CSV column a field is read from, for a row error; `None` for `--set` and unmapped
    /// fields.
    pub(crate) fn column(&self, field: Field) -> Option<Column> {
        match &self.sources[field.index()] {
            Some(Source::Column(i)) => Some(Column::Csv(*i, self.header[*i].clone())),
            _ => None,
        }
    }
}

/// The header, records and helpers the tests of every stage share.
#[cfg(test)]
mod fixture {
    use super::*;

    const HEADER: &str = "Conversation ID,contact_id,TYPE,Direction,message,date,attachments,emailCc,call_to,call.status,conversationProviderId,notes";

    pub(super) fn header() -> Vec<String> {
        HEADER.split(',').map(str::to_owned).collect()
    }

    pub(super) fn record(cells: &[&str]) -> ByteRecord {
        let mut full: Vec<&str> = cells.to_vec();
        full.resize(header().len(), "");
        ByteRecord::from(full)
    }

    pub(super) fn mapping(options: MappingOptions) -> Mapping {
        Mapping::new(&header(), &options).unwrap()
    }

    pub(super) fn body(m: &Mapping, cells: &[&str]) -> serde_json::Value {
        serde_json::to_value(m.map(&record(cells), 2).unwrap()).unwrap()
    }

    pub(super) fn errors(m: &Mapping, cells: &[&str]) -> Vec<String> {
        m.map(&record(cells), 7)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }
}
