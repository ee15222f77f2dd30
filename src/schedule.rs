//! The scheduler: per-conversation lanes, so rows of one `conversationId` go one at a time, in
//! input order (timeline order and e-mail threading depend on it), rows of different
//! conversations side by side, at most the number given in delivery (twice `--concurrency`: the
//! gate keeps `--concurrency` on the wire, see deliver's `LOOK_AHEAD`). [`run`] is the loop that takes
//! jobs from intake into [`Lanes`] and spawns the deliver step (passed in) for each ready row.
//!
//! Memory stays bounded however conversations interleave: a lane keeps at most [`LANE_MEMORY`]
//! rows in memory and spills the rest, in order, to an unnamed temp file that it reads back as it
//! drains. So one conversation holding half of a ten-million-row export neither fills memory nor
//! stops the reader: the other conversations' rows keep flowing while it is served one at a time.
//!
//! A row that fails for want of a working server (retries exhausted) holds its lane back: the
//! lane's later rows, queued or still to come, are handed to `hold` (recorded `waiting`, not
//! sent), so the next run sends them in order after it.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

use crate::gate::Gate;
use crate::mapping::MappedRow;
use crate::retry::StopReason;

/// Rows a busy lane holds in memory before it spills to disk.
pub const LANE_MEMORY: usize = 32;

/// One row on its way to the API.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// The row's 1-based number in the input (the header is not a row).
    pub row: u64,
    /// The row's key (for resume and duplicates), as the results file records it.
    pub key: String,
    /// The lane: the conversation ID, or for a row whose IDs are still to be looked up, its
    /// contact's key.
    pub conversation_id: Arc<str>,
    /// What is sent: the body, or the mapped row still waiting for its lookups.
    pub payload: Payload,
    /// For a row keyed by content, its [`fingerprint`](crate::mapping::MappedRow::fingerprint):
    /// once sent, it goes in the content index. `None`: the row is not indexed.
    pub fingerprint: Option<u64>,
    /// For an e-mail of a thread (`threadId`): the thread and its start. Boxed: most rows have
    /// none, and every row's job is moved around.
    pub thread: Option<Box<crate::threads::ThreadRef>>,
}

/// What a job sends.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// The request body, ready to post.
    Body(Bytes),
    /// A row whose contact or conversation ID is still to be looked up: the body is made after
    /// the lookups. (Serialised only if its lane spills it to disk.)
    Pending(Box<MappedRow>),
}

/// The rows waiting for a slot, by conversation.
pub struct Lanes {
    /// A conversation is here while one of its rows is ready or in flight.
    /// (xxh3: conversation IDs come from the user's own file, and SipHash was the lanes'
    /// largest cost.)
    lanes: HashMap<Arc<str>, Lane, Xxh3DefaultBuilder>,
    /// Rows whose lane is free: next to go, in arrival order.
    ready: VecDeque<Job>,
    /// Rows held in memory (ready or queued in a lane), not counting spilled ones.
    in_memory: usize,
    spill_dir: PathBuf,
    /// Lanes held back behind a failed row (its number): their later rows are not sent.
    held: HashMap<Arc<str>, u64, Xxh3DefaultBuilder>,
}

#[derive(Default)]
struct Lane {
    /// The rows behind the one in flight, oldest first.
    queue: VecDeque<Job>,
    /// Rows behind those, on disk; always newer than every row in `queue`. (Boxed: a lane is
    /// in the map for every contact or conversation with a row ready, and most never spill.)
    spill: Option<Box<Spill>>,
}

impl Lanes {
    /// No rows yet; a lane that holds too many spills them to temp files in `spill_dir`.
    pub fn new(spill_dir: &Path) -> Lanes {
        Lanes {
            lanes: HashMap::default(),
            ready: VecDeque::new(),
            in_memory: 0,
            spill_dir: spill_dir.to_owned(),
            held: HashMap::default(),
        }
    }

    /// Takes a row in input order. A row of a lane held back is handed back, with the row it
    /// waits for, to be recorded as waiting.
    pub fn push(&mut self, job: Job) -> io::Result<Option<(Job, u64)>> {
        if let Some(failed) = self.held.get(&job.conversation_id) {
            return Ok(Some((job, *failed)));
        }
        match self.lanes.get_mut(&job.conversation_id) {
            None => {
                self.lanes
                    .insert(job.conversation_id.clone(), Lane::default());
                self.ready.push_back(job);
                self.in_memory += 1;
            }
            Some(lane) => {
                if lane.spill.is_none() && lane.queue.len() < LANE_MEMORY {
                    lane.queue.push_back(job);
                    self.in_memory += 1;
                } else {
                    let spill = match &mut lane.spill {
                        Some(s) => s,
                        None => lane.spill.insert(Box::new(Spill::new(&self.spill_dir)?)),
                    };
                    spill.push(&job)?;
                }
            }
        }
        Ok(None)
    }

