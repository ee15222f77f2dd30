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

use std::collections::{HashMap, HashSet, VecDeque};
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
use crate::journal::{Journal, Prior, ResultLine, Status, conversation_tag, key_id, now_rfc3339};
use crate::mapping::{Mapping, MappingOptions, record_hash};
use crate::rate::Rate;
use crate::ratelimit::RateLimit;
use crate::reader::CsvInput;
use crate::retry::{Backoff, Outcome, StopReason, classify};
use crate::sender::{self, Sender, ServerLimits};

/// The API root when none is given.
pub const DEFAULT_BASE_URL: &str = "https://services.leadconnectorhq.com";
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
#[derive(Debug)]
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
    if args.dry_run {
        return crate::commands::validate::run(ValidateArgs {
            input: args.input,
            results: None,
            show: 3,
            mapping: args.mapping,
        });
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Usage;
        }
    };
    runtime.block_on(async move {
        let use_sandbox = args.sandbox;
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
        let exit = match import(settings, &signals()).await {
            Ok(report) => report.exit(),
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
                eprintln!(
                    "exiting at once: the results journal is on disk; run the same command to resume"
                );
                std::process::exit(Exit::Stopped as i32);
            }
        }
    });
    token
}

/// One row on its way to the API.
struct Job {
    row: u64,
    key: String,
    conversation_id: Arc<str>,
    body: Bytes,
    /// Input bytes read up to this row, for progress.
    input_bytes: u64,
}

/// Progress position of a batch: where its last row ended.
fn input_bytes(batch: &[Job]) -> u64 {
    batch.last().map_or(0, |j| j.input_bytes)
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
    let (journal, prior) = Journal::open(&settings.results)?;
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
    let journal = Arc::new(journal);
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
                )
            })
            .context("starting the reader thread")?
    };
    let progress = Progress::start(counters.clone(), input_len);
    schedule(job_rx, shared.clone(), settings.concurrency, max_queued).await;

    let (prior, reader_stop) = reader
        .join()
        .map_err(|_| anyhow!("the reader thread panicked"))??;
    if let Some(reason) = reader_stop {
        shared.stop_with(reason);
    }
    progress.finish();
    if interrupt.is_cancelled() {
        shared.stop_with(StopReason::Interrupted);
    }
    let mut stopped = shared.stop_reason.lock().expect("stop reason lock").clone();
    drop(shared);
    let results = journal.path().to_owned();
    if let Err(e) = journal.compact(&prior) {
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
) -> Result<(Prior, Option<StopReason>)> {
    const BATCH: usize = 64;
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
    // Hands the batch over; false once the scheduler has stopped taking rows.
    let flush = |batch: &mut Vec<Job>| -> bool {
        counters.bytes.store(input_bytes(batch), Ordering::Relaxed);
        batch.is_empty()
            || jobs
                .blocking_send(std::mem::replace(batch, Vec::with_capacity(BATCH)))
                .is_ok()
    };
    let mut seen: HashSet<u128> = HashSet::new();
    let mut handed = 0u64;
    let path = input.path().to_owned();
    let write = |line: &ResultLine| {
        journal
            .append(line, true)
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
        let key = match record.broken {
            Some(_) => record_hash(record.cells),
            None => mapping.key(record.cells),
        };
        let outcome = match record.broken {
            Some(e) => Err(vec![e]),
            None => mapping.map(record.cells, line_no),
        };
        counters.rows.fetch_add(1, Ordering::Relaxed);

        if !seen.insert(key_id(&key)) {
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
                if let Ok(m) = &outcome
                    && p.conversation != 0
                    && p.conversation != conversation_tag(&m.conversation_id)
                {
                    bail!(
                        "{results} records key {key} as sent to another conversation than row {row} of {input} has ({conversation}): the results file seems to belong to another input, and going on would skip this row as sent. Give {input} its own --results file (or, if you changed that row's conversationId on purpose, delete its line from {results} to send it again)",
                        results = journal.path().display(),
                        input = path.display(),
                        conversation = m.conversation_id,
                    );
                }
                counters.sent_before.fetch_add(1, Ordering::Relaxed);
                journal.keep_prior(row, p);
                continue;
            }
            Some(p) if p.status == Status::Unknown && !resend_unknown => {
                counters.unknown_before.fetch_add(1, Ordering::Relaxed);
                journal.keep_prior(row, p);
                continue;
            }
            _ => {}
        }
        let message = match outcome {
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
            flush(&mut batch);
            return Ok((prior, Some(StopReason::Limit(handed))));
        }
        handed += 1;
        let body = Bytes::from(serde_json::to_vec(&message).expect("a message serialises"));
        batch.push(Job {
            row,
            key,
            conversation_id: Arc::from(message.conversation_id.as_str()),
            body,
            input_bytes: input.bytes_read(),
        });
        if batch.len() >= BATCH && !flush(&mut batch) {
            return Ok((prior, None));
        }
    }
    flush(&mut batch);
    counters.bytes.store(input.bytes_read(), Ordering::Relaxed);
    Ok((prior, None))
}

