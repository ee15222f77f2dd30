//! OAuth tokens that refresh themselves, and agency tokens (issue 16, items 1 and 2): runs of the
//! real binary with `--token-file` holding the token endpoint's JSON, against a sandbox whose
//! access tokens expire after a few seconds and whose refresh tokens are single-use.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use lc_import::sandbox::{OAuth, SandboxConfig};
use serde_json::{Value, json};

use crate::scenario::{RESULTS, Scenario};
use crate::support;

const CLIENT_ID: &str = "client-Distinctive-4c1d";
const CLIENT_SECRET: &str = "secret-Distinctive-77ab";
/// The access token the file starts with: the sandbox never issued it, so the first requests
/// are answered 401 together.
const STALE: &str = "stale-Distinctive-at-0f3e";
const FIRST_REFRESH: &str = "refresh-Distinctive-5d2a";
const COMPANY_REFRESH: &str = "company-Distinctive-9b7c";
const LOCATION: &str = "locOAuth000000000001";
const COMPANY: &str = "compOAuth00000000001";

fn oauth(ttl: u64) -> OAuth {
    OAuth {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        access_ttl: Duration::from_secs(ttl),
        refresh_token: FIRST_REFRESH.into(),
        company_refresh_token: COMPANY_REFRESH.into(),
        location_id: LOCATION.into(),
        company_id: COMPANY.into(),
        token_delay: None,
    }
}

fn with_oauth(oauth: OAuth) -> impl FnOnce(SandboxConfig) -> SandboxConfig {
    move |c| SandboxConfig {
        oauth: Some(oauth),
        ..c
    }
}

const APP: [(&str, &str); 2] = [
    ("LC_CLIENT_ID", CLIENT_ID),
    ("LC_CLIENT_SECRET", CLIENT_SECRET),
];

/// The token file as the token endpoint's answer, stale access token first.
fn location_token_file() -> String {
    json!({
        "access_token": STALE,
        "token_type": "Bearer",
        "expires_in": 86399,
        "refresh_token": FIRST_REFRESH,
        "scope": "conversations/message.write",
        "userType": "Location",
        "locationId": LOCATION,
        "companyId": COMPANY,
        "userId": "user1",
        "savedBy": "the test",
    })
    .to_string()
}

fn token_file(s: &Scenario) -> Value {
    serde_json::from_str(&std::fs::read_to_string(s.path("token.json")).expect("token file"))
        .expect("token file JSON")
}

/// No secret of the run, nor any token the sandbox issued (`sbx-at-…`, `sbx-rt-…`), in `text`.
fn assert_no_secret(what: &str, text: &str) {
    for secret in [
        CLIENT_SECRET,
        STALE,
        FIRST_REFRESH,
        COMPANY_REFRESH,
        "sbx-at-",
        "sbx-rt-",
    ] {
        assert!(!text.contains(secret), "{secret} is in {what}:\n{text}");
    }
}

