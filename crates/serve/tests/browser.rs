//! The page in a real browser: headless Chromium driven over WebDriver (chromedriver) types a
//! prime, presses Generate, sees the streamed text start with the prime, picks another
//! checkpoint and sees the loss curve mark it, checks the layout at a phone's width, and saves a
//! screenshot to `target/serve-page.png` whose pixels it looks at (not blank).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Under `CI=true` a
//! missing browser fails the test; elsewhere it skips, saying why.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};

/// The browser and its driver, or why they cannot be had.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let find = |names: &[&str]| {
        names
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| {
                let path = std::env::var_os("PATH")?;
                std::env::split_paths(&path)
                    .find_map(|d| names.iter().map(|n| d.join(n)).find(|p| p.is_file()))
            })
    };
    let chromium = find(&["/usr/bin/chromium", "chromium", "chromium-browser"])
        .ok_or("no chromium (Debian: apt-get install chromium chromium-driver)")?;
    let driver = find(&["/usr/bin/chromedriver", "chromedriver"])
        .ok_or("no chromedriver (Debian: apt-get install chromium-driver)")?;
    Ok((chromium, driver))
}

/// chromedriver on a free loopback port, ended when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(path: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to 30 s) until `f` gives `Some`.
async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "waited for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn eval(c: &Client, js: &str) -> serde_json::Value {
    c.execute(js, vec![]).await.unwrap()
}

/// Where the screenshot goes: the workspace's `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// The fraction of pixels that differ from the most common colour, and how many colours
/// there are.
fn pixel_spread(png_bytes: &[u8]) -> (f64, usize) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let mut counts = std::collections::HashMap::<&[u8], usize>::new();
    let pixels = buf[..info.buffer_size()].chunks_exact(channels);
    let n = pixels.len();
    for p in pixels {
        *counts.entry(p).or_default() += 1;
    }
    let most = counts.values().copied().max().unwrap_or(0);
    (1.0 - most as f64 / n as f64, counts.len())
}

#[test]
fn the_page_samples_live_and_draws_the_curve_in_chromium() {
    let (chromium, driver) = match browser() {
        Ok(found) => found,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("the browser test needs Chromium under CI: {why}")
        }
        Err(why) => {
            eprintln!("skipping the browser test: {why}");
            return;
        }
    };
    let dir = tiny_run("browser", 32, 2);
    let mut opts = options(&dir, 1, 4);
    opts.parts = 1; // no second sampler thread spinning beside the browser on a small machine
    let s = TestServer::start(opts);
    let driver = Driver::start(&driver);
    let profile = workdir("browser-profile");
    let shot = target_dir().join("serve-page.png");
    let url = s.url("/");
    s.block_on(async move {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                    "--window-size=1200,900",
                ],
            }),
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a WebDriver session");
        c.goto(&url).await.unwrap();

        // The checkpoints load, best first.
        let options = until("the checkpoint list", || async {
            let o = c.find_all(Locator::Css("#checkpoint option")).await.ok()?;
            (o.len() == 3).then_some(o)
        })
        .await;
        assert_eq!(
            options[0].attr("value").await.unwrap().as_deref(),
            Some("i100_l32_v2.500.ckpt")
        );
        assert!(options[0].text().await.unwrap().contains("best"));

        // A prime, Generate: the text streams in, starting with the prime.
        let prime = c.find(Locator::Id("prime")).await.unwrap();
        prime.send_keys("Far from").await.unwrap();
        let len = c.find(Locator::Id("len")).await.unwrap();
        len.clear().await.unwrap();
        len.send_keys("400").await.unwrap();
        c.find(Locator::Id("generate")).await.unwrap().click().await.unwrap();
        let text = until("the sampled text", || async {
            let t = text_of(&c, "#out").await;
            (t.chars().count() > 300).then_some(t)
        })
        .await;
        assert!(text.starts_with("Far from"), "{text:?}");
        let status = until("the end of the sample", || async {
            let s = text_of(&c, "#status").await;
            s.contains("characters in").then_some(s)
        })
        .await;
        assert!(
            status.contains("from i100_l32_v2.500.ckpt, seed"),
            "{status}"
        );

        // Another checkpoint: the curve is drawn, with that checkpoint marked.
        let select = c.find(Locator::Id("checkpoint")).await.unwrap();
        select.select_by_value("i50_l32_v3.100.ckpt").await.unwrap();
        let mark = until("the mark of the chosen checkpoint", || async {
            let m = eval(&c, "const m = document.querySelector('#curve .mark'); return m && m.getAttribute('data-iteration');").await;
            (m.as_str() == Some("50")).then_some(m)
        })
        .await;
        assert_eq!(mark, "50");
        let drawn = eval(
            &c,
            "return [document.querySelectorAll('#curve path.train').length, \
             document.querySelectorAll('#curve path.val').length, \
             document.querySelectorAll('#curve circle.dot').length, \
             document.querySelector('#curve path.train').getTotalLength()];",
        )
        .await;
        assert_eq!(drawn[0], 1, "{drawn}");
        assert_eq!(drawn[1], 1, "{drawn}");
        assert_eq!(drawn[2], 3, "three validation points: {drawn}");
        assert!(drawn[3].as_f64().unwrap() > 100.0, "a real line: {drawn}");
        assert!(text_of(&c, "#curve-note").await.contains("iteration 50"));

        // Sampling the chosen checkpoint says so.
        c.find(Locator::Id("generate")).await.unwrap().click().await.unwrap();
        until("a whole sample of the other checkpoint", || async {
            let s = text_of(&c, "#status").await;
            s.contains("characters in").then_some(())?;
            s.contains("from i50_l32_v3.100.ckpt").then_some(())
        })
        .await;
        let text = text_of(&c, "#out").await;
        assert!(text.starts_with("Far from") && text.chars().count() > 300, "{text:?}");

        let png = c.screenshot().await.unwrap();
        std::fs::write(&shot, &png).unwrap();
        let (spread, colours) = pixel_spread(&png);
        assert!(
            spread > 0.05 && colours > 20,
            "the screenshot looks blank: {:.1}% of its pixels off the main colour, {colours} colours",
            spread * 100.0
        );

        // A phone's width: one column, nothing wider than the screen.
        c.set_window_size(390, 844).await.unwrap();
        let fits = until("the narrow layout", || async {
            let v = eval(
                &c,
                "return [document.documentElement.scrollWidth, window.innerWidth, \
                 getComputedStyle(document.querySelector('main')).gridTemplateColumns.split(' ').length];",
            )
            .await;
            (v[2] == 1).then_some(v)
        })
        .await;
        assert!(
            fits[0].as_u64() <= fits[1].as_u64(),
            "wider than the screen: {fits}"
        );
        c.close().await.unwrap();
        eprintln!("screenshot: {}", shot.display());
    });
}
