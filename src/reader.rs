//! The streaming CSV reader: one header row, then one record at a time into a single reused
//! [`csv::ByteRecord`], so memory is bounded by the longest row, never by the file.
//!
//! A record whose shape is wrong (more or fewer cells than the header, a quote that runs on
//! past the end of its row) is not an error of the reader: it is handed on with a
//! [`RowError`] so that it is recorded and skipped, and reading goes on with the next record;
//! so is a record holding bytes the decoder of `--encoding` could not decode. Only I/O failures
//! end the read. The bytes come from `source` (file or stream, decompressed, decoded to UTF-8).
//!
//! [`Utf8Hint`] gathers the cells that are not UTF-8 (row errors of the mapping) into one hint
//! for the whole file, naming `--encoding windows-1252` when they read as that.

use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use csv::ByteRecord;

use crate::source::{Source, Text};
use crate::validate::{Invalid, Problem};

/// Where a problem is: the line of the input, and the cell when one is to blame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowError {
    /// 1-based line of the input where the row (or the broken cell) starts.
    pub line: u64,
    /// The cell to blame; `None` when the problem is the row as a whole.
    pub column: Option<Column>,
    /// What is wrong.
    pub invalid: Invalid,
}

/// A cell's place: a column of the input, or a `--set` constant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Column {
    /// 0-based index, and the header's name for it.
    Csv(usize, String),
    /// The value given with `--set FIELD=VALUE`.
    Set(&'static str),
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(Column::Csv(i, name)) => {
                write!(
                    f,
                    "line {}, column {} ({name}): {}",
                    self.line,
                    i + 1,
                    self.invalid
                )
            }
            Some(Column::Set(field)) => {
                write!(f, "line {}, --set {field}: {}", self.line, self.invalid)
            }
            None => write!(f, "line {}: {}", self.line, self.invalid),
        }
    }
}

/// An open input: its header, and a cursor over its records.
pub struct CsvInput {
    path: PathBuf,
    reader: csv::Reader<BufReader<Text>>,
    header: Vec<String>,
    record: ByteRecord,
    row: u64,
    /// Sequences the decoder could not decode, read as U+FFFD (see `source`), and the
    /// encoding's name: once there are any, a row holding U+FFFD is a row error.
    replaced: Arc<AtomicU64>,
    encoding: &'static str,
}

/// One record as read, borrowed until the next call to [`CsvInput::next_record`].
pub struct Record<'a> {
    /// 1-based data row (the header is not a row).
    pub row: u64,
    /// 1-based line where the record starts.
    pub line: u64,
    /// Byte offset where the record starts (to read it again with [`CsvInput::seek_to`]).
    pub offset: u64,
    /// The record's cells, as bytes.
    pub cells: &'a ByteRecord,
    /// Set when the record's shape is broken; its cells are then not to be trusted.
    pub broken: Option<RowError>,
}

impl CsvInput {
    /// Opens `source` for a read and reads its header row. A missing, unreadable or empty file,
    /// or a header that is not UTF-8, is an error: nothing could be read from it.
    pub fn open(source: &mut Source, delimiter: u8) -> Result<Self> {
        let text = source.open()?;
        let path = source.name().to_owned();
        let path = path.as_path();
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(true)
            // Ragged rows are reported by us, with the line, rather than by the csv crate.
            .flexible(true)
            // Only `\n` ends a record, so that line numbers stay exact in CRLF files (with the
            // default terminator the `\n` of a CRLF is counted at the start of the next record,
            // one line late). The `\r` this leaves on a row's last cell is removed below.
            .terminator(csv::Terminator::Any(b'\n'))
            .from_reader(BufReader::with_capacity(256 * 1024, text));
        let mut raw = reader
            .byte_headers()
            .with_context(|| format!("cannot read the header row of {}", path.display()))?
            .clone();
        strip_cr(&mut raw);
        if raw.is_empty() || (raw.len() == 1 && raw[0].is_empty()) {
            bail!(
                "{} is empty: expected a header row naming the columns (conversationId, contactId, type, direction, message, date, …) and then one row per message",
                path.display()
            );
        }
        let mut header = Vec::with_capacity(raw.len());
        for (i, name) in raw.iter().enumerate() {
            match std::str::from_utf8(name) {
                Ok(name) => header.push(name.trim().to_owned()),
                Err(e) => bail!(
                    "{}: line 1, column {}: the header is not valid UTF-8 (byte {} of the name): give the export's encoding with --encoding LABEL (windows-1252 for Excel on Windows), or save it as UTF-8",
                    path.display(),
                    i + 1,
                    e.valid_up_to() + 1
                ),
            }
        }
        Ok(CsvInput {
            path: path.to_owned(),
            reader,
            header,
            record: ByteRecord::new(),
            row: 0,
            replaced: source.replacements(),
            encoding: source.encoding_name(),
        })
    }

