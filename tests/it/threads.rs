//! E-mail threads (issue 15): an export with a thread column lands in the sandbox as its
//! threads, whatever the file's order, across a `--limit`, SIGKILLs and resumes, and with a
//! thread start that failed or was invalid. The sandbox's record is the ground truth: each
//! stored e-mail carries the `emailMessageId` it was given and its thread (the root id), and
//! `/__stats` counts replies naming an id it never gave out.

use std::collections::{BTreeSet, HashMap};

use lc_import::sandbox::SandboxConfig;
use serde_json::Value;

use crate::fixture;
use crate::scenario::{INPUT, RESULTS, Scenario};

const THREADS: usize = 20;
const CONVERSATIONS: usize = 8;

/// One e-mail of the export.
#[derive(Clone, Debug)]
struct Mail {
    alt: String,
    thread: usize,
    /// Its place in its thread by date (0: the thread's start).
    nth: usize,
    conversation: usize,
    date: String,
}

/// 20 threads of 2–4 e-mails over 8 conversations, shuffled (seeded) so the file lists replies
/// before their starts; the thread column is `X-GM-THRID`, a Gmail thread id.
fn export(seed: u64) -> (String, Vec<Mail>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut mails = Vec::new();
    for t in 0..THREADS {
        let conversation = t % CONVERSATIONS;
        for nth in 0..rng.usize(2..=4) {
            mails.push(Mail {
                alt: format!("gm-{t:02}-{nth}"),
                thread: t,
                nth,
                conversation,
                // Threads of one conversation interleave in time.
                date: format!("2024-03-{:02}T{:02}:{:02}:00Z", 1 + nth * 3, t, nth * 7),
            });
        }
    }
    rng.shuffle(&mut mails);
    let mut csv = String::from(
        "altId,conversationId,contactId,type,direction,date,subject,html,emailFrom,emailTo,X-GM-THRID\n",
    );
    for m in &mails {
        csv.push_str(&line(m, "ann@example.com"));
    }
    (csv, mails)
}

fn line(m: &Mail, to: &str) -> String {
    format!(
        "{},conv{:04},cont{:04},Email,inbound,{},Re: topic {},<p>mail {}</p>,c{}@example.com,{to},{}\n",
        m.alt,
        m.conversation,
        m.conversation,
        m.date,
        m.thread,
        m.alt,
        m.conversation,
        1_700_000_000_000_000u64 + m.thread as u64
    )
}

const MAP: [&str; 2] = ["--map", "threadId=X-GM-THRID"];

/// The record's threads: root → the altIds stored in it, in the order stored.
fn threads_in(record: &[Value]) -> HashMap<String, Vec<String>> {
    let mut threads: HashMap<String, Vec<String>> = HashMap::new();
    for v in record {
        let root = v["thread"]
            .as_str()
            .expect("an e-mail's record line has its thread");
        let alt = v["body"]["altId"].as_str().expect("altId");
        threads
            .entry(root.to_owned())
            .or_default()
            .push(alt.to_owned());
    }
    threads
}

/// Every e-mail stored at most once; every stored thread holds messages of one source thread
/// only, its first stored message is that thread's start, and every later one names the start's
/// `emailMessageId`; no reply names an id the sandbox never gave; and, unless a thread was held
/// back to a later run (`held`), each conversation stored in date order. Returns, per source
/// thread, how many of its e-mails are stored.
fn assert_threads_hold(s: &Scenario, mails: &[Mail]) -> HashMap<usize, usize> {
    assert_threads(s, mails, false)
}

