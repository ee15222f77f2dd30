//! The pieces [`crate::scenario`] is built from, shared with the tests that still assemble
//! them by hand (`crash`, `security`): an in-process sandbox on a loopback port, the real binary
//! run against it (to the end, or as a child to signal), and readers for what both sides
//! recorded.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lc_import::rate::DurationRange;
use lc_import::sandbox::{self, Sandbox, SandboxConfig};
use serde_json::Value;

use crate::support::{self, BIN, Output, WorkDir};

pub const TOKEN: &str = "sandbox-token";

/// A sandbox on a free loopback port.
pub async fn start(config: SandboxConfig) -> Sandbox {
    start_at(config, "127.0.0.1:0".parse().expect("address")).await
}

pub async fn start_at(config: SandboxConfig, addr: SocketAddr) -> Sandbox {
    sandbox::start(config, addr).await.expect("sandbox starts")
}

/// No limits, no faults, every stored message recorded in `record.jsonl`.
pub fn recorded(w: &WorkDir) -> SandboxConfig {
    SandboxConfig {
        record: Some(w.path("record.jsonl")),
        ..SandboxConfig::unlimited()
    }
}

/// `run INPUT --base-url BASE ARGS…`, as owned strings.
pub fn run_args(input: &str, base_url: &str, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = vec![
        "run".into(),
        input.into(),
        "--base-url".into(),
        base_url.into(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    all
}

/// Runs `lc-import run INPUT --base-url BASE ARGS…` to its end with `token` in `LC_TOKEN`.
pub async fn run(w: &WorkDir, base_url: &str, input: &str, args: &[&str], token: &str) -> Output {
    let all = run_args(input, base_url, args);
    let dir = w.path("");
    let env = vec![("LC_TOKEN".to_owned(), token.to_owned())];
    tokio::task::spawn_blocking(move || support::run_in(&dir, &all, &env))
        .await
        .expect("the run finishes")
}

/// Starts the binary as a child with `LC_TOKEN`; its stdout and stderr go to `log` in the work
/// directory (a file, so a child that is killed never blocks on a full pipe).
pub fn spawn_logged(w: &WorkDir, args: &[String], token: &str, log: &str) -> Child {
    let out = File::create(w.path(log)).expect("create a log file");
    let err = out.try_clone().expect("clone the log file");
    Command::new(BIN)
        .args(args)
        .current_dir(w.path(""))
        .env_remove("LC_BASE_URL")
        .env("LC_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start lc-import")
}

/// The sandbox's record in `record.jsonl`: altId → the message IDs it was stored under.
pub fn stored(w: &WorkDir) -> HashMap<String, Vec<String>> {
    stored_in(&w.path("record.jsonl"))
}

pub fn stored_in(path: &Path) -> HashMap<String, Vec<String>> {
    let mut by_alt: HashMap<String, Vec<String>> = HashMap::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("a record line is JSON");
        let alt = v["body"]["altId"].as_str().expect("rows carry altId");
        let id = v["messageId"].as_str().expect("a message ID");
        by_alt
            .entry(alt.to_owned())
            .or_default()
            .push(id.to_owned());
    }
    by_alt
}

/// Asserts `r0..r{n}` are each stored exactly once, and nothing else is stored.
pub fn assert_each_stored_once(w: &WorkDir, n: usize) {
    let counts = stored(w);
    let twice: Vec<_> = counts.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let missing: Vec<String> = (0..n)
        .map(|i| format!("r{i}"))
        .filter(|k| !counts.contains_key(k))
        .collect();
    assert!(missing.is_empty(), "never stored: {missing:?}");
    assert_eq!(counts.len(), n, "only the input's rows are stored");
}

/// A file of JSON lines (a sandbox's record), one value each; none if there is no file.
pub fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// Sandbox latency: every answer held between `low_ms` and `high_ms` milliseconds.
pub fn latency(low_ms: u64, high_ms: u64) -> Option<DurationRange> {
    Some(DurationRange {
        low: Duration::from_millis(low_ms),
        high: Duration::from_millis(high_ms),
    })
}

/// A results file as rows of named cells (through the csv crate, as a user's tool would read it).
pub fn results(path: &Path) -> Vec<HashMap<String, String>> {
    let mut reader =
        csv::Reader::from_path(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    reader
        .deserialize()
        .map(|r| r.unwrap_or_else(|e| panic!("a results line of {}: {e}", path.display())))
        .collect()
}

/// How many rows of a results file end in each status.
pub fn statuses(path: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in results(path) {
        *counts.entry(r["status"].clone()).or_default() += 1;
    }
    counts
}

/// Rows whose request may have left unanswered at a kill: those whose last journal line is
/// `sending`, counted as the resume will count them. SIGKILL can cut the last line short (the
/// kernel checks for a fatal signal between the pages of one write, so a line that straddles a
/// page boundary may be half written); the resume repairs such a line conservatively, and so
/// does this count: a cut `sending` line, or one cut inside its status, is a row in flight; a
/// cut `sent`/`failed` line is that outcome; any other cut line is no line.
pub fn in_flight(journal: &Path) -> HashSet<String> {
    let bytes = std::fs::read(journal).expect("the journal reads");
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(&bytes[..whole]);
    let mut last: HashMap<String, String> = HashMap::new();
    for record in reader.records() {
        let record = record.expect("whole journal lines parse");
        assert_eq!(record.len(), 11, "a whole journal line: {record:?}");
        last.insert(record[1].to_owned(), record[2].to_owned());
    }
    let tail = &bytes[whole..];
    if !tail.is_empty() {
        let cut = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(tail)
            .records()
            .next()
            .and_then(Result::ok);
        // A field is whole only when a comma follows it.
        let field = |i: usize| {
            cut.as_ref()
                .filter(|r| r.len() > i + 1)
                .map(|r| r[i].to_owned())
        };
        if let Some(key) = field(1).filter(|k| !k.is_empty()) {
            match field(2).as_deref() {
                Some("sent") | Some("failed") => {
                    last.insert(key, "done".into());
                }
                Some("invalid") | Some("duplicate") | Some("valid") => {}
                _ if last.get(&key).map(String::as_str) == Some("sent") => {}
                _ => {
                    last.insert(key, "sending".into());
                }
            }
        }
    }
    last.into_iter()
        .filter(|(_, s)| s == "sending")
        .map(|(k, _)| k)
        .collect()
}

/// Polls `cond` every few milliseconds until it holds; panics with `what` after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Runs the binary with `args` (logged to `log`) and SIGKILLs it once `journal` has grown by
/// `growth` bytes: `None` when it was killed, else how it ended by itself first. `Child::kill`
/// is SIGKILL on Unix: no handler runs, nothing is flushed.
/// Waits, on the calling (blocking) thread, for `child` to end or for `path` to reach `len`
/// bytes, then SIGKILLs it (`Child::kill` is SIGKILL on Unix: no handler runs, nothing is
/// flushed). Polled often, so the kill lands between a write and the sync that covers it as
/// often as anywhere else. `true`: the child ended by itself. `what` names it in a failure.
pub fn kill_at_len(mut child: Child, path: &Path, len: u64, what: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("poll the child").is_some() {
            return true;
        }
        if file_len(path) >= len {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap the killed child");
            return false;
        }
        assert!(Instant::now() < deadline, "{what} made no progress");
        std::thread::sleep(Duration::from_micros(200));
    }
}

pub async fn run_killed_at_growth(
    w: &WorkDir,
    args: &[String],
    log: &str,
    journal: &Path,
    growth: u64,
) -> Option<std::process::ExitStatus> {
    let before = file_len(journal);
    let mut child = spawn_logged(w, args, TOKEN, log);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            return Some(status);
        }
        if file_len(journal) >= before + growth {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap the killed child");
            return None;
        }
        assert!(Instant::now() < deadline, "{log}: the run made no progress");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
