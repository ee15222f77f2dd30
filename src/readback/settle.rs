//! `run --verify-unknown`: before anything is sent, every row an earlier run left `unknown`
//! (a timeout, a lost connection, a crash mid-request) is looked for on the server, in its
//! conversation, and settled:
//!
//! - exactly one message read back can be it ([`Expected::candidates`], not counting messages
//!   other rows of the results file are recorded under) → `sent` with that ID, "confirmed by
//!   read-back" in the error column; a thread's start has its thread's `emailMessageId` read
//!   ([`Reader::thread_email_id`]) and synced to the thread store before that line, so its
//!   replies go into its thread in this run (none read: they wait, saying so);
//! - none, and its request left longer ago than `--settle` → sent now, as a new row;
//! - none, but younger (the API queues messages: it may not show yet) → stays `unknown`, and
//!   the summary says when to run again;
//! - several, or a read that fails → stays `unknown`, with the candidate IDs or the reason.
//!
//! One read (with its pages) serves every unknown row of a conversation. Reads go through the
//! run's gate like any request: they take `--rate` slots and count against `--max-requests`
//! and the daily budget. The new lines are written to the journal before the intake starts, so
//! a crash after this leaves them (a confirmed row is never sent again).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::matching::{Expected, Out};
use super::{ReadError, Reader, Span};
use crate::mapping::ThreadPlace;
use crate::message::InboundMessage;
use crate::resolve::Env;
use crate::results::line::{left_at, now_rfc3339, with_left_at, without_left_at};
use crate::results::threads::{Started, ThreadLog};
use crate::results::{Journal, ResultLine, Status};
use crate::retry::StopReason;
use crate::threads::Starts;

/// `--settle`'s default: how long after its request left a row not found is taken as not
/// stored.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(5 * 60);

/// A row an earlier run left `unknown`, found in this input by the pass before sending.
#[derive(Clone, Debug)]
pub struct Doubt {
    /// The input row.
    pub row: u64,
    /// Its key.
    pub key: String,
    /// What it sends (its conversation may be empty: the results line may name it).
    pub message: InboundMessage,
    /// Where its `unknown` line is in the results file.
    pub offset: u64,
    /// Its thread, when it is an e-mail of one.
    pub thread: Option<ThreadPlace>,
}

/// What became of a row in doubt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Found stored: recorded `sent` with the ID read back.
    Confirmed,
    /// Not stored: to be sent now, as a new row.
    Send,
    /// Still in doubt: recorded `unknown` with the reason.
    Unknown,
}

/// What settling did, for the intake (the verdicts) and the summary.
#[derive(Debug, Default)]
pub struct Settled {
    /// Per row key.
    pub verdicts: HashMap<String, Verdict>,
    /// Rows found stored.
    pub confirmed: u64,
    /// Rows found not stored, sent now.
    pub to_send: u64,
    /// Rows still in doubt (of them, `too_young` not found but too recent to trust).
    pub unknown: u64,
    /// Rows not found, whose requests left less than `--settle` ago.
    pub too_young: u64,
    /// When the youngest of those is old enough.
    pub retry_after: Option<Timestamp>,
    /// A read refused (401/403): why.
    pub refused: Option<String>,
    /// Read requests made.
    pub reads: u64,
}

impl Settled {
    /// The summary's lines.
    pub fn summary(&self, settle: Duration) -> String {
        let rows = self.confirmed + self.to_send + self.unknown;
        if rows == 0 {
            return String::new();
        }
        let mut out = format!(
            "read-back: {rows} unknown row(s) looked for with {} read(s): {} found stored (sent, \"confirmed by read-back\"), {} not stored (sent now), {} still unknown\n",
            self.reads, self.confirmed, self.to_send, self.unknown
        );
        if let Some(at) = self.retry_after {
            out.push_str(&format!(
                "  {} row(s) not found yet, but their requests left less than --settle {} ago (the API may still be storing them): run the same command again after {}\n",
                self.too_young,
                shown(settle),
                at.round(jiff::Unit::Second).unwrap_or(at)
            ));
        }
        if let Some(why) = &self.refused {
            out.push_str(&format!(
                "  the API refused the reads ({why}): give the token the conversations/message.readonly scope, or check those rows in HighLevel\n"
            ));
        }
        out
    }
}

