//! The model against its promises: shapes, carried state, dropout, parameter count, and the
//! fused ops of every cell (forward and all gradients) against Burn's own step-by-step autodiff.

use burn::backend::{Autodiff, Flex, NdArray};
use burn::module::{AutodiffModule, Module};
use burn::prelude::*;
use burn::tensor::{Distribution, Tolerance};
use karnna_model::ops::reference::{tensor_backward, tensor_forward};
use karnna_model::ops::{sequence, SequenceInputs};
use karnna_model::{
    Cell, CellBackend, CellKernels, CharRnn, CharRnnConfig, DropoutSeed, Matmul, Recurrence,
    RnnState, StepState,
};

type B = Flex;
type AD = Autodiff<Flex>;

fn tokens<Bk: Backend>(
    batch: usize,
    steps: usize,
    vocab: usize,
    device: &Bk::Device,
) -> Tensor<Bk, 2, Int> {
    let ids: Vec<i64> = (0..batch * steps)
        .map(|i| ((i * 7 + 3) % vocab) as i64)
        .collect();
    Tensor::<Bk, 1, Int>::from_ints(ids.as_slice(), device).reshape([batch, steps])
}

#[test]
fn notebook_parameter_count() {
    // Two bias vectors per layer (PyTorch style): 3,366,483. TensorFlow's one bias: 3,362,387.
    let config = CharRnnConfig::new(83);
    assert_eq!(config.num_params(), 3_366_483);
    assert_eq!(config.num_params() - 2 * 4 * 512, 3_362_387);
    let device = Default::default();
    for cell in Cell::ALL {
        let small = CharRnnConfig::new(11)
            .with_lstm_size(8)
            .with_num_layers(3)
            .with_cell(cell);
        let model = small.init::<B>(&device);
        assert_eq!(model.num_params(), small.num_params(), "{cell}");
        assert_eq!(model.cell(), cell);
    }
    // PyTorch's nn.GRU and nn.RNN at the notebook's sizes: G·H·(input + H) + 2·G·H per layer.
    let gru = CharRnnConfig::new(83).with_cell(Cell::Gru);
    assert_eq!(gru.num_params(), 916_992 + 1_575_936 + 42_579);
    let rnn = CharRnnConfig::new(83).with_cell(Cell::Rnn);
    assert_eq!(rnn.num_params(), 305_664 + 525_312 + 42_579);
}

