//! What one attempt came to, and what happens next. Three pieces kept apart, as in vector's
//! HTTP sink: [`classify`] decides *whether* (DESIGN "Outcome of each attempt"), [`Backoff`]
//! decides *when* (exponential, full jitter, `Retry-After` honoured), and [`Policy`] puts them
//! together for messages and lookups alike: retry, record, or stop the run.
//!
//! ```
//! use lc_import::retry::{Attempt, Next, Policy, Request, classify};
//!
//! let policy = Policy::new(5, Default::default());
//! let throttled = Attempt::Answered {
//!     status: 429,
//!     body: br#"{"message":"Too Many Requests"}"#.to_vec(),
//!     retry_after: Some(std::time::Duration::from_secs(2)),
//!     daily_remaining: Some(1000),
//!     interval: None,
//! };
//! let decision = policy.decide(classify(&throttled), 1, Request::Message, 0.5);
//! // A 429 stored nothing: every request pauses for the server's 2 s, then this one goes again.
//! assert!(matches!(decision.next, Next::Retry { .. }));
//! assert_eq!(decision.pause, Some(std::time::Duration::from_secs(2)));
//! assert!(decision.stop.is_none());
//! ```

use std::time::Duration;

use serde::Deserialize;

/// What came back from one request, reduced to what the decision needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The server answered.
    Answered {
        /// The HTTP status code.
        status: u16,
        /// The answer's body as it came (empty if it could not be read).
        body: Vec<u8>,
        /// The `Retry-After` header, in whole seconds; `None` when absent or unreadable.
        retry_after: Option<Duration>,
        /// The `X-RateLimit-Daily-Remaining` header: requests left today; `None` when absent.
        daily_remaining: Option<u64>,
        /// The `X-RateLimit-Interval-Milliseconds` header: the server's rate window, if sent.
        interval: Option<Duration>,
    },
    /// No connection was made, so the request was never written: safe to send again.
    NotConnected(String),
    /// The request was (or may have been) written and no answer came: it may be stored.
    NoAnswer(String),
}

/// The outcome of an attempt. Every attempt ends in exactly one of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx with a `messageId`.
    Sent(Accepted),
    /// Not stored; worth another try after a pause (`after` is the server's own word).
    /// `throttled`: the answer was a 429, so every request should wait, not only this one.
    Retry {
        /// The API's words (or the transport error) for why it was not stored.
        reason: String,
        /// The wait the server asked for (`Retry-After`, or on a 429 its rate window), if any.
        after: Option<Duration>,
        /// The answer was a 429: every request should wait, not only this one.
        throttled: bool,
    },
    /// Refused for good: a 4xx other than 401/429, or a 2xx without a `messageId`.
    Failed(String),
    /// Written but unanswered: may be stored. Never retried automatically (no idempotency key).
    Unknown(String),
    /// The whole run must stop: the token was rejected or the daily budget is spent.
    Stop(StopReason),
}

/// Why a run stops early (exit 3, resumable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The API answered 401; holds its words for the refusal.
    TokenRejected(String),
    /// The access token could not be renewed (the token endpoint refused the refresh token, the
    /// agency token was not exchanged, the refreshed pair could not be saved); says why and
    /// what to do.
    RefreshRefused(String),
    /// A 429 with `X-RateLimit-Daily-Remaining: 0`: nothing more can be sent today.
    DailyBudget,
    /// Too many server errors or lost answers in a row ([`SERVER_FAILURE_LIMIT`]); says the last.
    ServerFailing(String),
    /// The results file could not be written (disk full, file too large): `path: error`.
    ResultsFile(String),
    /// Any other error after sending started (the input could not be read, a temp file could
    /// not be written): the run stops as it would on Ctrl-C, so nothing in flight is lost.
    Error(String),
    /// Ctrl-C (or a termination signal).
    Interrupted,
    /// `--limit N` reached; holds N.
    Limit(u64),
    /// `--max-requests` reached.
    MaxRequests(u64),
}

impl StopReason {
    /// `true` when a request that is ready to leave (its `sending` line on disk) still leaves
    /// after this stop, as the ones in flight finish: a Ctrl-C, `--limit`, `--max-requests`
    /// (it was counted within the budget), an error of the run's own. `false` when it would be
    /// pointless or do harm: a rejected token, a spent day, a failing server, a results file
    /// that cannot take its outcome.
    pub fn drains(&self) -> bool {
        matches!(
            self,
            StopReason::Interrupted
                | StopReason::Limit(_)
                | StopReason::MaxRequests(_)
                | StopReason::Error(_)
        )
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::TokenRejected(why) => write!(f, "the API rejected the token ({why})"),
            StopReason::RefreshRefused(why) => {
                write!(f, "the access token could not be renewed: {why}")
            }
            StopReason::DailyBudget => {
                f.write_str("the daily request budget is spent (X-RateLimit-Daily-Remaining: 0)")
            }
            StopReason::ServerFailing(why) => write!(f, "the server keeps failing ({why})"),
            StopReason::ResultsFile(why) => write!(
                f,
                "cannot write the results file {why}; make room (or fix the file), then resume"
            ),
            StopReason::Error(why) => write!(f, "{why}"),
            StopReason::Interrupted => f.write_str("interrupted"),
            StopReason::Limit(n) => write!(f, "--limit {n} reached"),
            StopReason::MaxRequests(n) => write!(f, "--max-requests {n} reached"),
        }
    }
}

