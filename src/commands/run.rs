//! `lc-import run`: the import. It reads top to bottom as one chain of stages:
//!
//! ```text
//! reader thread ──jobs──► scheduler ──spawn──► deliver tasks ──done──► scheduler
//!  (map, validate,          (per-conversation      (rate limit, journal
//!   resume skip,             lanes, --concurrency)   `sending`, POST, classify,
//!   duplicates)                                       retry, journal outcome)
//! ```
//!
//! Shutdown is a written protocol: a stop (Ctrl-C, SIGTERM, 401, daily budget, a server that
//! keeps failing, `--limit`) cancels `stop`; the reader stops taking rows, the scheduler stops
//! dispatching, rows waiting to retry are recorded `failed`, requests in flight finish (each is
//! bounded by `--timeout`); then the journal is compacted and the summary says how to resume.
//! A second Ctrl-C exits at once: every line is already on disk.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Exit;
use crate::cli::{RunArgs, ValidateArgs};
use crate::config::{self, FileConfig};
use crate::extsort::ExternalSort;
use crate::mapping::{MappedRow, Mapping, MappingOptions};
use crate::rate::Rate;
use crate::ratelimit::RateLimit;
use crate::reader::CsvInput;
use crate::results::line::{folder_of, key_id, now_rfc3339};
use crate::results::prior::conversation_tag;
use crate::results::{Journal, Prior, ResultLine, Status};
use crate::retry::{Backoff, Outcome, StopReason, classify};
use crate::schedule::{Job, Lanes};
use crate::sender::{self, Sender, ServerLimits};

/// The API root when none is given.
pub const DEFAULT_BASE_URL: &str = "https://services.leadconnectorhq.com";
/// How long an outcome line may wait in memory for the next `sending` line to carry it.
const JOURNAL_FLUSH_EVERY: Duration = Duration::from_millis(10);
/// Consecutive server errors or refused connections, across all rows, that stop the run.
const SERVER_FAILURE_LIMIT: u32 = 25;

/// Everything a run needs, checked.
pub struct Settings {
    pub input: PathBuf,
    pub results: PathBuf,
    pub base_url: reqwest::Url,
    pub token: String,
    pub api_version: String,
    /// `None`: no limit (only for the in-process sandbox).
    pub rate: Option<Rate>,
    pub concurrency: usize,
    pub max_retries: u32,
    pub timeout: Duration,
    pub limit: Option<u64>,
    pub resend_unknown: bool,
    pub mapping: MappingOptions,
    pub delimiter: u8,
    pub backoff: Backoff,
    /// ID resolution: `--create-contacts`.
    pub create_contacts: bool,
    /// `--max-requests`.
    pub max_requests: Option<u64>,
}

/// Counters of a run, shared by the stages; the summary and the exit code come from them.
#[derive(Debug, Default)]
pub struct Counters {
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
    pub sent: AtomicU64,
    pub sent_before: AtomicU64,
    pub invalid: AtomicU64,
    pub failed: AtomicU64,
    pub unknown: AtomicU64,
    pub unknown_before: AtomicU64,
    pub duplicate: AtomicU64,
    pub requests: AtomicU64,
}

/// What a finished run reports.
#[derive(Debug, Default)]
pub struct Report {
    pub stopped: Option<StopReason>,
    pub rows: u64,
    pub sent: u64,
    pub sent_before: u64,
    pub invalid: u64,
    pub failed: u64,
    pub unknown: u64,
    pub unknown_before: u64,
    pub duplicate: u64,
    pub requests: u64,
    pub elapsed: Duration,
}

impl Report {
    pub fn exit(&self) -> Exit {
        if self.stopped.is_some() {
            Exit::Stopped
        } else if self.invalid + self.failed + self.unknown + self.unknown_before > 0 {
            Exit::RowsNeedAttention
        } else {
            Exit::Success
        }
    }
}

pub fn run(args: RunArgs) -> Exit {
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Usage;
        }
    };
    // The whole run is a spawned task, so the scheduler lives on a worker thread beside the
    // deliver tasks: a completion then wakes it without a cross-thread futex call (measured:
    // ~12 % of a run's CPU went to waking the thread that `block_on` parks).
    let task = runtime.spawn(async move {
        let use_sandbox = args.sandbox;
        let resolve_only = args.resolve_only;
        let record = config::beside_input(&args.input, ".sandbox.jsonl");
        let mut settings = match settings(args, use_sandbox) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e:#}");
                return Exit::Usage;
            }
        };
        let sandbox = if use_sandbox {
            match start_sandbox(&mut settings, record).await {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return Exit::Usage;
                }
            }
        } else {
            None
        };
        let outcome = if resolve_only {
            crate::resolve::survey::survey(settings, &signals()).await
        } else {
            import(settings, &signals())
                .await
                .map(|report| report.exit())
        };
        let exit = match outcome {
            Ok(exit) => exit,
            Err(e) => {
                eprintln!("error: {e:#}");
                Exit::Usage
            }
        };
        if let Some((sandbox, record)) = sandbox {
            sandbox.shutdown().await;
            println!(
                "sandbox: every message it stored is in {} (one JSON line each)",
                record.display()
            );
        }
        exit
    });
    runtime.block_on(task).unwrap_or_else(|e| {
        eprintln!("error: the run failed unexpectedly: {e}");
        Exit::Usage
    })
}

