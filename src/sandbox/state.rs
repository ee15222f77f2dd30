//! What every route of the sandbox shares ([`Shared`]: configuration, budget, counters, record
//! file, contacts) and the gate in front of each route: the token, the budget, then the
//! `Version` header (steps 1 to 3 of the chain in `api`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use fastrand::Rng;

use super::answer::Answer;
use super::book::Book;
use super::chance;
use super::config::SandboxConfig;
use super::limits::{self, Admission, Budget, RateHeaders};
use super::oauth::Tokens;
use super::record::Recorder;
use super::stats::{Counted, Counters, Stats};

/// The `Version` values the real API accepts (FACTS §1: the versioning page lists them as
/// supported; the spec-exact value for this endpoint is `2021-04-15`).
pub const SUPPORTED_VERSIONS: [&str; 5] =
    ["2021-04-15", "2021-07-28", "2023-02-21", "v3", "legacy"];

/// Why the first two steps of the gate turned a request away.
#[derive(Debug)]
pub(super) enum Refused {
    /// 401: not the sandbox's token.
    Unauthorized,
    /// 429: the budget is spent; `Retry-After` when configured.
    TooManyRequests { retry_after: Option<Duration> },
}

impl From<Refused> for Answer {
    fn from(refused: Refused) -> Answer {
        match refused {
            Refused::Unauthorized => Answer::Unauthorized,
            Refused::TooManyRequests { retry_after } => Answer::TooManyRequests { retry_after },
        }
    }
}

/// Everything the routes share. Owned by the router (one `Arc` per connection) and by
/// [`super::Sandbox`]; dropped when the last connection ends after shutdown.
pub struct Shared {
    /// The exact `Authorization` value accepted: `Bearer <token>`. Behind a lock so a test can
    /// revoke the token mid-run ([`super::Sandbox::set_token`]); uncontended reads are cheap.
    bearer: RwLock<String>,
    retry_after: bool,
    /// `--fail-rate`, `--drop-rate`, `--hang-rate`, `--stored-504-rate`, for the inbound route
    /// (`api`).
    /// Behind a lock so a test can end a fault mid-rehearsal ([`super::Sandbox::set_faults`]).
    pub(super) faults: RwLock<super::chance::FaultRates>,
    /// `--backdate`: `dateAdded` is the request's `date` when it has one.
    pub(super) backdate: bool,
    /// What was stored, for the read routes (`reads`); `None` with `--reads off`.
    pub(super) messages: Option<super::messages::Messages>,
    /// `--read-scope`: reads are allowed (else 403).
    pub(super) read_scope: bool,
    /// Cancelled at shutdown: requests hung on purpose (`--hang-rate`) end then.
    pub(super) closing: tokio_util::sync::CancellationToken,
    /// `--latency`, for the inbound route.
    pub(super) latency: Option<crate::rate::DurationRange>,
    seed: u64,
    /// Arrival number of the next request, for its random generator.
    arrivals: AtomicU64,
    /// Windows are aligned to this.
    started: Instant,
    /// `None` when nothing is limited: the hot path then takes no lock at all.
    budget: Option<Mutex<Budget>>,
    /// What `/__stats` counts of the inbound route and of every answer.
    pub counters: Counters,
    /// The record file (`--record`), if any: one JSON line per stored message.
    pub recorder: Option<Recorder>,
    /// Contacts and conversations, for the lookup routes (`contacts`).
    pub book: Book,
    /// The OAuth endpoints' tokens (`oauth`); `None` when they are off.
    pub tokens: Option<Tokens>,
    /// The files uploaded (`uploads`).
    pub uploads: super::assets::Store,
    /// Every `emailMessageId` given out and its thread (`threads`), read back from the record.
    pub(super) threads: super::threads::EmailThreads,
}

impl Shared {
    /// The state of a sandbox started with `config`.
    pub fn new(
        config: &SandboxConfig,
        recorder: Option<Recorder>,
        book: Book,
        uploads: super::assets::Store,
    ) -> Self {
        let budget = Budget::new(config.rate, config.daily).with_day(config.day);
        Shared {
            bearer: RwLock::new(format!("Bearer {}", config.token)),
            retry_after: config.retry_after,
            faults: RwLock::new(super::chance::FaultRates::of(config)),
            backdate: config.backdate,
            messages: config.reads.then(super::messages::Messages::default),
            closing: tokio_util::sync::CancellationToken::new(),
            read_scope: config.read_scope,
            latency: config.latency,
            seed: config.seed.unwrap_or_else(|| fastrand::u64(..)),
            arrivals: AtomicU64::new(0),
            started: Instant::now(),
            budget: (!budget.is_unlimited()).then(|| Mutex::new(budget)),
            counters: Counters::default(),
            recorder,
            book,
            tokens: config.oauth.clone().map(Tokens::new),
            uploads,
            threads: super::threads::EmailThreads::from_record(config.record.as_deref()),
        }
    }

