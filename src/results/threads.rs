//! The thread store: for e-mails with a thread column (`threadId`), the `emailMessageId` the API
//! answered for each thread's first message, so every later message of that thread (in this
//! run, a resume, a rerun or the next night's run) is sent into it. Beside the results file,
//! `<results>.threads.csv`:
//!
//! ```text
//! lane,thread,email_message_id,key,row,message_id,recorded_at
//! conv-0001,18c2f1a9d3e4b5a6,Xf3…,gm-0001,7,msg-…,2026-12-01T18:00:00.000Z
//! ```
//!
//! `lane` is the conversation (or, for rows whose IDs are looked up, the contact's key) the
//! thread is in: threads are per conversation. A line is appended and synced (`fdatasync`)
//! **before** the thread start's `sent` line is handed to the journal, so no crash, `kill -9`
//! or power cut can leave a `sent` start whose `emailMessageId` a resume does not know (its
//! next reply would otherwise open a new thread). A crash between the two leaves the start
//! `unknown` with its thread known here: its replies still go into the thread the API gave it.
//!
//! A last line cut short by a crash is cut off when the file is opened (its start was never
//! recorded `sent`). The file is read whole into memory at the start of a run: one entry per
//! thread started (about 100 bytes each).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use anyhow::{Context, Result};

/// The header every thread store starts with.
pub const HEADER: [&str; 7] = [
    "lane",
    "thread",
    "email_message_id",
    "key",
    "row",
    "message_id",
    "recorded_at",
];

/// The `<results>.threads.csv` path for a results file.
pub fn path_for(results: &Path) -> PathBuf {
    crate::results::line::beside(results, ".threads.csv")
}

/// A thread's identity: its lane and the source thread, hashed (128 bits).
pub fn thread_id(lane: &str, thread: &str) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(lane.as_bytes());
    h.update(&[0]);
    h.update(thread.as_bytes());
    h.digest128()
}

/// A thread started in HighLevel: what its replies are sent with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// The `emailMessageId` the API answered for the thread's first message.
    pub email_message_id: String,
    /// The key of the row that started it.
    pub key: String,
    /// That row's number in its input.
    pub row: u64,
}

/// The open thread store, locked with the results file.
pub struct ThreadLog {
    path: PathBuf,
    file: Mutex<File>,
    known: RwLock<HashMap<u128, Started>>,
    /// Threads whose start this run sent without learning its `emailMessageId` (an answer
    /// without one, or a 5xx that read-back found stored): their replies' reason says so.
    unthreadable: Mutex<std::collections::HashSet<u128>>,
}

impl ThreadLog {
    /// Opens (or creates, synced with its folder) the store at `path` and reads what it
    /// records; a last line cut short by a crash is cut off.
    pub fn open(path: &Path) -> Result<ThreadLog> {
        let context = || format!("opening thread store {}", path.display());
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(context)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).with_context(context)?;
        let mut known = HashMap::new();
        if text.is_empty() {
            let mut header = HEADER.join(",").into_bytes();
            header.push(b'\n');
            file.write_all(&header).with_context(context)?;
            file.sync_all().with_context(context)?;
            super::sync::sync_folder(&super::line::folder_of(path)).with_context(context)?;
        } else {
            let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if whole < text.len() {
                // A line cut short: its start was never recorded `sent` (the line is synced
                // before that), so it is dropped, and the next line starts on a line of its own.
                file.set_len(whole as u64).with_context(context)?;
                file.seek(SeekFrom::End(0)).with_context(context)?;
                file.sync_data().with_context(context)?;
                text.truncate(whole);
            }
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(true)
                .from_reader(text.as_slice());
            for record in reader.records().flatten() {
                let (Some(lane), Some(thread), Some(id), Some(key), Some(row)) = (
                    record.get(0),
                    record.get(1),
                    record.get(2),
                    record.get(3),
                    record.get(4).and_then(|r| r.parse().ok()),
                ) else {
                    continue;
                };
                if id.is_empty() {
                    continue;
                }
                known.insert(
                    thread_id(lane, thread),
                    Started {
                        email_message_id: id.to_owned(),
                        key: key.to_owned(),
                        row,
                    },
                );
            }
        }
        Ok(ThreadLog {
            path: path.to_owned(),
            file: Mutex::new(file),
            known: RwLock::new(known),
            unthreadable: Mutex::default(),
        })
    }

    /// Where the store is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The thread `id`, if it was started (in this run or an earlier one).
    pub fn get(&self, id: u128) -> Option<Started> {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        known.get(&id).cloned()
    }

    /// The thread `id`'s start was sent by this run, its `emailMessageId` unknown.
    pub fn sent_without_id(&self, id: u128) {
        let mut set = self.unthreadable.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(id);
    }

    /// Whether [`ThreadLog::sent_without_id`] was said of the thread `id`.
    pub fn is_sent_without_id(&self, id: u128) -> bool {
        let set = self.unthreadable.lock().unwrap_or_else(|p| p.into_inner());
        set.contains(&id)
    }

    /// How many threads it knows.
    pub fn len(&self) -> usize {
        self.known.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether it knows no thread.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records that the row `started` (its message `message_id`) started the thread `thread`
    /// of `lane`: appended and on disk (`fdatasync`) when this returns. Blocking: call it off
    /// the runtime's threads.
    pub fn record(
        &self,
        lane: &str,
        thread: &str,
        started: Started,
        message_id: &str,
    ) -> io::Result<()> {
        let mut line = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::with_capacity(160));
        line.write_record([
            lane,
            thread,
            started.email_message_id.as_str(),
            started.key.as_str(),
            started.row.to_string().as_str(),
            message_id,
            crate::results::line::now_rfc3339().as_str(),
        ])?;
        let line = line
            .into_inner()
            .map_err(|e| io::Error::other(e.to_string()))?;
        {
            let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            file.write_all(&line)?;
            file.sync_data()?;
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        known.insert(thread_id(lane, thread), started);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(id: &str, key: &str, row: u64) -> Started {
        Started {
            email_message_id: id.into(),
            key: key.into(),
            row,
        }
    }

    #[test]
    fn threads_survive_a_reopen_and_a_line_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv.threads.csv");
        let log = ThreadLog::open(&path).unwrap();
        assert!(log.is_empty());
        log.record("c1", "t,1", started("E1", "k1", 1), "m1")
            .unwrap();
        log.record("c2", "t,1", started("E2", "k5", 5), "m5")
            .unwrap();
        drop(log);
        // A crash mid-append: the last line is cut short.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"c3,t3,E3,k9").unwrap();
        drop(f);
        let log = ThreadLog::open(&path).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(
            log.get(thread_id("c1", "t,1")),
            Some(started("E1", "k1", 1))
        );
        assert_eq!(
            log.get(thread_id("c2", "t,1")),
            Some(started("E2", "k5", 5)),
            "the same thread in another conversation is another thread"
        );
        assert_eq!(log.get(thread_id("c3", "t3")), None, "the cut line is gone");
        log.record("c3", "t3", started("E3", "k9", 9), "m9")
            .unwrap();
        drop(log);
        let log = ThreadLog::open(&path).unwrap();
        assert_eq!(log.get(thread_id("c3", "t3")), Some(started("E3", "k9", 9)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("lane,thread,email_message_id,"), "{text}");
        assert_eq!(text.lines().count(), 4, "{text}");
    }
}
