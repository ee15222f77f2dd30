//! `lc-import run`: the import, wired from its stages (DESIGN "Pipeline"):
//!
//! ```text
//! config ─► preflight ─► intake thread ──jobs──► schedule ──spawn──► deliver ──► results
//!  flags,    plan, dup-    record → dup /         lanes per           gate → write-ahead
//!  file,     licate keys,  done earlier /         conversation,       → sender → policy
//!  sandbox   conflicts     invalid / job          --concurrency       → outcome line
//! ```
//!
//! With `--verify-unknown`, the rows an earlier run left `unknown` are settled by reading them
//! back (`readback::settle`) between the pass and the intake, before anything is sent; their
//! verdicts go to the intake.
//!
//! Until the first request can leave (the pass before sending, opening the sender), an error
//! ends the run with exit 2: nothing was sent. After that, every error is a stop (exit 3): rows
//! in flight finish, the journal is compacted, and the summary says how to resume. The stops a
//! user asks for (Ctrl-C, SIGTERM) are [`crate::shutdown`]'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::cli::{RunArgs, ValidateArgs};
use crate::config::{self, Endpoint, Settings};
use crate::deliver::Deliver;
use crate::gate::Gate;
use crate::intake::Intake;
use crate::preflight::{self, Prepared};
use crate::progress::Progress;
use crate::readback::{self, Reader, settle::Settled};
use crate::resolve::Env;
use crate::results::Journal;
use crate::results::line::folder_of;
use crate::retry::{Policy, StopReason};
use crate::sandbox::Sandbox;
use crate::schedule::{self, Job};
use crate::sender::Sender;
use crate::shutdown::Shutdown;
use crate::summary::{Counters, Ending, Report, say, say_err};

/// How long an outcome line may wait in memory for the next `sending` line to carry it.
const JOURNAL_FLUSH_EVERY: Duration = Duration::from_millis(10);
/// How long a hard stop waits for the journal's lock to write the lines still in memory.
const HARD_STOP_FLUSH: Duration = Duration::from_millis(200);

/// `lc-import run`: imports the rows (with `--dry-run`, only validates them) and says how it ended.
pub fn run(args: RunArgs) -> Result<Ending> {
    if args.dry_run && !args.resolve_only {
        return crate::commands::validate::run(ValidateArgs {
            input: args.input,
            results: None,
            show: 3,
            mapping: args.mapping,
        });
    }
    // One worker thread. The reader has its own thread; everything else (scheduler, requests,
    // journal lines) is light per row, and on one thread it needs no cross-thread wake-ups and
    // frees memory where it was allocated. Measured on 2 cores against the sandbox: 300k rows
    // took 10.6–11.6 s of CPU with two workers, 8.1–8.7 s with one (glibc's per-thread arenas
    // were locked and woken on most frees). Blocking phases use `block_in_place`, so Ctrl-C
    // is still heard while they run.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The whole run is a spawned task, so the scheduler lives on a worker thread beside the
    // deliver tasks: a completion then wakes it without a cross-thread futex call (measured:
    // ~12 % of a run's CPU went to waking the thread that `block_on` parks).
    let task = runtime.spawn(async move {
        let shutdown = Shutdown::listen()?;
        let sandbox = match args.sandbox {
            // A stream has no name to put the record beside: the results file's.
            true => Some(
                start_sandbox(match crate::source::is_stream(&args.input) {
                    true => args.results.as_deref().unwrap_or(Path::new("stdin")),
                    false => &args.input,
                })
                .await?,
            ),
            false => None,
        };
        let target = sandbox.as_ref().map(|s| Endpoint {
            base_url: s.sandbox.base_url(),
            token: s.token.clone(),
        });
        let resolve_only = args.resolve_only;
        let summary_json = args.summary_json.is_some();
        let ended = match Settings::new(args, target) {
            Err(e) => Err(e),
            Ok(settings) if resolve_only => {
                crate::commands::survey::survey(settings, &shutdown.soft).await
            }
            Ok(settings) => {
                let (input, results) = (settings.input.clone(), settings.results.clone());
                import(settings, &shutdown)
                    .await
                    .map(|r| match summary_json {
                        true => r.ending_with_summary(&input, &results),
                        false => r.ending(),
                    })
            }
        };
        if let Some(s) = sandbox {
            s.sandbox.shutdown().await;
            say(&format!(
                "sandbox: every message it stored is in {} (one JSON line each)\n",
                s.record.display()
            ));
        }
        ended
    });
    // A panic of the run itself may come after requests left: a stop (exit 3, resumable from
    // the journal as appended), never "nothing was sent".
    let ended = runtime.block_on(task).unwrap_or_else(|e| {
        say_err(&format!("error: the run failed unexpectedly: {e}"));
        Ok(Ending {
            stopped: Some(StopReason::Error(format!(
                "the run failed unexpectedly: {e}"
            ))),
            attention: 0,
            summary: None,
        })
    });
    // After a hard stop, tasks may still wait on requests: they are dropped, not awaited.
    runtime.shutdown_background();
    ended
}

