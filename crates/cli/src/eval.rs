//! `karnna eval`: a checkpoint's loss, bits per character and perplexity on a text.
//!
//! The text is prepared with the checkpoint's vocabulary (characters it lacks are left out and
//! counted, see [`karnna_infer::eval`]) into the cache of prepared texts, memory-mapped, and
//! read by [`karnna_infer::evaluate`] in the training layout, with the recurrent state carried: the
//! program holds a window per row, never the text. On the CPU this is burn-flex with the fused recurrent kernels
//! and no autodiff; on a GPU, Burn's forward on that backend. The figures are printed on stdout
//! as `key=value` lines; a progress line goes to stderr on long texts when it is a terminal.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use karnna_data::{Ids, Prepared, Want};
use karnna_gpu::OnBackend;
use karnna_infer::{evaluate, EvalReport};
use karnna_model::{CellKernels, Checkpoint};

use karnna_gpu::Gpu;
use karnna_train::Device;

use crate::args::CheckpointArgs;

/// Targets each row should have at least: rows are read side by side from the zero state, so
/// short rows would score many characters with little context.
const MIN_ROW_LEN: usize = 1000;

/// Texts longer than this (in characters) show a progress line on a terminal.
const PROGRESS_OVER: u64 = 200_000;

/// Distinct unknown characters listed in `unknown_chars=`.
const LIST_UNKNOWN: usize = 10;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    from: CheckpointArgs,
    /// The text to score (UTF-8).
    #[arg(long)]
    data: PathBuf,
    /// Most rows read side by side (fewer on short texts, so each row has at least 1000
    /// characters).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Characters per row per forward pass (the state is carried between them).
    #[arg(long, default_value_t = 100)]
    num_steps: usize,
    /// cpu, cuda or wgpu.
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.num_steps == 0 {
        bail!("--num-steps must be at least 1");
    }
    let path = args.from.checkpoint()?;
    let ckpt = Checkpoint::read(&path)?;
    let files = karnna_data::text_files(std::slice::from_ref(&args.data))?;
    let prep = karnna_train::Preparation::new(karnna_train::default_cache_dir());
    let encoded = prep.prepare(&files, Want::Known(ckpt.meta.vocab.clone()))?;
    let chars = encoded.chars;
    if encoded.ids.len() < 2 {
        bail!(
            "{}: {} character(s) the model knows; at least 2 are needed to score one",
            args.data.display(),
            encoded.ids.len()
        );
    }
    let rows = ((encoded.ids.len() - 1) / MIN_ROW_LEN as u64).clamp(1, args.batch_size as u64);
    let mut bar = Progress::new(std::io::stderr().is_terminal() && chars > PROGRESS_OVER);
    let job = Score {
        ckpt: &ckpt,
        ids: &encoded.ids,
        rows: rows as usize,
        steps: args.num_steps,
        progress: &mut |done, total| bar.show(done, total),
    };
    let (report, secs) = match Gpu::of(args.device) {
        None => job.run::<burn::backend::Flex>(Default::default())?,
        Some(gpu) => karnna_gpu::run_on(gpu, job)?,
    };
    bar.clear();
    let out = figures(&path, &args, &encoded, report, secs);
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("writing the figures")?;
    Ok(())
}

/// The figures `eval` prints, one `key=value` line each (the first two lines hold several).
fn figures(
    path: &Path,
    args: &EvalArgs,
    encoded: &Prepared,
    report: EvalReport,
    secs: f64,
) -> String {
    let chars = encoded.chars;
    let mut out = String::new();
    out += &format!("checkpoint={}\n", path.display());
    out += &format!(
        "text={} chars={chars} scored={} unknown={}",
        args.data.display(),
        report.chars_scored,
        encoded.unknown
    );
    if !encoded.unknown_chars.is_empty() {
        let listed: String = encoded
            .unknown_chars
            .iter()
            .take(LIST_UNKNOWN)
            .flat_map(|c| c.escape_debug())
            .collect();
        out += &format!(" unknown_chars=\"{listed}\"");
    }
    out += "\n";
    let EvalReport {
        loss_nats,
        bits_per_char,
        perplexity,
        ..
    } = report;
    out += &format!(
        "rows={} steps={} unscored_tail={}\n",
        report.rows, args.num_steps, report.unscored_tail
    );
    out += &format!("loss_nats_per_char={loss_nats:.4}\n");
    out += &format!("bits_per_char={bits_per_char:.4}\n");
    out += &format!("perplexity={perplexity:.3}\n");
    out += &format!(
        "chars_per_s={:.0}\n",
        report.chars_scored as f64 / secs.max(1e-9)
    );
    out
}

/// The scoring of one checkpoint on one id stream, on whichever backend runs it; returns the
/// report and the seconds `evaluate` took (the model already on the device).
struct Score<'a> {
    ckpt: &'a Checkpoint,
    ids: &'a Ids,
    rows: usize,
    steps: usize,
    progress: &'a mut dyn FnMut(u64, u64),
}

impl karnna_gpu::OnBackend for Score<'_> {
    type Output = (EvalReport, f64);

    fn run<B: CellKernels>(self, device: B::Device) -> anyhow::Result<(EvalReport, f64)> {
        let model = self.ckpt.model::<B>(&device)?;
        let start = Instant::now();
        let report = evaluate(
            &model,
            self.ids,
            self.rows,
            self.steps,
            &device,
            self.progress,
        );
        Ok((report, start.elapsed().as_secs_f64()))
    }
}

/// The `\r`-updated progress line on stderr (`eval  37%  740000/2000000 chars`), or nothing.
struct Progress {
    on: bool,
    percent: Option<usize>,
    width: usize,
}

impl Progress {
    fn new(on: bool) -> Self {
        Self {
            on,
            percent: None,
            width: 0,
        }
    }

    /// Redraws the line when the whole percentage changed.
    fn show(&mut self, done: u64, total: u64) {
        let percent = (done * 100 / total.max(1)) as usize;
        if !self.on || self.percent == Some(percent) {
            return;
        }
        self.percent = Some(percent);
        let line = format!("eval {percent:3}%  {done}/{total} chars");
        self.width = self.width.max(line.len());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}");
        let _ = err.flush();
    }

    /// Erases the line.
    fn clear(&mut self) {
        if self.on && self.width > 0 {
            let _ = write!(std::io::stderr(), "\r{:w$}\r", "", w = self.width);
        }
    }
}
