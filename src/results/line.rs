//! The results line codec: the header, the position of every column ([`col`]), the statuses,
//! and the two ways a [`ResultLine`] is written: [`ResultsWriter`] for a whole file (`validate`)
//! and `encode_line` for the journal's appends. Every reader of results lines names a column
//! through [`col`]; nothing else knows where a field is.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The header every results file starts with.
pub const HEADER: [&str; col::COUNT] = [
    "row",
    "key",
    "status",
    "message_id",
    "conversation_id",
    "contact_id",
    "http_status",
    "attempts",
    "error",
    "trace_id",
    "finished_at",
];

/// Where each field is in a results line: the index of its [`HEADER`] name.
pub mod col {
    /// `row`: the input row number, from 1. The first field, never quoted (compaction relies
    /// on both).
    pub const ROW: usize = 0;
    /// `key`: the row key that finds a row again across runs.
    pub const KEY: usize = 1;
    /// `status`: a [`Status`](super::Status) name.
    pub const STATUS: usize = 2;
    /// `message_id`: the ID the API gave the message.
    pub const MESSAGE_ID: usize = 3;
    /// `conversation_id`: the conversation the message went to.
    pub const CONVERSATION_ID: usize = 4;
    /// `contact_id`: the contact of that conversation.
    pub const CONTACT_ID: usize = 5;
    /// `http_status`: the last HTTP status the API answered.
    pub const HTTP_STATUS: usize = 6;
    /// `attempts`: requests made for the row (empty for none).
    pub const ATTEMPTS: usize = 7;
    /// `error`: what went wrong, in words.
    pub const ERROR: usize = 8;
    /// `trace_id`: the API's trace ID of the last answer.
    pub const TRACE_ID: usize = 9;
    /// `finished_at`: when the line was written, RFC 3339 UTC.
    pub const FINISHED_AT: usize = 10;
    /// How many fields a whole line has.
    pub const COUNT: usize = 11;
}

/// What became of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `validate` only: the row would be sent.
    Valid,
    /// The row breaks a rule and was not sent.
    Invalid,
    /// Write-ahead mark: the request is about to leave. Read back as `unknown`.
    Sending,
    /// The API answered with a message ID.
    Sent,
    /// The API refused it, or retries ran out. Tried again on the next run.
    Failed,
    /// The request was written but no answer came: it may be stored. Not resent unless asked.
    Unknown,
    /// Its key was seen earlier in the same input; not sent.
    Duplicate,
    /// Keyed by content, it looks like a row sent earlier with a cell edited; not sent (unless
    /// `--send-changed`). Tried again on the next run, like `failed`.
    Changed,
    /// Left out on purpose by a row filter (`--skip-if`, a preset's `[skip]`); not sent. Looked
    /// at afresh on the next run, like `invalid` (the filter may have changed).
    Skipped,
    /// Not sent: an earlier row of its conversation failed (the server failing, retries
    /// exhausted), and sending this one first would put the timeline out of order. Sent on the
    /// next run, after that row, like `failed`.
    Waiting,
}

impl Status {
    /// The status as the results file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Valid => "valid",
            Status::Invalid => "invalid",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Failed => "failed",
            Status::Unknown => "unknown",
            Status::Duplicate => "duplicate",
            Status::Changed => "changed",
            Status::Skipped => "skipped",
            Status::Waiting => "waiting",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "valid" => Status::Valid,
            "invalid" => Status::Invalid,
            "sending" => Status::Sending,
            "sent" => Status::Sent,
            "failed" => Status::Failed,
            "unknown" => Status::Unknown,
            "duplicate" => Status::Duplicate,
            "changed" => Status::Changed,
            "skipped" => Status::Skipped,
            "waiting" => Status::Waiting,
            other => return Err(format!("'{other}' is not a status")),
        })
    }
}

/// One line of the results file; each field is the column of the same name (see [`col`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultLine {
    /// The input row number.
    pub row: u64,
    /// The row key.
    pub key: String,
    /// What became of the row; `None` writes an empty field.
    pub status: Option<Status>,
    /// The API's message ID.
    pub message_id: String,
    /// The conversation the message went to.
    pub conversation_id: String,
    /// The contact of that conversation.
    pub contact_id: String,
    /// The last HTTP status; `None` writes an empty field.
    pub http_status: Option<u16>,
    /// Requests made; 0 writes an empty field.
    pub attempts: u32,
    /// What went wrong, in words.
    pub error: String,
    /// The API's trace ID.
    pub trace_id: String,
    /// When the line was written (see [`now_rfc3339`]).
    pub finished_at: String,
}