#[test]
fn a_config_without_a_cell_is_the_lstm() {
    // A checkpoint's model config may name no cell, or a `null` one: both are the LSTM.
    let old = r#"{"vocab_size": 5, "lstm_size": 4, "num_layers": 1, "keep_prob": 0.5}"#;
    let config: CharRnnConfig = serde_json::from_str(old).unwrap();
    assert_eq!(config.cell(), Cell::Lstm);
    assert_eq!(
        config,
        CharRnnConfig::new(5).with_lstm_size(4).with_num_layers(1)
    );
    let null: CharRnnConfig =
        serde_json::from_str(&old.replace('}', r#", "cell": null}"#)).unwrap();
    assert_eq!(null, config);
    let gru: CharRnnConfig =
        serde_json::from_str(&old.replace('}', r#", "cell": "gru"}"#)).unwrap();
    assert_eq!(gru.cell(), Cell::Gru);
    let back: CharRnnConfig = serde_json::from_str(&serde_json::to_string(&gru).unwrap()).unwrap();
    assert_eq!(back, gru);
    assert_eq!("rnn".parse::<Cell>(), Ok(Cell::Rnn));
    assert!("lstmx"
        .parse::<Cell>()
        .unwrap_err()
        .contains("lstm, gru or rnn"));
}

#[test]
fn output_shapes() {
    let device = Default::default();
    for cell in Cell::ALL {
        let model = CharRnnConfig::new(13)
            .with_lstm_size(6)
            .with_num_layers(3)
            .with_cell(cell)
            .init::<B>(&device);
        let (logits, state) = model.forward(tokens::<B>(4, 5, 13, &device), None);
        assert_eq!(logits.dims(), [5, 4, 13]);
        assert_eq!(state.h.dims(), [3, 4, 6]);
        assert_eq!(state.c.dims(), [3, 4, 6]);
        if cell != Cell::Lstm {
            // No cell state: c stays zero.
            assert_eq!(state.c.abs().max().into_scalar(), 0.0, "{cell}");
        }
    }
}

fn whole_equals_halves<Bk: CellBackend>() {
    for cell in Cell::ALL {
        whole_equals_halves_of::<Bk>(cell);
    }
}

fn whole_equals_halves_of<Bk: CellBackend>(cell: Cell) {
    let device = Default::default();
    let model = CharRnnConfig::new(10)
        .with_lstm_size(7)
        .with_num_layers(2)
        .with_cell(cell)
        .init::<Bk>(&device);
    let x = tokens::<Bk>(3, 8, 10, &device);
    let (whole, s_whole) = model.forward(x.clone(), None);
    let (a, s) = model.forward(x.clone().narrow(1, 0, 5), None);
    let (b, s_halves) = model.forward(x.narrow(1, 5, 3), Some(s));
    let halves = Tensor::cat(vec![a, b], 0);
    whole
        .into_data()
        .assert_approx_eq::<f32>(&halves.into_data(), Tolerance::default());
    s_whole
        .h
        .into_data()
        .assert_approx_eq::<f32>(&s_halves.h.into_data(), Tolerance::default());
    s_whole
        .c
        .into_data()
        .assert_approx_eq::<f32>(&s_halves.c.into_data(), Tolerance::default());
}

/// [`CharRnn::step`], one character at a time for three rows, against [`CharRnn::forward`] over
/// the same characters one at a time from the same state: bit for bit, for every cell (three
/// layers, so that a layer reads the one below).
fn a_step_is_forward_over_one_character<Bk: CellBackend>() {
    let device = Default::default();
    for cell in Cell::ALL {
        let model = CharRnnConfig::new(10)
            .with_lstm_size(7)
            .with_num_layers(3)
            .with_cell(cell)
            .init::<Bk>(&device);
        let x = tokens::<Bk>(3, 6, 10, &device);
        let ids: Vec<Vec<u32>> = (0..6)
            .map(|t| {
                let column = x.clone().narrow(1, t, 1).into_data();
                column.iter::<i64>().map(|id| id as u32).collect()
            })
            .collect();
        let mut stepped = StepState::zeros(&model, 3);
        let mut state = None;
        let mut last = None;
        for (t, ids) in ids.iter().enumerate() {
            let logits = model.step(ids, &mut stepped).into_data();
            let (expected, next) = model.forward(x.clone().narrow(1, t, 1), state.take());
            assert_eq!(
                logits.to_vec::<f32>().unwrap(),
                expected.into_data().to_vec::<f32>().unwrap(),
                "{cell}, step {t}"
            );
            state = Some(next);
            last = Some(logits);
        }
        // The state carried: the last step's logits are those of all six characters at once
        // (to rounding: the sequence runs its products over several steps at a time).
        let (whole, _) = model.forward(x, None);
        let whole = whole.narrow(0, 5, 1).reshape([3, 10]).into_data();
        whole.assert_approx_eq::<f32>(&last.unwrap(), Tolerance::default());
    }
}

/// One test of each named function on each CPU backend, as `name::flex` and `name::ndarray`.
macro_rules! on_cpu_backends {
    ($($name:ident => $f:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[test]
            fn flex() {
                $f::<Flex>();
            }
            #[test]
            fn ndarray() {
                $f::<NdArray>();
            }
        }
    )*};
}

on_cpu_backends! {
    carried_state_equals_one_pass => whole_equals_halves,
    a_step_equals_forward => a_step_is_forward_over_one_character,
    gru_and_rnn_ops_match_step_by_step_autodiff => gru_and_rnn_fused_match_reference,
}

#[test]
fn dropout_only_in_training() {
    let device = Default::default();
    let model = CharRnnConfig::new(9)
        .with_lstm_size(16)
        .with_keep_prob(0.5)
        .init::<AD>(&device);
    let x = tokens::<AD>(2, 6, 9, &device);
    // Inference (no autodiff): deterministic, equal to the training model's weights run plainly.
    let valid = model.valid();
    let (a, _) = valid.forward(tokens::<B>(2, 6, 9, &device), None);
    let (b, _) = valid.forward(tokens::<B>(2, 6, 9, &device), None);
    a.clone().into_data().assert_eq(&b.into_data(), true);
    // Training: dropout changes the output.
    let (t, _) = model.forward(x, None);
    let diff = (t.inner() - a).abs().max().into_scalar();
    assert!(diff > 1e-4, "dropout had no effect in training");
}

/// The dropout seed is an argument of each forward, not a setting of the thread or the
/// process: two models trained side by side (one on another thread, with other seeds, and
/// drawing from the backend's generator in between) each get exactly the masks their own seed
/// gives, and a seeded mask is `dropout_mask` of [`DropoutSeed::layer_seed`].
#[test]
fn dropout_masks_follow_each_forwards_own_seed() {
    let device = Default::default();
    let config = CharRnnConfig::new(9).with_lstm_size(16).with_keep_prob(0.5);
    let (a, b) = (config.init::<AD>(&device), config.init::<AD>(&device));
    let run = |model: &CharRnn<AD>, seed: DropoutSeed| {
        let x = tokens::<AD>(2, 6, 9, &Default::default());
        let (logits, _) = model.forward_with(x, None, Recurrence::Fused, seed);
        logits.inner().into_data()
    };
    let alone = run(&a, DropoutSeed::Seeded(7));
    let other = std::thread::scope(|s| {
        let b = s.spawn(|| {
            (0..3)
                .map(|i| run(&b, DropoutSeed::Seeded(100 + i)))
                .collect::<Vec<_>>()
        });
        let _ = run(&a, DropoutSeed::Backend);
        let again = run(&a, DropoutSeed::Seeded(7));
        alone.assert_eq(&again, true);
        b.join().unwrap()
    });
    assert_ne!(other[0], other[1], "different seeds, different masks");
    assert_eq!(other[0], run(&b, DropoutSeed::Seeded(100)));
    assert_ne!(alone, run(&a, DropoutSeed::Seeded(8)));
    // SplitMix64's values 1 and 2 from seed 0 (layer 0 and layer 1).
    let seeds = [0, 1].map(|l| DropoutSeed::Seeded(0).layer_seed::<B>(l, &device));
    assert_eq!(seeds, [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4]);
}

/// The fused op's output and gradients (xp, W_hh, h0, c0) against Burn differentiating the
/// step-by-step recurrence op by op.
fn fused_matches_reference(t: usize, b: usize, h: usize, with_state: bool) {
    let device = Default::default();
    let rand = |shape: Vec<usize>| {
        Tensor::<B, 1>::random(
            [shape.iter().product::<usize>()],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        )
    };
    let xp = rand(vec![t, b, 4 * h]).reshape([t, b, 4 * h]);
    let w = rand(vec![h, 4 * h]).reshape([h, 4 * h]);
    let (h0, c0) = if with_state {
        (
            rand(vec![b, h]).reshape([b, h]),
            rand(vec![b, h]).reshape([b, h]),
        )
    } else {
        (
            Tensor::zeros([b, h], &device),
            Tensor::zeros([b, h], &device),
        )
    };
    let weights = rand(vec![t, b, h]).reshape([t, b, h]); // L = Σ hs ⊙ weights

    let run = |fused: bool| {
        let leaf = |x: &Tensor<B, 3>| Tensor::<AD, 3>::from_inner(x.clone()).require_grad();
        let leaf2 = |x: &Tensor<B, 2>| Tensor::<AD, 2>::from_inner(x.clone()).require_grad();
        let (xp, w, h0, c0) = (leaf(&xp), leaf2(&w), leaf2(&h0), leaf2(&c0));
        let inputs = SequenceInputs {
            xp: xp.clone(),
            w_hh: w.clone(),
            b_hh: None,
            h0: h0.clone(),
            c0: Some(c0.clone()),
        };
        let (hs, c_last) = if fused {
            sequence(Cell::Lstm, inputs, Matmul::Tf32)
        } else {
            let (hs, c, _) = tensor_forward(Cell::Lstm, inputs);
            (hs, c)
        };
        let c_last = c_last.expect("the LSTM's c_T");
        let loss = (hs.clone() * Tensor::from_inner(weights.clone())).sum();
        let grads = loss.backward();
        (
            hs.inner(),
            c_last.inner(),
            xp.grad(&grads).unwrap(),
            w.grad(&grads).unwrap(),
            h0.grad(&grads).unwrap(),
            c0.grad(&grads).unwrap(),
        )
    };
    let f = run(true);
    let r = run(false);
    let tol = Tolerance::absolute(1e-4);
    f.0.into_data()
        .assert_approx_eq::<f32>(&r.0.into_data(), tol);
    f.1.into_data()
        .assert_approx_eq::<f32>(&r.1.into_data(), tol);
    f.2.into_data()
        .assert_approx_eq::<f32>(&r.2.into_data(), tol);
    f.3.into_data()
        .assert_approx_eq::<f32>(&r.3.into_data(), tol);
    f.4.into_data()
        .assert_approx_eq::<f32>(&r.4.into_data(), tol);
    f.5.into_data()
        .assert_approx_eq::<f32>(&r.5.into_data(), tol);
}

#[test]
fn fused_op_gradients_match_step_by_step_autodiff() {
    for &(t, b, h, s) in &[
        (1, 1, 1, false),
        (3, 2, 4, true),
        (7, 5, 9, true),
        (5, 3, 6, false),
        (2, 4, 3, true),
    ] {
        fused_matches_reference(t, b, h, s);
    }
}

#[test]
fn state_helpers() {
    let device = Default::default();
    let s = RnnState::<AD>::zeros(2, 3, 4, &device).detach();
    assert_eq!(s.h.dims(), [2, 3, 4]);
}

/// Every parameter gradient of whole models of every cell (1 to 3 layers, with and without a
/// starting state)
/// through the fused op equals Burn's step-by-step autodiff through the same model.
#[test]
fn model_gradients_match_step_by_step_autodiff() {
    use burn::module::{ModuleVisitor, Param};
    struct Grads<'a>(
        &'a <AD as burn::tensor::backend::AutodiffBackend>::Gradients,
        Vec<Vec<f32>>,
    );
    impl ModuleVisitor<AD> for Grads<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<AD, D>>) {
            self.1.push(
                p.val()
                    .grad(self.0)
                    .unwrap()
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap(),
            );
        }
    }
    let device = Default::default();
    let cases = Cell::ALL
        .into_iter()
        .flat_map(|cell| [(cell, 1, false), (cell, 2, true), (cell, 3, true)]);
    for (cell, layers, with_state) in cases {
        // No dropout, so both passes see the same network.
        let model = CharRnnConfig::new(9)
            .with_lstm_size(6)
            .with_num_layers(layers)
            .with_keep_prob(1.0)
            .with_cell(cell)
            .init::<AD>(&device);
        let state = with_state.then(|| RnnState {
            h: Tensor::random([layers, 3, 6], Distribution::Uniform(-0.5, 0.5), &device),
            c: Tensor::random([layers, 3, 6], Distribution::Uniform(-0.5, 0.5), &device),
        });
        let grads = |fused: bool| {
            let x = tokens::<AD>(3, 5, 9, &device);
            let (logits, _) = if fused {
                model.forward(x, state.clone())
            } else {
                let dropout = DropoutSeed::Backend;
                model.forward_with(x, state.clone(), Recurrence::Tensor, dropout)
            };
            let g = (logits.clone() * logits).sum().backward();
            let mut v = Grads(&g, Vec::new());
            model.visit(&mut v);
            v.1
        };
        let (f, r) = (grads(true), grads(false));
        assert_eq!(f.len(), r.len());
        for (a, b) in f.iter().zip(&r) {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() < 1e-4 * (1.0 + y.abs()),
                    "{cell}, {layers} layers: {x} vs {y}"
                );
            }
        }
    }
}