fn assert_threads(s: &Scenario, mails: &[Mail], held: bool) -> HashMap<usize, usize> {
    let record = s.record();
    let by_alt: HashMap<&str, &Mail> = mails.iter().map(|m| (m.alt.as_str(), m)).collect();
    let mut seen = BTreeSet::new();
    for v in &record {
        let alt = v["body"]["altId"].as_str().expect("altId");
        assert!(seen.insert(alt.to_owned()), "{alt} stored twice");
    }
    let mut stored = HashMap::new();
    let given: HashMap<&str, &Value> = record
        .iter()
        .map(|v| (v["emailMessageId"].as_str().expect("an id given"), v))
        .collect();
    for (root, alts) in threads_in(&record) {
        let source = by_alt[alts[0].as_str()].thread;
        assert!(
            alts.iter().all(|a| by_alt[a.as_str()].thread == source),
            "thread {root} mixes source threads: {alts:?}"
        );
        let start = &alts[0];
        assert_eq!(
            by_alt[start.as_str()].nth,
            0,
            "{start} opened thread {root}"
        );
        assert_eq!(given[root.as_str()]["body"]["altId"], start.as_str());
        for reply in &alts[1..] {
            let v = record
                .iter()
                .find(|v| v["body"]["altId"] == reply.as_str())
                .expect("stored");
            assert_eq!(
                v["body"]["emailMessageId"],
                root.as_str(),
                "{reply} names its thread's start"
            );
        }
        assert!(
            stored.insert(source, alts.len()).is_none(),
            "source thread {source} is split over two threads"
        );
    }
    let stats = s.stats();
    assert_eq!(stats.unknown_email_message_ids, 0, "{stats:?}");
    if !held {
        assert_eq!(
            stats.out_of_order, 0,
            "each conversation in date order: {stats:?}"
        );
    }
    stored
}

