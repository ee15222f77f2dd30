//! The fake API's router: `POST /conversations/messages/inbound` (here), the contact and
//! conversation lookups (`contacts`), `GET /__stats`, and a NestJS-style 404 for anything else.
//!
//! An inbound request goes through one chain, each step able to end it with an [`Answer`]:
//!
//! 1. token (401, spends no budget: a budget belongs to the token's location);
//! 2. budget (429, spends nothing; see `limits` for the window rules);
//! 3. `Version` header (400);
//! 4. `--latency` (after the budget, as the real API's edge limiter answers before the backend
//!    works, so a client pacing exactly at the limit is not tripped by jitter);
//! 5. body: not JSON → 400; violations → 422 (a body sent without a JSON content type is read as
//!    `{}`, as the real API's body parser leaves it, and so fails with 422);
//! 6. the `Custom`-without-provider quirk (201, empty body, nothing stored);
//! 7. `--fail-rate` (500/502/503, nothing stored), `--hang-rate` (nothing stored, no answer ever:
//!    the request hangs until the sandbox shuts down);
//! 8. store: record line written, ordering noted, kept in memory for the read routes (`reads`)
//!    with `dateAdded` as `--backdate` says; then the 200 answer, or by `--drop-rate` no answer
//!    at all, or by `--stored-504-rate` a 504.
//!
//! Steps 1 to 3 are the gate every route shares (`state`); how each answer is written is
//! `answer`'s. Every answer carries the five `X-RateLimit-*` headers, and every JSON answer a
//! `traceId`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::{Json, Router, routing};
use fastrand::Rng;
use jiff::Timestamp;
use serde_json::{Map, Value};

use super::answer::{Answer, Created};
use super::body::{self, Inbound};
use super::chance::{self, Fault};
use super::contacts;
use super::limits::RateHeaders;
use super::messages::StoredMessage;
use super::oauth;
use super::reads;
use super::state::{Shared, check_version};
use super::stats::{Counted, Stats};

/// The inbound endpoint's path.
pub const INBOUND_PATH: &str = "/conversations/messages/inbound";

impl Shared {
    /// Steps 1 to 8 of the module comment.
    async fn answer(
        &self,
        headers: &HeaderMap,
        raw: &Bytes,
        rng: &mut Rng,
    ) -> (Answer, RateHeaders) {
        let rate = match self.admission(headers) {
            Ok(rate) => rate,
            Err((refused, rate)) => return (refused.into(), rate),
        };
        let answer = self.admitted(headers, raw, rng).await;
        (answer, rate)
    }

    /// Steps 3 to 8, for a request the budget admitted.
    async fn admitted(&self, headers: &HeaderMap, raw: &Bytes, rng: &mut Rng) -> Answer {
        if let Err(message) = check_version(headers) {
            return Answer::BadRequest(message);
        }
        if let Some(range) = self.latency {
            tokio::time::sleep(chance::pick_latency(rng, range)).await;
        }
        let body = match parse_body(headers, raw) {
            Ok(body) => body,
            Err(message) => return Answer::BadRequest(message),
        };
        let message = match body::validate(&body) {
            Ok(message) => message,
            Err(messages) => return Answer::Unprocessable(messages),
        };
        if message.is_silently_ignored() {
            return Answer::Empty201;
        }
        let faults = *self.faults.read().unwrap_or_else(|p| p.into_inner());
        match chance::pick_fault(rng, faults) {
            Fault::Fail(status) => Answer::InjectedFailure(status),
            Fault::Hang => {
                // Counted now: the client gives up long before this ends.
                self.counters.count(Counted::Hung);
                self.closing.cancelled().await;
                Answer::Hung
            }
            Fault::Drop => match self.store(&message, &body, raw, rng) {
                Ok(_) => Answer::Dropped,
                Err(_) => Answer::StoreFailed,
            },
            Fault::Stored504 => match self.store(&message, &body, raw, rng) {
                Ok(_) => Answer::Stored504,
                Err(_) => Answer::StoreFailed,
            },
            Fault::None => match self.store(&message, &body, raw, rng) {
                Ok(created) => Answer::Created(created),
                Err(_) => Answer::StoreFailed,
            },
        }
    }

