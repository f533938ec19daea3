//! The dropout mask: a counter-based hash of the seed and each element's index, so the loop has no
//! carried state and runs on the widest vectors.

use super::simd::{dispatch, simd_level};

/// A dropout mask: each element is `1 / keep_prob` with probability `keep_prob`, else `0`.
///
/// Element `i` is decided by a counter-based hash of `(seed, i)` (two rounds of MurmurHash3's
/// 32-bit finalizer), so the mask depends only on the seed and the length and the loop has no
/// carried state: it runs 16 lanes wide on AVX-512.
pub fn dropout_mask(seed: u64, keep_prob: f64, out: &mut [f32]) {
    let (threshold, scale) = mask_threshold(keep_prob);
    // keep_prob 1 would need threshold 2^32.
    if keep_prob >= 1.0 {
        return out.fill(scale);
    }
    mask_fill(
        simd_level(),
        [seed as u32, (seed >> 32) as u32],
        threshold,
        scale,
        out,
    );
}

/// The threshold and scale of [`dropout_mask`] for `keep_prob`: an element whose hash is below
/// the threshold is kept and scaled by the scale. The GPU's mask (`karnna_model::gpu`) takes both
/// from here, so the two masks agree bit for bit.
pub fn mask_threshold(keep_prob: f64) -> (u32, f32) {
    let threshold = (keep_prob.clamp(0.0, 1.0) * 4_294_967_296.0).min(u32::MAX as f64) as u32;
    let scale = if keep_prob > 0.0 {
        (1.0 / keep_prob) as f32
    } else {
        0.0
    };
    (threshold, scale)
}

dispatch! {
    /// [`mask_impl`] for `simd`.
    fn mask_fill => mask_impl(seed: [u32; 2], threshold: u32, scale: f32, out: &mut [f32])
}

#[inline(always)]
fn mask_impl<const FMA: bool>(seed: [u32; 2], threshold: u32, scale: f32, out: &mut [f32]) {
    #[inline(always)]
    fn fmix32(mut x: u32) -> u32 {
        x ^= x >> 16;
        x = x.wrapping_mul(0x85EB_CA6B);
        x ^= x >> 13;
        x = x.wrapping_mul(0xC2B2_AE35);
        x ^ (x >> 16)
    }
    for (i, m) in out.iter_mut().enumerate() {
        let x = fmix32(fmix32((i as u32).wrapping_mul(0x9E37_79B9) ^ seed[0]) ^ seed[1]);
        *m = if x < threshold { scale } else { 0.0 };
    }
}