/// Every parameter's gradient of `Σ logits²` for a model of `cell` whose products are `matmul`.
fn gradients<Bk: CellKernels>(cell: Cell, matmul: Matmul) -> Vec<Vec<f32>> {
    use burn::module::{ModuleVisitor, Param};
    type Ad<Bk> = Autodiff<Bk>;
    struct Grads<'a, Bk: CellKernels>(
        &'a <Ad<Bk> as burn::tensor::backend::AutodiffBackend>::Gradients,
        Vec<Vec<f32>>,
    );
    impl<Bk: CellKernels> ModuleVisitor<Ad<Bk>> for Grads<'_, Bk> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Ad<Bk>, D>>) {
            let g = p.val().grad(self.0).unwrap();
            self.1
                .push(g.into_data().convert::<f32>().to_vec::<f32>().unwrap());
        }
    }
    let device = Default::default();
    let model = CharRnnConfig::new(11)
        .with_lstm_size(40)
        .with_num_layers(2)
        .with_keep_prob(1.0)
        .with_cell(cell)
        .init_seeded::<Ad<Bk>>(karnna_model::Init::PyTorch, 5, &device)
        .with_matmul(matmul);
    let (logits, _) = model.forward(tokens::<Ad<Bk>>(20, 6, 11, &device), None);
    let g = (logits.clone() * logits).sum().backward();
    let mut v = Grads::<Bk>(&g, Vec::new());
    model.visit(&mut v);
    v.1
}

