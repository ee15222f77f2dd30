//! Security (issue 5, part 5): the token never reaches any output, on the error paths too;
//! plain `http://` only to loopback; TLS verification always on, with no flag to turn it off.

use std::time::Duration;

use lc_import::rate::DurationRange;
use lc_import::sandbox::SandboxConfig;

use crate::fixture::{self, TOKEN};
use crate::support::{self, Output, WorkDir};

const SECRET: &str = "tok-Distinctive-Secret-9e1f";

fn assert_no_secret(w: &WorkDir, out: &Output, files: &[&str]) {
    assert!(
        !out.stdout.contains(SECRET) && !out.stderr.contains(SECRET),
        "the token leaked{out:?}"
    );
    for f in files {
        if let Ok(text) = std::fs::read_to_string(w.path(f)) {
            assert!(!text.contains(SECRET), "the token is in {f}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_reaches_output_on_error_paths() {
    let w = WorkDir::new();
    // A conversation per row: a row out of retries holds back the rest of its conversation, and
    // the refused connections must go on to the 25 in a row that stop the run.
    w.write("in.csv", support::export(40, 40));
    let trace = ["-vv", "--rate", "none", "--max-retries", "1"];

    // 401: the server rejects the token.
    let sb = fixture::start(fixture::recorded(&w)).await;
    for format in ["text", "json"] {
        let mut args = trace.to_vec();
        args.extend(["--log-format", format, "--results", "401.csv"]);
        let out = fixture::run(&w, &sb.base_url(), "in.csv", &args, SECRET).await;
        out.expect_code(3);
        assert!(out.stdout.contains("rejected the token"), "{out:?}");
        assert_no_secret(&w, &out, &["401.csv"]);
    }
    sb.shutdown().await;

    // Timeouts: the server holds every request past --timeout.
    let slow = fixture::start(SandboxConfig {
        token: SECRET.into(),
        latency: Some(DurationRange {
            low: Duration::from_millis(400),
            high: Duration::from_millis(400),
        }),
        ..fixture::recorded(&w)
    })
    .await;
    let mut args = trace.to_vec();
    args.extend(["--timeout", "50ms", "--results", "timeout.csv"]);
    let out = fixture::run(&w, &slow.base_url(), "in.csv", &args, SECRET).await;
    assert!(out.stdout.contains("no answer within --timeout"), "{out:?}");
    assert_no_secret(&w, &out, &["timeout.csv"]);
    let (addr, base) = (slow.addr(), slow.base_url());
    slow.shutdown().await;

    // Connection refused: nobody listens there any more.
    let mut args = trace.to_vec();
    args.extend(["--results", "refused.csv"]);
    let out = fixture::run(&w, &base, "in.csv", &args, SECRET).await;
    out.expect_code(3);
    assert!(out.stdout.contains("could not connect"), "{out:?} {addr}");
    assert_no_secret(&w, &out, &["refused.csv"]);

    // Configuration errors, with the token in the environment, in a token file, and (wrongly)
    // in the config file, where it is an unknown key.
    w.write("token.txt", SECRET);
    w.write("bad.toml", format!("token = \"{SECRET}\"\n"));
    w.write("bad-token.txt", format!("{SECRET}\nsecond line\n"));
    for args in [
        vec!["--base-url", "http://10.1.2.3"],
        vec!["--base-url", "ftp://example.com"],
        vec!["--rate", "fast"],
        vec!["--concurrency", "0"],
        vec![
            "--token-file",
            "token.txt",
            "--base-url",
            "http://example.com",
        ],
        vec!["--token-file", "bad-token.txt"],
        vec!["--config", "bad.toml"],
    ] {
        let mut all = vec!["-vv"];
        all.extend(args);
        let out = fixture::run(&w, &base, "in.csv", &all, SECRET).await;
        out.expect_code(2);
        assert_no_secret(&w, &out, &[]);
    }
}

#[test]
fn plain_http_is_refused_for_every_host_that_is_not_loopback() {
    let w = WorkDir::new();
    w.copy("samples/messages.csv");
    for url in [
        "http://services.leadconnectorhq.com",
        "http://10.0.0.5:8787",
        "http://192.168.1.1",
        "http://[::ffff:127.0.0.1]:8787",
        "http://127.0.0.1.nip.io",
        "http://localhost.example.com",
        "http://0.0.0.0:8787",
    ] {
        let out = w.run_with(
            &["run", "messages.csv", "--base-url", url],
            &[("LC_TOKEN", TOKEN)],
        );
        out.expect_code(2);
        assert!(
            out.stderr
                .contains("plain http:// would send the token in clear"),
            "{url}{out:?}"
        );
    }
    assert!(!w.path("messages.results.csv").exists(), "nothing started");
}

#[test]
fn there_is_no_flag_to_turn_tls_verification_off() {
    let w = WorkDir::new();
    let help = w.run(&["run", "--help"]);
    help.expect_code(0);
    for word in [
        "insecure",
        "verify",
        "certificate",
        "tls",
        "ssl",
        "accept-invalid",
    ] {
        assert!(
            // `--verify-unknown` reads rows back from the API: nothing to do with TLS.
            !help
                .stdout
                .to_lowercase()
                .replace("verify-unknown", "")
                .contains(word),
            "--help mentions '{word}'{help:?}"
        );
    }
    // Nor in the config file.
    w.copy("samples/messages.csv");
    w.write("c.toml", "danger-accept-invalid-certs = true\n");
    let out = w.run_with(
        &["run", "messages.csv", "--config", "c.toml"],
        &[("LC_TOKEN", TOKEN)],
    );
    out.expect_code(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_server_without_valid_tls_fails_as_a_tls_error_and_sends_nothing() {
    let w = WorkDir::new();
    w.write("in.csv", support::export(5, 1));
    // The sandbox speaks plain HTTP: a TLS handshake with it can only fail.
    let sb = fixture::start(fixture::recorded(&w)).await;
    let https = format!("https://{}", sb.addr());
    let out = fixture::run(
        &w,
        &https,
        "in.csv",
        &["--rate", "none", "--max-retries", "0"],
        TOKEN,
    )
    .await;
    assert_ne!(out.code, Some(0), "{out:?}");
    let results = fixture::results(&w.path("in.results.csv"));
    assert!(results.iter().all(|r| r["status"] != "sent"), "{results:?}");
    let error = &results[0]["error"];
    assert!(
        error.to_lowercase().contains("tls") || error.contains("certificate"),
        "the error names TLS: {error}"
    );
    assert_eq!(sb.stats().accepted, 0, "nothing was stored");
    sb.shutdown().await;
}

/// A server that takes the connection and never answers the TLS handshake: the connection was
/// never made, so nothing can have been sent and the row is `failed` (retried on the next run),
/// not `unknown`. The time limit covers the handshake, not only TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_ends_is_a_failed_connection_not_an_unknown_row() {
    let w = WorkDir::new();
    w.write("in.csv", support::export(3, 3));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts and holds every connection, silent.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let out = fixture::run(
        &w,
        &format!("https://{addr}"),
        "in.csv",
        &["--rate", "none", "--max-retries", "0", "--timeout", "2s"],
        TOKEN,
    )
    .await;
    assert_ne!(out.code, Some(0), "{out:?}");
    let results = fixture::results(&w.path("in.results.csv"));
    assert_eq!(results.len(), 3, "{results:?}");
    for r in &results {
        assert_eq!(r["status"], "failed", "{r:?}");
        assert!(r["error"].contains("no connection within"), "{r:?}");
    }
}
