//! The sandbox's OAuth endpoints (issue 16, item 6), on when [`OAuth`] is configured:
//!
//! - `POST /oauth/token` (`application/x-www-form-urlencoded`, `grant_type=refresh_token`):
//!   the app's `client_id` / `client_secret`, a live refresh token and its `user_type`. Refresh
//!   tokens are **single-use and rotate**: the one used is spent (a second use is refused with
//!   400 `invalid_grant`, counted in `refresh_refused`), and the answer carries a new one.
//! - `POST /oauth/locationToken` (a live `Company` access token as the bearer, `companyId`,
//!   `locationId`): a location access token for that location, no refresh token.
//!
//! Access tokens issued here expire after [`OAuth::access_ttl`]; a request with an expired one
//! is answered 401 like any other bad token. A Company token is refused by the API routes
//! (they need a location token), as the real API's `bearer` scheme says. `token_delay` holds
//! each token request before it is acted on (the refresh token is spent only after it), so a
//! client can be killed while it waits for the answer.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::answer::json_response;
use super::config::OAuth;

/// Who a token was issued to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Holder {
    /// A sub-account (location) token.
    Location(String),
    /// An agency (company) token.
    Company,
}

/// The tokens the sandbox has issued, and what it counted of them.
#[derive(Debug)]
pub struct Tokens {
    config: OAuth,
    state: Mutex<Issued>,
    /// Refresh tokens exchanged for a new pair.
    pub refreshes: AtomicU64,
    /// Token requests refused (spent or unknown refresh token, wrong client, bad form).
    pub refused: AtomicU64,
    /// Location tokens issued for an agency token.
    pub location_tokens: AtomicU64,
    /// Token requests received (counted on arrival, before `token_delay`).
    pub arrivals: AtomicU64,
}

#[derive(Debug, Default)]
struct Issued {
    /// Access token → (holder, expiry).
    access: HashMap<String, (Holder, Instant)>,
    /// Live refresh tokens → holder.
    refresh: HashMap<String, Holder>,
    /// Refresh tokens used once: a second use is refused.
    spent: HashSet<String>,
}

impl Tokens {
    /// The store of a sandbox configured with `config`: its seed refresh tokens are live.
    pub fn new(config: OAuth) -> Tokens {
        let mut issued = Issued::default();
        issued.refresh.insert(
            config.refresh_token.clone(),
            Holder::Location(config.location_id.clone()),
        );
        issued
            .refresh
            .insert(config.company_refresh_token.clone(), Holder::Company);
        Tokens {
            config,
            state: Mutex::new(issued),
            refreshes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            location_tokens: AtomicU64::new(0),
            arrivals: AtomicU64::new(0),
        }
    }

    /// Whether `Authorization` holds a live location token issued here.
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        self.holder(headers)
            .is_some_and(|h| matches!(h, Holder::Location(_)))
    }

    /// Whether `token` is a refresh token the sandbox would accept now.
    pub fn refresh_token_is_live(&self, token: &str) -> bool {
        self.lock().refresh.contains_key(token)
    }

    fn holder(&self, headers: &HeaderMap) -> Option<Holder> {
        let token = headers
            .get(AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        let state = self.lock();
        let (holder, expires) = state.access.get(token)?;
        (Instant::now() < *expires).then(|| holder.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Issued> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn issue_access(&self, holder: Holder) -> String {
        let token = format!("sbx-at-{}", random(32));
        let mut state = self.lock();
        let now = Instant::now();
        // Expired tokens go, so the map stays as small as the live ones.
        state.access.retain(|_, (_, e)| *e > now);
        state
            .access
            .insert(token.clone(), (holder, now + self.config.access_ttl));
        token
    }

    fn expires_in(&self) -> u64 {
        self.config.access_ttl.as_secs().max(1)
    }

    /// `POST /oauth/token`.
    pub(super) fn refresh(
        &self,
        form: &HashMap<String, String>,
    ) -> Result<Value, (StatusCode, Value)> {
        let refuse = |status: StatusCode, error: &str, description: &str| {
            self.refused.fetch_add(1, Relaxed);
            Err((
                status,
                json!({"statusCode": status.as_u16(), "error": error, "message": description}),
            ))
        };
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        if field("client_id") != self.config.client_id
            || field("client_secret") != self.config.client_secret
        {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed",
            );
        }
        if field("grant_type") != "refresh_token" {
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unsupported_grant_type",
                "grant_type must be one of authorization_code, refresh_token, client_credentials (the sandbox knows refresh_token)",
            );
        }
        let mut state = self.lock();
        let used = field("refresh_token");
        let Some(holder) = state.refresh.get(used).cloned() else {
            drop(state);
            let why = match self.lock().spent.contains(used) {
                true => "Invalid grant: refresh token has already been used",
                false => "Invalid grant: refresh token is invalid",
            };
            return refuse(StatusCode::BAD_REQUEST, "invalid_grant", why);
        };
        let wanted = match &holder {
            Holder::Location(_) => "Location",
            Holder::Company => "Company",
        };
        if field("user_type") != wanted {
            drop(state);
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "user_type does not match the refresh token",
            );
        }
        // Single use: spent now, a new one in its place.
        state.refresh.remove(used);
        state.spent.insert(used.to_owned());
        let refresh_token = format!("sbx-rt-{}", random(32));
        state.refresh.insert(refresh_token.clone(), holder.clone());
        drop(state);
        let access_token = self.issue_access(holder.clone());
        self.refreshes.fetch_add(1, Relaxed);
        let mut answer = json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in(),
            "refresh_token": refresh_token,
            "scope": "conversations/message.write contacts.write conversations.write",
            "userType": wanted,
            "companyId": self.config.company_id,
            "userId": "sandboxUser0000000001",
        });
        if let Holder::Location(location) = holder {
            answer["locationId"] = Value::from(location);
        } else {
            answer["approvedLocations"] = json!([self.config.location_id]);
        }
        Ok(answer)
    }

    /// `POST /oauth/locationToken`; `version` is the `Version` header's check.
    pub(super) fn location_token(
        &self,
        headers: &HeaderMap,
        version: Result<(), String>,
        form: &HashMap<String, String>,
    ) -> Result<Value, (StatusCode, Value)> {
        let refuse = |status: StatusCode, message: Value| {
            self.refused.fetch_add(1, Relaxed);
            Err((
                status,
                json!({"statusCode": status.as_u16(), "message": message}),
            ))
        };
        if self.holder(headers) != Some(Holder::Company) {
            return refuse(
                StatusCode::UNAUTHORIZED,
                Value::from("Invalid token: an agency access token is required"),
            );
        }
        if let Err(message) = version {
            return refuse(StatusCode::BAD_REQUEST, Value::from(message));
        }
        let (Some(company), Some(location)) = (form.get("companyId"), form.get("locationId"))
        else {
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!([
                    "companyId should not be empty",
                    "locationId should not be empty"
                ]),
            );
        };
        if *company != self.config.company_id {
            return refuse(
                StatusCode::BAD_REQUEST,
                Value::from("The token does not belong to this company"),
            );
        }
        let access_token = self.issue_access(Holder::Location(location.clone()));
        self.location_tokens.fetch_add(1, Relaxed);
        Ok(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in(),
            "scope": "conversations/message.write contacts.write conversations.write",
            "locationId": location,
            "userId": "sandboxUser0000000001",
        }))
    }
}

