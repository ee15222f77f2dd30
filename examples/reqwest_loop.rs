//! The ceiling of the HTTP client alone: a bare reqwest loop posting one fixed body with the
//! importer's client settings, `CONCURRENCY` in flight, no journal, no reader, no scheduler.
//! Compared with wrk and with `lc-import run` in `bench/run.py`, it tells how much of the gap
//! to wrk is the client library and how much is the importer.
//!
//! ```text
//! cargo run --release --example reqwest_loop -- URL REQUESTS CONCURRENCY
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = format!(
        "{}/conversations/messages/inbound",
        args[0].trim_end_matches('/')
    );
    let total: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let concurrency: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(concurrency)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let body = bytes::Bytes::from_static(
            br#"{"type":"SMS","conversationId":"C0000000000000000001","contactId":"K0000000000000000001","message":"Sure, the invoice is on its way to your inbox.","altId":"gen-000000001","direction":"outbound","date":"2020-09-13T12:26:41Z"}"#,
        );
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (client, body, next, url) = (client.clone(), body.clone(), next.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let r = client
                        .post(&url)
                        .header("Authorization", "Bearer sandbox-token")
                        .header("Version", "2021-07-28")
                        .header("Content-Type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("request");
                    let _ = r.bytes().await.expect("body");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let secs = started.elapsed().as_secs_f64();
        println!("Requests/sec: {:.2}", total as f64 / secs);
    });
}
