//! Helpers shared by the kernel's unit tests: a tiny deterministic random source, the exact
//! sigmoid and a closeness check against `f64` references; and the tests the LSTM, GRU and RNN
//! sequence kernels share (against their `f64` references over a grid of shapes and at a large
//! one, and against finite differences), each cell supplying its maths through [`KernelCell`].

use super::bf16::Bf16Path;
use super::cell_math::CellMath;
use super::simd::{simd_level, Simd};
use super::{backward, forward, Backward, Dims, Forward};

/// A tiny deterministic LCG (Knuth's MMIX constants) giving floats in [-1, 1).
pub(super) struct Lcg(pub(super) u64);

impl Lcg {
    pub(super) fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub(super) fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// The instruction sets this CPU has, the baseline first.
pub(super) fn instruction_sets() -> Vec<Simd> {
    let mut sets = vec![Simd::Base];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            sets.push(Simd::Avx2);
        }
        if simd_level() == Simd::Avx512 {
            sets.push(Simd::Avx512);
        }
    }
    sets
}

pub(super) fn sig64(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

pub(super) fn assert_close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= tol * (1.0 + w.abs()),
            "{name}[{k}]: got {g}, want {w}"
        );
    }
}

/// `f32` values as `f64`, to compare a kernel's output with another's through [`assert_close`].
pub(super) fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `add + a [rows, k] · w` summed in `f64`, where `w`'s element `(l, j)` lies at
/// `w[l·s.0 + j·s.1]` (`s = (n, 1)` for a row-major `[k, n]`, `(1, k)` for the transpose of a
/// row-major `[n, k]`) and `add` is `[rows, n]` or empty: a product computed apart from the kernel.
pub(super) fn product_f64(
    a: &[f32],
    w: &[f32],
    (k, n): (usize, usize),
    s: (usize, usize),
    add: &[f32],
) -> Vec<f64> {
    let rows = a.len() / k;
    (0..rows * n)
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            let dot: f64 = (0..k)
                .map(|l| a[i * k + l] as f64 * w[l * s.0 + j * s.1] as f64)
                .sum();
            dot + add.get(ij).map_or(0.0, |&v| v as f64)
        })
        .collect()
}

/// `Σ add + h0 · w` for one row `h0` (`[H]`) and `w` (`[H, N]`), summed in `f64` and rounded to
/// `f32`: a step's pre-activations computed apart from the kernel, for the cells' tests at batch
/// one. Each slice of `add` is `[N]`.
pub(super) fn row_product(h0: &[f32], w: &[f32], add: &[&[f32]]) -> Vec<f32> {
    let (k, n) = (h0.len(), w.len() / h0.len());
    let dot = product_f64(h0, w, (k, n), (n, 1), &[]);
    (0..n)
        .map(|j| (add.iter().map(|a| a[j] as f64).sum::<f64>() + dot[j]) as f32)
        .collect()
}

/// Row `r`'s state before step `t` in a reference forward over rows of `h` units: `init`
/// (`[B, H]`) at `t = 0`, else step `t - 1`'s in `states` (`[T, B, H]`).
pub(super) fn ref_prev(init: &[f32], states: &[f64], d: Dims, t: usize, r: usize) -> Vec<f64> {
    match t {
        0 => init[r * d.h..][..d.h].iter().map(|&v| v as f64).collect(),
        _ => states[((t - 1) * d.b + r) * d.h..][..d.h].to_vec(),
    }
}

/// `h_prev [H] · w [H, N]` in `f64`: a reference step's recurrent product for one row.
pub(super) fn ref_product(h_prev: &[f64], w: &[f32]) -> Vec<f64> {
    let n = w.len() / h_prev.len();
    (0..n)
        .map(|j| {
            h_prev
                .iter()
                .enumerate()
                .map(|(k, &v)| v * w[k * n + j] as f64)
                .sum()
        })
        .collect()
}

