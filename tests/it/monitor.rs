//! `--summary-json`: the outcome of a run as one JSON object for a nightly job's monitor,
//! written whatever the exit code, and never an older run's.

use lc_import::sandbox::SandboxConfig;
use serde_json::Value;

use crate::scenario::Scenario;
use crate::support::{self, WorkDir};

fn summary(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the summary was written");
    serde_json::from_str(&text).expect("the summary is one JSON object")
}

/// A run that finishes, then one stopped early: each summary gives the exit code the process
/// returned, the counts the results file holds, and (only for the stop) the command to resume.
/// The token appears in neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_says_what_the_exit_code_and_the_results_file_say() {
    let s = Scenario::new(support::export(120, 12)).await;
    let path = s.path("summary.json");
    let arg = path.to_string_lossy().into_owned();

    let out = s.run(&["--limit", "50", "--summary-json", &arg]).await;
    out.expect_code(3);
    let first = summary(&path);
    assert_eq!(first["exit_code"], 3, "{first:#}");
    assert_eq!(first["outcome"], "stopped early, resumable");
    assert_eq!(first["rows"]["sent"], 50);
    assert_eq!(first["rows"]["in_input"], 120);
    assert_eq!(first["requests"]["messages"], 50);
    assert!(
        first["stopped"].as_str().unwrap().contains("--limit 50"),
        "{first:#}"
    );
    let resume = first["resume_command"].as_str().unwrap();
    assert!(
        resume.contains("--summary-json") && !resume.contains("--limit"),
        "{resume}"
    );

    let out = s.run(&["--summary-json", &arg]).await;
    out.expect_code(0);
    let second = summary(&path);
    assert_eq!(second["exit_code"], 0, "{second:#}");
    assert_eq!(second["outcome"], "success");
    assert_eq!(second["rows"]["sent"], 70);
    assert_eq!(second["rows"]["sent_earlier"], 50);
    assert_eq!(second["stopped"], Value::Null);
    assert_eq!(second["resume_command"], Value::Null);
    assert_eq!(second["error"], Value::Null);
    let statuses = s.statuses();
    assert_eq!(statuses.get("sent").copied(), Some(120));
    assert!(
        second["results"]
            .as_str()
            .unwrap()
            .ends_with("in.results.csv"),
        "{second:#}"
    );
    for text in [first.to_string(), second.to_string()] {
        assert!(
            !text.contains(s.sandbox_token()),
            "the token is in the summary"
        );
    }
    s.finish().await;
}

/// A run with rows that need attention exits 1, and the summary says so with the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_need_attention_are_exit_1_in_the_summary_too() {
    let s = Scenario::with(support::export(200, 20), |c| SandboxConfig {
        drop_rate: 0.1,
        seed: Some(3),
        ..c
    })
    .await;
    let path = s.path("summary.json");
    let arg = path.to_string_lossy().into_owned();
    let out = s.run(&["--timeout", "5s", "--summary-json", &arg]).await;
    out.expect_code(1);
    let json = summary(&path);
    assert_eq!(json["exit_code"], 1, "{json:#}");
    let unknown = s.statuses().get("unknown").copied().unwrap_or(0);
    assert!(unknown > 0);
    assert_eq!(json["rows"]["unknown"], unknown as u64, "{json:#}");
    assert!(json["elapsed_seconds"].as_f64().unwrap() > 0.0);
    s.finish().await;
}

/// A usage error: exit 2, and the summary says why, replacing the last run's (a monitor must
/// not read last night's success as tonight's).
#[test]
fn a_usage_error_replaces_the_last_summary_with_its_own() {
    let w = WorkDir::new();
    w.copy("samples/messages.csv");
    w.write("summary.json", r#"{"exit_code": 0, "outcome": "success"}"#);
    let out = w.run(&["run", "messages.csv", "--summary-json", "summary.json"]);
    out.expect_code(2);
    let json = summary(&w.path("summary.json"));
    assert_eq!(json["exit_code"], 2, "{json:#}");
    assert_eq!(
        json["outcome"],
        "usage or configuration error, nothing sent"
    );
    assert!(
        json["error"].as_str().unwrap().contains("no API token"),
        "{json:#}"
    );
    assert_eq!(json.get("rows"), None, "no run, no counts");
}
