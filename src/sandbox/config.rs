//! What a sandbox enforces and injects ([`SandboxConfig`]), and the configurations it refuses
//! to start with ([`ConfigError`]). The `sandbox` command's flags turn into one of these.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::rate::{DurationRange, Rate};

/// The token a sandbox accepts unless told otherwise.
pub const DEFAULT_TOKEN: &str = "sandbox-token";

/// What the sandbox enforces and injects. Checked by [`super::start`].
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxConfig {
    /// The bearer token accepted; anything else is a 401.
    pub token: String,
    /// Burst limit per fixed window aligned to the sandbox start; `None`: unlimited.
    pub rate: Option<Rate>,
    /// Requests per UTC day; `None`: unlimited.
    pub daily: Option<u64>,
    /// The length of a "day" of the daily budget (`--day`); `None`: 24 h, reset at UTC
    /// midnight. Announced in `X-Sandbox-Day-Length-Ms` (a header only the sandbox sends).
    pub day: Option<Duration>,
    /// Send `Retry-After` (seconds, rounded up) with every 429. The real API is not documented
    /// to send it.
    pub retry_after: bool,
    /// Share of valid requests answered 500/502/503 (picked at random) with nothing stored.
    pub fail_rate: f64,
    /// Share of valid requests stored and then left without an answer (connection closed).
    pub drop_rate: f64,
    /// Share of valid requests that store nothing and are never answered: the request hangs
    /// until the client gives up (or the sandbox shuts down).
    pub hang_rate: f64,
    /// Share of valid requests stored and then answered 504, as a gateway that gave up waiting
    /// on a server that went on to store the message. The four fault rates together must not
    /// exceed 1.
    pub stored_504_rate: f64,
    /// `dateAdded` of a stored message: the request's `date` when it has one (`true`), or
    /// always the time it arrived (`false`). Nobody knows which the real API does.
    pub backdate: bool,
    /// Keep every stored message in memory to serve the read endpoints. Off for benchmarks of
    /// millions of messages (the read endpoints then answer 404).
    pub reads: bool,
    /// The token may read messages (`conversations/message.readonly`); `false`: every read is
    /// answered 403, as for a token without that scope.
    pub read_scope: bool,
    /// Added before each admitted request is processed: uniform over `low..high`, or over
    /// `[D/2, 3D/2]` for a single value `D` (`low == high`).
    pub latency: Option<DurationRange>,
    /// Makes IDs, faults and latencies reproducible (exactly so for requests sent one at a time).
    pub seed: Option<u64>,
    /// Append every stored message to this file as a JSON line.
    pub record: Option<PathBuf>,
    /// Seed contacts (and their conversations) from this CSV file.
    pub contacts: Option<PathBuf>,
    /// Append every contact and conversation created to this file as a JSON line.
    pub record_contacts: Option<PathBuf>,
    /// Searches that miss a conversation after it is created (FACTS pitfall 5).
    pub search_misses: u32,
    /// `POST /oauth/token` and `POST /oauth/locationToken`, with expiring access tokens;
    /// `None`: off (404), only [`SandboxConfig::token`] is accepted.
    pub oauth: Option<OAuth>,
    /// `POST /conversations/messages/upload`: where files go, the size limit, the types.
    pub uploads: UploadRules,
}

/// The sandbox's OAuth app and tokens (see `oauth`): what a client must send, and how long
/// the access tokens it issues live.
#[derive(Clone, Debug, PartialEq)]
pub struct OAuth {
    /// The app's `client_id`.
    pub client_id: String,
    /// The app's `client_secret`.
    pub client_secret: String,
    /// How long an access token lives (whole seconds, at least one): then it is answered 401.
    pub access_ttl: Duration,
    /// The location refresh token live at the start (single-use, like every one after it).
    pub refresh_token: String,
    /// The agency (Company) refresh token live at the start.
    pub company_refresh_token: String,
    /// The location of `refresh_token`'s tokens.
    pub location_id: String,
    /// The company of the agency token.
    pub company_id: String,
    /// Each token request waits this long before it is acted on.
    pub token_delay: Option<Duration>,
}

impl Default for OAuth {
    fn default() -> Self {
        OAuth {
            client_id: "sandbox-client".into(),
            client_secret: "sandbox-secret".into(),
            access_ttl: Duration::from_secs(86_399),
            refresh_token: "sandbox-refresh".into(),
            company_refresh_token: "sandbox-company-refresh".into(),
            location_id: "sandboxLocation0001".into(),
            company_id: "sandboxCompany0001".into(),
            token_delay: None,
        }
    }
}

