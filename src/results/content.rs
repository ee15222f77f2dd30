//! The content index: for rows keyed by content (no key column), what each row sent looked like
//! apart from its text, so that a row edited after it was sent is not sent again as a new row.
//!
//! A content key (`h:` and a hash of every cell) changes when any cell is edited, so to the
//! resume logic a fixed typo is a new row. Beside the results file, `<results>.content.csv`
//! keeps one line per row sent, appended as soon as its outcome is `sent`:
//!
//! ```text
//! fingerprint,key,row,message_id
//! 3f0c9a1b2d4e5f60,h:0123…,8,ABC
//! ```
//!
//! `fingerprint` ([`fingerprint`]) hashes the row's conversation (or contact), direction, type
//! and date. Before sending, every key of the input is marked; an entry whose key the input no
//! longer has is an *earlier version*, and a new row with its fingerprint is taken for that row
//! edited ([`ContentIndex::earlier_version`]). The file is not synced: a line lost in a crash
//! only means the old behaviour (the edited row is sent as new). Lines that cannot be read (cut
//! short by a crash) are skipped.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

use super::line::{field, key_id};

/// The header every content index starts with.
pub const HEADER: [&str; 4] = ["fingerprint", "key", "row", "message_id"];

/// The `<results>.content.csv` path for a results file.
pub fn path_for(results: &Path) -> PathBuf {
    crate::results::line::beside(results, ".content.csv")
}

/// A row sent earlier, as the content index recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Earlier {
    /// The input row it was.
    pub row: u64,
    /// The message ID the API gave it.
    pub message_id: String,
}

/// One line of the content index while the input is read: 32 bytes, whatever the length of its
/// key and message ID (those are read back only for the rows gone from the input).
#[derive(Clone, Copy, Debug)]
struct Entry {
    key: [u64; 2],
    fingerprint: u64,
    /// Where its line starts in the file.
    offset: u64,
}

fn split_id(id: u128) -> [u64; 2] {
    [(id >> 64) as u64, id as u64]
}

/// The rows sent earlier, read from the content index at the start of a run, while the pass
/// before sending marks the keys its input has ([`ContentIndex::mark_present`]).
#[derive(Debug, Default)]
pub struct ContentIndex {
    /// Sorted by key.
    entries: Vec<Entry>,
    /// One bit per entry: its key is in this run's input.
    present: Vec<u64>,
}

impl ContentIndex {
    fn from_entries(mut entries: Vec<Entry>) -> ContentIndex {
        entries.sort_unstable_by_key(|e| (e.key, e.offset));
        entries.shrink_to_fit();
        let present = vec![0; entries.len().div_ceil(64)];
        ContentIndex { entries, present }
    }

    /// How many rows sent earlier it records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it records no row.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Marks `key` as a key of this run's input (the pass before sending calls it for every
    /// row): its entries are then no earlier version of another row.
    pub fn mark_present(&mut self, key: &str) {
        let id = split_id(key_id(key));
        let from = self.entries.partition_point(|e| e.key < id);
        for i in (from..self.entries.len()).take_while(|&i| self.entries[i].key == id) {
            self.present[i / 64] |= 1 << (i % 64);
        }
    }

    /// Once every key of the input is marked: the rows sent earlier whose keys the input no
    /// longer has, with their row and message ID read back from `log`'s file.
    pub fn earlier_versions(self, log: &ContentLog) -> Result<EarlierVersions> {
        let mut gone: Vec<Entry> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(i, _)| self.present[i / 64] & (1 << (i % 64)) == 0)
            .map(|(_, e)| *e)
            .collect();
        drop(self);
        gone.sort_unstable_by_key(|e| e.offset);
        let text = std::fs::read(&log.path)
            .with_context(|| format!("reading content index {}", log.path.display()))?;
        let mut versions = Vec::with_capacity(gone.len());
        let mut wanted = gone.iter().peekable();
        for (offset, record) in lines(&text) {
            let Some(e) = wanted.next_if(|e| e.offset == offset) else {
                continue;
            };
            if let Some((_, _, earlier)) = parse_line(&record) {
                versions.push((e.fingerprint, earlier));
            }
        }
        versions.sort_by_key(|(fingerprint, _)| *fingerprint);
        let claimed = vec![false; versions.len()];
        Ok(EarlierVersions { versions, claimed })
    }
}

