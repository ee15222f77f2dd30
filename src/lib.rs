//! `lc-import` imports message history from CSV files into HighLevel / LeadConnector through
//! `POST /conversations/messages/inbound`.
//!
//! The binary is a thin shell over [`run`]: tests and other programs drive the whole tool
//! in-process through the same entry point.

pub mod cli;
pub mod rate;
pub mod sandbox;

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
    match cli.command {
        cli::Command::Validate(args) => {
            eprintln!("validate {}: not built yet", args.input.display());
            Exit::Usage
        }
        cli::Command::Sandbox(args) => sandbox::run_foreground(args),
    }
}
