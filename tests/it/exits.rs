//! Exit codes as a user meets them: the code is decided once from how the run ended, an error
//! after the first request is a stop (exit 3, compacted, resumable), and a closed stdout or
//! stderr never changes the outcome or swallows a signal.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lc_import::rate::DurationRange;
use lc_import::sandbox::SandboxConfig;

use crate::fixture;
use crate::scenario::{self, RESULTS, Scenario};
use crate::support;

/// A results file that belongs to another input is refused by the pass before sending, however
/// deep in the input the conflicting row is: nothing is sent. (Bug: 576 rows of 601 were sent,
/// then the run ended with exit 2, no summary and no compaction.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_deep_in_the_input_is_refused_before_anything_is_sent() {
    let s = Scenario::new(support::export(100, 10)).await;
    s.run(&[]).await.expect_code(0);
    let requests = s.stats().requests;
    let before = s.w.read(RESULTS);

    let mut other = String::from("altId,conversationId,contactId,type,direction,date,message\n");
    for i in 0..600 {
        let c = 5000 + i % 50;
        other.push_str(&format!(
            "n{i},conv{c:016},cont{c:016},SMS,inbound,2024-02-01T00:{:02}:{:02}Z,new {i}\n",
            i / 60 % 60,
            i % 60
        ));
    }
    // r5 was sent to conv…05 by the first run; this row says another conversation.
    other.push_str(
        "r5,conv0000000000009999,cont0000000000009999,SMS,inbound,2024-02-02T00:00:00Z,clash\n",
    );
    s.w.write("other.csv", other);
    let out = s.run_input("other.csv", &["--results", RESULTS]).await;
    out.expect_code(2);
    out.expect_stderr("records key r5 as sent to another conversation than row 601 of other.csv has (conv0000000000009999)");
    assert_eq!(s.stats().requests, requests, "nothing was sent");
    assert_eq!(s.w.read(RESULTS), before, "the results file is untouched");
    s.finish().await;
}

/// A row whose key repeats in the input with another conversation is a duplicate, not a
/// conflict: rerunning the same input after a finished run still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_key_with_another_conversation_is_no_conflict_on_a_rerun() {
    let mut export = support::export(50, 5);
    export.push_str(
        "r7,conv0000000000009999,cont0000000000009999,SMS,inbound,2024-02-02T00:00:00Z,again\n",
    );
    let s = Scenario::new(export).await;
    s.run(&[]).await.expect_code(0);
    let out = s.run(&[]).await;
    out.expect_code(0);
    out.expect_stdout("sent                 50   (0 now, 50 in earlier runs)");
    out.expect_stdout("duplicate             1");
    s.assert_each_stored_once(50);
    s.finish().await;
}

/// SIGTERM with stderr a pipe whose reader has gone (a dead log collector): the run stops as
/// asked, within seconds, with a compacted results file, and the resume completes. (Bug: with
/// stderr closed the old binary panicked at its first log line, exit 101 before any row; and
/// the signal handler's own print could panic and swallow the signal.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_stderr_a_closed_pipe_stops_within_seconds() {
    let s = Scenario::with(support::export(3000, 100), |c| SandboxConfig {
        latency: Some(DurationRange {
            low: Duration::from_millis(10),
            high: Duration::from_millis(15),
        }),
        ..c
    })
    .await;
    let mut child = s.spawn(&["--concurrency", "2"], Stdio::null(), Stdio::piped());
    drop(child.stderr.take());
    let results = s.path(RESULTS);
    fixture::wait_for("rows sent", Duration::from_secs(30), || {
        fixture::file_len(&results) > 20_000
    })
    .await;
    scenario::signal(&child, "TERM");
    let signalled = Instant::now();
    let code = scenario::exit_within(&mut child, Duration::from_secs(20), "SIGTERM").await;
    assert_eq!(code, Some(3), "stopped early, resumable");
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "took {:?}",
        signalled.elapsed()
    );
    let rows = s.assert_compacted();
    assert!(rows.len() < 3000, "it stopped early: {} rows", rows.len());
    s.run(&["--concurrency", "16"]).await.expect_code(0);
    s.assert_each_stored_once(3000);
    s.finish().await;
}

