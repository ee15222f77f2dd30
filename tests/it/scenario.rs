//! A test scenario in one value: an export written into a work directory, a recording sandbox
//! on a loopback port, runs of the real binary against it (to the end, or as a child to signal),
//! what both sides recorded, and the sandbox's shutdown.
//!
//! ```ignore
//! let s = Scenario::new(support::export(200, 20)).await;
//! s.run(&["--concurrency", "4"]).await.expect_code(0);
//! s.assert_each_stored_once(200);
//! s.finish().await;
//! ```
//!
//! A run that differs from the usual one (another input, another token, extra environment, the
//! CLI's own pace) is built with [`Scenario::invoke`]:
//!
//! ```ignore
//! let out = s.invoke(&["-vv"]).input("bad.csv").token("wrong-token").output().await;
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use lc_import::sandbox::{Sandbox, SandboxConfig, Stats};
use serde_json::Value;

use crate::fixture;
use crate::support::{BIN, Output, WorkDir};

/// The input every scenario writes, and the results file beside it.
pub const INPUT: &str = "in.csv";
pub const RESULTS: &str = "in.results.csv";
/// What the sandbox stored: one JSON line per message, and one per contact or conversation it
/// created.
pub const RECORD: &str = "record.jsonl";
pub const CONTACTS: &str = "contacts.jsonl";

pub struct Scenario {
    pub w: WorkDir,
    /// `None` from [`Scenario::stop`] until [`Scenario::start_again`]. Shut down by
    /// [`Scenario::finish`]; a test that panics drops it, which stops its tasks too.
    sb: Option<Sandbox>,
    /// Where the sandbox listens, or listened before it was stopped.
    addr: SocketAddr,
    /// The token the sandbox accepts: runs send it unless told another.
    token: String,
}

impl Scenario {
    /// `export` as `in.csv`, against a sandbox with no limits that records what it stores.
    pub async fn new(export: impl AsRef<[u8]>) -> Scenario {
        Scenario::with(export, |c| c).await
    }

    /// As [`Scenario::new`], with the sandbox's configuration changed by `config`.
    pub async fn with(
        export: impl AsRef<[u8]>,
        config: impl FnOnce(SandboxConfig) -> SandboxConfig,
    ) -> Scenario {
        let w = WorkDir::new();
        w.write(INPUT, export);
        Scenario::prepared(w, config).await
    }

    /// A work directory the test has filled itself (samples, contacts to seed the sandbox
    /// with…), then the sandbox, its configuration changed by `config`.
    pub async fn prepared(
        w: WorkDir,
        config: impl FnOnce(SandboxConfig) -> SandboxConfig,
    ) -> Scenario {
        let (sb, token) = start(&w, config, None).await;
        Scenario {
            addr: sb.addr(),
            token,
            sb: Some(sb),
            w,
        }
    }

    /// The running sandbox.
    pub fn sb(&self) -> &Sandbox {
        self.sb
            .as_ref()
            .expect("the sandbox runs (it was stopped and not started again)")
    }

