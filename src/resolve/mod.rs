//! ID resolution (issue 7): rows of a migration carry phone numbers and e-mail addresses, not the
//! HighLevel `contactId` and `conversationId` the inbound endpoint needs. The [`Resolver`] finds
//! them, creating what is missing when asked, in the deliver step just before a row's message is
//! sent:
//!
//! - contact: `GET /contacts/search/duplicate` (`number` and `email`, URL-encoded, so `+` goes as
//!   `%2B`); if none and `--create-contacts`, `POST /contacts/upsert` (never with `tags`, which
//!   would overwrite the contact's tags: FACTS §4, pitfall 10);
//! - conversation: `GET /conversations/search?locationId&contactId`; if none,
//!   `POST /conversations/` (201). Its 400 "already exists" (search lags a create, pitfall 5)
//!   sends it back to searching.
//!
//! Every request passes the run's [`Gate`] (stop, pace, `--max-requests`) and is retried by the
//! run's [`Policy`], like a message, and what the server says of its limits goes to the gate. What is found goes into the
//! [`IdMap`] at once, so no lookup is made twice. Resolution is serialised per contact key and
//! per contact ID (keyed async locks): two rows of one new contact never race to create two
//! contacts or two conversations, even when they run in different lanes.

mod contact;
mod conversation;
pub mod idmap;
pub mod phone;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use reqwest::header::HeaderMap;
use serde::Deserialize;

use crate::auth::{Auth, Rejected};
use crate::diskmap::DiskMap;
use crate::gate::Gate;
use crate::message::InboundMessage;
use crate::retry::{
    Attempt, Next, Outcome, Policy, Request, StopReason, classify, describe, trace_id,
};
use crate::sender::server_limits;

pub use idmap::{IdMap, Known, Origin};

/// The `Version` of the Contacts endpoints (`api/apps/contacts.json`).
const CONTACTS_VERSION: &str = "2021-07-28";
/// The `Version` of the Conversations endpoints (`api/apps/conversations.json`).
pub(crate) const CONVERSATIONS_VERSION: &str = "2021-04-15";

/// Who a row's contact is, when the row lacks a HighLevel ID for it or for its conversation.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lookup {
    /// The sub-account (location) the contact is looked up and created in.
    pub location_id: String,
    /// E.164.
    pub phone: Option<String>,
    /// Lower case.
    pub email: Option<String>,
    /// `contactName`: the full name a created contact gets; `None`: not given.
    pub name: Option<String>,
    /// `firstName`: the first name a created contact gets; `None`: not given.
    pub first_name: Option<String>,
    /// `lastName`: the last name a created contact gets; `None`: not given.
    pub last_name: Option<String>,
}

impl Lookup {
    /// The contact's external key, the ID map's key: the e-mail address first (the API's own
    /// duplicate-search priority), else the phone number, else the contact ID the row gave.
    pub fn key(&self, contact_id: &str) -> String {
        match (&self.email, &self.phone) {
            (Some(e), _) => format!("email:{e}"),
            (None, Some(p)) => format!("phone:{p}"),
            (None, None) => format!("contact:{contact_id}"),
        }
    }

    /// The scheduler lane of a row that has no conversation ID yet: all rows of one contact
    /// share it, so they go one at a time, in input order, and resolve once.
    pub fn lane(&self, contact_id: &str) -> String {
        format!("{}/{}", self.location_id, self.key(contact_id))
    }
}

/// What the resolver did, for the summary.
#[derive(Debug, Default)]
pub struct Counters {
    /// Lookup requests made, retries included.
    pub lookups: AtomicU64,
    /// Contacts the API already had.
    pub contacts_found: AtomicU64,
    /// Contacts created (`--create-contacts`).
    pub contacts_created: AtomicU64,
    /// Contacts not found, and not created (no `--create-contacts`): their rows fail.
    pub contacts_missing: AtomicU64,
    /// Conversations the API already had.
    pub conversations_found: AtomicU64,
    /// Conversations created.
    pub conversations_created: AtomicU64,
    /// Searches that returned more than one conversation for a contact (the first was taken).
    pub conversations_ambiguous: AtomicU64,
}

/// Why a row could not be resolved.
#[derive(Debug)]
pub enum Failure {
    /// This row cannot be resolved now: it is recorded `failed` and tried again next run.
    Row {
        /// Why, in words, for the results file.
        error: String,
        /// The HTTP status of the refusal; `None` when no HTTP answer is to blame.
        http_status: Option<u16>,
        /// The API's trace ID of the refusal; empty when there is none.
        trace_id: String,
    },
    /// The run stops (with this reason) or was interrupted (`None`); the row stays unrecorded.
    Stop(Option<StopReason>),
}

