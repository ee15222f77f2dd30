//! Turns raw flags and the optional `--config` TOML file into the checked options the rest of
//! the program takes: the mapping options, and for `run` the whole [`Settings`], built once.
//! Flags win over the file; a value that cannot work stops here, before any row is read
//! (exit 2). The sandbox of `run --sandbox` is an input here ([`Endpoint`]), not a patch applied
//! to the settings afterwards.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::auth::{Auth, TokenSource};
use crate::cli::{MappingArgs, RunArgs, parse_pair};
use crate::mapping::{ColumnMap, MappingOptions, PrefixRule, ValueMap};
use crate::message::Direction;
use crate::rate::Rate;
use crate::retry::Backoff;
use crate::validate::{DateFormat, DateReader};

/// The API root when none is given.
pub const DEFAULT_BASE_URL: &str = "https://services.leadconnectorhq.com";

/// Everything a run needs, checked.
pub struct Settings {
    /// The CSV export to import (`INPUT`).
    pub input: PathBuf,
    /// The results journal, also the resume state: `--results`, else
    /// `<INPUT stem>.results.csv` beside the input.
    pub results: PathBuf,
    /// The API root, checked (https, or http to a loopback host); the sandbox's with `--sandbox`.
    pub base_url: reqwest::Url,
    /// The run's credentials: the token from `--token-file` or `LC_TOKEN` (or the sandbox's
    /// with `--sandbox`), and how it is renewed.
    pub auth: Arc<Auth>,
    /// The `Version` header sent on every request (default `2021-07-28`).
    pub api_version: String,
    /// `--rate`; `None`: no pace of the run's own (`--rate none`, or the in-process sandbox).
    pub rate: Option<Rate>,
    /// Requests in flight at most (`--concurrency`, default 8; never 0).
    pub concurrency: usize,
    /// Retries per row for retryable failures (`--max-retries`, default 5).
    pub max_retries: u32,
    /// Timeout of each request (`--timeout`, default 30 s).
    pub timeout: Duration,
    /// Stop after this many rows were attempted (`--limit`); `None`: all rows.
    pub limit: Option<u64>,
    /// On resume, send again the rows whose outcome is unknown (`--resend-unknown`).
    pub resend_unknown: bool,
    /// Send rows that look like rows sent earlier with a cell edited (`--send-changed`).
    pub send_changed: bool,
    /// Settle the rows left `unknown` by reading them back before sending (`--verify-unknown`).
    pub verify_unknown: bool,
    /// How long after its request left a row not found is taken as not stored (`--settle`).
    pub settle: Duration,
    /// How rows become request bodies: `--map`, `--set`, list separator, dates, key column.
    pub mapping: MappingOptions,
    /// The input's field delimiter, one ASCII byte (`--delimiter`, default `,`).
    pub delimiter: u8,
    /// The input's encoding (`--encoding`); `None`: UTF-8, or UTF-16 by its BOM.
    pub encoding: Option<&'static encoding_rs::Encoding>,
    /// The wait schedule between retries (always the default).
    pub backoff: Backoff,
    /// ID resolution: `--create-contacts`.
    pub create_contacts: bool,
    /// `--max-requests`.
    pub max_requests: Option<u64>,
    /// `--wait`: a spent daily budget makes the run wait for the next day, not stop.
    pub wait: bool,
    /// `--location-id` (or the file's `location-id`), for the results file's target.
    pub location_id: Option<String>,
    /// Where attachment files are read from (the input's folder) and `--attachment-max-size`.
    pub files: crate::upload::Files,
    /// `run --sandbox`: the in-process sandbox, not a real API.
    pub rehearsal: bool,
}

/// An API the run is pointed at instead of the flags' (the in-process sandbox of `--sandbox`):
/// its base URL and token, and no pace of the run's own.
pub struct Endpoint {
    /// The API root of the target.
    pub base_url: String,
    /// The token the target accepts.
    pub token: String,
}

