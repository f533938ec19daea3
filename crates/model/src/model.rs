//! The character model: one-hot input, stacked recurrent layers (LSTM, GRU or plain RNN) with
//! dropout, linear to the vocabulary.

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::module::embedding;
use burn::tensor::{Distribution, TensorData, TensorPrimitive};

use karnna_data::Vocab;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ops::reference::tensor_forward;
use crate::ops::{dense, sequence, to_f32_vec, CellBackend, Matmul, SequenceInputs};
use crate::Cell;

/// How an untrained model's weights are drawn.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// PyTorch's `nn.LSTM` (`nn.GRU`, `nn.RNN`) and `nn.Linear`: every recurrent weight and
    /// bias from U(-1/√H, 1/√H); the output layer takes Burn's `Linear` default, which is the
    /// same distribution (Kaiming-uniform with gain 1/√3 over fan-in H).
    #[default]
    #[value(name = "pytorch", help = "PyTorch's defaults")]
    PyTorch,
    /// The notebook's TensorFlow 1 model: kernels Glorot-uniform over the stacked
    /// `[input + H, G·H]` kernel (`BasicLSTMCell`'s, `G = 4`; so `W_ih` and `W_hh` share one
    /// bound, √(6 / (input + H + G·H))), zero biases but those TensorFlow's cells start at one:
    /// the LSTM's `forget_bias = 1.0` on the forget gate, the GRU's r and z gates (here in
    /// `b_ih`; for the LSTM and the RNN the sum of the two biases is what the cell sees),
    /// softmax weights `truncated_normal(stddev = 0.1)` (redrawn beyond two standard
    /// deviations) and a zero softmax bias.
    #[value(
        name = "tensorflow",
        help = "The notebook's TensorFlow 1 initialisation"
    )]
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

/// How [`CharRnn::forward_with`] runs each layer's recurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recurrence {
    /// The fused sequence op with its hand-written backward (what training and sampling use).
    Fused,
    /// The recurrence step by step in Burn tensor ops ([`crate::ops::reference::tensor_forward`]): under
    /// autodiff, the reference the fused op is tested against.
    Tensor,
}

/// The model's shape: what a checkpoint's weights fix. A config file names it with flat keys
/// (`cell`, `lstm_size`, `num_layers`); the vocabulary's size comes from the text, so it sits
/// beside the shape in [`CharRnnConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ModelShape {
    /// The recurrent cell. A checkpoint whose model names none (or `null`) holds an LSTM.
    #[serde(deserialize_with = "cell_or_lstm")]
    pub cell: Cell,
    /// Units in each recurrent layer, whatever its cell (the notebook's `lstm_size`).
    pub lstm_size: usize,
    /// Stacked recurrent layers (the notebook's `num_layers`).
    pub num_layers: usize,
}

impl Default for ModelShape {
    /// The notebook's model: two LSTM layers of 512 units.
    fn default() -> Self {
        Self {
            cell: Cell::Lstm,
            lstm_size: 512,
            num_layers: 2,
        }
    }
}

impl std::fmt::Display for ModelShape {
    /// The shape in words, such as `2 LSTM layers x 512 units`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} layers x {} units",
            self.num_layers,
            self.cell.name().to_uppercase(),
            self.lstm_size
        )
    }
}

fn cell_or_lstm<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Cell, D::Error> {
    Ok(<Option<Cell> as serde::Deserialize>::deserialize(d)?.unwrap_or_default())
}

/// The notebook's `keep_prob`: each layer's output is kept with probability 0.5 in training.
/// The one default, for [`CharRnnConfig::new`] and a run's config.
pub const DEFAULT_KEEP_PROB: f64 = 0.5;

/// Everything needed to build an untrained [`CharRnn`]: the vocabulary's size, the shape, and
/// the training setting the model carries (dropout). Serialized flat, as checkpoints hold it:
/// `vocab_size`, `cell`, `lstm_size`, `num_layers`, `keep_prob`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CharRnnConfig {
    /// Number of distinct characters (input and output size).
    pub vocab_size: usize,
    /// Cell, units and layers.
    #[serde(flatten)]
    pub shape: ModelShape,
    /// Probability of keeping each layer's output in training (the notebook's `keep_prob`).
    pub keep_prob: f64,
}

