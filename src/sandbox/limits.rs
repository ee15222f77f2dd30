//! The sandbox's request budget: a fixed-window burst limit and a daily budget, as the real API
//! announces them in its five `X-RateLimit-*` headers (FACTS §5).
//!
//! Pure accounting with the clock passed in, so the window arithmetic is tested without waiting.
//! The rules, chosen where the real API is silent:
//!
//! - Windows are fixed and aligned to the sandbox start: window `k` covers
//!   `[start + k·PERIOD, start + (k+1)·PERIOD)`. A fresh sandbox therefore begins a full window, which
//!   makes "101 requests in one window" testable without racing a wall-clock boundary.
//! - The daily budget resets at UTC midnight.
//! - A refused request (429) consumes neither budget; an admitted one consumes one of each, whatever
//!   its answer turns out to be (400, 422, 5xx, …), as on the real API.
//! - Authentication comes first (see `api`): a request with a bad token is answered 401 without
//!   touching the budget, because a budget belongs to a token's location.
//! - With no limit configured, the headers still appear (a client may insist on them) and say
//!   [`UNLIMITED`] remaining, so a client pacing from them never waits.

use std::time::Duration;

use crate::rate::Rate;

/// What the headers say for a limit that is not enforced: `u32::MAX`, which fits every integer type
/// a client is likely to parse a header into.
pub const UNLIMITED: u64 = u32::MAX as u64;

/// What the headers say for the window length when no burst limit is enforced: the real API's.
const UNLIMITED_INTERVAL_MS: u64 = 10_000;

const DAY: Duration = Duration::from_secs(86_400);

/// The five `X-RateLimit-*` values of one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateHeaders {
    /// `X-RateLimit-Limit-Daily`
    pub limit_daily: u64,
    /// `X-RateLimit-Daily-Remaining`
    pub daily_remaining: u64,
    /// `X-RateLimit-Interval-Milliseconds`
    pub interval_ms: u64,
    /// `X-RateLimit-Max`
    pub max: u64,
    /// `X-RateLimit-Remaining`
    pub remaining: u64,
    /// `X-Sandbox-Day-Length-Ms`, sent only by a sandbox with a "day" of its own (`--day`);
    /// 0: not sent.
    pub day_length_ms: u64,
}

/// The budget's word on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Counted against both budgets; the headers show what is left after it.
    Admitted(RateHeaders),
    /// Over a limit: answer 429. `retry_after` is the time until the exhausted limit resets (the
    /// later of the two when both are).
    Refused {
        headers: RateHeaders,
        retry_after: Duration,
    },
}

/// Both budgets and what has been spent of them.
#[derive(Debug)]
pub struct Budget {
    rate: Option<Rate>,
    daily: Option<u64>,
    /// Index of the window `window_used` counts in (windows since the start).
    window: u64,
    window_used: u64,
    /// Days since the Unix epoch (UTC) that `day_used` counts in.
    day: u64,
    day_used: u64,
    /// The length of a day of the daily budget: 24 h (resets at UTC midnight), or `--day`'s
    /// (days then start at multiples of it since the Unix epoch).
    day_length: Duration,
    /// Whether `day_length` was chosen (`--day`): the answers then say it.
    own_day: bool,
}

impl Budget {
    /// `None` for either limit means it is not enforced.
    pub fn new(rate: Option<Rate>, daily: Option<u64>) -> Self {
        Budget {
            rate,
            daily,
            window: 0,
            window_used: 0,
            day: 0,
            day_used: 0,
            day_length: DAY,
            own_day: false,
        }
    }

    /// A "day" of `length` for the daily budget instead of 24 h (a multi-day rehearsal in
    /// minutes); announced in `X-Sandbox-Day-Length-Ms`.
    pub fn with_day(mut self, length: Option<Duration>) -> Self {
        if let Some(length) = length.filter(|l| !l.is_zero()) {
            self.day_length = length;
            self.own_day = true;
        }
        self
    }

    /// Whether any limit is enforced at all (if not, callers may skip the lock around this).
    pub fn is_unlimited(&self) -> bool {
        self.rate.is_none() && self.daily.is_none()
    }

    /// Decides one request. `elapsed` is the time since the sandbox started (windows align to it);
    /// `unix` is the wall-clock time since the Unix epoch (days roll over at UTC midnight).
    pub fn admit(&mut self, elapsed: Duration, unix: Duration) -> Admission {
        self.roll(elapsed, unix);
        let window_wait = match self.rate {
            Some(rate) if self.window_used >= u64::from(rate.max) => {
                Some(window_end(rate, self.window).saturating_sub(elapsed))
            }
            _ => None,
        };
        let daily_wait = match self.daily {
            Some(daily) if self.day_used >= daily => Some(until_day_end(unix, self.day_length)),
            _ => None,
        };
        match (window_wait, daily_wait) {
            (None, None) => {
                self.window_used += 1;
                self.day_used += 1;
                Admission::Admitted(self.headers())
            }
            (a, b) => Admission::Refused {
                headers: self.headers(),
                retry_after: a.max(b).unwrap_or_default(),
            },
        }
    }