/// bf16 training's products (`Matmul::Bf16`: `VDPBF16PS` where the CPU has it, the f32 products
/// on rounded operands elsewhere) against f32, through the whole model: every parameter's
/// gradient within 2e-2 of f32's in norm. Each product's terms carry their operands' rounding,
/// at most `2⁻⁷` of each term, and the gradient sums them through two layers, six steps and the
/// output layer, mostly at random; measured (2026-12-07, Zen 4): at most 4.1e-3 (the RNN's). On
/// burn-flex (operands read in place, transposed views included) and burn-ndarray (through
/// copies).
#[test]
fn bf16_gradients_stay_near_f32s() {
    fn check<Bk: CellKernels>(name: &str) {
        for cell in Cell::ALL {
            let (f, b) = (
                gradients::<Bk>(cell, Matmul::Tf32),
                gradients::<Bk>(cell, Matmul::Bf16),
            );
            assert_eq!(f.len(), b.len());
            for (i, (f, b)) in f.iter().zip(&b).enumerate() {
                let norm = f.iter().map(|x| x * x).sum::<f32>().sqrt();
                let diff = f
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y) * (x - y))
                    .sum::<f32>()
                    .sqrt();
                assert!(
                    diff <= 2e-2 * norm,
                    "{name} {cell} parameter {i}: {diff} of {norm}"
                );
                assert!(
                    diff > 0.0,
                    "{name} {cell} parameter {i}: bf16 changed nothing"
                );
            }
        }
    }
    check::<Flex>("flex");
    check::<NdArray>("ndarray");
}

