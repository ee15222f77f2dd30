//! The results file: one CSV line per input row saying what became of it (DESIGN "Results
//! journal and resume"). `validate` writes it once; `run` keeps it as a write-ahead journal:
//!
//! - [`Journal::open`] locks the file for the run and reads what earlier runs recorded into a
//!   [`Prior`]: per row key, the last status and where its line is. A `sending` line with no
//!   outcome after it (a crash or `kill -9` mid-request) becomes `unknown` at once.
//! - [`Journal::write_ahead`] writes a row's `sending` line with one `write(2)` before its
//!   request leaves; [`Journal::record`] keeps an outcome line in memory until it can go out in
//!   that same `write` with the next `sending` line (or a flush within 10 ms): outcomes always
//!   reach the file ahead of the next request.
//! - [`Journal::compact`] rewrites the file atomically (temp file in the same folder, fsync,
//!   rename) to one line per row in input order, keeping lines of earlier runs whose rows are no
//!   longer in the input after them, so no record of a sent message is ever dropped.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::extsort::ExternalSort;

/// The header every results file starts with.
pub const HEADER: [&str; 11] = [
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
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Valid => "valid",
            Status::Invalid => "invalid",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Failed => "failed",
            Status::Unknown => "unknown",
            Status::Duplicate => "duplicate",
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
            other => return Err(format!("'{other}' is not a status")),
        })
    }
}

/// One line of the results file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultLine {
    pub row: u64,
    pub key: String,
    pub status: Option<Status>,
    pub message_id: String,
    pub conversation_id: String,
    pub contact_id: String,
    pub http_status: Option<u16>,
    pub attempts: u32,
    pub error: String,
    pub trace_id: String,
    pub finished_at: String,
}

/// Writes results lines as CSV into any writer.
pub struct ResultsWriter<W: Write> {
    csv: csv::Writer<W>,
    itoa: [String; 3],
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
            itoa: Default::default(),
        })
    }

    pub fn write(&mut self, line: &ResultLine) -> csv::Result<()> {
        use std::fmt::Write as _;
        for s in &mut self.itoa {
            s.clear();
        }
        let [row, http, attempts] = &mut self.itoa;
        let _ = write!(row, "{}", line.row);
        if let Some(h) = line.http_status {
            let _ = write!(http, "{h}");
        }
        if line.attempts > 0 {
            let _ = write!(attempts, "{}", line.attempts);
        }
        self.csv.write_record([
            row.as_str(),
            &line.key,
            line.status.map_or("", Status::as_str),
            &line.message_id,
            &line.conversation_id,
            &line.contact_id,
            http.as_str(),
            attempts.as_str(),
            &line.error,
            &line.trace_id,
            &line.finished_at,
        ])
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.csv.flush()
    }

    pub fn into_inner(self) -> Result<W, std::io::Error> {
        self.csv.into_inner().map_err(|e| e.into_error())
    }
}

/// The identity of a key in memory: 128 bits of its hash, so a million keys fit in a few tens
/// of MiB whatever their length.
pub fn key_id(key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key.as_bytes())
}

