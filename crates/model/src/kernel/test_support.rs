//! Helpers shared by the kernel's unit tests: a tiny deterministic random source, the exact
//! sigmoid and a closeness check against `f64` references; and the tests the LSTM, GRU and RNN
//! sequence kernels share (against their `f64` references over a grid of shapes and at a large
//! one, and against finite differences), each cell supplying its maths through [`KernelCell`].

use super::Dims;

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

/// `Σ add + h0 · w` for one row `h0` (`[H]`) and `w` (`[H, N]`), summed in `f64` and rounded to
/// `f32`: a step's pre-activations computed apart from the kernel, for the cells' tests at batch
/// one. Each slice of `add` is `[N]`.
pub(super) fn row_product(h0: &[f32], w: &[f32], add: &[&[f32]]) -> Vec<f32> {
    let n = w.len() / h0.len();
    (0..n)
        .map(|j| {
            let dot: f64 = (0..h0.len())
                .map(|k| h0[k] as f64 * w[k * n + j] as f64)
                .sum();
            (add.iter().map(|a| a[j] as f64).sum::<f64>() + dot) as f32
        })
        .collect()
}

/// A recurrent cell's sequence kernels as the shared tests ([`check_grid`], [`check_large`],
/// [`check_finite_differences`], [`batch_one_cases`]) see them: the inputs they take, the kernels
/// run on them and the naive `f64` reference of the same maths.
///
/// The four inputs the backward returns gradients for are `xp` (`[T, B, GATES·H]`), `w_hh`
/// (`[H, GATES·H]`) and two of the cell's own (its bias or its initial states); the gradient of
/// input `x` is named `dx`.
pub(super) trait KernelCell {
    /// Gate columns per hidden unit: 4 for the LSTM, 3 for the GRU, 1 for the plain RNN.
    const GATES: usize;
    /// The scale of the random input projections `xp`.
    const XP_SCALE: f32;

    /// The names, lengths and scales of the cell's own two inputs, drawn in this order after `xp`
    /// and `w_hh`.
    fn other_inputs(d: Dims) -> [(&'static str, usize, f32); 2];

    /// The `f64` reference forward and backward on `c`.
    fn reference(c: &Case) -> Outputs<f64>;

    /// Runs the kernels forward and backward on `c`.
    fn kernel(c: &Case) -> Outputs<f32>;
}

/// One test case: random inputs for a [`Dims`], and the gradient of the loss with respect to
/// every `h_t`.
#[derive(Clone)]
pub(super) struct Case {
    /// The sizes.
    pub(super) d: Dims,
    /// The four inputs: `xp`, `w_hh`, then the cell's own two (see [`KernelCell`]).
    pub(super) ins: [Vec<f32>; 4],
    /// The inputs' names, for the assertion messages.
    pub(super) names: [&'static str; 4],
    /// `dL/dh_t` for every `t`: `[T, B, H]`.
    pub(super) dhs: Vec<f32>,
}

impl Case {
    /// Draws cell `C`'s inputs for `d` from [`Lcg`] seeded with `seed`, then `dhs`: `xp` at
    /// [`KernelCell::XP_SCALE`], `w_hh` at `1/√H`, then [`KernelCell::other_inputs`].
    pub(super) fn new<C: KernelCell>(d: Dims, seed: u64) -> Case {
        let (t, b, h, g) = (d.t, d.b, d.h, C::GATES);
        let mut rng = Lcg(seed);
        let xp = rng.vec(t * b * g * h, C::XP_SCALE);
        let w = rng.vec(h * g * h, 1.0 / (h as f32).sqrt());
        let [(third, n3, s3), (fourth, n4, s4)] = C::other_inputs(d);
        let ins = [xp, w, rng.vec(n3, s3), rng.vec(n4, s4)];
        let dhs = rng.vec(t * b * h, 1.0);
        let names = ["xp", "w_hh", third, fourth];
        Case { d, ins, names, dhs }
    }
}

/// What a cell's kernels compute forward and backward, or their `f64` reference.
pub(super) struct Outputs<T> {
    /// The forward's outputs, each with its name: `hs` first.
    pub(super) fwd: Vec<(&'static str, Vec<T>)>,
    /// The gradients with respect to [`Case::ins`], in that order.
    pub(super) grads: [Vec<T>; 4],
}

/// Tolerances of a comparison with the reference, relative as in [`assert_close`]: the forward's
/// outputs, the gradients, and `dw_hh` apart (a sum over every row and step).
#[derive(Clone, Copy)]
pub(super) struct Tol {
    pub(super) fwd: f64,
    pub(super) bwd: f64,
    pub(super) dw_hh: f64,
}

/// Runs cell `C`'s kernels on `c` and checks every output and gradient against the reference
/// within `tol`; `name` heads the assertion messages.
pub(super) fn check<C: KernelCell>(name: &str, c: &Case, tol: Tol) {
    let (kernel, reference) = (C::kernel(c), C::reference(c));
    assert_eq!(kernel.fwd.len(), reference.fwd.len(), "{name}: outputs");
    for ((out, got), (ref_out, want)) in kernel.fwd.iter().zip(&reference.fwd) {
        assert_eq!(out, ref_out, "{name}: outputs");
        assert_close(&format!("{name} {out}"), got, want, tol.fwd);
    }
    for ((input, got), want) in c.names.iter().zip(&kernel.grads).zip(&reference.grads) {
        let tol = if *input == "w_hh" { tol.dw_hh } else { tol.bwd };
        assert_close(&format!("{name} d{input}"), got, want, tol);
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

/// [`check`] on `t = 2`, `b = 40`, `h = 450` (seed 99): big enough for threaded products and
/// several row blocks.
pub(super) fn check_large<C: KernelCell>(tol: Tol) {
    let d = Dims {
        t: 2,
        b: 40,
        h: 450,
    };
    check::<C>("large", &Case::new::<C>(d, 99), tol);
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
    let grads = C::kernel(&c).grads;
    let eps = 1e-3f32;
    for (which, grad) in grads.iter().enumerate() {
        let name = format!("d{}", c.names[which]);
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

/// The cases of the tests that a cell's step function equals its sequence kernels at batch one:
/// `t = 1`, `b = 1`, `h ∈ {1, 4, 9, 64, 300}`, seed `40 + h`.
pub(super) fn batch_one_cases<C: KernelCell>() -> impl Iterator<Item = Case> {
    [1, 4, 9, 64, 300]
        .into_iter()
        .map(|h| Case::new::<C>(Dims { t: 1, b: 1, h }, 40 + h as u64))
}
