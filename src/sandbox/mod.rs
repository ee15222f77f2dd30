//! The sandbox: a local stand-in for `POST /conversations/messages/inbound`, for rehearsals, tests
//! and benchmarks (DESIGN "The sandbox"). It checks the token and `Version` header, validates
//! bodies as the API does, answers with fresh IDs, enforces a burst window and a daily budget with
//! the API's `X-RateLimit-*` headers, injects faults on request, records what it stored and counts
//! everything at `GET /__stats`.
//!
//! This module owns the public entry points ([`start`], [`run_foreground`]) and the connection
//! layer. Connections are served with hyper directly rather than `axum::serve`, so that a request
//! chosen by `--drop-rate` can end its connection with no answer at all: the route marks its
//! response with `answer::DropConnection`, and the service below turns that into an error, on
//! which hyper closes the connection without writing anything.
//!
//! The rest, by what each owns: `config` (what a sandbox enforces), `state` (what the routes
//! share, and the gate of token, budget and `Version`), `api` (the router and the inbound
//! route), `contacts` (the lookup routes) over `book` (their store), `reads` (the read routes)
//! over `messages` (what was stored, in memory), `answer` (how a response is written), `body`
//! (the inbound body's rules), `limits`, `chance`, `record` and `stats`.
//!
//! Shutdown protocol: [`Sandbox::shutdown`] cancels the token → the accept loop stops and drops the
//! listener → each connection finishes the request it is serving and closes → the record file is
//! synced → done.

mod answer;
mod api;
mod assets;
mod body;
mod book;
mod chance;
mod config;
mod contacts;
mod limits;
mod messages;
mod oauth;
mod reads;
mod record;
mod state;
mod stats;
mod threads;
mod uploads;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::rate::{DurationRange, Rate};

pub use api::INBOUND_PATH;
pub use assets::ASSETS_PATH;
pub use book::{Contact, Conversation, Directory};
pub use config::UploadRules;
pub use config::{ConfigError, DEFAULT_TOKEN, OAuth, SandboxConfig};
pub use state::SUPPORTED_VERSIONS;
pub use stats::Stats;

/// How long [`Sandbox::shutdown`] waits for requests in flight before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub use crate::rate::Limit;

