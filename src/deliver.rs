//! Deliver: one row, from the scheduler's hands to its outcome line. In order:
//! for an e-mail of a thread, what it is sent as (`threads`: its start, a reply with the
//! start's `emailMessageId`, or `waiting` for a start not sent) → look its IDs up if it has none (each lookup through the same gate and policy as a message) →
//! the [`Gate`] (stop, pace, budget; a slot reserved) → the write-ahead `sending` line, on disk
//! while the slot's time comes → the POST at that time → the
//! [`Policy`] (sent, failed, unknown, or retry after a pause) → the outcome line. A 500, 502 or
//! 504 (in doubt: a gateway may have given up on a server that stored the message) is first
//! checked by one read of the conversation (`readback`): found → sent, not found → as the
//! policy says, a read that cannot tell → unknown. A thread's start, once sent, has its
//! `emailMessageId` synced to the thread store before its `sent` line goes to the journal
//! (a start found by that read: the id the read gives, `Reader::thread_email_id`).
//!
//! A row whose first request never left is not recorded: the next run sends it. Once its
//! `sending` line is written, the row always ends with an outcome line (or, after a crash, is
//! read back as `unknown`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tracing::debug;

use crate::auth::{Auth, Rejected};
use crate::gate::Gate;
use crate::mapping::MappedRow;
use crate::resolve::{Env, Failure, Resolver};
use crate::results::content::ContentLog;
use crate::results::line::{now_rfc3339, with_left_at};
use crate::results::threads::{Started, ThreadLog};
use crate::results::{Journal, ResultLine, Status};
use crate::retry::{Attempt, Next, Policy, Request, StopReason, classify};
use crate::schedule::{Job, Payload};
use crate::sender::Sender;
use crate::summary::Counters;
use crate::threads::{ThreadRef, Threading};

/// Rows delivered at once, per place on the wire (`--concurrency`): with 2, while one row's
/// request is out, another row's `sending` line is being written and synced, so a fast server
/// is not held to the pace of `fdatasync` (unthrottled against nginx at concurrency 16: see
/// README "Performance"). The price: a crash or a power cut can leave up to twice
/// `--concurrency` rows `unknown` (those beyond `--concurrency` never left). Under a rate limit
/// a row writes its line only a sync's time before its slot, so there it changes little.
pub const LOOK_AHEAD: usize = 2;

/// What every delivery of a run shares.
pub struct Deliver {
    /// Posts the message bodies.
    pub sender: Sender,
    /// The token every request carries, renewed before it expires and after a 401.
    pub auth: Arc<Auth>,
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
    /// Reads messages back (`run --verify-unknown`, and a 500/502/504 checked before its
    /// retry); `None`: no reads.
    pub reader: Option<crate::readback::Reader>,
    /// Uploads the attachments that are local files or signed URLs, after the lookups and
    /// before the `sending` line; `None` when no row needs one.
    pub uploader: Option<crate::upload::Uploader>,
    /// With a thread column: the `emailMessageId` of every thread started, on disk.
    pub threads: Option<Arc<ThreadLog>>,
}

