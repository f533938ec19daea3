//! safetensors files in PyTorch's layout ([`crate::layout`]), written and read.
//!
//! The tensors are f32, keyed as `nn.LSTM` + `nn.Linear` name them, so PyTorch loads them with
//! `load_state_dict(strict=True)`. The header's `__metadata__` (strings only, as the format
//! says) carries what a `state_dict` cannot: [`META_VOCAB`] (a JSON array of one-character
//! strings, in id order), [`META_CELL`], the sizes, `keep_prob`, the iteration, the validation
//! loss and [`META_VERSION`].
//!
//! Reading trusts nothing: the `safetensors` crate bounds the header (100 MB) and checks that
//! the offsets tile the data exactly and that every shape's size matches its bytes (with
//! checked arithmetic); then the key set must be exactly the model's, every shape must agree
//! with one model, every size is bounded ([`crate::layout::MAX_HIDDEN`] and the others), and
//! the metadata must agree with the tensors, all before a single weight is copied.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ::safetensors::tensor::TensorView;
use ::safetensors::{Dtype, SafeTensors};
use karnna_data::Vocab;
use karnna_model::{Cell, CharRnnConfig, DEFAULT_KEEP_PROB};

use crate::layout::{
    layer_key, TorchLayer, TorchModel, FC_PREFIX, LAYER_TENSORS, MAX_HIDDEN, MAX_LAYERS, MAX_VOCAB,
    RNN_PREFIX,
};
use crate::ExchangeError;

/// Metadata key: the version of this layout and metadata (`"1"`).
pub const META_VERSION: &str = "karnna.format";
/// Metadata key: the vocabulary, a JSON array of one-character strings in id order.
pub const META_VOCAB: &str = "vocab";
/// Metadata key: `lstm`, `gru` or `rnn`.
pub const META_CELL: &str = "cell";
/// Metadata key: units per layer.
pub const META_HIDDEN: &str = "hidden_size";
/// Metadata key: layers.
pub const META_LAYERS: &str = "num_layers";
/// Metadata key: vocabulary size.
pub const META_VOCAB_SIZE: &str = "vocab_size";
/// Metadata key: dropout's keep probability in training.
pub const META_KEEP_PROB: &str = "keep_prob";
/// Metadata key: training iterations done.
pub const META_ITERATION: &str = "iteration";
/// Metadata key: validation loss when saved (absent when none was measured).
pub const META_VAL_LOSS: &str = "val_loss";
/// The version this build writes and reads.
pub const VERSION: &str = "1";

/// The metadata written beside the tensors.
pub fn metadata(model: &TorchModel) -> HashMap<String, String> {
    let chars: Vec<String> = model.vocab.chars().iter().map(|c| c.to_string()).collect();
    let c = &model.config;
    let mut m = HashMap::from([
        // Hugging Face's tools read `format` to tell the framework.
        ("format".to_string(), "pt".to_string()),
        (META_VERSION.into(), VERSION.into()),
        (
            META_VOCAB.into(),
            serde_json::to_string(&chars).expect("strings"),
        ),
        (META_CELL.into(), c.cell().name().into()),
        (META_HIDDEN.into(), c.shape.lstm_size.to_string()),
        (META_LAYERS.into(), c.shape.num_layers.to_string()),
        (META_VOCAB_SIZE.into(), c.vocab_size.to_string()),
        (META_KEEP_PROB.into(), c.keep_prob.to_string()),
        (META_ITERATION.into(), model.iteration.to_string()),
        (
            "producer".into(),
            format!("karnna {}", env!("CARGO_PKG_VERSION")),
        ),
    ]);
    if let Some(v) = model.val_loss {
        m.insert(META_VAL_LOSS.into(), v.to_string());
    }
    m
}

/// `model` as the bytes of a safetensors file.
pub fn to_bytes(model: &TorchModel) -> Result<Vec<u8>, String> {
    let tensors = model.tensors();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(key, shape, data)| {
            let le = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (key, shape, le)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(key, shape, le)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), le).map_err(|e| e.to_string())?;
            Ok((key.as_str(), view))
        })
        .collect::<Result<Vec<_>, String>>()?;
    ::safetensors::serialize(views, Some(metadata(model))).map_err(|e| e.to_string())
}

