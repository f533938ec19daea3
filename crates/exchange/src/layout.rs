//! The model's weights in PyTorch's layout: what maps to what.
//!
//! | karnna (`CharRnn`)               | PyTorch (`nn.LSTM`/`nn.GRU`/`nn.RNN` as `lstm`, `nn.Linear` as `fc`) |
//! | -------------------------------- | -------------------------------------------------------------- |
//! | `layers[k].w_ih` `[In, G·H]`     | `lstm.weight_ih_l{k}` `[G·H, In]` (transposed)                 |
//! | `layers[k].w_hh` `[H, G·H]`      | `lstm.weight_hh_l{k}` `[G·H, H]` (transposed)                  |
//! | `layers[k].b_ih`, `b_hh` `[G·H]` | `lstm.bias_ih_l{k}`, `lstm.bias_hh_l{k}` (copied)              |
//! | `output.weight` `[H, V]`         | `fc.weight` `[V, H]` (transposed)                              |
//! | `output.bias` `[V]`              | `fc.bias` (copied)                                             |
//!
//! `In` is the vocabulary's size `V` for the first layer (one-hot input) and `H` above it. The
//! gate blocks are in PyTorch's order already (LSTM i, f, g, o; GRU r, z, n; [`Cell`]), so no
//! block moves. Every cell sits under `lstm.`, the attribute name of the PyTorch notebook and of
//! the peer (`../shared/peers/torch_charrnn.py`), whatever its kind.

use burn::module::Param;
use burn::nn::LinearConfig;
use burn::prelude::*;
use karnna_data::Vocab;
use karnna_kernels::transpose;
use karnna_model::checkpoint::{Checkpoint, CheckpointError};
use karnna_model::{to_f32_vec, Cell, CharRnn, CharRnnConfig, CheckpointMeta, RnnLayer};

/// The prefix of the recurrent module's keys (`lstm.weight_ih_l0`, ...).
pub const RNN_PREFIX: &str = "lstm";
/// The prefix of the output layer's keys (`fc.weight`, `fc.bias`).
pub const FC_PREFIX: &str = "fc";
/// The four tensors of each recurrent layer, in PyTorch's names (`{name}_l{k}`).
pub const LAYER_TENSORS: [&str; 4] = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"];

/// Most units per layer an imported file may have.
pub const MAX_HIDDEN: usize = 1 << 16;
/// Most layers an imported file may have.
pub const MAX_LAYERS: usize = 64;
/// Most characters a vocabulary may have (every Unicode scalar value).
pub const MAX_VOCAB: usize = 0x11_0000;

/// One recurrent layer in PyTorch's layout, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct TorchLayer {
    /// `weight_ih_l{k}`, `[G·H, In]`.
    pub weight_ih: Vec<f32>,
    /// `weight_hh_l{k}`, `[G·H, H]`.
    pub weight_hh: Vec<f32>,
    /// `bias_ih_l{k}`, `[G·H]`.
    pub bias_ih: Vec<f32>,
    /// `bias_hh_l{k}`, `[G·H]`.
    pub bias_hh: Vec<f32>,
}

/// A model in PyTorch's layout (host memory, row-major f32), with what karnna knows about it
/// that a `state_dict` cannot hold: the vocabulary, the cell, dropout and where training was.
#[derive(Clone, Debug, PartialEq)]
pub struct TorchModel {
    /// Vocabulary size, cell, units, layers, `keep_prob`.
    pub config: CharRnnConfig,
    /// The characters, in id order (sorted by code point, as Python's `sorted(set(text))`).
    pub vocab: Vocab,
    /// Training iterations done.
    pub iteration: usize,
    /// Validation loss when saved, if measured.
    pub val_loss: Option<f64>,
    /// The recurrent layers, bottom first.
    pub layers: Vec<TorchLayer>,
    /// `fc.weight`, `[V, H]`.
    pub fc_weight: Vec<f32>,
    /// `fc.bias`, `[V]`.
    pub fc_bias: Vec<f32>,
}

/// The key of layer `layer`'s tensor `name` (one of [`LAYER_TENSORS`]).
pub fn layer_key(name: &str, layer: usize) -> String {
    format!("{RNN_PREFIX}.{name}_l{layer}")
}

