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

    /// Records a start at `now` if allowed, else says when the next one may start.
    pub fn try_start(&mut self, now: Instant) -> Result<(), Instant> {
        if self.starts.len() >= self.max {
            let free_at = self.starts[0] + self.period;
            if now < free_at {
                return Err(free_at);
            }
            self.starts.pop_front();
        }
        self.starts.push_back(now);
        Ok(())
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
            let wait_until = {
                let mut state = self.state.lock().expect("rate limit lock");
                let now = Instant::now();
                match state.paused_until {
                    Some(until) if now < until => until,
                    _ => match state.log.as_mut().map_or(Ok(()), |log| log.try_start(now)) {
                        Ok(()) => {
                            state.started += 1;
                            return;
                        }
                        Err(at) => at,
                    },
                }
            };
            tokio::time::sleep_until(wait_until).await;
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