/// `run --sandbox`: an in-process sandbox on a free loopback port, no limits, its record beside
/// the input; the run is pointed at it with the sandbox's token.
async fn start_sandbox(
    settings: &mut Settings,
    record: PathBuf,
) -> Result<(crate::sandbox::Sandbox, PathBuf)> {
    let config = crate::sandbox::SandboxConfig {
        record: Some(record.clone()),
        record_contacts: Some(config::beside_input(
            &settings.input,
            ".sandbox-contacts.jsonl",
        )),
        ..crate::sandbox::SandboxConfig::unlimited()
    };
    let token = config.token.clone();
    let sandbox = crate::sandbox::start(config, ([127, 0, 0, 1], 0).into()).await?;
    info!("sandbox listening on {}", sandbox.base_url());
    settings.base_url = sender::check_base_url(&sandbox.base_url())?;
    settings.token = token;
    // The sandbox has no limits: pace as fast as the sender goes.
    settings.rate = None;
    Ok((sandbox, record))
}

/// Flags over the config file over defaults, checked. With `sandbox`, the token and base URL
/// are the sandbox's and need not be given.
pub fn settings(args: RunArgs, sandbox: bool) -> Result<Settings> {
    let mut file = FileConfig::load(args.mapping.config.as_deref())?;
    let (mapping, delimiter) = config::mapping_options(&args.mapping, &mut file)?;
    let base = args
        .base_url
        .or(file.base_url.take())
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
    let base_url = sender::check_base_url(&base)?;
    let token = if sandbox {
        String::new()
    } else {
        read_token(args.token_file.as_deref().or(file.token_file.as_deref()))?
    };
    let rate = match (args.rate, file.rate.as_deref()) {
        (Some(r), _) => r.0,
        (None, Some(r)) => {
            r.parse::<crate::rate::Limit<Rate>>()
                .map_err(|e| anyhow!("config rate: {e}"))?
                .0
        }
        (None, None) => Some("100/10s".parse().expect("the default rate parses")),
    };
    let timeout = match (args.timeout, file.timeout.as_deref()) {
        (Some(t), _) => t,
        (None, Some(t)) => {
            crate::rate::parse_duration(t).map_err(|e| anyhow!("config timeout: {e}"))?
        }
        (None, None) => Duration::from_secs(30),
    };
    let concurrency = args.concurrency.or(file.concurrency).unwrap_or(8);
    if concurrency == 0 {
        bail!("--concurrency 0 would send nothing: give 1 or more");
    }
    Ok(Settings {
        results: args
            .results
            .or(file.results.take())
            .unwrap_or_else(|| config::beside_input(&args.input, ".results.csv")),
        input: args.input,
        base_url,
        token,
        api_version: args
            .api_version
            .or(file.api_version.take())
            .unwrap_or_else(|| "2021-07-28".to_owned()),
        rate,
        concurrency,
        max_retries: args.max_retries.or(file.max_retries).unwrap_or(5),
        timeout,
        limit: args.limit.or(file.limit),
        resend_unknown: args.resend_unknown,
        mapping,
        delimiter,
        backoff: Backoff::default(),
        create_contacts: args.create_contacts || file.create_contacts.unwrap_or(false),
        max_requests: args.max_requests.or(file.max_requests),
    })
}

/// The token from `--token-file`, else from `LC_TOKEN`. Never from the command line, where
/// other users of the machine could read it.
fn read_token(file: Option<&std::path::Path>) -> Result<String> {
    let token = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --token-file {}", path.display()))?,
        None => std::env::var("LC_TOKEN").unwrap_or_default(),
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        bail!(
            "no API token: set the environment variable LC_TOKEN, or give --token-file PATH (a file holding only the token). Use a sub-account Private Integration token or a location OAuth token"
        );
    }
    Ok(token)
}

/// The run's journal, for the second Ctrl-C: it exits at once, after writing the outcome
/// lines still in memory.
static JOURNAL: Mutex<Option<std::sync::Weak<Journal>>> = Mutex::new(None);

/// Ctrl-C and SIGTERM: the first cancels the returned token, the second exits at once.
pub fn signals() -> CancellationToken {
    let token = CancellationToken::new();
    let first = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        for n in 0.. {
            #[cfg(unix)]
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
            if n == 0 {
                eprintln!(
                    "stopping: no new rows; waiting for requests in flight (interrupt again to exit at once)"
                );
                first.cancel();
            } else {
                let journal = JOURNAL.lock().ok().and_then(|j| j.as_ref()?.upgrade());
                if let Some(journal) = journal {
                    journal.flush_before_exit(Duration::from_millis(200));
                }
                eprintln!(
                    "exiting at once: the results journal is on disk; run the same command to resume"
                );
                std::process::exit(Exit::Stopped as i32);
            }
        }
    });
    token
}

