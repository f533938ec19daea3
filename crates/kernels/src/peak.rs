//! This CPU's measured arithmetic peak, to judge the kernels' figures against the silicon: the
//! widest f32 FMA the kernels use ([`simd_level`]: zmm on AVX-512, ymm on AVX2) and, where the
//! bf16 products have it, `VDPBF16PS`, each run as 24 independent chains on every thread of the
//! pool at once.

use std::hint::black_box;
use std::time::Instant;

use super::simd::{bf16_dot, simd_level, Simd};

/// Independent accumulator chains of the zmm loops: more than latency × throughput on current
/// x86 cores, and fewer than the 32 registers.
const CHAINS: usize = 24;

/// The chains of the ymm and scalar loops, which have 16 registers: 12, as `gemm`'s AVX2
/// microkernel (a Zen 3 or 4 needs 8: two FMA pipes of latency 4).
const CHAINS_16: usize = 12;

/// The peak of this CPU's kernels' widest instructions, all pool threads at once.
#[derive(Clone, Copy, Debug)]
pub struct Peak {
    /// f32 FMA, GFLOP/s (an FMA is two operations).
    pub f32_gflops: f64,
    /// `VDPBF16PS`, GFLOP/s (two products and their two additions a lane), where the bf16
    /// products use it.
    pub bf16_gflops: Option<f64>,
    /// The threads that ran at once.
    pub threads: usize,
}

/// Measures [`Peak`], each kind three times for about `seconds` on every thread of the pool (the
/// best run counts).
pub fn measure_peak(seconds: f64) -> Peak {
    let threads = rayon::current_num_threads();
    let simd = simd_level();
    let f32_gflops = on_all_threads(seconds, |iters| fma_flop(simd, iters));
    let bf16_gflops = bf16_dot().then(|| on_all_threads(seconds, dot_flop));
    Peak {
        f32_gflops,
        bf16_gflops,
        threads,
    }
}

/// GFLOP/s of `run(iters)` (which returns the operations it did) on every pool thread at once,
/// `iters` calibrated on one thread to take about `seconds`.
fn on_all_threads(seconds: f64, run: impl Fn(usize) -> f64 + Sync) -> f64 {
    let mut iters = 1 << 12;
    loop {
        let t = Instant::now();
        run(iters);
        let took = t.elapsed().as_secs_f64();
        if took > seconds / 8.0 || iters > 1 << 34 {
            iters = ((iters as f64) * seconds / took.max(1e-9)) as usize;
            break;
        }
        iters *= 4;
    }
    // The best of three: a thread that the OS held back lowers one run, never raises it.
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let flop: f64 = rayon::broadcast(|_| run(iters)).into_iter().sum();
            flop / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// `iters` rounds of [`CHAINS`] FMAs of the widest vector `simd` has ([`CHAINS_16`] on ymm and
/// on the baseline's scalars); returns the operations done.
fn fma_flop(simd: Simd, iters: usize) -> f64 {
    // FMAs a round: chains times lanes.
    let fmas = match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: simd_level reported AVX-512F, which the function needs.
        Simd::Avx512 => {
            black_box(unsafe { fma_zmm(iters) });
            CHAINS * 16
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: simd_level reported AVX2 and FMA, which the function needs.
        Simd::Avx2 => {
            black_box(unsafe { fma_ymm(iters) });
            CHAINS_16 * 8
        }
        Simd::Base => {
            black_box(fma_scalar(iters));
            CHAINS_16
        }
    };
    (iters * fmas * 2) as f64
}

/// `iters` rounds of [`CHAINS`] `VDPBF16PS`; returns the operations done (`16·4` a call).
fn dot_flop(iters: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if bf16_dot() {
        // SAFETY: bf16_dot() says the CPU has AVX512_BF16 and AVX-512F/BW.
        black_box(unsafe { dot_zmm(iters) });
        return (iters * CHAINS * 64) as f64;
    }
    let _ = iters;
    0.0
}

/// `iters` rounds of `step` on each of [`CHAINS`] zmm accumulators; their sum (so that no round
/// is optimised away). Inlined into the callers below, which enable the instruction sets.
///
/// # Safety
///
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn zmm_chains(
    iters: usize,
    step: impl Fn(std::arch::x86_64::__m512) -> std::arch::x86_64::__m512,
) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's CPU has AVX-512F.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = step(*x);
            }
        }
        let sum = acc
            .into_iter()
            .fold(_mm512_setzero_ps(), |s, x| _mm512_add_ps(s, x));
        _mm512_reduce_add_ps(sum)
    }
}

/// The FMA chains on zmm registers.
///
/// # Safety
///
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_zmm(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (
        _mm512_set1_ps(black_box(0.999)),
        _mm512_set1_ps(black_box(1e-3)),
    );
    // SAFETY: this function's own instruction set.
    unsafe { zmm_chains(iters, |x| _mm512_fmadd_ps(x, a, b)) }
}

/// The chains on ymm registers.
///
/// # Safety
///
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_ymm(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (
        _mm256_set1_ps(black_box(0.999)),
        _mm256_set1_ps(black_box(1e-3)),
    );
    let mut acc = [_mm256_setzero_ps(); CHAINS_16];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let s = acc
        .into_iter()
        .fold(_mm256_setzero_ps(), |s, x| _mm256_add_ps(s, x));
    let mut out = [0.0f32; 8];
    // SAFETY: `out` holds 8 f32.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

/// The chains on scalars (the baseline).
fn fma_scalar(iters: usize) -> f32 {
    let (a, b) = (black_box(0.999f32), black_box(1e-3f32));
    let mut acc = [0.0f32; CHAINS_16];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = x.mul_add(a, b);
        }
    }
    acc.iter().sum()
}

/// The `VDPBF16PS` chains on zmm registers.
///
/// # Safety
///
/// The CPU must have AVX512_BF16 and AVX-512F/BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw")]
unsafe fn dot_zmm(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let pairs = |v: f32| -> __m512bh { _mm512_cvtne2ps_pbh(_mm512_set1_ps(v), _mm512_set1_ps(v)) };
    let (a, b) = (pairs(black_box(1e-3)), pairs(black_box(1e-3)));
    // SAFETY: this function's own instruction sets.
    unsafe { zmm_chains(iters, |x| _mm512_dpbf16_ps(x, a, b)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_is_measured_on_every_thread() {
        let peak = measure_peak(0.01);
        assert_eq!(peak.threads, rayon::current_num_threads());
        // At least one scalar FMA a nanosecond on each thread: far below any real core.
        assert!(peak.f32_gflops > 2.0 * peak.threads as f64, "{peak:?}");
        assert_eq!(peak.bf16_gflops.is_some(), bf16_dot());
    }
}
