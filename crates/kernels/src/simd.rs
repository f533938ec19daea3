//! The instruction set of the kernel's loops, chosen at run time, the kernel's one choice of it:
//! [`simd_level`] finds the widest this CPU has (AVX-512, AVX2 with FMA, or the baseline), and
//! `dispatch!` defines a function that runs a loop compiled for the one it is given.

/// Lanes per block of the elementwise passes: one AVX-512 register of `f32`.
pub(super) const LANES: usize = 16;

/// The widest vector instruction set the elementwise loops may use on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Simd {
    /// The target's baseline.
    Base,
    /// AVX2 with FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 (F and VL) with FMA.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// The environment variable that caps the kernels' instruction set: `base`, `avx2`, `avx512` or
/// `avx512bf16` (the default: the widest this CPU has). A cap above what the CPU has changes
/// nothing. It covers karnna's own kernels (the recurrence, its products, the bf16 products and
/// the sampler); the `gemm` crate's large f32 products pick their own instruction set.
pub const SIMD_ENV: &str = "KARNNA_SIMD";

/// The values [`SIMD_ENV`] takes, narrowest first.
pub const SIMD_NAMES: [&str; 4] = ["base", "avx2", "avx512", "avx512bf16"];

/// The cap [`SIMD_ENV`] sets, as an index into [`SIMD_NAMES`] (`None`: unset, or not a name).
fn simd_cap() -> Option<usize> {
    let v = std::env::var(SIMD_ENV).ok()?;
    SIMD_NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(v.trim()))
}

/// Checks [`SIMD_ENV`]: `Err` with a one-line message when it is set to something that is not an
/// instruction set's name (the kernels would ignore it).
pub fn check_simd_env() -> Result<(), String> {
    match std::env::var(SIMD_ENV) {
        Ok(v) if simd_cap().is_none() => Err(format!(
            "{SIMD_ENV}={v:?} is not an instruction set: use one of {}",
            SIMD_NAMES.join(", ")
        )),
        _ => Ok(()),
    }
}

/// The instruction sets detected once, with the cap of [`SIMD_ENV`] applied.
fn levels() -> (Simd, bool) {
    static LEVELS: std::sync::OnceLock<(Simd, bool)> = std::sync::OnceLock::new();
    *LEVELS.get_or_init(|| {
        let (simd, bf16) = detected();
        let cap = simd_cap().unwrap_or(SIMD_NAMES.len() - 1);
        let simd = match (simd, cap) {
            (_, 0) => Simd::Base,
            #[cfg(target_arch = "x86_64")]
            (Simd::Avx512, 1) => Simd::Avx2,
            (s, _) => s,
        };
        (simd, bf16 && cap >= 3)
    })
}

/// What this CPU has: the widest of the three levels, and whether it has AVX512_BF16 (with the
/// AVX-512 level).
fn detected() -> (Simd, bool) {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        if avx2 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
            let bf16 =
                is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512bw");
            return (Simd::Avx512, bf16);
        }
        if avx2 {
            return (Simd::Avx2, false);
        }
    }
    (Simd::Base, false)
}

/// The widest instruction set the kernels may use: what this CPU has, capped by [`SIMD_ENV`].
/// The AVX2 and AVX-512 levels also require F16C, which every CPU with AVX2 and FMA has, for the
/// sampler's f16 products.
pub(super) fn simd_level() -> Simd {
    levels().0
}

/// Whether the bf16 products may use `VDPBF16PS`: the CPU has AVX512_BF16 (and AVX-512BW) and
/// [`SIMD_ENV`] does not cap it away.
pub fn bf16_dot() -> bool {
    levels().1
}

/// The name of the instruction set the kernels use (with `+bf16` where the bf16 products have
/// `VDPBF16PS`), for what `bench` and `info` print.
pub fn simd_name() -> &'static str {
    match (simd_level(), bf16_dot()) {
        (Simd::Base, _) => "base",
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx2, _) => "avx2+fma",
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx512, false) => "avx512",
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx512, true) => "avx512+bf16",
    }
}