/// `run … | head -c 10`: the reader of stdout goes away after the first bytes. The run goes on
/// to its end and exits by the table (0: all sent), and so does a rerun with stderr closed.
/// (Bug: "failed printing to stdout" panicked after every row was sent: exit 2; a resume with
/// stderr closed exited 101.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_or_stderr_does_not_change_the_exit_code() {
    let s = Scenario::new(support::export(300, 30)).await;
    let mut child = s.spawn(&[], Stdio::piped(), Stdio::null());
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 10];
    let first = tokio::task::spawn_blocking(move || stdout.read_exact(&mut first).map(|()| first))
        .await
        .unwrap()
        .expect("10 bytes of output");
    assert_eq!(&first, b"quota plan", "the plan comes first");
    let status = scenario::wait(child).await;
    assert_eq!(status.code(), Some(0));
    s.assert_each_stored_once(300);

    let mut rerun = s.spawn(&[], Stdio::null(), Stdio::piped());
    drop(rerun.stderr.take());
    let status = scenario::wait(rerun).await;
    assert_eq!(status.code(), Some(0), "every row is already sent");
    s.assert_each_stored_once(300);
    s.finish().await;
}

/// The input fails part-way (a disk or network share returning EIO) after rows were sent: the
/// run stops (exit 3) as on Ctrl-C, names the file and the error, leaves a compacted results
/// file, and the resume sends every row exactly once. (Bug: exit 2, "nothing was sent", with no
/// summary and no compaction.) The I/O error is real: a small C shim, preloaded into the real
/// binary, fails `read(2)` of the input's second open (the pass before sending is the first)
/// with EIO after 16,000 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_that_fails_after_sending_started_is_a_stop_with_a_compacted_file() {
    let s = Scenario::new(support::export(800, 40)).await;
    let shim = s.shim("tests/faults/failread.c");
    let out = s
        .invoke(&["--concurrency", "4"])
        .env("LD_PRELOAD", &shim)
        .env("FAIL_READ_PATH", "in.csv")
        .env("FAIL_READ_OPEN", "2")
        .env("FAIL_READ_AFTER", "16000")
        .output()
        .await;
    out.expect_code(3);
    assert!(
        out.stdout
            .contains("stopped early: cannot read in.csv: Input/output error"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("to resume, run the same command again"),
        "{out:?}"
    );
    let rows = s.assert_compacted();
    let sent = rows.iter().filter(|r| r["status"] == "sent").count();
    assert!(
        sent > 50 && sent < 800,
        "rows were sent before the error: {sent}"
    );
    assert_eq!(
        s.stats().accepted as usize,
        sent,
        "each row sent is recorded"
    );
    s.run(&[]).await.expect_code(0);
    s.assert_each_stored_once(800);
    s.finish().await;
}

/// A second Ctrl-C ends the run at once, without waiting for the requests in flight (2 s each
/// here), and still exits 3: the outcome lines held in memory are written, the rows in flight are
/// `sending` in the file, and the resume reads them `unknown`, never sending a row twice. (The
/// hard stop used to be `process::exit` inside the signal task, with a global journal.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_exits_at_once_and_nothing_is_sent_twice() {
    let s = Scenario::with(support::export(40, 20), |c| SandboxConfig {
        latency: Some(DurationRange {
            low: Duration::from_millis(2000),
            high: Duration::from_millis(2100),
        }),
        ..c
    })
    .await;
    let mut child = s.spawn(&["--concurrency", "8"], Stdio::null(), Stdio::piped());
    let stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let results = s.path(RESULTS);
    fixture::wait_for("requests in flight", Duration::from_secs(30), || {
        std::fs::read_to_string(&results).is_ok_and(|t| t.matches(",sending,").count() >= 8)
    })
    .await;
    scenario::signal(&child, "INT");
    // The second signal only once the first was heard (two pending signals would be one).
    let (heard, stderr) = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = stderr.lines();
        let mut seen = String::new();
        for line in lines.by_ref() {
            let line = line.expect("a stderr line");
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("stopping:") {
                return (true, (seen, lines));
            }
        }
        (false, (seen, lines))
    })
    .await
    .unwrap();
    let (mut stderr, rest) = stderr;
    assert!(heard, "the first Ctrl-C was heard: {stderr}");
    let signalled = Instant::now();
    scenario::signal(&child, "INT");
    let status = scenario::wait(child).await;
    for line in rest.map_while(Result::ok) {
        stderr.push_str(&line);
        stderr.push('\n');
    }
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        signalled.elapsed() < Duration::from_millis(1500),
        "waited {:?} for requests in flight",
        signalled.elapsed()
    );
    assert!(stderr.contains("exiting at once"), "{stderr}");
    // The requests the sandbox held died with their connections when the run exited: what it
    // stored is settled before the resume.
    let out = s.run(&["--concurrency", "16"]).await;
    let unknown = s.assert_sent_or_unknown(&out);
    // On the wire (8), or written ahead while they were out (as many: deliver's LOOK_AHEAD).
    assert!(
        !unknown.is_empty() && unknown.len() <= 16,
        "the rows in flight: {unknown:?}"
    );
    assert_eq!(s.results().len(), 40);
    s.finish().await;
}
