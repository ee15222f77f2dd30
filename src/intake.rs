//! Intake, on its own thread: every record of the input becomes exactly one of
//!
//! - a **duplicate** (its key was seen on an earlier row; recorded, not sent),
//! - **done earlier** (an earlier run sent it, or left it `unknown`; its old line is kept; with
//!   `--verify-unknown`, an `unknown` row read-back found is counted confirmed, and one it found
//!   not stored becomes a job),
//! - **done earlier** (an earlier run sent it, or left it `unknown`; its old line is kept),
//! - **skipped** (a row filter leaves it out on purpose; recorded with the reason, not sent),
//! - **invalid** (it breaks a rule; recorded with every problem, not sent),
//! - **changed** (keyed by content, it looks like a row sent earlier that the input no longer
//!   has: same conversation, direction, type and date, a cell edited; recorded, not sent unless
//!   `--send-changed`),
//! - a **job** for the scheduler, in batches.
//!
//! Intake stops at the run's stop, at `--limit`, or when the scheduler stops taking jobs. It
//! runs after requests may have left, so an error here (the input cannot be read, the results
//! file cannot be written) is a stop with its reason, never an error that ends the run as if
//! nothing had been sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::mapping::Mapping;
use crate::preflight::DuplicateRows;
use crate::readback::settle::Verdict;
use crate::reader::{CsvInput, Record};
use crate::results::content::EarlierVersions;
use crate::results::line::now_rfc3339;
use crate::results::{Journal, Prior, ResultLine, Status};
use crate::retry::StopReason;
use crate::schedule::{Job, Payload};
use crate::summary::Counters;

/// Rows handed to the scheduler at once: one wake-up of this thread per batch, not per row (a
/// full channel wakes a blocked sender for every slot freed).
pub const BATCH: usize = 64;

/// What intake reads and writes.
pub struct Intake {
    /// The CSV input, positioned at the first record.
    pub input: CsvInput,
    /// How records become request bodies.
    pub mapping: Mapping,
    /// The outcomes of earlier runs, by key: a row sent (or left `unknown`) before is kept.
    pub prior: Prior,
    /// The rows whose key an earlier row already has, found by the pass before sending.
    pub duplicates: DuplicateRows,
    /// The results journal every row's outcome is written to.
    pub journal: Arc<Journal>,
    /// The run's counters, shared with delivery and the final report.
    pub counters: Arc<Counters>,
    /// The run's stop: intake takes no row after it.
    pub stop: CancellationToken,
    /// `--limit`: at most this many jobs.
    pub limit: Option<u64>,
    /// `--resend-unknown`: send again the rows an earlier run left `unknown`.
    pub resend_unknown: bool,
    /// For rows keyed by content: the rows sent earlier whose keys the input no longer has,
    /// found by the pass before sending. `None` when rows have a key column.
    pub content: Option<EarlierVersions>,
    /// `--send-changed`: send the rows that look like rows sent earlier with a cell edited.
    pub send_changed: bool,
    /// `--verify-unknown`: what read-back made of the rows an earlier run left `unknown`, by
    /// key (found stored, to send, or still unknown); empty without it.
    pub settled: HashMap<String, Verdict>,
    /// `--order date`: the rows in the order to read them (each conversation oldest first);
    /// `None`: the file's order.
    pub order: Option<crate::order::SendOrder>,
    /// Attachment files: where they are read from, and the size limit (a row whose file is
    /// missing or too big is `invalid`).
    pub files: crate::upload::Files,
    /// With a thread column: each thread's start, found by the pass before sending.
    pub threads: Option<crate::threads::Starts>,
}

/// What intake leaves: the prior state, for compaction, and why it stopped the run, if it did.
pub struct Ended {
    /// The outcomes of earlier runs as intake leaves them, for compaction.
    pub prior: Prior,
    /// Why intake stopped the run (`--limit`, input or results file failing); `None`: it did not.
    pub stop: Option<StopReason>,
}

/// What one record became.
enum Fate {
    /// Recorded (duplicate, invalid) or kept from an earlier run: nothing to send.
    Done,
    Job(Job),
}

impl Intake {
    /// Reads to the end (or the stop), handing jobs to `jobs`.
    pub fn run(mut self, jobs: mpsc::Sender<Vec<Job>>) -> Ended {
        let stop = self.read(&jobs).err();
        Ended {
            prior: self.prior,
            stop,
        }
    }