impl ResultLine {
    /// A line as read back from a results file (`None` when it is not a whole results line).
    pub fn from_record(record: &csv::ByteRecord) -> Option<ResultLine> {
        if record.len() != col::COUNT {
            return None;
        }
        let t = |c: usize| text(record, c).map(str::to_owned);
        let number = |c: usize| text(record, c).filter(|s| !s.is_empty());
        Some(ResultLine {
            row: t(col::ROW)?.parse().ok()?,
            key: t(col::KEY)?,
            status: number(col::STATUS).and_then(|s| s.parse().ok()),
            message_id: t(col::MESSAGE_ID)?,
            conversation_id: t(col::CONVERSATION_ID)?,
            contact_id: t(col::CONTACT_ID)?,
            http_status: number(col::HTTP_STATUS).and_then(|s| s.parse().ok()),
            attempts: number(col::ATTEMPTS).map_or(Some(0), |s| s.parse().ok())?,
            error: t(col::ERROR)?,
            trace_id: t(col::TRACE_ID)?,
            finished_at: t(col::FINISHED_AT)?,
        })
    }
}

/// What an `unknown` line's error says last: when the row's (first) request left, so that a
/// later run can read the conversation back around that time (`run --verify-unknown`), and a
/// person can look it up in HighLevel. A `sending` line's `finished_at` is that time.
pub fn with_left_at(error: &str, left_at: Option<&str>) -> String {
    match left_at.filter(|t| !t.is_empty()) {
        Some(t) => format!("{error} (request left at {t})"),
        None => error.to_owned(),
    }
}

/// The time [`with_left_at`] put at the end of an error; `None` for lines written before it
/// (or by hand).
pub fn left_at(error: &str) -> Option<jiff::Timestamp> {
    let (_, rest) = error.rsplit_once("(request left at ")?;
    rest.strip_suffix(')')?.parse().ok()
}

/// An error without the [`with_left_at`] note.
pub fn without_left_at(error: &str) -> &str {
    match error.rsplit_once(" (request left at ") {
        Some((head, rest)) if rest.ends_with(')') => head,
        _ => error,
    }
}

/// Text of a line's numbers (`row`, `http_status`, `attempts`), kept to be reused.
type Numbers = [String; 3];

/// The fields of `line` in column order, its numbers written into `numbers`.
fn fields<'a>(line: &'a ResultLine, numbers: &'a mut Numbers) -> [&'a [u8]; col::COUNT] {
    use std::fmt::Write as _;
    for s in numbers.iter_mut() {
        s.clear();
    }
    let [row, http, attempts] = numbers;
    let _ = write!(row, "{}", line.row);
    if let Some(h) = line.http_status {
        let _ = write!(http, "{h}");
    }
    if line.attempts > 0 {
        let _ = write!(attempts, "{}", line.attempts);
    }
    let mut out: [&[u8]; col::COUNT] = [b""; col::COUNT];
    out[col::ROW] = row.as_bytes();
    out[col::KEY] = line.key.as_bytes();
    out[col::STATUS] = line.status.map_or("", Status::as_str).as_bytes();
    out[col::MESSAGE_ID] = line.message_id.as_bytes();
    out[col::CONVERSATION_ID] = line.conversation_id.as_bytes();
    out[col::CONTACT_ID] = line.contact_id.as_bytes();
    out[col::HTTP_STATUS] = http.as_bytes();
    out[col::ATTEMPTS] = attempts.as_bytes();
    out[col::ERROR] = line.error.as_bytes();
    out[col::TRACE_ID] = line.trace_id.as_bytes();
    out[col::FINISHED_AT] = line.finished_at.as_bytes();
    out
}

/// Writes results lines as CSV into any writer.
pub struct ResultsWriter<W: Write> {
    csv: csv::Writer<W>,
    numbers: Numbers,
}