impl Failure {
    fn row(error: impl Into<String>) -> Failure {
        Failure::Row {
            error: error.into(),
            http_status: None,
            trace_id: String::new(),
        }
    }
}

/// What a lookup request shares with the run's messages: the gate every request passes (stop,
/// pace, budget, the server's limits) and the retry policy.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    /// The run's gate: stop, pace, `--max-requests`, the server's limits.
    pub gate: &'a Gate,
    /// The run's retry policy.
    pub policy: &'a Policy,
    /// The run's token, renewed before it expires and after a 401.
    pub auth: &'a Auth,
}

/// What a [`gated_call`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// A contact or conversation lookup: a 401 stops the run.
    Lookup,
    /// A read of messages: a 401 is the caller's to read (a token without the read scope).
    Read,
    /// An attachment upload (`upload`): as a lookup, a 401 stops the run, and a lost answer is
    /// retried (a second copy of a file is stored, never a second message).
    Upload,
}

/// An answer to a lookup that is not retried: 2xx, or a refusal the caller reads.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn failure(&self, what: &str) -> Failure {
        Failure::Row {
            error: format!("{what}: {}", describe(self.status, &self.body)),
            http_status: Some(self.status),
            trace_id: trace_id(&self.body),
        }
    }
}

/// Finds and creates contacts and conversations for one run.
pub struct Resolver {
    client: reqwest::Client,
    base: reqwest::Url,
    create_contacts: bool,
    /// The contact and conversation IDs found or created so far (also on disk, for resume).
    pub ids: IdMap,
    /// What the resolver did, for the summary.
    pub counters: Counters,
    /// Keyed locks: a name is here while a resolution holds or awaits it.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The hashes of `(location, key)` of contacts this run searched for and did not find
    /// (without `--create-contacts`): their later rows fail without another search. On disk,
    /// like the ID map's index: an export of half a million unknown contacts costs no memory.
    missing: Mutex<DiskMap>,
}

/// Holds a keyed lock; dropping it frees the key.
struct KeyGuard<'a> {
    name: String,
    locks: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut locks = self.locks.lock().expect("resolver locks");
        // Only the map and this guard hold it: nobody waits, so the entry can go (waiters clone
        // the Arc under this same lock, so none can appear between the check and the removal).
        if locks
            .get(&self.name)
            .is_some_and(|m| Arc::strong_count(m) == 2)
        {
            locks.remove(&self.name);
        }
    }
}

#[derive(Deserialize)]
struct WithId {
    id: String,
}

impl Resolver {
    /// A resolver sending to `base` (the token comes with each request, from [`Env`]);
    /// `create_contacts` is `--create-contacts`.
    pub fn new(
        base: &reqwest::Url,
        timeout: Duration,
        create_contacts: bool,
        ids: IdMap,
    ) -> Result<Resolver> {
        // Lookups share the sender's client settings; each sets its own Version header.
        let client = crate::sender::api_client(timeout, 8, HeaderMap::new())?;
        let missing = DiskMap::new(&crate::results::line::folder_of(ids.path()));
        Ok(Resolver {
            client,
            base: base.clone(),
            create_contacts,
            ids,
            counters: Counters::default(),
            locks: Mutex::new(HashMap::new()),
            missing: Mutex::new(missing),
        })
    }

    /// Lookup requests made so far.
    pub fn lookups(&self) -> u64 {
        self.counters.lookups.load(Ordering::Relaxed)
    }