/// One row in doubt, ready to be looked for.
struct Case {
    doubt: Doubt,
    line: ResultLine,
    out: Out,
}

/// Settles `doubts` (in row order) by reading their conversations with `reader`; writes each
/// settled row's new line to `journal`. A journal that cannot be written stops the run (the
/// verdicts given so far stand). With a thread column, `threads` are the thread store and the
/// threads' starts.
pub async fn settle(
    doubts: Vec<Doubt>,
    reader: &Reader,
    env: &Env<'_>,
    journal: &Journal,
    settle: Duration,
    threads: Option<(&ThreadLog, &Starts)>,
) -> Settled {
    let mut settled = Settled::default();
    let now = Timestamp::now();
    let mut by_conversation: BTreeMap<String, Vec<Case>> = BTreeMap::new();
    for doubt in doubts {
        settled.verdicts.insert(doubt.key.clone(), Verdict::Unknown);
        settled.unknown += 1;
        let line = match journal.line_at(doubt.offset) {
            Ok(line) => line,
            Err(e) => {
                tracing::warn!("row {} stays unknown: {e:#}", doubt.row);
                continue;
            }
        };
        let conversation = if doubt.message.conversation_id.is_empty() {
            line.conversation_id.clone()
        } else {
            doubt.message.conversation_id.clone()
        };
        let out = Out {
            from: left_at(&line.error),
            to: line.finished_at.parse().unwrap_or(now),
        };
        by_conversation
            .entry(conversation)
            .or_default()
            .push(Case { doubt, line, out });
    }
    let conversations: HashSet<String> = by_conversation.keys().cloned().collect();
    let mut taken = match journal.sent_ids(&conversations) {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!("the rows in doubt stay unknown: {e:#}");
            return settled;
        }
    };
    for (conversation, cases) in by_conversation {
        if conversation.is_empty() {
            for case in &cases {
                record_unknown(
                    journal,
                    env,
                    case,
                    "its conversation is not known, so it cannot be read back",
                );
            }
            continue;
        }
        let span = cases
            .iter()
            .map(|c| Expected::new(&c.doubt.message, c.out).span())
            .reduce(|a, b| Span {
                from: a.from.min(b.from),
                to: a.to.max(b.to),
            })
            .expect("a conversation has rows");
        let email = cases
            .iter()
            .any(|c| Expected::new(&c.doubt.message, c.out).is_email());
        let other = cases
            .iter()
            .any(|c| !Expected::new(&c.doubt.message, c.out).is_email());
        let found = reader
            .conversation(env, &conversation, span, email, other)
            .await;
        settled.reads = reader.reads();
        let found = match found {
            Ok(found) => found,
            Err(ReadError::Stop(_)) => break,
            Err(e) => {
                if let ReadError::Refused(why) = &e {
                    settled.refused = Some(why.clone());
                }
                for case in &cases {
                    record_unknown(journal, env, case, &format!("{e}; it may be stored"));
                }
                continue;
            }
        };
        for case in &cases {
            let expected = Expected::new(&case.doubt.message, case.out);
            let candidates = expected.candidates(&found, &taken);
            match candidates.as_slice() {
                [one] => {
                    taken.insert(one.id.clone());
                    let line = ResultLine {
                        row: case.doubt.row,
                        key: case.doubt.key.clone(),
                        status: Some(Status::Sent),
                        message_id: one.id.clone(),
                        conversation_id: one
                            .conversation_id
                            .clone()
                            .filter(|c| !c.is_empty())
                            .unwrap_or_else(|| conversation.clone()),
                        contact_id: one
                            .contact_id
                            .clone()
                            .filter(|c| !c.is_empty())
                            .unwrap_or_else(|| case.line.contact_id.clone()),
                        attempts: case.line.attempts,
                        error: format!(
                            "confirmed by read-back: {}",
                            without_left_at(&case.line.error)
                        ),
                        finished_at: now_rfc3339(),
                        ..Default::default()
                    };
                    if let (Some(place), Some((log, starts))) = (&case.doubt.thread, threads) {
                        started(reader, env, log, starts, place, one, &line).await;
                    }
                    write(journal, env, &line);
                    settled
                        .verdicts
                        .insert(case.doubt.key.clone(), Verdict::Confirmed);
                    settled.unknown -= 1;
                    settled.confirmed += 1;
                }
                [] => {
                    let left = case.out.from.unwrap_or(case.out.to);
                    let ripe =
                        left + SignedDuration::try_from(settle).unwrap_or(SignedDuration::MAX);
                    if ripe <= now {
                        settled
                            .verdicts
                            .insert(case.doubt.key.clone(), Verdict::Send);
                        settled.unknown -= 1;
                        settled.to_send += 1;
                    } else {
                        settled.too_young += 1;
                        settled.retry_after =
                            Some(settled.retry_after.map_or(ripe, |r| r.max(ripe)));
                        record_unknown(
                            journal,
                            env,
                            case,
                            &format!(
                                "not found by read-back, but its request left less than --settle {} ago, and the API may still be storing it: run again after {}",
                                shown(settle),
                                ripe.round(jiff::Unit::Second).unwrap_or(ripe)
                            ),
                        );
                    }
                }
                several => {
                    let ids: Vec<&str> = several.iter().map(|f| f.id.as_str()).collect();
                    record_unknown(
                        journal,
                        env,
                        case,
                        &format!(
                            "read-back found {} messages like it ({}): check them in HighLevel",
                            ids.len(),
                            ids.join(", ")
                        ),
                    );
                }
            }
        }
    }
    settled.reads = reader.reads();
    settled
}