impl<W: Write> ResultsWriter<W> {
    /// Wraps `inner`, writing the header first.
    pub fn new(inner: W) -> csv::Result<Self> {
        let mut csv = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(inner);
        csv.write_record(HEADER)?;
        Ok(ResultsWriter {
            csv,
            numbers: Default::default(),
        })
    }

    /// Writes one line (buffered).
    pub fn write(&mut self, line: &ResultLine) -> csv::Result<()> {
        self.csv.write_record(fields(line, &mut self.numbers))
    }

    /// Flushes what is buffered and gives back the writer.
    pub fn into_inner(self) -> Result<W, std::io::Error> {
        self.csv.into_inner().map_err(|e| e.into_error())
    }
}

/// One CSV field, quoted only where needed (a quote inside doubled).
pub(crate) fn field(out: &mut Vec<u8>, value: &[u8]) {
    if value
        .iter()
        .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
    {
        out.push(b'"');
        for b in value {
            if *b == b'"' {
                out.push(b'"');
            }
            out.push(*b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(value);
    }
}

/// Encodes one results line as CSV (quoted only where needed), ending in `\n`.
pub(crate) fn encode_line(line: &ResultLine, out: &mut Vec<u8>) {
    let mut numbers = Numbers::default();
    for (i, value) in fields(line, &mut numbers).iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        field(out, value);
    }
    out.push(b'\n');
}

/// The field at `column` of a line read as bytes, if the line has it and it is UTF-8.
pub(crate) fn text(record: &csv::ByteRecord, column: usize) -> Option<&str> {
    std::str::from_utf8(record.get(column)?).ok()
}

/// The identity of a key in memory: 128 bits of its hash, so a million keys fit in a few tens
/// of MiB whatever their length.
pub fn key_id(key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key.as_bytes())
}

/// The current time as RFC 3339 UTC, for `finished_at`.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

/// A file beside the results file, named after it: `<results file name><suffix>`.
pub fn beside(results: &Path, suffix: &str) -> PathBuf {
    let mut name = results
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "results.csv".into());
    name.push(suffix);
    results.with_file_name(name)
}

/// Writes `body` to `path` whole or not at all: a temp file (`<prefix><path's name>.…`) in the
/// same folder, synced, renamed over `path`, the folder synced (where it can be opened).
///
/// A writer killed between the temp file and the rename leaves the temp file behind (for a
/// token file, a copy of the tokens): the next write of the same `path` removes those of its
/// name that are older than [`STALE_TEMP`], a time no live write takes, so a writer of the same
/// file in another process is never robbed of its temp file before its rename.
pub fn write_atomically(path: &Path, prefix: &str, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = folder_of(path);
    let prefix = temp_name_prefix(path, prefix);
    remove_stale_temps(&dir, &prefix);
    let mut temp = tempfile::Builder::new().prefix(&prefix).tempfile_in(&dir)?;
    temp.write_all(body)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// How old a temp file of [`write_atomically`] must be to count as left by a killed writer.
pub const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(600);

/// `<prefix><path's file name>.`: whose temp file it is, in its name.
fn temp_name_prefix(path: &Path, prefix: &str) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{prefix}{name}.")
}

fn remove_stale_temps(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= STALE_TEMP);
        if stale && entry.file_name().to_string_lossy().starts_with(prefix) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(
                    "removed {}, left by a write that was killed midway",
                    entry.path().display()
                ),
                Err(e) => tracing::warn!("cannot remove {}: {e}", entry.path().display()),
            }
        }
    }
}

