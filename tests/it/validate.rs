//! `lc-import validate` on the bundled samples and on a corpus of malformed CSV.

use crate::support::WorkDir;

/// Statuses and errors of a results file, in row order.
fn outcomes(w: &WorkDir, results: &str) -> Vec<(String, String, String)> {
    w.results(results)
        .into_iter()
        .map(|r| (r["row"].clone(), r["status"].clone(), r["error"].clone()))
        .collect()
}

#[test]
fn the_sample_export_is_all_valid() {
    let w = WorkDir::new();
    w.copy("samples/messages.csv");
    let out = w.run(&["validate", "messages.csv"]);
    out.expect_code(0);
    assert!(
        out.stdout.contains("messages.csv: 200 rows checked in"),
        "{out:?}"
    );
    assert!(out.stdout.contains(": 200 valid, 0 invalid"), "{out:?}");
    // contact_name is a migration field (it names contacts created by lookups): no warning
    // that it "maps to no field".
    assert!(!out.stderr.contains("maps to no field"), "{out:?}");
    let rows = w.results("messages.validation.csv");
    assert_eq!(rows.len(), 200);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["row"], (i + 1).to_string());
        assert_eq!(r["status"], "valid");
        // altId is mapped, so it is the key.
        assert_eq!(r["key"], format!("crm-{:05}", i + 1));
    }
}

#[test]
fn show_prints_the_exact_request_bodies() {
    let w = WorkDir::new();
    w.copy("samples/messages.csv");
    let out = w.run(&["validate", "messages.csv", "--show", "2"]);
    out.expect_code(0);
    // The column → field table comes first, then the bodies.
    let (table, rows) = out
        .stdout
        .split_once("row 1 (line 2):")
        .expect("a first row");
    assert!(
        table.contains("  message                ← column \"message\""),
        "{out:?}"
    );
    let json = rows.split("row 2 (line 3):").next().unwrap().trim();
    let body: serde_json::Value = serde_json::from_str(json).expect("pretty JSON");
    assert_eq!(
        body,
        serde_json::json!({
            "type": "SMS",
            "conversationId": "R8acRYSi4MDF8kWCBX1K",
            "contactId": "peZUaLJ4d8jOCs4bWYTI",
            "message": "Sure, the invoice is on its way to your inbox.",
            "altId": "crm-00001",
            "direction": "outbound",
            "date": "2023-02-21T00:29:00Z"
        })
    );
    assert!(!out.stdout.contains("row 3 (line"), "{out:?}");
}

#[test]
fn every_mistake_in_bad_csv_gets_its_error() {
    let w = WorkDir::new();
    w.copy("samples/bad.csv");
    let out = w.run(&["validate", "bad.csv", "--results", "out.csv"]);
    out.expect_code(1);
    assert!(out.stdout.contains(": 0 valid, 25 invalid"), "{out:?}");
    assert!(
        out.stdout
            .contains("most frequent errors in bad.csv:\n  4  bad date"),
        "{out:?}"
    );
    // The first column of bad.csv says which error its row must produce.
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(w.path("bad.csv"))
        .unwrap();
    let expected: Vec<String> = reader.records().map(|r| r.unwrap()[0].to_owned()).collect();
    let got = outcomes(&w, "out.csv");
    assert_eq!(got.len(), expected.len());
    for ((row, status, error), want) in got.iter().zip(&expected) {
        assert_eq!(status, "invalid", "row {row}");
        assert!(
            error.contains(want.as_str()),
            "row {row}:\n got {error}\nwant {want}"
        );
        assert!(
            error.starts_with("line "),
            "row {row} names its line: {error}"
        );
    }
}

#[test]
fn ragged_rows_are_recorded_and_reading_goes_on() {
    let w = WorkDir::new();
    w.copy("tests/corpus/ragged.csv");
    let out = w.run(&["validate", "ragged.csv"]);
    out.expect_code(1);
    let got = outcomes(&w, "ragged.validation.csv");
    assert_eq!(
        got,
        vec![
            ("1".into(), "valid".into(), "".into()),
            ("2".into(), "invalid".into(), "line 3: the row has 7 cells but the header has 6 (1 too many: a cell probably holds an unquoted delimiter): every row needs one cell per header column, and a cell that contains the delimiter must be quoted".into()),
            ("3".into(), "invalid".into(), "line 4: the row has 4 cells but the header has 6 (column 5 (date) and after are missing): every row needs one cell per header column, and a cell that contains the delimiter must be quoted".into()),
            ("4".into(), "valid".into(), "".into()),
        ]
    );
}