/// Mean, standard deviation and largest magnitude of a parameter's values.
fn stats<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> (f64, f64, f64) {
    let v = karnna_model::to_f32_vec(t);
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let max = v.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    (mean, var.sqrt(), max)
}

#[test]
fn initialisations_draw_what_they_say() {
    let device = Default::default();
    B::seed(&device, 7);
    // The lazy draws from the backend's generator (a model about to load a record) and the
    // seeded draws of a training run must follow the same distributions.
    // The notebook's model: 83 characters, 2 x 512.
    let config = CharRnnConfig::new(83)
        .with_lstm_size(512)
        .with_num_layers(2);
    check_initialisations(|init| config.init_with::<B>(init, &device));
    check_initialisations(|init| config.init_seeded::<B>(init, 42, &device));
}

/// The statistics of every parameter of the notebook's model as `build` draws it, for both
/// initialisations: each tensor's bound, mean and standard deviation, and the bias blocks.
fn check_initialisations(build: impl Fn(karnna_model::Init) -> CharRnn<B>) {
    use karnna_model::Init;
    let (v, h) = (83, 512);
    // PyTorch: every LSTM tensor U(-1/√H, 1/√H): mean 0, std bound/√3, max just under bound.
    let torch = build(Init::PyTorch);
    let bound = 1.0 / (h as f64).sqrt();
    for layer in &torch.layers {
        for (mean, std, max) in [stats(layer.w_ih.val()), stats(layer.w_hh.val())] {
            assert!(mean.abs() < 0.002, "{mean}");
            assert!((std / (bound / 3f64.sqrt()) - 1.0).abs() < 0.02, "{std}");
            assert!(max <= bound && max > 0.99 * bound, "{max}");
        }
        let (mean, _, max) = stats(layer.b_ih.val() + layer.b_hh.val());
        assert!(mean.abs() < 0.01 && max <= 2.0 * bound);
    }
    let (_, std, max) = stats(torch.output.weight.val());
    assert!((std / (bound / 3f64.sqrt()) - 1.0).abs() < 0.03, "{std}");
    assert!(max <= bound);

    // TensorFlow: Glorot-uniform over the stacked [input + H, 4H] kernel, so both halves of a
    // layer share the bound √(6 / (input + 5H)): 0.0476 for layer 1, 0.0442 for layer 2.
    let tf = build(Init::TensorFlow);
    for (l, layer) in tf.layers.iter().enumerate() {
        let input = if l == 0 { v } else { h };
        let glorot = (6.0 / (input + 5 * h) as f64).sqrt();
        for (mean, std, max) in [stats(layer.w_ih.val()), stats(layer.w_hh.val())] {
            assert!(mean.abs() < 0.001, "{mean}");
            assert!((std / (glorot / 3f64.sqrt()) - 1.0).abs() < 0.02, "{std}");
            assert!(max <= glorot && max > 0.99 * glorot, "{max}");
        }
        // One bias in effect: 1.0 on the forget gate (block 1 of i, f, g, o), 0 elsewhere.
        let bias = karnna_model::to_f32_vec(layer.b_ih.val() + layer.b_hh.val());
        for (j, b) in bias.iter().enumerate() {
            let want = if (h..2 * h).contains(&j) { 1.0 } else { 0.0 };
            assert_eq!(*b, want, "bias {j}");
        }
    }
    assert!((0.0476..0.0477).contains(&(6.0 / (v + 5 * h) as f64).sqrt()));
    // Softmax weights: truncated_normal(stddev 0.1): nothing beyond 0.2, and the standard
    // deviation of a normal cut at ±2σ, 0.1 × 0.8796; a zero bias.
    let (mean, std, max) = stats(tf.output.weight.val());
    assert!(mean.abs() < 0.002, "{mean}");
    assert!(max <= 0.2 && max > 0.19, "{max}");
    assert!((std / 0.08796 - 1.0).abs() < 0.02, "{std}");
    let (_, _, bias_max) = stats(tf.output.bias.as_ref().unwrap().val());
    assert_eq!(bias_max, 0.0);
    // The same number of parameters either way.
    assert_eq!(tf.num_params(), torch.num_params());
}