    /// The input file, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Column names as written in the header, trimmed.
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// The next record, or `None` at the end of the input.
    pub fn next_record(&mut self) -> io::Result<Option<Record<'_>>> {
        loop {
            match self.reader.read_byte_record(&mut self.record) {
                Ok(false) => return Ok(None),
                Ok(true) => {}
                Err(e) => {
                    return match e.into_kind() {
                        csv::ErrorKind::Io(e) => Err(e),
                        other => Err(io::Error::other(format!("{other:?}"))),
                    };
                }
            }
            strip_cr(&mut self.record);
            // A blank line of a CRLF file (`\r\n`) is one empty cell: skip it as csv skips `\n`.
            if !(self.record.len() == 1 && self.record[0].is_empty()) {
                break;
            }
        }
        self.row += 1;
        let line = self.record.position().map_or(0, |p| p.line());
        let offset = self.record.position().map_or(0, |p| p.byte());
        let broken = self.shape_error(line).or_else(|| self.undecoded(line));
        Ok(Some(Record {
            row: self.row,
            line,
            offset,
            cells: &self.record,
            broken,
        }))
    }

    /// Positions the reader at the record of `row` that starts at `offset` on `line` (as an
    /// earlier [`Record`] gave them): the next [`CsvInput::next_record`] reads that row.
    pub fn seek_to(&mut self, row: u64, offset: u64, line: u64) -> io::Result<()> {
        let mut position = csv::Position::new();
        position.set_byte(offset).set_line(line).set_record(row);
        self.reader
            .seek(position)
            .map_err(|e| match e.into_kind() {
                csv::ErrorKind::Io(e) => e,
                other => io::Error::other(format!("{other:?}")),
            })?;
        self.row = row - 1;
        Ok(())
    }

    fn shape_error(&self, line: u64) -> Option<RowError> {
        let want = self.header.len();
        let got = self.record.len();
        if got == want {
            return None;
        }
        // A quote left open swallows the line ends after it, so the record spans several lines
        // and has the wrong number of cells. Name the cell where it opened.
        let mut at_line = line;
        for (i, cell) in self.record.iter().enumerate() {
            let breaks = cell.iter().filter(|b| **b == b'\n').count() as u64;
            if breaks > 0 {
                let last_line = self.reader.position().line().saturating_sub(1).max(at_line);
                return Some(RowError {
                    line: at_line,
                    column: Some(Column::Csv(i, self.column_name(i))),
                    invalid: Invalid::new(
                        Problem::Csv,
                        format!(
                            "a quoted cell is not closed where its row ends: it runs on to line {last_line}, so lines {at_line} to {last_line} were read as one row of {got} cells (the header has {want}); close the quote, and write a quote inside a cell as two quotes (\"\")"
                        ),
                    ),
                });
            }
            at_line += breaks;
        }
        let detail = if got > want {
            format!(
                "{} too many: a cell probably holds an unquoted delimiter",
                got - want
            )
        } else {
            format!(
                "column {} ({}) and after are missing",
                got + 1,
                self.column_name(got)
            )
        };
        Some(RowError {
            line,
            column: None,
            invalid: Invalid::new(
                Problem::Csv,
                format!(
                    "the row has {got} cells but the header has {want} ({detail}): every row needs one cell per header column, and a cell that contains the delimiter must be quoted"
                ),
            ),
        })
    }

    /// A cell holding U+FFFD once the decoder has had to write one: bytes that are not text in
    /// the encoding named. (A UTF-8 input is not decoded: its bad cells are the mapping's.)
    fn undecoded(&self, line: u64) -> Option<RowError> {
        if self.replaced.load(Ordering::Relaxed) == 0 {
            return None;
        }
        const FFFD: &[u8] = "\u{fffd}".as_bytes();
        let i = self
            .record
            .iter()
            .position(|cell| cell.windows(FFFD.len()).any(|w| w == FFFD))?;
        Some(RowError {
            line,
            column: Some(Column::Csv(i, self.column_name(i))),
            invalid: Invalid::new(
                Problem::Encoding,
                format!(
                    "the cell holds bytes that are not {} text (read as U+FFFD): check the export's encoding (--encoding)",
                    self.encoding
                ),
            ),
        })
    }

    fn column_name(&self, i: usize) -> String {
        self.header
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("#{}", i + 1))
    }
}