/// The in-process sandbox of `run --sandbox`.
struct Rehearsal {
    sandbox: Sandbox,
    token: String,
    /// Where it records every message it stores.
    record: PathBuf,
}

/// `run --sandbox`: an in-process sandbox on a free loopback port, no limits, its record beside
/// the input.
async fn start_sandbox(input: &Path) -> Result<Rehearsal> {
    let record = config::beside_input(input, ".sandbox.jsonl");
    let config = crate::sandbox::SandboxConfig {
        record: Some(record.clone()),
        record_contacts: Some(config::beside_input(input, ".sandbox-contacts.jsonl")),
        ..crate::sandbox::SandboxConfig::unlimited()
    };
    let token = config.token.clone();
    let sandbox = crate::sandbox::start(config, ([127, 0, 0, 1], 0).into()).await?;
    info!("sandbox listening on {}", sandbox.base_url());
    Ok(Rehearsal {
        sandbox,
        token,
        record,
    })
}

/// Imports the rows of `settings.input`: soft and hard stops come from `shutdown`. `Err` only
/// when nothing was sent.
pub async fn import(settings: Settings, shutdown: &Shutdown) -> Result<Report> {
    let started = Instant::now();
    let prepared = tokio::task::block_in_place(|| preflight::prepare(&settings, &shutdown.soft))?;
    let Some(prepared) = prepared else {
        // Ctrl-C during the pass: nothing was sent; the results file is as it was.
        let report = Report {
            stopped: Some(StopReason::Interrupted),
            elapsed: started.elapsed(),
            ..Report::default()
        };
        say(&report.render(&settings.input, &settings.results));
        return Ok(report);
    };
    let Prepared {
        input,
        mapping,
        journal,
        prior,
        resolver,
        plan,
        duplicates,
        content,
        doubts,
        order,
        threads,
    } = prepared;
    let (content_log, content_index) = content.unzip();
    let (thread_log, thread_starts) = threads.unzip();
    say(&plan.describe(settings.rate, settings.max_requests, settings.wait));
    let content_keys = !mapping.has_key_column();
    if content_keys {
        warn!(
            "{} has no key column (altId, or one named with --key-column): each row is known by a hash of its cells, so a row edited after it was sent is sent again as a new row. Give a column that identifies each message with --key-column COLUMN",
            settings.input.display()
        );
    }
    let plan_rows = plan.rows;
    let journal = Arc::new(journal);
    let counters = Arc::new(Counters::default());
    let deliver = Arc::new(Deliver {
        sender: Sender::new(
            &settings.base_url,
            &settings.api_version,
            settings.timeout,
            settings.concurrency,
        )?,
        gate: {
            let gate = Gate::new(
                settings.rate,
                settings.max_requests,
                settings.concurrency,
                shutdown.soft.child_token(),
            );
            match settings.wait {
                true => gate.with_wait(
                    crate::sender::is_loopback(&settings.base_url),
                    counters.clone(),
                ),
                false => gate,
            }
        },
        policy: Policy::new(settings.max_retries, settings.backoff),
        auth: settings.auth.clone(),
        journal: journal.clone(),
        counters: counters.clone(),
        resolver,
        content: content_log,
        threads: thread_log,
        reader: Some(Reader::new(
            &settings.base_url,
            settings.timeout,
            settings.location_id.clone(),
        )?),
        // Only a run with attachments to upload keeps an uploads journal.
        uploader: match plan.uploads {
            0 => None,
            _ => Some(crate::upload::Uploader::new(
                &settings.base_url,
                &settings.results,
                settings.timeout,
                settings.files.max_size,
            )?),
        },
    });
    info!(
        "importing {} into {} at {} with {} in flight; results in {}",
        settings.input.display(),
        crate::sender::shown(deliver.sender.url()),
        settings
            .rate
            .map_or("no rate limit".to_owned(), |r| format!("most {r}")),
        settings.concurrency,
        settings.results.display()
    );
    // --verify-unknown: the rows in doubt are settled before anything is sent.
    let mut settled = match (&deliver.reader, doubts.is_empty()) {
        (Some(reader), false) => {
            let env = Env {
                gate: &deliver.gate,
                policy: &deliver.policy,
                auth: &deliver.auth,
            };
            let threads = deliver.threads.as_deref().zip(thread_starts.as_ref());
            readback::settle::settle(doubts, reader, &env, &journal, settings.settle, threads).await
        }
        _ => Settled::default(),
    };
    let (job_tx, job_rx) = mpsc::channel::<Vec<Job>>(8);
    let intake = Intake {
        input,
        mapping,
        prior,
        duplicates,
        journal: journal.clone(),
        counters: counters.clone(),
        stop: deliver.gate.token(),
        limit: settings.limit,
        resend_unknown: settings.resend_unknown,
        content: content_index,
        send_changed: settings.send_changed,
        settled: std::mem::take(&mut settled.verdicts),
        order,
        files: settings.files.clone(),
        threads: thread_starts,
    };
    let reader = std::thread::Builder::new()
        .name("reader".into())
        .spawn(move || intake.run(job_tx))
        .context("starting the reader thread")?;

    // From here on requests leave: whatever happens, the run ends with a report.
    let progress = Progress::start(counters.clone(), plan_rows);
    let flusher = tokio::spawn(flush_every(deliver.clone()));
    let spill_dir = folder_of(&settings.results);
    let pipeline = schedule::run(
        job_rx,
        &deliver.gate,
        |job| deliver.clone().row(job),
        |job, failed| deliver.hold(job, failed),
        // Rows beyond those on the wire write and sync their `sending` lines meanwhile, so a
        // sync's wait is not the pace of a fast server (see deliver's LOOK_AHEAD).
        settings.concurrency * crate::deliver::LOOK_AHEAD,
        (settings.concurrency * 128).max(1024),
        &spill_dir,
    );
    tokio::select! {
        () = pipeline => {}
        () = shutdown.hard.cancelled() => {
            if let Some(content) = &deliver.content {
                content.flush();
            }
            return Ok(hard_stop(&journal, &counters, &deliver.gate, started));
        }
    }
    flusher.abort();
    let _ = flusher.await;
    let prior = match tokio::task::block_in_place(|| reader.join()) {
        Ok(ended) => {
            if let Some(reason) = ended.stop {
                deliver.gate.stop_with(reason);
            }
            Some(ended.prior)
        }
        Err(_) => {
            // The journal as appended is whole; the next run reads it.
            deliver
                .gate
                .stop_with(StopReason::Error("the reader thread panicked".into()));
            None
        }
    };
    progress.finish().await;
    if shutdown.soft.is_cancelled() {
        deliver.gate.stop_with(StopReason::Interrupted);
    }
    let mut stopped = deliver.gate.reason();
    let requests = deliver.gate.requests();
    let resolved = deliver.resolver.as_ref().map(|r| r.summary());
    let uploaded = deliver.uploader.as_ref().map(|u| u.summary());
    let uploads = deliver.uploader.as_ref().map_or(0, |u| u.requests());
    let lookups = deliver.resolver.as_ref().map_or(0, |r| r.lookups());
    let reads = deliver.reader.as_ref().map_or(0, |r| r.reads());
    let checks = deliver
        .reader
        .as_ref()
        .map_or(String::new(), |r| r.summary());
    drop(deliver);
    // Only an input read to its end tells which rows sent earlier it no longer has.
    let gone = match (&prior, &stopped) {
        (Some(prior), None) => prior.unmatched_sent(),
        _ => 0,
    };
    if let Some(prior) = prior
        && let Err(e) = tokio::task::block_in_place(|| journal.compact(&prior))
    {
        // The journal as appended is still whole and the next run reads it: resumable.
        warn!("{e:#}");
        stopped.get_or_insert(StopReason::ResultsFile(format!(
            "{} (compacting it): {}",
            journal.path().display(),
            e.root_cause()
        )));
    }
    let report = Report {
        total: plan_rows,
        lookups,
        uploads,
        token_refreshes: settings.auth.refreshes(),
        location_tokens: settings.auth.exchanges(),
        reads,
        gone,
        content_keys,
        ..Report::read(&counters, stopped, requests, started.elapsed())
    };
    say(&report.render(&settings.input, journal.path()));
    if let Some(resolved) = resolved {
        say(&resolved);
    }
    if let Some(uploaded) = uploaded {
        say(&uploaded);
    }
    say(&settled.summary(settings.settle));
    say(&checks);
    Ok(report)
}

/// Outcome lines wait in memory for the next `sending` line; when none comes soon (the run is
/// paced, or ending), this writes them.
async fn flush_every(deliver: Arc<Deliver>) {
    let mut tick = tokio::time::interval(JOURNAL_FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = deliver.journal.flush() {
            deliver.gate.stop_with(deliver.journal_error(&e));
        }
        if let Some(content) = &deliver.content {
            content.flush();
        }
    }
}

/// The second Ctrl-C: write the outcome lines still in memory and end now, without waiting for
/// requests in flight (their `sending` lines are in the file: the resume reads them `unknown`).
fn hard_stop(journal: &Journal, counters: &Counters, gate: &Gate, started: Instant) -> Report {
    journal.flush_before_exit(HARD_STOP_FLUSH);
    say_err("exiting at once: the results journal is on disk; run the same command to resume");
    Report::read(
        counters,
        Some(StopReason::Interrupted),
        gate.requests(),
        started.elapsed(),
    )
}