/// Runs a reference backward over `d`'s steps, the last first, row by row: `step(t, r, dh,
/// dh_prev)` gets the gradient `dh` (`[H]`) reaching row `r`'s `h_t` from the loss (`dhs`) and
/// from step `t + 1`, and adds the one reaching `h_{t-1}` to `dh_prev` (`[H]`) but for the
/// recurrent product's, which this adds: `dz · w_hhᵀ` with `dz` (`[G·H]`) what `step` returns.
/// Accumulates `h_{t-1}ᵀ · dz` into `dw` (`[H, G·H]`); returns the gradient reaching `h0`.
pub(super) fn ref_bptt(
    d: Dims,
    (h0, hs): (&[f32], &[f64]),
    (w, dw): (&[f32], &mut [f64]),
    dhs: &[f32],
    mut step: impl FnMut(usize, usize, &[f64], &mut [f64]) -> Vec<f64>,
) -> Vec<f64> {
    let (b, h) = (d.b, d.h);
    let mut dh_next = vec![0.0f64; b * h];
    for t in (0..d.t).rev() {
        let mut dh_prev = vec![0.0f64; b * h];
        for r in 0..b {
            let dh: Vec<f64> = (0..h)
                .map(|j| dhs[(t * b + r) * h + j] as f64 + dh_next[r * h + j])
                .collect();
            let dh_prev = &mut dh_prev[r * h..][..h];
            let dz = step(t, r, &dh, dh_prev);
            let n = dz.len();
            for (k, &hk) in ref_prev(h0, hs, d, t, r).iter().enumerate() {
                for (j, &dzj) in dz.iter().enumerate() {
                    dh_prev[k] += dzj * w[k * n + j] as f64;
                    dw[k * n + j] += hk * dzj;
                }
            }
        }
        dh_next = dh_prev;
    }
    dh_next
}

/// An input of a cell's sequence kernels that the shared tests draw and differentiate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Input {
    /// The input projections `xp`, `[T, B, G·H]`.
    Xp,
    /// `w_hh`, `[H, G·H]`.
    WHh,
    /// The GRU's and the RNN's `b_hh`, `[G·H]`.
    BHh,
    /// `h0`, `[B, H]`.
    H0,
    /// The LSTM's `c0`, `[B, H]`.
    C0,
}

impl Input {
    /// Its length for cell `C` and `d`.
    fn len<C: CellMath>(self, d: Dims) -> usize {
        let g = C::GATES * d.h;
        match self {
            Input::Xp => d.t * d.b * g,
            Input::WHh => d.h * g,
            Input::BHh => g,
            Input::H0 | Input::C0 => d.b * d.h,
        }
    }

    /// The name the assertion messages give it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Input::Xp => "xp",
            Input::WHh => "w_hh",
            Input::BHh => "b_hh",
            Input::H0 => "h0",
            Input::C0 => "c0",
        }
    }
}

/// A recurrent cell's sequence kernels as the shared tests ([`check_grid`], [`check_large`],
/// [`check_finite_differences`], [`check_empty_shapes`], [`check_cell_at_batch_one`]) see them: the
/// inputs they take and the naive `f64` reference of the same maths; [`run_kernels`] runs the
/// kernels themselves.
///
/// The four inputs the backward returns gradients for are `xp`, `w_hh` and two of the cell's own
/// (its bias or its initial states).
pub(super) trait KernelCell: CellMath {
    /// The cell's own two inputs, drawn in this order after `xp` and `w_hh`, each with its
    /// scale.
    const OWN: [(Input, f32); 2];
    /// The scale of the random input projections `xp`.
    const XP_SCALE: f32;
    /// The name of the forward's second array ([`Forward::aux`]), for a cell that writes one.
    const AUX_NAME: Option<&'static str>;
    /// The tolerances of [`check_large`].
    const LARGE: Tol;

    /// The `f64` reference forward and backward on `c`: `hs`, then any of the second array (named
    /// [`KernelCell::AUX_NAME`]) and `gates` it computes.
    fn reference(c: &Case) -> Outputs<f64>;

