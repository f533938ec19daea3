//! The instruction set of the elementwise loops, chosen at run time: [`simd_level`] finds the
//! widest this CPU has (AVX-512, AVX2 with FMA, or the baseline), and `dispatch!` defines a
//! function that runs a loop compiled for the one it is given.

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

pub(super) fn simd_level() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            return Simd::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Simd::Avx2;
        }
    }
    Simd::Base
}

/// Defines `$name(simd, args..)`, which runs the `#[inline(always)]` generic `$body::<FMA>(args..)`
/// compiled for the instruction set `simd` names.
macro_rules! dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident => $body:ident ( $($arg:ident : $ty:ty),* $(,)? )) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(simd: $crate::kernel::simd::Simd, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($arg: $ty),*) {
                $body::<true>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($arg: $ty),*) {
                $body::<true>($($arg),*)
            }
            match simd {
                // SAFETY: simd_level only reports instruction sets this CPU has.
                #[cfg(target_arch = "x86_64")]
                $crate::kernel::simd::Simd::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                $crate::kernel::simd::Simd::Avx2 => unsafe { avx2($($arg),*) },
                $crate::kernel::simd::Simd::Base => $body::<false>($($arg),*),
            }
        }
    };
}

pub(super) use dispatch;

/// Runs `f` on every element `j < n` of the slices: `f(read[·][j], rw[·][j])` returns the new
/// `rw[·][j]` and `out[·][j]`.
///
/// Works on blocks of [`LANES`] copied to local arrays: with this many separate slices LLVM would
/// need more run-time overlap checks than it is willing to emit and fall back to scalar code; the
/// remainder runs element by element.
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
        let r = j0..j0 + LANES;
        let mut x = [[0.0f32; LANES]; R];
        for (x, s) in x.iter_mut().zip(&read) {
            x.copy_from_slice(&s[r.clone()]);
        }
        let mut y = [[0.0f32; LANES]; W];
        for (y, s) in y.iter_mut().zip(&rw) {
            y.copy_from_slice(&s[r.clone()]);
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
            s[r.clone()].copy_from_slice(y);
        }
        for (s, o) in out.iter_mut().zip(&o) {
            s[r.clone()].copy_from_slice(o);
        }
    }
    for j in blocks..n {
        let (yj, oj) = f(
            std::array::from_fn(|i| read[i][j]),
            std::array::from_fn(|i| rw[i][j]),
        );
        for (s, v) in rw.iter_mut().zip(yj) {
            s[j] = v;
        }
        for (s, v) in out.iter_mut().zip(oj) {
            s[j] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::gru::{gru_backward_rows, gru_forward_rows};
    use crate::kernel::lstm::{lstm_backward_rows, lstm_forward_rows};
    use crate::kernel::rnn::{rnn_backward_rows, rnn_forward_rows};
    use crate::kernel::sequence::{BwdRows, FwdRows};
    use crate::kernel::test_support::Lcg;
    use crate::kernel::vecmat::axpy_block;

    #[test]
    fn every_instruction_set_agrees() {
        let h = 37;
        let mut rng = Lcg(5);
        let z0 = rng.vec(3 * 4 * h, 4.0);
        let c_prev = rng.vec(3 * h, 2.0);
        let w = rng.vec(h * 4 * h, 0.3);
        // The GRU's input projections and recurrent products, three rows each.
        let g0 = rng.vec(2 * 3 * 3 * h, 4.0);
        let levels: Vec<Simd> = {
            let mut v = vec![Simd::Base];
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    v.push(Simd::Avx2);
                }
                if simd_level() == Simd::Avx512 {
                    v.push(Simd::Avx512);
                }
            }
            v
        };
        let mut outs = Vec::new();
        for &s in &levels {
            let mut z = z0.clone();
            let (mut ho, mut co) = (vec![0.0; 3 * h], vec![0.0; 3 * h]);
            let fwd = FwdRows {
                z: &mut z,
                aux_prev: &c_prev,
                h_out: &mut ho,
                aux_out: &mut co,
                ..Default::default()
            };
            lstm_forward_rows(s, h, fwd);
            let (mut dcn, mut dz, mut dh) = (c_prev.clone(), z.clone(), c_prev.clone());
            let bwd = BwdRows {
                gz: &mut dz,
                aux_prev: &c_prev,
                aux_t: &co,
                dh_loss: &ho,
                dh: &mut dh,
                dc: &mut dcn,
                ..Default::default()
            };
            lstm_backward_rows(s, h, bwd);
            let mut acc = z0[..4 * h].to_vec();
            axpy_block(s, &c_prev[..h], &w, 4 * h, &mut acc);
            outs.push([z, ho.clone(), co, dcn, dz, acc].concat());
            // The GRU's and the RNN's passes over three rows.
            let (gz, hp) = g0.split_at(3 * 3 * h);
            let mut gz = gz.to_vec();
            let (mut hg, mut hn) = (vec![0.0; 3 * h], vec![0.0; 3 * h]);
            let fwd = FwdRows {
                z: &mut gz,
                hh: hp,
                b_hh: &w[..3 * h],
                h_prev: &c_prev,
                h_out: &mut hg,
                aux_out: &mut hn,
                ..Default::default()
            };
            gru_forward_rows(s, h, fwd);
            let (mut dn, mut dh, mut db) = (vec![0.0; 3 * h], c_prev.clone(), vec![0.5; 3 * h]);
            let mut dhp = gz.clone();
            let bwd = BwdRows {
                gz: &mut dhp,
                dn: &mut dn,
                aux_t: &hn,
                h_prev: &c_prev,
                dh_loss: &ho,
                dh: &mut dh,
                db: &mut db,
                ..Default::default()
            };
            gru_backward_rows(s, h, bwd);
            let (mut zr, mut hr) = (z0[..3 * h].to_vec(), vec![0.0; 3 * h]);
            let fwd = FwdRows {
                z: &mut zr,
                b_hh: &c_prev[..h],
                h_out: &mut hr,
                ..Default::default()
            };
            rnn_forward_rows(s, h, fwd);
            let (mut dz, mut dbr, mut dhr) = (vec![0.0; 3 * h], vec![0.5; h], c_prev.clone());
            let bwd = BwdRows {
                gz: &mut dz,
                h_t: &hr,
                dh_loss: &ho,
                dh: &mut dhr,
                db: &mut dbr,
                ..Default::default()
            };
            rnn_backward_rows(s, h, bwd);
            outs.push([gz, hg, hn, dhp, dn, dh, db, hr, dz, dbr].concat());
        }
        let per_level = outs.len() / levels.len();
        for (i, o) in outs.iter().enumerate() {
            let (s, base) = (levels[i / per_level], &outs[i % per_level]);
            for (k, (&a, &b)) in o.iter().zip(base).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{s:?}[{k}]: {a} vs {b}"
                );
            }
        }
    }
}
