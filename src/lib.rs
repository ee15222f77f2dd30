//! `lc-import` imports message history from CSV files into HighLevel / LeadConnector through
//! `POST /conversations/messages/inbound`.
//!
//! The binary is a thin shell over [`run`]: tests and other programs drive the whole tool
//! in-process through the same entry point. `run` is also the one place the exit code is
//! decided, from how the command ended ([`summary::Ending`]).
//!
//! The import (`lc-import run`) is a chain of stages, each a module, wired by
//! [`commands::run`]: [`config`] → [`preflight`] → [`intake`] → [`schedule`] → [`deliver`]
//! (through [`gate`], [`sender`] and [`retry`]) → [`results`], with [`shutdown`], [`progress`]
//! and [`summary`] beside them.

#![warn(missing_docs)]

pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod deliver;
pub mod diskmap;
pub mod extsort;
pub mod gate;
pub mod intake;
pub mod mapping;
pub mod message;
pub mod order;
pub mod preflight;
pub mod progress;
pub mod quota;
pub mod rate;
pub mod ratelimit;
pub mod readback;
pub mod reader;
pub mod resolve;
pub mod results;
pub mod retry;
pub mod sandbox;
pub mod schedule;
pub mod sender;
pub mod shutdown;
pub mod source;
pub mod summary;
pub mod threads;
pub mod upload;
pub mod validate;

use std::io::IsTerminal;
use std::process::ExitCode;

/// How a command ended, decided once from its counters (DESIGN "What the user sees").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Every row sent (now or earlier), or every row valid.
    Success = 0,
    /// Finished, but some rows are invalid, failed or unknown.
    RowsNeedAttention = 1,
    /// Usage or configuration error; nothing was sent.
    Usage = 2,
    /// Stopped early and resumable (interrupt, daily budget, token rejected, server failing).
    Stopped = 3,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// Runs one command line to its end and says how it ended.
pub fn run(cli: cli::Cli) -> Exit {
    init_logging(&cli);
    let ended = match cli.command {
        cli::Command::Run(args) => {
            let Some(path) = args.summary_json.clone() else {
                return exit_code(commands::run::run(args));
            };
            summary::clear_json(&path);
            let ended = commands::run::run(args);
            let error = ended.as_ref().err().map(|e| format!("{e:#}"));
            let report = ended.as_ref().ok().and_then(|e| e.summary.clone());
            let exit = exit_code(ended);
            summary::write_json(&path, exit, error.as_deref(), report.as_ref());
            return exit;
        }
        cli::Command::Validate(args) => commands::validate::run(args),
        cli::Command::Sandbox(args) => sandbox::run_foreground(args),
        cli::Command::Report(args) => commands::report::run(args),
        cli::Command::Verify(args) => commands::verify::run(args),
        cli::Command::Preset(args) => commands::preset::run(args),
    };
    exit_code(ended)
}

/// The exit code, decided here and nowhere else (DESIGN "What the user sees"). An error is a
/// usage or setup error: commands return one only when nothing was sent (after the first
/// request, every error is a stop).
pub fn exit_code(ended: anyhow::Result<summary::Ending>) -> Exit {
    match ended {
        Err(e) => {
            summary::say_err(&format!("error: {e:#}"));
            Exit::Usage
        }
        Ok(summary::Ending {
            stopped: Some(_), ..
        }) => Exit::Stopped,
        Ok(ending) if ending.attention > 0 => Exit::RowsNeedAttention,
        Ok(_) => Exit::Success,
    }
}

/// Logs go to stderr: info by default, `-q` errors only, `-v` debug, `-vv` trace. Only this
/// crate logs below warn, so no dependency can print a request (and its token) at trace.
fn init_logging(cli: &cli::Cli) {
    let ours = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::new(format!("warn,lc_import={ours}"));
    // `log_internal_errors(false)`: with stderr a closed pipe, the subscriber would report the
    // failed write with `eprintln!`, which panics in whatever task logged.
    // Colour only for a person at a terminal (not in cron logs), and never under NO_COLOR; a
    // timestamp only where the lines are kept (a log file, a collector).
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_ansi(terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
        .with_target(false);
    let _ = match (cli.log_format, terminal) {
        (cli::LogFormat::Json, _) => builder.json().try_init(),
        (cli::LogFormat::Text, true) => builder.without_time().try_init(),
        (cli::LogFormat::Text, false) => builder.try_init(),
    };
}