/// What earlier runs recorded: per key that ended `sent` or `unknown` (the outcomes that change
/// what this run does), where its line is. A sorted array of 24-byte entries, looked up by
/// binary search: a million done keys take 24 MiB, where a hash map would take nearly three
/// times that at its peak.
#[derive(Debug, Default)]
pub struct Prior {
    /// Sorted by key.
    entries: Vec<PriorEntry>,
    /// One bit per entry: its key is in this run's input (its line goes with the row).
    matched: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PriorEntry {
    key: [u64; 2],
    /// Status (2 bits), conversation tag (22 bits) and the line's offset (40 bits: results
    /// files up to 1 TiB), see `pack`.
    packed: u64,
}

const STATUS_SHIFT: u32 = 62;
const TAG_SHIFT: u32 = 40;
const TAG_BITS: u32 = STATUS_SHIFT - TAG_SHIFT;
const OFFSET_MASK: u64 = (1 << TAG_SHIFT) - 1;

fn pack(status: Status, tag: u32, offset: u64) -> u64 {
    let s = match status {
        Status::Sent => 0,
        Status::Unknown => 1,
        _ => 2,
    };
    (s << STATUS_SHIFT)
        | (u64::from(tag & ((1 << TAG_BITS) - 1)) << TAG_SHIFT)
        | (offset & OFFSET_MASK)
}

fn unpack(packed: u64) -> (Status, u32, u64) {
    let status = match packed >> STATUS_SHIFT {
        0 => Status::Sent,
        1 => Status::Unknown,
        _ => Status::Failed,
    };
    let tag = ((packed >> TAG_SHIFT) & ((1 << TAG_BITS) - 1)) as u32;
    (status, tag, packed & OFFSET_MASK)
}

/// A 22-bit tag of a conversation ID (0 for none), to tell a row that was sent from a different
/// row with the same key, as in a results file of another input, at no cost in memory (it
/// shares the prior entry's word with the offset). Equal IDs always have equal tags; two
/// different IDs share one with a chance of one in four million.
pub fn conversation_tag(conversation_id: &str) -> u32 {
    if conversation_id.is_empty() {
        0
    } else {
        ((xxhash_rust::xxh3::xxh3_64(conversation_id.as_bytes()) as u32) & ((1 << TAG_BITS) - 1))
            .max(1)
    }
}

fn split_id(id: u128) -> [u64; 2] {
    [(id >> 64) as u64, id as u64]
}

/// What an earlier run said about a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriorOutcome {
    pub status: Status,
    /// Where its line is, for [`Journal::keep_prior`].
    pub offset: u64,
    /// [`conversation_tag`] of the recorded `conversation_id`; 0 when none was recorded.
    pub conversation: u32,
}

impl Prior {
    /// From every outcome line read, in file order: the last line of each key wins, and only
    /// keys that ended `sent` or `unknown` are kept.
    fn from_lines(mut lines: Vec<PriorEntry>) -> Prior {
        // Stable by key, so within a key the file order (the offset) decides: last wins.
        lines.sort_by_key(|e| (e.key, e.packed & OFFSET_MASK));
        let mut entries: Vec<PriorEntry> = Vec::with_capacity(lines.len());
        for e in lines {
            match entries.last_mut() {
                Some(last) if last.key == e.key => *last = e,
                _ => entries.push(e),
            }
        }
        entries.retain(|e| matches!(unpack(e.packed).0, Status::Sent | Status::Unknown));
        entries.shrink_to_fit();
        let matched = vec![0; entries.len().div_ceil(64)];
        Prior { entries, matched }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, key: &str) -> Option<usize> {
        let id = split_id(key_id(key));
        self.entries.binary_search_by_key(&id, |e| e.key).ok()
    }

    /// The earlier status of `key`, without marking it seen.
    pub fn status(&self, key: &str) -> Option<Status> {
        self.get(key).map(|p| p.status)
    }

    /// The earlier outcome of `key`, without marking it seen (for the pass before sending).
    pub fn get(&self, key: &str) -> Option<PriorOutcome> {
        Some(self.outcome(self.find(key)?))
    }

    fn outcome(&self, i: usize) -> PriorOutcome {
        let (status, conversation, offset) = unpack(self.entries[i].packed);
        PriorOutcome {
            status,
            offset,
            conversation,
        }
    }

    /// The earlier outcome of `key`, marking it as present in this input.
    pub fn take(&mut self, key: &str) -> Option<PriorOutcome> {
        let i = self.find(key)?;
        self.matched[i / 64] |= 1 << (i % 64);
        Some(self.outcome(i))
    }

    /// How many keys end in `status`.
    pub fn count(&self, status: Status) -> usize {
        self.entries
            .iter()
            .filter(|e| unpack(e.packed).0 == status)
            .count()
    }

    /// Offsets of the lines whose keys this run's input did not have.
    fn unmatched(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter(|(i, _)| self.matched[i / 64] & (1 << (i % 64)) == 0)
            .map(|(_, e)| e.packed & OFFSET_MASK)
    }
}

