//! `karnna bench`: seconds per training step and characters per second when sampling, on
//! random data, optionally alternating with the PyTorch peer for side-by-side ratios.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crate::launches::LaunchCounter;
use anyhow::{bail, Context};
use burn::backend::{Autodiff, Flex, NdArray};
use burn::module::AutodiffModule;
use burn::optim::AdamConfig;
use burn::prelude::*;
use karnna_infer::{
    default_parts, pick, BurnStepper, CharStepper, CpuCharRnn, Precision, Strategy,
};
use karnna_kernels::Peak;
use karnna_model::{CellKernels, CharRnnConfig, DropoutSeed};
use karnna_train::learner::{CharBatch, Trainee};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use karnna_gpu::Gpu;
use karnna_model::Cell;
use karnna_train::{CpuBackend, Device, Matmul, Precision as StepPrecision};

/// `karnna bench`'s arguments: the model's and the batch's sizes, the device and its settings,
/// what to time, and the peer to time beside it.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The recurrent cell (the peer runs nn.LSTM, nn.GRU or nn.RNN to match).
    #[arg(long, value_enum, default_value = "lstm")]
    cell: Cell,
    /// Units per layer.
    #[arg(long, default_value_t = 512)]
    hidden: usize,
    /// Recurrent layers.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Steps per sequence.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Vocabulary size (anna.txt has 83).
    #[arg(long, default_value_t = 83)]
    vocab: usize,
    /// Timed training steps per run.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Untimed training steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Characters sampled (batch 1, top-5).
    #[arg(long, default_value_t = 2000)]
    sample_len: usize,
    /// Runs of each side (alternating with the peer when --peer is given).
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// CPU backend for the training step.
    #[arg(long, value_enum, default_value = "flex")]
    backend: CpuBackend,
    /// The model's matrix products on a GPU.
    #[arg(long, value_enum, default_value = "tf32")]
    pub gpu_matmul: Matmul,
    /// The CPU training step's products, one or several (`f32,bf16`: each run times both,
    /// alternating). bf16 needs AVX512_BF16 (elsewhere it is skipped, and a line says so).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32")]
    pub precision: Vec<StepPrecision>,
    /// cpu, cuda or wgpu. On a GPU, sampling is one fused kernel per layer and character, and
    /// the peer runs on CUDA when the device is cuda (on the CPU otherwise).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Python interpreter with torch: also run ../shared/peers/torch_charrnn.py, alternating
    /// (its training step twice: in f32 and under torch.autocast bf16, its fastest CPU mode).
    #[arg(long)]
    peer: Option<PathBuf>,
    /// The peer script.
    #[arg(long, default_value = "../shared/peers/torch_charrnn.py")]
    peer_script: PathBuf,
    /// Only time each bf16 product of a 2-layer step of this size alone (one thread's share of
    /// a step's recurrent product, the threaded input projection, weight gradient and output
    /// layer), in GFLOP/s against the measured peak.
    #[arg(long)]
    products: bool,
    /// Skip the training step.
    #[arg(long)]
    no_train: bool,
    /// Skip sampling.
    #[arg(long)]
    no_sample: bool,
    /// On a GPU, do not count the kernels of a training step and of a sampled character
    /// (`gpu_launches_per_step`, `gpu_launches_per_char`).
    /// Counting turns on CubeCL's launch log for the whole run, which costs a little host time
    /// per launch.
    #[arg(long)]
    no_launch_count: bool,
}

impl BenchArgs {
    /// The benchmarked model.
    fn model(&self) -> CharRnnConfig {
        CharRnnConfig::new(self.vocab)
            .with_cell(self.cell)
            .with_lstm_size(self.hidden)
            .with_num_layers(self.layers)
    }
}

