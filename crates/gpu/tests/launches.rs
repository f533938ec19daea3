//! The GPU kernels launched by the fused ops, counted through CubeCL's launch log
//! ([`karnna_gpu::launches`]) on burn-wgpu (llvmpipe in CI): one launch per time step forward
//! and one backward, plus a few per sequence, for every cell.
//!
//! Its own test binary: the counter must be installed before any GPU work in the process, and
//! counts every launch meanwhile, so no other test may run beside it.
#![cfg(feature = "wgpu")]

use burn::tensor::{Tensor, TensorData};
use karnna_gpu::launches::LaunchCounter;
use karnna_gpu::wgpu;
use karnna_model::ops::{sequence, SequenceInputs};
use karnna_model::Cell;

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
    let (hs, _) = sequence(cell, inputs);
    let grads = hs.sum().backward();
    let _ = xp.grad(&grads).expect("dxp").into_data();
}

#[test]
fn the_fused_ops_launch_one_kernel_per_step_each_way() {
    // Before any GPU work: CubeCL reads its configuration once per process.
    let Some(counter) = LaunchCounter::install() else {
        panic!("the launch counter could not be installed")
    };
    let device = match wgpu::device() {
        Ok(d) => d,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI=true and {e}"),
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipped (set CI=true to fail instead): {e}"
            );
            return;
        }
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
