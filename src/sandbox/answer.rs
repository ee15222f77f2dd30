//! How a request ends: the named outcomes of the inbound route ([`Answer`]), and how any answer
//! is written: the status, a JSON body in the API's shape with a `traceId`, and the five
//! `X-RateLimit-*` headers. A response marked [`DropConnection`] is not written at all.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use super::limits::{self, RateHeaders};
use super::stats::Counted;

/// Marks a response that must not be sent: the connection layer (`super::serve_connection`)
/// closes the connection instead.
#[derive(Clone, Copy, Debug)]
pub struct DropConnection;

/// The success body, `ProcessMessageResponseDto`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    pub(super) success: bool,
    pub(super) conversation_id: String,
    pub(super) message_id: String,
    pub(super) message: &'static str,
    pub(super) contact_id: String,
    pub(super) date_added: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) email_message_id: Option<String>,
    /// Filled in when the answer is rendered.
    pub(super) trace_id: String,
}

/// How an inbound request ends.
#[derive(Debug)]
pub(super) enum Answer {
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
    /// Nothing stored and no answer: the request hung until the sandbox shut down (counted
    /// when it began to hang).
    Hung,
    /// Stored, then 504 (a gateway that gave up waiting).
    Stored504,
}

impl Answer {
    /// The counter of `/__stats` this answer adds to.
    pub(super) fn counted(&self) -> Counted {
        match self {
            Answer::Created(_) => Counted::Accepted,
            Answer::Empty201 => Counted::Empty201,
            Answer::Unauthorized => Counted::Unauthorized,
            Answer::BadRequest(_) => Counted::BadRequest,
            Answer::Unprocessable(_) => Counted::Unprocessable,
            Answer::TooManyRequests { .. } => Counted::RateLimited,
            Answer::InjectedFailure(_) | Answer::StoreFailed => Counted::ServerError,
            Answer::Dropped => Counted::Dropped,
            Answer::Hung => Counted::Other,
            Answer::Stored504 => Counted::Stored504,
        }
    }

    /// The response: status, JSON body with `traceId`, the rate headers and, for a 429 when
    /// configured, `Retry-After`.
    pub(super) fn into_response(self, rate: RateHeaders, trace_id: &str) -> Response {
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
            Answer::Stored504 => server_error(StatusCode::GATEWAY_TIMEOUT, trace_id),
            Answer::Dropped | Answer::Hung => {
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

/// A 5xx in the API's shape (no `error` field, unlike the 4xx answers).
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

/// A JSON response with the API's content type (`application/json; charset=utf-8`).
pub(super) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// The five `X-RateLimit-*` headers every answer carries.
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
    if rate.day_length_ms > 0 {
        headers.insert(
            HeaderName::from_static(crate::sender::DAY_LENGTH_HEADER),
            HeaderValue::from(rate.day_length_ms),
        );
    }
}