/// One recurrent layer's parameters, gates fused: the cell's gate blocks side by side (`G` of
/// them, [`Cell::gates`]: LSTM i, f, g, o; GRU r, z, n; RNN one).
///
/// Two bias vectors, as PyTorch and Burn's `nn::Lstm` have them (TensorFlow has one): the model
/// then has exactly the parameters of the PyTorch peer we measure against, 3,366,483 for the
/// notebook's sizes. For the LSTM and the RNN only their sum matters to the maths; the GRU uses
/// `b_hh`'s n block inside the reset product.
#[derive(Module, Debug)]
pub struct RnnLayer<B: Backend> {
    /// Input weights `[input, G·H]`; for the first layer a row per character (one-hot input).
    pub w_ih: Param<Tensor<B, 2>>,
    /// Recurrent weights `[H, G·H]`.
    pub w_hh: Param<Tensor<B, 2>>,
    /// Input bias `[G·H]`.
    pub b_ih: Param<Tensor<B, 1>>,
    /// Recurrent bias `[G·H]`.
    pub b_hh: Param<Tensor<B, 1>>,
}

/// The recurrent state of every layer: `h` and `c`, each `[num_layers, batch, lstm_size]`.
/// The GRU and the RNN have no cell state: their `c` is zeros and passes through unchanged.
#[derive(Clone, Debug)]
pub struct RnnState<B: Backend> {
    /// Hidden states.
    pub h: Tensor<B, 3>,
    /// LSTM cell states (zeros for the other cells).
    pub c: Tensor<B, 3>,
}

impl<B: Backend> RnnState<B> {
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

/// The notebook's model: one-hot characters → `num_layers` stacked recurrent layers of
/// `lstm_size` (LSTM, GRU or RNN), dropout on each layer's output (training only) → linear to
/// the vocabulary (logits). The cell is not stored: the weights' width says it
/// ([`CharRnn::cell`]).
#[derive(Module, Debug)]
pub struct CharRnn<B: Backend> {
    /// The recurrent layers, bottom first.
    pub layers: Vec<RnnLayer<B>>,
    /// Hidden size to vocabulary logits.
    pub output: Linear<B>,
    /// Probability of keeping each recurrent layer's output in training.
    pub keep_prob: f64,
    /// How the model's dense products run on a GPU. Not part of a checkpoint: whoever builds
    /// or loads the model sets it ([`CharRnn::with_matmul`]); [`Matmul::Tf32`] unless
    /// set.
    pub matmul: Matmul,
}

impl CharRnnConfig {
    /// The notebook's model ([`ModelShape::default`], [`DEFAULT_KEEP_PROB`]) for `vocab_size`
    /// characters.
    pub fn new(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            shape: ModelShape::default(),
            keep_prob: DEFAULT_KEEP_PROB,
        }
    }

    /// The same with `lstm_size` units per layer.
    pub fn with_lstm_size(mut self, lstm_size: usize) -> Self {
        self.shape.lstm_size = lstm_size;
        self
    }

    /// The same with `num_layers` layers.
    pub fn with_num_layers(mut self, num_layers: usize) -> Self {
        self.shape.num_layers = num_layers;
        self
    }

    /// The same with `cell` in every layer.
    pub fn with_cell(mut self, cell: Cell) -> Self {
        self.shape.cell = cell;
        self
    }

    /// The same with `keep_prob`.
    pub fn with_keep_prob(mut self, keep_prob: f64) -> Self {
        self.keep_prob = keep_prob;
        self
    }

    /// Builds an untrained model, initialised as PyTorch does ([`Init::PyTorch`]).
    pub fn init<B: Backend>(&self, device: &B::Device) -> CharRnn<B> {
        self.init_with(Init::PyTorch, device)
    }

    /// The recurrent cell.
    pub fn cell(&self) -> Cell {
        self.shape.cell
    }

    /// Builds an untrained model with its weights drawn the way `init` says, from the
    /// backend's generator.
    ///
    /// Burn's initializers are lazy: each parameter draws its values when it is first read,
    /// so a model about to load a record draws nothing. That generator is global to the
    /// process, so what a parameter gets depends on every draw made before it, on any thread;
    /// a run that must be reproducible uses [`CharRnnConfig::init_seeded`].
    pub fn init_with<B: Backend>(&self, init: Init, device: &B::Device) -> CharRnn<B> {
        self.build(init, &mut Draws::Backend, device)
    }

    /// [`CharRnnConfig::init_with`], with every value drawn at once from a generator of its
    /// own seeded with `seed`: the same weights for the same seed whatever other threads draw
    /// (the training run's initialisation).
    pub fn init_seeded<B: Backend>(&self, init: Init, seed: u64, device: &B::Device) -> CharRnn<B> {
        self.build(
            init,
            &mut Draws::Host(Box::new(StdRng::seed_from_u64(seed))),
            device,
        )
    }

