//! Helpers shared by the kernel's unit tests: a tiny deterministic random source, the exact
//! sigmoid and a closeness check against `f64` references.

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
