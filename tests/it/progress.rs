//! Progress as a user watching a run reads it: rows finished of the rows in the input, with the
//! pace and the time left, on a resume starting at the rows already done.

use crate::scenario::Scenario;
use crate::support;

/// Without a terminal (cron, a log file), the line every 5 s gives done / total, percentage,
/// rate and ETA; a resume counts the rows done earlier as done from its first line. (Bug: the
/// bar followed bytes read — 60 % after 2 s of a 3,000-row run at 50/s — and the log line had no
/// total.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_line_counts_rows_finished_of_the_input_with_rate_and_eta() {
    let s = Scenario::new(support::export(1000, 50)).await;
    s.run(&["--limit", "400"]).await.expect_code(3);
    // 600 rows left at 100 rows/s: about 6 s, so one progress line at 5 s.
    let out = s.run(&["--rate", "100/s", "--concurrency", "4"]).await;
    out.expect_code(0);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("progress: "))
        .unwrap_or_else(|| panic!("a progress line{out:?}"));
    let after = line.split("progress: ").nth(1).expect("the line's text");
    let done: u64 = after
        .split('/')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("done / total in {line}"));
    assert!(after.contains("/1000 rows ("), "{line}");
    // Five seconds at 100 rows/s after the 400 done earlier; none of this counts bytes read.
    assert!((800..=1000).contains(&done), "{line}");
    assert!(after.contains("rows/s, ETA "), "{line}");
    let rate: f64 = after
        .split("; ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("a rate in {line}"));
    assert!(
        (60.0..=130.0).contains(&rate),
        "the pace of this run, not of the skips: {line}"
    );
    s.assert_each_stored_once(1000);
    s.finish().await;
}