/// The fields of `ProcessMessageResponseDto` the results file keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// The ID of the stored message; never empty in [`Outcome::Sent`].
    #[serde(default)]
    pub message_id: String,
    /// The conversation the message was stored in; empty if the answer had none.
    #[serde(default)]
    pub conversation_id: String,
    /// The contact the message belongs to; empty if the answer had none.
    #[serde(default)]
    pub contact_id: String,
    /// The API's trace ID of the request, for support; empty if the answer had none.
    #[serde(default)]
    pub trace_id: String,
    /// For an e-mail, the id later messages name to join its thread; empty if none.
    #[serde(default)]
    pub email_message_id: String,
}

/// An error body as the API writes it: `message` is a string or a list of strings.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: serde_json::Value,
    #[serde(default, rename = "traceId")]
    trace_id: Option<String>,
}

/// The API's words for an error answer, trimmed: `422: property foo should not exist`.
pub fn describe(status: u16, body: &[u8]) -> String {
    let text = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            message: serde_json::Value::String(s),
            ..
        }) => s,
        Ok(ErrorBody {
            message: serde_json::Value::Array(items),
            ..
        }) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_owned(),
    };
    if text.is_empty() {
        format!("HTTP {status} with an empty body")
    } else {
        format!("HTTP {status}: {text}")
    }
}

/// The `traceId` of an answer, if its body has one.
pub fn trace_id(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.trace_id)
        .unwrap_or_default()
}

/// Decides what an attempt came to. Pure: the table in the tests below is the specification.
///
/// ```
/// use lc_import::retry::{Attempt, Outcome, classify};
///
/// let answered = |status, body: &str| Attempt::Answered {
///     status,
///     body: body.as_bytes().to_vec(),
///     retry_after: None,
///     daily_remaining: Some(100),
///     interval: None,
/// };
///
/// // A 422 is refused for good: failed, with the API's own words.
/// let refused = answered(422, r#"{"statusCode":422,"message":["type must be a string"]}"#);
/// assert_eq!(
///     classify(&refused),
///     Outcome::Failed("HTTP 422: type must be a string".into())
/// );
///
/// // A 2xx with a messageId is stored.
/// let stored = answered(200, r#"{"messageId":"m1","conversationId":"c1","contactId":"k1"}"#);
/// match classify(&stored) {
///     Outcome::Sent(accepted) => assert_eq!(accepted.message_id, "m1"),
///     other => panic!("expected Sent, got {other:?}"),
/// }
/// ```
pub fn classify(attempt: &Attempt) -> Outcome {
    let (status, body, retry_after, daily_remaining, interval) = match attempt {
        Attempt::NotConnected(why) => {
            return Outcome::Retry {
                reason: format!("could not connect: {why}"),
                after: None,
                throttled: false,
            };
        }
        Attempt::NoAnswer(why) => {
            return Outcome::Unknown(format!(
                "the request was sent but no answer came ({why}); the message may be stored"
            ));
        }
        Attempt::Answered {
            status,
            body,
            retry_after,
            daily_remaining,
            interval,
        } => (*status, body, *retry_after, *daily_remaining, *interval),
    };
    match status {
        200..=299 => match serde_json::from_slice::<Accepted>(body) {
            Ok(accepted) if !accepted.message_id.is_empty() => Outcome::Sent(accepted),
            _ => Outcome::Failed(format!(
                "HTTP {status} without a messageId: the API stored nothing (seen for type Custom without a conversationProviderId)"
            )),
        },
        401 => Outcome::Stop(StopReason::TokenRejected(describe(status, body))),
        429 if daily_remaining == Some(0) => Outcome::Stop(StopReason::DailyBudget),
        429 => Outcome::Retry {
            reason: describe(status, body),
            // Without Retry-After, wait out the window the server named.
            after: retry_after.or(interval),
            throttled: true,
        },
        500 | 502 | 503 | 504 => Outcome::Retry {
            reason: describe(status, body),
            after: retry_after,
            throttled: false,
        },
        _ => Outcome::Failed(describe(status, body)),
    }
}

/// Exponential backoff with full jitter: attempt `n` (1-based) waits a uniform random time in
/// `[0, min(cap, base * 2^(n-1))]`, or exactly what the server asked for when it said.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The longest wait of the first retry (250 ms by default).
    pub base: Duration,
    /// The longest wait of any retry (30 s by default).
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The pause before retry `n` (1 = first retry), given a uniform `unit` in [0, 1).
    pub fn delay(&self, n: u32, server_says: Option<Duration>, unit: f64) -> Duration {
        if let Some(d) = server_says {
            return d;
        }
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX))
            .min(self.cap);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

