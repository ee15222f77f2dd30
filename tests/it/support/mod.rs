//! A work directory for one test: write input files, run the real binary in it, read what it
//! wrote. On a failed expectation the command's full stdout and stderr are in the panic.

#![allow(dead_code)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_lc-import");

/// The repository root, for `samples/` and `tests/corpus/`.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub struct WorkDir {
    dir: tempfile::TempDir,
}

/// What a run of the binary left behind.
pub struct Output {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\n$ lc-import {}\nexit: {:?}\n--- stdout\n{}\n--- stderr\n{}\n---",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

impl Output {
    /// Panics with the whole output unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "unexpected exit code{self:?}");
        self
    }

    /// Panics with the whole output unless stdout contains `text`.
    pub fn expect_stdout(&self, text: &str) -> &Self {
        assert!(self.stdout.contains(text), "stdout lacks {text:?}{self:?}");
        self
    }

    /// Panics with the whole output unless stderr contains `text`.
    pub fn expect_stderr(&self, text: &str) -> &Self {
        assert!(self.stderr.contains(text), "stderr lacks {text:?}{self:?}");
        self
    }
}

impl WorkDir {
    pub fn new() -> WorkDir {
        WorkDir {
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).expect("write test input");
        path
    }

    /// Copies a file of the repository (`samples/…`, `tests/corpus/…`) in.
    pub fn copy(&self, from: &str) -> PathBuf {
        let name = Path::new(from).file_name().expect("a file name");
        let to = self.dir.path().join(name);
        std::fs::copy(repo(from), &to).expect("copy test input");
        to
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
    }

    /// Reads a results CSV into rows of named cells.
    pub fn results(&self, name: &str) -> Vec<std::collections::HashMap<String, String>> {
        let mut reader = csv::Reader::from_path(self.path(name))
            .unwrap_or_else(|e| panic!("reading {name}: {e}"));
        reader
            .deserialize()
            .map(|r| r.expect("a results line"))
            .collect()
    }

    /// Runs the binary with `args` in this directory.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[])
    }

    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("LC_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run lc-import");
        Output {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs the binary in `dir` with `args` and extra environment; blocking, so async tests call it
/// through `spawn_blocking`.
pub fn run_in(dir: &Path, args: &[String], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("LC_TOKEN")
        .env_remove("LC_BASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run lc-import");
    Output {
        args: args.to_vec(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A synthetic export: `rows` SMS rows spread round-robin over `conversations`, dates rising,
/// keyed by `altId` `r{i}`.
pub fn export(rows: usize, conversations: usize) -> String {
    let mut s = String::from("altId,conversationId,contactId,type,direction,date,message\n");
    for i in 0..rows {
        let c = i % conversations;
        s.push_str(&format!(
            "r{i},conv{c:016},cont{c:016},SMS,inbound,2024-01-01T{:02}:{:02}:{:02}Z,message {i}\n",
            i / 3600 % 24,
            i / 60 % 60,
            i % 60
        ));
    }
    s
}
