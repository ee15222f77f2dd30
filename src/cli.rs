//! The command line, as DESIGN "Command line" fixes it. Raw flags only: turning them into a
//! checked configuration is the job of `config`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The whole command line: a subcommand and the logging flags every subcommand takes.
#[derive(Debug, Parser)]
#[command(
    name = "lc-import",
    version,
    about = "Import message history from CSV into HighLevel / LeadConnector"
)]
pub struct Cli {
    /// What to do: `run`, `validate`, `sandbox`, `report` or `verify`.
    #[command(subcommand)]
    pub command: Command,
    /// More log output (-v: debug, -vv: trace). Message bodies appear only at debug and above.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors and the summary.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log lines as text or as JSON objects (for batch jobs).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// How log lines are written to stderr (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    // `#[doc = concat!(..)]`, not `///`: clap makes a variant's `///` the help of its value,
    // which would switch every `--help` to the long layout, with a list of the values.
    #[doc = concat!("Plain lines for a person, without timestamps (the default).")]
    Text,
    #[doc = concat!("One JSON object per line, with a timestamp, for log collectors.")]
    Json,
}

/// The subcommands.
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import rows: send each as an inbound message, recording every outcome (the main job).
    Run(RunArgs),
    /// Check every row offline (no network) and write a results file saying which are valid.
    Validate(ValidateArgs),
    /// Run the local fake API (for rehearsals, tests and benchmarks) until interrupted.
    Sandbox(crate::sandbox::SandboxArgs),
    /// Summarise a results file: rows per status and the most frequent errors.
    Report(ReportArgs),
    /// Read sent rows back from the API and say whether each landed as sent: found, direction,
    /// type, body, date kept as dateAdded, order per conversation.
    Verify(VerifyArgs),
    /// Print a mapping shipped in the binary (such as twilio), to use with --preset NAME or to
    /// copy into a --config file and adapt; without NAME, list them.
    Preset(PresetArgs),
}

/// `lc-import verify`. The API options are `run`'s, and mean the same.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The CSV export that was imported.
    pub input: PathBuf,
    /// The results file of the import [default: <INPUT stem>.results.csv beside the input].
    #[arg(long, value_name = "PATH")]
    pub results: Option<PathBuf>,
    /// Read back N sent rows, spread over the file, instead of all of them.
    #[arg(long, value_name = "N")]
    pub sample: Option<u64>,
    /// Where and how fast to ask (as for the import).
    #[command(flatten)]
    pub api: ApiArgs,
    /// How rows become request bodies (as for the import).
    #[command(flatten)]
    pub mapping: MappingArgs,
}

/// `lc-import preset`.
#[derive(Debug, Args)]
pub struct PresetArgs {
    /// The preset to print; without it, the list of presets.
    pub name: Option<String>,
}

/// The API options `run` and `verify` share, read and checked the same way.
#[derive(Debug, Default, Args)]
pub struct ApiArgs {
    /// API root; plain http:// only for loopback hosts [default: https://services.leadconnectorhq.com].
    #[arg(long, value_name = "URL", env = "LC_BASE_URL")]
    pub base_url: Option<String>,
    /// Read the token from this file (else from the environment variable LC_TOKEN).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Never more than N requests start in any PERIOD: 10/s, 100/10s, 6000/m [default: 100/10s].
    /// `none` sets no pace of its own (for a local sandbox); a limit the server announces in its
    /// X-RateLimit headers is still kept.
    #[arg(long, value_name = "N/PERIOD")]
    pub rate: Option<crate::rate::Limit<crate::rate::Rate>>,
    /// Per request: 30s, 500ms [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = crate::rate::parse_duration)]
    pub timeout: Option<std::time::Duration>,
}