    /// The row of `lane` in flight failed as `failed_row`: the lane is held back, and its
    /// queued rows (in memory and spilled) are handed back, in order, to be recorded waiting.
    pub fn hold(&mut self, lane: &Arc<str>, failed_row: u64) -> io::Result<Vec<Job>> {
        self.held.insert(lane.clone(), failed_row);
        let Some(mut entry) = self.lanes.remove(lane) else {
            return Ok(Vec::new());
        };
        self.in_memory -= entry.queue.len();
        let mut rows: Vec<Job> = entry.queue.drain(..).collect();
        if let Some(spill) = &mut entry.spill {
            while let Some(job) = spill.pop(lane)? {
                rows.push(job);
            }
        }
        Ok(rows)
    }

    /// The next row whose lane is free, to send now.
    pub fn next_ready(&mut self) -> Option<Job> {
        let job = self.ready.pop_front()?;
        self.in_memory -= 1;
        Some(job)
    }

    /// The row of `lane` in flight has its outcome: the lane's next row becomes ready.
    pub fn done(&mut self, lane: &Arc<str>) -> io::Result<()> {
        let Some(entry) = self.lanes.get_mut(lane) else {
            return Ok(());
        };
        if let Some(spill) = &mut entry.spill {
            // Keep the in-memory queue topped up from disk, oldest first.
            while entry.queue.len() < LANE_MEMORY {
                match spill.pop(lane)? {
                    Some(job) => {
                        entry.queue.push_back(job);
                        self.in_memory += 1;
                    }
                    None => break,
                }
            }
            if spill.is_empty() {
                entry.spill = None;
            }
        }
        match entry.queue.pop_front() {
            Some(next) => self.ready.push_back(next),
            None => {
                self.lanes.remove(lane);
            }
        }
        Ok(())
    }

    /// Rows held in memory.
    pub fn in_memory(&self) -> usize {
        self.in_memory
    }

    /// No row waiting, in memory or on disk.
    pub fn is_idle(&self) -> bool {
        self.ready.is_empty()
            && self
                .lanes
                .values()
                .all(|l| l.queue.is_empty() && l.spill.is_none())
    }
}

/// A lane's overflow: rows appended to an unnamed temp file and read back in order, with
/// positional reads and writes (one file, two cursors).
struct Spill {
    file: File,
    /// Encoded rows not yet written.
    pending: Vec<u8>,
    /// Bytes on disk.
    written: u64,
    /// Bytes of the file read into `buffer` so far.
    read: u64,
    buffer: Vec<u8>,
    /// Start of the unconsumed part of `buffer`.
    at: usize,
    /// Rows pushed and not yet popped.
    unread: usize,
}

const CHUNK: usize = 32 * 1024;

impl Spill {
    fn new(dir: &Path) -> io::Result<Spill> {
        Ok(Spill {
            file: tempfile::tempfile_in(dir)?,
            pending: Vec::with_capacity(CHUNK),
            written: 0,
            read: 0,
            buffer: Vec::with_capacity(CHUNK),
            at: 0,
            unread: 0,
        })
    }

    fn is_empty(&self) -> bool {
        self.unread == 0
    }

    fn push(&mut self, job: &Job) -> io::Result<()> {
        let (pending, body) = match &job.payload {
            Payload::Body(body) => (false, body.clone()),
            Payload::Pending(row) => (
                true,
                Bytes::from(serde_json::to_vec(row).expect("a mapped row serialises")),
            ),
        };
        let p = &mut self.pending;
        p.extend_from_slice(&job.row.to_le_bytes());
        p.push(u8::from(pending));
        p.extend_from_slice(&(job.key.len() as u64).to_le_bytes());
        p.extend_from_slice(job.key.as_bytes());
        p.extend_from_slice(&(body.len() as u64).to_le_bytes());
        p.extend_from_slice(&body);
        p.push(u8::from(job.fingerprint.is_some()));
        p.extend_from_slice(&job.fingerprint.unwrap_or(0).to_le_bytes());
        match &job.thread {
            None => p.push(0),
            Some(t) => {
                p.push(1);
                p.extend_from_slice(&t.id.to_le_bytes());
                p.extend_from_slice(&t.start_row.to_le_bytes());
                p.push(t.start_state.to_code());
                p.extend_from_slice(&(t.thread.len() as u64).to_le_bytes());
                p.extend_from_slice(t.thread.as_bytes());
            }
        }
        self.unread += 1;
        if self.pending.len() >= CHUNK {
            self.write_pending()?;
        }
        Ok(())
    }

