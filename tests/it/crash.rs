//! Crash and resume (issue 5, part 1): one import of a few thousand rows is killed with SIGKILL
//! at seeded random points, at least 20 times, and resumed each time with the same command until
//! it finishes. The sandbox runs on in this process across the kills and records every message it
//! stores, so the test can hold the results file against what the server really has:
//!
//! - no row is stored twice;
//! - every valid row ends `sent` (stored exactly once, under the message ID in the results) or
//!   `unknown` (its request was in flight at a kill: stored at most once);
//! - at each kill at most `--concurrency` rows are left between their write-ahead `sending` line
//!   and their outcome, so at most that many rows per kill can end `unknown`;
//! - the final results file has one line per input row, in input order.
//!
//! Then `--resend-unknown` sends the `unknown` rows again: every row is stored at least once,
//! and the only rows stored twice are `unknown` rows the server had stored (the documented risk
//! of that flag).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lc_import::rate::DurationRange;
use lc_import::sandbox::SandboxConfig;

use crate::fixture::{self, TOKEN};
use crate::support::{self, WorkDir};

const ROWS: usize = 3000;
const CONVERSATIONS: usize = 60;
const CONCURRENCY: usize = 8;
const MIN_KILLS: usize = 20;
const SEED: u64 = 0x5eed_c4a5;

/// The export of `support::export`, with every 101st row made invalid (`type` `Text`): invalid
/// rows must end `invalid` and never reach the server, whatever the kills.
fn input() -> (String, Vec<bool>) {
    let mut valid = Vec::with_capacity(ROWS);
    let mut out = String::new();
    for (i, line) in support::export(ROWS, CONVERSATIONS).lines().enumerate() {
        if i > 0 && (i - 1) % 101 == 50 {
            out.push_str(&line.replacen(",SMS,", ",Text,", 1));
            valid.push(false);
        } else {
            out.push_str(line);
            if i > 0 {
                valid.push(true);
            }
        }
        out.push('\n');
    }
    (out, valid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_and_doubles_nothing() {
    let w = WorkDir::new();
    let (csv, valid) = input();
    w.write("in.csv", csv);
    // Latency keeps requests in flight long enough for kills to land mid-request.
    let sb = fixture::start(SandboxConfig {
        latency: Some(DurationRange {
            low: Duration::from_millis(2),
            high: Duration::from_millis(10),
        }),
        seed: Some(SEED),
        ..fixture::recorded(&w)
    })
    .await;
    let concurrency = CONCURRENCY.to_string();
    let args = fixture::run_args(
        "in.csv",
        &sb.base_url(),
        &["--rate", "none", "--concurrency", &concurrency],
    );
    let journal = w.path("in.results.csv");
    let mut rng = fastrand::Rng::with_seed(SEED);
    let started = Instant::now();
    let mut kills = 0usize;
    let mut pending_at_kills: Vec<usize> = Vec::new();
    // Rows in flight at any kill. A set: a run killed at start-up, before it recorded the
    // previous kill's in-flight rows `unknown`, shows the same rows in flight again.
    let mut pending_rows: HashSet<String> = HashSet::new();
    let mut run = 0usize;
    let status = loop {
        run += 1;
        // A whole journal is some 500 kB (a `sending` and an outcome line per row): growths of
        // up to 24 kB give several dozen kills, some before the first byte (at start-up).
        let growth = rng.u64(0..24_000);
        let exited =
            fixture::run_killed_at_growth(&w, &args, &format!("run-{run}.log"), &journal, growth)
                .await;
        match exited {
            Some(status) => break status,
            None => {
                kills += 1;
                let rows = fixture::in_flight(&journal);
                let pending = rows.len();
                pending_rows.extend(rows);
                // At most --concurrency requests in flight and as many more with their lines
                // written ahead (unthrottled, rows beyond those on the wire sync their lines
                // meanwhile), plus the row of a line the kill cut short (counted in flight,
                // conservatively, even if its request had not left).
                assert!(
                    pending <= 2 * CONCURRENCY + 1,
                    "kill {kills}: {pending} rows in flight, more than twice --concurrency {CONCURRENCY} (+1)"
                );
                pending_at_kills.push(pending);
            }
        }
        assert!(run < 500, "the import never finished");
    };
    let log = w.read(&format!("run-{run}.log"));
    assert!(
        kills >= MIN_KILLS,
        "only {kills} kills before the import finished: make the growths smaller\n{log}"
    );

    // The final results file: one line per input row, in input order.
    let rows = fixture::results(&journal);
    assert_eq!(rows.len(), ROWS, "one line per input row\n{log}");
    let stored = fixture::stored(&w);
    let mut unknown_stored = 0usize;
    let mut unknown_not_stored = 0usize;
    let mut unknown_rows: HashSet<String> = HashSet::new();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["row"], (i + 1).to_string(), "input order: {r:?}");
        let ids = stored.get(&r["key"]).map_or(&[][..], Vec::as_slice);
        assert!(ids.len() <= 1, "row {} stored {} times", i + 1, ids.len());
        match (valid[i], r["status"].as_str()) {
            (false, "invalid") => assert!(ids.is_empty(), "an invalid row was sent: {r:?}"),
            (true, "sent") => assert_eq!(
                ids,
                [r["message_id"].clone()],
                "a sent row is stored once, under the ID in the results: {r:?}"
            ),
            (true, "unknown") => {
                unknown_rows.insert(r["key"].clone());
                if ids.is_empty() {
                    unknown_not_stored += 1;
                } else {
                    unknown_stored += 1;
                }
            }
            _ => panic!("row {}: unexpected {r:?}", i + 1),
        }
    }
    let unknown = unknown_stored + unknown_not_stored;
    assert_eq!(
        unknown_rows, pending_rows,
        "every row in flight at a kill, and only those, ends unknown"
    );
    let duplicates = stored.values().filter(|ids| ids.len() > 1).count();
    assert_eq!(duplicates, 0);
    assert_eq!(
        status.code(),
        Some(if unknown > 0 { 1 } else { 0 }),
        "exit code of the final run\n{log}"
    );
    println!(
        "crash harness: {ROWS} rows ({} invalid), {kills} SIGKILLs over {run} runs in {:.1}s, \
         {duplicates} stored twice, {unknown} left unknown ({unknown_stored} of them stored, \
         {unknown_not_stored} not), at most {} in flight at a kill",
        valid.iter().filter(|v| !**v).count(),
        started.elapsed().as_secs_f64(),
        pending_at_kills.iter().max().copied().unwrap_or(0),
    );

    // The user's remedy for `unknown` rows: --resend-unknown. Now nothing is lost, and the rows
    // stored twice are exactly the unknown ones the server had stored.
    let out = fixture::run(
        &w,
        &sb.base_url(),
        "in.csv",
        &["--rate", "none", "--resend-unknown"],
        TOKEN,
    )
    .await;
    out.expect_code(1); // the invalid rows
    let stored = fixture::stored(&w);
    for (i, r) in fixture::results(&journal).iter().enumerate() {
        let copies = stored.get(&r["key"]).map_or(0, Vec::len);
        if valid[i] {
            assert_eq!(r["status"], "sent", "{r:?}{out:?}");
            assert!(copies >= 1, "row {} never stored", i + 1);
        }
    }
    let twice = stored.values().filter(|ids| ids.len() > 1).count();
    assert_eq!(
        twice, unknown_stored,
        "only stored unknown rows are doubled"
    );
    sb.shutdown().await;
}
