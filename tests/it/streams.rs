//! Exports as users have them (issue 14): other encodings, compressed files, pipes, FIFOs and
//! process substitution, old-Mac line ends, addresses with display names. The real binary, real
//! files and shells, the sandbox's record as the truth of what was stored.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::scenario::{self, Scenario};
use crate::support::{self, BIN, Output, WorkDir};

/// Message texts with what Windows-1252 has and ASCII has not: accents, curly quotes, €, –.
const TEXTS: [&str; 4] = [
    "Café crème, s’il vous plaît",
    "“Quoted” – 5 € or £4",
    "Straße, Ærø, naïve façade",
    "plain ascii",
];

/// `rows` rows over 10 conversations, message `TEXTS[i % 4] #i`, keyed `r{i}`.
fn accented_export(rows: usize) -> String {
    let mut s = String::from("altId,conversationId,contactId,type,direction,date,message\n");
    for i in 0..rows {
        let c = i % 10;
        s.push_str(&format!(
            "r{i},conv{c:016},cont{c:016},SMS,inbound,2024-01-01T00:{:02}:{:02}Z,\"{} #{i}\"\n",
            i / 60 % 60,
            i % 60,
            TEXTS[i % TEXTS.len()]
        ));
    }
    s
}

/// What the sandbox stored, by altId: the body.
fn bodies(s: &Scenario) -> HashMap<String, Value> {
    s.record()
        .into_iter()
        .map(|v| {
            (
                v["body"]["altId"].as_str().unwrap().to_owned(),
                v["body"].clone(),
            )
        })
        .collect()
}

/// Every row `r{i}` is stored with the message text of [`accented_export`], in UTF-8.
fn assert_texts_stored(s: &Scenario, rows: usize) {
    s.assert_each_stored_once(rows);
    let bodies = bodies(s);
    for i in 0..rows {
        let want = format!("{} #{i}", TEXTS[i % TEXTS.len()]);
        assert_eq!(bodies[&format!("r{i}")]["message"], want.as_str(), "r{i}");
    }
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn utf16le_with_bom(text: &str) -> Vec<u8> {
    let mut bytes = vec![0xff, 0xfe];
    bytes.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    bytes
}

/// Runs `script` with bash in the scenario's folder, `$LC` the binary and `$URL` the sandbox;
/// the token in `LC_TOKEN`.
async fn bash(s: &Scenario, script: &str) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .current_dir(s.path(""))
        .env_remove("LC_BASE_URL")
        .env("LC", BIN)
        .env("URL", s.base_url())
        .env("LC_TOKEN", s.sandbox_token())
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("bash");
    Output {
        args: vec![script.to_owned()],
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A Windows-1252 export (as Excel on Windows saves CSV): without `--encoding` the rows with
/// accents are invalid and one file-level hint names `--encoding windows-1252`; with it, the
/// same command stores every row's text as UTF-8, and the ASCII rows sent by the first run are
/// not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windows_1252_export_imports_with_encoding_and_is_hinted_without() {
    let text = accented_export(200);
    let (cp1252, _, unmappable) = encoding_rs::WINDOWS_1252.encode(&text);
    assert!(!unmappable);
    let s = Scenario::new(&cp1252).await;

    let checked = s.w.run(&["validate", "in.csv"]);
    checked.expect_code(1);
    let both = format!("{}{}", checked.stdout, checked.stderr);
    assert_eq!(
        both.matches("--encoding windows-1252").count(),
        1,
        "one hint for the file{checked:?}"
    );
    checked.expect_stdout("150 row(s) have cells that are not UTF-8, and they read as Windows-1252 (line 2, column 7 (message): \"Café crème, s’il vous plaît #0\")");

    let first = s.run(&[]).await;
    first.expect_code(1);
    assert_eq!(
        first.stderr.matches("--encoding windows-1252").count(),
        1,
        "{first:?}"
    );
    assert_eq!(s.stats().accepted, 50, "only the ASCII rows");

    // The --config file's `encoding` reads it as well.
    s.w.write("import.toml", "encoding = \"windows-1252\"\n");
    s.w.run(&["validate", "in.csv", "--config", "import.toml"])
        .expect_code(0);
    s.run(&["--encoding", "windows-1252"]).await.expect_code(0);
    assert_texts_stored(&s, 200);
    assert_eq!(
        s.stats().requests,
        200,
        "the ASCII rows were not sent again"
    );
    s.finish().await;
}

/// UTF-16 with its BOM (Excel's "Unicode text") is read without a flag, also from a pipe; a
/// UTF-16 file without a BOM is refused with an error that says so and names `--encoding`, and
/// with `--encoding utf-16le` it imports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf16_is_read_by_its_bom_and_named_without_one() {
    let text = accented_export(120).replace("#0\"", "#0 🎉\"");
    let s = Scenario::new(utf16le_with_bom(&text)).await;
    s.run(&[]).await.expect_code(0);
    s.assert_each_stored_once(120);
    let bodies = bodies(&s);
    assert_eq!(bodies["r0"]["message"], "Café crème, s’il vous plaît #0 🎉");
    assert_eq!(bodies["r1"]["message"], "“Quoted” – 5 € or £4 #1");

    let bomless: Vec<u8> = utf16le_with_bom(&accented_export(5))[2..].to_vec();
    s.w.write("nobom.csv", &bomless);
    let out = s.w.run(&["validate", "nobom.csv"]);
    out.expect_code(2);
    out.expect_stderr("nobom.csv looks like UTF-16LE text without a byte-order mark");
    out.expect_stderr("--encoding utf-16le");
    assert!(!out.stderr.contains("no column maps"), "{out:?}");
    s.w.run(&["validate", "nobom.csv", "--encoding", "utf-16le"])
        .expect_code(0);

    // A lone surrogate (not UTF-16) in one cell: that row is an error naming its line and
    // column, not a message sent with U+FFFD in it; the others are valid.
    let mut broken = utf16le_with_bom(&accented_export(5));
    let at = broken
        .windows(4)
        .position(|w| w == [b'#', 0, b'2', 0])
        .unwrap();
    broken.splice(at..at, [0x00, 0xd8]);
    s.w.write("broken.csv", &broken);
    let out = s.w.run(&["validate", "broken.csv"]);
    out.expect_code(1);
    out.expect_stdout("4 valid, 1 invalid");
    let lines = s.w.results("broken.validation.csv");
    assert_eq!(
        lines[2]["error"],
        "line 4, column 7 (message): the cell holds bytes that are not UTF-16 text (read as U+FFFD): check the export's encoding (--encoding)"
    );
    s.finish().await;
}