/// Every value of every parameter, in the module's order.
fn all_weights(model: &CharRnn<B>) -> Vec<f32> {
    let mut all = Vec::new();
    for l in &model.layers {
        for t in [l.w_ih.val(), l.w_hh.val()] {
            all.extend(karnna_model::to_f32_vec(t));
        }
        for t in [l.b_ih.val(), l.b_hh.val()] {
            all.extend(karnna_model::to_f32_vec(t));
        }
    }
    all.extend(karnna_model::to_f32_vec(model.output.weight.val()));
    all
}

#[test]
fn a_seeded_model_and_its_clones_hold_the_same_weights() {
    // A lazily initialised parameter draws its values when first read, and a clone taken
    // before then draws values of its own (Burn's `Param::clone`); the training loop reads its
    // model through `Learner::model()`, a clone, every iteration. A seeded model is drawn whole
    // when it is built, so its clones and another model of the same seed hold its weights.
    use karnna_model::Init;
    let device = Default::default();
    let config = CharRnnConfig::new(11).with_lstm_size(8).with_num_layers(2);
    for init in [Init::PyTorch, Init::TensorFlow] {
        let model = config.init_seeded::<B>(init, 5, &device);
        let clone = model.clone();
        let again = config.init_seeded::<B>(init, 5, &device);
        let weights = all_weights(&clone);
        assert_eq!(weights, all_weights(&model), "{init:?}: a clone differs");
        assert_eq!(
            weights,
            all_weights(&again),
            "{init:?}: the same seed differs"
        );
        let other = config.init_seeded::<B>(init, 6, &device);
        assert_ne!(
            weights,
            all_weights(&other),
            "{init:?}: another seed is the same"
        );
    }
}