/// Bytes of outcome lines held before they are written whatever comes next.
const PENDING_MAX: usize = 64 * 1024;

/// The results file of a run, open and locked.
pub struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Opened for append: every write lands at the end. Holds the run's lock until dropped.
    file: File,
    len: u64,
    /// `[row, offset of its final line, 0]` for every row that has one, sorted on disk at
    /// compaction: no per-row memory, whatever the size of the input.
    finals: ExternalSort,
    /// Outcome lines encoded but not yet written: they go out ahead of the next line written
    /// (a `sending` line, in one `write`), or at the next [`Journal::flush`].
    pending: Vec<u8>,
    /// `[row, offset, 0]` of the pending lines, for `finals` once they are written.
    pending_finals: Vec<[u64; 3]>,
}

impl Journal {
    /// Opens (or creates) `path`, locks it for this run, and reads what it already holds.
    pub fn open(path: &Path) -> Result<(Journal, Prior)> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("cannot open results file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "results file {} is in use by another lc-import run: wait for it to finish (two runs on one file could send a row twice)",
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e)
                    .with_context(|| format!("cannot lock results file {}", path.display()));
            }
        }
        let mut len = file.metadata()?.len();
        if len == 0 {
            let header = format!("{}\n", HEADER.join(","));
            (&file).write_all(header.as_bytes())?;
            len = header.len() as u64;
        }
        let journal = Journal {
            path: path.to_owned(),
            inner: Mutex::new(Inner {
                file,
                len,
                finals: ExternalSort::new(&folder_of(path)),
                pending: Vec::with_capacity(PENDING_MAX + 512),
                pending_finals: Vec::new(),
            }),
        };
        let prior = journal.read_prior()?;
        Ok((journal, prior))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_prior(&self) -> Result<Prior> {
        let mut inner = self.inner.lock().expect("journal lock");
        let len = inner.len;
        let ends_with_newline = last_byte(&inner.file, len)? == Some(b'\n');
        let file = inner.file.try_clone()?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(BufReader::with_capacity(256 * 1024, file));
        let mut lines: Vec<PriorEntry> = Vec::new();
        let mut record = csv::ByteRecord::new();
        let mut first = true;
        // Rows whose last line is `sending`: (row, key) to mark unknown below.
        let mut in_flight: HashMap<u128, (String, String)> = HashMap::new();
        loop {
            let offset = reader.position().byte();
            match reader.read_byte_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("reading results file {}", self.path.display()));
                }
            }
            let line = record.position().map_or(0, |p| p.line());
            if first {
                first = false;
                let header: Vec<&[u8]> = record.iter().collect();
                let want: Vec<&[u8]> = HEADER.iter().map(|h| h.as_bytes()).collect();
                if header != want {
                    bail!(
                        "{} is not a results file of lc-import (its first line is not the results header {}): give another --results path",
                        self.path.display(),
                        HEADER.join(",")
                    );
                }
                continue;
            }
            let parsed = (record.len() == HEADER.len())
                .then(|| {
                    let row = std::str::from_utf8(&record[0]).ok()?;
                    let key = std::str::from_utf8(&record[1]).ok()?;
                    let status: Status = std::str::from_utf8(&record[2]).ok()?.parse().ok()?;
                    row.parse::<u64>().ok()?;
                    let conversation = std::str::from_utf8(&record[4]).ok()?;
                    Some((
                        row.to_owned(),
                        key.to_owned(),
                        status,
                        conversation_tag(conversation),
                    ))
                })
                .flatten();
            // Lines are appended whole, so only the last one can be cut short: by a crash of the
            // machine (lines reach the OS, not the disk, before a request leaves) or a full disk
            // in an older version.
            let is_last = reader.position().byte() >= len;
            if is_last && (!ends_with_newline || parsed.is_none()) {
                let cut = CutLine::read(&record, line);
                // Off with it: the lines this run appends must not run on from it.
                inner.file.set_len(offset).with_context(|| {
                    format!("cutting the broken last line off {}", self.path.display())
                })?;
                inner.len = offset;
                self.repair(cut, &mut lines, &mut in_flight, &mut inner)?;
                break;
            }
            let Some((row, key, status, conversation)) = parsed else {
                // Not something lc-import writes: it may hide a row that was sent.
                bail!(
                    "results file {}: line {line} cannot be read (it does not have the {} fields of a results line, or its status is unknown): it may record a message already sent, so the run does not start. Fix or delete that line, then run again",
                    self.path.display(),
                    HEADER.len()
                );
            };
            // A duplicate line says nothing about its key: the first row with it does.
            if matches!(status, Status::Duplicate | Status::Valid) {
                continue;
            }
            let id = key_id(&key);
            if status == Status::Sending {
                in_flight.insert(id, (row, key));
                continue;
            }
            in_flight.remove(&id);
            lines.push(PriorEntry {
                key: split_id(id),
                packed: pack(status, conversation, offset),
            });
        }
        // A request that was in flight when an earlier run died: it may be stored.
        for (id, (row, key)) in in_flight {
            let line = ResultLine {
                row: row.parse().unwrap_or(0),
                key,
                status: Some(Status::Unknown),
                error: "no answer was recorded: an earlier run stopped while this request was in flight, so the message may be stored".into(),
                finished_at: now_rfc3339(),
                ..Default::default()
            };
            let offset = inner.write_line(&line)?;
            lines.push(PriorEntry {
                key: split_id(id),
                packed: pack(Status::Unknown, 0, offset),
            });
        }
        Ok(Prior::from_lines(lines))
    }

    /// Puts back what a cut last line still says (see [`CutLine`]), and says so.
    fn repair(
        &self,
        cut: CutLine,
        lines: &mut Vec<PriorEntry>,
        in_flight: &mut HashMap<u128, (String, String)>,
        inner: &mut Inner,
    ) -> Result<()> {
        let path = self.path.display();
        let Some((row, key)) = cut.row_key else {
            tracing::warn!(
                "{path}: its last line (line {}) was cut short (a crash?) before its row key, and is dropped: if a request for that row was in flight it may be sent again",
                cut.line
            );
            return Ok(());
        };
        let id = key_id(&key);
        // The key's last complete outcome before the cut line (lines are in file order).
        let earlier = lines
            .iter()
            .rev()
            .find(|e| e.key == split_id(id))
            .map(|e| unpack(e.packed).0);
        let repaired = match cut.status {
            // The outcome is known; only the details after it were lost.
            Some(status @ (Status::Sent | Status::Failed)) => Some(status),
            // Nothing was in flight after such a line; the row is looked at afresh.
            Some(Status::Invalid | Status::Duplicate | Status::Valid) => None,
            // A row recorded sent is never attempted again: the cut line was a duplicate's.
            _ if earlier == Some(Status::Sent) => None,
            // `sending`, `unknown`, or a status cut in half: a request may have left.
            _ => {
                in_flight.insert(id, (row.to_string(), key.clone()));
                tracing::warn!(
                    "{path}: its last line (line {}) was cut short (a crash?); row {row} (key {key}) may have been sent, so it is recorded unknown",
                    cut.line
                );
                return Ok(());
            }
        };
        tracing::warn!(
            "{path}: its last line (line {}) was cut short (a crash?); row {row} (key {key}) is recorded {} again from what was left",
            cut.line,
            repaired.map_or("as not done", Status::as_str)
        );
        let Some(status) = repaired else {
            return Ok(());
        };
        in_flight.remove(&id);
        let line = ResultLine {
            row,
            key,
            status: Some(status),
            error: "the rest of this line was lost: the results file was cut short here by a crash"
                .into(),
            finished_at: now_rfc3339(),
            ..Default::default()
        };
        let offset = inner.write_line(&line)?;
        lines.push(PriorEntry {
            key: split_id(id),
            packed: pack(status, 0, offset),
        });
        Ok(())
    }

    /// Appends a row's `sending` line, written through to the OS (with any outcome lines
    /// waiting ahead of it, in one `write`) before returning: the request may leave only
    /// after this returns `Ok`.
    pub fn write_ahead(&self, line: &ResultLine) -> io::Result<()> {
        let mut inner = self.inner.lock().expect("journal lock");
        let offset = inner.write_line(line)?;
        // A `sending` line stands for its row until the outcome line replaces it. Bug: when the
        // outcome could not be written (disk full), compaction dropped the row's only line and
        // the next run sent a stored message again; now it keeps `sending`, read back `unknown`.
        inner.finals.push([line.row, offset, 0])
    }

    /// Records a row's final line (an outcome, or invalid, duplicate…). It waits in memory
    /// until the next `sending` line is written or the next [`flush`](Journal::flush) (a run
    /// flushes every few milliseconds): one `write` per row instead of two, which was 15 % of
    /// a run's CPU. A crash before it is written leaves the row `sending`, read back as
    /// `unknown`, never sent twice; and since outcomes go out ahead of the next `sending` line,
    /// rows left that way are never more than the requests that were in flight.
    pub fn record(&self, line: &ResultLine) -> io::Result<()> {
        let mut inner = self.inner.lock().expect("journal lock");
        let offset = inner.len + inner.pending.len() as u64;
        encode_line(line, &mut inner.pending);
        inner.pending_finals.push([line.row, offset, 0]);
        if inner.pending.len() >= PENDING_MAX {
            inner.flush()?;
        }
        Ok(())
    }

    /// Writes the lines waiting in memory.
    pub fn flush(&self) -> io::Result<()> {
        self.inner.lock().expect("journal lock").flush()
    }

    /// Writes the lines waiting in memory before the process exits at once, waiting at most
    /// `limit` for the lock (a compaction holding it has nothing waiting).
    pub fn flush_before_exit(&self, limit: std::time::Duration) {
        let until = std::time::Instant::now() + limit;
        loop {
            match self.inner.try_lock() {
                Ok(mut inner) => {
                    let _ = inner.flush();
                    return;
                }
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    let _ = p.into_inner().flush();
                    return;
                }
                Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(std::sync::TryLockError::WouldBlock) => return,
            }
        }
    }

    /// The row keeps the line an earlier run wrote (a row sent earlier, or left unknown).
    pub fn keep_prior(&self, row: u64, prior: PriorOutcome) -> io::Result<()> {
        let mut inner = self.inner.lock().expect("journal lock");
        inner.finals.push([row, prior.offset, 0])
    }

    /// Rewrites the file to one line per row in input order, then lines of earlier runs whose
    /// keys this input no longer has. Atomic: a crash leaves the old file or the new one.
    pub fn compact(&self, prior: &Prior) -> Result<()> {
        let mut inner = self.inner.lock().expect("journal lock");
        let context = || format!("compacting results file {}", self.path.display());
        inner.flush().with_context(context)?;
        let dir = folder_of(&self.path);
        let finals = std::mem::replace(&mut inner.finals, ExternalSort::new(&dir))
            .finish()
            .with_context(context)?;
        let temp = tempfile::Builder::new()
            .prefix(".lc-import-results")
            .tempfile_in(&dir)
            .with_context(context)?;
        let mut out = BufWriter::with_capacity(256 * 1024, temp);
        out.write_all(HEADER.join(",").as_bytes())
            .with_context(context)?;
        out.write_all(b"\n").with_context(context)?;
        let mut lines = LineReader::new(inner.file.try_clone().with_context(context)?);
        // Sorted by row, then offset: of two lines for one row, the later written wins.
        let mut finals = finals.peekable();
        while let Some(next) = finals.next() {
            let [row, mut offset, _] = next.with_context(context)?;
            while let Some(Ok([r, o, _])) = finals.peek()
                && *r == row
            {
                offset = *o;
                finals.next();
            }
            lines
                .write_with_row(offset, Some(row), &mut out)
                .with_context(context)?;
        }
        let mut unmatched: Vec<u64> = prior.unmatched().collect();
        unmatched.sort_unstable();
        for offset in unmatched {
            lines
                .write_with_row(offset, None, &mut out)
                .with_context(context)?;
        }
        let temp = out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(context)?;
        temp.as_file().sync_all().with_context(context)?;
        temp.persist(&self.path).with_context(context)?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        // The lock stays on the old (now replaced) file until the journal is dropped.
        Ok(())
    }
}