/// `--order date` over a Windows-1252 export listed newest first: the import reads the rows
/// again at the offsets the pass saw in the decoded text (where `é` is two bytes, one in the
/// file), so each row is stored once, with its text, and each conversation oldest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windows_1252_export_imports_in_date_order() {
    let rows = 400;
    let text = accented_export(rows);
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1..].reverse();
    let newest_first = lines.join("\n") + "\n";
    let (cp1252, _, unmappable) = encoding_rs::WINDOWS_1252.encode(&newest_first);
    assert!(!unmappable);
    assert_ne!(
        cp1252.len(),
        newest_first.len(),
        "offsets differ after decoding"
    );
    let s = Scenario::new(&cp1252).await;
    let out = s
        .run(&["--encoding", "windows-1252", "--order", "date"])
        .await;
    out.expect_code(0);
    let stored = s.record();
    assert_eq!(stored.len(), rows, "{out:?}");
    let mut last: HashMap<String, String> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for v in &stored {
        let body = &v["body"];
        let id = body["altId"].as_str().unwrap().to_owned();
        let i: usize = id[1..].parse().unwrap();
        assert_eq!(
            body["message"],
            format!("{} #{i}", TEXTS[i % TEXTS.len()]).as_str(),
            "{id}"
        );
        assert!(seen.insert(id.clone()), "{id} stored twice");
        let conversation = body["conversationId"].as_str().unwrap().to_owned();
        let date = body["date"].as_str().unwrap().to_owned();
        if let Some(previous) = last.get(&conversation) {
            assert!(
                date > *previous,
                "{id}: {date} after {previous} in {conversation}"
            );
        }
        last.insert(conversation, date);
    }
    // Without --order date the same file is stored newest first (`lines` reversed above).
    assert_eq!(s.stats().out_of_order, 0);
    let results = s.w.results(scenario::RESULTS);
    assert_eq!(results.len(), rows);
    assert!(results.iter().all(|r| r["status"] == "sent"), "{results:?}");
    s.finish().await;
}

