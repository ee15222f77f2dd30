//! `lc-import validate`: maps and checks every row offline, writes a results file with one
//! line per row (`valid` or `invalid` and why), and ends with a summary. No network.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cli::ValidateArgs;
use crate::config::{self, FileConfig};
use crate::mapping::{MappedRow, Mapping, MappingOptions, Order};
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
    /// Rows a row filter leaves out on purpose.
    pub skipped: u64,
    /// Conversations whose dates run backwards somewhere in the file (sent in file order, their
    /// timeline would be built backwards: `--order date` sends each oldest first).
    pub backwards: u64,
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
        if !matches!(status, "valid" | "invalid" | "skipped" | "") {
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
    let mut file = FileConfig::for_args(&args.mapping)?;
    let (options, delimiter) = config::mapping_options(&args.mapping, &mut file)?;
    let encoding = config::input_encoding(&args.mapping, &file)?;
    let files = config::attachment_files(&args.mapping, &file, &args.input)?;
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
    if args.show > 0 {
        writeln!(out, "{}", mapping.describe().trim_end())?;
    }
    let mut order = OrderCheck::default();
    let mut threads = Threads::default();
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
        let skip = match record.broken {
            Some(_) => None,
            None => mapping.skip_reason(record.cells, record.line),
        };
        if let Some(reason) = skip {
            report.skipped += 1;
            line_out.status = Some(Status::Skipped);
            line_out.error = reason;
            writer
                .write(&line_out)
                .with_context(|| format!("writing {}", results.display()))?;
            continue;
        }
        let whole = record.broken.is_none();
        let outcome = match record.broken {
            Some(e) => Err(vec![e]),
            None => mapping
                .map_row(record.cells, record.line)
                .and_then(|mut row| files.check(&mapping, &mut row, record.line).map(|()| row)),
        };
        if whole && mapping.has_threads() {
            threads.see(
                &mapping,
                record.cells,
                record.row,
                record.line,
                outcome.is_ok(),
            );
        }
        match outcome {
            Ok(row) => {
                report.valid += 1;
                line_out.status = Some(Status::Valid);
                if mapping.order == Order::Input {
                    order.see(&row, record.line);
                }
                if shown < args.show {
                    shown += 1;
                    writeln!(
                        out,
                        "row {} (line {}):\n{}",
                        record.row,
                        record.line,
                        preview(&row)?
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
    report.backwards = order.backwards;
    if let Some((line, earlier)) = order.first {
        tracing::warn!(
            "{}: the dates of {} conversation(s) run backwards (first at line {line}, older than line {earlier} of the same conversation): sent in file order, their timelines would be built backwards. Give --order date to send each conversation oldest first",
            args.input.display(),
            order.backwards
        );
    }
    let temp = writer
        .into_inner()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .with_context(|| format!("writing {}", results.display()))?;
    temp.persist(&results)
        .with_context(|| format!("cannot write results file {}", results.display()))?;

    writeln!(
        out,
        "{}: {} rows checked in {:.2}s: {} valid, {} invalid{}",
        args.input.display(),
        report.rows,
        started.elapsed().as_secs_f64(),
        report.valid,
        report.invalid,
        match report.skipped {
            0 => String::new(),
            n => format!(", {n} skipped by a row filter"),
        }
    )?;
    if !report.errors.is_empty() {
        writeln!(
            out,
            "most frequent errors in {}:\n{}",
            args.input.display(),
            report.errors.render(5).trim_end()
        )?;
    }
    if let Some(hint) = utf8.render(&args.input) {
        writeln!(out, "hint: {hint}")?;
    }
    if mapping.has_threads() {
        writeln!(out, "{}", threads.render(&mapping))?;
    }
    writeln!(out, "results: {}", results.display())?;
    Ok(report)
}

/// What `validate` says of the thread column: threads, their first messages, cells ignored.
#[derive(Default)]
struct Threads {
    starts: crate::threads::StartsBuilder,
    /// Rows with a thread cell that are not e-mails (or have no conversation to place them).
    ignored: u64,
}

impl Threads {
    fn see(
        &mut self,
        mapping: &Mapping,
        cells: &csv::ByteRecord,
        row: u64,
        line: u64,
        valid: bool,
    ) {
        use crate::threads::StartState;
        match mapping.thread_place(cells, line) {
            Some(place) => {
                let state = if valid {
                    StartState::ToSend
                } else {
                    StartState::Invalid
                };
                self.starts.visit(&place, row, state);
            }
            None if mapping.thread_cell(cells).is_some() => self.ignored += 1,
            None => {}
        }
    }

    fn render(self, mapping: &Mapping) -> String {
        let column = mapping
            .column_of(crate::mapping::Field::ThreadId)
            .map_or_else(|| "--set".to_owned(), |c| format!("column {c:?}"));
        let (_, report) = self.starts.finish(|_| false);
        let mut out = format!(
            "threads: threadId from {column}: {} e-mail(s) in {} thread(s), each sent as one thread in {} (its first message by date as it is, the others with its emailMessageId)",
            report.messages,
            report.threads,
            match mapping.order {
                Order::Date => "date order",
                Order::Input =>
                    "file order (--order input: a reply before its first message waits for the next run)",
            }
        );
        if report.held > 0 {
            out.push_str(&format!(
                "; {} thread(s) have an invalid first message: their other messages wait until it is fixed",
                report.held
            ));
        }
        if self.ignored > 0 {
            out.push_str(&format!(
                "; {} row(s) with a threadId are not e-mails (type Email), or have no conversation: the cell is ignored",
                self.ignored
            ));
        }
        out
    }
}

/// The request body of a row, and for a row whose IDs are to be looked up, what it will be
/// looked up by (the normalised phone and e-mail, the location) instead of empty IDs.
fn preview(row: &MappedRow) -> Result<String> {
    let mut body = serde_json::to_value(&row.message)?;
    if let Some(lookup) = &row.lookup
        && let Some(fields) = body.as_object_mut()
    {
        let pending = "(looked up)";
        for id in ["conversationId", "contactId"] {
            if fields.get(id).and_then(|v| v.as_str()) == Some("") {
                fields.insert(id.to_owned(), pending.into());
            }
        }
        let mut by = serde_json::Map::new();
        by.insert("locationId".into(), lookup.location_id.clone().into());
        if let Some(p) = &lookup.phone {
            by.insert("phone".into(), p.clone().into());
        }
        if let Some(e) = &lookup.email {
            by.insert("email".into(), e.clone().into());
        }
        return Ok(format!(
            "{}\nlooked up by (not sent): {}",
            serde_json::to_string_pretty(&body)?,
            serde_json::Value::Object(by)
        ));
    }
    Ok(serde_json::to_string_pretty(&body)?)
}

/// Conversations tracked at most for [`OrderCheck`], so memory stays bounded.
const ORDER_TRACKED: usize = 200_000;

/// Finds conversations whose dates run backwards in the file: the last date and line seen per
/// conversation (a hash of its lane), for at most [`ORDER_TRACKED`] conversations. Cheap per
/// row (validate's pace is measured): no allocation, no second parse of the date.
#[derive(Default)]
struct OrderCheck {
    last: HashMap<u64, (DateKey, u64, bool), std::hash::BuildHasherDefault<LaneHash>>,
    backwards: u64,
    /// The first backwards row: its line, and the line of the later-dated row before it.
    first: Option<(u64, u64)>,
}

/// The keys of [`OrderCheck`] are xxh3 hashes already: used as they are.
#[derive(Default)]
struct LaneHash(u64);

impl std::hash::Hasher for LaneHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// An RFC 3339 UTC date as the mapping writes it (`2024-03-05T14:22:01.25Z`), as numbers that
/// sort as the instants do: the 14 digits to the second, and the fraction in nanoseconds.
type DateKey = (u64, u32);

fn date_key(date: &str) -> DateKey {
    let b = date.as_bytes();
    let digit = |i: usize| u64::from(b.get(i).map_or(0, |d| d.wrapping_sub(b'0')) % 10);
    // YYYY-MM-DDTHH:MM:SS: the digits at their fixed places.
    let seconds = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
        .iter()
        .fold(0u64, |n, i| n * 10 + digit(*i));
    let mut nanos = 0u32;
    let mut digits = 0;
    if b.get(19) == Some(&b'.') {
        for d in b[20..].iter().take_while(|d| d.is_ascii_digit()).take(9) {
            nanos = nanos * 10 + u32::from(d - b'0');
            digits += 1;
        }
    }
    (seconds, nanos * 10u32.pow(9 - digits))
}

impl OrderCheck {
    fn see(&mut self, row: &MappedRow, line: u64) {
        let Some(date) = row.message.date.as_deref() else {
            return;
        };
        let date = date_key(date);
        let lane = match &row.lookup {
            Some(lookup) if row.message.conversation_id.is_empty() => {
                xxhash_rust::xxh3::xxh3_64(lookup.lane(&row.message.contact_id).as_bytes())
            }
            _ => xxhash_rust::xxh3::xxh3_64(row.message.conversation_id.as_bytes()),
        };
        let tracked = self.last.len();
        match self.last.get_mut(&lane) {
            Some((last, last_line, counted)) => {
                if date < *last && !*counted {
                    *counted = true;
                    self.backwards += 1;
                    self.first.get_or_insert((line, *last_line));
                }
                *last = date;
                *last_line = line;
            }
            None if tracked < ORDER_TRACKED => {
                self.last.insert(lane, (date, line, false));
            }
            None => {}
        }
    }
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
            formats: vec![crate::validate::DateFormat::Strftime(
                "%d/%m/%Y %H:%M".into(),
            )],
            timezone: jiff::tz::TimeZone::get("Europe/Berlin").ok(),
            timezone_name: Some("Europe/Berlin".into()),
            epoch_column: None,
        };
    }
    if choice & 16 != 0 {
        options.key_column = Some("altId".into());
    }
    check_bytes(csv, &options, delimiter)
}

#[cfg(test)]
mod tests {
    use super::date_key;

    #[test]
    fn date_keys_sort_as_the_instants() {
        let dates = [
            "2024-03-05T14:22:00Z",
            "2024-03-05T14:22:01Z",
            "2024-03-05T14:22:01.25Z",
            "2024-03-05T14:22:01.5Z",
            "2024-03-05T14:23:00Z",
            "2025-01-01T00:00:00Z",
        ];
        for pair in dates.windows(2) {
            assert!(date_key(pair[0]) < date_key(pair[1]), "{pair:?}");
        }
    }
}
