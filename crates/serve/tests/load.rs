//! A bounded load test on loopback: 50 concurrent clients × 5 samples each on a tiny model,
//! against a pool of two workers and a queue of 24. Every request is answered (200 with the
//! whole text, or 503), no connection is dropped, the server's threads are the same after as
//! before, its memory stays put, and it prints p50/p99 latency and characters per second.
//! Alone in its test binary, so that the thread count is this test's.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

const CLIENTS: usize = 50;
const REQUESTS: usize = 5;
const LEN: usize = 2000;

/// Threads of this process now.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Resident memory of this process, in MiB.
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

/// One answer: status, time to the first byte of the body, time to the last, characters.
struct Outcome {
    status: u16,
    first: Duration,
    total: Duration,
    chars: usize,
}

async fn one(url: String, seed: usize) -> Result<Outcome, String> {
    let body = format!(r#"{{"len": {LEN}, "seed": {seed}, "prime": "Far"}}"#);
    let req = hyper::Request::post(&url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let t = Instant::now();
    let res = client().request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let mut body = res.into_body();
    let mut first = None;
    let mut text = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(data) = frame.data_ref() {
            first.get_or_insert_with(|| t.elapsed());
            text.extend_from_slice(data);
        }
    }
    let total = t.elapsed();
    let text = String::from_utf8(text).map_err(|e| e.to_string())?;
    Ok(Outcome {
        status,
        first: first.unwrap_or(total),
        total,
        chars: text.chars().count(),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn fifty_clients_are_all_answered_and_nothing_leaks() {
    let dir = tiny_run("load", 32, 2);
    let before_server = threads();
    let mut opts = options(&dir, 2, 24);
    opts.parts = 1;
    let s = TestServer::start(opts);
    let url = s.url("/api/sample");
    // Warm up: each worker has made its sampler.
    for seed in 0..4 {
        let o = s.block_on(one(url.clone(), seed)).unwrap();
        assert_eq!(o.status, 200);
    }
    let (threads_before, rss_before) = (threads(), rss_mib());

    let t = Instant::now();
    let outcomes: Vec<Result<Outcome, String>> = s.block_on(async {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let url = url.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    for r in 0..REQUESTS {
                        mine.push(one(url.clone(), c * REQUESTS + r).await);
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(
                tokio::time::timeout(Duration::from_secs(120), task)
                    .await
                    .expect("the load ends within two minutes")
                    .unwrap(),
            );
        }
        all
    });
    let wall = t.elapsed();

    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(failed.is_empty(), "dropped connections: {failed:?}");
    let outcomes: Vec<Outcome> = outcomes.into_iter().map(Result::unwrap).collect();
    assert_eq!(outcomes.len(), CLIENTS * REQUESTS);
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 200).collect();
    let busy = outcomes.iter().filter(|o| o.status == 503).count();
    assert_eq!(ok.len() + busy, outcomes.len(), "only 200 or 503");
    assert!(!ok.is_empty(), "some samples are served");
    for o in &ok {
        assert_eq!(o.chars, 3 + LEN + 1, "a whole text");
    }

    // The same threads after the load (none left sampling, none added), memory about the same.
    let settle = Instant::now();
    while (s.handle.stats().running > 0 || threads() > threads_before)
        && settle.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.handle.stats().running, 0);
    assert!(
        threads() <= threads_before,
        "threads: {} before the load, {} after",
        threads_before,
        threads()
    );
    let rss_after = rss_mib();
    assert!(
        rss_after < rss_before + 64.0,
        "memory grew from {rss_before:.0} MiB to {rss_after:.0} MiB"
    );

    let mut first: Vec<Duration> = ok.iter().map(|o| o.first).collect();
    let mut total: Vec<Duration> = ok.iter().map(|o| o.total).collect();
    first.sort();
    total.sort();
    let chars: usize = ok.iter().map(|o| o.chars).sum();
    println!(
        "load: {CLIENTS} clients x {REQUESTS} requests of {LEN} characters in {:.2} s: {} answered \
         200, {busy} answered 503; first byte p50 {:.1} ms p99 {:.1} ms; whole answer p50 {:.1} ms \
         p99 {:.1} ms; {:.0} characters/s served; threads {} -> {}, memory {:.0} -> {:.0} MiB",
        wall.as_secs_f64(),
        ok.len(),
        percentile(&first, 0.5).as_secs_f64() * 1e3,
        percentile(&first, 0.99).as_secs_f64() * 1e3,
        percentile(&total, 0.5).as_secs_f64() * 1e3,
        percentile(&total, 0.99).as_secs_f64() * 1e3,
        chars as f64 / wall.as_secs_f64(),
        threads_before,
        threads(),
        rss_before,
        rss_after
    );

    // Stopped, the server leaves no thread behind.
    s.shutdown();
    let settle = Instant::now();
    while threads() > before_server && settle.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        threads() <= before_server,
        "threads: {before_server} before the server, {} after it stopped",
        threads()
    );
}
