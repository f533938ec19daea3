//! The character model of karnna, generic over the Burn backend.
//!
//! It owns [`CharRnn`] (one-hot input → stacked recurrent layers, LSTM, GRU or plain RNN
//! ([`Cell`]), with dropout → linear to the vocabulary), the fused sequence operation with its
//! hand-written backward ([`ops`]), one character at a time for sampling ([`sampling_step`]),
//! the GPU kernels in CubeCL (`gpu`, behind the `cuda` and `wgpu` features), and the checkpoint
//! file format ([`checkpoint`]), which carries the vocabulary so a checkpoint is all that
//! sampling needs.
//!
//! The CPU kernels behind the fused op and the sampler, and the cell kinds, are plain Rust in
//! `karnna-kernels` (re-exported here as [`Cell`]).
//!
//! It depends on `karnna-data` only for [`karnna_data::Vocab`] and must not depend on
//! burn-train: training loops, optimizers and metrics live in `karnna-train`, sampling in
//! `karnna-infer`, other file formats in `karnna-exchange`.

pub mod checkpoint;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod gpu;
mod model;
pub mod ops;
pub mod sampling_step;

pub use checkpoint::{Checkpoint, CheckpointError, CheckpointMeta};
pub use karnna_kernels::Cell;
pub use model::{
    CharRnn, CharRnnConfig, DropoutSeed, Init, ModelShape, Recurrence, RnnLayer, RnnState,
    DEFAULT_KEEP_PROB,
};
pub use ops::{to_f32_vec, CellBackend, CellInputs, CellKernels, Matmul, MatmulPrecision};
pub use sampling_step::StepState;
