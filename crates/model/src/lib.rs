//! The character model of karnna, generic over the Burn backend.
//!
//! It owns [`CharRnn`] (one-hot input → stacked LSTM layers with dropout → linear to the
//! vocabulary), the fused LSTM sequence operation with its hand-written backward ([`ops`]), the
//! plain-Rust CPU kernels behind it ([`kernel`]), and the checkpoint file format
//! ([`checkpoint`]), which carries the vocabulary so a checkpoint is all that sampling needs.
//!
//! It depends on `karnna-data` only for [`karnna_data::Vocab`] and must not depend on
//! burn-train: training loops, optimizers and metrics live in `karnna-train`, sampling in
//! `karnna-infer`.

pub mod checkpoint;
pub mod kernel;
mod model;
pub mod ops;

pub use checkpoint::{Checkpoint, CheckpointError, CheckpointMeta};
pub use model::{to_f32_vec, CharRnn, CharRnnConfig, Init, LstmLayer, LstmState};
pub use ops::{LstmBackend, LstmKernels};