/// The median of `v` (the upper one of an even count); `None` when `v` is empty.
fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// Median seconds of a training step: forward, backward, global-norm clip, Adam; with a launch
/// counter, the GPU kernels launched by one more step after the timed ones; and how busy the
/// timed steps kept the CPU ([`Busy`]).
fn train_step_secs<I: CellKernels>(
    a: &BenchArgs,
    device: I::Device,
    counter: Option<&LaunchCounter>,
    matmul: Matmul,
) -> (f64, Option<u64>, Option<Busy>) {
    type B<I> = Autodiff<I>;
    I::seed(&device, 0);
    let mut model = Trainee {
        model: a.model().init::<B<I>>(&device).with_matmul(matmul),
    };
    let mut optim = AdamConfig::new()
        .with_epsilon(1e-8)
        .init::<B<I>, Trainee<B<I>>>();
    let mut rng = StdRng::seed_from_u64(0);
    let ids = |rng: &mut StdRng| {
        let v: Vec<i64> = (0..a.batch * a.steps)
            .map(|_| rng.random_range(0..a.vocab as i64))
            .collect();
        Tensor::<B<I>, 1, Int>::from_ints(v.as_slice(), &device).reshape([a.batch, a.steps])
    };
    let mut state = None;
    let mut times = Vec::new();
    let mut launches = None;
    let counted = usize::from(counter.is_some());
    let (mut cpu0, mut wall0) = ((0.0, 0.0), Instant::now());
    let mut busy = None;
    for i in 0..a.warmup + a.iters + counted {
        if i == a.warmup {
            (cpu0, wall0) = (cpu_seconds(), Instant::now());
        }
        let batch = CharBatch {
            inputs: ids(&mut rng),
            targets: ids(&mut rng),
        };
        let current = model;
        let previous = state.take();
        let step = || {
            let t = Instant::now();
            let dropout = DropoutSeed::Backend;
            let (next, _, s) = current.optimize(&mut optim, 0.001, 5.0, batch, previous, dropout);
            // Read something back so lazy backends finish the step.
            let _ = next.model.output.bias.as_ref().unwrap().val().into_data();
            (next, s, t.elapsed().as_secs_f64())
        };
        let (next, s, _) = match counter {
            Some(counter) if i == a.warmup + a.iters => {
                let (out, n) = counter.count::<I, _, _>(&device, step);
                launches = n;
                out
            }
            _ => {
                let out = step();
                if i >= a.warmup {
                    times.push(out.2);
                }
                out
            }
        };
        model = next;
        state = Some(s);
        if i + 1 == a.warmup + a.iters {
            let (user, sys) = cpu_seconds();
            let cpu = (user - cpu0.0) + (sys - cpu0.1);
            let busy_now = Busy {
                cores: cpu / wall0.elapsed().as_secs_f64(),
                kernel_fraction: (sys - cpu0.1) / cpu.max(1e-9),
            };
            busy = Some(busy_now);
        }
    }
    let _ = model.valid();
    let t = median(&times).expect("--iters is at least 1");
    (t, launches, busy)
}

/// [`train_step_secs`] on a GPU backend.
struct GpuTrainStep<'a>(&'a BenchArgs, Option<&'a LaunchCounter>);

impl karnna_gpu::OnBackend for GpuTrainStep<'_> {
    type Output = (f64, Option<u64>, Option<Busy>);

    fn run<B: CellKernels>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        Ok(train_step_secs::<B>(
            self.0,
            device,
            self.1,
            self.0.gpu_matmul,
        ))
    }
}

/// Sampling on a GPU backend (an untrained model: the speed does not depend on the weights):
/// [`sample_rate`] at batch 1 and of eight rows, and, with a launch counter,
/// the kernels one character launches.
struct GpuSample<'a>(&'a BenchArgs, Option<&'a LaunchCounter>);

/// What [`GpuSample`] measures.
struct GpuSampling {
    rate: f64,
    batched: f64,
    launches: Option<u64>,
}

impl karnna_gpu::OnBackend for GpuSample<'_> {
    type Output = GpuSampling;

    fn run<B: CellKernels>(self, device: B::Device) -> anyhow::Result<GpuSampling> {
        let a = self.0;
        let model = a.model().init::<B>(&device).with_matmul(a.gpu_matmul);
        let mut stepper = BurnStepper::new(model);
        // Compile the step's kernels before timing.
        sample_rate(&mut stepper, 5, a.vocab);
        let launches = self.1.and_then(|counter| {
            let count = || stepper.step(0).len();
            counter.count::<B, _, _>(&device, count).1
        });
        let rate = sample_rate(&mut stepper, a.sample_len, a.vocab);
        stepper.set_rows(8);
        let batched = sample_rate(&mut stepper, a.sample_len, a.vocab);
        Ok(GpuSampling {
            rate,
            batched,
            launches,
        })
    }
}

