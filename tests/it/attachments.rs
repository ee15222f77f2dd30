//! Attachments that are local files or signed URLs (issue 15): uploaded first through the
//! sandbox's `POST /conversations/messages/upload`, over real sockets, their URLs in the
//! messages the sandbox stored; each file uploaded once, also across a SIGKILL and a resume;
//! the files that cannot be uploaded `invalid` with their names (offline, in `validate` too);
//! a 413 a `failed` row with the server's words; uploads counted by `--max-requests`.

use std::collections::HashMap;
use std::time::Duration;

use lc_import::sandbox::{SandboxConfig, UploadRules};

use crate::fixture;
use crate::scenario::Scenario;
use crate::support::WorkDir;

const HEADER: &str = "altId,conversationId,contactId,type,direction,message,attachments";

/// The uploads journal beside the results file.
const UPLOADS: &str = "in.results.csv.uploads.csv";

/// A PDF and a PNG beside the input, bytes that say which file they are.
fn pdf() -> Vec<u8> {
    let mut b = b"%PDF-1.4\n".to_vec();
    b.extend((0..70_000u32).map(|i| (i % 241) as u8));
    b
}

fn png() -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    b.extend((0..9_000u32).map(|i| (i % 13) as u8));
    b
}

/// A file server on a loopback port that serves `/signed/scan.pdf` only with the right
/// signature in its query string (403 otherwise, as an expired signed link is answered).
async fn signed_link_server(body: Vec<u8>) -> std::net::SocketAddr {
    use axum::http::{StatusCode, Uri};
    use axum::response::IntoResponse;
    let route = move |uri: Uri| {
        let body = body.clone();
        async move {
            let signed = uri
                .query()
                .unwrap_or("")
                .split('&')
                .any(|pair| pair == "X-Goog-Signature=good");
            match signed {
                true => (
                    [(axum::http::header::CONTENT_TYPE, "application/pdf")],
                    body,
                )
                    .into_response(),
                false => StatusCode::FORBIDDEN.into_response(),
            }
        }
    };
    // A link that moved to plain http on another host: a download must not follow it.
    let moved = || async {
        axum::response::Redirect::temporary(
            "http://files.example.invalid/scan.pdf?X-Goog-Signature=moved",
        )
    };
    let app = axum::Router::new()
        .route("/signed/scan.pdf", axum::routing::get(route))
        .route("/signed/moved.pdf", axum::routing::get(moved));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// `altId` → the attachments of the message the sandbox stored for it (each once).
fn stored_attachments(s: &Scenario) -> HashMap<String, Vec<String>> {
    let mut by_alt = HashMap::new();
    for line in s.record() {
        let alt = line["body"]["altId"].as_str().unwrap().to_owned();
        let attachments: Vec<String> = line["body"]["attachments"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        assert!(
            by_alt.insert(alt.clone(), attachments).is_none(),
            "{alt} stored twice"
        );
    }
    by_alt
}

fn by_key(s: &Scenario) -> HashMap<String, HashMap<String, String>> {
    s.results()
        .into_iter()
        .map(|r| (r["key"].clone(), r))
        .collect()
}

/// The sandbox keeps what it was sent under its upload folder: `upload/<id>/<name>`.
fn uploads_config(w: &WorkDir) -> impl FnOnce(SandboxConfig) -> SandboxConfig + use<> {
    let dir = w.path("upload");
    move |c| SandboxConfig {
        uploads: UploadRules {
            dir: Some(dir),
            ..UploadRules::default()
        },
        ..c
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_a_signed_link_are_uploaded_once_and_the_messages_carry_the_sandboxs_urls() {
    let w = WorkDir::new();
    std::fs::create_dir(w.path("files")).unwrap();
    w.write("files/report.pdf", pdf());
    let png_path = w.write("files/photo.png", png());
    w.write("setup.exe", b"MZ not really");
    let signed = signed_link_server(b"%PDF-1.4 scanned".to_vec()).await;
    let link = format!("http://{signed}/signed/scan.pdf?X-Goog-Signature=good&X-Goog-Expires=900");
    let expired = format!("http://{signed}/signed/scan.pdf?X-Goog-Signature=stale");
    let csv = format!(
        "{HEADER}\n\
         r0,c1,k1,Email,inbound,the report,files/report.pdf\n\
         r1,c1,k1,Email,inbound,a photo,\"{};https://cdn.example.com/logo.png\"\n\
         r2,c2,k2,SMS,inbound,a scan,{link}\n\
         r3,c2,k2,SMS,inbound,gone,files/gone.pdf\n\
         r4,c3,k3,SMS,inbound,a program,setup.exe\n\
         r5,c3,k3,Email,outbound,the report again,files/report.pdf\n\
         r6,c3,k3,SMS,inbound,plain text,\n\
         r7,c4,k4,SMS,inbound,an expired link,{expired}\n",
        png_path.display()
    );
    w.write("in.csv", &csv);

    // Offline first: the missing file and the .exe are invalid with their names.
    let checked = w.run(&["validate", "in.csv", "--location-id", "L1"]);
    checked.expect_code(1);
    let validation: HashMap<String, HashMap<String, String>> = w
        .results("in.validation.csv")
        .into_iter()
        .map(|r| (r["key"].clone(), r))
        .collect();
    assert_eq!(validation["r0"]["status"], "valid", "{checked:?}");
    assert_eq!(validation["r2"]["status"], "valid", "{checked:?}");
    let gone = &validation["r3"]["error"];
    assert!(
        gone.starts_with(
            "line 5, column 7 (attachments): attachment file 'files/gone.pdf' does not exist"
        ),
        "{gone}"
    );
    let exe = &validation["r4"]["error"];
    assert!(
        exe.contains(
            "attachment 'setup.exe' is a .exe file, a type the upload endpoint does not take"
        ),
        "{exe}"
    );

    let config = uploads_config(&w);
    let s = Scenario::prepared(w, config).await;
    let run = s.run(&["--location-id", "L1"]).await;
    run.expect_code(1)
        .expect_stdout("up to 5 attachment(s) to upload first");
    let rows = by_key(&s);
    for key in ["r0", "r1", "r2", "r5", "r6"] {
        assert_eq!(rows[key]["status"], "sent", "{key}: {:?}{run:?}", rows[key]);
    }
    assert_eq!(rows["r3"]["status"], "invalid");
    assert!(rows["r3"]["error"].contains("'files/gone.pdf' does not exist"));
    assert_eq!(rows["r4"]["status"], "invalid");
    assert!(rows["r4"]["error"].contains("'setup.exe' is a .exe file"));
    // The expired link: failed with the file server's refusal, the signature not shown.
    assert_eq!(rows["r7"]["status"], "failed");
    let refused = &rows["r7"]["error"];
    assert!(
        refused.contains("downloading http://") && refused.contains("/signed/scan.pdf?…: HTTP 403"),
        "{refused}"
    );
    assert!(!refused.contains("stale"), "{refused}");

    // Each file went up once: the PDF (attached twice), the PNG, the signed link's scan.
    let stats = s.stats();
    assert_eq!(stats.uploads, 3, "{stats:?}");
    assert_eq!(stats.attachments_not_uploaded, 0, "{stats:?}");
    let stored = stored_attachments(&s);
    assert_eq!(stored.len(), 5, "{stored:?}");
    let assets = format!("{}/conversations-assets/", s.base_url());
    let report = &stored["r0"];
    assert_eq!(report.len(), 1);
    assert!(
        report[0].starts_with(&assets) && report[0].ends_with("/report.pdf"),
        "{report:?}"
    );
    assert_eq!(stored["r5"], *report, "the second row reuses the upload");
    let photo = &stored["r1"];
    assert!(
        photo[0].starts_with(&assets) && photo[0].ends_with("/photo.png"),
        "{photo:?}"
    );
    assert_eq!(
        photo[1], "https://cdn.example.com/logo.png",
        "a plain URL is sent as it is"
    );
    let scan = &stored["r2"];
    assert!(
        scan[0].starts_with(&assets) && scan[0].ends_with("/scan.pdf"),
        "{scan:?}"
    );
    assert!(stored["r6"].is_empty());

    // What the sandbox serves at those URLs is the files, byte for byte.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    for (url, want) in [(&report[0], pdf()), (&photo[0], png())] {
        let got = client.get(url).send().await.unwrap();
        assert_eq!(got.status(), 200, "{url}");
        assert_eq!(got.bytes().await.unwrap().to_vec(), want, "{url}");
    }
    let journal = s.w.read(UPLOADS);
    assert_eq!(journal.lines().count(), 4, "header + 3 uploads:\n{journal}");
    assert!(
        journal.starts_with("key,url,name,size,uploaded_at\n"),
        "{journal}"
    );

    // The same command again: nothing sent twice, nothing uploaded again.
    s.run(&["--location-id", "L1"]).await.expect_code(1);
    assert_eq!(s.stats().uploads, 3);
    assert_eq!(stored_attachments(&s).len(), 5);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_after_the_uploads_and_a_resume_upload_nothing_twice() {
    const ROWS: usize = 12;
    let w = WorkDir::new();
    let mut csv = format!("{HEADER}\n");
    for i in 0..ROWS {
        let mut body = pdf();
        body.extend(format!("file {i}").bytes());
        w.write(&format!("doc{i}.pdf"), body);
        csv.push_str(&format!("r{i},c{i},k{i},SMS,inbound,doc {i},doc{i}.pdf\n"));
    }
    w.write("in.csv", &csv);
    // Messages hang unanswered; uploads are answered: every row's upload is made and
    // journaled, then its message hangs, holding one of the 2 places on the wire.
    let dir = w.path("upload");
    let hang = |c: SandboxConfig| SandboxConfig {
        hang_rate: 1.0,
        uploads: UploadRules {
            dir: Some(dir.clone()),
            ..UploadRules::default()
        },
        ..c
    };
    let mut s = Scenario::prepared(w, hang).await;
    let mut child = s
        .invoke(&[
            "--location-id",
            "L1",
            "--concurrency",
            "2",
            "--timeout",
            "60s",
        ])
        .spawn_logged("run1.log");
    let uploads = s.w.path(UPLOADS);
    let journaled = || {
        std::fs::read_to_string(&uploads)
            .map(|t| t.lines().count().saturating_sub(1))
            .unwrap_or(0) as u64
    };
    // Both places on the wire held by hanging messages: no upload can be in flight; and every
    // upload the sandbox answered is journaled (none is between its answer and its line).
    fixture::wait_for(
        "two messages hung, every upload journaled",
        Duration::from_secs(60),
        || {
            let stats = s.stats();
            stats.hung == 2 && stats.uploads == journaled()
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let before = journaled();
    assert!(
        (2..ROWS as u64).contains(&before),
        "{before} uploads before the kill"
    );
    assert_eq!(s.stats().uploads, before);

    // The fault passes; the resume sends the two rows left in doubt again (they were never
    // stored: hung requests store nothing) with the URLs journaled, and the rest.
    let dir = s.w.path("upload");
    s.restart(move |c| SandboxConfig {
        uploads: UploadRules {
            dir: Some(dir),
            ..UploadRules::default()
        },
        ..c
    })
    .await;
    let run = s.run(&["--location-id", "L1", "--resend-unknown"]).await;
    run.expect_code(0);
    assert_eq!(
        s.stats().uploads,
        ROWS as u64 - before,
        "only the files not journaled before the kill go up now{run:?}"
    );
    s.assert_each_stored_once(ROWS);
    let stored = stored_attachments(&s);
    let mut urls: Vec<&String> = stored.values().flatten().collect();
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), ROWS, "one URL per file: {stored:?}");
    assert_eq!(s.stats().attachments_not_uploaded, 0);
    // Each file is in the sandbox's folder once.
    let mut names = Vec::new();
    for entry in std::fs::read_dir(s.w.path("upload")).unwrap() {
        for file in std::fs::read_dir(entry.unwrap().path()).unwrap() {
            names.push(file.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    let mut want: Vec<String> = (0..ROWS).map(|i| format!("doc{i}.pdf")).collect();
    want.sort();
    assert_eq!(names, want);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_or_a_415_fails_the_row_with_the_servers_words() {
    let w = WorkDir::new();
    w.write("small.pdf", b"%PDF-1.4 small");
    w.write("large.pdf", pdf());
    w.write("photo.png", png());
    w.write(
        "in.csv",
        format!(
            "{HEADER}\nr0,c1,k1,SMS,inbound,big,large.pdf\nr1,c2,k2,SMS,inbound,small,small.pdf\nr2,c3,k3,SMS,inbound,photo,photo.png\n"
        ),
    );
    // A server stricter than the spec: 10,000 bytes at most, PDFs only.
    let s = Scenario::prepared(w, |c| SandboxConfig {
        uploads: UploadRules {
            max_size: 10_000,
            types: vec!["pdf".into()],
            ..UploadRules::default()
        },
        ..c
    })
    .await;
    let run = s.run(&["--location-id", "L1"]).await;
    run.expect_code(1);
    let rows = by_key(&s);
    assert_eq!(rows["r1"]["status"], "sent");
    let big = &rows["r0"];
    assert_eq!(big["status"], "failed", "{big:?}");
    assert_eq!(big["http_status"], "413");
    assert!(
        big["error"].starts_with("not sent: uploading /") && big["error"].contains("large.pdf"),
        "{big:?}"
    );
    assert!(
        big["error"]
            .contains("HTTP 413: File too large: large.pdf is over the limit of 10000 bytes"),
        "{big:?}"
    );
    let photo = &rows["r2"];
    assert_eq!(
        (photo["status"].as_str(), photo["http_status"].as_str()),
        ("failed", "415")
    );
    assert!(
        photo["error"].contains("HTTP 415: File type not supported: photo.png (allowed: PDF)"),
        "{photo:?}"
    );
    let stats = s.stats();
    assert_eq!(
        (
            stats.uploads,
            stats.uploads_too_large,
            stats.uploads_unsupported
        ),
        (1, 1, 1),
        "{stats:?}"
    );
    assert_eq!(s.record().len(), 1);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_count_against_max_requests() {
    let w = WorkDir::new();
    let mut csv = format!("{HEADER}\n");
    for i in 0..3 {
        w.write(&format!("a{i}.txt"), format!("note {i}"));
        csv.push_str(&format!("r{i},c{i},k{i},SMS,inbound,note {i},a{i}.txt\n"));
    }
    w.write("in.csv", &csv);
    let s = Scenario::prepared(w, |c| c).await;
    let run = s
        .run(&[
            "--location-id",
            "L1",
            "--concurrency",
            "1",
            "--max-requests",
            "4",
        ])
        .await;
    run.expect_code(3).expect_stdout("+ 0 to 3 uploads");
    // Four requests in all, uploads and messages together.
    let stats = s.stats();
    assert_eq!(stats.requests, 4, "{stats:?}{run:?}");
    assert_eq!(stats.uploads + stats.accepted, 4, "{stats:?}");
    run.expect_stdout(&format!(
        "4 requests ({} messages, 0 lookups, {} uploads)",
        stats.accepted, stats.uploads
    ));
    let run = s.run(&["--location-id", "L1"]).await;
    run.expect_code(0);
    let stats = s.stats();
    assert_eq!(stats.uploads, 3, "every file once: {stats:?}");
    assert_eq!(stats.accepted, 3);
    s.assert_each_stored_once(3);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_answered_5xx_are_retried_like_any_request() {
    const ROWS: usize = 12;
    let w = WorkDir::new();
    let mut csv = format!("{HEADER}\n");
    for i in 0..ROWS {
        w.write(&format!("n{i}.txt"), format!("note {i}"));
        csv.push_str(&format!("r{i},c{i},k{i},SMS,inbound,note {i},n{i}.txt\n"));
    }
    w.write("in.csv", &csv);
    // A third of the uploads and messages answered 500/502/503, nothing kept.
    let s = Scenario::prepared(w, |c| SandboxConfig {
        fail_rate: 0.3,
        seed: Some(15),
        ..c
    })
    .await;
    let run = s.run(&["--location-id", "L1", "--max-retries", "10"]).await;
    run.expect_code(0);
    let stats = s.stats();
    assert!(stats.server_errors > 0, "{stats:?}");
    assert_eq!(
        (stats.uploads, stats.accepted),
        (ROWS as u64, ROWS as u64),
        "{stats:?}{run:?}"
    );
    s.assert_each_stored_once(ROWS);
    let files: Vec<String> = stored_attachments(&s).into_values().flatten().collect();
    assert_eq!(files.len(), ROWS);
    // Some of the upload requests were the retries of refused ones, each file kept once.
    let attempts: u64 = run
        .stdout
        .lines()
        .find(|l| l.contains("file(s) uploaded"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the summary counts the uploads{run:?}"));
    assert!(attempts > ROWS as u64, "{attempts} upload requests{run:?}");
    assert_eq!(s.w.read(UPLOADS).lines().count(), ROWS + 1);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_links_signature_is_in_no_error_and_not_in_the_uploads_journal() {
    let w = WorkDir::new();
    let signed = signed_link_server(b"%PDF-1.4 scanned".to_vec()).await;
    let good =
        format!("http://{signed}/signed/scan.pdf?X-Goog-Signature=good&X-Goog-Credential=sekrit");
    // A port nothing listens on: the download fails before any answer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let down = format!("http://127.0.0.1:{port}/signed/gone.pdf?X-Goog-Signature=hush");
    w.write(
        "in.csv",
        format!(
            "{HEADER}\nr0,c1,k1,SMS,inbound,a scan,{good}\nr1,c2,k2,SMS,inbound,unreachable,{down}\nr2,c3,k3,SMS,inbound,the scan again,{good}\n"
        ),
    );
    let config = uploads_config(&w);
    let s = Scenario::prepared(w, config).await;
    // The first row only: the link's upload is journaled; the rest goes on the next run.
    s.run(&["--location-id", "L1", "--limit", "1"]).await;
    assert_eq!(s.stats().uploads, 1);
    let run = s.run(&["--location-id", "L1"]).await;
    run.expect_code(1);
    let rows = by_key(&s);
    assert_eq!(rows["r0"]["status"], "sent", "{run:?}");
    assert_eq!(rows["r1"]["status"], "failed", "{run:?}");
    let error = &rows["r1"]["error"];
    assert!(error.contains("/signed/gone.pdf?…"), "{error}");
    for secret in ["hush", "sekrit", "Signature=good"] {
        assert!(!error.contains(secret), "{error}");
        assert!(!format!("{run:?}").contains(secret), "{secret} in {run:?}");
        let journal = s.w.read(UPLOADS);
        assert!(!journal.contains(secret), "{secret} in\n{journal}");
        let results = s.w.read("in.results.csv");
        assert!(!results.contains(secret), "{secret} in\n{results}");
    }
    // The journal still knows the link by its hash: the third row reused the upload.
    assert_eq!(rows["r2"]["status"], "sent", "{run:?}");
    assert_eq!(s.stats().uploads, 1, "the signed link is uploaded once");
    let stored = stored_attachments(&s);
    assert_eq!(stored["r2"], stored["r0"]);
    s.finish().await;
}

/// A download follows no redirect to plain http off this machine (the link's signature would
/// cross the network in clear): the row fails saying so, and nothing is uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_follows_no_redirect_to_plain_http_elsewhere() {
    let w = WorkDir::new();
    let signed = signed_link_server(b"%PDF-1.4 scanned".to_vec()).await;
    let link = format!("http://{signed}/signed/moved.pdf?X-Goog-Signature=good");
    w.write(
        "in.csv",
        format!("{HEADER}\nr0,c1,k1,SMS,inbound,a scan,{link}\n"),
    );
    let config = uploads_config(&w);
    let s = Scenario::prepared(w, config).await;
    let run = s.run(&["--location-id", "L1"]).await;
    run.expect_code(1);
    let rows = by_key(&s);
    assert_eq!(rows["r0"]["status"], "failed", "{run:?}");
    let error = &rows["r0"]["error"];
    assert!(error.contains("redirect to plain http"), "{error}");
    assert!(
        !error.contains("Signature=moved") && !error.contains("Signature=good"),
        "{error}"
    );
    assert_eq!(s.stats().uploads, 0);
    assert!(s.record().is_empty());
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_says_which_sent_rows_it_could_not_check() {
    let w = WorkDir::new();
    w.write("report.pdf", pdf());
    w.write(
        "in.csv",
        format!(
            "{HEADER}\nr0,c1,k1,SMS,inbound,the report,report.pdf\nr1,c2,k2,SMS,inbound,plain,\n"
        ),
    );
    let config = uploads_config(&w);
    let s = Scenario::prepared(w, config).await;
    s.run(&["--location-id", "L1"]).await.expect_code(0);
    // Without the --location-id the run had, the row with a file no longer maps.
    let out = crate::readback::verify(&s, &[]).await;
    let said = format!("{out:?}");
    assert!(
        said.contains("row 1 (key r0) is recorded sent but not checked")
            && said.contains("locationId is empty")
            && said.contains("1 row(s) recorded sent were not checked"),
        "{said}"
    );
    // A check that is not whole is not a clean bill: exit 1, as for a difference.
    out.expect_code(1);
    out.expect_stdout("every row checked landed as it was sent");
    s.finish().await;
}

/// Where the two features meet: a thread's first e-mail whose file the server refuses (413)
/// fails, and its reply (with a file of its own, listed first in the file) waits rather than
/// open a new thread, its file not uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_start_whose_upload_is_refused_holds_its_reply_back() {
    let w = WorkDir::new();
    w.write("large.pdf", pdf());
    w.write("small.pdf", b"%PDF-1.4 small");
    w.write(
        "in.csv",
        format!(
            "{HEADER},date,threadId\n\
             r1,c1,k1,Email,inbound,re: the report,small.pdf,2024-01-01T11:00:00Z,T1\n\
             r0,c1,k1,Email,inbound,the report,large.pdf,2024-01-01T10:00:00Z,T1\n"
        ),
    );
    let s = Scenario::prepared(w, |c| SandboxConfig {
        uploads: UploadRules {
            max_size: 10_000,
            ..UploadRules::default()
        },
        ..c
    })
    .await;
    let run = s.run(&["--location-id", "L1"]).await;
    run.expect_code(1);
    let rows = by_key(&s);
    assert_eq!(rows["r0"]["status"], "failed", "{run:?}");
    assert_eq!(rows["r0"]["http_status"], "413");
    assert_eq!(rows["r1"]["status"], "waiting", "{run:?}");
    assert!(
        rows["r1"]["error"].contains("row 2, the first message of its thread"),
        "{:?}",
        rows["r1"]
    );
    assert!(s.record().is_empty(), "nothing stored: {:?}", s.record());
    assert_eq!(
        s.stats().uploads,
        0,
        "the reply's file is not uploaded while it waits"
    );
    s.finish().await;
}