    /// The resolver's lines of the run's summary.
    pub fn summary(&self) -> String {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "  lookups       {:>9}   (IDs kept in {})\n  contacts      {} found, {} created, {} missing\n  conversations {} found, {} created, {} with more than one\n",
            n(&c.lookups),
            self.ids.path().display(),
            n(&c.contacts_found),
            n(&c.contacts_created),
            n(&c.contacts_missing),
            n(&c.conversations_found),
            n(&c.conversations_created),
            n(&c.conversations_ambiguous),
        )
    }

    fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        url.set_path(&format!("{}{path}", self.base.path().trim_end_matches('/')));
        url
    }

    async fn lock(&self, name: String) -> KeyGuard<'_> {
        let mutex = self
            .locks
            .lock()
            .expect("resolver locks")
            .entry(name.clone())
            .or_default()
            .clone();
        KeyGuard {
            name,
            locks: &self.locks,
            _guard: mutex.lock_owned().await,
        }
    }

    /// Fills in `m.contact_id` and `m.conversation_id` from the ID map or the API.
    pub async fn resolve(
        &self,
        m: &mut InboundMessage,
        lookup: &Lookup,
        env: &Env<'_>,
    ) -> Result<(), Failure> {
        let location = lookup.location_id.as_str();
        let key = lookup.key(&m.contact_id);
        let contact = if m.contact_id.is_empty() {
            let _held = self.lock(format!("key {location} {key}")).await;
            match stop_unread(self.ids.contact(location, &key))? {
                Some(known) => known,
                None => {
                    let known = self.find_or_create_contact(lookup, env).await?;
                    let conversation = stop_unread(self.ids.conversation(location, &known.id))?;
                    self.record(location, &key, &known, conversation.as_ref())?;
                    known
                }
            }
        } else {
            Known {
                id: m.contact_id.clone(),
                origin: Origin::Given,
            }
        };
        if m.conversation_id.is_empty() {
            let _held = self
                .lock(format!("contact {location} {}", contact.id))
                .await;
            let conversation = match stop_unread(self.ids.conversation(location, &contact.id))? {
                Some(known) => known,
                None => {
                    let known = self
                        .find_or_create_conversation(location, &contact.id, env)
                        .await?;
                    self.record(location, &key, &contact, Some(&known))?;
                    known
                }
            };
            m.conversation_id = conversation.id;
        }
        m.contact_id = contact.id;
        Ok(())
    }

    /// Writes what was found into the ID map (a failure to write stops the run).
    pub fn record(
        &self,
        location: &str,
        key: &str,
        contact: &Known,
        conversation: Option<&Known>,
    ) -> Result<(), Failure> {
        self.ids
            .record(location, key, contact, conversation)
            .map_err(|e| {
                Failure::Stop(Some(StopReason::ServerFailing(format!(
                    "cannot write the ID map {}: {e}",
                    self.ids.path().display()
                ))))
            })
    }

    /// Whether this run found the contact missing already (without `--create-contacts`).
    fn known_missing(&self, location: &str, key: &str) -> Result<bool, Failure> {
        let missing = self.missing.lock().expect("missing contacts");
        missing
            .get(idmap::contact_hash(location, key))
            .map(|v| v.is_some())
            .map_err(|e| self.missing_unwritable(e))
    }

    /// Notes the contact missing; whether it was not noted before.
    fn note_missing(&self, location: &str, key: &str) -> Result<bool, Failure> {
        let mut missing = self.missing.lock().expect("missing contacts");
        missing
            .insert(idmap::contact_hash(location, key), 1)
            .map(|before| before.is_none())
            .map_err(|e| self.missing_unwritable(e))
    }

    fn missing_unwritable(&self, e: std::io::Error) -> Failure {
        Failure::Stop(Some(StopReason::Error(format!(
            "cannot keep the contacts found missing in a temp file beside {}: {e}",
            self.ids.path().display()
        ))))
    }

    /// One lookup request until it has an answer worth reading ([`gated_call`]).
    async fn call(
        &self,
        env: &Env<'_>,
        what: &str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Answer, Failure> {
        gated_call(env, &self.counters.lookups, what, Call::Lookup, request).await
    }
}

