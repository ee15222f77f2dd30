//! One HTTP attempt at `POST /conversations/messages/inbound`, reduced to an [`Attempt`]. The
//! client is built once per run: rustls with the platform's verifier, a pooled keep-alive
//! connection per slot of `--concurrency`, the token in a header marked sensitive so no debug
//! output shows it, no redirects. Messages go through hyper itself (the hot path); lookups and
//! runs behind a proxy go through reqwest ([`api_client`]).

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};

use crate::retry::Attempt;

/// The path of the endpoint, below the base URL.
pub const INBOUND_PATH: &str = "/conversations/messages/inbound";

/// The rate limit the server announced with an answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerLimits {
    /// `X-RateLimit-Max`: requests allowed per window; `None` when absent.
    pub max: Option<u32>,
    /// `X-RateLimit-Interval-Milliseconds`: the length of that window; `None` when absent.
    pub interval: Option<Duration>,
    /// `X-RateLimit-Remaining`: requests left in the current window; `None` when absent.
    pub remaining: Option<u64>,
    /// `X-RateLimit-Daily-Remaining`: requests left today; `None` when absent.
    pub daily_remaining: Option<u64>,
    /// `X-Sandbox-Day-Length-Ms`: the length of a "day" of the daily budget, sent only by
    /// `lc-import sandbox` started with `--day` (a multi-day rehearsal in minutes); `None`
    /// when absent. The gate heeds it only from a loopback server.
    pub day_length: Option<Duration>,
}

/// Reads the `X-RateLimit-*` headers (and the sandbox's day length) of an answer.
pub fn server_limits(headers: &HeaderMap) -> ServerLimits {
    let number =
        |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    ServerLimits {
        max: number("x-ratelimit-max").and_then(|n| u32::try_from(n).ok()),
        interval: number("x-ratelimit-interval-milliseconds").map(Duration::from_millis),
        remaining: number("x-ratelimit-remaining"),
        daily_remaining: number("x-ratelimit-daily-remaining"),
        day_length: number(DAY_LENGTH_HEADER)
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis),
    }
}

/// The sandbox's header giving the length of its "day" (see [`ServerLimits::day_length`]).
pub const DAY_LENGTH_HEADER: &str = "x-sandbox-day-length-ms";

/// Sends request bodies to one API root.
pub struct Sender {
    client: Client,
    url: reqwest::Url,
}

type HyperClient = hyper_util::client::legacy::Client<TimedConnector, Full<Bytes>>;
type HttpsConnector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The connector with one time limit on the whole connection: name lookup, TCP and the TLS
/// handshake (hyper's own limit covers TCP alone). A connection that is not made in time is a
/// connect error: nothing was sent, so the row is retried, not left `unknown`.
#[derive(Clone)]
struct TimedConnector {
    inner: HttpsConnector,
    limit: Duration,
}

impl tower_service::Service<hyper::Uri> for TimedConnector {
    type Response = <HttpsConnector as tower_service::Service<hyper::Uri>>::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {} s", limit.as_secs_f64()),
                )) as Self::Error),
            }
        })
    }
}

// One per run: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Client {
    /// hyper itself: per request one header map copied, no URL parsed. reqwest's redirect
    /// layer parses the URL twice per request even with redirects off; measured on 200k
    /// requests to the sandbox, hyper used 1.2 s of user CPU where reqwest used 2.1 s.
    Direct {
        client: HyperClient,
        uri: hyper::Uri,
        headers: HeaderMap,
        timeout: Duration,
    },
    /// Through a proxy named in the environment (`HTTPS_PROXY`, `ALL_PROXY`, …): reqwest,
    /// which speaks to proxies.
    Proxied(reqwest::Client),
}