/// The rows sent earlier that the input no longer has, by fingerprint: the earlier versions
/// of its edited rows.
#[derive(Debug, Default)]
pub struct EarlierVersions {
    /// Sorted by fingerprint.
    versions: Vec<(u64, Earlier)>,
    /// A row of this run was taken for that one edited: it explains no other row.
    claimed: Vec<bool>,
}

impl EarlierVersions {
    /// The row sent earlier that a new row with `fingerprint` looks like, if one is left. It is
    /// claimed: an earlier row is the earlier version of one row at most.
    pub fn earlier_version(&mut self, fingerprint: u64) -> Option<&Earlier> {
        let from = self.versions.partition_point(|(f, _)| *f < fingerprint);
        let i = (from..self.versions.len())
            .take_while(|&i| self.versions[i].0 == fingerprint)
            .find(|&i| !self.claimed[i])?;
        self.claimed[i] = true;
        Some(&self.versions[i].1)
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }
}

/// Bytes of lines held before they are written whatever comes next.
const PENDING_MAX: usize = 64 * 1024;

/// The content index's file, open for appending a line per row sent. Lines wait in memory and
/// go out in one `write(2)` at [`flush`](ContentLog::flush) (the run's journal flusher calls
/// it every few milliseconds), when 64 KiB wait, and on drop.
#[derive(Debug)]
pub struct ContentLog {
    path: PathBuf,
    inner: Mutex<Pending>,
    /// A write failed and was reported: later failures are not.
    warned: AtomicBool,
}

#[derive(Debug)]
struct Pending {
    /// Opened for append.
    file: File,
    /// Lines encoded but not yet written.
    lines: Vec<u8>,
}

impl ContentLog {
    /// Opens (or creates) the content index at `path` and reads it. Call it only while holding
    /// the results file's lock: the index is that file's.
    pub fn open(path: &Path) -> Result<(ContentLog, ContentIndex)> {
        let context = || format!("content index {}", path.display());
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(context)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).with_context(context)?;
        let entries = parse(&text);
        if text.is_empty() {
            file.write_all(format!("{}\n", HEADER.join(",")).as_bytes())
                .with_context(context)?;
        } else if text.last() != Some(&b'\n') {
            // A line cut short by a crash: the next line must not run on from it.
            file.write_all(b"\n").with_context(context)?;
        }
        file.seek(SeekFrom::End(0)).with_context(context)?;
        let log = ContentLog {
            path: path.to_owned(),
            inner: Mutex::new(Pending {
                file,
                lines: Vec::with_capacity(PENDING_MAX + 256),
            }),
            warned: AtomicBool::new(false),
        };
        Ok((log, ContentIndex::from_entries(entries)))
    }

    /// Adds the line of a row sent. A failure to write is reported once and otherwise ignored:
    /// a missing line only means that row, edited later, is sent as new.
    pub fn sent(&self, fingerprint: u64, key: &str, row: u64, message_id: &str) {
        use std::fmt::Write as _;
        let mut inner = self.inner.lock().expect("content log lock");
        let mut numbers = String::with_capacity(40);
        let _ = write!(numbers, "{fingerprint:016x}");
        let out = &mut inner.lines;
        out.extend_from_slice(numbers.as_bytes());
        out.push(b',');
        field(out, key.as_bytes());
        numbers.clear();
        let _ = write!(numbers, ",{row},");
        out.extend_from_slice(numbers.as_bytes());
        field(out, message_id.as_bytes());
        out.push(b'\n');
        if inner.lines.len() >= PENDING_MAX {
            let written = inner.write();
            self.report(written);
        }
    }

    /// Writes the lines waiting in memory.
    pub fn flush(&self) {
        let written = self.inner.lock().expect("content log lock").write();
        self.report(written);
    }

    fn report(&self, written: io::Result<()>) {
        if let Err(e) = written
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "{}: {e}: rows sent from now on may not be in the content index, so if they are edited later they are sent again as new rows",
                self.path.display()
            );
        }
    }
}