    /// `http://` and the sandbox's address; after [`Scenario::stop`], an address where nothing
    /// listens.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Stats {
        self.sb().stats()
    }

    /// Shuts the sandbox down: connections to its address are refused from now on.
    pub async fn stop(&mut self) {
        if let Some(sb) = self.sb.take() {
            sb.shutdown().await;
        }
    }

    /// Back on the address the stopped sandbox had, so the same command finds it: a fresh
    /// sandbox (its configuration changed by `config`) that records into the same files.
    pub async fn start_again(&mut self, config: impl FnOnce(SandboxConfig) -> SandboxConfig) {
        assert!(
            self.sb.is_none(),
            "stop the sandbox before starting it again"
        );
        let (sb, token) = start(&self.w, config, Some(self.addr)).await;
        self.token = token;
        self.sb = Some(sb);
    }

    /// Another sandbox in place of this one (its configuration changed by `config`: the fault
    /// is over, it is the next day…), on a fresh port, recording into the same files.
    pub async fn restart(&mut self, config: impl FnOnce(SandboxConfig) -> SandboxConfig) {
        self.stop().await;
        let (sb, token) = start(&self.w, config, None).await;
        self.addr = sb.addr();
        self.token = token;
        self.sb = Some(sb);
    }

    /// `run in.csv --base-url SANDBOX --rate none EXTRA…` with the sandbox's token, to be
    /// changed before it runs. (`--rate none` only where `extra` names no `--rate`: the option
    /// may not be given twice.)
    pub fn invoke(&self, extra: &[&str]) -> Invocation<'_> {
        Invocation {
            s: self,
            input: INPUT.to_owned(),
            base_url: self.base_url(),
            token: self.token.clone(),
            env: Vec::new(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            rate_none: true,
            shell: None,
        }
    }

    /// Runs [`Scenario::invoke`]'s command to its end.
    pub async fn run(&self, extra: &[&str]) -> Output {
        self.invoke(extra).output().await
    }

    /// Runs `lc-import` on another input of the work directory.
    pub async fn run_input(&self, input: &str, extra: &[&str]) -> Output {
        self.invoke(extra).input(input).output().await
    }

    /// Starts the run as a child; `stdout` and `stderr` as given (pipes to close, files…).
    pub fn spawn(&self, extra: &[&str], stdout: Stdio, stderr: Stdio) -> Child {
        self.invoke(extra).spawn(stdout, stderr)
    }

    /// Runs `lc-import` on `in.csv` to its end with more environment variables.
    pub async fn run_with(&self, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let mut run = self.invoke(extra);
        for (name, value) in env {
            run = run.env(name, value);
        }
        run.output().await
    }

    /// The same with more environment variables (a preloaded shim and its settings…).
    pub fn spawn_with(
        &self,
        extra: &[&str],
        env: &[(&str, &str)],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Child {
        let mut run = self.invoke(extra);
        for (name, value) in env {
            run = run.env(name, value);
        }
        run.spawn(stdout, stderr)
    }

    /// Starts the run as a child with more environment variables, its stdout and stderr in
    /// `log` in the work directory (a file: a killed child never blocks on a full pipe).
    pub fn spawn_logged(&self, extra: &[&str], env: &[(&str, &str)], log: &str) -> Child {
        let out = std::fs::File::create(self.w.path(log)).expect("create a log file");
        let err = out.try_clone().expect("clone the log file");
        self.spawn_with(extra, env, out.into(), err.into())
    }

    /// Builds the C shim `source` (a file of `tests/faults/`, with the system's `cc`) into the
    /// work directory, for `LD_PRELOAD`; returns its path.
    pub fn shim(&self, source: &str) -> String {
        let name = std::path::Path::new(source)
            .file_stem()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let shim = self.w.path(&format!("{name}.so"));
        let built = Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&shim)
            .arg(crate::support::repo(source))
            .arg("-ldl")
            .status()
            .expect("a C compiler (cc) for the fault shim");
        assert!(built.success(), "building {source}");
        shim.to_string_lossy().into_owned()
    }

    /// The sync-log shim (`tests/faults/synclog.c`), built, watching this work directory.
    pub fn synclog(&self) -> SyncLog {
        let dir = self.path("").canonicalize().expect("the work directory");
        SyncLog {
            so: self.shim("tests/faults/synclog.c"),
            dir: dir.to_string_lossy().into_owned(),
        }
    }

    /// The token the sandbox accepts (what the runs send).
    pub fn sandbox_token(&self) -> &str {
        &self.token
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.w.path(name)
    }

    /// The results file of `in.csv`, as rows of named cells.
    pub fn results(&self) -> Vec<HashMap<String, String>> {
        fixture::results(&self.w.path(RESULTS))
    }

    /// How many rows of `in.results.csv` end in each status.
    pub fn statuses(&self) -> HashMap<String, usize> {
        fixture::statuses(&self.w.path(RESULTS))
    }

    /// Asserts every row of `in.csv` is `sent`, one line each, in input order, and `n` of them.
    pub fn assert_all_sent(&self, n: usize) {
        let rows = self.results();
        assert_eq!(rows.len(), n, "one line per row");
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r["row"], (i + 1).to_string());
            assert_eq!(r["status"], "sent", "{r:?}");
        }
    }

    /// Checks every row of `in.results.csv` against what the sandbox stored: a `sent` row is
    /// stored exactly once, under the message ID it records; an `unknown` one (its answer never
    /// came, or was never recorded) at most once; any other status fails, showing `run`.
    /// Returns the `unknown` rows.
    pub fn assert_sent_or_unknown(&self, run: &Output) -> Vec<HashMap<String, String>> {
        let stored = self.stored();
        let mut unknown = Vec::new();
        for r in self.results() {
            let ids = stored.get(&r["key"]).map_or(&[][..], Vec::as_slice);
            match r["status"].as_str() {
                "sent" => assert_eq!(ids, [r["message_id"].clone()], "{r:?}"),
                "unknown" => {
                    assert!(ids.len() <= 1, "{r:?}");
                    unknown.push(r);
                }
                _ => panic!("{r:?}{run:?}"),
            }
        }
        unknown
    }

    /// Asserts the results file is compacted: at most one line per row, in row order (rows never
    /// attempted have none), and none left `sending`.
    pub fn assert_compacted(&self) -> Vec<HashMap<String, String>> {
        let rows = self.results();
        let mut last = 0u64;
        for r in &rows {
            let row: u64 = r["row"].parse().expect("a row number");
            assert!(
                row > last,
                "one line per row, in row order: {r:?} after row {last}"
            );
            assert_ne!(r["status"], "sending", "{r:?}");
            last = row;
        }
        rows
    }

    /// The messages the sandbox stored, one JSON value each (none if it stored none).
    pub fn record(&self) -> Vec<Value> {
        fixture::json_lines(&self.w.path(RECORD))
    }

    /// The contacts and conversations the sandbox created, one JSON value each.
    pub fn contacts_record(&self) -> Vec<Value> {
        fixture::json_lines(&self.w.path(CONTACTS))
    }

    /// The sandbox's record: altId → the message IDs it was stored under.
    pub fn stored(&self) -> HashMap<String, Vec<String>> {
        fixture::stored(&self.w)
    }

    /// `r0..r{n}` are each stored exactly once, and nothing else is.
    pub fn assert_each_stored_once(&self, n: usize) {
        fixture::assert_each_stored_once(&self.w, n);
    }

    pub async fn finish(mut self) {
        self.stop().await;
    }
}