    fn build<B: Backend>(&self, init: Init, draws: &mut Draws, device: &B::Device) -> CharRnn<B> {
        let (h, v) = (self.shape.lstm_size, self.vocab_size);
        let cell = self.cell();
        let gh = cell.gates() * h;
        let torch = 1.0 / (h as f64).sqrt();
        let layers = (0..self.shape.num_layers)
            .map(|l| {
                let input = if l == 0 { v } else { h };
                match init {
                    Init::PyTorch => RnnLayer {
                        w_ih: draws.uniform([input, gh], torch, device),
                        w_hh: draws.uniform([h, gh], torch, device),
                        b_ih: draws.uniform([gh], torch, device),
                        b_hh: draws.uniform([gh], torch, device),
                    },
                    Init::TensorFlow => {
                        let glorot = (6.0 / (input + h + gh) as f64).sqrt();
                        // TensorFlow's cells start these gate blocks' bias at one: the LSTM's
                        // forget gate (block 1 of i, f, g, o) and the GRU's r and z (blocks 0
                        // and 1 of r, z, n); every other bias starts at zero.
                        let ones = match cell {
                            Cell::Lstm => [false, true, false, false].as_slice(),
                            Cell::Gru => &[true, true, false],
                            Cell::Rnn => &[false],
                        };
                        let blocks = ones
                            .iter()
                            .map(|&one| match one {
                                true => Tensor::ones([h], device),
                                false => Tensor::zeros([h], device),
                            })
                            .collect();
                        RnnLayer {
                            w_ih: draws.uniform([input, gh], glorot, device),
                            w_hh: draws.uniform([h, gh], glorot, device),
                            b_ih: Param::from_tensor(Tensor::cat(blocks, 0)),
                            b_hh: Initializer::Zeros.init([gh], device),
                        }
                    }
                }
            })
            .collect();
        // Burn's `Linear` default is PyTorch's: Kaiming-uniform with gain 1/√3 over fan-in H,
        // that is U(-1/√H, 1/√H) for the weight and the bias.
        let mut output = LinearConfig::new(h, v).init(device);
        match init {
            Init::PyTorch => {
                if let Draws::Host(_) = draws {
                    output.weight = draws.uniform([h, v], torch, device);
                    output.bias = Some(draws.uniform([v], torch, device));
                }
            }
            Init::TensorFlow => {
                output.weight = Param::from_tensor(draws.truncated_normal([h, v], 0.1, device));
                output.bias = Some(Initializer::Zeros.init([v], device));
            }
        }
        CharRnn {
            layers,
            output,
            keep_prob: self.keep_prob,
            matmul: Matmul::default(),
        }
    }

    /// Trainable parameters of the model this config builds: per layer `G·H·(input + H) + 2·G·H`
    /// (`G` gate blocks, [`Cell::gates`]), plus `H·V + V` for the output layer.
    pub fn num_params(&self) -> usize {
        let (v, h, g) = (self.vocab_size, self.shape.lstm_size, self.cell().gates());
        let recurrent: usize = (0..self.shape.num_layers)
            .map(|l| {
                let input = if l == 0 { v } else { h };
                g * h * (input + h) + 2 * g * h
            })
            .sum();
        recurrent + h * v + v
    }
}

impl<B: Backend> CharRnn<B> {
    /// The same model with its dense products run the way `matmul` says on a GPU.
    pub fn with_matmul(mut self, matmul: Matmul) -> Self {
        self.matmul = matmul;
        self
    }

    /// Units per recurrent layer.
    pub fn lstm_size(&self) -> usize {
        self.layers[0].w_hh.dims()[0]
    }

    /// The recurrent cell, read from the weights' width (`W_hh` is `[H, G·H]`).
    pub fn cell(&self) -> Cell {
        let [h, gh] = self.layers[0].w_hh.dims();
        Cell::from_gates(gh / h).expect("W_hh is [H, G·H] for a known cell")
    }

    /// The zero state for `batch` rows.
    pub fn zero_state(&self, batch: usize) -> RnnState<B> {
        let device = self.layers[0].w_hh.device();
        RnnState::zeros(self.layers.len(), batch, self.lstm_size(), &device)
    }

    /// This trained model (whose vocabulary is `old`) moved to the vocabulary `new`, for
    /// fine-tuning on a text with other characters: a character of both keeps its trained
    /// input row (`W_ih` of the first layer) and output column and bias; a character only in
    /// `new` takes its row and column from `fresh`, an untrained model of `new`'s size with the
    /// same shape. Every other weight is kept; the dropout rate and the products are `fresh`'s
    /// (the new run's).
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
        let mut layers: Vec<RnnLayer<B>> = self
            .layers
            .into_iter()
            .map(|l| RnnLayer {
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
            matmul: fresh.matmul,
        }
    }
}

