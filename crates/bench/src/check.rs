//! A GPU backend against the CPU, same inputs: each cell's fused op (output and every
//! gradient), a few training steps of a small model of each cell, sampling's one-character
//! step of each cell, and text sampled from checkpoints trained on either side. The tests run these on wgpu (llvmpipe in CI) and `karnna gpu-check` runs them on the
//! device it is given, so both hold a GPU to the same tolerances.
//!
//! The CPU side is burn-flex with karnna's own kernels (`karnna_kernels`); the GPU side
//! is karnna's CubeCL kernels (`karnna_model::gpu`: one launch per layer and time step) with
//! Burn's matmuls around them. They
//! agree only as far as f32 arithmetic summed in different orders allows; each tolerance below
//! says why it is what it is.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, ensure, Context};
use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use karnna_infer::{generate, BurnStepper, CharStepper, CpuCharRnn, SampleOptions, Strategy};
use karnna_model::ops::{sequence, SequenceInputs};
use karnna_model::{
    to_f32_vec, Cell, CellKernels, CharRnn, CharRnnConfig, Checkpoint, DropoutSeed, Init, Matmul,
    MatmulPrecision,
};
use karnna_train::learner::{CharBatch, Trainee};
use karnna_train::{RunConfig, TrainOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Absolute error of the CPU kernels' `tanh` and `σ` (branch-free approximations,
/// `karnna_kernels`), which the GPU computes with its f32 functions instead.
pub const ACTIVATION_ERROR: f32 = 1e-6;

/// Pointwise roundings per step besides the recurrent dot product (the gate and cell update,
/// or its backward): a bound, counted from the kernels' formulas.
const POINTWISE_OPS: usize = 12;

/// Higham's `γ_n = n·u / (1 − n·u)`: a sum or dot product of `n` terms rounded with unit
/// roundoff `u` errs by at most `γ_n` times the sum of the terms' magnitudes.
pub fn gamma(n: usize, u: f32) -> f32 {
    let nu = n as f32 * u;
    nu / (1.0 - nu)
}

/// The largest difference allowed between the GPU's and the CPU's value of a fused-op result,
/// derived from the arithmetic of both sides for `t` steps, `b` rows, `h` units and `g` gate
/// blocks:
/// - both sides compute the recurrence in f32 (unit roundoff `u` = 2⁻²⁴), so each differs
///   from the exact value by at most `γ_n·scale` along the longest chain of roundings, `n =
///   t·(g·h + POINTWISE_OPS)` (a dot product of up to `g·h` terms and the pointwise update per
///   step, chained over the steps), where `scale` is the quantity's largest magnitude (at
///   least 1: the terms are products of values of order 1);
/// - the CPU's `tanh` and `σ` differ from the exact ones by up to [`ACTIVATION_ERROR`], once
///   per step;
/// - `dW_hh` is Burn's matmul `H_prevᵀ·dZ` over `t·b` terms: when its inputs are rounded to
///   TF32, each product errs by `2·u_mm` of its size, and the sum by `2·u_mm·t·b·max|h|·max|dz|`
///   (`max_h`, `max_dz`).
///
/// Twice each side's bound, since the two sides' errors can add. A real fault (a gate in the
/// wrong block, a missing term of the backward) is of order 0.1; in f32 these come to about
/// 1e-5 at the check's sizes.
pub fn op_tolerance(
    name: &str,
    [t, b, h, g]: [usize; 4],
    scale: f32,
    matmul: MatmulPrecision,
    [max_h, max_dz]: [f32; 2],
) -> f32 {
    let u = MatmulPrecision::F32.unit_roundoff();
    let chain = gamma(t * (g * h + POINTWISE_OPS), u) * scale.max(1.0);
    let activations = t as f32 * ACTIVATION_ERROR;
    let product = if name == "dW_hh" {
        2.0 * matmul.unit_roundoff() * (t * b) as f32 * max_h * max_dz
    } else {
        0.0
    };
    2.0 * (chain + activations + product)
}

/// Largest difference allowed between the GPU's and the CPU's training losses (nats, about 2.8
/// at the start), step by step over [`TRAINING_STEPS`] Adam steps from the same weights. The
/// op's small differences reach the weights through Adam, which divides each gradient by its
/// own running size, so a weight whose gradient is near zero can move by a different part of
/// the learning rate (0.03) on either side. On llvmpipe the losses agree to 2e-7; 1e-3 allows
/// for that amplification on other GPUs while a wrong gradient shows by the second step
/// (~0.05).
pub const LOSS_TOLERANCE: f32 = 1e-3;

/// Adam's learning rate in [`training`].
const LEARNING_RATE: f64 = 0.03;

/// Adam steps compared by [`training`].
pub const TRAINING_STEPS: usize = 8;

/// One compared quantity: its name, the largest absolute difference, and the largest allowed.
#[derive(Clone, Debug)]
pub struct Diff {
    /// What was compared (`hs`, `dW_hh`, `loss at step 3`, ...).
    pub name: String,
    /// The largest absolute difference between GPU and CPU.
    pub max_abs: f32,
    /// The largest difference allowed ([`op_tolerance`], [`LOSS_TOLERANCE`]).
    pub tolerance: f32,
}

impl Diff {
    /// Whether the difference is within the tolerance (a NaN never is).
    pub fn ok(&self) -> bool {
        self.max_abs <= self.tolerance
    }
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:.2e} (tolerance {:.1e})",
            self.name, self.max_abs, self.tolerance
        )
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared tensors differ in size");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() || y.is_nan() {
                f32::INFINITY
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f32::max)
}

