//! The gate every request of a run passes before it leaves, messages and lookups alike, in one
//! order: the run has not stopped → a rate-limit slot → a `--max-requests` slot → counted. And
//! what the server says of its limits on the way back (a tighter rate, the daily budget spent)
//! comes in here too, so one place knows whether and how fast the run may go on.
//!
//! The gate also owns the run's stop: the first reason given wins, and the token it cancels is
//! what the reader, the scheduler and every request in a pause listen to.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::quota::Quota;
use crate::rate::Rate;
use crate::ratelimit::{RateLimit, sleep_until};
use crate::retry::StopReason;
use crate::sender::ServerLimits;

/// The pace, the budget and the stop of one run, shared by all its requests.
pub struct Gate {
    /// Cancelled by [`Gate::stop_with`], or by its parent (the signal handler's soft stop).
    stop: CancellationToken,
    reason: Mutex<Option<StopReason>>,
    limit: RateLimit,
    quota: Quota,
    requests: AtomicU64,
    rate_noted: AtomicBool,
}

/// A request's reserved time to leave, from [`Gate::admit_ahead`].
#[derive(Clone, Copy, Debug)]
pub struct Slot(tokio::time::Instant);

/// A request that may not leave: the run is stopping (the reason is with the gate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed;

impl Gate {
    /// At most `rate` (none: no pace of its own), at most `max_requests` in all; `stop` is the
    /// run's stop token (a child of the signal handler's).
    pub fn new(rate: Option<Rate>, max_requests: Option<u64>, stop: CancellationToken) -> Gate {
        Gate {
            stop,
            reason: Mutex::new(None),
            limit: RateLimit::new(rate),
            quota: Quota::new(max_requests),
            requests: AtomicU64::new(0),
            rate_noted: AtomicBool::new(false),
        }
    }

    /// Waits until one request may leave and counts it, or says the run is stopping. A spent
    /// `--max-requests` stops the run here.
    pub async fn admit(&self) -> Result<(), Closed> {
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => return Err(Closed),
            _ = self.limit.acquire() => {}
        }
        self.count()
    }

    /// Like [`admit`](Gate::admit), but returns up to `lead` before the request's time, for a
    /// request with work to do before it leaves (its `sending` line, synced); it leaves with
    /// [`depart`](Gate::depart).
    pub async fn admit_ahead(&self, lead: Duration) -> Result<Slot, Closed> {
        let at = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return Err(Closed),
            at = self.limit.slot(lead) => at,
        };
        self.count()?;
        Ok(Slot(at))
    }

    /// Waits for the slot's time (a stop meanwhile does not hold it back: its `sending` line is
    /// written, and it is as good as in flight). A slot missed by too much, or one a pause came
    /// over, is traded for a fresh one (not counted again against `--max-requests`); waiting
    /// for that one, a stop is `Err`.
    pub async fn depart(&self, slot: Slot) -> Result<(), Closed> {
        sleep_until(slot.0).await;
        if self.limit.confirm(slot.0) {
            return Ok(());
        }
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => Err(Closed),
            _ = self.limit.acquire() => Ok(()),
        }
    }

    /// Counts an admitted request against `--max-requests`; a spent budget stops the run.
    fn count(&self) -> Result<(), Closed> {
        if !self.quota.take() {
            self.stop_with(StopReason::MaxRequests(self.quota.max()));
            return Err(Closed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Takes in what the server said about its limits.
    pub fn observe(&self, limits: ServerLimits) {
        if let Some(rate) = self
            .limit
            .observe(limits.max, limits.interval, limits.remaining)
            && !self.rate_noted.swap(true, Ordering::Relaxed)
        {
            info!("the server allows {rate}: pacing to that instead of --rate");
        }
        if limits.daily_remaining == Some(0) {
            self.stop_with(StopReason::DailyBudget);
        }
    }

    /// Holds every request back for `pause` (after a 429).
    pub fn pause(&self, pause: Duration) {
        self.limit.pause(pause);
    }

    /// Waits `delay` before a retry; `Err` when the run stops meanwhile.
    pub async fn wait(&self, delay: Duration) -> Result<(), Closed> {
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.stop.cancelled() => Err(Closed),
        }
    }

    /// Stops the run; the first reason is the one the summary gives.
    pub fn stop_with(&self, reason: StopReason) {
        let mut r = self.reason.lock().expect("stop reason lock");
        if r.is_none() {
            warn!("stopping the run: {reason}");
            *r = Some(reason);
        }
        self.stop.cancel();
    }

    /// The run's stop token, for a stage that only needs to know when to stop (intake).
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// `true` once the run is stopping (a stop reason was given, or the soft stop came).
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves once the run is stopping.
    pub async fn stopping(&self) {
        self.stop.cancelled().await
    }

    /// The reason given first, if the run was stopped with one.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason.lock().expect("stop reason lock").clone()
    }

    /// Requests admitted so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_budget_stops_the_run_and_a_stopped_gate_admits_nothing() {
        let gate = Gate::new(None, Some(2), CancellationToken::new());
        assert_eq!(gate.admit().await, Ok(()));
        assert_eq!(gate.admit().await, Ok(()));
        assert_eq!(gate.admit().await, Err(Closed));
        assert_eq!(gate.reason(), Some(StopReason::MaxRequests(2)));
        assert_eq!(gate.requests(), 2);
        gate.stop_with(StopReason::Interrupted);
        assert_eq!(
            gate.reason(),
            Some(StopReason::MaxRequests(2)),
            "the first reason stays"
        );
    }

    #[tokio::test]
    async fn a_spent_daily_budget_stops_the_run() {
        let parent = CancellationToken::new();
        let gate = Gate::new(None, None, parent.child_token());
        gate.observe(ServerLimits {
            daily_remaining: Some(0),
            ..ServerLimits::default()
        });
        assert!(gate.is_stopping());
        assert_eq!(gate.reason(), Some(StopReason::DailyBudget));
        assert!(!parent.is_cancelled(), "only the run's own token");
        assert_eq!(gate.admit().await, Err(Closed));
        assert_eq!(gate.wait(Duration::from_secs(3600)).await, Err(Closed));
    }
}
