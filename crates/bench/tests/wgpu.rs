//! The GPU checks ([`karnna_bench::check`]) on a real GPU runtime: burn-wgpu's first adapter
//! (Mesa's llvmpipe in CI, a software Vulkan GPU). They compile GPU kernels, fuse ops, move
//! data between host and device and read it back: what the CPU backends never exercise.
//!
//! Without a Vulkan device they skip, saying why, except under `CI=true`, where a missing
//! device fails the run (`.ci/run` installs one).
#![cfg(feature = "wgpu")]

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use karnna_bench::check;
use karnna_gpu::wgpu;
use karnna_model::ops::dense;
use karnna_model::{to_f32_vec, Cell, CellBackend, Matmul, MatmulPrecision};
use rand::{Rng, SeedableRng};

/// The wgpu device, or `None` (test skipped) outside CI when there is none.
fn device() -> Option<burn::backend::wgpu::WgpuDevice> {
    wgpu::test_device()
}

#[test]
fn fused_ops_match_the_cpu_kernels_on_wgpu_with_either_products() {
    let Some(device) = device() else { return };
    // Every output and gradient was compared: LSTM hs, c_T and four gradients; GRU and RNN
    // hs and four gradients.
    for matmul in [Matmul::Tf32, Matmul::F32] {
        for (cell, compared) in [(Cell::Lstm, 6), (Cell::Gru, 5), (Cell::Rnn, 5)] {
            let diffs = check::fused_op::<wgpu::Backend>(&device, cell, matmul).unwrap();
            assert_eq!(diffs.len(), compared, "{cell}");
            eprintln!("{cell}, {matmul:?} products: wgpu against cpu: {diffs:?}");
        }
    }
}

