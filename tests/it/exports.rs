//! Real exports as users have them (issue 14): a Twilio Console messaging log imported with
//! `--preset twilio` and nothing else, value maps, columns chosen by direction, row filters,
//! dates in the forms exports write, and the preview of `validate --show`. Real binary, real
//! files, the sandbox's record as the ground truth.

use std::collections::HashMap;

use serde_json::Value;

use crate::scenario::{RESULTS, Scenario};
use crate::support::WorkDir;

const LOCATION: &str = "sandboxLocation0001";
const OUR_SMS: &str = "+14155550100";
const OUR_WHATSAPP: &str = "whatsapp:+14155238886";

/// One message of the synthetic Twilio log.
struct Message {
    sid: String,
    /// The contact's number as Twilio writes it (`whatsapp:` for WhatsApp).
    contact: &'static str,
    direction: &'static str,
    status: &'static str,
    body: String,
    /// Seconds since 1970.
    sent: i64,
}

const CONTACTS: [&str; 4] = [
    "+15035550001",
    "+15035550002",
    "whatsapp:+447700900123",
    "+15035550003",
];

/// 24 messages over four contacts (one on WhatsApp), interleaved, every direction Twilio
/// writes; a multi-line body with quotes and commas; one failed and one undelivered row.
fn messages() -> Vec<Message> {
    let directions = [
        "inbound",
        "outbound-api",
        "outbound-reply",
        "inbound",
        "outbound-call",
    ];
    let start = 1_709_648_521; // Tue, 05 Mar 2024 14:22:01 +0000
    (0..24)
        .map(|i| {
            let direction = directions[i % directions.len()];
            let status = match i {
                7 => "failed",
                12 => "undelivered",
                _ if direction == "inbound" => "received",
                _ => "delivered",
            };
            let body = match i {
                5 => "Line one of a long note,\nline two with \"quotes\",\nand the end.".to_owned(),
                _ => format!("message {i}"),
            };
            Message {
                sid: format!("SM{i:032x}"),
                contact: CONTACTS[i % CONTACTS.len()],
                direction,
                status,
                body,
                sent: start + 37 * i as i64,
            }
        })
        .collect()
}

fn rfc2822(seconds: i64) -> String {
    let ts = jiff::Timestamp::from_second(seconds).unwrap();
    jiff::fmt::rfc2822::to_string(&ts.to_zoned_datetime(jiff::tz::TimeZone::UTC)).unwrap()
}

fn quoted(cell: &str) -> String {
    format!("\"{}\"", cell.replace('"', "\"\""))
}

/// The log as the Console exports it: newest first.
fn twilio_csv(messages: &[Message]) -> String {
    let mut out = String::from(
        "From,To,Body,Status,SentDate,ApiVersion,NumSegments,ErrorCode,AccountSid,Sid,Direction,Price,PriceUnit\n",
    );
    for m in messages.iter().rev() {
        let ours = if m.contact.starts_with("whatsapp:") {
            OUR_WHATSAPP
        } else {
            OUR_SMS
        };
        let (from, to) = match m.direction {
            "inbound" => (m.contact, ours),
            _ => (ours, m.contact),
        };
        let error = if m.status == "failed" { "30008" } else { "" };
        out.push_str(&format!(
            "{from},{to},{},{},{},2010-04-01,1,{error},AC{:032x},{},{},-0.00790,USD\n",
            quoted(&m.body),
            m.status,
            quoted(&rfc2822(m.sent)),
            7,
            m.sid,
            m.direction,
        ));
    }
    out
}

fn preset_args() -> Vec<&'static str> {
    vec![
        "--preset",
        "twilio",
        "--location-id",
        LOCATION,
        "--create-contacts",
    ]
}

/// How the log reaches the binary.
#[derive(Clone, Copy, Debug)]
enum Given {
    /// `in.csv` as it is.
    File,
    /// `in.csv.gz`, gzip-compressed.
    Gzip,
    /// `-`, piped in by `cat in.csv |`.
    Stdin,
}