/// A model read from a safetensors file, and what the reading changed, one line each (tensors
/// widened from f16 or bf16, a vocabulary put in order).
#[derive(Debug)]
pub struct Imported {
    /// The model.
    pub model: TorchModel,
    /// What was converted on the way in.
    pub notes: Vec<String>,
}

/// Reads a safetensors file in PyTorch's layout. The vocabulary is `vocab_from` when given
/// (it must have as many characters as `fc.weight` has rows), else the file's metadata's.
pub fn read(path: &Path, vocab_from: Option<&Vocab>) -> Result<Imported, ExchangeError> {
    let err = |why: String| ExchangeError::new(path, why);
    refuse_other_formats(path)?;
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    refuse_other_contents(&bytes).map_err(err)?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| err(format!("not a readable safetensors file: {e}")))?;
    let (_, header) =
        SafeTensors::read_metadata(&bytes).map_err(|e| err(format!("unreadable header: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    parse(&file, &meta, vocab_from).map_err(err)
}

/// A PyTorch pickle, refused by its extension, with the conversion that makes it safetensors.
fn refuse_other_formats(path: &Path) -> Result<(), ExchangeError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if matches!(ext, "pt" | "pth" | "bin" | "pkl") {
        return Err(ExchangeError::new(path, pickle_advice(path)));
    }
    Ok(())
}

fn pickle_advice(path: &Path) -> String {
    let out = path.with_extension("safetensors");
    format!(
        "a PyTorch pickle, which karnna does not load (unpickling a file runs its code); \
         convert the state_dict to safetensors in Python: python3 -c \"import torch; \
         from safetensors.torch import save_file; \
         save_file(torch.load('{}', map_location='cpu', weights_only=True), '{}')\"",
        path.display(),
        out.display()
    )
}

/// Contents that are not safetensors whatever their name: a pickle, a zip (`torch.save`'s
/// format), a karnna checkpoint.
fn refuse_other_contents(bytes: &[u8]) -> Result<(), String> {
    if bytes.starts_with(b"KARNNA01") {
        return Err(
            "a karnna checkpoint, not a safetensors file: sample, evaluate or \
                    fine-tune it as it is (--checkpoint)"
                .into(),
        );
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80) {
        return Err(
            "a PyTorch pickle or zip (torch.save), not safetensors: save it with \
                    safetensors.torch.save_file"
                .into(),
        );
    }
    Ok(())
}

/// The layer and tensor a key names (`lstm.weight_ih_l3` → `(3, 0)`), if it is a layer key.
fn parse_layer_key(key: &str) -> Option<Result<(usize, usize), String>> {
    let rest = key.strip_prefix(RNN_PREFIX)?.strip_prefix('.')?;
    let (name, layer) = rest.rsplit_once("_l")?;
    let which = LAYER_TENSORS.iter().position(|&n| n == name)?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) || layer.len() > 6 {
        return None;
    }
    let layer: usize = layer.parse().ok()?;
    Some(match layer < MAX_LAYERS {
        true => Ok((layer, which)),
        false => Err(format!("{key}: more than {MAX_LAYERS} layers")),
    })
}

