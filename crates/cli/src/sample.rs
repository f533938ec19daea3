//! `karnna sample`: text from a checkpoint, streamed to stdout.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use karnna_infer::{
    default_parts, default_prime, generate, generate_many, CharStepper, CpuCharRnn, Precision,
    SampleOptions, Strategy,
};
use karnna_model::checkpoint::CheckpointError;
use karnna_model::Checkpoint;

use karnna_gpu::Gpu;
use karnna_train::Device;

use crate::args::CheckpointArgs;

#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    from: CheckpointArgs,
    /// Text to start from, printed first [default: "Far", the notebook's, when the model knows
    /// those characters; else a newline]
    #[arg(long)]
    prime: Option<String>,
    /// Read the prime from this UTF-8 file (all of it, a final newline included; CRLF becomes
    /// LF, a byte-order mark is dropped).
    #[arg(long, value_name = "PATH", conflicts_with = "prime")]
    prime_file: Option<PathBuf>,
    /// Characters to draw after the prime.
    #[arg(long, default_value_t = karnna_infer::DEFAULT_LEN)]
    len: usize,
    /// Draw among the N most likely characters (the notebook's pick_top_n).
    #[arg(long, default_value_t = karnna_infer::DEFAULT_TOP_N)]
    top_n: usize,
    /// Softmax temperature (> 0): lower is more conservative.
    #[arg(long, default_value_t = karnna_infer::DEFAULT_TEMPERATURE)]
    temperature: f32,
    /// Always take the most likely character.
    #[arg(long)]
    argmax: bool,
    /// Seed of the draws (default: a new one each time).
    #[arg(long)]
    seed: Option<u64>,
    /// cpu, cuda or wgpu (on a GPU, one fused kernel per layer and character).
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
    /// Weight precision of the CPU sampler: f16 and bf16 stream half the bytes (faster, since
    /// sampling is bound by reading the weights; logits within ~1e-3 of f32 for f16, ~1e-2 for
    /// bf16), f32 is exactly the trained weights.
    #[arg(long, value_enum, default_value = "f16")]
    precision: Precision,
    /// Sample from every checkpoint of the run, in iteration order.
    #[arg(long, conflicts_with = "checkpoint")]
    all_checkpoints: bool,
    /// Draw N independent samples in one batch (much faster than N runs), printed
    /// one after another, each after a line `--- sample K of N ---`. With the same --seed,
    /// sample 1 is normally the text of a single sample (exactly so with f32 weights).
    #[arg(long, value_name = "N", default_value_t = 1)]
    num_samples: usize,
}

pub fn run(args: SampleArgs) -> anyhow::Result<()> {
    check(&args)?;
    let prime_file = match &args.prime_file {
        Some(p) => Some(karnna_data::load_text(p).context("--prime-file")?),
        None => None,
    };
    let checkpoints = checkpoints(&args)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130); // a second Ctrl-C: leave now
        }
    });
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let mut out = std::io::stdout().lock();
    let many = checkpoints.len() > 1;
    for path in &checkpoints {
        let ckpt = Checkpoint::read(path)?;
        let vocab = &ckpt.meta.vocab;
        let strategy = strategy(&args, vocab.len())?;
        if many {
            let val = ckpt.meta.val_loss.map_or("-".into(), |v| format!("{v:.3}"));
            writeln!(
                out,
                "==> {} (iteration {}, validation loss {val}) <==",
                path.display(),
                ckpt.meta.iteration
            )?;
        }
        let prime = (args.prime.clone().or_else(|| prime_file.clone()))
            .unwrap_or_else(|| default_prime(vocab));
        let opts = SampleOptions {
            prime,
            len: args.len,
            strategy,
            seed,
        };
        draw(&args, &ckpt, &opts, &mut out, &stop)?;
        writeln!(out)?;
        if many {
            writeln!(out)?;
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    Ok(())
}

/// The options' ranges and combinations.
fn check(args: &SampleArgs) -> anyhow::Result<()> {
    if let Err(e) = karnna_infer::check_temperature(args.temperature) {
        bail!("--temperature {e}");
    }
    if args.num_samples == 0 {
        bail!("--num-samples must be at least 1");
    }
    Ok(())
}

/// The checkpoints to sample from: `--checkpoint`, every one of the run (`--all-checkpoints`),
/// or the run's best.
fn checkpoints(args: &SampleArgs) -> anyhow::Result<Vec<PathBuf>> {
    if let Some(file) = &args.from.checkpoint {
        return Ok(vec![file.clone()]);
    }
    let dir = args.from.run_dir()?;
    if !args.all_checkpoints {
        return Ok(vec![dir.best_or_err()?]);
    }
    let none = || CheckpointError::NoCheckpoints(dir.path().to_owned());
    let all: Vec<PathBuf> = dir
        .checkpoints()
        .map_err(|_| none())?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if all.is_empty() {
        return Err(none().into());
    }
    Ok(all)
}

/// How each character is drawn, for a vocabulary of `vocab_len` characters.
fn strategy(args: &SampleArgs, vocab_len: usize) -> anyhow::Result<Strategy> {
    if args.argmax {
        return Ok(Strategy::Argmax);
    }
    if let Err(e) = karnna_infer::check_top_n(args.top_n, Some(vocab_len)) {
        bail!("--top-n {e}");
    }
    Ok(Strategy::TopN {
        n: args.top_n,
        temperature: args.temperature,
    })
}

/// Writes `ckpt`'s text to `out`: one sample, or `--num-samples` rows at once, on the chosen
/// device.
fn draw(
    args: &SampleArgs,
    ckpt: &Checkpoint,
    opts: &SampleOptions,
    out: &mut impl Write,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let vocab = &ckpt.meta.vocab;
    let mut model = stepper(ckpt, args.device, args.precision, args.num_samples)?;
    let drawn = if args.num_samples > 1 {
        generate_many(model.as_mut(), vocab, opts, args.num_samples, out, stop)
    } else {
        generate(model.as_mut(), vocab, opts, out, stop)
    };
    drawn.with_context(|| format!("sampling from {}", ckpt.path.display()))
}

/// The model of `ckpt` ready to step `rows` rows: the dedicated CPU path, or Burn on a GPU.
fn stepper(
    ckpt: &Checkpoint,
    device: Device,
    precision: Precision,
    rows: usize,
) -> anyhow::Result<Box<dyn CharStepper>> {
    let mut model = match Gpu::of(device) {
        None => Box::new(cpu_model(ckpt, precision)?) as Box<dyn CharStepper>,
        Some(gpu) => karnna_gpu::run_on(gpu, GpuStepper(ckpt))?,
    };
    model.set_rows(rows);
    Ok(model)
}

/// The model of `ckpt` on the dedicated CPU path.
fn cpu_model(ckpt: &Checkpoint, precision: Precision) -> anyhow::Result<CpuCharRnn> {
    let model = ckpt.model::<burn::backend::Flex>(&Default::default())?;
    Ok(CpuCharRnn::with(&model, precision, default_parts()))
}

/// A checkpoint's model stepped by Burn on a GPU backend.
struct GpuStepper<'a>(&'a Checkpoint);

impl karnna_gpu::OnBackend for GpuStepper<'_> {
    type Output = Box<dyn CharStepper>;

    fn run<B: karnna_model::CellKernels>(
        self,
        device: B::Device,
    ) -> anyhow::Result<Box<dyn CharStepper>> {
        let model = self.0.model::<B>(&device)?;
        Ok(Box::new(karnna_infer::BurnStepper::new(model)))
    }
}
