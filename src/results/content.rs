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

use super::line::key_id;
use crate::mapping::MappedRow;
use crate::message::SpecEnum;

/// The header every content index starts with.
pub const HEADER: [&str; 4] = ["fingerprint", "key", "row", "message_id"];

/// The `<results>.content.csv` path for a results file.
pub fn path_for(results: &Path) -> PathBuf {
    let mut name = results
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "results.csv".into());
    name.push(".content.csv");
    results.with_file_name(name)
}

/// What a row is apart from its content: a hash of its conversation (else its contact, else
/// who it is looked up by), direction, type and date, as mapped before any lookup. `None` for a
/// row without a date: without one, every message of a conversation would look alike.
pub fn fingerprint(row: &MappedRow) -> Option<u64> {
    let m = &row.message;
    let date = m.date.as_deref()?;
    let lane;
    let who: [&str; 2] = if !m.conversation_id.is_empty() {
        ["conversation", &m.conversation_id]
    } else if !m.contact_id.is_empty() {
        ["contact", &m.contact_id]
    } else {
        lane = row
            .lookup
            .as_ref()
            .map_or_else(String::new, |l| l.lane(&m.contact_id));
        ["lookup", &lane]
    };
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for field in [who[0], who[1], m.direction.as_str(), m.kind.as_str(), date] {
        // Length-prefixed, so field boundaries count.
        hasher.update(&(field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    Some(hasher.digest())
}

/// A row sent earlier, as the content index recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Earlier {
    /// The input row it was.
    pub row: u64,
    /// The message ID the API gave it.
    pub message_id: String,
}

#[derive(Debug)]
struct Entry {
    fingerprint: u64,
    key: u128,
    earlier: Earlier,
}

/// The entry's key is in this run's input: it is not an earlier version of another row.
const PRESENT: u8 = 1;
/// A row of this run was taken for this entry edited: it explains no other row.
const CLAIMED: u8 = 2;

/// The rows sent earlier, by fingerprint, read from the content index at the start of a run.
#[derive(Debug, Default)]
pub struct ContentIndex {
    /// Sorted by fingerprint.
    entries: Vec<Entry>,
    /// `(key id, index into entries)`, sorted by key id.
    keys: Vec<(u128, u32)>,
    /// Per entry: [`PRESENT`], [`CLAIMED`].
    flags: Vec<u8>,
}

impl ContentIndex {
    fn from_entries(mut entries: Vec<Entry>) -> ContentIndex {
        entries.sort_by_key(|e| e.fingerprint);
        let mut keys: Vec<(u128, u32)> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.key, i as u32))
            .collect();
        keys.sort_unstable();
        let flags = vec![0; entries.len()];
        ContentIndex {
            entries,
            keys,
            flags,
        }
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
        let id = key_id(key);
        let from = self.keys.partition_point(|(k, _)| *k < id);
        for (_, i) in self.keys[from..].iter().take_while(|(k, _)| *k == id) {
            self.flags[*i as usize] |= PRESENT;
        }
    }

    /// The row sent earlier that a new row with `fingerprint` looks like: one whose key this
    /// input no longer has, and that no other row of this run was taken for. It is claimed: an
    /// earlier row is the earlier version of one row at most.
    pub fn earlier_version(&mut self, fingerprint: u64) -> Option<&Earlier> {
        let from = self
            .entries
            .partition_point(|e| e.fingerprint < fingerprint);
        let i = (from..self.entries.len())
            .take_while(|&i| self.entries[i].fingerprint == fingerprint)
            .find(|&i| self.flags[i] == 0)?;
        self.flags[i] |= CLAIMED;
        Some(&self.entries[i].earlier)
    }
}

