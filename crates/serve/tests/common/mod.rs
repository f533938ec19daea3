//! What the server's tests share: tiny run folders written here (untrained models saved as real
//! checkpoints, a `best.txt`, a `metrics.csv`), a server on 127.0.0.1:0, and a plain HTTP/1
//! client.
#![allow(dead_code)] // not every test binary uses everything

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use karnna_data::Vocab;
use karnna_model::checkpoint::{checkpoint_name, RunDir};
use karnna_model::{CharRnnConfig, Checkpoint, CheckpointMeta, Init};
use karnna_serve::{ServeOptions, Server, ServerHandle};

/// The text whose characters make the tiny models' vocabulary.
pub const TEXT: &str = "Far from here, it was the best of times, it was the worst of times.\n";

/// A fresh, empty folder for one test: `karnna-serve-{pid}-{name}` in the temporary folder.
pub fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("karnna-serve-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The checkpoints [`tiny_run`] writes: (iteration, validation loss, weight seed).
pub const CHECKPOINTS: [(usize, Option<f64>, u64); 3] =
    [(50, Some(3.1), 1), (100, Some(2.5), 2), (150, Some(2.7), 3)];

/// A run folder with three checkpoints of an untrained `layers`×`size` LSTM (each with other
/// weights), `best.txt` naming the iteration-100 one (the lowest validation loss), and a
/// `metrics.csv` of 150 iterations.
pub fn tiny_run(name: &str, size: usize, layers: usize) -> PathBuf {
    let dir = workdir(name);
    let vocab = Vocab::from_text(TEXT);
    let config = CharRnnConfig::new(vocab.len())
        .with_lstm_size(size)
        .with_num_layers(layers);
    for (iteration, val_loss, seed) in CHECKPOINTS {
        let model = config.init_seeded::<Flex>(Init::PyTorch, seed, &Default::default());
        let meta = CheckpointMeta {
            model: config.clone(),
            vocab: vocab.clone(),
            iteration,
            val_loss,
            train_loss: Some(3.0),
            run: serde_json::json!({"name": name}),
        };
        let path = dir.join(checkpoint_name(iteration, size, val_loss));
        Checkpoint::save(&path, &meta, &model, &[]).unwrap();
        if iteration == 100 {
            RunDir::new(&dir).set_best(&path).unwrap();
        }
    }
    std::fs::write(dir.join("metrics.csv"), metrics(150)).unwrap();
    dir
}

/// A `metrics.csv` of `n` iterations, as `train` writes it, with a validation loss every 50.
pub fn metrics(n: usize) -> String {
    let mut s = String::from("iteration,epoch,train_loss,val_loss,chars_per_s,elapsed_s\n");
    for i in 1..=n {
        s += &metrics_row(i);
    }
    s
}

/// Row `i` of [`metrics`].
pub fn metrics_row(i: usize) -> String {
    let train = 4.0 - 1.5 * (i as f64 / 150.0);
    let val = if i.is_multiple_of(50) {
        format!("{:.5}", train + 0.2)
    } else {
        String::new()
    };
    format!("{i},1,{train:.5},{val},12345,{:.2}\n", i as f64 * 0.1)
}

/// The path of checkpoint `iteration` of a [`tiny_run`] folder.
pub fn checkpoint_path(dir: &Path, iteration: usize) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with(&format!("i{iteration}_")) && n.ends_with(".ckpt")
        })
        .unwrap_or_else(|| panic!("no checkpoint {iteration} in {}", dir.display()))
}

/// A server on 127.0.0.1:0 over `dir`, running on its own runtime until dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    /// Serves `opts` (on a runtime of two threads).
    pub fn start(opts: ServeOptions) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_keep_alive(std::time::Duration::from_millis(500))
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = runtime
            .block_on(Server::bind("127.0.0.1:0".parse().unwrap(), opts))
            .unwrap();
        let addr = server.local_addr();
        let handle = server.handle();
        runtime.spawn(server.run_until(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            handle,
            runtime: Some(runtime),
            stop: Some(tx),
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GETs `path` from the server and waits for the answer.
    #[allow(dead_code)]
    pub fn get(&self, path: &str) -> Answer {
        self.block_on(get(&self.url(path)))
    }

    /// GETs `path` with extra request `headers`.
    #[allow(dead_code)]
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.block_on(request("GET", &self.url(path), headers, ""))
    }

    /// POSTs `json` to `path` and waits for the answer.
    #[allow(dead_code)]
    pub fn post(&self, path: &str, json: &str) -> Answer {
        self.block_on(post_json(&self.url(path), json))
    }

    /// Runs `f` on the server's runtime (the tests' client calls).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.as_ref().unwrap().block_on(f)
    }

    /// Stops the server and drops its runtime (every connection and task with it).
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Options for a tiny model: one thread per sample, `workers` samples at once, `queue` waiting.
pub fn options(dir: &Path, workers: usize, queue: usize) -> ServeOptions {
    let mut o = ServeOptions::new(dir.to_owned());
    o.workers = workers;
    o.queue = queue;
    o
}

/// An answer: status, headers and the whole body as text.
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Answer {
    /// Checks a 200 answer whose content type starts with `content_type`, and returns it.
    #[allow(dead_code)]
    pub fn ok(self, content_type: &str) -> Answer {
        assert_eq!(self.status, 200, "{}", self.body);
        let ct = self.headers["content-type"].to_str().unwrap();
        assert!(ct.starts_with(content_type), "{ct}");
        self
    }

    /// The body's `error` field, checking that the body is one line of JSON with it.
    pub fn error(&self) -> String {
        assert_eq!(
            self.headers.get("content-type").unwrap(),
            "application/json",
            "{}",
            self.body
        );
        assert_eq!(self.body.trim_end().lines().count(), 1, "{}", self.body);
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        v["error"].as_str().unwrap().to_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// A client that opens a fresh connection for each request (no pooling).
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// Sends `method url` with `headers` and `body` and reads the whole answer.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = client()
        .request(req.body(Full::new(body.into())).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

/// `GET url`.
pub async fn get(url: &str) -> Answer {
    request("GET", url, &[], Bytes::new()).await
}

/// `POST url` with a JSON body.
pub async fn post_json(url: &str, json: &str) -> Answer {
    request(
        "POST",
        url,
        &[("content-type", "application/json")],
        json.to_owned(),
    )
    .await
}
