//! The character model: one-hot input, stacked LSTM layers with dropout, linear to the vocabulary.

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::module::embedding;
use burn::tensor::{Distribution, TensorData};

use karnna_data::Vocab;

use crate::ops::{lstm_sequence, LstmBackend};

/// How an untrained model's weights are drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// PyTorch's `nn.LSTM` and `nn.Linear`: every LSTM weight and bias from U(-1/√H, 1/√H);
    /// the output layer takes Burn's `Linear` default, which is the same distribution
    /// (Kaiming-uniform with gain 1/√3 over fan-in H).
    #[default]
    PyTorch,
    /// The notebook's TensorFlow 1 model: `BasicLSTMCell` kernels Glorot-uniform over the
    /// stacked `[input + H, 4H]` kernel (so `W_ih` and `W_hh` share one bound,
    /// √(6 / (input + H + 4H))), zero biases with `forget_bias = 1.0` on the forget gate
    /// (here the forget block of `b_ih`; the sum of the two biases is what the cell sees),
    /// softmax weights `truncated_normal(stddev = 0.1)` (redrawn beyond two standard
    /// deviations) and a zero softmax bias.
    TensorFlow,
}

impl Init {
    /// The name used in config files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Init::PyTorch => "pytorch",
            Init::TensorFlow => "tensorflow",
        }
    }
}

/// The model's shape and dropout; everything needed to build an untrained [`CharRnn`].
#[derive(Config, Debug, PartialEq)]
pub struct CharRnnConfig {
    /// Number of distinct characters (input and output size).
    pub vocab_size: usize,
    /// Units in each LSTM layer (the notebook's `lstm_size`).
    #[config(default = 512)]
    pub lstm_size: usize,
    /// Stacked LSTM layers (the notebook's `num_layers`).
    #[config(default = 2)]
    pub num_layers: usize,
    /// Probability of keeping each LSTM output in training (the notebook's `keep_prob`).
    #[config(default = 0.5)]
    pub keep_prob: f64,
}

/// One LSTM layer's parameters, gates fused: the four gate blocks (i, f, g, o) side by side.
///
/// Two bias vectors, as PyTorch and Burn's `nn::Lstm` have them (TensorFlow has one): the model
/// then has exactly the parameters of the PyTorch peer we measure against, 3,366,483 for the
/// notebook's sizes. Only their sum matters to the maths.
#[derive(Module, Debug)]
pub struct LstmLayer<B: Backend> {
    /// Input weights `[input, 4H]`; for the first layer a row per character (one-hot input).
    pub w_ih: Param<Tensor<B, 2>>,
    /// Recurrent weights `[H, 4H]`.
    pub w_hh: Param<Tensor<B, 2>>,
    /// Input bias `[4H]`.
    pub b_ih: Param<Tensor<B, 1>>,
    /// Recurrent bias `[4H]`.
    pub b_hh: Param<Tensor<B, 1>>,
}

/// The LSTM state of every layer: `h` and `c`, each `[num_layers, batch, lstm_size]`.
#[derive(Clone, Debug)]
pub struct LstmState<B: Backend> {
    /// Hidden states.
    pub h: Tensor<B, 3>,
    /// Cell states.
    pub c: Tensor<B, 3>,
}

impl<B: Backend> LstmState<B> {
    /// The zero state (start of an epoch, start of sampling).
    pub fn zeros(num_layers: usize, batch: usize, lstm_size: usize, device: &B::Device) -> Self {
        let z = Tensor::zeros([num_layers, batch, lstm_size], device);
        Self { h: z.clone(), c: z }
    }

    /// The same values cut from the autodiff graph (truncated backpropagation through time).
    pub fn detach(self) -> Self {
        Self {
            h: self.h.detach(),
            c: self.c.detach(),
        }
    }
}

/// The notebook's model: one-hot characters → `num_layers` stacked LSTM layers of `lstm_size`,
/// dropout on each layer's output (training only) → linear to the vocabulary (logits).
#[derive(Module, Debug)]
pub struct CharRnn<B: Backend> {
    /// The LSTM layers, bottom first.
    pub layers: Vec<LstmLayer<B>>,
    /// Hidden size to vocabulary logits.
    pub output: Linear<B>,
    /// Probability of keeping each LSTM output in training.
    pub keep_prob: f64,
}

impl CharRnnConfig {
    /// Builds an untrained model, initialised as PyTorch does ([`Init::PyTorch`]).
    pub fn init<B: Backend>(&self, device: &B::Device) -> CharRnn<B> {
        self.init_with(Init::PyTorch, device)
    }