impl<B: CellBackend> CharRnn<B> {
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
        state: Option<RnnState<B>>,
    ) -> (Tensor<B, 3>, RnnState<B>) {
        self.forward_with(tokens, state, Recurrence::Fused, DropoutSeed::Backend)
    }

    /// [`CharRnn::forward`] with each layer's recurrence computed the way `recurrence` says
    /// (the fused op, or Burn tensor ops step by step, to check the fused op against Burn's
    /// autodiff), and in training (on an autodiff backend) the dropout masks drawn from
    /// `dropout`.
    pub fn forward_with(
        &self,
        tokens: Tensor<B, 2, Int>,
        state: Option<RnnState<B>>,
        recurrence: Recurrence,
        dropout: DropoutSeed,
    ) -> (Tensor<B, 3>, RnnState<B>) {
        let [batch, steps] = tokens.dims();
        let state = state.unwrap_or_else(|| self.zero_state(batch));
        let (h, cell) = (self.lstm_size(), self.cell());
        let gh = cell.gates() * h;
        let (mut hs_out, mut cs_out) = (Vec::new(), Vec::new());
        let mut x: Option<Tensor<B, 3>> = None; // [steps, batch, H], the previous layer's output
        for (l, layer) in self.layers.iter().enumerate() {
            // The LSTM's op sees only the sum of the biases; the GRU's and the RNN's op adds
            // b_hh itself (the GRU needs it inside the reset product).
            let bias = match cell {
                Cell::Lstm => layer.b_ih.val() + layer.b_hh.val(),
                Cell::Gru | Cell::Rnn => layer.b_ih.val(),
            };
            let xp = match x {
                // One-hot input times W_ih is a row lookup. [steps, batch, G·H]
                None => embedding(layer.w_ih.val(), tokens.clone().transpose()),
                Some(x) => dense(
                    x.reshape([steps * batch, h]),
                    layer.w_ih.val(),
                    None,
                    self.matmul,
                )
                .reshape([steps, batch, gh]),
            } + bias.reshape([1, 1, gh]);
            let h0 = state.h.clone().narrow(0, l, 1).reshape([batch, h]);
            let c0 = state.c.clone().narrow(0, l, 1).reshape([batch, h]);
            // The LSTM's op takes c0; the others' take b_hh and leave c as it was.
            let inputs = SequenceInputs {
                xp,
                w_hh: layer.w_hh.val(),
                b_hh: (cell != Cell::Lstm).then(|| layer.b_hh.val()),
                h0,
                c0: (cell == Cell::Lstm).then(|| c0.clone()),
            };
            let (hs, c_last) = match recurrence {
                Recurrence::Fused => sequence(cell, inputs, self.matmul),
                Recurrence::Tensor => {
                    let (hs, c, _) = tensor_forward(cell, inputs);
                    (hs, c)
                }
            };
            let c_last = c_last.unwrap_or(c0);
            hs_out.push(hs.clone().narrow(0, steps - 1, 1).reshape([batch, h]));
            cs_out.push(c_last);
            x = Some(apply_dropout(hs, self.keep_prob, dropout, l));
        }
        let x = x.expect("at least one layer").reshape([steps * batch, h]);
        let vocab = self.output.weight.dims()[1];
        let bias = self.output.bias.as_ref().map(|b| b.val());
        let logits = dense(x, self.output.weight.val(), bias, self.matmul);
        let logits = logits.reshape([steps, batch, vocab]);
        let state = RnnState {
            h: Tensor::stack(hs_out, 0),
            c: Tensor::stack(cs_out, 0),
        };
        (logits, state)
    }
}

/// Where an untrained model's values come from.
enum Draws {
    /// The backend's generator, lazily (Burn's initializers).
    Backend,
    /// A generator of the model's own, at once.
    Host(Box<StdRng>),
}