/// `lc-import sandbox` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct SandboxArgs {
    /// Loopback address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8787", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// The bearer token to accept.
    #[arg(long, default_value = DEFAULT_TOKEN)]
    pub token: String,
    /// Burst limit per fixed window (`100/10s`, `20/s`), or `none`.
    #[arg(long, default_value = "100/10s", value_name = "N/PERIOD|none")]
    pub rate: Limit<Rate>,
    /// Requests per UTC day, or `none`.
    #[arg(long, default_value = "200000", value_name = "N|none")]
    pub daily: Limit<u64>,
    /// The length of a "day" of the daily budget (such as `20s`, for a multi-day rehearsal in
    /// minutes), announced in the X-Sandbox-Day-Length-Ms header; default 24 h, reset at UTC
    /// midnight.
    #[arg(long, value_name = "DURATION", value_parser = crate::rate::parse_duration)]
    pub day: Option<Duration>,
    /// Send `Retry-After` with 429 answers (the real API is not documented to).
    #[arg(long)]
    pub retry_after: bool,
    /// Share of valid requests (messages and uploads) answered 500/502/503, nothing stored.
    #[arg(long, default_value_t = 0.0, value_name = "P", value_parser = parse_share)]
    pub fail_rate: f64,
    /// Processing time per request: `LOW..HIGH` uniform, or `D` for [D/2, 3D/2].
    #[arg(long, value_name = "DURATION|LOW..HIGH")]
    pub latency: Option<DurationRange>,
    /// Share of valid requests stored, then left without an answer (connection closed).
    #[arg(long, default_value_t = 0.0, value_name = "P", value_parser = parse_share)]
    pub drop_rate: f64,
    /// Share of valid requests that store nothing and are never answered (they hang until the
    /// client gives up).
    #[arg(long, default_value_t = 0.0, value_name = "P", value_parser = parse_share)]
    pub hang_rate: f64,
    /// Share of valid requests stored, then answered 504 (a gateway that gave up waiting).
    #[arg(long = "stored-504-rate", default_value_t = 0.0, value_name = "P", value_parser = parse_share)]
    pub stored_504_rate: f64,
    /// `dateAdded` of a stored message: its request's `date` (on), or the time it arrived (off).
    #[arg(long, default_value = "on", value_name = "on|off", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub backdate: bool,
    /// Keep what is stored in memory to serve the read endpoints (off: benchmarks of millions
    /// of messages; reads then answer 404).
    #[arg(long, default_value = "on", value_name = "on|off", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub reads: bool,
    /// Whether the token may read messages; off: every read is answered 403, as for a token
    /// without the conversations/message.readonly scope.
    #[arg(long, default_value = "on", value_name = "on|off", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub read_scope: bool,
    /// Seed for IDs, faults and latencies.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Append every stored message to FILE as a JSON line.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Seed contacts from a CSV file: id,locationId,email,phone,firstName,lastName,conversationId
    /// (locationId required; a conversationId gives the contact its conversation).
    #[arg(long, value_name = "FILE")]
    pub contacts: Option<PathBuf>,
    /// Append every contact and conversation the sandbox creates to FILE as a JSON line.
    #[arg(long, value_name = "FILE")]
    pub record_contacts: Option<PathBuf>,
    /// The first N conversation searches after a create miss it, as a lagging search index does
    /// (the "already exists" race).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub search_misses: u32,
    /// Serve `POST /oauth/token` and `POST /oauth/locationToken`; the access tokens they issue
    /// expire after DURATION (whole seconds), then are answered 401.
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub oauth_expires_in: Option<Duration>,
    /// The OAuth app's client_id.
    #[arg(long, default_value = "sandbox-client", requires = "oauth_expires_in")]
    pub client_id: String,
    /// The OAuth app's client_secret.
    #[arg(long, default_value = "sandbox-secret", requires = "oauth_expires_in")]
    pub client_secret: String,
    /// The location refresh token live at the start (single-use: each refresh rotates it).
    #[arg(long, default_value = "sandbox-refresh", requires = "oauth_expires_in")]
    pub refresh_token: String,
    /// The agency (Company) refresh token live at the start.
    #[arg(
        long,
        default_value = "sandbox-company-refresh",
        requires = "oauth_expires_in"
    )]
    pub company_refresh_token: String,
    /// Hold each token request this long before acting on it.
    #[arg(long, value_name = "DURATION", value_parser = crate::rate::parse_duration, requires = "oauth_expires_in")]
    pub token_delay: Option<Duration>,
    /// Where `POST /conversations/messages/upload` writes the files it takes (and serves them
    /// from) [default: a temp folder removed at shutdown].
    #[arg(long, value_name = "DIR")]
    pub upload_dir: Option<PathBuf>,
    /// The largest file the upload route takes (bytes, or 5MB, 200MiB…); larger ones are
    /// answered 413 [default: 5MB].
    #[arg(long, value_name = "SIZE", value_parser = crate::upload::files::parse_size)]
    pub upload_max_size: Option<u64>,
    /// The file types (extensions) the upload route takes, comma-separated; others are answered
    /// 415 [default: jpg,jpeg,png,mp4,mpeg,zip,rar,pdf,doc,docx,txt,mp3,wav].
    #[arg(long, value_name = "EXT,…", value_delimiter = ',')]
    pub upload_types: Vec<String>,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = crate::rate::parse_duration(s)?;
    if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
        return Err(format!(
            "'{s}': expected whole seconds, at least 1s (expires_in is in seconds)"
        ));
    }
    Ok(d)
}

