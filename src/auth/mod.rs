//! The run's credentials: the bearer every request carries, and keeping it alive (issue 16,
//! items 1 and 2). Three kinds of token, decided once from `LC_TOKEN` or `--token-file`:
//!
//! - **fixed**: a bare token (a Private Integration token, or an OAuth access token without a
//!   way to refresh it). A 401 stops the run, as it always did.
//! - **refreshed**: the token endpoint's JSON (`access_token`, `refresh_token`, `expires_in`,
//!   `userType`, …) with the app's `LC_CLIENT_ID` / `LC_CLIENT_SECRET` in the environment. The
//!   access token is refreshed (`POST /oauth/token`, `grant_type=refresh_token`) shortly before
//!   it expires, and once on a 401; the request the 401 refused is sent again.
//! - **agency**: the JSON of a `Company` token, and `--location-id`: the company token is
//!   exchanged for the location's (`POST /oauth/locationToken`), kept in memory only and
//!   exchanged again when it expires; the company token itself is refreshed as above when it
//!   expires (or when the exchange is refused with a 401).
//!
//! Refresh tokens are single-use and rotate, so two rules hold: **one renewal at a time**
//! (every request that sees a 401 waits for the one renewal under way and takes its token: a
//! request whose token is older than the current one only replays), and **the new pair is on
//! disk before the new access token is used**: written to a temp file beside the token file,
//! synced, renamed over it, the folder synced, mode 0600 ([`write_atomically`]). A crash
//! therefore never leaves the file holding a refresh token the server has already spent —
//! except when the process dies after the server rotated and before its answer arrived, which
//! no client can cover.
//!
//! No token and no client secret is ever printed: they live in [`Secret`]s (whose `Debug` says
//! nothing), the `Authorization` header is marked sensitive, and the token endpoint's words in
//! an error are scrubbed of every secret the run holds. For many locations later: one
//! [`Auth`] per location, each with its own renewal, over one shared company token.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Map, Value};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::results::line::{folder_of, write_atomically};
use crate::retry::{Backoff, StopReason, describe};

mod file;

use file::{App, Json};
pub use file::{Secret, TokenFile, TokenSource};

/// The path of the token endpoint, below the base URL.
pub const TOKEN_PATH: &str = "/oauth/token";
/// The path of the agency-to-location exchange, below the base URL.
pub const LOCATION_TOKEN_PATH: &str = "/oauth/locationToken";
/// The `Version` of `/oauth/locationToken` (`api/apps/oauth.json`: its only value).
const OAUTH_VERSION: &str = "2021-07-28";
/// Attempts at the token endpoint when it fails in a way worth another try (5xx, no answer).
const RENEW_ATTEMPTS: u32 = 5;
/// The longest time before expiry a token is renewed (shorter lifetimes: a tenth of theirs).
const RENEW_AHEAD: Duration = Duration::from_secs(300);

/// The bearer a request goes out with, and which renewal gave it.
#[derive(Clone, Debug)]
pub struct Bearer {
    /// `Bearer …`, marked sensitive.
    pub value: HeaderValue,
    /// Counts renewals: a 401 to an older generation than the current one only replays.
    pub generation: u64,
}

/// What follows a 401: send the request again with the fresh token, or stop the run.
#[derive(Debug)]
pub enum Rejected {
    /// A fresh token is in place: send the request again (the 401 stored nothing).
    Replay,
    /// The run stops, for this reason.
    Stop(StopReason),
}

/// The token now in use.
struct Current {
    bearer: Bearer,
    /// When to renew it (a little before it expires); `None`: never by time.
    renew_at: Option<Instant>,
}

/// How the token is renewed: the file's token and, for an agency token, the location.
struct Renewal {
    file: TokenFile,
    app: Option<App>,
    /// `Some((companyId, locationId))`: the file holds a company token, exchanged for this
    /// location's.
    agency: Option<(String, String)>,
    /// The first renewal that failed for good: every later one gives the same answer.
    failed: Option<StopReason>,
}

/// The credentials of one run (one location), shared by every request.
pub struct Auth {
    current: RwLock<Current>,
    /// Held for the whole of a renewal: one at a time, the others wait and take its token.
    renewal: Option<tokio::sync::Mutex<Renewal>>,
    /// Every secret the run holds, to scrub from the token endpoint's words.
    secrets: Mutex<Vec<String>>,
    client: reqwest::Client,
    base: reqwest::Url,
    refreshes: AtomicU64,
    exchanges: AtomicU64,
    /// Generations below this one were answered 401: a request holding one must not leave.
    rejected_below: AtomicU64,
}