/// State every deliver task shares.
struct Shared {
    sender: Sender,
    limit: RateLimit,
    journal: Arc<Journal>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    stop_reason: Mutex<Option<StopReason>>,
    server_failures: AtomicU32,
    max_retries: u32,
    backoff: Backoff,
    rate_noted: AtomicBool,
    /// Looks up IDs for rows without them; `None` when the mapping does not resolve.
    resolver: Option<crate::resolve::Resolver>,
    /// `--max-requests`, shared by lookups and messages.
    quota: crate::quota::Quota,
}

impl Shared {
    fn stop_with(&self, reason: StopReason) {
        let mut r = self.stop_reason.lock().expect("stop reason lock");
        if r.is_none() {
            warn!("stopping the run: {reason}");
            *r = Some(reason);
        }
        self.stop.cancel();
    }
}

/// Imports the rows of `settings.input`, stopping cleanly when `interrupt` is cancelled.
pub async fn import(settings: Settings, interrupt: &CancellationToken) -> Result<Report> {
    let started = Instant::now();
    let mut input = CsvInput::open(&settings.input, settings.delimiter)?;
    let mapping = Mapping::new(input.header(), &settings.mapping)
        .with_context(|| settings.input.display().to_string())?;
    for w in &mapping.warnings {
        warn!("{}: {w}", settings.input.display());
    }
    let (journal, prior) = tokio::task::block_in_place(|| Journal::open(&settings.results))?;
    if !prior.is_empty() {
        info!(
            "resuming from {}: {} row(s) sent earlier will be skipped, {} unknown{}",
            settings.results.display(),
            prior.count(Status::Sent),
            prior.count(Status::Unknown),
            if settings.resend_unknown {
                " will be sent again (--resend-unknown)"
            } else {
                " left alone"
            }
        );
    }
    let resolver = tokio::task::block_in_place(|| open_resolver(&settings, &mapping))?;
    // One pass before sending: the quota plan, and the `(key, row)` pairs that find duplicate
    // keys (sorted on disk, so memory stays flat however many rows there are).
    let temp = folder_of(&settings.results);
    let mut pairs = ExternalSort::new(&temp);
    let plan = tokio::task::block_in_place(|| {
        crate::quota::plan(
            &settings.input,
            settings.delimiter,
            &mapping,
            &prior,
            settings.resend_unknown,
            resolver.as_ref().map(|r| &r.ids),
            settings.create_contacts,
            &mut |row, key| {
                // Ctrl-C during the pass ends it (a pass over a big input takes seconds).
                if interrupt.is_cancelled() {
                    bail!("interrupted");
                }
                let id = key_id(key);
                pairs
                    .push([(id >> 64) as u64, id as u64, row])
                    .context("sorting row keys in a temp file")
            },
        )
    });
    if interrupt.is_cancelled() {
        // Nothing was sent; the results file is as it was.
        let report = Report {
            stopped: Some(StopReason::Interrupted),
            elapsed: started.elapsed(),
            ..Report::default()
        };
        print_summary(&report, &settings, journal.path());
        return Ok(report);
    }
    let plan = plan?;
    let duplicates = tokio::task::block_in_place(|| DuplicateRows::from_pairs(pairs, &temp))?;
    print!("{}", plan.describe(settings.rate, settings.max_requests));
    let journal = Arc::new(journal);
    *JOURNAL.lock().expect("journal slot") = Some(Arc::downgrade(&journal));
    let counters = Arc::new(Counters::default());
    let stop = interrupt.child_token();
    let shared = Arc::new(Shared {
        sender: Sender::new(
            &settings.base_url,
            &settings.token,
            &settings.api_version,
            settings.timeout,
            settings.concurrency,
        )?,
        limit: RateLimit::new(settings.rate),
        journal: journal.clone(),
        counters: counters.clone(),
        stop: stop.clone(),
        stop_reason: Mutex::new(None),
        server_failures: AtomicU32::new(0),
        max_retries: settings.max_retries,
        backoff: settings.backoff,
        rate_noted: AtomicBool::new(false),
        resolver,
        quota: crate::quota::Quota::new(settings.max_requests),
    });
    info!(
        "importing {} into {} at {} with {} in flight; results in {}",
        settings.input.display(),
        shared.sender.url(),
        settings
            .rate
            .map_or("no rate limit".to_owned(), |r| format!("most {r}")),
        settings.concurrency,
        settings.results.display()
    );

    let max_queued = (settings.concurrency * 128).max(1024);
    // Rows cross to the scheduler in batches: one wake-up of the reader thread per batch, not
    // per row (a full channel wakes a blocked sender for every slot freed).
    let (job_tx, job_rx) = mpsc::channel::<Vec<Job>>(8);
    let input_len = input.len();
    let reader = {
        let journal = journal.clone();
        let counters = counters.clone();
        let stop = stop.clone();
        let limit = settings.limit;
        let resend_unknown = settings.resend_unknown;
        std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || {
                read_rows(
                    &mut input,
                    &mapping,
                    prior,
                    &journal,
                    &counters,
                    &stop,
                    job_tx,
                    limit,
                    resend_unknown,
                    duplicates,
                )
            })
            .context("starting the reader thread")?
    };
    let progress = Progress::start(counters.clone(), input_len);
    // Outcome lines wait in memory for the next `sending` line; when none comes soon (the
    // run is paced, or ending), this writes them.
    let flusher = tokio::spawn({
        let shared = shared.clone();
        async move {
            let mut tick = tokio::time::interval(JOURNAL_FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = shared.journal.flush() {
                    shared.stop_with(journal_error(&shared, &e));
                }
            }
        }
    });
    schedule(
        job_rx,
        shared.clone(),
        settings.concurrency,
        max_queued,
        &folder_of(&settings.results),
    )
    .await;
    flusher.abort();
    let _ = flusher.await;

    let (prior, reader_stop) = tokio::task::block_in_place(|| reader.join())
        .map_err(|_| anyhow!("the reader thread panicked"))??;
    if let Some(reason) = reader_stop {
        shared.stop_with(reason);
    }
    progress.finish();
    if interrupt.is_cancelled() {
        shared.stop_with(StopReason::Interrupted);
    }
    let mut stopped = shared.stop_reason.lock().expect("stop reason lock").clone();
    let resolved = shared.resolver.as_ref().map(resolve_summary);
    drop(shared);
    let results = journal.path().to_owned();
    if let Err(e) = tokio::task::block_in_place(|| journal.compact(&prior)) {
        // Bug: this used to end the run with exit 2 ("nothing was sent") after rows were sent.
        // The journal as appended is still whole and the next run reads it: resumable.
        warn!("{e:#}");
        stopped.get_or_insert(StopReason::ResultsFile(format!(
            "{} (compacting it): {}",
            results.display(),
            e.root_cause()
        )));
    }

    let c = &counters;
    let report = Report {
        stopped,
        rows: c.rows.load(Ordering::Relaxed),
        sent: c.sent.load(Ordering::Relaxed),
        sent_before: c.sent_before.load(Ordering::Relaxed),
        invalid: c.invalid.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        unknown: c.unknown.load(Ordering::Relaxed),
        unknown_before: c.unknown_before.load(Ordering::Relaxed),
        duplicate: c.duplicate.load(Ordering::Relaxed),
        requests: c.requests.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    };
    print_summary(&report, &settings, &results);
    if let Some(resolved) = resolved {
        print!("{resolved}");
    }
    Ok(report)
}