impl SandboxArgs {
    /// The sandbox's configuration, from these flags.
    pub fn config(&self) -> SandboxConfig {
        SandboxConfig {
            token: self.token.clone(),
            rate: self.rate.0,
            daily: self.daily.0,
            day: self.day,
            retry_after: self.retry_after,
            fail_rate: self.fail_rate,
            drop_rate: self.drop_rate,
            hang_rate: self.hang_rate,
            stored_504_rate: self.stored_504_rate,
            backdate: self.backdate,
            reads: self.reads,
            read_scope: self.read_scope,
            latency: self.latency,
            seed: self.seed,
            record: self.record.clone(),
            contacts: self.contacts.clone(),
            record_contacts: self.record_contacts.clone(),
            search_misses: self.search_misses,
            oauth: self.oauth_expires_in.map(|ttl| OAuth {
                client_id: self.client_id.clone(),
                client_secret: self.client_secret.clone(),
                access_ttl: ttl,
                refresh_token: self.refresh_token.clone(),
                company_refresh_token: self.company_refresh_token.clone(),
                token_delay: self.token_delay,
                ..OAuth::default()
            }),
            uploads: {
                let defaults = UploadRules::default();
                UploadRules {
                    dir: self.upload_dir.clone(),
                    max_size: self.upload_max_size.unwrap_or(defaults.max_size),
                    types: match self.upload_types.is_empty() {
                        true => defaults.types,
                        false => self
                            .upload_types
                            .iter()
                            .map(|t| t.trim().trim_start_matches('.').to_ascii_lowercase())
                            .collect(),
                    },
                }
            },
        }
    }
}

/// `127.0.0.1:8787`, `[::1]:0`, or `localhost:PORT`.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("'{port}' is not a port"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("'{s}' is not an address such as 127.0.0.1:8787"))
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(format!("'{s}' is not on or off")),
    }
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "'{s}' is not a share between 0 and 1 (such as 0.05)"
        )),
    }
}

/// A running sandbox. Dropping it stops intake like [`Sandbox::shutdown`] without waiting.
pub struct Sandbox {
    addr: SocketAddr,
    shared: Arc<state::Shared>,
    /// Cancelled by `shutdown` or drop: the accept loop stops, connections close once idle.
    cancel: CancellationToken,
    /// The accept loop and every connection task; `shutdown` waits for them.
    tasks: TaskTracker,
}

impl Sandbox {
    /// The address it listens on (the real port when port 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the base URL to give a client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its counters as they stand now.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Whether `token` is a refresh token the sandbox would accept now (`false` with OAuth off).
    pub fn refresh_token_is_live(&self, token: &str) -> bool {
        self.shared
            .tokens
            .as_ref()
            .is_some_and(|t| t.refresh_token_is_live(token))
    }

    /// Every contact and conversation the sandbox holds now.
    pub fn directory(&self) -> Directory {
        self.shared.book.directory()
    }

    /// Accepts only `token` from now on, as if the old one had been revoked: requests with the
    /// old token are answered 401. For rehearsing a token revoked mid-run.
    pub fn set_token(&self, token: &str) -> Result<(), ConfigError> {
        let config = SandboxConfig {
            token: token.to_owned(),
            ..SandboxConfig::unlimited()
        };
        config.check()?;
        self.shared.set_token(token);
        Ok(())
    }

    /// Injects the faults of `config` from now on (its fail, drop, hang and stored-504 rates),
    /// keeping everything stored: for rehearsing a fault that passes.
    pub fn set_faults(&self, config: &SandboxConfig) -> Result<(), ConfigError> {
        config.check()?;
        *self
            .shared
            .faults
            .write()
            .unwrap_or_else(|p| p.into_inner()) = chance::FaultRates::of(config);
        Ok(())
    }

    /// Stops accepting, lets requests in flight finish (bounded wait), syncs the record file.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.shared.closing.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "sandbox: requests still in flight after {SHUTDOWN_GRACE:?}; not waiting longer"
            );
        }
        if let Some(recorder) = &self.shared.recorder
            && let Err(e) = recorder.sync()
        {
            tracing::warn!("sandbox: syncing the record file: {e}");
        }
        if let Err(e) = self.shared.book.sync() {
            tracing::warn!("sandbox: syncing the contacts record: {e}");
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.shared.closing.cancel();
    }
}

/// Starts a sandbox on `listen` (a loopback address; port 0 picks a free port) in the current
/// tokio runtime and returns once it accepts connections.
pub async fn start(config: SandboxConfig, listen: SocketAddr) -> anyhow::Result<Sandbox> {
    if !listen.ip().is_loopback() {
        return Err(ConfigError::NotLoopback(listen).into());
    }
    config.check()?;
    let recorder = config
        .record
        .as_deref()
        .map(record::Recorder::open)
        .transpose()?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let book = book::Book::open(
        config.contacts.as_deref(),
        config.search_misses,
        config.record_contacts.as_deref(),
    )?;
    let uploads = assets::Store::open(&config.uploads).context("opening the uploads folder")?;
    let shared = Arc::new(state::Shared::new(&config, recorder, book, uploads));
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(accept_loop(
        listener,
        api::router(shared.clone()),
        cancel.clone(),
        tasks.clone(),
    ));
    Ok(Sandbox {
        addr,
        shared,
        cancel,
        tasks,
    })
}