    /// The headers as they stand, spending nothing (for answers given before admission: 401, 404).
    pub fn peek(&mut self, elapsed: Duration, unix: Duration) -> RateHeaders {
        self.roll(elapsed, unix);
        self.headers()
    }

    /// What is left of today's budget, `None` when there is no daily limit.
    pub fn daily_remaining(&mut self, elapsed: Duration, unix: Duration) -> Option<u64> {
        self.roll(elapsed, unix);
        self.daily.map(|d| d.saturating_sub(self.day_used))
    }

    /// Starts a new window or day when the clock has moved into one. Only forward: a wall clock
    /// stepped back does not hand out a past day's budget again.
    fn roll(&mut self, elapsed: Duration, unix: Duration) {
        if let Some(rate) = self.rate {
            let window = window_index(rate, elapsed);
            if window > self.window {
                self.window = window;
                self.window_used = 0;
            }
        }
        let day = u64::try_from(unix.as_millis() / self.day_length.as_millis().max(1))
            .unwrap_or(u64::MAX);
        if day > self.day {
            self.day = day;
            self.day_used = 0;
        }
    }

    fn headers(&self) -> RateHeaders {
        let (interval_ms, max, remaining) = match self.rate {
            Some(rate) => (
                u64::try_from(rate.period.as_millis()).unwrap_or(u64::MAX),
                u64::from(rate.max),
                u64::from(rate.max).saturating_sub(self.window_used),
            ),
            None => (UNLIMITED_INTERVAL_MS, UNLIMITED, UNLIMITED),
        };
        let (limit_daily, daily_remaining) = match self.daily {
            Some(daily) => (daily, daily.saturating_sub(self.day_used)),
            None => (UNLIMITED, UNLIMITED),
        };
        RateHeaders {
            limit_daily,
            daily_remaining,
            interval_ms,
            max,
            remaining,
            day_length_ms: match self.own_day {
                true => u64::try_from(self.day_length.as_millis()).unwrap_or(u64::MAX),
                false => 0,
            },
        }
    }
}

fn window_index(rate: Rate, elapsed: Duration) -> u64 {
    // `Rate` guarantees a non-zero period.
    u64::try_from(elapsed.as_nanos() / rate.period.as_nanos()).unwrap_or(u64::MAX)
}

fn window_end(rate: Rate, window: u64) -> Duration {
    let end = rate
        .period
        .as_nanos()
        .saturating_mul(u128::from(window) + 1);
    Duration::from_nanos(u64::try_from(end).unwrap_or(u64::MAX))
}

fn until_day_end(unix: Duration, day: Duration) -> Duration {
    let day_ns = day.as_nanos().max(1);
    let into_day = unix.as_nanos() % day_ns;
    Duration::from_nanos(u64::try_from(day_ns - into_day).unwrap_or(u64::MAX))
}

