//! E-mail threads (`threadId`, issue 15): which row starts each thread, and what every other
//! message of the thread is sent with.
//!
//! A thread is a `threadId` cell within one conversation (the row's lane: its conversation, or
//! its contact when the IDs are looked up). Its **start** is its first message in date order
//! (ties: the file's order), among every e-mail of the input with that cell, whatever became of
//! it: the pass before sending ([`StartsBuilder`]) finds it, and says what it knew of it then
//! ([`StartState`]: to be sent, sent or left `unknown` by an earlier run, invalid).
//!
//! The start is sent as it is; the `emailMessageId` the API answers for it goes in the thread
//! store (`results::threads`), on disk before the start's `sent` line. Every later message of
//! the thread is sent with that id ([`decide`]): the start's, not the previous message's,
//! because the start's id is known as soon as the start is sent and never changes, so a reply
//! does not depend on every message between it and the start having been sent (one failed
//! reply would otherwise hold back the rest), and HighLevel's thread is named by its first
//! message (FACTS pitfall 7: "map source thread → returned emailMessageId"). A message whose
//! thread is neither in the store nor started by itself waits (`waiting`, with the reason):
//! it is never sent into a new thread by accident.

use std::collections::HashMap;

use bytes::Bytes;
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

use crate::mapping::ThreadPlace;
use crate::message::InboundMessage;
use crate::results::threads::{Started, thread_id};

/// What the pass before sending knew of a thread's start when the run began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartState {
    /// A row this run sends (or tries again).
    ToSend,
    /// Recorded `sent` by an earlier run.
    SentEarlier,
    /// Left `unknown` by an earlier run (its request got no answer).
    UnknownEarlier,
    /// Breaks a rule: recorded `invalid`, never sent.
    Invalid,
}

impl StartState {
    /// One byte, for a lane's spill file.
    pub fn to_code(self) -> u8 {
        match self {
            StartState::ToSend => 0,
            StartState::SentEarlier => 1,
            StartState::UnknownEarlier => 2,
            StartState::Invalid => 3,
        }
    }

    /// From [`StartState::to_code`] (a spilled row); an unknown code reads as `ToSend`.
    pub fn from_code(code: u8) -> StartState {
        match code {
            1 => StartState::SentEarlier,
            2 => StartState::UnknownEarlier,
            3 => StartState::Invalid,
            _ => StartState::ToSend,
        }
    }
}

/// An e-mail of a thread, as a job carries it.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadRef {
    /// The thread: its lane and `threadId` cell, hashed.
    pub id: u128,
    /// The `threadId` cell, as the thread store records it.
    pub thread: String,
    /// The row that starts the thread in this input.
    pub start_row: u64,
    /// What the pass knew of that row.
    pub start_state: StartState,
}

/// What a message of a thread is sent with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Threading {
    /// It starts the thread: sent as it is, its answer's `emailMessageId` kept.
    Start,
    /// A later message: sent with the thread's `emailMessageId`.
    Reply(String),
    /// Its thread has not started: not sent, recorded `waiting` with this reason.
    Wait(String),
}

/// What row `row` (key `key`) of thread `r` is sent with, the thread store knowing `known`.
pub fn decide(r: &ThreadRef, row: u64, key: &str, known: Option<Started>) -> Threading {
    match known {
        // The start itself sent again (`--resend-unknown`) starts the thread afresh.
        Some(started) if started.key != key => Threading::Reply(started.email_message_id),
        _ if r.start_row == row => Threading::Start,
        _ => Threading::Wait(wait_reason(r)),
    }
}