/// Defines `$name(simd, args..)`, which runs the `#[inline(always)]` generic `$body::<FMA>(args..)`
/// compiled for the instruction set `simd` names. With a type parameter (`fn name<C: Bound> =>
/// C::body(..)`) it runs that type's associated function, for the sequence driver's cells.
macro_rules! dispatch {
    (
        $(#[$doc:meta])* $vis:vis fn $name:ident $(<$C:ident: $B:path>)?
            => $body:ident $(:: $assoc:ident)? ( $($arg:ident : $ty:ty),* $(,)? )
    ) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name $(<$C: $B>)? (simd: $crate::simd::Simd, $($arg: $ty),*) {
            /// The loop compiled for AVX-512.
            ///
            /// # Safety
            ///
            /// The CPU must have AVX-512F, AVX-512VL, AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512 $(<$C: $B>)? ($($arg: $ty),*) {
                $body $(::$assoc)? ::<true>($($arg),*)
            }
            /// The loop compiled for AVX2.
            ///
            /// # Safety
            ///
            /// The CPU must have AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2 $(<$C: $B>)? ($($arg: $ty),*) {
                $body $(::$assoc)? ::<true>($($arg),*)
            }
            match simd {
                // SAFETY: simd_level only reports instruction sets this CPU has. The loop
                // itself is safe code (slices, bounds-checked; no pointer arithmetic): only
                // the instruction set is at stake.
                #[cfg(target_arch = "x86_64")]
                $crate::simd::Simd::Avx512 => unsafe { avx512 $(::<$C>)? ($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                $crate::simd::Simd::Avx2 => unsafe { avx2 $(::<$C>)? ($($arg),*) },
                $crate::simd::Simd::Base => $body $(::$assoc)? ::<false>($($arg),*),
            }
        }
    };
}

pub(super) use dispatch;

/// Runs `f` on every element `j < n` of the slices: `f(read[·][j], rw[·][j])` returns the new
/// `rw[·][j]` and `out[·][j]`.
///
/// Works on blocks of [`LANES`] copied to local arrays: with this many separate slices LLVM would
/// need more run-time overlap checks than it is willing to emit and fall back to scalar code. The
/// remainder takes one more block, padded with zeros (`f` works on each element alone, so the
/// padding changes nothing that is kept).
///
/// # Panics
///
/// Panics if a slice is shorter than `n`.
#[inline(always)]
pub(super) fn lanes<const R: usize, const W: usize, const O: usize>(
    n: usize,
    read: [&[f32]; R],
    rw: [&mut [f32]; W],
    out: [&mut [f32]; O],
    f: impl Fn([f32; R], [f32; W]) -> ([f32; W], [f32; O]),
) {
    let read = read.map(|s| &s[..n]);
    let mut rw = rw.map(|s| &mut s[..n]);
    let mut out = out.map(|s| &mut s[..n]);
    let blocks = n / LANES * LANES;
    for j0 in (0..blocks).step_by(LANES) {
        lanes_block(j0..j0 + LANES, &read, &mut rw, &mut out, &f);
    }
    if blocks < n {
        lanes_block(blocks..n, &read, &mut rw, &mut out, &f);
    }
}

