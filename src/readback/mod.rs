//! Read-back (issue 13): the API has no idempotency key, so a request that left without an
//! answer (a timeout, a dropped connection, a crash, a gateway's 504) may or may not have
//! stored its message. Reading the conversation back tells. This module owns the reads and
//! what they are used for:
//!
//! - [`Reader`]: the three read endpoints of `api/apps/conversations.json`, each request
//!   through the run's gate (stop, pace, `--max-requests`) and retry policy like a lookup
//!   (`resolve::gated_call`). A conversation is read with the export
//!   (`GET /conversations/messages/export`, bounded by dates, cursor paging, 500 a page) when
//!   the location is known (it is required there), else with the conversation's list
//!   (`GET /conversations/{id}/messages`, paged back with `lastMessageId`), read both flat, as
//!   the spec has it, and nested under `messages`, as the real API answers (FACTS §4, #54).
//! - `matching` (pure): which messages read back can be a row's: direction, type, body,
//!   attachments, and `dateAdded` equal to the row's `date` or within the time its request was
//!   out.
//! - `settle`: `run --verify-unknown`, before anything is sent: every `unknown` row of the
//!   results file looked for in its conversation (one read per conversation serves all its
//!   rows) and settled: `sent` with the ID found, sent now, or left `unknown` with the reason.
//! - `kinds`: how an inbound `type` reads back as `messageType`.

pub mod kinds;
pub mod matching;
pub mod settle;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use jiff::Timestamp;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use crate::resolve::{CONVERSATIONS_VERSION, Call, Env, Failure, gated_call};
use crate::retry::{StopReason, describe};

/// Messages a conversation list page asks for (the spec's default is 20; no maximum is given).
const LIST_PAGE: usize = 100;
/// Messages an export page asks for (the spec's maximum).
const EXPORT_PAGE: usize = 500;
/// The most pages one conversation's read takes before it gives up on it.
const MAX_PAGES: usize = 200;

/// One message as the read endpoints give it (`GetMessageResponseDto`), the fields read-back
/// looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Found {
    /// `id`: the message's ID.
    #[serde(default)]
    pub id: String,
    /// `messageType`: `TYPE_SMS`, `TYPE_EMAIL`, …
    #[serde(default)]
    pub message_type: Option<String>,
    /// `direction`: `inbound` or `outbound`.
    #[serde(default)]
    pub direction: Option<String>,
    /// `body`: the text.
    #[serde(default)]
    pub body: Option<String>,
    /// `attachments`: URLs.
    #[serde(default)]
    pub attachments: Option<Vec<String>>,
    /// `dateAdded`, as the API writes it.
    #[serde(default)]
    pub date_added: Option<String>,
    /// `conversationId`.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// `contactId`.
    #[serde(default)]
    pub contact_id: Option<String>,
    /// `meta.email.messageIds` (`MessageMeta`: "list of all email message ids under the message
    /// thread"), when the answer carries it; a `meta` of another shape reads as none.
    #[serde(default, rename = "meta", deserialize_with = "email_message_ids")]
    pub email_message_ids: Vec<String>,
}

/// `meta.email.messageIds`, read leniently: whatever else `meta` holds is not read-back's.
fn email_message_ids<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let meta = Value::deserialize(d)?;
    Ok(meta["email"]["messageIds"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(Value::as_str)
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default())
}

impl Found {
    /// `dateAdded`, if it reads as a date.
    pub fn added(&self) -> Option<Timestamp> {
        self.date_added.as_deref()?.parse().ok()
    }

    /// The `emailMessageId` a reply names to join this e-mail's thread: the first of
    /// `meta.email.messageIds`. Read-back asks it only of a thread's start, a message sent
    /// without an `emailMessageId`, so its thread's first id is its own; and any id of the
    /// thread would thread a reply into it (the API threads a reply "for which" id it names).
    pub fn thread_email_id(&self) -> Option<&str> {
        self.email_message_ids.first().map(String::as_str)
    }
}

/// Why a read gave no list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// 401 or 403: the token may not read messages (no `conversations/message.readonly`).
    Refused(String),
    /// Any other failure once retries were spent; the API's words.
    Failed(String),
    /// The run is stopping (with this reason, or interrupted): nothing more may be asked.
    Stop(Option<StopReason>),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Refused(why) => write!(
                f,
                "the read-back was refused ({why}): the token may lack the conversations/message.readonly scope"
            ),
            ReadError::Failed(why) => write!(f, "the read-back failed ({why})"),
            ReadError::Stop(Some(reason)) => {
                write!(f, "the run stopped before the read-back ({reason})")
            }
            ReadError::Stop(None) => f.write_str("the run stopped before the read-back"),
        }
    }
}

/// The time span a conversation is read for: messages added from `from` to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// The earliest `dateAdded` wanted.
    pub from: Timestamp,
    /// The latest `dateAdded` wanted.
    pub to: Timestamp,
}

