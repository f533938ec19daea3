//! Hostile clients against the real server on 127.0.0.1:0: seeded random and malformed
//! requests (each a 4xx or 503, no panic, the server answering throughout), a client that
//! sends a byte a second (timed out while others are served), and many connections that send
//! nothing (bounded, others still served). Requests go over raw TCP, so that they can be as
//! malformed as an attacker likes.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Panics anywhere in this process (the server runs in it), counted by a hook.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// Sends `request` on a new connection and reads the answer to its end (the request asks the
/// server to close); the status, or `None` when the server closed without one.
fn send(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (and close) before reading everything: a failed write is fine.
    // The write side stays open: a half-closed connection is a closed one to the server.
    let _ = tcp.write_all(request);
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let line = answer.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A request to the server, closing after it.
fn http(method: &str, path: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n")
        .into_bytes();
    for (name, value) in headers {
        r.extend_from_slice(name.as_bytes());
        r.extend_from_slice(b": ");
        r.extend_from_slice(value);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    r.extend_from_slice(body);
    r
}

/// A sample request's body that the server must refuse: each kind of malformation, with
/// seeded random parts.
fn bad_body(rng: &mut StdRng) -> Vec<u8> {
    let key = [
        "prime",
        "len",
        "temperature",
        "top_n",
        "seed",
        "argmax",
        "checkpoint",
    ][rng.random_range(0..7)];
    let huge = format!(
        "{}{}",
        rng.random_range(1..10),
        "9".repeat(rng.random_range(20..400))
    );
    let long: String = (0..rng.random_range(10_001..60_000))
        .map(|_| rng.random_range('a'..='z'))
        .collect();
    let depth = rng.random_range(10..5000);
    match rng.random_range(0..10) {
        // Wrong types.
        0 => format!(r#"{{"len": "{}"}}"#, rng.random::<u32>()).into_bytes(),
        1 => format!(r#"{{"{key}": [{}]}}"#, rng.random::<u8>()).into_bytes(),
        // Huge numbers, where they fit no field.
        2 => format!(r#"{{"len": {huge}}}"#).into_bytes(),
        3 => format!(r#"{{"temperature": -{huge}e{huge}}}"#).into_bytes(),
        // Deep nesting.
        4 => format!(r#"{{"prime": {}{}}}"#, "[".repeat(depth), "]".repeat(depth)).into_bytes(),
        5 => "{\"a\":".repeat(depth).into_bytes(),
        // Invalid UTF-8.
        6 => {
            let mut b = br#"{"prime": "ab"#.to_vec();
            b.extend((0..rng.random_range(1..20)).map(|_| rng.random_range(0x80..=0xff)));
            b.extend_from_slice(br#""}"#);
            b
        }
        // Very long strings: a prime past its bound, an unknown checkpoint's name.
        7 => format!(r#"{{"prime": "{long}"}}"#).into_bytes(),
        8 => format!(r#"{{"checkpoint": "{long}"}}"#).into_bytes(),
        // Random bytes.
        _ => (0..rng.random_range(0..2000))
            .map(|_| rng.random())
            .collect(),
    }
}

/// A request that is wrong in its line, its headers or its path.
fn bad_request(rng: &mut StdRng) -> Vec<u8> {
    let json: &[(&str, &[u8])] = &[("content-type", b"application/json")];
    // Led by a byte no request line starts with, so that no noise is the prefix of a request.
    let noise: Vec<u8> = std::iter::once(0)
        .chain((0..rng.random_range(1..300)).map(|_| rng.random()))
        .collect();
    match rng.random_range(0..12) {
        0 => http("GET", "/../../etc/passwd", &[], b""),
        1 => http(
            "GET",
            &format!("/{}", "a/".repeat(rng.random_range(1..4000))),
            &[],
            b"",
        ),
        2 => http("GET", "/api/sample", &[], b""),
        3 => http("DELETE", "/api/checkpoints", &[], b""),
        4 => http(
            "POST",
            "/api/sample",
            &[("content-type", b"text/plain")],
            b"{}",
        ),
        5 => http("POST", "/api/sample", &[("host", b"evil.example")], b"{}"),
        6 => http(
            "POST",
            "/api/sample",
            &[("x-big", &vec![b'x'; 200_000])],
            b"{}",
        ),
        7 => http("POST", "/api/sample", &[("x-bad", &noise)], b"{}"),
        8 => http("POST", "/api/sample", json, &vec![b' '; 300_000]),
        9 => noise,
        10 => http("GET", "/%00%ff%2e%2e", &[], b""),
        _ => http("BREW", "/", &[], b""),
    }
}

#[test]
fn malformed_requests_get_a_4xx_and_the_server_goes_on_answering() {
    count_panics();
    let dir = tiny_run("hostile-fuzz", 16, 1);
    let s = TestServer::start(options(&dir, 1, 2));
    let mut rng = StdRng::seed_from_u64(28);
    let json: &[(&str, &[u8])] = &[("content-type", b"application/json")];
    for case in 0..300 {
        let request = match case % 2 {
            0 => http("POST", "/api/sample", json, &bad_body(&mut rng)),
            _ => bad_request(&mut rng),
        };
        let status = send(s.addr, &request);
        assert!(
            status.is_some_and(|s| (400..500).contains(&s) || s == 503),
            "case {case}: {status:?} for {:?}",
            String::from_utf8_lossy(&request[..request.len().min(200)])
        );
        if case % 50 == 0 {
            assert_eq!(
                send(s.addr, &http("GET", "/api/checkpoints", &[], b"")),
                Some(200)
            );
        }
    }
    let ok = http(
        "POST",
        "/api/sample",
        json,
        br#"{"prime": "Far", "len": 20, "seed": 1}"#,
    );
    assert_eq!(send(s.addr, &ok), Some(200));
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic while serving");
}

/// Whether the server has closed `tcp` (a read sees the end, or a reset), waiting at most
/// `wait` for it.
fn closed_within(tcp: &mut TcpStream, wait: Duration) -> bool {
    tcp.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an error response, then the end
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn a_client_sending_a_byte_a_second_is_timed_out_while_others_are_served() {
    count_panics();
    let dir = tiny_run("hostile-slow", 16, 1);
    let mut opts = options(&dir, 1, 2);
    opts.read_timeout = Duration::from_secs(2);
    let s = TestServer::start(opts);
    let addr = s.addr;
    // One drips a request's head, another a request's body; each would take a minute.
    let head =
        b"GET /api/checkpoints HTTP/1.1\r\nhost: 127.0.0.1\r\nx-pad: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let json: &[(&str, &[u8])] = &[("content-type", b"application/json")];
    let body_first = http("POST", "/api/sample", json, &[b' '; 60]);
    let split = body_first.len() - 60;
    let drips = [(head.to_vec(), 0), (body_first, split)];
    let slow: Vec<_> = drips
        .into_iter()
        .map(|(request, at_once)| {
            std::thread::spawn(move || {
                let mut tcp = TcpStream::connect(addr).unwrap();
                tcp.write_all(&request[..at_once]).unwrap();
                let t = Instant::now();
                for &b in &request[at_once..] {
                    if tcp.write_all(&[b]).is_err()
                        || closed_within(&mut tcp, Duration::from_secs(1))
                    {
                        return t.elapsed();
                    }
                }
                panic!("the whole slow request was read");
            })
        })
        .collect();
    // Meanwhile others are served.
    for _ in 0..10 {
        assert_eq!(
            send(addr, &http("GET", "/api/checkpoints", &[], b"")),
            Some(200)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for t in slow {
        let lasted = t.join().unwrap();
        assert!(lasted < Duration::from_secs(15), "closed after {lasted:?}");
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic while serving");
}

#[test]
fn many_idle_connections_are_bounded_and_others_are_still_served() {
    count_panics();
    let dir = tiny_run("hostile-idle", 16, 1);
    let mut opts = options(&dir, 1, 2);
    opts.max_connections = 16;
    opts.read_timeout = Duration::from_secs(60); // so only the bound closes them here
    let s = TestServer::start(opts);
    let mut idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    // Half a request line on some, nothing on the others.
    for tcp in idle.iter_mut().step_by(2) {
        tcp.write_all(b"GET /api/chec").unwrap();
    }
    for _ in 0..5 {
        assert_eq!(
            send(s.addr, &http("GET", "/api/checkpoints", &[], b"")),
            Some(200)
        );
    }
    let open = idle
        .iter_mut()
        .map(|tcp| !closed_within(tcp, Duration::from_millis(20)))
        .filter(|&open| open)
        .count();
    assert!(open <= 16, "{open} idle connections held (at most 16)");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic while serving");
}