impl SandboxConfig {
    /// Token `sandbox-token`, no limits, no faults, no record: for `run --sandbox` and tests.
    pub fn unlimited() -> Self {
        SandboxConfig {
            token: DEFAULT_TOKEN.to_owned(),
            rate: None,
            daily: None,
            day: None,
            retry_after: false,
            fail_rate: 0.0,
            drop_rate: 0.0,
            hang_rate: 0.0,
            stored_504_rate: 0.0,
            backdate: true,
            reads: true,
            read_scope: true,
            latency: None,
            seed: None,
            record: None,
            contacts: None,
            record_contacts: None,
            search_misses: 0,
            oauth: None,
            uploads: UploadRules::default(),
        }
    }

    /// The configuration errors [`super::start`] refuses.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.token.is_empty()
            || !self
                .token
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b',')
        {
            return Err(ConfigError::Token);
        }
        let rates = [
            ("fail rate", self.fail_rate),
            ("drop rate", self.drop_rate),
            ("hang rate", self.hang_rate),
            ("stored-504 rate", self.stored_504_rate),
        ];
        for (name, p) in rates {
            if !(0.0..=1.0).contains(&p) {
                return Err(ConfigError::Probability(name, p));
            }
        }
        let sum: f64 = rates.iter().map(|(_, p)| p).sum();
        if sum > 1.0 {
            return Err(ConfigError::FaultsAboveOne(sum));
        }
        Ok(())
    }
}

/// Why a sandbox refuses to start with a configuration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// The listen address is not a loopback address.
    #[error(
        "refusing to listen on {0}: the sandbox accepts a well-known token and is for this \
         machine only; use a loopback address such as 127.0.0.1:8787"
    )]
    NotLoopback(SocketAddr),
    /// The token is empty, or has spaces, commas or non-printable characters.
    #[error("the token must be non-empty printable ASCII without spaces or commas")]
    Token,
    /// The fail rate or the drop rate (named) is outside 0 to 1.
    #[error("the {0} must be between 0 and 1, not {1}")]
    Probability(&'static str, f64),
    /// The fault rates add up to more than 1.
    #[error("the fault rates (fail, drop, hang, stored-504) add up to {0}, more than 1")]
    FaultsAboveOne(f64),
}

/// What the upload route takes: where files go, how big, which types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadRules {
    /// Where uploaded files are written (`--upload-dir`); `None`: a temp folder removed at
    /// shutdown.
    pub dir: Option<PathBuf>,
    /// The largest file accepted, bytes (`--upload-max-size`): larger ones are answered 413.
    pub max_size: u64,
    /// The extensions accepted, lower case (`--upload-types`): others are answered 415.
    pub types: Vec<String>,
}

impl Default for UploadRules {
    /// The importer's own defaults: 5 MB, the spec's types.
    fn default() -> Self {
        UploadRules {
            dir: None,
            max_size: crate::upload::files::DEFAULT_MAX_SIZE,
            types: crate::validate::UPLOAD_TYPES
                .iter()
                .map(|t| (*t).to_owned())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks() {
        assert_eq!(SandboxConfig::unlimited().check(), Ok(()));
        let with = |f: fn(&mut SandboxConfig)| {
            let mut c = SandboxConfig::unlimited();
            f(&mut c);
            c.check()
        };
        assert_eq!(with(|c| c.token = String::new()), Err(ConfigError::Token));
        assert_eq!(with(|c| c.token = "a b".into()), Err(ConfigError::Token));
        assert_eq!(
            with(|c| c.fail_rate = 1.5),
            Err(ConfigError::Probability("fail rate", 1.5))
        );
        assert_eq!(
            with(|c| {
                c.fail_rate = 0.7;
                c.drop_rate = 0.4
            }),
            Err(ConfigError::FaultsAboveOne(0.7 + 0.4))
        );
        assert_eq!(
            with(|c| {
                c.fail_rate = 0.5;
                c.drop_rate = 0.5
            }),
            Ok(())
        );
        assert_eq!(
            with(|c| {
                c.hang_rate = 0.5;
                c.stored_504_rate = 0.6
            }),
            Err(ConfigError::FaultsAboveOne(0.5 + 0.6))
        );
    }
}