/// The reader stage, on its own thread: every row is either recorded here (invalid, duplicate,
/// done earlier) or handed to the scheduler. Returns the prior state for compaction, and why
/// it stopped early, if it did.
#[allow(clippy::too_many_arguments)]
fn read_rows(
    input: &mut CsvInput,
    mapping: &Mapping,
    mut prior: Prior,
    journal: &Journal,
    counters: &Counters,
    stop: &CancellationToken,
    jobs: mpsc::Sender<Vec<Job>>,
    limit: Option<u64>,
    resend_unknown: bool,
    mut duplicates: DuplicateRows,
) -> Result<(Prior, Option<StopReason>)> {
    const BATCH: usize = 64;
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
    // Hands the batch over; false once the scheduler has stopped taking rows.
    // `read`: input bytes read so far, for progress.
    let flush = |batch: &mut Vec<Job>, read: u64| -> bool {
        counters.bytes.store(read, Ordering::Relaxed);
        batch.is_empty()
            || jobs
                .blocking_send(std::mem::replace(batch, Vec::with_capacity(BATCH)))
                .is_ok()
    };
    let path = input.path().to_owned();
    let mut handed = 0u64;
    let write = |line: &ResultLine| {
        journal
            .record(line)
            .with_context(|| format!("writing {}", journal.path().display()))
    };
    loop {
        if stop.is_cancelled() {
            return Ok((prior, None));
        }
        let Some(record) = input
            .next_record()
            .with_context(|| format!("reading {}", path.display()))?
        else {
            break;
        };
        let (row, line_no) = (record.row, record.line);
        let key = mapping.record_key(&record);
        counters.rows.fetch_add(1, Ordering::Relaxed);

        if duplicates.contains(row)? {
            counters.duplicate.fetch_add(1, Ordering::Relaxed);
            write(&ResultLine {
                row,
                key,
                status: Some(Status::Duplicate),
                error: format!(
                    "line {line_no}: the key was seen on an earlier row of this input; not sent twice"
                ),
                finished_at: now_rfc3339(),
                ..Default::default()
            })?;
            continue;
        }
        match prior.take(&key) {
            Some(p) if p.status == Status::Sent => {
                // The same key for another conversation: not this row, but a row of another
                // input sharing the results file (both numbered from 1, say). Skipping it as
                // sent would lose it; refuse instead, naming the way out.
                // The raw cell is enough: mapping a row sent earlier would cost every resume.
                let conversation = mapping.conversation_cell(record.cells).unwrap_or("");
                if p.conversation != 0
                    && !conversation.is_empty()
                    && p.conversation != conversation_tag(conversation)
                {
                    bail!(
                        "{results} records key {key} as sent to another conversation than row {row} of {input} has ({conversation}): the results file seems to belong to another input, and going on would skip this row as sent. Give {input} its own --results file (or, if you changed that row's conversationId on purpose, delete its line from {results} to send it again)",
                        results = journal.path().display(),
                        input = path.display(),
                    );
                }
                counters.sent_before.fetch_add(1, Ordering::Relaxed);
                journal
                    .keep_prior(row, p)
                    .with_context(|| format!("writing {}", journal.path().display()))?;
                continue;
            }
            Some(p) if p.status == Status::Unknown && !resend_unknown => {
                counters.unknown_before.fetch_add(1, Ordering::Relaxed);
                journal
                    .keep_prior(row, p)
                    .with_context(|| format!("writing {}", journal.path().display()))?;
                continue;
            }
            _ => {}
        }
        // Mapped only now: a row sent in an earlier run costs no mapping on resume.
        let outcome = match record.broken {
            Some(e) => Err(vec![e]),
            None => mapping.map_row(record.cells, line_no),
        };
        let mut mapped = match outcome {
            Ok(m) => m,
            Err(errors) => {
                counters.invalid.fetch_add(1, Ordering::Relaxed);
                let error = errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" | ");
                write(&ResultLine {
                    row,
                    key,
                    status: Some(Status::Invalid),
                    error,
                    finished_at: now_rfc3339(),
                    ..Default::default()
                })?;
                continue;
            }
        };
        if limit.is_some_and(|n| handed >= n) {
            flush(&mut batch, input.bytes_read());
            return Ok((prior, Some(StopReason::Limit(handed))));
        }
        handed += 1;
        let (lane, body, pending) = match mapped.lookup.take() {
            None => (
                Arc::from(mapped.message.conversation_id.as_str()),
                Bytes::from(serde_json::to_vec(&mapped.message).expect("a message serialises")),
                false,
            ),
            Some(lookup) => {
                let lane: Arc<str> = if mapped.message.conversation_id.is_empty() {
                    Arc::from(lookup.lane(&mapped.message.contact_id))
                } else {
                    Arc::from(mapped.message.conversation_id.as_str())
                };
                mapped.lookup = Some(lookup);
                // The row travels as its serialised mapping, so a lane may spill it to disk.
                let pending = serde_json::to_vec(&mapped).expect("a mapped row serialises");
                (lane, Bytes::from(pending), true)
            }
        };
        batch.push(Job {
            row,
            key,
            conversation_id: lane,
            body,
            pending,
        });
        if batch.len() >= BATCH && !flush(&mut batch, input.bytes_read()) {
            return Ok((prior, None));
        }
    }
    flush(&mut batch, input.bytes_read());
    Ok((prior, None))
}

