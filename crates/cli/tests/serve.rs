//! `karnna serve` as a user starts it: it prints its address, and `POST /api/sample` answers
//! with the very text `karnna sample` prints for the same checkpoint, seed and flags.

#[allow(dead_code)] // tiny_config: this test serves a checkpoint fixture
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;

/// The running server, killed when dropped.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `karnna serve ARGS --addr 127.0.0.1:0` and reads the address it prints.
fn serve(dir: &Path, args: &[&str]) -> (Serving, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_karnna"))
        .current_dir(dir)
        .arg("serve")
        .args(args)
        .args(["--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("serving http://")
        .and_then(|a| a.strip_suffix('/'))
        .unwrap_or_else(|| panic!("no address: {first:?}"))
        .to_owned();
    (Serving(child), addr)
}

/// `POST /api/sample` with `json` (HTTP/1.0: the server closes the connection at the end of
/// the text); the status line and the body.
fn post(addr: &str, json: &str) -> (String, String) {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(
        c,
        "POST /api/sample HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{json}",
        json.len()
    )
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[test]
fn serve_samples_the_text_that_sample_prints() {
    let dir = workdir("serve");
    let ckpt = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lstm-v1.ckpt");
    let ckpt = ckpt.to_str().unwrap();
    let (_server, addr) = serve(&dir, &["--checkpoint", ckpt]);
    for (json, flags) in [
        (
            r#"{"prime": "Anna ", "len": 300, "seed": 7}"#,
            &["--prime", "Anna ", "--len", "300", "--seed", "7"][..],
        ),
        (
            r#"{"prime": "The ", "len": 200, "seed": 11, "top_n": 2, "temperature": 0.7}"#,
            &[
                "--prime",
                "The ",
                "--len",
                "200",
                "--seed",
                "11",
                "--top-n",
                "2",
                "--temperature",
                "0.7",
            ][..],
        ),
    ] {
        let (status, body) = post(&addr, json);
        assert_eq!(status, "HTTP/1.0 200 OK", "{body}");
        let out = karnna(
            &dir,
            &[&["sample", "--checkpoint", ckpt][..], flags].concat(),
        );
        assert!(out.status.success());
        assert_eq!(body, String::from_utf8(out.stdout).unwrap(), "{json}");
    }
    // A bad request is refused and the server stays up.
    let (status, body) = post(&addr, r#"{"len": 1000000}"#);
    assert_eq!(status, "HTTP/1.0 400 Bad Request");
    assert!(body.contains("len must be at most 100000"), "{body}");
    let (status, _) = post(&addr, r#"{"len": 5}"#);
    assert_eq!(status, "HTTP/1.0 200 OK");
}

#[test]
fn serve_refuses_a_missing_checkpoint_or_an_empty_folder() {
    let dir = workdir("serve-missing");
    let out = karnna(
        &dir,
        &[
            "serve",
            "--checkpoint",
            "nope.ckpt",
            "--addr",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.ckpt: no such checkpoint file"), "{err}");
    let out = karnna(&dir, &["serve", "--run", ".", "--addr", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no checkpoints"), "{err}");
}