#[test]
fn invalid_utf8_names_the_cell() {
    let w = WorkDir::new();
    w.copy("tests/corpus/bad_utf8.csv");
    w.run(&["validate", "bad_utf8.csv"]).expect_code(1);
    let got = outcomes(&w, "bad_utf8.validation.csv");
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[1],
        (
            "2".into(),
            "invalid".into(),
            "line 3, column 6 (message): the cell is not valid UTF-8 (byte 4 of the cell is not): give the export's encoding with --encoding LABEL, or save it as UTF-8".into()
        )
    );
    assert_eq!((got[0].1.as_str(), got[2].1.as_str()), ("valid", "valid"));
}

#[test]
fn an_unterminated_quote_is_one_row_error_and_reading_resumes() {
    let w = WorkDir::new();
    w.copy("tests/corpus/unterminated_quote.csv");
    w.run(&["validate", "unterminated_quote.csv"])
        .expect_code(1);
    let got = outcomes(&w, "unterminated_quote.validation.csv");
    assert_eq!(
        got,
        vec![
            ("1".into(), "valid".into(), "".into()),
            ("2".into(), "invalid".into(), "line 3, column 6 (message): a quoted cell is not closed where its row ends: it runs on to line 6, so lines 3 to 6 were read as one row of 7 cells (the header has 6); close the quote, and write a quote inside a cell as two quotes (\"\")".into()),
            ("3".into(), "valid".into(), "".into()),
        ]
    );
}

#[test]
fn bom_and_crlf_are_read_transparently() {
    let w = WorkDir::new();
    w.copy("tests/corpus/bom.csv");
    w.copy("tests/corpus/crlf.csv");
    let out = w.run(&["validate", "bom.csv", "--show", "1"]);
    out.expect_code(0);
    // The BOM is not part of the first column's name, so conversationId maps.
    assert!(out.stdout.contains("\"conversationId\": \"c1\""), "{out:?}");
    assert!(!out.stderr.contains("warning"), "{out:?}");
    let out = w.run(&["validate", "crlf.csv", "--show", "3"]);
    out.expect_code(0);
    // Line numbers stay exact across CRLF line ends and a two-line cell.
    assert!(out.stdout.contains("row 2 (line 3)"), "{out:?}");
    assert!(out.stdout.contains("row 3 (line 5)"), "{out:?}");
    assert!(
        out.stdout.contains("\"message\": \"two\\r\\nlines\""),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("\"message\": \"hello 3\""),
        "no \\r left on the last cell: {out:?}"
    );
}

#[test]
fn an_empty_file_is_a_usage_error() {
    let w = WorkDir::new();
    w.copy("tests/corpus/empty.csv");
    let out = w.run(&["validate", "empty.csv"]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("error: empty.csv is empty: expected a header row naming the columns"),
        "{out:?}"
    );
    assert!(!w.path("empty.validation.csv").exists());
}

#[test]
fn a_header_only_file_has_no_rows() {
    let w = WorkDir::new();
    w.copy("tests/corpus/header_only.csv");
    let out = w.run(&["validate", "header_only.csv"]);
    out.expect_code(0);
    assert!(out.stdout.contains(": 0 rows checked in"), "{out:?}");
    assert_eq!(w.results("header_only.validation.csv").len(), 0);
}

