//! The dedicated CPU inference path: the model's weights read out of the Burn module into plain
//! arrays, and a fused step per character with no autodiff and no per-op dispatch.
//!
//! Sampling is bound by streaming the weights (12 MB a character for the notebook's 2x512
//! model), so the hidden units of each layer are split into one part per core, each with its
//! gate columns copied into one contiguous block: the cores stream their blocks side by side,
//! each computes its units' gates and cell update, and they meet once per layer. The second
//! core is a [`Worker`] thread that spins between jobs: a character takes ~0.2 ms, and waking a
//! sleeping thread (as `rayon::join` does) costs a good part of that.

use burn::prelude::*;
use karnna_model::kernel::lstm_cell;
use karnna_model::{to_f32_vec, CharRnn};

use crate::generate::CharStepper;

/// How the sampler stores the weight matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32, exactly the trained weights.
    F32,
    /// f16 (computed in f32): half the bytes to stream per character, so the notebook's model
    /// fits in the cores' L2 caches; logits differ from f32 by ~1e-3.
    F16,
}

/// A weight matrix `[k, n]`, row-major.
enum Mat {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

impl Mat {
    fn new(w: Vec<f32>, precision: Precision) -> Self {
        match precision {
            Precision::F32 => Mat::F32(w),
            Precision::F16 => Mat::F16(
                w.iter()
                    .map(|&v| half::f16::from_f32(v).to_bits())
                    .collect(),
            ),
        }
    }

