//! Deliver: one row, from the scheduler's hands to its outcome line. In order:
//! look its IDs up if it has none (each lookup through the same gate and policy as a message) →
//! the [`Gate`] (stop, pace, budget; a slot reserved) → the write-ahead `sending` line, on disk
//! while the slot's time comes → the POST at that time → the
//! [`Policy`] (sent, failed, unknown, or retry after a pause) → the outcome line.
//!
//! A row whose first request never left is not recorded: the next run sends it. Once its
//! `sending` line is written, the row always ends with an outcome line (or, after a crash, is
//! read back as `unknown`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tracing::debug;

use crate::gate::Gate;
use crate::mapping::MappedRow;
use crate::resolve::{Env, Failure, Resolver};
use crate::results::content::ContentLog;
use crate::results::line::now_rfc3339;
use crate::results::{Journal, ResultLine, Status};
use crate::retry::{Attempt, Next, Policy, Request, StopReason, classify};
use crate::schedule::{Job, Payload};
use crate::sender::Sender;
use crate::summary::Counters;

/// What every delivery of a run shares.
pub struct Deliver {
    /// Posts the message bodies.
    pub sender: Sender,
    /// The run's gate: stop, pace, `--max-requests`; every request passes it first.
    pub gate: Gate,
    /// The run's retry policy.
    pub policy: Policy,
    /// The results journal every outcome is written to.
    pub journal: Arc<Journal>,
    /// The run's counters, shared with intake and the final report.
    pub counters: Arc<Counters>,
    /// Looks up IDs for rows without them; `None` when the mapping does not resolve.
    pub resolver: Option<Resolver>,
    /// Where rows keyed by content go once sent; `None` when rows have a key column.
    pub content: Option<ContentLog>,
}

impl Deliver {
    /// Sends one row until it has an outcome, recording it in the journal. `true` when the
    /// row failed for want of a working server (retries exhausted, the run stopping): the
    /// later rows of its conversation must then wait for it.
    /// (Takes the `Arc` itself, so the task the scheduler spawns is this future and nothing
    /// around it.)
    pub async fn row(self: Arc<Self>, job: Job) -> bool {
        let fingerprint = job.fingerprint;
        let mut line = ResultLine {
            row: job.row,
            key: job.key,
            ..Default::default()
        };
        let body = match job.payload {
            Payload::Body(body) => body,
            // Boxed: the lookups' state is large, and only rows that need them should carry it
            // (every row's task is moved into place when spawned: measured 7 % more instructions
            // per row with it inline).
            Payload::Pending(row) => match Box::pin(self.resolve_ids(*row, &mut line)).await {
                Some(body) => body,
                None => return false,
            },
        };
        let mut last_error = String::new();
        loop {
            // The first attempt's `sending` line is written while its time to leave comes.
            let lead = if line.attempts == 0 {
                self.journal.sync_lead()
            } else {
                std::time::Duration::ZERO
            };
            let Ok(slot) = self.gate.admit_ahead(lead).await else {
                // Before the first attempt nothing was written: the row stays for the next run.
                if line.attempts > 0 {
                    let why = format!("the run stopped before retrying; last error: {last_error}");
                    self.finish(&mut line, Status::Failed, why);
                }
                return line.attempts > 0;
            };
            if line.attempts == 0 {
                line.status = Some(Status::Sending);
                let end = match self.journal.write_ahead(&line) {
                    Ok(end) => end,
                    Err(e) => {
                        // Without the write-ahead line the request must not leave. The line may
                        // be in the file even so (the error came after it): an outcome line
                        // says it was not sent, or the resume would read it `unknown`.
                        let why = format!("not sent: the results file could not be written: {e}");
                        self.finish(&mut line, Status::Failed, why);
                        self.gate.stop_with(self.journal_error(&e));
                        return true;
                    }
                };
                // On disk before the first byte leaves: a power cut must not lose the line of a
                // request that may be stored (the resume would send it again). One sync serves
                // every row waiting here.
                if let Err(e) = self.journal.on_disk(end).await {
                    // The line is in the file, so the row gets an outcome: it was not sent.
                    let why = format!("not sent: the results file could not be synced: {e}");
                    self.finish(&mut line, Status::Failed, why);
                    self.gate.stop_with(self.journal_error(&e));
                    return true;
                }
            }
            // Leaves at its time; a sync that made it miss its time costs a fresh slot, never a
            // burst that would trip the server's window.
            if self.gate.depart(slot).await.is_err() {
                let why = if line.attempts == 0 {
                    "not sent: the run stopped before its request left".to_owned()
                } else {
                    format!("the run stopped before retrying; last error: {last_error}")
                };
                self.finish(&mut line, Status::Failed, why);
                return true;
            }
            line.attempts += 1;
            debug!(row = line.row, attempt = line.attempts, body = %String::from_utf8_lossy(&body), "sending");
            let (attempt, limits) = self.sender.post(body.clone()).await;
            self.gate.observe(limits);
            if let Attempt::Answered { status, body, .. } = &attempt {
                line.http_status = Some(*status);
                // A 2xx carries its traceId in the body `classify` parses; others are read here.
                if !(200..300).contains(status) {
                    line.trace_id = crate::retry::trace_id(body);
                }
            }
            let decision = self.policy.decide(
                classify(&attempt),
                line.attempts,
                Request::Message,
                fastrand::f64(),
            );
            if let Some(pause) = decision.pause {
                self.gate.pause(pause);
            }
            let (status, why) = match decision.next {
                Next::Sent(accepted) => {
                    line.message_id = accepted.message_id;
                    // The IDs the API filed it under; the looked-up ones if it does not say.
                    if !accepted.conversation_id.is_empty() {
                        line.conversation_id = accepted.conversation_id;
                    }
                    if !accepted.contact_id.is_empty() {
                        line.contact_id = accepted.contact_id;
                    }
                    if !accepted.trace_id.is_empty() {
                        line.trace_id = accepted.trace_id;
                    }
                    (Status::Sent, String::new())
                }
                Next::Failed(why) => (Status::Failed, why),
                Next::Unknown(why) => (Status::Unknown, why),
                Next::Retry { reason, delay } => {
                    debug!(
                        row = line.row,
                        attempt = line.attempts,
                        "retrying: {reason}"
                    );
                    last_error = reason;
                    // A stop during the wait is seen by the gate at the top of the loop.
                    let _ = self.gate.wait(delay).await;
                    continue;
                }
            };
            self.finish(&mut line, status, why);
            if status == Status::Sent
                && let (Some(content), Some(fp)) = (&self.content, fingerprint)
            {
                content.sent(fp, &line.key, line.row, &line.message_id);
            }
            if let Some(reason) = decision.stop {
                self.gate.stop_with(reason);
            }
            // A refusal (4xx) is the row's own problem; a server that failed it may take the
            // next row of the conversation, which would then land before it.
            let server_failed = line.http_status.is_none_or(|s| s >= 500 || s == 429);
            return status == Status::Failed && server_failed;
        }
    }