/// Characters per second drawing `model.rows()` samples of `len` characters side by side
/// (every row's characters counted; one row is batch-1 sampling), top-5.
fn sample_rate(model: &mut dyn CharStepper, len: usize, vocab: usize) -> f64 {
    let rows = model.rows();
    let mut rngs: Vec<StdRng> = (0..rows).map(|r| StdRng::seed_from_u64(r as u64)).collect();
    let strategy = Strategy::TopN {
        n: 5.min(vocab),
        temperature: 1.0,
    };
    model.reset();
    let mut next = vec![0u32; rows];
    let t = Instant::now();
    for _ in 0..len {
        let logits = model.step_rows(&next);
        for ((next, logits), rng) in next
            .iter_mut()
            .zip(logits.chunks_exact(vocab))
            .zip(&mut rngs)
        {
            *next = pick(logits, strategy, rng);
        }
    }
    (rows * len) as f64 / t.elapsed().as_secs_f64()
}

/// This process's user and system CPU seconds so far (`getrusage`).
fn cpu_seconds() -> (f64, f64) {
    // SAFETY: `rusage` is plain integers and structs of integers, for which all zeros is a
    // valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one `rusage` through the pointer, which points to ours.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

/// How busy the timed training steps kept the CPU: cores busy on average (CPU time over wall
/// time) and the kernel's share of that CPU time (page faults, futexes), from `getrusage`.
#[derive(Clone, Copy, Debug, Default)]
struct Busy {
    cores: f64,
    kernel_fraction: f64,
}

/// Peak resident memory of the largest child process so far (the peer), in MiB.
fn peer_peak_rss_mib() -> Option<f64> {
    // SAFETY: `rusage` is plain integers and structs of integers, for which all zeros is a
    // valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one `rusage` through the pointer, which points to ours.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } == 0;
    (ok && usage.ru_maxrss > 0).then(|| usage.ru_maxrss as f64 / 1024.0)
}

/// Peak resident memory of this process so far, in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The peer's figure for `mode` (`train`: seconds per step, under `autocast` `off` or `bf16`;
/// `sample`: characters per second).
fn peer(a: &BenchArgs, python: &PathBuf, mode: &str, autocast: &str) -> anyhow::Result<f64> {
    let mut cmd = Command::new(python);
    cmd.arg(&a.peer_script)
        .args(["--mode", mode, "--threads", "2"])
        .args(["--cell", a.cell.name()]);
    if a.device == Device::Cuda {
        cmd.args(["--device", "cuda"]);
    }
    cmd.args([
        "--hidden",
        &a.hidden.to_string(),
        "--layers",
        &a.layers.to_string(),
    ]);
    if mode == "train" {
        cmd.args([
            "--batch",
            &a.batch.to_string(),
            "--steps",
            &a.steps.to_string(),
        ]);
        cmd.args([
            "--iters",
            &a.iters.to_string(),
            "--warmup",
            &a.warmup.to_string(),
        ]);
        cmd.args(["--autocast", autocast]);
    } else {
        cmd.args(["--sample-len", &a.sample_len.to_string()]);
        if a.device != Device::Cuda {
            cmd.arg("--no-mkldnn");
        }
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "the peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let key = if mode == "train" {
        "train_s_per_batch="
    } else {
        "sample_chars_per_s="
    };
    let peak = text.lines().find_map(|l| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix("peak_rss_mib="))
            .map(str::to_owned)
    });
    if let Some(p) = peak {
        println!("peer_peak_rss_mib={p}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("the peer printed no {key}"))
}

/// The medians a bench run printed last, for callers that print them their own way.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figures {
    /// karnna's seconds per training step.
    pub train_s_per_batch: Option<f64>,
    /// The peer's seconds per training step, in f32 (`--autocast off`).
    pub peer_train_s_per_batch: Option<f64>,
    /// The peer's seconds per training step under `torch.autocast` bf16, its fastest CPU mode.
    pub peer_bf16_train_s_per_batch: Option<f64>,
    /// karnna's characters per second sampling (f32 weights on the CPU).
    pub sample_chars_per_s: Option<f64>,
    /// The peer's characters per second sampling.
    pub peer_sample_chars_per_s: Option<f64>,
    /// karnna's characters per second drawing eight samples side by side on a GPU, all rows
    /// counted.
    pub sample_batched_chars_per_s: Option<f64>,
}