    /// Builds an untrained model with its weights drawn the way `init` says.
    pub fn init_with<B: Backend>(&self, init: Init, device: &B::Device) -> CharRnn<B> {
        let (h, v) = (self.lstm_size, self.vocab_size);
        let uniform = |bound: f64| Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        let torch = uniform(1.0 / (h as f64).sqrt());
        let layers = (0..self.num_layers)
            .map(|l| {
                let input = if l == 0 { v } else { h };
                match init {
                    Init::PyTorch => LstmLayer {
                        w_ih: torch.init([input, 4 * h], device),
                        w_hh: torch.init([h, 4 * h], device),
                        b_ih: torch.init([4 * h], device),
                        b_hh: torch.init([4 * h], device),
                    },
                    Init::TensorFlow => {
                        let glorot = uniform((6.0 / (input + h + 4 * h) as f64).sqrt());
                        // Gate order i, f, g, o: the forget block starts at H.
                        let forget_bias = Tensor::cat(
                            vec![
                                Tensor::zeros([h], device),
                                Tensor::ones([h], device),
                                Tensor::zeros([2 * h], device),
                            ],
                            0,
                        );
                        LstmLayer {
                            w_ih: glorot.init([input, 4 * h], device),
                            w_hh: glorot.init([h, 4 * h], device),
                            b_ih: Param::from_tensor(forget_bias),
                            b_hh: Initializer::Zeros.init([4 * h], device),
                        }
                    }
                }
            })
            .collect();
        let mut output = LinearConfig::new(h, v).init(device);
        if init == Init::TensorFlow {
            output.weight = Param::from_tensor(truncated_normal([h, v], 0.1, device));
            output.bias = Some(Initializer::Zeros.init([v], device));
        }
        CharRnn {
            layers,
            output,
            keep_prob: self.keep_prob,
        }
    }

    /// Trainable parameters of the model this config builds:
    /// per layer `4H·(input + H) + 8H`, plus `H·V + V` for the output layer.
    pub fn num_params(&self) -> usize {
        let (v, h) = (self.vocab_size, self.lstm_size);
        let lstm: usize = (0..self.num_layers)
            .map(|l| {
                let input = if l == 0 { v } else { h };
                4 * h * (input + h) + 8 * h
            })
            .sum();
        lstm + h * v + v
    }
}

impl<B: Backend> CharRnn<B> {
    /// Units per LSTM layer.
    pub fn lstm_size(&self) -> usize {
        self.layers[0].w_hh.dims()[0]
    }

    /// The zero state for `batch` rows.
    pub fn zero_state(&self, batch: usize) -> LstmState<B> {
        let device = self.layers[0].w_hh.device();
        LstmState::zeros(self.layers.len(), batch, self.lstm_size(), &device)
    }

    /// This trained model (whose vocabulary is `old`) moved to the vocabulary `new`, for
    /// fine-tuning on a text with other characters: a character of both keeps its trained
    /// input row (`W_ih` of the first layer) and output column and bias; a character only in
    /// `new` takes its row and column from `fresh`, an untrained model of `new`'s size with the
    /// same shape. Every other weight is kept; the dropout rate is `fresh`'s (the new run's).
    /// The result's parameters are new trainable ones (the optimizer starts afresh).
    pub fn with_vocab(self, old: &Vocab, new: &Vocab, fresh: CharRnn<B>) -> CharRnn<B> {
        let device = self.layers[0].w_hh.device();
        // Row j of the new matrices: row `old id` of the trained one, or row `V_old + j` of
        // the two stacked, which is row j of the fresh one.
        let index: Vec<i64> = new
            .chars()
            .iter()
            .enumerate()
            .map(|(j, &c)| match old.id(c) {
                Some(i) => i as i64,
                None => (old.len() + j) as i64,
            })
            .collect();
        let index = Tensor::<B, 1, Int>::from_ints(index.as_slice(), &device);
        let pick = |trained: Tensor<B, 2>, fresh: Tensor<B, 2>, dim: usize| {
            Tensor::cat(vec![trained, fresh], dim)
                .select(dim, index.clone())
                .detach()
        };
        let fresh_first = fresh.layers.into_iter().next().expect("a layer");
        let mut layers: Vec<LstmLayer<B>> = self
            .layers
            .into_iter()
            .map(|l| LstmLayer {
                w_ih: Param::from_tensor(l.w_ih.val().detach()),
                w_hh: Param::from_tensor(l.w_hh.val().detach()),
                b_ih: Param::from_tensor(l.b_ih.val().detach()),
                b_hh: Param::from_tensor(l.b_hh.val().detach()),
            })
            .collect();
        let first_w = layers[0].w_ih.val();
        layers[0].w_ih = Param::from_tensor(pick(first_w, fresh_first.w_ih.val(), 0));
        let mut output = fresh.output;
        output.weight = Param::from_tensor(pick(self.output.weight.val(), output.weight.val(), 1));
        output.bias = match (self.output.bias, output.bias) {
            (Some(trained), Some(fresh)) => {
                let row = |b: Tensor<B, 1>| b.unsqueeze_dim::<2>(0);
                let both = pick(row(trained.val()), row(fresh.val()), 1);
                Some(Param::from_tensor(both.squeeze_dim::<1>(0)))
            }
            (_, fresh) => fresh,
        };
        CharRnn {
            layers,
            output,
            keep_prob: fresh.keep_prob,
        }
    }
}