/// Fails, listing every difference, when one is above its tolerance.
fn within(diffs: &[Diff], what: &str) -> anyhow::Result<()> {
    if diffs.iter().all(Diff::ok) {
        return Ok(());
    }
    let list: Vec<String> = diffs.iter().map(Diff::to_string).collect();
    let over: Vec<&str> = diffs
        .iter()
        .filter(|d| !d.ok())
        .map(|d| d.name.as_str())
        .collect();
    bail!(
        "{what}: the GPU differs from the CPU by more than the tolerance in {}: {}",
        over.join(", "),
        list.join(", ")
    )
}

// ---------------------------------------------------------------------------------------------
// The fused op.

/// The fused op's inputs: `T` steps, `B` rows, `H` units of a cell with `G` gate blocks, and a
/// weighting of `hs` that makes the loss (`Σ hs ⊙ r`) give every output its own gradient.
struct OpInputs {
    cell: Cell,
    dims: [usize; 3],
    xp: Vec<f32>,
    w_hh: Vec<f32>,
    b_hh: Vec<f32>,
    h0: Vec<f32>,
    c0: Vec<f32>,
    r: Vec<f32>,
}

impl OpInputs {
    fn new(cell: Cell, t: usize, b: usize, h: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut v = |n: usize, scale: f32| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(-scale..scale)).collect()
        };
        let gh = cell.gates() * h;
        Self {
            cell,
            dims: [t, b, h],
            xp: v(t * b * gh, 1.0),
            w_hh: v(h * gh, 0.5),
            b_hh: v(gh, 0.5),
            h0: v(b * h, 0.5),
            c0: v(b * h, 0.5),
            r: v(t * b * h, 1.0),
        }
    }
}

