//! The `lc-import` binary: parse the command line, run, turn the outcome into an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = lc_import::cli::Cli::parse();
    lc_import::run(cli).into()
}