    /// The cell alone (`lstm_cell`, `gru_cell`, `rnn_cell`) on the one step of a batch-one case,
    /// its recurrent product computed apart ([`row_product`]): its outputs, named as the
    /// forward's.
    fn cell_step(c: &Case) -> Vec<(&'static str, Vec<f32>)>;
}

/// One test case: random inputs for a [`Dims`], and the gradient of the loss with respect to
/// every `h_t`.
#[derive(Clone)]
pub(super) struct Case {
    /// The sizes.
    pub(super) d: Dims,
    /// The four inputs: `xp`, `w_hh`, then the cell's own two (see [`KernelCell`]).
    pub(super) ins: [Vec<f32>; 4],
    /// Which input each of [`Case::ins`] is.
    pub(super) inputs: [Input; 4],
    /// `dL/dh_t` for every `t`: `[T, B, H]`.
    pub(super) dhs: Vec<f32>,
}

impl Case {
    /// Draws cell `C`'s inputs for `d` from [`Lcg`] seeded with `seed`, then `dhs`: `xp` at
    /// [`KernelCell::XP_SCALE`], `w_hh` at `1/√H`, then [`KernelCell::OWN`].
    pub(super) fn new<C: KernelCell>(d: Dims, seed: u64) -> Case {
        let h = d.h;
        let mut rng = Lcg(seed);
        let xp = rng.vec(Input::Xp.len::<C>(d), C::XP_SCALE);
        let w = rng.vec(Input::WHh.len::<C>(d), 1.0 / (h as f32).sqrt());
        let [(third, s3), (fourth, s4)] = C::OWN;
        let ins = [
            xp,
            w,
            rng.vec(third.len::<C>(d), s3),
            rng.vec(fourth.len::<C>(d), s4),
        ];
        let dhs = rng.vec(d.t * d.b * h, 1.0);
        let inputs = [Input::Xp, Input::WHh, third, fourth];
        Case {
            d,
            ins,
            inputs,
            dhs,
        }
    }

