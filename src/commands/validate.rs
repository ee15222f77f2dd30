//! `lc-import validate`: maps and checks every row offline, writes a results file with one
//! line per row (`valid` or `invalid` and why), and ends with a summary. No network.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cli::ValidateArgs;
use crate::config::{self, FileConfig};
use crate::mapping::{Mapping, MappingOptions};
use crate::reader::CsvInput;
use crate::reader::Utf8Hint;
use crate::results::line::{ResultsWriter, col, folder_of, text};
use crate::results::{ResultLine, Status};
use crate::source::Source;
use crate::summary::{Ending, ErrorTally, Stdout};

/// What a validation found.
#[derive(Debug, Default)]
pub struct Report {
    /// Rows read from the input.
    pub rows: u64,
    /// Rows that map to a request body.
    pub valid: u64,
    /// Rows with at least one error.
    pub invalid: u64,
    /// The invalid rows' errors, by kind, with an example of each.
    pub errors: ErrorTally,
    /// The results file written.
    pub results: PathBuf,
}

/// `lc-import validate`: checks every row and prints the summary; invalid rows need attention.
pub fn run(args: ValidateArgs) -> Result<Ending> {
    let report = validate(&args, &mut Stdout)?;
    Ok(Ending {
        stopped: None,
        attention: report.invalid,
        summary: None,
    })
}

/// `validate` writes only `valid` / `invalid` lines. A results file holding a run's outcomes
/// (`sent`, `unknown`, `failed`…) is the run's memory of what was sent: overwriting it would send
/// every row again. Refused, as is a file a running import holds locked. Returns the existing
/// file, locked, when there is one.
fn refuse_run_outcomes(results: &Path, input: &Path) -> Result<Option<File>> {
    let file = match File::open(results) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", results.display())),
    };
    let instead = default_results(input);
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{} is in use by a running import: validate would overwrite the record of what it sends. Give --results another path (by default validate writes {})",
            results.display(),
            instead.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", results.display()));
        }
    }
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(std::io::BufReader::new(&file));
    for record in reader.byte_records() {
        let Ok(record) = record else { break };
        let status = text(&record, col::STATUS).unwrap_or("");
        if !matches!(status, "valid" | "invalid" | "") {
            *outcomes.entry(status.to_owned()).or_default() += 1;
        }
    }
    if outcomes.is_empty() && !crate::results::target::path_for(results).exists() {
        return Ok(Some(file));
    }
    let counts = outcomes
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect::<Vec<_>>()
        .join(", ");
    bail!(
        "{} is the results file of a run ({}): validate would replace what it remembers of the rows sent, and the next run would send them again. Validate writes {} instead: run it without --results, or give --results another path",
        results.display(),
        if counts.is_empty() {
            "it records its target".to_owned()
        } else {
            counts
        },
        instead.display()
    )
}

/// `<INPUT stem>.validation.csv` beside the input; `stdin.validation.csv` in the current folder
/// for a stream (`-`, a pipe, `<(…)`), which has no name of its own.
fn default_results(input: &Path) -> PathBuf {
    match crate::source::is_stream(input) {
        true => PathBuf::from("stdin.validation.csv"),
        false => config::beside_input(input, ".validation.csv"),
    }
}

