//! The sandbox seen from a client: a real server on port 0, reqwest over loopback, and the real
//! binary for the foreground command.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lc_import::rate::Rate;
use lc_import::sandbox::{self, Sandbox, SandboxConfig, Stats};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const TOKEN: &str = "sandbox-token";
const TYPES: &str = "type must be one of the following values: SMS, RCS, Email, WhatsApp, GMB, \
    IG, FB, Custom, WebChat, Live_Chat, Call, IVR_Call, Campaign_Call, Campaign_VoiceMail, \
    TIKTOK, ALL_IN_ONE_CHAT, FORM_SUBMISSION";

use crate::fixture::start;

/// A client for the sandbox over loopback (also for `readback`).
pub fn client() -> reqwest::Client {
    // reqwest is built with `rustls-no-provider`: even a plain-http client needs a crypto
    // provider installed first. Another test may have installed it already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        // A proxy from the environment must not sit between the test and the sandbox.
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client builds")
}

pub(crate) fn sms() -> Value {
    json!({
        "type": "SMS",
        "conversationId": "ve9EPM428h8vShlRW1KT",
        "contactId": "q7Xk2LmN4pR8sT1vW3yZ",
        "message": "Hello from the old CRM",
        "direction": "inbound",
        "date": "2024-05-01T10:00:00Z",
    })
}

/// `sms()` with `changes` merged in; a null value removes the key.
fn sms_with(changes: Value) -> Value {
    let mut body = sms();
    let map = body.as_object_mut().expect("sms() is an object");
    for (k, v) in changes.as_object().expect("changes are an object") {
        if v.is_null() {
            map.remove(k);
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
    body
}

/// One answer, read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} answered a body that is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<u64> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII").parse().expect("a number"))
    }

    /// The body without its `traceId`, after checking it has one.
    fn json_without_trace(&self) -> Value {
        let mut body = self.json();
        let trace = body
            .as_object_mut()
            .and_then(|m| m.remove("traceId"))
            .unwrap_or_else(|| panic!("no traceId in {}", self.json()));
        assert!(trace.as_str().is_some_and(|t| t.len() == 36), "{trace}");
        body
    }
}

/// A request to the inbound endpoint with the right token, `Version` and content type. (reqwest
/// appends headers: build the request by hand to send other values of these.)
fn inbound(client: &reqwest::Client, sandbox: &Sandbox) -> reqwest::RequestBuilder {
    client
        .post(format!("{}{}", sandbox.base_url(), sandbox::INBOUND_PATH))
        .bearer_auth(TOKEN)
        .header("Version", "2021-04-15")
        .header("Content-Type", "application/json")
}

async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("an answer");
    Reply {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("the body").to_vec(),
    }
}

async fn post(client: &reqwest::Client, sandbox: &Sandbox, body: &Value) -> Reply {
    send(inbound(client, sandbox).body(body.to_string())).await
}

fn record_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("record file")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("record line {l:?}: {e}")))
        .collect()
}

fn assert_id(v: &Value) {
    let id = v.as_str().unwrap_or_else(|| panic!("{v} is not a string"));
    assert_eq!(id.len(), 20, "{id}");
    assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
}