/// Rows whose key an earlier row of the same input already has, in row order. Found by a first
/// pass that sorts `(key, row)` pairs on disk, so memory stays flat however many rows there are.
struct DuplicateRows(std::iter::Peekable<crate::extsort::Sorted>);

impl DuplicateRows {
    /// Whether `row` is a duplicate; rows must be asked in ascending order.
    fn contains(&mut self, row: u64) -> Result<bool> {
        while let Some(next) = self.0.peek() {
            match next {
                Ok([r, _, _]) if *r < row => {
                    self.0.next();
                }
                Ok([r, _, _]) => return Ok(*r == row),
                Err(_) => {
                    let e = self.0.next().expect("peeked").expect_err("peeked an error");
                    return Err(e).context("reading the duplicate rows back");
                }
            }
        }
        Ok(false)
    }

    /// From `[key hi, key lo, row]` pairs of every row: every row after the first of its key.
    fn from_pairs(pairs: ExternalSort, temp: &std::path::Path) -> Result<DuplicateRows> {
        let context = || "finding duplicate keys in a temp file";
        let mut rows = ExternalSort::new(temp);
        let mut previous = None;
        for pair in pairs.finish().with_context(context)? {
            let [hi, lo, row] = pair.with_context(context)?;
            // Sorted by key then row: every row after the first of its key is a duplicate.
            if previous == Some((hi, lo)) {
                rows.push([row, 0, 0]).with_context(context)?;
            }
            previous = Some((hi, lo));
        }
        Ok(DuplicateRows(
            rows.finish().with_context(context)?.peekable(),
        ))
    }
}

