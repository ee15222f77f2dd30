//! The rules a value must meet before it may be sent, taken from `api/apps/conversations.json`
//! and the pitfalls in `api/FACTS.md`. Pure functions: each takes a cell and returns the value
//! to send or a [`Problem`] with a message that says what would be accepted.

use std::fmt;

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;

use crate::message::{InboundMessage, MessageType, SpecEnum};

/// The kind of a row error, for grouping in the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Problem {
    /// The CSV record itself is broken: ragged, unterminated quote.
    Csv,
    /// A cell is not valid UTF-8.
    Encoding,
    /// A required field is empty or has no column.
    Missing,
    /// `type` is not in the spec's enum.
    Type,
    /// `direction` is not `inbound` or `outbound`.
    Direction,
    /// `date` does not parse, or lacks an offset.
    Date,
    /// An e-mail field is not an address.
    Email,
    /// An attachment is not an absolute http(s) URL.
    Url,
    /// A call phone number is not E.164.
    Phone,
    /// `conversationId`, `contactId` or `conversationProviderId` is not an ID.
    Id,
    /// A list cell (JSON array) does not parse.
    List,
    /// `call.status` is not in its enum.
    CallStatus,
    /// The message has nothing in it.
    Content,
    /// The type needs a `conversationProviderId`.
    Provider,
}

impl Problem {
    /// A short name for the summary's "most frequent errors".
    pub fn label(self) -> &'static str {
        match self {
            Problem::Csv => "malformed CSV",
            Problem::Encoding => "invalid UTF-8",
            Problem::Missing => "required field missing",
            Problem::Type => "unknown type",
            Problem::Direction => "unknown direction",
            Problem::Date => "bad date",
            Problem::Email => "bad e-mail address",
            Problem::Url => "bad attachment URL",
            Problem::Phone => "bad phone number",
            Problem::Id => "bad ID",
            Problem::List => "bad list cell",
            Problem::CallStatus => "unknown call status",
            Problem::Content => "no content",
            Problem::Provider => "conversationProviderId needed",
        }
    }
}

/// What is wrong with one value, and what would be accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub problem: Problem,
    pub message: String,
}

