//! The fake API's routes: `POST /conversations/messages/inbound`, `GET /__stats`, and a NestJS-style
//! 404 for anything else.
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
//! 7. `--fail-rate` (500/502/503, nothing stored);
//! 8. store: record line written, ordering noted; then either the 200 answer or, by `--drop-rate`,
//!    no answer at all.
//!
//! Every answer carries the five `X-RateLimit-*` headers, and every JSON answer a `traceId`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing};
use fastrand::Rng;
use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::SandboxConfig;
use super::body::{self, Inbound};
use super::chance::{self, Fault};
use super::contacts::{self, Book};
use super::limits::{self, Admission, Budget, RateHeaders};
use super::record::Recorder;
use super::stats::{Counted, Counters, Stats};

/// The `Version` values the real API accepts (FACTS §1: the versioning page lists them as
/// supported; the spec-exact value for this endpoint is `2021-04-15`).
pub const SUPPORTED_VERSIONS: [&str; 5] =
    ["2021-04-15", "2021-07-28", "2023-02-21", "v3", "legacy"];

/// The inbound endpoint's path.
pub const INBOUND_PATH: &str = "/conversations/messages/inbound";

/// Marks a response that must not be sent: the connection layer (`super::serve_connection`)
/// closes the connection instead.
#[derive(Clone, Copy, Debug)]
pub struct DropConnection;

/// Everything the routes share. Owned by the router (one `Arc` per connection) and by
/// [`super::Sandbox`]; dropped when the last connection ends after shutdown.
pub struct Shared {
    /// The exact `Authorization` value accepted: `Bearer <token>`. Behind a lock so a test can
    /// revoke the token mid-run ([`super::Sandbox::set_token`]); uncontended reads are cheap.
    bearer: RwLock<String>,
    retry_after: bool,
    fail_rate: f64,
    drop_rate: f64,
    latency: Option<crate::rate::DurationRange>,
    seed: u64,
    /// Arrival number of the next request, for its random generator.
    arrivals: AtomicU64,
    /// Windows are aligned to this.
    started: Instant,
    /// `None` when nothing is limited: the hot path then takes no lock at all.
    budget: Option<Mutex<Budget>>,
    pub counters: Counters,
    pub recorder: Option<Recorder>,
    /// Contacts and conversations, for the lookup routes (`contacts`).
    pub book: Book,
}

impl Shared {
    pub fn new(config: &SandboxConfig, recorder: Option<Recorder>, book: Book) -> Self {
        let budget = Budget::new(config.rate, config.daily);
        Shared {
            bearer: RwLock::new(format!("Bearer {}", config.token)),
            retry_after: config.retry_after,
            fail_rate: config.fail_rate,
            drop_rate: config.drop_rate,
            latency: config.latency,
            seed: config.seed.unwrap_or_else(|| fastrand::u64(..)),
            arrivals: AtomicU64::new(0),
            started: Instant::now(),
            budget: (!budget.is_unlimited()).then(|| Mutex::new(budget)),
            counters: Counters::default(),
            recorder,
            book,
        }
    }

    pub fn stats(&self) -> Stats {
        let daily_remaining = self
            .with_budget(|b, elapsed, unix| b.daily_remaining(elapsed, unix))
            .flatten();
        let mut stats = self.counters.snapshot(daily_remaining);
        let c = &self.book.counters;
        let get = |a: &AtomicU64| a.load(Relaxed);
        stats.contact_searches = get(&c.contact_searches);
        stats.contact_upserts = get(&c.contact_upserts);
        stats.contacts_created = get(&c.contacts_created);
        stats.conversation_searches = get(&c.conversation_searches);
        stats.conversation_creates = get(&c.conversation_creates);
        stats.conversations_created = get(&c.conversations_created);
        stats.conversation_conflicts = get(&c.conversation_conflicts);
        stats
    }

    /// Steps 1 to 3 of the module comment, for the lookup routes: the rate headers to answer
    /// with, or the refusal (401, 429, 400), counted.
    pub(super) fn gate(
        &self,
        headers: &HeaderMap,
        trace_id: &str,
    ) -> Result<RateHeaders, Box<Response>> {
        let (answer, rate) = if !self.authorized(headers) {
            (Answer::Unauthorized, self.peek())
        } else {
            match self.admit() {
                Admission::Admitted(rate) => match check_version(headers) {
                    Ok(()) => return Ok(rate),
                    Err(message) => (Answer::BadRequest(message), rate),
                },
                Admission::Refused {
                    headers,
                    retry_after,
                } => {
                    let retry_after = self.retry_after.then_some(retry_after);
                    (Answer::TooManyRequests { retry_after }, headers)
                }
            }
        };
        self.counters.count(answer.counted());
        Err(Box::new(answer.into_response(rate, trace_id)))
    }