/// A sandbox at `addr` (else on a free port) with no limits, recording every message in
/// `record.jsonl` and every contact or conversation it creates in `contacts.jsonl`, then
/// changed by `config`; and the token it accepts.
async fn start(
    w: &WorkDir,
    config: impl FnOnce(SandboxConfig) -> SandboxConfig,
    addr: Option<SocketAddr>,
) -> (Sandbox, String) {
    let config = config(SandboxConfig {
        record_contacts: Some(w.path(CONTACTS)),
        ..fixture::recorded(w)
    });
    let token = config.token.clone();
    let sb = match addr {
        Some(addr) => fixture::start_at(config, addr).await,
        None => fixture::start(config).await,
    };
    (sb, token)
}

/// One run of `lc-import` against a scenario, as [`Scenario::invoke`] made it, changed by its
/// methods, then run to its end ([`Invocation::output`]) or started as a child.
pub struct Invocation<'a> {
    s: &'a Scenario,
    input: String,
    base_url: String,
    token: String,
    env: Vec<(String, String)>,
    extra: Vec<String>,
    /// Whether `--rate none` is added (where `extra` has no `--rate`).
    rate_none: bool,
    /// A `sh -c` script that ends in `exec "$0" "$@"`, to run the binary through.
    shell: Option<String>,
}