/// A URL as the tool prints it: without the user name and password it may carry.
pub fn shown(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// Whether a URL names this machine: `localhost`, 127.0.0.0/8 or `::1`.
pub fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Checks `--base-url`: https anywhere, plain http only to a loopback host (the token would
/// otherwise cross the network in clear).
pub fn check_base_url(base: &str) -> Result<reqwest::Url> {
    let url = reqwest::Url::parse(base.trim_end_matches('/')).with_context(|| {
        format!(
            "--base-url {base} is not a URL: expected such as https://services.leadconnectorhq.com"
        )
    })?;
    match url.scheme() {
        "https" => {}
        "http" => {
            if !is_loopback(&url) {
                bail!(
                    "--base-url {base}: plain http:// would send the token in clear; use https://, or http:// only to a loopback address (127.0.0.1, ::1, localhost)"
                );
            }
        }
        other => bail!("--base-url {base}: scheme '{other}' is not http or https"),
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!(
            "--base-url {base}: expected only scheme, host and path, with no ?query or #fragment"
        );
    }
    Ok(url)
}

/// The reqwest client of a run, for lookups, the token endpoint and messages behind a proxy:
/// rustls (ring), `headers` on every request (the token is added per request, marked
/// sensitive, by the caller), a pooled keep-alive connection per slot of `pool`, and no
/// redirects.
pub(crate) fn api_client(
    timeout: Duration,
    pool: usize,
    headers: HeaderMap,
) -> Result<reqwest::Client> {
    // reqwest is built without a default TLS crypto provider; ring is the lean one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .default_headers(request_headers(headers))
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(pool)
        .tcp_nodelay(true)
        // A redirect of a POST would replay it elsewhere (or drop it): answer it as it is.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")
}

impl Sender {
    /// A sender posting to `base` + the inbound path, with the `Version` header, a per-request
    /// `timeout` and up to `concurrency` kept-alive connections (the token comes with each
    /// body: it may be renewed during the run).
    pub fn new(
        base: &reqwest::Url,
        api_version: &str,
        timeout: Duration,
        concurrency: usize,
    ) -> Result<Sender> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Version",
            HeaderValue::from_str(api_version)
                .context("--api-version is not a valid header value")?,
        );
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let url = base
            .join(&format!(
                "{}{INBOUND_PATH}",
                base.path().trim_end_matches('/')
            ))
            .context("joining the base URL and the endpoint path")?;
        let uri: hyper::Uri = url
            .as_str()
            .parse()
            .context("the endpoint URL is not a valid URI")?;
        let proxied = hyper_util::client::proxy::matcher::Matcher::from_env()
            .intercept(&uri)
            .is_some();
        let client = if proxied {
            Client::Proxied(api_client(timeout, concurrency, headers)?)
        } else {
            Client::Direct {
                client: hyper_client(timeout, concurrency)?,
                uri,
                headers: request_headers(headers),
                timeout,
            }
        };
        Ok(Sender { client, url })
    }

    /// The full URL of the inbound endpoint that bodies are posted to.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// Posts one body with `bearer` (an `Authorization` value marked sensitive) and says what
    /// came of it.
    pub async fn post(&self, body: Bytes, bearer: &HeaderValue) -> (Attempt, ServerLimits) {
        match &self.client {
            Client::Direct {
                client,
                uri,
                headers,
                timeout,
            } => {
                let mut request = hyper::Request::new(Full::new(body));
                *request.method_mut() = hyper::Method::POST;
                *request.uri_mut() = uri.clone();
                *request.headers_mut() = headers.clone();
                request.headers_mut().insert(AUTHORIZATION, bearer.clone());
                // One deadline for the answer and its body, as reqwest's `timeout` was.
                let deadline = tokio::time::Instant::now() + *timeout;
                let response =
                    match tokio::time::timeout_at(deadline, client.request(request)).await {
                        Err(_) => {
                            return (
                                Attempt::NoAnswer("no answer within --timeout".into()),
                                ServerLimits::default(),
                            );
                        }
                        Ok(Err(e)) => {
                            return (
                                transport_error(&e, e.is_connect(), false),
                                ServerLimits::default(),
                            );
                        }
                        Ok(Ok(response)) => response,
                    };
                let (parts, body) = response.into_parts();
                let body = match tokio::time::timeout_at(deadline, body.collect()).await {
                    Err(_) => Err("no answer within --timeout".to_string()),
                    Ok(collected) => collected.map(|b| b.to_bytes()).map_err(|e| error_chain(&e)),
                };
                answered(parts.status.as_u16(), &parts.headers, body)
            }
            Client::Proxied(client) => {
                let response = match client
                    .post(self.url.clone())
                    .header(AUTHORIZATION, bearer.clone())
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        return (
                            transport_error(&e, e.is_connect(), e.is_timeout()),
                            ServerLimits::default(),
                        );
                    }
                };
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body = response.bytes().await.map_err(|e| error_chain(&e));
                answered(status, &headers, body)
            }
        }
    }
}

