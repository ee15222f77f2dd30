//! The sandbox's read routes, for read-back (settling rows in doubt, `verify`), over what it
//! stored (`messages`), behind the same gate as every route (token → budget → `Version`), so a
//! read spends the burst window and the daily budget like a message:
//!
//! - `GET /conversations/messages/{id}`: `GetMessageResponseDto`, as the spec gives it (flat);
//!   for an e-mail with `meta` (`MessageMeta`): `{"email": {"messageIds": […]}}`, every id of
//!   its thread, the root (the thread's first message) first (`threads`). The lists below
//!   leave `meta` out, so the client's read by ID is what learns a thread's id. 404
//!   `{statusCode, message}` for an ID it never stored.
//! - `GET /conversations/messages/export?locationId&conversationId&contactId&channel&startDate&
//!   endDate&cursor&limit&sortBy&sortOrder`: `ExportMessagesResponseDto` `{messages, nextCursor,
//!   total}`, `limit` 10–500 (default 100), newest first unless `sortOrder=asc`; e-mails only
//!   with `channel=Email`, as the spec says. A message whose conversation's location the sandbox
//!   does not know is listed for any `locationId`.
//! - `GET /conversations/{conversationId}/messages?lastMessageId&limit&type`: newest first,
//!   `limit` default 20, paged back with `lastMessageId`; the list nested under `messages`
//!   (`{messages: {lastMessageId, nextPage, messages: […]}}`), as FACTS §4 and public issue #54
//!   say the real API answers, not flat as the spec has it.
//!
//! With `--reads off` nothing is kept, and these routes answer 404 like a route the API lacks;
//! with `--read-scope off` they answer 403 `ForbiddenDTO`, as for a token without
//! `conversations/message.readonly`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use jiff::Timestamp;
use serde_json::{Value, json};

use super::messages::{ExportFilter, Messages, StoredMessage};
use super::state::Shared;
use super::stats::Counted;

/// A route's answer before the gate's headers go on: 200 with a body, or a refusal.
type Read = Result<Value, (StatusCode, Value)>;

/// The most a conversation list gives in one page.
const LIST_MAX: usize = 100;

/// `GET /conversations/messages/{id}`.
pub async fn by_id(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    let threads = shared.clone();
    shared
        .read(
            &headers,
            method,
            uri,
            Counted::ReadById,
            |messages, _| match messages.get(&id) {
                Some(m) => {
                    let mut v = m.to_json();
                    if let Some(own) = &m.email_message_id {
                        v["meta"] = json!({"email": {"messageIds": threads.threads.ids_of(own)}});
                    }
                    Ok(v)
                }
                None => Err((
                    StatusCode::NOT_FOUND,
                    json!(format!("Message with id {id} not found")),
                )),
            },
        )
        .await
}

/// `GET /conversations/messages/export`.
pub async fn export(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> Response {
    shared
        .read(&headers, method, uri, Counted::ReadExport, |messages, q| {
            let q = query(
                q,
                &[
                    "locationId",
                    "limit",
                    "cursor",
                    "sortBy",
                    "sortOrder",
                    "conversationId",
                    "contactId",
                    "channel",
                    "startDate",
                    "endDate",
                ],
            )?;
            let mut errors = Vec::new();
            let some = |k: &str| q.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
            let location = some("locationId").unwrap_or_default().to_owned();
            if location.is_empty() {
                errors.push("locationId should not be empty".to_owned());
            }
            let limit = match some("limit").map(str::parse::<usize>) {
                None => 100,
                Some(Ok(n)) if n < 10 => {
                    errors.push("limit must not be less than 10".to_owned());
                    n
                }
                Some(Ok(n)) if n > 500 => {
                    errors.push("limit must not be greater than 500".to_owned());
                    n
                }
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    errors.push("limit must be a number".to_owned());
                    0
                }
            };
            let mut date = |k: &str| {
                let v = some(k)?;
                let parsed = parse_date(v);
                if parsed.is_none() {
                    errors.push(format!("{k} must be a valid date"));
                }
                parsed
            };
            let (start, end) = (date("startDate"), date("endDate"));
            let offset = match some("cursor") {
                None => 0,
                Some(c) => match c.strip_prefix("o").and_then(|n| n.parse().ok()) {
                    Some(n) => n,
                    None => {
                        errors.push("cursor is invalid".to_owned());
                        0
                    }
                },
            };
            if !errors.is_empty() {
                return Err((StatusCode::UNPROCESSABLE_ENTITY, json!(errors)));
            }
            let filter = ExportFilter {
                location_id: location,
                conversation_id: some("conversationId").map(str::to_owned),
                contact_id: some("contactId").map(str::to_owned),
                start,
                end,
                email: some("channel") == Some("Email"),
                ascending: some("sortOrder") == Some("asc"),
            };
            let page = messages.export(&filter, offset, limit);
            let next = page
                .more
                .then(|| format!("o{}", offset + page.messages.len()));
            Ok(json!({
                "messages": page.messages.iter().map(StoredMessage::to_json).collect::<Vec<_>>(),
                "nextCursor": next,
                "total": page.total,
            }))
        })
        .await
}