    /// Records `job` as waiting for `failed_row` of the same conversation: not sent.
    pub fn hold(&self, job: Job, failed_row: u64) {
        let line = ResultLine {
            row: job.row,
            key: job.key,
            status: Some(Status::Waiting),
            error: format!(
                "not sent: row {failed_row} of the same conversation failed, and this row goes after it; the next run sends it after that row"
            ),
            finished_at: now_rfc3339(),
            ..Default::default()
        };
        self.counters.waiting.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.journal.record(&line) {
            self.gate.stop_with(self.journal_error(&e));
        }
    }

    /// Before a row's first attempt: looks its missing IDs up and returns the request body
    /// with them, or `None` when the row ends here (recorded `failed`, or left for the next run
    /// when the run stops).
    async fn resolve_ids(&self, row: MappedRow, line: &mut ResultLine) -> Option<Bytes> {
        let resolver = self.resolver.as_ref()?;
        let MappedRow {
            mut message,
            lookup,
        } = row;
        let lookup = lookup?;
        match resolver
            .resolve(
                &mut message,
                &lookup,
                &Env {
                    gate: &self.gate,
                    policy: &self.policy,
                },
            )
            .await
        {
            Ok(()) => {
                line.contact_id.clone_from(&message.contact_id);
                line.conversation_id.clone_from(&message.conversation_id);
                Some(Bytes::from(
                    serde_json::to_vec(&message).expect("a message serialises"),
                ))
            }
            Err(Failure::Row {
                error,
                http_status,
                trace_id,
            }) => {
                line.contact_id = message.contact_id;
                line.conversation_id = message.conversation_id;
                line.http_status = http_status;
                line.trace_id = trace_id;
                self.finish(line, Status::Failed, format!("not sent: {error}"));
                None
            }
            Err(Failure::Stop(reason)) => {
                if let Some(reason) = reason {
                    self.gate.stop_with(reason);
                }
                None
            }
        }
    }

    /// Writes the row's outcome line and counts it.
    fn finish(&self, line: &mut ResultLine, status: Status, error: String) {
        line.status = Some(status);
        line.error = error;
        line.finished_at = now_rfc3339();
        let counter = match status {
            Status::Sent => &self.counters.sent,
            Status::Unknown => &self.counters.unknown,
            _ => &self.counters.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.journal.record(line) {
            self.gate.stop_with(self.journal_error(&e));
        }
    }

    /// Bug: a full disk was reported as "the server keeps failing". Name the file and the error.
    pub fn journal_error(&self, e: &std::io::Error) -> StopReason {
        StopReason::ResultsFile(format!("{}: {e}", self.journal.path().display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size_of_output<Fut>(_: fn(Arc<Deliver>, Job) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Every row's task is moved into place when it is spawned, so its size is paid per row
    /// (bench: memcpy in `spawn` was most of the refactor's extra cost). Bounded, so the
    /// lookups' large state cannot slip back inline unnoticed.
    #[test]
    fn a_row_task_stays_small() {
        let size = size_of_output(Deliver::row);
        eprintln!("Deliver::row future: {size} bytes");
        // 3,416 bytes with the lookups inline; 1,560 with them boxed.
        assert!(size <= 2048, "{size} bytes");
    }
}