impl Drop for ContentLog {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Pending {
    fn write(&mut self) -> io::Result<()> {
        if self.lines.is_empty() {
            return Ok(());
        }
        // Dropped whether or not the write succeeds: a line is worth one try.
        let written = self.file.write_all(&self.lines);
        self.lines.clear();
        written
    }
}

/// Every line of a content index's text after its header, with where it starts.
fn lines(text: &[u8]) -> impl Iterator<Item = (u64, csv::ByteRecord)> + '_ {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text);
    let mut record = csv::ByteRecord::new();
    std::iter::from_fn(move || {
        loop {
            let offset = reader.position().byte();
            match reader.read_byte_record(&mut record) {
                Ok(true) if offset == 0 => continue,
                Ok(true) => return Some((offset, record.clone())),
                // Not met reading bytes from memory with flexible lengths; were it met, the
                // lines after it would only be rows sent as new when edited, as before.
                Ok(false) | Err(_) => return None,
            }
        }
    })
}

/// The fingerprint, key and earlier row of one line; `None` for a line that cannot be read.
fn parse_line(record: &csv::ByteRecord) -> Option<(u64, &str, Earlier)> {
    let field = |i| record.get(i).and_then(|f| std::str::from_utf8(f).ok());
    let (fingerprint, key, row, message_id) = (field(0)?, field(1)?, field(2)?, field(3)?);
    if record.len() != HEADER.len() || fingerprint.len() != 16 || message_id.is_empty() {
        return None;
    }
    Some((
        u64::from_str_radix(fingerprint, 16).ok()?,
        key,
        Earlier {
            row: row.parse().ok()?,
            message_id: message_id.to_owned(),
        },
    ))
}

/// The entries of a content index's text; lines that cannot be read are skipped.
fn parse(text: &[u8]) -> Vec<Entry> {
    lines(text)
        .filter_map(|(offset, record)| {
            let (fingerprint, key, _) = parse_line(&record)?;
            Some(Entry {
                key: split_id(key_id(key)),
                fingerprint,
                offset,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_whose_key_is_gone_is_the_earlier_version_of_one_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("in.results.csv"));
        assert!(path.ends_with("in.results.csv.content.csv"));
        {
            let (log, index) = ContentLog::open(&path).unwrap();
            assert!(index.is_empty());
            log.sent(7, "h:a", 1, "M1");
            log.sent(7, "h:b", 2, "M2");
            log.sent(9, "h:c", 3, "M,\"3\"");
        }
        // A line cut short by a crash is skipped, and the next line does not run on from it.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"00000000000000")
            .unwrap();
        let (log, mut index) = ContentLog::open(&path).unwrap();
        assert_eq!(index.len(), 3);
        log.sent(11, "h:d", 4, "M4");
        log.flush();
        let (_, again) = ContentLog::open(&path).unwrap();
        assert_eq!(
            again.len(),
            4,
            "{}",
            std::fs::read_to_string(&path).unwrap()
        );
        let mut again = again.earlier_versions(&log).unwrap();
        assert_eq!(again.earlier_version(11).map(|e| e.row), Some(4));

        // h:a and h:c are still in the input; h:b is gone (its row was edited).
        index.mark_present("h:a");
        index.mark_present("h:c");
        let mut versions = index.earlier_versions(&log).unwrap();
        assert_eq!(
            versions.len(),
            1,
            "h:d was appended after this index was read"
        );
        assert_eq!(
            versions.earlier_version(7),
            Some(&Earlier {
                row: 2,
                message_id: "M2".into()
            })
        );
        assert_eq!(
            versions.earlier_version(7),
            None,
            "claimed by the first row"
        );
        assert_eq!(versions.earlier_version(9), None, "h:c is in the input");
        assert_eq!(
            again.earlier_version(9).map(|e| e.message_id.as_str()),
            Some("M,\"3\"")
        );
        assert_eq!(versions.earlier_version(8), None);
    }
}
