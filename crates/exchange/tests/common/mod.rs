//! What the exchange tests share: small seeded models, scratch folders, greedy text.

use std::path::PathBuf;

use burn::backend::NdArray;
use burn::prelude::*;
use karnna_data::Vocab;
use karnna_exchange::TorchModel;
use karnna_model::{to_f32_vec, Cell, CharRnn, CharRnnConfig, Init, RnnState};

/// The backend the tests run the model on.
pub type B = NdArray;

/// A fresh, empty scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("karnna-exchange-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The text the small models' vocabulary comes from.
pub const TEXT: &str =
    "Happy families are all alike; every unhappy family is unhappy in its own way.\n";

/// A seeded untrained model of `cell` (2 layers of 8 units) over [`TEXT`]'s characters, with
/// weights drawn wide enough that its argmax text does not hang on near ties.
#[allow(dead_code)] // python.rs uses scaled_model only
pub fn small_model(cell: Cell, seed: u64) -> (CharRnn<B>, Vocab) {
    scaled_model(cell, seed, 3.0)
}

/// [`small_model`] with PyTorch's initial weights times `scale`.
pub fn scaled_model(cell: Cell, seed: u64, scale: f32) -> (CharRnn<B>, Vocab) {
    let vocab = Vocab::from_text(TEXT);
    let config = CharRnnConfig::new(vocab.len())
        .with_cell(cell)
        .with_lstm_size(8)
        .with_num_layers(2);
    let model = config.init_seeded::<B>(Init::PyTorch, seed, &Default::default());
    // Scaled through the PyTorch layout, which the round trip test proves exact.
    let mut torch = TorchModel::from_model(&model, vocab.clone(), 7, Some(2.5));
    for l in &mut torch.layers {
        for w in [
            &mut l.weight_ih,
            &mut l.weight_hh,
            &mut l.bias_ih,
            &mut l.bias_hh,
        ] {
            w.iter_mut().for_each(|x| *x *= scale);
        }
    }
    torch.fc_weight.iter_mut().for_each(|x| *x *= scale);
    (torch.model::<B>(&Default::default()), vocab)
}

/// `model`'s logits, batch-major `[batch, seq, V]` as PyTorch's `batch_first` and the ONNX
/// export give them, and final state for `ids` from the zero state, flat.
pub fn logits(model: &CharRnn<B>, ids: &[Vec<i64>]) -> (Vec<f32>, RnnState<B>) {
    let (batch, seq) = (ids.len(), ids[0].len());
    let flat: Vec<i64> = ids.concat();
    let tokens =
        Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [batch, seq]), &Default::default());
    let (logits, state) = model.forward(tokens, None); // time-major: [seq, batch, V]
    (to_f32_vec(logits.swap_dims(0, 1)), state)
}

/// The argmax continuation of `prime` for `n` characters, one step at a time with the state
/// carried, as a sampler with `top_n = 1` writes it.
pub fn greedy(model: &CharRnn<B>, vocab: &Vocab, prime: &str, n: usize) -> String {
    let ids: Vec<i64> = prime.chars().map(|c| vocab.id(c).unwrap() as i64).collect();
    let mut tokens = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.clone(), [1, ids.len()]),
        &Default::default(),
    );
    let mut state = None;
    let mut out = String::new();
    for _ in 0..n {
        let (logits, next) = model.forward(tokens, state);
        state = Some(next);
        let v = vocab.len();
        let all = to_f32_vec(logits);
        let last = &all[all.len() - v..];
        let best = (0..v).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        out.push(vocab.chars()[best]);
        tokens = Tensor::<B, 2, Int>::from_data(
            TensorData::new(vec![best as i64], [1, 1]),
            &Default::default(),
        );
    }
    out
}
