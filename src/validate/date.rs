//! The `date` cell. Without flags it reads the forms exports write: RFC 3339, ISO 8601 with a
//! space instead of `T`, offsets written `Z`, `+00:00`, `+0000`, ` +0000` or ` UTC`, RFC 2822
//! (`Tue, 05 Mar 2024 14:22:01 +0000`), and Unix times in a column named for them
//! (`epoch`, `unix`, `…_ms`). `--date-format` (repeatable, tried in order) takes strftime formats
//! and `epoch-s` / `epoch-ms`; `--timezone` places civil times. Every date is sent as RFC 3339
//! in UTC. [`DateReader`] is built once from the flags and read per row; its errors say what
//! was written and what would be accepted, never the parser's internals.

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;

use super::{Invalid, Problem, quote};

/// One `--date-format`: a strftime format, or a Unix time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DateFormat {
    /// strftime codes, such as `%d/%m/%Y %H:%M`.
    Strftime(String),
    /// Seconds since 1970-01-01T00:00:00Z (`epoch-s`).
    EpochSeconds,
    /// Milliseconds since 1970-01-01T00:00:00Z (`epoch-ms`).
    EpochMillis,
}

impl DateFormat {
    /// Reads a `--date-format` value: `epoch-s`, `epoch-ms`, or strftime codes.
    pub fn parse(value: &str) -> Result<DateFormat, String> {
        match value.trim() {
            "epoch-s" | "epoch" | "unix" | "%s" => Ok(DateFormat::EpochSeconds),
            "epoch-ms" | "unix-ms" => Ok(DateFormat::EpochMillis),
            f if f.contains('%') => Ok(DateFormat::Strftime(f.to_owned())),
            f => Err(format!(
                "--date-format '{f}' has no % conversion: expected strftime codes such as '%d/%m/%Y %H:%M', or epoch-s / epoch-ms for Unix times"
            )),
        }
    }

    /// As the user writes it.
    pub fn as_str(&self) -> &str {
        match self {
            DateFormat::Strftime(f) => f,
            DateFormat::EpochSeconds => "epoch-s",
            DateFormat::EpochMillis => "epoch-ms",
        }
    }

    /// The Unix-time unit a column's name announces (`sent_epoch`, `unix_time`, `date_ms`,
    /// `timestamp_millis`), if any.
    pub fn from_column_name(name: &str) -> Option<DateFormat> {
        let folded: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let millis = ["ms", "millis", "milliseconds", "msec"]
            .iter()
            .any(|s| folded.ends_with(s));
        let unix = ["epoch", "unix", "timestamp"]
            .iter()
            .any(|s| folded.contains(s));
        match (unix, millis) {
            (_, true) if unix || folded.starts_with("date") || folded.starts_with("time") => {
                Some(DateFormat::EpochMillis)
            }
            (true, false) if folded.contains("epoch") || folded.contains("unix") => {
                Some(DateFormat::EpochSeconds)
            }
            _ => None,
        }
    }
}

/// Reads `date` cells and writes them as RFC 3339 in UTC.
#[derive(Clone, Debug, Default)]
pub struct DateReader {
    /// `--date-format`, tried in order; empty: the forms read without flags.
    pub formats: Vec<DateFormat>,
    /// For dates written without an offset (`--timezone`).
    pub timezone: Option<TimeZone>,
    /// The name given with `--timezone`, for messages.
    pub timezone_name: Option<String>,
    /// Without `--date-format`: the Unix-time unit the date column's name announces.
    pub epoch_column: Option<DateFormat>,
}

/// Dates before this are refused: they are placeholders of an export (`0001-01-01`,
/// `1900-01-01`), and would sink to the bottom of a timeline.
const EARLIEST: Timestamp = Timestamp::UNIX_EPOCH;

/// What is read without flags, for error messages.
const ACCEPTED: &str = "accepted without flags: 2024-03-05T14:22:01Z or …+01:00 (RFC 3339), 2024-03-05 14:22:01 with +00:00, +0000, ' +0000', Z or ' UTC' (ISO 8601), Tue, 05 Mar 2024 14:22:01 +0000 (RFC 2822); for other forms give --date-format (strftime such as '%d/%m/%Y %H:%M', or epoch-s / epoch-ms; repeat it to try several) and --timezone for times without an offset";

impl DateReader {
    /// The cell as RFC 3339 in UTC (`2024-03-01T12:30:00Z`), or why it cannot be read.
    pub fn read(&self, value: &str) -> Result<String, Invalid> {
        self.timestamp(value).map(|ts| ts.to_string())
    }

