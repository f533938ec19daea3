//! The dedicated CPU inference path: the model's weights read out of the Burn module into plain
//! arrays, and a fused step per character with no autodiff and no per-op dispatch.
//!
//! Sampling is bound by streaming the weights (12 MB a character for the notebook's 2x512
//! model), so the hidden units of each layer are split into one part per core, each with its
//! gate columns copied into one contiguous block: the cores stream their blocks side by side,
//! each computes its units' gates and cell update, and they meet once per layer. The second
//! core is a [`Worker`] thread that spins between jobs: waking a sleeping thread (as
//! `rayon::join` does) costs a good part of a character's time.
//!
//! The model can also step several independent rows at once ([`CpuCharRnn::with_rows`],
//! [`CharStepper::step_rows`]: several samples drawn side by side). The products then take each
//! block of four weight rows once for all the rows of the batch, so the weights still stream
//! from memory once per step for up to 16 rows, and a step of eight rows costs far less than
//! eight steps of one. Each part still runs on its own core.
//!
//! The products are the kernel's exact-order ones ([`vec_mat_in_order`], [`mat_rows_in_order`]
//! and their forms for 16-bit weights, with the kernel's choice of instruction set): they add
//! the products row by row, in order and unfused, so each row's logits are a batch-1 step's to
//! the last bit, on every CPU: always with f32 and bf16 weights, and with f16 weights except on
//! AVX-512 CPUs, whose batch-1 f16 product fuses its multiply-adds (a difference in the last
//! bits).

use burn::prelude::*;
use karnna_kernels::{
    gru_cell, lstm_cell, mat_rows_in_order, mat_rows_in_order_half, rnn_cell, vec_mat_in_order,
    vec_mat_in_order_half, Half,
};
use karnna_model::{to_f32_vec, Cell, CharRnn};

use crate::stepper::CharStepper;

/// How the sampler stores the weight matrices (a clap `ValueEnum`: `--precision f16|bf16|f32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// f16 (computed in f32): half the bytes to stream per character, so the notebook's model
    /// fits in the cores' L2 caches; logits differ from f32 by ~1e-3.
    #[value(help = "Half precision weights, f32 arithmetic")]
    F16,
    /// bfloat16 (computed in f32): as many bytes as f16, with f32's range and a 7-bit mantissa
    /// (logits differ from f32 by ~1e-2); converted by a shift, where f16 needs F16C.
    #[value(help = "bfloat16 weights, f32 arithmetic")]
    Bf16,
    /// f32, exactly the trained weights.
    #[value(help = "The trained f32 weights")]
    F32,
}

/// A weight matrix `[k, n]`, row-major.
enum Mat {
    F32(Vec<f32>),
    Half(Half, Vec<u16>),
}

impl Mat {
    fn new(w: Vec<f32>, precision: Precision) -> Self {
        match precision {
            Precision::F32 => Mat::F32(w),
            Precision::F16 => Mat::half(Half::F16, &w),
            Precision::Bf16 => Mat::half(Half::Bf16, &w),
        }
    }

    fn half(half: Half, w: &[f32]) -> Self {
        Mat::Half(half, w.iter().map(|&v| half.from_f32(v)).collect())
    }

    /// `out += x · self`.
    fn acc(&self, x: &[f32], out: &mut [f32]) {
        match self {
            Mat::F32(w) => vec_mat_in_order(x, w, out),
            Mat::Half(half, w) => vec_mat_in_order_half(*half, x, w, out),
        }
    }

    /// `out[r] += x[r] · self` for each of the `rows` rows of `x` (`[rows, k]`) and `out`
    /// (`[rows, n]`). One row takes [`Mat::acc`]; more take the batched kernels, which read each
    /// weight row once for all of them (16-bit rows are converted into `buf` first).
    fn acc_rows(&self, x: &[f32], out: &mut [f32], rows: usize, buf: &mut Vec<f32>) {
        if rows == 1 {
            return self.acc(x, out);
        }
        match self {
            Mat::F32(w) => mat_rows_in_order(x, w, out, rows),
            Mat::Half(half, w) => mat_rows_in_order_half(*half, x, w, out, rows, buf),
        }
    }