/// The scheduler: per-conversation lanes ([`Lanes`]) so one conversation's rows go one at a
/// time in input order, different conversations side by side, at most `concurrency` in flight
/// and at most `max_queued` rows held in memory (a busy lane spills the rest to disk).
async fn schedule(
    mut jobs: mpsc::Receiver<Vec<Job>>,
    shared: Arc<Shared>,
    concurrency: usize,
    max_queued: usize,
    spill_dir: &std::path::Path,
) {
    let mut lanes = Lanes::new(spill_dir);
    let mut in_flight = 0usize;
    let mut reader_done = false;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Arc<str>>();
    // Every deliver task is tracked, so the run ends only when all have dropped their handles.
    let tasks = tokio_util::task::TaskTracker::new();
    let spill_failed = |e: std::io::Error| {
        shared.stop_with(StopReason::ServerFailing(format!(
            "cannot spill queued rows to a temp file in {}: {e}",
            spill_dir.display()
        )))
    };
    loop {
        let stopping = shared.stop.is_cancelled();
        while in_flight < concurrency && !stopping {
            let Some(job) = lanes.next_ready() else { break };
            in_flight += 1;
            let (shared, done) = (shared.clone(), done_tx.clone());
            tasks.spawn(async move {
                let lane = job.conversation_id.clone();
                deliver(job, &shared).await;
                // The scheduler outlives every task, so the send cannot fail.
                let _ = done.send(lane);
            });
        }
        if in_flight == 0 && (stopping || (reader_done && lanes.is_idle())) {
            break;
        }
        let accepting = !reader_done && !stopping && lanes.in_memory() < max_queued;
        tokio::select! {
            Some(lane) = done_rx.recv(), if in_flight > 0 => {
                in_flight -= 1;
                if let Err(e) = lanes.done(&lane) {
                    spill_failed(e);
                }
            }
            batch = jobs.recv(), if accepting => match batch {
                Some(batch) => {
                    for job in batch {
                        if let Err(e) = lanes.push(job) {
                            spill_failed(e);
                        }
                    }
                }
                None => reader_done = true,
            },
            _ = shared.stop.cancelled(), if !stopping => {}
        }
    }
    // Rows still queued were never attempted: they stay unrecorded for the next run.
    jobs.close();
    tasks.close();
    tasks.wait().await;
}

