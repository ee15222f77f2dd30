//! Header → fields: [`Mapping::new`] matches the columns of one input to the fields of the request
//! body, in named steps that run in this order (so the first configuration error reported is
//! the same whatever else is wrong): explicit `--map`, whether ID resolution is on, matching by
//! folded name, `--set` constants, the required fields, the key column, the warning for unused
//! columns, the sub-account check, and last the `--set` values checked as a cell would be.

use std::collections::HashSet;

use anyhow::{Result, anyhow, bail};

use super::{
    CONTACT_DETAILS, ColumnMap, Field, Mapping, MappingOptions, REQUIRED, RESOLUTION, Source,
};
use crate::message::{Direction, MessageType, SpecEnum, fold};

impl Mapping {
    /// Builds the plan from a header. Errors are the user's configuration (exit 2): a `--map`
    /// naming a field or column that does not exist, two columns for one field, a bad `--set`.
    pub fn new(header: &[String], options: &MappingOptions) -> Result<Mapping> {
        let mut draft = Draft::new(header);
        let mapped = draft.explicit_maps(&options.maps)?;
        let resolving = resolution_on(header, options, &mapped);
        draft.match_by_name(&mapped, resolving)?;
        let constants = draft.apply_sets(&options.sets)?;
        draft.check_required(resolving)?;
        let key = draft.key_column(options.key_column.as_deref())?;
        let skips = draft.skips(&options.skips)?;
        draft.ignore(&options.ignore_columns);
        draft.warn_unused();
        draft.check_location(resolving)?;
        let mut values = vec![Vec::new(); Field::ALL.len()];
        for v in &options.values {
            let field = Field::from_user(&v.field)
                .map_err(|e| anyhow!("--value {}:{}={}: {e}", v.field, v.from, v.to))?;
            let list: &mut Vec<(String, String)> = &mut values[field.index()];
            let from = v.from.trim().to_ascii_lowercase();
            list.retain(|(f, _)| *f != from);
            list.push((from, v.to.trim().to_owned()));
        }
        let mut prefixes = vec![Vec::new(); Field::ALL.len()];
        for p in &options.prefixes {
            let field = Field::from_user(&p.field)
                .map_err(|e| anyhow!("prefix {:?} of {}: {e}", p.prefix, p.field))?;
            let mut sets = Vec::new();
            for (f, v) in &p.sets {
                let f = Field::from_user(f)
                    .map_err(|e| anyhow!("prefix {:?} of {}: {e}", p.prefix, p.field))?;
                sets.push((f, v.trim().to_owned()));
            }
            let list: &mut Vec<super::Prefix> = &mut prefixes[field.index()];
            list.push((p.prefix.to_ascii_lowercase(), sets));
        }
        let by_direction = draft
            .sources
            .iter()
            .any(|s| matches!(s, Some(Source::ByDirection { .. })));
        let mut dates = options.dates.clone();
        if dates.formats.is_empty()
            && let Some(Source::Column(i)) = draft.source(Field::Date)
        {
            dates.epoch_column = crate::validate::DateFormat::from_column_name(&header[*i]);
        }
        let threads = draft.source(Field::ThreadId).is_some();
        let mapping = Mapping {
            header: header.to_vec(),
            sources: draft.sources,
            key,
            list_sep: options.list_sep,
            dates,
            default_country: options.default_country,
            resolving,
            warnings: draft.warnings,
            values,
            prefixes,
            skips,
            by_direction,
            // A thread's replies must go after its start: a thread column sends in date order
            // unless the order was chosen.
            order: match threads {
                true if !options.order_given => super::Order::Date,
                _ => options.order,
            },
        };
        mapping.check_constants(&constants)?;
        mapping.check_translations()?;
        Ok(mapping)
    }