    fn write_pending(&mut self) -> io::Result<()> {
        self.file.write_all_at(&self.pending, self.written)?;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// The next `n` unconsumed bytes, reading the file (and writing what is pending) as needed.
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.buffer.len() - self.at < n {
            self.buffer.drain(..self.at);
            self.at = 0;
            let need = n - self.buffer.len();
            if self.written - self.read < need as u64 {
                self.write_pending()?;
            }
            let want = need.max(CHUNK).min((self.written - self.read) as usize);
            let start = self.buffer.len();
            self.buffer.resize(start + want, 0);
            self.file
                .read_exact_at(&mut self.buffer[start..], self.read)?;
            self.read += want as u64;
            if self.buffer.len() < n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "spill file ends early",
                ));
            }
        }
        let bytes = &self.buffer[self.at..self.at + n];
        self.at += n;
        Ok(bytes)
    }

    fn number(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn pop(&mut self, lane: &Arc<str>) -> io::Result<Option<Job>> {
        if self.unread == 0 {
            return Ok(None);
        }
        let row = self.number()?;
        let pending = self.take(1)?[0] != 0;
        let key_len = self.number()? as usize;
        let key = String::from_utf8(self.take(key_len)?.to_vec())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let body_len = self.number()? as usize;
        let body = self.take(body_len)?;
        let payload = if pending {
            Payload::Pending(
                serde_json::from_slice(body)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            )
        } else {
            Payload::Body(Bytes::copy_from_slice(body))
        };
        let indexed = self.take(1)?[0] != 0;
        let fingerprint = self.number()?;
        let thread = match self.take(1)?[0] {
            0 => None,
            _ => {
                let id = u128::from_le_bytes(self.take(16)?.try_into().expect("16 bytes"));
                let start_row = self.number()?;
                let start_state = crate::threads::StartState::from_code(self.take(1)?[0]);
                let len = self.number()? as usize;
                let thread = String::from_utf8(self.take(len)?.to_vec())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                Some(Box::new(crate::threads::ThreadRef {
                    id,
                    thread,
                    start_row,
                    start_state,
                }))
            }
        };
        self.unread -= 1;
        Ok(Some(Job {
            row,
            key,
            conversation_id: lane.clone(),
            payload,
            fingerprint: indexed.then_some(fingerprint),
            thread,
        }))
    }
}