    fn read(&mut self, jobs: &mpsc::Sender<Vec<Job>>) -> Result<(), StopReason> {
        let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
        let mut handed = 0u64;
        let mut order = self.order.take();
        loop {
            if self.stop.is_cancelled() {
                return Ok(());
            }
            let read_error = |e: &dyn std::fmt::Display, input: &CsvInput| {
                StopReason::Error(format!("cannot read {}: {e:#}", input.path().display()))
            };
            // In date order, the next row's place; it is then read from there.
            let mut duplicate = None;
            if let Some(order) = order.as_mut() {
                let place = match order.next() {
                    None => break,
                    Some(Ok(place)) => place,
                    Some(Err(e)) => {
                        self.hand_over(jobs, &mut batch);
                        return Err(read_error(&e, &self.input));
                    }
                };
                if let Err(e) = self.input.seek_to(place.row, place.offset, place.line) {
                    self.hand_over(jobs, &mut batch);
                    return Err(read_error(&e, &self.input));
                }
                duplicate = Some(place.duplicate);
            }
            let record = match self.input.next_record() {
                Ok(Some(record)) => record,
                Ok(None) => break,
                Err(e) => {
                    let stop = read_error(&e, &self.input);
                    self.hand_over(jobs, &mut batch);
                    return Err(stop);
                }
            };
            let is_duplicate = match duplicate {
                Some(d) => d,
                None => self
                    .duplicates
                    .contains(record.row)
                    .map_err(|e| StopReason::Error(format!("{e:#}")))?,
            };
            let fate = fate(
                record,
                is_duplicate,
                &self.mapping,
                &mut self.prior,
                &self.journal,
                &self.counters,
                self.resend_unknown,
                &self.settled,
                self.content.as_mut().map(|c| (c, self.send_changed)),
                &self.files,
                self.threads.as_ref(),
            )?;
            let Fate::Job(job) = fate else { continue };
            if self.limit.is_some_and(|n| handed >= n) {
                self.hand_over(jobs, &mut batch);
                return Err(StopReason::Limit(handed));
            }
            handed += 1;
            batch.push(job);
            if batch.len() >= BATCH && !self.hand_over(jobs, &mut batch) {
                return Ok(());
            }
        }
        self.hand_over(jobs, &mut batch);
        Ok(())
    }

    /// Hands the batch over; false once the scheduler has stopped taking rows.
    fn hand_over(&self, jobs: &mpsc::Sender<Vec<Job>>, batch: &mut Vec<Job>) -> bool {
        batch.is_empty()
            || jobs
                .blocking_send(std::mem::replace(batch, Vec::with_capacity(BATCH)))
                .is_ok()
    }
}