impl Drop for Journal {
    /// Lines still in memory are written (a run that ends on an error still records them).
    fn drop(&mut self) {
        let inner = match self.inner.get_mut() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        };
        let _ = inner.flush();
    }
}

/// Reads raw journal lines at given offsets. Compaction visits lines in row order, which is
/// nearly the order they were written: rows finish a little out of order (concurrency), and a
/// busy conversation's rows are written long after the rows around them. So the reader keeps a
/// few windows of the file, each reloaded a little behind the offset that missed: a jump back by
/// a few lines, or between two places in the file, costs no system call. (A single buffer
/// re-read 256 KiB at every step back: 10 % of a 300k-row run's CPU.)
struct LineReader {
    file: File,
    windows: Vec<Window>,
    clock: u64,
}

struct Window {
    /// File offset of `data[0]`.
    start: u64,
    data: Vec<u8>,
    last_used: u64,
}

impl LineReader {
    const WINDOWS: usize = 8;
    const WINDOW: usize = 128 * 1024;
    /// How far behind a missed offset a window starts.
    const BEHIND: u64 = 32 * 1024;

    fn new(file: File) -> LineReader {
        LineReader {
            file,
            windows: Vec::new(),
            clock: 0,
        }
    }

    /// Copies the line at `offset` to `out`, with its row number replaced by `row` if given.
    /// The row is the first field and never quoted, so no CSV parsing is needed.
    fn write_with_row(
        &mut self,
        offset: u64,
        row: Option<u64>,
        out: &mut impl Write,
    ) -> io::Result<()> {
        let line = self.line_at(offset)?;
        match (row, line.iter().position(|b| *b == b',')) {
            (Some(row), Some(comma)) => {
                write!(out, "{row}")?;
                out.write_all(&line[comma..])
            }
            _ => out.write_all(line),
        }
    }