fn thread_sizes(mails: &[Mail]) -> HashMap<usize, usize> {
    let mut sizes = HashMap::new();
    for m in mails {
        *sizes.entry(m.thread).or_insert(0) += 1;
    }
    sizes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_export_out_of_file_order_lands_as_its_threads() {
    let (csv, mails) = export(0x7e4d);
    // The file lists some reply before its thread's start: the order by date is what threads.
    assert!(
        (0..THREADS).any(|t| {
            mails.iter().position(|m| m.thread == t && m.nth > 0)
                < mails.iter().position(|m| m.thread == t && m.nth == 0)
        }),
        "the fixture is out of file order"
    );
    let s = Scenario::new(csv).await;
    // No --order: a thread column sends in date order by default.
    let out = s.run(&[&MAP[..], &["--concurrency", "8"]].concat()).await;
    out.expect_code(0);
    s.assert_all_sent(mails.len());
    assert_eq!(assert_threads_hold(&s, &mails), thread_sizes(&mails));
    let stats = s.stats();
    assert_eq!(
        (stats.email_threads, stats.email_replies),
        (THREADS as u64, (mails.len() - THREADS) as u64)
    );
    // The thread store knows every thread, under the start's row.
    let store = s.w.read(&format!("{RESULTS}.threads.csv"));
    assert_eq!(store.lines().count(), 1 + THREADS, "{store}");
    // A second run sends nothing.
    s.run(&MAP).await.expect_code(0);
    assert_eq!(s.record().len(), mails.len());
    // Read back, each conversation is in the order it was sent, the dates' (not the file's).
    let out = crate::readback::verify(&s, &MAP).await;
    out.expect_code(0);
    out.expect_stdout("every row read back landed as it was sent");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_in_the_middle_of_threads_then_a_resume_continues_them() {
    let (csv, mails) = export(0x11a1);
    let s = Scenario::new(csv).await;
    let first = 9;
    s.run(
        &[
            &MAP[..],
            &["--concurrency", "1", "--limit", &first.to_string()],
        ]
        .concat(),
    )
    .await
    .expect_code(3);
    let partial = assert_threads_hold(&s, &mails);
    let sizes = thread_sizes(&mails);
    assert_eq!(partial.values().sum::<usize>(), first);
    let cut: Vec<usize> = partial
        .iter()
        .filter(|(t, n)| **n < sizes[t])
        .map(|(t, _)| *t)
        .collect();
    assert!(
        !cut.is_empty(),
        "the limit fell inside a thread: {partial:?}"
    );
    // The next run (the same command without --limit) continues those threads.
    s.run(&MAP).await.expect_code(0);
    s.assert_all_sent(mails.len());
    assert_eq!(assert_threads_hold(&s, &mails), sizes);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_mid_thread_never_split_a_thread() {
    let (csv, mails) = export(0x5161);
    let s = Scenario::with(csv, |c| SandboxConfig {
        latency: fixture::latency(2, 12),
        ..c
    })
    .await;
    let args = s
        .invoke(&[&MAP[..], &["--concurrency", "4"]].concat())
        .args();
    let journal = s.w.path(RESULTS);
    let store = s.w.path(&format!("{RESULTS}.threads.csv"));
    let mut rng = fastrand::Rng::with_seed(0x5161);
    let mut kills = 0;
    // Source threads partly stored at some kill: (thread, how many then).
    let mut cut: Vec<(usize, usize)> = Vec::new();
    let sizes = thread_sizes(&mails);
    for attempt in 0..40 {
        let growth = rng.u64(150..900);
        let ended = fixture::run_killed_at_growth(
            &s.w,
            &args,
            &format!("kill-{attempt}.log"),
            &journal,
            growth,
        )
        .await;
        if ended.is_some() {
            break;
        }
        kills += 1;
        for (t, n) in assert_threads_hold(&s, &mails) {
            if n < sizes[&t] {
                cut.push((t, n));
            }
        }
        // Durability: every thread start the journal records `sent` has its thread in the store.
        let store_text = std::fs::read_to_string(&store).unwrap_or_default();
        let journal_text = std::fs::read_to_string(&journal).unwrap_or_default();
        for line in journal_text.lines().filter(|l| l.contains(",sent,")) {
            let key = line.split(',').nth(1).expect("a key");
            if key.ends_with("-0") {
                assert!(
                    store_text.contains(&format!(",{key},")),
                    "kill {kills}: {key} is recorded sent, its thread is not in the store:\n{store_text}"
                );
            }
        }
    }
    assert!(kills >= 3, "only {kills} kills landed");
    // A last run to the end; rows a kill left unknown stay unknown (and a reply whose start is
    // unknown waits), but nothing is split or doubled.
    let out = s.run(&MAP).await;
    assert!(matches!(out.code, Some(0 | 1)), "{out:?}");
    let stored = assert_threads_hold(&s, &mails);
    let results = fixture::results(&journal);
    for r in &results {
        let status = r["status"].as_str();
        assert!(matches!(status, "sent" | "unknown" | "waiting"), "{r:?}");
        if status == "waiting" {
            assert!(r["error"].contains("--verify-unknown"), "{r:?}");
        }
    }
    let sent = results.iter().filter(|r| r["status"] == "sent").count();
    assert!(stored.values().sum::<usize>() >= sent);
    // The rows left unknown are settled by reading back (a start found stored gives its thread's
    // id): then every thread is whole, each message once, and every thread a kill cut went on
    // in the same thread.
    let out = s
        .run(&[&MAP[..], &["--verify-unknown", "--settle", "0s"]].concat())
        .await;
    out.expect_code(0);
    s.assert_all_sent(mails.len());
    // Threads held back behind an unknown start land after later messages of their
    // conversation (README "Threads"): the date order is not asked of this run.
    let stored = assert_threads(&s, &mails, true);
    assert_eq!(stored, sizes);
    assert!(
        cut.iter()
            .all(|(t, n)| stored.get(t).is_some_and(|now| now > n)),
        "a thread did not continue across a kill: cut {cut:?}, stored {stored:?}"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_whose_start_failed_waits_and_goes_into_its_thread_next_run() {
    let (csv, mails) = export(0xfa11);
    let start = |t: usize| mails.iter().find(|m| m.thread == t && m.nth == 0).unwrap();
    // Thread 3's start is invalid (a broken emailTo); the rest are fine.
    let broken = csv.replace(
        &line(start(3), "ann@example.com"),
        &line(start(3), "not-an-address"),
    );
    assert_ne!(broken, csv);
    let s = Scenario::new(&broken).await;
    s.run(&MAP).await.expect_code(1);
    let results = s.results();
    let waiting: Vec<&HashMap<String, String>> = results
        .iter()
        .filter(|r| r["status"] == "waiting")
        .collect();
    let replies_of_3 = mails.iter().filter(|m| m.thread == 3 && m.nth > 0).count();
    assert_eq!(waiting.len(), replies_of_3, "{results:?}");
    for r in &waiting {
        assert!(r["key"].starts_with("gm-03-"), "{r:?}");
        assert!(
            r["error"].contains("the first message of its thread")
                && r["error"].contains("invalid"),
            "{r:?}"
        );
    }
    assert!(
        s.record()
            .iter()
            .all(|v| !v["body"]["altId"].as_str().unwrap().starts_with("gm-03-"))
    );
    // Fixed, the next run sends the start, then its replies into its thread.
    s.w.write(INPUT, &csv);
    s.run(&MAP).await.expect_code(0);
    s.assert_all_sent(mails.len());
    // (Thread 3 lands after later messages of its conversation: held, it went a run later.)
    assert_eq!(assert_threads(&s, &mails, true), thread_sizes(&mails));
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_the_server_failed_holds_its_replies_until_the_next_run() {
    let (csv, mails) = export(0x5e7f);
    let s = Scenario::with(csv, |c| SandboxConfig {
        fail_rate: 1.0,
        ..c
    })
    .await;
    // Every request fails: the starts fail, their replies are held.
    let out = s.run(&[&MAP[..], &["--max-retries", "0"]].concat()).await;
    assert!(matches!(out.code, Some(1 | 3)), "{out:?}");
    assert!(s.record().is_empty());
    let statuses = s.statuses();
    assert_eq!(statuses.get("sent"), None, "{statuses:?}");
    // The fault is over: the next run sends every thread whole.
    s.sb()
        .set_faults(&SandboxConfig::unlimited())
        .expect("no faults");
    s.run(&MAP).await.expect_code(0);
    s.assert_all_sent(mails.len());
    assert_eq!(assert_threads_hold(&s, &mails), thread_sizes(&mails));
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_nights_file_continues_a_thread_and_an_api_email_message_id_still_works() {
    let (csv, mails) = export(0x9a17);
    let s = Scenario::new(&csv).await;
    s.run(&MAP).await.expect_code(0);
    let record = s.record();
    let start_of_0 = mails.iter().find(|m| m.thread == 0 && m.nth == 0).unwrap();
    let root = record
        .iter()
        .find(|v| v["body"]["altId"] == start_of_0.alt.as_str())
        .and_then(|v| v["emailMessageId"].as_str())
        .expect("thread 0's start was given an id")
        .to_owned();
    // Tonight's file: a new reply of thread 0 (its start was sent last night, in another
    // file), and a row naming the API's own emailMessageId, with no thread cell.
    let header = csv.lines().next().unwrap();
    let late = Mail {
        alt: "gm-00-9".into(),
        nth: 9,
        date: "2024-04-01T00:00:00Z".into(),
        ..start_of_0.clone()
    };
    let mut tonight = format!("{header},emailMessageId\n");
    tonight.push_str(&format!("{},\n", line(&late, "ann@example.com").trim_end()));
    tonight.push_str(&format!(
        "api-1,conv0000,cont0000,Email,inbound,2024-04-02T00:00:00Z,Re,<p>by id</p>,c1@example.com,ann@example.com,,{root}\n"
    ));
    s.w.write("tonight.csv", tonight);
    s.run_input("tonight.csv", &[&MAP[..], &["--results", RESULTS]].concat())
        .await
        .expect_code(0);
    let record = s.record();
    let stored = |alt: &str| {
        record
            .iter()
            .find(|v| v["body"]["altId"] == alt)
            .unwrap_or_else(|| panic!("{alt} stored"))
            .clone()
    };
    assert_eq!(stored("gm-00-9")["thread"], root.as_str());
    assert_eq!(stored("gm-00-9")["body"]["emailMessageId"], root.as_str());
    assert_eq!(stored("api-1")["body"]["emailMessageId"], root.as_str());
    assert_eq!(stored("api-1")["thread"], root.as_str());
    assert_eq!(s.stats().unknown_email_message_ids, 0);
    s.finish().await;
}

#[test]
fn validate_reports_the_thread_column() {
    let (csv, mails) = export(0xa1d);
    let w = crate::support::WorkDir::new();
    let mut csv = csv.replace("X-GM-THRID", "Thread ID");
    // An SMS row with a thread cell: the cell is ignored, and said so.
    csv.push_str("sms-1,conv0001,cont0001,SMS,inbound,2024-05-01T00:00:00Z,,,,,77\n");
    w.write("in.csv", csv.as_bytes());
    let out = w.run(&["validate", "in.csv", "--show", "1"]);
    out.expect_stdout("threadId               ← column \"Thread ID\"");
    out.expect_stdout(&format!(
        "threads: threadId from column \"Thread ID\": {} e-mail(s) in {THREADS} thread(s), each sent as one thread in date order",
        mails.len()
    ));
    out.expect_stdout("1 row(s) with a threadId are not e-mails");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_export_keeps_the_file_order_and_its_early_replies_wait() {
    let (csv, mails) = export(0x6217);
    let w = crate::support::WorkDir::new();
    w.write(INPUT, crate::streams::gzip(csv.as_bytes()));
    let s = Scenario::prepared(w, |c| c).await;
    // No --order: date order would need a decoded copy of the gzip, so the file's order it is,
    // and replies listed before their start wait for the next run.
    let out = s.run(&MAP).await;
    out.expect_code(1);
    out.expect_stderr("a thread column with --order input");
    let waiting = s.statuses().get("waiting").copied().unwrap_or(0);
    assert!(waiting > 0, "{:?}", s.statuses());
    assert_threads(&s, &mails, true);
    s.run(&MAP).await.expect_code(0);
    s.assert_all_sent(mails.len());
    assert_eq!(assert_threads(&s, &mails, true), thread_sizes(&mails));
    s.finish().await;
}

/// Power cuts (played as `tests/it/power_cut.rs` does: a shim logs what each sync covered, the
/// run is killed, and the results file and the thread store are cut back to it): a thread
/// start whose `sent` line survives a cut always has its thread in the store that survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_any_power_cut_a_start_recorded_sent_has_its_thread_on_disk() {
    let (csv, mails) = export(0xc07);
    let s = Scenario::with(csv, |c| SandboxConfig {
        latency: fixture::latency(0, 8),
        ..c
    })
    .await;
    let synclog = s.synclog();
    let args = [&MAP[..], &["--concurrency", "4"]].concat();
    let journal = s.path(RESULTS);
    let store = s.path(&format!("{RESULTS}.threads.csv"));
    let mut rng = fastrand::Rng::with_seed(0xc07);
    let mut cuts = 0;
    let mut starts_checked = 0;
    for round in 1..=30 {
        let (disk, store_disk) = (std::fs::read(&journal).ok(), std::fs::read(&store).ok());
        let before = fixture::file_len(&journal);
        let log = s.path(&format!("synclog-{round}.txt"));
        let log_name = log.to_string_lossy().into_owned();
        let env = synclog.env(&log_name, &[]);
        let child = s.spawn_logged(&args, &env, &format!("run-{round}.log"));
        let growth = rng.u64(100..1200);
        let path = journal.clone();
        let finished = tokio::task::spawn_blocking(move || {
            fixture::kill_at_len(child, &path, before + growth, &format!("round {round}"))
        })
        .await
        .expect("the round ends");
        if finished {
            break;
        }
        cuts += 1;
        crate::power_cut::power_cut(&journal, &log, disk.as_deref());
        crate::power_cut::power_cut(&store, &log, store_disk.as_deref());
        let journal_text = std::fs::read_to_string(&journal).unwrap_or_default();
        let store_text = std::fs::read_to_string(&store).unwrap_or_default();
        for line in journal_text.lines().filter(|l| l.contains(",sent,")) {
            let key = line.split(',').nth(1).expect("a key");
            if key.ends_with("-0") {
                starts_checked += 1;
                assert!(
                    store_text.contains(&format!(",{key},")),
                    "cut {cuts}: {key} is recorded sent on disk, its thread is not:\n{store_text}"
                );
            }
        }
    }
    assert!(
        cuts >= 5 && starts_checked > 0,
        "{cuts} cuts, {starts_checked} starts checked"
    );
    let out = s.run(&MAP).await;
    assert!(matches!(out.code, Some(0 | 1)), "{out:?}");
    assert_threads(&s, &mails, true);
    s.finish().await;
}

/// Half the e-mails (seeded) are stored and answered 504 (every one would trip the breaker
/// of 25 server failures in a row). A start among them is found by read-back and recorded
/// `sent`; no answer carried its `emailMessageId`, but the read of it by ID does
/// (`meta.email.messageIds`): it goes in the thread store before its `sent` line, and its
/// replies go into its thread in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_found_by_read_back_gives_its_thread_id_and_its_replies_go_into_it() {
    let (csv, mails) = export(0x504);
    let s = Scenario::with(csv, |c| SandboxConfig {
        stored_504_rate: 0.5,
        seed: Some(0x504),
        ..c
    })
    .await;
    let out = s.run(&MAP).await;
    out.expect_code(0);
    let results = s.results();
    assert_eq!(results.len(), mails.len());
    let mut confirmed_starts = 0;
    for r in &results {
        assert_eq!(r["status"], "sent", "{r:?}");
        if r["key"].ends_with("-0") && r["error"].contains("confirmed by read-back") {
            confirmed_starts += 1;
        }
    }
    assert!(
        confirmed_starts >= 3,
        "{confirmed_starts} starts found by read-back"
    );
    assert_eq!(s.record().len(), mails.len(), "every e-mail stored once");
    let stored = assert_threads_hold(&s, &mails);
    assert_eq!(
        stored,
        thread_sizes(&mails),
        "each source thread is one thread"
    );
    let store = std::fs::read_to_string(s.w.path(&format!("{RESULTS}.threads.csv"))).unwrap();
    assert_eq!(store.lines().count(), 1 + THREADS, "{store}");
    s.finish().await;
}

/// Starts stored but never answered (the connection dropped) are left `unknown`, their replies
/// `waiting`; `--verify-unknown` finds each start, reads its thread's `emailMessageId`, and
/// its replies go into its thread in that same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_settled_by_verify_unknown_have_their_replies_sent_into_their_threads() {
    let (csv, mails) = export(0xd40);
    let s = Scenario::with(csv, |c| SandboxConfig {
        drop_rate: 0.5,
        seed: Some(0xd40),
        ..c
    })
    .await;
    s.run(&MAP).await.expect_code(1);
    let results = s.results();
    let unknown_starts: Vec<&str> = results
        .iter()
        .filter(|r| r["key"].ends_with("-0") && r["status"] == "unknown")
        .map(|r| r["key"].as_str())
        .collect();
    assert!(unknown_starts.len() >= 3, "{unknown_starts:?}");
    let mut held = 0;
    for r in &results {
        let start = format!(
            "{}0",
            r["key"].trim_end_matches(|c: char| c.is_ascii_digit())
        );
        if unknown_starts.contains(&start.as_str()) && r["key"] != start {
            assert_eq!(r["status"], "waiting", "{r:?}");
            held += 1;
        }
    }
    assert!(held >= 3, "{held} replies held by an unknown start");
    s.sb()
        .set_faults(&SandboxConfig::unlimited())
        .expect("no faults");
    let out = s
        .run(&[&MAP[..], &["--verify-unknown", "--settle", "0s"]].concat())
        .await;
    out.expect_code(0);
    out.expect_stdout("found stored");
    for r in s.results() {
        assert_eq!(r["status"], "sent", "{r:?}");
    }
    assert_eq!(s.record().len(), mails.len(), "every e-mail stored once");
    // Threads held back land after later messages of their conversation (held: true).
    let stored = assert_threads(&s, &mails, true);
    assert!(s.stats().reads_by_id > 0, "the starts' ids were read by ID");
    assert_eq!(
        stored,
        thread_sizes(&mails),
        "each source thread is one thread"
    );
    s.finish().await;
}