/// A token's lifetime as the token endpoint gives it, and when to renew it.
fn renew_at(expires: Option<SystemTime>) -> Option<Instant> {
    let expires = expires?;
    let left = expires
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Some(Instant::now() + left)
}

fn ahead(lifetime: Duration) -> Duration {
    (lifetime / 10).min(RENEW_AHEAD)
}

fn bearer_value(token: &Secret) -> Result<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .context("the token has characters that cannot go in an HTTP header")?;
    value.set_sensitive(true);
    Ok(value)
}

impl Auth {
    /// The credentials of a run against `base`: checks what can be checked before any request
    /// (the app's credentials for a token file with a refresh token, a location for an agency
    /// token, a token file whose folder takes the refreshed file).
    pub fn new(
        source: TokenSource,
        base: &reqwest::Url,
        location_id: Option<&str>,
        timeout: Duration,
    ) -> Result<Auth> {
        let client = crate::sender::api_client(timeout, 2, HeaderMap::new())?;
        let make = |bearer: Option<&Secret>,
                    renew_at: Option<Instant>,
                    renewal: Option<Renewal>,
                    secrets: Vec<String>|
         -> Result<Auth> {
            let value = match bearer {
                Some(t) => bearer_value(t)?,
                // No token yet (an agency token not yet exchanged): renewed before the first
                // request, since `renew_at` is now.
                None => HeaderValue::from_static("Bearer -"),
            };
            Ok(Auth {
                current: RwLock::new(Current {
                    bearer: Bearer {
                        value,
                        generation: 0,
                    },
                    renew_at,
                }),
                renewal: renewal.map(tokio::sync::Mutex::new),
                secrets: Mutex::new(secrets),
                client: client.clone(),
                base: base.clone(),
                refreshes: AtomicU64::new(0),
                exchanges: AtomicU64::new(0),
                rejected_below: AtomicU64::new(0),
            })
        };
        let file = match source {
            TokenSource::Fixed(token) => {
                let secrets = vec![token.0.clone()];
                return make(Some(&token), None, None, secrets);
            }
            TokenSource::File(file) => *file,
        };
        let app = App::from_env();
        let mut secrets: Vec<String> = ["access_token", "refresh_token"]
            .iter()
            .filter_map(|k| file.json.text(k).map(str::to_owned))
            .collect();
        if let Some(app) = &app {
            secrets.push(app.client_secret.0.clone());
        }
        let refreshable = file.json.text("refresh_token").is_some() && app.is_some();
        if file.json.text("refresh_token").is_some() && app.is_none() {
            warn!(
                "--token-file {} holds a refresh token, but LC_CLIENT_ID and LC_CLIENT_SECRET are not both set: the access token cannot be refreshed, and the run stops when it expires",
                file.path.display()
            );
        }
        if refreshable {
            check_writable(&file.path)?;
        }
        if file.json.is_company() {
            let Some(location) = location_id else {
                bail!(
                    "--token-file {} holds a Company (agency) token: give --location-id ID, the sub-account to import into (its token is obtained from the agency token)",
                    file.path.display()
                );
            };
            let Some(company) = file.json.text("companyId").map(str::to_owned) else {
                bail!(
                    "--token-file {}: a Company token needs its \"companyId\" (as the token endpoint returns it)",
                    file.path.display()
                );
            };
            if file.json.text("access_token").is_none() && !refreshable {
                bail!(
                    "--token-file {}: no \"access_token\", and no refresh token with LC_CLIENT_ID / LC_CLIENT_SECRET to get one",
                    file.path.display()
                );
            }
            info!(
                "agency token of company {company}: it is exchanged for the token of location {location}"
            );
            let renewal = Renewal {
                agency: Some((company, location.to_owned())),
                file,
                app,
                failed: None,
            };
            return make(None, Some(Instant::now()), Some(renewal), secrets);
        }
        if let (Some(given), Some(own)) = (location_id, file.json.text("locationId"))
            && given != own
        {
            bail!(
                "--token-file {} holds the token of location {own}, but --location-id is {given}: give the token of that location, or an agency (Company) token",
                file.path.display()
            );
        }
        let token = file
            .json
            .secret("access_token")
            .expect("checked in TokenFile::parse");
        if !refreshable {
            return make(Some(&token), None, None, secrets);
        }
        let lifetime = file.json.seconds("expires_in").map(Duration::from_secs_f64);
        let when = renew_at(file.expires).map(|at| {
            at.checked_sub(lifetime.map_or(Duration::ZERO, ahead))
                .unwrap_or(at)
        });
        let renewal = Renewal {
            file,
            app,
            agency: None,
            failed: None,
        };
        make(Some(&token), when, Some(renewal), secrets)
    }

