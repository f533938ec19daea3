//! The dedicated CPU inference path: the model's weights read out of the Burn module into plain
//! arrays, and a fused step per character with no autodiff and no per-op dispatch.
//!
//! Sampling is bound by streaming the weights (12 MB a character for the notebook's 2x512
//! model), so the hidden units of each layer are split into one part per core, each with its
//! gate columns copied into one contiguous block: the cores stream their blocks side by side,
//! each computes its units' gates and cell update, and they meet once per layer. The second
//! core is a [`Worker`] thread that spins between jobs: a character takes ~0.2 ms, and waking a
//! sleeping thread (as `rayon::join` does) costs a good part of that.
//!
//! The model can also step several independent rows at once ([`CpuCharRnn::with_rows`],
//! [`CpuCharRnn::step_rows`]: several samples drawn side by side). The products then take each
//! block of four weight rows once for all the rows of the batch (`k` outermost, rows inside; f16
//! rows converted to f32 once for all of them), so the weights still stream from memory once per
//! step for up to 16 rows, and a step of eight rows costs far less than eight steps of one. Each
//! part still runs on its own core. One row takes the batch-1 kernels, so batch-1 sampling is
//! unchanged. The batched kernels add the products in the same order and unfused, as the batch-1
//! ones do, so each row's logits are a batch-1 step's to the last bit: always with f32 weights,
//! and with f16 weights except on AVX-512 CPUs, whose batch-1 f16 product fuses its
//! multiply-adds (a difference in the last bits).

use burn::prelude::*;
use karnna_model::kernel::{gru_cell, lstm_cell, rnn_cell};
use karnna_model::{to_f32_vec, Cell, CharRnn};

