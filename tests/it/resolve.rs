//! Migrations without HighLevel IDs (issue 7): `lc-import run` finds and creates contacts and
//! conversations from phone numbers and e-mail addresses, against the sandbox over real sockets.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use lc_import::rate::Rate;
use lc_import::sandbox::{SandboxConfig, Stats};
use serde_json::Value;

use crate::fixture::{latency, start};
use crate::scenario::{INPUT, RESULTS, Scenario};
use crate::support::{Output, WorkDir};

const LOCATION: &str = "sandboxLocation0001";

/// `lc-import run INPUT --base-url <sandbox> --location-id L --default-country US ARGS…`.
async fn run(s: &Scenario, input: &str, args: &[&str]) -> Output {
    let all: Vec<&str> = ["--location-id", LOCATION, "--default-country", "US"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    s.run_input(input, &all).await
}

fn lookups(s: &Stats) -> u64 {
    s.contact_searches + s.contact_upserts + s.conversation_searches + s.conversation_creates
}

/// `contacts` new contacts with `per_contact` rows each, interleaved round-robin, dates rising.
/// Contact `c` is named by phone only, e-mail only or both, by `c % 3`.
fn migration(contacts: usize, per_contact: usize) -> String {
    let mut s =
        String::from("altId,contactPhone,contactEmail,firstName,type,direction,date,message\n");
    for i in 0..contacts * per_contact {
        let c = i % contacts;
        let phone = if c % 3 != 1 {
            format!("(503) 555-{c:04}")
        } else {
            String::new()
        };
        let email = if !c.is_multiple_of(3) {
            format!("person{c}@example.com")
        } else {
            String::new()
        };
        s.push_str(&format!(
            "r{i},{phone},{email},P{c},SMS,inbound,2024-01-01T{:02}:{:02}:{:02}Z,message {i}\n",
            i / 3600 % 24,
            i / 60 % 60,
            i % 60
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_sample_lands_in_each_contacts_single_conversation() {
    let w = WorkDir::new();
    w.copy("samples/migration.csv");
    let seed = w.copy("samples/migration-contacts.csv");
    let s = Scenario::prepared(w, |c| SandboxConfig {
        contacts: Some(seed),
        ..c
    })
    .await;
    let out = run(
        &s,
        "migration.csv",
        &["--create-contacts", "--rate", "100000/s"],
    )
    .await;
    out.expect_code(0);
    out.expect_stdout("quota plan: 29 message(s)");

    let dir = s.sb().directory();
    // One conversation per contact, and no contact twice.
    let conversation_of: HashMap<&str, &str> = dir
        .conversations
        .iter()
        .map(|c| (c.contact_id.as_str(), c.id.as_str()))
        .collect();
    assert_eq!(conversation_of.len(), dir.conversations.len());
    assert_eq!(dir.contacts.len(), 8, "3 seeded + 5 created: {dir:?}");
    assert_eq!(dir.conversations.len(), 8);
    let contact = |id: &str| dir.contacts.iter().find(|c| c.id == id).expect("contact");

    // Each row: its contact is the one with the row's e-mail (else phone), and the message is in
    // that contact's conversation.
    let input: Vec<HashMap<String, String>> = s.w.results("migration.csv");
    let results = s.w.results("migration.results.csv");
    let stored: HashMap<String, Value> = s
        .record()
        .into_iter()
        .map(|v| (v["messageId"].as_str().expect("id").to_owned(), v))
        .collect();
    assert_eq!(stored.len(), 29);
    for (row, r) in input.iter().zip(&results) {
        assert_eq!(r["status"], "sent", "{r:?}");
        let c = contact(&r["contact_id"]);
        let email = row["contactEmail"].to_lowercase();
        if !email.is_empty() {
            assert_eq!(c.email.as_deref(), Some(email.as_str()), "{r:?}");
        } else {
            let digits: String = row["contactPhone"]
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            let digits = digits.trim_start_matches('1');
            assert_eq!(c.phone.as_deref(), Some(format!("+1{digits}").as_str()));
        }
        assert_eq!(conversation_of[c.id.as_str()], r["conversation_id"]);
        let body = &stored[&r["message_id"]]["body"];
        assert_eq!(body["contactId"], r["contact_id"].as_str());
        assert_eq!(body["conversationId"], r["conversation_id"].as_str());
        assert_eq!(body["altId"], row["altId"].as_str());
    }
    // The seeded contacts were found, not created again; Noah's seeded conversation was used.
    assert!(
        results
            .iter()
            .any(|r| r["conversation_id"] == "noahKleinConvers0001")
    );
    let stats = s.stats();
    assert_eq!(
        (stats.contacts_created, stats.conversations_created),
        (5, 7)
    );
    // The upserts never sent tags (they would overwrite the contact's).
    let created = s.contacts_record();
    assert_eq!(created.len(), 5 + 7);
    assert!(created.iter().all(|l| l["body"].get("tags").is_none()));
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_rows_per_new_contact_under_concurrency_16_make_no_duplicate() {
    let s = Scenario::with(migration(20, 10), |c| SandboxConfig {
        latency: latency(1, 6),
        ..c
    })
    .await;
    let args = [
        "--create-contacts",
        "--concurrency",
        "16",
        "--rate",
        "100000/s",
    ];
    let out = run(&s, INPUT, &args).await;
    out.expect_code(0);
    let st = s.stats();
    // Exactly one of each lookup per contact: no two rows of a contact raced.
    assert_eq!(
        (
            st.contact_searches,
            st.contact_upserts,
            st.conversation_searches,
            st.conversation_creates,
            st.conversation_conflicts
        ),
        (20, 20, 20, 20, 0),
        "{st:?}"
    );
    assert_eq!((st.contacts_created, st.conversations_created), (20, 20));
    assert_eq!((st.accepted, st.out_of_order), (200, 0), "{st:?}");
    assert!(st.peak_concurrent > 4, "contacts ran side by side: {st:?}");

    // Rows of one contact that name it differently (phone only, then phone and e-mail) take
    // different lanes; the per-contact lock still makes one contact and one conversation.
    let mut mixed = String::from("altId,contactPhone,contactEmail,type,direction,message\n");
    for i in 0..120usize {
        let c = i % 12;
        // Each contact's rows alternate between the two spellings, round by round.
        let email = if (i / 12).is_multiple_of(2) {
            String::new()
        } else {
            format!("mixed{c}@example.com")
        };
        mixed.push_str(&format!(
            "m{i},+1503556{c:04},{email},SMS,inbound,hello {i}\n"
        ));
    }
    s.w.write("mixed.csv", mixed);
    let out = run(&s, "mixed.csv", &args).await;
    out.expect_code(0);
    let st = s.stats();
    assert_eq!(st.conversation_conflicts, 0, "{st:?}");
    let dir = s.sb().directory();
    let phones: Vec<&str> = dir
        .contacts
        .iter()
        .filter_map(|c| c.phone.as_deref())
        .filter(|p| p.starts_with("+1503556"))
        .collect();
    assert_eq!(phones.len(), 12, "one contact per phone: {phones:?}");
    let contacts: HashSet<&str> = dir
        .conversations
        .iter()
        .map(|c| c.contact_id.as_str())
        .collect();
    assert_eq!(
        contacts.len(),
        dir.conversations.len(),
        "one conversation each"
    );
    assert_eq!(dir.conversations.len(), 32);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_looks_up_only_what_the_id_map_lacks() {
    let s = Scenario::new(migration(10, 4)).await;
    let args = [
        "--create-contacts",
        "--rate",
        "100000/s",
        "--concurrency",
        "4",
    ];
    let first: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--max-requests", "30"])
        .collect();
    let out = run(&s, INPUT, &first).await;
    out.expect_code(3);
    out.expect_stdout("stopped early: --max-requests 30 reached.");
    assert_eq!(s.stats().requests, 30, "exactly the budget");
    let before = s.stats();

    // What the second run still has to look up, from the ID map the first one left.
    let expected = lookups_owed(&id_map(&s, "in.results.csv.ids.csv"), 10);
    assert!(expected < 40, "the first run resolved some contacts");

    let out = run(&s, INPUT, &args).await;
    out.expect_code(0);
    let after = s.stats();
    assert_eq!(lookups(&after) - lookups(&before), expected, "{out:?}");
    assert_eq!(
        (after.contacts_created, after.conversations_created),
        (10, 10)
    );
    assert_eq!(after.accepted, 40);
    let sent: HashSet<String> = s
        .record()
        .iter()
        .map(|v| v["body"]["altId"].as_str().expect("altId").to_owned())
        .collect();
    assert_eq!(sent.len(), 40, "every row stored once");

    // Nothing left: a third run makes no request at all.
    let out = run(&s, INPUT, &args).await;
    out.expect_code(0);
    assert_eq!(s.stats().requests, after.requests);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_and_messages_together_keep_the_rate() {
    // 8 new contacts × 4 rows: 32 messages + 32 lookups = 64 requests, over 3 windows of 20.
    let rate = Rate {
        max: 20,
        period: Duration::from_secs(1),
    };
    let s = Scenario::with(migration(8, 4), |c| SandboxConfig {
        rate: Some(rate),
        ..c
    })
    .await;
    let started = Instant::now();
    let out = run(
        &s,
        INPUT,
        &["--create-contacts", "--rate", "20/s", "--concurrency", "8"],
    )
    .await;
    let elapsed = started.elapsed();
    out.expect_code(0);
    out.expect_stdout("requests  48 to 64 (32 messages + 16 to 32 lookups)");
    let st = s.stats();
    assert_eq!(st.rate_limited, 0, "no 429: {st:?}");
    assert_eq!((st.requests, lookups(&st), st.accepted), (64, 32, 32));
    // 64 requests at 20/s cannot all start before the fourth window opens.
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_contacts_fail_without_create_contacts() {
    let w = WorkDir::new();
    let seed = w.write(
        "seed.csv",
        format!("id,locationId,phone\nknownContact00000001,{LOCATION},+15035550001\n"),
    );
    w.write(
        INPUT,
        "altId,contactPhone,type,direction,message\n\
         a1,+1 503 555 0001,SMS,inbound,hi\n\
         a2,+1 503 555 0002,SMS,inbound,hello\n",
    );
    let s = Scenario::prepared(w, |c| SandboxConfig {
        contacts: Some(seed),
        ..c
    })
    .await;
    let out = run(&s, INPUT, &["--rate", "100000/s"]).await;
    out.expect_code(1);
    let results = s.w.results(RESULTS);
    assert_eq!(results[0]["status"], "sent");
    assert_eq!(results[0]["contact_id"], "knownContact00000001");
    assert_eq!(results[1]["status"], "failed");
    assert_eq!(
        results[1]["error"],
        format!(
            "not sent: no contact with phone +15035550002 in location {LOCATION}: add it in HighLevel, or run with --create-contacts"
        )
    );
    let st = s.stats();
    assert_eq!(
        (st.contact_upserts, st.contacts_created, st.accepted),
        (0, 0, 1)
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_already_exists_answer_sends_it_back_to_searching() {
    let w = WorkDir::new();
    let seed = w.write(
        "seed.csv",
        format!(
            "id,locationId,email,conversationId\nseededContact0000001,{LOCATION},ann@example.com,seededConversation01\n"
        ),
    );
    w.write(
        INPUT,
        "altId,contactEmail,type,direction,message\nb1,Ann@Example.com,Email,inbound,hi\n",
    );
    // The search index lags: the first search misses the conversation the contact has.
    let s = Scenario::prepared(w, |c| SandboxConfig {
        contacts: Some(seed),
        search_misses: 1,
        ..c
    })
    .await;
    let out = run(&s, INPUT, &["--rate", "100000/s"]).await;
    out.expect_code(0);
    let st = s.stats();
    assert_eq!(
        (
            st.conversation_searches,
            st.conversation_creates,
            st.conversation_conflicts,
            st.conversations_created
        ),
        (2, 1, 1, 0),
        "{st:?}"
    );
    let r = &s.w.results(RESULTS)[0];
    assert_eq!(r["conversation_id"], "seededConversation01");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_only_counts_and_creates_nothing() {
    let w = WorkDir::new();
    w.copy("samples/migration.csv");
    let seed = w.copy("samples/migration-contacts.csv");
    // One more contact whose e-mail is a seeded contact's and whose phone is Liam's: ambiguous.
    let mut contacts = w.read("migration-contacts.csv");
    contacts.push_str(&format!(
        "ambiguousContact0001,{LOCATION},amb@example.com,,Amb,,\n"
    ));
    w.write("migration-contacts.csv", contacts);
    let mut input = w.read("migration.csv");
    input.push_str(
        "old-crm-9999,+15035550110,amb@example.com,A,B,SMS,inbound,2023-04-01T10:00:00Z,hi,\n",
    );
    w.write("migration.csv", input);
    let s = Scenario::prepared(w, |c| SandboxConfig {
        contacts: Some(seed),
        ..c
    })
    .await;
    let out = run(
        &s,
        "migration.csv",
        &["--dry-run", "--resolve-only", "--rate", "100000/s"],
    )
    .await;
    out.expect_code(1);
    out.expect_stdout("resolve-only: 9 contact(s) in 30 row(s) of migration.csv");
    out.expect_stdout("contacts       0 known from the ID map, 3 exist, 5 not found (the run fails their rows unless --create-contacts), 1 ambiguous");
    out.expect_stdout(
        "conversations  0 known from the ID map, 1 exist, 7 would be created, 0 ambiguous",
    );
    let st = s.stats();
    assert_eq!(
        (st.accepted, st.contact_upserts, st.conversation_creates),
        (0, 0, 0),
        "nothing created, nothing sent: {st:?}"
    );
    assert!(!s.path("migration.results.csv").exists());
    // What it found is kept: the run after it does not search those contacts again.
    let ids = s.w.results("migration.results.csv.ids.csv");
    assert_eq!(
        ids.len(),
        3 + 1,
        "3 contacts found, one of them with its conversation"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lookup_endpoints_behave_like_the_api() {
    let sb = start(SandboxConfig {
        contacts: None,
        ..SandboxConfig::unlimited()
    })
    .await;
    // reqwest is built with `rustls-no-provider`: even a plain-http client needs one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let base = sb.base_url();
    let send = |rb: reqwest::RequestBuilder| async move {
        let r = rb
            .header("Version", "2021-07-28")
            .send()
            .await
            .expect("answer");
        let status = r.status().as_u16();
        let limit = r.headers().contains_key("x-ratelimit-remaining");
        let body: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("JSON");
        assert!(limit, "rate headers on every answer");
        assert!(body["traceId"].is_string(), "{body}");
        (status, body)
    };
    let auth = "Bearer sandbox-token";
    // No token: 401.
    let (status, _) = send(client.get(format!(
        "{base}/contacts/search/duplicate?locationId=L1&number=%2B15035550001"
    )))
    .await;
    assert_eq!(status, 401);
    // An unknown property: 422 in the API's words.
    let (status, body) = send(
        client
            .post(format!("{base}/contacts/upsert"))
            .header("Authorization", auth)
            .header("Content-Type", "application/json")
            .body(json(
                serde_json::json!({"locationId": "L1", "phone": "+15035550001", "colour": "red"}),
            )),
    )
    .await;
    assert_eq!(
        (status, body["message"][0].as_str()),
        (422, Some("property colour should not exist"))
    );
    let (status, body) = send(
        client
            .post(format!("{base}/contacts/upsert"))
            .header("Authorization", auth)
            .header("Content-Type", "application/json")
            .body(json(
                serde_json::json!({"locationId": "L1", "phone": "+15035550001"}),
            )),
    )
    .await;
    assert_eq!((status, &body["new"]), (200, &Value::Bool(true)));
    let id = body["contact"]["id"].as_str().expect("id").to_owned();
    // `+` must be sent as %2B: a raw `+` is read as a space and finds nothing.
    for (query, found) in [("%2B15035550001", true), ("+15035550001", false)] {
        let (status, body) = send(
            client
                .get(format!(
                    "{base}/contacts/search/duplicate?locationId=L1&number={query}"
                ))
                .header("Authorization", auth),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            body["contact"]["id"].as_str() == Some(&id),
            found,
            "{query}"
        );
    }
    // One conversation per contact: the second create is the API's 400.
    let create = || {
        client
            .post(format!("{base}/conversations/"))
            .header("Authorization", auth)
            .header("Content-Type", "application/json")
            .body(json(
                serde_json::json!({"locationId": "L1", "contactId": id}),
            ))
    };
    let (status, body) = send(create()).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = send(create()).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["message"],
        format!("Conversation with the contact id:{id} already exists!")
    );
    sb.shutdown().await;
}

fn json(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_waiting_for_lookups_survive_a_lane_spilling_to_disk() {
    // 3 new contacts with 100 rows each: each lane holds far more than the 32 rows a lane keeps
    // in memory, so rows still waiting for their IDs go through the spill file.
    let s = Scenario::with(migration(3, 100), |c| SandboxConfig {
        latency: latency(1, 3),
        ..c
    })
    .await;
    let out = run(
        &s,
        INPUT,
        &[
            "--create-contacts",
            "--concurrency",
            "16",
            "--rate",
            "100000/s",
        ],
    )
    .await;
    out.expect_code(0);
    let st = s.stats();
    assert_eq!((st.accepted, st.out_of_order), (300, 0), "{st:?}");
    assert_eq!(
        (st.contacts_created, st.conversations_created),
        (3, 3),
        "{st:?}"
    );
    let record = s.record();
    let mut texts: Vec<&str> = record
        .iter()
        .map(|v| v["body"]["message"].as_str().unwrap())
        .collect();
    texts.sort_unstable();
    texts.dedup();
    assert_eq!(texts.len(), 300, "every row's own body arrived once");
    s.finish().await;
}

/// Three contacts the location does not have, four rows each: the summary counts 3 missing
/// contacts (not one per row), and each is searched for once. (Bug: "4 missing" for 3 distinct
/// contacts, and a search per row.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_contact_is_counted_and_searched_once() {
    let s = Scenario::new(migration(3, 4)).await;
    let out = run(&s, INPUT, &["--concurrency", "4"]).await;
    out.expect_code(1);
    out.expect_stdout("contacts      0 found, 0 created, 3 missing");
    let rows = s.w.results(RESULTS);
    assert_eq!(rows.len(), 12);
    assert!(rows.iter().all(|r| r["status"] == "failed"), "{rows:?}");
    let st = s.stats();
    assert_eq!((lookups(&st), st.accepted), (3, 0), "{st:?}");
    s.finish().await;
}

/// What the ID map records, by contact key: (contact known, conversation known).
/// The lookups a run still owes contacts `0..contacts` (person c: by e-mail, every third by
/// phone) given what the ID map `known` holds: all four for a contact it lacks, the
/// conversation's two for one whose conversation it lacks, none for the rest.
fn lookups_owed(known: &HashMap<String, (bool, bool)>, contacts: usize) -> u64 {
    (0..contacts)
        .map(|c| {
            let key = if !c.is_multiple_of(3) {
                format!("email:person{c}@example.com")
            } else {
                format!("phone:+1503555{c:04}")
            };
            match known.get(&key) {
                Some((true, true)) => 0,
                Some((true, false)) => 2,
                _ => 4,
            }
        })
        .sum()
}

fn id_map(s: &Scenario, name: &str) -> HashMap<String, (bool, bool)> {
    let mut known: HashMap<String, (bool, bool)> = HashMap::new();
    for l in s.w.results(name) {
        let e = known.entry(l["key"].clone()).or_default();
        e.0 |= !l["contact_id"].is_empty();
        e.1 |= !l["conversation_id"].is_empty();
    }
    known
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_map_on_disk_serves_a_resume_and_a_fresh_results_file_without_a_lookup() {
    let s = Scenario::new(migration(60, 3)).await;
    let args = [
        "--create-contacts",
        "--rate",
        "100000/s",
        "--concurrency",
        "8",
    ];
    run(&s, INPUT, &args).await.expect_code(0);
    let first = s.stats();
    assert_eq!(lookups(&first), 240, "4 per new contact: {first:?}");
    assert_eq!(id_map(&s, "in.results.csv.ids.csv").len(), 60);

    // The same command again: the ID map is opened (indexed from its file) and nothing is
    // looked up, nothing sent.
    run(&s, INPUT, &args).await.expect_code(0);
    assert_eq!(s.stats().requests, first.requests, "{:?}", s.stats());

    // A fresh results file beside a copy of the ID map: every row is sent again, every ID
    // comes from the map (no lookup), and each row goes to the contact and conversation of
    // the first run.
    std::fs::copy(
        s.w.path("in.results.csv.ids.csv"),
        s.w.path("again.csv.ids.csv"),
    )
    .unwrap();
    run(
        &s,
        INPUT,
        &[&args[..], &["--results", "again.csv"]].concat(),
    )
    .await
    .expect_code(0);
    let after = s.stats();
    assert_eq!(lookups(&after), lookups(&first), "{after:?}");
    assert_eq!(after.accepted, first.accepted + 180);
    let before: HashMap<String, (String, String)> = s
        .results()
        .into_iter()
        .map(|r| {
            (
                r["key"].clone(),
                (r["contact_id"].clone(), r["conversation_id"].clone()),
            )
        })
        .collect();
    let again = s.w.results("again.csv");
    assert_eq!(again.len(), 180);
    for r in &again {
        assert_eq!(r["status"], "sent", "{r:?}");
        assert_eq!(
            before[&r["key"]],
            (r["contact_id"].clone(), r["conversation_id"].clone()),
            "{r:?}"
        );
    }
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_run_then_a_resume_creates_no_contact_or_conversation_twice() {
    const CONTACTS: usize = 300;
    let s = Scenario::with(migration(CONTACTS, 2), |c| SandboxConfig {
        latency: latency(1, 4),
        ..c
    })
    .await;
    let args = [
        "--location-id",
        LOCATION,
        "--default-country",
        "US",
        "--create-contacts",
        "--rate",
        "100000/s",
        "--concurrency",
        "8",
    ];
    // Killed (SIGKILL: nothing flushed, no handler) once the ID map holds a third of the
    // contacts' lines, while lookups and messages are in flight.
    let ids = s.w.path("in.results.csv.ids.csv");
    let mut child = s.spawn_logged(&args, &[], "killed.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            panic!(
                "the run ended ({status}) before it was killed: {}",
                std::fs::read_to_string(s.w.path("killed.log")).unwrap_or_default()
            );
        }
        let lines = std::fs::read(&ids).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
        if lines > CONTACTS * 2 / 3 {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap the killed child");
            break;
        }
        assert!(Instant::now() < deadline, "the run made no progress");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let at_kill = s.stats();
    assert!(
        at_kill.contacts_created < CONTACTS as u64,
        "killed mid-run: {at_kill:?}"
    );
    // What the resume may still look up: all four lookups for a contact the map lacks, the
    // conversation's two for one whose conversation it lacks, nothing for the rest.
    let most = lookups_owed(&id_map(&s, "in.results.csv.ids.csv"), CONTACTS);

    let out = run(&s, INPUT, &args[4..]).await;
    // Rows in flight at the kill are `unknown` (exit 1), stored at most once.
    assert!(matches!(out.code, Some(0 | 1)), "{out:?}");
    s.assert_sent_or_unknown(&out);
    let end = s.stats();
    assert!(
        lookups(&end) - lookups(&at_kill) <= most,
        "the resume looked up {} where the ID map left at most {most} to look up",
        lookups(&end) - lookups(&at_kill)
    );
    // No contact and no conversation created twice: one upsert and one create per contact over
    // both runs (a contact created just before the kill, with its line lost, is found by the
    // resume's search).
    assert_eq!(
        (end.contact_upserts, end.conversation_creates),
        (CONTACTS as u64, CONTACTS as u64),
        "{end:?}"
    );
    let dir = s.sb().directory();
    assert_eq!(dir.contacts.len(), CONTACTS, "no contact twice");
    assert_eq!(dir.conversations.len(), CONTACTS, "one conversation each");
    s.finish().await;
}
