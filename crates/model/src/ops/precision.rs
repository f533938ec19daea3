//! The arithmetic of the model's products: what a model asks for ([`Matmul`], a property of each
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
    /// Inputs rounded to bf16 (a 7-bit mantissa, unit roundoff 2⁻⁸ ≈ 3.9e-3), sums in f32:
    /// the CPU backends' products for a model whose products are [`Matmul::Bf16`].
    Bf16,
}

impl MatmulPrecision {
    /// Its name in output (`f32`, `tf32`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            MatmulPrecision::F32 => "f32",
            MatmulPrecision::Tf32 => "tf32",
            MatmulPrecision::Bf16 => "bf16",
        }
    }

    /// The unit roundoff of the products' inputs.
    pub fn unit_roundoff(self) -> f32 {
        match self {
            MatmulPrecision::F32 => f32::EPSILON / 2.0,
            MatmulPrecision::Tf32 => 2f32.powi(-11),
            MatmulPrecision::Bf16 => 2f32.powi(-8),
        }
    }
}

/// The arithmetic of the model's matrix products: on a GPU the dense products (the input
/// projection of the layers above the first, the output layer, their gradients and `dW_hh`);
/// on the CPU, with [`Matmul::Bf16`], every product of a training step, the recurrence's
/// included. A property of each model ([`crate::CharRnn::matmul`]), not of the process.
///
/// The GPU's choice is the config key `gpu_matmul` ([`Matmul::Tf32`] or [`Matmul::F32`]); the
/// CPU's is the key `precision` (`bf16` gives [`Matmul::Bf16`]; under `f32` the CPU backends
/// compute in f32 whatever the GPU's choice says).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Matmul {
    /// Burn's matmul: TF32 tensor cores where the card has them (inputs rounded to a 10-bit
    /// mantissa, sums in f32), which is much faster; f32 on cards without them.
    #[default]
    #[value(help = "TF32 tensor cores where the card has them, f32 elsewhere (default, fast)")]
    Tf32,
    /// karnna's own f32 product for every matmul of the model: IEEE f32 throughout, slower.
    #[value(help = "f32 throughout (karnna's own product; slower)")]
    F32,
    /// On the CPU: every product's operands rounded to bf16 (nearest-even), sums in f32, on
    /// `VDPBF16PS` (AVX512_BF16). The weights, Adam's state, the cells' pointwise maths and the
    /// loss stay f32. The GPU backends run it as [`Matmul::Tf32`]. Not a `gpu_matmul` value.
    #[serde(skip)]
    #[value(skip)]
    Bf16,
}

impl Matmul {
    /// Its name in output (`tf32`, `f32`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Matmul::Tf32 => "tf32",
            Matmul::F32 => "f32",
            Matmul::Bf16 => "bf16",
        }
    }
}