/// The content index's file, open for appending a line per row sent.
#[derive(Debug)]
pub struct ContentLog {
    path: PathBuf,
    file: Mutex<File>,
    /// A write failed and was reported: later failures are not.
    warned: AtomicBool,
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
            file: Mutex::new(file),
            warned: AtomicBool::new(false),
        };
        Ok((log, ContentIndex::from_entries(entries)))
    }

    /// Appends the line of a row sent, with one `write(2)`. A failure is reported once and
    /// otherwise ignored: a missing line only means that row, edited later, is sent as new.
    pub fn sent(&self, fingerprint: u64, key: &str, row: u64, message_id: &str) {
        let mut line = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::with_capacity(96));
        let written = line
            .write_record([
                format!("{fingerprint:016x}").as_str(),
                key,
                row.to_string().as_str(),
                message_id,
            ])
            .map_err(io::Error::from)
            .and_then(|()| line.into_inner().map_err(|e| e.into_error()))
            .and_then(|bytes| {
                self.file
                    .lock()
                    .expect("content log lock")
                    .write_all(&bytes)
            });
        if let Err(e) = written
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "{}: {e}: rows sent from now on are not in the content index, so if they are edited later they are sent again as new rows",
                self.path.display()
            );
        }
    }
}

/// The entries of a content index's text; lines that cannot be read are skipped.
fn parse(text: &[u8]) -> Vec<Entry> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(text);
    let mut entries = Vec::new();
    for record in reader.byte_records() {
        let Ok(record) = record else { continue };
        let field = |i| record.get(i).and_then(|f| std::str::from_utf8(f).ok());
        let entry = (|| {
            let (fingerprint, key, row, message_id) = (field(0)?, field(1)?, field(2)?, field(3)?);
            if record.len() != HEADER.len() || fingerprint.len() != 16 || message_id.is_empty() {
                return None;
            }
            Some(Entry {
                fingerprint: u64::from_str_radix(fingerprint, 16).ok()?,
                key: key_id(key),
                earlier: Earlier {
                    row: row.parse().ok()?,
                    message_id: message_id.to_owned(),
                },
            })
        })();
        entries.extend(entry);
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Direction, InboundMessage};

    fn row(conversation: &str, date: Option<&str>, text: &str) -> MappedRow {
        MappedRow {
            message: InboundMessage {
                conversation_id: conversation.into(),
                contact_id: "k1".into(),
                direction: Direction::Inbound,
                date: date.map(Into::into),
                message: Some(text.into()),
                ..Default::default()
            },
            lookup: None,
        }
    }

    #[test]
    fn the_fingerprint_ignores_the_text_but_not_the_date_or_conversation() {
        let d = Some("2024-01-01T00:00:00Z");
        let a = fingerprint(&row("c1", d, "helo")).unwrap();
        assert_eq!(Some(a), fingerprint(&row("c1", d, "hello")));
        assert_ne!(
            Some(a),
            fingerprint(&row("c1", Some("2024-01-01T00:00:01Z"), "helo"))
        );
        assert_ne!(Some(a), fingerprint(&row("c2", d, "helo")));
        let mut outbound = row("c1", d, "helo");
        outbound.message.direction = Direction::Outbound;
        assert_ne!(Some(a), fingerprint(&outbound));
        assert_eq!(fingerprint(&row("c1", None, "helo")), None, "no date");
    }

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
            log.sent(9, "h:c", 3, "M,3");
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
        drop(log);
        let (_, mut again) = ContentLog::open(&path).unwrap();
        assert_eq!(
            again.len(),
            4,
            "{}",
            std::fs::read_to_string(&path).unwrap()
        );
        assert_eq!(again.earlier_version(11).map(|e| e.row), Some(4));

        // h:a and h:c are still in the input; h:b is gone (its row was edited).
        index.mark_present("h:a");
        index.mark_present("h:c");
        assert_eq!(
            index.earlier_version(7),
            Some(&Earlier {
                row: 2,
                message_id: "M2".into()
            })
        );
        assert_eq!(index.earlier_version(7), None, "claimed by the first row");
        assert_eq!(index.earlier_version(9), None, "h:c is in the input");
        assert_eq!(index.earlier_version(8), None);
    }
}