/// Sends one row until it has an outcome, recording it in the journal.
async fn deliver(mut job: Job, shared: &Shared) {
    let mut line = ResultLine {
        row: job.row,
        key: job.key.clone(),
        ..Default::default()
    };
    if job.pending {
        let pending: MappedRow = match serde_json::from_slice(&job.body) {
            Ok(row) => row,
            Err(e) => {
                finish(
                    shared,
                    &mut line,
                    Status::Failed,
                    format!("not sent: the queued row could not be read back ({e})"),
                );
                return;
            }
        };
        match resolve_ids(pending, shared, &mut line).await {
            Some(body) => job.body = body,
            None => return,
        }
    }
    let mut last_error = String::new();
    loop {
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => {
                // Before the first attempt nothing was written: the row stays for the next run.
                if line.attempts > 0 {
                    finish(shared, &mut line, Status::Failed, format!("the run stopped before retrying; last error: {last_error}"));
                }
                return;
            }
            _ = shared.limit.acquire() => {}
        }
        if !shared.quota.take() {
            if line.attempts > 0 {
                finish(
                    shared,
                    &mut line,
                    Status::Failed,
                    format!("the run stopped before retrying; last error: {last_error}"),
                );
            }
            shared.stop_with(StopReason::MaxRequests(shared.quota.max()));
            return;
        }
        if line.attempts == 0 {
            line.status = Some(Status::Sending);
            if let Err(e) = shared.journal.write_ahead(&line) {
                // Without the write-ahead line the request must not leave.
                shared.stop_with(journal_error(shared, &e));
                return;
            }
        }
        line.attempts += 1;
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        debug!(row = job.row, attempt = line.attempts, body = %String::from_utf8_lossy(&job.body), "sending");
        let (attempt, limits) = shared.sender.post(job.body.clone()).await;
        observe(shared, limits);
        if let crate::retry::Attempt::Answered { status, body, .. } = &attempt {
            line.http_status = Some(*status);
            // A 2xx carries its traceId in the body `classify` parses; others are read here.
            if !(200..300).contains(status) {
                line.trace_id = crate::retry::trace_id(body);
            }
        }
        match classify(&attempt) {
            Outcome::Sent(accepted) => {
                shared.server_failures.store(0, Ordering::Relaxed);
                line.message_id = accepted.message_id;
                // The IDs the API filed it under; the looked-up ones if it does not say.
                if !accepted.conversation_id.is_empty() {
                    line.conversation_id = accepted.conversation_id;
                }
                if !accepted.contact_id.is_empty() {
                    line.contact_id = accepted.contact_id;
                }
                if !accepted.trace_id.is_empty() {
                    line.trace_id = accepted.trace_id;
                }
                finish(shared, &mut line, Status::Sent, String::new());
                return;
            }
            Outcome::Failed(why) => {
                shared.server_failures.store(0, Ordering::Relaxed);
                finish(shared, &mut line, Status::Failed, why);
                return;
            }
            Outcome::Unknown(why) => {
                // Unanswered requests count as server failures: a server that accepts
                // connections but never answers would otherwise turn every row of the input
                // `unknown` (each after a full --timeout), and unknown rows cannot be resent
                // safely. Stopping leaves the rest unrecorded, to be sent on resume.
                let n = shared.server_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let stop = (n >= SERVER_FAILURE_LIMIT)
                    .then(|| format!("{n} failures in a row, the last: {why}"));
                finish(shared, &mut line, Status::Unknown, why);
                if let Some(reason) = stop {
                    shared.stop_with(StopReason::ServerFailing(reason));
                }
                return;
            }
            Outcome::Stop(reason) => {
                // 401 and 429 mean the message was not stored: failed, retried on the next run.
                finish(
                    shared,
                    &mut line,
                    Status::Failed,
                    format!("not stored: {reason}"),
                );
                shared.stop_with(reason);
                return;
            }
            Outcome::Retry { reason, after } => {
                let status = line
                    .http_status
                    .filter(|_| matches!(attempt, crate::retry::Attempt::Answered { .. }));
                if status == Some(429) {
                    let pause = after.unwrap_or(Duration::from_secs(1));
                    shared.limit.pause(pause);
                    shared.server_failures.store(0, Ordering::Relaxed);
                } else {
                    let n = shared.server_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    if n >= SERVER_FAILURE_LIMIT {
                        finish(
                            shared,
                            &mut line,
                            Status::Failed,
                            format!("not stored: {reason}"),
                        );
                        shared.stop_with(StopReason::ServerFailing(format!(
                            "{n} failures in a row, the last: {reason}"
                        )));
                        return;
                    }
                }
                if line.attempts > shared.max_retries {
                    let why = format!("gave up after {} attempts: {reason}", line.attempts);
                    finish(shared, &mut line, Status::Failed, why);
                    return;
                }
                debug!(row = job.row, attempt = line.attempts, "retrying: {reason}");
                last_error = reason;
                let delay = shared.backoff.delay(line.attempts, after, fastrand::f64());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shared.stop.cancelled() => {}
                }
            }
        }
    }
}

/// The resolve stage, before a row's first attempt: looks its missing IDs up (each lookup
/// paced and counted like a message) and returns the request body with them, or `None` when
/// the row ends here (recorded `failed`, or left for the next run when the run stops).
async fn resolve_ids(row: MappedRow, shared: &Shared, line: &mut ResultLine) -> Option<Bytes> {
    let resolver = shared.resolver.as_ref()?;
    let MappedRow {
        mut message,
        lookup,
    } = row;
    let lookup = lookup?;
    let observe = |limits| observe(shared, limits);
    let env = crate::resolve::Env {
        limit: &shared.limit,
        quota: &shared.quota,
        stop: &shared.stop,
        requests: &shared.counters.requests,
        observe: &observe,
        max_retries: shared.max_retries,
        backoff: shared.backoff,
    };
    match resolver.resolve(&mut message, &lookup, &env).await {
        Ok(()) => {
            line.contact_id.clone_from(&message.contact_id);
            line.conversation_id.clone_from(&message.conversation_id);
            Some(Bytes::from(
                serde_json::to_vec(&message).expect("a message serialises"),
            ))
        }
        Err(crate::resolve::Failure::Row {
            error,
            http_status,
            trace_id,
        }) => {
            line.contact_id = message.contact_id;
            line.conversation_id = message.conversation_id;
            line.http_status = http_status;
            line.trace_id = trace_id;
            finish(shared, line, Status::Failed, format!("not sent: {error}"));
            None
        }
        Err(crate::resolve::Failure::Stop(reason)) => {
            if let Some(reason) = reason {
                shared.stop_with(reason);
            }
            None
        }
    }
}

/// Opens the ID map beside the results file and the resolver, when rows may need lookups.
fn open_resolver(
    settings: &Settings,
    mapping: &Mapping,
) -> Result<Option<crate::resolve::Resolver>> {
    if !mapping.resolving() {
        return Ok(None);
    }
    let ids = crate::resolve::IdMap::open(&crate::resolve::idmap::path_for(&settings.results))?;
    let (contacts, conversations) = ids.len();
    if contacts + conversations > 0 {
        info!(
            "{}: {contacts} contact(s) and {conversations} conversation(s) known from earlier runs",
            ids.path().display()
        );
    }
    Ok(Some(crate::resolve::Resolver::new(
        &settings.base_url,
        &settings.token,
        settings.timeout,
        settings.create_contacts,
        ids,
    )?))
}

