//! Getting the training text when it is missing: download, check the sha256, keep it.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// Makes sure `path` exists: when it does not and `url` is set, downloads it (with a progress
/// line on stderr), checks `sha256` when given, and moves it into place only when it matches.
/// Offline, or on a mismatch, the error says where to put the file by hand.
pub fn ensure_text(path: &Path, url: &str, sha256: &str) -> anyhow::Result<()> {
    if path.exists() || url.is_empty() {
        return Ok(()); // a missing file with no URL is reported by the loader
    }
    let by_hand = format!("download it yourself and put it at {}", path.display());
    download(path, url, sha256).with_context(|| {
        format!(
            "{}: missing, and fetching it from {url} failed ({by_hand})",
            path.display()
        )
    })
}

fn download(path: &Path, url: &str, sha256: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let response = ureq::get(url)
        .timeout(std::time::Duration::from_secs(60))
        .call()
        .map_err(|e| {
            anyhow::anyhow!(e
                .to_string()
                .lines()
                .next()
                .unwrap_or("request failed")
                .to_owned())
        })?;
    let total: Option<u64> = response
        .header("content-length")
        .and_then(|v| v.parse().ok());
    let mut reader = response.into_reader();
    let part = path.with_extension("part");
    let mut file = std::fs::File::create(&part)?;
    let mut hasher = Sha256::new();
    let (mut buf, mut done) = (vec![0u8; 64 * 1024], 0u64);
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
        done += n as u64;
        match total {
            Some(t) => eprint!(
                "\rdownloading {url}: {:.1} / {:.1} MB",
                done as f64 / 1e6,
                t as f64 / 1e6
            ),
            None => eprint!("\rdownloading {url}: {:.1} MB", done as f64 / 1e6),
        }
    }
    eprintln!();
    file.sync_all()?;
    drop(file);
    let got = hex(&hasher.finalize());
    if !sha256.is_empty() && !got.eq_ignore_ascii_case(sha256) {
        let _ = std::fs::remove_file(&part);
        bail!("sha256 mismatch: got {got}, expected {sha256}");
    }
    std::fs::rename(&part, path)?;
    eprintln!("saved {} ({done} bytes, sha256 {got})", path.display());
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves `body` once over HTTP on a local port; returns the URL.
    fn serve_once(body: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/anna.txt", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(body).unwrap();
        });
        url
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("karnna-fetch-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    const BODY: &[u8] = b"Happy families are all alike;\r\n";

    #[test]
    fn downloads_and_checks_sha256() {
        let path = temp("ok.txt");
        let sha = hex(&Sha256::digest(BODY));
        ensure_text(&path, &serve_once(BODY), &sha).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), BODY);
        // Present now: no second download (the server is gone).
        ensure_text(&path, "http://127.0.0.1:9/none", &sha).unwrap();
    }

    #[test]
    fn mismatch_keeps_nothing() {
        let path = temp("bad.txt");
        let err = ensure_text(&path, &serve_once(BODY), &"0".repeat(64)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("sha256 mismatch"), "{msg}");
        assert!(msg.contains("put it at"), "{msg}");
        assert!(!path.exists() && !path.with_extension("part").exists());
    }

    #[test]
    fn offline_is_a_clear_error() {
        let path = temp("offline.txt");
        // Nothing listens on port 9 (discard) here: the connection is refused.
        let err = ensure_text(&path, "http://127.0.0.1:9/anna.txt", "").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with(&format!(
                "{}: missing, and fetching it from",
                path.display()
            )),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }
}