/// The number of layers the keys name, after checking that the key set is exactly a model's.
fn check_keys(keys: &[&str]) -> Result<usize, String> {
    let mut layers = 0;
    let mut extra = Vec::new();
    for &key in keys {
        match parse_layer_key(key) {
            Some(Ok((layer, _))) => layers = layers.max(layer + 1),
            Some(Err(e)) => return Err(e),
            None if key == format!("{FC_PREFIX}.weight") || key == format!("{FC_PREFIX}.bias") => {}
            None => extra.push(key.to_string()),
        }
    }
    let expected: Vec<String> = (0..layers.max(1))
        .flat_map(|k| LAYER_TENSORS.map(|n| layer_key(n, k)))
        .chain([format!("{FC_PREFIX}.weight"), format!("{FC_PREFIX}.bias")])
        .collect();
    let missing: Vec<&String> = expected
        .iter()
        .filter(|k| !keys.contains(&k.as_str()))
        .collect();
    if missing.is_empty() && extra.is_empty() {
        return Ok(layers);
    }
    let list = |v: Vec<&str>| {
        let more = v.len().saturating_sub(4);
        let mut s = v.into_iter().take(4).collect::<Vec<_>>().join(", ");
        if more > 0 {
            s += &format!(" and {more} more");
        }
        s
    };
    let mut why = Vec::new();
    if !missing.is_empty() {
        why.push(format!(
            "missing {}",
            list(missing.iter().map(|s| s.as_str()).collect())
        ));
    }
    if !extra.is_empty() {
        why.push(format!(
            "unexpected {}",
            list(extra.iter().map(|s| s.as_str()).collect())
        ));
    }
    Err(format!(
        "{} (expected exactly {RNN_PREFIX}.{{weight_ih,weight_hh,bias_ih,bias_hh}}_l0..l{}, \
         {FC_PREFIX}.weight and {FC_PREFIX}.bias: nn.LSTM, nn.GRU or nn.RNN named `{RNN_PREFIX}`, \
         nn.Linear named `{FC_PREFIX}`)",
        why.join("; "),
        layers.max(1) - 1
    ))
}

/// The sizes every tensor's shape must agree with: cell, `H`, `V`, from `weight_hh_l0` and
/// `fc.weight`, each bounded.
fn sizes(file: &SafeTensors<'_>) -> Result<(Cell, usize, usize), String> {
    let shape = |key: &str| {
        file.tensor(key)
            .map(|t| t.shape().to_vec())
            .map_err(|e| e.to_string())
    };
    let hh = shape(&layer_key("weight_hh", 0))?;
    let [gh, h] = hh[..] else {
        return Err(format!(
            "{}: shape {hh:?} is not 2-D",
            layer_key("weight_hh", 0)
        ));
    };
    if h == 0 || h > MAX_HIDDEN {
        return Err(format!("hidden size {h} is outside 1..={MAX_HIDDEN}"));
    }
    let cell = (gh % h == 0)
        .then(|| Cell::from_gates(gh / h))
        .flatten()
        .ok_or_else(|| {
            format!(
                "{}: shape {hh:?} is not [G·H, H] with G = 4 (LSTM), 3 (GRU) or 1 (RNN)",
                layer_key("weight_hh", 0)
            )
        })?;
    let fc = shape(&format!("{FC_PREFIX}.weight"))?;
    let v = match fc[..] {
        [v, fh] if fh == h && (1..=MAX_VOCAB).contains(&v) => v,
        _ => {
            return Err(format!(
                "{FC_PREFIX}.weight: shape {fc:?} is not [V, {h}] with V in 1..={MAX_VOCAB}"
            ))
        }
    };
    Ok((cell, h, v))
}

/// A tensor's values as f32, checked against `shape`; f16 and bf16 are widened (noted once
/// per dtype in `notes`).
fn values(
    file: &SafeTensors<'_>,
    key: &str,
    shape: &[usize],
    notes: &mut Vec<String>,
) -> Result<Vec<f32>, String> {
    let t = file.tensor(key).map_err(|e| e.to_string())?;
    if t.shape() != shape {
        return Err(format!("{key}: shape {:?}, expected {shape:?}", t.shape()));
    }
    let data = t.data();
    let mut note = |what: &str| {
        let line = format!("tensors widened from {what} to f32");
        if !notes.contains(&line) {
            notes.push(line);
        }
    };
    Ok(match t.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect(),
        Dtype::F16 => {
            note("f16");
            data.chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()
        }
        Dtype::BF16 => {
            note("bf16");
            data.chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()
        }
        other => {
            return Err(format!(
                "{key}: dtype {other:?}; karnna reads F32, F16 and BF16"
            ))
        }
    })
}

/// A number from the metadata, if present.
fn meta_number<T: std::str::FromStr>(
    meta: &HashMap<String, String>,
    key: &str,
) -> Result<Option<T>, String> {
    meta.get(key)
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| format!("metadata {key} = {s:?} is not a number"))
        })
        .transpose()
}