/// Why a message waits for its thread's start.
fn wait_reason(r: &ThreadRef) -> String {
    let start = format!(
        "not sent: row {}, the first message of its thread (threadId {:?}),",
        r.start_row, r.thread
    );
    match r.start_state {
        StartState::ToSend => format!(
            "{start} was not sent in this run; this row goes into that thread after it, on the next run"
        ),
        StartState::SentEarlier => format!(
            "{start} is recorded sent, but the emailMessageId the API answered for it is not in the thread store (no answer carried it: sent by a version without threads, answered without one, or confirmed by a read-back that gave none): give this row's emailMessageId column the thread's id to send it into that thread"
        ),
        StartState::UnknownEarlier => format!(
            "{start} is unknown (its request got no answer): settle it with --verify-unknown; this row waits so as not to open a new thread"
        ),
        StartState::Invalid => format!(
            "{start} is invalid: fix it, and the next run sends it and then this row into its thread"
        ),
    }
}

/// `body` (a serialised [`InboundMessage`]) with `emailMessageId` set to `id`, unless the row
/// names one itself (a column holding the API's own id wins).
pub fn reply_body(body: &Bytes, id: &str) -> Bytes {
    let Ok(mut message) = serde_json::from_slice::<InboundMessage>(body) else {
        return body.clone();
    };
    if message.email_message_id.is_some() {
        return body.clone();
    }
    message.email_message_id = Some(id.to_owned());
    Bytes::from(serde_json::to_vec(&message).expect("a message serialises"))
}

/// One thread while the pass reads: its start so far.
struct Candidate {
    date: i64,
    row: u64,
    state: StartState,
    /// The thread's first row in the file.
    file_first: u64,
}

/// Finds each thread's start while the pass before sending reads the input in file order.
#[derive(Default)]
pub struct StartsBuilder {
    threads: HashMap<u128, Candidate, Xxh3DefaultBuilder>,
    messages: u64,
}

impl StartsBuilder {
    /// Row `row`, an e-mail of the thread at `place`, in the state `state`. Rows come in
    /// ascending order.
    pub fn visit(&mut self, place: &ThreadPlace, row: u64, state: StartState) {
        self.messages += 1;
        // Without a date that reads, a row is taken as first: an invalid start holds its
        // thread back rather than let a reply open a new one.
        let date = place.date_ms.unwrap_or(i64::MIN);
        let id = thread_id(&place.lane, &place.thread);
        self.threads
            .entry(id)
            .and_modify(|c| {
                if (date, row) < (c.date, c.row) {
                    (c.date, c.row, c.state) = (date, row, state);
                }
            })
            .or_insert(Candidate {
                date,
                row,
                state,
                file_first: row,
            });
    }

    /// Every row seen: the starts, and what the pass says of them (`started`: whether a thread
    /// was started in an earlier run, as the thread store knows).
    pub fn finish(self, started: impl Fn(u128) -> bool) -> (Starts, Report) {
        let mut report = Report {
            messages: self.messages,
            threads: self.threads.len() as u64,
            ..Report::default()
        };
        let mut starts = HashMap::with_capacity_and_hasher(self.threads.len(), Default::default());
        for (id, c) in self.threads {
            if c.file_first != c.row {
                report.replies_first_in_file += 1;
            }
            match (started(id), c.state) {
                (true, _) => report.continued += 1,
                (false, StartState::ToSend) => {}
                (false, _) => report.held += 1,
            }
            starts.insert(id, (c.row, c.state));
        }
        (Starts { starts }, report)
    }
}

/// Each thread's start, by thread.
#[derive(Default)]
pub struct Starts {
    starts: HashMap<u128, (u64, StartState), Xxh3DefaultBuilder>,
}

impl Starts {
    /// The thread of row `row` (lane `lane`, `threadId` `thread`), for its job.
    pub fn thread_ref(&self, lane: &str, thread: String, row: u64) -> ThreadRef {
        let id = thread_id(lane, &thread);
        let (start_row, start_state) = self
            .starts
            .get(&id)
            .copied()
            // The pass saw every row; one it did not place starts its own thread.
            .unwrap_or((row, StartState::ToSend));
        ThreadRef {
            id,
            thread,
            start_row,
            start_state,
        }
    }
}