    /// Input `which`, or an empty slice where the cell does not take it.
    pub(super) fn input(&self, which: Input) -> &[f32] {
        self.inputs
            .iter()
            .position(|&i| i == which)
            .map_or(&[], |k| &self.ins[k])
    }
}

/// What a cell's kernels compute forward and backward, or their `f64` reference.
pub(super) struct Outputs<T> {
    /// The forward's outputs, each with its name: `hs` first.
    pub(super) fwd: Vec<(&'static str, Vec<T>)>,
    /// The gradients with respect to [`Case::ins`], in that order.
    pub(super) grads: [Vec<T>; 4],
}

/// Runs cell `C`'s kernels forward and backward on `c` (the gradients start as NaN, so that any
/// the backward leaves unwritten shows): `hs`, the second array (when [`KernelCell::AUX_NAME`] names
/// one) and the gates forward, the gradients of [`Case::ins`] backward.
pub(super) fn run_kernels<C: KernelCell>(c: &Case) -> Outputs<f32> {
    run_kernels_in::<C>(c, None)
}

/// [`run_kernels`] with the products in bf16 on `bf16`'s path, if it names one.
pub(super) fn run_kernels_in<C: KernelCell>(c: &Case, bf16: Option<Bf16Path>) -> Outputs<f32> {
    let (d, tbh) = (c.d, c.d.t * c.d.b * c.d.h);
    let (w_hh, b_hh) = (c.input(Input::WHh), c.input(Input::BHh));
    let (h0, c0) = (c.input(Input::H0), c.input(Input::C0));
    let mut gates = c.input(Input::Xp).to_vec();
    let mut hs = vec![0.0; tbh];
    let mut aux = vec![0.0; if C::AUX_NAME.is_some() { tbh } else { 0 }];
    let io = Forward {
        xz: &mut gates,
        w_hh,
        b_hh,
        h0,
        c0,
        hs: &mut hs,
        aux: &mut aux,
        bf16,
    };
    forward(C::CELL, d, io);
    let mut dxp = gates.clone();
    let nan = |like: &[f32]| vec![f32::NAN; like.len()];
    let (mut dw_hh, mut db_hh) = (nan(w_hh), nan(b_hh));
    let (mut dh0, mut dc0) = (nan(h0), nan(c0));
    let io = Backward {
        w_hh,
        h0,
        c0,
        hs: &hs,
        aux: &aux,
        gz: &mut dxp,
        dhs: &c.dhs,
        dw_hh: &mut dw_hh,
        db_hh: &mut db_hh,
        dh0: &mut dh0,
        dc0: &mut dc0,
        bf16,
    };
    backward(C::CELL, d, io);
    let grad = |which: Input| match which {
        Input::Xp => dxp.clone(),
        Input::WHh => dw_hh.clone(),
        Input::BHh => db_hh.clone(),
        Input::H0 => dh0.clone(),
        Input::C0 => dc0.clone(),
    };
    let mut fwd = vec![("hs", hs)];
    fwd.extend(C::AUX_NAME.map(|name| (name, aux)));
    fwd.push(("gates", gates));
    Outputs {
        fwd,
        grads: c.inputs.map(grad),
    }
}

/// Tolerances of a comparison with the reference, relative as in [`assert_close`]: the forward's
/// outputs, the gradients, and `dw_hh` apart (a sum over every row and step).
#[derive(Clone, Copy)]
pub(super) struct Tol {
    pub(super) fwd: f64,
    pub(super) bwd: f64,
    pub(super) dw_hh: f64,
}

impl Tol {
    /// The tolerances `fwd`, `bwd` and `dw_hh`.
    pub(super) const fn new(fwd: f64, bwd: f64, dw_hh: f64) -> Tol {
        Tol { fwd, bwd, dw_hh }
    }
}

/// Runs cell `C`'s kernels on `c` and checks every output and gradient against the reference
/// within `tol`; `name` heads the assertion messages.
pub(super) fn check<C: KernelCell>(name: &str, c: &Case, tol: Tol) {
    let (kernel, reference) = (run_kernels::<C>(c), C::reference(c));
    for (out, want) in &reference.fwd {
        let got = named(&kernel.fwd, out);
        assert_close(&format!("{name} {out}"), got, want, tol.fwd);
    }
    for ((input, got), want) in c.inputs.iter().zip(&kernel.grads).zip(&reference.grads) {
        let tol = if *input == Input::WHh {
            tol.dw_hh
        } else {
            tol.bwd
        };
        assert_close(&format!("{name} d{}", input.name()), got, want, tol);
    }
}

/// [`check`] over the grid `t ∈ {1, 3, 7}`, `b ∈ {1, 2, 5}`, `h ∈ {1, 4, 9, 20}`, one seed a
/// case from 1 up.
pub(super) fn check_grid<C: KernelCell>() {
    let tol = Tol {
        fwd: 1e-5,
        bwd: 1e-4,
        dw_hh: 1e-4,
    };
    let mut seed = 1;
    for &t in &[1, 3, 7] {
        for &b in &[1, 2, 5] {
            for &h in &[1, 4, 9, 20] {
                let c = Case::new::<C>(Dims { t, b, h }, seed);
                seed += 1;
                check::<C>(&format!("t={t} b={b} h={h}"), &c, tol);
            }
        }
    }
}

/// [`check`] on `t = 2`, `b = 40`, `h = 450` (seed 99) within [`KernelCell::LARGE`]: big enough
/// for threaded products and several row blocks.
pub(super) fn check_large<C: KernelCell>() {
    let d = Dims {
        t: 2,
        b: 40,
        h: 450,
    };
    check::<C>("large", &Case::new::<C>(d, 99), C::LARGE);
}

/// Checks every gradient of cell `C`'s kernels against central finite differences (step `1e-3`,
/// relative tolerance `1e-3`) of the reference's loss `L = Σ hs ⊙ dhs` on `t = 3`, `b = 2`,
/// `h = 3` (seed 7).
pub(super) fn check_finite_differences<C: KernelCell>() {
    let c = Case::new::<C>(Dims { t: 3, b: 2, h: 3 }, 7);
    // L = Σ hs ⊙ dhs, so dL/dhs = dhs.
    let loss = |p: &Case| -> f64 {
        let fwd = C::reference(p).fwd;
        let (out, hs) = &fwd[0];
        assert_eq!(*out, "hs");
        hs.iter().zip(&c.dhs).map(|(&h, &g)| h * g as f64).sum()
    };
    let grads = run_kernels::<C>(&c).grads;
    let eps = 1e-3f32;
    for (which, grad) in grads.iter().enumerate() {
        let name = format!("d{}", c.inputs[which].name());
        assert_eq!(grad.len(), c.ins[which].len(), "{name}: length");
        for (k, &got) in grad.iter().enumerate() {
            let mut p = c.clone();
            p.ins[which][k] += eps;
            let up = loss(&p);
            p.ins[which][k] -= 2.0 * eps;
            let down = loss(&p);
            let fd = (up - down) / (2.0 * eps as f64);
            let err = (got as f64 - fd).abs();
            assert!(
                err <= 1e-3 * (1.0 + fd.abs()),
                "{name}[{k}]: got {got}, fd {fd}"
            );
        }
    }
}

/// Checks that cell `C`'s step alone ([`KernelCell::cell_step`]) equals its sequence kernels
/// and the reference at batch one: `t = 1`, `b = 1`, `h ∈ {1, 4, 9, 64, 300}`, seed `40 + h`.
pub(super) fn check_cell_at_batch_one<C: KernelCell>() {
    for h in [1, 4, 9, 64, 300] {
        let c = Case::new::<C>(Dims { t: 1, b: 1, h }, 40 + h as u64);
        let (kernel, reference) = (run_kernels::<C>(&c), C::reference(&c));
        let kernel: Vec<_> = kernel.fwd.iter().map(|(o, v)| (*o, f64s(v))).collect();
        for (out, got) in C::cell_step(&c) {
            let k = named(&kernel, out);
            assert_close(&format!("{out}, h={h}, vs kernel"), &got, k, 1e-5);
            let r = named(&reference.fwd, out);
            assert_close(&format!("{out}, h={h}, vs reference"), &got, r, 1e-5);
        }
    }
}

/// The output named `name` in `outputs`.
fn named<'a, T>(outputs: &'a [(&str, Vec<T>)], name: &str) -> &'a [T] {
    let found = outputs.iter().find(|(o, _)| *o == name);
    &found.unwrap_or_else(|| panic!("no output {name}")).1
}