/// The folder a file is in (`.` for a bare name), for temp files beside it: the compacted or
/// validated results file before its rename, and the sorts' spills.
pub fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a killed write left of this file goes at the next write of it, once old enough to
    /// be no live writer's; a fresh temp file, and the temp files of other files, stay.
    #[test]
    fn a_write_removes_the_stale_temp_files_of_its_own_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.json");
        let touch = |name: &str, age: std::time::Duration| {
            let file = std::fs::File::create(dir.path().join(name)).unwrap();
            file.set_modified(std::time::SystemTime::now() - age)
                .unwrap();
        };
        let old = STALE_TEMP + std::time::Duration::from_secs(1);
        touch(".lc-import-token-token.json.aB3dE", old);
        touch(
            ".lc-import-token-token.json.fresh",
            std::time::Duration::ZERO,
        );
        touch(".lc-import-token-other.json.aB3dE", old);
        write_atomically(&path, ".lc-import-token-", b"{}").unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".lc-import-token-other.json.aB3dE",
                ".lc-import-token-token.json.fresh",
                "token.json"
            ]
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
    }

    #[test]
    fn every_column_names_its_header() {
        let named = [
            (col::ROW, "row"),
            (col::KEY, "key"),
            (col::STATUS, "status"),
            (col::MESSAGE_ID, "message_id"),
            (col::CONVERSATION_ID, "conversation_id"),
            (col::CONTACT_ID, "contact_id"),
            (col::HTTP_STATUS, "http_status"),
            (col::ATTEMPTS, "attempts"),
            (col::ERROR, "error"),
            (col::TRACE_ID, "trace_id"),
            (col::FINISHED_AT, "finished_at"),
        ];
        assert_eq!(named.len(), col::COUNT);
        for (i, name) in named {
            assert_eq!(HEADER[i], name);
        }
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            Status::Valid,
            Status::Invalid,
            Status::Sending,
            Status::Sent,
            Status::Failed,
            Status::Unknown,
            Status::Duplicate,
            Status::Changed,
            Status::Skipped,
            Status::Waiting,
        ] {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
        }
        assert!("done".parse::<Status>().is_err());
    }

    #[test]
    fn the_time_a_request_left_rides_on_the_error_and_reads_back() {
        let t = "2026-12-01T15:00:00.123Z";
        let e = with_left_at("no answer within --timeout", Some(t));
        assert_eq!(
            e,
            "no answer within --timeout (request left at 2026-12-01T15:00:00.123Z)"
        );
        assert_eq!(left_at(&e), Some(t.parse().unwrap()));
        assert_eq!(without_left_at(&e), "no answer within --timeout");
        assert_eq!(left_at("an old line (with parentheses)"), None);
        assert_eq!(with_left_at("x", Some("")), "x");
        let mut csv = Vec::new();
        let line = ResultLine {
            row: 3,
            key: "k,1".into(),
            status: Some(Status::Unknown),
            attempts: 2,
            error: e.clone(),
            finished_at: t.into(),
            ..Default::default()
        };
        encode_line(&line, &mut csv);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(&csv[..]);
        let mut record = csv::ByteRecord::new();
        assert!(reader.read_byte_record(&mut record).unwrap());
        assert_eq!(ResultLine::from_record(&record), Some(line));
    }

    #[test]
    fn lines_are_quoted_csv() {
        let mut w = ResultsWriter::new(Vec::new()).unwrap();
        w.write(&ResultLine {
            row: 7,
            key: "h:ab".into(),
            status: Some(Status::Invalid),
            error: "line 8, column 3 (type): type 'a,b' is not one of SMS".into(),
            ..Default::default()
        })
        .unwrap();
        let out = String::from_utf8(w.into_inner().unwrap()).unwrap();
        assert_eq!(
            out,
            "row,key,status,message_id,conversation_id,contact_id,http_status,attempts,error,trace_id,finished_at\n\
             7,h:ab,invalid,,,,,,\"line 8, column 3 (type): type 'a,b' is not one of SMS\",,\n"
        );
    }

    #[test]
    fn journal_lines_are_the_lines_of_a_whole_file() {
        let lines = [
            ResultLine {
                row: 1,
                key: "k".into(),
                status: Some(Status::Sending),
                ..Default::default()
            },
            ResultLine {
                row: 12,
                key: "e:a,b".into(),
                status: Some(Status::Sent),
                message_id: "m\"1\"".into(),
                conversation_id: "c1".into(),
                contact_id: "ct".into(),
                http_status: Some(201),
                attempts: 2,
                error: "two\nlines\r".into(),
                trace_id: "t".into(),
                finished_at: now_rfc3339(),
            },
            ResultLine::default(),
        ];
        let mut w = ResultsWriter::new(Vec::new()).unwrap();
        let mut journal = format!("{}\n", HEADER.join(",")).into_bytes();
        for line in &lines {
            w.write(line).unwrap();
            encode_line(line, &mut journal);
        }
        assert_eq!(
            String::from_utf8(journal).unwrap(),
            String::from_utf8(w.into_inner().unwrap()).unwrap()
        );
    }
}
