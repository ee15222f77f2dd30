//! The `date` cell: RFC 3339 / ISO 8601 by default, or `--date-format` with `--timezone` for
//! exports that write civil times; every date is sent as RFC 3339 in UTC. [`DateReader`] is
//! built once from the flags and read per row.

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;

use super::{Invalid, Problem, quote};

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
    /// The cell as RFC 3339 in UTC (`2024-03-01T12:30:00Z`), or why it cannot be read.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