fn random(n: usize) -> String {
    (0..n).map(|_| fastrand::alphanumeric()).collect()
}

/// A form body (`application/x-www-form-urlencoded`) as its fields.
pub(super) fn form(raw: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(raw).into_owned().collect()
}

/// Answers with `answer` after the configured delay, or 404 when OAuth is off (`None`).
pub(super) async fn respond(
    tokens: Option<&Tokens>,
    answer: impl FnOnce(&Tokens) -> Result<Value, (StatusCode, Value)>,
) -> Response {
    let Some(tokens) = tokens else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"statusCode": 404, "message": "OAuth is off in this sandbox (start it with --oauth-expires-in)"}),
        );
    };
    tokens.arrivals.fetch_add(1, Relaxed);
    if let Some(delay) = tokens.config.token_delay {
        tokio::time::sleep(delay).await;
    }
    match answer(tokens) {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err((status, body)) => json_response(status, &body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(OAuth::default())
    }

    fn refresh_form(token: &str, user_type: &str) -> HashMap<String, String> {
        let c = OAuth::default();
        [
            ("client_id", c.client_id.as_str()),
            ("client_secret", c.client_secret.as_str()),
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("user_type", user_type),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn a_refresh_token_works_once_and_rotates() {
        let t = tokens();
        let first = OAuth::default().refresh_token;
        let answer = t.refresh(&refresh_form(&first, "Location")).unwrap();
        let next = answer["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(next, first);
        assert!(!t.refresh_token_is_live(&first));
        assert!(t.refresh_token_is_live(&next));
        let (status, body) = t.refresh(&refresh_form(&first, "Location")).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("already been used")
        );
        assert_eq!(t.refused.load(Relaxed), 1);
        // The wrong user type is refused and spends nothing.
        assert!(t.refresh(&refresh_form(&next, "Company")).is_err());
        assert!(t.refresh_token_is_live(&next));
        let mut headers = HeaderMap::new();
        let bearer = format!("Bearer {}", answer["access_token"].as_str().unwrap());
        headers.insert(AUTHORIZATION, bearer.parse().unwrap());
        assert!(t.authorizes(&headers));
    }

    #[test]
    fn only_a_company_token_gets_a_location_token_and_it_cannot_post_itself() {
        let t = tokens();
        let c = OAuth::default();
        let company = t
            .refresh(&refresh_form(&c.company_refresh_token, "Company"))
            .unwrap();
        let mut headers = HeaderMap::new();
        let bearer = format!("Bearer {}", company["access_token"].as_str().unwrap());
        headers.insert(AUTHORIZATION, bearer.parse().unwrap());
        headers.insert("version", "2021-07-28".parse().unwrap());
        assert!(!t.authorizes(&headers), "a company token posts nothing");
        let form: HashMap<String, String> = [
            ("companyId".to_owned(), c.company_id.clone()),
            ("locationId".to_owned(), "loc1".to_owned()),
        ]
        .into();
        let location = t.location_token(&headers, Ok(()), &form).unwrap();
        let mut as_location = HeaderMap::new();
        let bearer = format!("Bearer {}", location["access_token"].as_str().unwrap());
        as_location.insert(AUTHORIZATION, bearer.parse().unwrap());
        assert!(t.authorizes(&as_location));
        assert!(t.location_token(&as_location, Ok(()), &form).is_err());
    }
}