    /// The bearer to send now, without waiting.
    pub fn bearer(&self) -> Bearer {
        self.current.read().expect("token lock").bearer.clone()
    }

    /// `bearer` was answered 401: from now on no request leaves with it ([`still`](Auth::still)).
    /// Called as the answer comes, before its place on the wire is given up.
    pub fn note_rejected(&self, bearer: &Bearer) {
        self.rejected_below
            .fetch_max(bearer.generation + 1, Ordering::AcqRel);
    }

    /// The bearer for a request about to leave that took `bearer` a while ago (before its
    /// `sending` line and its wait for the wire): `bearer` itself, or the current one if that
    /// is newer and fresh; `None` when `bearer` was answered 401 meanwhile and no renewed one
    /// is ready yet (the request must not leave with it: it would be refused).
    pub fn still(&self, bearer: Bearer) -> Option<Bearer> {
        let rejected_below = self.rejected_below.load(Ordering::Acquire);
        match self.fresh() {
            Some(current) if current.generation >= rejected_below => Some(current),
            _ if bearer.generation >= rejected_below => Some(bearer),
            _ => None,
        }
    }

    /// The bearer for a request about to leave, when it needs no renewal first (the hot path:
    /// no future, no allocation); `None`: call [`ready`](Auth::ready).
    pub fn fresh(&self) -> Option<Bearer> {
        let current = self.current.read().expect("token lock");
        if current.bearer.generation < self.rejected_below.load(Ordering::Acquire) {
            return None;
        }
        match current.renew_at {
            Some(at) if Instant::now() >= at => None,
            _ => Some(current.bearer.clone()),
        }
    }

    /// The bearer for a request about to leave: renewed first when it is about to expire.
    pub async fn ready(&self) -> Result<Bearer, StopReason> {
        let rejected_below = self.rejected_below.load(Ordering::Acquire);
        let (seen, why) = {
            let current = self.current.read().expect("token lock");
            match current.renew_at {
                // Answered 401 and not renewed yet: wait for the renewal under way (or make it).
                _ if current.bearer.generation < rejected_below => {
                    (current.bearer.generation, "the API answered 401")
                }
                Some(at) if Instant::now() >= at => {
                    (current.bearer.generation, "it is about to expire")
                }
                _ => return Ok(current.bearer.clone()),
            }
        };
        self.renew(seen, why).await
    }

    /// After a 401 to a request sent with `sent_with`: a fresh token in place (renewed now, or
    /// by another request meanwhile) to replay with, or the stop. `replayed`: this request was
    /// already sent again after a 401, so a second one is the token's refusal for good.
    pub async fn rejected(&self, sent_with: &Bearer, replayed: bool, words: String) -> Rejected {
        let refused = || StopReason::TokenRejected(self.scrub(&words));
        self.note_rejected(sent_with);
        if replayed || self.renewal.is_none() {
            return Rejected::Stop(refused());
        }
        match self
            .renew(sent_with.generation, "the API answered 401")
            .await
        {
            Ok(_) => Rejected::Replay,
            Err(reason) => Rejected::Stop(reason),
        }
    }

    /// Renews the token unless another request did since `seen` was current; one at a time.
    async fn renew(&self, seen: u64, why: &str) -> Result<Bearer, StopReason> {
        let Some(renewal) = &self.renewal else {
            return Ok(self.bearer());
        };
        let mut renewal = renewal.lock().await;
        if let Some(reason) = &renewal.failed {
            return Err(reason.clone());
        }
        {
            let current = self.current.read().expect("token lock");
            let fresh = current.renew_at.is_none_or(|at| Instant::now() < at);
            if current.bearer.generation != seen && fresh {
                return Ok(current.bearer.clone());
            }
        }
        match self.renew_locked(&mut renewal, why).await {
            Ok((token, lifetime)) => {
                let value = bearer_value(&token).map_err(|e| StopReason::Error(format!("{e}")))?;
                self.secrets.lock().expect("secrets").push(token.0.clone());
                let mut current = self.current.write().expect("token lock");
                current.bearer = Bearer {
                    value,
                    generation: current.bearer.generation + 1,
                };
                current.renew_at = lifetime.map(|l| Instant::now() + l - ahead(l));
                Ok(current.bearer.clone())
            }
            Err(reason) => {
                renewal.failed = Some(reason.clone());
                Err(reason)
            }
        }
    }

