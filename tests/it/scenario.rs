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

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use lc_import::sandbox::{Sandbox, SandboxConfig, Stats};

use crate::fixture::{self, TOKEN};
use crate::support::{BIN, Output, WorkDir};

/// The input every scenario writes, and the results file beside it.
pub const INPUT: &str = "in.csv";
pub const RESULTS: &str = "in.results.csv";

pub struct Scenario {
    pub w: WorkDir,
    pub sb: Sandbox,
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
        let sb = fixture::start(config(fixture::recorded(&w))).await;
        Scenario { w, sb }
    }

    /// `run in.csv --base-url SANDBOX --rate none EXTRA…` (a later `--rate` in `extra` wins).
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        self.args_for(INPUT, extra)
    }

    /// The same for another input of the work directory.
    pub fn args_for(&self, input: &str, extra: &[&str]) -> Vec<String> {
        let mut all = vec!["--rate", "none"];
        all.extend_from_slice(extra);
        fixture::run_args(input, &self.sb.base_url(), &all)
    }

    /// Runs `lc-import` with [`Scenario::args`] to its end, with the sandbox's token.
    pub async fn run(&self, extra: &[&str]) -> Output {
        self.run_input(INPUT, extra).await
    }

    /// Runs `lc-import` on another input of the work directory.
    pub async fn run_input(&self, input: &str, extra: &[&str]) -> Output {
        self.run_in(input, extra, &[]).await
    }

    /// Runs `lc-import` on `in.csv` with more environment variables.
    pub async fn run_with(&self, extra: &[&str], env: &[(&str, &str)]) -> Output {
        self.run_in(crate::scenario::INPUT, extra, env).await
    }

    async fn run_in(&self, input: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let args = self.args_for(input, extra);
        let dir = self.w.path("");
        let mut all = vec![("LC_TOKEN".to_owned(), TOKEN.to_owned())];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        tokio::task::spawn_blocking(move || crate::support::run_in(&dir, &args, &all))
            .await
            .expect("the run finishes")
    }

    /// Starts the run as a child; `stdout` and `stderr` as given (pipes to close, files…).
    pub fn spawn(&self, extra: &[&str], stdout: Stdio, stderr: Stdio) -> Child {
        self.spawn_with(extra, &[], stdout, stderr)
    }

    /// The same with more environment variables (a preloaded shim and its settings…).
    pub fn spawn_with(
        &self,
        extra: &[&str],
        env: &[(&str, &str)],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Child {
        Command::new(BIN)
            .args(self.args(extra))
            .current_dir(self.w.path(""))
            .env_remove("LC_BASE_URL")
            .env("LC_TOKEN", TOKEN)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start lc-import")
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

    pub fn path(&self, name: &str) -> PathBuf {
        self.w.path(name)
    }

    /// The results file of `in.csv`, as rows of named cells.
    pub fn results(&self) -> Vec<HashMap<String, String>> {
        fixture::results(&self.w.path(RESULTS))
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

    pub fn stats(&self) -> Stats {
        self.sb.stats()
    }

    /// `r0..r{n}` are each stored exactly once, and nothing else is.
    pub fn assert_each_stored_once(&self, n: usize) {
        fixture::assert_each_stored_once(&self.w, n);
    }

    pub async fn finish(self) {
        self.sb.shutdown().await;
    }
}
