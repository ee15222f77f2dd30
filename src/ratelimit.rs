//! The request pace: never more than N requests start in any window of PERIOD, shared by every
//! sender task of a run, plus the server's own word (a tighter `X-RateLimit-Max` /
//! `X-RateLimit-Interval-Milliseconds`, and pauses after a 429).
//!
//! It is a sliding log of the last N start times: a request may start once the oldest of them
//! is PERIOD old. That is the exact rule the API states, with no first-window burst of 2N (the
//! trap of a token bucket whose burst equals N) and no drift: a token bucket with burst 1
//! spaces requests PERIOD/N apart and loses every timer wake-up's lateness for good, which at
//! 1000/10s is several per cent of the budget, while here lateness is paid once per PERIOD.
//! A small margin (1 % of PERIOD, at most 50 ms) keeps network jitter from pushing N+1 arrivals
//! into one server window.
//!
//! A start is *reserved*: the log records the time the request will leave (now, or when the
//! window has room), and the request leaves then. A request that has work to do before it leaves
//! (its `sending` line, synced) reserves up to a lead time ahead and does that work while its time
//! comes, so a slow disk does not slow the pace. A request that leaves late has its start moved
//! to when it left, exactly, if the window allows; otherwise, or when a pause after a 429 came over
//! its time, it reserves anew ([`RateLimit::confirm`]).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::rate::Rate;

/// The pace of one run. Shared by reference between sender tasks.
///
/// ```
/// use std::time::Duration;
/// use lc_import::ratelimit::RateLimit;
///
/// let runtime = tokio::runtime::Builder::new_current_thread()
///     .enable_time()
///     .build()
///     .unwrap();
/// runtime.block_on(async {
///     let limit = RateLimit::new(Some("2/s".parse().unwrap()));
///     // A zero timeout still polls once: `Ok` only if both start without waiting at all.
///     let two = tokio::time::timeout(Duration::ZERO, async {
///         limit.acquire().await;
///         limit.acquire().await;
///     });
///     assert!(two.await.is_ok());
///     // A third would wait until the first is a second (plus the margin) old.
///     let third = tokio::time::timeout(Duration::ZERO, limit.acquire());
///     assert!(third.await.is_err());
/// });
/// ```
#[derive(Debug)]
pub struct RateLimit {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// `None`: no limit (the in-process sandbox of `run --sandbox`).
    log: Option<SlidingLog>,
    /// No request starts before this (set after a 429).
    paused_until: Option<Instant>,
    /// Requests started in this run.
    started: u64,
}

/// The last `max` start times, oldest first.
#[derive(Debug)]
pub struct SlidingLog {
    /// The limit as given, before the margin.
    rate: Rate,
    max: usize,
    period: Duration,
    starts: VecDeque<Instant>,
}

impl SlidingLog {
    /// A log for `rate`, its period lengthened by the margin (1 %, at most 50 ms) against jitter.
    pub fn new(rate: Rate) -> SlidingLog {
        let margin = (rate.period / 100).min(Duration::from_millis(50));
        SlidingLog {
            rate,
            max: rate.max as usize,
            period: rate.period + margin,
            starts: VecDeque::with_capacity((rate.max as usize).min(4096)),
        }
    }

    /// Reserves the next start, at `from` (now, or the end of a pause) or later, as early as the
    /// window allows, and records it; unless that is more than `lead` after `now`: then nothing
    /// is recorded and `Err` says when to ask again. Reservations never run further ahead than
    /// that, so a start is reserved only once the starts it depends on have left (and been
    /// [moved](SlidingLog::restamp) to when they did). Never earlier than one made before: the log
    /// stays in order.
    pub fn reserve(
        &mut self,
        now: Instant,
        from: Instant,
        lead: Duration,
    ) -> Result<Instant, Instant> {
        let mut at = self.starts.back().map_or(from, |last| from.max(*last));
        if self.starts.len() >= self.max {
            at = at.max(self.starts[self.starts.len() - self.max] + self.period);
        }
        if at > now + lead {
            return Err(at - lead);
        }
        self.starts.push_back(at);
        // Starts a period old share no window with a start to come; the N latest are kept for
        // the rule above.
        while self.starts.len() > self.max && self.starts[0] + self.period <= now {
            self.starts.pop_front();
        }
        Ok(at)
    }

