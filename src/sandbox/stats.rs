//! The sandbox's counters: what it answered, how busy it got, and whether messages of one
//! conversation arrived in date order. Served at `GET /__stats` and by [`super::Sandbox::stats`].
//!
//! Plain atomics on the hot path; the only lock guards the last stored `date` per conversation
//! and is taken only for messages that have a date.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A snapshot of the counters. `/__stats` itself is not counted.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Every request to the API routes, whatever its answer.
    pub requests: u64,
    /// Answered 200 with a new message (stored).
    pub accepted: u64,
    /// Answered 401.
    pub unauthorized: u64,
    /// Answered 422.
    pub unprocessable: u64,
    /// Answered 400 (missing or unsupported `Version`, a body that is not JSON).
    pub bad_request: u64,
    /// Answered 429.
    pub rate_limited: u64,
    /// Answered 500/502/503 by `--fail-rate` (nothing stored), or because the record could not be
    /// written.
    pub server_errors: u64,
    /// Stored, then the connection closed without an answer (`--drop-rate`).
    pub dropped: u64,
    /// `type: Custom` without `conversationProviderId`: 201 with an empty body, nothing stored.
    pub empty_201: u64,
    /// Most requests in flight at once.
    pub peak_concurrent: u64,
    /// Stored messages whose `date` is earlier than that of the previous stored message of the same
    /// `conversationId` (messages without a `date` are not compared).
    pub out_of_order: u64,
    /// What is left of today's budget; `None` when there is no daily limit.
    pub daily_remaining: Option<u64>,
    /// `GET /contacts/search/duplicate` requests answered past the gate.
    #[serde(default)]
    pub contact_searches: u64,
    /// `POST /contacts/upsert` requests answered past the gate.
    #[serde(default)]
    pub contact_upserts: u64,
    /// Contacts the upserts created.
    #[serde(default)]
    pub contacts_created: u64,
    /// `GET /conversations/search` requests answered past the gate.
    #[serde(default)]
    pub conversation_searches: u64,
    /// `POST /conversations/` requests answered past the gate.
    #[serde(default)]
    pub conversation_creates: u64,
    /// Conversations created.
    #[serde(default)]
    pub conversations_created: u64,
    /// `POST /conversations/` answered 400 "already exists".
    #[serde(default)]
    pub conversation_conflicts: u64,
    /// `POST /oauth/token` answered with a new pair (a refresh token spent, a new one issued).
    #[serde(default)]
    pub token_refreshes: u64,
    /// `POST /oauth/token` and `/oauth/locationToken` refused (a spent or unknown refresh
    /// token, the wrong client, a token that is not an agency one).
    #[serde(default)]
    pub token_refused: u64,
    /// `POST /oauth/locationToken` answered with a location token.
    #[serde(default)]
    pub location_tokens: u64,
    /// Requests to either OAuth endpoint, counted as they arrive (before `--token-delay`).
    #[serde(default)]
    pub token_requests: u64,
    /// Requests that stored nothing and were never answered (`--hang-rate`).
    #[serde(default)]
    pub hung: u64,
    /// Stored, then answered 504 (`--stored-504-rate`).
    #[serde(default)]
    pub stored_504: u64,
    /// `GET /conversations/messages/{id}` requests answered past the gate.
    #[serde(default)]
    pub reads_by_id: u64,
    /// `GET /conversations/messages/export` requests answered past the gate.
    #[serde(default)]
    pub reads_export: u64,
    /// `GET /conversations/{conversationId}/messages` requests answered past the gate.
    #[serde(default)]
    pub reads_conversation: u64,
    /// Files `POST /conversations/messages/upload` took (one per `fileAttachment` part).
    #[serde(default)]
    pub uploads: u64,
    /// Upload requests answered 413 (a file over the size limit).
    #[serde(default)]
    pub uploads_too_large: u64,
    /// Upload requests answered 415 (a file of a type not taken).
    #[serde(default)]
    pub uploads_unsupported: u64,
    /// Attachments of stored messages that name a URL of the sandbox's assets it never handed
    /// out (the message is stored all the same, as the real API would).
    #[serde(default)]
    pub attachments_not_uploaded: u64,
    /// E-mails stored that started a thread (named no `emailMessageId` it knows).
    #[serde(default)]
    pub email_threads: u64,
    /// E-mails stored into a thread: their `emailMessageId` is one it gave out, in their location.
    #[serde(default)]
    pub email_replies: u64,
    /// E-mails whose `emailMessageId` it never gave out (in their location): accepted, as a
    /// thread of their own.
    #[serde(default)]
    pub unknown_email_message_ids: u64,
}

impl Stats {
    /// Requests to the three read endpoints answered past the gate.
    pub fn reads(&self) -> u64 {
        self.reads_by_id + self.reads_export + self.reads_conversation
    }
}

/// How one request was answered, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    Accepted,
    Unauthorized,
    Unprocessable,
    BadRequest,
    RateLimited,
    ServerError,
    Dropped,
    Empty201,
    Hung,
    Stored504,
    ReadById,
    ReadExport,
    ReadConversation,
    Uploaded,
    UploadTooLarge,
    UploadUnsupported,
    AttachmentNotUploaded,
    /// Anything else (404 on an unknown route): counted in `requests` only.
    Other,
}

