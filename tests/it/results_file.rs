//! Faults of the results file itself (issue 5, part 4): the disk fills up mid-run, the file
//! cannot be opened for writing, a crash cut its last line short, it belongs to another input.
//! Each ends with a clear error, no row lost or doubled, and a resume that is still correct.

use crate::fixture;
use crate::scenario::{RESULTS, Scenario};
use crate::support::{self, Output, WorkDir};

/// Runs `lc-import run in.csv … EXTRA…` with every file it writes limited to `blocks` × 512
/// bytes, as on a full disk: a write past the limit fails with EFBIG. (SIGXFSZ, which would
/// otherwise kill the process at the limit, is ignored; an ignored signal stays ignored across
/// `exec`.)
async fn run_with_file_size_limit(s: &Scenario, extra: &[&str], blocks: u64) -> Output {
    s.invoke(extra)
        .through_shell(&format!(
            "trap '' XFSZ; ulimit -f {blocks} && exec \"$0\" \"$@\""
        ))
        .output()
        .await
}

/// Every record of a journal (compacted or not) has the 11 fields of a whole line.
fn assert_whole_lines(s: &Scenario, name: &str) {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(s.path(name))
        .expect("open the journal");
    for record in reader.records() {
        let record = record.expect("a CSV record");
        assert_eq!(record.len(), 11, "a line cut short in {name}: {record:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_run_cleanly_and_the_resume_completes() {
    let s = Scenario::new(support::export(400, 20)).await;
    // 32 KiB: room for the lines of some 150 rows, not 400.
    let out = run_with_file_size_limit(&s, &["--rate", "none", "--concurrency", "4"], 64).await;
    out.expect_code(3);
    out.expect_stdout("stopped early: cannot write the results file in.results.csv");
    out.expect_stdout("to resume, run the same command again");
    // The journal holds only whole lines: the write that failed left nothing behind.
    assert_whole_lines(&s, RESULTS);
    let stored_before = s.stats().accepted;
    assert!(stored_before > 0 && stored_before < 400, "{:?}", s.stats());

    // Space again: the same command resumes. A row whose answer could not be recorded is
    // `unknown` (it was stored, once); every other row is stored exactly once.
    let out = s.run(&["--rate", "none"]).await;
    assert_eq!(s.results().len(), 400, "{out:?}");
    let unknown = s.assert_sent_or_unknown(&out).len();
    // On the wire (4) or written ahead while the others were out (4 more).
    assert!(unknown <= 8, "at most twice the rows in flight: {unknown}");
    out.expect_code(if unknown > 0 { 1 } else { 0 });
    assert!(
        s.stored().values().all(|ids| ids.len() == 1),
        "nothing stored twice"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_file_that_cannot_be_written_is_a_usage_error_and_nothing_is_sent() {
    let s = Scenario::new(support::export(10, 2)).await;
    std::fs::create_dir(s.path("taken")).expect("mkdir");
    for (results, says) in [
        ("taken", "cannot open results file taken"),
        (
            "missing/dir/r.csv",
            "cannot open results file missing/dir/r.csv",
        ),
    ] {
        let out = s
            .invoke(&["--results", results])
            .default_rate()
            .output()
            .await;
        out.expect_code(2);
        out.expect_stderr(says);
    }
    assert_eq!(s.stats().requests, 0, "nothing was sent");
    s.finish().await;
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
        let s = Scenario::new(support::export(40, 5)).await;
        s.w.write(RESULTS, journal_cut_at(cut));
        // Kill the resume as soon as it has written anything: the lines it appended must not
        // run on from the cut line.
        let mut child = s
            .invoke(&["--rate", "none", "--concurrency", "2"])
            .spawn_logged("resume.log");
        let journal = s.path(RESULTS);
        let before = fixture::file_len(&journal);
        fixture::wait_for(
            "the resume to write",
            std::time::Duration::from_secs(30),
            || fixture::file_len(&journal) > before + 200,
        )
        .await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        let log = s.w.read("resume.log");
        assert!(
            log.contains("in.results.csv: its last line (line 12) was cut short"),
            "{log}"
        );
        assert_whole_lines(&s, RESULTS);

        let out = s.run(&["--rate", "none"]).await;
        let results = s.results();
        assert_eq!(results.len(), 40, "{out:?}");
        let stored = s.stored();
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
        // On the wire, or written ahead while the others were out: twice --concurrency.
        assert!(
            killed_in_flight <= 4,
            "at most twice --concurrency: {killed_in_flight}"
        );
        out.expect_code(if r10.is_some() || killed_in_flight > 0 {
            1
        } else {
            0
        });
        s.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_file_of_another_input_is_refused_before_anything_is_sent() {
    // Two exports whose altIds overlap (both number their rows from r0) but whose messages are
    // different conversations.
    let w = WorkDir::new();
    w.write("a.csv", support::export(30, 3));
    w.write("b.csv", support::export(30, 3).replace(",conv0", ",convB"));
    let s = Scenario::prepared(w, |c| c).await;
    let out = s
        .invoke(&["--results", "shared.csv"])
        .input("a.csv")
        .default_rate()
        .output()
        .await;
    out.expect_code(0);
    let requests = s.stats().requests;
    let before = s.w.read("shared.csv");

    let out = s
        .run_input("b.csv", &["--results", "shared.csv", "--rate", "none"])
        .await;
    out.expect_code(2);
    out.expect_stderr("shared.csv records key r0 as sent to another conversation than row 1 of b.csv has (convB000000000000000)");
    out.expect_stderr("Give b.csv its own --results file");
    assert_eq!(s.stats().requests, requests, "nothing was sent");
    assert_eq!(
        s.w.read("shared.csv"),
        before,
        "the results file is untouched"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_line_inside_the_results_file_is_refused() {
    let s = Scenario::new(support::export(20, 2)).await;
    // A whole line lc-import never writes, followed by more lines: it could hide a sent row.
    let mut journal = journal_cut_at(0);
    journal.insert_str(
        journal.find("\n3,").expect("line of row 3") + 1,
        "3,r2,shipped\n",
    );
    s.w.write(RESULTS, &journal);
    let out = s.invoke(&[]).default_rate().output().await;
    out.expect_code(2);
    out.expect_stderr("results file in.results.csv: line 4 cannot be read");
    out.expect_stderr("Fix or delete that line");
    assert_eq!(s.stats().requests, 0);
    assert_eq!(s.w.read(RESULTS), journal, "untouched");
    s.finish().await;
}
