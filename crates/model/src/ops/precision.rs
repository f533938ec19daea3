//! The arithmetic of the model's dense products (the input projection of the layers above the
//! first, the output layer): what a model asks for on a GPU ([`GpuMatmul`], a property of each
//! model) and the precision a backend's products have ([`MatmulPrecision`]).

use serde::{Deserialize, Serialize};

/// The arithmetic of a backend's matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPrecision {
    /// IEEE single precision throughout (unit roundoff 2⁻²⁴ ≈ 6.0e-8).
    F32,
    /// Inputs rounded to TF32 (a 10-bit mantissa, unit roundoff 2⁻¹¹ ≈ 4.9e-4) for tensor
    /// cores, sums in f32: what Burn's matmul does for f32 inputs on a CUDA card that has TF32.
    Tf32,
}

impl MatmulPrecision {
    /// Its name in output (`f32`, `tf32`).
    pub fn name(self) -> &'static str {
        match self {
            MatmulPrecision::F32 => "f32",
            MatmulPrecision::Tf32 => "tf32",
        }
    }

    /// The unit roundoff of the products' inputs.
    pub fn unit_roundoff(self) -> f32 {
        match self {
            MatmulPrecision::F32 => f32::EPSILON / 2.0,
            MatmulPrecision::Tf32 => 2f32.powi(-11),
        }
    }
}

/// The arithmetic of the model's dense matrix products on a GPU (the input projection of the
/// layers above the first, the output layer, their gradients and `dW_hh`). The recurrence
/// kernels and sampling compute in f32 whatever this says; the CPU backends always do. A
/// property of each model ([`crate::CharRnn::gpu_matmul`]), not of the process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GpuMatmul {
    /// Burn's matmul: TF32 tensor cores where the card has them (inputs rounded to a 10-bit
    /// mantissa, sums in f32), which is much faster; f32 on cards without them.
    #[default]
    #[value(help = "TF32 tensor cores where the card has them, f32 elsewhere (default, fast)")]
    Tf32,
    /// karnna's own f32 product for every matmul of the model: IEEE f32 throughout, slower.
    #[value(help = "f32 throughout (karnna's own product; slower)")]
    F32,
}