/// Reads messages back from one API root.
pub struct Reader {
    client: reqwest::Client,
    base: reqwest::Url,
    /// The location: with it a conversation is read with the export, bounded by dates.
    location: Option<String>,
    /// Read requests made, retries included.
    reads: AtomicU64,
    /// Why the API refused a read (401/403), the first time: for the summary.
    refused: std::sync::Mutex<Option<String>>,
    /// Messages answered 500/502/504 left `unknown` because their read was refused.
    refused_checks: AtomicU64,
}

impl Reader {
    /// A reader of `base` (the token comes with each call, from its [`Env`]); `location`
    /// (`--location-id`) picks the export.
    pub fn new(base: &reqwest::Url, timeout: Duration, location: Option<String>) -> Result<Reader> {
        let client = crate::sender::api_client(timeout, 4, HeaderMap::new())?;
        Ok(Reader {
            client,
            base: base.clone(),
            location: location.filter(|l| !l.is_empty()),
            reads: AtomicU64::new(0),
            refused: std::sync::Mutex::new(None),
            refused_checks: AtomicU64::new(0),
        })
    }

    /// A 5xx could not be checked: the API refused the read, saying `why`.
    pub fn note_refused(&self, why: &str) {
        self.refused_checks.fetch_add(1, Ordering::Relaxed);
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.get_or_insert_with(|| why.to_owned());
    }

    /// The summary's line when 5xx answers could not be checked, else empty.
    pub fn summary(&self) -> String {
        let n = self.refused_checks.load(Ordering::Relaxed);
        match &*self.refused.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) if n > 0 => format!(
                "read-back: {n} row(s) answered 500/502/504 are recorded unknown, not retried: the API refused the read that checks whether such a message was stored after all ({why}); give the token the conversations/message.readonly scope, or check those rows in HighLevel\n"
            ),
            _ => String::new(),
        }
    }

    /// Read requests made so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        url.set_path(&format!("{}{path}", self.base.path().trim_end_matches('/')));
        url
    }

    /// One GET through the gate; the body of a 2xx, `None` for a 404, or why not.
    async fn get(
        &self,
        env: &Env<'_>,
        what: &str,
        url: reqwest::Url,
    ) -> Result<Option<Value>, ReadError> {
        let answer = gated_call(env, &self.reads, what, Call::Read, || {
            self.client
                .get(url.clone())
                .header("Version", CONVERSATIONS_VERSION)
        })
        .await
        .map_err(|f| match f {
            Failure::Row { error, .. } => ReadError::Failed(error),
            Failure::Stop(reason) => ReadError::Stop(reason),
        })?;
        match answer.status {
            200..=299 => serde_json::from_slice(&answer.body).map(Some).map_err(|e| {
                ReadError::Failed(format!("{what}: an answer that is not JSON ({e})"))
            }),
            404 => Ok(None),
            401 | 403 => Err(ReadError::Refused(describe(answer.status, &answer.body))),
            status => Err(ReadError::Failed(format!(
                "{what}: {}",
                describe(status, &answer.body)
            ))),
        }
    }

    /// Every message of a conversation added within `span` (the export), or all of them (the
    /// conversation's list, which has no date filter). The export lists e-mails only when asked
    /// for them, and then only them: `email` and `other` say which are wanted.
    pub async fn conversation(
        &self,
        env: &Env<'_>,
        conversation_id: &str,
        span: Span,
        email: bool,
        other: bool,
    ) -> Result<Vec<Found>, ReadError> {
        if self.location.is_none() {
            return self.pages(env, conversation_id, span, false).await;
        }
        let mut found = Vec::new();
        if other {
            found.extend(self.pages(env, conversation_id, span, false).await?);
        }
        if email {
            found.extend(self.pages(env, conversation_id, span, true).await?);
        }
        Ok(found)
    }

    async fn pages(
        &self,
        env: &Env<'_>,
        conversation_id: &str,
        span: Span,
        email: bool,
    ) -> Result<Vec<Found>, ReadError> {
        let mut found = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = match &self.location {
                Some(location) => {
                    let mut url = self.url("/conversations/messages/export");
                    {
                        let mut q = url.query_pairs_mut();
                        q.append_pair("locationId", location)
                            .append_pair("conversationId", conversation_id)
                            .append_pair("startDate", &format!("{:.3}", span.from))
                            .append_pair("endDate", &format!("{:.3}", span.to))
                            .append_pair("limit", &EXPORT_PAGE.to_string());
                        if email {
                            q.append_pair("channel", "Email");
                        }
                        if let Some(c) = &cursor {
                            q.append_pair("cursor", c);
                        }
                    }
                    self.get(env, "reading the conversation back (export)", url)
                        .await?
                }
                None => {
                    let mut url = self.url(&format!("/conversations/{conversation_id}/messages"));
                    {
                        let mut q = url.query_pairs_mut();
                        q.append_pair("limit", &LIST_PAGE.to_string());
                        if let Some(c) = &cursor {
                            q.append_pair("lastMessageId", c);
                        }
                    }
                    self.get(env, "reading the conversation back", url).await?
                }
            };
            let Some(page) = page else {
                return Err(ReadError::Failed(format!(
                    "conversation {conversation_id} was not found"
                )));
            };
            let (messages, next) = match self.location {
                Some(_) => export_page(&page),
                None => list_page(&page),
            }
            .map_err(ReadError::Failed)?;
            let empty = messages.is_empty();
            found.extend(messages);
            match next {
                Some(next) if !empty && cursor.as_deref() != Some(next.as_str()) => {
                    cursor = Some(next);
                }
                _ => return Ok(found),
            }
        }
        Err(ReadError::Failed(format!(
            "conversation {conversation_id} has more than {MAX_PAGES} pages to read"
        )))
    }

    /// The `emailMessageId` a reply names to join the thread of `found`, an e-mail read back:
    /// from its `meta` if the read that found it carried one, else from one read of it by ID.
    /// `Ok(None)` when the API gives none.
    pub async fn thread_email_id(
        &self,
        env: &Env<'_>,
        found: &Found,
    ) -> Result<Option<String>, ReadError> {
        if let Some(id) = found.thread_email_id() {
            return Ok(Some(id.to_owned()));
        }
        let read = self.message(env, &found.id).await?;
        Ok(read.and_then(|m| m.thread_email_id().map(str::to_owned)))
    }

    /// One message by ID; `None` when the API has no such message.
    pub async fn message(&self, env: &Env<'_>, id: &str) -> Result<Option<Found>, ReadError> {
        let url = self.url(&format!("/conversations/messages/{id}"));
        match self.get(env, "reading the message back", url).await? {
            None => Ok(None),
            Some(body) => {
                // Flat, as the spec has it; or nested under `message`, as list answers are.
                let inner = match body.get("message") {
                    Some(m) if m.is_object() => m.clone(),
                    _ => body,
                };
                serde_json::from_value::<Found>(inner)
                    .map(Some)
                    .map_err(|e| {
                        ReadError::Failed(format!(
                            "a message that does not read as the spec says ({e})"
                        ))
                    })
            }
        }
    }
}