/// The fused op's outputs and gradients on backend `X` (under autodiff), named: for the LSTM
/// `hs, c_T, dxp, dW_hh, dh0, dc0`; for the GRU and the RNN `hs, dxp, dW_hh, db_hh, dh0`.
fn op_results<X: CellKernels>(
    inp: &OpInputs,
    device: &X::Device,
    matmul: Matmul,
) -> Vec<(&'static str, Vec<f32>)> {
    type A<X> = Autodiff<X>;
    let [t, b, h] = inp.dims;
    let gh = inp.cell.gates() * h;
    fn tensor<B: Backend, const D: usize>(
        v: &[f32],
        shape: [usize; D],
        device: &B::Device,
    ) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
    }
    let xp = tensor::<A<X>, 3>(&inp.xp, [t, b, gh], device).require_grad();
    let w_hh = tensor::<A<X>, 2>(&inp.w_hh, [h, gh], device).require_grad();
    let h0 = tensor::<A<X>, 2>(&inp.h0, [b, h], device).require_grad();
    let r = tensor::<A<X>, 3>(&inp.r, [t, b, h], device);
    let grad = |g: Option<Tensor<X, 3>>| to_f32_vec(g.expect("a gradient"));
    let grad2 = |g: Option<Tensor<X, 2>>| to_f32_vec(g.expect("a gradient"));
    let lstm = inp.cell == Cell::Lstm;
    let b_hh = (!lstm).then(|| tensor::<A<X>, 1>(&inp.b_hh, [gh], device).require_grad());
    let c0 = lstm.then(|| tensor::<A<X>, 2>(&inp.c0, [b, h], device).require_grad());
    let inputs = SequenceInputs {
        xp: xp.clone(),
        w_hh: w_hh.clone(),
        b_hh: b_hh.clone(),
        h0: h0.clone(),
        c0: c0.clone(),
    };
    let (hs, c) = sequence(inp.cell, inputs, matmul);
    let grads = (hs.clone() * r).sum().backward();
    let mut out = vec![("hs", to_f32_vec(hs))];
    out.extend(c.map(|c| ("c_T", to_f32_vec(c))));
    out.push(("dxp", grad(xp.grad(&grads))));
    out.push(("dW_hh", grad2(w_hh.grad(&grads))));
    if let Some(b_hh) = b_hh {
        out.push(("db_hh", to_f32_vec(b_hh.grad(&grads).expect("a gradient"))));
    }
    out.push(("dh0", grad2(h0.grad(&grads))));
    if let Some(c0) = c0 {
        out.push(("dc0", grad2(c0.grad(&grads))));
    }
    out
}

/// The fused op of `cell` on `G` against the CPU kernel, same inputs (6 steps, 3 rows, 16
/// units): the outputs (`hs`, and `c_T` for the LSTM) and the gradient of every input, each
/// within its [`op_tolerance`] for `G`'s matmul precision with the products `matmul`.
pub fn fused_op<G: CellKernels>(
    device: &G::Device,
    cell: Cell,
    matmul: Matmul,
) -> anyhow::Result<Vec<Diff>> {
    fused_op_with::<G>(device, cell, matmul, |_| {})
}