use crate::stepper::CharStepper;

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

    /// `out[r] += x[r] · self` for each of the `rows` rows of `x` (`[rows, k]`) and `out`
    /// (`[rows, n]`). One row takes [`Mat::acc`]; more take the batched kernels, which read each
    /// weight row once for all of them (f16 rows are converted into `buf` first).
    fn acc_rows(&self, x: &[f32], out: &mut [f32], rows: usize, buf: &mut Vec<f32>) {
        if rows == 1 {
            return self.acc(x, out);
        }
        match self {
            Mat::F32(w) => mat_acc_rows(x, w, out, rows),
            Mat::F16(w) => mat_acc_rows_f16(x, w, out, rows, buf),
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
/// it, F16C 8 at a time (with the same unfused sums as the plain loop) where it has that; plain
/// conversion otherwise.
fn vec_mat_acc_f16(x: &[f32], w: &[u16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, checked just above.
        return unsafe { vec_mat_acc_f16_avx512(x, w, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has F16C and AVX, checked just above.
        return unsafe { vec_mat_acc_f16_f16c(x, w, out) };
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

/// `out += x · w` with `w` in f16 bits, 8 weights converted at a time by F16C; the product and
/// the sum are separate instructions, as in the plain loop, so the sums are the same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn vec_mat_acc_f16_f16c(x: &[f32], w: &[u16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = out.len();
    let blocks = n / 8;
    assert!(w.len() >= x.len() * n);
    for (k, &xk) in x.iter().enumerate() {
        let row = w.as_ptr().add(k * n);
        let xv = _mm256_set1_ps(xk);
        for b in 0..blocks {
            let o = out.as_mut_ptr().add(8 * b);
            let wv = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * b) as *const __m128i));
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), _mm256_mul_ps(xv, wv)));
        }
        for (j, o) in out.iter_mut().enumerate().skip(8 * blocks) {
            *o += xk * half::f16::from_bits(*row.add(j)).to_f32();
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
    /// f16 weight rows converted for the batched product.
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
/// or several independent rows stepped together ([`CpuCharRnn::step_rows`]).
pub struct CpuCharRnn {
    weights: CpuWeights,
    rows: usize,
    layers: Vec<Layer>,
    worker: Option<Worker>,
    logits: Vec<f32>, // [rows, V]
    ids: Vec<u32>,    // [rows], scratch of `CharStepper::step`
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

/// Rows of the batch that one pass of the batched kernels covers: their slice of `out`
/// (`[16, 4·256]` f32, 64 KiB, for half of a 512-unit layer) stays in the core's L2 cache while
/// the weights stream past. More rows take further passes, each reading the weights again.
const ROW_BLOCK: usize = 16;

/// Weight rows taken together by the batched kernels: each pass over a row of `out` adds four
/// products, which cuts the loads and stores of `out` fourfold.
const K_BLOCK: usize = 4;

/// `out[r] += x[r] · w` for `x: [rows, k]`, `w: [k, n]` (row-major), `out: [rows, n]`: blocks of
/// [`K_BLOCK`] rows of `w` outermost, the rows of `x` inside, so each weight is read from memory
/// once per [`ROW_BLOCK`] rows. Each sum runs over `k` in order, as in [`vec_mat_acc`].
fn mat_acc_rows(x: &[f32], w: &[f32], out: &mut [f32], rows: usize) {
    let (k, n) = (x.len() / rows, out.len() / rows);
    assert_eq!(w.len(), k * n, "w must be [k, n]");
    for (x, out) in x.chunks(ROW_BLOCK * k).zip(out.chunks_mut(ROW_BLOCK * n)) {
        for (b, w) in w.chunks(K_BLOCK * n).enumerate() {
            rows_block(x, k, b * K_BLOCK, w, out, n);
        }
    }
}

/// [`mat_acc_rows`] with `w` in f16 bits: each block of [`K_BLOCK`] weight rows is converted to
/// f32 in `buf` once, then serves every row of `x`.
fn mat_acc_rows_f16(x: &[f32], w: &[u16], out: &mut [f32], rows: usize, buf: &mut Vec<f32>) {
    let (k, n) = (x.len() / rows, out.len() / rows);
    assert_eq!(w.len(), k * n, "w must be [k, n]");
    buf.resize(K_BLOCK * n, 0.0);
    for (x, out) in x.chunks(ROW_BLOCK * k).zip(out.chunks_mut(ROW_BLOCK * n)) {
        for (b, w) in w.chunks(K_BLOCK * n).enumerate() {
            let buf = &mut buf[..w.len()];
            f16_to_f32(w, buf);
            rows_block(x, k, b * K_BLOCK, buf, out, n);
        }
    }
}

/// f16 bits to f32 (exact): 8 at a time with F16C where the CPU has it.
fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has F16C and AVX, checked just above.
        return unsafe { f16_to_f32_f16c(src, dst) };
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_bits(s).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16_to_f32_f16c(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    assert_eq!(src.len(), dst.len());
    let blocks = src.len() / 8;
    for b in 0..blocks {
        let v = _mm_loadu_si128(src.as_ptr().add(8 * b) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(8 * b), _mm256_cvtph_ps(v));
    }
    for (d, &s) in dst.iter_mut().zip(src).skip(8 * blocks) {
        *d = half::f16::from_bits(s).to_f32();
    }
}

/// `out[r] += Σ_i x[r·k + k0 + i] · w[i·n .. (i + 1)·n]` for every row `r` of `out` (`[rows, n]`),
/// with `w` up to [`K_BLOCK`] weight rows: AVX2 where the CPU has it, the baseline otherwise.
fn rows_block(x: &[f32], k: usize, k0: usize, w: &[f32], out: &mut [f32], n: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { rows_block_avx2(x, k, k0, w, out, n) };
    }
    rows_block_impl(x, k, k0, w, out, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_block_avx2(x: &[f32], k: usize, k0: usize, w: &[f32], out: &mut [f32], n: usize) {
    rows_block_impl(x, k, k0, w, out, n)
}

/// The body of [`rows_block`], compiled for each instruction set. The multiply-adds are not
/// fused, as in [`vec_mat_acc`], so both give the same sums.
#[inline(always)]
fn rows_block_impl(x: &[f32], k: usize, k0: usize, w: &[f32], out: &mut [f32], n: usize) {
    for (x, out) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        let x = &x[k0..];
        if w.len() == 4 * n {
            let (w0, rest) = w.split_at(n);
            let (w1, rest) = rest.split_at(n);
            let (w2, w3) = rest.split_at(n);
            let (a0, a1, a2, a3) = (x[0], x[1], x[2], x[3]);
            for ((((o, &b0), &b1), &b2), &b3) in out.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
                let mut s = *o;
                s += a0 * b0;
                s += a1 * b1;
                s += a2 * b2;
                s += a3 * b3;
                *o = s;
            }
        } else {
            for (&a, w) in x.iter().zip(w.chunks_exact(n)) {
                for (o, &b) in out.iter_mut().zip(w) {
                    *o += a * b;
                }
            }
        }
    }
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
    /// [`CpuCharRnn::step_rows`]).
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
            ids: Vec::new(),
        };
        model.set_rows(rows);
        model
    }

    /// The weights this sampler steps (cloning them shares them).
    pub fn weights(&self) -> &CpuWeights {
        &self.weights
    }

    /// How many rows each step feeds.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Makes the model step `rows` rows from now on, all starting from the zero state (the
    /// weights are kept).
    ///
    /// # Panics
    /// If `rows` is 0.
    pub fn set_rows(&mut self, rows: usize) {
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
        self.ids = vec![0; rows];
        self.rows = rows;
    }

    /// Feeds character `ids[r]` to row `r` of every row at once (each row carries its own LSTM
    /// state, untouched by the others) and returns the logits of each row's next character,
    /// `[rows, vocab]` row-major. Each row's logits are a batch-1 [`CharStepper::step`]'s on the
    /// same characters (within rounding: see the module documentation); each weight is read
    /// once per step for up to 16 rows, which is what makes rows cheaper than separate steps.
    /// [`CharStepper::reset`] sets every row back to the zero state.
    ///
    /// # Panics
    /// If `ids` does not hold one id per row, or an id is outside the vocabulary.
    pub fn step_rows(&mut self, ids: &[u32]) -> &[f32] {
        self.forward(ids);
        &self.logits
    }

    /// The step behind [`CpuCharRnn::step_rows`], leaving the logits in `self.logits`.
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
                    let worker = self.worker.as_ref().expect("a worker for two parts");
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
            vec_mat_acc(top, &weights.out_w, &mut self.logits);
        } else {
            mat_acc_rows(top, &weights.out_w, &mut self.logits, rows);
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

    /// Feeds `id` to every row; returns the first row's logits.
    fn step(&mut self, id: u32) -> &[f32] {
        let mut ids = std::mem::take(&mut self.ids);
        ids.fill(id);
        self.forward(&ids);
        self.ids = ids;
        &self.logits[..self.weights.vocab_size()]
    }

    fn vocab_size(&self) -> usize {
        self.weights.vocab_size()
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