    /// Runs `f` on the budget with the current clock; `None` when nothing is limited.
    fn with_budget<T>(&self, f: impl FnOnce(&mut Budget, Duration, Duration) -> T) -> Option<T> {
        // Held only for the arithmetic, never across an await.
        let mut budget = self
            .budget
            .as_ref()?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // The clock is read under the lock, so the budget sees time in the order it is asked.
        let elapsed = self.started.elapsed();
        // A clock before 1970 is not worth failing a request over: it reads as day 0.
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Some(f(&mut budget, elapsed, unix))
    }

    fn admit(&self) -> Admission {
        self.with_budget(|b, elapsed, unix| b.admit(elapsed, unix))
            .unwrap_or(Admission::Admitted(UNLIMITED_HEADERS))
    }

    fn peek(&self) -> RateHeaders {
        self.with_budget(|b, elapsed, unix| b.peek(elapsed, unix))
            .unwrap_or(UNLIMITED_HEADERS)
    }

    pub(super) fn request_rng(&self) -> Rng {
        chance::request_rng(self.seed, self.arrivals.fetch_add(1, Relaxed))
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let bearer = self.bearer.read().unwrap_or_else(|p| p.into_inner());
        headers
            .get(AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == bearer.as_bytes())
    }

    /// From now on accept only `token` (the old one is answered 401, as a revoked token is).
    pub fn set_token(&self, token: &str) {
        *self.bearer.write().unwrap_or_else(|p| p.into_inner()) = format!("Bearer {token}");
    }

    /// Steps 1 to 8 of the module comment.
    async fn answer(
        &self,
        headers: &HeaderMap,
        raw: &Bytes,
        rng: &mut Rng,
    ) -> (Answer, RateHeaders) {
        if !self.authorized(headers) {
            return (Answer::Unauthorized, self.peek());
        }
        let rate = match self.admit() {
            Admission::Admitted(rate) => rate,
            Admission::Refused {
                headers,
                retry_after,
            } => {
                let retry_after = self.retry_after.then_some(retry_after);
                return (Answer::TooManyRequests { retry_after }, headers);
            }
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
        match chance::pick_fault(rng, self.fail_rate, self.drop_rate) {
            Fault::Fail(status) => Answer::InjectedFailure(status),
            Fault::Drop => match self.store(&message, raw, rng) {
                Ok(_) => Answer::Dropped,
                Err(_) => Answer::StoreFailed,
            },
            Fault::None => match self.store(&message, raw, rng) {
                Ok(created) => Answer::Created(created),
                Err(_) => Answer::StoreFailed,
            },
        }
    }

    /// Stores a valid message: record line and ordering check. Returns the success body, or the
    /// record file's error (the message is then not stored).
    fn store(&self, message: &Inbound<'_>, raw: &Bytes, rng: &mut Rng) -> std::io::Result<Created> {
        let received_at = Timestamp::now();
        let message_id = chance::new_id(rng);
        let email_message_id = message.is_email().then(|| chance::new_id(rng));
        if let Some(recorder) = &self.recorder
            && let Err(e) = recorder.append(&message_id, message.conversation_id, received_at, raw)
        {
            tracing::error!("sandbox: writing the record file failed: {e}");
            return Err(e);
        }
        if let Some(date) = message.date {
            self.counters.note_date(message.conversation_id, date);
        }
        Ok(Created {
            success: true,
            conversation_id: message.conversation_id.to_owned(),
            message_id,
            message: "Message queued successfully.",
            contact_id: message.contact_id.to_owned(),
            date_added: format!("{received_at:.3}"),
            email_message_id,
            trace_id: String::new(),
        })
    }
}

/// Step 3: the `Version` header is present and one the API accepts.
fn check_version(headers: &HeaderMap) -> Result<(), String> {
    match headers.get("version").map(HeaderValue::as_bytes) {
        None => Err("version header was not found.".into()),
        Some(v) if !SUPPORTED_VERSIONS.iter().any(|s| s.as_bytes() == v) => {
            Err("version header is invalid".into())
        }
        Some(_) => Ok(()),
    }
}

/// What the headers say when nothing is limited (see `limits`).
const UNLIMITED_HEADERS: RateHeaders = RateHeaders {
    limit_daily: limits::UNLIMITED,
    daily_remaining: limits::UNLIMITED,
    interval_ms: 10_000,
    max: limits::UNLIMITED,
    remaining: limits::UNLIMITED,
};

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

/// The success body, `ProcessMessageResponseDto`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    success: bool,
    conversation_id: String,
    message_id: String,
    message: &'static str,
    contact_id: String,
    date_added: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_message_id: Option<String>,
    /// Filled in when the answer is rendered.
    trace_id: String,
}