impl Settings {
    /// Flags over the config file over defaults, checked. With a `target`, its base URL and
    /// token are used and `--base-url`, the token and `--rate` are not needed.
    pub fn new(args: RunArgs, target: Option<Endpoint>) -> Result<Settings> {
        let mut file = FileConfig::for_args(&args.mapping)?;
        let mut location_id = args
            .mapping
            .location_id
            .clone()
            .or_else(|| file.location_id.clone());
        let (mapping, delimiter) = mapping_options(&args.mapping, &mut file)?;
        let encoding = input_encoding(&args.mapping, &file)?;
        let files = attachment_files(&args.mapping, &file, &args.input)?;
        let rehearsal = target.is_some();
        let base = args
            .api
            .base_url
            .or(file.base_url.take())
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        let mut base_url = crate::sender::check_base_url(&base)?;
        let mut token = None;
        if target.is_none() {
            token = Some(TokenSource::read(
                args.api
                    .token_file
                    .as_deref()
                    .or(file.token_file.as_deref()),
            )?);
        }
        let rate_given = args.api.rate.is_some();
        let mut rate = match (args.api.rate, file.rate.as_deref()) {
            (Some(r), _) => r.0,
            (None, Some(r)) => {
                r.parse::<crate::rate::Limit<Rate>>()
                    .map_err(|e| anyhow!("config rate: {e}"))?
                    .0
            }
            (None, None) => Some("100/10s".parse().expect("the default rate parses")),
        };
        if let Some(target) = target {
            base_url = crate::sender::check_base_url(&target.base_url)?;
            token = Some(TokenSource::fixed(&target.token));
            // The sandbox has no limits: pace as fast as the sender goes, unless the command
            // line asks for a pace (a rehearsal of the real one).
            if !rate_given {
                rate = None;
            }
        }
        let timeout = match (args.api.timeout, file.timeout.as_deref()) {
            (Some(t), _) => t,
            (None, Some(t)) => {
                crate::rate::parse_duration(t).map_err(|e| anyhow!("config timeout: {e}"))?
            }
            (None, None) => Duration::from_secs(30),
        };
        check_proxy_env()?;
        let token = token.expect("a token from the flags or the target");
        if location_id.is_none() {
            location_id = token.location_id().map(str::to_owned);
        }
        let auth = Arc::new(Auth::new(
            token,
            &base_url,
            location_id.as_deref(),
            timeout,
        )?);
        let concurrency = args.concurrency.or(file.concurrency).unwrap_or(8);
        if concurrency == 0 {
            bail!("--concurrency 0 would send nothing: give 1 or more");
        }
        Ok(Settings {
            // A rehearsal has a results file of its own: it never touches the real run's.
            results: match args.results.or(file.results.take()) {
                Some(results) => results,
                None if crate::source::is_stream(&args.input) => bail!(
                    "{} is not a file (stdin, a pipe, or <(…)): give --results PATH, the run's record of every row and what a resume reads (a stream has no name to put it beside)",
                    args.input.display()
                ),
                None => beside_input(
                    &args.input,
                    if rehearsal {
                        ".sandbox.results.csv"
                    } else {
                        ".results.csv"
                    },
                ),
            },
            input: args.input,
            base_url,
            auth,
            api_version: args
                .api_version
                .or(file.api_version.take())
                .unwrap_or_else(|| "2021-07-28".to_owned()),
            rate,
            concurrency,
            max_retries: args.max_retries.or(file.max_retries).unwrap_or(5),
            timeout,
            limit: args.limit.or(file.limit),
            resend_unknown: args.resend_unknown,
            send_changed: args.send_changed,
            verify_unknown: args.verify_unknown,
            settle: args
                .settle
                .unwrap_or(crate::readback::settle::DEFAULT_SETTLE),
            mapping,
            delimiter,
            encoding,
            backoff: Backoff::default(),
            create_contacts: args.create_contacts || file.create_contacts.unwrap_or(false),
            max_requests: args.max_requests.or(file.max_requests),
            wait: args.wait || file.wait.unwrap_or(false),
            location_id,
            files,
            rehearsal,
        })
    }
}

