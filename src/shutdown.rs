//! Ctrl-C and SIGTERM, as the run's written shutdown protocol:
//!
//! 1. the first signal is a **soft stop**: [`Shutdown::soft`] is cancelled, the reader takes no
//!    new rows, the scheduler dispatches none, rows waiting to retry are recorded `failed`, and
//!    requests in flight finish (each bounded by `--timeout`); then the journal is compacted and
//!    the summary says how to resume;
//! 2. a second signal is a **hard stop**: [`Shutdown::hard`] is cancelled and the run returns at
//!    once after writing the outcome lines still in memory (every `sending` line is already in
//!    the file, so the resume reads any row in flight as `unknown`).
//!
//! The handlers are installed before [`Shutdown::listen`] returns, so a signal that comes right
//! after is never missed. The stop is triggered *before* anything is printed about it, and the
//! print cannot fail the handler: with stderr a closed pipe (a dead log collector), the signal
//! still stops the run.

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::summary::say_err;

/// The two stops a user can ask for.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// First Ctrl-C / SIGTERM: finish what is in flight, then stop.
    pub soft: CancellationToken,
    /// Second one: stop now.
    pub hard: CancellationToken,
}

impl Shutdown {
    /// Installs the handlers (inside a Tokio runtime) and returns the stops they trigger.
    pub fn listen() -> Result<Shutdown> {
        let shutdown = Shutdown::default();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut int =
                signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
            let mut term =
                signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
            let stops = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    if stops.heard() {
                        return;
                    }
                }
            });
        }
        #[cfg(not(unix))]
        {
            let stops = shutdown.clone();
            tokio::spawn(async move {
                while tokio::signal::ctrl_c().await.is_ok() {
                    if stops.heard() {
                        return;
                    }
                }
            });
        }
        Ok(shutdown)
    }

    /// One signal heard; true once it was the hard stop (nothing more to listen for).
    fn heard(&self) -> bool {
        if !self.soft.is_cancelled() {
            self.soft.cancel();
            say_err(
                "stopping: no new rows; waiting for requests in flight (interrupt again to exit at once)",
            );
            false
        } else {
            self.hard.cancel();
            true
        }
    }
}