    /// The cell as an instant, or why it cannot be read.
    pub fn timestamp(&self, value: &str) -> Result<Timestamp, Invalid> {
        let ts = if self.formats.is_empty() {
            match &self.epoch_column {
                Some(unit) if is_integer(value) => read_epoch(unit, value)?,
                _ => self.read_default(value)?,
            }
        } else {
            self.read_with_formats(value)?
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
        Ok(ts)
    }

    fn read_default(&self, value: &str) -> Result<Timestamp, Invalid> {
        // The common case first, at the cost of one parse.
        if let Ok(ts) = value.parse::<Timestamp>() {
            return Ok(ts);
        }
        // ` +0000`, ` UTC`, ` GMT`, ` Z`: an offset written apart from the time.
        if let Some(joined) = join_offset(value)
            && let Ok(ts) = joined.parse::<Timestamp>()
        {
            return Ok(ts);
        }
        if value.bytes().any(|b| b.is_ascii_alphabetic())
            && let Ok(zoned) = jiff::fmt::rfc2822::parse(value)
        {
            return Ok(zoned.timestamp());
        }
        // A bare date parses as a DateTime at midnight; refuse it rather than invent a time.
        let date_only = !value.contains(':') && value.parse::<jiff::civil::Date>().is_ok();
        if !date_only && let Ok(dt) = value.parse::<DateTime>() {
            return self.in_timezone(dt, value);
        }
        let what = if date_only {
            "has no time of day".to_owned()
        } else if is_integer(value) {
            "looks like a Unix time: say its unit with --date-format epoch-s (seconds) or epoch-ms (milliseconds), or name the column for it (such as sent_epoch or date_ms)".to_owned()
        } else if looks_iso(value) && value.get(..4).is_some_and(|y| y < "9999") {
            "is not a real date and time (check the day of the month, the hour and the minute)"
                .to_owned()
        } else if looks_iso(value) {
            // Well formed, but past what a timestamp holds (jiff ends at 9999-12-30T22:00Z).
            "is outside the range of dates that can be sent (1970 to 9999-12-30)".to_owned()
        } else {
            "is not a date-time in a form read without --date-format".to_owned()
        };
        Err(Invalid::new(
            Problem::Date,
            format!("date {} {what}; {ACCEPTED}", quote(value)),
        ))
    }

    fn read_with_formats(&self, value: &str) -> Result<Timestamp, Invalid> {
        let mut not_full = None;
        for format in &self.formats {
            let f = match format {
                DateFormat::Strftime(f) => f,
                unit => {
                    if is_integer(value) {
                        return read_epoch(unit, value);
                    }
                    continue;
                }
            };
            let Ok(parsed) = jiff::fmt::strtime::parse(f, value) else {
                continue;
            };
            if let Ok(ts) = parsed.to_timestamp() {
                return Ok(ts);
            }
            match parsed.to_datetime() {
                Ok(dt) => return self.in_timezone(dt, value),
                Err(_) => not_full = Some(f.clone()),
            }
        }
        if let Some(f) = not_full {
            return Err(Invalid::new(
                Problem::Date,
                format!(
                    "date {} read with --date-format '{f}' is not a full date and time: the format needs the year, month, day, hour and minute",
                    quote(value)
                ),
            ));
        }
        let described: Vec<String> = self
            .formats
            .iter()
            .map(|f| format!("'{}' (such as {})", f.as_str(), example(f)))
            .collect();
        let what = match described.as_slice() {
            [one] => format!("does not match --date-format {one}"),
            several => format!(
                "matches none of the --date-format values: expected {}",
                several.join(", or ")
            ),
        };
        Err(Invalid::new(
            Problem::Date,
            format!("date {} {what}", quote(value)),
        ))
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
        tz.to_timestamp(dt).map_err(|_| {
            Invalid::new(
                Problem::Date,
                format!(
                    "date {} is outside the range of dates time zone {} can place (1970 to 9999)",
                    quote(value),
                    self.timezone_name.as_deref().unwrap_or("?")
                ),
            )
        })
    }
}

/// `2024-03-05 14:22:01 +0000` → `2024-03-05 14:22:01+0000`; ` UTC` / ` GMT` / ` Z` → `Z`.
fn join_offset(value: &str) -> Option<String> {
    let (time, zone) = value.rsplit_once(' ')?;
    if !time.contains(':') {
        return None;
    }
    if zone.eq_ignore_ascii_case("utc") || zone.eq_ignore_ascii_case("gmt") || zone == "Z" {
        return Some(format!("{time}Z"));
    }
    let digits = zone.strip_prefix(['+', '-'])?;
    (digits.len() >= 2 && digits.bytes().all(|b| b.is_ascii_digit() || b == b':'))
        .then(|| format!("{time}{zone}"))
}

fn is_integer(value: &str) -> bool {
    !value.is_empty() && value.len() <= 19 && value.bytes().all(|b| b.is_ascii_digit())
}

/// `YYYY-MM-DD…`: an ISO 8601 shape, whatever its numbers.
fn looks_iso(value: &str) -> bool {
    let b = value.as_bytes();
    b.len() >= 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[7] == b'-'
}

fn read_epoch(unit: &DateFormat, value: &str) -> Result<Timestamp, Invalid> {
    let range = || {
        Invalid::new(
            Problem::Date,
            format!(
                "date {} read as {} is outside the range of dates that can be sent (1970 to 9999)",
                quote(value),
                unit.as_str()
            ),
        )
    };
    let n: i64 = value.parse().map_err(|_| range())?;
    match unit {
        DateFormat::EpochMillis => Timestamp::from_millisecond(n),
        _ => Timestamp::from_second(n),
    }
    .map_err(|_| range())
}

/// The format applied to 2024-03-05 14:22:01 UTC, to show what it expects.
fn example(format: &DateFormat) -> String {
    let sample = Timestamp::from_second(1_709_648_521).expect("a fixed instant");
    match format {
        DateFormat::EpochSeconds => "1709648521".to_owned(),
        DateFormat::EpochMillis => "1709648521000".to_owned(),
        DateFormat::Strftime(f) => {
            jiff::fmt::strtime::format(f, &sample.to_zoned_datetime(TimeZone::UTC))
                .unwrap_or_else(|_| f.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin() -> DateReader {
        DateReader {
            timezone: Some(TimeZone::get("Europe/Berlin").unwrap()),
            timezone_name: Some("Europe/Berlin".into()),
            ..Default::default()
        }
    }

    fn check(reader: &DateReader, cases: &[(&str, Result<&str, &str>)]) {
        for (input, want) in cases {
            match (reader.read(input), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w, "{input}"),
                (Err(e), Err(text)) => {
                    assert_eq!(e.problem, Problem::Date);
                    assert!(e.message.contains(text), "{input}: {}", e.message);
                    // The user's words, never the parser's.
                    for internal in ["unparsed input", "expected no", "failed to parse"] {
                        assert!(!e.message.contains(internal), "{input}: {}", e.message);
                    }
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_forms_exports_write_are_read_without_flags() {
        let want = Ok("2024-03-05T14:22:01Z");
        check(
            &DateReader::default(),
            &[
                ("2024-03-05T14:22:01Z", want),
                ("2024-03-05T15:22:01+01:00", want),
                ("2024-03-05 14:22:01Z", want),
                ("2024-03-05 14:22:01+00:00", want),
                ("2024-03-05 14:22:01+0000", want),
                ("2024-03-05 14:22:01 +0000", want),
                ("2024-03-05 09:22:01 -0500", want),
                ("2024-03-05 14:22:01 UTC", want),
                ("2024-03-05T14:22:01 GMT", want),
                ("Tue, 05 Mar 2024 14:22:01 +0000", want),
                ("Tue, 05 Mar 2024 14:22:01 GMT", want),
                ("5 Mar 2024 15:22:01 +0100", want),
                ("2024-03-01T14:30:00.250Z", Ok("2024-03-01T14:30:00.25Z")),
                // A leap second is read as the last second of the minute.
                ("2016-12-31T23:59:60Z", Ok("2016-12-31T23:59:59Z")),
                ("9999-12-30T22:00:00Z", Ok("9999-12-30T22:00:00Z")),
            ],
        );
    }

    #[test]
    fn dates_that_cannot_be_read_say_so_in_the_users_words() {
        check(
            &DateReader::default(),
            &[
                ("2024-03-01T14:30:00", Err("has no UTC offset")),
                ("2024-03-01", Err("has no time of day")),
                ("01/03/2024 14:30", Err("--date-format")),
                ("01/03/2024 14:30", Err("RFC 2822")),
                (
                    "yesterday",
                    Err("is not a date-time in a form read without"),
                ),
                ("1709648521", Err("looks like a Unix time")),
                ("0000-01-01T00:00:00Z", Err("before 1970")),
                ("1900-01-01T00:00:00Z", Err("before 1970")),
                ("9999-12-31T23:59:59Z", Err("outside the range of dates")),
                ("10000-01-01T00:00:00Z", Err("is not a date-time")),
                ("2024-02-30T10:00:00Z", Err("is not a real date and time")),
                ("Tue, 35 Mar 2024 14:22:01 +0000", Err("RFC 2822")),
            ],
        );
    }

    #[test]
    fn civil_times_take_the_timezone() {
        check(
            &berlin(),
            &[
                ("2024-03-01T14:30:00", Ok("2024-03-01T13:30:00Z")),
                ("2024-07-01 14:30", Ok("2024-07-01T12:30:00Z")),
                // 02:30 on 2024-03-31 does not exist in Berlin: moved forward by the gap.
                ("2024-03-31T02:30:00", Ok("2024-03-31T01:30:00Z")),
                // 02:30 on 2024-10-27 happens twice: the earlier one.
                ("2024-10-27T02:30:00", Ok("2024-10-27T00:30:00Z")),
                // An explicit offset wins over --timezone.
                ("2024-03-01T14:30:00Z", Ok("2024-03-01T14:30:00Z")),
                ("2024-03-01 14:30:00 UTC", Ok("2024-03-01T14:30:00Z")),
            ],
        );
    }

    #[test]
    fn unix_times_by_column_name_or_format() {
        let by_name = |name: &str| DateReader {
            epoch_column: DateFormat::from_column_name(name),
            ..Default::default()
        };
        check(
            &by_name("sent_epoch"),
            &[
                ("1709648521", Ok("2024-03-05T14:22:01Z")),
                // Other forms are still read in such a column.
                ("2024-03-05T14:22:01Z", Ok("2024-03-05T14:22:01Z")),
            ],
        );
        check(
            &by_name("date_ms"),
            &[("1709648521000", Ok("2024-03-05T14:22:01Z"))],
        );
        check(
            &by_name("Unix Timestamp (ms)"),
            &[("1709648521250", Ok("2024-03-05T14:22:01.25Z"))],
        );
        assert_eq!(DateFormat::from_column_name("SentDate"), None);
        assert_eq!(DateFormat::from_column_name("items"), None);
        assert_eq!(DateFormat::from_column_name("terms"), None);
        let ms = DateReader {
            formats: vec![DateFormat::EpochMillis],
            ..Default::default()
        };
        check(
            &ms,
            &[
                ("1709648521000", Ok("2024-03-05T14:22:01Z")),
                ("99999999999999999", Err("outside the range")),
                (
                    "2024-03-05T14:22:01Z",
                    Err("does not match --date-format 'epoch-ms'"),
                ),
            ],
        );
    }

    #[test]
    fn several_formats_are_tried_in_order() {
        let ny = Some(TimeZone::get("America/New_York").unwrap());
        let formats = |fs: &[&str], tz: bool| DateReader {
            formats: fs.iter().map(|f| DateFormat::parse(f).unwrap()).collect(),
            timezone: if tz { ny.clone() } else { None },
            ..Default::default()
        };
        check(
            &formats(&["%d/%m/%Y %H:%M"], true),
            &[
                ("01/03/2024 14:30", Ok("2024-03-01T19:30:00Z")),
                (
                    "2024-03-01 14:30",
                    Err("does not match --date-format '%d/%m/%Y %H:%M' (such as 05/03/2024 14:22)"),
                ),
            ],
        );
        check(
            &formats(&["%d/%m/%Y %H:%M"], false),
            &[("01/03/2024 14:30", Err("--timezone"))],
        );
        let several = formats(&["%d/%m/%Y %H:%M", "%Y-%m-%d %H:%M:%S %z", "epoch-s"], true);
        check(
            &several,
            &[
                ("01/03/2024 14:30", Ok("2024-03-01T19:30:00Z")),
                ("2024-03-01 14:30:00 +0100", Ok("2024-03-01T13:30:00Z")),
                ("1709303400", Ok("2024-03-01T14:30:00Z")),
                (
                    "March 1st",
                    Err(
                        "matches none of the --date-format values: expected '%d/%m/%Y %H:%M' (such as 05/03/2024 14:22), or '%Y-%m-%d %H:%M:%S %z' (such as 2024-03-05 14:22:01 +0000), or 'epoch-s' (such as 1709648521)",
                    ),
                ),
            ],
        );
        check(
            &formats(&["%s"], false),
            &[("1709303400", Ok("2024-03-01T14:30:00Z"))],
        );
        check(
            &formats(&["%d/%m/%Y"], true),
            &[("01/03/2024", Ok("2024-03-01T05:00:00Z"))],
        );
        check(
            &formats(&["%H:%M"], true),
            &[("14:30", Err("not a full date"))],
        );
        assert!(
            DateFormat::parse("dd/mm/yyyy")
                .unwrap_err()
                .contains("epoch-s")
        );
    }
}
