//! What `LC_TOKEN` or `--token-file` holds, read and checked before the run starts: a bare
//! token, or the token endpoint's JSON (every field kept, to be written back with a refreshed
//! pair); and the app's credentials from the environment. Secrets are [`Secret`]s, whose `Debug`
//! says `[redacted]`, and a file that does not parse is refused without quoting it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

/// A token or the client secret: shown as `[redacted]` by `Debug`, never by `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

impl Secret {
    /// The value, for the one place that sends it.
    pub(super) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What `LC_TOKEN` or `--token-file` gave, read and checked, before the run starts.
#[derive(Debug)]
pub enum TokenSource {
    /// A bare token: used as it is; a 401 stops the run.
    Fixed(Secret),
    /// The token endpoint's JSON, read from this file.
    File(Box<TokenFile>),
}

/// The `--token-file` holding the token endpoint's JSON.
#[derive(Debug)]
pub struct TokenFile {
    pub(super) path: PathBuf,
    pub(super) json: Json,
    /// When the file's access token expires: its `expires_at` (written by this tool), else the
    /// file's modification time plus `expires_in`; `None` when it does not say.
    pub(super) expires: Option<SystemTime>,
}

/// The JSON object, every field kept (they are written back as they came, with the new pair).
pub(super) struct Json(pub(super) Map<String, Value>);

impl std::fmt::Debug for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("{…}")
    }
}

impl Json {
    pub(super) fn text(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
    }
    pub(super) fn secret(&self, key: &str) -> Option<Secret> {
        self.text(key).map(|s| Secret(s.trim().to_owned()))
    }
    pub(super) fn seconds(&self, key: &str) -> Option<f64> {
        self.0
            .get(key)
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s >= 0.0)
    }
    pub(super) fn is_company(&self) -> bool {
        self.text("userType")
            .is_some_and(|t| t.eq_ignore_ascii_case("company"))
    }
}

impl TokenSource {
    /// The token from `--token-file` (a bare token or the token endpoint's JSON), else from
    /// `LC_TOKEN` (a bare token). Never from the command line.
    pub fn read(file: Option<&Path>) -> Result<TokenSource> {
        let token = match file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --token-file {}", path.display()))?,
            None => std::env::var("LC_TOKEN").unwrap_or_default(),
        };
        let token = token.trim();
        if token.is_empty() {
            bail!(
                "no API token: set the environment variable LC_TOKEN, or give --token-file PATH (a file holding the token, or the token endpoint's JSON with a refresh token). Use a sub-account Private Integration token or a location OAuth token"
            );
        }
        match file {
            Some(path) if token.starts_with('{') => {
                Ok(TokenSource::File(Box::new(TokenFile::parse(path, token)?)))
            }
            _ => Ok(TokenSource::Fixed(Secret(token.to_owned()))),
        }
    }

    /// A token given by the program itself (the in-process sandbox's).
    pub fn fixed(token: &str) -> TokenSource {
        TokenSource::Fixed(Secret(token.to_owned()))
    }

    /// The location the token belongs to, when its file says (`locationId` of a location token).
    pub fn location_id(&self) -> Option<&str> {
        match self {
            TokenSource::File(f) if !f.json.is_company() => f.json.text("locationId"),
            _ => None,
        }
    }
}

impl TokenFile {
    fn parse(path: &Path, text: &str) -> Result<TokenFile> {
        // Not the parser's own words: they may quote a value, and a value may be a token.
        let json: Map<String, Value> = serde_json::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "--token-file {}: line {}, column {}: not a JSON object as the token endpoint returns it ({:?} error); expected {{\"access_token\": …, \"refresh_token\": …, \"expires_in\": …, \"userType\": \"Location\"}}, or a bare token",
                path.display(),
                e.line(),
                e.column(),
                e.classify()
            )
        })?;
        let json = Json(json);
        if json.text("access_token").is_none() && !json.is_company() {
            bail!(
                "--token-file {}: no \"access_token\" (a string): expected the JSON the token endpoint returns",
                path.display()
            );
        }
        if let Some(t) = json.text("userType")
            && !t.eq_ignore_ascii_case("location")
            && !t.eq_ignore_ascii_case("company")
        {
            bail!(
                "--token-file {}: \"userType\" is '{t}': expected Location or Company",
                path.display()
            );
        }
        let expires = match (json.seconds("expires_at"), json.seconds("expires_in")) {
            (Some(at), _) => Some(UNIX_EPOCH + Duration::from_secs_f64(at)),
            (None, Some(secs)) => {
                let written = std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .unwrap_or_else(|_| SystemTime::now());
                Some(written + Duration::from_secs_f64(secs))
            }
            (None, None) => None,
        };
        Ok(TokenFile {
            path: path.to_owned(),
            json,
            expires,
        })
    }
}

/// The app's credentials, from `LC_CLIENT_ID` and `LC_CLIENT_SECRET` (never from a flag).
#[derive(Clone, Debug)]
pub(super) struct App {
    pub(super) client_id: Secret,
    pub(super) client_secret: Secret,
}

impl App {
    pub(super) fn from_env() -> Option<App> {
        let get = |name| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        Some(App {
            client_id: Secret(get("LC_CLIENT_ID")?),
            client_secret: Secret(get("LC_CLIENT_SECRET")?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows_in_debug() {
        let s = Secret("tok-123456".into());
        assert_eq!(format!("{s:?}"), "[redacted]");
        let src = TokenSource::Fixed(s);
        assert!(!format!("{src:?}").contains("tok-123456"));
    }

    #[test]
    fn token_files_are_read_or_refused_without_quoting_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.json");
        std::fs::write(&path, "{\"access_token\": \"abc-secret\", \"expires_in\": 86399, \"refresh_token\": \"r-secret\", \"userType\": \"Location\", \"locationId\": \"L1\"}").unwrap();
        let src = TokenSource::read(Some(&path)).unwrap();
        assert_eq!(src.location_id(), Some("L1"));
        let TokenSource::File(f) = &src else {
            panic!("a JSON file")
        };
        let left = f
            .expires
            .unwrap()
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(left > Duration::from_secs(86_000), "{left:?}");
        assert!(!format!("{src:?}").contains("secret"));

        std::fs::write(
            &path,
            "{\"access_token\": \"abc-secret\", \"userType\": \"Robot\"}",
        )
        .unwrap();
        let err = TokenSource::read(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("expected Location or Company"), "{err}");
        std::fs::write(&path, "{\"access_token\": \"abc-secret\",").unwrap();
        let err = TokenSource::read(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("line 1, column") && !err.contains("abc-secret"),
            "{err}"
        );

        std::fs::write(&path, "plain-token\n").unwrap();
        assert!(matches!(
            TokenSource::read(Some(&path)).unwrap(),
            TokenSource::Fixed(t) if t.expose() == "plain-token"
        ));
    }
}
