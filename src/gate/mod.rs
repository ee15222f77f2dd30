//! The gate every request of a run passes before it leaves, messages and lookups alike, in one
//! order: the run has not stopped → a rate-limit slot → a `--max-requests` slot → counted → a
//! place on the wire (one of `--concurrency`, held until the answer). And
//! what the server says of its limits on the way back (a tighter rate, the daily budget spent)
//! comes in here too, so one place knows whether and how fast the run may go on.
//!
//! The gate also owns the run's stop: the first reason given wins, and the token it cancels is
//! what the reader, the scheduler and every request in a pause listen to.
//!
//! With `--wait` ([`Gate::with_wait`]) a spent daily budget holds the run back until the next
//! day instead of stopping it: that state is [`day`]'s.

mod day;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::day::Day;
use crate::quota::Quota;
use crate::rate::Rate;
use crate::ratelimit::{RateLimit, sleep_until};
use crate::retry::StopReason;
use crate::sender::ServerLimits;
use crate::summary::Counters;

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
    /// `--wait`; `None`: a spent daily budget stops the run.
    day: Option<Day>,
    /// A reason that does not drain was given (first or not).
    halting: AtomicBool,
    /// Wakes `halted` when `halting` is set.
    halt: Notify,
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
pub struct Slot {
    at: tokio::time::Instant,
    /// With `--wait`: this request is the probe of a day that was spent.
    probe: bool,
}

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
            day: None,
            halting: AtomicBool::new(false),
            halt: Notify::new(),
        }
    }

    /// `--wait`: a spent daily budget holds the run back until the next day instead of
    /// stopping it. `sandbox_days`: the server is on loopback, so its announced day length is
    /// heeded. The time the run goes on is shown through `counters`.
    pub fn with_wait(mut self, sandbox_days: bool, counters: Arc<Counters>) -> Gate {
        self.day = Some(Day::new(sandbox_days, counters));
        self
    }

    /// Whether a spent daily budget makes the run wait (`--wait`) rather than stop.
    pub fn waits(&self) -> bool {
        self.day.is_some()
    }

    /// Waits while the day's budget is spent; the first request after the wait is the probe.
    async fn day_open(&self) -> Result<bool, Closed> {
        match &self.day {
            None => Ok(false),
            Some(day) => day.open(&self.stop).await,
        }
    }

    /// The daily budget is spent (an answer said `X-RateLimit-Daily-Remaining: 0`, or 429s
    /// went on past the burst window): with `--wait`, hold every request back until the next
    /// day (or, after a probe that found it still spent, an hour of a day); else stop.
    pub fn budget_spent(&self) {
        match &self.day {
            None => self.stop_with(StopReason::DailyBudget),
            Some(day) => day.spent(),
        }
    }

    /// An attempt has its answer (or none): a probe that did not find the budget spent opens
    /// the day again.
    pub fn attempt_done(&self) {
        if let Some(day) = &self.day {
            day.attempt_done();
        }
    }

    /// The probe learnt nothing of the budget (a 401, no answer): the next request probes.
    pub fn probe_lost(&self) {
        if let Some(day) = &self.day {
            day.probe_lost();
        }
    }

    /// Notes whether an answer was a 429; with `--wait`, `true` when 429s have gone on for two
    /// burst windows (or a minute, whichever is longer): the day's budget, not the window's.
    pub fn throttled(&self, is_429: bool, window: Option<Duration>) -> bool {
        self.day
            .as_ref()
            .is_some_and(|day| day.throttled(is_429, window))
    }

    /// Waits until one request may leave and counts it, or says the run is stopping: a place
    /// on the wire first, then its time (so a time is never taken and left unused while the
    /// wire is full). A spent `--max-requests` stops the run here.
    pub async fn admit(&self) -> Result<OnTheWire<'_>, Closed> {
        self.first_answer().await?;
        self.day_open().await?;
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
        let probe = self.day_open().await?;
        let at = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return Err(Closed),
            at = self.limit.slot(lead) => at,
        };
        self.count()?;
        Ok(Slot { at, probe })
    }

    /// Waits for a place on the wire, then for the slot's time. A stop that does not drain
    /// ([`StopReason::drains`]: a rejected token, say) while it waits is `Err`: the request
    /// never left. Other stops let it go, as the requests in flight finish: its `sending` line
    /// is on disk and it was counted. A slot missed by too much (the wire was full, or the disk
    /// slow), or one a pause came over, is traded for a fresh one (not counted again against
    /// `--max-requests`).
    pub async fn depart(&self, slot: Slot) -> Result<OnTheWire<'_>, Closed> {
        // A row that is the probe of a spent day goes: the day opens on its answer.
        if !slot.probe {
            self.day_open().await?;
        }
        let on_the_wire = tokio::select! {
            biased;
            _ = self.halted() => return Err(Closed),
            permit = self.wire.acquire() => self.on_the_wire(permit),
        };
        sleep_until(slot.at).await;
        if self.limit.confirm(slot.at) {
            return Ok(on_the_wire);
        }
        tokio::select! {
            biased;
            _ = self.halted() => Err(Closed),
            _ = self.limit.acquire() => Ok(on_the_wire),
        }
    }

    /// Resolves once a reason that does not drain is given (see [`depart`](Gate::depart)),
    /// first or not: after a soft stop (no reason) or a draining one, a rejected token still
    /// holds rows back.
    async fn halted(&self) {
        loop {
            let notified = self.halt.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.halting.load(Ordering::Acquire) {
                return;
            }
            notified.await;
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
        if let (Some(day), Some(length)) = (&self.day, limits.day_length) {
            day.announced(length);
        }
        if limits.daily_remaining == Some(0) {
            self.budget_spent();
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
            *r = Some(reason.clone());
        }
        drop(r);
        if !reason.drains() {
            self.halting.store(true, Ordering::Release);
            self.halt.notify_waiters();
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

    #[tokio::test(start_paused = true)]
    async fn with_wait_a_spent_day_holds_requests_until_the_next_day_then_probes() {
        let counters = Arc::new(Counters::default());
        let gate =
            Gate::new(None, None, 4, CancellationToken::new()).with_wait(true, counters.clone());
        let spent = |day_ms| ServerLimits {
            daily_remaining: Some(0),
            day_length: Some(Duration::from_millis(day_ms)),
            ..ServerLimits::default()
        };
        // A one-minute day, as a loopback sandbox announces it.
        gate.observe(spent(60_000));
        assert!(!gate.is_stopping(), "a wait, not a stop");
        assert!(
            counters.resume_at_ms.load(Ordering::Relaxed) > 0,
            "shown while it waits"
        );
        let start = tokio::time::Instant::now();
        gate.admit()
            .await
            .expect("the probe goes when the next day starts");
        let waited = start.elapsed();
        // Until the next minute since the epoch plus 1/288 of a day (5 minutes of a real one).
        assert!(
            waited > Duration::from_millis(208) && waited <= Duration::from_millis(60_209),
            "{waited:?}"
        );
        // The probe finds it still spent: an hour of a day (2.5 s of this one) before the next.
        gate.observe(spent(60_000));
        gate.attempt_done();
        let start = tokio::time::Instant::now();
        gate.admit().await.expect("the next probe");
        assert_eq!(start.elapsed().as_millis(), 2_500);
        // This probe is answered with budget left: the day is open again for every request.
        gate.observe(ServerLimits {
            daily_remaining: Some(39),
            ..ServerLimits::default()
        });
        gate.attempt_done();
        assert_eq!(counters.resume_at_ms.load(Ordering::Relaxed), 0);
        let start = tokio::time::Instant::now();
        gate.admit().await.expect("open");
        gate.admit().await.expect("open");
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(gate.requests(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_for_the_next_day_and_a_remote_day_length_is_ignored() {
        let gate = Gate::new(None, None, 4, CancellationToken::new())
            .with_wait(false, Arc::new(Counters::default()));
        gate.observe(ServerLimits {
            daily_remaining: Some(0),
            day_length: Some(Duration::from_millis(10)),
            ..ServerLimits::default()
        });
        // A real day's wait is at least its 5-minute margin, whatever the time of day.
        let admitted = tokio::time::timeout(Duration::from_secs(299), gate.admit()).await;
        assert!(admitted.is_err(), "not a server's 10 ms day: a real one");
        gate.stop_with(StopReason::Interrupted);
        assert_eq!(gate.admit().await.err(), Some(Closed));
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

#[cfg(test)]
mod stop_and_day_tests {
    use super::*;

    /// Ctrl-C first (the soft stop: the run's token is cancelled, no reason yet), then a row in
    /// flight is answered 401 (or its outcome cannot be written): the reason is one that does
    /// not drain, yet a row with its `sending` line on disk, waiting for the wire, still leaves.
    #[tokio::test]
    async fn a_rejected_token_after_a_soft_stop_still_holds_rows_back() {
        let soft = CancellationToken::new();
        let gate = Gate::new(None, None, 1, soft.child_token());
        drop(gate.admit().await.unwrap()); // the first answer
        let on_the_wire = gate.admit().await.unwrap();
        let slot = gate.admit_ahead(Duration::ZERO).await.unwrap();
        let departing = gate.depart(slot);
        tokio::pin!(departing);
        soft.cancel(); // Ctrl-C
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut departing)
                .await
                .is_err(),
            "a soft stop drains: still waiting for its place"
        );
        gate.stop_with(StopReason::TokenRejected("401".into()));
        drop(on_the_wire);
        assert_eq!(
            departing.await.err(),
            Some(Closed),
            "the token was rejected: the held-back row must not leave"
        );
    }

    /// --wait: rows waiting for the first answer passed `day_open` before it; when that answer
    /// says the day's budget is spent they take their times and leave anyway (one 429 each).
    #[tokio::test(start_paused = true)]
    async fn rows_held_for_the_first_answer_heed_a_spent_day() {
        let gate = Gate::new(None, None, 4, CancellationToken::new())
            .with_wait(true, Arc::new(Counters::default()));
        let first = gate.admit().await.unwrap();
        let second = gate.admit_ahead(Duration::ZERO);
        tokio::pin!(second);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), &mut second)
                .await
                .is_err(),
            "waits for the first answer"
        );
        // The first answer: the day's budget is spent (as deliver does: observe, then drop).
        gate.observe(ServerLimits {
            daily_remaining: Some(0),
            day_length: Some(Duration::from_secs(60)),
            ..ServerLimits::default()
        });
        drop(first);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut second)
                .await
                .is_err(),
            "the day is spent: the second must wait for the next day, not take a time now"
        );
    }

    /// --wait: a row that reserved its slot (its `sending` line written) before another row's
    /// answer said the day is spent departs into the spent day.
    #[tokio::test(start_paused = true)]
    async fn a_written_ahead_row_does_not_depart_into_a_spent_day() {
        let gate = Gate::new(None, None, 4, CancellationToken::new())
            .with_wait(true, Arc::new(Counters::default()));
        drop(gate.admit().await.unwrap()); // the first answer
        let slot = gate.admit_ahead(Duration::ZERO).await.unwrap();
        gate.observe(ServerLimits {
            daily_remaining: Some(0),
            day_length: Some(Duration::from_secs(60)),
            ..ServerLimits::default()
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(100), gate.depart(slot))
                .await
                .is_err(),
            "the day is spent: it must wait for the day (or be handed back), not leave now"
        );
    }

    /// --wait: the probe is answered 401 (its bearer was taken before the day's wait, and the
    /// token expired meanwhile) or not at all: deliver still calls `attempt_done`, which opens
    /// the day although nothing was learnt of the budget; the next 429 then waits for the
    /// *next* UTC midnight, not an hour.
    #[tokio::test(start_paused = true)]
    async fn a_probe_that_learnt_nothing_does_not_open_the_day() {
        let gate = Gate::new(None, None, 4, CancellationToken::new())
            .with_wait(true, Arc::new(Counters::default()));
        let spent = || ServerLimits {
            daily_remaining: Some(0),
            day_length: Some(Duration::from_secs(60)),
            ..ServerLimits::default()
        };
        drop(gate.admit().await.unwrap());
        gate.observe(spent());
        let probe = gate.admit().await.unwrap(); // the probe, after the wait
        // Answered 401, no rate headers: deliver.rs:179-181 observe(default) + attempt_done.
        gate.observe(ServerLimits::default());
        gate.probe_lost();
        drop(probe);
        let _replay = gate
            .admit()
            .await
            .expect("one request (the replay) probes again");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), gate.admit())
                .await
                .is_err(),
            "a 401 says nothing of the budget: the day must not be open to every row"
        );
    }
}