impl Deliver {
    /// Sends one row until it has an outcome, recording it in the journal. `true` when the
    /// row failed for want of a working server (retries exhausted, the run stopping): the
    /// later rows of its conversation must then wait for it.
    /// (Takes the `Arc` itself, so the task the scheduler spawns is this future and nothing
    /// around it.)
    pub async fn row(self: Arc<Self>, job: Job) -> bool {
        let fingerprint = job.fingerprint;
        // An e-mail of a thread: sent as its start, into its thread, or not yet.
        let (payload, starts_thread) =
            match self.threading(job.thread, job.row, &job.key, job.payload) {
                Ok(threaded) => threaded,
                Err(why) => {
                    self.wait(job.row, job.key, why);
                    return false;
                }
            };
        let mut line = ResultLine {
            row: job.row,
            key: job.key,
            ..Default::default()
        };
        let body = match payload {
            Payload::Body(body) => {
                // The row has its conversation: its lane is that conversation's ID. Its lines
                // name it, so a row left `unknown` can be looked for there.
                line.conversation_id = job.conversation_id.to_string();
                body
            }
            // Boxed: the lookups' state is large, and only rows that need them should carry it
            // (every row's task is moved into place when spawned: measured 7 % more instructions
            // per row with it inline).
            Payload::Pending(row) => match Box::pin(self.resolve_ids(*row, &mut line)).await {
                Some(body) => body,
                None => return false,
            },
        };
        let mut last_error = String::new();
        let mut email_message_id = String::new();
        // Sent again once after a 401 with a renewed token; a second 401 stops the run.
        let mut replayed = false;
        // A `sending` line is due: before the first attempt, and before a replay after a 401
        // (whose line said the row was not stored).
        let mut ahead = true;
        let mut left_at = String::new();
        loop {
            // A token first, before its `sending` line is written: a row that waits for a
            // renewal has announced nothing (a kill meanwhile leaves it to send, not `unknown`).
            // Boxed, as the lookups: only a renewal needs that future's room.
            let bearer = match self.auth.fresh() {
                Some(bearer) => Ok(bearer),
                None => Box::pin(self.auth.ready()).await,
            };
            let bearer = match bearer {
                Ok(bearer) => bearer,
                Err(reason) => {
                    // Nothing is written before the first attempt: the row stays for the next
                    // run; after one, its last line says what became of it.
                    if line.attempts > 0 {
                        let why = format!("not sent: {reason}");
                        self.finish(&mut line, Status::Failed, why);
                    }
                    self.gate.stop_with(reason);
                    return true;
                }
            };
            // The first attempt's `sending` line is written while its time to leave comes.
            let lead = if ahead {
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
            if ahead {
                ahead = false;
                line.status = Some(Status::Sending);
                // When the request leaves (within a sync and a slot of this): a row left
                // `unknown` is looked for around then (`run --verify-unknown`).
                line.finished_at = now_rfc3339();
                left_at.clone_from(&line.finished_at);
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
            // Leaves at its time, once it has a place on the wire; a sync or a full wire that
            // made it miss its time costs a fresh slot, never a burst that would trip the
            // server's window.
            let Ok(on_the_wire) = self.gate.depart(slot).await else {
                let why = if line.attempts == 0 {
                    "not sent: the run stopped before its request left".to_owned()
                } else {
                    format!("the run stopped before retrying; last error: {last_error}")
                };
                self.finish(&mut line, Status::Failed, why);
                return true;
            };
            // Its token may have been answered 401 (another request's) while it waited: it
            // then does not leave with it. Its line says so first (a kill during the renewal
            // then leaves it to send, not `unknown`), and it goes again with a line of its own.
            let Some(bearer) = self.auth.still(bearer) else {
                drop(on_the_wire);
                if !self.not_sent_yet(
                    &mut line,
                    "its token was refused meanwhile; sent again with a renewed one",
                ) {
                    return true;
                }
                line.error.clear();
                ahead = true;
                continue;
            };
            line.attempts += 1;
            debug!(row = line.row, attempt = line.attempts, body = %String::from_utf8_lossy(&body), "sending");
            let attempt_left = jiff::Timestamp::now();
            let (attempt, limits) = self.sender.post(body.clone(), &bearer.value).await;
            if let Attempt::Answered { status: 401, .. } = &attempt {
                self.auth.note_rejected(&bearer);
            }
            // What it says of the limits is in before its place is given up (the first answer
            // lets the others take their times).
            self.gate.observe(limits);
            let day_spent = self.day_spent(&attempt);
            match &attempt {
                Attempt::Answered { status, .. } if *status != 401 => self.gate.attempt_done(),
                _ => self.gate.probe_lost(),
            }
            drop(on_the_wire);
            if let Attempt::Answered {
                status: 401, body, ..
            } = &attempt
            {
                // A 401 stored nothing: with a renewed token the same request goes again. The
                // journal says so first, so a crash during the renewal leaves the row to send,
                // not `unknown`; the replay writes its own `sending` line.
                if self.auth.renews()
                    && !replayed
                    && !self.not_stored_yet(&mut line, 401, "to be sent again with a renewed token")
                {
                    return true;
                }
                let words = crate::retry::describe(401, body);
                match Box::pin(self.auth.rejected(&bearer, replayed, words)).await {
                    Rejected::Replay => {
                        debug!(row = line.row, "token renewed after a 401: sending again");
                        replayed = true;
                        last_error = "HTTP 401 (the token was renewed)".into();
                        line.error.clear();
                        ahead = true;
                        continue;
                    }
                    Rejected::Stop(reason) => {
                        line.http_status = Some(401);
                        line.trace_id = crate::retry::trace_id(body);
                        self.finish(&mut line, Status::Failed, format!("not stored: {reason}"));
                        self.gate.stop_with(reason);
                        return true;
                    }
                }
            }
            if let Attempt::Answered { status, body, .. } = &attempt {
                line.http_status = Some(*status);
                // A 2xx carries its traceId in the body `classify` parses; others are read here.
                if !(200..300).contains(status) {
                    line.trace_id = crate::retry::trace_id(body);
                }
            }
            if day_spent {
                // With --wait a spent daily budget is a wait, not a stop: the row goes again
                // when the budget is back (the 429 stored nothing), with a `sending` line of
                // its own.
                if !self.not_stored_yet(
                    &mut line,
                    429,
                    "the daily budget is spent; sent again when it is back (--wait)",
                ) {
                    return true;
                }
                last_error = "HTTP 429: the daily budget is spent".into();
                line.error.clear();
                ahead = true;
                continue;
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
            // A 500, 502 or 504 may come from a gateway that gave up on a server that
            // goes on to store the message: one read of the conversation decides.
            let ambiguous = match &attempt {
                Attempt::Answered { status, .. } if matches!(status, 500 | 502 | 504) => {
                    Some(*status)
                }
                _ => None,
            };
            let settles = matches!(decision.next, Next::Retry { .. } | Next::Failed(_));
            if let (Some(status), Some(reader), true) = (ambiguous, &self.reader, settles) {
                let checked = Box::pin(self.check_stored(
                    reader,
                    &body,
                    attempt_left,
                    starts_thread.is_some(),
                ))
                .await;
                let settled = match checked {
                    Checked::NotStored => None,
                    Checked::Stored(found, thread_email_id) => {
                        email_message_id = thread_email_id;
                        line.message_id = found.id;
                        if let Some(c) = found.conversation_id.filter(|c| !c.is_empty()) {
                            line.conversation_id = c;
                        }
                        if let Some(c) = found.contact_id.filter(|c| !c.is_empty()) {
                            line.contact_id = c;
                        }
                        Some((
                            Status::Sent,
                            format!("confirmed by read-back after HTTP {status}"),
                        ))
                    }
                    Checked::InDoubt(why) => Some((
                        Status::Unknown,
                        with_left_at(
                            &format!(
                                "HTTP {status}, which may come after the message was stored, and {why}; not retried"
                            ),
                            Some(&left_at),
                        ),
                    )),
                };
                if let Some((status, why)) = settled {
                    if let (Status::Sent, Some(thread)) = (status, &starts_thread) {
                        // Found by read-back: its answer never came, the read gave its id.
                        Box::pin(self.thread_started(
                            &job.conversation_id,
                            thread,
                            &line,
                            std::mem::take(&mut email_message_id),
                            "read back after its answer was lost, it has no meta.email.messageIds",
                        ))
                        .await;
                    }
                    self.finish(&mut line, status, why);
                    if let Some(reason) = decision.stop {
                        self.gate.stop_with(reason);
                    }
                    // Stored, or in doubt and never resent: nothing for later rows to wait for.
                    return false;
                }
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
                    email_message_id = accepted.email_message_id;
                    (Status::Sent, String::new())
                }
                Next::Failed(why) => (Status::Failed, why),
                Next::Unknown(why) => (Status::Unknown, with_left_at(&why, Some(&left_at))),
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
            // The thread's id is on disk before the start's `sent` line is handed to the journal.
            if status == Status::Sent
                && let Some(thread) = &starts_thread
            {
                Box::pin(self.thread_started(
                    &job.conversation_id,
                    thread,
                    &line,
                    std::mem::take(&mut email_message_id),
                    "the API's answer to it has no emailMessageId",
                ))
                .await;
            }
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
        self.wait(
            job.row,
            job.key,
            format!(
                "not sent: row {failed_row} of the same conversation failed, and this row goes after it; the next run sends it after that row"
            ),
        );
    }

    /// What a row of a thread is sent as: `Ok` with the body (with the thread's
    /// `emailMessageId` for a reply) and, for the thread's start, its thread; `Err` with the
    /// reason it waits. Rows of no thread go as they are.
    #[allow(clippy::type_complexity)]
    fn threading(
        &self,
        thread: Option<Box<ThreadRef>>,
        row: u64,
        key: &str,
        payload: Payload,
    ) -> Result<(Payload, Option<Box<ThreadRef>>), String> {
        let (Some(mut thread), Some(log)) = (thread, &self.threads) else {
            return Ok((payload, None));
        };
        if log.is_sent_without_id(thread.id) {
            // Its start went, but without an id to thread under: the reason says that.
            thread.start_state = crate::threads::StartState::SentEarlier;
        }
        match crate::threads::decide(&thread, row, key, log.get(thread.id)) {
            Threading::Start => Ok((payload, Some(thread))),
            Threading::Wait(why) => Err(why),
            Threading::Reply(id) => Ok((
                match payload {
                    Payload::Body(body) => Payload::Body(crate::threads::reply_body(&body, &id)),
                    Payload::Pending(mut row) => {
                        row.message.email_message_id.get_or_insert(id);
                        Payload::Pending(row)
                    }
                },
                None,
            )),
        }
    }

    /// The row of `line` started `thread` in `lane`: the `emailMessageId` the API answered goes
    /// in the thread store, on disk, before the row's `sent` line is written. A store that cannot
    /// be written stops the run (the row is sent all the same; its thread's replies then wait).
    /// An empty id (`without` says why there is none) leaves its replies waiting.
    async fn thread_started(
        &self,
        lane: &Arc<str>,
        thread: &ThreadRef,
        line: &ResultLine,
        email_message_id: String,
        without: &str,
    ) {
        let Some(log) = self.threads.clone() else {
            return;
        };
        if email_message_id.is_empty() {
            log.sent_without_id(thread.id);
            tracing::warn!(
                "row {}, the first message of thread {:?}: {without}: the thread's other messages cannot be sent into it, and wait",
                line.row,
                thread.thread
            );
            return;
        }
        let (lane, name) = (lane.to_string(), thread.thread.clone());
        let started = Started {
            email_message_id,
            key: line.key.clone(),
            row: line.row,
        };
        let message_id = line.message_id.clone();
        let path = log.path().display().to_string();
        let recorded =
            tokio::task::spawn_blocking(move || log.record(&lane, &name, started, &message_id))
                .await;
        let error = match recorded {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        self.gate
            .stop_with(StopReason::ResultsFile(format!("{path}: {error}")));
    }

    /// Records row `row` (key `key`) as `waiting`: not sent, for the reason `error`; the next
    /// run sends it.
    fn wait(&self, row: u64, key: String, error: String) {
        let line = ResultLine {
            row,
            key,
            status: Some(Status::Waiting),
            error,
            finished_at: now_rfc3339(),
            ..Default::default()
        };
        self.counters.waiting.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.journal.record(&line) {
            self.gate.stop_with(self.journal_error(&e));
        }
    }

    /// Before a row's first attempt: looks its missing IDs up, uploads its attachments that
    /// need it (`upload`), and returns the request body with both, or `None` when the row ends
    /// here (recorded `failed`, or left for the next run when the run stops).
    async fn resolve_ids(&self, row: MappedRow, line: &mut ResultLine) -> Option<Bytes> {
        let resolver = self.resolver.as_ref()?;
        let MappedRow {
            mut message,
            lookup,
            ..
        } = row;
        let lookup = lookup?;
        let env = Env {
            gate: &self.gate,
            policy: &self.policy,
            auth: &self.auth,
        };
        let mut done = resolver.resolve(&mut message, &lookup, &env).await;
        if done.is_ok()
            && let Some(uploader) = &self.uploader
        {
            line.contact_id.clone_from(&message.contact_id);
            line.conversation_id.clone_from(&message.conversation_id);
            done = uploader
                .attach(&mut message, &lookup.location_id, &env)
                .await;
        }
        match done {
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

    /// With `--wait`: whether the answer says the day's budget is spent (a 429 with
    /// `X-RateLimit-Daily-Remaining: 0`, or 429s past the burst window); the gate then holds
    /// every request back until the next day.
    fn day_spent(&self, attempt: &Attempt) -> bool {
        let Attempt::Answered {
            status,
            daily_remaining,
            interval,
            ..
        } = attempt
        else {
            return false;
        };
        if !self.gate.waits() {
            return false;
        }
        let spent =
            *status == 429 && (*daily_remaining == Some(0) || self.gate.throttled(true, *interval));
        if *status != 429 {
            self.gate.throttled(false, None);
        }
        if spent {
            self.gate.budget_spent();
        }
        spent
    }

    /// Records that the row's last attempt stored nothing (`status`, `why`) before it waits to
    /// go again: a crash during the wait then leaves it to send, not `unknown`. Its next attempt
    /// writes a `sending` line of its own. Not counted: the row has no outcome yet. `false`
    /// when the journal cannot be written (the run stops).
    fn not_stored_yet(&self, line: &mut ResultLine, status: u16, why: &str) -> bool {
        let error = format!("not stored: HTTP {status}; {why}");
        self.not_yet(line, Some(status), error)
    }

    /// Like [`not_stored_yet`](Self::not_stored_yet), for a row whose request never left.
    fn not_sent_yet(&self, line: &mut ResultLine, why: &str) -> bool {
        self.not_yet(line, None, format!("not sent: {why}"))
    }

    /// The line of a row that goes again: `failed` for now, flushed before it waits.
    fn not_yet(&self, line: &mut ResultLine, http_status: Option<u16>, error: String) -> bool {
        line.status = Some(Status::Failed);
        line.http_status = http_status;
        line.error = error;
        line.finished_at = now_rfc3339();
        match self
            .journal
            .record(line)
            .and_then(|()| self.journal.flush())
        {
            Ok(()) => true,
            Err(e) => {
                self.gate.stop_with(self.journal_error(&e));
                false
            }
        }
    }

    /// Whether the message `body` that was just answered 500/502/504 was stored after all:
    /// one read of its conversation, matched as `--verify-unknown` matches (the request left
    /// at `left`). For a thread's start (`start`), a message found has its thread's
    /// `emailMessageId` read too (empty when the API gives none).
    async fn check_stored(
        &self,
        reader: &crate::readback::Reader,
        body: &Bytes,
        left: jiff::Timestamp,
        start: bool,
    ) -> Checked {
        use crate::readback::ReadError;
        use crate::readback::matching::{Expected, Out};
        let Ok(message) = serde_json::from_slice::<crate::message::InboundMessage>(body) else {
            return Checked::NotStored;
        };
        let expected = Expected::new(
            &message,
            Out {
                from: Some(left),
                to: jiff::Timestamp::now(),
            },
        );
        let env = Env {
            gate: &self.gate,
            policy: &self.policy,
            auth: &self.auth,
        };
        let email = expected.is_email();
        let found = reader
            .conversation(
                &env,
                &message.conversation_id,
                expected.span(),
                email,
                !email,
            )
            .await;
        match found {
            Ok(found) => match expected.candidates(&found, &Default::default()).as_slice() {
                [] => Checked::NotStored,
                [one] if start => match reader.thread_email_id(&env, one).await {
                    Ok(id) => Checked::Stored(Box::new((*one).clone()), id.unwrap_or_default()),
                    Err(e) => {
                        tracing::warn!("reading the emailMessageId of message {}: {e}", one.id);
                        Checked::Stored(Box::new((*one).clone()), String::new())
                    }
                },
                [one] => Checked::Stored(Box::new((*one).clone()), String::new()),
                several => Checked::InDoubt(format!(
                    "read-back found {} messages like it ({})",
                    several.len(),
                    several
                        .iter()
                        .map(|f| f.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            },
            Err(e) => {
                if let ReadError::Refused(why) = &e {
                    reader.note_refused(why);
                }
                Checked::InDoubt(e.to_string())
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

/// What a read of the conversation said of a message answered 500/502/504.
enum Checked {
    /// Not there: retried as any 5xx.
    NotStored,
    /// There: the row is sent, under this message (and, for a thread's start, with its
    /// thread's `emailMessageId`, or empty).
    Stored(Box<crate::readback::Found>, String),
    /// The read could not tell (refused, failed, several alike): the row is `unknown`.
    InDoubt(String),
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
        // 3,416 bytes with the lookups inline; 1,560 with them boxed; 1,816 with the bearer a
        // request holds (renewals boxed); 2,088 with the wire's place, the read-back check
        // (boxed) and the token re-checked before it leaves. The bound is below the lookups
        // inline, which is what it guards against.
        assert!(size <= 2304, "{size} bytes");
    }
}
