//! Faults of the results file itself (issue 5, part 4): the disk fills up mid-run, the file
//! cannot be opened for writing, a crash cut its last line short, it belongs to another input.
//! Each ends with a clear error, no row lost or doubled, and a resume that is still correct.

use std::process::Command;

use lc_import::results::line::col;
use lc_import::sandbox::SandboxConfig;

use crate::fixture::{self, TOKEN};
use crate::support::{self, BIN, Output, WorkDir};

/// Runs `lc-import ARGS…` with every file it writes limited to `blocks` × 512 bytes, as on a
/// full disk: a write past the limit fails with EFBIG. (SIGXFSZ, which would otherwise kill the
/// process at the limit, is ignored; an ignored signal stays ignored across `exec`.)
async fn run_with_file_size_limit(w: &WorkDir, args: Vec<String>, blocks: u64) -> Output {
    let dir = w.path("");
    tokio::task::spawn_blocking(move || {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "trap '' XFSZ; ulimit -f {blocks} && exec \"$0\" \"$@\""
            ))
            .arg(BIN)
            .args(&args)
            .current_dir(dir)
            .env("LC_TOKEN", TOKEN)
            .env_remove("LC_BASE_URL")
            .output()
            .expect("run lc-import under sh");
        Output {
            args,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("join")
}

/// Every record of a journal (compacted or not) has the fields of a whole line.
fn assert_whole_lines(w: &WorkDir, name: &str) {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(w.path(name))
        .expect("open the journal");
    for record in reader.records() {
        let record = record.expect("a CSV record");
        assert_eq!(
            record.len(),
            col::COUNT,
            "a line cut short in {name}: {record:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_run_cleanly_and_the_resume_completes() {
    let w = WorkDir::new();
    w.write("in.csv", support::export(400, 20));
    let sb = fixture::start(fixture::recorded(&w)).await;
    let args = fixture::run_args(
        "in.csv",
        &sb.base_url(),
        &["--rate", "none", "--concurrency", "4"],
    );
    // 32 KiB: room for the lines of some 150 rows, not 400.
    let out = run_with_file_size_limit(&w, args, 64).await;
    out.expect_code(3);
    assert!(
        out.stdout
            .contains("stopped early: cannot write the results file in.results.csv"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("to resume, run the same command again"),
        "{out:?}"
    );
    // The journal holds only whole lines: the write that failed left nothing behind.
    assert_whole_lines(&w, "in.results.csv");
    let stored_before = sb.stats().accepted;
    assert!(stored_before > 0 && stored_before < 400, "{:?}", sb.stats());

    // Space again: the same command resumes. A row whose answer could not be recorded is
    // `unknown` (it was stored, once); every other row is stored exactly once.
    let out = fixture::run(&w, &sb.base_url(), "in.csv", &["--rate", "none"], TOKEN).await;
    let results = fixture::results(&w.path("in.results.csv"));
    assert_eq!(results.len(), 400, "{out:?}");
    let stored = fixture::stored(&w);
    let mut unknown = 0;
    for r in &results {
        let ids = stored.get(&r["key"]).map_or(&[][..], Vec::as_slice);
        match r["status"].as_str() {
            "sent" => assert_eq!(ids, [r["message_id"].clone()], "{r:?}"),
            "unknown" => {
                unknown += 1;
                assert!(ids.len() <= 1, "{r:?}");
            }
            _ => panic!("{r:?}{out:?}"),
        }
    }
    assert!(unknown <= 4, "at most the rows in flight: {unknown}");
    out.expect_code(if unknown > 0 { 1 } else { 0 });
    assert!(
        stored.values().all(|ids| ids.len() == 1),
        "nothing stored twice"
    );
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_file_that_cannot_be_written_is_a_usage_error_and_nothing_is_sent() {
    let w = WorkDir::new();
    w.write("in.csv", support::export(10, 2));
    std::fs::create_dir(w.path("taken")).expect("mkdir");
    let sb = fixture::start(fixture::recorded(&w)).await;
    for (results, says) in [
        ("taken", "cannot open results file taken"),
        (
            "missing/dir/r.csv",
            "cannot open results file missing/dir/r.csv",
        ),
    ] {
        let out = fixture::run(&w, &sb.base_url(), "in.csv", &["--results", results], TOKEN).await;
        out.expect_code(2);
        assert!(out.stderr.contains(says), "{out:?}");
    }
    assert_eq!(sb.stats().requests, 0, "nothing was sent");
    sb.shutdown().await;
}

/// A journal whose last line a crash cut short: `sent` lines for rows 1–10, then the first
/// `cut` bytes of row 11's `sending` line, with no line end.
fn journal_cut_at(cut: usize) -> String {
    let mut s = String::from(
        "row,key,status,message_id,conversation_id,contact_id,http_status,attempts,error,trace_id,finished_at\n",
    );
    for i in 0..10 {
        s.push_str(&format!(
            "{},r{i},sent,earlier{i},conv{c:016},cont{c:016},200,1,,t{i},2024-01-01T00:00:00Z\n",
            i + 1,
            c = i % 5
        ));
    }
    let sending = "11,r10,sending,,,,,,,,\n";
    s.push_str(&sending[..cut]);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_line_cut_short_by_a_crash_is_repaired_conservatively() {
    // Cut after the key (`11,r10,se`): the row was about to be sent, so it may be stored:
    // `unknown`, not sent again. Cut inside the key (`11,r1`): nothing is known about it.
    for (cut, r10) in [(9, Some("unknown")), (5, None)] {
        let w = WorkDir::new();
        w.write("in.csv", support::export(40, 5));
        w.write("in.results.csv", journal_cut_at(cut));
        let sb = fixture::start(fixture::recorded(&w)).await;
        let args = fixture::run_args(
            "in.csv",
            &sb.base_url(),
            &["--rate", "none", "--concurrency", "2"],
        );
        // Kill the resume as soon as it has written anything: the lines it appended must not
        // run on from the cut line.
        let mut child = fixture::spawn_logged(&w, &args, TOKEN, "resume.log");
        let journal = w.path("in.results.csv");
        let before = fixture::file_len(&journal);
        fixture::wait_for(
            "the resume to write",
            std::time::Duration::from_secs(30),
            || fixture::file_len(&journal) > before + 200,
        )
        .await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        let log = w.read("resume.log");
        assert!(
            log.contains("in.results.csv: its last line (line 12) was cut short"),
            "{log}"
        );
        assert_whole_lines(&w, "in.results.csv");

        let out = fixture::run(&w, &sb.base_url(), "in.csv", &["--rate", "none"], TOKEN).await;
        let results = fixture::results(&journal);
        assert_eq!(results.len(), 40, "{out:?}");
        let stored = fixture::stored(&w);
        let mut killed_in_flight = 0;
        for r in &results {
            let copies = stored.get(&r["key"]).map_or(0, Vec::len);
            let n: usize = r["key"][1..].parse().expect("keys are r<n>");
            match (n, r10) {
                (10, Some(status)) => {
                    assert_eq!(r["status"], status, "{r:?}");
                    assert_eq!(copies, 0, "not sent again");
                }
                (0..10, _) => {
                    assert_eq!(r["status"], "sent");
                    assert_eq!(copies, 0, "sent earlier, skipped: {r:?}");
                }
                // In flight when the resume was killed: may be stored, never twice.
                _ if r["status"] == "unknown" => {
                    killed_in_flight += 1;
                    assert!(copies <= 1, "{r:?}");
                }
                _ => {
                    assert_eq!(r["status"], "sent", "{r:?}");
                    assert_eq!(copies, 1, "{r:?}");
                }
            }
        }
        assert!(
            killed_in_flight <= 2,
            "at most --concurrency: {killed_in_flight}"
        );
        out.expect_code(if r10.is_some() || killed_in_flight > 0 {
            1
        } else {
            0
        });
        sb.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_file_of_another_input_is_refused_before_anything_is_sent() {
    let w = WorkDir::new();
    // Two exports whose altIds overlap (both number their rows from r0) but whose messages are
    // different conversations.
    w.write("a.csv", support::export(30, 3));
    w.write("b.csv", support::export(30, 3).replace(",conv0", ",convB"));
    let sb = fixture::start(fixture::recorded(&w)).await;
    let out = fixture::run(
        &w,
        &sb.base_url(),
        "a.csv",
        &["--results", "shared.csv"],
        TOKEN,
    )
    .await;
    out.expect_code(0);
    let requests = sb.stats().requests;
    let before = w.read("shared.csv");

    let out = fixture::run(
        &w,
        &sb.base_url(),
        "b.csv",
        &["--results", "shared.csv", "--rate", "none"],
        TOKEN,
    )
    .await;
    out.expect_code(2);
    assert!(
        out.stderr.contains("shared.csv records key r0 as sent to another conversation than row 1 of b.csv has (convB000000000000000)"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("Give b.csv its own --results file"),
        "{out:?}"
    );
    assert_eq!(sb.stats().requests, requests, "nothing was sent");
    assert_eq!(
        w.read("shared.csv"),
        before,
        "the results file is untouched"
    );
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_line_inside_the_results_file_is_refused() {
    let w = WorkDir::new();
    w.write("in.csv", support::export(20, 2));
    // A whole line lc-import never writes, followed by more lines: it could hide a sent row.
    let mut journal = journal_cut_at(0);
    journal.insert_str(
        journal.find("\n3,").expect("line of row 3") + 1,
        "3,r2,shipped\n",
    );
    w.write("in.results.csv", &journal);
    let sb = fixture::start(SandboxConfig {
        ..fixture::recorded(&w)
    })
    .await;
    let out = fixture::run(&w, &sb.base_url(), "in.csv", &[], TOKEN).await;
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("results file in.results.csv: line 4 cannot be read"),
        "{out:?}"
    );
    assert!(out.stderr.contains("Fix or delete that line"), "{out:?}");
    assert_eq!(sb.stats().requests, 0);
    assert_eq!(w.read("in.results.csv"), journal, "untouched");
    sb.shutdown().await;
}