    /// The record at `offset`, up to and including its line end outside quotes.
    fn line_at(&mut self, offset: u64) -> io::Result<&[u8]> {
        self.clock += 1;
        let hit = self
            .windows
            .iter()
            .enumerate()
            .find_map(|(i, w)| Some((i, w.line(offset)?)));
        let (index, line) = match hit {
            Some(hit) => hit,
            None => self.load(offset)?,
        };
        let window = &mut self.windows[index];
        window.last_used = self.clock;
        Ok(&window.data[line])
    }

    /// Loads a window holding the whole line at `offset` in place of the least recently used.
    fn load(&mut self, offset: u64) -> io::Result<(usize, std::ops::Range<usize>)> {
        let index = if self.windows.len() < Self::WINDOWS {
            self.windows.push(Window {
                start: 0,
                data: Vec::with_capacity(Self::WINDOW),
                last_used: 0,
            });
            self.windows.len() - 1
        } else {
            (0..self.windows.len())
                .min_by_key(|i| self.windows[*i].last_used)
                .expect("there are windows")
        };
        let window = &mut self.windows[index];
        window.start = offset.saturating_sub(Self::BEHIND);
        window.data.clear();
        // A window grown for one long line goes back to its size.
        window.data.shrink_to(Self::WINDOW);
        loop {
            // Read until the line ends; a line longer than the window grows it.
            let len = window.data.len();
            let want = (len + Self::WINDOW).max(window.data.capacity());
            window.data.resize(want, 0);
            let read = window.file_read(&self.file, len)?;
            window.data.truncate(len + read);
            if let Some(line) = window.line(offset) {
                return Ok((index, line));
            }
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the line at byte {offset} is cut short"),
                ));
            }
        }
    }
}