/// Whole seconds for a `Retry-After` header, rounded up so a client that waits that long finds the
/// limit reset.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T12:00:00Z: far from midnight, so a test's few milliseconds stay in one day.
    const NOON: Duration = Duration::from_secs(1_767_268_800);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn rate(s: &str) -> Option<Rate> {
        Some(s.parse().expect("test rate"))
    }

    fn admitted(a: Admission) -> RateHeaders {
        match a {
            Admission::Admitted(h) => h,
            Admission::Refused { .. } => panic!("refused: {a:?}"),
        }
    }

    #[test]
    fn window_counts_down_then_refuses_until_it_ends() {
        let mut b = Budget::new(rate("3/10s"), None);
        let remaining: Vec<u64> = (0..3)
            .map(|i| admitted(b.admit(ms(i * 100), NOON)).remaining)
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        match b.admit(ms(9_500), NOON) {
            Admission::Refused {
                headers,
                retry_after,
            } => {
                assert_eq!(headers.remaining, 0);
                assert_eq!(headers.max, 3);
                assert_eq!(headers.interval_ms, 10_000);
                assert_eq!(retry_after, ms(500));
                assert_eq!(retry_after_secs(retry_after), 1);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The next window starts exactly at 10 s after the start, not 10 s after the refusal.
        assert_eq!(admitted(b.admit(ms(10_000), NOON)).remaining, 2);
    }

    #[test]
    fn windows_are_fixed_not_sliding() {
        // 3 at the very end of window 0 and 3 at the very start of window 1: all admitted, although
        // 6 fall within 2 ms (a sliding window would refuse the last three).
        let mut b = Budget::new(rate("3/1s"), None);
        for t in [997, 998, 999, 1_000, 1_001, 1_002] {
            admitted(b.admit(ms(t), NOON));
        }
        assert!(matches!(
            b.admit(ms(1_003), NOON),
            Admission::Refused { .. }
        ));
    }

    #[test]
    fn refusals_spend_nothing() {
        let mut b = Budget::new(rate("1/1s"), Some(3));
        assert_eq!(admitted(b.admit(ms(0), NOON)).daily_remaining, 2);
        for t in 1..50 {
            assert!(matches!(b.admit(ms(t), NOON), Admission::Refused { .. }));
        }
        // The 49 refusals left the daily budget alone.
        let h = admitted(b.admit(ms(1_000), NOON));
        assert_eq!((h.daily_remaining, h.remaining), (1, 0));
    }

    #[test]
    fn daily_budget_counts_down_and_resets_at_utc_midnight() {
        let mut b = Budget::new(None, Some(2));
        let before_midnight = NOON + Duration::from_secs(12 * 3600) - ms(1_500);
        let h = admitted(b.admit(ms(0), before_midnight));
        assert_eq!((h.limit_daily, h.daily_remaining), (2, 1));
        assert_eq!(admitted(b.admit(ms(1), before_midnight)).daily_remaining, 0);
        match b.admit(ms(2), before_midnight) {
            Admission::Refused {
                headers,
                retry_after,
            } => {
                assert_eq!(headers.daily_remaining, 0);
                assert_eq!(retry_after, ms(1_500));
                assert_eq!(retry_after_secs(retry_after), 2);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(
            b.daily_remaining(ms(2), before_midnight + ms(1_500)),
            Some(2)
        );
        assert_eq!(
            admitted(b.admit(ms(3), before_midnight + ms(1_500))).daily_remaining,
            1
        );
    }

    #[test]
    fn both_exhausted_waits_for_the_later_reset() {
        let mut b = Budget::new(rate("1/10s"), Some(1));
        admitted(b.admit(ms(0), NOON));
        match b.admit(ms(1), NOON) {
            Admission::Refused { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_secs(12 * 3600))
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn time_going_back_does_not_reopen_a_window_or_a_day() {
        let mut b = Budget::new(rate("1/1s"), Some(1));
        let tomorrow = NOON + DAY;
        admitted(b.admit(ms(1_500), tomorrow));
        // An earlier reading (a stepped-back wall clock, a late caller) is still refused.
        assert!(matches!(b.admit(ms(900), NOON), Admission::Refused { .. }));
        assert_eq!(b.peek(ms(900), NOON).remaining, 0);
        assert_eq!(b.daily_remaining(ms(900), NOON), Some(0));
    }

    #[test]
    fn peek_spends_nothing() {
        let mut b = Budget::new(rate("5/s"), Some(10));
        for t in 0..20 {
            let h = b.peek(ms(t), NOON);
            assert_eq!((h.remaining, h.daily_remaining), (5, 10));
        }
    }

    #[test]
    fn a_short_day_resets_the_daily_budget_at_its_own_multiples_and_says_its_length() {
        let mut b = Budget::new(None, Some(2)).with_day(Some(ms(4_000)));
        // 1 s into a 4-second day (days start at multiples of 4 s since the epoch).
        let t = Duration::from_secs(4_000_001);
        assert_eq!(admitted(b.admit(ms(0), t)).day_length_ms, 4_000);
        admitted(b.admit(ms(0), t));
        match b.admit(ms(0), t + ms(500)) {
            Admission::Refused { retry_after, .. } => assert_eq!(retry_after, ms(2_500)),
            a => panic!("{a:?}"),
        }
        assert_eq!(admitted(b.admit(ms(0), t + ms(3_000))).daily_remaining, 1);
    }

    #[test]
    fn unlimited_never_refuses_and_says_so() {
        let mut b = Budget::new(None, None);
        assert!(b.is_unlimited());
        for t in 0..1_000 {
            let h = admitted(b.admit(ms(t), NOON));
            assert_eq!(
                h,
                RateHeaders {
                    limit_daily: UNLIMITED,
                    daily_remaining: UNLIMITED,
                    interval_ms: 10_000,
                    max: UNLIMITED,
                    remaining: UNLIMITED,
                    day_length_ms: 0,
                }
            );
        }
        assert_eq!(b.daily_remaining(ms(0), NOON), None);
    }
}
