//! Rows keyed by content (no key column) that were edited after they were sent: a fixed typo
//! makes a new key, and without the content index the rerun sent the row a second time, exit 0.
//! Now such a row is recorded `changed` and not sent, unless `--send-changed`.

use std::collections::HashMap;

use serde_json::Value;

use crate::scenario::Scenario;
use crate::support;

/// An export of `rows` rows with no key column (its `altId` column renamed, so not mapped).
fn without_key_column(rows: usize) -> String {
    support::export(rows, 3).replace("altId,", "ref,")
}

/// How many times the sandbox stored each message text.
fn stored_texts(s: &Scenario) -> HashMap<String, usize> {
    let mut texts = HashMap::new();
    for v in s.record() {
        let text = v["body"]["message"].as_str().unwrap_or_default().to_owned();
        *texts.entry(text).or_default() += 1;
    }
    texts
}

fn row(rows: &[HashMap<String, String>], n: usize) -> &HashMap<String, String> {
    rows.iter()
        .find(|r| r["row"] == n.to_string())
        .unwrap_or_else(|| panic!("no line for row {n}: {rows:?}"))
}

/// A typo fixed in a row sent earlier: not sent again, `changed` naming the earlier row and
/// its message, exit 1; then `--send-changed` sends it as a new message, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_row_keyed_by_content_is_changed_not_sent_again() {
    let export = without_key_column(30);
    let s = Scenario::new(&export).await;
    s.run(&[]).await.expect_code(0);
    let first = s.results();
    let earlier_id = row(&first, 8)["message_id"].clone();
    assert!(!earlier_id.is_empty(), "{first:?}");
    assert!(
        s.path("in.results.csv.content.csv").exists(),
        "rows keyed by content are indexed beside the results file"
    );

    s.w.write(
        "in.csv",
        export.replace("message 7\n", "message 7 (typo fixed)\n"),
    );
    let out = s.run(&[]).await;
    out.expect_code(1)
        .expect_stdout("(0 now, 29 in earlier runs)")
        .expect_stdout("changed               1")
        .expect_stdout("--send-changed");
    let rows = s.results();
    let edited = row(&rows, 8);
    assert_eq!(edited["status"], "changed", "{edited:?}");
    assert!(
        edited["error"].contains(&format!(
            "row 8 looks like row 8 sent earlier as message {earlier_id} (same conversation, direction, type and date; a cell was edited)"
        )),
        "{edited:?}"
    );
    assert!(edited["error"].contains("--send-changed"), "{edited:?}");
    assert_eq!(s.record().len(), 30, "nothing new stored");
    assert_eq!(s.stats().requests, 30, "no request for the edited row");
    s.w.run(&["report", "in.results.csv"])
        .expect_code(1)
        .expect_stdout("  changed            1");

    // Without the flag, the next run holds it back again (a `changed` row is not done).
    s.run(&[]).await.expect_code(1);
    assert_eq!(s.record().len(), 30);

    let out = s.run(&["--send-changed"]).await;
    out.expect_code(0)
        .expect_stdout("(1 now, 29 in earlier runs)");
    let rows = s.results();
    let sent = row(&rows, 8);
    assert_eq!(sent["status"], "sent", "{sent:?}");
    assert_ne!(sent["message_id"], earlier_id, "a new message");
    let texts = stored_texts(&s);
    assert_eq!(texts.get("message 7 (typo fixed)"), Some(&1), "{texts:?}");
    assert_eq!(
        texts.get("message 7"),
        Some(&1),
        "the earlier message is kept"
    );
    assert_eq!(s.record().len(), 31);

    // Sent now: later runs skip it, with or without the flag.
    s.run(&[])
        .await
        .expect_code(0)
        .expect_stdout("(0 now, 30 in earlier runs)");
    assert_eq!(s.record().len(), 31);
    s.finish().await;
}

/// A row with another date is another message, not an edited one: it is sent, in the same run
/// as a row whose typo is held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_row_keyed_by_content_with_another_date_is_sent() {
    let export = without_key_column(30);
    let s = Scenario::new(&export).await;
    s.run(&[]).await.expect_code(0);
    // Row 9 moves to another date (a new message in its conversation); row 31 is new.
    let edited = export
        .replace(
            "2024-01-01T00:00:08Z,message 8\n",
            "2024-01-02T00:00:08Z,message 8\n",
        )
        .replace("message 7\n", "message 7 (typo fixed)\n")
        + "x,conv0000000000000000,cont0000000000000000,SMS,inbound,2024-01-03T00:00:00Z,message 30\n";
    s.w.write("in.csv", &edited);
    let out = s.run(&[]).await;
    out.expect_code(1)
        .expect_stdout("(2 now, 28 in earlier runs)")
        .expect_stdout("changed               1");
    let rows = s.results();
    assert_eq!(row(&rows, 8)["status"], "changed", "{rows:?}");
    assert_eq!(row(&rows, 9)["status"], "sent", "{rows:?}");
    assert_eq!(row(&rows, 31)["status"], "sent", "{rows:?}");
    let texts = stored_texts(&s);
    assert_eq!(texts.get("message 8"), Some(&2), "{texts:?}");
    assert_eq!(texts.get("message 30"), Some(&1), "{texts:?}");
    assert_eq!(texts.get("message 7 (typo fixed)"), None, "{texts:?}");
    s.finish().await;
}

/// With a key column (altId), an edited row keeps its key: it is skipped as sent, never
/// `changed`, and no content index is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_row_with_a_key_column_is_skipped_as_sent() {
    let export = support::export(30, 3);
    let s = Scenario::new(&export).await;
    s.run(&[]).await.expect_code(0);
    s.w.write(
        "in.csv",
        export.replace("message 7\n", "message 7 (typo fixed)\n"),
    );
    s.run(&[])
        .await
        .expect_code(0)
        .expect_stdout("(0 now, 30 in earlier runs)")
        .expect_stdout("changed               0");
    s.assert_each_stored_once(30);
    assert!(
        !s.path("in.results.csv.content.csv").exists(),
        "rows with a key column are not indexed by content"
    );
    let stored: Vec<Value> = s.record();
    assert_eq!(stored.len(), 30);
    s.finish().await;
}