impl Invalid {
    pub fn new(problem: Problem, message: impl Into<String>) -> Self {
        Invalid {
            problem,
            message: message.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Shortens a user value for quoting in a message, so a 1 MB cell does not make a 1 MB error.
pub fn quote(value: &str) -> String {
    const MAX: usize = 60;
    let mut out = String::with_capacity(value.len().min(MAX) + 8);
    for (i, c) in value.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    format!("'{out}'")
}

/// `conversationId`, `contactId`, `conversationProviderId`: HighLevel IDs are short ASCII
/// tokens such as `ve9EPM428h8vShlRW1KT`. A phone number or an e-mail address here is the most
/// common mistake of an export, and the API would answer it with a 400 or a 500 (pitfall 1).
pub fn check_id(field: &str, value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        return Ok(());
    }
    let hint = if value.contains('@') {
        " (it looks like an e-mail address, not an ID)"
    } else if value.starts_with('+') || value.bytes().filter(u8::is_ascii_digit).count() >= 7 {
        " (it looks like a phone number, not an ID)"
    } else {
        ""
    };
    Err(Invalid::new(
        Problem::Id,
        format!(
            "{field} {} is not a HighLevel ID{hint}: expected letters and digits such as ve9EPM428h8vShlRW1KT",
            quote(value)
        ),
    ))
}

/// An e-mail address, plain (`ann@example.com`). `Ann <ann@example.com>` is refused with the
/// address suggested, because the API takes addresses, not display names.
pub fn check_email(field: &str, value: &str) -> Result<(), Invalid> {
    if is_plain_address(value) {
        return Ok(());
    }
    let suggestion = match (value.find('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b && is_plain_address(value[a + 1..b].trim()) => {
            format!("; did you mean {}?", value[a + 1..b].trim())
        }
        _ => String::new(),
    };
    Err(Invalid::new(
        Problem::Email,
        format!(
            "{field} {} is not an e-mail address: expected one address such as ann@example.com{suggestion}",
            quote(value)
        ),
    ))
}

fn is_plain_address(value: &str) -> bool {
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    let bad_char = |c: char| c.is_whitespace() || c.is_control() || "<>()[],;:\"@".contains(c);
    !local.is_empty()
        && !domain.is_empty()
        && !local.chars().any(bad_char)
        && !domain.chars().any(bad_char)
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

/// An attachment: an absolute `http(s)` URL with a host and no query string. A URL with a query
/// (`?alt=media`) was answered with 422 "attachments must contain at least 1 elements"
/// (FACTS pitfall 8), so it is refused here rather than failing at send time.
pub fn check_attachment(value: &str) -> Result<(), Invalid> {
    let bad = |why: &str| {
        Err(Invalid::new(
            Problem::Url,
            format!(
                "attachment {} {why}: expected an absolute http(s) URL without a query string, such as https://files.example.com/photo.jpg",
                quote(value)
            ),
        ))
    };
    let url = match url::Url::parse(value) {
        Ok(url) => url,
        Err(url::ParseError::RelativeUrlWithoutBase) => return bad("is not absolute"),
        Err(e) => return bad(&format!("is not a URL ({e})")),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return bad(&format!("has scheme '{}'", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return bad("has no host");
    }
    if url.query().is_some() {
        return bad("has a query string, which the API has been seen to refuse");
    }
    Ok(())
}

/// `call.to` / `call.from`: E.164 (`+15037081210`). Spaces, dashes, dots and parentheses are
/// dropped first, as exports often write `+1 (503) 708-1210`.
pub fn normalize_phone(field: &str, value: &str) -> Result<String, Invalid> {
    let kept: String = value
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')' | '\u{a0}'))
        .collect();
    let digits = kept.strip_prefix('+').unwrap_or("");
    if (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
    {
        return Ok(kept);
    }
    let hint = if !kept.starts_with('+') && kept.bytes().all(|b| b.is_ascii_digit()) {
        " (the country code with a leading + is missing)"
    } else {
        ""
    };
    Err(Invalid::new(
        Problem::Phone,
        format!(
            "{field} {} is not an E.164 phone number{hint}: expected + and 8 to 15 digits such as +15037081210",
            quote(value)
        ),
    ))
}

/// Reads `date` cells and writes them as RFC 3339 in UTC.
#[derive(Clone, Debug, Default)]
pub struct DateReader {
    /// strftime-style format (`--date-format`), else RFC 3339 / ISO 8601.
    pub format: Option<String>,
    /// For dates written without an offset (`--timezone`).
    pub timezone: Option<TimeZone>,
    /// The name given with `--timezone`, for messages.
    pub timezone_name: Option<String>,
}

/// Dates before this are refused: they are placeholders of an export (`0001-01-01`,
/// `1900-01-01`), and would sink to the bottom of a timeline.
const EARLIEST: Timestamp = Timestamp::UNIX_EPOCH;

impl DateReader {
    pub fn read(&self, value: &str) -> Result<String, Invalid> {
        let ts = match &self.format {
            Some(format) => self.read_with_format(format, value)?,
            None => self.read_iso(value)?,
        };
        if ts < EARLIEST {
            return Err(Invalid::new(
                Problem::Date,
                format!(
                    "date {} is before 1970, which is almost always a placeholder of the export: give the real date",
                    quote(value)
                ),
            ));
        }
        Ok(ts.to_string())
    }

    fn read_iso(&self, value: &str) -> Result<Timestamp, Invalid> {
        let why = match value.parse::<Timestamp>() {
            Ok(ts) => return Ok(ts),
            Err(e) => e,
        };
        // A bare date parses as a DateTime at midnight; refuse it rather than invent a time.
        let date_only = !value.contains(':') && value.parse::<jiff::civil::Date>().is_ok();
        if !date_only && let Ok(dt) = value.parse::<DateTime>() {
            return self.in_timezone(dt, value);
        }
        let what = if date_only {
            "has no time of day".to_owned()
        } else if why.to_string().contains("Unix timestamp") {
            // Well formed, but past what a timestamp holds (jiff ends at 9999-12-30T22:00Z).
            "is outside the range of dates that can be sent (1970 to 9999-12-30)".to_owned()
        } else {
            format!("is not an RFC 3339 / ISO 8601 date-time ({why})")
        };
        Err(Invalid::new(
            Problem::Date,
            format!(
                "date {} {what}: expected such as 2024-03-01T14:30:00Z or 2024-03-01T14:30:00+02:00, or give --date-format (e.g. '%d/%m/%Y %H:%M') and --timezone",
                quote(value)
            ),
        ))
    }

    fn read_with_format(&self, format: &str, value: &str) -> Result<Timestamp, Invalid> {
        let parsed = jiff::fmt::strtime::parse(format, value).map_err(|e| {
            Invalid::new(
                Problem::Date,
                format!(
                    "date {} does not match --date-format '{format}' ({e})",
                    quote(value)
                ),
            )
        })?;
        if let Ok(ts) = parsed.to_timestamp() {
            return Ok(ts);
        }
        match parsed.to_datetime() {
            Ok(dt) => self.in_timezone(dt, value),
            Err(e) => Err(Invalid::new(
                Problem::Date,
                format!(
                    "date {} read with --date-format '{format}' is not a full date and time ({e})",
                    quote(value)
                ),
            )),
        }
    }

    /// A civil time in `--timezone`. A time in a DST gap moves forward by the gap's length and a
    /// time in a fold takes the earlier instant (RFC 5545 "compatible" disambiguation).
    fn in_timezone(&self, dt: DateTime, value: &str) -> Result<Timestamp, Invalid> {
        let Some(tz) = &self.timezone else {
            return Err(Invalid::new(
                Problem::Date,
                format!(
                    "date {} has no UTC offset: write one (2024-03-01T14:30:00+02:00 or …Z) or give --timezone with the export's zone, such as --timezone Europe/Berlin",
                    quote(value)
                ),
            ));
        };
        tz.to_timestamp(dt).map_err(|e| {
            Invalid::new(
                Problem::Date,
                format!(
                    "date {} is outside what time zone {} can place ({e})",
                    quote(value),
                    self.timezone_name.as_deref().unwrap_or("?")
                ),
            )
        })
    }
}

/// Splits a list cell (`attachments`, `emailCc`, `emailBcc`): a JSON array of strings if it
/// starts with `[`, else by `sep`; items trimmed, empty items dropped.
pub fn split_list(field: &str, value: &str, sep: char) -> Result<Vec<String>, Invalid> {
    let trimmed = value.trim();
    if trimmed.starts_with('[') {
        return serde_json::from_str::<Vec<String>>(trimmed)
            .map(|items| {
                items
                    .into_iter()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .map_err(|e| {
                Invalid::new(
                    Problem::List,
                    format!(
                        "{field} {} starts with '[' but is not a JSON array of strings ({e}): expected [\"a\",\"b\"] or items separated by '{sep}'",
                        quote(value)
                    ),
                )
            });
    }
    Ok(trimmed
        .split(sep)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Rules across fields of one message, after each field is valid on its own.
pub fn check_message(m: &InboundMessage) -> Vec<Invalid> {
    let mut problems = Vec::new();
    if m.kind.needs_provider() && m.conversation_provider_id.is_none() {
        let why = if m.kind == MessageType::Custom {
            "the API answers a Custom message without one with 201 and an empty body, and stores nothing"
        } else {
            "the API needs the call provider's ID for calls"
        };
        problems.push(Invalid::new(
            Problem::Provider,
            format!(
                "type {} needs a conversationProviderId ({why}): add a column or --set conversationProviderId=ID",
                m.kind.as_str()
            ),
        ));
    }
    let has_content =
        m.message.is_some() || m.html.is_some() || !m.attachments.is_empty() || m.call.is_some();
    if !has_content {
        problems.push(Invalid::new(
            Problem::Content,
            "the message is empty: a row needs at least one of message, html, attachments or call.*",
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let cases: &[(&str, bool, &str)] = &[
            ("ve9EPM428h8vShlRW1KT", true, ""),
            ("abc_123-XYZ", true, ""),
            ("", false, ""),
            ("has space", false, ""),
            ("ann@example.com", false, "e-mail address"),
            ("+15037081210", false, "phone number"),
            ("(503) 708-1210", false, "phone number"),
            (&"x".repeat(65), false, ""),
        ];
        for (input, ok, hint) in cases {
            let r = check_id("contactId", input);
            assert_eq!(r.is_ok(), *ok, "{input}");
            if let Err(e) = r {
                assert_eq!(e.problem, Problem::Id);
                assert!(e.message.contains(hint), "{input}: {}", e.message);
            }
        }
    }

    #[test]
    fn emails() {
        let cases: &[(&str, Result<(), &str>)] = &[
            ("ann@example.com", Ok(())),
            ("ann.lee+tag@mail.example.co.uk", Ok(())),
            ("ann@localhost", Err("not an e-mail address")),
            ("ann.example.com", Err("not an e-mail address")),
            ("ann @example.com", Err("not an e-mail address")),
            ("@example.com", Err("not an e-mail address")),
            ("ann@@example.com", Err("not an e-mail address")),
            ("ann@example..com", Err("not an e-mail address")),
            (
                "Ann Lee <ann@example.com>",
                Err("did you mean ann@example.com?"),
            ),
        ];
        for (input, want) in cases {
            match (check_email("emailTo", input), want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(text)) => {
                    assert_eq!(e.problem, Problem::Email);
                    assert!(e.message.contains(text), "{input}: {}", e.message);
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn attachments() {
        let cases: &[(&str, Option<&str>)] = &[
            ("https://files.example.com/a.jpg", None),
            ("http://files.example.com/path/to/b.pdf", None),
            ("files.example.com/a.jpg", Some("is not absolute")),
            ("ftp://files.example.com/a.jpg", Some("has scheme 'ftp'")),
            (
                "https://files.example.com/a.jpg?alt=media",
                Some("query string"),
            ),
            ("file:///etc/passwd", Some("has scheme 'file'")),
            ("https://", Some("is not a URL")),
            ("not a url", Some("is not absolute")),
        ];
        for (input, want) in cases {
            match (check_attachment(input), want) {
                (Ok(()), None) => {}
                (Err(e), Some(text)) => {
                    assert_eq!(e.problem, Problem::Url);
                    assert!(e.message.contains(text), "{input}: {}", e.message);
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn phones() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("+15037081210", Ok("+15037081210")),
            ("+1 (503) 708-1210", Ok("+15037081210")),
            ("+44 20 7946 0958", Ok("+442079460958")),
            ("+49.30.1234567", Ok("+49301234567")),
            ("5037081210", Err("country code")),
            ("+1503708121099999", Err("E.164")),
            ("+1234", Err("E.164")),
            ("+0123456789", Err("E.164")),
            ("call me", Err("E.164")),
        ];
        for (input, want) in cases {
            match (normalize_phone("call.to", input), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w, "{input}"),
                (Err(e), Err(text)) => {
                    assert_eq!(e.problem, Problem::Phone);
                    assert!(e.message.contains(text), "{input}: {}", e.message);
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn dates_without_format() {
        let berlin = DateReader {
            timezone: Some(TimeZone::get("Europe/Berlin").unwrap()),
            timezone_name: Some("Europe/Berlin".into()),
            ..Default::default()
        };
        let plain = DateReader::default();
        let cases: &[(&DateReader, &str, Result<&str, &str>)] = &[
            (&plain, "2024-03-01T14:30:00Z", Ok("2024-03-01T14:30:00Z")),
            (
                &plain,
                "2024-03-01T14:30:00+02:00",
                Ok("2024-03-01T12:30:00Z"),
            ),
            (
                &plain,
                "2024-03-01 14:30:00-05:00",
                Ok("2024-03-01T19:30:00Z"),
            ),
            (
                &plain,
                "2024-03-01T14:30:00.250Z",
                Ok("2024-03-01T14:30:00.25Z"),
            ),
            (&plain, "2024-03-01T14:30:00", Err("has no UTC offset")),
            (&plain, "2024-03-01", Err("has no time of day")),
            (&plain, "01/03/2024 14:30", Err("--date-format")),
            (&plain, "0000-01-01T00:00:00Z", Err("before 1970")),
            (&plain, "1900-01-01T00:00:00Z", Err("before 1970")),
            (&plain, "9999-12-30T22:00:00Z", Ok("9999-12-30T22:00:00Z")),
            (
                &plain,
                "9999-12-31T23:59:59Z",
                Err("outside the range of dates"),
            ),
            (&plain, "10000-01-01T00:00:00Z", Err("is not an RFC 3339")),
            // A leap second is read as the last second of the minute.
            (&plain, "2016-12-31T23:59:60Z", Ok("2016-12-31T23:59:59Z")),
            (&plain, "2024-02-30T10:00:00Z", Err("not an RFC 3339")),
            (&berlin, "2024-03-01T14:30:00", Ok("2024-03-01T13:30:00Z")),
            (&berlin, "2024-07-01 14:30", Ok("2024-07-01T12:30:00Z")),
            // 02:30 on 2024-03-31 does not exist in Berlin: moved forward by the gap.
            (&berlin, "2024-03-31T02:30:00", Ok("2024-03-31T01:30:00Z")),
            // 02:30 on 2024-10-27 happens twice: the earlier one.
            (&berlin, "2024-10-27T02:30:00", Ok("2024-10-27T00:30:00Z")),
            // An explicit offset wins over --timezone.
            (&berlin, "2024-03-01T14:30:00Z", Ok("2024-03-01T14:30:00Z")),
        ];
        for (reader, input, want) in cases {
            match (reader.read(input), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w, "{input}"),
                (Err(e), Err(text)) => {
                    assert_eq!(e.problem, Problem::Date);
                    assert!(e.message.contains(text), "{input}: {}", e.message);
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn dates_with_format() {
        let ny = Some(TimeZone::get("America/New_York").unwrap());
        let cases: &[(&str, bool, &str, Result<&str, &str>)] = &[
            (
                "%d/%m/%Y %H:%M",
                true,
                "01/03/2024 14:30",
                Ok("2024-03-01T19:30:00Z"),
            ),
            (
                "%d/%m/%Y %H:%M",
                false,
                "01/03/2024 14:30",
                Err("--timezone"),
            ),
            (
                "%d/%m/%Y %H:%M",
                true,
                "2024-03-01 14:30",
                Err("does not match"),
            ),
            (
                "%Y-%m-%d %H:%M:%S %z",
                false,
                "2024-03-01 14:30:00 +0100",
                Ok("2024-03-01T13:30:00Z"),
            ),
            ("%s", false, "1709303400", Ok("2024-03-01T14:30:00Z")),
            ("%d/%m/%Y", true, "01/03/2024", Ok("2024-03-01T05:00:00Z")),
            ("%H:%M", true, "14:30", Err("not a full date")),
        ];
        for (format, tz, input, want) in cases {
            let reader = DateReader {
                format: Some((*format).into()),
                timezone: if *tz { ny.clone() } else { None },
                timezone_name: None,
            };
            match (reader.read(input), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w, "{format} {input}"),
                (Err(e), Err(text)) => {
                    assert!(e.message.contains(text), "{format} {input}: {}", e.message)
                }
                (got, want) => panic!("{format} {input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn lists() {
        let cases: &[(&str, Result<Vec<&str>, Problem>)] = &[
            ("a;b", Ok(vec!["a", "b"])),
            (" a ; ; b ;", Ok(vec!["a", "b"])),
            ("", Ok(vec![])),
            ("single", Ok(vec!["single"])),
            (r#"["a","b; c"]"#, Ok(vec!["a", "b; c"])),
            (r#"[" a ", ""]"#, Ok(vec!["a"])),
            ("[1,2]", Err(Problem::List)),
            ("[unclosed", Err(Problem::List)),
            (
                &format!("{}{}", "[".repeat(200), "]".repeat(200)),
                Err(Problem::List),
            ),
        ];
        for (input, want) in cases {
            let got = split_list("attachments", input, ';');
            match (got, want) {
                (Ok(items), Ok(w)) => assert_eq!(items, *w, "{input}"),
                (Err(e), Err(p)) => assert_eq!(e.problem, *p, "{input}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn cross_field_rules() {
        let base = InboundMessage {
            message: Some("hi".into()),
            ..Default::default()
        };
        let with = |f: &dyn Fn(&mut InboundMessage)| {
            let mut m = base.clone();
            f(&mut m);
            check_message(&m)
                .iter()
                .map(|p| p.problem)
                .collect::<Vec<_>>()
        };
        assert_eq!(with(&|_| {}), vec![]);
        assert_eq!(
            with(&|m| m.kind = MessageType::Custom),
            vec![Problem::Provider]
        );
        assert_eq!(
            with(&|m| m.kind = MessageType::Call),
            vec![Problem::Provider]
        );
        assert_eq!(
            with(&|m| {
                m.kind = MessageType::Custom;
                m.conversation_provider_id = Some("p".into())
            }),
            vec![]
        );
        assert_eq!(with(&|m| m.message = None), vec![Problem::Content]);
        assert_eq!(
            with(&|m| {
                m.message = None;
                m.attachments = vec!["https://x.example/a.png".into()]
            }),
            vec![]
        );
        assert_eq!(
            with(&|m| {
                m.message = None;
                m.call = Some(Default::default())
            }),
            vec![]
        );
    }

    #[test]
    fn quoting_bounds_long_values() {
        let long = "x".repeat(1_000_000);
        assert!(quote(&long).len() < 80);
        assert_eq!(quote("a\nb"), "'a\\nb'");
    }
}