async fn accept_loop(
    listener: TcpListener,
    router: axum::Router,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning on it.
                    tracing::warn!("sandbox: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        tasks.spawn(serve_connection(stream, router.clone(), cancel.clone()));
    }
}

/// The error that makes hyper close a connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("request dropped on purpose (--drop-rate)")]
struct DroppedOnPurpose;

async fn serve_connection(stream: TcpStream, router: axum::Router, cancel: CancellationToken) {
    // Small answers, one per request: send them now rather than wait for more bytes.
    let _ = stream.set_nodelay(true);
    let routes = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |request| {
        let answer = hyper::service::Service::call(&routes, request);
        async move {
            let response = match answer.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if response
                .extensions()
                .get::<answer::DropConnection>()
                .is_some()
            {
                Err(DroppedOnPurpose)
            } else {
                Ok(response)
            }
        }
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        // Dropped requests and clients hanging up land here; neither is the sandbox's problem.
        tracing::debug!("sandbox: connection ended: {e}");
    }
}

/// `lc-import sandbox`: runs in the foreground until SIGINT or SIGTERM, then shuts down cleanly.
pub fn run_foreground(args: SandboxArgs) -> anyhow::Result<crate::summary::Ending> {
    use anyhow::Context as _;
    if !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "lc-import sandbox: {}",
            ConfigError::NotLoopback(args.listen)
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("lc-import sandbox: starting the async runtime")?;
    runtime.block_on(async {
        // Listen for signals before announcing the address: a caller may signal at once.
        let stop = stop_signal().context("lc-import sandbox: installing signal handlers")?;
        let sandbox = start(args.config(), args.listen)
            .await
            .context("lc-import sandbox")?;
        // If stdout is gone nobody reads the address; the sandbox still serves whoever knows it.
        crate::summary::say(&format!("sandbox listening on {}\n", sandbox.base_url()));
        stop.await;
        sandbox.shutdown().await;
        Ok(crate::summary::Ending::default())
    })
}

/// Resolves on the first SIGINT or SIGTERM.
fn stop_signal() -> anyhow::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_or_switch_off() {
        assert_eq!("none".parse::<Limit<u64>>(), Ok(Limit(None)));
        assert_eq!("unlimited".parse::<Limit<Rate>>(), Ok(Limit(None)));
        assert_eq!("5".parse::<Limit<u64>>(), Ok(Limit(Some(5))));
        assert_eq!(
            "100/10s".parse::<Limit<Rate>>().map(|l| l.0.map(|r| r.max)),
            Ok(Some(100))
        );
        assert!("lots".parse::<Limit<u64>>().is_err());
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("localhost:0"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 0)))
        );
        assert!(parse_listen("[::1]:8787").is_ok());
        assert!(parse_listen("example.com:80").is_err());
        assert_eq!(parse_share("0.05"), Ok(0.05));
        assert!(parse_share("1.2").is_err());
    }

    #[test]
    fn default_flags_match_the_real_api() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Probe {
            #[command(flatten)]
            args: SandboxArgs,
        }
        let config = Probe::try_parse_from(["probe"])
            .expect("defaults parse")
            .args
            .config();
        assert_eq!(config.token, "sandbox-token");
        assert_eq!(config.rate, Some("100/10s".parse().expect("rate")));
        assert_eq!(config.daily, Some(200_000));
        assert_eq!((config.fail_rate, config.drop_rate), (0.0, 0.0));
        assert_eq!((config.hang_rate, config.stored_504_rate), (0.0, 0.0));
        assert!(config.backdate && config.reads);
        let off = Probe::try_parse_from(["probe", "--backdate", "off", "--reads", "off"])
            .expect("on|off flags take a value")
            .args
            .config();
        assert!(!off.backdate && !off.reads);
        let off = Probe::try_parse_from(["probe", "--rate", "none", "--daily", "none"])
            .expect("none parses")
            .args
            .config();
        assert_eq!((off.rate, off.daily), (None, None));
    }
}
