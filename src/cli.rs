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
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The CSV export to check.
    pub input: PathBuf,
    /// Where to write one line per row [default: <INPUT stem>.validation.csv beside the input].
    #[arg(long, value_name = "PATH")]
    pub results: Option<PathBuf>,
    /// Print the request bodies of the first N valid rows as JSON.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub show: usize,
    #[command(flatten)]
    pub mapping: MappingArgs,
}

/// How rows become request bodies; shared by `validate` and `run`.
#[derive(Clone, Debug, Default, Args)]
pub struct MappingArgs {
    /// Take an API field from a differently named column (repeatable), e.g. --map message=Body.
    #[arg(long = "map", value_name = "FIELD=COLUMN", value_parser = parse_pair)]
    pub map: Vec<(String, String)>,
    /// A constant for every row (repeatable), e.g. --set type=SMS --set direction=inbound.
    #[arg(long = "set", value_name = "FIELD=VALUE", value_parser = parse_pair)]
    pub set: Vec<(String, String)>,
    /// Read options from a TOML file with the same keys as the flags; flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Input delimiter: one ASCII character, or `tab` [default: ,].
    #[arg(long, value_name = "C")]
    pub delimiter: Option<String>,
    /// Separator inside list cells (attachments, emailCc, emailBcc) [default: ;]. A cell that
    /// starts with `[` is read as a JSON array.
    #[arg(long, value_name = "C")]
    pub list_sep: Option<String>,
    /// strftime format of the date column, e.g. '%d/%m/%Y %H:%M' [default: RFC 3339 / ISO 8601].
    #[arg(long, value_name = "FORMAT")]
    pub date_format: Option<String>,
    /// IANA time zone of dates written without an offset, e.g. Europe/Berlin.
    #[arg(long, value_name = "ZONE")]
    pub timezone: Option<String>,
    /// Row identity for resume and duplicates [default: altId if mapped, else a hash of the row].
    #[arg(long, value_name = "COLUMN")]
    pub key_column: Option<String>,
}

/// `FIELD=VALUE`; the value may itself contain `=`.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("'{s}' is not FIELD=VALUE (for example type=SMS)")),
    }
}