    /// `out += self[row]`.
    fn add_row(&self, row: usize, out: &mut [f32]) {
        let n = out.len();
        match self {
            Mat::F32(w) => out
                .iter_mut()
                .zip(&w[row * n..(row + 1) * n])
                .for_each(|(a, b)| *a += b),
            Mat::Half(half, w) => out
                .iter_mut()
                .zip(&w[row * n..(row + 1) * n])
                .for_each(|(a, &b)| *a += half.to_f32(b)),
        }
    }
}

/// One part of a layer: `units` hidden units starting at `first`, with the weight columns of
/// their `G` gates (LSTM i, f, g, o; GRU r, z, n; RNN one) side by side.
struct Part {
    cell: Cell,
    first: usize,
    units: usize,
    w_ih: Mat,      // [input, G·units]
    w_hh: Mat,      // [H, G·units]
    bias: Vec<f32>, // [G·units]: b_ih + b_hh, or b_ih alone for the GRU
    b_hh: Vec<f32>, // [G·units] for the GRU (its b_hn sits inside the reset product), else empty
}

/// A layer's state in one [`CpuCharRnn`] (its weights are the [`CpuWeights`]' parts).
struct Layer {
    /// Hidden state of every row before this character, `[rows, H]`.
    h: Vec<f32>,
    /// What each part writes, one per part.
    states: Vec<PartState>,
}

/// A part's own state and scratch, for every row.
struct PartState {
    /// Its units' hidden state after this character, `[rows, units]`.
    h: Vec<f32>,
    /// Its units' cell state, `[rows, units]` (the LSTM's; unused by the other cells).
    c: Vec<f32>,
    /// Gate scratch, `[rows, G·units]`.
    z: Vec<f32>,
    /// The GRU's `h·W_hh + b_hh`, `[rows, G·units]` (empty for the other cells).
    hp: Vec<f32>,
    /// 16-bit weight rows converted for the batched product.
    buf: Vec<f32>,
}

impl PartState {
    fn new(cell: Cell, rows: usize, units: usize) -> Self {
        let gates = rows * cell.gates() * units;
        Self {
            h: vec![0.0; rows * units],
            c: vec![0.0; rows * units],
            z: vec![0.0; gates],
            hp: if cell == Cell::Gru {
                vec![0.0; gates]
            } else {
                Vec::new()
            },
            buf: Vec::new(),
        }
    }
}

/// The weights of a [`CpuCharRnn`], read out of a [`CharRnn`] once: cloning shares them (an
/// `Arc`), so several samplers on several threads step one copy ([`CpuCharRnn::from_weights`]),
/// each with its own state.
#[derive(Clone)]
pub struct CpuWeights(std::sync::Arc<Weights>);

struct Weights {
    cell: Cell,
    h: usize,
    /// Each layer's parts (one per core, up to two).
    layers: Vec<Vec<Part>>,
    out_w: Vec<f32>, // [H, V]
    out_b: Vec<f32>, // [V]
}

/// A [`CharRnn`] for sampling on the CPU: one row (the [`CharStepper`] a single sample needs),
/// or several independent rows stepped together ([`CharStepper::step_rows`]).
pub struct CpuCharRnn {
    weights: CpuWeights,
    rows: usize,
    layers: Vec<Layer>,
    worker: Option<Worker>,
    logits: Vec<f32>, // [rows, V]
}

/// The columns of `w` (`[rows, G·H]`) for units `first..first + units` of each of the `gates`
/// gates, packed into `[rows, G·units]`.
fn gate_columns(w: &[f32], gates: usize, h: usize, first: usize, units: usize) -> Vec<f32> {
    let rows = w.len() / (gates * h);
    let mut out = Vec::with_capacity(rows * gates * units);
    for r in 0..rows {
        for g in 0..gates {
            let start = r * gates * h + g * h + first;
            out.extend_from_slice(&w[start..start + units]);
        }
    }
    out
}