/// `GET /conversations/{conversationId}/messages`.
pub async fn conversation(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    Path(conversation_id): Path<String>,
) -> Response {
    shared
        .read(
            &headers,
            method,
            uri,
            Counted::ReadConversation,
            |messages, q| {
                let q = query(q, &["lastMessageId", "limit", "type"])?;
                let limit = match q.get("limit").map(|s| s.trim().parse::<usize>()) {
                    None => 20,
                    Some(Ok(n)) if n >= 1 => n.min(LIST_MAX),
                    Some(_) => {
                        return Err((
                            StatusCode::UNPROCESSABLE_ENTITY,
                            json!(["limit must be a positive number"]),
                        ));
                    }
                };
                let last = q.get("lastMessageId").map(String::as_str);
                let page = messages.conversation(&conversation_id, last, limit);
                let last_id = page.messages.last().map(|m| m.id.clone());
                Ok(json!({
                    "messages": {
                        "lastMessageId": last_id,
                        "nextPage": page.more,
                        "messages": page.messages.iter().map(StoredMessage::to_json).collect::<Vec<_>>(),
                    }
                }))
            },
        )
        .await
}

/// The query parameters, form-decoded, or the 422 for unknown ones.
fn query(raw: &str, allowed: &[&str]) -> Result<HashMap<String, String>, (StatusCode, Value)> {
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        if allowed.contains(&k.as_ref()) {
            out.insert(k.into_owned(), v.into_owned());
        } else {
            errors.push(format!("property {k} should not exist"));
        }
    }
    match errors.is_empty() {
        true => Ok(out),
        false => Err((StatusCode::UNPROCESSABLE_ENTITY, json!(errors))),
    }
}

/// An ISO 8601 date-time, or milliseconds since 1970.
fn parse_date(s: &str) -> Option<Timestamp> {
    if let Ok(ms) = s.parse::<i64>() {
        return Timestamp::from_millisecond(ms).ok();
    }
    s.parse().ok()
}

impl Shared {
    /// The gate of every read route (token → budget → `Version`), then `route` on the stored
    /// messages and the raw query, answered with the rate headers and a `traceId`.
    async fn read(
        self: Arc<Self>,
        headers: &HeaderMap,
        method: Method,
        uri: Uri,
        counted: Counted,
        route: impl FnOnce(&Messages, &str) -> Read,
    ) -> Response {
        let Some(messages) = &self.messages else {
            return self.route_not_found(&method, &uri);
        };
        let admitted = match self.admit_route(headers) {
            Ok(admitted) => admitted,
            Err(refused) => return *refused,
        };
        let answer = match self.read_scope {
            true => route(messages, uri.query().unwrap_or("")).map(|body| (StatusCode::OK, body)),
            false => Err((
                StatusCode::FORBIDDEN,
                json!("The token is not authorized for this scope."),
            )),
        };
        self.answer_route(answer, counted, &admitted)
    }
}
