//! One record → one request body: [`Mapping::map_row`] reads each field from its column or
//! `--set` value, normalises and checks it (`convert`), builds the call object and the contact
//! lookup, and applies the rules across fields. Every problem of the row is collected, not just
//! the first.

use csv::ByteRecord;

use super::{Field, MappedRow, Mapping, REQUIRED, Source};
use crate::message::{CallData, CallStatus, Direction, InboundMessage, MessageType, SpecEnum};
use crate::reader::{Column, RowError};
use crate::validate::{self, Invalid, Problem};

impl Mapping {
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
        let mut thread = None;
        let mut row = self.row_state(cells);
        for field in Field::ALL {
            let before = errors.len();
            let Some(value) = self.read_field(cells, line, *field, &mut row, &mut errors) else {
                let resolved =
                    self.resolving && matches!(field, Field::ConversationId | Field::ContactId);
                if errors.len() == before && REQUIRED.contains(field) && !resolved {
                    errors.push(self.missing(line, *field));
                }
                continue;
            };
            put(*field, value, &mut m, &mut call, &mut lookup, &mut thread);
        }
        // What a prefix said about the row (a `whatsapp:` number: a WhatsApp message) replaces
        // what its columns or `--set` said; the values were checked when the mapping was built.
        for (field, value) in row.overrides {
            if let Ok(value) = self.convert(field, value) {
                put(field, value, &mut m, &mut call, &mut lookup, &mut thread);
            }
        }
        if call != CallData::default() {
            m.call = Some(call);
        }
        // Only e-mails thread (`emailMessageId` is an e-mail's); on other types the cell is
        // ignored, and `validate` says how many rows that was.
        if m.kind != MessageType::Email {
            thread = None;
        }
        if self.order == super::Order::Date && m.date.is_none() && errors.is_empty() {
            errors.push(RowError {
                line,
                column: self.column(Field::Date),
                invalid: Invalid::new(
                    Problem::Missing,
                    "date is empty: --order date sends each conversation's rows oldest first, and this row has no date to place it by",
                ),
            });
        }
        // A local file or a signed URL is uploaded first, and the upload needs the sub-account.
        let uploads = validate::needs_upload(&m.attachments);
        if uploads && errors.is_empty() && lookup.location_id.is_empty() {
            errors.push(RowError {
                line,
                column: self.column(Field::Attachments),
                invalid: Invalid::new(
                    Problem::Missing,
                    "locationId is empty: an attachment that is a local file or a URL with a query string is uploaded first (POST /conversations/messages/upload), which needs the sub-account; give --location-id ID",
                ),
            });
        }
        let lookup = if self.resolving && errors.is_empty() {
            self.check_lookup(&m, lookup, uploads, line, &mut errors)
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
            Ok(MappedRow {
                message: m,
                lookup,
                thread,
            })
        } else {
            Err(errors)
        }
    }

    /// Where an e-mail's thread is, read from only the cells that say it (its type, IDs or
    /// contact, date, thread), whatever else is wrong with the row: the pass before sending
    /// finds each thread's first message from these, and a first message that is invalid must
    /// still hold its thread's replies back. `None`: no thread column, not an e-mail, an empty
    /// thread cell, or no conversation to place it in.
    pub fn thread_place(&self, cells: &ByteRecord, line: u64) -> Option<ThreadPlace> {
        self.sources[Field::ThreadId.index()].as_ref()?;
        const PLACE: [Field; 8] = [
            Field::Type,
            Field::ConversationId,
            Field::ContactId,
            Field::ContactPhone,
            Field::ContactEmail,
            Field::LocationId,
            Field::Date,
            Field::ThreadId,
        ];
        let mut errors = Vec::new();
        let mut m = InboundMessage::default();
        let mut call = CallData::default();
        let mut lookup = crate::resolve::Lookup::default();
        let mut thread = None;
        let mut row = self.row_state(cells);
        let mut typed = false;
        for field in PLACE {
            if let Some(value) = self.read_field(cells, line, field, &mut row, &mut errors) {
                typed |= field == Field::Type;
                put(field, value, &mut m, &mut call, &mut lookup, &mut thread);
            }
        }
        for (field, value) in row.overrides {
            if PLACE.contains(&field)
                && let Ok(value) = self.convert(field, value)
            {
                typed |= field == Field::Type;
                put(field, value, &mut m, &mut call, &mut lookup, &mut thread);
            }
        }
        if !typed || m.kind != MessageType::Email {
            return None;
        }
        let thread = thread?;
        let date_ms = m
            .date
            .as_deref()
            .and_then(|d| d.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond());
        let lane = MappedRow {
            message: m,
            lookup: self.resolving.then(|| Box::new(lookup)),
            thread: None,
        }
        .lane();
        (!lane.is_empty()).then_some(ThreadPlace {
            lane,
            thread,
            date_ms,
        })
    }

    /// With resolution on: a row needs a contactId or a contactPhone / contactEmail to find it
    /// by, and a location for any lookup. `None` when the row has both IDs already and no
    /// attachment to upload (an upload needs the location the lookup carries).
    fn check_lookup(
        &self,
        m: &InboundMessage,
        lookup: crate::resolve::Lookup,
        uploads: bool,
        line: u64,
        errors: &mut Vec<RowError>,
    ) -> Option<Box<crate::resolve::Lookup>> {
        if !m.contact_id.is_empty() && !m.conversation_id.is_empty() && !uploads {
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
    fn missing(&self, line: u64, field: Field) -> RowError {
        let column = self.column(field);
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

    /// A row's state before its fields are read: its direction, when some field is read by
    /// direction.
    fn row_state(&self, cells: &ByteRecord) -> RowState<'_> {
        RowState {
            direction: self
                .by_direction
                .then(|| self.row_direction(cells))
                .flatten(),
            overrides: Vec::new(),
        }
    }

    /// The row's direction as its cell (or `--set`) and value maps say, for the fields read
    /// by direction; `None` when it is empty or not a direction (its own error says so).
    fn row_direction(&self, cells: &ByteRecord) -> Option<Direction> {
        let raw = match self.sources[Field::Direction.index()].as_ref()? {
            Source::Constant(v) => v.as_str(),
            Source::Column(i) => std::str::from_utf8(cells.get(*i)?).ok()?,
            Source::ByDirection { .. } => return None,
        };
        let value = self.translate(Field::Direction.index(), raw.trim());
        match self.convert(Field::Direction, value) {
            Ok(Value::Direction(d)) => Some(d),
            _ => None,
        }
    }

    /// The value a `--value` map of the field at `at` gives the cell, else the cell.
    fn translate<'a>(&'a self, at: usize, value: &'a str) -> &'a str {
        let map = &self.values[at];
        if map.is_empty() {
            return value;
        }
        let trimmed = value.trim();
        map.iter()
            .find(|(from, _)| from.eq_ignore_ascii_case(trimmed))
            .map_or(value, |(_, to)| to.as_str())
    }

    /// Reads, normalises and checks one field. `None` when empty or broken (then `errors` has it).
    fn read_field<'m>(
        &'m self,
        cells: &ByteRecord,
        line: u64,
        field: Field,
        row: &mut RowState<'m>,
        errors: &mut Vec<RowError>,
    ) -> Option<Value> {
        let column_at = |i: usize| -> Option<(&[u8], Column)> {
            Some((cells.get(i)?, Column::Csv(i, self.header[i].clone())))
        };
        // Found once: `index` is a search of `Field::ALL`.
        let at = field.index();
        let (raw, column) = match self.sources[at].as_ref()? {
            Source::Constant(v) => (v.as_str(), Column::Set(field.name())),
            source => {
                let i = match source {
                    Source::Column(i) => *i,
                    Source::ByDirection { inbound, outbound } => match row.direction? {
                        Direction::Inbound => (*inbound)?,
                        Direction::Outbound => (*outbound)?,
                    },
                    Source::Constant(_) => unreachable!("matched above"),
                };
                let (bytes, column) = column_at(i)?;
                match std::str::from_utf8(bytes) {
                    Ok(s) => (s, column),
                    Err(e) => {
                        errors.push(RowError {
                            line,
                            column: Some(column),
                            invalid: Invalid::new(
                                Problem::Encoding,
                                format!(
                                    "the cell is not valid UTF-8 (byte {} of the cell is not): give the export's encoding with --encoding LABEL, or save it as UTF-8",
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
        let mut value = self.translate(at, value);
        for (prefix, sets) in &self.prefixes[at] {
            if let Some(head) = value.get(..prefix.len())
                && head.eq_ignore_ascii_case(prefix)
            {
                value = value[prefix.len()..].trim_start();
                row.overrides
                    .extend(sets.iter().map(|(f, v)| (*f, v.as_str())));
                break;
            }
        }
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

    /// Normalises and checks one non-empty value of `field`: a cell, or a `--set` value when
    /// [`Mapping::new`] checks it.
    pub(super) fn convert(&self, field: Field, value: &str) -> Result<Value, Invalid> {
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
            // `Ann Lee <ann@example.com>` is sent as the address alone.
            Field::EmailFrom | Field::EmailTo => {
                Value::Text(validate::normalize_email(name, value)?)
            }
            Field::EmailCc | Field::EmailBcc => Value::List(
                validate::split_addresses(name, value, self.list_sep)?
                    .iter()
                    .map(|item| validate::normalize_email(name, item))
                    .collect::<Result<_, _>>()?,
            ),
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
                // The key of the ID map; HighLevel matches addresses without regard to case.
                Value::Text(validate::normalize_email(name, value)?.to_lowercase())
            }
            Field::ContactName | Field::FirstName | Field::LastName => {
                Value::Text(value.to_owned())
            }
            Field::Message
            | Field::Html
            | Field::Subject
            | Field::EmailMessageId
            | Field::AltId
            | Field::ThreadId => Value::Text(value.to_owned()),
        })
    }
}

/// An e-mail's thread and where it goes: see [`Mapping::thread_place`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadPlace {
    /// The row's lane (its conversation, or its contact's key): threads are per conversation.
    pub lane: String,
    /// The thread cell, trimmed.
    pub thread: String,
    /// The row's date in milliseconds since 1970; `None`: none, or none that reads.
    pub date_ms: Option<i64>,
}

/// What [`Mapping::map_row`] carries across the fields of one row.
struct RowState<'m> {
    /// The row's direction, read first when some field is read by direction.
    direction: Option<Direction>,
    /// Fields a prefix set (`type = WhatsApp` for a `whatsapp:` number), applied last.
    overrides: Vec<(Field, &'m str)>,
}

/// Puts one field's value where it goes: the body, the call object, or the contact lookup.
#[inline]
fn put(
    field: Field,
    value: Value,
    m: &mut InboundMessage,
    call: &mut CallData,
    lookup: &mut crate::resolve::Lookup,
    thread: &mut Option<String>,
) {
    match value {
        Value::Text(text) => match field {
            Field::ContactPhone => lookup.phone = Some(text),
            Field::ContactEmail => lookup.email = Some(text),
            Field::ContactName => lookup.name = Some(text),
            Field::FirstName => lookup.first_name = Some(text),
            Field::LastName => lookup.last_name = Some(text),
            Field::LocationId => lookup.location_id = text,
            Field::ThreadId => *thread = Some(text),
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

/// A field's value, normalised and checked, before it is put into the body.
pub(super) enum Value {
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
        let translate = format!(
            " (an export's own spelling can be translated: --value {name}:{}=VALUE)",
            value.trim()
        );
        Invalid::new(
            problem,
            format!(
                "{name} {} is not one of {}{hint}{translate}",
                validate::quote(value),
                E::list()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::MappingOptions;
    use crate::mapping::fixture::*;
    use serde_json::json;

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
                "photo.exe",
                "line 7, column 7 (attachments): attachment 'photo.exe' is a .exe file, a type the upload endpoint does not take",
            ),
            (
                6,
                "photo.jpg",
                "line 7, column 7 (attachments): locationId is empty: an attachment that is a local file",
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
                "line 3, column 5 (message): the cell is not valid UTF-8 (byte 4 of the cell is not): give the export's encoding with --encoding LABEL, or save it as UTF-8"
            ]
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
