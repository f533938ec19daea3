//! `karnna gpu-check`: one command that tells whether a GPU backend computes what the CPU does
//! and how fast it is. It runs the checks of `crate::check` (the ones the tests run on
//! wgpu) on the chosen device, then the benchmark (a training step of the notebook's 2x512
//! model at batch 100x100, and sampling), and prints machine-readable `key=value` lines.
//!
//! It needs nothing but this binary (and, for `--peer`, a Python with PyTorch and the peer
//! script), so a binary built on a CPU machine with `--features cuda` can be carried to a GPU
//! machine that has no Rust toolchain.

use anyhow::bail;
use karnna_gpu::{Gpu, OnBackend};
use karnna_model::{Cell, CellKernels, Matmul, MatmulPrecision};

use crate::{bench, check};

/// `karnna gpu-check`'s arguments: the benchmark's, and what to check.
#[derive(clap::Args, Debug)]
pub struct GpuCheckArgs {
    /// The benchmark's sizes and options; `--device` is cuda or wgpu.
    #[command(flatten)]
    bench: bench::BenchArgs,
    /// Run the checks only, no timing.
    #[arg(long)]
    no_bench: bool,
    /// Iterations of each tiny training run in the sampling check.
    #[arg(long, default_value_t = 40)]
    check_iters: usize,
}

/// The checks on one GPU backend; each result is a line to print, or the failure.
struct Checks {
    name: &'static str,
    iters: usize,
    /// The products the checks run with (those the benchmark times).
    matmul: Matmul,
}

impl OnBackend for Checks {
    type Output = (MatmulPrecision, Vec<(String, anyhow::Result<String>)>);

    fn run<B: CellKernels>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        let dir = std::env::temp_dir().join(format!("karnna-gpu-check-{}", std::process::id()));
        let precision = B::matmul_precision(&device, self.matmul);
        let mut results = Vec::new();
        for cell in Cell::ALL {
            let op = check::fused_op::<B>(&device, cell, self.matmul).map(|d| {
                let list: Vec<String> = d.iter().map(ToString::to_string).collect();
                format!("max |gpu-cpu|: {}", list.join(", "))
            });
            results.push((format!("fused_op_{cell}"), op));
        }
        for cell in Cell::ALL {
            let training = check::training::<B>(&device, cell, self.matmul).map(|(cpu, gpu)| {
                let last = |v: &[f32]| v.last().copied().unwrap_or(f32::NAN);
                format!(
                    "{} Adam steps, last loss cpu {:.5} gpu {:.5}",
                    check::TRAINING_STEPS,
                    last(&cpu),
                    last(&gpu)
                )
            });
            results.push((format!("training_{cell}"), training));
        }
        for cell in Cell::ALL {
            let step = check::stepping::<B>(&device, cell).map(|d| {
                let worst = d.iter().map(|d| d.max_abs).fold(0.0, f32::max);
                format!(
                    "{} characters, max |gpu-cpu| of the logits {worst:.2e} (tolerance {:.0e})",
                    check::STEP_CHARS,
                    check::STEP_TOLERANCE
                )
            });
            results.push((format!("sampling_step_{cell}"), step));
        }
        let sampling = check::sampling::<B>(&device, self.name, &dir, self.iters, self.matmul);
        let sampling = sampling.map(|s| {
            let shown: Vec<String> = s
                .iter()
                .map(|x| {
                    format!(
                        "trained on {}: {:?}",
                        x.trained_on,
                        x.cpu.chars().take(60).collect::<String>()
                    )
                })
                .collect();
            format!(
                "same argmax text on cpu and {}; {}",
                self.name,
                shown.join("; ")
            )
        });
        let _ = std::fs::remove_dir_all(&dir);
        results.push(("sampling".to_owned(), sampling));
        Ok((precision, results))
    }
}

/// Runs the checks, then (unless `--no-bench`) the benchmark, printing `key=value` lines;
/// `Ok(false)` when a check failed (the `karnna` binary then exits with 1).
pub fn run(args: GpuCheckArgs) -> anyhow::Result<bool> {
    let Some(gpu) = karnna_gpu::Gpu::of(args.bench.device) else {
        bail!("gpu-check needs a GPU: --device cuda or --device wgpu");
    };
    let (precision, checks) = karnna_gpu::run_on(
        gpu,
        Checks {
            name: gpu.name(),
            iters: args.check_iters.max(1),
            matmul: args.bench.gpu_matmul,
        },
    )?;
    println!(
        "gpu_check_matmul_precision={}  # Burn's matmuls (dW_hh, the input and output layers); karnna's recurrence kernels compute in f32; the fused-op tolerances follow from both",
        precision.name()
    );
    let mut failed = false;
    for (name, result) in &checks {
        match result {
            Ok(line) => println!("gpu_check_{name}=ok  # {line}"),
            Err(e) => {
                failed = true;
                println!(
                    "gpu_check_{name}=FAILED  # {}",
                    format!("{e:#}").replace('\n', " ")
                );
            }
        }
    }
    if !args.no_bench {
        let figures = bench::run(args.bench)?;
        println!("--- gpu-check figures ({})", gpu.name());
        let line = |key: &str, v: Option<f64>| {
            if let Some(v) = v {
                println!("{key}={v:.4}");
            }
        };
        line("gpu_train_s_per_batch", figures.train_s_per_batch);
        line("gpu_sample_chars_per_s", figures.sample_chars_per_s);
        line(
            "gpu_sample_batched_8_chars_per_s",
            figures.sample_batched_chars_per_s,
        );

        let peer_on = if gpu == Gpu::Cuda { "gpu" } else { "cpu" };
        line(
            &format!("peer_{peer_on}_train_s_per_batch"),
            figures.peer_train_s_per_batch,
        );
        line(
            &format!("peer_{peer_on}_sample_chars_per_s"),
            figures.peer_sample_chars_per_s,
        );
    }
    println!("gpu_check={}", if failed { "FAILED" } else { "ok" });
    Ok(!failed)
}
