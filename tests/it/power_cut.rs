//! Power cuts (issue "Trust along the user's real path", item 4): what `kill -9` cannot show.
//! A killed process loses nothing it wrote: the OS still has it. A power cut loses whatever was
//! not yet on disk, and before each row's `sending` line was synced, the resume then sent
//! again rows that were stored (measured: 344–625 rows stored twice).
//!
//! The cut is played the way LazyFS plays it: a file keeps what its last sync covered and
//! loses the rest. A C shim (`tests/faults/synclog.c`), preloaded into the real binary, logs
//! from outside the program every successful `fsync` / `fdatasync` with the size the file had
//! when it began. Each round starts the import against a recording sandbox with some latency
//! (so 16 requests overlap), kills it with SIGKILL at a seeded random point, and cuts the
//! results file back to the last synced size (or, with no sync that round, to what the round
//! started from); the next round resumes from that. A clean run ends it. Then, from the
//! sandbox's own record:
//!
//! - no row is stored twice;
//! - every row ends `sent` (stored once, under the message ID in the results) or `unknown`
//!   (stored at most once), and the rows `unknown` are exactly those the cuts left `sending`,
//!   never more than `--concurrency` (+1 for a line cut in half) per cut;
//! - most cuts did drop bytes (the file was longer than its synced size), or this proves
//!   nothing.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use lc_import::rate::DurationRange;
use lc_import::sandbox::SandboxConfig;

use crate::fixture;
use crate::scenario::{RESULTS, Scenario};
use crate::support;

const ROWS: usize = 3000;
const CONVERSATIONS: usize = 100;
const CONCURRENCY: usize = 16;
const ROUNDS: usize = 40;
const MIN_CUTS: usize = 30;
const SEED: u64 = 0x9057_c0de;

/// The size the last sync logged in `log` covered of the file that is now at `path` (by inode:
/// a compaction syncs a temp file and renames it there), if one did.
pub(crate) fn synced_size(log: &Path, path: &Path) -> Option<u64> {
    let inode = std::fs::metadata(path).ok()?.ino();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    // Whole lines only (the shim writes each in one `write`, but a kill could cut one).
    text.split_inclusive('\n')
        .rev()
        .filter_map(|line| line.strip_suffix('\n'))
        .find_map(|line| {
            let (ino, size) = line.split_once(' ')?;
            (ino.parse::<u64>().ok()? == inode).then_some(size.parse::<u64>().ok()?)
        })
}