/// A proxy variable that does not parse would be skipped by the HTTP client, and the run would
/// go direct, around the proxy the user named: refused instead.
fn check_proxy_env() -> Result<()> {
    for name in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        let Some(value) = std::env::var_os(name) else {
            continue;
        };
        let value = value.to_string_lossy();
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let with_scheme = if value.contains("://") {
            value.to_owned()
        } else {
            format!("http://{value}")
        };
        let parsed = url::Url::parse(&with_scheme)
            .ok()
            .filter(|u| u.host().is_some());
        if parsed.is_none() {
            bail!(
                "the environment variable {name} is not a proxy URL (expected such as http://proxy.example:3128): fix or unset it; the run does not go around a proxy it cannot read"
            );
        }
    }
    Ok(())
}

/// The `--config` file: the same keys as the flags, in kebab-case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// `--map` pairs (`FIELD = "COLUMN"`); the flags' own come after them, so they win.
    #[serde(default)]
    pub map: Pairs,
    /// `--set` pairs (`FIELD = "VALUE"`); the flags' own come after them, so they win.
    #[serde(default)]
    pub set: Pairs,
    /// `--delimiter`.
    pub delimiter: Option<String>,
    /// `--list-sep`.
    pub list_sep: Option<String>,
    /// `--date-format`: one, or a list tried in order.
    pub date_format: Option<OneOrMany>,
    /// `--value`: `[values.direction] "outbound-api" = "outbound"`.
    pub values: Option<toml::Table>,
    /// `--skip-if`: `[skip] Status = ["failed", "undelivered"]`.
    pub skip: Option<toml::Table>,
    /// Prefixes that say something about a row:
    /// `[prefix.contactPhone] "whatsapp:" = { type = "WhatsApp" }`.
    pub prefix: Option<toml::Table>,
    /// `--order`: `input` or `date`.
    pub order: Option<String>,
    /// Columns left out without a warning.
    pub ignore_columns: Option<Vec<String>>,
    /// `--timezone`.
    pub timezone: Option<String>,
    /// `--key-column`.
    pub key_column: Option<String>,
    /// `--encoding`.
    pub encoding: Option<String>,
    /// `--location-id`.
    pub location_id: Option<String>,
    /// `--default-country`.
    pub default_country: Option<String>,
    /// `--attachment-max-size`, as written on the command line (`5MB`, `200MiB`).
    pub attachment_max_size: Option<String>,
    /// `--create-contacts`; `true` here turns it on even without the flag.
    pub create_contacts: Option<bool>,
    /// `--max-requests`.
    pub max_requests: Option<u64>,
    /// `--wait`; `true` here turns it on even without the flag.
    pub wait: Option<bool>,
    /// `--results`.
    pub results: Option<PathBuf>,
    /// `--base-url`.
    pub base_url: Option<String>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
    /// `--api-version`.
    pub api_version: Option<String>,
    /// `--rate`, as written on the command line (`100/10s`, `none`).
    pub rate: Option<String>,
    /// `--concurrency`.
    pub concurrency: Option<usize>,
    /// `--max-retries`.
    pub max_retries: Option<u32>,
    /// `--timeout`, as written on the command line (`30s`, `500ms`).
    pub timeout: Option<String>,
    /// `--limit`.
    pub limit: Option<u64>,
}

/// A string or a list of strings (`date-format`, the values of `[skip]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// Several, in order.
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `map` / `set` in the file: a table (`[map] message = "Body"`) or a list of `"FIELD=VALUE"`.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
pub enum Pairs {
    /// The key is absent: no pairs.
    #[default]
    None,
    /// A table: `[map] message = "Body"`.
    Table(toml::Table),
    /// A list of `"FIELD=VALUE"` strings.
    List(Vec<String>),
}

impl Pairs {
    fn into_vec(self, key: &str) -> Result<Vec<(String, String)>> {
        match self {
            Pairs::None => Ok(Vec::new()),
            Pairs::List(items) => items
                .iter()
                .map(|s| parse_pair(s).map_err(|e| anyhow!("{key}: {e}")))
                .collect(),
            Pairs::Table(table) => table
                .into_iter()
                .map(|(k, v)| match v {
                    toml::Value::String(s) => Ok((k, s)),
                    other => Err(anyhow!("{key}.{k}: expected a string, found {other}")),
                })
                .collect(),
        }
    }
}