/// [`fused_op`], with `corrupt` applied to the GPU's results (named as in the returned diffs)
/// before they are compared: a planted fault, which the check must report.
pub fn fused_op_with<G: CellKernels>(
    device: &G::Device,
    cell: Cell,
    matmul: Matmul,
    corrupt: impl FnOnce(&mut [(&'static str, Vec<f32>)]),
) -> anyhow::Result<Vec<Diff>> {
    let inputs = OpInputs::new(cell, 6, 3, 16, 7);
    let [t, b, h] = inputs.dims;
    let cpu = op_results::<Flex>(&inputs, &Default::default(), matmul);
    let mut gpu = op_results::<G>(&inputs, device, matmul);
    corrupt(&mut gpu);
    let max = |v: &[f32]| v.iter().fold(0.0_f32, |m, x| m.max(x.abs()));
    let find = |name: &str| cpu.iter().find(|(n, _)| *n == name).map(|(_, v)| max(v));
    let max_h = find("hs").unwrap_or(1.0).max(max(&inputs.h0));
    let max_dz = find("dxp").unwrap_or(1.0);
    let precision = G::matmul_precision(device, matmul);
    let diffs: Vec<Diff> = cpu
        .iter()
        .zip(&gpu)
        .map(|((name, c), (_, g))| Diff {
            name: name.to_string(),
            max_abs: max_abs_diff(c, g),
            tolerance: op_tolerance(
                name,
                [t, b, h, cell.gates()],
                max(c),
                precision,
                [max_h, max_dz],
            ),
        })
        .collect();
    within(
        &diffs,
        &format!(
            "fused {} op (matmuls in {})",
            cell.name().to_uppercase(),
            precision.name()
        ),
    )?;
    Ok(diffs)
}

// ---------------------------------------------------------------------------------------------
// Training steps.

fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::default()
}

/// The weights of a model of `config` drawn with `init` from `seed` on the CPU, recorded, for
/// [`load`] to put on either side: every run compares the same model.
fn seeded(config: &CharRnnConfig, init: Init, seed: u64) -> anyhow::Result<Vec<u8>> {
    let model = config.init_seeded::<Flex>(init, seed, &Default::default());
    Recorder::<Flex>::record(&recorder(), model.into_record(), ()).context("recording the weights")
}

/// The model of `bytes` (recorded on any backend) on backend `B`.
fn load<B: Backend>(config: &CharRnnConfig, bytes: &[u8], device: &B::Device) -> CharRnn<B> {
    let record = Recorder::<B>::load(&recorder(), bytes.to_vec(), device).expect("a record");
    config.init::<B>(device).load_record(record)
}

/// Losses of `TRAINING_STEPS` Adam steps (global-norm clip 5, [`LEARNING_RATE`], the state
/// carried between batches as in training) from the weights in `bytes`, on backend `X` with
/// the products `matmul`.
fn training_losses<X: CellKernels>(
    config: &CharRnnConfig,
    bytes: &[u8],
    batches: &[(Vec<i64>, Vec<i64>)],
    shape: [usize; 2],
    device: &X::Device,
    matmul: Matmul,
) -> Vec<f32> {
    type A<X> = Autodiff<X>;
    let mut model = Trainee {
        model: load::<A<X>>(config, bytes, device).with_matmul(matmul),
    };
    let mut optim = AdamConfig::new()
        .with_epsilon(1e-8)
        .init::<A<X>, Trainee<A<X>>>();
    let ids = |v: &[i64]| Tensor::<A<X>, 1, Int>::from_ints(v, device).reshape(shape);
    let mut state = None;
    let mut losses = Vec::new();
    for (step, (x, y)) in batches.iter().enumerate() {
        let batch = CharBatch {
            inputs: ids(x),
            targets: ids(y),
        };
        // The same dropout masks on both sides: the GPU draws them on the device, bit for bit.
        let dropout = DropoutSeed::Seeded(1000 + step as u64);
        let (next, out, s) =
            model.optimize(&mut optim, LEARNING_RATE, 5.0, batch, state.take(), dropout);
        losses.push(to_f32_vec(out.loss)[0]);
        (model, state) = (next, Some(s));
    }
    losses
}

/// [`TRAINING_STEPS`] training steps of a 2x32 model of `cell` (vocabulary 16, batch 4x12,
/// dropout with keep_prob 0.75, the masks seeded alike) on `G` and on the CPU from the same
/// weights and batches, the products `matmul`: every step's loss within [`LOSS_TOLERANCE`].
/// Returns `(cpu, gpu)` losses.
pub fn training<G: CellKernels>(
    device: &G::Device,
    cell: Cell,
    matmul: Matmul,
) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    let shape = [4, 12];
    let config = CharRnnConfig::new(16)
        .with_cell(cell)
        .with_lstm_size(32)
        .with_num_layers(2)
        .with_keep_prob(0.75);
    let cpu_device = Default::default();
    let bytes = seeded(&config, Init::PyTorch, 11)?;
    // Random inputs whose targets follow from them (y = 3x + 1 mod 16): something to learn.
    let mut rng = StdRng::seed_from_u64(3);
    let batches: Vec<_> = (0..TRAINING_STEPS)
        .map(|_| {
            let x: Vec<i64> = (0..shape[0] * shape[1])
                .map(|_| rng.random_range(0..16))
                .collect();
            let y = x.iter().map(|v| (3 * v + 1) % 16).collect();
            (x, y)
        })
        .collect();
    let cpu = training_losses::<Flex>(&config, &bytes, &batches, shape, &cpu_device, matmul);
    let gpu = training_losses::<G>(&config, &bytes, &batches, shape, device, matmul);
    let diffs: Vec<Diff> = cpu
        .iter()
        .zip(&gpu)
        .enumerate()
        .map(|(i, (c, g))| Diff {
            name: format!("loss at step {i}"),
            max_abs: max_abs_diff(&[*c], &[*g]),
            tolerance: LOSS_TOLERANCE,
        })
        .collect();
    let what = format!("{} training steps", cell.name().to_uppercase());
    within(&diffs, &what)?;
    // The steps moved the weights (the loss changed), so later steps compare updated models.
    let spread =
        cpu.iter().fold(f32::MIN, |a, &b| a.max(b)) - cpu.iter().fold(f32::MAX, |a, &b| a.min(b));
    ensure!(
        spread > 10.0 * LOSS_TOLERANCE,
        "{what}: the loss hardly moved ({cpu:?}), so the comparison proves little"
    );
    Ok((cpu, gpu))
}

// ---------------------------------------------------------------------------------------------
// One character at a time.

/// Largest difference allowed between the GPU's and the CPU's logits in [`stepping`]. Both
/// sides compute in f32; they differ in the order of their sums (the GPU's step splits each dot
/// product into slices) and in the CPU kernels' `tanh` and `σ` ([`ACTIVATION_ERROR`] each),
/// which the weights carry from layer to layer and step to step. On llvmpipe the logits agree
/// to about 1e-6; a fault (a gate block misplaced, a bias or a row of `W_ih` missed) moves
/// them by 0.01 or more.
pub const STEP_TOLERANCE: f32 = 1e-4;

/// Characters stepped by [`stepping`].
pub const STEP_CHARS: usize = 8;

/// The logits of [`STEP_CHARS`] characters stepped on backend `X` ([`CharRnn::step`], three
/// rows) from the weights in `bytes`, one `Vec` per character.
fn step_logits<X: CellKernels>(
    config: &CharRnnConfig,
    bytes: &[u8],
    ids: &[Vec<u32>],
    device: &X::Device,
) -> Vec<Vec<f32>> {
    let model = load::<X>(config, bytes, device);
    let mut state = karnna_model::StepState::zeros(&model, ids[0].len());
    ids.iter()
        .map(|ids| to_f32_vec(model.step(ids, &mut state)))
        .collect()
}

/// Sampling's step ([`CharRnn::step`]: on a GPU one launch per layer and one for the logits)
/// on `G` against the CPU: a 2x40 model of `cell` (vocabulary 70: neither a multiple of the
/// kernels' 32 units a cube) steps [`STEP_CHARS`] characters for three rows from the same
/// weights; every character's logits within [`STEP_TOLERANCE`].
pub fn stepping<G: CellKernels>(device: &G::Device, cell: Cell) -> anyhow::Result<Vec<Diff>> {
    stepping_with::<G>(device, cell, |_| {})
}

/// [`stepping`], with `corrupt` applied to the GPU's logits (one `Vec` per character) before
/// they are compared: a planted fault, which the check must report.
pub fn stepping_with<G: CellKernels>(
    device: &G::Device,
    cell: Cell,
    corrupt: impl FnOnce(&mut [Vec<f32>]),
) -> anyhow::Result<Vec<Diff>> {
    let config = CharRnnConfig::new(70)
        .with_cell(cell)
        .with_lstm_size(40)
        .with_num_layers(2);
    let bytes = seeded(&config, Init::TensorFlow, 5)?;
    let mut rng = StdRng::seed_from_u64(9);
    let ids: Vec<Vec<u32>> = (0..STEP_CHARS)
        .map(|_| (0..3).map(|_| rng.random_range(0..70)).collect())
        .collect();
    let cpu = step_logits::<Flex>(&config, &bytes, &ids, &Default::default());
    let mut gpu = step_logits::<G>(&config, &bytes, &ids, device);
    corrupt(&mut gpu);
    let diffs: Vec<Diff> = cpu
        .iter()
        .zip(&gpu)
        .enumerate()
        .map(|(i, (c, g))| Diff {
            name: format!("logits at character {i}"),
            max_abs: max_abs_diff(c, g),
            tolerance: STEP_TOLERANCE,
        })
        .collect();
    within(
        &diffs,
        &format!("{} sampling step", cell.name().to_uppercase()),
    )?;
    Ok(diffs)
}

// ---------------------------------------------------------------------------------------------
// Sampling across devices.

/// A short text that a tiny model learns in a few dozen iterations, so that its most likely
/// next character is rarely a near tie (argmax sampling must not hinge on the last bit).
const TEXT: &str =
    "Happy families are all alike; every unhappy family is unhappy in its own way.\n\
Everything was in confusion in the Oblonskys' house.\n";

/// Text sampled with argmax from one checkpoint on the CPU sampler and on the GPU.
#[derive(Clone, Debug)]
pub struct CrossSample {
    /// Where the checkpoint was trained (`cpu` or the GPU's name).
    pub trained_on: String,
    /// The checkpoint's validation loss (uniform guessing over the 29 characters: 3.37).
    pub val_loss: Option<f64>,
    /// The text the CPU sampler wrote.
    pub cpu: String,
    /// The text the GPU wrote.
    pub gpu: String,
}

fn sample_text(
    stepper: &mut dyn CharStepper,
    ckpt: &Checkpoint,
    len: usize,
) -> anyhow::Result<String> {
    let opts = SampleOptions {
        prime: "Happy".into(),
        len,
        strategy: Strategy::Argmax,
        seed: 1,
    };
    let mut out = Vec::new();
    generate(
        stepper,
        &ckpt.meta.vocab,
        &opts,
        &mut out,
        &AtomicBool::new(false),
    )?;
    Ok(String::from_utf8(out)?)
}

/// Trains a tiny run of `X` in `dir` (`iters` iterations, the products `matmul`) and returns
/// its last checkpoint.
fn train_tiny<X: CellKernels>(
    dir: &Path,
    iters: usize,
    device: X::Device,
    matmul: Matmul,
) -> anyhow::Result<Checkpoint> {
    std::fs::create_dir_all(dir)?;
    let data = dir.join("text.txt");
    std::fs::write(&data, TEXT.repeat(20))?;
    let config = RunConfig {
        name: "gpu-check".into(),
        data: vec![data],
        batch_size: 4,
        num_steps: 24,
        shape: karnna_model::ModelShape {
            lstm_size: 32,
            ..Default::default()
        },
        keep_prob: 1.0,
        learning_rate: 0.02,
        epochs: 1000,
        gpu_matmul: matmul,
        max_iters: iters,
        save_every_n: iters,
        eval_every: iters,
        log_every: iters,
        cache_dir: Some(dir.join("cache")),
        ..RunConfig::default()
    };
    let opts = TrainOptions {
        config,
        run_dir: dir.join("run"),
        resume: false,
        fresh: true,
        plain: true,
        memory_limit: None,
        collective: std::sync::Arc::new(karnna_train::collective::Alone),
    };
    let report = karnna_train::train::<X>(opts, device)?;
    let path = report
        .last_checkpoint
        .context("the run saved no checkpoint")?;
    Ok(Checkpoint::read(&path)?)
}

/// Trains a tiny model for `iters` iterations on the CPU and on `G` (in `dir`), then samples
/// 200 characters with argmax from each checkpoint on the CPU sampler and on `G` (trained
/// with the products `matmul`): a checkpoint must write the same text wherever it was trained
/// and wherever it samples.
pub fn sampling<G: CellKernels>(
    device: &G::Device,
    gpu_name: &str,
    dir: &Path,
    iters: usize,
    matmul: Matmul,
) -> anyhow::Result<Vec<CrossSample>> {
    let cpu_device = Default::default();
    let trained = [
        (
            "cpu",
            train_tiny::<Flex>(&dir.join("cpu"), iters, cpu_device, matmul)?,
        ),
        (
            gpu_name,
            train_tiny::<G>(&dir.join(gpu_name), iters, device.clone(), matmul)?,
        ),
    ];
    let mut out = Vec::new();
    for (trained_on, ckpt) in trained {
        let cpu_model = ckpt.model::<Flex>(&Default::default())?;
        let cpu = sample_text(&mut CpuCharRnn::new(&cpu_model), &ckpt, 200)?;
        let gpu_model = ckpt.model::<G>(device)?;
        let gpu = sample_text(&mut BurnStepper::new(gpu_model), &ckpt, 200)?;
        if cpu != gpu {
            let at = cpu
                .chars()
                .zip(gpu.chars())
                .take_while(|(a, b)| a == b)
                .count();
            bail!(
                "sampling: a checkpoint trained on {trained_on} writes different text on the CPU and on {gpu_name} from character {at}: {cpu:?} against {gpu:?}"
            );
        }
        out.push(CrossSample {
            trained_on: trained_on.to_string(),
            val_loss: ckpt.meta.val_loss,
            cpu,
            gpu,
        });
    }
    Ok(out)
}