/// `lc-import run`. Options left out here come from `--config`, then from the defaults shown.
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// The CSV export to import: a file (.gz and .zst are read as they are), or `-` for stdin,
    /// a FIFO or `<(…)` (then --results is needed).
    pub input: PathBuf,
    /// Results journal, also the resume state [default: <INPUT stem>.results.csv beside the input].
    #[arg(long, value_name = "PATH")]
    pub results: Option<PathBuf>,
    /// Where and how fast to send.
    #[command(flatten)]
    pub api: ApiArgs,
    /// The Version header [default: 2021-07-28].
    #[arg(long, value_name = "V", env = "LC_API_VERSION")]
    pub api_version: Option<String>,
    /// Requests in flight at most [default: 8].
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Retries per row, for retryable failures only [default: 5].
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,
    /// Stop after N rows were attempted (canary runs).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Map and validate, print the first request bodies, send nothing (same as validate).
    #[arg(long)]
    pub dry_run: bool,
    /// On resume, send again the rows whose outcome is unknown (they may then be stored twice).
    #[arg(long)]
    pub resend_unknown: bool,
    /// Before sending, look the rows an earlier run left unknown up on the server (one read of
    /// each one's conversation): found → sent with the ID read back; not found and older than
    /// --settle → sent now; otherwise left unknown with the reason.
    #[arg(long, conflicts_with = "resend_unknown")]
    pub verify_unknown: bool,
    /// With --verify-unknown: how long after its request left a row not found on the server is
    /// taken as not stored (the API queues messages) [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = crate::rate::parse_duration, requires = "verify_unknown")]
    pub settle: Option<std::time::Duration>,
    /// Write the run's outcome as one JSON object to PATH (counts, requests, why it stopped, the
    /// exit code, the resume command), for a nightly job's monitoring: removed when the run
    /// starts, written atomically when it ends, whatever the exit code.
    #[arg(long, value_name = "PATH")]
    pub summary_json: Option<PathBuf>,
    /// Send the rows recorded `changed` (keyed by content, they look like a row sent earlier
    /// with a cell edited: same conversation, direction, type and date) as new messages.
    #[arg(long)]
    pub send_changed: bool,
    /// Run against an embedded local sandbox API on a free loopback port, with no limits
    /// (--base-url and the token are then not used).
    #[arg(long)]
    pub sandbox: bool,
    /// Create the contacts that rows name by phone or e-mail and the location does not have
    /// (POST /contacts/upsert); without it such rows fail.
    #[arg(long)]
    pub create_contacts: bool,
    /// With --dry-run: only look contacts and conversations up, create nothing, send nothing,
    /// and report how many exist, would be created, or are ambiguous.
    #[arg(long, requires = "dry_run")]
    pub resolve_only: bool,
    /// Stop cleanly (exit 3, resumable) after N requests, lookups, uploads and messages together.
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u64>,
    /// When the daily request budget is spent, wait for the next day (UTC midnight and a
    /// margin, then one probe request, then an hour at a time) and go on, instead of stopping.
    #[arg(long)]
    pub wait: bool,
    /// How rows become request bodies.
    #[command(flatten)]
    pub mapping: MappingArgs,
}

/// `lc-import report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A results file written by `run` or `validate`.
    pub results: PathBuf,
}

/// `lc-import validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The CSV export to check: a file (.gz and .zst are read as they are), or `-` for stdin,
    /// a FIFO or `<(…)`.
    pub input: PathBuf,
    /// Where to write one line per row [default: <INPUT stem>.validation.csv beside the input].
    #[arg(long, value_name = "PATH")]
    pub results: Option<PathBuf>,
    /// Print the request bodies of the first N valid rows as JSON.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub show: usize,
    /// How rows become request bodies.
    #[command(flatten)]
    pub mapping: MappingArgs,
}

