//! Read-back (issue 13): the sandbox's read endpoints, rows in doubt settled by reading their
//! conversation back (`run --verify-unknown`), ambiguous 5xx checked before a retry, and
//! `verify`. Real binary, real sockets; the sandbox's record is the ground truth of what was
//! stored.

use std::collections::HashMap;
use std::time::Duration;

use lc_import::sandbox::SandboxConfig;
use serde_json::Value;

use crate::scenario::Scenario;
use crate::support;

/// `GET base+path` with the sandbox's token; the status and the JSON body.
async fn get(base: &str, path: &str) -> (u16, Value) {
    let r = crate::sandbox::client()
        .get(format!("{base}{path}"))
        .header("Authorization", "Bearer sandbox-token")
        .header("Version", "2021-04-15")
        .send()
        .await
        .expect("an answer");
    let status = r.status().as_u16();
    let body = serde_json::from_slice(&r.bytes().await.expect("a body")).expect("JSON");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_serves_what_it_stored_through_the_three_read_endpoints() {
    let s = Scenario::with(support::export(30, 3), |c| SandboxConfig {
        daily: Some(1000),
        ..c
    })
    .await;
    s.run(&[]).await.expect_code(0);
    let base = s.base_url();
    let rows = s.results();
    let requests = s.stats().requests;

    // By ID: the spec's GetMessageResponseDto, flat; dateAdded is the row's date (backdate on).
    let r = &rows[4];
    let (status, m) = get(
        &base,
        &format!("/conversations/messages/{}", r["message_id"]),
    )
    .await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["id"], r["message_id"].as_str());
    assert_eq!(m["body"], "message 4");
    assert_eq!(m["messageType"], "TYPE_SMS");
    assert_eq!(m["direction"], "inbound");
    assert_eq!(m["conversationId"], r["conversation_id"].as_str());
    assert_eq!(m["dateAdded"], "2024-01-01T00:00:04.000Z");
    let (status, _) = get(&base, "/conversations/messages/nosuchmessage0000000").await;
    assert_eq!(status, 404);

    // The conversation's list, nested under `messages` as the real API answers (FACTS §4,
    // #54), newest first, paged back with lastMessageId.
    let conversation = r["conversation_id"].clone();
    let mut seen = Vec::new();
    let mut last: Option<String> = None;
    loop {
        let query = match &last {
            Some(id) => format!("?limit=4&lastMessageId={id}"),
            None => "?limit=4".to_owned(),
        };
        let (status, page) = get(
            &base,
            &format!("/conversations/{conversation}/messages{query}"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let inner = &page["messages"];
        for m in inner["messages"].as_array().expect("a list") {
            seen.push(m["body"].as_str().expect("a body").to_owned());
        }
        if !inner["nextPage"].as_bool().expect("nextPage") {
            break;
        }
        last = inner["lastMessageId"].as_str().map(str::to_owned);
    }
    let want: Vec<String> = (0..30)
        .rev()
        .filter(|i| i % 3 == 4 % 3)
        .map(|i| format!("message {i}"))
        .collect();
    assert_eq!(seen, want, "newest first, every message once");

    // The export: a date window, cursor paging, limit 10–500.
    let path = format!(
        "/conversations/messages/export?locationId=L1&conversationId={conversation}&startDate=2024-01-01T00:00:10Z&endDate=2024-01-01T00:00:25Z&limit=10"
    );
    let (status, page) = get(&base, &path).await;
    assert_eq!(status, 200, "{page}");
    // Rows 10, 13, 16, 19, 22 and 25 are this conversation's between those dates.
    assert_eq!(page["total"], 6, "{page}");
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(6));
    assert!(page["nextCursor"].is_null(), "{page}");
    let (status, page) = get(
        &base,
        "/conversations/messages/export?locationId=L1&limit=10",
    )
    .await;
    assert_eq!((status, page["total"].as_u64()), (200, Some(30)));
    let cursor = page["nextCursor"].as_str().expect("a cursor").to_owned();
    let (_, next) = get(
        &base,
        &format!("/conversations/messages/export?locationId=L1&limit=10&cursor={cursor}"),
    )
    .await;
    let ids = |p: &Value| -> Vec<String> {
        p["messages"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_owned())
            .collect()
    };
    assert!(
        ids(&page).iter().all(|id| !ids(&next).contains(id)),
        "pages do not overlap"
    );
    let (status, refused) = get(
        &base,
        "/conversations/messages/export?locationId=L1&limit=5",
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    let (status, _) = get(&base, "/conversations/messages/export?limit=50").await;
    assert_eq!(status, 422, "locationId is required");

    // Reads are counted, and spend the daily budget like any request.
    let stats = s.stats();
    assert_eq!(stats.reads_by_id, 2);
    assert!(
        stats.reads_conversation >= 3 && stats.reads_export >= 3,
        "{stats:?}"
    );
    let made = stats.requests - requests;
    assert_eq!(
        stats.daily_remaining,
        Some(1000 - stats.requests),
        "{stats:?}"
    );
    assert!(made >= 10);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_backdate_date_added_is_the_arrival_time() {
    let s = Scenario::with(support::export(3, 1), |c| SandboxConfig {
        backdate: false,
        ..c
    })
    .await;
    let before = jiff::Timestamp::now();
    s.run(&[]).await.expect_code(0);
    let rows: Vec<HashMap<String, String>> = s.results();
    let (_, m) = get(
        &s.base_url(),
        &format!("/conversations/messages/{}", rows[0]["message_id"]),
    )
    .await;
    let added: jiff::Timestamp = m["dateAdded"]
        .as_str()
        .expect("a date")
        .parse()
        .expect("RFC 3339");
    assert!(added.as_millisecond() >= before.as_millisecond() - 1, "{m}");
    assert_ne!(m["dateAdded"], "2024-01-01T00:00:00.000Z");
    s.finish().await;
}

/// An import with both lost-answer faults (stored then dropped; never stored, never answered),
/// then `--verify-unknown`: rows found are recorded `sent` with the server's own ID, rows too
/// young to settle stay `unknown`, and once settled the rest are sent: every row stored exactly
/// once. `extra` picks the read (the conversation list, or with `--location-id` the export).
async fn settle_lost_answers(backdate: bool, extra: &[&str]) {
    const ROWS: usize = 240;
    let s = Scenario::with(support::export(ROWS, 24), |c| SandboxConfig {
        drop_rate: 0.06,
        hang_rate: 0.06,
        backdate,
        seed: Some(13),
        ..c
    })
    .await;
    let mut args = vec!["--concurrency", "8", "--timeout", "300ms"];
    args.extend_from_slice(extra);
    let out = s.run(&args).await;
    out.expect_code(1);
    let unknown = s.assert_sent_or_unknown(&out);
    let stored = s.stored();
    let (was_stored, not_stored): (Vec<_>, Vec<_>) =
        unknown.iter().partition(|r| stored.contains_key(&r["key"]));
    assert!(
        !was_stored.is_empty() && !not_stored.is_empty(),
        "both faults left unknown rows: {} stored, {} not{out:?}",
        was_stored.len(),
        not_stored.len()
    );
    for r in &unknown {
        assert!(r["error"].contains("(request left at "), "{r:?}");
    }
    let conversations: std::collections::HashSet<&String> =
        unknown.iter().map(|r| &r["conversation_id"]).collect();

    // The faults pass. Read-back with the default --settle: the stored rows are found; the
    // others left moments ago, too young for "not found" to be trusted.
    s.sb()
        .set_faults(&SandboxConfig::unlimited())
        .expect("no faults");
    let before = s.stats();
    let mut verify = args.clone();
    verify.push("--verify-unknown");
    let out = s.run(&verify).await;
    out.expect_code(1);
    out.expect_stdout(&format!(
        "read-back {} read(s) to settle {} unknown row(s)",
        conversations.len(),
        unknown.len()
    ));
    out.expect_stdout("run the same command again after");
    let after = s.stats();
    let reads = after.reads() - before.reads();
    assert_eq!(
        reads,
        conversations.len() as u64,
        "one read per conversation in doubt"
    );
    assert_eq!(after.accepted, before.accepted, "nothing sent: {out:?}");
    let results = s.results();
    for r in &results {
        let ids = stored.get(&r["key"]).map_or(&[][..], Vec::as_slice);
        if was_stored.iter().any(|u| u["key"] == r["key"]) {
            assert_eq!(r["status"], "sent", "{r:?}");
            assert_eq!(ids, [r["message_id"].clone()], "the server's own ID: {r:?}");
            assert!(r["error"].starts_with("confirmed by read-back"), "{r:?}");
        } else if not_stored.iter().any(|u| u["key"] == r["key"]) {
            assert_eq!(r["status"], "unknown", "too young to settle: {r:?}");
            assert!(r["error"].contains("less than --settle 5m ago"), "{r:?}");
        }
    }
    println!(
        "read-back (backdate {}): {} unknown rows ({} stored, {} not) in {} conversations: {reads} reads, {:.2} per unknown row",
        if backdate { "on" } else { "off" },
        unknown.len(),
        was_stored.len(),
        not_stored.len(),
        conversations.len(),
        reads as f64 / unknown.len() as f64
    );

    // Settled: the rows not found are sent now; every row is stored exactly once.
    verify.extend(["--settle", "0s"]);
    let out = s.run(&verify).await;
    out.expect_code(0);
    s.assert_each_stored_once(ROWS);
    s.assert_all_sent(ROWS);
    let stored = s.stored();
    for r in s.results() {
        assert_eq!(stored[&r["key"]], [r["message_id"].clone()], "{r:?}");
    }
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_unknown_settles_lost_answers_when_the_api_keeps_dates() {
    settle_lost_answers(true, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_unknown_settles_lost_answers_when_the_api_stamps_arrival() {
    settle_lost_answers(false, &["--location-id", "sandboxLocation0001"]).await;
}

/// A 504 (and often a 502 or a 500) is what a gateway answers when it gave up on a server that
/// may still store the message. With the sandbox storing then answering 504 for some requests
/// and failing others with nothing stored, every row ends stored exactly once: a read of the
/// conversation before each retry tells the one from the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_is_checked_by_a_read_before_its_retry_and_nothing_is_stored_twice() {
    const ROWS: usize = 300;
    let s = Scenario::with(support::export(ROWS, 30), |c| SandboxConfig {
        stored_504_rate: 0.08,
        fail_rate: 0.08,
        seed: Some(21),
        ..c
    })
    .await;
    let out = s.run(&["--concurrency", "8"]).await;
    out.expect_code(0);
    let stats = s.stats();
    assert!(stats.stored_504 > 5 && stats.server_errors > 5, "{stats:?}");
    s.assert_each_stored_once(ROWS);
    s.assert_all_sent(ROWS);
    let stored = s.stored();
    let confirmed = s
        .results()
        .into_iter()
        .filter(|r| r["error"] == "confirmed by read-back after HTTP 504")
        .inspect(|r| assert_eq!(stored[&r["key"]], [r["message_id"].clone()], "{r:?}"))
        .count();
    assert_eq!(
        confirmed as u64, stats.stored_504,
        "every stored-then-504 row was found by its read, under the server's ID"
    );
    out.expect_stdout(&format!("{} reads", stats.reads()));
    s.finish().await;
}

/// SIGKILL mid-run, several times (the crash harness of `crash.rs`, smaller), then
/// `--verify-unknown`: the rows in flight at the kills (left `unknown`, some stored, some not)
/// end `sent`, each stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_in_flight_at_sigkills_are_settled_by_verify_unknown() {
    use crate::fixture;
    use std::collections::HashSet;
    const ROWS: usize = 800;
    let w = crate::support::WorkDir::new();
    w.write("in.csv", support::export(ROWS, 40));
    let sb = fixture::start(SandboxConfig {
        latency: fixture::latency(2, 10),
        seed: Some(0x5eed),
        ..fixture::recorded(&w)
    })
    .await;
    let args = fixture::run_args(
        "in.csv",
        &sb.base_url(),
        &["--rate", "none", "--concurrency", "8"],
    );
    let journal = w.path("in.results.csv");
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut kills = 0;
    for run in 1..200 {
        let growth = rng.u64(2_000..12_000);
        let exited =
            fixture::run_killed_at_growth(&w, &args, &format!("run-{run}.log"), &journal, growth)
                .await;
        match exited {
            Some(_) => break,
            None => {
                kills += 1;
                in_flight.extend(fixture::in_flight(&journal));
            }
        }
    }
    assert!(kills >= 3, "only {kills} kills");
    let unknown: Vec<_> = fixture::results(&journal)
        .into_iter()
        .filter(|r| r["status"] == "unknown")
        .collect();
    let stored = fixture::stored(&w);
    let keys: HashSet<String> = unknown.iter().map(|r| r["key"].clone()).collect();
    assert_eq!(
        keys, in_flight,
        "the rows in flight at the kills are unknown"
    );
    let stored_unknown = unknown
        .iter()
        .filter(|r| stored.contains_key(&r["key"]))
        .count();
    // Past --settle: every request of a killed run was answered (or not) long ago.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let out = fixture::run(
        &w,
        &sb.base_url(),
        "in.csv",
        &["--rate", "none", "--verify-unknown", "--settle", "1s"],
        fixture::TOKEN,
    )
    .await;
    out.expect_code(0);
    let stored = fixture::stored(&w);
    for r in fixture::results(&journal) {
        assert_eq!(r["status"], "sent", "{r:?}{out:?}");
        assert_eq!(
            stored[&r["key"]],
            [r["message_id"].clone()],
            "stored once: {r:?}"
        );
    }
    assert_eq!(stored.len(), ROWS);
    println!(
        "read-back after {kills} SIGKILLs: {} rows in flight ({stored_unknown} of them stored), all sent once",
        unknown.len()
    );
    sb.shutdown().await;
}

/// `lc-import verify INPUT --base-url … --rate none`, with the sandbox's token.
pub(crate) async fn verify(s: &Scenario, extra: &[&str]) -> support::Output {
    let mut args: Vec<String> = [
        "verify",
        "in.csv",
        "--base-url",
        &s.base_url(),
        "--rate",
        "none",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    let dir = s.path("");
    let token = s.sandbox_token().to_owned();
    tokio::task::spawn_blocking(move || {
        support::run_in(&dir, &args, &[("LC_TOKEN".to_owned(), token)])
    })
    .await
    .expect("verify finishes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_after_a_canary_passes_when_the_api_keeps_dates() {
    let s = Scenario::new(support::export(40, 4)).await;
    s.run(&["--limit", "10"]).await.expect_code(3);
    let before = s.stats().reads_by_id;
    let out = verify(&s, &[]).await;
    out.expect_code(0);
    out.expect_stdout("verify: 10 sent row(s) read back with 10 read(s)");
    for check in [
        "found",
        "direction as sent",
        "type as sent",
        "body as sent",
        "date kept as dateAdded",
    ] {
        out.expect_stdout(&format!("  {check:<32}{:>8}{:>8}", 10, 0));
    }
    out.expect_stdout(&format!(
        "  {:<32}{:>8}{:>8}",
        "order per conversation", 4, 0
    ));
    out.expect_stdout("every row read back landed as it was sent");
    assert_eq!(s.stats().reads_by_id - before, 10, "one read per sent row");
    let out = verify(&s, &["--sample", "3"]).await;
    out.expect_code(0);
    out.expect_stdout("verify: 3 sent row(s) read back");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_after_a_canary_names_the_date_the_api_did_not_keep() {
    let s = Scenario::with(support::export(40, 4), |c| SandboxConfig {
        backdate: false,
        ..c
    })
    .await;
    s.run(&["--limit", "10"]).await.expect_code(3);
    let out = verify(&s, &[]).await;
    out.expect_code(1);
    out.expect_stdout("date: sent 2024-01-01T00:00:00Z, dateAdded ");
    out.expect_stdout("the API did not keep the date");
    out.expect_stdout(&format!(
        "  {:<32}{:>8}{:>8}",
        "date kept as dateAdded", 0, 10
    ));
    out.expect_stdout(&format!("  {:<32}{:>8}{:>8}", "body as sent", 10, 0));
    out.expect_stdout("10 difference(s) from what was sent");
    // A sample of none is a usage error.
    let out = verify(&s, &["--sample", "0"]).await;
    out.expect_code(2);
    s.finish().await;
}

/// A token that may not read (403 on every read): a 504 cannot be checked, so its row is
/// `unknown` rather than retried (a retry could store it twice), and the summary says why; so
/// does `--verify-unknown`, which leaves those rows as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_read_scope_a_504_is_unknown_not_retried_and_the_summary_says_why() {
    let s = Scenario::with(support::export(150, 15), |c| SandboxConfig {
        stored_504_rate: 0.1,
        read_scope: false,
        seed: Some(8),
        ..c
    })
    .await;
    let out = s.run(&["--concurrency", "4"]).await;
    out.expect_code(1);
    let stats = s.stats();
    assert!(stats.stored_504 > 3, "{stats:?}");
    let unknown = s.assert_sent_or_unknown(&out);
    assert_eq!(unknown.len() as u64, stats.stored_504, "{out:?}");
    for r in &unknown {
        assert!(r["error"].starts_with("HTTP 504, which may come after the message was stored, and the read-back was refused (HTTP 403: The token is not authorized for this scope.)"), "{r:?}");
    }
    out.expect_stdout(&format!(
        "read-back: {} row(s) answered 500/502/504 are recorded unknown, not retried: the API refused the read",
        unknown.len()
    ));
    s.sb()
        .set_faults(&SandboxConfig::unlimited())
        .expect("no faults");
    let out = s.run(&["--verify-unknown", "--settle", "0s"]).await;
    out.expect_code(1);
    out.expect_stdout("the API refused the reads (HTTP 403");
    assert_eq!(s.assert_sent_or_unknown(&out).len(), unknown.len());
    assert_eq!(s.stats().accepted, stats.accepted, "nothing sent again");
    s.finish().await;
}
