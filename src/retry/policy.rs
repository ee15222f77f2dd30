//! The one retry policy of a run, for messages and lookups: given what an attempt came to
//! ([`classify`](super::classify)), whether the row is recorded, retried after a pause, or the
//! whole run stops, and when failures in a row mean the server is down.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{Accepted, Backoff, Outcome, StopReason};

/// Consecutive server errors or unanswered requests, across all rows and lookups, that stop the
/// run: a server that keeps failing would otherwise turn every row `failed` (or, if it accepts
/// connections and never answers, `unknown`, which cannot be resent safely). Stopping leaves the
/// rest unrecorded, to be sent on resume.
pub const SERVER_FAILURE_LIMIT: u32 = 25;

/// What kind of request an attempt was: it decides what a lost answer means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// An inbound message: no idempotency key, so a lost answer is `unknown`, never retried.
    Message,
    /// A contact or conversation lookup: a search, or a create that the next search finds, so
    /// a lost answer is retried.
    Lookup,
}

/// How a row (or lookup) goes on after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Stored: record it `sent`.
    Sent(Accepted),
    /// Not stored, and not retried in this run: record it `failed` (tried again on the next).
    Failed(String),
    /// The request left and no answer came: record it `unknown`.
    Unknown(String),
    /// Try again after `delay`.
    Retry {
        /// The API's words (or the transport error) for why the attempt failed.
        reason: String,
        /// How long this row waits before its next attempt.
        delay: Duration,
    },
}

/// What [`Policy::decide`] says: how this row goes on, and whether the whole run stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// How this row (or lookup) goes on.
    pub next: Next,
    /// `Some`: the whole run stops, for this reason.
    pub stop: Option<StopReason>,
    /// `Some` after a 429: hold every request of the run this long first, whatever this row
    /// does next (also when its retries are spent).
    pub pause: Option<Duration>,
}

/// The one retry policy of a run, for messages and lookups: how many retries a row gets, how
/// long it waits, and when failures in a row mean the server is down. The consecutive-failure
/// count is the only state; one `Policy` is shared by every request of the run.
#[derive(Debug)]
pub struct Policy {
    max_retries: u32,
    backoff: Backoff,
    failures: AtomicU32,
}

impl Policy {
    /// A policy giving each row `max_retries` retries, waiting as `backoff` says.
    pub fn new(max_retries: u32, backoff: Backoff) -> Policy {
        Policy {
            max_retries,
            backoff,
            failures: AtomicU32::new(0),
        }
    }

    /// Retries per row (`--max-retries`).
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The wait schedule between retries.
    pub fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// Decides what follows the `attempts`-th attempt (1-based) that came to `outcome`.
    /// `unit` is a uniform random number in [0, 1) for the backoff's jitter.
    pub fn decide(&self, outcome: Outcome, attempts: u32, kind: Request, unit: f64) -> Decision {
        let decision = |next, stop| Decision {
            next,
            stop,
            pause: None,
        };
        let outcome = match (outcome, kind) {
            // A lookup is safe to repeat: a lost answer is one more failure to retry.
            (Outcome::Unknown(why), Request::Lookup) => Outcome::Retry {
                reason: why,
                after: None,
                throttled: false,
            },
            (outcome, _) => outcome,
        };
        match outcome {
            Outcome::Sent(accepted) => {
                self.failures.store(0, Ordering::Relaxed);
                decision(Next::Sent(accepted), None)
            }
            Outcome::Failed(why) => {
                self.failures.store(0, Ordering::Relaxed);
                decision(Next::Failed(why), None)
            }
            Outcome::Unknown(why) => {
                let stop = self.failed_again(&why);
                decision(Next::Unknown(why), stop)
            }
            // 401 and the spent daily budget stored nothing: failed, retried on the next run.
            Outcome::Stop(reason) => {
                decision(Next::Failed(format!("not stored: {reason}")), Some(reason))
            }
            Outcome::Retry {
                reason,
                after,
                throttled,
            } => {
                let pause = if throttled {
                    self.failures.store(0, Ordering::Relaxed);
                    Some(after.unwrap_or(Duration::from_secs(1)))
                } else if let Some(stop) = self.failed_again(&reason) {
                    return decision(Next::Failed(format!("not stored: {reason}")), Some(stop));
                } else {
                    None
                };
                if attempts > self.max_retries {
                    let why = format!("gave up after {attempts} attempts: {reason}");
                    return Decision {
                        pause,
                        ..decision(Next::Failed(why), None)
                    };
                }
                let delay = self.backoff.delay(attempts, after, unit);
                Decision {
                    pause,
                    ..decision(Next::Retry { reason, delay }, None)
                }
            }
        }
    }