/// `run` with the preset on the log as `given`, results in [`RESULTS`] whatever the input.
async fn run_twilio(s: &Scenario, given: Given) -> crate::support::Output {
    let mut args = preset_args();
    args.extend(["--results", RESULTS]);
    match given {
        Given::File => s.run(&args).await,
        Given::Gzip => s.run_input("in.csv.gz", &args).await,
        Given::Stdin => {
            s.invoke(&args)
                .input("-")
                .through_shell(r#"cat in.csv | exec "$0" "$@""#)
                .output()
                .await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twilio_log_imports_with_the_preset_and_nothing_else() {
    twilio_log_imports(Given::File).await;
}

/// `--order date` (the preset's) over a compressed file: the rows are read again at the offsets
/// of the decompressed text, from its copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzipped_twilio_log_imports_in_date_order() {
    twilio_log_imports(Given::Gzip).await;
}

/// `--order date` over a pipe, which can be read only once and not sought in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twilio_log_piped_to_stdin_imports_in_date_order() {
    twilio_log_imports(Given::Stdin).await;
}

async fn twilio_log_imports(given: Given) {
    let messages = messages();
    let csv = twilio_csv(&messages);
    let s = Scenario::new(&csv).await;
    s.w.write("in.csv.gz", crate::streams::gzip(csv.as_bytes()));
    let out = run_twilio(&s, given).await;
    // Skipped rows are left out on purpose: no attention needed.
    out.expect_code(0);
    out.expect_stdout("skipped               2");
    // Every other column is left out without a warning.
    assert!(!out.stderr.contains("map to no field"), "{out:?}");

    // Each message once, none of the two Twilio could not deliver.
    let stored = s.stored();
    let sent: Vec<&Message> = messages
        .iter()
        .filter(|m| !matches!(m.status, "failed" | "undelivered"))
        .collect();
    assert_eq!(stored.len(), sent.len(), "{out:?}");
    assert!(stored.values().all(|ids| ids.len() == 1), "{stored:?}");

    // The right contact for each direction, the right type, the date and body kept.
    let dir = s.sb().directory();
    let phone_of: HashMap<&str, &str> = dir
        .contacts
        .iter()
        .map(|c| (c.id.as_str(), c.phone.as_deref().unwrap_or("")))
        .collect();
    let record: HashMap<String, Value> = s
        .record()
        .into_iter()
        .map(|v| {
            (
                v["body"]["altId"].as_str().unwrap().to_owned(),
                v["body"].clone(),
            )
        })
        .collect();
    for m in &sent {
        let body = &record[&m.sid];
        let number = m.contact.trim_start_matches("whatsapp:");
        assert_eq!(
            phone_of[body["contactId"].as_str().unwrap()],
            number,
            "{body}"
        );
        let whatsapp = m.contact.starts_with("whatsapp:");
        assert_eq!(
            body["type"],
            if whatsapp { "WhatsApp" } else { "SMS" },
            "{body}"
        );
        let direction = if m.direction == "inbound" {
            "inbound"
        } else {
            "outbound"
        };
        assert_eq!(body["direction"], direction, "{body}");
        assert_eq!(
            body["date"],
            jiff::Timestamp::from_second(m.sent).unwrap().to_string(),
            "{body}"
        );
        assert_eq!(body["message"], m.body.as_str());
    }
    assert_eq!(dir.contacts.len(), CONTACTS.len(), "one contact per number");
    // Each conversation oldest first, though the log is newest first.
    let stats = s.stats();
    assert_eq!(stats.out_of_order, 0, "{stats:?}");

    // The skipped rows are recorded, with their status and reason.
    let results = s.w.results(RESULTS);
    assert_eq!(results.len(), messages.len());
    for m in messages
        .iter()
        .filter(|m| matches!(m.status, "failed" | "undelivered"))
    {
        let line = results.iter().find(|r| r["key"] == m.sid).expect("a line");
        assert_eq!(line["status"], "skipped", "{line:?}");
        assert!(
            line["error"].contains(&format!("Status is \"{}\"", m.status)),
            "{line:?}"
        );
    }
    let report = s.w.run(&["report", RESULTS]);
    report.expect_code(0).expect_stdout("skipped");

    // A second run sends nothing.
    let again = run_twilio(&s, given).await;
    again.expect_code(0);
    assert_eq!(s.record().len(), sent.len(), "{again:?}");
    assert_eq!(s.stats().out_of_order, 0);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_date_order_the_newest_first_log_is_sent_out_of_order() {
    // The control for the test above: the flag wins over the preset, and the sandbox sees the
    // timelines built backwards.
    let s = Scenario::new(twilio_csv(&messages())).await;
    let mut args = preset_args();
    args.extend(["--order", "input"]);
    s.run(&args).await.expect_code(0);
    assert!(s.stats().out_of_order > 0, "{:?}", s.stats());
    s.finish().await;
}

#[test]
fn the_preset_command_lists_and_prints_the_shipped_mappings() {
    let w = WorkDir::new();
    w.run(&["preset"]).expect_code(0).expect_stdout("twilio");
    let out = w.run(&["preset", "twilio"]);
    out.expect_code(0)
        .expect_stdout("https://www.twilio.com/docs/messaging/api/message-resource")
        .expect_stdout("contactPhone = { inbound = \"From\", outbound = \"To\" }");
    // What it prints is a --config file: used as one, it maps the log as the preset does.
    w.write("twilio.toml", &out.stdout);
    w.write("log.csv", twilio_csv(&messages()));
    let with_config = w.run(&[
        "validate",
        "log.csv",
        "--config",
        "twilio.toml",
        "--location-id",
        LOCATION,
    ]);
    with_config
        .expect_code(0)
        .expect_stdout("22 valid, 0 invalid, 2 skipped");
    w.run(&["preset", "hubspot"])
        .expect_code(2)
        .expect_stderr("the presets are twilio");
}

#[test]
fn value_maps_direction_columns_and_filters_from_the_command_line() {
    let w = WorkDir::new();
    w.write("log.csv", twilio_csv(&messages()));
    let mut args = vec![
        "validate",
        "log.csv",
        "--location-id",
        LOCATION,
        "--map",
        "message=Body",
        "--map",
        "date=SentDate",
        "--map-inbound",
        "contactPhone=From",
        "--map-outbound",
        "contactPhone=To",
        "--set",
        "type=SMS",
        "--skip-if",
        "Status=failed",
        "--skip-if",
        "Status=undelivered",
    ];
    // Unmapped, the export's spellings are refused with today's error and a way out.
    let refused = w.run(&args);
    refused.expect_code(1).expect_stdout(
        "direction 'outbound-reply' is not one of inbound, outbound (an export's own spelling can be translated: --value direction:outbound-reply=VALUE)",
    );
    args.extend([
        "--value",
        "direction:outbound-api=outbound",
        "--value",
        "direction:outbound-reply=outbound",
        "--value",
        "direction:Outbound-Call=outbound",
    ]);
    // The WhatsApp rows' numbers are not phone numbers without the preset's prefix rule.
    let out = w.run(&args);
    out.expect_code(1)
        .expect_stdout("16 valid, 6 invalid, 2 skipped");
    let lines = w.results("log.validation.csv");
    let whatsapp_rows = lines.iter().filter(|l| l["status"] == "invalid").count();
    assert_eq!(whatsapp_rows, 6);
    assert!(
        lines
            .iter()
            .filter(|l| l["status"] == "invalid")
            .all(|l| l["error"].contains("whatsapp:+447700900123"))
    );
    // A value map to a value the field does not take is refused before any row.
    let bad = w.run(&[
        "validate",
        "log.csv",
        "--preset",
        "twilio",
        "--location-id",
        LOCATION,
        "--value",
        "direction:inbound=sideways",
    ]);
    bad.expect_code(2).expect_stderr(
        "--value direction:inbound=sideways: direction 'sideways' is not one of inbound, outbound",
    );
}

#[test]
fn validate_show_previews_the_mapping_and_the_lookups() {
    let w = WorkDir::new();
    w.write("log.csv", twilio_csv(&messages()));
    let out = w.run(&[
        "validate",
        "log.csv",
        "--preset",
        "twilio",
        "--location-id",
        LOCATION,
        "--show",
        "3",
    ]);
    out.expect_code(0)
        .expect_stdout("columns → fields:")
        .expect_stdout(
            "contactPhone           ← column \"From\" on inbound rows, column \"To\" on outbound rows; \"whatsapp:\" prefix removed, the row gets type=WhatsApp",
        )
        .expect_stdout("direction              ← column \"Direction\"; values \"outbound-api\" → \"outbound\"")
        .expect_stdout("rows whose \"Status\" is failed or undelivered are skipped")
        .expect_stdout("(--order date)")
        .expect_stdout("\"conversationId\": \"(looked up)\"")
        .expect_stdout(&format!(
            "looked up by (not sent): {{\"locationId\":\"{LOCATION}\",\"phone\":\"+15035550003\"}}"
        ));
    assert!(!out.stdout.contains("\"conversationId\": \"\""), "{out:?}");
}

#[test]
fn the_date_forms_exports_write_pass_validate() {
    let w = WorkDir::new();
    let dates = [
        "2024-03-05T14:22:01Z",
        "2024-03-05T15:22:01+01:00",
        "2024-03-05 14:22:01Z",
        "2024-03-05 14:22:01+00:00",
        "2024-03-05 14:22:01+0000",
        "2024-03-05 14:22:01 +0000",
        "2024-03-05 14:22:01 UTC",
        "Tue, 05 Mar 2024 14:22:01 +0000",
        "Tue, 05 Mar 2024 14:22:01 GMT",
    ];
    let mut csv = String::from("conversationId,contactId,type,direction,message,date\n");
    for (i, d) in dates.iter().enumerate() {
        csv.push_str(&format!("c{i},k{i},SMS,inbound,hi,\"{d}\"\n"));
    }
    w.write("dates.csv", &csv);
    w.run(&["validate", "dates.csv"])
        .expect_code(0)
        .expect_stdout(&format!("{} valid, 0 invalid", dates.len()));
    let bodies: Vec<String> = w
        .results("dates.validation.csv")
        .iter()
        .map(|l| l["status"].clone())
        .collect();
    assert!(bodies.iter().all(|s| s == "valid"), "{bodies:?}");

    // Unix times: by the column's name, or by --date-format; several formats in order.
    w.write(
        "epoch.csv",
        "conversationId,contactId,type,direction,message,sent_epoch_ms\nc1,k1,SMS,inbound,hi,1709648521000\n",
    );
    w.run(&[
        "validate",
        "epoch.csv",
        "--map",
        "date=sent_epoch_ms",
        "--show",
        "1",
    ])
    .expect_code(0)
    .expect_stdout("\"date\": \"2024-03-05T14:22:01Z\"");
    w.write(
        "mixed.csv",
        "conversationId,contactId,type,direction,message,date\nc1,k1,SMS,inbound,hi,1709648521\nc1,k1,SMS,inbound,hi,05/03/2024 14:22\n",
    );
    w.run(&[
        "validate",
        "mixed.csv",
        "--date-format",
        "%d/%m/%Y %H:%M",
        "--date-format",
        "epoch-s",
        "--timezone",
        "UTC",
    ])
    .expect_code(0)
    .expect_stdout("2 valid, 0 invalid");
}

#[test]
fn a_bad_date_names_file_line_column_and_what_is_accepted() {
    let w = WorkDir::new();
    w.write(
        "bad.csv",
        "conversationId,contactId,type,direction,message,date\nc1,k1,SMS,inbound,hi,2024-03-05 14:22:01 +0000\nc1,k1,SMS,inbound,hi,05.03.2024 14:22\n",
    );
    let out = w.run(&["validate", "bad.csv"]);
    out.expect_code(1)
        .expect_stdout("most frequent errors in bad.csv:")
        .expect_stdout("line 3, column 6 (date): date '05.03.2024 14:22' is not a date-time in a form read without --date-format")
        .expect_stdout("Tue, 05 Mar 2024 14:22:01 +0000 (RFC 2822)")
        .expect_stdout("--date-format (strftime such as '%d/%m/%Y %H:%M', or epoch-s / epoch-ms");
    for internal in ["unparsed input", "expected no"] {
        assert!(!out.stdout.contains(internal), "{out:?}");
    }
}

#[test]
fn validate_warns_when_a_conversations_dates_run_backwards() {
    let w = WorkDir::new();
    w.write(
        "newest-first.csv",
        "conversationId,contactId,type,direction,message,date\n\
         c1,k1,SMS,inbound,second,2024-03-05T14:23:00Z\n\
         c2,k2,SMS,inbound,only,2024-03-05T14:00:00Z\n\
         c1,k1,SMS,inbound,first,2024-03-05T14:22:00Z\n",
    );
    w.run(&["validate", "newest-first.csv"])
        .expect_code(0)
        .expect_stderr(
            "the dates of 1 conversation(s) run backwards (first at line 4, older than line 2",
        )
        .expect_stderr("--order date");
    let ordered = w.run(&["validate", "newest-first.csv", "--order", "date"]);
    ordered.expect_code(0);
    assert!(!ordered.stderr.contains("run backwards"), "{ordered:?}");
}

/// Per conversation, the dates of the messages in the order the sandbox stored them (its record
/// accumulates across sandboxes): how many went back in time.
fn stored_out_of_order(s: &Scenario) -> usize {
    let mut last: HashMap<String, String> = HashMap::new();
    let mut backwards = 0;
    for v in s.record() {
        let body = &v["body"];
        let conversation = body["conversationId"].as_str().unwrap().to_owned();
        let date = body["date"].as_str().unwrap().to_owned();
        if let Some(previous) = last.get(&conversation)
            && date < *previous
        {
            backwards += 1;
        }
        last.insert(conversation, date);
    }
    backwards
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_out_of_retries_holds_back_its_conversation_until_the_next_run() {
    use lc_import::sandbox::SandboxConfig;
    let rows = 240;
    let mut s = Scenario::with(crate::support::export(rows, 12), |c| SandboxConfig {
        fail_rate: 0.25,
        seed: Some(11),
        ..c
    })
    .await;
    let args = ["--max-retries", "1", "--concurrency", "4"];
    let out = s.run(&args).await;
    out.expect_code(1);
    let counts = s.statuses();
    // The premise: some rows ran out of retries, and rows after them were held back.
    assert!(
        counts.get("failed").copied().unwrap_or(0) > 0,
        "{counts:?}{out:?}"
    );
    let waiting = counts.get("waiting").copied().unwrap_or(0);
    assert!(waiting > 0, "{counts:?}{out:?}");
    out.expect_stdout("waiting");
    for r in s.results().iter().filter(|r| r["status"] == "waiting") {
        assert!(
            r["error"].contains("of the same conversation failed"),
            "{r:?}"
        );
    }
    assert_eq!(
        stored_out_of_order(&s),
        0,
        "held rows were not sent before the failed one"
    );
    let report = s.w.run(&["report", RESULTS]);
    report.expect_code(1).expect_stdout("waiting");

    // The server is healthy again: the same command sends the failed rows, then the rows that
    // waited for them, in order.
    s.restart(|c| SandboxConfig {
        fail_rate: 0.0,
        ..c
    })
    .await;
    s.run(&args).await.expect_code(0);
    s.assert_each_stored_once(rows);
    s.assert_all_sent(rows);
    assert_eq!(
        stored_out_of_order(&s),
        0,
        "each conversation's timeline in order across runs"
    );
    s.finish().await;
}