/// Two models in one process at once, one with Burn's products and one with karnna's f32
/// products (each model's own setting), train side by side on two threads: each matches the
/// CPU.
#[test]
fn training_steps_match_the_cpu_on_wgpu_two_products_side_by_side() {
    let Some(device) = device() else { return };
    for cell in Cell::ALL {
        std::thread::scope(|s| {
            let runs = [Matmul::Tf32, Matmul::F32].map(|matmul| {
                let device = device.clone();
                s.spawn(move || {
                    let got = check::training::<wgpu::Backend>(&device, cell, matmul);
                    (matmul, got.unwrap())
                })
            });
            for run in runs {
                let (matmul, (cpu, gpu)) = run.join().unwrap();
                assert_eq!(cpu.len(), check::TRAINING_STEPS);
                assert_eq!(gpu.len(), check::TRAINING_STEPS);
                eprintln!("{cell}, {matmul:?} products: losses cpu {cpu:?}\nlosses wgpu {gpu:?}");
            }
        });
    }
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// karnna's own f32 product ([`Matmul::F32`]) against the CPU's.
#[test]
fn the_f32_product_is_the_cpus_for_any_shape_bias_and_transpose() {
    let Some(device) = device() else { return };
    type W = wgpu::Backend;
    assert_eq!(
        W::matmul_precision(&device, Matmul::F32),
        MatmulPrecision::F32
    );
    // Sizes that are not multiples of the 16x16 tiles, and one smaller than a tile.
    for (m, k, n) in [(37, 29, 45), (3, 5, 2), (16, 40, 16)] {
        let (a, b, bias) = (random(m * k, 1), random(k * n, 2), random(n, 3));
        for with_bias in [false, true] {
            let gpu = dense::<W>(
                Tensor::from_data(TensorData::new(a.clone(), [m, k]), &device),
                // A transposed view, made contiguous by the product.
                Tensor::<W, 2>::from_data(TensorData::new(b.clone(), [k, n]), &device)
                    .transpose()
                    .transpose(),
                with_bias.then(|| Tensor::from_data(TensorData::new(bias.clone(), [n]), &device)),
                Matmul::F32,
            );
            let cpu_device = Default::default();
            let cpu = Tensor::<Flex, 2>::from_data(TensorData::new(a.clone(), [m, k]), &cpu_device)
                .matmul(Tensor::from_data(
                    TensorData::new(b.clone(), [k, n]),
                    &cpu_device,
                ));
            let cpu = if with_bias {
                cpu + Tensor::<Flex, 1>::from_data(TensorData::new(bias.clone(), [n]), &cpu_device)
                    .unsqueeze_dim(0)
            } else {
                cpu
            };
            let (gpu, cpu) = (to_f32_vec(gpu), to_f32_vec(cpu));
            let worst = gpu
                .iter()
                .zip(&cpu)
                .map(|(g, c)| (g - c).abs())
                .fold(0.0, f32::max);
            // k terms of size below 1, summed in f32 in different orders.
            let bound = check::gamma(k + 1, f32::EPSILON / 2.0) * (k + 1) as f32 * 2.0;
            assert!(
                worst <= bound,
                "{m}x{k}x{n}, bias {with_bias}: {worst:e} > {bound:e}"
            );
        }
    }
}

/// Under autodiff the f32 product is a graph node of its own; its gradients against the
/// formulas, computed on the CPU: `dx = r·wᵀ`, `dw = xᵀ·r`, `db = Σ_rows r` for the loss
/// `Σ (x·w + b) ⊙ r`.
#[test]
fn the_f32_products_gradients_are_the_formulas() {
    let Some(device) = device() else { return };
    type A = burn::backend::Autodiff<wgpu::Backend>;
    let (m, k, n) = (7, 19, 5);
    let (x, w, b, r) = (
        random(m * k, 4),
        random(k * n, 5),
        random(n, 6),
        random(m * n, 7),
    );
    let leaf = |v: &[f32], shape: [usize; 2]| {
        Tensor::<A, 2>::from_data(TensorData::new(v.to_vec(), shape), &device).require_grad()
    };
    let (xt, wt) = (leaf(&x, [m, k]), leaf(&w, [k, n]));
    let bt = Tensor::<A, 1>::from_data(TensorData::new(b.clone(), [n]), &device).require_grad();
    let rt = Tensor::<A, 2>::from_data(TensorData::new(r.clone(), [m, n]), &device);
    let product = dense(xt.clone(), wt.clone(), Some(bt.clone()), Matmul::F32);
    let grads = (product * rt).sum().backward();
    let got = [
        to_f32_vec(xt.grad(&grads).expect("dx")),
        to_f32_vec(wt.grad(&grads).expect("dw")),
        to_f32_vec(bt.grad(&grads).expect("db")),
    ];
    let cpu = |v: &[f32], shape: [usize; 2]| {
        Tensor::<Flex, 2>::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
    };
    let want = [
        to_f32_vec(cpu(&r, [m, n]).matmul(cpu(&w, [k, n]).transpose())),
        to_f32_vec(cpu(&x, [m, k]).transpose().matmul(cpu(&r, [m, n]))),
        to_f32_vec(cpu(&r, [m, n]).sum_dim(0)),
    ];
    for (name, (g, c)) in ["dx", "dw", "db"].iter().zip(got.iter().zip(&want)) {
        assert_eq!(g.len(), c.len(), "{name}");
        let worst = g
            .iter()
            .zip(c)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-5, "{name}: {worst:e}");
    }
}