#[test]
fn a_new_vocabulary_keeps_trained_rows_and_takes_fresh_ones_for_new_characters() {
    use karnna_data::Vocab;
    type B = burn::backend::Flex;
    let device = Default::default();
    let old = Vocab::from_text("acd");
    let new = Vocab::from_text("abcde");
    let trained = CharRnnConfig::new(3).with_lstm_size(4).init::<B>(&device);
    let fresh = CharRnnConfig::new(5)
        .with_lstm_size(4)
        .with_keep_prob(0.9)
        .init::<B>(&device);
    let rows = |t: burn::tensor::Tensor<B, 2>| -> Vec<Vec<f32>> {
        let [r, c] = t.dims();
        let v = t.into_data().to_vec::<f32>().unwrap();
        (0..r).map(|i| v[i * c..(i + 1) * c].to_vec()).collect()
    };
    let bias = |m: &CharRnn<B>| {
        m.output
            .bias
            .as_ref()
            .unwrap()
            .val()
            .to_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let (t_in, f_in) = (
        rows(trained.layers[0].w_ih.val()),
        rows(fresh.layers[0].w_ih.val()),
    );
    let (t_out, f_out) = (
        rows(trained.output.weight.val().transpose()),
        rows(fresh.output.weight.val().transpose()),
    );
    let t_bias = bias(&trained);
    let f_bias = bias(&fresh);
    let t_hh = trained.layers[1].w_hh.val().into_data();
    let moved = trained.with_vocab(&old, &new, fresh);
    let m_in = rows(moved.layers[0].w_ih.val());
    let m_out = rows(moved.output.weight.val().transpose());
    let m_bias = bias(&moved);
    // a b c d e: a, c, d were trained (ids 0, 1, 2 in "acd"); b and e are new (ids 1, 4).
    let source = [(0, true), (1, false), (1, true), (2, true), (4, false)];
    for (j, (i, kept)) in source.into_iter().enumerate() {
        let (w, o, b) = if kept {
            (&t_in, &t_out, &t_bias)
        } else {
            (&f_in, &f_out, &f_bias)
        };
        assert_eq!(m_in[j], w[i], "input row of {}", new.char(j as u32));
        assert_eq!(m_out[j], o[i], "output column of {}", new.char(j as u32));
        assert_eq!(m_bias[j], b[i], "bias of {}", new.char(j as u32));
    }
    // The rest of the trained model is kept; the dropout rate is the new run's.
    assert_eq!(moved.layers[1].w_hh.val().into_data(), t_hh);
    assert_eq!(moved.keep_prob, 0.9);
}

/// `[hs, dxp, dW_hh, db_hh, dh0]` of an h-cell's sequence under autodiff on `Bk`, through the
/// fused op or through Burn differentiating the step-by-step tensor ops, for `L = Σ hs ⊙ r`.
fn gru_or_rnn_results<Bk: CellKernels>(
    cell: Cell,
    inputs: &[Vec<f32>; 5],
    [t, b, h]: [usize; 3],
    fused: bool,
) -> Vec<Vec<f32>> {
    type A<Bk> = Autodiff<Bk>;
    let device = Default::default();
    let gh = cell.gates() * h;
    fn leaf<X: burn::tensor::backend::AutodiffBackend, const D: usize>(
        v: &[f32],
        shape: [usize; D],
    ) -> Tensor<X, D> {
        let data = burn::tensor::TensorData::new(v.to_vec(), shape);
        Tensor::from_data(data, &Default::default()).require_grad()
    }
    let xp = leaf::<A<Bk>, 3>(&inputs[0], [t, b, gh]);
    let w = leaf::<A<Bk>, 2>(&inputs[1], [h, gh]);
    let bias = leaf::<A<Bk>, 1>(&inputs[2], [gh]);
    let h0 = leaf::<A<Bk>, 2>(&inputs[3], [b, h]);
    let r = Tensor::<A<Bk>, 1>::from_floats(inputs[4].as_slice(), &device).reshape([t, b, h]);
    let (x, wc, bc, hc) = (xp.clone(), w.clone(), bias.clone(), h0.clone());
    let inputs = SequenceInputs {
        xp: x,
        w_hh: wc,
        b_hh: Some(bc),
        h0: hc,
        c0: None,
    };
    let hs = if fused {
        sequence(cell, inputs, Matmul::Tf32).0
    } else {
        tensor_forward(cell, inputs).0
    };
    let grads = (hs.clone() * r).sum().backward();
    vec![
        karnna_model::to_f32_vec(hs),
        karnna_model::to_f32_vec(xp.grad(&grads).unwrap()),
        karnna_model::to_f32_vec(w.grad(&grads).unwrap()),
        karnna_model::to_f32_vec(bias.grad(&grads).unwrap()),
        karnna_model::to_f32_vec(h0.grad(&grads).unwrap()),
    ]
}

/// The fused GRU and RNN ops on `Bk` (forward and the gradients of xp, W_hh, b_hh and h0)
/// against Burn differentiating the step-by-step recurrence op by op, over several shapes.
fn gru_and_rnn_fused_match_reference<Bk: CellKernels>() {
    let mut seed = 1u64;
    let mut rand = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    };
    for cell in [Cell::Gru, Cell::Rnn] {
        for (t, b, h) in [(1, 1, 1), (3, 2, 4), (7, 5, 9), (2, 4, 17), (5, 3, 6)] {
            let gh = cell.gates() * h;
            let inputs = [
                rand(t * b * gh, 1.0),
                rand(h * gh, 0.5),
                rand(gh, 0.5),
                rand(b * h, 0.8),
                rand(t * b * h, 1.0),
            ];
            let f = gru_or_rnn_results::<Bk>(cell, &inputs, [t, b, h], true);
            let r = gru_or_rnn_results::<Bk>(cell, &inputs, [t, b, h], false);
            for (name, (f, r)) in ["hs", "dxp", "dW_hh", "db_hh", "dh0"]
                .iter()
                .zip(f.iter().zip(&r))
            {
                assert_eq!(f.len(), r.len());
                for (k, (x, y)) in f.iter().zip(r).enumerate() {
                    assert!(
                        (x - y).abs() < 1e-4 * (1.0 + y.abs()),
                        "{cell:?} t={t} b={b} h={h} {name}[{k}]: fused {x}, reference {y}"
                    );
                }
            }
        }
    }
}