    /// `out += x · self`.
    fn acc(&self, x: &[f32], out: &mut [f32]) {
        match self {
            Mat::F32(w) => vec_mat_acc(x, w, out),
            Mat::F16(w) => vec_mat_acc_f16(x, w, out),
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
            Mat::F16(w) => out
                .iter_mut()
                .zip(&w[row * n..(row + 1) * n])
                .for_each(|(a, &b)| *a += half::f16::from_bits(b).to_f32()),
        }
    }
}

/// `out += x · w` with `w` in f16 bits: AVX-512 converts 16 weights at a time where the CPU has
/// it; plain conversion otherwise.
fn vec_mat_acc_f16(x: &[f32], w: &[u16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, checked just above.
        return unsafe { vec_mat_acc_f16_avx512(x, w, out) };
    }
    let n = out.len();
    for (xk, row) in x.iter().zip(w.chunks_exact(n)) {
        for (o, &wv) in out.iter_mut().zip(row) {
            *o += xk * half::f16::from_bits(wv).to_f32();
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn vec_mat_acc_f16_avx512(x: &[f32], w: &[u16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = out.len();
    let blocks = n / 16;
    assert!(w.len() >= x.len() * n);
    for (k, &xk) in x.iter().enumerate() {
        let row = w.as_ptr().add(k * n);
        let xv = _mm512_set1_ps(xk);
        for b in 0..blocks {
            let o = out.as_mut_ptr().add(16 * b);
            let wv = _mm512_cvtph_ps(_mm256_loadu_si256(row.add(16 * b) as *const __m256i));
            _mm512_storeu_ps(o, _mm512_fmadd_ps(xv, wv, _mm512_loadu_ps(o)));
        }
        for (j, o) in out.iter_mut().enumerate().skip(16 * blocks) {
            *o += xk * half::f16::from_bits(*row.add(j)).to_f32();
        }
    }
}

/// One part of a layer: `units` hidden units starting at `first`, with the weight columns of
/// their four gates (i, f, g, o) side by side.
struct Part {
    first: usize,
    units: usize,
    w_ih: Mat,      // [input, 4·units]
    w_hh: Mat,      // [H, 4·units]
    bias: Vec<f32>, // [4·units], b_ih + b_hh
}

struct Layer {
    parts: Vec<Part>,
    /// Hidden state before / after this character, and the cell state, each `[H]`.
    h: Vec<f32>,
    h_next: Vec<f32>,
    c: Vec<f32>,
    /// Gate scratch of each part, `[4·units]`.
    z: Vec<Vec<f32>>,
}

/// A [`CharRnn`] for batch-1 sampling on the CPU.
pub struct CpuCharRnn {
    h: usize,
    layers: Vec<Layer>,
    worker: Option<Worker>,
    out_w: Vec<f32>, // [H, V]
    out_b: Vec<f32>, // [V]
    logits: Vec<f32>,
}

/// The columns of `w` (`[rows, 4H]`) for units `first..first + units` of each gate, packed into
/// `[rows, 4·units]`.
fn gate_columns(w: &[f32], h: usize, first: usize, units: usize) -> Vec<f32> {
    let rows = w.len() / (4 * h);
    let mut out = Vec::with_capacity(rows * 4 * units);
    for r in 0..rows {
        for g in 0..4 {
            let start = r * 4 * h + g * h + first;
            out.extend_from_slice(&w[start..start + units]);
        }
    }
    out
}

/// `out += x · w` for `x: [k]`, `w: [k, n]` (row-major), `out: [n]`: one contiguous row of `w`
/// per element of `x`, which the compiler vectorises.
fn vec_mat_acc(x: &[f32], w: &[f32], out: &mut [f32]) {
    let n = out.len();
    for (xk, row) in x.iter().zip(w.chunks_exact(n)) {
        for (o, &wv) in out.iter_mut().zip(row) {
            *o += xk * wv;
        }
    }
}

impl Part {
    /// This part's gates and cell update: `z = bias + x·W_ih + h·W_hh` (or a row of `W_ih` for
    /// one-hot input), then `c = f·c + i·g`, `h = o·tanh(c)` for its units.
    /// `z` is scratch for the gates, `[4·units]`.
    fn step(&self, input: Input, h_prev: &[f32], c: &mut [f32], h_out: &mut [f32], z: &mut [f32]) {
        z.copy_from_slice(&self.bias);
        match input {
            Input::OneHot(id) => self.w_ih.add_row(id, z),
            Input::Dense(x) => self.w_ih.acc(x, z),
        }
        self.w_hh.acc(h_prev, z);
        lstm_cell(self.units, z, h_out, c);
    }
}

#[derive(Clone, Copy)]
enum Input<'a> {
    OneHot(usize),
    Dense(&'a [f32]),
}

impl CpuCharRnn {
    /// Copies the weights out of `model` (any backend) in f32, split for the available cores.
    pub fn new<B: Backend>(model: &CharRnn<B>) -> Self {
        Self::with(model, Precision::F32, default_parts())
    }

    /// As [`CpuCharRnn::new`], with the weights stored in `precision` and each layer split into
    /// `parts` (1 or 2) parts.
    pub fn with<B: Backend>(model: &CharRnn<B>, precision: Precision, parts: usize) -> Self {
        let h = model.lstm_size();
        let parts = parts.clamp(1, 2).min(h);
        let bounds: Vec<(usize, usize)> = (0..parts)
            .map(|p| (p * h / parts, (p + 1) * h / parts - p * h / parts))
            .collect();
        let layers = model
            .layers
            .iter()
            .map(|l| {
                let (w_ih, w_hh) = (to_f32_vec(l.w_ih.val()), to_f32_vec(l.w_hh.val()));
                let bias = to_f32_vec(l.b_ih.val() + l.b_hh.val());
                Layer {
                    parts: bounds
                        .iter()
                        .map(|&(first, units)| Part {
                            first,
                            units,
                            w_ih: Mat::new(gate_columns(&w_ih, h, first, units), precision),
                            w_hh: Mat::new(gate_columns(&w_hh, h, first, units), precision),
                            bias: gate_columns(&bias, h, first, units),
                        })
                        .collect(),
                    h: vec![0.0; h],
                    h_next: vec![0.0; h],
                    c: vec![0.0; h],
                    z: bounds
                        .iter()
                        .map(|&(_, units)| vec![0.0; 4 * units])
                        .collect(),
                }
            })
            .collect();
        let out_w = to_f32_vec(model.output.weight.val());
        let out_b = match &model.output.bias {
            Some(b) => to_f32_vec(b.val()),
            None => vec![0.0; out_w.len() / h],
        };
        let logits = vec![0.0; out_b.len()];
        Self {
            h,
            layers,
            worker: (parts == 2).then(Worker::new),
            out_w,
            out_b,
            logits,
        }
    }
}

impl CharStepper for CpuCharRnn {
    fn reset(&mut self) {
        for l in &mut self.layers {
            l.h.fill(0.0);
            l.c.fill(0.0);
        }
    }

    fn step(&mut self, id: u32) -> &[f32] {
        for i in 0..self.layers.len() {
            let (below, rest) = self.layers.split_at_mut(i);
            let layer = &mut rest[0];
            let input = match below.last() {
                None => Input::OneHot(id as usize),
                Some(prev) => Input::Dense(&prev.h),
            };
            let Layer {
                parts,
                h,
                h_next,
                c,
                z,
            } = layer;
            match (parts.as_slice(), z.as_mut_slice()) {
                ([one], [z]) => one.step(input, h, c, h_next, z),
                ([a, b], [z_a, z_b]) => {
                    let (c_a, c_b) = c.split_at_mut(b.first);
                    let (h_a, h_b) = h_next.split_at_mut(b.first);
                    let h_prev = &h[..];
                    let worker = self.worker.as_ref().expect("a worker for two parts");
                    worker.run(&mut || b.step(input, h_prev, c_b, h_b, z_b), || {
                        a.step(input, h_prev, c_a, h_a, z_a)
                    });
                }
                _ => unreachable!("one or two parts"),
            }
            std::mem::swap(h, h_next);
        }
        self.logits.copy_from_slice(&self.out_b);
        let top = &self.layers.last().expect("a layer").h[..self.h];
        vec_mat_acc(top, &self.out_w, &mut self.logits);
        &self.logits
    }

    fn vocab_size(&self) -> usize {
        self.out_b.len()
    }
}

/// One part per core, up to two.
pub fn default_parts() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2)
}

/// A job handed to the [`Worker`]: a pointer to a closure that the submitting thread keeps alive
/// until the worker reports it done.
struct Job(*mut (dyn FnMut() + Send));

// SAFETY: the closure behind the pointer is `Send`, and only one thread touches it at a time
// (the submitter writes the pointer before publishing the generation, then waits).
unsafe impl Send for Job {}

struct Shared {
    job: std::sync::Mutex<Option<Job>>,
    submitted: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
    panicked: std::sync::atomic::AtomicBool,
    quit: std::sync::atomic::AtomicBool,
}

/// A second thread for the sampler that runs one closure at a time, spinning for a while
/// between jobs (then parking, so an idle sampler does not burn a core).
struct Worker {
    shared: std::sync::Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn new() -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let shared = std::sync::Arc::new(Shared {
            job: std::sync::Mutex::new(None),
            submitted: AtomicU64::new(0),
            done: AtomicU64::new(0),
            panicked: AtomicBool::new(false),
            quit: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("karnna-sampler".into())
            .spawn(move || {
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
                    let job = s.job.lock().unwrap().take();
                    if let Some(Job(f)) = job {
                        // SAFETY: the submitter keeps the closure alive until `done` reaches `seen`.
                        let f = unsafe { &mut *f };
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                            s.panicked.store(true, Ordering::Release);
                        }
                    }
                    s.done.store(seen, Ordering::Release);
                }
            })
            .expect("spawn the sampler thread");
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// Runs `remote` on the worker and `local` here, and returns when both are done.
    fn run(&self, remote: &mut (dyn FnMut() + Send), local: impl FnOnce()) {
        use std::sync::atomic::Ordering;
        // SAFETY: erases the closure's lifetime; this function does not return before the
        // worker is done with it.
        let ptr: *mut (dyn FnMut() + Send + 'static) = unsafe { std::mem::transmute(remote) };
        *self.shared.job.lock().unwrap() = Some(Job(ptr));
        let n = self.shared.submitted.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
        local();
        while self.shared.done.load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
        assert!(
            !self.shared.panicked.load(Ordering::Acquire),
            "the sampler thread panicked"
        );
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