/// Validates `args.input`, printing bodies (`--show`) and the summary to `out`.
pub fn validate(args: &ValidateArgs, out: &mut impl Write) -> Result<Report> {
    let started = Instant::now();
    let mut file = FileConfig::load(args.mapping.config.as_deref())?;
    let (options, delimiter) = config::mapping_options(&args.mapping, &mut file)?;
    let encoding = config::input_encoding(&args.mapping, &file)?;
    let mut source = Source::new(&args.input, encoding)?;
    let mut input = CsvInput::open(&mut source, delimiter)?;
    let mapping = Mapping::new(input.header(), &options)
        .with_context(|| format!("{}", args.input.display()))?;
    for warning in &mapping.warnings {
        tracing::warn!("{}: {warning}", args.input.display());
    }

    let results = args
        .results
        .clone()
        .unwrap_or_else(|| default_results(&args.input));
    // Held until the new file replaces it: a run that starts meanwhile waits for the lock.
    let _held = refuse_run_outcomes(&results, &args.input)?;
    let dir = folder_of(&results);
    // Written beside its final place and renamed at the end, so a results file is whole or absent.
    let temp = tempfile::Builder::new()
        .prefix(".lc-import-validation")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a results file in {}", dir.display()))?;
    let mut writer = ResultsWriter::new(BufWriter::with_capacity(256 * 1024, temp))?;

    let mut report = Report {
        results: results.clone(),
        ..Default::default()
    };
    let mut shown = 0;
    let mut line_out = ResultLine::default();
    let mut utf8 = Utf8Hint::default();
    while let Some(record) = input
        .next_record()
        .with_context(|| format!("reading {}", args.input.display()))?
    {
        report.rows += 1;
        line_out.row = record.row;
        line_out.key = mapping.record_key(&record);
        line_out.error.clear();
        let outcome = match record.broken {
            Some(e) => Err(vec![e]),
            None => mapping.map(record.cells, record.line),
        };
        match outcome {
            Ok(message) => {
                report.valid += 1;
                line_out.status = Some(Status::Valid);
                if shown < args.show {
                    shown += 1;
                    writeln!(
                        out,
                        "row {} (line {}):\n{}",
                        record.row,
                        record.line,
                        serde_json::to_string_pretty(&message)?
                    )?;
                }
            }
            Err(errors) => {
                report.invalid += 1;
                utf8.observe(record.cells, &errors);
                line_out.status = Some(Status::Invalid);
                for (i, e) in errors.iter().enumerate() {
                    report.errors.add(e);
                    if i > 0 {
                        line_out.error.push_str(" | ");
                    }
                    line_out.error.push_str(&e.to_string());
                }
            }
        }
        writer
            .write(&line_out)
            .with_context(|| format!("writing {}", results.display()))?;
    }
    let temp = writer
        .into_inner()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .with_context(|| format!("writing {}", results.display()))?;
    temp.persist(&results)
        .with_context(|| format!("cannot write results file {}", results.display()))?;

    writeln!(
        out,
        "{}: {} rows checked in {:.2}s: {} valid, {} invalid",
        args.input.display(),
        report.rows,
        started.elapsed().as_secs_f64(),
        report.valid,
        report.invalid
    )?;
    if !report.errors.is_empty() {
        writeln!(
            out,
            "most frequent errors:\n{}",
            report.errors.render(5).trim_end()
        )?;
    }
    if let Some(hint) = utf8.render(&args.input) {
        writeln!(out, "hint: {hint}")?;
    }
    writeln!(out, "results: {}", results.display())?;
    Ok(report)
}

/// What [`check_bytes`] found: rows that map to a request body, and rows with errors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Rows that map to a request body.
    pub valid: u64,
    /// Rows with at least one error.
    pub invalid: u64,
}

/// Reads `bytes` as a CSV export and maps, validates and keys every row exactly as `validate`
/// and `run` do (the reader, the mapping, the row key, the JSON body), with no results file.
/// For the fuzzer (`fuzz/`) and property tests: any input must come back as `Ok` counts or a
/// usage error such as an empty file or a header that is not UTF-8, never a panic.
pub fn check_bytes(bytes: &[u8], options: &MappingOptions, delimiter: u8) -> Result<Checked> {
    // The reader streams from a file, as in a real run; a temp file keeps that path exercised.
    let mut file = tempfile::NamedTempFile::new().context("creating a temp file")?;
    file.write_all(bytes).context("writing the temp file")?;
    let mut input = CsvInput::open(&mut Source::new(file.path(), None)?, delimiter)?;
    let mapping = Mapping::new(input.header(), options)?;
    let mut checked = Checked::default();
    while let Some(record) = input.next_record()? {
        let key = mapping.record_key(&record);
        debug_assert!(!key.is_empty(), "every row has a key");
        let outcome = match record.broken {
            Some(e) => Err(vec![e]),
            None => mapping.map(record.cells, record.line),
        };
        match outcome {
            Ok(message) => {
                serde_json::to_vec(&message).context("serialising a request body")?;
                checked.valid += 1;
            }
            Err(errors) => {
                assert!(!errors.is_empty(), "an invalid row says why");
                // Every error renders (line, column, reason) without panicking.
                let _ = errors.iter().map(ToString::to_string).count();
                checked.invalid += 1;
            }
        }
    }
    Ok(checked)
}

/// The fuzzer's case format: the first byte picks the reading options (delimiter, list
/// separator, a `--date-format` with `--timezone`, a key column), the rest is the file. Shared by
/// `fuzz/fuzz_targets/check_bytes.rs` and the stable test that replays its corpus.
pub fn check_fuzz_case(data: &[u8]) -> Result<Checked> {
    let Some((&choice, csv)) = data.split_first() else {
        return Ok(Checked::default());
    };
    let mut options = MappingOptions::default();
    let delimiter = [b',', b';', b'\t', b'|'][usize::from(choice & 3)];
    if choice & 4 != 0 {
        options.list_sep = ',';
    }
    if choice & 8 != 0 {
        options.dates = crate::validate::DateReader {
            format: Some("%d/%m/%Y %H:%M".into()),
            timezone: jiff::tz::TimeZone::get("Europe/Berlin").ok(),
            timezone_name: Some("Europe/Berlin".into()),
        };
    }
    if choice & 16 != 0 {
        options.key_column = Some("altId".into());
    }
    check_bytes(csv, &options, delimiter)
}
