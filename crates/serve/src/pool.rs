//! The sampling pool: a fixed set of threads, apart from the async runtime's, that draw the
//! text, and a bounded queue in front of them. A request beyond the pool and the queue is
//! refused at once ([`Busy`]), never left to pile up.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use axum::body::Bytes;
use karnna_infer::{generate, CpuCharRnn, SampleOptions};
use tokio::sync::mpsc as chan;

use crate::models::Model;

/// One sample to draw: the model, the options, where the text goes and the client's stop flag.
pub(crate) struct Job {
    pub model: Arc<Model>,
    pub opts: SampleOptions,
    pub out: chan::Sender<Bytes>,
    /// Set when the client goes away (its response body is dropped).
    pub stop: Arc<AtomicBool>,
}

/// The pool and its queue are full.
#[derive(Debug)]
pub(crate) struct Busy;

/// What the pool has done, for the tests and the load figures.
#[derive(Default)]
pub(crate) struct Counters {
    /// Samples being drawn now.
    pub running: AtomicUsize,
    /// Samples admitted: being drawn or waiting in the queue.
    pub admitted: AtomicUsize,
    /// Characters sent to clients, all samples together.
    pub chars: AtomicU64,
}

/// Threads that draw samples, `workers` of them, each with at most one sample at a time; up to
/// `queue` more wait for a free thread.
pub(crate) struct Pool {
    tx: Option<mpsc::Sender<(Job, Admitted)>>,
    capacity: usize,
    threads: Vec<JoinHandle<()>>,
    pub counters: Arc<Counters>,
}

/// A place in the pool or its queue, given back when dropped (the job done or abandoned).
struct Admitted(Arc<Counters>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    /// Starts `workers` threads (at least one) with a queue of `queue` waiting jobs.
    pub fn new(workers: usize, queue: usize) -> std::io::Result<Self> {
        let workers = workers.max(1);
        let (tx, rx) = mpsc::channel::<(Job, Admitted)>();
        let rx = Arc::new(Mutex::new(rx));
        let counters = Arc::new(Counters::default());
        let threads = (0..workers)
            .map(|i| {
                let rx = rx.clone();
                let counters = counters.clone();
                std::thread::Builder::new()
                    .name(format!("karnna-serve-{i}"))
                    .spawn(move || worker(&rx, &counters))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            tx: Some(tx),
            capacity: workers + queue,
            threads,
            counters,
        })
    }

    /// Hands `job` to a free thread, or queues it, or refuses it when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        self.counters
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .map_err(|_| Busy)?;
        let place = Admitted(self.counters.clone());
        let tx = self.tx.as_ref().expect("the pool is running");
        tx.send((job, place)).map_err(|_| Busy)
    }
}

impl Drop for Pool {
    /// Closes the queue and waits for the threads (each finishes its sample first; a sample
    /// whose client is gone stops at its next character).
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A pool thread: takes jobs until the queue closes. It keeps the sampler of the last model it
/// ran (the weights are the model's, shared; the sampler holds only the state), so the next
/// sample of that model starts at once.
fn worker(rx: &Mutex<mpsc::Receiver<(Job, Admitted)>>, counters: &Counters) {
    let mut sampler: Option<(Arc<Model>, CpuCharRnn)> = None;
    loop {
        let next = rx.lock().map(|rx| rx.recv());
        let Ok(Ok((job, _place))) = next else {
            return;
        };
        if job.stop.load(Ordering::Acquire) || job.out.is_closed() {
            continue; // its client left while it waited
        }
        if !sampler
            .as_ref()
            .is_some_and(|(m, _)| Arc::ptr_eq(m, &job.model))
        {
            drop(sampler.take()); // its helper thread ends before the next one starts
            let s = CpuCharRnn::from_weights(job.model.weights.clone(), 1);
            sampler = Some((job.model.clone(), s));
        }
        let (_, s) = sampler.as_mut().expect("a sampler");
        counters.running.fetch_add(1, Ordering::AcqRel);
        let mut out = ChannelWriter {
            tx: &job.out,
            stop: &job.stop,
            buf: Vec::new(),
            counters,
        };
        // An error here is the client gone: nothing is left to tell. A panic (a bug) ends this
        // sample's stream early and costs the sampler, not the thread.
        let drawn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            generate(s, &job.model.vocab, &job.opts, &mut out, &job.stop)
        }));
        match drawn {
            Ok(Ok(())) if !job.stop.load(Ordering::Acquire) => {
                // `karnna sample` ends its text with a newline; so does the stream.
                let _ = out.write_all(b"\n").and_then(|()| out.finish());
            }
            Ok(_) => {}
            Err(_) => sampler = None,
        }
        counters.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Chunks kept back while the client reads slower than the sampler draws; past this the
/// sampler waits for the client.
const BACKLOG: usize = 16 * 1024;

/// The text of one sample on its way to the client: each flush (one per character) sends what
/// is written when the channel has room, and keeps it for the next flush when not, so a slow
/// reader gets larger chunks instead of holding up the sampler. A closed channel (the client
/// gone) or the stop flag make every write fail, which ends the sample.
struct ChannelWriter<'a> {
    tx: &'a chan::Sender<Bytes>,
    stop: &'a AtomicBool,
    buf: Vec<u8>,
    counters: &'a Counters,
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
}

impl ChannelWriter<'_> {
    /// Sends everything written, waiting for room if need be.
    fn finish(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx.blocking_send(chunk).map_err(|_| gone())
    }
}

impl Write for ChannelWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(gone());
        }
        self.buf.extend_from_slice(bytes);
        let chars = std::str::from_utf8(bytes).map_or(bytes.len(), |s| s.chars().count());
        self.counters
            .chars
            .fetch_add(chars as u64, Ordering::Relaxed);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.buf.len() >= BACKLOG {
            return self.finish();
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        match self.tx.try_send(chunk) {
            Ok(()) => Ok(()),
            Err(chan::error::TrySendError::Full(chunk)) => {
                self.buf = chunk.into(); // kept for the next flush
                Ok(())
            }
            Err(chan::error::TrySendError::Closed(_)) => Err(gone()),
        }
    }
}
