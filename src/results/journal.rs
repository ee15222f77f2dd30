//! The write-ahead journal: the results file of a `run`, open and locked for the run. Opening
//! it reads what earlier runs recorded into a [`Prior`] (repairing a last line a crash cut
//! short); then every row's `sending` line is written, and on disk, before its request leaves;
//! outcome lines follow it in the same `write(2)`. Compaction at the end is in `compact`.
//!
//! What is on disk when: [`Journal::write_ahead`] writes the line to the OS and returns where it
//! ends; [`Journal::on_disk`] waits until it is on disk (`fdatasync`), with group commit: one
//! sync on the syncer thread ([`sync`](super::sync)) covers every line written before it, so
//! with 16 requests in flight one `fdatasync` serves up to 16 rows. Outcome lines are never
//! synced for their own sake: they ride on the next sync (or the compaction's). So a power cut
//! loses at most the lines written since the last sync: a lost outcome leaves its row `sending`,
//! read back `unknown` (never sent again), and a lost `sending` line is a row whose request
//! never left. A new results file is synced, with its folder, before it is used.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

use super::compact;
use super::line::{
    HEADER, ResultLine, Status, col, encode_line, folder_of, key_id, now_rfc3339, text,
    with_left_at,
};
use super::prior::{Prior, PriorEntry, PriorOutcome, conversation_tag};
use super::sync::{Syncer, sync_folder};
use crate::extsort::ExternalSort;

/// Bytes of outcome lines held before they are written whatever comes next.
const PENDING_MAX: usize = 64 * 1024;