/// Decides what `record` becomes, recording it when that is not a job. `content`: the content
/// index and `--send-changed`, when rows are keyed by content.
#[allow(clippy::too_many_arguments)]
fn fate(
    record: Record<'_>,
    is_duplicate: bool,
    mapping: &Mapping,
    prior: &mut Prior,
    journal: &Journal,
    counters: &Counters,
    resend_unknown: bool,
    settled: &HashMap<String, Verdict>,
    content: Option<(&mut EarlierVersions, bool)>,
    files: &crate::upload::Files,
    threads: Option<&crate::threads::Starts>,
) -> Result<Fate, StopReason> {
    let (row, line_no) = (record.row, record.line);
    let key = mapping.record_key(&record);
    counters.rows.fetch_add(1, Ordering::Relaxed);
    let journal_error =
        |e: std::io::Error| StopReason::ResultsFile(format!("{}: {e}", journal.path().display()));
    if is_duplicate {
        counters.duplicate.fetch_add(1, Ordering::Relaxed);
        journal
            .record(&ResultLine {
                row,
                key,
                status: Some(Status::Duplicate),
                error: format!(
                    "line {line_no}: the key was seen on an earlier row of this input; not sent twice"
                ),
                finished_at: now_rfc3339(),
                ..Default::default()
            })
            .map_err(journal_error)?;
        return Ok(Fate::Done);
    }
    // A key recorded for another conversation was refused by the pass before sending.
    let earlier = prior.take(&key);
    match earlier {
        Some(p) if p.status == Status::Sent => {
            counters.sent_before.fetch_add(1, Ordering::Relaxed);
            journal.keep_prior(row, p).map_err(journal_error)?;
            return Ok(Fate::Done);
        }
        // Read-back found it stored: its `sent` line was written after this one, and wins.
        Some(p)
            if p.status == Status::Unknown && settled.get(&key) == Some(&Verdict::Confirmed) =>
        {
            counters.confirmed.fetch_add(1, Ordering::Relaxed);
            journal.keep_prior(row, p).map_err(journal_error)?;
            return Ok(Fate::Done);
        }
        Some(p)
            if p.status == Status::Unknown
                && !resend_unknown
                && settled.get(&key) != Some(&Verdict::Send) =>
        {
            counters.unknown_before.fetch_add(1, Ordering::Relaxed);
            journal.keep_prior(row, p).map_err(journal_error)?;
            return Ok(Fate::Done);
        }
        // Tried again (failed, invalid, changed, or unknown with `--resend-unknown` or found not
        // stored by read-back): its earlier
        // line stays until this run writes a new one, so a run that stops before reaching it
        // does not drop it from the record (an `unknown` row would then be sent as new).
        Some(p) => journal.keep_prior(row, p).map_err(journal_error)?,
        None => {}
    }
    if record.broken.is_none()
        && let Some(reason) = mapping.skip_reason(record.cells, line_no)
    {
        counters.skipped.fetch_add(1, Ordering::Relaxed);
        journal
            .record(&ResultLine {
                row,
                key,
                status: Some(Status::Skipped),
                error: reason,
                finished_at: now_rfc3339(),
                ..Default::default()
            })
            .map_err(journal_error)?;
        return Ok(Fate::Done);
    }
    // Mapped only now: a row sent in an earlier run costs no mapping on resume.
    let outcome = match record.broken {
        Some(e) => Err(vec![e]),
        None => mapping
            .map_row(record.cells, line_no)
            .and_then(|mut row| files.check(mapping, &mut row, line_no).map(|()| row)),
    };
    let mapped = match outcome {
        Ok(m) => m,
        Err(errors) => {
            counters.invalid.fetch_add(1, Ordering::Relaxed);
            let error = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" | ");
            journal
                .record(&ResultLine {
                    row,
                    key,
                    status: Some(Status::Invalid),
                    error,
                    finished_at: now_rfc3339(),
                    ..Default::default()
                })
                .map_err(journal_error)?;
            return Ok(Fate::Done);
        }
    };
    let fingerprint = content.as_ref().and_then(|_| mapped.fingerprint());
    // A new key that looks like a row sent earlier and gone from the input: that row, edited.
    if let (None, Some(fp), Some((index, false))) = (earlier, fingerprint, content)
        && let Some(e) = index.earlier_version(fp)
    {
        counters.changed.fetch_add(1, Ordering::Relaxed);
        journal
            .record(&ResultLine {
                row,
                key,
                status: Some(Status::Changed),
                conversation_id: mapped.message.conversation_id.clone(),
                contact_id: mapped.message.contact_id.clone(),
                error: format!(
                    "row {row} looks like row {} sent earlier as message {} (same conversation, direction, type and date; a cell was edited): not sent again; run with --send-changed to send it as a new message",
                    e.row, e.message_id
                ),
                finished_at: now_rfc3339(),
                ..Default::default()
            })
            .map_err(journal_error)?;
        return Ok(Fate::Done);
    }
    let thread = match (threads, mapped.thread.clone()) {
        (Some(starts), Some(thread)) => {
            Some(Box::new(starts.thread_ref(&mapped.lane(), thread, row)))
        }
        _ => None,
    };
    let (lane, payload) = match &mapped.lookup {
        None => (
            Arc::from(mapped.message.conversation_id.as_str()),
            Payload::Body(Bytes::from(
                serde_json::to_vec(&mapped.message).expect("a message serialises"),
            )),
        ),
        Some(_) => (Arc::from(mapped.lane()), Payload::Pending(Box::new(mapped))),
    };
    Ok(Fate::Job(Job {
        row,
        key,
        conversation_id: lane,
        payload,
        fingerprint,
        thread,
    }))
}