impl Pairs {
    /// `[map]`: a column for every row (`message = "Body"`), or one per direction
    /// (`contactPhone = { inbound = "From", outbound = "To" }`).
    fn into_maps(self) -> Result<Vec<ColumnMap>> {
        let table = match self {
            Pairs::Table(table) => table,
            other => {
                return Ok(other
                    .into_vec("map")?
                    .into_iter()
                    .map(|(f, c)| ColumnMap::new(&f, &c))
                    .collect());
            }
        };
        let mut maps = Vec::new();
        for (field, value) in table {
            match value {
                toml::Value::String(column) => maps.push(ColumnMap::new(&field, &column)),
                toml::Value::Table(sides) => {
                    for (side, column) in sides {
                        let only = match side.as_str() {
                            "inbound" => Direction::Inbound,
                            "outbound" => Direction::Outbound,
                            other => bail!(
                                "map.{field}.{other}: expected inbound or outbound (the column on rows of that direction)"
                            ),
                        };
                        let toml::Value::String(column) = column else {
                            bail!("map.{field}.{side}: expected a column name, found {column}");
                        };
                        maps.push(ColumnMap {
                            field: field.clone(),
                            column,
                            only: Some(only),
                        });
                    }
                }
                other => bail!(
                    "map.{field}: expected a column name or {{ inbound = \"COLUMN\", outbound = \"COLUMN\" }}, found {other}"
                ),
            }
        }
        Ok(maps)
    }
}

/// The shipped mappings of `--preset` / `lc-import preset`: name, one-line description, TOML
/// text in the `--config` format.
pub const PRESETS: &[(&str, &str, &str)] = &[(
    "twilio",
    "Twilio Console messaging log (From,To,Body,Status,SentDate,…,Sid,Direction,…)",
    include_str!("presets/twilio.toml"),
)];