impl TorchModel {
    /// `model`'s weights (whose vocabulary is `vocab`) in PyTorch's layout.
    pub fn from_model<B: Backend>(
        model: &CharRnn<B>,
        vocab: Vocab,
        iteration: usize,
        val_loss: Option<f64>,
    ) -> Self {
        let (h, v) = (model.lstm_size(), vocab.len());
        let cell = model.cell();
        let gh = cell.gates() * h;
        let layers = model
            .layers
            .iter()
            .enumerate()
            .map(|(k, l)| {
                let input = if k == 0 { v } else { h };
                TorchLayer {
                    weight_ih: transpose(input, gh, &to_f32_vec(l.w_ih.val())),
                    weight_hh: transpose(h, gh, &to_f32_vec(l.w_hh.val())),
                    bias_ih: to_f32_vec(l.b_ih.val()),
                    bias_hh: to_f32_vec(l.b_hh.val()),
                }
            })
            .collect();
        let fc_bias = match &model.output.bias {
            Some(b) => to_f32_vec(b.val()),
            None => vec![0.0; v],
        };
        let config = CharRnnConfig::new(v)
            .with_cell(cell)
            .with_lstm_size(h)
            .with_num_layers(model.layers.len())
            .with_keep_prob(model.keep_prob);
        Self {
            config,
            vocab,
            iteration,
            val_loss,
            layers,
            fc_weight: transpose(h, v, &to_f32_vec(model.output.weight.val())),
            fc_bias,
        }
    }

    /// A checkpoint's model, read on the CPU.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self, CheckpointError> {
        let model = ckpt.model::<burn::backend::NdArray>(&Default::default())?;
        Ok(Self::from_model(
            &model,
            ckpt.meta.vocab.clone(),
            ckpt.meta.iteration,
            ckpt.meta.val_loss,
        ))
    }

    /// The recurrent cell.
    pub fn cell(&self) -> Cell {
        self.config.cell()
    }

    /// Units per layer, `H`.
    pub fn hidden(&self) -> usize {
        self.config.shape.lstm_size
    }

    /// The width of layer `layer`'s input: `V` for the first, `H` above.
    pub fn input_size(&self, layer: usize) -> usize {
        match layer {
            0 => self.config.vocab_size,
            _ => self.hidden(),
        }
    }

    /// Every tensor with its key and shape, in module order (PyTorch's `state_dict` order).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let (h, gh) = (self.hidden(), self.cell().gates() * self.hidden());
        let mut out = Vec::new();
        for (k, l) in self.layers.iter().enumerate() {
            let [wi, wh, bi, bh] = LAYER_TENSORS;
            out.push((
                layer_key(wi, k),
                vec![gh, self.input_size(k)],
                &l.weight_ih[..],
            ));
            out.push((layer_key(wh, k), vec![gh, h], &l.weight_hh[..]));
            out.push((layer_key(bi, k), vec![gh], &l.bias_ih[..]));
            out.push((layer_key(bh, k), vec![gh], &l.bias_hh[..]));
        }
        let v = self.config.vocab_size;
        out.push((
            format!("{FC_PREFIX}.weight"),
            vec![v, h],
            &self.fc_weight[..],
        ));
        out.push((format!("{FC_PREFIX}.bias"), vec![v], &self.fc_bias[..]));
        out
    }

    /// The karnna model of these weights on `device` (new parameters; dropout as the config
    /// says).
    pub fn model<B: Backend>(&self, device: &B::Device) -> CharRnn<B> {
        let (h, v) = (self.hidden(), self.config.vocab_size);
        let gh = self.cell().gates() * h;
        let matrix = |data: Vec<f32>, rows: usize, cols: usize| {
            Param::from_tensor(Tensor::<B, 2>::from_data(
                TensorData::new(data, [rows, cols]),
                device,
            ))
        };
        let vector = |data: &[f32]| {
            Param::from_tensor(Tensor::<B, 1>::from_data(
                TensorData::new(data.to_vec(), [data.len()]),
                device,
            ))
        };
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(k, l)| {
                let input = self.input_size(k);
                RnnLayer {
                    w_ih: matrix(transpose(gh, input, &l.weight_ih), input, gh),
                    w_hh: matrix(transpose(gh, h, &l.weight_hh), h, gh),
                    b_ih: vector(&l.bias_ih),
                    b_hh: vector(&l.bias_hh),
                }
            })
            .collect();
        let mut output = LinearConfig::new(h, v).init(device);
        output.weight = matrix(transpose(v, h, &self.fc_weight), h, v);
        output.bias = Some(vector(&self.fc_bias));
        CharRnn {
            layers,
            output,
            keep_prob: self.config.keep_prob,
            matmul: Default::default(),
        }
    }

    /// The meta of a checkpoint holding this model (`run` is what the checkpoint says of the run
    /// that made it; an import has none to give).
    pub fn checkpoint_meta(&self, run: serde_json::Value) -> CheckpointMeta {
        CheckpointMeta {
            model: self.config.clone(),
            vocab: self.vocab.clone(),
            iteration: self.iteration,
            val_loss: self.val_loss,
            train_loss: None,
            run,
        }
    }
}