/// No secret in the run's stdout, its stderr, or the results file.
fn assert_no_secret_in_output(s: &Scenario, out: &support::Output) {
    assert_no_secret("stdout", &out.stdout);
    assert_no_secret("stderr", &out.stderr);
    assert_no_secret("the results file", &s.w.read(RESULTS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_that_expire_every_two_seconds_are_refreshed_and_every_row_is_stored_once() {
    let s = Scenario::with(support::export(300, 30), with_oauth(oauth(2))).await;
    s.w.write("token.json", location_token_file());
    // 300 rows at 40/s: about 7.5 s, so the 2-second tokens expire three times or more.
    let out = s
        .run_with(
            &[
                "--token-file",
                "token.json",
                "--rate",
                "40/s",
                "-vv",
                "--summary-json",
                "summary.json",
            ],
            &APP,
        )
        .await;
    out.expect_code(0);
    s.assert_each_stored_once(300);
    s.assert_all_sent(300);
    let stats = s.stats();
    // The first 8 requests carried the stale token and were refused together: one refresh
    // served them all (a second would have spent a spent refresh token, and been refused).
    assert_eq!(stats.token_refused, 0, "{stats:?}");
    assert!(stats.unauthorized >= 1, "{stats:?}");
    assert!(
        (4..=10).contains(&stats.token_refreshes),
        "a refresh at the start and about every 1.8 s after: {stats:?}{out:?}"
    );
    // Every 401 was replayed: the sandbox stored each row once, so no 401 was lost or doubled.
    assert_eq!(stats.accepted, 300, "{stats:?}");
    eprintln!(
        "refreshes {}, 401s {}, requests {}",
        stats.token_refreshes, stats.unauthorized, stats.requests
    );

    assert!(
        out.stdout.contains(&format!(
            "tokens        {} refreshed",
            stats.token_refreshes
        )),
        "{out:?}"
    );

    let summary: Value = serde_json::from_str(&s.w.read("summary.json")).expect("summary JSON");
    assert_eq!(
        summary["requests"]["token_refreshes"],
        stats.token_refreshes
    );
    assert_no_secret("the summary JSON", &s.w.read("summary.json"));

    // The file holds the live pair, mode 0600, every other field kept.
    let file = token_file(&s);
    let live = file["refresh_token"].as_str().expect("a refresh token");
    assert!(s.sb().refresh_token_is_live(live), "{live}");
    assert_ne!(live, FIRST_REFRESH);
    assert_eq!(file["userType"], "Location");
    assert_eq!(
        file["savedBy"], "the test",
        "fields the answer has not are kept"
    );
    assert!(file["expires_at"].as_f64().is_some(), "{file}");
    let mode = std::fs::metadata(s.path("token.json"))
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // No temp file left beside it.
    let left: Vec<_> = std::fs::read_dir(s.path(""))
        .expect("work dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".lc-import-token-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // No token, no secret in stdout, in stderr at -vv, in the results file.
    assert!(
        out.stderr.contains("refreshing the access token"),
        "{out:?}"
    );
    assert_no_secret_in_output(&s, &out);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_stops_the_run_cleanly_and_says_what_to_do() {
    let s = Scenario::with(support::export(40, 4), with_oauth(oauth(60))).await;
    // A refresh token the sandbox never issued (or one already spent).
    s.w.write(
        "token.json",
        location_token_file().replace(FIRST_REFRESH, "refresh-Distinctive-dead"),
    );
    let out = s
        .run_with(&["--token-file", "token.json", "-vv"], &APP)
        .await;
    out.expect_code(3);
    assert!(
        out.stdout
            .contains("the token endpoint refused to refresh the access token"),
        "{out:?}"
    );
    assert!(out.stdout.contains("authorise the app again"), "{out:?}");
    let stats = s.stats();
    assert_eq!(stats.accepted, 0, "{stats:?}");
    // One refresh was tried, however many requests saw the 401.
    assert_eq!(
        (stats.token_requests, stats.token_refused),
        (1, 1),
        "{stats:?}"
    );
    assert!(!out.stdout.contains("refresh-Distinctive-dead"), "{out:?}");
    assert!(!out.stderr.contains("refresh-Distinctive-dead"), "{out:?}");
    assert_no_secret("stdout", &out.stdout);
    // The rows that saw the 401 are recorded failed, not stored; the next run sends them.
    let statuses = s.statuses();
    assert!(statuses.keys().all(|k| k == "failed"), "{statuses:?}");

    // Without the app's credentials, the file's token is used as it is, and its 401 says so.
    let out = s.run(&["--token-file", "token.json"]).await;
    out.expect_code(3);
    assert!(out.stderr.contains("LC_CLIENT_ID"), "{out:?}");
    assert!(out.stdout.contains("rejected the token"), "{out:?}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_a_refresh_leaves_a_token_file_that_works() {
    let mut config = oauth(3600);
    config.token_delay = Some(Duration::from_secs(3));
    let s = Scenario::with(support::export(100, 10), with_oauth(config)).await;
    s.w.write("token.json", location_token_file());
    let before = s.w.read("token.json");
    let mut run = s.invoke(&["--token-file", "token.json"]);
    for (k, v) in APP {
        run = run.env(k, v);
    }
    let child = run.spawn_logged("killed.log");
    // The refresh is on its way: the sandbox holds it for 3 s.
    crate::fixture::wait_for(
        "the refresh to reach the sandbox",
        Duration::from_secs(20),
        || s.stats().token_requests >= 1,
    )
    .await;
    let pid = child.id();
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    crate::scenario::wait(child).await;
    // The file is as it was: its refresh token was never spent.
    assert_eq!(s.w.read("token.json"), before);
    let stats = s.stats();
    assert_eq!((stats.accepted, stats.token_refreshes), (0, 0), "{stats:?}");

    // The same command with the same file finishes the import.
    let out = s.run_with(&["--token-file", "token.json"], &APP).await;
    out.expect_code(0);
    s.assert_each_stored_once(100);
    let stats = s.stats();
    assert_eq!(
        (stats.token_refreshes, stats.token_refused),
        (1, 0),
        "{stats:?}"
    );
    let live = token_file(&s)["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert!(s.sb().refresh_token_is_live(&live));
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agency_token_is_exchanged_for_the_location_token() {
    let s = Scenario::with(support::export(120, 12), with_oauth(oauth(2))).await;
    // An agency token the sandbox never issued: the first exchange is refused with 401, the
    // company token is refreshed, then exchanged.
    s.w.write(
        "token.json",
        json!({
            "access_token": STALE,
            "expires_in": 86399,
            "refresh_token": COMPANY_REFRESH,
            "userType": "Company",
            "companyId": COMPANY,
            "userId": "user1",
        })
        .to_string(),
    );
    // Without --location-id the run cannot know which location to import into.
    let out = s.run_with(&["--token-file", "token.json"], &APP).await;
    out.expect_code(2);
    assert!(out.stderr.contains("--location-id"), "{out:?}");

    let out = s
        .run_with(
            &[
                "--token-file",
                "token.json",
                "--location-id",
                LOCATION,
                "--rate",
                "30/s",
                "-vv",
            ],
            &APP,
        )
        .await;
    out.expect_code(0);
    s.assert_each_stored_once(120);
    let stats = s.stats();
    assert_eq!(
        stats.token_refused, 1,
        "the stale agency token's exchange: {stats:?}"
    );
    // 120 rows at 30/s: 4 s, so the 2-second location token was exchanged again.
    assert!(stats.location_tokens >= 2, "{stats:?}");
    assert!(stats.token_refreshes >= 1, "{stats:?}");
    let file = token_file(&s);
    assert_eq!(file["userType"], "Company");
    assert!(
        s.sb()
            .refresh_token_is_live(file["refresh_token"].as_str().expect("rt"))
    );
    assert!(
        out.stderr.contains("exchanging the agency token"),
        "{out:?}"
    );
    assert_no_secret_in_output(&s, &out);
    // The location token lives in memory only: the file holds the agency's.
    assert!(file.get("locationId").is_none(), "{file}");
    s.finish().await;
}