/// `.gz` and `.zst` files are told by their magic bytes (a zstd file named `.csv` too), stored
/// once each row, and a second run of the same command sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_files_import_once_and_resume() {
    let s = Scenario::new("").await;
    let text = support::export(3000, 50);
    s.w.write("export.csv.gz", gzip(text.as_bytes()));
    s.run_input("export.csv.gz", &[]).await.expect_code(0);
    s.assert_each_stored_once(3000);
    assert!(s.path("export.csv.results.csv").exists());
    let out = s.run_input("export.csv.gz", &[]).await;
    out.expect_code(0);
    assert_eq!(s.stats().requests, 3000, "the resume sent nothing{out:?}");
    s.finish().await;

    let s = Scenario::new("").await;
    s.w.write(
        "zstd-named.csv",
        zstd::encode_all(text.as_bytes(), 3).unwrap(),
    );
    s.run_input("zstd-named.csv", &[]).await.expect_code(0);
    s.assert_each_stored_once(3000);
    s.run_input("zstd-named.csv", &[]).await.expect_code(0);
    assert_eq!(s.stats().requests, 3000, "the resume sent nothing");
    s.finish().await;
}

/// `run <(zcat export.csv.gz)` and `zcat export.csv.gz | lc-import run -` each store every row
/// exactly once (the input is read once, copied aside for the import): after a canary of 100
/// rows, the same command sends the rest, and again it sends nothing; a run from the file itself
/// is the same input to the results file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_substitution_and_stdin_store_every_row_once_and_resume() {
    let text = support::export(3000, 50);
    for (command, rows) in [
        (
            r#""$LC" run <(zcat export.csv.gz) --results R.csv --base-url "$URL" --rate none"#,
            3000,
        ),
        (
            r#"zcat export.csv.gz | "$LC" run - --results R.csv --base-url "$URL" --rate none"#,
            3000,
        ),
    ] {
        let s = Scenario::new("").await;
        s.w.write("export.csv.gz", gzip(text.as_bytes()));
        // A canary stops early; its summary says the pipe must be fed again.
        let canary = bash(&s, &format!("{command} --limit 100")).await;
        canary.expect_code(3);
        canary.expect_stdout("with the same input fed to it again");
        assert_eq!(s.stats().requests, 100);
        let out = bash(&s, command).await;
        out.expect_code(0);
        out.expect_stdout("100 in earlier runs");
        s.assert_each_stored_once(rows);
        let results = s.w.results("R.csv");
        assert_eq!(results.len(), rows, "{out:?}");
        assert!(results.iter().all(|r| r["status"] == "sent"));
        let again = bash(&s, command).await;
        again.expect_code(0);
        again.expect_stdout("3000 in earlier runs");
        assert_eq!(s.stats().requests, rows as u64, "the resume sent nothing");
        // The file itself, against the same results: the same rows.
        let file = s
            .invoke(&["--results", "R.csv"])
            .input("export.csv.gz")
            .output()
            .await;
        file.expect_code(0);
        assert_eq!(s.stats().requests, rows as u64);
        // Nothing left in the folder but what the test and the run meant to write.
        let mut names: Vec<String> = std::fs::read_dir(s.path(""))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "R.csv",
                "R.csv.target.json",
                "contacts.jsonl",
                "export.csv.gz",
                "in.csv",
                "record.jsonl"
            ],
            "no temp copy left behind"
        );
        s.finish().await;
    }
}

/// A stream needs --results (it has no name to put one beside); a missing file is still "cannot
/// open".
#[test]
fn a_stream_without_results_is_refused_and_validate_reads_stdin() {
    let w = WorkDir::new();
    let out = w.run_with(&["run", "-"], &[("LC_TOKEN", "t")]);
    out.expect_code(2);
    out.expect_stderr("- is not a file (stdin, a pipe, or <(…)): give --results PATH");
    w.run_with(&["run", "missing.csv"], &[("LC_TOKEN", "t")])
        .expect_code(2)
        .expect_stderr("cannot open input missing.csv");

    let mut child = Command::new(BIN)
        .args(["validate", "-", "--results", "v.csv"])
        .current_dir(w.path(""))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&gzip(support::export(100, 5).as_bytes()))
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("100 rows checked"), "{stdout}");
}