/// The row of `line`, found stored as `found`, is an e-mail of the thread at `place`: if it is
/// the thread's start and the store does not have the thread yet, the thread's `emailMessageId`
/// (read back) goes in the store, synced, before `line` is written; none read, its replies
/// wait, saying the start is sent without one. A store that cannot be written stops the run.
async fn started(
    reader: &Reader,
    env: &Env<'_>,
    log: &ThreadLog,
    starts: &Starts,
    place: &ThreadPlace,
    found: &super::Found,
    line: &ResultLine,
) {
    let thread = starts.thread_ref(&place.lane, place.thread.clone(), line.row);
    if thread.start_row != line.row || log.get(thread.id).is_some() {
        return;
    }
    let why = match reader.thread_email_id(env, found).await {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err("read back without its thread's emailMessageId".to_owned()),
        Err(e) => Err(e.to_string()),
    };
    let email_message_id = match why {
        Ok(id) => id,
        Err(why) => {
            log.sent_without_id(thread.id);
            tracing::warn!(
                "row {}, the first message of thread {:?}, is stored, but {why}: the thread's other messages cannot be sent into it, and wait",
                line.row,
                thread.thread
            );
            return;
        }
    };
    let started = Started {
        email_message_id,
        key: line.key.clone(),
        row: line.row,
    };
    if let Err(e) = log.record(&place.lane, &place.thread, started, &line.message_id) {
        env.gate.stop_with(StopReason::ResultsFile(format!(
            "{}: {e}",
            log.path().display()
        )));
    }
}

/// `--settle` as a person writes it: `5m`, `90s`.
fn shown(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        _ => crate::quota::human(d),
    }
}

/// The row stays `unknown`, now with `why` (and the time its request left, kept).
fn record_unknown(journal: &Journal, env: &Env<'_>, case: &Case, why: &str) {
    let left = case.out.from.map(|t| format!("{t:.3}"));
    let line = ResultLine {
        row: case.doubt.row,
        status: Some(Status::Unknown),
        error: with_left_at(why, left.as_deref()),
        finished_at: case.line.finished_at.clone(),
        ..case.line.clone()
    };
    write(journal, env, &line);
}

fn write(journal: &Journal, env: &Env<'_>, line: &ResultLine) {
    if let Err(e) = journal.record(line) {
        env.gate.stop_with(StopReason::ResultsFile(format!(
            "{}: {e}",
            journal.path().display()
        )));
    }
}
