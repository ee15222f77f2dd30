//! Progress while a run sends: a bar on a terminal (stderr), else a log line every few seconds.
//! Both count rows *finished* — sent, failed, invalid, duplicate, unknown, or done in an earlier
//! run — of every row of the input (counted by the pass before sending), so a resume starts at
//! the rows already done. The rate and the ETA come from rows finished in the last few seconds:
//! the pace of the run now, not an average over a resume's instant skips.
//!
//! It only reads the run's [`Counters`]; [`Progress::finish`] stops it and clears the bar before
//! the summary is printed.
//!
//! Before that, while the pass before sending reads the input ([`Progress::reading`]), the rows
//! are not known yet: it shows the bytes of the (decompressed) input read so far, which is all
//! a pipe or a compressed file can tell.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::quota::human;
use crate::source::Source;
use crate::summary::Counters;

/// How far back the rate looks.
const PACE_WINDOW: Duration = Duration::from_secs(10);
/// How often the bar is drawn and the pace sampled.
const TICK: Duration = Duration::from_millis(200);
/// Without a terminal, a log line every this many ticks (5 s).
const LOG_EVERY: u64 = 25;

/// The running progress display. Dropping it without [`Progress::finish`] leaves the task to end
/// with the runtime.
pub struct Progress {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts drawing progress towards `total` rows.
    pub fn start(counters: Arc<Counters>, total: u64) -> Progress {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let terminal = std::io::stderr().is_terminal();
            let bar = terminal.then(|| {
                let bar = indicatif::ProgressBar::new(total.max(1));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} rows {percent:>3}% {msg} [{elapsed_precise}]",
                    )
                    .expect("a valid template"),
                );
                bar
            });
            // The pace is sampled at every tick; without a terminal a line is logged every
            // LOG_EVERY ticks.
            let mut pace = Pace::default();
            let mut tick = tokio::time::interval(TICK);
            tick.tick().await;
            for n in 1u64.. {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = token.cancelled() => break,
                }
                let done = counters.finished();
                let rate = pace.rate(Instant::now(), done);
                match &bar {
                    Some(bar) => {
                        bar.set_position(done);
                        bar.set_message(line(&counters, rate, eta(total, done, rate)));
                    }
                    None if n % LOG_EVERY == 0 => info!(
                        "progress: {done}/{total} rows ({:.0} %): {}",
                        done as f64 * 100.0 / total.max(1) as f64,
                        line(&counters, rate, eta(total, done, rate))
                    ),
                    None => {}
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        });
        Progress { stop, task }
    }

    /// Stops the display and waits for it to clear the bar.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The display of [`Progress::reading`], on a thread of its own (the pass reads on a blocking
/// thread). Dropping it stops it and clears the line.
pub struct Reading {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Shows the bytes of `source` read so far until the returned value is dropped: a line on a
    /// terminal, else a log line every 5 s (a pass that takes less shows nothing).
    pub fn reading(source: &Source) -> Reading {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (done, read) = (stop.clone(), source.bytes_read());
        let name = source.name().display().to_string();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                let bar = std::io::stderr().is_terminal().then(|| {
                    let bar = indicatif::ProgressBar::new_spinner();
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{spinner} reading {msg}: {bytes} ({bytes_per_sec}) [{elapsed_precise}]",
                        )
                        .expect("a valid template"),
                    );
                    bar.set_message(name.clone());
                    bar
                });
                let started = Instant::now();
                for n in 1u64.. {
                    std::thread::park_timeout(TICK);
                    if done.load(Ordering::Relaxed) {
                        break;
                    }
                    let bytes = read.load(Ordering::Relaxed);
                    match &bar {
                        Some(bar) => bar.set_position(bytes),
                        None if n % LOG_EVERY == 0 => info!(
                            "reading {name} before sending: {} read ({}/s)",
                            indicatif::HumanBytes(bytes),
                            indicatif::HumanBytes(
                                (bytes as f64 / started.elapsed().as_secs_f64().max(0.001)) as u64
                            )
                        ),
                        None => {}
                    }
                }
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
            })
            .ok();
        Reading { stop, thread }
    }
}

impl Reading {
    /// Stops the display and clears its line.
    pub fn finish(self) {}
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Rows finished per second over the last [`PACE_WINDOW`].
#[derive(Default)]
struct Pace {
    samples: VecDeque<(Instant, u64)>,
}

impl Pace {
    /// Takes a sample; the rate since the oldest sample still in the window (`None` until
    /// there are two samples a moment apart).
    fn rate(&mut self, now: Instant, done: u64) -> Option<f64> {
        self.samples.push_back((now, done));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > PACE_WINDOW)
        {
            self.samples.pop_front();
        }
        let (t0, d0) = *self.samples.front()?;
        let secs = now.duration_since(t0).as_secs_f64();
        (secs >= 0.1).then(|| done.saturating_sub(d0) as f64 / secs)
    }
}

/// The time the rows left take at `rate`: `12s`, `3m 20s`, `?` while the pace is unknown or 0.
fn eta(total: u64, done: u64, rate: Option<f64>) -> String {
    let left = total.saturating_sub(done);
    match rate {
        _ if left == 0 => "0s".to_owned(),
        Some(r) if r > 0.0 => human(Duration::from_secs_f64(left as f64 / r)),
        _ => "?".to_owned(),
    }
}

/// `1100 sent, 2 failed, 0 invalid, 0 unknown; 98.5 rows/s, ETA 36s`; with `--wait` while the
/// daily budget is spent, `…; daily budget spent, going on at 2026-12-02T00:05:00Z`.
fn line(c: &Counters, rate: Option<f64>, eta: String) -> String {
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let waiting = match n(&c.resume_at_ms) {
        0 => String::new(),
        ms => jiff::Timestamp::from_millisecond(ms as i64)
            .map(|t| format!("; daily budget spent, going on at {t:.0}"))
            .unwrap_or_default(),
    };
    format!(
        "{} sent, {} failed, {} invalid, {} unknown; {:.1} rows/s, ETA {eta}{waiting}",
        n(&c.sent) + n(&c.sent_before),
        n(&c.failed),
        n(&c.invalid),
        n(&c.unknown) + n(&c.unknown_before),
        rate.unwrap_or(0.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_is_that_of_the_last_seconds_and_the_eta_follows_it() {
        let mut pace = Pace::default();
        let t0 = Instant::now();
        // A resume: 2,000 rows done earlier are counted at once, then 50 rows/s.
        assert_eq!(pace.rate(t0, 2000), None);
        let at = |s: u64| t0 + Duration::from_secs(s);
        pace.rate(at(1), 2000);
        for s in 2..=30 {
            pace.rate(at(s), 2000 + (s - 1) * 50);
        }
        let rate = pace.rate(at(31), 3500).expect("a rate");
        assert!((rate - 50.0).abs() < 0.01, "{rate}");
        assert_eq!(eta(3000 + 1000, 3500, Some(rate)), "10s");
        assert_eq!(eta(4000, 3500, Some(0.0)), "?");
        assert_eq!(eta(4000, 4000, None), "0s");
        assert_eq!(eta(100_000, 1000, Some(50.0)), "33m 00s");
    }
}