/// An export page: its messages and the next cursor (none at the end).
fn export_page(page: &Value) -> Result<(Vec<Found>, Option<String>), String> {
    let messages = messages_of(page.get("messages"))?;
    let next = page
        .get("nextCursor")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    Ok((messages, next))
}

/// A conversation list page, flat (`{lastMessageId, nextPage, messages: […]}`, the spec) or
/// nested (`{messages: {lastMessageId, nextPage, messages: […]}}`, the real API): its messages
/// and the `lastMessageId` to page back from, when `nextPage`.
fn list_page(page: &Value) -> Result<(Vec<Found>, Option<String>), String> {
    let inner = match page.get("messages") {
        Some(nested) if nested.is_object() => nested,
        _ => page,
    };
    let messages = messages_of(inner.get("messages"))?;
    let more = inner
        .get("nextPage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let last = inner
        .get("lastMessageId")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| messages.last().map(|m| m.id.clone()))
        .filter(|id| !id.is_empty());
    Ok((messages, if more { last } else { None }))
}

fn messages_of(list: Option<&Value>) -> Result<Vec<Found>, String> {
    match list {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => serde_json::from_value::<Vec<Found>>(v.clone())
            .map_err(|e| format!("a list of messages that does not read as the spec says ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_emails_thread_id_is_the_first_of_its_meta_message_ids() {
        let read = |v: Value| serde_json::from_value::<Found>(v).unwrap();
        let email = read(serde_json::json!({
            "id": "m1",
            "meta": {"email": {"messageIds": ["E-root", "E-reply"]}},
        }));
        assert_eq!(email.thread_email_id(), Some("E-root"));
        for meta in [
            serde_json::json!({"callDuration": "120"}),
            serde_json::json!(null),
            serde_json::json!({"email": {"messageIds": "E-root"}}),
            serde_json::json!({"email": {"messageIds": []}}),
        ] {
            let other = read(serde_json::json!({"id": "m2", "meta": meta}));
            assert_eq!(other.thread_email_id(), None, "{meta}");
        }
        assert_eq!(
            read(serde_json::json!({"id": "m3"})).thread_email_id(),
            None
        );
    }

    #[test]
    fn a_conversation_list_reads_flat_and_nested() {
        let list = json!([{"id": "m1", "body": "hi"}, {"id": "m2", "body": null}]);
        let flat = json!({"lastMessageId": "m2", "nextPage": true, "messages": list});
        let nested =
            json!({"messages": {"lastMessageId": "m2", "nextPage": true, "messages": list}});
        for page in [flat, nested] {
            let (messages, next) = list_page(&page).expect("reads");
            assert_eq!(messages.len(), 2, "{page}");
            assert_eq!(messages[0].body.as_deref(), Some("hi"));
            assert_eq!(next.as_deref(), Some("m2"));
        }
        let last = json!({"messages": {"lastMessageId": "m9", "nextPage": false, "messages": []}});
        assert_eq!(list_page(&last).expect("reads"), (vec![], None));
        let export = json!({"messages": [{"id": "m3"}], "nextCursor": null, "total": 1});
        let (messages, next) = export_page(&export).expect("reads");
        assert_eq!((messages.len(), next), (1, None));
        assert!(export_page(&json!({"messages": "nope"})).is_err());
    }
}