/// Takes jobs from `jobs` into lanes and runs `deliver` for each as its lane and a slot free up:
/// at most `concurrency` at once, at most `max_queued` rows held in memory (a busy lane spills
/// the rest to `spill_dir`). Returns when every job is delivered, or, once the run stops, when
/// the deliveries in flight have finished (rows still queued stay unrecorded for the next run).
pub async fn run<F, Fut, H>(
    mut jobs: mpsc::Receiver<Vec<Job>>,
    gate: &Gate,
    deliver: F,
    hold: H,
    concurrency: usize,
    max_queued: usize,
    spill_dir: &Path,
) where
    F: Fn(Job) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
    H: Fn(Job, u64),
{
    let mut lanes = Lanes::new(spill_dir);
    let mut reader_done = false;
    // Every deliver task is here until it has finished, with its lane: the run ends only when
    // all have. The task is `deliver(job)` itself, spawned as it is: wrapping it in another
    // future (to report its lane) would make each task twice the size, and every spawn moves
    // the whole task (measured: 7 % more instructions per row).
    let mut tasks = tokio::task::JoinSet::new();
    let mut lane_of: HashMap<tokio::task::Id, (Arc<str>, u64), Xxh3DefaultBuilder> =
        HashMap::default();
    let spill_failed = |e: io::Error| {
        gate.stop_with(StopReason::Error(format!(
            "cannot spill queued rows to a temp file in {}: {e}",
            spill_dir.display()
        )))
    };
    loop {
        let stopping = gate.is_stopping();
        while tasks.len() < concurrency && !stopping {
            let Some(job) = lanes.next_ready() else { break };
            let lane = job.conversation_id.clone();
            let row = job.row;
            let task = tasks.spawn(deliver(job));
            lane_of.insert(task.id(), (lane, row));
        }
        if tasks.is_empty() && (stopping || (reader_done && lanes.is_idle())) {
            break;
        }
        let accepting = !reader_done && !stopping && lanes.in_memory() < max_queued;
        tokio::select! {
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let id = match &done {
                    Ok((id, _)) => *id,
                    Err(e) => e.id(),
                };
                let (lane, row) = lane_of.remove(&id).expect("every task has its lane");
                match done {
                    // Its later rows wait for it: sent before it, they would land before it.
                    // (When the run is stopping they are left unrecorded, for the next run.)
                    Ok((_, true)) if !gate.is_stopping() => match lanes.hold(&lane, row) {
                        Ok(waiting) => waiting.into_iter().for_each(|job| hold(job, row)),
                        Err(e) => spill_failed(e),
                    },
                    Ok(_) => {
                        if let Err(e) = lanes.done(&lane) {
                            spill_failed(e);
                        }
                    }
                    // Its row's line is whatever it wrote (`sending`: read back `unknown`);
                    // its lane stays busy, so the run stops.
                    Err(e) => gate.stop_with(StopReason::Error(format!(
                        "a delivery failed unexpectedly: {e}"
                    ))),
                }
            }
            batch = jobs.recv(), if accepting => match batch {
                Some(batch) => {
                    for job in batch {
                        match lanes.push(job) {
                            Ok(Some((job, failed))) => hold(job, failed),
                            Ok(None) => {}
                            Err(e) => spill_failed(e),
                        }
                    }
                }
                None => reader_done = true,
            },
            _ = gate.stopping(), if !stopping => {}
        }
    }
    jobs.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(conv: &str, row: u64) -> Job {
        let pad = "x".repeat((row % 700) as usize);
        let payload = if row.is_multiple_of(3) {
            Payload::Pending(Box::new(MappedRow {
                message: crate::message::InboundMessage {
                    message: Some(format!("row {row} {pad}")),
                    ..Default::default()
                },
                lookup: Some(Box::new(crate::resolve::Lookup {
                    location_id: "loc".into(),
                    phone: Some(format!("+1555{row:07}")),
                    ..Default::default()
                })),
                thread: row.is_multiple_of(2).then(|| format!("t{row}")),
            }))
        } else {
            Payload::Body(Bytes::from(format!("{{\"row\":{row},\"pad\":\"{pad}\"}}")))
        };
        Job {
            row,
            key: format!("k{row}"),
            conversation_id: Arc::from(conv),
            payload,
            fingerprint: row.is_multiple_of(2).then_some(row * 7),
            thread: row.is_multiple_of(5).then(|| {
                Box::new(crate::threads::ThreadRef {
                    id: u128::from(row) << 70 | 3,
                    thread: format!("<root-{row}@mail.example>"),
                    start_row: row / 2,
                    start_state: crate::threads::StartState::from_code((row % 4) as u8),
                })
            }),
        }
    }

    #[test]
    fn one_lane_at_a_time_in_order_through_the_spill() {
        let dir = tempfile::tempdir().unwrap();
        let mut lanes = Lanes::new(dir.path());
        // One hot conversation with 5,000 rows interleaved with 5,000 rows of 1,000 others.
        let mut hot_expected = Vec::new();
        for i in 0..10_000u64 {
            let j = if i % 2 == 0 {
                job("hot", i)
            } else {
                job(&format!("c{}", i % 1000), i)
            };
            if i % 2 == 0 {
                hot_expected.push(j.clone());
            }
            lanes.push(j).unwrap();
            assert!(lanes.in_memory() <= 1000 + LANE_MEMORY * 1001, "bounded");
        }
        // The hot lane holds LANE_MEMORY rows in memory plus the one ready; the rest is on disk.
        let hot_in_memory = lanes.lanes[&Arc::<str>::from("hot")].queue.len();
        assert_eq!(hot_in_memory, LANE_MEMORY);
        let mut hot_sent = Vec::new();
        let mut in_flight: Vec<Job> = Vec::new();
        loop {
            while in_flight.len() < 8 {
                match lanes.next_ready() {
                    Some(j) => {
                        // Never two rows of one conversation in flight at once.
                        assert!(
                            !in_flight
                                .iter()
                                .any(|f| f.conversation_id == j.conversation_id)
                        );
                        in_flight.push(j)
                    }
                    None => break,
                }
            }
            if in_flight.is_empty() {
                break;
            }
            let j = in_flight.remove(0);
            if &*j.conversation_id == "hot" {
                hot_sent.push(j.clone());
            }
            lanes.done(&j.conversation_id).unwrap();
        }
        assert!(lanes.is_idle());
        assert_eq!(lanes.in_memory(), 0);
        assert_eq!(
            hot_sent, hot_expected,
            "every hot row, once, in input order, bodies intact"
        );
    }

    #[test]
    fn other_lanes_stay_ready_while_a_hot_one_spills() {
        let dir = tempfile::tempdir().unwrap();
        let mut lanes = Lanes::new(dir.path());
        for i in 0..500u64 {
            lanes.push(job("hot", i)).unwrap();
        }
        lanes.push(job("cold", 500)).unwrap();
        assert_eq!(lanes.next_ready().map(|j| j.row), Some(0));
        assert_eq!(
            lanes.next_ready().map(|j| j.row),
            Some(500),
            "not stuck behind the hot lane"
        );
        assert!(lanes.in_memory() <= LANE_MEMORY);
    }
}