    /// What `GET /__stats` answers: the counters now, with the lookup routes' and the daily
    /// budget left.
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
        stats.email_threads = get(&self.threads.started);
        stats.email_replies = get(&self.threads.replies);
        stats.unknown_email_message_ids = get(&self.threads.unknown);
        if let Some(t) = &self.tokens {
            stats.token_refreshes = get(&t.refreshes);
            stats.token_refused = get(&t.refused);
            stats.location_tokens = get(&t.location_tokens);
            stats.token_requests = get(&t.arrivals);
        }
        stats
    }

    /// Steps 1 and 2 of the `api` module comment, for every route: the token, then the budget.
    /// The rate headers to answer with, or the refusal with its headers; not counted, so the
    /// caller counts the request once however it ends.
    pub(super) fn admission(
        &self,
        headers: &HeaderMap,
    ) -> Result<RateHeaders, (Refused, RateHeaders)> {
        if !self.authorized(headers) {
            return Err((Refused::Unauthorized, self.peek()));
        }
        match self.admit() {
            Admission::Admitted(rate) => Ok(rate),
            Admission::Refused {
                headers,
                retry_after,
            } => {
                let retry_after = self.retry_after.then_some(retry_after);
                Err((Refused::TooManyRequests { retry_after }, headers))
            }
        }
    }

    /// Steps 1 to 3 of the `api` module comment, for the lookup routes: the rate headers to
    /// answer with, or the refusal (401, 429, 400), counted.
    pub(super) fn gate(
        &self,
        headers: &HeaderMap,
        trace_id: &str,
    ) -> Result<RateHeaders, Box<Response>> {
        let (answer, rate) = match self.admission(headers) {
            Ok(rate) => match check_version(headers) {
                Ok(()) => return Ok(rate),
                Err(message) => (Answer::BadRequest(message), rate),
            },
            Err((refused, rate)) => (refused.into(), rate),
        };
        self.counters.count(answer.counted());
        Err(Box::new(answer.into_response(rate, trace_id)))
    }

    /// The start of every route but the inbound one: the request counted in flight (until
    /// the returned guard drops), its random generator and trace ID, then the gate (token →
    /// budget → `Version`): its rate headers, or the refusal to answer with.
    pub(super) fn admit_route(&self, headers: &HeaderMap) -> Result<Admitted<'_>, Box<Response>> {
        let in_flight = self.counters.enter();
        let mut rng = self.request_rng();
        let trace_id = chance::new_trace_id(&mut rng);
        let rate = self.gate(headers, &trace_id)?;
        Ok(Admitted {
            _in_flight: in_flight,
            rng,
            trace_id,
            rate,
        })
    }

    /// The end of every route but the inbound one: a 200 with `answer`'s body, or its refusal
    /// in the API's shape (`{statusCode, message, error}`; a 404 without `error`, as
    /// `NotFoundDTO`), counted (`counted` unless a 422 or a 400), with the `traceId` and the
    /// rate headers.
    pub(super) fn answer_route(
        &self,
        answer: Result<(StatusCode, serde_json::Value), (StatusCode, serde_json::Value)>,
        counted: Counted,
        admitted: &Admitted<'_>,
    ) -> Response {
        let (status, mut body) = match answer {
            Ok(ok) => {
                self.counters.count(counted);
                ok
            }
            Err((status, message)) => {
                self.counters.count(match status {
                    StatusCode::UNPROCESSABLE_ENTITY => Counted::Unprocessable,
                    StatusCode::BAD_REQUEST => Counted::BadRequest,
                    _ => counted,
                });
                let mut body =
                    serde_json::json!({"statusCode": status.as_u16(), "message": message});
                if status != StatusCode::NOT_FOUND {
                    body["error"] = serde_json::json!(status.canonical_reason().unwrap_or("Error"));
                }
                (status, body)
            }
        };
        body["traceId"] = serde_json::json!(admitted.trace_id);
        let mut response = super::answer::json_response(status, &body);
        super::answer::put_rate_headers(response.headers_mut(), admitted.rate);
        response
    }

    /// What NestJS answers for a route it does not have: 404 `Cannot GET /path`, counted.
    pub(super) fn route_not_found(
        &self,
        method: &axum::http::Method,
        uri: &axum::http::Uri,
    ) -> Response {
        let _in_flight = self.counters.enter();
        let mut rng = self.request_rng();
        let trace_id = chance::new_trace_id(&mut rng);
        self.counters.count(Counted::Other);
        let mut response = super::answer::json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({
                "statusCode": 404,
                "message": format!("Cannot {method} {}", uri.path()),
                "error": "Not Found",
                "traceId": trace_id,
            }),
        );
        super::answer::put_rate_headers(response.headers_mut(), self.peek());
        response
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

    /// The rate headers as they stand, spending nothing: for answers the budget is not asked
    /// about (a 401, a 404).
    pub(super) fn peek(&self) -> RateHeaders {
        self.with_budget(|b, elapsed, unix| b.peek(elapsed, unix))
            .unwrap_or(UNLIMITED_HEADERS)
    }

    /// The random generator of the next request to arrive (reproducible with `--seed`).
    pub(super) fn request_rng(&self) -> Rng {
        chance::request_rng(self.seed, self.arrivals.fetch_add(1, Relaxed))
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let fixed = {
            let bearer = self.bearer.read().unwrap_or_else(|p| p.into_inner());
            headers
                .get(AUTHORIZATION)
                .is_some_and(|v| v.as_bytes() == bearer.as_bytes())
        };
        fixed || self.tokens.as_ref().is_some_and(|t| t.authorizes(headers))
    }

    /// From now on accept only `token` (the old one is answered 401, as a revoked token is).
    pub fn set_token(&self, token: &str) {
        *self.bearer.write().unwrap_or_else(|p| p.into_inner()) = format!("Bearer {token}");
    }
}

/// A request past the gate ([`Shared::admit_route`]).
pub(super) struct Admitted<'a> {
    /// Ends the request's time in flight when dropped (after its answer is built).
    pub(super) _in_flight: super::stats::InFlight<'a>,
    pub(super) rng: Rng,
    pub(super) trace_id: String,
    pub(super) rate: RateHeaders,
}

/// Step 3: the `Version` header is present and one the API accepts.
pub(super) fn check_version(headers: &HeaderMap) -> Result<(), String> {
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
    day_length_ms: 0,
};
