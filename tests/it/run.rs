//! `lc-import run` against the sandbox over real loopback sockets: the real binary, a real
//! server, real files and real signals.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use lc_import::rate::Rate;
use lc_import::sandbox::SandboxConfig;
use serde_json::Value;

use crate::fixture::{self, latency};
use crate::scenario::{self, RESULTS, Scenario};
use crate::support::{self, WorkDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_imports_and_bad_rows_are_invalid() {
    let w = WorkDir::new();
    w.copy("samples/messages.csv");
    w.copy("samples/bad.csv");
    let s = Scenario::prepared(w, |c| c).await;
    let out = s
        .invoke(&[])
        .input("messages.csv")
        .default_rate()
        .output()
        .await;
    out.expect_code(0);
    let results = s.w.results("messages.results.csv");
    assert_eq!(results.len(), 200);
    let record = s.record();
    assert_eq!(record.len(), 200, "each valid row stored once");
    let by_id: HashMap<&str, &Value> = record
        .iter()
        .map(|v| (v["messageId"].as_str().unwrap(), v))
        .collect();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["row"], (i + 1).to_string(), "input order");
        assert_eq!(r["status"], "sent", "{r:?}");
        // The ID in the results is the one the sandbox stored this row's body under.
        let stored = by_id
            .get(r["message_id"].as_str())
            .unwrap_or_else(|| panic!("{r:?}"));
        assert_eq!(stored["body"]["altId"], r["key"].as_str());
        assert_eq!(r["http_status"], "200");
        assert_eq!(r["attempts"], "1");
        assert!(!r["trace_id"].is_empty());
    }

    let out = s.invoke(&[]).input("bad.csv").default_rate().output().await;
    out.expect_code(1);
    assert_eq!(
        fixture::statuses(&s.path("bad.results.csv")),
        HashMap::from([("invalid".to_owned(), 25)])
    );
    assert_eq!(s.stats().requests, 200, "no invalid row reached the API");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sandbox_needs_no_account() {
    let w = WorkDir::new();
    w.copy("samples/messages.csv");
    let dir = w.path("");
    let out = tokio::task::spawn_blocking(move || {
        support::run_in(
            &dir,
            &["run".into(), "messages.csv".into(), "--sandbox".into()],
            &[],
        )
    })
    .await
    .unwrap();
    out.expect_code(0);
    out.expect_stdout("sent                200   (200 now, 0 in earlier runs)");
    out.expect_stdout("sandbox: every message it stored is in messages.sandbox.jsonl");
    assert_eq!(w.read("messages.sandbox.jsonl").lines().count(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_is_reached_and_never_tripped() {
    let rate = Rate {
        max: 20,
        period: Duration::from_secs(1),
    };
    let s = Scenario::with(support::export(100, 10), |c| SandboxConfig {
        rate: Some(rate),
        ..c
    })
    .await;
    let out = s.run(&["--rate", "20/s", "--concurrency", "8"]).await;
    out.expect_code(0);
    let stats = s.stats();
    assert_eq!(stats.rate_limited, 0, "no 429: {stats:?}");
    assert_eq!(stats.accepted, 100);
    assert_pace(&s, 100, rate);
    s.finish().await;
}

/// Bug: on a slow disk (CI's), every row whose `sending` line took over 10 ms to sync took a
/// second rate-limit slot, and the run reached 16.5/s of 20/s. A row now syncs while its slot's
/// time comes: with every sync 40 ms (the shim sleeps first), the pace is still the limit's, and
/// still never over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_neither_slows_the_pace_nor_trips_the_limit() {
    let rate = Rate {
        max: 20,
        period: Duration::from_secs(1),
    };
    let s = Scenario::with(support::export(100, 100), |c| SandboxConfig {
        rate: Some(rate),
        ..c
    })
    .await;
    let synclog = s.synclog();
    let log = s.path("synclog.txt").to_string_lossy().into_owned();
    let out = s
        .run_with(
            // As many in flight as a window holds, and a conversation per row: the pace is then
            // the limit's alone (with fewer, a window's last rows wait for a sync in turn).
            &["--rate", "20/s", "--concurrency", "20"],
            &synclog.env(&log, &[("SYNCLOG_DELAY_MS", "40")]),
        )
        .await;
    out.expect_code(0);
    assert_eq!(s.stats().rate_limited, 0, "no 429: {:?}", s.stats());
    // The shim was in: at least a sync per window of the pace (a window's rows share one).
    let syncs = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(syncs >= 5, "the shim slowed the syncs: {syncs} logged");
    assert_pace(&s, 100, rate);
    s.finish().await;
}

/// Bug: a canary (`--limit 10`) and then the resume at once, against a server whose window
/// still held the canary's 10 requests: the resume started with a full window of its own and drew
/// 429s. It now takes what the server says is left (`X-RateLimit-Remaining`) from its first
/// answers, and waits out the rest of the window instead (a 429 here before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_right_after_a_canary_does_not_trip_the_servers_window() {
    let rate = Rate {
        max: 20,
        period: Duration::from_secs(3),
    };
    let s = Scenario::with(support::export(40, 40), |c| SandboxConfig {
        rate: Some(rate),
        latency: crate::fixture::latency(5, 10),
        ..c
    })
    .await;
    // One in flight: the first answer then counts every request of ours (with N in flight, up to
    // N-1 of them may not be counted yet when it is written, and may still meet a 429).
    let flags = ["--rate", "20/3s", "--concurrency", "1"];
    let mut canary = flags.to_vec();
    canary.extend(["--limit", "10"]);
    s.run(&canary).await.expect_code(3);
    s.run(&flags).await.expect_code(0);
    let stats = s.stats();
    assert_eq!(stats.rate_limited, 0, "no 429: {stats:?}");
    s.assert_each_stored_once(40);
    s.finish().await;
}

/// The pace the sandbox saw, from its own receive times (the last window counted whole):
/// at least 90 % of `rate`, at most 1 % over it.
fn assert_pace(s: &Scenario, rows: usize, rate: Rate) {
    let times: Vec<jiff::Timestamp> = s
        .record()
        .iter()
        .map(|v| v["receivedAt"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(times.len(), rows);
    let span = (*times.iter().max().unwrap() - *times.iter().min().unwrap()).as_secs_f64();
    let achieved = rows as f64 / (span + rate.period.as_secs_f64());
    let limit = rate.per_second();
    eprintln!("pace seen by the sandbox: {achieved:.2}/s of {limit}/s");
    assert!(
        achieved >= 0.9 * limit,
        "achieved {achieved:.2}/s of {limit}/s"
    );
    assert!(
        achieved <= limit * 1.01,
        "achieved {achieved:.2}/s is over {limit}/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_one_conversation_arrive_in_order() {
    let s = Scenario::with(support::export(400, 6), |c| SandboxConfig {
        latency: latency(1, 15),
        ..c
    })
    .await;
    let out = s.run(&["--concurrency", "8", "--rate", "100000/s"]).await;
    out.expect_code(0);
    let stats = s.stats();
    assert_eq!(stats.accepted, 400);
    assert_eq!(stats.out_of_order, 0, "{stats:?}");
    // Conversations did run side by side.
    assert!(stats.peak_concurrent >= 4, "{stats:?}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_sent() {
    let s = Scenario::with(support::export(300, 30), |c| SandboxConfig {
        fail_rate: 0.2,
        seed: Some(7),
        ..c
    })
    .await;
    let out = s.run(&["--rate", "100000/s", "--max-retries", "8"]).await;
    out.expect_code(0);
    assert!(
        s.stats().server_errors > 20,
        "faults were injected: {:?}",
        s.stats()
    );
    assert_eq!(s.statuses(), HashMap::from([("sent".to_owned(), 300)]));
    s.assert_each_stored_once(300);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_answers_end_unknown_and_are_never_resent() {
    let s = Scenario::with(support::export(400, 40), |c| SandboxConfig {
        drop_rate: 0.05,
        seed: Some(11),
        ..c
    })
    .await;
    let out = s.run(&["--rate", "100000/s", "--timeout", "5s"]).await;
    out.expect_code(1);
    let dropped = s.stats().dropped as usize;
    assert!(dropped > 5, "{:?}", s.stats());
    let counts = s.statuses();
    assert_eq!(counts.get("unknown").copied(), Some(dropped), "{counts:?}");
    assert_eq!(
        counts.get("sent").copied(),
        Some(400 - dropped),
        "{counts:?}"
    );
    out.expect_stdout("--resend-unknown");
    // Every row is stored once: the dropped ones too (the sandbox stored them).
    s.assert_each_stored_once(400);

    let requests = s.stats().requests;
    let out = s.run(&["--rate", "100000/s"]).await;
    out.expect_code(1);
    assert_eq!(s.stats().requests, requests, "a resume sends nothing new");
    out.expect_stdout(&format!("(0 now, {} in earlier runs)", 400 - dropped));
    out.expect_stdout(&format!("({} now, {dropped} from earlier runs)", 0));
    assert_eq!(s.statuses().get("unknown").copied(), Some(dropped));
    s.finish().await;
}

/// Bug: `--resend-unknown` took an `unknown` row's earlier line as the run read it; a run that
/// stopped before that row's request left (here `--max-requests 1`) compacted the file without
/// it, and the row vanished from the record (the next run, without the option, sent it as new:
/// a message that may be stored, sent again unasked). Its earlier line now stays until a new
/// outcome replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_that_stops_early_keeps_the_rows_it_did_not_reach() {
    let s = Scenario::with(support::export(200, 20), |c| SandboxConfig {
        drop_rate: 0.1,
        seed: Some(5),
        ..c
    })
    .await;
    s.run(&["--rate", "100000/s", "--timeout", "5s"])
        .await
        .expect_code(1);
    let unknown = s.statuses().get("unknown").copied().unwrap_or(0);
    assert!(unknown > 5, "{:?}", s.statuses());
    let out = s
        .run(&[
            "--rate",
            "100000/s",
            "--resend-unknown",
            "--max-requests",
            "1",
        ])
        .await;
    out.expect_code(3);
    let counts = s.statuses();
    assert_eq!(s.results().len(), 200, "every row keeps a line: {counts:?}");
    // One was resent (its answer may be dropped again); the others are still `unknown`.
    let now = counts.get("unknown").copied().unwrap_or(0);
    assert!(
        now == unknown || now == unknown - 1,
        "{unknown} before: {counts:?}"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_then_resume_sends_every_row_once() {
    let s = Scenario::new(support::export(120, 12)).await;
    let out = s.run(&["--rate", "100000/s", "--limit", "50"]).await;
    out.expect_code(3);
    out.expect_stdout("stopped early: --limit 50 reached.");
    assert_eq!(s.stats().accepted, 50);
    assert_eq!(s.results().len(), 50);
    let out = s.run(&["--rate", "100000/s"]).await;
    out.expect_code(0);
    out.expect_stdout("(70 now, 50 in earlier runs)");
    s.assert_each_stored_once(120);
    let rows = s.results();
    assert_eq!(rows.len(), 120);
    assert!(
        rows.iter()
            .enumerate()
            .all(|(i, r)| r["row"] == (i + 1).to_string() && r["status"] == "sent")
    );
    s.finish().await;
}

fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_stops_cleanly_and_the_resume_completes() {
    let s = Scenario::with(support::export(300, 30), |c| SandboxConfig {
        latency: latency(20, 30),
        ..c
    })
    .await;
    let args = ["--rate", "100000/s", "--concurrency", "4"];
    let child = s.spawn(&args, Stdio::piped(), Stdio::piped());
    let results = s.path(RESULTS);
    fixture::wait_for("some rows sent", Duration::from_secs(30), || {
        lines_in(&results) > 40
    })
    .await;
    let stdout = scenario::interrupt(child).await;
    assert!(
        stdout.contains("to resume, run the same command again"),
        "{stdout}"
    );
    let partial = s.results();
    assert!(partial.len() < 300, "stopped part way: {}", partial.len());
    assert!(
        partial.iter().all(|r| r["status"] == "sent"),
        "in-flight requests were drained"
    );

    let out = s.run(&["--rate", "100000/s"]).await;
    out.expect_code(0);
    s.assert_each_stored_once(300);
    assert_eq!(s.results().len(), 300);
    s.finish().await;
}

/// Messages go through hyper directly, unless the environment names a proxy: then through
/// reqwest, which speaks to proxies. Here the "proxy" is the sandbox itself (it answers a
/// request in absolute form as any other) and the base URL has no server behind it, so a row
/// is stored only if the proxy carried it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_named_in_the_environment_carries_the_requests() {
    let s = Scenario::new(support::export(20, 4)).await;
    let nobody = "http://127.0.0.1:9";
    let proxy = s.base_url();
    let out = s
        .invoke(&["--rate", "none"])
        .base_url(nobody)
        .env("HTTP_PROXY", &proxy)
        .env("http_proxy", &proxy)
        .env("NO_PROXY", "")
        .env("no_proxy", "")
        .output()
        .await;
    out.expect_code(0);
    s.assert_each_stored_once(20);
    s.finish().await;
}

/// The pass over the input before sending (duplicate keys, the quota plan) takes seconds on a
/// big input, on the run's one worker thread: Ctrl-C must still be heard and end it, with
/// nothing sent and the plan never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_the_pass_before_sending_stops_the_run() {
    let s = Scenario::new(support::export(300_000, 2_000)).await;
    let child = s.spawn(&["--rate", "none"], Stdio::piped(), Stdio::piped());
    let results = s.path(RESULTS);
    // The binary installs its signal handlers before it opens the results file.
    fixture::wait_for("the results file", Duration::from_secs(30), || {
        results.exists()
    })
    .await;
    let signalled = std::time::Instant::now();
    let stdout = scenario::interrupt(child).await;
    // The pass checks for Ctrl-C at every row; it does not run on to its end (seconds here).
    let heard_after = signalled.elapsed();
    assert!(
        heard_after < Duration::from_millis(1500),
        "the run went on for {heard_after:?} after Ctrl-C"
    );
    assert!(
        !stdout.contains("quota plan"),
        "the pass ran to its end before the signal was heard:\n{stdout}"
    );
    assert_eq!(s.stats().requests, 0);
    assert_eq!(lines_in(&results), 1, "only the header");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_stops_at_once() {
    let s = Scenario::new(support::export(200, 20)).await;
    let out = s
        .invoke(&["--rate", "100000/s", "--concurrency", "2"])
        .token("wrong-token")
        .output()
        .await;
    out.expect_code(3);
    out.expect_stdout("stopped early: the API rejected the token (HTTP 401: Invalid token: access token is invalid).");
    // At most the requests already in flight when the first 401 came; the rows written
    // ahead meanwhile (as many) are held back, never sent.
    assert!(s.stats().unauthorized <= 2, "{:?}", s.stats());
    let rows = s.results();
    assert!(rows.len() <= 4, "{rows:?}");
    assert!(
        rows.iter().all(|r| r["status"] == "failed"
            && (r["http_status"] == "401"
                || (r["http_status"].is_empty()
                    && r["error"] == "not sent: the run stopped before its request left"))),
        "{rows:?}"
    );
    assert_eq!(
        rows.iter().filter(|r| r["http_status"] == "401").count() as u64,
        s.stats().unauthorized
    );
    // With the right token the same command resumes and sends everything once.
    let out = s.run(&["--rate", "100000/s"]).await;
    out.expect_code(0);
    s.assert_each_stored_once(200);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_budget_stops_and_the_next_day_resumes() {
    let mut s = Scenario::with(support::export(100, 10), |c| SandboxConfig {
        daily: Some(30),
        ..c
    })
    .await;
    let out = s.run(&["--rate", "100000/s", "--concurrency", "4"]).await;
    out.expect_code(3);
    out.expect_stdout("stopped early: the daily request budget is spent");
    assert_eq!(s.stats().accepted, 30);
    // "The next day": a fresh budget, same record file.
    s.restart(|c| SandboxConfig {
        daily: Some(1000),
        ..c
    })
    .await;
    let out = s.run(&["--rate", "100000/s"]).await;
    out.expect_code(0);
    s.assert_each_stored_once(100);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_same_results_file_refuses() {
    let s = Scenario::with(support::export(200, 20), |c| SandboxConfig {
        latency: latency(20, 30),
        ..c
    })
    .await;
    let first = s.spawn(
        &["--rate", "100000/s", "--concurrency", "2"],
        Stdio::piped(),
        Stdio::piped(),
    );
    let results = s.path(RESULTS);
    fixture::wait_for(
        "the first run to start sending",
        Duration::from_secs(30),
        || lines_in(&results) > 2,
    )
    .await;
    let out = s.run(&["--rate", "100000/s"]).await;
    out.expect_code(2);
    out.expect_stderr("is in use by another lc-import run");
    let status = scenario::wait(first).await;
    assert_eq!(status.code(), Some(0));
    s.assert_each_stored_once(200);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_reaches_any_output() {
    const TOKEN: &str = "tok-Distinctive-7f3a9c";
    let s = Scenario::with(support::export(30, 3), |c| SandboxConfig {
        token: TOKEN.into(),
        ..c
    })
    .await;
    s.w.write(
        "bad.csv",
        "conversationId,contactId,type,direction,message\nc1,k1,Text,inbound,hi\n",
    );
    for args in [
        vec!["-vv", "--results", "text.csv"],
        vec!["-vv", "--log-format", "json", "--results", "json.csv"],
    ] {
        // The scenario runs with the token its sandbox accepts: TOKEN.
        let out = s.invoke(&args).default_rate().output().await;
        out.expect_code(0);
        assert!(
            out.stderr.contains("sending"),
            "trace logging was on: {out:?}"
        );
        assert!(
            !out.stdout.contains(TOKEN) && !out.stderr.contains(TOKEN),
            "{out:?}"
        );
    }
    // A rejected token is not echoed either.
    let out = s
        .invoke(&["-vv"])
        .input("bad.csv")
        .token("tok-Other-Secret-1234")
        .default_rate()
        .output()
        .await;
    assert!(
        !out.stdout.contains("tok-Other-Secret-1234")
            && !out.stderr.contains("tok-Other-Secret-1234")
    );
    assert!(!s.w.read("text.csv").contains(TOKEN) && !s.w.read("json.csv").contains(TOKEN));
    s.finish().await;
}

#[test]
fn a_missing_token_or_plain_http_is_a_usage_error() {
    let w = WorkDir::new();
    w.copy("samples/messages.csv");
    let out = w.run(&["run", "messages.csv"]);
    out.expect_code(2);
    out.expect_stderr(
        "no API token: set the environment variable LC_TOKEN, or give --token-file PATH",
    );
    let out = w.run_with(
        &[
            "run",
            "messages.csv",
            "--base-url",
            "http://services.leadconnectorhq.com",
        ],
        &[("LC_TOKEN", "t")],
    );
    out.expect_code(2);
    out.expect_stderr("plain http:// would send the token in clear");
    assert!(
        !w.path("messages.results.csv").exists(),
        "nothing was started"
    );
}

#[test]
fn dry_run_is_validate() {
    let w = WorkDir::new();
    w.copy("samples/messages.csv");
    let out = w.run(&["run", "messages.csv", "--dry-run"]);
    out.expect_code(0);
    out.expect_stdout("row 1 (line 2):");
    out.expect_stdout(": 200 valid, 0 invalid");
    assert!(
        !w.path("messages.results.csv").exists(),
        "a dry run sends and records nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_seen_twice_in_one_input_is_sent_once() {
    let mut csv = support::export(10, 3);
    // Rows 11 and 12 repeat the keys of rows 4 and 6 (even with another text).
    csv.push_str(
        "r3,conv0000000000000000,cont0000000000000000,SMS,inbound,2024-01-02T00:00:00Z,again\n",
    );
    csv.push_str(
        "r5,conv0000000000000002,cont0000000000000002,SMS,inbound,2024-01-02T00:00:01Z,message 5\n",
    );
    let s = Scenario::new(csv).await;
    let out = s.run(&["--rate", "none"]).await;
    out.expect_code(0);
    out.expect_stdout("duplicate             2");
    let rows = s.results();
    assert_eq!(rows.len(), 12);
    assert_eq!(rows[10]["status"], "duplicate");
    assert!(
        rows[10]["error"].starts_with("line 12: the key was seen on an earlier row"),
        "{:?}",
        rows[10]
    );
    assert_eq!(rows[11]["status"], "duplicate");
    s.assert_each_stored_once(10);
    // On resume the duplicates stay duplicates and the first rows stay sent.
    let out = s.run(&["--rate", "none"]).await;
    out.expect_code(0);
    out.expect_stdout("(0 now, 10 in earlier runs)");
    s.assert_each_stored_once(10);
    s.finish().await;
}