/// Removes the `\r` of a CRLF line end from the last cell.
fn strip_cr(record: &mut ByteRecord) {
    let n = record.len();
    if n == 0 || !record[n - 1].ends_with(b"\r") {
        return;
    }
    let last = record[n - 1][..record[n - 1].len() - 1].to_vec();
    let position = record.position().cloned();
    record.truncate(n - 1);
    record.push_field(&last);
    record.set_position(position);
}

/// Cells that are not UTF-8 (each a row error of the mapping) turned into one hint for the
/// file: when they read as Windows-1252 (letters and punctuation, no control characters), the
/// export is most likely that, and `--encoding windows-1252` reads it.
#[derive(Debug, Default)]
pub struct Utf8Hint {
    /// Rows with a cell that is not UTF-8.
    rows: u64,
    /// The first such cell: where, and its text read as Windows-1252.
    first: Option<(String, String)>,
    /// Every such cell read as Windows-1252 text.
    all_1252: bool,
}

impl Utf8Hint {
    /// Takes note of a row's errors: the cells that are not UTF-8 among them.
    pub fn observe(&mut self, cells: &csv::ByteRecord, errors: &[RowError]) {
        let mut counted = false;
        for e in errors {
            let (Problem::Encoding, Some(Column::Csv(i, name))) = (e.invalid.problem, &e.column)
            else {
                continue;
            };
            let Some(bytes) = cells.get(*i) else {
                continue;
            };
            let (text, _) = encoding_rs::WINDOWS_1252.decode_without_bom_handling(bytes);
            let readable = !text
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
            if self.first.is_none() {
                self.all_1252 = true;
                self.first = Some((
                    format!("line {}, column {} ({name})", e.line, i + 1),
                    text.into_owned(),
                ));
            }
            self.all_1252 &= readable;
            if !counted {
                self.rows += 1;
                counted = true;
            }
        }
    }

    /// The hint for `input`, when some cell was not UTF-8.
    pub fn render(&self, input: &Path) -> Option<String> {
        let (at, text) = self.first.as_ref()?;
        let mut shown: String = text.chars().take(60).collect();
        if shown.len() < text.len() {
            shown.push('…');
        }
        Some(if self.all_1252 {
            format!(
                "{}: {} row(s) have cells that are not UTF-8, and they read as Windows-1252 ({at}: {shown:?}): the export is most likely Windows-1252 (Excel on Windows); run again with --encoding windows-1252",
                input.display(),
                self.rows
            )
        } else {
            format!(
                "{}: {} row(s) have cells that are not UTF-8 (first at {at}): give the export's encoding with --encoding LABEL (windows-1252, iso-8859-15, macintosh, shift_jis, …), or save it as UTF-8",
                input.display(),
                self.rows
            )
        })
    }
}
