//! The request budget of a run: the quota [`Plan`] printed before anything is sent (counted by
//! the pass before sending, `preflight`), and `--max-requests` ([`Quota`]), which stops a run
//! cleanly (exit 3, resumable) once it has made N requests.
//!
//! The plan counts what this run still has to do: rows not sent earlier, and contacts and
//! conversations the ID map does not know. A lookup that finds its ID costs one request, one
//! that creates costs two, so lookups are given as a range.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::rate::Rate;

/// The API's daily budget per location (FACTS §5), for the plan's share.
pub const DAILY_BUDGET: u64 = 200_000;

/// `--max-requests`: every request of the run (lookups and messages) takes one slot first.
#[derive(Debug)]
pub struct Quota {
    max: Option<u64>,
    used: AtomicU64,
}

impl Quota {
    /// A budget of `max` requests (`--max-requests`); `None`: no budget.
    pub fn new(max: Option<u64>) -> Quota {
        Quota {
            max,
            used: AtomicU64::new(0),
        }
    }

    /// Takes one slot; false when the budget is spent (the request must not be made).
    pub fn take(&self) -> bool {
        match self.max {
            None => true,
            Some(max) => self
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                    (u < max).then_some(u + 1)
                })
                .is_ok(),
        }
    }

    /// The budget; `u64::MAX` when there is none.
    pub fn max(&self) -> u64 {
        self.max.unwrap_or(u64::MAX)
    }
}

/// What a run still has to do, in requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every row of the input (what progress counts to).
    pub rows: u64,
    /// Valid rows that this run will send.
    pub messages: u64,
    /// Rows sent (or left unknown) in earlier runs, skipped.
    pub done_before: u64,
    /// Contacts the ID map does not know.
    pub contacts: u64,
    /// Conversations the ID map does not know.
    pub conversations: u64,
    /// Requests per contact lookup when it creates (2 with `--create-contacts`, else 1).
    pub contact_cost: u64,
    /// Rows left `unknown` earlier, to settle by reading back (`--verify-unknown`).
    pub doubts: u64,
    /// Reads that settles them: one per conversation (more when a conversation's messages
    /// take more than a page).
    pub settle_reads: u64,
    /// Attachments to upload first (local files, signed URLs): one request each at most;
    /// fewer when a file was uploaded by an earlier run or is attached to several rows.
    pub uploads: u64,
}

impl Plan {
    /// Lookup requests the run needs: (fewest, if every ID is found; most, if all are created).
    pub fn lookups(&self) -> (u64, u64) {
        (
            self.contacts + self.conversations,
            self.contacts * self.contact_cost + self.conversations * 2,
        )
    }

    /// Requests the run needs, messages, lookups and reads: (fewest, most; the most with every
    /// row in doubt found not stored, and sent).
    pub fn requests(&self) -> (u64, u64) {
        let (low, high) = self.lookups();
        let reads = self.settle_reads;
        (
            self.messages + low + reads,
            self.messages + high + reads + self.doubts + self.uploads,
        )
    }

