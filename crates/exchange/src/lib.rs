//! karnna's models in the formats other tools read: safetensors in PyTorch's layout, both ways
//! ([`safetensors_file`]), and ONNX ([`onnx`]), for onnxruntime and every runtime that reads it.
//!
//! It owns the one mapping between karnna's weights and PyTorch's ([`TorchModel`]: transposes,
//! key names, the metadata that carries what PyTorch's `state_dict` cannot), the checks an
//! imported file passes before anything is allocated from it, and the ONNX graph of the model.
//! It depends on `karnna-model` (the model and the checkpoint) and `karnna-data` (the
//! vocabulary) only, never on the trainer or the sampler: an export is a function of a
//! checkpoint, an import writes an ordinary one.

pub mod layout;
pub mod onnx;
mod onnx_proto;
pub mod safetensors_file;

use std::path::{Path, PathBuf};

pub use layout::{TorchLayer, TorchModel};

/// Why a file could not be exported or imported: one line naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {why}", path.display())]
pub struct ExchangeError {
    /// The file read or written.
    pub path: PathBuf,
    /// What is wrong, in one line.
    pub why: String,
}

impl ExchangeError {
    /// `why`, about `path`.
    pub fn new(path: &Path, why: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            why: why.into(),
        }
    }
}

/// The formats a model is exported to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// safetensors, in PyTorch's `nn.LSTM` + `nn.Linear` layout.
    Safetensors,
    /// An ONNX graph (opset 14) with the ONNX `LSTM`, `GRU` or `RNN` operator.
    Onnx,
}

impl Format {
    /// The format a file's extension names (`.safetensors`, `.onnx`), if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "safetensors" => Some(Format::Safetensors),
            "onnx" => Some(Format::Onnx),
            _ => None,
        }
    }
}

/// Writes `model` to `path` in `format`, atomically (a temporary file renamed over `path`, as
/// checkpoints are written).
pub fn export(model: &TorchModel, path: &Path, format: Format) -> Result<(), ExchangeError> {
    let bytes = match format {
        Format::Safetensors => safetensors_file::to_bytes(model),
        Format::Onnx => onnx::to_bytes(model),
    }
    .map_err(|why| ExchangeError::new(path, why))?;
    karnna_model::checkpoint::write_atomically(path, &bytes)
        .map_err(|e| ExchangeError::new(path, e.to_string()))
}