    /// Moves a reserved start from `at` to `now`, later, for a request that missed its time, if
    /// no window holding `now` then holds more than N starts (every N+1 starts in a row that
    /// include it span a period); else gives the start back and says `false`: reserve anew.
    /// (Giving it back is safe: the request did not leave at `at`, and a log with one start
    /// fewer crowds no window. Keeping it cost a slot per late request: with the wire full
    /// under a pace, most of them, and the pace fell to three quarters.)
    pub fn restamp(&mut self, at: Instant, now: Instant) -> bool {
        let i = self.starts.partition_point(|s| *s < at);
        if self.starts.get(i) != Some(&at) {
            // Forgotten: it is a period old.
            return false;
        }
        self.starts.remove(i);
        let j = self.starts.partition_point(|s| *s <= now);
        self.starts.insert(j, now);
        let n = self.max;
        let fits = (j.saturating_sub(n)..=j)
            .filter(|k| k + n < self.starts.len())
            .all(|k| self.starts[k + n] - self.starts[k] >= self.period);
        if !fits {
            self.starts.remove(j);
        }
        fits
    }

    /// Takes in the server's `X-RateLimit-Remaining`: when the server has room for fewer
    /// requests than this log would still start in its window, the difference was spent by
    /// someone else (another client on the location, or the canary run a moment ago), and is
    /// entered as starts made `now`. (Without other clients the server's count is never above
    /// this log's: its window is no longer, and requests in flight are in the log first.)
    pub fn count_others(&mut self, remaining: u64, now: Instant) {
        let used = self
            .starts
            .iter()
            .filter(|s| **s + self.period > now)
            .count();
        let free = self.max.saturating_sub(used) as u64;
        let others = free.saturating_sub(remaining) as usize;
        if others > 0 {
            let j = self.starts.partition_point(|s| *s <= now);
            for _ in 0..others {
                self.starts.insert(j, now);
            }
        }
    }

    /// Records a start at `now` if allowed, else says when the next one may start.
    pub fn try_start(&mut self, now: Instant) -> Result<(), Instant> {
        self.reserve(now, now, Duration::ZERO).map(|_| ())
    }
}

/// Sleeps until `at`; returns at once, without a timer, when that has passed.
pub async fn sleep_until(at: Instant) {
    if at > Instant::now() {
        tokio::time::sleep_until(at).await;
    }
}

impl RateLimit {
    /// At most `rate`, or no limit at all for `None`.
    pub fn new(rate: Option<Rate>) -> RateLimit {
        RateLimit {
            state: Mutex::new(State {
                log: rate.map(SlidingLog::new),
                paused_until: None,
                started: 0,
            }),
        }
    }

    /// Waits until a request may start, and counts it as started.
    pub async fn acquire(&self) {
        loop {
            let at = self.slot(Duration::ZERO).await;
            sleep_until(at).await;
            if self.confirm(at) {
                return;
            }
        }
    }

    /// Waits until a start can be [reserved](RateLimit::reserve) at most `lead` ahead, and
    /// returns its time.
    pub async fn slot(&self, lead: Duration) -> Instant {
        loop {
            match self.reserve(lead) {
                Ok(at) => return at,
                Err(again) => sleep_until(again).await,
            }
        }
    }

    /// Reserves a start at most `lead` from now (see [`SlidingLog::reserve`]) and returns its
    /// time; or says when to ask again (the window is full, or a pause after a 429 runs).
    pub fn reserve(&self, lead: Duration) -> Result<Instant, Instant> {
        let mut state = self.state.lock().expect("rate limit lock");
        let now = Instant::now();
        let from = state.paused_until.map_or(now, |until| now.max(until));
        let at = match state.log.as_mut() {
            Some(log) => log.reserve(now, from, lead)?,
            None if from > now + lead => return Err(from - lead),
            None => from,
        };
        state.started += 1;
        Ok(at)
    }

