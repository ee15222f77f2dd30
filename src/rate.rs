//! Rates and durations as a user writes them on the command line: `100/10s`, `20/s`,
//! `6000/m`, `30s`, `250ms`, `50ms..300ms`.
//!
//! Both the importer (`run --rate`) and the sandbox (`sandbox --rate`) read the same
//! syntax, so a user can give both sides the same limit and expect them to agree.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// At most `max` requests in any window of `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed in one window (at least 1 when parsed).
    pub max: u32,
    /// Length of the window (never zero when parsed).
    pub period: Duration,
}

impl Rate {
    /// Requests per second, for plans and reports.
    pub fn per_second(&self) -> f64 {
        f64::from(self.max) / self.period.as_secs_f64()
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let accepted = "a rate is N/PERIOD, such as 100/10s, 20/s, 6000/m or 1000/1h";
        let (n, period) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("'{s}' is not a rate: {accepted}"))?;
        let max: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("'{n}' in '{s}' is not a whole number: {accepted}"))?;
        if max == 0 {
            return Err(format!("'{s}' allows no request at all: {accepted}"));
        }
        let period = period.trim();
        // "s", "m", "h" alone mean one of that unit.
        let period = if period.chars().all(|c| c.is_ascii_alphabetic()) {
            parse_duration(&format!("1{period}"))
        } else {
            parse_duration(period)
        }
        .map_err(|e| format!("{e}; {accepted}"))?;
        if period.is_zero() {
            return Err(format!("'{s}' has a zero period: {accepted}"));
        }
        Ok(Rate { max, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.max, format_duration(self.period))
    }
}

/// Parses `30s`, `250ms`, `2m`, `1h`, `1.5s`, `100us`. A bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (such as 30s, 250ms, 2m, 1h)"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(format!(
                "'{other}' in '{s}' is not a unit of time: use ms, s, m, h or d"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("'{s}' is not a duration (such as 30s, 250ms, 2m, 1h)"))
}

/// The shortest spelling that [`parse_duration`] reads back to the same value.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.subsec_nanos() == 0 {
        let s = d.as_secs();
        if s.is_multiple_of(3600) {
            format!("{}h", s / 3600)
        } else if s.is_multiple_of(60) {
            format!("{}m", s / 60)
        } else {
            format!("{s}s")
        }
    } else if Duration::from_millis(ms as u64) == d {
        format!("{ms}ms")
    } else {
        format!("{}us", d.as_micros())
    }
}

/// A duration range `LOW..HIGH` (or a single value, meaning exactly that).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationRange {
    /// Shortest duration of the range.
    pub low: Duration,
    /// Longest duration of the range; never below `low`.
    pub high: Duration,
}

impl FromStr for DurationRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (low, high) = match s.split_once("..") {
            Some((a, b)) => (parse_duration(a)?, parse_duration(b)?),
            None => {
                let d = parse_duration(s)?;
                (d, d)
            }
        };
        if low > high {
            return Err(format!("'{s}': the low end is above the high end"));
        }
        Ok(DurationRange { low, high })
    }
}

/// A limit that can be switched off: `none` (or `unlimited`) on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit<T>(pub Option<T>);

impl<T: FromStr<Err = E>, E: std::fmt::Display> FromStr for Limit<T> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "none" | "unlimited" => Ok(Limit(None)),
            other => other
                .parse()
                .map(|v| Limit(Some(v)))
                .map_err(|e| format!("{e} (or 'none' for no limit)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        let cases: &[(&str, Option<(u32, u64)>)] = &[
            ("100/10s", Some((100, 10_000))),
            ("20/s", Some((20, 1_000))),
            ("20/1s", Some((20, 1_000))),
            ("6000/m", Some((6000, 60_000))),
            ("1000/1h", Some((1000, 3_600_000))),
            ("5/500ms", Some((5, 500))),
            (" 7 / 2s ", Some((7, 2_000))),
            ("0/s", None),
            ("10", None),
            ("x/s", None),
            ("10/0s", None),
            ("10/3 parsecs", None),
        ];
        for (input, want) in cases {
            let got = input
                .parse::<Rate>()
                .ok()
                .map(|r| (r.max, r.period.as_millis() as u64));
            assert_eq!(got, *want, "{input}");
        }
    }

    #[test]
    fn rate_display_round_trips() {
        for s in ["100/10s", "20/1s", "6000/1m", "5/500ms", "3/2h"] {
            let r: Rate = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
            assert_eq!(r.to_string().parse::<Rate>().unwrap(), r);
        }
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Option<u128>)] = &[
            ("30s", Some(30_000)),
            ("250ms", Some(250)),
            ("2m", Some(120_000)),
            ("1h", Some(3_600_000)),
            ("1.5s", Some(1_500)),
            ("5", Some(5_000)),
            ("", None),
            ("s", None),
            ("3 weeks", None),
            ("-1s", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_duration(input).ok().map(|d| d.as_millis()),
                *want,
                "{input}"
            );
        }
    }

    #[test]
    fn ranges() {
        let r: DurationRange = "50ms..300ms".parse().unwrap();
        assert_eq!((r.low.as_millis(), r.high.as_millis()), (50, 300));
        let r: DurationRange = "10ms".parse().unwrap();
        assert_eq!(r.low, r.high);
        assert!("300ms..50ms".parse::<DurationRange>().is_err());
    }
}
