//! The gate every request of a run passes before it leaves, messages and lookups alike, in one
//! order: the run has not stopped → a rate-limit slot → a `--max-requests` slot → counted → a
//! place on the wire (one of `--concurrency`, held until the answer). And
//! what the server says of its limits on the way back (a tighter rate, the daily budget spent)
//! comes in here too, so one place knows whether and how fast the run may go on.
//!
//! The gate also owns the run's stop: the first reason given wins, and the token it cancels is
//! what the reader, the scheduler and every request in a pause listen to.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, SemaphorePermit};
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
    /// One permit per request on the wire: `--concurrency`. More rows than that are delivered
    /// at once (see deliver's `LOOK_AHEAD`), so the rows beyond write and sync their `sending`
    /// lines while the others' requests are out.
    wire: Semaphore,
    /// The first request has its answer; until then only it may take a time.
    answered: AtomicBool,
    /// A request has gone ahead as the first.
    probing: AtomicBool,
    /// Wakes the requests waiting for the first answer.
    heard: Notify,
}

/// A request's place on the wire, from [`Gate::admit`] or [`Gate::depart`]: held until its
/// answer came and was [observed](Gate::observe) (or it gave up).
pub struct OnTheWire<'a> {
    _permit: SemaphorePermit<'a>,
    gate: &'a Gate,
}

impl Drop for OnTheWire<'_> {
    fn drop(&mut self) {
        self.gate.heard_first();
    }
}

/// A request's reserved time to leave, from [`Gate::admit_ahead`].
#[derive(Clone, Copy, Debug)]
pub struct Slot(tokio::time::Instant);

/// A request that may not leave: the run is stopping (the reason is with the gate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed;

impl Gate {
    /// At most `rate` (none: no pace of its own), at most `max_requests` in all, at most
    /// `concurrency` on the wire at once; `stop` is the run's stop token (a child of the signal
    /// handler's).
    pub fn new(
        rate: Option<Rate>,
        max_requests: Option<u64>,
        concurrency: usize,
        stop: CancellationToken,
    ) -> Gate {
        Gate {
            wire: Semaphore::new(concurrency.max(1)),
            answered: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            heard: Notify::new(),
            stop,
            reason: Mutex::new(None),
            limit: RateLimit::new(rate),
            quota: Quota::new(max_requests),
            requests: AtomicU64::new(0),
            rate_noted: AtomicBool::new(false),
        }
    }