#[test]
fn tensor_backward_matches_step_by_step_autodiff() {
    // The tensor-op backward of every cell against autodiff, on the CPU.
    let device = Default::default();
    let (t, b, h) = (4, 3, 5);
    for cell in Cell::ALL {
        let gh = cell.gates() * h;
        let lstm = cell == Cell::Lstm;
        let r =
            |n: [usize; 3]| Tensor::<B, 3>::random(n, Distribution::Uniform(-1.0, 1.0), &device);
        let xp = r([t, b, gh]);
        let w = r([1, h, gh]).reshape([h, gh]);
        let bias = (!lstm).then(|| r([1, 1, gh]).reshape([gh]));
        let h0 = r([1, b, h]).reshape([b, h]);
        let c0 = lstm.then(|| r([1, b, h]).reshape([b, h]));
        let dhs = r([t, b, h]);
        let inputs = SequenceInputs {
            xp: xp.clone(),
            w_hh: w.clone(),
            b_hh: bias.clone(),
            h0: h0.clone(),
            c0: c0.clone(),
        };
        let (_, _, cache) = tensor_forward(cell, inputs);
        let grads = tensor_backward(cache, dhs.clone());

        let tracked = SequenceInputs::<AD> {
            xp: Tensor::from_inner(xp).require_grad(),
            w_hh: Tensor::from_inner(w).require_grad(),
            b_hh: bias.map(|x| Tensor::from_inner(x).require_grad()),
            h0: Tensor::from_inner(h0).require_grad(),
            c0: c0.map(|x| Tensor::from_inner(x).require_grad()),
        };
        let (hs, _, _) = tensor_forward(cell, tracked.clone());
        let auto = (hs * Tensor::from_inner(dhs)).sum().backward();
        type Grads = <AD as burn::tensor::backend::AutodiffBackend>::Gradients;
        fn check<const D: usize>(grad: Tensor<B, D>, leaf: &Tensor<AD, D>, auto: &Grads) {
            let auto = leaf.grad(auto).expect("a gradient");
            grad.into_data()
                .assert_approx_eq::<f32>(&auto.into_data(), Tolerance::absolute(1e-4));
        }
        check(grads.xp, &tracked.xp, &auto);
        check(grads.w_hh, &tracked.w_hh, &auto);
        check(grads.h0, &tracked.h0, &auto);
        assert_eq!(grads.b_hh.is_some(), !lstm, "{cell}: db_hh");
        if let (Some(db), Some(b_hh)) = (grads.b_hh, &tracked.b_hh) {
            check(db, b_hh, &auto);
        }
        assert_eq!(grads.c0.is_some(), lstm, "{cell}: dc0");
        if let (Some(dc0), Some(c0)) = (grads.c0, &tracked.c0) {
            check(dc0, c0, &auto);
        }
    }
}

#[test]
fn tensorflow_init_of_the_gru_and_rnn() {
    use karnna_model::Init;
    let device = Default::default();
    let h = 8;
    for (cell, ones) in [(Cell::Gru, 0..2 * h), (Cell::Rnn, 0..0)] {
        let config = CharRnnConfig::new(5).with_lstm_size(h).with_cell(cell);
        let model = config.init_with::<B>(Init::TensorFlow, &device);
        for layer in &model.layers {
            assert_eq!(layer.w_hh.dims(), [h, cell.gates() * h]);
            // TensorFlow's GRUCell starts its r and z gates' bias at one; the RNN's at zero.
            let bias = karnna_model::to_f32_vec(layer.b_ih.val() + layer.b_hh.val());
            for (j, b) in bias.iter().enumerate() {
                assert_eq!(
                    *b,
                    if ones.contains(&j) { 1.0 } else { 0.0 },
                    "{cell} bias {j}"
                );
            }
        }
    }
}