impl Draws {
    /// A parameter of `shape` drawn from U(-bound, bound).
    fn uniform<B: Backend, const D: usize>(
        &mut self,
        shape: [usize; D],
        bound: f64,
        device: &B::Device,
    ) -> Param<Tensor<B, D>> {
        match self {
            Draws::Backend => Initializer::Uniform {
                min: -bound,
                max: bound,
            }
            .init(shape, device),
            Draws::Host(rng) => {
                let n = shape.iter().product();
                let values: Vec<f32> = (0..n)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect();
                Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), device))
            }
        }
    }

    /// TensorFlow's `truncated_normal`: N(0, std²), every value beyond two standard deviations
    /// drawn again.
    fn truncated_normal<B: Backend, const D: usize>(
        &mut self,
        shape: [usize; D],
        std: f64,
        device: &B::Device,
    ) -> Tensor<B, D> {
        let rng = match self {
            Draws::Backend => return truncated_normal(shape, std, device),
            Draws::Host(rng) => rng,
        };
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| loop {
                // Box-Muller: a standard normal from two uniforms.
                let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
                let x = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std;
                if x.abs() <= 2.0 * std {
                    break x as f32;
                }
            })
            .collect();
        Tensor::from_data(TensorData::new(values, shape), device)
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

/// Where a training forward's dropout masks come from ([`CharRnn::forward_with`]). Dropout
/// runs only on an autodiff backend; elsewhere this is not read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DropoutSeed {
    /// Each mask's seed is two uniform draws from the backend's generator (reproducible under
    /// `Backend::seed` when nothing else draws from it).
    #[default]
    Backend,
    /// Layer `l`'s mask seed is value `l + 1` of a SplitMix64 sequence from this seed, so the
    /// masks follow the seed whatever other threads draw. The training loop gives each
    /// iteration its own, so that a resumed run draws exactly the masks the uninterrupted run
    /// drew: the backend's generator is global to the process, and a draw on any other thread
    /// (Burn's and burn-train's own, a test's) would otherwise shift every later mask.
    Seeded(u64),
    /// [`DropoutSeed::Seeded`] for a share of a batch's rows: the masks of the whole batch of
    /// `total` rows, cut to the `first` row onward (as many rows as this forward has). The
    /// processes of a data-parallel run, each with its own rows, together draw exactly the
    /// masks one process draws for the whole batch.
    SeededRows {
        /// The iteration's seed, as for [`DropoutSeed::Seeded`].
        seed: u64,
        /// The first of this forward's rows in the whole batch.
        first: usize,
        /// The rows of the whole batch.
        total: usize,
    },
}

impl DropoutSeed {
    /// The seed of layer `layer`'s dropout mask (the mask is [`karnna_kernels::dropout_mask`]
    /// of it), drawn on `device` for [`DropoutSeed::Backend`].
    pub fn layer_seed<B: Backend>(self, layer: usize, device: &B::Device) -> u64 {
        if let DropoutSeed::Seeded(seed) | DropoutSeed::SeededRows { seed, .. } = self {
            let state = (layer as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut z = seed.wrapping_add(state);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            return z ^ (z >> 31);
        }
        let bits = to_f32_vec(Tensor::<B, 1>::random(
            [2],
            Distribution::Uniform(0.0, 1.0),
            device,
        ));
        ((bits[0].to_bits() as u64) << 32) | bits[1].to_bits() as u64
    }
}

/// Dropout on recurrent layer `layer`'s output, in training only (on an autodiff backend): each
/// value is kept with probability `keep_prob` and scaled by `1 / keep_prob`, or zeroed.
///
/// The mask is [`karnna_kernels::dropout_mask`] (a counter-based hash of the seed and each
/// element's index) of the layer's seed from `seeds` ([`DropoutSeed::layer_seed`]). The
/// backend draws it ([`CellBackend::dropout_mask`]): the CPU backends on the host, 16 lanes at
/// a time; the GPU backends on the device, bit for bit the same, so no mask crosses to the
/// device. (Burn's `Dropout` draws every Bernoulli sample through its generic sampler.)
fn apply_dropout<B: CellBackend, const D: usize>(
    x: Tensor<B, D>,
    keep_prob: f64,
    seeds: DropoutSeed,
    layer: usize,
) -> Tensor<B, D> {
    let device = x.device();
    if keep_prob >= 1.0 || !B::ad_enabled(&device) {
        return x;
    }
    let seed = seeds.layer_seed::<B>(layer, &device);
    let shape = x.shape();
    if let DropoutSeed::SeededRows { first, total, .. } = seeds {
        // The whole batch's mask (dimension 1 is the batch: `[steps, batch, H]`), cut to
        // this forward's rows.
        let rows = shape[1];
        let mut whole = shape.clone();
        whole[1] = total;
        let mask = B::dropout_mask(seed, keep_prob, whole, &device);
        let mask = Tensor::<B, D>::from_primitive(TensorPrimitive::Float(mask));
        return x * mask.narrow(1, first, rows);
    }
    let mask = B::dropout_mask(seed, keep_prob, shape, &device);
    x * Tensor::from_primitive(TensorPrimitive::Float(mask))
}
