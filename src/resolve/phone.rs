//! Phone numbers of a CRM export turned into E.164 (`+15037081210`), the form HighLevel stores and
//! the form its duplicate search matches (FACTS §4: the `number` parameter, `+` URL-encoded).
//!
//! Exports write numbers every way: `+1 (503) 708-1210`, `0044 20 7946 0958`, `020 7946 0958`
//! (national, with the trunk prefix 0), `503.708.1210`. A number with a country code (`+` or the
//! international prefix `00`) is kept as it is; a national number needs `--default-country`, which
//! supplies the calling code and says whether a leading trunk `0` is dropped. Pure: tested below.

use crate::validate::{Invalid, Problem, quote};

/// The country national numbers are read in (`--default-country`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Country {
    /// The country calling code, without `+`.
    pub code: u16,
    /// National numbers start with a trunk prefix `0` that E.164 drops (most countries outside
    /// North America; not Italy, where the 0 is part of the number).
    pub trunk_zero: bool,
}

/// ISO 3166 alpha-2 → calling code, for the countries a migration is most likely to come from.
/// Any other country can be given by its calling code (`--default-country +352`).
const COUNTRIES: &[(&str, u16)] = &[
    ("US", 1),
    ("CA", 1),
    ("PR", 1),
    ("GB", 44),
    ("UK", 44),
    ("IE", 353),
    ("AU", 61),
    ("NZ", 64),
    ("DE", 49),
    ("AT", 43),
    ("CH", 41),
    ("FR", 33),
    ("BE", 32),
    ("NL", 31),
    ("LU", 352),
    ("IT", 39),
    ("ES", 34),
    ("PT", 351),
    ("SE", 46),
    ("NO", 47),
    ("DK", 45),
    ("FI", 358),
    ("IS", 354),
    ("PL", 48),
    ("CZ", 420),
    ("SK", 421),
    ("HU", 36),
    ("RO", 40),
    ("BG", 359),
    ("GR", 30),
    ("HR", 385),
    ("SI", 386),
    ("RS", 381),
    ("UA", 380),
    ("TR", 90),
    ("IL", 972),
    ("AE", 971),
    ("SA", 966),
    ("QA", 974),
    ("EG", 20),
    ("ZA", 27),
    ("NG", 234),
    ("KE", 254),
    ("MA", 212),
    ("IN", 91),
    ("PK", 92),
    ("BD", 880),
    ("LK", 94),
    ("SG", 65),
    ("MY", 60),
    ("TH", 66),
    ("VN", 84),
    ("PH", 63),
    ("ID", 62),
    ("JP", 81),
    ("KR", 82),
    ("CN", 86),
    ("HK", 852),
    ("TW", 886),
    ("MX", 52),
    ("BR", 55),
    ("AR", 54),
    ("CL", 56),
    ("CO", 57),
    ("PE", 51),
    ("VE", 58),
    ("EC", 593),
    ("UY", 598),
    ("CR", 506),
    ("PA", 507),
    ("DO", 1),
    ("JM", 1),
];

/// Countries whose national numbers keep their leading 0 in E.164.
const KEEPS_ZERO: &[u16] = &[39, 378, 379];

impl std::str::FromStr for Country {
    type Err = String;

    /// `US`, `gb`, `+44` or `44`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let code = if let Some((_, code)) = COUNTRIES
            .iter()
            .find(|(iso, _)| iso.eq_ignore_ascii_case(s))
        {
            *code
        } else {
            let digits = s.strip_prefix('+').unwrap_or(s);
            match digits.parse::<u16>() {
                Ok(c) if (1..=999).contains(&c) && !digits.starts_with('0') => c,
                _ => {
                    return Err(format!(
                        "'{s}' is not a country: expected a two-letter code such as US, GB or DE, or a calling code such as +44"
                    ));
                }
            }
        };
        Ok(Country {
            code,
            trunk_zero: !KEEPS_ZERO.contains(&code),
        })
    }
}

/// A phone number as E.164, or what is wrong with it. `field` names it in the message.
pub fn normalize(field: &str, value: &str, country: Option<Country>) -> Result<String, Invalid> {
    let kept: String = value
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')' | '/' | '\u{a0}'))
        .collect();
    let bad = |why: &str| {
        Err(Invalid::new(
            Problem::Phone,
            format!(
                "{field} {} {why}: expected + and 8 to 15 digits such as +15037081210",
                quote(value)
            ),
        ))
    };
    let international = if let Some(rest) = kept.strip_prefix('+') {
        rest.to_owned()
    } else if let Some(rest) = kept.strip_prefix("00") {
        rest.to_owned()
    } else if !kept.is_empty() && kept.bytes().all(|b| b.is_ascii_digit()) {
        let Some(country) = country else {
            return bad(
                "has no country code: write it with + and the country code, or give --default-country",
            );
        };
        national(&kept, country)
    } else {
        return bad("is not a phone number");
    };
    if (8..=15).contains(&international.len())
        && international.bytes().all(|b| b.is_ascii_digit())
        && !international.starts_with('0')
    {
        Ok(format!("+{international}"))
    } else {
        bad("is not an E.164 phone number")
    }
}

/// A national number with the country's calling code in front (without `+`).
fn national(digits: &str, country: Country) -> String {
    let rest = if country.code == 1 {
        // North America writes the trunk prefix 1 (`1 503 708 1210`) and never a 0.
        match digits.strip_prefix('1') {
            Some(r) if digits.len() == 11 => r,
            _ => digits,
        }
    } else if country.trunk_zero {
        digits.strip_prefix('0').unwrap_or(digits)
    } else {
        digits
    };
    format!("{}{rest}", country.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Option<Country> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn numbers_become_e164() {
        let cases: &[(&str, Option<Country>, Result<&str, &str>)] = &[
            ("+1 (503) 708-1210", None, Ok("+15037081210")),
            ("0044 20 7946 0958", None, Ok("+442079460958")),
            ("(503) 708-1210", c("US"), Ok("+15037081210")),
            ("1-503-708-1210", c("us"), Ok("+15037081210")),
            ("020 7946 0958", c("GB"), Ok("+442079460958")),
            ("030 1234567", c("+49"), Ok("+49301234567")),
            ("06 1234 5678", c("IT"), Ok("+390612345678")),
            ("+44 20 7946 0958", c("US"), Ok("+442079460958")),
            ("5037081210", None, Err("has no country code")),
            ("call me", c("US"), Err("is not a phone number")),
            ("+1 503", None, Err("is not an E.164 phone number")),
            ("+0 503 708 1210", None, Err("is not an E.164 phone number")),
        ];
        for (input, country, want) in cases {
            match (normalize("contactPhone", input, *country), want) {
                (Ok(got), Ok(w)) => assert_eq!(&got, w, "{input}"),
                (Err(e), Err(w)) => assert!(e.message.contains(w), "{input}: {}", e.message),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn countries_parse_by_code_or_calling_code() {
        assert_eq!(c("gb"), c("+44"));
        assert_eq!(
            "352".parse::<Country>(),
            Ok(Country {
                code: 352,
                trunk_zero: true
            })
        );
        assert!("Narnia".parse::<Country>().is_err());
        assert!("+0".parse::<Country>().is_err());
    }
}