/// A FIFO: a run reads it once, to the end, and stores every row once; a run on a FIFO whose
/// writer stalls stops on SIGTERM within seconds (exit 3, nothing sent), where the old binary
/// waited forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_is_read_once_and_sigterm_stops_a_stalled_one() {
    let s = Scenario::new("").await;
    let text = support::export(2000, 40);
    let fifo = s.path("export.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let child = s
        .invoke(&["--results", "R.csv"])
        .input("export.fifo")
        .spawn_logged("fifo.log");
    // Opening the writing end waits for the run to open the reading end.
    let (path, bytes) = (fifo.clone(), text.clone().into_bytes());
    tokio::task::spawn_blocking(move || {
        let mut w = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        w.write_all(&bytes).unwrap();
    })
    .await
    .unwrap();
    let status = scenario::wait(child).await;
    assert_eq!(status.code(), Some(0), "{}", s.w.read("fifo.log"));
    s.assert_each_stored_once(2000);

    // A writer that sends the header and some rows, then stalls with the FIFO open.
    let child = s
        .invoke(&["--results", "R2.csv"])
        .input("export.fifo")
        .spawn_logged("stalled.log");
    let path = fifo.clone();
    let head: String = text.lines().take(50).map(|l| format!("{l}\n")).collect();
    let writer = tokio::task::spawn_blocking(move || {
        let mut w = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        w.write_all(head.as_bytes()).unwrap();
        w
    })
    .await
    .unwrap();
    // While the pass waits for the rest, progress counts the bytes read (every 5 s in a log).
    let log = s.path("stalled.log");
    crate::fixture::wait_for("progress in bytes", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("reading export.fifo before sending: "))
    })
    .await;
    scenario::signal(&child, "TERM");
    let mut child = child;
    let code = scenario::exit_within(&mut child, Duration::from_secs(20), "SIGTERM").await;
    drop(writer);
    let log = s.w.read("stalled.log");
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("stopped early: interrupted"), "{log}");
    assert_eq!(s.stats().requests, 2000, "nothing more was sent");
    s.finish().await;
}

/// A file with old-Mac line ends (CR only) imports row by row, line numbers and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_with_cr_only_line_ends_imports() {
    let text = support::export(300, 10).replace('\n', "\r");
    let s = Scenario::new(&text).await;
    s.run(&[]).await.expect_code(0);
    s.assert_each_stored_once(300);
    s.w.write("bad.csv", text.replacen(",SMS,", ",Text,", 1));
    let out = s.w.run(&["validate", "bad.csv"]);
    out.expect_code(1);
    out.expect_stdout("line 2, column 4 (type)");
    s.finish().await;
}

/// `Ann Lee <ann@example.com>` and `"Lee, Ann" <ann@example.com>` pass `validate` in every
/// e-mail field and list (a comma in a quoted name is no separator), and the bare addresses are
/// what the sandbox stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn display_name_addresses_pass_and_the_bare_address_is_sent() {
    let export = concat!(
        "altId,conversationId,contactId,type,direction,subject,message,emailFrom,emailTo,emailCc,emailBcc\n",
        "r0,conv0000000000000000,cont0000000000000000,Email,inbound,Hi,Hello,Ann Lee <ann.lee@example.com>,\"\"\"Lee, Bob\"\" <bob@example.com>\",\"\"\"Lee, Ann\"\" <ann@example.com>, Carl <carl@example.com>\",<dee@example.com>\n",
        "r1,conv0000000000000000,cont0000000000000000,Email,outbound,Re,Reply,bob@example.com,\"Ann Lee <ann.lee@example.com>\",,\n",
    );
    let s = Scenario::new(export).await;
    s.w.run(&["validate", "in.csv", "--list-sep", ","])
        .expect_code(0);
    s.run(&["--list-sep", ","]).await.expect_code(0);
    s.assert_each_stored_once(2);
    let bodies = bodies(&s);
    assert_eq!(bodies["r0"]["emailFrom"], "ann.lee@example.com");
    assert_eq!(bodies["r0"]["emailTo"], "bob@example.com");
    assert_eq!(
        bodies["r0"]["emailCc"],
        serde_json::json!(["ann@example.com", "carl@example.com"])
    );
    assert_eq!(
        bodies["r0"]["emailBcc"],
        serde_json::json!(["dee@example.com"])
    );
    assert_eq!(bodies["r1"]["emailTo"], "ann.lee@example.com");
    s.finish().await;
}
