//! The ceiling of the HTTP client alone: the importer's own [`Sender`] posting one fixed body,
//! `CONCURRENCY` in flight on one runtime thread as in `lc-import run`, with no journal, no
//! reader and no scheduler. Compared with wrk and with `lc-import run` in `bench/run.py`, it
//! tells how much of the gap to wrk is the client and how much is the rest of the importer.
//!
//! ```text
//! cargo run --release --example client_loop -- URL REQUESTS CONCURRENCY
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lc_import::retry::Attempt;
use lc_import::sender::Sender;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let base = lc_import::sender::check_base_url(&args[0]).expect("base URL");
    let total: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let concurrency: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let sender = Arc::new(
            Sender::new(&base, "2021-07-28", Duration::from_secs(30), concurrency)
                .expect("client"),
        );
        let bearer = reqwest::header::HeaderValue::from_static("Bearer sandbox-token");
        let body = bytes::Bytes::from_static(
            br#"{"type":"SMS","conversationId":"C0000000000000000001","contactId":"K0000000000000000001","message":"Sure, the invoice is on its way to your inbox.","altId":"gen-000000001","direction":"outbound","date":"2020-09-13T12:26:41Z"}"#,
        );
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (sender, body, next) = (sender.clone(), body.clone(), next.clone());
            let bearer = bearer.clone();
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let (attempt, _) = sender.post(body.clone(), &bearer).await;
                    assert!(
                        matches!(attempt, Attempt::Answered { status: 200..=299, .. }),
                        "{attempt:?}"
                    );
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