/// Checks that cell `C`'s kernels take a sequence of no steps and one of no rows, the backward
/// writing zero gradients.
pub(super) fn check_empty_shapes<C: KernelCell>() {
    for d in [Dims { t: 0, b: 2, h: 3 }, Dims { t: 2, b: 0, h: 3 }] {
        let c = Case::new::<C>(d, 5);
        let out = run_kernels::<C>(&c);
        assert!(out.fwd.iter().all(|(_, v)| v.is_empty()), "{d:?}: outputs");
        for (input, grad) in c.inputs.iter().zip(&out.grads) {
            let name = input.name();
            assert!(grad.iter().all(|&v| v == 0.0), "{d:?}: d{name} {grad:?}");
        }
    }
}

/// The bf16 paths this CPU can run: the f32 products on rounded operands, and `VDPBF16PS` where
/// the CPU has it.
pub(super) fn bf16_paths() -> Vec<Bf16Path> {
    let mut paths = vec![Bf16Path::Reference];
    if crate::bf16_dot() {
        paths.push(Bf16Path::Dot);
    }
    paths
}

/// Largest error of `got` against `want` relative to `1 + |want|`, as [`assert_close`] measures.
fn max_rel(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / (1.0 + w.abs()))
        .fold(0.0, f64::max)
}