/// The resolver's lines of the summary.
fn resolve_summary(r: &crate::resolve::Resolver) -> String {
    let c = &r.counters;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "  lookups       {:>9}   (IDs kept in {})\n  contacts      {} found, {} created, {} missing\n  conversations {} found, {} created, {} with more than one\n",
        n(&c.lookups),
        r.ids.path().display(),
        n(&c.contacts_found),
        n(&c.contacts_created),
        n(&c.contacts_missing),
        n(&c.conversations_found),
        n(&c.conversations_created),
        n(&c.conversations_ambiguous),
    )
}

/// Writes the row's outcome line and counts it.
fn finish(shared: &Shared, line: &mut ResultLine, status: Status, error: String) {
    line.status = Some(status);
    line.error = error;
    line.finished_at = now_rfc3339();
    let counter = match status {
        Status::Sent => &shared.counters.sent,
        Status::Unknown => &shared.counters.unknown,
        _ => &shared.counters.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = shared.journal.record(line) {
        shared.stop_with(journal_error(shared, &e));
    }
}

/// Bug: a full disk was reported as "the server keeps failing". Name the file and the error.
fn journal_error(shared: &Shared, e: &std::io::Error) -> StopReason {
    StopReason::ResultsFile(format!("{}: {e}", shared.journal.path().display()))
}

/// Takes in what the server said about its limits.
fn observe(shared: &Shared, limits: ServerLimits) {
    if let Some(rate) = shared
        .limit
        .observe(limits.max, limits.interval, limits.remaining)
        && !shared.rate_noted.swap(true, Ordering::Relaxed)
    {
        info!("the server allows {rate}: pacing to that instead of --rate");
    }
    if limits.daily_remaining == Some(0) {
        shared.stop_with(StopReason::DailyBudget);
    }
}

/// A progress bar on a terminal, else a log line every few seconds.
struct Progress {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(counters: Arc<Counters>, total_bytes: u64) -> Progress {
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
                let c = &counters;
                let sent = c.sent.load(Ordering::Relaxed);
                let msg = format!(
                    "{} rows: {} sent, {} failed, {} invalid, {} unknown, {:.1}/s",
                    c.rows.load(Ordering::Relaxed),
                    sent + c.sent_before.load(Ordering::Relaxed),
                    c.failed.load(Ordering::Relaxed),
                    c.invalid.load(Ordering::Relaxed),
                    c.unknown.load(Ordering::Relaxed),
                    sent as f64 / started.elapsed().as_secs_f64().max(0.001)
                );
                match &bar {
                    Some(bar) => {
                        bar.set_position(c.bytes.load(Ordering::Relaxed));
                        bar.set_message(msg);
                    }
                    None => info!("progress: {msg}"),
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        });
        Progress {
            stop,
            task: Some(task),
        }
    }

    fn finish(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn print_summary(report: &Report, settings: &Settings, results: &std::path::Path) {
    let r = report;
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(out, "{} → {}", settings.input.display(), results.display());
    let _ = writeln!(out, "  rows read     {:>9}", r.rows);
    let _ = writeln!(
        out,
        "  sent          {:>9}   ({} now, {} in earlier runs)",
        r.sent + r.sent_before,
        r.sent,
        r.sent_before
    );
    let _ = writeln!(out, "  invalid       {:>9}", r.invalid);
    let _ = writeln!(out, "  failed        {:>9}", r.failed);
    let _ = writeln!(
        out,
        "  unknown       {:>9}   ({} now, {} from earlier runs)",
        r.unknown + r.unknown_before,
        r.unknown,
        r.unknown_before
    );
    let _ = writeln!(out, "  duplicate     {:>9}", r.duplicate);
    let secs = r.elapsed.as_secs_f64();
    let _ = writeln!(
        out,
        "  {} requests in {:.1}s ({:.1} sent/s)",
        r.requests,
        secs,
        r.sent as f64 / secs.max(0.001)
    );
    let again = resume_command();
    match &r.stopped {
        Some(reason) => {
            let _ = writeln!(out, "stopped early: {reason}.");
            let _ = writeln!(
                out,
                "rows not attempted are not in the results file; to resume, run the same command again:\n  {again}"
            );
        }
        None if r.failed + r.invalid > 0 => {
            let _ = writeln!(
                out,
                "failed and invalid rows are tried again when you run the same command (fix the input first for invalid rows):\n  {again}"
            );
        }
        None => {}
    }
    if r.unknown + r.unknown_before > 0 {
        let _ = writeln!(
            out,
            "unknown rows may or may not be stored (the request left, no answer came): check them in HighLevel, then send the missing ones with --resend-unknown"
        );
    }
    print!("{out}");
}

/// The command line of this run, quoted for a POSIX shell.
fn resume_command() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