/// How an inbound request ends.
#[derive(Debug)]
enum Answer {
    /// 200, stored.
    Created(Created),
    /// 201 with an empty body, nothing stored (the `Custom` quirk).
    Empty201,
    /// 401.
    Unauthorized,
    /// 400 with this message.
    BadRequest(String),
    /// 422 with these messages.
    Unprocessable(Vec<String>),
    /// 429; `Retry-After` when configured.
    TooManyRequests { retry_after: Option<Duration> },
    /// 500/502/503 by `--fail-rate`.
    InjectedFailure(StatusCode),
    /// 500: the record file could not be written, so the message is not stored.
    StoreFailed,
    /// Stored, and no answer at all.
    Dropped,
}

impl Answer {
    fn counted(&self) -> Counted {
        match self {
            Answer::Created(_) => Counted::Accepted,
            Answer::Empty201 => Counted::Empty201,
            Answer::Unauthorized => Counted::Unauthorized,
            Answer::BadRequest(_) => Counted::BadRequest,
            Answer::Unprocessable(_) => Counted::Unprocessable,
            Answer::TooManyRequests { .. } => Counted::RateLimited,
            Answer::InjectedFailure(_) | Answer::StoreFailed => Counted::ServerError,
            Answer::Dropped => Counted::Dropped,
        }
    }

    fn into_response(self, rate: RateHeaders, trace_id: &str) -> Response {
        let mut retry_after = None;
        let mut response = match self {
            Answer::Created(mut created) => {
                created.trace_id = trace_id.to_owned();
                json_response(StatusCode::OK, &created)
            }
            Answer::Empty201 => StatusCode::CREATED.into_response(),
            Answer::Unauthorized => json_response(
                StatusCode::UNAUTHORIZED,
                &json!({
                    "statusCode": 401,
                    "message": "Invalid token: access token is invalid",
                    "error": "Unauthorized",
                    "traceId": trace_id,
                }),
            ),
            Answer::BadRequest(message) => json_response(
                StatusCode::BAD_REQUEST,
                &json!({
                    "statusCode": 400,
                    "message": message,
                    "error": "Bad Request",
                    "traceId": trace_id,
                }),
            ),
            Answer::Unprocessable(messages) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({
                    "statusCode": 422,
                    "message": messages,
                    "error": "Unprocessable Entity",
                    "traceId": trace_id,
                }),
            ),
            Answer::TooManyRequests { retry_after: wait } => {
                retry_after = wait;
                json_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    &json!({
                        "statusCode": 429,
                        "message": "Too Many Requests",
                        "error": "Too Many Requests",
                        "traceId": trace_id,
                    }),
                )
            }
            Answer::InjectedFailure(status) => server_error(status, trace_id),
            Answer::StoreFailed => server_error(StatusCode::INTERNAL_SERVER_ERROR, trace_id),
            Answer::Dropped => {
                let mut response = Response::new(Body::empty());
                response.extensions_mut().insert(DropConnection);
                response
            }
        };
        let headers = response.headers_mut();
        put_rate_headers(headers, rate);
        if let Some(wait) = retry_after {
            headers.insert(
                RETRY_AFTER,
                HeaderValue::from(limits::retry_after_secs(wait)),
            );
        }
        response
    }
}

fn server_error(status: StatusCode, trace_id: &str) -> Response {
    let message = match status {
        StatusCode::INTERNAL_SERVER_ERROR => "Internal server error",
        other => other.canonical_reason().unwrap_or("Server error"),
    };
    json_response(
        status,
        &json!({"statusCode": status.as_u16(), "message": message, "traceId": trace_id}),
    )
}

pub(super) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

pub(super) fn put_rate_headers(headers: &mut HeaderMap, rate: RateHeaders) {
    const NAMES: [&str; 5] = [
        "x-ratelimit-limit-daily",
        "x-ratelimit-daily-remaining",
        "x-ratelimit-interval-milliseconds",
        "x-ratelimit-max",
        "x-ratelimit-remaining",
    ];
    let values = [
        rate.limit_daily,
        rate.daily_remaining,
        rate.interval_ms,
        rate.max,
        rate.remaining,
    ];
    for (name, value) in NAMES.into_iter().zip(values) {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
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

async fn stats(State(shared): State<Arc<Shared>>) -> Json<Stats> {
    Json(shared.stats())
}

/// What NestJS answers for a route it does not have.
async fn not_found(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    let _in_flight = shared.counters.enter();
    let mut rng = shared.request_rng();
    let trace_id = chance::new_trace_id(&mut rng);
    shared.counters.count(Counted::Other);
    let mut response = json_response(
        StatusCode::NOT_FOUND,
        &json!({
            "statusCode": 404,
            "message": format!("Cannot {method} {}", uri.path()),
            "error": "Not Found",
            "traceId": trace_id,
        }),
    );
    put_rate_headers(response.headers_mut(), shared.peek());
    response
}