    /// Stores a valid message: record line and ordering check. Returns the success body, or the
    /// record file's error (the message is then not stored).
    fn store(
        &self,
        message: &Inbound<'_>,
        body: &Map<String, Value>,
        raw: &Bytes,
        rng: &mut Rng,
    ) -> std::io::Result<Created> {
        let received_at = Timestamp::now();
        let message_id = chance::new_id(rng);
        let email_message_id = message.is_email().then(|| chance::new_id(rng));
        // (A search of the book: only for what needs it.)
        let location = match email_message_id.is_some() || self.messages.is_some() {
            true => self
                .book
                .location_of_conversation(message.conversation_id)
                .unwrap_or_default(),
            false => String::new(),
        };
        // An e-mail's thread: the one whose id it names, if it was given out here.
        let thread = email_message_id.as_deref().map(|own| {
            let named = body.get("emailMessageId").and_then(Value::as_str);
            self.threads
                .join(own, named.filter(|n| !n.is_empty()), &location)
        });
        let email = match (&email_message_id, &thread) {
            (Some(id), Some(root)) => Some(super::record::Email {
                email_message_id: id,
                thread: root,
                location_id: &location,
            }),
            _ => None,
        };
        if let Some(recorder) = &self.recorder
            && let Err(e) = recorder.append(
                &message_id,
                message.conversation_id,
                email,
                received_at,
                raw,
            )
        {
            tracing::error!("sandbox: writing the record file failed: {e}");
            return Err(e);
        }
        if let Some(date) = message.date {
            self.counters.note_date(message.conversation_id, date);
        }
        for _ in 0..self.uploads.not_uploaded(body) {
            self.counters.count(Counted::AttachmentNotUploaded);
        }
        let date_added = match (self.backdate, message.date) {
            (true, Some(date)) => date,
            _ => received_at,
        };
        if let Some(messages) = &self.messages {
            let mut stored = StoredMessage::new(message_id.clone(), body, location, date_added);
            stored.email_message_id = email_message_id.clone();
            messages.add(stored);
        }
        Ok(Created {
            success: true,
            conversation_id: message.conversation_id.to_owned(),
            message_id,
            message: "Message queued successfully.",
            contact_id: message.contact_id.to_owned(),
            date_added: format!("{date_added:.3}"),
            email_message_id,
            trace_id: String::new(),
        })
    }
}

/// The request body as the API's body parser leaves it: a JSON object, `{}` when the content type
/// is not JSON or the body is empty, or a 400 message.
fn parse_body(headers: &HeaderMap, raw: &[u8]) -> Result<Map<String, Value>, String> {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json || raw.trim_ascii().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice(raw) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("Request body must be a JSON object".into()),
        Err(e) if e.is_eof() => Err("Unexpected end of JSON input".into()),
        Err(e) => Err(format!(
            "Unexpected token in JSON at line {} column {}",
            e.line(),
            e.column()
        )),
    }
}

/// The router: the API routes and `/__stats`, everything else a 404 in the API's shape.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(INBOUND_PATH, routing::post(inbound).fallback(not_found))
        .route(
            "/contacts/search/duplicate",
            routing::get(contacts::search_duplicate).fallback(not_found),
        )
        .route(
            "/contacts/upsert",
            routing::post(contacts::upsert).fallback(not_found),
        )
        .route(
            "/conversations/search",
            routing::get(contacts::search_conversations).fallback(not_found),
        )
        .route(
            "/conversations/",
            routing::post(contacts::create_conversation).fallback(not_found),
        )
        .route(
            crate::auth::TOKEN_PATH,
            routing::post(oauth_token).fallback(not_found),
        )
        .route(
            crate::auth::LOCATION_TOKEN_PATH,
            routing::post(oauth_location_token).fallback(not_found),
        )
        .route(
            "/conversations/messages/export",
            routing::get(reads::export).fallback(not_found),
        )
        .route(
            "/conversations/messages/{id}",
            routing::get(reads::by_id).fallback(not_found),
        )
        .route(
            "/conversations/{conversation_id}/messages",
            routing::get(reads::conversation).fallback(not_found),
        )
        .route(
            crate::upload::UPLOAD_PATH,
            routing::post(super::uploads::upload)
                // Files are streamed to disk and held to the sandbox's own limit (413).
                .layer(axum::extract::DefaultBodyLimit::disable())
                .fallback(not_found),
        )
        .route(
            "/conversations-assets/{id}/{name}",
            routing::get(super::uploads::asset).fallback(not_found),
        )
        .route("/__stats", routing::get(stats))
        .fallback(not_found)
        .with_state(shared)
}

async fn inbound(State(shared): State<Arc<Shared>>, headers: HeaderMap, raw: Bytes) -> Response {
    let _in_flight = shared.counters.enter();
    let mut rng = shared.request_rng();
    let trace_id = chance::new_trace_id(&mut rng);
    let (answer, rate) = shared.answer(&headers, &raw, &mut rng).await;
    shared.counters.count(answer.counted());
    answer.into_response(rate, &trace_id)
}

/// `POST /oauth/token` (see `oauth`).
async fn oauth_token(State(shared): State<Arc<Shared>>, raw: Bytes) -> Response {
    let form = oauth::form(&raw);
    oauth::respond(shared.tokens.as_ref(), |t| t.refresh(&form)).await
}

/// `POST /oauth/locationToken` (see `oauth`).
async fn oauth_location_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let form = oauth::form(&raw);
    let version = check_version(&headers);
    oauth::respond(shared.tokens.as_ref(), |t| {
        t.location_token(&headers, version, &form)
    })
    .await
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<Stats> {
    Json(shared.stats())
}

/// What NestJS answers for a route it does not have.
async fn not_found(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    shared.route_not_found(&method, &uri)
}