impl Window {
    /// Where the line at `offset` is in `data`, if all of it is there.
    fn line(&self, offset: u64) -> Option<std::ops::Range<usize>> {
        let from = usize::try_from(offset.checked_sub(self.start)?).ok()?;
        let end = line_end(self.data.get(from..)?)?;
        Some(from..from + end)
    }

    /// Reads into `data[len..]` from the file at the matching offset; returns the bytes read.
    fn file_read(&mut self, file: &File, len: usize) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        loop {
            match file.read_at(&mut self.data[len..], self.start + len as u64) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

/// The length of the record at the start of `bytes` up to and including its line end outside
/// quotes ("" inside a quoted field toggles twice), if the line end is there.
fn line_end(bytes: &[u8]) -> Option<usize> {
    let mut quoted = false;
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// What can still be read from a last line cut short: each field is whole only when a comma
/// follows it.
struct CutLine {
    line: u64,
    row_key: Option<(u64, String)>,
    status: Option<Status>,
}

impl CutLine {
    fn read(record: &csv::ByteRecord, line: u64) -> CutLine {
        let field = |i: usize| {
            (record.len() > i + 1)
                .then(|| std::str::from_utf8(&record[i]).ok())
                .flatten()
        };
        let row_key = field(0)
            .and_then(|r| r.parse::<u64>().ok())
            .zip(field(1).filter(|k| !k.is_empty()).map(str::to_owned));
        let status = field(2).and_then(|s| s.parse().ok());
        CutLine {
            line,
            row_key,
            status,
        }
    }
}

/// The last byte of `file` (of length `len`), read without moving the shared file position.
fn last_byte(file: &File, len: u64) -> io::Result<Option<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    if len == 0 {
        return Ok(None);
    }
    let mut file = file.try_clone()?;
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut byte)?;
    // The reader that follows starts from this shared position: put it back at the start.
    file.seek(SeekFrom::Start(0))?;
    Ok(Some(byte[0]))
}

impl Inner {
    /// Writes `line` now, after the pending lines; returns its offset.
    fn write_line(&mut self, line: &ResultLine) -> io::Result<u64> {
        let before = self.pending.len();
        let offset = self.len + before as u64;
        encode_line(line, &mut self.pending);
        match self.flush() {
            Ok(()) => Ok(offset),
            Err(e) => {
                // When the write failed, the pending lines stay for the next one and this line
                // is dropped (its request must not leave). When only the sort's spill failed,
                // the lines are written and the run stops on the error.
                if self.pending.len() > before {
                    self.pending.truncate(before);
                }
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = (&self.file).write_all(&self.pending) {
            // A full disk can take part of the lines: cut it off again, or the next line would
            // run on from it and both be unreadable on resume.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += self.pending.len() as u64;
        self.pending.clear();
        // Every entry goes in (a push keeps its record even when a spill to disk fails), and
        // the first error is reported.
        let mut pushed = Ok(());
        for entry in self.pending_finals.drain(..) {
            if let Err(e) = self.finals.push(entry)
                && pushed.is_ok()
            {
                pushed = Err(e);
            }
        }
        pushed
    }
}

/// The folder a file is in (`.` for a bare name), for temp files beside it.
pub fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Encodes one results line as CSV (quoted only where needed), ending in `\n`.
fn encode_line(line: &ResultLine, out: &mut Vec<u8>) {
    fn field(out: &mut Vec<u8>, value: &[u8]) {
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
    let number = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
    let (row, http, attempts) = (
        number(Some(line.row)),
        number(line.http_status.map(u64::from)),
        number((line.attempts > 0).then_some(u64::from(line.attempts))),
    );
    let fields: [&[u8]; 11] = [
        row.as_bytes(),
        line.key.as_bytes(),
        line.status.map_or("", Status::as_str).as_bytes(),
        line.message_id.as_bytes(),
        line.conversation_id.as_bytes(),
        line.contact_id.as_bytes(),
        http.as_bytes(),
        attempts.as_bytes(),
        line.error.as_bytes(),
        line.trace_id.as_bytes(),
        line.finished_at.as_bytes(),
    ];
    for (i, value) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        field(out, value);
    }
    out.push(b'\n');
}

/// The current time as RFC 3339 UTC, for `finished_at`.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prior_keeps_the_last_outcome_of_sent_and_unknown_keys() {
        let e = |key: &str, status, offset| PriorEntry {
            key: split_id(key_id(key)),
            packed: pack(status, conversation_tag("c1"), offset),
        };
        let mut prior = Prior::from_lines(vec![
            e("a", Status::Failed, 10),
            e("b", Status::Sent, 20),
            e("a", Status::Sent, 30),
            e("c", Status::Sent, 40),
            e("c", Status::Failed, 50),
            e("d", Status::Unknown, 60),
            e("e", Status::Invalid, 70),
        ]);
        assert_eq!(
            prior.len(),
            3,
            "a, b sent and d unknown; c and e end failed/invalid"
        );
        assert_eq!(prior.status("a"), Some(Status::Sent));
        assert_eq!(prior.status("c"), None);
        assert_eq!(
            prior.take("d"),
            Some(PriorOutcome {
                status: Status::Unknown,
                offset: 60,
                conversation: conversation_tag("c1"),
            })
        );
        assert_eq!(prior.status("zzz"), None);
        assert_eq!(
            prior.take("a"),
            Some(PriorOutcome {
                status: Status::Sent,
                offset: 30,
                conversation: conversation_tag("c1"),
            })
        );
        assert_eq!(
            (prior.count(Status::Sent), prior.count(Status::Unknown)),
            (2, 1)
        );
        let mut unmatched: Vec<u64> = prior.unmatched().collect();
        unmatched.sort();
        assert_eq!(unmatched, vec![20], "a and d were taken");
        assert_eq!(
            unpack(pack(Status::Unknown, 5, OFFSET_MASK)),
            (Status::Unknown, 5, OFFSET_MASK)
        );
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
        ] {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
        }
        assert!("done".parse::<Status>().is_err());
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
    fn line_reader_finds_every_line_in_any_order() {
        // Lines of many sizes: one longer than a window, quoted line ends, quotes doubled.
        let mut file = tempfile::tempfile().unwrap();
        let mut lines: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut offset = 0u64;
        for i in 0..20_000u64 {
            let body = match i % 997 {
                0 => format!("{i},k,\"{}\"\n", "x".repeat(LineReader::WINDOW * 2 + 5)),
                1 => format!("{i},k,\"two\nlines, \"\"quoted\"\"\",end\n"),
                _ => format!("{i},key-{i},sent,{}\n", "m".repeat((i % 300) as usize)),
            };
            file.write_all(body.as_bytes()).unwrap();
            lines.push((offset, body.into_bytes()));
            offset += lines.last().unwrap().1.len() as u64;
        }
        // Forward with small steps back (rows finishing out of order), then two places in
        // turn (a busy conversation written late), then at random.
        let n = lines.len();
        let mut order: Vec<usize> = (0..n).map(|i| i ^ 5).filter(|i| *i < n).collect();
        order.extend((0..n / 2).flat_map(|i| [i, n / 2 + i]));
        let mut rng = fastrand::Rng::with_seed(7);
        order.extend((0..5_000).map(|_| rng.usize(..n)));
        let mut reader = LineReader::new(file);
        for i in order {
            let (offset, line) = &lines[i];
            let mut out = Vec::new();
            reader
                .write_with_row(*offset, Some(i as u64 + 1), &mut out)
                .unwrap();
            let comma = line.iter().position(|b| *b == b',').unwrap();
            assert_eq!(
                out[..out.len() - (line.len() - comma)],
                *format!("{}", i + 1).as_bytes()
            );
            assert_eq!(
                out[out.len() - (line.len() - comma)..],
                line[comma..],
                "line {i}"
            );
        }
        let mut out = Vec::new();
        let err = reader
            .write_with_row(offset + 1, None, &mut out)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
