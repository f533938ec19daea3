//! `karnna bench`: seconds per training step and characters per second when sampling, on
//! random data, optionally alternating with the PyTorch peer for side-by-side ratios.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use burn::backend::{Autodiff, Flex, NdArray};
use burn::module::AutodiffModule;
use burn::optim::AdamConfig;
use burn::prelude::*;
use karnna_gpu::launches::LaunchCounter;
use karnna_infer::{
    default_parts, pick, BurnStepper, CharStepper, CpuCharRnn, Precision, Strategy,
};
use karnna_model::{CellKernels, CharRnnConfig, DropoutSeed};
use karnna_train::learner::{CharBatch, Trainee};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use karnna_gpu::Gpu;
use karnna_model::Cell;
use karnna_train::{CpuBackend, Device, GpuMatmul};

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
    pub gpu_matmul: GpuMatmul,
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

/// Median seconds of a training step: forward, backward, global-norm clip, Adam; and, with a
/// launch counter, the GPU kernels launched by one more step after the timed ones.
fn train_step_secs<I: CellKernels>(
    a: &BenchArgs,
    device: I::Device,
    counter: Option<&LaunchCounter>,
) -> (f64, Option<u64>) {
    type B<I> = Autodiff<I>;
    I::seed(&device, 0);
    let mut model = Trainee {
        model: a
            .model()
            .init::<B<I>>(&device)
            .with_gpu_matmul(a.gpu_matmul),
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
    for i in 0..a.warmup + a.iters + counted {
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
    }
    let _ = model.valid();
    (median(&times).expect("--iters is at least 1"), launches)
}

/// [`train_step_secs`] on a GPU backend.
struct GpuTrainStep<'a>(&'a BenchArgs, Option<&'a LaunchCounter>);

impl karnna_gpu::OnBackend for GpuTrainStep<'_> {
    type Output = (f64, Option<u64>);

    fn run<B: CellKernels>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        Ok(train_step_secs::<B>(self.0, device, self.1))
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
        let model = a.model().init::<B>(&device).with_gpu_matmul(a.gpu_matmul);
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
    Ok(t.report(&a))
}

/// Each run's figures, for the medians.
#[derive(Default)]
struct Timings {
    ours_t: Vec<f64>,
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
        let (t, counted) = match (Gpu::of(a.device), a.backend) {
            (Some(gpu), _) => karnna_gpu::run_on(gpu, GpuTrainStep(a, counter))?,
            (None, CpuBackend::Flex) => train_step_secs::<Flex>(a, Default::default(), None),
            (None, CpuBackend::Ndarray) => train_step_secs::<NdArray>(a, Default::default(), None),
        };
        self.launches = self.launches.or(counted);
        println!("run {r}: karnna train_s_per_batch={t:.4}");
        self.ours_t.push(t);
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

    /// Prints the medians (and launches, peak memory) and returns the headline figures.
    fn report(self, a: &BenchArgs) -> Figures {
        println!("--- medians over {} run(s)", a.repeats);
        let mut figures = Figures::default();
        if let Some(t) = median(&self.ours_t) {
            figures.train_s_per_batch = Some(t);
            println!("train_s_per_batch={t:.4}");
            println!("train_chars_per_s={:.0}", (a.batch * a.steps) as f64 / t);
            figures.peer_train_s_per_batch = median(&self.peer_t).inspect(|p| {
                println!("peer_train_s_per_batch={p:.4}");
                println!("train_speedup_vs_peer={:.2}", p / t);
            });
            figures.peer_bf16_train_s_per_batch = median(&self.peer_bf16_t).inspect(|p| {
                println!("peer_autocast_bf16_train_s_per_batch={p:.4}");
                println!("train_speedup_vs_peer_autocast_bf16={:.2}", p / t);
            });
            if let Some(why) = &self.peer_bf16_failed {
                println!("peer_autocast_bf16=unavailable on this CPU ({why})");
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
            // Counted through CubeCL's launch log (karnna_gpu::launches), one step after the timed ones.
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