impl<B: LstmBackend> CharRnn<B> {
    /// Runs the model over a batch of character ids.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, steps]` ids
    /// - `state`: `[num_layers, batch, lstm_size]` each (zeros when `None`)
    /// - returns logits `[steps, batch, vocab]` (time-major: row `t·batch + i` of the flattened
    ///   logits is step `t` of row `i`) and the state after the last step.
    pub fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        state: Option<LstmState<B>>,
    ) -> (Tensor<B, 3>, LstmState<B>) {
        self.forward_with(tokens, state, lstm_sequence)
    }
}

impl<B: Backend> CharRnn<B> {
    /// [`CharRnn::forward`] with the LSTM recurrence of each layer computed by `lstm`
    /// (`(xp [T, B, 4H], W_hh, h0, c0) -> (hs [T, B, H], c_T)`): the fused op in `forward`, or
    /// [`crate::ops::tensor_forward`] to check it against Burn's step-by-step autodiff.
    pub fn forward_with(
        &self,
        tokens: Tensor<B, 2, Int>,
        state: Option<LstmState<B>>,
        lstm: impl Fn(
            Tensor<B, 3>,
            Tensor<B, 2>,
            Tensor<B, 2>,
            Tensor<B, 2>,
        ) -> (Tensor<B, 3>, Tensor<B, 2>),
    ) -> (Tensor<B, 3>, LstmState<B>) {
        let [batch, steps] = tokens.dims();
        let state = state.unwrap_or_else(|| self.zero_state(batch));
        let h = self.lstm_size();
        let (mut hs_out, mut cs_out) = (Vec::new(), Vec::new());
        let mut x: Option<Tensor<B, 3>> = None; // [steps, batch, H], the previous layer's output
        for (l, layer) in self.layers.iter().enumerate() {
            let bias = (layer.b_ih.val() + layer.b_hh.val()).reshape([1, 1, 4 * h]);
            let xp = match x {
                // One-hot input times W_ih is a row lookup. [steps, batch, 4H]
                None => embedding(layer.w_ih.val(), tokens.clone().transpose()),
                Some(x) => x
                    .reshape([steps * batch, h])
                    .matmul(layer.w_ih.val())
                    .reshape([steps, batch, 4 * h]),
            } + bias;
            let h0 = state.h.clone().narrow(0, l, 1).reshape([batch, h]);
            let c0 = state.c.clone().narrow(0, l, 1).reshape([batch, h]);
            let (hs, c_last) = lstm(xp, layer.w_hh.val(), h0, c0);
            hs_out.push(hs.clone().narrow(0, steps - 1, 1).reshape([batch, h]));
            cs_out.push(c_last);
            x = Some(dropout(hs, self.keep_prob));
        }
        let x = x.expect("at least one layer").reshape([steps * batch, h]);
        let vocab = self.output.weight.dims()[1];
        let logits = self.output.forward(x).reshape([steps, batch, vocab]);
        let state = LstmState {
            h: Tensor::stack(hs_out, 0),
            c: Tensor::stack(cs_out, 0),
        };
        (logits, state)
    }
}

/// TensorFlow's `truncated_normal`: N(0, std²) with every value beyond two standard deviations
/// drawn again until none is.
fn truncated_normal<B: Backend, const D: usize>(
    shape: [usize; D],
    std: f64,
    device: &B::Device,
) -> Tensor<B, D> {
    let normal = || Tensor::<B, D>::random(shape, Distribution::Normal(0.0, std), device);
    let mut x = normal();
    loop {
        let outside = x.clone().abs().greater_elem(2.0 * std);
        if !outside.clone().any().into_scalar().to_bool() {
            return x;
        }
        x = x.mask_where(outside, normal());
    }
}

/// The values of a float tensor as a row-major `Vec<f32>` (read back to the host).
pub fn to_f32_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 tensor data")
}

/// Dropout on an LSTM layer's output, in training only (on an autodiff backend): each value is
/// kept with probability `keep_prob` and scaled by `1 / keep_prob`, or zeroed.
///
/// The mask is drawn on the host by [`crate::kernel::dropout_mask`] (a counter-based hash, 16
/// lanes at a time) from a seed taken from the backend's own RNG, so runs stay reproducible under
/// `Backend::seed`; Burn's `Dropout` draws every Bernoulli sample through its generic sampler,
/// which cost ~8% of a training step.
fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, keep_prob: f64) -> Tensor<B, D> {
    let device = x.device();
    if keep_prob >= 1.0 || !B::ad_enabled(&device) {
        return x;
    }
    let bits = to_f32_vec(Tensor::<B, 1>::random(
        [2],
        Distribution::Uniform(0.0, 1.0),
        &device,
    ));
    let seed = ((bits[0].to_bits() as u64) << 32) | bits[1].to_bits() as u64;
    let shape = x.shape();
    let mut mask = vec![0.0; shape.num_elements()];
    crate::kernel::dropout_mask(seed, keep_prob, &mut mask);
    x * Tensor::from_data(TensorData::new(mask, shape), &device)
}