/// The sequence with bf16 products, on every bf16 path:
///
/// - one step on operands that are already bf16 (`w_hh` and `h0` rounded; rounding is
///   idempotent) equals the f64 reference's forward within f32's tolerance: the products are
///   then exact in f32 and nothing else changed;
/// - over several steps, forward and backward, within [`BF16_TOL`] ([`BF16_DW_TOL`] for
///   `dw_hh`) of the f64 reference of the unrounded inputs (see there), and `VDPBF16PS` within [`BF16_PATHS_TOL`] of the f32
///   products on the same rounded operands.
pub(super) fn check_bf16<C: KernelCell>() {
    for (b, h) in [(3, 9), (20, 40)] {
        let mut c = Case::new::<C>(Dims { t: 1, b, h }, 7);
        for which in [Input::WHh, Input::H0] {
            let i = c.inputs.iter().position(|&x| x == which).expect("an input");
            c.ins[i]
                .iter_mut()
                .for_each(|v| *v = super::bf16::round_bf16(*v));
        }
        let want = C::reference(&c);
        for path in bf16_paths() {
            let got = run_kernels_in::<C>(&c, Some(path));
            for (out, want) in &want.fwd {
                let name = format!("{path:?} b={b} h={h} one step {out}");
                assert_close(&name, named(&got.fwd, out), want, 1e-5);
            }
        }
    }
    let c = Case::new::<C>(Dims { t: 6, b: 20, h: 40 }, 8);
    let want = C::reference(&c);
    let runs: Vec<_> = bf16_paths()
        .into_iter()
        .map(|path| (path, run_kernels_in::<C>(&c, Some(path))))
        .collect();
    for (path, got) in &runs {
        for (out, want) in &want.fwd {
            let err = max_rel(named(&got.fwd, out), want);
            assert!(err <= BF16_TOL, "{path:?} {out}: {err:e}");
        }
        for ((input, got), want) in c.inputs.iter().zip(&got.grads).zip(&want.grads) {
            let err = max_rel(got, want);
            let tol = if *input == Input::WHh {
                BF16_DW_TOL
            } else {
                BF16_TOL
            };
            assert!(err <= tol, "{path:?} d{}: {err:e}", input.name());
        }
    }
    if let [(_, reference), (_, dot)] = &runs[..] {
        let pairs = reference
            .fwd
            .iter()
            .zip(&dot.fwd)
            .map(|((n, a), (_, b))| (*n, a, b));
        let grads = c.inputs.iter().zip(&reference.grads).zip(&dot.grads);
        let grads = grads.map(|((input, a), b)| (input.name(), a, b));
        for (name, a, b) in pairs.chain(grads) {
            let err = max_rel(b, &f64s(a));
            assert!(
                err <= BF16_PATHS_TOL,
                "Dot against Reference {name}: {err:e}"
            );
        }
    }
}

/// bf16 against f64 over six steps (relative to `1 + |want|`, as [`assert_close`]). Each term of
/// a product carries the rounding of its two operands, at most `2·2⁻⁸` of itself; the products
/// here sum `H = 40` terms of about `|h|·|w| ≈ 0.5·0.16`, so a product may move by up to about
/// `2⁻⁷·40·0.08 ≈ 0.025` where every rounding goes one way, and by `√40` times less (0.004) where
/// they are random, as they are. The cells' pointwise maths pass that on with a gain of at most
/// one, and six steps add it up to six times. Measured: at most 4.8e-3 (the RNN's `db_hh`).
const BF16_TOL: f64 = 1e-2;

/// [`BF16_TOL`] for `dw_hh`, a sum over every row and step (120 terms here, each `h·dz` with both
/// factors rounded, and `dz` carrying the backward's own error): `√120` times a term's `2⁻⁷`.
/// Measured: at most 1.7e-2 (the RNN's).
const BF16_DW_TOL: f64 = 5e-2;

/// `VDPBF16PS` against the f32 products on the same rounded operands: they differ in the order of
/// their sums (f32 rounding, about 1e-7), except where that moves an `h_t` across a bf16
/// rounding boundary: then one term of the next product moves by one bf16 step (`2⁻⁸` of
/// itself, about 3e-4 here). Measured: at most 2.3e-7 (no boundary crossed in this case).
const BF16_PATHS_TOL: f64 = 1e-3;

/// The shared tests of a cell's kernels, for a [`KernelCell`]: [`check_grid`], [`check_large`],
/// [`check_finite_differences`], [`check_empty_shapes`], [`check_cell_at_batch_one`] and
/// [`check_bf16`].
#[rustfmt::skip]
macro_rules! shared_cell_tests {
    ($cell:ty) => {
        use $crate::test_support as shared;
        #[test] fn forward_and_backward_match_reference() { shared::check_grid::<$cell>() }
        #[test] fn large_parallel_shape_matches_reference() { shared::check_large::<$cell>() }
        #[test] fn backward_matches_finite_differences() { shared::check_finite_differences::<$cell>() }
        #[test] fn empty_shapes_are_fine() { shared::check_empty_shapes::<$cell>() }
        #[test] fn cell_equals_forward_at_batch_one() { shared::check_cell_at_batch_one::<$cell>() }
        #[test] fn bf16_products_stay_within_their_bound() { shared::check_bf16::<$cell>() }
    };
}

pub(super) use shared_cell_tests;