#[test]
fn sampling_steps_match_the_cpu_on_wgpu_and_a_fault_fails() {
    let Some(device) = device() else { return };
    for cell in Cell::ALL {
        let diffs = check::stepping::<wgpu::Backend>(&device, cell).unwrap();
        assert_eq!(diffs.len(), check::STEP_CHARS, "{cell}");
        eprintln!("{cell}: wgpu step against cpu: {diffs:?}");
        // One logit off by 0.01 at the last character: the check must say so.
        let err = check::stepping_with::<wgpu::Backend>(&device, cell, |gpu| {
            gpu[check::STEP_CHARS - 1][5] += 0.01;
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("logits at character 7"), "{cell}: {err}");
    }
}

/// `--num-samples`' batch on the GPU: row 0 of three is the single sample of the same seed,
/// to the last character (the step computes each row alone, in the same order), and the rows
/// differ from one another.
#[test]
fn batched_samples_on_wgpu_start_with_the_single_sample() {
    use std::sync::atomic::AtomicBool;

    use karnna_infer::{generate, generate_many, BurnStepper, SampleOptions, Strategy};
    use karnna_model::CharRnnConfig;

    let Some(device) = device() else { return };
    let vocab = karnna_data::Vocab::from_text("abcdefghij klmnop\n");
    let model = CharRnnConfig::new(vocab.len())
        .with_lstm_size(40)
        .with_num_layers(2)
        .init_seeded::<wgpu::Backend>(karnna_model::Init::PyTorch, 3, &device);
    let opts = SampleOptions {
        prime: "a".into(),
        len: 60,
        strategy: Strategy::TopN {
            n: 5,
            temperature: 1.0,
        },
        seed: 42,
    };
    let stop = AtomicBool::new(false);
    let mut stepper = BurnStepper::new(model);
    let mut one = Vec::new();
    generate(&mut stepper, &vocab, &opts, &mut one, &stop).unwrap();
    let mut three = Vec::new();
    generate_many(&mut stepper, &vocab, &opts, 3, &mut three, &stop).unwrap();
    let (one, three) = (
        String::from_utf8(one).unwrap(),
        String::from_utf8(three).unwrap(),
    );
    let samples: Vec<&str> = three.split("--- sample ").skip(1).collect();
    assert_eq!(samples.len(), 3, "{three}");
    let first = samples[0]
        .split_once('\n')
        .unwrap()
        .1
        .trim_end_matches('\n');
    assert_eq!(first, one, "sample 1 of 3 is the single sample");
    assert_ne!(samples[1], samples[2]);
}

#[test]
fn checkpoints_sample_the_same_text_on_wgpu_and_the_cpu() {
    let Some(device) = device() else { return };
    let dir = std::env::temp_dir().join(format!("karnna-wgpu-{}", std::process::id()));
    let samples =
        check::sampling::<wgpu::Backend>(&device, "wgpu", &dir, 40, Matmul::Tf32).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(samples.len(), 2);
    for s in &samples {
        assert_eq!(s.cpu, s.gpu, "trained on {}", s.trained_on);
        // Both runs learned (uniform guessing scores 3.37), so the text is the model's, not noise.
        let val = s.val_loss.expect("a validation loss");
        assert!(
            val < 2.6,
            "trained on {}: validation loss {val}",
            s.trained_on
        );
    }
}

#[test]
fn the_probe_reports_a_working_device() {
    let Some(device) = device() else { return };
    assert_eq!(karnna_gpu::probe::<wgpu::Backend>(&device), Ok(()));
}

/// Largest difference allowed between the CubeCL kernels and Burn's autodiff of the
/// step-by-step tensor recurrence on the same device: both in f32 on llvmpipe, summing in
/// different orders (measured up to ~1e-6 at these sizes); a wrong term is of order 0.1.
const KERNEL_TOLERANCE: f32 = 1e-5;

/// The fused op's results under autodiff on wgpu, with the recurrence computed by the CubeCL
/// kernels (`fused`) or by Burn tensor ops step by step, differentiated by Burn itself: the
/// outputs (`hs`, and `c_T` for the LSTM), then the gradients of `xp`, `W_hh`, `h0`, and `c0`
/// (LSTM) or `b_hh` (GRU, RNN).
fn sequence_results(
    cell: Cell,
    [t, b, h]: [usize; 3],
    fused: bool,
    device: &burn::backend::wgpu::WgpuDevice,
) -> Vec<Vec<f32>> {
    use karnna_model::ops::reference::tensor_forward;
    use karnna_model::ops::{sequence, SequenceInputs};
    type A = burn::backend::Autodiff<wgpu::Backend>;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let gh = cell.gates() * h;
    let mut leaf = |shape: Vec<usize>, scale: f32| {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
        TensorData::new(v, shape)
    };
    let xp = Tensor::<A, 3>::from_data(leaf(vec![t, b, gh], 1.0), device).require_grad();
    let w_hh = Tensor::<A, 2>::from_data(leaf(vec![h, gh], 0.5), device).require_grad();
    let b_hh = Tensor::<A, 1>::from_data(leaf(vec![gh], 0.5), device).require_grad();
    let h0 = Tensor::<A, 2>::from_data(leaf(vec![b, h], 0.5), device).require_grad();
    let c0 = Tensor::<A, 2>::from_data(leaf(vec![b, h], 0.5), device).require_grad();
    let r = Tensor::<A, 3>::from_data(leaf(vec![t, b, h], 1.0), device);
    let lstm = cell == Cell::Lstm;
    let inputs = SequenceInputs {
        xp: xp.clone(),
        w_hh: w_hh.clone(),
        b_hh: (!lstm).then(|| b_hh.clone()),
        h0: h0.clone(),
        c0: lstm.then(|| c0.clone()),
    };
    let (hs, c) = if fused {
        sequence(cell, inputs, Matmul::Tf32)
    } else {
        let (hs, c, _) = tensor_forward(cell, inputs);
        (hs, c)
    };
    // The fused op passes no gradient back from c_T (truncated BPTT carries it detached).
    let grads = (hs.clone() * r).sum().backward();
    let mut out = vec![to_f32_vec(hs)];
    if let Some(c) = c {
        out.push(to_f32_vec(c));
    }
    out.push(to_f32_vec(xp.grad(&grads).expect("dxp")));
    out.push(to_f32_vec(w_hh.grad(&grads).expect("dW_hh")));
    out.push(to_f32_vec(h0.grad(&grads).expect("dh0")));
    out.push(match cell {
        Cell::Lstm => to_f32_vec(c0.grad(&grads).expect("dc0")),
        Cell::Gru | Cell::Rnn => to_f32_vec(b_hh.grad(&grads).expect("db_hh")),
    });
    out
}

#[test]
fn cubecl_kernels_match_burns_step_by_step_autodiff_on_wgpu() {
    let Some(device) = device() else { return };
    // 3 rows of 50 units span two cubes of 128 threads; 19 rows are tiles of 8, 8 and 3 rows
    // (the last one partial); one step has no step after it.
    for dims in [[4, 3, 50], [3, 19, 50], [1, 2, 7]] {
        for cell in Cell::ALL {
            let fused = sequence_results(cell, dims, true, &device);
            let reference = sequence_results(cell, dims, false, &device);
            assert_eq!(fused.len(), reference.len());
            for (i, (f, r)) in fused.iter().zip(&reference).enumerate() {
                assert_eq!(f.len(), r.len(), "{cell} {dims:?} result {i}");
                let worst = f
                    .iter()
                    .zip(r)
                    .map(|(a, b)| match (a - b).abs() {
                        d if d.is_nan() => f32::INFINITY,
                        d => d,
                    })
                    .fold(0.0, f32::max);
                assert!(
                    worst <= KERNEL_TOLERANCE,
                    "{cell} {dims:?} result {i}: the kernels differ by {worst:e}"
                );
                assert!(
                    r.iter().any(|v| *v != 0.0),
                    "{cell} {dims:?} result {i} is 0"
                );
            }
        }
    }
}

#[test]
fn dropout_masks_drawn_on_wgpu_equal_the_cpu_masks_bit_for_bit() {
    use burn::tensor::{Shape, Tensor, TensorPrimitive};
    use karnna_model::CellBackend;
    let Some(device) = device() else { return };
    // Lengths across cubes of 128 threads and not a multiple of them; seeds with both halves
    // set; keep_prob 1 and 0 (every value kept, none kept).
    let cases = [
        (0_u64, 0.5, 1000),
        (0x0123_4567_89AB_CDEF, 0.8, 129),
        (u64::MAX, 0.3, 1),
        (42, 1.0, 77),
        (7, 0.0, 50),
    ];
    for (seed, keep_prob, len) in cases {
        let mut cpu = vec![0.0_f32; len];
        karnna_kernels::dropout_mask(seed, keep_prob, &mut cpu);
        let mask = <wgpu::Backend as CellBackend>::dropout_mask(
            seed,
            keep_prob,
            Shape::new([len]),
            &device,
        );
        let gpu = karnna_model::to_f32_vec(Tensor::<wgpu::Backend, 1>::from_primitive(
            TensorPrimitive::Float(mask),
        ));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&gpu),
            bits(&cpu),
            "seed {seed:#x}, keep_prob {keep_prob}"
        );
        if len == 1000 {
            let kept = cpu.iter().filter(|&&x| x != 0.0).count();
            assert!((400..600).contains(&kept), "kept {kept} of 1000 at 0.5");
        }
    }
}

#[test]
fn a_corrupted_result_fails_the_fused_op_check_on_wgpu() {
    let Some(device) = device() else { return };
    // 1e-3 in one value: far below a real fault (~0.1), far above f32's rounding here.
    for (cell, name) in [(Cell::Lstm, "dW_hh"), (Cell::Gru, "dh0"), (Cell::Rnn, "hs")] {
        let err = check::fused_op_with::<wgpu::Backend>(&device, cell, Matmul::Tf32, |gpu| {
            let (_, values) = gpu.iter_mut().find(|(n, _)| *n == name).expect(name);
            values[5] += 1e-3;
        })
        .expect_err("a planted fault must fail the check");
        let err = format!("{err:#}");
        assert!(
            err.contains(&format!("tolerance in {name}")),
            "{cell}: {err}"
        );
    }
}