#[test]
fn duplicate_header_names() {
    let w = WorkDir::new();
    w.copy("tests/corpus/duplicate_headers.csv");
    w.copy("tests/corpus/duplicate_unmapped_headers.csv");
    let out = w.run(&["validate", "duplicate_headers.csv"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("columns 5 (message) and 6 (Message) both match field message: rename one, or choose with --map message=COLUMN"),
        "{out:?}"
    );
    // Choosing one with --map resolves it; the other is then unmapped.
    let out = w.run(&[
        "validate",
        "duplicate_headers.csv",
        "--map",
        "message=Message",
    ]);
    out.expect_code(0);
    assert!(out.stderr.contains("not sent: message"), "{out:?}");
    // Two columns of the same name that map to nothing are only a warning.
    let out = w.run(&["validate", "duplicate_unmapped_headers.csv"]);
    out.expect_code(0);
    assert!(
        out.stderr
            .contains("2 columns map to no field and are not sent: notes, notes"),
        "{out:?}"
    );
}

#[test]
fn a_one_megabyte_cell_is_read_whole() {
    let w = WorkDir::new();
    let big = "x".repeat(1 << 20);
    w.write(
        "big.csv",
        format!("conversationId,contactId,type,direction,message\nc1,k1,SMS,inbound,\"{big}\"\nc1,k1,SMS,inbound,small\n"),
    );
    let out = w.run(&["validate", "big.csv", "--show", "1"]);
    out.expect_code(0);
    assert!(out.stdout.contains(&big), "the whole cell is in the body");
    assert!(out.stdout.contains(": 2 valid, 0 invalid"), "{out:?}");
}

#[test]
fn a_five_thousand_column_row() {
    let w = WorkDir::new();
    let extra: Vec<String> = (0..4995).map(|i| format!("extra{i}")).collect();
    let values: Vec<String> = (0..4995).map(|i| i.to_string()).collect();
    w.write(
        "wide.csv",
        format!(
            "conversationId,contactId,type,direction,message,{}\nc1,k1,SMS,inbound,hi,{}\nc1,k1,SMS,inbound,hi,{}\n",
            extra.join(","),
            values.join(","),
            values[..10].join(",")
        ),
    );
    let out = w.run(&["validate", "wide.csv"]);
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("4995 columns map to no field and are not sent: extra0, extra1,"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("and 4983 more"),
        "the warning stays short: {out:?}"
    );
    let got = outcomes(&w, "wide.validation.csv");
    assert_eq!(got[0].1, "valid");
    assert_eq!(got[1].1, "invalid");
    assert!(
        got[1]
            .2
            .starts_with("line 3: the row has 15 cells but the header has 5000"),
        "{:?}",
        got[1]
    );
}

#[test]
fn usage_errors_exit_2() {
    let w = WorkDir::new();
    w.copy("samples/messages.csv");
    let cases: &[(&[&str], &str)] = &[
        (
            &["validate", "missing.csv"],
            "cannot open input missing.csv",
        ),
        (
            &["validate", "messages.csv", "--frobnicate"],
            "unexpected argument '--frobnicate'",
        ),
        (
            &["validate", "messages.csv", "--map", "message"],
            "'message' is not FIELD=VALUE",
        ),
        (
            &["validate", "messages.csv", "--map", "mesage=contact_name"],
            "did you mean message?",
        ),
        (
            &["validate", "messages.csv", "--map", "message=Body"],
            "the input has no column 'Body'",
        ),
        (
            &["validate", "messages.csv", "--set", "type=Text"],
            "--set type=Text: type 'Text' is not one of SMS",
        ),
        (
            &["validate", "messages.csv", "--timezone", "Mars/Base"],
            "expected an IANA zone",
        ),
        (
            &["validate", "messages.csv", "--config", "nope.toml"],
            "cannot read config file nope.toml",
        ),
    ];
    for (args, want) in cases {
        let out = w.run(args);
        out.expect_code(2);
        assert!(out.stderr.contains(want), "want {want:?}{out:?}");
    }
}

#[test]
fn a_config_file_maps_columns_and_flags_win() {
    let w = WorkDir::new();
    w.write(
        "export.csv",
        "Thread;Person;Body;When\nc1;k1;hello;01/03/2024 14:30\n",
    );
    w.write(
        "import.toml",
        r#"
delimiter = ";"
date-format = "%d/%m/%Y %H:%M"
timezone = "America/New_York"
set = ["type=SMS", "direction=inbound"]
[map]
conversationId = "Thread"
contactId = "Person"
message = "Body"
date = "When"
"#,
    );
    let out = w.run(&[
        "validate",
        "export.csv",
        "--config",
        "import.toml",
        "--show",
        "1",
    ]);
    out.expect_code(0);
    assert!(
        out.stdout.contains("\"date\": \"2024-03-01T19:30:00Z\""),
        "{out:?}"
    );
    let out = w.run(&[
        "validate",
        "export.csv",
        "--config",
        "import.toml",
        "--timezone",
        "UTC",
        "--show",
        "1",
    ]);
    out.expect_code(0);
    assert!(
        out.stdout.contains("\"date\": \"2024-03-01T14:30:00Z\""),
        "flag wins: {out:?}"
    );
}