/// Checks that the metadata's sizes, where given, are the tensors'.
fn check_meta_sizes(
    meta: &HashMap<String, String>,
    cell: Cell,
    h: usize,
    layers: usize,
    v: usize,
) -> Result<(), String> {
    if let Some(named) = meta.get(META_CELL) {
        let named: Cell = named
            .parse()
            .map_err(|e| format!("metadata {META_CELL}: {e}"))?;
        if named != cell {
            return Err(format!(
                "metadata says cell {named} but the tensors are a {cell}'s ({} gate blocks)",
                cell.gates()
            ));
        }
    }
    for (key, actual) in [
        (META_HIDDEN, h),
        (META_LAYERS, layers),
        (META_VOCAB_SIZE, v),
    ] {
        if let Some(said) = meta_number::<usize>(meta, key)? {
            if said != actual {
                return Err(format!(
                    "metadata {key} = {said} but the tensors say {actual}"
                ));
            }
        }
    }
    if let Some(version) = meta.get(META_VERSION) {
        if version != VERSION {
            return Err(format!(
                "metadata {META_VERSION} = {version:?}; this karnna reads version {VERSION}"
            ));
        }
    }
    Ok(())
}

/// The vocabulary in the file's order (`--vocab-from`'s, or the metadata's JSON array), each
/// character once; its size must be `v`.
fn file_vocab(
    meta: &HashMap<String, String>,
    vocab_from: Option<&Vocab>,
    v: usize,
) -> Result<Vec<char>, String> {
    let chars: Vec<char> = match (vocab_from, meta.get(META_VOCAB)) {
        (Some(vocab), _) => {
            if vocab.len() != v {
                return Err(format!(
                    "--vocab-from's text has {} distinct characters but {FC_PREFIX}.weight has {v} rows",
                    vocab.len()
                ));
            }
            return Ok(vocab.chars().to_vec());
        }
        (None, Some(json)) => {
            let strings: Vec<String> = serde_json::from_str(json).map_err(|e| {
                format!("metadata {META_VOCAB} is not a JSON array of strings: {e}")
            })?;
            strings
                .iter()
                .map(|s| {
                    let mut it = s.chars();
                    match (it.next(), it.next()) {
                        (Some(c), None) => Ok(c),
                        _ => Err(format!("metadata {META_VOCAB}: {s:?} is not one character")),
                    }
                })
                .collect::<Result<_, _>>()?
        }
        (None, None) => {
            return Err(format!(
                "no vocabulary: the metadata has no `{META_VOCAB}`; give --vocab-from TEXT, \
                 the text the model was trained on (ids in Python's sorted(set(text)) order)"
            ))
        }
    };
    if chars.len() != v {
        return Err(format!(
            "metadata {META_VOCAB} has {} characters but {FC_PREFIX}.weight has {v} rows",
            chars.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(c) = chars.iter().find(|c| !seen.insert(**c)) {
        return Err(format!("metadata {META_VOCAB} holds {c:?} twice"));
    }
    Ok(chars)
}

fn parse(
    file: &SafeTensors<'_>,
    meta: &HashMap<String, String>,
    vocab_from: Option<&Vocab>,
) -> Result<Imported, String> {
    let names = file.names();
    let layers = check_keys(&names)?;
    let (cell, h, v) = sizes(file)?;
    check_meta_sizes(meta, cell, h, layers, v)?;
    let order = file_vocab(meta, vocab_from, v)?;
    let keep_prob = meta_number::<f64>(meta, META_KEEP_PROB)?.unwrap_or(DEFAULT_KEEP_PROB);
    if !(keep_prob > 0.0 && keep_prob <= 1.0) {
        return Err(format!(
            "metadata {META_KEEP_PROB} = {keep_prob} is outside (0, 1]"
        ));
    }
    let gh = cell.gates() * h;
    let mut notes = Vec::new();
    let mut torch_layers = Vec::with_capacity(layers);
    for k in 0..layers {
        let input = if k == 0 { v } else { h };
        let mut get =
            |name: &str, shape: &[usize]| values(file, &layer_key(name, k), shape, &mut notes);
        torch_layers.push(TorchLayer {
            weight_ih: get("weight_ih", &[gh, input])?,
            weight_hh: get("weight_hh", &[gh, h])?,
            bias_ih: get("bias_ih", &[gh])?,
            bias_hh: get("bias_hh", &[gh])?,
        });
    }
    let fc_weight = values(file, &format!("{FC_PREFIX}.weight"), &[v, h], &mut notes)?;
    let fc_bias = values(file, &format!("{FC_PREFIX}.bias"), &[v], &mut notes)?;
    let mut model = TorchModel {
        config: CharRnnConfig::new(v)
            .with_cell(cell)
            .with_lstm_size(h)
            .with_num_layers(layers)
            .with_keep_prob(keep_prob),
        vocab: Vocab::from_chars(order.iter().copied()),
        iteration: meta_number(meta, META_ITERATION)?.unwrap_or(0),
        val_loss: meta_number(meta, META_VAL_LOSS)?,
        layers: torch_layers,
        fc_weight,
        fc_bias,
    };
    if let Some(note) = sort_vocab(&mut model, &order) {
        notes.push(note);
    }
    Ok(Imported { model, notes })
}

/// Puts a vocabulary given in another order (the notebook's `set()` order, say) into karnna's
/// sorted one: the first layer's input columns and the output rows move with their characters,
/// so the model computes the same function. Says so when anything moved.
fn sort_vocab(model: &mut TorchModel, order: &[char]) -> Option<String> {
    let sorted = model.vocab.chars();
    if sorted == order {
        return None;
    }
    let old_id: BTreeMap<char, usize> = order.iter().enumerate().map(|(i, &c)| (c, i)).collect();
    // New id j holds the character whose old id is `from[j]`.
    let from: Vec<usize> = sorted.iter().map(|c| old_id[c]).collect();
    let (v, h) = (order.len(), model.hidden());
    let first = &mut model.layers[0].weight_ih; // [G·H, V]: columns move
    let rows = first.len() / v;
    let old = first.clone();
    for r in 0..rows {
        for (j, &f) in from.iter().enumerate() {
            first[r * v + j] = old[r * v + f];
        }
    }
    let (w, b) = (model.fc_weight.clone(), model.fc_bias.clone()); // [V, H], [V]: rows move
    for (j, &f) in from.iter().enumerate() {
        model.fc_weight[j * h..(j + 1) * h].copy_from_slice(&w[f * h..(f + 1) * h]);
        model.fc_bias[j] = b[f];
    }
    Some("vocabulary put in code-point order (the input columns and output rows moved with their characters)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_keys_parse_and_bound_the_layer() {
        assert_eq!(parse_layer_key("lstm.weight_ih_l3"), Some(Ok((3, 0))));
        assert_eq!(parse_layer_key("lstm.bias_hh_l0"), Some(Ok((0, 3))));
        assert!(matches!(parse_layer_key("lstm.bias_hh_l64"), Some(Err(_))));
        assert_eq!(parse_layer_key("lstm.weight_ih_l"), None);
        assert_eq!(parse_layer_key("lstm.weight_ih_l99999999999999"), None);
        assert_eq!(parse_layer_key("rnn.weight_ih_l0"), None);
    }

    #[test]
    fn key_set_must_be_exact_and_gapless() {
        let mut keys: Vec<String> = (0..2)
            .flat_map(|k| LAYER_TENSORS.map(|n| layer_key(n, k)))
            .chain(["fc.weight".into(), "fc.bias".into()])
            .collect();
        fn refs(k: &[String]) -> Vec<&str> {
            k.iter().map(|s| s.as_str()).collect()
        }
        assert_eq!(check_keys(&refs(&keys)), Ok(2));
        keys.retain(|k| k != "lstm.bias_hh_l0"); // a gap in layer 0
        let e = check_keys(&refs(&keys)).unwrap_err();
        assert!(e.contains("missing lstm.bias_hh_l0"), "{e}");
        keys.push("lstm.bias_hh_l0".into());
        keys.push("module.fc.weight".into());
        let e = check_keys(&refs(&keys)).unwrap_err();
        assert!(e.contains("unexpected module.fc.weight"), "{e}");
    }
}
