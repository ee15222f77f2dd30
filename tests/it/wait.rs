//! `--wait` (issue 16, item 3): a spent daily budget makes the run wait for the next day and go
//! on by itself, against a sandbox whose "day" lasts a few seconds (`--day`, announced in
//! `X-Sandbox-Day-Length-Ms`, which the tool heeds from a loopback server only).

use std::process::Stdio;
use std::time::Duration;

use lc_import::sandbox::SandboxConfig;

use crate::scenario::{Scenario, interrupt};
use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_bigger_than_the_daily_budget_waits_for_the_next_days_and_finishes_by_itself() {
    // 100 rows, 40 requests a "day" of 3 seconds: three days at least.
    let s = short_days(100, 10, 40, 3).await;
    let out = s.run(&["--wait", "--concurrency", "4"]).await;
    out.expect_code(0);
    s.assert_each_stored_once(100);
    s.assert_all_sent(100);
    let waits = out
        .stderr
        .matches("the daily request budget is spent: waiting until")
        .count();
    assert!(
        waits >= 2,
        "a wait before the second and the third day:{out:?}"
    );
    assert!(out.stderr.contains("the daily budget is back"), "{out:?}");
    let stats = s.stats();
    assert_eq!(stats.accepted, 100, "{stats:?}");
    // The results file has no trace of the waits: one sent line per row.
    let statuses = s.statuses();
    assert_eq!(statuses.get("sent"), Some(&100), "{statuses:?}");
    eprintln!(
        "waits {waits}, 429s {}, requests {}",
        stats.rate_limited, stats.requests
    );

    // --max-requests still bounds a run that waits: it stops (exit 3) on the next day.
    let s = short_days(100, 10, 40, 3).await;
    let out = s.run(&["--wait", "--max-requests", "50"]).await;
    out.expect_code(3);
    assert!(out.stdout.contains("--max-requests 50 reached"), "{out:?}");
    assert!(s.stats().requests <= 50, "{:?}", s.stats());
    assert_sent_once_failed_not_stored(&s);
    s.finish().await;

    // Without --wait the same spent budget stops the run (exit 3), resumable.
    let s = short_days(30, 3, 10, 3600).await;
    let out = s.run(&["--concurrency", "2"]).await;
    out.expect_code(3);
    assert!(
        out.stdout.contains("daily request budget is spent"),
        "{out:?}"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_a_run_that_waits_for_the_next_day_at_once() {
    let s = short_days(30, 3, 10, 3600).await;
    let child = s.spawn(
        &["--wait", "--concurrency", "2"],
        Stdio::piped(),
        Stdio::piped(),
    );
    crate::fixture::wait_for("the budget to be spent", Duration::from_secs(30), || {
        s.stats().daily_remaining == Some(0)
    })
    .await;
    let started = std::time::Instant::now();
    let stdout = interrupt(child).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped at once, not after the hour's wait"
    );
    assert!(stdout.contains("still to do"), "{stdout}");
    // The rows refused by the spent budget are `failed` (not stored), the rest unrecorded.
    assert_sent_once_failed_not_stored(&s);
    assert_eq!(s.stats().accepted, 10);
    s.finish().await;
}

/// A stopped run's rows: `sent` ones stored once, `failed` ones (refused by the spent budget)
/// not at all, none `unknown`; the rest unrecorded.
fn assert_sent_once_failed_not_stored(s: &Scenario) {
    let stored = s.stored();
    for r in s.results() {
        match r["status"].as_str() {
            "sent" => assert_eq!(stored[&r["key"]].len(), 1, "{r:?}"),
            "failed" => assert!(!stored.contains_key(&r["key"]), "{r:?}"),
            other => panic!("{other}: {r:?}"),
        }
    }
}

/// `rows` rows over `conversations` conversations, against a sandbox that allows `daily`
/// requests a "day" of `day_secs` seconds.
async fn short_days(rows: usize, conversations: usize, daily: u64, day_secs: u64) -> Scenario {
    Scenario::with(support::export(rows, conversations), |c| SandboxConfig {
        daily: Some(daily),
        day: Some(Duration::from_secs(day_secs)),
        ..c
    })
    .await
}