/// What the pass found of threads, for its log lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// E-mails with a thread cell.
    pub messages: u64,
    /// Threads among them.
    pub threads: u64,
    /// Threads started in an earlier run (in the thread store): their messages go into them.
    pub continued: u64,
    /// Threads whose start is not to be sent and not in the store: their replies wait.
    pub held: u64,
    /// Threads whose first row in the file is not their first message by date.
    pub replies_first_in_file: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::threads::ThreadLog;

    fn place(lane: &str, thread: &str, date_ms: Option<i64>) -> ThreadPlace {
        ThreadPlace {
            lane: lane.into(),
            thread: thread.into(),
            date_ms,
        }
    }

    #[test]
    fn the_start_is_the_first_by_date_within_its_conversation() {
        let dir = tempfile::tempdir().unwrap();
        let log = ThreadLog::open(&dir.path().join("t.csv")).unwrap();
        log.record(
            "c9",
            "old",
            Started {
                email_message_id: "E-old".into(),
                key: "k0".into(),
                row: 1,
            },
            "m0",
        )
        .unwrap();
        let mut b = StartsBuilder::default();
        b.visit(&place("c1", "t", Some(300)), 1, StartState::ToSend);
        b.visit(&place("c1", "t", Some(100)), 2, StartState::Invalid);
        b.visit(&place("c1", "t", Some(100)), 3, StartState::ToSend);
        b.visit(&place("c2", "t", Some(50)), 4, StartState::ToSend);
        b.visit(&place("c9", "old", Some(10)), 5, StartState::ToSend);
        b.visit(&place("c3", "u", None), 6, StartState::UnknownEarlier);
        b.visit(&place("c3", "u", Some(1)), 7, StartState::ToSend);
        let (starts, report) = b.finish(|id| log.get(id).is_some());
        let r = starts.thread_ref("c1", "t".into(), 1);
        assert_eq!(
            (r.start_row, r.start_state),
            (2, StartState::Invalid),
            "same instant: the file's order"
        );
        assert_eq!(starts.thread_ref("c2", "t".into(), 4).start_row, 4);
        assert_eq!(starts.thread_ref("c3", "u".into(), 7).start_row, 6);
        assert_eq!(
            report,
            Report {
                messages: 7,
                threads: 4,
                continued: 1,
                held: 2,
                replies_first_in_file: 1,
            }
        );
    }

    #[test]
    fn a_reply_goes_with_the_known_id_and_waits_without_it() {
        let r = ThreadRef {
            id: 1,
            thread: "t".into(),
            start_row: 2,
            start_state: StartState::UnknownEarlier,
        };
        let known = |key: &str| {
            Some(Started {
                email_message_id: "E1".into(),
                key: key.into(),
                row: 2,
            })
        };
        assert_eq!(decide(&r, 2, "k2", None), Threading::Start);
        assert_eq!(
            decide(&r, 5, "k5", known("k2")),
            Threading::Reply("E1".into())
        );
        assert_eq!(
            decide(&r, 2, "k2", known("k2")),
            Threading::Start,
            "the start sent again starts afresh"
        );
        let Threading::Wait(why) = decide(&r, 5, "k5", None) else {
            panic!("waits")
        };
        assert!(
            why.contains("row 2") && why.contains("--verify-unknown"),
            "{why}"
        );
        let body = Bytes::from_static(br#"{"type":"Email","conversationId":"c","contactId":"k","direction":"inbound","html":"x"}"#);
        let sent: serde_json::Value = serde_json::from_slice(&reply_body(&body, "E1")).unwrap();
        assert_eq!(sent["emailMessageId"], "E1");
        let own = Bytes::from_static(br#"{"type":"Email","conversationId":"c","contactId":"k","direction":"inbound","html":"x","emailMessageId":"API-1"}"#);
        let sent: serde_json::Value = serde_json::from_slice(&reply_body(&own, "E1")).unwrap();
        assert_eq!(sent["emailMessageId"], "API-1", "the row's own id wins");
    }
}