#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    accepted: AtomicU64,
    unauthorized: AtomicU64,
    unprocessable: AtomicU64,
    bad_request: AtomicU64,
    rate_limited: AtomicU64,
    server_errors: AtomicU64,
    dropped: AtomicU64,
    empty_201: AtomicU64,
    hung: AtomicU64,
    stored_504: AtomicU64,
    reads_by_id: AtomicU64,
    reads_export: AtomicU64,
    reads_conversation: AtomicU64,
    uploads: AtomicU64,
    uploads_too_large: AtomicU64,
    uploads_unsupported: AtomicU64,
    attachments_not_uploaded: AtomicU64,
    in_flight: AtomicU64,
    peak_concurrent: AtomicU64,
    out_of_order: AtomicU64,
    /// The `date` of the last stored message of each conversation that had one.
    last_date: Mutex<HashMap<String, Timestamp>>,
}

/// One request in flight; dropping it (answer sent, or the request abandoned) ends it.
pub struct InFlight<'a>(&'a Counters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl Counters {
    /// Counts a request in and marks it in flight until the guard drops.
    pub fn enter(&self) -> InFlight<'_> {
        self.requests.fetch_add(1, Relaxed);
        let now = self.in_flight.fetch_add(1, Relaxed) + 1;
        self.peak_concurrent.fetch_max(now, Relaxed);
        InFlight(self)
    }

    pub fn count(&self, answer: Counted) {
        let counter = match answer {
            Counted::Accepted => &self.accepted,
            Counted::Unauthorized => &self.unauthorized,
            Counted::Unprocessable => &self.unprocessable,
            Counted::BadRequest => &self.bad_request,
            Counted::RateLimited => &self.rate_limited,
            Counted::ServerError => &self.server_errors,
            Counted::Dropped => &self.dropped,
            Counted::Empty201 => &self.empty_201,
            Counted::Hung => &self.hung,
            Counted::Stored504 => &self.stored_504,
            Counted::ReadById => &self.reads_by_id,
            Counted::ReadExport => &self.reads_export,
            Counted::ReadConversation => &self.reads_conversation,
            Counted::Uploaded => &self.uploads,
            Counted::UploadTooLarge => &self.uploads_too_large,
            Counted::UploadUnsupported => &self.uploads_unsupported,
            Counted::AttachmentNotUploaded => &self.attachments_not_uploaded,
            Counted::Other => return,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Notes a stored message's `date` and counts it when it goes back in time within its
    /// conversation.
    pub fn note_date(&self, conversation_id: &str, date: Timestamp) {
        // A poisoned lock only means another request panicked mid-update of a plain map.
        let mut last = self.last_date.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(conversation_id) {
            Some(previous) => {
                if date < *previous {
                    self.out_of_order.fetch_add(1, Relaxed);
                }
                *previous = date;
            }
            None => {
                last.insert(conversation_id.to_owned(), date);
            }
        }
    }

    pub fn snapshot(&self, daily_remaining: Option<u64>) -> Stats {
        let get = |c: &AtomicU64| c.load(Relaxed);
        Stats {
            requests: get(&self.requests),
            accepted: get(&self.accepted),
            unauthorized: get(&self.unauthorized),
            unprocessable: get(&self.unprocessable),
            bad_request: get(&self.bad_request),
            rate_limited: get(&self.rate_limited),
            server_errors: get(&self.server_errors),
            dropped: get(&self.dropped),
            empty_201: get(&self.empty_201),
            peak_concurrent: get(&self.peak_concurrent),
            out_of_order: get(&self.out_of_order),
            hung: get(&self.hung),
            stored_504: get(&self.stored_504),
            reads_by_id: get(&self.reads_by_id),
            reads_export: get(&self.reads_export),
            reads_conversation: get(&self.reads_conversation),
            uploads: get(&self.uploads),
            uploads_too_large: get(&self.uploads_too_large),
            uploads_unsupported: get(&self.uploads_unsupported),
            attachments_not_uploaded: get(&self.attachments_not_uploaded),
            daily_remaining,
            ..Stats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn ordering_is_checked_per_conversation() {
        let c = Counters::default();
        c.note_date("a", t("2024-01-01T10:00:00Z"));
        c.note_date("b", t("2024-01-01T09:00:00Z")); // other conversation: not compared with a
        c.note_date("a", t("2024-01-01T10:00:00Z")); // equal is in order
        c.note_date("a", t("2024-01-01T09:59:59Z")); // back in time
        c.note_date("a", t("2024-01-01T09:59:59.5Z")); // later than the previous one: in order
        assert_eq!(c.snapshot(None).out_of_order, 1);
    }

    #[test]
    fn peak_concurrency_outlives_the_requests() {
        let c = Counters::default();
        {
            let _a = c.enter();
            let _b = c.enter();
            let _c = c.enter();
        }
        let _d = c.enter();
        let s = c.snapshot(Some(5));
        assert_eq!((s.requests, s.peak_concurrent), (4, 3));
        assert_eq!(s.daily_remaining, Some(5));
    }
}
