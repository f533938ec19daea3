//! `karnna serve`: a small local web server over one run folder (or one checkpoint): a page
//! that samples text live and draws the run's loss curves, and the HTTP API behind it
//! (`POST /api/sample`, `GET /api/checkpoints`, `GET /api/metrics`).
//!
//! It owns the routes and their input checks (`api.rs`), the page (three files
//! embedded in the binary: no CDN, works offline), the served folder (checkpoints listed by
//! name, each model loaded once and shared; `metrics.csv` as JSON), and the sampling pool: a
//! fixed set of threads apart from the async runtime's, with a bounded queue, beyond which a
//! request gets 503. The text of a sample is exactly `karnna sample`'s for the same checkpoint,
//! seed and options (the same [`karnna_infer::generate`] on the same CPU sampler).
//!
//! It depends on `karnna-infer`, `karnna-model` and `karnna-data`, and must never depend on
//! burn-train or `karnna-train`: serving is sampling, and stays as light as sampling.

mod api;
mod conn;
mod models;
mod pool;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use karnna_infer::Precision;
pub use models::CheckpointInfo;

/// What to serve and with how many threads.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The run folder whose checkpoints are listed and whose `metrics.csv` is drawn.
    pub dir: PathBuf,
    /// Serve only this checkpoint file (its folder's `metrics.csv` is still drawn).
    pub checkpoint: Option<PathBuf>,
    /// Weight precision of the sampler (`karnna sample`'s `--precision`; f16 by default).
    pub precision: Precision,
    /// Threads that step one sample together (1 or 2; `karnna sample` uses two where there
    /// are two cores).
    pub parts: usize,
    /// Samples drawn at once (each on `parts` threads).
    pub workers: usize,
    /// Requests that may wait for a free worker; beyond them a request gets 503.
    pub queue: usize,
    /// How long a client has to send a request's head once connected or after a response
    /// (so also how long a connection may sit idle), and then its body; past it the connection
    /// is closed (the body: 408). A write to a client that reads nothing of its response waits
    /// as long before the connection is closed and its sample stopped.
    pub read_timeout: std::time::Duration,
    /// Connections held at once. At the bound the one idle the longest is closed to make room
    /// (a new one gets 503 when every one has a request in flight).
    pub max_connections: usize,
}

impl ServeOptions {
    /// Serves the run folder `dir` with the defaults: f16 weights, `karnna sample`'s split
    /// ([`karnna_infer::default_parts`]), as many workers as the cores allow with that split,
    /// and a queue of 16.
    pub fn new(dir: PathBuf) -> Self {
        let parts = karnna_infer::default_parts();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            dir,
            checkpoint: None,
            precision: Precision::F16,
            parts,
            workers: (cores / parts).max(1),
            queue: 16,
            read_timeout: std::time::Duration::from_secs(10),
            max_connections: 256,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The served folder has no usable checkpoint.
    #[error("{0}")]
    Checkpoint(String),
    /// Starting the runtime or the threads failed, or serving did.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Figures of a running server, for tests and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Samples being drawn now.
    pub running: usize,
    /// Samples waiting for a free worker.
    pub queued: usize,
    /// Characters sent to clients since the start (primes included).
    pub chars: u64,
}

/// A bound server: the listener, the served folder with its best model loaded, and the pool.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Arc<api::State>,
    limits: conn::Limits,
}

/// A handle on a [`Server`] that outlives [`Server::run_until`]'s borrow of it: its figures.
#[derive(Clone)]
pub struct ServerHandle(Arc<api::State>);

impl ServerHandle {
    /// The server's figures now.
    pub fn stats(&self) -> Stats {
        let c = &self.0.pool.counters;
        let running = c.running.load(Ordering::Acquire);
        Stats {
            running,
            queued: c.admitted.load(Ordering::Acquire).saturating_sub(running),
            chars: c.chars.load(Ordering::Relaxed),
        }
    }
}

impl Server {
    /// Binds `addr` (port 0: any free port), starts the sampling pool and loads the best
    /// checkpoint, so that a bad folder is an error now and the first sample starts at once.
    pub async fn bind(addr: SocketAddr, opts: ServeOptions) -> Result<Self, ServeError> {
        let folder = models::Folder::new(
            opts.dir.clone(),
            opts.checkpoint.clone(),
            opts.precision,
            opts.parts,
        );
        let folder = Arc::new(folder);
        let f = folder.clone();
        tokio::task::spawn_blocking(move || f.model(None))
            .await
            .map_err(|e| ServeError::Checkpoint(e.to_string()))?
            .map_err(|e| ServeError::Checkpoint(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ServeError::Bind(addr, e))?;
        let local = listener.local_addr()?;
        let state = api::State {
            folder,
            pool: pool::Pool::new(opts.workers, opts.queue)?,
            loopback_only: local.ip().is_loopback(),
            read_timeout: opts.read_timeout,
        };
        let limits = conn::Limits {
            read_timeout: opts.read_timeout,
            max_connections: opts.max_connections.max(1),
        };
        Ok(Self {
            listener,
            state: Arc::new(state),
            limits,
        })
    }

    /// The address it listens on (with the port chosen when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The served folder's checkpoints, best first.
    pub fn checkpoints(&self) -> Vec<CheckpointInfo> {
        self.state.folder.list().unwrap_or_default()
    }

    /// A handle for the server's figures.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle(self.state.clone())
    }

    /// Serves until `shutdown` completes; then the connections are closed (streams in progress
    /// end, which stops their samples) and the pool's threads are joined.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let router = api::router(self.state.clone());
        tokio::select! {
            () = conn::serve(self.listener, router, self.limits) => {}
            () = shutdown => {}
        }
    }
}

/// Serves `opts` on `addr` on a runtime of its own until the process ends; `ready` is called
/// once listening, with the server (its address and checkpoints), to tell the user.
pub fn serve_forever(
    addr: SocketAddr,
    opts: ServeOptions,
    ready: impl FnOnce(&Server),
) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_name("karnna-http")
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let server = Server::bind(addr, opts).await?;
        ready(&server);
        server.run_until(std::future::pending()).await;
        Ok(())
    })
}
