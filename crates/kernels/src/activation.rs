//! Fast scalar maths for the elementwise passes: a multiply-add fused where the caller is compiled
//! with FMA, and branch-free rational approximations of `tanh` and `σ`.

/// `a·b + c`, fused when the caller is compiled with FMA (`mul_add` without hardware FMA is a slow
/// library call).
#[inline(always)]
pub(super) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Branch-free `tanh`: a [13/6] rational approximation on `[-7.9, 7.9]` (Eigen's), clamped
/// outside, absolute error below 1e-6; NaN propagates.
#[inline(always)]
pub(super) fn tanh_fast<const FMA: bool>(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    let x = if x > CLAMP { CLAMP } else { x };
    let x = if x < -CLAMP { -CLAMP } else { x };
    let x2 = x * x;
    let mut p = madd::<FMA>(x2, -2.760_768_5e-16, 2.000_188e-13);
    p = madd::<FMA>(x2, p, -8.604_672e-11);
    p = madd::<FMA>(x2, p, 5.122_297e-8);
    p = madd::<FMA>(x2, p, 1.485_722_4e-5);
    p = madd::<FMA>(x2, p, 6.372_619_3e-4);
    p = madd::<FMA>(x2, p, 4.893_524_6e-3);
    p *= x;
    let mut q = madd::<FMA>(x2, 1.198_258_4e-6, 1.185_347_1e-4);
    q = madd::<FMA>(x2, q, 2.268_434_6e-3);
    q = madd::<FMA>(x2, q, 4.893_525e-3);
    p / q
}

/// Branch-free logistic sigmoid, `0.5·tanh(0.5·x) + 0.5`, absolute error below 1e-6.
#[inline(always)]
pub(super) fn sigmoid_fast<const FMA: bool>(x: f32) -> f32 {
    madd::<FMA>(0.5, tanh_fast::<FMA>(0.5 * x), 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::sig64;

    #[test]
    fn fast_math_matches_f64() {
        let mut worst = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for k in 0..=400_000 {
            let x = -20.0 + 40.0 * k as f32 / 400_000.0;
            let (t, s) = ((x as f64).tanh(), sig64(x as f64));
            worst.0 = worst.0.max((tanh_fast::<false>(x) as f64 - t).abs());
            worst.1 = worst.1.max((tanh_fast::<true>(x) as f64 - t).abs());
            worst.2 = worst.2.max((sigmoid_fast::<false>(x) as f64 - s).abs());
            worst.3 = worst.3.max((sigmoid_fast::<true>(x) as f64 - s).abs());
        }
        eprintln!("fast math worst absolute errors: {worst:?}");
        assert!(worst.0 < 1e-6 && worst.1 < 1e-6, "tanh error {worst:?}");
        assert!(worst.2 < 1e-6 && worst.3 < 1e-6, "sigmoid error {worst:?}");
        assert!(tanh_fast::<false>(f32::NAN).is_nan() && sigmoid_fast::<true>(f32::NAN).is_nan());
        assert_eq!(tanh_fast::<true>(f32::INFINITY), tanh_fast::<true>(100.0));
        assert_eq!(tanh_fast::<true>(0.0), 0.0);
    }
}
