//! Hostile input (issue 5, part 3): whatever bytes an export holds, the reader, mapping and
//! validation answer with a row error or a request body, never a panic. Through
//! `check_bytes` / `check_fuzz_case`, the same entry points the fuzzer in `fuzz/` drives.

use lc_import::commands::validate::{Checked, check_bytes, check_fuzz_case};
use lc_import::mapping::MappingOptions;
use lc_import::validate::DateReader;
use proptest::prelude::*;

use crate::support;

const HEADER: [&str; 19] = [
    "altId",
    "conversationId",
    "contactId",
    "type",
    "direction",
    "date",
    "message",
    "subject",
    "html",
    "emailFrom",
    "emailTo",
    "emailCc",
    "emailBcc",
    "emailMessageId",
    "attachments",
    "call.to",
    "call.from",
    "call.status",
    "conversationProviderId",
];
const ROW: [&str; 19] = [
    "a1",
    "conv1",
    "cont1",
    "Email",
    "inbound",
    "2024-01-01T10:00:00Z",
    "hello",
    "subject",
    "<p>hi</p>",
    "a@example.com",
    "b@example.com",
    "c@example.com;d@example.com",
    "",
    "",
    "https://example.com/a.png",
    "",
    "",
    "",
    "",
];

/// `bytes` as one quoted CSV cell.
fn quoted(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &b in bytes {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
    out
}

/// The header and one valid row whose cell `column` is replaced by `cell`.
fn file_with_cell(column: usize, cell: &[u8]) -> Vec<u8> {
    let mut out = HEADER.join(",").into_bytes();
    out.push(b'\n');
    for (i, value) in ROW.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if i == column {
            out.extend(quoted(cell));
        } else {
            out.extend_from_slice(value.as_bytes());
        }
    }
    out.push(b'\n');
    out
}

fn check(csv: &[u8]) -> Checked {
    check_bytes(csv, &MappingOptions::default(), b',').expect("the file has a header")
}

#[test]
fn the_base_row_is_valid() {
    assert_eq!(
        check(&file_with_cell(6, b"hello")),
        Checked {
            valid: 1,
            invalid: 0
        }
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any byte string in any cell: one row, mapped or with an error; never a panic.
    #[test]
    fn any_bytes_in_any_cell_map_or_are_a_row_error(
        column in 0..HEADER.len(),
        cell in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let checked = check(&file_with_cell(column, &cell));
        prop_assert_eq!(checked.valid + checked.invalid, 1);
    }

    /// Any bytes as a whole file, with any options: counts or a usage error, never a panic.
    #[test]
    fn any_bytes_as_a_file_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = check_fuzz_case(&data);
    }
}

/// The fuzzer's corpus (`fuzz/corpus/check_bytes`), replayed on stable Rust: a case that once
/// crashed the fuzzer stays fixed.
#[test]
fn the_fuzz_corpus_replays_without_a_panic() {
    let dir = support::repo("fuzz/corpus/check_bytes");
    let mut cases = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus is in the repository") {
        let path = entry.expect("a corpus entry").path();
        let data = std::fs::read(&path).expect("read a corpus case");
        let _ = check_fuzz_case(&data);
        cases += 1;
    }
    assert!(cases >= 10, "only {cases} cases in {}", dir.display());
}

#[test]
fn hostile_files_are_rows_with_errors_not_crashes() {
    let header = "altId,conversationId,contactId,type,direction,date,message,attachments\n";
    let wide_header: String = (0..10_000)
        .map(|i| format!("extra{i},"))
        .collect::<String>()
        + "conversationId,contactId,type,direction,message\n";
    let wide_row = ",".repeat(10_000) + "c1,k1,SMS,inbound,hi\n";
    let nested = format!("{}\"x\"{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge = "x".repeat(8 << 20);
    let cases: Vec<(&str, Vec<u8>, Checked)> = vec![
        (
            "an 8 MiB cell",
            format!("{header}a,c1,k1,SMS,inbound,,{huge},\n").into_bytes(),
            Checked { valid: 1, invalid: 0 },
        ),
        (
            "NUL bytes in an ID cell and in the type cell",
            format!("{header}a,c1\0,k1,SMS,inbound,,hi \0 there,\nb,c1,k1,SMS\0,inbound,,x,\n")
                .into_bytes(),
            Checked { valid: 0, invalid: 2 },
        ),
        (
            "mixed line ends: LF, CRLF, a lone CR inside a quoted cell",
            format!(
                "{}\r\na,c1,k1,SMS,inbound,,one,\r\nb,c1,k1,SMS,inbound,,\"two\rlines\",\nc,c1,k1,SMS,inbound,,three,\r\n",
                header.trim_end()
            )
            .into_bytes(),
            Checked { valid: 3, invalid: 0 },
        ),
        (
            "a header of 10,000 columns",
            format!("{wide_header}{wide_row}").into_bytes(),
            Checked { valid: 1, invalid: 0 },
        ),
        (
            "100,000 levels of nested JSON in a list cell",
            format!("{header}a,c1,k1,SMS,inbound,,hi,\"{}\"\n", nested.replace('"', "\"\""))
                .into_bytes(),
            Checked { valid: 0, invalid: 1 },
        ),
        (
            "dates at the edges: year 0, year 9999, a leap second, no such day",
            format!(
                "{header}a,c1,k1,SMS,inbound,0000-01-01T00:00:00Z,x,\n\
                 b,c1,k1,SMS,inbound,9999-12-31T23:59:59Z,x,\n\
                 c,c1,k1,SMS,inbound,2016-12-31T23:59:60Z,x,\n\
                 d,c1,k1,SMS,inbound,2023-02-29T10:00:00Z,x,\n\
                 e,c1,k1,SMS,inbound,-009999-01-01T00:00:00Z,x,\n\
                 f,c1,k1,SMS,inbound,99999-01-01T00:00:00Z,x,\n"
            )
            .into_bytes(),
            // The leap second is read as :59, a real instant. Year 0 and -9999 are before 1970
            // (placeholders), 29 February 2023 does not exist, year 99999 has no RFC 3339 form,
            // and 9999-12-31T23:59:59Z is past the last instant jiff holds (9999-12-30T22:00Z).
            Checked {
                valid: 1,
                invalid: 5,
            },
        ),
    ];
    for (what, csv, want) in cases {
        let got = check(&csv);
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn dst_gaps_and_folds_with_a_timezone() {
    let options = MappingOptions {
        dates: DateReader {
            formats: vec![lc_import::validate::DateFormat::Strftime(
                "%d/%m/%Y %H:%M".into(),
            )],
            timezone: jiff::tz::TimeZone::get("Europe/Berlin").ok(),
            timezone_name: Some("Europe/Berlin".into()),
            epoch_column: None,
        },
        ..MappingOptions::default()
    };
    let csv = "conversationId,contactId,type,direction,date,message\n\
               c1,k1,SMS,inbound,29/03/2026 02:30,in the spring-forward gap\n\
               c1,k1,SMS,inbound,25/10/2026 02:30,in the autumn fold\n\
               c1,k1,SMS,inbound,31/12/9999 23:59,the last minute\n\
               c1,k1,SMS,inbound,30/02/2026 10:00,no such day\n";
    let got = check_bytes(csv.as_bytes(), &options, b',').expect("a header");
    // The gap moves forward, the fold takes the earlier instant (README "Columns"); the last
    // minute of 9999 in Berlin is past the last instant jiff holds (9999-12-30T22:00Z, so that
    // every offset can show it): a row error, not a crash.
    assert_eq!(
        got,
        Checked {
            valid: 2,
            invalid: 2
        }
    );
}