/// The results file of a run, open and locked.
pub struct Journal {
    path: PathBuf,
    /// The file held more than its header when this run opened it.
    held_lines: bool,
    inner: Mutex<Inner>,
    /// Puts written lines on disk, on a thread of its own with its own handle to the file.
    /// Dropped last (after `drop` wrote the lines still in memory): its thread ends, and is
    /// joined, once the sync in progress returns.
    syncer: Syncer,
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
        super::compact::remove_leftovers(path);
        let mut len = file.metadata()?.len();
        let held_lines = len > HEADER.join(",").len() as u64 + 1;
        if len == 0 {
            let header = format!("{}\n", HEADER.join(","));
            (&file).write_all(header.as_bytes())?;
            len = header.len() as u64;
            // A file new to its folder survives a power cut only once the folder is synced: its
            // lines would otherwise be on disk under no name, and the next run send them again.
            file.sync_data()
                .and_then(|()| sync_folder(&folder_of(path)))
                .with_context(|| format!("cannot sync new results file {}", path.display()))?;
        }
        let syncer = Syncer::start(file.try_clone()?)
            .with_context(|| format!("cannot start syncing results file {}", path.display()))?;
        let journal = Journal {
            path: path.to_owned(),
            held_lines,
            inner: Mutex::new(Inner {
                file,
                len,
                finals: ExternalSort::new(&folder_of(path)),
                pending: Vec::with_capacity(PENDING_MAX + 512),
                pending_finals: Vec::new(),
            }),
            syncer,
        };
        let prior = journal.read_prior()?;
        Ok((journal, prior))
    }

    /// Whether the file held lines of an earlier run (or of `validate`) when this run opened it.
    pub fn held_lines(&self) -> bool {
        self.held_lines
    }

    /// The results file's path.
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
        // Rows whose last line is `sending`, to mark unknown below.
        let mut in_flight: HashMap<u128, InFlight> = HashMap::new();
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
                    let row = text(&record, col::ROW)?;
                    let key = text(&record, col::KEY)?;
                    let mut status: Status = text(&record, col::STATUS)?.parse().ok()?;
                    row.parse::<u64>().ok()?;
                    // A `sent` line without a message ID (edited by hand, or written by
                    // something else) does not show the message was stored: taken as
                    // `unknown`, so the row is neither skipped as sent nor sent again.
                    if status == Status::Sent && text(&record, col::MESSAGE_ID)?.trim().is_empty() {
                        status = Status::Unknown;
                    }
                    let conversation = text(&record, col::CONVERSATION_ID)?;
                    Some((
                        row.to_owned(),
                        key.to_owned(),
                        status,
                        conversation_tag(conversation),
                    ))
                })
                .flatten();
            // Lines are appended whole, so only the last one can be cut short: by a power cut (the
            // lines written since the last sync are lost, and a sync can land in the middle of a
            // write), by `kill -9` in a write that spans pages, or by a full disk in an older
            // version.
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
            if matches!(status, Status::Duplicate | Status::Valid | Status::Skipped) {
                continue;
            }
            let id = key_id(&key);
            if status == Status::Sending {
                let field = |c| text(&record, c).unwrap_or_default().to_owned();
                in_flight.insert(
                    id,
                    InFlight {
                        row,
                        key,
                        left_at: field(col::FINISHED_AT),
                        conversation_id: field(col::CONVERSATION_ID),
                        contact_id: field(col::CONTACT_ID),
                    },
                );
                continue;
            }
            in_flight.remove(&id);
            lines.push(PriorEntry::new(id, status, conversation, offset));
        }
        // A request that was in flight when an earlier run died: it may be stored.
        for (id, f) in in_flight {
            let line = ResultLine {
                row: f.row.parse().unwrap_or(0),
                key: f.key,
                status: Some(Status::Unknown),
                error: with_left_at(
                    "no answer was recorded: an earlier run stopped while this request was in flight, so the message may be stored",
                    Some(&f.left_at),
                ),
                conversation_id: f.conversation_id,
                contact_id: f.contact_id,
                finished_at: now_rfc3339(),
                ..Default::default()
            };
            let tag = conversation_tag(&line.conversation_id);
            let offset = inner.write_line(&line)?;
            lines.push(PriorEntry::new(id, Status::Unknown, tag, offset));
        }
        Ok(Prior::from_lines(lines))
    }

    /// Puts back what a cut last line still says (see [`CutLine`]), and says so.
    fn repair(
        &self,
        cut: CutLine,
        lines: &mut Vec<PriorEntry>,
        in_flight: &mut HashMap<u128, InFlight>,
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
            .find(|e| e.is_key(id))
            .map(PriorEntry::status);
        let repaired = match cut.status {
            // The outcome is known; only the details after it were lost.
            Some(status @ (Status::Sent | Status::Failed)) => Some(status),
            // Nothing was in flight after such a line; the row is looked at afresh.
            Some(
                Status::Invalid
                | Status::Duplicate
                | Status::Valid
                | Status::Changed
                | Status::Skipped
                | Status::Waiting,
            ) => None,
            // A row recorded sent is never attempted again: the cut line was a duplicate's.
            _ if earlier == Some(Status::Sent) => None,
            // `sending`, `unknown`, or a status cut in half: a request may have left.
            _ => {
                in_flight.insert(
                    id,
                    InFlight {
                        row: row.to_string(),
                        key: key.clone(),
                        ..InFlight::default()
                    },
                );
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
        lines.push(PriorEntry::new(id, status, 0, offset));
        Ok(())
    }

    /// Appends a row's `sending` line, written through to the OS (with any outcome lines
    /// waiting ahead of it, in one `write`) before returning, and asks for it to be synced.
    /// Returns the offset where the line ends: the request may leave only once
    /// [`on_disk`](Journal::on_disk) of it returned `Ok`.
    pub fn write_ahead(&self, line: &ResultLine) -> io::Result<u64> {
        let end = {
            let mut inner = self.inner.lock().expect("journal lock");
            let offset = inner.write_line(line)?;
            // A `sending` line stands for its row until the outcome line replaces it. Bug: when
            // the outcome could not be written (disk full), compaction dropped the row's only
            // line and the next run sent a stored message again; now it keeps `sending`, read
            // back `unknown`.
            inner.finals.push([line.row, offset, 0])?;
            inner.len
        };
        self.syncer.request(end);
        Ok(end)
    }

    /// Waits until the file is on disk up to `end` (from [`write_ahead`](Journal::write_ahead)):
    /// a power cut after this returns `Ok` cannot lose the line. An error (a sync failed) is
    /// final: the line may never reach the disk, so its request must not leave.
    pub async fn on_disk(&self, end: u64) -> io::Result<()> {
        self.syncer.reached(end).await
    }

    /// How long before a request leaves its `sending` line should be written, for it to be on
    /// disk in time (see the syncer's estimate).
    pub fn sync_lead(&self) -> std::time::Duration {
        self.syncer.lead()
    }

    /// Records a row's final line (an outcome, or invalid, duplicate…). It waits in memory
    /// until the next `sending` line is written or the next [`flush`](Journal::flush) (a run
    /// flushes every few milliseconds): one `write` per row instead of two, which was 15 % of
    /// a run's CPU. It is not synced on its own: the next sync carries it. A crash (or a power
    /// cut) before it is written (or on disk) leaves the row `sending`, read back as `unknown`,
    /// never sent twice; and since outcomes go out ahead of the next `sending` line, rows left
    /// that way are never more than the requests that were in flight when it was written (or
    /// at the last sync).
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

    /// The line an earlier run wrote at `offset` (a [`PriorOutcome`]'s), read back whole.
    pub fn line_at(&self, offset: u64) -> Result<ResultLine> {
        use std::io::{Seek, SeekFrom};
        // A handle of its own: a clone would share (and move) the journal's file position.
        self.flush()?;
        let mut file = File::open(&self.path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(BufReader::new(file));
        let mut record = csv::ByteRecord::new();
        let read = reader.read_byte_record(&mut record);
        match read {
            Ok(true) => ResultLine::from_record(&record),
            _ => None,
        }
        .with_context(|| {
            format!(
                "results file {}: no whole line at byte {offset}",
                self.path.display()
            )
        })
    }

    /// The message IDs of every `sent` line of the file in one of `conversations`: messages
    /// that rows of this file own, so that read-back never takes one for another row's.
    pub fn sent_ids(
        &self,
        conversations: &std::collections::HashSet<String>,
    ) -> Result<std::collections::HashSet<String>> {
        self.flush()?;
        let file = File::open(&self.path)?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(BufReader::with_capacity(256 * 1024, file));
        let mut record = csv::ByteRecord::new();
        let mut ids = std::collections::HashSet::new();
        while reader
            .read_byte_record(&mut record)
            .with_context(|| format!("reading results file {}", self.path.display()))?
        {
            if text(&record, col::STATUS) == Some(Status::Sent.as_str())
                && let (Some(c), Some(id)) = (
                    text(&record, col::CONVERSATION_ID),
                    text(&record, col::MESSAGE_ID),
                )
                && conversations.contains(c)
                && !id.is_empty()
            {
                ids.insert(id.to_owned());
            }
        }
        Ok(ids)
    }

    /// Rewrites the file to one line per row in input order, then lines of earlier runs whose
    /// keys this input no longer has. Atomic: a crash leaves the old file or the new one.
    pub fn compact(&self, prior: &Prior) -> Result<()> {
        let mut inner = self.inner.lock().expect("journal lock");
        inner
            .flush()
            .with_context(|| compact::context(&self.path))?;
        let finals =
            std::mem::replace(&mut inner.finals, ExternalSort::new(&folder_of(&self.path)));
        // The lock stays on the old (now replaced) file until the journal is dropped.
        compact::rewrite(&self.path, &inner.file, finals, prior)
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

/// A row whose last line is `sending`: what that line says, for the `unknown` line it becomes.
#[derive(Default)]
struct InFlight {
    row: String,
    key: String,
    /// The `sending` line's `finished_at`: when the request left (empty in older files).
    left_at: String,
    conversation_id: String,
    contact_id: String,
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
        let field = |i: usize| (record.len() > i + 1).then(|| text(record, i)).flatten();
        let row_key = field(col::ROW)
            .and_then(|r| r.parse::<u64>().ok())
            .zip(field(col::KEY).filter(|k| !k.is_empty()).map(str::to_owned));
        let status = field(col::STATUS).and_then(|s| s.parse().ok());
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
