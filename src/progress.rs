//! Progress while a run sends: a bar on a terminal (stderr), else a log line every few seconds.
//! It only reads the run's [`Counters`]; [`Progress::finish`] stops it and clears the bar before
//! the summary is printed.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::summary::Counters;

/// The running progress display. Dropping it without [`Progress::finish`] leaves the task to end
/// with the runtime.
pub struct Progress {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts drawing; `total_bytes` is the input's size (the bar follows bytes read).
    pub fn start(counters: Arc<Counters>, total_bytes: u64) -> Progress {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let terminal = std::io::stderr().is_terminal();
            let bar = terminal.then(|| {
                let bar = indicatif::ProgressBar::new(total_bytes.max(1));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:30} {percent:>3}% {msg} [{elapsed_precise}, ETA {eta}]",
                    )
                    .expect("a valid template"),
                );
                bar
            });
            let started = Instant::now();
            let every = if terminal {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(5)
            };
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = token.cancelled() => break,
                }
                let msg = line(&counters, started.elapsed());
                match &bar {
                    Some(bar) => {
                        bar.set_position(counters.bytes.load(Ordering::Relaxed));
                        bar.set_message(msg);
                    }
                    None => info!("progress: {msg}"),
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

/// `1200 rows: 1100 sent, 2 failed, 0 invalid, 0 unknown, 98.5/s`.
fn line(c: &Counters, elapsed: Duration) -> String {
    let sent = c.sent.load(Ordering::Relaxed);
    format!(
        "{} rows: {} sent, {} failed, {} invalid, {} unknown, {:.1}/s",
        c.rows.load(Ordering::Relaxed),
        sent + c.sent_before.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        c.invalid.load(Ordering::Relaxed),
        c.unknown.load(Ordering::Relaxed),
        sent as f64 / elapsed.as_secs_f64().max(0.001)
    )
}