    /// Waits until one request may leave and counts it, or says the run is stopping: a place
    /// on the wire first, then its time (so a time is never taken and left unused while the
    /// wire is full). A spent `--max-requests` stops the run here.
    pub async fn admit(&self) -> Result<OnTheWire<'_>, Closed> {
        self.first_answer().await?;
        let on_the_wire = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return Err(Closed),
            permit = self.wire.acquire() => self.on_the_wire(permit),
        };
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => return Err(Closed),
            _ = self.limit.acquire() => {}
        }
        self.count()?;
        Ok(on_the_wire)
    }

    /// Like [`admit`](Gate::admit), but returns up to `lead` before the request's time, for a
    /// request with work to do before it leaves (its `sending` line, synced); it leaves with
    /// [`depart`](Gate::depart).
    pub async fn admit_ahead(&self, lead: Duration) -> Result<Slot, Closed> {
        self.first_answer().await?;
        let at = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return Err(Closed),
            at = self.limit.slot(lead) => at,
        };
        self.count()?;
        Ok(Slot(at))
    }

    /// Waits for a place on the wire, then for the slot's time. A stop that does not drain
    /// ([`StopReason::drains`]: a rejected token, say) while it waits is `Err`: the request
    /// never left. Other stops let it go, as the requests in flight finish: its `sending` line
    /// is on disk and it was counted. A slot missed by too much (the wire was full, or the disk
    /// slow), or one a pause came over, is traded for a fresh one (not counted again against
    /// `--max-requests`).
    pub async fn depart(&self, slot: Slot) -> Result<OnTheWire<'_>, Closed> {
        let on_the_wire = tokio::select! {
            biased;
            _ = self.halted() => return Err(Closed),
            permit = self.wire.acquire() => self.on_the_wire(permit),
        };
        sleep_until(slot.0).await;
        if self.limit.confirm(slot.0) {
            return Ok(on_the_wire);
        }
        tokio::select! {
            biased;
            _ = self.halted() => Err(Closed),
            _ = self.limit.acquire() => Ok(on_the_wire),
        }
    }

    /// Resolves once the run stops for a reason that does not drain (see
    /// [`depart`](Gate::depart)); a stop without a reason yet is the signal handler's soft stop.
    async fn halted(&self) {
        self.stop.cancelled().await;
        if self.reason().is_none_or(|r| r.drains()) {
            std::future::pending::<()>().await;
        }
    }

    /// Until the run's first request has its answer, no other takes a time: the answer says
    /// how many requests of the server's window others (an earlier run, a canary) have used
    /// already (`X-RateLimit-Remaining`), and rows that took their times before it would trip
    /// the window (one 429 per row in flight, at the start of a resume right after a canary).
    async fn first_answer(&self) -> Result<(), Closed> {
        if self.answered.load(Ordering::Acquire) || !self.probing.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        loop {
            let heard = self.heard.notified();
            if self.answered.load(Ordering::Acquire) {
                return Ok(());
            }
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Err(Closed),
                _ = heard => {}
            }
        }
    }

    /// The permit as the request's place on the wire.
    fn on_the_wire<'a>(
        &'a self,
        permit: Result<SemaphorePermit<'a>, tokio::sync::AcquireError>,
    ) -> OnTheWire<'a> {
        OnTheWire {
            _permit: permit.expect("the wire's semaphore is never closed"),
            gate: self,
        }
    }

    /// The first request has its answer (or gave up): the others may take their times.
    fn heard_first(&self) {
        if !self.answered.swap(true, Ordering::AcqRel) {
            self.heard.notify_waiters();
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
        let gate = Gate::new(None, Some(2), 2, CancellationToken::new());
        assert!(gate.admit().await.is_ok());
        assert!(gate.admit().await.is_ok());
        assert_eq!(gate.admit().await.err(), Some(Closed));
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
        let gate = Gate::new(None, None, 1, parent.child_token());
        gate.observe(ServerLimits {
            daily_remaining: Some(0),
            ..ServerLimits::default()
        });
        assert!(gate.is_stopping());
        assert_eq!(gate.reason(), Some(StopReason::DailyBudget));
        assert!(!parent.is_cancelled(), "only the run's own token");
        assert_eq!(gate.admit().await.err(), Some(Closed));
        assert_eq!(gate.wait(Duration::from_secs(3600)).await, Err(Closed));
    }

    #[tokio::test]
    async fn until_the_first_answer_no_other_request_takes_a_time() {
        let gate = Gate::new(None, None, 4, CancellationToken::new());
        let first = gate.admit().await.expect("the first goes at once");
        let second = tokio::time::timeout(Duration::from_millis(50), gate.admit()).await;
        assert!(second.is_err(), "the second waits for the first answer");
        drop(first);
        let (a, b) = (gate.admit().await, gate.admit().await);
        assert!(a.is_ok() && b.is_ok(), "after it, all go side by side");
    }

    #[tokio::test]
    async fn a_full_wire_holds_a_request_back_only_for_a_stop_that_does_not_drain() {
        for (reason, leaves) in [
            (StopReason::TokenRejected("401".into()), false),
            (StopReason::ResultsFile("full".into()), false),
            (StopReason::Interrupted, true),
            (StopReason::MaxRequests(9), true),
        ] {
            let gate = Gate::new(None, None, 1, CancellationToken::new());
            drop(gate.admit().await.unwrap()); // the first answer
            let on_the_wire = gate.admit().await.unwrap();
            let slot = gate.admit_ahead(Duration::ZERO).await.unwrap();
            let departing = gate.depart(slot);
            tokio::pin!(departing);
            assert!(
                tokio::time::timeout(Duration::from_millis(20), &mut departing)
                    .await
                    .is_err(),
                "the wire is full"
            );
            gate.stop_with(reason.clone());
            if leaves {
                assert!(
                    tokio::time::timeout(Duration::from_millis(20), &mut departing)
                        .await
                        .is_err(),
                    "{reason}: still waiting for its place"
                );
                drop(on_the_wire);
                assert!(departing.await.is_ok(), "{reason}: it leaves");
            } else {
                assert_eq!(departing.await.err(), Some(Closed), "{reason}: held back");
            }
        }
    }
}
