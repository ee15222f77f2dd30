//! Trust along the path a user walks: rehearse in the sandbox, check with `validate`, then import
//! for real. Each guarantee is tested the way a user would break it: two runs, real files, the
//! sandbox's record as the ground truth.

use crate::scenario::{RESULTS, Scenario};
use crate::support;

/// `run --sandbox` first (a rehearsal), then the real import with the same command line but a
/// real API: the rehearsal has a results file of its own, so the real import sends every row.
/// (Bug: "sent 200 (0 now, 200 in earlier runs)", 0 requests, exit 0; the real location got
/// nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehearsal_does_not_hide_the_real_import() {
    let s = Scenario::new(support::export(200, 20)).await;
    let rehearsal = s.w.run_with(&["run", "in.csv", "--sandbox"], &[]);
    rehearsal.expect_code(0);
    assert!(s.path("in.sandbox.results.csv").exists(), "{rehearsal:?}");
    assert!(
        !s.path(RESULTS).exists(),
        "the real run's file is untouched"
    );
    // The "real" API: the scenario's sandbox stands in for it.
    let out = s.run(&[]).await;
    out.expect_code(0);
    assert!(
        out.stdout.contains("(200 now, 0 in earlier runs)"),
        "{out:?}"
    );
    s.assert_each_stored_once(200);
    s.finish().await;
}

/// One `--results` for the rehearsal and the real import: the real one refuses before any
/// request, naming both targets and the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_file_of_another_target_is_refused_before_any_request() {
    let s = Scenario::new(support::export(50, 5)).await;
    s.w.run_with(
        &["run", "in.csv", "--sandbox", "--results", "shared.csv"],
        &[],
    )
    .expect_code(0);
    let out = s.run(&["--results", "shared.csv"]).await;
    out.expect_code(2);
    assert!(
        out.stderr.contains("shared.csv was written against the sandbox of run --sandbox, and this run sends to http://127.0.0.1:*/"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("Give this run its own results file with --results"),
        "{out:?}"
    );
    assert_eq!(s.stats().requests, 0, "nothing was sent");

    // Another location under the same API is another target too.
    s.run(&["--location-id", "locA"]).await.expect_code(0);
    let requests = s.stats().requests;
    let out = s.run(&["--location-id", "locB"]).await;
    out.expect_code(2);
    assert!(
        out.stderr.contains("location locA") && out.stderr.contains("location locB"),
        "{out:?}"
    );
    assert_eq!(s.stats().requests, requests);
    s.finish().await;
}

/// A results file written before targets were recorded still resumes: it is taken as written
/// for the first run that reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_file_from_before_targets_still_resumes() {
    let s = Scenario::new(support::export(60, 6)).await;
    s.run(&["--limit", "20"]).await.expect_code(3);
    let sidecar = s.path("in.results.csv.target.json");
    std::fs::remove_file(&sidecar).expect("the target record exists");
    let out = s.run(&[]).await;
    out.expect_code(0);
    assert!(
        out.stdout.contains("(40 now, 20 in earlier runs)"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("records no target (written by an older lc-import)"),
        "{out:?}"
    );
    assert!(sidecar.exists(), "recorded now");
    s.assert_each_stored_once(60);
    s.finish().await;
}

/// `validate --results` on a run's results file refuses (exit 2) and says where it writes
/// instead: the run's record stays, and the next run sends nothing twice. A file a running
/// import holds locked is refused too. (Bug: validate rewrote it as 80 `valid` lines and the
/// next run sent all 80 again: 160 stored.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_never_overwrites_a_runs_outcomes() {
    let s = Scenario::with(support::export(80, 8), |c| {
        lc_import::sandbox::SandboxConfig {
            latency: Some(lc_import::rate::DurationRange {
                low: std::time::Duration::from_millis(20),
                high: std::time::Duration::from_millis(30),
            }),
            ..c
        }
    })
    .await;
    s.run(&["--concurrency", "8"]).await.expect_code(0);
    let before = s.w.read(RESULTS);
    let out = s.w.run(&["validate", "in.csv", "--results", RESULTS]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("in.results.csv is the results file of a run (80 sent)"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("Validate writes in.validation.csv instead"),
        "{out:?}"
    );
    assert_eq!(s.w.read(RESULTS), before, "untouched");
    let out = s.run(&[]).await;
    out.expect_code(0);
    assert!(
        out.stdout.contains("(0 now, 80 in earlier runs)"),
        "{out:?}"
    );
    s.assert_each_stored_once(80);

    // While a run holds another results file, validate leaves it alone.
    let mut child = s.spawn(
        &["--results", "live.csv", "--concurrency", "1"],
        std::process::Stdio::null(),
        std::process::Stdio::null(),
    );
    let live = s.path("live.csv");
    crate::fixture::wait_for(
        "the run to start sending",
        std::time::Duration::from_secs(30),
        || crate::fixture::file_len(&live) > 400,
    )
    .await;
    let out = s.w.run(&["validate", "in.csv", "--results", "live.csv"]);
    let _ = child.kill();
    let _ = child.wait();
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("live.csv is in use by a running import"),
        "{out:?}"
    );
    s.finish().await;
}

/// A canary (`--limit`) says how many rows are left and prints a resume command that runs as
/// pasted: without `--limit` (which would stop it after as many rows again), naming the token's
/// variable but never its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_summary_counts_the_rows_left_and_its_command_resumes_as_pasted() {
    let s = Scenario::new(support::export(60, 6)).await;
    let out = s.run(&["--limit", "20"]).await;
    out.expect_code(3);
    assert!(out.stdout.contains("40 row(s) still to do"), "{out:?}");
    assert!(
        out.stdout
            .contains("(with the token in LC_TOKEN, as for this run)"),
        "{out:?}"
    );
    assert!(
        !out.stdout.contains(crate::fixture::TOKEN),
        "never the token's value{out:?}"
    );
    let command = out
        .stdout
        .lines()
        .skip_while(|l| !l.contains("to resume, run the same command again"))
        .nth(1)
        .expect("the command on the next line")
        .trim()
        .to_owned();
    assert!(!command.contains("--limit"), "{command}");
    let pasted = std::process::Command::new("sh")
        .args(["-c", &command])
        .current_dir(s.path(""))
        .env("LC_TOKEN", crate::fixture::TOKEN)
        .output()
        .expect("sh");
    assert_eq!(
        pasted.status.code(),
        Some(0),
        "{command}\n{}",
        String::from_utf8_lossy(&pasted.stdout)
    );
    s.assert_each_stored_once(60);
    s.finish().await;
}

/// Rows without a key column are keyed by their content: the run says so at the start, naming
/// --key-column, and when an edited row makes a new key, the summary counts the row sent earlier
/// that the input no longer has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_keys_are_announced_and_rows_gone_from_the_input_are_counted() {
    let export = support::export(30, 3).replace("altId,", "ref,");
    let s = Scenario::new(&export).await;
    let out = s.run(&[]).await;
    out.expect_code(0);
    assert!(out.stderr.contains("has no key column"), "{out:?}");
    assert!(out.stderr.contains("--key-column COLUMN"), "{out:?}");
    s.w.write(
        "in.csv",
        export.replace("message 7\n", "message 7 (typo fixed)\n"),
    );
    // The edited row is held back as `changed` (see changed.rs), and its earlier version is
    // counted as gone from the input.
    let out = s.run(&[]).await;
    out.expect_code(1);
    assert!(
        out.stdout.contains("(0 now, 29 in earlier runs)"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("1 row(s) sent earlier are not in this input (their lines are kept): rows keyed by content"),
        "{out:?}"
    );
    s.finish().await;
}
