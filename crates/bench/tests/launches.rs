//! The GPU kernels launched by the fused ops and by sampling's step, counted through CubeCL's
//! launch log ([`karnna_bench::launches`]) on burn-wgpu (llvmpipe in CI): one launch per time step
//! forward and one backward, plus a few per sequence, for every cell; one per layer and one for
//! the logits per sampled character.
//!
//! Its own test binary: the counter must be installed before any GPU work in the process, and
//! counts every launch meanwhile, so the tests take turns (a lock) and no other test binary's
//! tests run beside them.
#![cfg(feature = "wgpu")]

use std::sync::{Mutex, MutexGuard, OnceLock};

use burn::tensor::{Tensor, TensorData};
use karnna_bench::launches::LaunchCounter;
use karnna_gpu::wgpu;
use karnna_model::ops::{sequence, SequenceInputs};
use karnna_model::{to_f32_vec, Cell, CharRnn, CharRnnConfig, Matmul, StepState};

type A = burn::backend::Autodiff<wgpu::Backend>;

/// Steps of the counted sequences.
const STEPS: usize = 30;

/// Launches allowed per sequence besides one per step each way: the forward's copies of its
/// inputs and outputs when not laid out as the kernels read them, the backward's transposed
/// `W_hh`, `dh0`, the `dW_hh` matmul and `db_hh` sum, and the loss and its gradient around
/// the op. The step-by-step tensor path launches about 60 kernels per step.
const PER_SEQUENCE: u64 = 24;

/// A forward and backward pass of `cell`'s fused op over [`STEPS`] steps (2 rows, 8 units),
/// finished (the gradients read back).
fn forward_backward(cell: Cell, device: &burn::backend::wgpu::WgpuDevice) {
    let (b, h) = (2, 8);
    let gh = cell.gates() * h;
    let leaf = |shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5)
            .collect();
        Tensor::<A, 3>::from_data(TensorData::new(v, shape), device).require_grad()
    };
    let xp = leaf(vec![STEPS, b, gh]);
    let w_hh = leaf(vec![1, h, gh]).reshape([h, gh]);
    let h0 = leaf(vec![1, b, h]).reshape([b, h]);
    let lstm = cell == Cell::Lstm;
    let inputs = SequenceInputs {
        xp: xp.clone(),
        w_hh,
        b_hh: (!lstm).then(|| leaf(vec![1, 1, gh]).reshape([gh])),
        h0,
        c0: lstm.then(|| leaf(vec![1, b, h]).reshape([b, h])),
    };
    let (hs, _) = sequence(cell, inputs, Matmul::Tf32);
    let grads = hs.sum().backward();
    let _ = xp.grad(&grads).expect("dxp").into_data();
}

/// The counter, installed before any GPU work in this process (CubeCL reads its configuration
/// once), and a lock that keeps the tests from counting each other's launches; or `None` (test
/// skipped) outside CI when there is no device.
fn counted() -> Option<(
    &'static LaunchCounter,
    MutexGuard<'static, ()>,
    burn::backend::wgpu::WgpuDevice,
)> {
    static COUNTER: OnceLock<LaunchCounter> = OnceLock::new();
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let counter = COUNTER.get_or_init(|| {
        LaunchCounter::install().expect("the launch counter could not be installed")
    });
    wgpu::test_device().map(|d| (counter, guard, d))
}

#[test]
fn the_fused_ops_launch_one_kernel_per_step_each_way() {
    let Some((counter, _one_at_a_time, device)) = counted() else {
        return;
    };
    for cell in Cell::ALL {
        // Once to compile the kernels, then counted.
        forward_backward(cell, &device);
        let ((), launches) =
            counter.count::<wgpu::Backend, _, _>(&device, || forward_backward(cell, &device));
        let launches = launches.expect("CubeCL's launch log reported the markers");
        eprintln!("{cell}: {launches} launches for {STEPS} steps forward and backward");
        let steps = 2 * STEPS as u64;
        assert!(
            (steps..=steps + PER_SEQUENCE).contains(&launches),
            "{cell}: {launches} launches for {STEPS} steps"
        );
    }
}

/// A sampled character is one launch per layer and one for the logits, for every cell, one
/// row or several; Burn's ops around the fused op (the default `layer_step` and
/// `linear_step`, which the CPU backends run) take several times as many.
#[test]
fn a_sampled_character_is_one_launch_per_layer_and_one_for_the_logits() {
    let Some((counter, _one_at_a_time, device)) = counted() else {
        return;
    };
    type W = wgpu::Backend;
    let layers = 3;
    for cell in Cell::ALL {
        let model = CharRnnConfig::new(20)
            .with_lstm_size(16)
            .with_num_layers(layers)
            .with_cell(cell)
            .init::<W>(&device);
        for rows in [1, 4] {
            let mut state = StepState::zeros(&model, rows);
            let ids = vec![3; rows];
            // Once to compile the kernels, then counted.
            let _ = to_f32_vec(model.step(&ids, &mut state));
            let (_, launches) =
                counter.count::<W, _, _>(&device, || to_f32_vec(model.step(&ids, &mut state)));
            let launches = launches.expect("CubeCL's launch log reported the markers");
            eprintln!("{cell}, {rows} row(s): {launches} launches a character");
            assert_eq!(launches, layers as u64 + 1, "{cell}, {rows} row(s)");
        }
        let tensor_ops = tensor_step_launches(counter, &model, &device);
        eprintln!("{cell}: Burn's ops take {tensor_ops} launches a character");
        assert!(tensor_ops > 2 * (layers as u64 + 1), "{cell}: {tensor_ops}");
    }
}

/// The launches of one character through Burn's ops (the default `layer_step` and
/// `linear_step`), one row.
fn tensor_step_launches(
    counter: &LaunchCounter,
    model: &CharRnn<wgpu::Backend>,
    device: &burn::backend::wgpu::WgpuDevice,
) -> u64 {
    use burn::tensor::TensorPrimitive;
    use karnna_model::ops::{burn_dense, tensor_layer_step, LayerStep, StepInput};
    let float = |t: Tensor<wgpu::Backend, 2>| t.into_primitive().tensor();
    let float1 = |t: Tensor<wgpu::Backend, 1>| t.into_primitive().tensor();
    let cell = model.cell();
    let h = model.lstm_size();
    let step = || {
        let mut x = None;
        for layer in &model.layers {
            let zero = Tensor::<wgpu::Backend, 2>::zeros([1, h], device);
            let input = match x.take() {
                None => StepInput::Ids(&[3]),
                Some(x) => StepInput::Hidden(x),
            };
            let (h, _) = tensor_layer_step::<wgpu::Backend>(
                cell,
                LayerStep {
                    input,
                    w_ih: float(layer.w_ih.val()),
                    w_hh: float(layer.w_hh.val()),
                    b_ih: float1(layer.b_ih.val()),
                    b_hh: float1(layer.b_hh.val()),
                    h: float(zero.clone()),
                    c: (cell == Cell::Lstm).then(|| float(zero)),
                    matmul: Matmul::Tf32,
                },
            );
            x = Some(h);
        }
        let w = float(model.output.weight.val());
        let b = model.output.bias.as_ref().map(|b| float1(b.val()));
        let logits = burn_dense::<wgpu::Backend>(x.unwrap(), w, b);
        to_f32_vec(Tensor::<wgpu::Backend, 2>::from_primitive(
            TensorPrimitive::Float(logits),
        ))
    };
    let _ = step();
    let (_, n) = counter.count::<wgpu::Backend, _, _>(device, step);
    n.expect("CubeCL's launch log reported the markers")
}