    /// The plan as printed before sending.
    pub fn describe(&self, rate: Option<Rate>, max_requests: Option<u64>, wait: bool) -> String {
        use std::fmt::Write as _;
        let (low, high) = self.requests();
        let (lookups_low, lookups_high) = self.lookups();
        let range = |a: u64, b: u64| {
            if a == b {
                format!("{a}")
            } else {
                format!("{a} to {b}")
            }
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "quota plan: {} message(s) to send ({} done in earlier runs); {} contact(s) and {} conversation(s) to look up",
            self.messages, self.done_before, self.contacts, self.conversations
        );
        let _ = writeln!(
            out,
            "  requests  {} ({} messages + {} lookups{})",
            range(low, high),
            self.messages,
            range(lookups_low, lookups_high),
            match self.uploads {
                0 => String::new(),
                n => format!(" + 0 to {n} uploads"),
            }
        );
        if self.uploads > 0 {
            let _ = writeln!(
                out,
                "  uploads   up to {} attachment(s) to upload first (local files, URLs with a query string): one request each, none for a file uploaded earlier (kept in <results>.uploads.csv) or attached again",
                self.uploads
            );
        }
        if self.doubts > 0 {
            let _ = writeln!(
                out,
                "  read-back {} read(s) to settle {} unknown row(s) (one per conversation, more for one longer than a page); up to {} of them sent if not found",
                self.settle_reads, self.doubts, self.doubts
            );
        }
        match rate {
            Some(rate) => {
                // The first window's N start at once; the rest at the rate.
                let time = |n: u64| {
                    let after_first = n.saturating_sub(u64::from(rate.max));
                    human(Duration::from_secs_f64(
                        after_first as f64 / rate.per_second(),
                    ))
                };
                let (a, b) = (time(low), time(high));
                let span = if a == b { a } else { format!("{a} to {b}") };
                let _ = writeln!(out, "  time      about {span} at {rate}");
            }
            None => {
                let _ = writeln!(out, "  time      no pace limit");
            }
        }
        let share = |n: u64| format!("{:.1} %", n as f64 * 100.0 / DAILY_BUDGET as f64);
        let _ = writeln!(
            out,
            "  daily     {} of a location's budget of {DAILY_BUDGET} requests a day",
            if share(low) == share(high) {
                share(low)
            } else {
                format!("{} to {}", share(low), share(high))
            }
        );
        if high > DAILY_BUDGET {
            let days = |n: u64| n.div_ceil(DAILY_BUDGET);
            let (a, b) = (days(low), days(high));
            let span = if a == b {
                a.to_string()
            } else {
                format!("{a} to {b}")
            };
            let _ = writeln!(
                out,
                "  days      {span} at {DAILY_BUDGET} requests a day{}",
                if wait {
                    " (--wait: the run waits for each next day by itself)"
                } else {
                    ": the run stops when a day's budget is spent (run it again the next day, or give --wait)"
                }
            );
        }
        if let Some(max) = max_requests
            && max < high
        {
            let _ = writeln!(
                out,
                "  --max-requests {max}: this run stops after {max} requests; run the same command again to go on"
            );
        }
        out
    }
}

/// `1h 02m`, `3m 20s`, `12s`.
pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs_f64().ceil() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_stops_at_exactly_n() {
        let q = Quota::new(Some(3));
        assert_eq!((0..5).filter(|_| q.take()).count(), 3);
        let open = Quota::new(None);
        assert!((0..1000).all(|_| open.take()));
    }

    #[test]
    fn the_plan_counts_lookups_as_a_range() {
        let plan = Plan {
            rows: 1110,
            messages: 1000,
            done_before: 10,
            contacts: 100,
            conversations: 100,
            contact_cost: 2,
            ..Plan::default()
        };
        assert_eq!(plan.requests(), (1200, 1400));
        let text = plan.describe(Some("100/10s".parse().unwrap()), Some(500), false);
        assert!(
            text.contains("requests  1200 to 1400 (1000 messages + 200 to 400 lookups)"),
            "{text}"
        );
        assert!(text.contains("about 1m 50s to 2m 10s at"), "{text}");
        assert!(text.contains("0.6 % to 0.7 %"), "{text}");
        assert!(
            text.contains("--max-requests 500: this run stops"),
            "{text}"
        );
        assert!(!text.contains("days "), "{text}");
        let million = Plan {
            messages: 1_000_000,
            ..plan
        };
        let text = million.describe(None, None, true);
        assert!(
            text.contains("days      6 at 200000 requests a day (--wait"),
            "{text}"
        );
        let settling = Plan {
            messages: 10,
            doubts: 6,
            settle_reads: 2,
            ..Plan::default()
        };
        assert_eq!(settling.requests(), (12, 18));
        assert!(
            settling
                .describe(None, None, false)
                .contains("read-back 2 read(s) to settle 6 unknown row(s)")
        );
        let uploading = Plan {
            messages: 10,
            uploads: 4,
            ..Plan::default()
        };
        assert_eq!(uploading.requests(), (10, 14));
        assert!(
            uploading
                .describe(None, None, false)
                .contains("uploads   up to 4 attachment(s) to upload first")
        );
    }
}
