//! `--wait`: the day's budget. A spent daily budget does not stop the run: every request is
//! held back until the next UTC midnight plus a margin (the API does not say when its day
//! resets), then one request goes as a probe, and while the probe finds the budget still spent,
//! the run waits again (an hour at a time). A "day" is 24 hours, or the length a loopback
//! sandbox announces (`X-Sandbox-Day-Length-Ms`, for rehearsals); the margin and the probe
//! interval scale with it (5 minutes and an hour of a real day). The run's stop ends the wait at
//! once. The [`Gate`](super::Gate) asks [`Day::open`] before every request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Closed;
use crate::ratelimit::sleep_until;
use crate::summary::Counters;

/// A real API's day: its daily budget resets at UTC midnight.
const DAY: Duration = Duration::from_secs(86_400);

/// `--wait`: the state of the day's budget.
pub(super) struct Day {
    state: Mutex<DayState>,
    /// Woken when the state changes (spent, probing, open again).
    changed: tokio::sync::Notify,
    /// The day's length in milliseconds (24 h, or a loopback sandbox's).
    length_ms: AtomicU64,
    /// Whether the server's `X-Sandbox-Day-Length-Ms` is heeded (loopback only).
    sandbox_days: bool,
    /// Since when every answer has been a 429 (burst window or not).
    throttled_since: Mutex<Option<std::time::Instant>>,
    /// The run's counters: `resume_at` shows the progress display when the run goes on.
    counters: Arc<Counters>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DayState {
    /// Requests go.
    Open,
    /// The budget is spent: nothing leaves before `resume_at`; then one probe (`probe_out`).
    Spent {
        resume_at: tokio::time::Instant,
        probe_out: bool,
    },
}

/// When a day of `length` after the one holding `now` (since the Unix epoch) starts.
fn next_day(now: Duration, length: Duration) -> Duration {
    let length = length.as_millis().max(1);
    let day = now.as_millis() / length + 1;
    Duration::from_millis(u64::try_from(day * length).unwrap_or(u64::MAX))
}

impl Day {
    /// A day of 24 hours, or of what a loopback sandbox announces (`sandbox_days`); the time
    /// the run goes on is shown through `counters`.
    pub(super) fn new(sandbox_days: bool, counters: Arc<Counters>) -> Day {
        Day {
            state: Mutex::new(DayState::Open),
            changed: tokio::sync::Notify::new(),
            length_ms: AtomicU64::new(DAY.as_millis() as u64),
            sandbox_days,
            throttled_since: Mutex::new(None),
            counters,
        }
    }

    /// The server announced its day's length: heeded from a loopback sandbox only.
    pub(super) fn announced(&self, length: Duration) {
        if self.sandbox_days {
            self.length_ms
                .store(length.as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Waits while the day's budget is spent; the first request after the wait is the probe.
    pub(super) async fn open(&self, stop: &CancellationToken) -> Result<bool, Closed> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let until = {
                let mut state = self.state.lock().expect("day lock");
                match &mut *state {
                    DayState::Open => return Ok(false),
                    DayState::Spent {
                        probe_out: true, ..
                    } => None,
                    DayState::Spent {
                        resume_at,
                        probe_out,
                    } => {
                        if tokio::time::Instant::now() >= *resume_at {
                            *probe_out = true;
                            self.counters.resume_at_ms.store(0, Ordering::Relaxed);
                            info!("trying one request: is the daily budget back? (--wait)");
                            return Ok(true);
                        }
                        Some(*resume_at)
                    }
                }
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(Closed),
                _ = &mut notified => {}
                _ = async {
                    match until {
                        Some(at) => sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    /// The daily budget is spent: hold every request back until the next day (or, after a
    /// probe that found it still spent, an hour of a day).
    pub(super) fn spent(&self) {
        let length = Duration::from_millis(self.length_ms.load(Ordering::Relaxed));
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut state = self.state.lock().expect("day lock");
        let wait = match *state {
            DayState::Open => next_day(now_unix, length) - now_unix + length / 288,
            DayState::Spent {
                probe_out: true, ..
            } => length / 24,
            DayState::Spent { .. } => return,
        };
        let resume_at = tokio::time::Instant::now() + wait;
        *state = DayState::Spent {
            resume_at,
            probe_out: false,
        };
        drop(state);
        let at = now_unix + wait;
        let shown = jiff::Timestamp::from_millisecond(at.as_millis() as i64)
            .map(|t| format!("{t:.0}"))
            .unwrap_or_default();
        self.counters
            .resume_at_ms
            .store(at.as_millis() as u64, Ordering::Relaxed);
        warn!(
            "the daily request budget is spent: waiting until {shown} (in {}), then trying one request (--wait; Ctrl-C stops the run)",
            crate::quota::human(wait)
        );
        self.changed.notify_waiters();
    }

    /// An attempt has its answer (or none): a probe that did not find the budget spent opens
    /// the day again.
    pub(super) fn attempt_done(&self) {
        let mut state = self.state.lock().expect("day lock");
        if let DayState::Spent {
            probe_out: true, ..
        } = *state
        {
            *state = DayState::Open;
            drop(state);
            self.counters.resume_at_ms.store(0, Ordering::Relaxed);
            info!("the daily budget is back: the run goes on");
            self.changed.notify_waiters();
        }
    }

    /// The probe learnt nothing of the budget (a 401, no answer): the next request probes.
    pub(super) fn probe_lost(&self) {
        let mut state = self.state.lock().expect("day lock");
        if let DayState::Spent {
            probe_out: true, ..
        } = *state
        {
            *state = DayState::Spent {
                resume_at: tokio::time::Instant::now(),
                probe_out: false,
            };
            drop(state);
            self.changed.notify_waiters();
        }
    }

    /// Notes whether an answer was a 429; with `--wait`, `true` when 429s have gone on for two
    /// burst windows (or a minute, whichever is longer): the day's budget, not the window's.
    pub(super) fn throttled(&self, is_429: bool, window: Option<Duration>) -> bool {
        let mut since = self.throttled_since.lock().expect("throttle lock");
        if !is_429 {
            *since = None;
            return false;
        }
        let first = *since.get_or_insert_with(std::time::Instant::now);
        let persist = (window.unwrap_or(Duration::from_secs(10)) * 2).max(Duration::from_secs(60));
        first.elapsed() >= persist
    }
}
