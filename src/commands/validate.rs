//! `lc-import validate`: maps and checks every row offline, writes a results file with one
//! line per row (`valid` or `invalid` and why), and ends with a summary. No network.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::Exit;
use crate::cli::ValidateArgs;
use crate::config::{self, FileConfig};
use crate::journal::{ResultLine, ResultsWriter, Status};
use crate::mapping::Mapping;
use crate::reader::CsvInput;
use crate::summary::ErrorTally;

/// What a validation found.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: u64,
    pub valid: u64,
    pub invalid: u64,
    pub errors: ErrorTally,
    pub results: PathBuf,
}

pub fn run(args: ValidateArgs) -> Exit {
    match validate(&args, &mut std::io::stdout().lock()) {
        Ok(report) => {
            if report.invalid == 0 {
                Exit::Success
            } else {
                Exit::RowsNeedAttention
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Usage
        }
    }
}

/// Validates `args.input`, printing bodies (`--show`) and the summary to `out`.
pub fn validate(args: &ValidateArgs, out: &mut impl Write) -> Result<Report> {
    let started = Instant::now();
    let mut file = FileConfig::load(args.mapping.config.as_deref())?;
    let (options, delimiter) = config::mapping_options(&args.mapping, &mut file)?;
    let mut input = CsvInput::open(&args.input, delimiter)?;
    let mapping = Mapping::new(input.header(), &options)
        .with_context(|| format!("{}", args.input.display()))?;
    for warning in &mapping.warnings {
        eprintln!("warning: {}: {warning}", args.input.display());
    }

    let results = args
        .results
        .clone()
        .unwrap_or_else(|| config::beside_input(&args.input, ".validation.csv"));
    let dir = match results.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
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
    while let Some(record) = input
        .next_record()
        .with_context(|| format!("reading {}", args.input.display()))?
    {
        report.rows += 1;
        line_out.row = record.row;
        // A broken record's cells are shifted, so its key column cannot be trusted.
        line_out.key = match record.broken {
            Some(_) => crate::mapping::record_hash(record.cells),
            None => mapping.key(record.cells),
        };
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
    writeln!(out, "results: {}", results.display())?;
    Ok(report)
}