/// One request that is safe to repeat (a lookup, a read) until it has an answer worth reading:
/// every attempt passes the gate
/// (a rate-limit slot, a `--max-requests` slot, a place on the wire) with a live token; what is
/// not an answer to read (401, 429, 5xx, a lost connection) is classified and decided like a
/// message's attempt, except that a lost answer is retried (lookups are searches or upserts,
/// and a conversation created by a lost attempt answers the next one with "already exists").
/// A 401 on a lookup renews the token once and goes again (a second stops the run); for a
/// [`Call::Read`] a 401 is an answer for the caller to read (a read refused for want of a
/// scope), not the run's stop.
pub(crate) async fn gated_call(
    env: &Env<'_>,
    counter: &AtomicU64,
    what: &str,
    kind: Call,
    request: impl Fn() -> reqwest::RequestBuilder,
) -> Result<Answer, Failure> {
    let mut attempts = 0u32;
    let mut replayed = false;
    loop {
        let bearer = env.auth.ready().await.map_err(|r| Failure::Stop(Some(r)))?;
        // Its place on the wire is held until the answer is read, not through a renewal or
        // a backoff (at --concurrency 1 that would hold every message back).
        let Ok(on_the_wire) = env.gate.admit().await else {
            return Err(Failure::Stop(None));
        };
        attempts += 1;
        counter.fetch_add(1, Ordering::Relaxed);
        let sent = request()
            .header(reqwest::header::AUTHORIZATION, bearer.value.clone())
            .send()
            .await;
        if kind != Call::Read
            && let Ok(response) = &sent
            && response.status().as_u16() == 401
        {
            env.auth.note_rejected(&bearer);
            env.gate.observe(server_limits(response.headers()));
            // A 401 says nothing of the day's budget: a --wait probe goes again.
            env.gate.probe_lost();
            drop(on_the_wire);
            let words = format!("{what}: HTTP 401");
            match env.auth.rejected(&bearer, replayed, words).await {
                Rejected::Replay => {
                    replayed = true;
                    continue;
                }
                // Nothing of this row was sent: it stays unrecorded for the next run.
                Rejected::Stop(reason) => return Err(Failure::Stop(Some(reason))),
            }
        }
        let attempt = match sent {
            Err(e) => Attempt::NoAnswer(crate::sender::error_chain(&e)),
            Ok(response) => {
                let status = response.status().as_u16();
                let limits = server_limits(response.headers());
                let retry_after =
                    header_number(response.headers(), "retry-after").map(Duration::from_secs);
                env.gate.observe(limits);
                env.gate.attempt_done();
                match response.bytes().await {
                    Ok(body)
                        if !(matches!(status, 429 | 500 | 502 | 503 | 504)
                            || (status == 401 && kind != Call::Read)) =>
                    {
                        // The server answers: its earlier failures were not "in a row". (Not
                        // for a read: a server that answers reads and fails every message is
                        // still failing.)
                        if kind != Call::Read {
                            env.policy.answered();
                        }
                        return Ok(Answer {
                            status,
                            body: body.to_vec(),
                        });
                    }
                    Ok(body) => Attempt::Answered {
                        status,
                        body: body.to_vec(),
                        retry_after,
                        daily_remaining: limits.daily_remaining,
                        interval: limits.interval,
                    },
                    Err(e) => Attempt::NoAnswer(format!("HTTP {status} but the body was cut: {e}")),
                }
            }
        };
        match &attempt {
            Attempt::Answered { .. } => env.gate.attempt_done(),
            _ => env.gate.probe_lost(),
        }
        drop(on_the_wire);
        let outcome = match classify(&attempt) {
            // --wait: the gate holds this request (and every one) until the next day.
            Outcome::Stop(StopReason::DailyBudget) if env.gate.waits() => {
                env.gate.budget_spent();
                continue;
            }
            Outcome::Retry {
                reason,
                after,
                throttled,
            } => Outcome::Retry {
                reason: format!("{what}: {reason}"),
                after,
                throttled,
            },
            Outcome::Unknown(why) => Outcome::Unknown(format!("{what}: {why}")),
            other => other,
        };
        let decision = env
            .policy
            .decide(outcome, attempts, Request::Lookup, fastrand::f64());
        if let Some(pause) = decision.pause {
            env.gate.pause(pause);
        }
        if let Some(reason) = decision.stop {
            // Nothing of this row was sent: it stays unrecorded for the next run.
            return Err(Failure::Stop(Some(reason)));
        }
        match decision.next {
            Next::Retry { reason, delay } => {
                tracing::debug!(attempt = attempts, "retrying a lookup: {reason}");
                if env.gate.wait(delay).await.is_err() {
                    return Err(Failure::Stop(None));
                }
            }
            Next::Failed(why) | Next::Unknown(why) => return Err(Failure::row(why)),
            Next::Sent(_) => {
                return Err(Failure::row(format!("{what}: an answer with a messageId")));
            }
        }
    }
}

/// A finding of the ID map, or the run's stop when the map cannot be read.
pub fn stop_unread<T>(found: Result<T>) -> Result<T, Failure> {
    found.map_err(|e| Failure::Stop(Some(StopReason::Error(format!("{e:#}")))))
}

fn answer_unreadable(answer: &Answer, what: &str, e: &serde_json::Error) -> Failure {
    Failure::Row {
        error: format!(
            "HTTP {} to {what} with a body that does not read as the spec says ({e})",
            answer.status
        ),
        http_status: Some(answer.status),
        trace_id: trace_id(&answer.body),
    }
}

fn header_number(headers: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_prefer_the_email_then_the_phone() {
        let mut l = Lookup {
            location_id: "L1".into(),
            phone: Some("+15037081210".into()),
            email: Some("ann@example.com".into()),
            ..Default::default()
        };
        assert_eq!(l.key(""), "email:ann@example.com");
        assert_eq!(l.lane(""), "L1/email:ann@example.com");
        l.email = None;
        assert_eq!(l.key(""), "phone:+15037081210");
        l.phone = None;
        assert_eq!(l.key("K9"), "contact:K9");
    }
}