/// The power cut: `path` keeps what is on disk, the part the last sync of this round covered
/// (or `disk`, what the round started from, when nothing was synced), and loses the rest.
/// Returns the file's length before and after.
pub(crate) fn power_cut(path: &Path, log: &Path, disk: Option<&[u8]>) -> (u64, u64) {
    let written = fixture::file_len(path);
    match (synced_size(log, path), disk) {
        (Some(size), _) => std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(size))
            .expect("cut the results file"),
        (None, Some(disk)) => std::fs::write(path, disk).expect("restore the results file"),
        (None, None) => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{e}"),
            _ => {}
        },
    }
    (written, fixture::file_len(path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_at_random_points_sends_no_row_twice() {
    let s = Scenario::with(support::export(ROWS, CONVERSATIONS), |c| SandboxConfig {
        latency: Some(DurationRange {
            low: Duration::ZERO,
            high: Duration::from_millis(8),
        }),
        seed: Some(SEED),
        ..c
    })
    .await;
    let synclog = s.synclog();
    let concurrency = CONCURRENCY.to_string();
    let args = ["--concurrency", concurrency.as_str()];
    let results = s.path(RESULTS);
    let mut rng = fastrand::Rng::with_seed(SEED);
    let started = Instant::now();
    // (length written, length kept) at each cut.
    let mut cuts: Vec<(u64, u64)> = Vec::new();
    let mut pending_at_cuts: Vec<usize> = Vec::new();
    let mut pending_rows: HashSet<String> = HashSet::new();
    for round in 1..=ROUNDS {
        let disk = std::fs::read(&results).ok();
        let before = disk.as_ref().map_or(0, |d| d.len() as u64);
        // A whole journal is some 500 kB; some growths are 0 (a cut at start-up).
        let growth = rng.u64(0..24_000);
        let log = s.path(&format!("synclog-{round}.txt"));
        let log_name = log.to_string_lossy().into_owned();
        let env = synclog.env(&log_name, &[]);
        let child = s.spawn_logged(&args, &env, &format!("run-{round}.log"));
        let path = results.clone();
        let finished = tokio::task::spawn_blocking(move || {
            fixture::kill_at_len(child, &path, before + growth, &format!("round {round}"))
        })
        .await
        .expect("the round ends");
        if finished {
            break;
        }
        cuts.push(power_cut(&results, &log, disk.as_deref()));
        // A file never synced is gone: nothing of it was on disk.
        let rows = match results.exists() {
            true => fixture::in_flight(&results),
            false => HashSet::new(),
        };
        // On the wire, or written ahead while the others' requests were out (deliver's
        // LOOK_AHEAD): at most twice --concurrency.
        assert!(
            rows.len() <= 2 * CONCURRENCY + 1,
            "cut {}: {} rows left in flight, more than twice --concurrency {CONCURRENCY} (+1)",
            cuts.len(),
            rows.len()
        );
        pending_at_cuts.push(rows.len());
        pending_rows.extend(rows);
    }
    let out = s.run(&args).await;
    let summary_unknown: usize = out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("unknown")?.split_whitespace().next())
        .map_or(0, |n| n.parse().expect("a count"));

    let rows = s.assert_compacted();
    let stored = fixture::stored(&s.w);
    let twice = stored.values().filter(|ids| ids.len() > 1).count();
    let extra: usize = stored.values().map(|ids| ids.len().saturating_sub(1)).sum();
    let dropped = cuts.iter().filter(|(written, kept)| written > kept).count();
    let mut unknown: HashSet<String> = HashSet::new();
    let mut unknown_stored = 0usize;
    let mut missing = 0usize;
    for r in &rows {
        let ids = stored.get(&r["key"]).map_or(&[][..], Vec::as_slice);
        match r["status"].as_str() {
            // A cut `sent` line keeps its status; the ID after it may be what the cut took.
            "sent" if ids.len() == 1 && r["message_id"].is_empty() => {
                assert!(
                    r["error"].contains("the rest of this line was lost"),
                    "{r:?}"
                )
            }
            "sent" if ids.len() == 1 => assert_eq!(ids, [r["message_id"].clone()], "{r:?}"),
            "sent" if ids.is_empty() => missing += 1,
            "sent" => {}
            "unknown" => {
                unknown_stored += ids.len().min(1);
                unknown.insert(r["key"].clone());
            }
            _ => panic!("unexpected {r:?}{out:?}"),
        }
    }
    println!(
        "power cuts: {ROWS} rows, {} cuts ({dropped} dropped bytes: {} kB in all) in {:.1}s; \
         {twice} rows stored twice or more ({extra} extra copies), {missing} sent but not stored, {} unknown ({unknown_stored} \
         of them stored), at most {} in flight at a cut",
        cuts.len(),
        cuts.iter().map(|(w, k)| w.saturating_sub(*k)).sum::<u64>() / 1000,
        started.elapsed().as_secs_f64(),
        unknown.len(),
        pending_at_cuts.iter().max().copied().unwrap_or(0),
    );
    assert_eq!(twice, 0, "rows stored twice");
    assert_eq!(rows.len(), ROWS, "one line per input row{out:?}");
    assert_eq!(
        missing, 0,
        "rows recorded sent that the server does not have"
    );
    assert_eq!(
        stored.len(),
        rows.len() - unknown.len() + unknown_stored,
        "every row not unknown is stored"
    );
    assert_eq!(
        unknown, pending_rows,
        "every row a cut left in flight, and only those, ends unknown"
    );
    assert_eq!(
        summary_unknown,
        unknown.len(),
        "the summary's unknown count{out:?}"
    );
    out.expect_code(if unknown.is_empty() { 0 } else { 1 });
    assert!(
        cuts.len() >= MIN_CUTS,
        "only {} cuts before the import finished: make the growths smaller",
        cuts.len()
    );
    assert!(
        dropped * 2 > cuts.len(),
        "only {dropped} of {} cuts dropped bytes: the test would prove nothing",
        cuts.len()
    );
    s.finish().await;
}

/// A disk that stops syncing (the shim fails every sync after the first 20 with EIO): the run
/// stops (exit 3) naming the results file, no request leaves whose line could not be synced
/// (the sandbox stored exactly the rows recorded `sent`: those in flight at the failure finish),
/// the rows that were waiting (for the sync, or synced, for a place on the wire) are `failed`
/// ("not sent"), and the resume sends each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_that_fails_stops_the_run_before_its_request_leaves() {
    let s = Scenario::new(support::export(600, 30)).await;
    let synclog = s.synclog();
    let log = s.path("synclog.txt").to_string_lossy().into_owned();
    let out = s
        .run_with(
            &["--concurrency", "8"],
            &synclog.env(&log, &[("SYNCLOG_FAIL_AFTER", "20")]),
        )
        .await;
    out.expect_code(3);
    assert!(
        out.stdout.contains(
            "stopped early: cannot write the results file in.results.csv: cannot sync it to disk: Input/output error"
        ),
        "{out:?}"
    );
    // Compaction could not sync either: the journal is left as appended, whole.
    let journal = s.path(RESULTS);
    let mut last = std::collections::HashMap::new();
    for r in fixture::results(&journal) {
        last.insert(r["key"].clone(), r);
    }
    let not_sent: Vec<_> = last.values().filter(|r| r["status"] == "failed").collect();
    assert!(
        !not_sent.is_empty(),
        "rows were waiting for the sync{out:?}"
    );
    // Waiting for the sync that failed, or synced and waiting for a place on the wire when
    // the run stopped (deliver's LOOK_AHEAD): held back either way.
    for r in &not_sent {
        assert!(
            r["error"].starts_with("not sent: the results file could not be synced")
                || r["error"] == "not sent: the run stopped before its request left",
            "{r:?}"
        );
    }
    assert!(
        not_sent
            .iter()
            .any(|r| r["error"].starts_with("not sent: the results file could not be synced")),
        "{not_sent:?}"
    );
    let stored = fixture::stored(&s.w);
    for r in &not_sent {
        assert!(
            !stored.contains_key(&r["key"]),
            "a row whose line was not synced was sent: {r:?}"
        );
    }
    let sent = last.values().filter(|r| r["status"] == "sent").count();
    assert!(
        sent > 0 && sent < 600,
        "{sent} rows sent before the failure"
    );
    assert_eq!(
        stored.len(),
        sent,
        "only rows recorded sent reached the server"
    );

    // A disk that works again: the same command sends every other row, once.
    s.run(&[]).await.expect_code(0);
    s.assert_each_stored_once(600);
    s.finish().await;
}