    /// An answer worth reading came (a lookup's 2xx or refusal): the failures in a row end.
    pub fn answered(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// Counts one more failure in a row; the stop when that makes [`SERVER_FAILURE_LIMIT`].
    fn failed_again(&self, why: &str) -> Option<StopReason> {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        (n >= SERVER_FAILURE_LIMIT)
            .then(|| StopReason::ServerFailing(format!("{n} failures in a row, the last: {why}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Attempt;
    use crate::retry::classify;
    use crate::retry::tests::answered;

    fn policy() -> Policy {
        Policy::new(
            2,
            Backoff {
                base: Duration::from_millis(100),
                cap: Duration::from_secs(1),
            },
        )
    }

    fn server_error() -> Outcome {
        classify(&answered(500, ""))
    }

    #[test]
    fn policy_retries_until_the_retries_run_out() {
        let p = policy();
        let retry = |attempts| p.decide(server_error(), attempts, Request::Message, 1.0);
        assert_eq!(
            retry(1).next,
            Next::Retry {
                reason: "HTTP 500 with an empty body".into(),
                delay: Duration::from_millis(100),
            }
        );
        assert!(
            matches!(retry(2).next, Next::Retry { delay, .. } if delay == Duration::from_millis(200))
        );
        assert_eq!(
            retry(3),
            Decision {
                next: Next::Failed("gave up after 3 attempts: HTTP 500 with an empty body".into()),
                stop: None,
                pause: None,
            }
        );
    }

    #[test]
    fn policy_stops_the_run_after_failures_in_a_row_and_a_success_resets_them() {
        let p = policy();
        for _ in 0..SERVER_FAILURE_LIMIT - 1 {
            assert_eq!(
                p.decide(server_error(), 1, Request::Message, 0.0).stop,
                None
            );
        }
        // A success in between starts the count again.
        let ok = classify(&answered(200, r#"{"messageId":"m"}"#));
        assert!(matches!(
            p.decide(ok, 1, Request::Message, 0.0).next,
            Next::Sent(_)
        ));
        for _ in 0..SERVER_FAILURE_LIMIT - 1 {
            assert_eq!(p.decide(server_error(), 1, Request::Lookup, 0.0).stop, None);
        }
        // A lookup's answer that needs no decision (a 2xx) also ends the run of failures.
        p.answered();
        for _ in 0..SERVER_FAILURE_LIMIT - 1 {
            assert_eq!(p.decide(server_error(), 1, Request::Lookup, 0.0).stop, None);
        }
        let last = p.decide(server_error(), 1, Request::Message, 0.0);
        assert_eq!(
            last.next,
            Next::Failed("not stored: HTTP 500 with an empty body".into())
        );
        assert!(
            matches!(&last.stop, Some(StopReason::ServerFailing(why)) if why.starts_with("25 failures in a row")),
            "{last:?}"
        );
    }

    #[test]
    fn policy_pauses_every_request_on_a_429_and_counts_it_as_no_failure() {
        let p = policy();
        for _ in 0..SERVER_FAILURE_LIMIT - 1 {
            p.decide(server_error(), 1, Request::Message, 0.0);
        }
        let throttled = classify(&answered(429, ""));
        let d = p.decide(throttled, 1, Request::Message, 0.0);
        assert_eq!(
            d.next,
            Next::Retry {
                reason: "HTTP 429 with an empty body".into(),
                // The window the server named (`interval`), for this row and as a pause for all.
                delay: Duration::from_secs(10),
            }
        );
        assert_eq!(d.pause, Some(Duration::from_secs(10)));
        // Bug: a 429 on a row's last attempt recorded it failed and paused nobody, so every
        // other request went out at once into the same window.
        let last = p.decide(classify(&answered(429, "")), 3, Request::Message, 0.0);
        assert_eq!(
            last.next,
            Next::Failed("gave up after 3 attempts: HTTP 429 with an empty body".into())
        );
        assert_eq!(
            last.pause,
            Some(Duration::from_secs(10)),
            "still a pause for all"
        );
        assert_eq!(
            p.decide(server_error(), 1, Request::Message, 0.0).stop,
            None,
            "the 429 reset the count"
        );
    }

    #[test]
    fn a_lost_answer_is_unknown_for_a_message_and_retried_for_a_lookup() {
        let p = policy();
        let lost = || classify(&Attempt::NoAnswer("timed out".into()));
        assert!(matches!(
            p.decide(lost(), 1, Request::Message, 0.0).next,
            Next::Unknown(_)
        ));
        assert!(matches!(
            p.decide(lost(), 1, Request::Lookup, 0.0).next,
            Next::Retry { .. }
        ));
        let refused = classify(&answered(401, r#"{"message":"Invalid token"}"#));
        let d = p.decide(refused, 1, Request::Lookup, 0.0);
        assert_eq!(
            d.next,
            Next::Failed("not stored: the API rejected the token (HTTP 401: Invalid token)".into())
        );
        assert!(matches!(d.stop, Some(StopReason::TokenRejected(_))));
    }
}