    /// Whether a request that reserved `at` may leave now. `false` when a pause (after a 429)
    /// came over its time, or when it is so late that its start cannot be moved to now
    /// ([`SlidingLog::restamp`], which then gives the start back): it must reserve anew.
    pub fn confirm(&self, at: Instant) -> bool {
        let now = Instant::now();
        let mut state = self.state.lock().expect("rate limit lock");
        if state.paused_until.is_some_and(|until| until > at) {
            return false;
        }
        match state.log.as_mut() {
            Some(log) if now > at => log.restamp(at, now),
            _ => true,
        }
    }

    /// Holds every request back for `pause` (after a 429: the server's `Retry-After`, or its
    /// window length).
    pub fn pause(&self, pause: Duration) {
        let mut state = self.state.lock().expect("rate limit lock");
        let until = Instant::now() + pause;
        if state.paused_until.is_none_or(|u| u < until) {
            state.paused_until = Some(until);
        }
    }

    /// Takes the server's limit when it is tighter than ours (the limit the tool was given may
    /// be wrong, or unknown). Returns the new rate when it changed.
    /// `remaining` is the server's `X-RateLimit-Remaining`: when the run had no limit of its
    /// own, the requests the server already counted in this window are entered as starts made
    /// now, so the first window does not overshoot.
    pub fn observe(
        &self,
        max: Option<u32>,
        interval: Option<Duration>,
        remaining: Option<u64>,
    ) -> Option<Rate> {
        let (Some(max), Some(period)) = (max, interval) else {
            return None;
        };
        if max == 0 || period.is_zero() {
            return None;
        }
        let server = Rate { max, period };
        let mut state = self.state.lock().expect("rate limit lock");
        if let (Some(log), Some(remaining)) = (state.log.as_mut(), remaining) {
            log.count_others(remaining, Instant::now());
        }
        let tighter = state
            .log
            .as_ref()
            .is_none_or(|log| server.per_second() < log.rate.per_second() || max < log.rate.max);
        // An unlimited run (the sandbox) takes a limit only if the server enforces one.
        if !tighter || (state.log.is_none() && u64::from(max) >= u64::from(u32::MAX)) {
            return None;
        }
        let mut log = SlidingLog::new(server);
        match &state.log {
            // Keep the starts already made: they count against the server's window too.
            Some(old) => {
                let keep = old.starts.len().min(log.max);
                log.starts = old
                    .starts
                    .iter()
                    .skip(old.starts.len() - keep)
                    .copied()
                    .collect();
            }
            // No log was kept: count what the server counted, or what this run started if
            // more (requests still in flight when the server answered).
            None => {
                let counted = remaining.map_or(0, |r| u64::from(max).saturating_sub(r));
                let used = counted.max(state.started).min(u64::from(max));
                let now = Instant::now();
                log.starts.extend(std::iter::repeat_n(now, used as usize));
            }
        }
        state.log = Some(log);
        Some(server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts `n` requests as early as the log allows, from `t0`; returns their offsets.
    fn schedule(rate: Rate, n: usize) -> Vec<Duration> {
        let t0 = Instant::now();
        let mut log = SlidingLog::new(rate);
        let mut now = t0;
        let mut starts = Vec::new();
        while starts.len() < n {
            match log.try_start(now) {
                Ok(()) => starts.push(now - t0),
                Err(at) => now = at,
            }
        }
        starts
    }

    fn max_in_any_window(starts: &[Duration], period: Duration) -> usize {
        (0..starts.len())
            .map(|i| {
                starts[i..]
                    .iter()
                    .take_while(|s| **s < starts[i] + period)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn never_more_than_n_in_any_window_and_no_double_first_window() {
        for (max, period_ms) in [(100u32, 10_000u64), (20, 1_000), (1000, 10_000), (1, 500)] {
            let rate = Rate {
                max,
                period: Duration::from_millis(period_ms),
            };
            let starts = schedule(rate, max as usize * 5 + 3);
            assert_eq!(
                max_in_any_window(&starts, rate.period),
                max as usize,
                "{rate}"
            );
            // The first window holds exactly N, not 2N.
            let first = starts.iter().filter(|s| **s < rate.period).count();
            assert_eq!(first, max as usize, "{rate}");
            // Over 5 windows the pace is within the margin (1 %) of the limit.
            let span = starts[max as usize * 5].as_secs_f64();
            let achieved = (max as f64 * 5.0) / span;
            assert!(achieved >= rate.per_second() * 0.985, "{rate}: {achieved}");
        }
    }

    #[test]
    fn a_late_start_does_not_let_the_next_window_overflow() {
        let rate = Rate {
            max: 3,
            period: Duration::from_secs(1),
        };
        let t0 = Instant::now();
        let mut log = SlidingLog::new(rate);
        for ms in [0, 0, 400] {
            log.try_start(t0 + Duration::from_millis(ms)).unwrap();
        }
        // The 4th may start only when the 1st is a period (plus margin) old.
        assert_eq!(
            log.try_start(t0 + Duration::from_millis(999)),
            Err(t0 + Duration::from_millis(1010))
        );
        log.try_start(t0 + Duration::from_millis(1010)).unwrap();
        log.try_start(t0 + Duration::from_millis(1010)).unwrap();
        assert_eq!(
            log.try_start(t0 + Duration::from_millis(1010)),
            Err(t0 + Duration::from_millis(1410))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_adopted_limit_counts_what_the_server_already_counted() {
        let limit = RateLimit::new(None);
        for _ in 0..3 {
            limit.acquire().await;
        }
        // The server counted 5 (another client, or requests of ours it saw first): 5 of 10 used.
        limit.observe(Some(10), Some(Duration::from_secs(1)), Some(5));
        let t0 = Instant::now();
        for _ in 0..5 {
            limit.acquire().await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "5 left in this window");
        limit.acquire().await;
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(1010),
            "the 11th waits out the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_the_server_counted_from_someone_else_are_waited_out() {
        let rate = Rate {
            max: 10,
            period: Duration::from_secs(1),
        };
        let limit = RateLimit::new(Some(rate));
        let t0 = Instant::now();
        limit.acquire().await;
        // Our 1 start, and the server has room for 3 more: 6 were someone else's.
        limit.observe(Some(10), Some(Duration::from_secs(1)), Some(3));
        for _ in 0..3 {
            limit.acquire().await;
        }
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "the 3 the server has room for"
        );
        limit.acquire().await;
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(1010),
            "then the window's end"
        );
        // A server that counted no more than this log adds nothing.
        limit.observe(Some(10), Some(Duration::from_secs(1)), Some(9));
        let t1 = Instant::now();
        for _ in 0..5 {
            limit.acquire().await;
        }
        assert_eq!(t1.elapsed(), Duration::ZERO);
    }

    #[test]
    fn an_unlimited_run_takes_only_an_enforced_limit() {
        let limit = RateLimit::new(None);
        assert_eq!(
            limit.observe(Some(u32::MAX), Some(Duration::from_secs(10)), None),
            None
        );
        assert_eq!(
            limit.observe(Some(100), Some(Duration::from_secs(10)), None),
            Some(Rate {
                max: 100,
                period: Duration::from_secs(10)
            })
        );
    }

    #[test]
    fn the_server_s_tighter_limit_is_adopted() {
        let limit = RateLimit::new(Some(Rate {
            max: 100,
            period: Duration::from_secs(1),
        }));
        assert_eq!(
            limit.observe(Some(100), Some(Duration::from_secs(10)), None),
            Some(Rate {
                max: 100,
                period: Duration::from_secs(10)
            })
        );
        // A looser or equal one changes nothing.
        assert_eq!(
            limit.observe(Some(100), Some(Duration::from_secs(10)), None),
            None
        );
        assert_eq!(
            limit.observe(Some(1000), Some(Duration::from_secs(10)), None),
            None
        );
        assert_eq!(
            limit.observe(None, Some(Duration::from_secs(10)), None),
            None
        );
    }

    /// Requests ask for a slot at random moments, reserving up to a lead ahead, and leave at
    /// random lateness (none, a little, or more than a period); whatever the mix, the times they
    /// really left never put more than N in a window, and a late start that fits is moved, not
    /// traded.
    #[test]
    fn late_starts_moved_or_traded_never_crowd_a_window() {
        let rate = Rate {
            max: 5,
            period: Duration::from_secs(1),
        };
        let lead = Duration::from_millis(80);
        let mut moved = 0;
        for seed in 0..20 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let t0 = Instant::now();
            let mut log = SlidingLog::new(rate);
            // (when, reserved start or none yet): a request asking, or one waiting to leave.
            let mut waiting: Vec<(Instant, Option<Instant>)> = Vec::new();
            let mut left = Vec::new();
            for ms in 0..20_000u64 {
                let now = t0 + Duration::from_millis(ms);
                if rng.u32(0..100) < 1 {
                    waiting.push((now, None));
                }
                waiting.sort();
                while waiting.first().is_some_and(|(when, _)| *when <= now) {
                    match waiting.remove(0).1 {
                        None => match log.reserve(now, now, lead) {
                            Ok(at) => waiting.push((at + lateness(&mut rng), Some(at))),
                            Err(again) => waiting.push((again, None)),
                        },
                        Some(at) if now == at => left.push(now),
                        Some(at) if log.restamp(at, now) => {
                            moved += 1;
                            left.push(now);
                        }
                        Some(_) => waiting.push((now, None)),
                    }
                    waiting.sort();
                }
            }
            left.sort();
            let offsets: Vec<Duration> = left.iter().map(|t| *t - t0).collect();
            assert!(offsets.len() > 60, "seed {seed}: {} left", offsets.len());
            assert!(
                max_in_any_window(&offsets, rate.period) <= rate.max as usize,
                "seed {seed}"
            );
        }
        assert!(moved > 100, "late starts were moved: {moved}");
    }

    fn lateness(rng: &mut fastrand::Rng) -> Duration {
        match rng.u32(0..10) {
            0..5 => Duration::ZERO,
            5..8 => Duration::from_millis(rng.u64(1..50)),
            _ => Duration::from_millis(rng.u64(50..2000)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_start_is_moved_when_it_fits_and_traded_when_not() {
        let limit = RateLimit::new(Some(Rate {
            max: 2,
            period: Duration::from_secs(1),
        }));
        let lead = Duration::from_millis(50);
        let t0 = Instant::now();
        let first = limit.reserve(lead).unwrap();
        let second = limit.reserve(lead).unwrap();
        assert_eq!((first, second), (t0, t0));
        // The third's slot is a window away: not reserved yet, ask again a lead before it.
        assert_eq!(limit.reserve(lead), Err(t0 + Duration::from_millis(960)));
        // The first leaves 6 ms late: moved to then.
        tokio::time::advance(Duration::from_millis(6)).await;
        assert!(limit.confirm(first));
        // So the third's slot is 6 ms later.
        tokio::time::advance(Duration::from_millis(960)).await;
        let third = limit.reserve(lead).unwrap();
        assert_eq!(third, t0 + Duration::from_millis(1010));
        let fourth = limit.reserve(lead).unwrap();
        assert_eq!(fourth, t0 + Duration::from_millis(1016));
        // The third leaves 7 ms late, after the fourth's time: moved, since no window then holds
        // three (the first left 1,011 ms before it).
        tokio::time::advance(Duration::from_millis(51)).await;
        assert!(limit.confirm(third));
        // The second, 1,017 ms late, would make three in one window with the fourth and the
        // third: it reserves anew.
        assert!(!limit.confirm(second));
        // A pause after a 429 comes over the fourth's time: it waits the pause out.
        limit.pause(Duration::from_secs(3));
        assert!(!limit.confirm(fourth));
        assert_eq!(
            limit.reserve(lead),
            Err(t0 + Duration::from_millis(4017) - lead)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_out_the_window_and_pauses() {
        let limit = RateLimit::new(Some(Rate {
            max: 2,
            period: Duration::from_secs(1),
        }));
        let t0 = Instant::now();
        for _ in 0..3 {
            limit.acquire().await;
        }
        assert_eq!(t0.elapsed(), Duration::from_millis(1010));
        limit.pause(Duration::from_secs(5));
        limit.acquire().await;
        assert_eq!(t0.elapsed(), Duration::from_millis(6010));
    }
}
