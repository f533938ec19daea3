//! The `meta` section of a checkpoint: [`CheckpointMeta`], read from JSON with the field at
//! fault named ([`parse_meta`]) and range-checked ([`check_meta`]) before a model is built
//! from it. It knows the model's config and the vocabulary, not the file around it.

use karnna_data::Vocab;
use serde::{Deserialize, Serialize};

use crate::model::CharRnnConfig;

/// The checkpoint's description: what it is and how to rebuild the model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The model: vocabulary size, shape ([`crate::ModelShape`]) and dropout. The one place a
    /// checkpoint holds the shape.
    pub model: CharRnnConfig,
    /// The vocabulary the model was trained with.
    pub vocab: Vocab,
    /// Training iterations done (optimizer steps).
    pub iteration: usize,
    /// Validation loss (nats per character) when it was saved, if measured.
    pub val_loss: Option<f64>,
    /// The last training loss (nats per character).
    pub train_loss: Option<f64>,
    /// The run's resolved configuration, as the trainer wrote it, less the keys of `model`
    /// (checkpoints that repeat them here hold the same values; `model` is the one read).
    #[serde(default)]
    pub run: serde_json::Value,
}

/// The meta section's JSON. serde's message on a bad value gives a line and a column; this one
/// names the field first (`model.cell: unknown variant ...`).
pub(crate) fn parse_meta(bytes: &[u8]) -> Result<CheckpointMeta, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("meta: {e}"))?;
    serde_json::from_value(value.clone()).map_err(|e| match bad_field(&value) {
        Some(field) => format!("meta: {field}"),
        None => format!("meta: {e}"),
    })
}

/// The first field of the meta whose value does not read as its type, with serde's message.
fn bad_field(meta: &serde_json::Value) -> Option<String> {
    fn check<T: serde::de::DeserializeOwned>(
        at: &serde_json::Value,
        key: &str,
        name: &str,
    ) -> Option<String> {
        let value = at.get(key)?.clone();
        let e = serde_json::from_value::<T>(value).err()?;
        Some(format!("{name}: {e}"))
    }
    let model = meta.get("model").unwrap_or(&serde_json::Value::Null);
    None.or_else(|| check::<usize>(model, "vocab_size", "model.vocab_size"))
        .or_else(|| check::<Option<crate::Cell>>(model, "cell", "model.cell"))
        .or_else(|| check::<usize>(model, "lstm_size", "model.lstm_size"))
        .or_else(|| check::<usize>(model, "num_layers", "model.num_layers"))
        .or_else(|| check::<f64>(model, "keep_prob", "model.keep_prob"))
        .or_else(|| check::<karnna_data::Vocab>(meta, "vocab", "vocab"))
        .or_else(|| check::<usize>(meta, "iteration", "iteration"))
        .or_else(|| check::<Option<f64>>(meta, "val_loss", "val_loss"))
        .or_else(|| check::<Option<f64>>(meta, "train_loss", "train_loss"))
}

/// Checks the meta's fields: each in range, and the vocabulary as long as `model.vocab_size`.
pub(crate) fn check_meta(meta: &CheckpointMeta) -> Result<(), String> {
    let m = &meta.model;
    if m.shape.num_layers == 0 {
        return Err("model.num_layers must be at least 1, got 0".into());
    }
    if m.shape.lstm_size == 0 {
        return Err("model.lstm_size must be at least 1, got 0".into());
    }
    if m.vocab_size != meta.vocab.len() {
        return Err(format!(
            "model.vocab_size is {} but vocab holds {} characters",
            m.vocab_size,
            meta.vocab.len()
        ));
    }
    if !(m.keep_prob > 0.0 && m.keep_prob <= 1.0) {
        return Err(format!(
            "model.keep_prob must be in (0, 1], got {}",
            m.keep_prob
        ));
    }
    Ok(())
}