mod policy;

pub use policy::{Decision, Next, Policy, Request, SERVER_FAILURE_LIMIT};

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(super) fn answered(status: u16, body: &str) -> Attempt {
        Attempt::Answered {
            status,
            body: body.as_bytes().to_vec(),
            retry_after: None,
            daily_remaining: Some(100),
            interval: Some(Duration::from_secs(10)),
        }
    }

    #[test]
    fn outcome_table() {
        let ok = r#"{"success":true,"conversationId":"c1","messageId":"m1","message":"ok","contactId":"k1","traceId":"t1"}"#;
        let cases: Vec<(Attempt, Outcome)> = vec![
            (
                answered(200, ok),
                Outcome::Sent(Accepted {
                    message_id: "m1".into(),
                    conversation_id: "c1".into(),
                    contact_id: "k1".into(),
                    trace_id: "t1".into(),
                    email_message_id: String::new(),
                }),
            ),
            (
                answered(201, ""),
                Outcome::Failed("HTTP 201 without a messageId: the API stored nothing (seen for type Custom without a conversationProviderId)".into()),
            ),
            (
                answered(200, r#"{"success":true,"messageId":""}"#),
                Outcome::Failed("HTTP 200 without a messageId: the API stored nothing (seen for type Custom without a conversationProviderId)".into()),
            ),
            (
                answered(401, r#"{"statusCode":401,"message":"Invalid token: access token is invalid","error":"Unauthorized"}"#),
                Outcome::Stop(StopReason::TokenRejected("HTTP 401: Invalid token: access token is invalid".into())),
            ),
            (
                answered(422, r#"{"statusCode":422,"message":["property foo should not exist","type must be a string"],"error":"Unprocessable Entity"}"#),
                Outcome::Failed("HTTP 422: property foo should not exist; type must be a string".into()),
            ),
            (answered(400, r#"{"statusCode":400,"message":"Bad Request"}"#), Outcome::Failed("HTTP 400: Bad Request".into())),
            (answered(403, ""), Outcome::Failed("HTTP 403 with an empty body".into())),
            (answered(404, "not here"), Outcome::Failed("HTTP 404: not here".into())),
            (
                answered(429, r#"{"statusCode":429,"message":"Too Many Requests"}"#),
                Outcome::Retry { reason: "HTTP 429: Too Many Requests".into(), after: Some(Duration::from_secs(10)), throttled: true },
            ),
            (
                Attempt::Answered { status: 429, body: vec![], retry_after: Some(Duration::from_secs(3)), daily_remaining: Some(5), interval: Some(Duration::from_secs(10)) },
                Outcome::Retry { reason: "HTTP 429 with an empty body".into(), after: Some(Duration::from_secs(3)), throttled: true },
            ),
            (
                Attempt::Answered { status: 429, body: vec![], retry_after: None, daily_remaining: Some(0), interval: None },
                Outcome::Stop(StopReason::DailyBudget),
            ),
            (answered(500, r#"{"statusCode":500,"message":"Internal server error"}"#), Outcome::Retry { reason: "HTTP 500: Internal server error".into(), after: None, throttled: false }),
            (answered(502, ""), Outcome::Retry { reason: "HTTP 502 with an empty body".into(), after: None, throttled: false }),
            (answered(503, ""), Outcome::Retry { reason: "HTTP 503 with an empty body".into(), after: None, throttled: false }),
            (answered(504, ""), Outcome::Retry { reason: "HTTP 504 with an empty body".into(), after: None, throttled: false }),
            (answered(501, ""), Outcome::Failed("HTTP 501 with an empty body".into())),
            (
                Attempt::NotConnected("connection refused".into()),
                Outcome::Retry { reason: "could not connect: connection refused".into(), after: None, throttled: false },
            ),
            (
                Attempt::NoAnswer("timed out after 30s".into()),
                Outcome::Unknown("the request was sent but no answer came (timed out after 30s); the message may be stored".into()),
            ),
        ];
        for (attempt, want) in cases {
            assert_eq!(classify(&attempt), want, "{attempt:?}");
        }
    }

    #[test]
    fn backoff_grows_to_the_cap_with_full_jitter() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        // unit 1.0 shows the ceiling of each retry.
        let ceilings: Vec<u128> = (1..=7).map(|n| b.delay(n, None, 1.0).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(b.delay(3, None, 0.0), Duration::ZERO);
        assert_eq!(b.delay(3, None, 0.5), Duration::from_millis(200));
        assert_eq!(
            b.delay(40, None, 1.0),
            Duration::from_secs(2),
            "no overflow"
        );
        assert_eq!(
            b.delay(1, Some(Duration::from_secs(7)), 0.3),
            Duration::from_secs(7),
            "Retry-After wins"
        );
    }
}