impl Part {
    /// This part's gates and cell update for each of `rows` rows, written to `st` (`h_prev` is
    /// `[rows, H]`): `z = bias + x·W_ih + h·W_hh` (a row of `W_ih` for one-hot input), then the
    /// LSTM's `c = f·c + i·g`, `h = o·tanh(c)` or the RNN's `h = tanh(z)`; the GRU keeps
    /// `h·W_hh + b_hh` apart for its reset product.
    fn step(&self, rows: usize, input: Input, h_prev: &[f32], st: &mut PartState) {
        let PartState { h, c, z, hp, buf } = st;
        let width = self.cell.gates() * self.units;
        for z in z.chunks_exact_mut(width) {
            z.copy_from_slice(&self.bias);
        }
        match input {
            Input::OneHot(ids) => {
                for (z, &id) in z.chunks_exact_mut(width).zip(ids) {
                    self.w_ih.add_row(id as usize, z);
                }
            }
            Input::Dense(x) => self.w_ih.acc_rows(x, z, rows, buf),
        }
        match self.cell {
            Cell::Lstm => {
                self.w_hh.acc_rows(h_prev, z, rows, buf);
                for ((z, h), c) in z
                    .chunks_exact_mut(width)
                    .zip(h.chunks_exact_mut(self.units))
                    .zip(c.chunks_exact_mut(self.units))
                {
                    lstm_cell(self.units, z, h, c);
                }
            }
            Cell::Rnn => {
                self.w_hh.acc_rows(h_prev, z, rows, buf);
                for (z, h) in z.chunks_exact(width).zip(h.chunks_exact_mut(self.units)) {
                    rnn_cell(z, h);
                }
            }
            Cell::Gru => {
                for hp in hp.chunks_exact_mut(width) {
                    hp.copy_from_slice(&self.b_hh);
                }
                self.w_hh.acc_rows(h_prev, hp, rows, buf);
                let h_rows = h_prev.chunks_exact(h_prev.len() / rows);
                for (((z, hp), h), h_prev) in z
                    .chunks_exact_mut(width)
                    .zip(hp.chunks_exact(width))
                    .zip(h.chunks_exact_mut(self.units))
                    .zip(h_rows)
                {
                    // The cell updates h in place: start from these units' h_{t-1}.
                    h.copy_from_slice(&h_prev[self.first..self.first + self.units]);
                    gru_cell(self.units, z, hp, h);
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Input<'a> {
    /// The character of each row (the first layer).
    OneHot(&'a [u32]),
    /// The layer below's hidden state, `[rows, H]`.
    Dense(&'a [f32]),
}

impl CpuWeights {
    /// Copies the weights out of `model` (any backend), stored in `precision`, each layer split
    /// into `parts` (1 or 2) parts, one per core that will step it.
    pub fn new<B: Backend>(model: &CharRnn<B>, precision: Precision, parts: usize) -> Self {
        let (h, cell) = (model.lstm_size(), model.cell());
        let gates = cell.gates();
        let parts = parts.clamp(1, 2).min(h);
        let bounds: Vec<(usize, usize)> = (0..parts)
            .map(|p| (p * h / parts, (p + 1) * h / parts - p * h / parts))
            .collect();
        let layers = model
            .layers
            .iter()
            .map(|l| {
                let (w_ih, w_hh) = (to_f32_vec(l.w_ih.val()), to_f32_vec(l.w_hh.val()));
                let (bias, b_hh) = match cell {
                    Cell::Gru => (to_f32_vec(l.b_ih.val()), to_f32_vec(l.b_hh.val())),
                    Cell::Lstm | Cell::Rnn => (to_f32_vec(l.b_ih.val() + l.b_hh.val()), vec![]),
                };
                let columns = |w: &[f32], first, units| gate_columns(w, gates, h, first, units);
                bounds
                    .iter()
                    .map(|&(first, units)| Part {
                        cell,
                        first,
                        units,
                        w_ih: Mat::new(columns(&w_ih, first, units), precision),
                        w_hh: Mat::new(columns(&w_hh, first, units), precision),
                        bias: columns(&bias, first, units),
                        b_hh: match cell {
                            Cell::Gru => columns(&b_hh, first, units),
                            _ => Vec::new(),
                        },
                    })
                    .collect()
            })
            .collect();
        let out_w = to_f32_vec(model.output.weight.val());
        let out_b = match &model.output.bias {
            Some(b) => to_f32_vec(b.val()),
            None => vec![0.0; out_w.len() / h],
        };
        Self(std::sync::Arc::new(Weights {
            cell,
            h,
            layers,
            out_w,
            out_b,
        }))
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.0.out_b.len()
    }

    /// Parts each layer is split into (1 or 2): a sampler on these weights steps them on that
    /// many threads.
    pub fn parts(&self) -> usize {
        self.0.layers.first().map_or(1, Vec::len)
    }
}

impl CpuCharRnn {
    /// Copies the weights out of `model` (any backend) in f32, split for the available cores.
    pub fn new<B: Backend>(model: &CharRnn<B>) -> Self {
        Self::with(model, Precision::F32, default_parts())
    }

    /// As [`CpuCharRnn::new`], with the weights stored in `precision` and each layer split into
    /// `parts` (1 or 2) parts.
    pub fn with<B: Backend>(model: &CharRnn<B>, precision: Precision, parts: usize) -> Self {
        Self::with_rows(model, precision, parts, 1)
    }

    /// As [`CpuCharRnn::with`], stepping `rows` independent rows at once (see
    /// [`CharStepper::step_rows`]).
    ///
    /// # Panics
    /// If `rows` is 0.
    pub fn with_rows<B: Backend>(
        model: &CharRnn<B>,
        precision: Precision,
        parts: usize,
        rows: usize,
    ) -> Self {
        Self::from_weights(CpuWeights::new(model, precision, parts), rows)
    }

    /// A sampler stepping `rows` rows on `weights`, shared with every other sampler made from
    /// them, from the zero state. With two parts it starts its own second thread.
    ///
    /// # Panics
    /// If `rows` is 0.
    pub fn from_weights(weights: CpuWeights, rows: usize) -> Self {
        assert!(rows >= 1, "at least one row");
        let parts = weights.parts();
        let mut model = Self {
            weights,
            rows,
            layers: Vec::new(),
            worker: (parts == 2).then(Worker::new),
            logits: Vec::new(),
        };
        model.set_rows(rows);
        model
    }

    /// The weights this sampler steps (cloning them shares them).
    pub fn weights(&self) -> &CpuWeights {
        &self.weights
    }

    /// The step behind [`CharStepper::step_rows`], leaving the logits in `self.logits`.
    fn forward(&mut self, ids: &[u32]) {
        assert_eq!(ids.len(), self.rows, "one id per row");
        let weights = &self.weights.0;
        let (rows, hidden) = (self.rows, weights.h);
        for (i, parts) in weights.layers.iter().enumerate() {
            let (below, rest) = self.layers.split_at_mut(i);
            let layer = &mut rest[0];
            let input = match below.last() {
                None => Input::OneHot(ids),
                Some(prev) => Input::Dense(&prev.h),
            };
            let Layer { h, states } = layer;
            match (parts.as_slice(), states.as_mut_slice()) {
                ([one], [st]) => one.step(rows, input, h, st),
                ([a, b], [st_a, st_b]) => {
                    let h_prev = &h[..];
                    let worker = self.worker.as_mut().expect("a worker for two parts");
                    worker.run(&mut || b.step(rows, input, h_prev, st_b), || {
                        a.step(rows, input, h_prev, st_a)
                    });
                }
                _ => unreachable!("one or two parts"),
            }
            // The parts' new hidden states become the layer's, for the layer above and the
            // next character.
            for (p, st) in parts.iter().zip(states.iter()) {
                for (dst, src) in h.chunks_exact_mut(hidden).zip(st.h.chunks_exact(p.units)) {
                    dst[p.first..p.first + p.units].copy_from_slice(src);
                }
            }
        }
        let top = &self.layers.last().expect("a layer").h;
        for l in self.logits.chunks_exact_mut(weights.out_b.len()) {
            l.copy_from_slice(&weights.out_b);
        }
        if rows == 1 {
            vec_mat_in_order(top, &weights.out_w, &mut self.logits);
        } else {
            mat_rows_in_order(top, &weights.out_w, &mut self.logits, rows);
        }
    }
}

impl CharStepper for CpuCharRnn {
    /// Sets every row back to the zero state.
    fn reset(&mut self) {
        for l in &mut self.layers {
            l.h.fill(0.0);
            for st in &mut l.states {
                st.c.fill(0.0);
            }
        }
    }

    fn vocab_size(&self) -> usize {
        self.weights.vocab_size()
    }

    fn rows(&self) -> usize {
        self.rows
    }

    fn set_rows(&mut self, rows: usize) {
        assert!(rows >= 1, "at least one row");
        let w = &self.weights.0;
        self.layers = w
            .layers
            .iter()
            .map(|parts| Layer {
                h: vec![0.0; rows * w.h],
                states: parts
                    .iter()
                    .map(|p| PartState::new(w.cell, rows, p.units))
                    .collect(),
            })
            .collect();
        self.logits = vec![0.0; rows * w.out_b.len()];
        self.rows = rows;
    }

    /// Each weight is read once per step for up to 16 rows, which is what makes rows cheaper
    /// than separate steps; a row's logits are a batch-1 step's within rounding (see the module
    /// documentation).
    fn step_rows(&mut self, ids: &[u32]) -> &[f32] {
        self.forward(ids);
        &self.logits
    }
}

/// One part per core, up to two.
pub fn default_parts() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2)
}

/// A job handed to the [`Worker`]: a pointer to a closure that [`Worker::run`] keeps alive, and
/// touches no more, until the worker reports it done.
struct Job(*mut (dyn FnMut() + Send));

// SAFETY: the closure behind the pointer is `Send`, so it may run on the worker's thread; the
// pointer is only dereferenced there, while `Worker::run` waits for it and does not touch it.
unsafe impl Send for Job {}

/// What a panicking job left: its payload, which [`Worker::run`] raises again on its own thread.
type Panic = Box<dyn std::any::Any + Send>;

struct Shared {
    job: std::sync::Mutex<Option<Job>>,
    submitted: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
    /// The panic of the last job, until [`Worker::run`] takes it.
    panic: std::sync::Mutex<Option<Panic>>,
    quit: std::sync::atomic::AtomicBool,
}

/// Locks `m` even if a thread panicked while holding it: what the mutexes guard here (a job
/// slot, a panic slot) is valid after any panic.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A second thread for the sampler that runs one closure at a time, spinning for a while
/// between jobs (then parking, so an idle sampler does not burn a core).
struct Worker {
    shared: std::sync::Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Job `n` handed to the worker: dropped, it waits until the worker is done with it, so that no
/// way out of [`Worker::run`] (a panic on the caller's side included) leaves the worker running
/// a closure whose borrows have ended.
struct Pending<'a> {
    shared: &'a Shared,
    n: u64,
}

impl Pending<'_> {
    /// Waits for the worker to finish the job and takes its panic, if it panicked.
    fn wait(&self) -> Option<Panic> {
        while self.shared.done.load(std::sync::atomic::Ordering::Acquire) < self.n {
            std::hint::spin_loop();
        }
        lock(&self.shared.panic).take()
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        // On the normal path the panic was taken already; on an unwind, the caller's panic is
        // the one that propagates and the job's is dropped, so it cannot reach the next job.
        drop(self.wait());
    }
}

impl Worker {
    fn new() -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let shared = std::sync::Arc::new(Shared {
            job: std::sync::Mutex::new(None),
            submitted: AtomicU64::new(0),
            done: AtomicU64::new(0),
            panic: std::sync::Mutex::new(None),
            quit: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("karnna-sampler".into())
            .spawn(move || work(&s))
            .expect("spawn the sampler thread");
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// Runs `remote` on the worker and `local` here, and returns when both are done. A panic in
    /// either comes out of this call (the local one first) after the worker is done with
    /// `remote`; the worker is then ready for the next call.
    fn run(&mut self, remote: &mut (dyn FnMut() + Send), local: impl FnOnce()) {
        use std::sync::atomic::Ordering;
        // SAFETY: erases the closure's lifetime (a fat pointer to the same closure, same layout).
        // The worker dereferences it only between this submission and `done` reaching `n`, and
        // `pending` waits for that on every way out of this function, unwinding included.
        let ptr: *mut (dyn FnMut() + Send + 'static) = unsafe { std::mem::transmute(remote) };
        *lock(&self.shared.job) = Some(Job(ptr));
        let n = self.shared.submitted.fetch_add(1, Ordering::AcqRel) + 1;
        let pending = Pending {
            shared: &self.shared,
            n,
        };
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
        local();
        if let Some(panic) = pending.wait() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// The worker's loop: waits for the next job (spinning, then parking), runs it, records its
/// panic if it panicked, and reports it done; until `quit`.
fn work(s: &Shared) {
    use std::sync::atomic::Ordering;
    let mut seen = 0;
    loop {
        let mut spins = 0u32;
        while s.submitted.load(Ordering::Acquire) == seen {
            if s.quit.load(Ordering::Acquire) {
                return;
            }
            spins += 1;
            if spins < 200_000 {
                std::hint::spin_loop();
            } else {
                std::thread::park_timeout(std::time::Duration::from_millis(1));
            }
        }
        seen = s.submitted.load(Ordering::Acquire);
        let job = lock(&s.job).take();
        if let Some(Job(f)) = job {
            // SAFETY: `Worker::run` keeps the closure alive and untouched until `done` reaches
            // `seen` (its `Pending` waits for that even when it unwinds).
            let f = unsafe { &mut *f };
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                *lock(&s.panic) = Some(panic);
            }
        }
        s.done.store(seen, Ordering::Release);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared
            .quit
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The message of a caught panic.
    fn message(panic: &Panic) -> &str {
        panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("")
    }

    #[test]
    fn a_panic_in_local_returns_only_after_the_worker_is_done_and_the_next_run_works() {
        let mut worker = Worker::new();
        // The remote closure writes into this frame's data well after `local` has panicked: if
        // `run` unwound without waiting, it would return before the writes (and, outside a test,
        // the worker would write into a freed frame).
        let mut data = vec![0u32; 64];
        let finished = AtomicBool::new(false);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            worker.run(
                &mut || {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    data.fill(7);
                    finished.store(true, Ordering::Release);
                },
                || panic!("local fails"),
            )
        }));
        assert_eq!(message(&caught.unwrap_err()), "local fails");
        assert!(
            finished.load(Ordering::Acquire),
            "run returned before the worker was done"
        );
        assert!(data.iter().all(|&v| v == 7));

        // A panic on the worker comes out of `run`, once, and does not reach the next call.
        let caught = catch_unwind(AssertUnwindSafe(|| {
            worker.run(&mut || panic!("remote fails"), || {})
        }));
        assert_eq!(message(&caught.unwrap_err()), "remote fails");
        // Both fail: the local panic propagates, the remote one is dropped, not kept for later.
        let caught = catch_unwind(AssertUnwindSafe(|| {
            worker.run(&mut || panic!("remote fails"), || panic!("local fails"))
        }));
        assert_eq!(message(&caught.unwrap_err()), "local fails");
        let (mut a, mut b) = (0, 0);
        worker.run(&mut || a = 1, || b = 2);
        assert_eq!((a, b), (1, 2));
    }
}