/// How rows become request bodies; shared by `validate` and `run`.
#[derive(Clone, Debug, Default, Args)]
pub struct MappingArgs {
    /// Take an API field from a differently named column (repeatable), e.g. --map message=Body.
    #[arg(long = "map", value_name = "FIELD=COLUMN", value_parser = parse_pair)]
    pub map: Vec<(String, String)>,
    /// On inbound rows only, take FIELD from COLUMN (repeatable), e.g. --map-inbound
    /// contactPhone=From with --map-outbound contactPhone=To.
    #[arg(long = "map-inbound", value_name = "FIELD=COLUMN", value_parser = parse_pair)]
    pub map_inbound: Vec<(String, String)>,
    /// On outbound rows only, take FIELD from COLUMN (repeatable).
    #[arg(long = "map-outbound", value_name = "FIELD=COLUMN", value_parser = parse_pair)]
    pub map_outbound: Vec<(String, String)>,
    /// Translate an export's spelling of a value to the API's (repeatable), e.g.
    /// --value direction:outbound-api=outbound. ASCII case and surrounding spaces are ignored.
    #[arg(long = "value", value_name = "FIELD:FROM=TO", value_parser = parse_value_map)]
    pub value: Vec<(String, String, String)>,
    /// Leave out, on purpose, rows whose COLUMN is VALUE (repeatable; ASCII case ignored), e.g.
    /// --skip-if Status=failed. They are recorded `skipped` with the reason, never sent.
    #[arg(long = "skip-if", value_name = "COLUMN=VALUE", value_parser = parse_pair)]
    pub skip_if: Vec<(String, String)>,
    /// In what order rows are sent: `input` (as the file lists them) or `date` (each
    /// conversation oldest first, for exports that list newest first) [default: input].
    #[arg(long, value_name = "ORDER")]
    pub order: Option<String>,
    /// Load a mapping shipped in the binary (see `lc-import preset`), e.g. twilio; a --config
    /// file and the flags still win over it.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
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
    /// How the date column is written, when not in a form read by default (RFC 3339, ISO 8601
    /// with a space, offsets such as +0000 or UTC, RFC 2822): strftime codes such as
    /// '%d/%m/%Y %H:%M', or epoch-s / epoch-ms for Unix times. Repeatable: tried in order.
    #[arg(long, value_name = "FORMAT")]
    pub date_format: Vec<String>,
    /// IANA time zone of dates written without an offset, e.g. Europe/Berlin.
    #[arg(long, value_name = "ZONE")]
    pub timezone: Option<String>,
    /// Row identity for resume and duplicates [default: altId if mapped, else a hash of the row].
    #[arg(long, value_name = "COLUMN")]
    pub key_column: Option<String>,
    /// The export's character encoding, a WHATWG label: windows-1252 (Excel on Windows),
    /// iso-8859-15, macintosh, utf-16le, shift_jis, … [default: UTF-8, or UTF-16 by its BOM].
    #[arg(long, value_name = "LABEL")]
    pub encoding: Option<String>,
    /// The sub-account (location) whose contacts and conversations rows without HighLevel IDs
    /// are looked up in; same as --set locationId=ID. Turns ID resolution on.
    #[arg(long, value_name = "ID")]
    pub location_id: Option<String>,
    /// The largest attachment file accepted, checked offline and before each upload: bytes, or
    /// 5MB, 200MiB… [default: 5MB, the limit the API's spec gives for files of channels other
    /// than WhatsApp].
    #[arg(long, value_name = "SIZE", value_parser = crate::upload::files::parse_size)]
    pub attachment_max_size: Option<u64>,
    /// Country of national phone numbers in contactPhone (a code such as US, GB, DE, or a
    /// calling code such as +44); numbers written with + or 00 need none.
    #[arg(long, value_name = "COUNTRY")]
    pub default_country: Option<String>,
}

/// `FIELD:FROM=TO` (`--value`); FROM may contain `:` and `=`, TO no `=`.
pub fn parse_value_map(s: &str) -> Result<(String, String, String), String> {
    let bad =
        || format!("'{s}' is not FIELD:FROM=TO (for example direction:outbound-api=outbound)");
    let (field, rest) = s.split_once(':').ok_or_else(bad)?;
    let (from, to) = rest.rsplit_once('=').ok_or_else(bad)?;
    if field.trim().is_empty() || from.trim().is_empty() {
        return Err(bad());
    }
    Ok((
        field.trim().to_owned(),
        from.trim().to_owned(),
        to.trim().to_owned(),
    ))
}

/// `FIELD=VALUE`; the value may itself contain `=`.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("'{s}' is not FIELD=VALUE (for example type=SMS)")),
    }
}