    /// The renewal itself, under the lock: the location's token from the agency token, or the
    /// file's token refreshed (and written back before it is used). The new token and its
    /// lifetime.
    async fn renew_locked(
        &self,
        renewal: &mut Renewal,
        why: &str,
    ) -> Result<(Secret, Option<Duration>), StopReason> {
        let Some((company, location)) = renewal.agency.clone() else {
            info!("refreshing the access token ({why})");
            self.refresh(renewal).await?;
            let token = renewal
                .file
                .json
                .secret("access_token")
                .expect("a refresh gives an access token");
            let lifetime = renewal
                .file
                .json
                .seconds("expires_in")
                .map(Duration::from_secs_f64);
            return Ok((token, lifetime));
        };
        info!("exchanging the agency token for the token of location {location} ({why})");
        let due = renewal
            .file
            .expires
            .is_some_and(|e| SystemTime::now() + Duration::from_secs(5) >= e);
        let mut refreshed = false;
        if (due || renewal.file.json.text("access_token").is_none()) && renewal.can_refresh() {
            self.refresh(renewal).await?;
            refreshed = true;
        }
        loop {
            let company_token = renewal.file.json.secret("access_token").ok_or_else(|| {
                StopReason::RefreshRefused("the token file has no agency access token".into())
            })?;
            let form = [
                ("companyId", company.as_str()),
                ("locationId", location.as_str()),
            ];
            let answer = self
                .call(LOCATION_TOKEN_PATH, &form, Some(&company_token), "exchange")
                .await?;
            match answer {
                Ok(json) => {
                    self.exchanges.fetch_add(1, Ordering::Relaxed);
                    let token = json.secret("access_token").ok_or_else(|| {
                        StopReason::RefreshRefused(
                            "the location token answer has no access_token".into(),
                        )
                    })?;
                    return Ok((
                        token,
                        json.seconds("expires_in").map(Duration::from_secs_f64),
                    ));
                }
                Err((401, _)) if !refreshed && renewal.can_refresh() => {
                    self.refresh(renewal).await?;
                    refreshed = true;
                }
                Err((_, words)) => {
                    return Err(StopReason::RefreshRefused(format!(
                        "the agency token was not exchanged for location {location}'s ({words}): check that the app is installed in that location and that --location-id is right; with an expired agency token, a new token file from the OAuth flow (or LC_CLIENT_ID / LC_CLIENT_SECRET to refresh it)"
                    )));
                }
            }
        }
    }

    /// `POST /oauth/token` with the file's refresh token; the new pair written to the file
    /// (synced, renamed, folder synced) before anything uses it.
    async fn refresh(&self, renewal: &mut Renewal) -> Result<(), StopReason> {
        let app = renewal.app.clone().expect("can_refresh checked the app");
        let refresh_token = renewal
            .file
            .json
            .secret("refresh_token")
            .expect("can_refresh checked the refresh token");
        let user_type = if renewal.file.json.is_company() {
            "Company"
        } else {
            "Location"
        };
        let form = [
            ("client_id", app.client_id.expose()),
            ("client_secret", app.client_secret.expose()),
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
            ("user_type", user_type),
        ];
        let json = match self.call(TOKEN_PATH, &form, None, "refresh").await? {
            Ok(json) => json,
            Err((_, words)) => {
                return Err(StopReason::RefreshRefused(format!(
                    "the token endpoint refused to refresh the access token ({words}): the refresh token in {} is spent or revoked, or LC_CLIENT_ID / LC_CLIENT_SECRET are not this app's; authorise the app again, put the token endpoint's new JSON in that file, then run the same command",
                    renewal.file.path.display()
                )));
            }
        };
        let (Some(access), Some(refresh)) =
            (json.secret("access_token"), json.secret("refresh_token"))
        else {
            return Err(StopReason::RefreshRefused(
                "the token endpoint answered without an access_token and a refresh_token".into(),
            ));
        };
        {
            let mut secrets = self.secrets.lock().expect("secrets");
            secrets.push(access.0.clone());
            secrets.push(refresh.0.clone());
        }
        let mut merged = renewal.file.json.0.clone();
        for (k, v) in json.0 {
            merged.insert(k, v);
        }
        let lifetime = merged.get("expires_in").and_then(Value::as_f64);
        let expires = lifetime.map(|s| SystemTime::now() + Duration::from_secs_f64(s.max(0.0)));
        match expires.and_then(|e| e.duration_since(UNIX_EPOCH).ok()) {
            Some(at) => {
                merged.insert("expires_at".into(), Value::from(at.as_secs_f64().floor()));
            }
            None => {
                merged.remove("expires_at");
            }
        }
        let mut text = serde_json::to_vec_pretty(&merged).expect("JSON serialises");
        text.push(b'\n');
        let path = renewal.file.path.clone();
        tokio::task::block_in_place(|| write_atomically(&path, ".lc-import-token-", &text))
            .map_err(|e| {
                StopReason::RefreshRefused(format!(
                    "the refreshed token could not be saved to {} ({e}): the old refresh token is spent, so authorise the app again and put the new JSON in that file",
                    path.display()
                ))
            })?;
        renewal.file.json = Json(merged);
        renewal.file.expires = expires;
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        info!(
            "access token refreshed; the new pair is saved in {}",
            path.display()
        );
        Ok(())
    }

