//! The HTTP API against the real server on 127.0.0.1:0: each route, each bad input (a 4xx with
//! a one-line JSON error, the server still up after), a client that leaves (its sample stops),
//! and a full pool (503).

mod common;

use std::io::{Read, Write};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::*;
use karnna_infer::{default_parts, generate, CpuCharRnn, Precision, SampleOptions, Strategy};
use karnna_model::Checkpoint;

#[test]
fn the_page_and_its_assets_are_served_from_the_binary() {
    let dir = tiny_run("page", 16, 1);
    let s = TestServer::start(options(&dir, 1, 4));
    let page = s.get("/").ok("text/html; charset=utf-8");
    for needle in ["/app.js", "/style.css", "id=\"generate\"", "id=\"curve\""] {
        assert!(page.body.contains(needle), "{needle} missing from the page");
    }
    assert!(!page.body.contains("http://") && !page.body.contains("https://"));
    let js = s.get("/app.js").ok("text/javascript");
    assert!(js.body.contains("/api/sample"));
    let css = s.get("/style.css").ok("text/css");
    assert!(css.body.contains("@media"), "a narrow-screen layout");
}

#[test]
fn checkpoints_are_listed_best_first() {
    let dir = tiny_run("list", 16, 1);
    let s = TestServer::start(options(&dir, 1, 4));
    let a = s.get("/api/checkpoints").ok("application/json");
    let list = a.json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "i100_l16_v2.500.ckpt",
            "i150_l16_v2.700.ckpt",
            "i50_l16_v3.100.ckpt"
        ]
    );
    assert_eq!(list[0]["iteration"], 100);
    assert_eq!(list[0]["val_loss"], 2.5);
    assert_eq!(list[0]["best"], true);
    assert_eq!(list[1]["best"], false);
    // A checkpoint written while serving shows up.
    std::fs::copy(checkpoint_path(&dir, 50), dir.join("i200_l16_v-.ckpt")).unwrap();
    let t = Instant::now();
    let list = loop {
        let list = s.get("/api/checkpoints").json();
        if list.as_array().unwrap().len() == 4 || t.elapsed() > Duration::from_secs(5) {
            break list;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(list.as_array().unwrap().len(), 4);
    assert_eq!(list[3]["name"], "i200_l16_v-.ckpt");
    assert_eq!(list[3]["val_loss"], serde_json::Value::Null);
}

#[test]
fn metrics_are_served_as_rows_and_follow_the_file() {
    let dir = tiny_run("metrics", 16, 1);
    let s = TestServer::start(options(&dir, 1, 4));
    let a = s.get("/api/metrics");
    assert_eq!(a.status, 200);
    let rows = a.json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 150);
    assert_eq!(rows[0]["iteration"], 1);
    assert_eq!(rows[0]["val_loss"], serde_json::Value::Null);
    assert_eq!(rows[49]["val_loss"], 3.7);
    assert_eq!(rows[149]["elapsed_s"], 15.0);
    // Unchanged: 304 for the same ETag.
    let tag = a.headers["etag"].to_str().unwrap().to_owned();
    let same = s.get_with("/api/metrics", &[("if-none-match", &tag)]);
    assert_eq!(same.status, 304);
    // A run writing more rows: the next poll has them.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("metrics.csv"))
        .unwrap();
    f.write_all(metrics_row(151).as_bytes()).unwrap();
    drop(f);
    let more = s.get_with("/api/metrics", &[("if-none-match", &tag)]);
    assert_eq!(more.status, 200);
    assert_eq!(more.json().as_array().unwrap().len(), 151);
    // No metrics.csv yet: no rows.
    std::fs::remove_file(dir.join("metrics.csv")).unwrap();
    let none = s.get("/api/metrics");
    assert_eq!((none.status, none.body.as_str()), (200, "[]"));
}

/// What `karnna sample` writes for these options: `generate` on the CPU sampler with f16
/// weights and the default split, then a newline.
fn expected(dir: &std::path::Path, iteration: usize, opts: &SampleOptions) -> String {
    let ckpt = Checkpoint::read(&checkpoint_path(dir, iteration)).unwrap();
    let model = ckpt
        .model::<burn::backend::Flex>(&Default::default())
        .unwrap();
    let mut cpu = CpuCharRnn::with(&model, Precision::F16, default_parts());
    let mut out = Vec::new();
    generate(
        &mut cpu,
        &ckpt.meta.vocab,
        opts,
        &mut out,
        &AtomicBool::new(false),
    )
    .unwrap();
    out.push(b'\n');
    String::from_utf8(out).unwrap()
}