/// Runs the benchmark and prints its figures; returns the medians.
pub fn run(a: BenchArgs) -> anyhow::Result<Figures> {
    if a.hidden == 0
        || a.layers == 0
        || a.batch == 0
        || a.steps == 0
        || a.vocab == 0
        || a.iters == 0
        || a.repeats == 0
    {
        bail!("bench sizes, --iters and --repeats must be at least 1");
    }
    println!(
        "bench: {}x{} {}, batch {}x{}, vocab {}, device {:?}, cpu backend {:?}, gpu matmuls {:?}, {} threads available",
        a.layers,
        a.hidden,
        a.cell.name().to_uppercase(),
        a.batch,
        a.steps,
        a.vocab,
        a.device,
        a.backend,
        a.gpu_matmul,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let bf16 = StepPrecision::Bf16;
    let asked = a.precision.contains(&bf16) && a.device == Device::Cpu && !a.no_train;
    if asked && !precisions(&a).contains(&bf16) {
        println!("precision bf16: skipped, the kernels have no VDPBF16PS here (no AVX512_BF16, or KARNNA_SIMD caps it)");
    }
    let timed_on_cpu = a.device == Device::Cpu && (!a.no_train || a.products);
    let peak = timed_on_cpu.then(|| print_silicon(&a));
    if a.products {
        return products(&a, peak);
    }
    // Installed before any GPU work, which reads CubeCL's configuration once per process.
    let counter = match Gpu::of(a.device) {
        Some(_) if !a.no_launch_count => LaunchCounter::install(),
        _ => None,
    };
    let mut t = Timings::default();
    for r in 0..a.repeats {
        if !a.no_train {
            t.training(&a, r, counter.as_ref())?;
        }
        if !a.no_sample {
            t.sampling(&a, r, counter.as_ref())?;
        }
    }
    Ok(t.report(&a, peak))
}

/// The instruction set, this CPU's measured peak and the step's counted FLOP, to judge the
/// step's figures against (`train_gflops` over the peak is the fraction of the silicon used);
/// returns the peak.
fn print_silicon(a: &BenchArgs) -> Peak {
    let peak = karnna_kernels::measure_peak(0.3);
    println!(
        "isa={} (cap with {})",
        karnna_kernels::simd_name(),
        karnna_kernels::SIMD_ENV
    );
    println!(
        "peak_gflops_f32={:.1} (f32 FMA of the widest register, {} threads at once)",
        peak.f32_gflops, peak.threads
    );
    if let Some(bf16) = peak.bf16_gflops {
        println!(
            "peak_gflops_bf16={bf16:.1} (VDPBF16PS, {} threads at once)",
            peak.threads
        );
    }
    println!(
        "train_gflop_per_step={:.2} (matrix products: forward, input and weight gradients)",
        step_flop(a) / 1e9
    );
    peak
}

/// `--products`: each bf16 product of a step alone, against the bf16 peak.
fn products(a: &BenchArgs, peak: Option<Peak>) -> anyhow::Result<Figures> {
    if !karnna_kernels::bf16_dot() {
        bail!("--products times the bf16 products, which need a CPU with AVX512_BF16");
    }
    let (rows, g) = (a.batch * a.steps, a.cell.gates() * a.hidden);
    let share = a.batch.div_ceil(rayon::current_num_threads());
    let peak = peak.and_then(|p| p.bf16_gflops).unwrap_or(f64::NAN);
    let threads = rayon::current_num_threads() as f64;
    for (name, m, k, n, threaded) in [
        ("recurrence, one thread's rows", share, a.hidden, g, false),
        ("input projection", rows, a.hidden, g, true),
        ("weight gradient", a.hidden, rows, g, true),
        ("output layer", rows, a.hidden, a.vocab, true),
    ] {
        let (gflops, pack_ms) = karnna_kernels::bf16_product_speed(m, k, n, threaded, 5);
        let of = if threaded { peak } else { peak / threads };
        println!(
            "product [{m}, {k}] x [{k}, {n}] ({name}): {gflops:.1} GFLOP/s, {:.0}% of the peak; packing {pack_ms:.1} ms",
            100.0 * gflops / of
        );
    }
    Ok(Figures::default())
}

/// The precisions `a` times: those asked for, less bf16 where it would run as f32 (on a GPU,
/// one f32 run with `--gpu-matmul`).
fn precisions(a: &BenchArgs) -> Vec<StepPrecision> {
    if a.device != Device::Cpu {
        return vec![StepPrecision::F32];
    }
    let mut out: Vec<StepPrecision> = Vec::new();
    for &p in &a.precision {
        let runs = p == StepPrecision::F32 || p.matmul(a.device, a.gpu_matmul) == Matmul::Bf16;
        if runs && !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The label of karnna's line for precision `p`: none when only f32 is timed.
fn label(a: &BenchArgs, p: StepPrecision) -> String {
    if precisions(a) == [StepPrecision::F32] {
        String::new()
    } else {
        format!(" ({})", p.name())
    }
}

/// The floating-point operations of one training step's matrix products, counted from the
/// shapes (`2·m·n·k` a product): forward, the input gradients and the weight gradients of the
/// recurrences (`h·W_hh`), the input projections of the layers above the first (the first's is
/// a row lookup of one-hot inputs, no product) and the output layer. The cells' pointwise
/// maths, the loss, the clipping and Adam are not counted (about 2% of a step's time).
pub fn step_flop(a: &BenchArgs) -> f64 {
    let n = (a.batch * a.steps) as f64;
    let (h, v) = (a.hidden as f64, a.vocab as f64);
    let gh = (a.cell.gates() * a.hidden) as f64;
    let layers = a.layers as f64;
    let forward = 2.0 * n * (layers * h * gh + (layers - 1.0) * h * gh + h * v);
    3.0 * forward
}

/// Each run's figures, for the medians.
#[derive(Default)]
struct Timings {
    /// karnna's step times, for each precision timed (in the order of `--precision`).
    ours_t: Vec<(StepPrecision, Vec<f64>)>,
    peer_t: Vec<f64>,
    peer_bf16_t: Vec<f64>,
    /// Why the peer's bf16 mode failed, once it has (it is not tried again).
    peer_bf16_failed: Option<String>,
    ours_s: Vec<f64>,
    peer_s: Vec<f64>,
    burn_s: Vec<f64>,
    f16_s: Vec<f64>,
    bf16_s: Vec<f64>,
    launches: Option<u64>,
    char_launches: Option<u64>,
    batched_s: Vec<f64>,
}

impl Timings {
    /// Run `r`'s training step, ours and the peer's.
    fn training(
        &mut self,
        a: &BenchArgs,
        r: usize,
        counter: Option<&LaunchCounter>,
    ) -> anyhow::Result<()> {
        for p in precisions(a) {
            let matmul = p.matmul(a.device, a.gpu_matmul);
            let (t, counted, busy) = match (Gpu::of(a.device), a.backend) {
                (Some(gpu), _) => karnna_gpu::run_on(gpu, GpuTrainStep(a, counter))?,
                (None, CpuBackend::Flex) => {
                    train_step_secs::<Flex>(a, Default::default(), None, matmul)
                }
                (None, CpuBackend::Ndarray) => {
                    train_step_secs::<NdArray>(a, Default::default(), None, matmul)
                }
            };
            self.launches = self.launches.or(counted);
            let busy = match busy {
                Some(b) if a.device == Device::Cpu => format!(
                    " cores_busy={:.2} kernel_time_fraction={:.3}",
                    b.cores, b.kernel_fraction
                ),
                _ => String::new(),
            };
            println!(
                "run {r}: karnna{} train_s_per_batch={t:.4}{busy}",
                label(a, p)
            );
            match self.ours_t.iter_mut().find(|(q, _)| *q == p) {
                Some((_, times)) => times.push(t),
                None => self.ours_t.push((p, vec![t])),
            }
        }
        // The peer in both of its modes, so that no ratio quotes it in its slower one alone.
        // Its bf16 mode needs a CPU that PyTorch (oneDNN) runs bf16 on: where it fails, that
        // is reported and the bench goes on.
        if let Some(p) = &a.peer {
            let t = peer(a, p, "train", "off")?;
            println!("run {r}: pytorch (autocast off) train_s_per_batch={t:.4}");
            self.peer_t.push(t);
            if self.peer_bf16_failed.is_none() {
                match peer(a, p, "train", "bf16") {
                    Ok(t) => {
                        println!("run {r}: pytorch (autocast bf16) train_s_per_batch={t:.4}");
                        self.peer_bf16_t.push(t);
                    }
                    Err(e) => {
                        println!("run {r}: pytorch (autocast bf16) failed: {e:#}");
                        self.peer_bf16_failed = Some(format!("{e:#}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Run `r`'s sampling rates, ours and the peer's.
    fn sampling(
        &mut self,
        a: &BenchArgs,
        r: usize,
        counter: Option<&LaunchCounter>,
    ) -> anyhow::Result<()> {
        match Gpu::of(a.device) {
            Some(gpu) => {
                let s = karnna_gpu::run_on(gpu, GpuSample(a, counter))?;
                println!("run {r}: karnna sample_chars_per_s={:.1}", s.rate);
                let label = "karnna (8 samples batched)";
                println!("run {r}: {label} sample_chars_per_s={:.1}", s.batched);
                self.ours_s.push(s.rate);
                self.batched_s.push(s.batched);
                self.char_launches = self.char_launches.or(s.launches);
            }
            None => self.cpu_sampling(a, r),
        }
        if let Some(p) = &a.peer {
            let rate = peer(a, p, "sample", "off")?;
            println!("run {r}: pytorch sample_chars_per_s={rate:.1}");
            self.peer_s.push(rate);
        }
        Ok(())
    }

    /// Run `r`'s CPU sampling: f32, f16 and bf16 weights, eight rows batched, Burn's forward.
    fn cpu_sampling(&mut self, a: &BenchArgs, r: usize) {
        let device = Default::default();
        let model = a.model().init::<Flex>(&device);
        let rate = sample_rate(&mut CpuCharRnn::new(&model), a.sample_len, a.vocab);
        println!("run {r}: karnna sample_chars_per_s={rate:.1}");
        self.ours_s.push(rate);
        let f16 = CpuCharRnn::with(&model, Precision::F16, default_parts());
        let rate = sample_rate(&mut { f16 }, a.sample_len, a.vocab);
        println!("run {r}: karnna (f16 weights) sample_chars_per_s={rate:.1}");
        self.f16_s.push(rate);
        let bf16 = CpuCharRnn::with(&model, Precision::Bf16, default_parts());
        let rate = sample_rate(&mut { bf16 }, a.sample_len, a.vocab);
        println!("run {r}: karnna (bf16 weights) sample_chars_per_s={rate:.1}");
        self.bf16_s.push(rate);
        // Eight samples side by side (`karnna sample --num-samples 8`), all rows counted.
        let mut batched = CpuCharRnn::with_rows(&model, Precision::F32, default_parts(), 8);
        let rate = sample_rate(&mut batched, a.sample_len, a.vocab);
        println!("run {r}: karnna (8 samples batched) sample_chars_per_s={rate:.1}");
        let mut batched = CpuCharRnn::with_rows(&model, Precision::F16, default_parts(), 8);
        let rate = sample_rate(&mut batched, a.sample_len, a.vocab);
        let label = "karnna (8 samples batched, f16 weights)";
        println!("run {r}: {label} sample_chars_per_s={rate:.1}");
        let burn_len = (a.sample_len / 10).max(20);
        let rate = sample_rate(&mut BurnStepper::new(model), burn_len, a.vocab);
        println!("run {r}: karnna (burn-flex forward) sample_chars_per_s={rate:.1}");
        self.burn_s.push(rate);
    }

    /// Prints the medians (and launches, peak memory; each precision against `peak`, when the
    /// CPU's was measured) and returns the headline figures.
    fn report(self, a: &BenchArgs, peak: Option<Peak>) -> Figures {
        println!("--- medians over {} run(s)", a.repeats);
        let mut figures = Figures::default();
        let peer = median(&self.peer_t);
        let peer_bf16 = median(&self.peer_bf16_t);
        let flop = step_flop(a);
        for (i, (p, times)) in self.ours_t.iter().enumerate() {
            let Some(t) = median(times) else { continue };
            // The first precision keeps the plain names (and the returned figures).
            let suffix = if i == 0 {
                String::new()
            } else {
                format!("_{}", p.name())
            };
            if i == 0 {
                figures.train_s_per_batch = Some(t);
                figures.peer_train_s_per_batch = peer;
                figures.peer_bf16_train_s_per_batch = peer_bf16;
            }
            println!("train_s_per_batch{suffix}={t:.4}");
            println!(
                "train_chars_per_s{suffix}={:.0}",
                (a.batch * a.steps) as f64 / t
            );
            if a.device == Device::Cpu {
                let gflops = flop / t / 1e9;
                println!("train_gflops{suffix}={gflops:.1}");
                let peak = peak.and_then(|k| match p {
                    StepPrecision::F32 => Some(k.f32_gflops),
                    StepPrecision::Bf16 => k.bf16_gflops,
                });
                if let Some(peak) = peak {
                    println!("train_peak_fraction{suffix}={:.2}", gflops / peak);
                }
            }
            if let Some(p) = peer {
                println!("train_speedup_vs_peer{suffix}={:.2}", p / t);
            }
            if let Some(p) = peer_bf16 {
                println!("train_speedup_vs_peer_autocast_bf16{suffix}={:.2}", p / t);
            }
        }
        if let Some(p) = peer {
            println!("peer_train_s_per_batch={p:.4}");
        }
        if let Some(p) = peer_bf16 {
            println!("peer_autocast_bf16_train_s_per_batch={p:.4}");
        }
        if let Some(why) = &self.peer_bf16_failed {
            println!("peer_autocast_bf16=unavailable on this CPU ({why})");
        }
        let of = |want| self.ours_t.iter().find(|(p, _)| *p == want);
        if let (Some((_, f)), Some((_, b))) = (of(StepPrecision::F32), of(StepPrecision::Bf16)) {
            if let (Some(f), Some(b)) = (median(f), median(b)) {
                println!("train_speedup_bf16_vs_f32={:.2}", f / b);
            }
        }
        if let Some(s) = median(&self.ours_s) {
            figures.sample_chars_per_s = Some(s);
            println!("sample_chars_per_s={s:.1}");
            let f16 = median(&self.f16_s);
            if let Some(f) = f16 {
                println!("sample_chars_per_s_f16={f:.1}");
            }
            if let Some(b) = median(&self.bf16_s) {
                println!("sample_chars_per_s_bf16={b:.1}");
            }
            if let Some(b) = median(&self.burn_s) {
                println!("sample_chars_per_s_burn_forward={b:.1}");
            }
            figures.peer_sample_chars_per_s = median(&self.peer_s).inspect(|p| {
                println!("peer_sample_chars_per_s={p:.1}");
                println!("sample_speedup_vs_peer={:.2}", s / p);
                if let Some(f) = f16 {
                    println!("sample_speedup_vs_peer_f16={:.2}", f / p);
                }
            });
        }
        figures.sample_batched_chars_per_s = median(&self.batched_s).inspect(|b| {
            println!("sample_chars_per_s_batched_8={b:.1}");
        });
        if let Some(n) = self.launches {
            // Counted through CubeCL's launch log (`crate::launches`), one step after the timed ones.
            println!("gpu_launches_per_step={n}");
        }
        if let Some(n) = self.char_launches {
            // Counted the same way: one character at batch 1, its logits read back.
            println!("gpu_launches_per_char={n}");
        }
        if let Some(m) = peak_rss_mib() {
            println!("peak_rss_mib={m:.0}");
        }
        if a.peer.is_some() {
            if let Some(m) = peer_peak_rss_mib() {
                println!("peer_peak_rss_mib={m:.0}");
            }
        }
        figures
    }
}