impl Invocation<'_> {
    /// Another input of the work directory.
    pub fn input(mut self, name: &str) -> Self {
        self.input = name.to_owned();
        self
    }

    /// `LC_TOKEN`, in place of the one the sandbox accepts.
    pub fn token(mut self, token: &str) -> Self {
        self.token = token.to_owned();
        self
    }

    /// `--base-url`, in place of the sandbox's.
    pub fn base_url(mut self, url: &str) -> Self {
        self.base_url = url.to_owned();
        self
    }

    /// One more environment variable.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Without `--rate none`: the CLI's own pace, where `extra` names none.
    pub fn default_rate(mut self) -> Self {
        self.rate_none = false;
        self
    }

    /// Runs the binary through `sh -c SCRIPT`, a script that sets something up (a `ulimit`, a
    /// trap) and ends in `exec "$0" "$@"`.
    pub fn through_shell(mut self, script: &str) -> Self {
        self.shell = Some(script.to_owned());
        self
    }

    /// `run INPUT --base-url URL [--rate none] EXTRA…`.
    pub fn args(&self) -> Vec<String> {
        let mut all = vec![
            "run".to_owned(),
            self.input.clone(),
            "--base-url".to_owned(),
            self.base_url.clone(),
        ];
        if self.rate_none && !self.extra.iter().any(|a| a == "--rate") {
            all.extend(["--rate".to_owned(), "none".to_owned()]);
        }
        all.extend(self.extra.iter().cloned());
        all
    }

    /// The command, in the work directory, with `LC_TOKEN` and the extra environment only
    /// (`LC_BASE_URL` from the test's environment removed) and stdin closed.
    fn command(&self) -> Command {
        let mut cmd = match &self.shell {
            Some(script) => {
                let mut sh = Command::new("sh");
                sh.arg("-c").arg(script).arg(BIN);
                sh
            }
            None => Command::new(BIN),
        };
        cmd.args(self.args())
            .current_dir(self.s.w.path(""))
            .env_remove("LC_BASE_URL")
            .env("LC_TOKEN", &self.token)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs it to its end.
    pub async fn output(self) -> Output {
        let args = self.args();
        let mut cmd = self.command();
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("the run finishes")
            .expect("run lc-import");
        Output {
            args,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts it as a child; `stdout` and `stderr` as given (pipes to read or close, files…).
    pub fn spawn(self, stdout: Stdio, stderr: Stdio) -> Child {
        self.command()
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start lc-import")
    }

    /// Starts it as a child whose stdout and stderr go to `log` in the work directory (a file,
    /// so a child that is killed never blocks on a full pipe).
    pub fn spawn_logged(self, log: &str) -> Child {
        let out = File::create(self.s.w.path(log)).expect("create a log file");
        let err = out.try_clone().expect("clone the log file");
        self.spawn(out.into(), err.into())
    }
}

/// Sends the child a signal (`"INT"`, `"TERM"`), as `kill -INT PID` does.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {}", child.id());
}

/// Waits for the child to end, off the runtime's threads.
pub async fn wait(mut child: Child) -> ExitStatus {
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait")
}

/// Waits for the child to end, at most `limit` (then kills it and fails); its exit code.
pub async fn exit_within(child: &mut Child, limit: Duration, what: &str) -> Option<i32> {
    let since = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            return status.code();
        }
        if since.elapsed() > limit {
            let _ = child.kill();
            panic!("still running {limit:?} after {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends the child Ctrl-C (SIGINT), waits for it to end, and checks it stopped as an
/// interrupted run does: exit 3 and "stopped early: interrupted." Returns its stdout (the child
/// must have been started with stdout and stderr piped).
pub async fn interrupt(child: Child) -> String {
    signal(&child, "INT");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stdout.contains("stopped early: interrupted."), "{stdout}");
    stdout
}

/// The sync-log shim of a scenario (see `tests/faults/synclog.c`).
pub struct SyncLog {
    so: String,
    dir: String,
}

impl SyncLog {
    /// The environment that preloads the shim into a run, logging its syncs to `log`, with more
    /// of the shim's settings (`SYNCLOG_FAIL_AFTER`, `SYNCLOG_DELAY_MS`).
    pub fn env<'a>(&'a self, log: &'a str, more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![
            ("LD_PRELOAD", self.so.as_str()),
            ("SYNCLOG_DIR", self.dir.as_str()),
            ("SYNCLOG_FILE", log),
        ];
        env.extend_from_slice(more);
        env
    }
}