/// A preset's TOML text, or an error listing the presets.
pub fn preset(name: &str) -> Result<&'static str> {
    PRESETS
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name.trim()))
        .map(|(_, _, text)| *text)
        .ok_or_else(|| {
            anyhow!(
                "no preset named '{name}': the presets are {} (lc-import preset NAME prints one)",
                PRESETS
                    .iter()
                    .map(|(n, _, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Tables merged key by key, `over` winning: a `--config` file over a preset.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

impl FileConfig {
    /// `--preset`, then `--config` over it.
    pub fn for_args(args: &MappingArgs) -> Result<FileConfig> {
        FileConfig::layered(args.preset.as_deref(), args.config.as_deref())
    }

    /// A preset (if named) with a config file (if given) over it, key by key.
    pub fn layered(preset_name: Option<&str>, path: Option<&Path>) -> Result<FileConfig> {
        let Some(name) = preset_name else {
            return FileConfig::load(path);
        };
        let text = preset(name)?;
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|e| anyhow!("preset {name}: {}", e.message().trim_end()))?;
        if let Some(path) = path {
            let file_text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            // Checked alone first, for its errors' line numbers and unknown keys.
            FileConfig::parse(path, &file_text)?;
            let over: toml::Table = toml::from_str(&file_text).map_err(|e| {
                anyhow!("config file {}: {}", path.display(), e.message().trim_end())
            })?;
            merge(&mut table, over);
        }
        FileConfig::deserialize(toml::Value::Table(table)).map_err(|e| {
            anyhow!(
                "preset {name}{}: {}",
                path.map_or(String::new(), |p| format!(
                    " with config file {}",
                    p.display()
                )),
                e.message().trim_end()
            )
        })
    }

    /// Reads the file, or an empty configuration when none was given.
    pub fn load(path: Option<&Path>) -> Result<FileConfig> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        FileConfig::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<FileConfig> {
        toml::from_str(text).map_err(|e| {
            // Not `{e}`: it quotes the offending line of the file, and a user who put the token
            // in the config file would see it printed (and logged by a batch job).
            let at = e.span().map_or(String::new(), |span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" line {line}, column {column}:")
            });
            anyhow!(
                "config file {}:{at} {}",
                path.display(),
                e.message().trim_end()
            )
        })
    }
}

/// The mapping options from flags over the file.
pub fn mapping_options(args: &MappingArgs, file: &mut FileConfig) -> Result<(MappingOptions, u8)> {
    let mut maps = std::mem::take(&mut file.map).into_maps()?;
    let flag_maps = [
        (&args.map, None),
        (&args.map_inbound, Some(Direction::Inbound)),
        (&args.map_outbound, Some(Direction::Outbound)),
    ];
    for (pairs, only) in flag_maps {
        maps.extend(pairs.iter().map(|(field, column)| ColumnMap {
            field: field.clone(),
            column: column.clone(),
            only,
        }));
    }
    let mut values = Vec::new();
    for (field, table) in file.values.take().unwrap_or_default() {
        let toml::Value::Table(table) = table else {
            bail!("values.{field}: expected a table of \"EXPORT'S VALUE\" = \"API'S VALUE\"");
        };
        for (from, to) in table {
            let toml::Value::String(to) = to else {
                bail!("values.{field}.{from}: expected a string, found {to}");
            };
            values.push(ValueMap {
                field: field.clone(),
                from,
                to,
            });
        }
    }
    values.extend(args.value.iter().map(|(field, from, to)| ValueMap {
        field: field.clone(),
        from: from.clone(),
        to: to.clone(),
    }));
    let mut skips = Vec::new();
    for (column, list) in file.skip.take().unwrap_or_default() {
        let list: OneOrMany = list
            .try_into()
            .map_err(|_| anyhow!("skip.{column}: expected a value or a list of values"))?;
        skips.extend(list.into_vec().into_iter().map(|v| (column.clone(), v)));
    }
    skips.extend(args.skip_if.iter().cloned());
    let mut prefixes = Vec::new();
    for (field, table) in file.prefix.take().unwrap_or_default() {
        let toml::Value::Table(table) = table else {
            bail!("prefix.{field}: expected a table of \"PREFIX\" = {{ FIELD = \"VALUE\" }}");
        };
        for (prefix, sets) in table {
            let toml::Value::Table(sets) = sets else {
                bail!("prefix.{field}.{prefix}: expected {{ FIELD = \"VALUE\" }}");
            };
            let mut pairs = Vec::new();
            for (f, v) in sets {
                let toml::Value::String(v) = v else {
                    bail!("prefix.{field}.{prefix}.{f}: expected a string, found {v}");
                };
                pairs.push((f, v));
            }
            prefixes.push(PrefixRule {
                field: field.clone(),
                prefix,
                sets: pairs,
            });
        }
    }
    let order_given = args.order.is_some() || file.order.is_some();
    let order = match args.order.as_deref().or(file.order.as_deref()) {
        None => crate::mapping::Order::Input,
        Some(o) => o.parse().map_err(|e| anyhow!("--order: {e}"))?,
    };
    let mut sets = std::mem::take(&mut file.set).into_vec("set")?;
    // --location-id is a --set locationId: before the flags' --set, so an explicit one wins.
    if let Some(id) = args
        .location_id
        .clone()
        .or_else(|| file.location_id.clone())
    {
        sets.push(("locationId".to_owned(), id));
    }
    sets.extend(args.set.iter().cloned());
    let default_country = match args
        .default_country
        .as_deref()
        .or(file.default_country.as_deref())
    {
        None => None,
        Some(c) => Some(
            c.parse::<crate::resolve::phone::Country>()
                .map_err(|e| anyhow!("--default-country {e}"))?,
        ),
    };

    let delimiter = match args.delimiter.as_deref().or(file.delimiter.as_deref()) {
        None => b',',
        Some(d) => single_char("--delimiter", d)?,
    };
    let list_sep = match args.list_sep.as_deref().or(file.list_sep.as_deref()) {
        None => ';',
        Some(d) => char::from(single_char("--list-sep", d)?),
    };
    let timezone_name = args.timezone.clone().or_else(|| file.timezone.clone());
    let timezone = match &timezone_name {
        None => None,
        Some(name) => Some(TimeZone::get(name).map_err(|e| {
            anyhow!("--timezone {name}: {e}; expected an IANA zone such as Europe/Berlin, America/New_York or UTC")
        })?),
    };
    let written = match args.date_format.is_empty() {
        false => args.date_format.clone(),
        true => file
            .date_format
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default(),
    };
    // A format with no conversion at all is a typo, not a format.
    let formats = written
        .iter()
        .map(|f| DateFormat::parse(f).map_err(|e| anyhow!(e)))
        .collect::<Result<Vec<_>>>()?;
    Ok((
        MappingOptions {
            maps,
            values,
            prefixes,
            skips,
            order,
            order_given,
            ignore_columns: file.ignore_columns.take().unwrap_or_default(),
            sets,
            list_sep,
            dates: DateReader {
                formats,
                timezone,
                timezone_name,
                epoch_column: None,
            },
            key_column: args.key_column.clone().or_else(|| file.key_column.clone()),
            default_country,
        },
        delimiter,
    ))
}

/// `--encoding` from the flag over the file; `None`: UTF-8 (or UTF-16 by its BOM).
pub fn input_encoding(
    args: &MappingArgs,
    file: &FileConfig,
) -> Result<Option<&'static encoding_rs::Encoding>> {
    args.encoding
        .as_deref()
        .or(file.encoding.as_deref())
        .map(crate::source::encoding)
        .transpose()
}

/// Where attachment files of `input` are read from, and `--attachment-max-size` (the flag over
/// the file over the default).
pub fn attachment_files(
    args: &MappingArgs,
    file: &FileConfig,
    input: &Path,
) -> Result<crate::upload::Files> {
    let max = match (
        args.attachment_max_size,
        file.attachment_max_size.as_deref(),
    ) {
        (Some(n), _) => n,
        (None, Some(s)) => crate::upload::files::parse_size(s)
            .map_err(|e| anyhow!("config attachment-max-size: {e}"))?,
        (None, None) => crate::upload::files::DEFAULT_MAX_SIZE,
    };
    Ok(crate::upload::Files::new(input, max))
}

fn single_char(flag: &str, value: &str) -> Result<u8> {
    match value {
        "tab" | "\\t" | "\t" => return Ok(b'\t'),
        _ => {}
    }
    match value.as_bytes() {
        [b] if b.is_ascii() && *b != b'"' && *b != b'\n' && *b != b'\r' => Ok(*b),
        _ => bail!("{flag} '{value}': expected one ASCII character such as , ; | or tab"),
    }
}

/// `<INPUT stem><suffix>` beside the input.
pub fn beside_input(input: &Path, suffix: &str) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".to_owned());
    input.with_file_name(format!("{stem}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file() {
        let mut file: FileConfig = toml::from_str(
            r#"
            delimiter = ";"
            timezone = "Europe/Berlin"
            map = { message = "Body", type = "Kind" }
            set = ["direction=inbound"]
            "#,
        )
        .unwrap();
        let args = MappingArgs {
            delimiter: Some("tab".into()),
            map: vec![("message".into(), "Text".into())],
            ..Default::default()
        };
        let (opts, delimiter) = mapping_options(&args, &mut file).unwrap();
        assert_eq!(delimiter, b'\t');
        assert_eq!(opts.dates.timezone_name.as_deref(), Some("Europe/Berlin"));
        // The flag's --map comes last, so it wins for `message`.
        assert_eq!(
            opts.maps.last().unwrap(),
            &ColumnMap::new("message", "Text")
        );
        assert!(opts.maps.contains(&ColumnMap::new("type", "Kind")));
        assert_eq!(
            opts.sets,
            vec![("direction".to_owned(), "inbound".to_owned())]
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let cases: &[(MappingArgs, &str)] = &[
            (
                MappingArgs {
                    delimiter: Some(",,".into()),
                    ..Default::default()
                },
                "one ASCII character",
            ),
            (
                MappingArgs {
                    timezone: Some("Mars/Olympus".into()),
                    ..Default::default()
                },
                "IANA zone",
            ),
            (
                MappingArgs {
                    date_format: vec!["dd/mm/yyyy".into()],
                    ..Default::default()
                },
                "no % conversion",
            ),
        ];
        for (args, text) in cases {
            let err = mapping_options(args, &mut FileConfig::default()).unwrap_err();
            assert!(err.to_string().contains(text), "{err}");
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let err = toml::from_str::<FileConfig>("colour = \"blue\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn results_path_beside_input() {
        assert_eq!(
            beside_input(Path::new("data/export.csv"), ".validation.csv"),
            PathBuf::from("data/export.validation.csv")
        );
    }
}