#[tokio::test]
async fn a_valid_message_is_stored_and_answered_with_fresh_ids() {
    let sandbox = start(SandboxConfig::unlimited()).await;
    let client = client();
    let a = post(&client, &sandbox, &sms()).await;
    let b = post(&client, &sandbox, &sms()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-type"], "application/json; charset=utf-8");
    let body = a.json_without_trace();
    let keys: HashSet<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from([
            "success",
            "conversationId",
            "messageId",
            "message",
            "contactId",
            "dateAdded"
        ])
    );
    assert_eq!(body["success"], true);
    assert_eq!(body["message"], "Message queued successfully.");
    assert_eq!(body["conversationId"], "ve9EPM428h8vShlRW1KT");
    assert_eq!(body["contactId"], "q7Xk2LmN4pR8sT1vW3yZ");
    assert_id(&body["messageId"]);
    let added: jiff::Timestamp = body["dateAdded"]
        .as_str()
        .expect("string")
        .parse()
        .expect("RFC 3339");
    // `--backdate on` (the default): the message is dated as the body says.
    assert_eq!(
        added,
        "2024-05-01T10:00:00Z"
            .parse::<jiff::Timestamp>()
            .expect("date")
    );
    assert_ne!(body["messageId"], b.json()["messageId"], "IDs are fresh");
    // Unlimited still sends the five headers, saying there is plenty left.
    for name in [
        "x-ratelimit-limit-daily",
        "x-ratelimit-daily-remaining",
        "x-ratelimit-max",
        "x-ratelimit-remaining",
    ] {
        assert_eq!(a.header(name), Some(u64::from(u32::MAX)), "{name}");
    }
    assert_eq!(a.header("x-ratelimit-interval-milliseconds"), Some(10_000));
    assert!(!a.headers.contains_key("retry-after"));
    let stats = sandbox.stats();
    assert_eq!((stats.requests, stats.accepted), (2, 2));
    assert_eq!(stats.daily_remaining, None);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn email_answers_carry_an_email_message_id() {
    let sandbox = start(SandboxConfig::unlimited()).await;
    let client = client();
    let email = sms_with(json!({"type": "Email", "subject": "Re: quote", "emailTo": "a@b.test"}));
    let reply = post(&client, &sandbox, &email).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_id(&body["emailMessageId"]);
    assert_ne!(body["emailMessageId"], body["messageId"]);
    let sms = post(&client, &sandbox, &sms()).await.json();
    assert!(sms.get("emailMessageId").is_none(), "{sms}");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn custom_without_provider_is_201_empty_and_stores_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let record = dir.path().join("record.jsonl");
    let sandbox = start(SandboxConfig {
        record: Some(record.clone()),
        ..SandboxConfig::unlimited()
    })
    .await;
    let client = client();
    let reply = post(&client, &sandbox, &sms_with(json!({"type": "Custom"}))).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert!(reply.body.is_empty(), "{:?}", reply.body);
    assert!(reply.headers.contains_key("x-ratelimit-remaining"));
    let stats = sandbox.stats();
    assert_eq!((stats.empty_201, stats.accepted), (1, 0));
    assert_eq!(record_lines(&record).len(), 0);

    // With a provider, Custom is an ordinary stored message.
    let with_provider = sms_with(json!({"type": "Custom", "conversationProviderId": "p1"}));
    assert_eq!(
        post(&client, &sandbox, &with_provider).await.status,
        StatusCode::OK
    );
    assert_eq!(record_lines(&record).len(), 1);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_401_and_spends_no_budget() {
    let sandbox = start(SandboxConfig {
        daily: Some(2),
        ..SandboxConfig::unlimited()
    })
    .await;
    let client = client();
    let url = format!("{}{}", sandbox.base_url(), sandbox::INBOUND_PATH);
    let attempts = [
        client.post(&url),
        client.post(&url).bearer_auth("not-the-token"),
        client.post(&url).header("Authorization", TOKEN),
    ];
    for request in attempts {
        let reply = send(
            request
                .header("Version", "2021-04-15")
                .header("Content-Type", "application/json")
                .body(sms().to_string()),
        )
        .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            reply.json_without_trace(),
            json!({
                "statusCode": 401,
                "message": "Invalid token: access token is invalid",
                "error": "Unauthorized",
            })
        );
        assert_eq!(reply.header("x-ratelimit-daily-remaining"), Some(2));
    }
    assert_eq!(post(&client, &sandbox, &sms()).await.status, StatusCode::OK);
    assert_eq!(post(&client, &sandbox, &sms()).await.status, StatusCode::OK);
    let stats = sandbox.stats();
    assert_eq!((stats.unauthorized, stats.accepted), (3, 2));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_unknown_version_is_400() {
    let sandbox = start(SandboxConfig::unlimited()).await;
    let client = client();
    let url = format!("{}{}", sandbox.base_url(), sandbox::INBOUND_PATH);
    let missing = send(
        client
            .post(&url)
            .bearer_auth(TOKEN)
            .header("Content-Type", "application/json")
            .body(sms().to_string()),
    )
    .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        missing.json_without_trace(),
        json!({"statusCode": 400, "message": "version header was not found.", "error": "Bad Request"})
    );
    let unknown = send(
        client
            .post(&url)
            .bearer_auth(TOKEN)
            .header("Version", "2020-01-01")
            .header("Content-Type", "application/json")
            .body(sms().to_string()),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.json()["message"], "version header is invalid");
    for version in sandbox::SUPPORTED_VERSIONS {
        let ok = send(
            client
                .post(&url)
                .bearer_auth(TOKEN)
                .header("Version", version)
                .header("Content-Type", "application/json")
                .body(sms().to_string()),
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK, "Version {version}");
    }
    assert_eq!(sandbox.stats().bad_request, 2);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_400() {
    let sandbox = start(SandboxConfig::unlimited()).await;
    let client = client();
    for (raw, message) in [
        ("{\"type\": \"SMS\",", "Unexpected end of JSON input"),
        ("<message/>", "Unexpected token in JSON at line 1 column 1"),
        ("[1, 2]", "Request body must be a JSON object"),
    ] {
        let reply = send(inbound(&client, &sandbox).body(raw)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{raw}");
        assert_eq!(
            reply.json_without_trace(),
            json!({"statusCode": 400, "message": message, "error": "Bad Request"}),
            "{raw}"
        );
    }
    assert_eq!(sandbox.stats().bad_request, 3);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn invalid_bodies_are_422_with_every_message() {
    let sandbox = start(SandboxConfig::unlimited()).await;
    let client = client();
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            sms_with(json!({"foo": 1})),
            vec!["property foo should not exist"],
        ),
        (
            sms_with(json!({"conversationId": 42})),
            vec!["conversationId must be a string"],
        ),
        (
            sms_with(json!({"attachments": "https://files.test/a.png"})),
            vec![
                "attachments must contain at least 1 elements",
                "attachments must be an array",
            ],
        ),
        (
            sms_with(json!({"attachments": []})),
            vec!["attachments must contain at least 1 elements"],
        ),
        (sms_with(json!({"type": "Fax"})), vec![TYPES]),
        (
            sms_with(json!({"conversationId": null})),
            vec![
                "conversationId should not be empty",
                "conversationId must be a string",
            ],
        ),
        (
            sms_with(json!({"contactId": null})),
            vec![
                "contactId should not be empty",
                "contactId must be a string",
            ],
        ),
        (
            sms_with(json!({"call": {"status": "ringing"}})),
            vec![
                "call.status must be one of the following values: pending, completed, answered, \
                 busy, no-answer, failed, canceled, voicemail",
            ],
        ),
        (
            sms_with(json!({"call": {"to": "+15037081210", "duration": 30}})),
            vec!["call.property duration should not exist"],
        ),
        // Several at once: all listed, unknown properties first.
        (
            sms_with(json!({"type": "Fax", "contactId": 7, "attachments": [], "zzz": true})),
            vec![
                "property zzz should not exist",
                TYPES,
                "attachments must contain at least 1 elements",
                "contactId must be a string",
            ],
        ),
    ];
    for (body, messages) in &cases {
        let reply = post(&client, &sandbox, body).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(
            reply.json_without_trace(),
            json!({"statusCode": 422, "message": messages, "error": "Unprocessable Entity"}),
            "{body}"
        );
    }
    // JSON sent without a JSON content type is not parsed, so every required field is missing.
    let plain = send(
        client
            .post(format!("{}{}", sandbox.base_url(), sandbox::INBOUND_PATH))
            .bearer_auth(TOKEN)
            .header("Version", "2021-04-15")
            .header("Content-Type", "text/plain")
            .body(sms().to_string()),
    )
    .await;
    assert_eq!(plain.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(plain.json()["message"][0], TYPES);
    let stats = sandbox.stats();
    assert_eq!(stats.unprocessable, cases.len() as u64 + 1);
    assert_eq!(stats.accepted, 0);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn the_window_admits_its_max_then_answers_429() {
    let sandbox = start(SandboxConfig {
        rate: Some("100/10s".parse::<Rate>().expect("rate")),
        retry_after: true,
        ..SandboxConfig::unlimited()
    })
    .await;
    let client = client();
    let mut remaining = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..101 {
        let reply = post(&client, &sandbox, &sms()).await;
        assert_eq!(reply.header("x-ratelimit-max"), Some(100));
        assert_eq!(
            reply.header("x-ratelimit-interval-milliseconds"),
            Some(10_000)
        );
        remaining.push(reply.header("x-ratelimit-remaining").expect("header"));
        match reply.status {
            StatusCode::OK => assert!(!reply.headers.contains_key("retry-after")),
            StatusCode::TOO_MANY_REQUESTS => refused.push(reply),
            other => panic!("unexpected {other}"),
        }
    }
    let want: Vec<u64> = (0..100).rev().chain([0]).collect();
    assert_eq!(remaining, want);
    assert_eq!(refused.len(), 1);
    let reply = &refused[0];
    assert_eq!(
        reply.json_without_trace(),
        json!({"statusCode": 429, "message": "Too Many Requests", "error": "Too Many Requests"})
    );
    let wait = reply.header("retry-after").expect("Retry-After");
    assert!((1..=10).contains(&wait), "Retry-After {wait}");
    let stats = sandbox.stats();
    assert_eq!((stats.accepted, stats.rate_limited), (100, 1));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn without_retry_after_a_429_has_no_retry_after() {
    let sandbox = start(SandboxConfig {
        rate: Some("1/1h".parse::<Rate>().expect("rate")),
        ..SandboxConfig::unlimited()
    })
    .await;
    let client = client();
    assert_eq!(post(&client, &sandbox, &sms()).await.status, StatusCode::OK);
    let reply = post(&client, &sandbox, &sms()).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!reply.headers.contains_key("retry-after"));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn the_daily_budget_runs_out_and_429s_spend_none_of_it() {
    let sandbox = start(SandboxConfig {
        daily: Some(5),
        ..SandboxConfig::unlimited()
    })
    .await;
    let client = client();
    let mut daily_remaining = Vec::new();
    for _ in 0..5 {
        let reply = post(&client, &sandbox, &sms()).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-ratelimit-limit-daily"), Some(5));
        daily_remaining.push(reply.header("x-ratelimit-daily-remaining").expect("header"));
    }
    assert_eq!(daily_remaining, [4, 3, 2, 1, 0]);
    for _ in 0..2 {
        let reply = post(&client, &sandbox, &sms()).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.header("x-ratelimit-daily-remaining"), Some(0));
    }
    let stats = sandbox.stats();
    assert_eq!((stats.accepted, stats.rate_limited), (5, 2));
    assert_eq!(stats.daily_remaining, Some(0));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn injected_failures_come_at_their_rate_and_store_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let record = dir.path().join("record.jsonl");
    let sandbox = start(SandboxConfig {
        fail_rate: 0.2,
        seed: Some(7),
        record: Some(record.clone()),
        ..SandboxConfig::unlimited()
    })
    .await;
    let client = client();
    let mut failures = 0u64;
    let mut statuses = HashSet::new();
    for _ in 0..2_000 {
        let reply = post(&client, &sandbox, &sms()).await;
        if reply.status.is_server_error() {
            failures += 1;
            statuses.insert(reply.status.as_u16());
            let body = reply.json_without_trace();
            assert_eq!(body["statusCode"], reply.status.as_u16(), "{body}");
        } else {
            assert_eq!(reply.status, StatusCode::OK);
        }
    }
    // 2,000 draws at p = 0.2: mean 400, sigma ~17.9; 4 sigma is 72.
    assert!((328..=472).contains(&failures), "{failures} failures");
    assert_eq!(statuses, HashSet::from([500, 502, 503]));
    let stats = sandbox.stats();
    assert_eq!(stats.server_errors, failures);
    assert_eq!(stats.accepted, 2_000 - failures);
    assert_eq!(record_lines(&record).len() as u64, stats.accepted);
    sandbox.shutdown().await;
}

/// Whether `e` says the request went out and the connection closed before any answer came.
fn closed_without_answer(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(hyper_error) = err.downcast_ref::<hyper::Error>() {
            return hyper_error.is_incomplete_message();
        }
        source = err.source();
    }
    false
}

#[tokio::test]
async fn dropped_requests_are_stored_but_never_answered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let record = dir.path().join("record.jsonl");
    let sandbox = start(SandboxConfig {
        drop_rate: 0.05,
        seed: Some(11),
        record: Some(record.clone()),
        ..SandboxConfig::unlimited()
    })
    .await;
    let client = client();
    let mut dropped = 0u64;
    let mut answered_ids = HashSet::new();
    for i in 0..2_000 {
        let body = sms_with(json!({"message": format!("message {i}")}));
        match inbound(&client, &sandbox)
            .body(body.to_string())
            .send()
            .await
        {
            Ok(response) => {
                assert_eq!(response.status(), StatusCode::OK);
                // `Response::json` needs a reqwest feature this crate does not enable.
                let bytes = response.bytes().await.expect("body");
                let body: Value = serde_json::from_slice(&bytes).expect("JSON body");
                answered_ids.insert(body["messageId"].as_str().expect("id").to_owned());
            }
            Err(e) => {
                assert!(
                    !e.is_timeout() && e.status().is_none() && closed_without_answer(&e),
                    "expected a connection closed without an answer, got {e:?}"
                );
                dropped += 1;
            }
        }
    }
    // 2,000 draws at p = 0.05: mean 100, sigma ~9.7; 4 sigma is 39.
    assert!((61..=139).contains(&dropped), "{dropped} dropped");
    let stats = sandbox.stats();
    // Every request reached the sandbox once: the client did not quietly resend dropped ones.
    assert_eq!(stats.requests, 2_000);
    assert_eq!(stats.dropped, dropped);
    assert_eq!(stats.accepted, 2_000 - dropped);
    let lines = record_lines(&record);
    assert_eq!(lines.len() as u64, stats.accepted + stats.dropped);
    let recorded: HashSet<String> = lines
        .iter()
        .map(|l| l["messageId"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(recorded.len(), lines.len(), "message IDs are unique");
    assert!(answered_ids.is_subset(&recorded));
    assert_eq!(recorded.difference(&answered_ids).count() as u64, dropped);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn the_record_has_one_line_per_stored_message_written_before_the_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let record = dir.path().join("record.jsonl");
    let sandbox = start(SandboxConfig {
        record: Some(record.clone()),
        ..SandboxConfig::unlimited()
    })
    .await;
    let client = client();
    let bodies = [
        sms(),
        sms_with(json!({"type": "Email", "html": "<p>hi</p>", "conversationId": "c2"})),
        sms_with(json!({"attachments": ["https://files.test/a.png"], "message": "line\nbreak"})),
    ];
    for (i, body) in bodies.iter().enumerate() {
        // Pretty-printed on purpose: the record must still hold one line per message.
        let reply = send(
            inbound(&client, &sandbox)
                .body(serde_json::to_string_pretty(body).expect("serialises")),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        // Read right after the answer: the line must already be there.
        let lines = record_lines(&record);
        assert_eq!(lines.len(), i + 1);
        let line = &lines[i];
        assert_eq!(line["messageId"], reply.json()["messageId"]);
        assert_eq!(line["conversationId"], body["conversationId"]);
        assert_eq!(&line["body"], body);
        line["receivedAt"]
            .as_str()
            .expect("string")
            .parse::<jiff::Timestamp>()
            .expect("RFC 3339");
    }
    // Rejected messages are not recorded.
    post(&client, &sandbox, &sms_with(json!({"foo": 1}))).await;
    assert_eq!(record_lines(&record).len() as u64, sandbox.stats().accepted);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let sandbox = start(SandboxConfig {
        latency: Some("50ms..60ms".parse().expect("range")),
        ..SandboxConfig::unlimited()
    })
    .await;
    let client = client();
    for _ in 0..3 {
        let started = Instant::now();
        let reply = post(&client, &sandbox, &sms()).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "{:?}",
            started.elapsed()
        );
    }
    sandbox.shutdown().await;
}

#[tokio::test]
async fn concurrent_requests_raise_the_peak() {
    let sandbox = start(SandboxConfig {
        latency: Some("200ms..250ms".parse().expect("range")),
        ..SandboxConfig::unlimited()
    })
    .await;
    let client = client();
    let url = format!("{}{}", sandbox.base_url(), sandbox::INBOUND_PATH);
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let request = client
            .post(&url)
            .bearer_auth(TOKEN)
            .header("Version", "2021-04-15")
            .header("Content-Type", "application/json")
            .body(sms().to_string());
        requests.spawn(send(request));
    }
    while let Some(reply) = requests.join_next().await {
        assert_eq!(reply.expect("request task").status, StatusCode::OK);
    }
    let stats = sandbox.stats();
    assert_eq!(stats.accepted, 8);
    // Eight requests, each held at least 200 ms, all sent at once.
    assert!(stats.peak_concurrent >= 2, "peak {}", stats.peak_concurrent);
    assert!(stats.peak_concurrent <= 8, "peak {}", stats.peak_concurrent);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn dates_going_back_within_a_conversation_are_counted() {
    let sandbox = start(SandboxConfig::unlimited()).await;
    let client = client();
    let sequence = [
        ("a", Some("2024-05-01T10:00:00Z")),
        ("b", Some("2024-05-01T08:00:00Z")), // another conversation: not compared with a
        ("a", Some("2024-05-01T09:00:00Z")), // back in time
        ("a", None),                         // no date: not compared
        ("a", Some("2024-05-01T11:00:00+02:00")), // 09:00Z, equal to the previous: in order
        ("b", Some("2024-05-01T07:59:59Z")), // back in time
    ];
    for (conversation, date) in sequence {
        let body = sms_with(json!({"conversationId": conversation, "date": date}));
        assert_eq!(post(&client, &sandbox, &body).await.status, StatusCode::OK);
    }
    assert_eq!(sandbox.stats().out_of_order, 2);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn stats_are_served_and_not_counted() {
    let sandbox = start(SandboxConfig {
        daily: Some(10),
        ..SandboxConfig::unlimited()
    })
    .await;
    let client = client();
    post(&client, &sandbox, &sms()).await;
    post(&client, &sandbox, &sms_with(json!({"type": "Fax"}))).await;
    let url = format!("{}/__stats", sandbox.base_url());
    let first: Stats = serde_json::from_slice(&send(client.get(&url)).await.body).expect("Stats");
    let second: Stats = serde_json::from_slice(&send(client.get(&url)).await.body).expect("Stats");
    assert_eq!(first, second, "reading the stats changes nothing");
    assert_eq!(first, sandbox.stats());
    assert_eq!(
        first,
        Stats {
            requests: 2,
            accepted: 1,
            unprocessable: 1,
            peak_concurrent: 1,
            daily_remaining: Some(8),
            ..Stats::default()
        }
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_are_404_in_the_api_shape() {
    let sandbox = start(SandboxConfig::unlimited()).await;
    let client = client();
    let reply = send(client.get(format!(
        "{}/conversations/messages/inbound",
        sandbox.base_url()
    )))
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        reply.json_without_trace(),
        json!({
            "statusCode": 404,
            "message": "Cannot GET /conversations/messages/inbound",
            "error": "Not Found",
        })
    );
    assert!(reply.headers.contains_key("x-ratelimit-remaining"));
    assert_eq!(sandbox.stats().requests, 1);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn only_loopback_addresses_are_served() {
    let refused = sandbox::start(
        SandboxConfig::unlimited(),
        "0.0.0.0:0".parse().expect("address"),
    )
    .await;
    let message = format!("{:#}", refused.err().expect("refused"));
    assert!(message.contains("loopback"), "{message}");
}

#[tokio::test]
async fn after_shutdown_nothing_is_served() {
    let sandbox = start(SandboxConfig::unlimited()).await;
    let client = client();
    let url = sandbox.base_url();
    assert_eq!(post(&client, &sandbox, &sms()).await.status, StatusCode::OK);
    sandbox.shutdown().await;
    let err = client
        .post(format!("{url}{}", sandbox::INBOUND_PATH))
        .send()
        .await
        .expect_err("nothing listens any more");
    assert!(err.is_connect(), "{err:?}");
}

/// The real binary's outcome, with everything it printed for the failure message.
fn describe(stdout: &str, stderr: &str) -> String {
    format!("--- stdout\n{stdout}\n--- stderr\n{stderr}")
}

#[tokio::test]
async fn the_binary_serves_until_sigterm_then_exits_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let record = dir.path().join("record.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lc-import"))
        .args(["sandbox", "--listen", "127.0.0.1:0", "--record"])
        .arg(&record)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("a line on stdout");
    let url = line
        .trim()
        .strip_prefix("sandbox listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let reply = send(
        client()
            .post(format!("{url}{}", sandbox::INBOUND_PATH))
            .bearer_auth(TOKEN)
            .header("Version", "2021-07-28")
            .header("Content-Type", "application/json")
            .body(sms().to_string()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    // The CLI's default limits are the real API's.
    assert_eq!(reply.header("x-ratelimit-max"), Some(100));
    assert_eq!(reply.header("x-ratelimit-limit-daily"), Some(200_000));

    let pid = child.id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    // Wait on another thread so a sandbox that ignores SIGTERM fails the test instead of hanging it.
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let status = child.wait();
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let _ = done.send((status, rest, stderr));
    });
    let (status, rest, stderr) = exited
        .recv_timeout(Duration::from_secs(20))
        .expect("the sandbox exits after SIGTERM");
    let status = status.expect("wait");
    assert_eq!(status.code(), Some(0), "{}", describe(&rest, &stderr));
    assert_eq!(record_lines(&record).len(), 1);
}

#[test]
fn the_binary_refuses_a_non_loopback_address_with_exit_2() {
    let output = Command::new(env!("CARGO_BIN_EXE_lc-import"))
        .args(["sandbox", "--listen", "0.0.0.0:0"])
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        describe(&stdout, &stderr)
    );
    assert!(
        stderr.contains("loopback"),
        "{}",
        describe(&stdout, &stderr)
    );
    assert!(stdout.is_empty(), "{}", describe(&stdout, &stderr));
}