    /// Each value a `--value` map or a prefix gives is checked once, as a cell would be: a bad
    /// one would otherwise make every row it touches invalid.
    fn check_translations(&self) -> Result<()> {
        for field in Field::ALL {
            for (from, to) in &self.values[field.index()] {
                if let Err(e) = self.convert(*field, to) {
                    bail!("--value {}:{from}={to}: {e}", field.name());
                }
            }
            for (prefix, sets) in &self.prefixes[field.index()] {
                for (f, v) in sets {
                    if let Err(e) = self.convert(*f, v) {
                        bail!(
                            "prefix {prefix:?} of {}: {}={v}: {e}",
                            field.name(),
                            f.name()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Last step: each `--set` value is checked once, as a cell would be, so a bad one stops the
    /// run before any row (it would otherwise make every row invalid).
    fn check_constants(&self, constants: &[(Field, String)]) -> Result<()> {
        for (field, value) in constants {
            if !value.is_empty()
                && let Err(e) = self.convert(*field, value)
            {
                bail!("--set {}={value}: {e}", field.name());
            }
        }
        Ok(())
    }
}

/// The mapping while [`Mapping::new`] builds it: where each field comes from so far, which
/// columns are taken, and the warnings to say before the first row.
struct Draft<'a> {
    header: &'a [String],
    /// Indexed by [`Field::index`].
    sources: Vec<Option<Source>>,
    /// Indexed by column: the column feeds a field, the key, or is overridden by `--set`.
    used: Vec<bool>,
    warnings: Vec<String>,
}

impl<'a> Draft<'a> {
    fn new(header: &'a [String]) -> Self {
        Draft {
            header,
            sources: vec![None; Field::ALL.len()],
            used: vec![false; header.len()],
            warnings: Vec::new(),
        }
    }

    fn source(&self, field: Field) -> Option<&Source> {
        self.sources[field.index()].as_ref()
    }

    /// Explicit `--map` (and `--map-inbound` / `--map-outbound`) first: they take a column
    /// away from default matching. A later one for the same field (and direction) wins.
    fn explicit_maps(&mut self, maps: &[ColumnMap]) -> Result<HashSet<Field>> {
        let mut mapped: HashSet<Field> = HashSet::new();
        for m in maps {
            let flag = match m.only {
                None => "--map",
                Some(Direction::Inbound) => "--map-inbound",
                Some(Direction::Outbound) => "--map-outbound",
            };
            let (field, column) = (&m.field, &m.column);
            let field =
                Field::from_user(field).map_err(|e| anyhow!("{flag} {field}={column}: {e}"))?;
            let index = find_column(self.header, column)
                .map_err(|e| anyhow!("{flag} {}={column}: {e}", field.name()))?;
            let source = match m.only {
                None => Source::Column(index),
                Some(_) if field == Field::Direction => bail!(
                    "{flag} direction={column}: the direction is what chooses the column; map it with --map direction=COLUMN"
                ),
                Some(direction) => {
                    let (mut inbound, mut outbound) = match &self.sources[field.index()] {
                        Some(Source::Column(c)) if mapped.contains(&field) => (Some(*c), Some(*c)),
                        Some(Source::ByDirection { inbound, outbound }) => (*inbound, *outbound),
                        _ => (None, None),
                    };
                    match direction {
                        Direction::Inbound => inbound = Some(index),
                        Direction::Outbound => outbound = Some(index),
                    }
                    Source::ByDirection { inbound, outbound }
                }
            };
            self.sources[field.index()] = Some(source);
            mapped.insert(field);
        }
        for source in self.sources.iter().flatten() {
            match source {
                Source::Column(i) => self.used[*i] = true,
                Source::ByDirection { inbound, outbound } => {
                    for i in inbound.iter().chain(outbound) {
                        self.used[*i] = true;
                    }
                }
                Source::Constant(_) => {}
            }
        }
        Ok(mapped)
    }

    /// `--skip-if COLUMN=VALUE`, grouped by column; the columns count as used.
    fn skips(&mut self, skips: &[(String, String)]) -> Result<Vec<(usize, Vec<String>)>> {
        let mut out: Vec<(usize, Vec<String>)> = Vec::new();
        for (column, value) in skips {
            let i = find_column(self.header, column)
                .map_err(|e| anyhow!("--skip-if {column}={value}: {e}"))?;
            self.used[i] = true;
            let value = value.trim().to_ascii_lowercase();
            match out.iter_mut().find(|(c, _)| *c == i) {
                Some((_, values)) => values.push(value),
                None => out.push((i, vec![value])),
            }
        }
        Ok(out)
    }

    /// Columns named to be left out without a warning (a preset's price and account columns);
    /// a name the header does not have is no error, as exports drop columns.
    fn ignore(&mut self, columns: &[String]) {
        for column in columns {
            if let Ok(i) = find_column(self.header, column) {
                self.used[i] = true;
            }
        }
    }

    /// Default matching: a column whose folded name is a field's folded name. Two such columns
    /// for one field are an error, as guessing would send the wrong one.
    fn match_by_name(&mut self, mapped: &HashSet<Field>, resolving: bool) -> Result<()> {
        for field in Field::ALL {
            if mapped.contains(field) || (!resolving && CONTACT_DETAILS.contains(field)) {
                continue;
            }
            let folded = fold(field.name());
            let matches: Vec<usize> = self
                .header
                .iter()
                .enumerate()
                .filter(|(i, name)| !self.used[*i] && fold(name) == folded)
                .map(|(i, _)| i)
                .collect();
            match matches.as_slice() {
                [] => {}
                [i] => {
                    self.sources[field.index()] = Some(Source::Column(*i));
                    self.used[*i] = true;
                }
                [a, b, ..] => bail!(
                    "columns {} ({}) and {} ({}) both match field {}: rename one, or choose with --map {}=COLUMN",
                    a + 1,
                    self.header[*a],
                    b + 1,
                    self.header[*b],
                    field.name(),
                    field.name()
                ),
            }
        }
        Ok(())
    }

    /// `--set`: a constant for every row, replacing any column of that field (with a warning).
    /// Returns the constants for [`Mapping::check_constants`].
    fn apply_sets(&mut self, sets: &[(String, String)]) -> Result<Vec<(Field, String)>> {
        let mut constants = Vec::new();
        for (field, value) in sets {
            let field =
                Field::from_user(field).map_err(|e| anyhow!("--set {field}={value}: {e}"))?;
            let value = value.trim().to_owned();
            if let Some(Source::Column(i)) = self.source(field) {
                let i = *i;
                self.used[i] = true;
                self.warnings.push(format!(
                    "column {} ({}) is ignored: --set {}={} gives every row's {}",
                    i + 1,
                    self.header[i],
                    field.name(),
                    value,
                    field.name()
                ));
            }
            self.sources[field.index()] = Some(Source::Constant(value.clone()));
            constants.push((field, value));
        }
        Ok(constants)
    }

    /// A required field with no source would make every row invalid: say so once, now.
    fn check_required(&self, resolving: bool) -> Result<()> {
        let names_contact = self.source(Field::ContactPhone).is_some()
            || self.source(Field::ContactEmail).is_some();
        for field in REQUIRED {
            let resolved = match field {
                Field::ConversationId => resolving,
                Field::ContactId => resolving && names_contact,
                _ => false,
            };
            if self.source(*field).is_none() && !resolved {
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
        Ok(())
    }

    /// The column that gives a row its identity: `--key-column`, else the `altId` column.
    fn key_column(&mut self, key_column: Option<&str>) -> Result<Option<usize>> {
        let key = match key_column {
            Some(column) => Some(
                find_column(self.header, column)
                    .map_err(|e| anyhow!("--key-column {column}: {e}"))?,
            ),
            None => match self.source(Field::AltId) {
                Some(Source::Column(i)) => Some(*i),
                _ => None,
            },
        };
        if let Some(k) = key {
            self.used[k] = true;
        }
        Ok(key)
    }

    /// Columns that feed nothing are not sent: said once, so a misspelt header is noticed.
    fn warn_unused(&mut self) {
        let unmapped: Vec<String> = self
            .header
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.used[*i])
            // A contact's name is a migration field, read when rows are looked up by phone or
            // e-mail (to create the contact); rows that carry their IDs need it not: no warning.
            .filter(|(_, name)| !CONTACT_DETAILS.iter().any(|f| fold(f.name()) == fold(name)))
            .map(|(i, name)| {
                if name.is_empty() {
                    format!("#{}", i + 1)
                } else {
                    name.clone()
                }
            })
            .collect();
        if unmapped.is_empty() {
            return;
        }
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
        self.warnings.push(format!(
            "{count} to no field and {verb} not sent: {list} (use --map FIELD=COLUMN to send one)"
        ));
    }

    /// Looking an ID up needs the sub-account: a `locationId` column or `--location-id`.
    fn check_location(&self, resolving: bool) -> Result<()> {
        let needs_location =
            self.source(Field::ConversationId).is_none() || self.source(Field::ContactId).is_none();
        if resolving && needs_location && self.source(Field::LocationId).is_none() {
            bail!(
                "looking up contacts and conversations needs the sub-account: give --location-id ID, or a locationId column"
            );
        }
        Ok(())
    }
}

/// Resolution is on when the user maps or sets a field that names the contact, or a column of
/// that name exists.
fn resolution_on(header: &[String], options: &MappingOptions, mapped: &HashSet<Field>) -> bool {
    RESOLUTION.iter().any(|f| {
        mapped.contains(f)
            || options
                .sets
                .iter()
                .any(|(name, v)| Field::from_user(name) == Ok(*f) && !v.trim().is_empty())
            || header.iter().any(|h| fold(h) == fold(f.name()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::fixture::*;

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
    fn map_and_set() {
        let m = mapping(MappingOptions {
            maps: vec![ColumnMap::new("message", "notes")],
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
                    maps: vec![ColumnMap::new("mesage", "notes")],
                    ..Default::default()
                },
                "--map mesage=notes: 'mesage' is not a field of the request body; did you mean message?",
            ),
            (
                MappingOptions {
                    maps: vec![ColumnMap::new("message", "Body")],
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
}
