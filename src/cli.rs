//! The command line, as DESIGN "Command line" fixes it. Raw flags only: turning them into a
//! checked configuration is the job of `config`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "lc-import",
    version,
    about = "Import message history from CSV into HighLevel / LeadConnector"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every row offline (no network) and write a results file saying which are valid.
    Validate(ValidateArgs),
    /// Run the local fake API (for rehearsals, tests and benchmarks) until interrupted.
    Sandbox(crate::sandbox::SandboxArgs),
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The CSV export to check.
    pub input: PathBuf,
    /// Where to write one line per row [default: <INPUT stem>.validation.csv beside the input].
    #[arg(long)]
    pub results: Option<PathBuf>,
}