/// The scheduler: per-conversation lanes so one conversation's rows go one at a time in input
/// order, different conversations side by side, at most `concurrency` in flight and at most
/// `max_queued` rows held in memory.
async fn schedule(
    mut jobs: mpsc::Receiver<Vec<Job>>,
    shared: Arc<Shared>,
    concurrency: usize,
    max_queued: usize,
) {
    // A conversation is in `lanes` while one of its rows is ready or in flight; its queue holds
    // the rows behind that one.
    let mut lanes: HashMap<Arc<str>, VecDeque<Job>> = HashMap::new();
    let mut ready: VecDeque<Job> = VecDeque::new();
    let mut queued = 0usize;
    let mut in_flight = 0usize;
    let mut reader_done = false;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Arc<str>>();
    // Every deliver task is tracked, so the run ends only when all have dropped their handles.
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let stopping = shared.stop.is_cancelled();
        while in_flight < concurrency && !stopping {
            let Some(job) = ready.pop_front() else { break };
            queued -= 1;
            in_flight += 1;
            let (shared, done) = (shared.clone(), done_tx.clone());
            tasks.spawn(async move {
                let lane = job.conversation_id.clone();
                deliver(job, &shared).await;
                // The scheduler outlives every task, so the send cannot fail.
                let _ = done.send(lane);
            });
        }
        if in_flight == 0 && (stopping || (reader_done && queued == 0)) {
            break;
        }
        let accepting = !reader_done && !stopping && queued < max_queued;
        tokio::select! {
            Some(lane) = done_rx.recv(), if in_flight > 0 => {
                in_flight -= 1;
                match lanes.get_mut(&lane).and_then(VecDeque::pop_front) {
                    Some(next) => ready.push_back(next),
                    None => { lanes.remove(&lane); }
                }
            }
            batch = jobs.recv(), if accepting => match batch {
                Some(batch) => {
                    for job in batch {
                        queued += 1;
                        match lanes.get_mut(&job.conversation_id) {
                            Some(queue) => queue.push_back(job),
                            None => {
                                lanes.insert(job.conversation_id.clone(), VecDeque::new());
                                ready.push_back(job);
                            }
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
async fn deliver(job: Job, shared: &Shared) {
    let mut line = ResultLine {
        row: job.row,
        key: job.key.clone(),
        ..Default::default()
    };
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
        if line.attempts == 0 {
            line.status = Some(Status::Sending);
            if let Err(e) = shared.journal.append(&line, false) {
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
            line.trace_id = crate::retry::trace_id(body);
        }
        match classify(&attempt) {
            Outcome::Sent(accepted) => {
                shared.server_failures.store(0, Ordering::Relaxed);
                line.message_id = accepted.message_id;
                line.conversation_id = accepted.conversation_id;
                line.contact_id = accepted.contact_id;
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
    if let Err(e) = shared.journal.append(line, true) {
        shared.stop_with(journal_error(shared, &e));
    }
}

/// Bug: a full disk was reported as "the server keeps failing". Name the file and the error.
fn journal_error(shared: &Shared, e: &std::io::Error) -> StopReason {
    StopReason::ResultsFile(format!("{}: {e}", shared.journal.path().display()))
}

/// Takes in what the server said about its limits.
fn observe(shared: &Shared, limits: ServerLimits) {
    if let Some(rate) = shared.limit.observe(limits.max, limits.interval)
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