/// The HTTP client of the message path: rustls (ring) with the platform's certificate
/// verifier, as reqwest builds it; HTTP/1.1; a pooled keep-alive connection per slot.
fn hyper_client(timeout: Duration, pool: usize) -> Result<HyperClient> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()));
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
        .context("loading the system's TLS certificate verifier")?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("configuring TLS")?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(15)));
    let connector = TimedConnector {
        inner: hyper_rustls::HttpsConnector::from((http, tls)),
        // Within --timeout, so a connection that cannot be made ends as one (retried), not
        // as a request without an answer.
        limit: (timeout * 9 / 10).min(Duration::from_secs(10)),
    };
    // No redirects: hyper's client follows none (a redirect of a POST would replay it).
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(pool)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector),
    )
}

/// Every request's headers, for both clients: `headers`, JSON, the user agent (the token is
/// added per request).
fn request_headers(mut headers: HeaderMap) -> HeaderMap {
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("lc-import/", env!("CARGO_PKG_VERSION"))),
    );
    headers
}

/// An answer (a status came), with the limits its headers announce.
fn answered(
    status: u16,
    headers: &HeaderMap,
    body: Result<Bytes, String>,
) -> (Attempt, ServerLimits) {
    let limits = server_limits(headers);
    let retry_after = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
        .map(Duration::from_secs);
    let body = match body {
        Ok(b) => b.to_vec(),
        // The status came, the body was cut: for a 2xx the message may be stored.
        Err(e) if (200..300).contains(&status) => {
            return (
                Attempt::NoAnswer(format!("HTTP {status} but the body was cut: {e}")),
                limits,
            );
        }
        Err(_) => Vec::new(),
    };
    (
        Attempt::Answered {
            status,
            body,
            retry_after,
            daily_remaining: limits.daily_remaining,
            interval: limits.interval,
        },
        limits,
    )
}

/// A connect failure happened before anything was written; anything else may have been.
fn transport_error(
    e: &(dyn std::error::Error + 'static),
    is_connect: bool,
    is_timeout: bool,
) -> Attempt {
    if is_connect && is_tls(e) {
        // rustls words such as "received corrupt message of type InvalidContentType" do not
        // say what went wrong in the user's terms.
        Attempt::NotConnected(format!(
            "TLS handshake failed (is the server speaking https, with a valid certificate for this host?): {}",
            error_chain(e)
        ))
    } else if is_connect {
        Attempt::NotConnected(error_chain(e))
    } else if is_timeout {
        Attempt::NoAnswer("no answer within --timeout".into())
    } else if error_chain(e).contains("error writing a body") {
        // The server closed the connection while the body was going out: it never had the
        // whole request, so it stored nothing (bug: such rows were `unknown`).
        Attempt::NotConnected(format!(
            "the request body could not be written whole, so nothing was stored: {}",
            error_chain(e)
        ))
    } else {
        Attempt::NoAnswer(error_chain(e))
    }
}

/// Whether a rustls error is among the causes (it sits inside an `io::Error`, whose `source`
/// skips it, so look inside each `io::Error` too).
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    let inside_io = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .is_some_and(|inner| is_tls(inner));
    inside_io || e.source().is_some_and(is_tls)
}

/// The error and its causes on one line, without the URL (which is the same for every row).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![];
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            (
                "https://services.leadconnectorhq.com",
                Ok("https://services.leadconnectorhq.com/"),
            ),
            (
                "https://api.example.com/v2/",
                Ok("https://api.example.com/v2"),
            ),
            ("http://127.0.0.1:8787", Ok("http://127.0.0.1:8787/")),
            ("http://localhost:9000", Ok("http://localhost:9000/")),
            ("http://[::1]:9000", Ok("http://[::1]:9000/")),
            (
                "http://services.leadconnectorhq.com",
                Err("plain http:// would send the token in clear"),
            ),
            ("http://10.0.0.5:80", Err("plain http://")),
            ("ftp://example.com", Err("scheme 'ftp'")),
            ("services.leadconnectorhq.com", Err("is not a URL")),
            ("https://example.com/?x=1", Err("no ?query")),
        ];
        for (input, want) in cases {
            match (check_base_url(input), want) {
                (Ok(url), Ok(w)) => assert_eq!(url.as_str(), *w),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{input}: {e}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_endpoint_is_joined_below_the_base_path() {
        for (base, want) in [
            (
                "https://services.leadconnectorhq.com",
                "https://services.leadconnectorhq.com/conversations/messages/inbound",
            ),
            (
                "https://proxy.example.com/lc/",
                "https://proxy.example.com/lc/conversations/messages/inbound",
            ),
        ] {
            let url = check_base_url(base).unwrap();
            let s = Sender::new(&url, "2021-07-28", Duration::from_secs(1), 1).unwrap();
            assert_eq!(s.url().as_str(), want);
        }
    }
}