    /// One form POST to an OAuth endpoint, tried again on 5xx and lost answers: the answer's
    /// JSON, or the refusal (status and scrubbed words); `Err` when it cannot be reached.
    async fn call(
        &self,
        path: &str,
        form: &[(&str, &str)],
        bearer: Option<&Secret>,
        what: &str,
    ) -> Result<Result<Json, (u16, String)>, StopReason> {
        let mut url = self.base.clone();
        url.set_path(&format!("{}{path}", self.base.path().trim_end_matches('/')));
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let backoff = Backoff::default();
        let mut last = String::new();
        for attempt in 1..=RENEW_ATTEMPTS {
            let mut request = self
                .client
                .post(url.clone())
                .header(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                )
                .header("Version", HeaderValue::from_static(OAUTH_VERSION))
                .body(body.clone());
            if let Some(token) = bearer {
                request = request.header(
                    AUTHORIZATION,
                    bearer_value(token).map_err(|e| StopReason::Error(format!("{e}")))?,
                );
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let bytes = response.bytes().await.unwrap_or_default();
                    if (200..300).contains(&status) {
                        return match serde_json::from_slice::<Map<String, Value>>(&bytes) {
                            Ok(map) => Ok(Ok(Json(map))),
                            Err(_) => Err(StopReason::RefreshRefused(format!(
                                "HTTP {status} from {path} with a body that is not the JSON object the spec describes"
                            ))),
                        };
                    }
                    let words = self.scrub(&describe(status, &bytes));
                    if !matches!(status, 429 | 500 | 502 | 503 | 504) {
                        return Ok(Err((status, words)));
                    }
                    last = words;
                }
                Err(e) => last = self.scrub(&crate::sender::error_chain(&e)),
            }
            warn!("the token {what} failed ({last}); trying again");
            tokio::time::sleep(backoff.delay(attempt, None, fastrand::f64())).await;
        }
        Err(StopReason::RefreshRefused(format!(
            "the token {what} at {path} kept failing ({last}); run the same command again later"
        )))
    }

    /// `text` with every secret the run holds replaced.
    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for s in self.secrets.lock().expect("secrets").iter() {
            if s.len() >= 4 {
                text = text.replace(s.as_str(), "[redacted]");
            }
        }
        text
    }

    /// Whether a 401 is answered by renewing the token (else it stops the run).
    pub fn renews(&self) -> bool {
        self.renewal.is_some()
    }

    /// Access tokens refreshed at the token endpoint so far.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// Agency tokens exchanged for the location's so far.
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }
}

impl Renewal {
    fn can_refresh(&self) -> bool {
        self.app.is_some() && self.file.json.text("refresh_token").is_some()
    }
}

/// A token file the run will rewrite must be in a folder it can write: found out now, not
/// after the server has spent the old refresh token.
fn check_writable(path: &Path) -> Result<()> {
    let dir = folder_of(path);
    tempfile::Builder::new()
        .prefix(".lc-import-token-")
        .tempfile_in(&dir)
        .map(drop)
        .with_context(|| {
            format!(
                "--token-file {}: its folder {} is not writable, so a refreshed token could not be saved there (refresh tokens are single-use): move the file to a folder the run can write",
                path.display(),
                dir.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_renewed_a_tenth_of_its_life_ahead_at_most_five_minutes() {
        assert_eq!(ahead(Duration::from_secs(3)), Duration::from_millis(300));
        assert_eq!(ahead(Duration::from_secs(86_399)), RENEW_AHEAD);
    }
}