/// [`lanes`] on the elements `r` (at most [`LANES`]) of the slices.
#[inline(always)]
fn lanes_block<const R: usize, const W: usize, const O: usize>(
    r: std::ops::Range<usize>,
    read: &[&[f32]; R],
    rw: &mut [&mut [f32]; W],
    out: &mut [&mut [f32]; O],
    f: &impl Fn([f32; R], [f32; W]) -> ([f32; W], [f32; O]),
) {
    let len = r.len();
    let mut x = [[0.0f32; LANES]; R];
    for (x, s) in x.iter_mut().zip(read) {
        x[..len].copy_from_slice(&s[r.clone()]);
    }
    let mut y = [[0.0f32; LANES]; W];
    for (y, s) in y.iter_mut().zip(rw.iter()) {
        y[..len].copy_from_slice(&s[r.clone()]);
    }
    let mut o = [[0.0f32; LANES]; O];
    for k in 0..LANES {
        let (yk, ok) = f(
            std::array::from_fn(|i| x[i][k]),
            std::array::from_fn(|i| y[i][k]),
        );
        for (y, v) in y.iter_mut().zip(yk) {
            y[k] = v;
        }
        for (o, v) in o.iter_mut().zip(ok) {
            o[k] = v;
        }
    }
    for (s, y) in rw.iter_mut().zip(&y) {
        s[r.clone()].copy_from_slice(&y[..len]);
    }
    for (s, o) in out.iter_mut().zip(&o) {
        s[r.clone()].copy_from_slice(&o[..len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell_math::{backward_rows, forward_rows, BwdRows, FwdRows};
    use crate::gru::Gru;
    use crate::lstm::Lstm;
    use crate::rnn::Rnn;
    use crate::test_support::{instruction_sets, Lcg};
    use crate::vecmat::axpy_block;

    /// Hidden units of the rows the passes run on (two blocks of lanes and a remainder).
    const H: usize = 37;

    /// Random inputs of three rows, at the scales the passes see.
    struct Inputs {
        /// Pre-activations, `[3, 4H]`.
        z: Vec<f32>,
        /// A state and a gradient, `[3, H]` each.
        state: Vec<f32>,
        grad: Vec<f32>,
        /// Weights, `[H, 4H]`.
        w: Vec<f32>,
    }

    impl Inputs {
        fn new() -> Self {
            let mut rng = Lcg(5);
            Inputs {
                z: rng.vec(3 * 4 * H, 4.0),
                state: rng.vec(3 * H, 2.0),
                grad: rng.vec(3 * H, 1.0),
                w: rng.vec(H * 4 * H, 0.3),
            }
        }
    }

    /// The LSTM's passes and the batch-1 product on `simd`, their outputs end to end.
    fn lstm_outputs(simd: Simd, x: &Inputs) -> Vec<f32> {
        let mut z = x.z.clone();
        let (mut h, mut c) = (vec![0.0; 3 * H], vec![0.0; 3 * H]);
        let fwd = FwdRows {
            z: &mut z,
            aux_prev: &x.state,
            h_out: &mut h,
            aux_out: &mut c,
            ..Default::default()
        };
        forward_rows::<Lstm>(simd, H, fwd);
        let (mut dc, mut gz, mut dh) = (x.state.clone(), z.clone(), x.grad.clone());
        let bwd = BwdRows {
            gz: &mut gz,
            aux_prev: &x.state,
            aux_t: &c,
            dh_loss: &h,
            dh: &mut dh,
            dc: &mut dc,
            ..Default::default()
        };
        backward_rows::<Lstm>(simd, H, bwd);
        let mut acc = x.z[..4 * H].to_vec();
        axpy_block(simd, &x.state[..H], &x.w, 4 * H, &mut acc);
        [z, h, c, dc, gz, acc].concat()
    }

    /// The GRU's passes on `simd`, their outputs end to end.
    fn gru_outputs(simd: Simd, x: &Inputs) -> Vec<f32> {
        let (mut a, hp) = (x.z[..9 * H].to_vec(), &x.z[3 * H..]);
        let (mut h, mut hn) = (vec![0.0; 3 * H], vec![0.0; 3 * H]);
        let fwd = FwdRows {
            z: &mut a,
            hh: &hp[..9 * H],
            b_hh: &x.w[..3 * H],
            h_prev: &x.state,
            h_out: &mut h,
            aux_out: &mut hn,
            ..Default::default()
        };
        forward_rows::<Gru>(simd, H, fwd);
        let (mut dn, mut dh, mut db) = (vec![0.0; 3 * H], x.grad.clone(), vec![0.5; 3 * H]);
        let mut dhp = a.clone();
        let bwd = BwdRows {
            gz: &mut dhp,
            dn: &mut dn,
            aux_t: &hn,
            h_prev: &x.state,
            dh_loss: &x.grad,
            dh: &mut dh,
            db: &mut db,
            ..Default::default()
        };
        backward_rows::<Gru>(simd, H, bwd);
        [a, h, hn, dhp, dn, dh, db].concat()
    }

    /// The plain RNN's passes on `simd`, their outputs end to end.
    fn rnn_outputs(simd: Simd, x: &Inputs) -> Vec<f32> {
        let (mut z, mut h) = (x.z[..3 * H].to_vec(), vec![0.0; 3 * H]);
        let fwd = FwdRows {
            z: &mut z,
            b_hh: &x.state[..H],
            h_out: &mut h,
            ..Default::default()
        };
        forward_rows::<Rnn>(simd, H, fwd);
        let (mut dz, mut db, mut dh) = (vec![0.0; 3 * H], vec![0.5; H], x.grad.clone());
        let bwd = BwdRows {
            gz: &mut dz,
            h_t: &h,
            dh_loss: &x.state,
            dh: &mut dh,
            db: &mut db,
            ..Default::default()
        };
        backward_rows::<Rnn>(simd, H, bwd);
        [h, dz, db].concat()
    }

    #[test]
    fn every_instruction_set_agrees() {
        let x = Inputs::new();
        let outputs = |s| [lstm_outputs(s, &x), gru_outputs(s, &x), rnn_outputs(s, &x)].concat();
        let base = outputs(Simd::Base);
        for s in instruction_sets() {
            for (k, (&a, &b)) in outputs(s).iter().zip(&base).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{s:?}[{k}]: {a} vs {b}"
                );
            }
        }
    }
}