#[test]
fn a_sample_streams_the_prime_then_the_text_of_the_sampler_for_its_seed() {
    let dir = tiny_run("sample", 16, 2);
    let s = TestServer::start(options(&dir, 1, 4));
    let url = s.url("/api/sample");
    let a = s.block_on(post_json(
        &url,
        r#"{"prime": "Far", "len": 300, "seed": 7, "top_n": 3, "temperature": 0.8}"#,
    ));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(a.headers["x-seed"], "7");
    assert_eq!(a.headers["x-checkpoint"], "i100_l16_v2.500.ckpt");
    assert!(a.body.starts_with("Far"));
    assert_eq!(a.body.chars().count(), 3 + 300 + 1);
    let opts = SampleOptions {
        prime: "Far".into(),
        len: 300,
        strategy: Strategy::TopN {
            n: 3,
            temperature: 0.8,
        },
        seed: 7,
    };
    assert_eq!(
        a.body,
        expected(&dir, 100, &opts),
        "the best checkpoint's text"
    );
    // Same seed, same text; another seed, another text; another checkpoint, its own text.
    let again = s.block_on(post_json(
        &url,
        r#"{"prime": "Far", "len": 300, "seed": 7, "top_n": 3, "temperature": 0.8}"#,
    ));
    assert_eq!(again.body, a.body);
    let other_seed = s.block_on(post_json(
        &url,
        r#"{"prime": "Far", "len": 300, "seed": 8, "top_n": 3, "temperature": 0.8}"#,
    ));
    assert_ne!(other_seed.body, a.body);
    let other = s.block_on(post_json(
        &url,
        r#"{"prime": "Far", "len": 300, "seed": 7, "top_n": 3, "temperature": 0.8,
            "checkpoint": "i50_l16_v3.100.ckpt"}"#,
    ));
    assert_eq!(other.headers["x-checkpoint"], "i50_l16_v3.100.ckpt");
    assert_eq!(other.body, expected(&dir, 50, &opts));
    assert_ne!(other.body, a.body);
    // argmax, and the defaults (`sample`'s: prime "Far", 2000 characters, a fresh seed).
    let argmax = s.block_on(post_json(&url, r#"{"argmax": true, "len": 50}"#));
    let opts = SampleOptions {
        len: 50,
        strategy: Strategy::Argmax,
        ..opts
    };
    assert_eq!(argmax.body, expected(&dir, 100, &opts));
    let defaults = s.block_on(post_json(&url, "{}"));
    assert_eq!(defaults.status, 200);
    assert!(defaults.body.starts_with("Far"));
    assert_eq!(defaults.body.chars().count(), 3 + 2000 + 1);
    let seed: u64 = defaults.headers["x-seed"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(seed < 1 << 53);
}

#[test]
fn every_bad_input_gets_its_4xx_with_a_one_line_json_error() {
    let dir = tiny_run("bad", 16, 1);
    let s = TestServer::start(options(&dir, 1, 4));
    let url = s.url("/api/sample");
    let post = |json: &str| s.block_on(post_json(&url, json));
    let cases: &[(&str, u16, &str)] = &[
        (
            r#"{"len": 100001}"#,
            400,
            "len must be at most 100000, got 100001",
        ),
        (r#"{"len": -1}"#, 400, "bad JSON"),
        (
            r#"{"temperature": 0}"#,
            400,
            "temperature must be positive, got 0",
        ),
        (
            r#"{"temperature": -2}"#,
            400,
            "temperature must be positive",
        ),
        (r#"{"top_n": 0}"#, 400, "top_n must be at least 1, got 0"),
        (r#"{"top_n": 1000}"#, 400, "top_n must be between 1 and"),
        (r#"{"prime": ""}"#, 400, "prime is empty"),
        (r#"{"prime": "Far Z!"}"#, 400, "vocabulary lacks: 'Z', '!'"),
        (
            r#"{"checkpoint": "nope.ckpt"}"#,
            400,
            "no checkpoint named \"nope.ckpt\"",
        ),
        (
            r#"{"checkpoint": "../bad/i100_l16_v2.500.ckpt"}"#,
            400,
            "no checkpoint named",
        ),
        (
            r#"{"checkpoint": "/etc/passwd"}"#,
            400,
            "no checkpoint named",
        ),
        (r#"{"checkpoint": "best.txt"}"#, 400, "no checkpoint named"),
        (
            r#"{"checkpoint": "metrics.csv"}"#,
            400,
            "no checkpoint named",
        ),
        (r#"{"lenght": 10}"#, 400, "unknown field `lenght`"),
        (r#"{"seed": "seven"}"#, 400, "bad JSON"),
        (r#"{"seed": 18446744073709551616}"#, 400, "bad JSON"),
        (r#"{"len": 10"#, 400, "bad JSON"),
        ("not json", 400, "bad JSON"),
        ("", 400, "bad JSON"),
    ];
    for (json, status, needle) in cases {
        let a = post(json);
        assert_eq!(a.status, *status, "{json}: {}", a.body);
        let e = a.error();
        assert!(e.contains(needle), "{json}: {e}");
    }
    let long = format!(r#"{{"prime": "{}"}}"#, "a".repeat(10_001));
    let a = post(&long);
    assert_eq!(a.status, 400);
    assert!(a
        .error()
        .contains("prime must be at most 10000 characters, got 10001"));

    // Not JSON by its content type, too large, unknown routes, wrong methods, foreign names.
    let plain = s.block_on(request(
        "POST",
        &url,
        &[("content-type", "text/plain")],
        "{}",
    ));
    assert_eq!(plain.status, 415);
    assert!(plain.error().contains("content-type: application/json"));
    let none = s.block_on(request("POST", &url, &[], "{}"));
    assert_eq!(none.status, 415);
    let huge = format!(r#"{{"prime": "{}"}}"#, "a".repeat(300 * 1024));
    let big = s.block_on(post_json(&url, &huge));
    assert_eq!(big.status, 413);
    assert!(big.error().contains("larger than 262144 bytes"));
    let missing = s.get("/api/nothing");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error(), "no such route: GET /api/nothing");
    let traversal = s.get("/../../etc/passwd");
    assert_eq!(traversal.status, 404);
    let method = s.block_on(get(&url));
    assert_eq!(method.status, 405);
    assert_eq!(method.error(), "/api/sample does not take GET");
    let method = s.block_on(request("DELETE", &s.url("/api/metrics"), &[], ""));
    assert_eq!(method.status, 405);
    let foreign = s.block_on(request(
        "GET",
        &s.url("/api/checkpoints"),
        &[("host", "evil.example:8080")],
        "",
    ));
    assert_eq!(foreign.status, 403);
    assert!(foreign.error().contains("answers only to localhost"));
    let local = s.block_on(request(
        "GET",
        &s.url("/api/checkpoints"),
        &[("host", &format!("localhost:{}", s.addr.port()))],
        "",
    ));
    assert_eq!(local.status, 200);

    // Still up, and sampling.
    let ok = post(r#"{"len": 20, "seed": 1}"#);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body.chars().count(), 3 + 20 + 1);
}

/// Sends a sample request on a raw connection and reads until `min` bytes of body text came.
fn start_sample(addr: std::net::SocketAddr, json: &str, min: usize) -> std::net::TcpStream {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "POST /api/sample HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{json}",
        json.len()
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.len() < min {
        let n = c.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the server closed: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    c
}

/// Waits (up to 10 s) until no sample is being drawn.
fn wait_idle(s: &TestServer) -> Duration {
    let t = Instant::now();
    while s.handle.stats().running > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "a sample is still drawn for a client that left"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    t.elapsed()
}

#[test]
fn a_client_that_leaves_stops_its_sample() {
    // A 2x256 model: 100,000 characters take many seconds, so a sample that kept going would
    // be seen going.
    let dir = tiny_run("leave", 256, 2);
    let s = TestServer::start(options(&dir, 1, 4));
    let c = start_sample(s.addr, r#"{"len": 100000, "seed": 3}"#, 400);
    assert_eq!(s.handle.stats().running, 1);
    drop(c);
    let took = wait_idle(&s);
    let sent = s.handle.stats().chars;
    assert!(sent < 50_000, "{sent} characters drawn for nobody");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.handle.stats().chars, sent, "drawing went on");
    eprintln!("a client that left: its sample stopped {took:?} later, after {sent} characters");
}

#[test]
fn a_full_pool_and_queue_answer_503_and_free_up_when_clients_leave() {
    let dir = tiny_run("busy", 256, 2);
    let s = TestServer::start(options(&dir, 1, 1));
    // One drawing, one waiting: the third is refused.
    let first = start_sample(s.addr, r#"{"len": 100000, "seed": 1}"#, 400);
    let waiting = std::net::TcpStream::connect(s.addr).unwrap();
    let json = r#"{"len": 10}"#;
    let mut w = waiting;
    write!(
        w,
        "POST /api/sample HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    )
    .unwrap();
    // The waiting request is admitted (queued) before the next one is sent.
    let t = Instant::now();
    while s.handle.stats().queued < 1 {
        assert!(t.elapsed() < Duration::from_secs(10), "never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    let third = s.post("/api/sample", r#"{"len": 10}"#);
    assert_eq!(third.status, 503, "{}", third.body);
    assert_eq!(third.headers["retry-after"], "1");
    assert!(third.error().contains("busy"));
    // The drawing client leaves: the waiting one is served, then new ones are.
    drop(first);
    w.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    let _ = w.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let next = s.post("/api/sample", r#"{"len": 10}"#);
    assert_eq!(next.status, 200);
}
