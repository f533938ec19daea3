//! A training run on burn-train's learner, with karnna's strategy: the recurrent state carried from
//! batch to batch, global-norm clipping, validation every `eval_every` iterations, checkpoints
//! every `save_every_n`, exact resume, and `metrics.csv` / `loss.svg`.
//!
//! [`train`] reads top to bottom: lock the run folder, settle the config (resume, fine-tuning),
//! read the text, build or restore the model (`Start`), then hand `Carry` to the learner.
//! `Carry::fit` is the notebook's loop over epochs and batches (`Loop`): per batch a
//! `Loop::step`, then `Loop::record` (metrics, validation, the log line, checkpoints).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use burn::backend::{Autodiff, Flex};
use burn::data::dataloader::Progress;
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, Optimizer};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::train::metric::{
    CpuMemory, CpuUse, IterationSpeedMetric, LearningRateMetric, LossMetric,
};
use burn::train::{
    EventProcessorTraining, Interrupter, Learner, LearnerEvent, LearningComponentsMarker,
    SupervisedLearningStrategy, SupervisedTraining, SupervisedTrainingEventProcessor, TrainLoader,
    TrainingComponents, TrainingItem, TrainingStrategy, ValidLoader,
};
use karnna_data::{Vocab, Want};
use karnna_model::checkpoint::RunDir;
use karnna_model::{CellKernels, Checkpoint, CheckpointMeta, DropoutSeed, RnnState};

use crate::collective::{shard, Collective};
use crate::config::{ReferenceCurve, RunConfig};
use crate::corpus::{Corpus, Preparation};
use crate::dashboard::{self, Quiet};
use crate::folder::RunFolder;
use crate::learner::{
    average_gradients, clip_global_norm, weights_digest, BatchLoader, CharBatch, CharMetric,
    CharMetricKind, CharOutput, OptimHandle, RecordingOptim, Trainee,
};
use crate::log::{MetricsLog, Row, NOTEBOOK_VAL_LOSS};
use crate::memory::MemoryEstimate;
use crate::signals::StopOnSignal;

/// What to run and where.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// The resolved configuration (command-line overrides applied).
    pub config: RunConfig,
    /// The run folder (`artifacts/<name>` unless `--run-dir`).
    pub run_dir: PathBuf,
    /// Continue from the run folder's latest checkpoint.
    pub resume: bool,
    /// Delete the run folder's checkpoints and logs and start over.
    pub fresh: bool,
    /// Plain progress lines instead of the dashboard (also chosen when stdout is not a terminal).
    pub plain: bool,
    /// Memory the run may take, in bytes (see [`crate::memory::available`]); a run whose
    /// estimate exceeds it is refused before anything is allocated. `None`: not checked.
    pub memory_limit: Option<u64>,
    /// The processes training the run together ([`crate::collective`]): [`crate::collective::Alone`] for one,
    /// MPI's world under `mpirun`. Each trains its share of every batch's rows; rank 0 alone
    /// writes the run folder.
    pub collective: Arc<dyn Collective>,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// Iterations done in all.
    pub iteration: usize,
    /// The last checkpoint written.
    pub last_checkpoint: Option<PathBuf>,
    /// The best checkpoint by validation loss, and that loss.
    pub best: Option<(PathBuf, f64)>,
    /// Stopped early by the user (a signal, or the dashboard's stop key).
    pub interrupted: bool,
    /// The signal that stopped it, if one did (2 SIGINT, 15 SIGTERM, 1 SIGHUP).
    pub signal: Option<i32>,
}

impl TrainReport {
    /// The lines printed when a run ends: how it stopped, its last and best checkpoints.
    pub fn summary(&self) -> String {
        let mut summary = String::new();
        if self.interrupted {
            summary += &format!("stopped at iteration {}", self.iteration);
            if let Some(s) = self.signal {
                summary += &format!(" ({})", crate::signals::signal_name(s));
            }
            summary.push('\n');
        }
        if let Some(p) = &self.last_checkpoint {
            summary += &format!("last checkpoint: {}\n", p.display());
        }
        if let Some((p, v)) = &self.best {
            summary += &format!(
                "best checkpoint: {} (validation loss {v:.4})\n",
                p.display()
            );
        }
        summary += "sample from it:  cargo xtask sample\n";
        summary
    }
}

type B<I> = Autodiff<I>;
type Optim<I> = RecordingOptim<
    burn::optim::adaptor::OptimizerAdaptor<burn::optim::Adam, Trainee<B<I>>, B<I>>,
    OptimRecord<I>,
>;
type OptimRecord<I> = <burn::optim::adaptor::OptimizerAdaptor<
    burn::optim::Adam,
    Trainee<B<I>>,
    B<I>,
> as Optimizer<Trainee<B<I>>, B<I>>>::Record;
type Components<I> = LearningComponentsMarker<B<I>, f64, Trainee<B<I>>, Optim<I>>;

fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::default()
}

/// Prepares the run folder, builds or restores the model and optimizer, and trains with
/// burn-train's learner on `Autodiff<I>` (its dashboard when stdout is a terminal).
pub fn train<I: CellKernels>(opts: TrainOptions, device: I::Device) -> anyhow::Result<TrainReport> {
    // A stop (a signal, or the dashboard's key) is honoured from here on: while the text is
    // prepared, between batches and inside a validation.
    let interrupter = Interrupter::new();
    let signals =
        StopOnSignal::install(interrupter.clone()).context("cannot listen for stop signals")?;
    // In a data-parallel run rank 0 locks the folder and prepares the text first; the others
    // then read what it left (a resumed checkpoint, the cache of prepared ids).
    let world = opts.collective.clone();
    let root = world.is_root();
    if !root {
        world.barrier();
    }
    let folder = match root {
        true => RunFolder::lock(&opts.run_dir)?,
        false => RunFolder::follow(&opts.run_dir),
    };
    let resume_from = folder.prepare(opts.resume, opts.fresh)?;
    let (config, base) = settle_config(opts.config, resume_from.as_ref())?;
    if !config.batch_size.is_multiple_of(world.size()) {
        bail!(
            "batch_size {} does not divide among {} processes: make it a multiple of the number of ranks",
            config.batch_size,
            world.size()
        );
    }
    let stop = || interrupter.should_stop();
    let corpus = read_text(&config, resume_from.as_ref(), base.as_ref(), &stop);
    if root {
        world.barrier();
    }
    let corpus = match corpus {
        Err(e) if is_interrupted(&e) => {
            return Ok(TrainReport {
                iteration: resume_from.as_ref().map_or(0, |c| c.meta.iteration),
                last_checkpoint: None,
                best: folder.best(),
                interrupted: true,
                signal: signals.received(),
            });
        }
        corpus => corpus?,
    };
    let plain = opts.plain || !std::io::stdout().is_terminal();
    println!("{}", corpus.describe(&config));
    println!("precision:       {}", config.precision_line());
    println!("run folder:      {}", folder.dir().display());
    check_memory(&folder, &config, &corpus, opts.memory_limit)?;
    let dir = folder.dir();
    if root {
        if opts.fresh {
            folder.clear()?;
        }
        // The resolved config and the vocabulary, before the first step.
        std::fs::write(dir.join("config.toml"), toml::to_string_pretty(&config)?)?;
        std::fs::write(
            dir.join("vocab.json"),
            serde_json::to_string(&corpus.vocab)?,
        )?;
    }

    let mut start = Start::<I>::build(
        &config,
        &corpus,
        base.as_ref(),
        resume_from.as_ref(),
        &device,
    )?;
    let plan = Plan::new(corpus.train.len(), corpus.stop_at(&config));
    if start.iteration >= plan.stop_at {
        bail!(
            "{}: the run is complete ({} of {} iterations); raise --epochs or --max-iters to train further",
            dir.display(),
            start.iteration,
            plan.stop_at
        );
    }
    let (val_batches, val_read) = (config.val_batches, corpus.val_batches(&config));
    let carry = Carry::<I>::new(
        config,
        &folder,
        corpus.vocab,
        &mut start,
        plan,
        plain,
        world,
    )?
    .reading(val_read);
    let (train, val) = (corpus.train, corpus.val);
    let val = val.unwrap_or_else(|| train.clone());
    let train_loader: TrainLoader<Components<I>> =
        Arc::new(BatchLoader::<B<I>>::new(train, device.clone()));
    let valid_loader: ValidLoader<Components<I>> =
        Arc::new(BatchLoader::<I>::spread(val, val_batches, device));
    let loaders = (train_loader, valid_loader);
    launch(Arc::new(carry), start, loaders, interrupter, signals)
}

/// Whether `e` is a stop request that came while the text was being prepared.
fn is_interrupted(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<karnna_data::DataError>(),
            Some(karnna_data::DataError::Interrupted)
        )
    })
}

/// The run's config: `config` itself for a new run, the checkpoint's run for a resumed one
/// ([`RunConfig::resume`]), the base's shape when fine-tuning ([`RunConfig::fine_tune`]); and
/// the base checkpoint, when fine-tuning. Notes on what the config asked for and does not get
/// are printed.
fn settle_config(
    config: RunConfig,
    resume_from: Option<&Checkpoint>,
) -> anyhow::Result<(RunConfig, Option<Checkpoint>)> {
    let (config, note) = match resume_from {
        Some(ckpt) => config.resume(ckpt)?,
        None => (config, None),
    };
    note.into_iter().for_each(|n| println!("{n}"));
    // Fine-tuning is for a new run only: a resumed one has its own weights.
    let base = match (resume_from, &config.init_from) {
        (None, Some(path)) => read_base(path)?,
        _ => return Ok((config, None)),
    };
    let (config, note) = config.fine_tune(&base);
    note.into_iter().for_each(|n| println!("{n}"));
    Ok((config, Some(base)))
}

/// The checkpoint that `init_from` names: a file, or a run folder's best checkpoint.
fn read_base(path: &std::path::Path) -> anyhow::Result<Checkpoint> {
    let file = if path.is_dir() {
        RunDir::new(path).best_or_err().map_err(|_| {
            anyhow::anyhow!(
                "{}: init_from: no checkpoints in this run folder",
                path.display()
            )
        })?
    } else {
        path.to_path_buf()
    };
    Checkpoint::read(&file).context("init_from")
}

/// The text (downloaded first when the config says where from), in batches, with the
/// vocabulary of the resumed checkpoint, or the base's extended with the text's characters, or
/// the text's own.
fn read_text(
    config: &RunConfig,
    resume_from: Option<&Checkpoint>,
    base: Option<&Checkpoint>,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<Corpus> {
    if let [one] = config.data.as_slice() {
        crate::fetch::ensure_text(one, &config.data_url, &config.data_sha256)?;
    }
    let vocab = match (resume_from, base) {
        (Some(ckpt), _) => Want::Fixed(ckpt.meta.vocab.clone()),
        (None, Some(base)) => Want::Extend(base.meta.vocab.clone()),
        (None, None) => Want::Text,
    };
    let prep = Preparation {
        stop,
        ..Preparation::of(config)
    };
    Corpus::load_with(&config.data, config, vocab, &prep)
}

/// Refuses a run whose memory estimate exceeds `limit`, before anything is allocated.
fn check_memory(
    folder: &RunFolder,
    config: &RunConfig,
    corpus: &Corpus,
    limit: Option<u64>,
) -> anyhow::Result<()> {
    let model = config.model(corpus.vocab.len());
    let need = MemoryEstimate::of(&model, config.batch_size, config.num_steps).with_text(
        corpus.prepared.width,
        config.batch_size,
        config.num_steps,
    );
    if let Some(limit) = limit.filter(|&l| need.total() > l) {
        bail!(
            "{}: not enough memory for this model: training it needs {}, and {} is available; make lstm_size, num_layers, batch_size or num_steps smaller",
            folder.dir().display(),
            need.describe(),
            crate::memory::bytes(limit)
        );
    }
    Ok(())
}

/// Where the learner starts: the model (untrained, fine-tuned from a base, or resumed), the
/// optimizer with its saved state, the iteration and the carried recurrent state.
struct Start<I: CellKernels> {
    model: karnna_model::CharRnn<B<I>>,
    optim: Optim<I>,
    optim_record: Option<OptimRecord<I>>,
    iteration: usize,
    state: Option<RnnState<B<I>>>,
}

impl<I: CellKernels> Start<I> {
    fn build(
        config: &RunConfig,
        corpus: &Corpus,
        base: Option<&Checkpoint>,
        resume_from: Option<&Checkpoint>,
        device: &I::Device,
    ) -> anyhow::Result<Self> {
        let model_config = config.model(corpus.vocab.len());
        I::seed(device, config.seed);
        let mut model = model_config.init_seeded::<B<I>>(config.init, config.seed, device);
        if let Some(base) = base {
            // The untrained model gives the rows of the characters the base never saw.
            model = base
                .model::<B<I>>(device)?
                .with_vocab(&base.meta.vocab, &corpus.vocab, model);
            println!(
                "fine-tuning:     from {} (iteration {}), {} new characters, a fresh optimizer",
                base.path.display(),
                base.meta.iteration,
                corpus.new_chars.len()
            );
        }
        let adam = AdamConfig::new()
            .with_epsilon(1e-8)
            .init::<B<I>, Trainee<B<I>>>();
        let mut start = Self {
            model,
            optim: RecordingOptim::new(adam),
            optim_record: None,
            iteration: 0,
            state: None,
        };
        if let Some(ckpt) = resume_from {
            start.resume(ckpt, config.batch_size, device)?;
        }
        start.model = start.model.with_matmul(config.matmul());
        Ok(start)
    }

    /// Takes the model, the optimizer's state, the iteration and the carried state from `ckpt`.
    fn resume(
        &mut self,
        ckpt: &Checkpoint,
        batch: usize,
        device: &I::Device,
    ) -> anyhow::Result<()> {
        self.model = ckpt.model::<B<I>>(device)?;
        self.iteration = ckpt.meta.iteration;
        let bad =
            |what: &str| anyhow::anyhow!("{}: {what} missing or unreadable", ckpt.path.display());
        let bytes = ckpt
            .section("optim")
            .ok_or_else(|| bad("optimizer state"))?;
        // Burn's loader trusts a record's ids and tensor sizes: checked first, never a panic.
        karnna_model::checkpoint::check_record(bytes, true)
            .map_err(|e| anyhow::anyhow!("{}: optimizer state: {e}", ckpt.path.display()))?;
        let record: OptimRecord<I> = Recorder::<B<I>>::load(&recorder(), bytes.to_vec(), device)
            .map_err(|_| bad("optimizer state"))?;
        self.optim_record = Some(record);
        let state = ckpt.section("state").ok_or_else(|| bad("LSTM state"))?;
        self.state = decode_state::<B<I>>(state, &ckpt.meta.model, batch, device);
        println!(
            "resuming:        {} (iteration {})",
            ckpt.path.display(),
            self.iteration
        );
        Ok(())
    }
}

/// Runs burn-train's learner with `carry` as its strategy (the dashboard, or [`Quiet`] for a
/// plain run) and reports how the run ended.
fn launch<I: CellKernels>(
    carry: Arc<Carry<I>>,
    start: Start<I>,
    (train_loader, valid_loader): (TrainLoader<Components<I>>, ValidLoader<Components<I>>),
    interrupter: Interrupter,
    signals: StopOnSignal,
) -> anyhow::Result<TrainReport> {
    let (config, plain) = (&carry.config, carry.plain);
    // burn-train writes its log and metric folders where it is told: rank 0 in the run folder,
    // the others in a scratch folder of their own, removed at the end.
    let scratch = (!carry.world.is_root())
        .then(|| std::env::temp_dir().join(format!("karnna-rank-{}", std::process::id())));
    let learner_dir = scratch
        .clone()
        .unwrap_or_else(|| carry.run.path().to_owned());
    let mut training = SupervisedTraining::new(&learner_dir, train_loader, valid_loader)
        .metrics((
            LossMetric::<Flex>::new(),
            CharMetric::new(CharMetricKind::BitsPerChar),
            CharMetric::new(CharMetricKind::Perplexity),
            CharMetric::new(CharMetricKind::CharsPerSecond),
            IterationSpeedMetric::new(),
        ))
        // Validation has no learning rate (it would show as 0).
        .metric_train_numeric(LearningRateMetric::new())
        .metrics((CpuUse::new(), CpuMemory::new()))
        .num_epochs(config.epochs)
        .with_interrupter(interrupter)
        .with_training_strategy(TrainingStrategy::Custom(carry.clone()));
    if plain {
        training = training.renderer(Quiet);
    }
    let mut learner = Learner::new(
        Trainee { model: start.model },
        start.optim,
        config.learning_rate,
    );
    if let Some(record) = start.optim_record {
        learner.load_optim(record);
    }
    // A kill key pressed after the loop's last check (`Loop::end_after_kill`) makes burn-train
    // panic on its way out (its event processor's thread is gone); the run has saved by then.
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| training.launch(learner)));
    let signal = signals.received();
    drop(signals);
    if let Some(dir) = scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    match result {
        Ok(result) => dashboard::end(result, plain),
        Err(_) if dashboard::killed() => {}
        Err(payload) => std::panic::resume_unwind(payload),
    }

    let shared = carry.shared.lock().unwrap();
    if let Some(e) = &shared.error {
        bail!("{e}");
    }
    Ok(shared.report(signal))
}

/// Rows `rows` of a carried state (`[layers, batch, H]`): a rank's share of a checkpoint's.
fn rows_of<B: Backend>(state: RnnState<B>, rows: std::ops::Range<usize>) -> RnnState<B> {
    if rows.start == 0 && rows.end == state.h.dims()[1] {
        return state;
    }
    let n = rows.end - rows.start;
    RnnState {
        h: state.h.narrow(1, rows.start, n),
        c: state.c.narrow(1, rows.start, n),
    }
}

/// The whole batch's carried state (`batch` rows) on rank 0, from every rank's share (each
/// `[layers, batch / ranks, H]`, rank 0's rows first); `None` on the other ranks, and on every
/// rank when there is no state to carry (the same on all of them). Alone, the state itself.
fn gather_state<B: Backend>(
    world: &dyn Collective,
    state: Option<&RnnState<B>>,
    batch: usize,
) -> Option<RnnState<B>> {
    let state = state?;
    if world.size() == 1 {
        return Some(state.clone());
    }
    let [layers, rows, h] = state.h.dims();
    let mut part = karnna_model::to_f32_vec(state.h.clone());
    part.extend(karnna_model::to_f32_vec(state.c.clone()));
    let all = world.gather(&part)?;
    // Rank k's part: its h then its c, each [layers, rows, H]; the whole is [layers, batch, H].
    let (each, block) = (rows * h, layers * rows * h);
    let mut whole = [
        vec![0.0f32; layers * batch * h],
        vec![0.0f32; layers * batch * h],
    ];
    for (k, part) in all.chunks_exact(2 * block).enumerate() {
        for (t, tensor) in whole.iter_mut().enumerate() {
            for l in 0..layers {
                let from = &part[t * block + l * each..][..each];
                tensor[(l * batch + k * rows) * h..][..each].copy_from_slice(from);
            }
        }
    }
    let device = state.h.device();
    let [hs, cs] =
        whole.map(|v| Tensor::from_data(TensorData::new(v, [layers, batch, h]), &device));
    Some(RnnState { h: hs, c: cs })
}

fn encode_state<B: Backend>(state: &RnnState<B>) -> Vec<u8> {
    let mut out = Vec::new();
    for t in [&state.h, &state.c] {
        for v in karnna_model::to_f32_vec(t.clone()) {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

fn decode_state<B: Backend>(
    bytes: &[u8],
    model: &karnna_model::CharRnnConfig,
    batch: usize,
    device: &B::Device,
) -> Option<RnnState<B>> {
    let shape = [model.shape.num_layers, batch, model.shape.lstm_size];
    let n = shape.iter().product::<usize>();
    if bytes.is_empty() {
        return None; // saved at the end of an epoch: the next one starts from zeros
    }
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (floats.len() == 2 * n).then(|| RnnState {
        h: Tensor::from_data(TensorData::new(floats[..n].to_vec(), shape), device),
        c: Tensor::from_data(TensorData::new(floats[n..].to_vec(), shape), device),
    })
}

/// Mutable state of the strategy (its `fit` takes `&self`).
struct Shared<B: Backend> {
    start_state: Option<RnnState<B>>,
    /// `metrics.csv`; `None` on a rank other than 0.
    log: Option<MetricsLog>,
    elapsed0: f64,
    best: Option<(PathBuf, f64)>,
    last_checkpoint: Option<PathBuf>,
    error: Option<String>,
    interrupted: bool,
    /// The iterations done: the loop's one counter, read by [`train`] once the learner returns.
    iteration: usize,
}

impl<B: Backend> Shared<B> {
    /// How the run ended, as the loop left it; `signal` is the one that stopped it, if any.
    fn report(&self, signal: Option<i32>) -> TrainReport {
        TrainReport {
            iteration: self.iteration,
            last_checkpoint: self.last_checkpoint.clone(),
            best: self.best.clone(),
            interrupted: self.interrupted,
            signal,
        }
    }
}

/// karnna's training strategy for burn-train: the notebook's loop with the recurrent state carried
/// across the batches of an epoch, feeding the learner's event processor (dashboard, metrics).
struct Carry<I: CellKernels> {
    /// The run's settled config (what its checkpoints record).
    config: RunConfig,
    run: RunDir,
    vocab: Vocab,
    /// The iteration the run starts from (0, or the resumed checkpoint's).
    start_iteration: usize,
    plan: Plan,
    plain: bool,
    /// Validation batches one validation reads, and in the split.
    val_read: (usize, usize),
    handle: OptimHandle<OptimRecord<I>>,
    shared: Mutex<Shared<B<I>>>,
    /// The processes of the run and this one's rows of each batch (all of them when alone).
    world: Arc<dyn Collective>,
    rows: std::ops::Range<usize>,
}

/// The shape of the loop: batches per epoch and where the run stops, for the progress bars.
#[derive(Clone, Copy)]
struct Plan {
    per_epoch: usize,
    /// The iteration the run ends at: the epochs' last, or `max_iters` when sooner.
    stop_at: usize,
    /// The epoch the run stops in (`max_iters` can end it before `epochs`).
    last_epoch: usize,
}

impl Plan {
    fn new(per_epoch: usize, stop_at: usize) -> Self {
        Self {
            per_epoch,
            stop_at,
            last_epoch: stop_at.div_ceil(per_epoch),
        }
    }

    /// The items of `epoch` the progress bar counts to (fewer in the epoch the run stops in).
    fn epoch_items(&self, epoch: usize) -> usize {
        self.per_epoch
            .min(self.stop_at - (epoch - 1) * self.per_epoch)
    }
}

/// [`Carry::fit`]'s moving parts: the learner, the carried state, where the loop is.
struct Loop<'a, I: CellKernels> {
    carry: &'a Carry<I>,
    shared: std::sync::MutexGuard<'a, Shared<B<I>>>,
    learner: Learner<Components<I>>,
    processor: SupervisedTrainingEventProcessor<Components<I>>,
    interrupter: Interrupter,
    valid_loader: ValidLoader<Components<I>>,
    state: Option<RnnState<B<I>>>,
    started: Instant,
    /// The stop every rank agreed on at the last record (a signal or the stop key on any of
    /// them): the loop ends after the iteration that saved it.
    stopping: bool,
    /// Time in the gradients' all-reduce and in whole steps, for a data-parallel run's
    /// closing line.
    comm_secs: f64,
    step_secs: f64,
    steps: usize,
}

/// A step done, for [`Loop::record`]: batch `k` of `epoch`, its output and timing.
struct Done<I: CellKernels> {
    epoch: usize,
    k: usize,
    loss: f64,
    secs: f64,
    out: CharOutput<B<I>>,
}

/// The seed of iteration `it`'s dropout masks (counted from 0), which the loop hands to the
/// model as [`DropoutSeed::Seeded`]: a function of the run's seed and the iteration only, so a
/// resumed run draws the masks the uninterrupted run would have.
pub fn step_seed(seed: u64, it: usize) -> u64 {
    let mut z = seed ^ (it as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 31)
}

impl<I: CellKernels> Carry<I> {
    /// The strategy for a run starting at `start` (its carried state moves here, this rank's
    /// rows of it), as rank `world.rank()` of `world`; the folder's best checkpoint so far and
    /// its metrics log are read here.
    fn new(
        config: RunConfig,
        folder: &RunFolder,
        vocab: Vocab,
        start: &mut Start<I>,
        plan: Plan,
        plain: bool,
        world: Arc<dyn Collective>,
    ) -> anyhow::Result<Self> {
        let dir = folder.dir();
        let rows = shard(config.batch_size, world.rank(), world.size());
        let reference = match config.reference_curve {
            ReferenceCurve::None => None,
            ReferenceCurve::Notebook => Some(("notebook", &NOTEBOOK_VAL_LOSS[..])),
        };
        // Only rank 0, which holds the folder's lock, writes in it.
        let log = match world.is_root() {
            true => {
                crate::provenance::record(dir, &config, start.iteration, world.size())?;
                Some(MetricsLog::open(dir, start.iteration)?.with_reference(reference))
            }
            false => None,
        };
        let elapsed0 = (log.as_ref())
            .and_then(|l| l.rows().last())
            .map_or(0.0, |r| r.elapsed_s);
        let shared = Shared {
            start_state: start.state.take().map(|s| rows_of(s, rows.clone())),
            log,
            elapsed0,
            best: folder.best(),
            last_checkpoint: None,
            error: None,
            interrupted: false,
            iteration: start.iteration,
        };
        Ok(Self {
            config,
            run: folder.run().clone(),
            vocab,
            start_iteration: start.iteration,
            plan,
            plain,
            val_read: (0, 0),
            handle: start.optim.handle(),
            shared: Mutex::new(shared),
            world,
            rows,
        })
    }

    /// The strategy, told how many of the split's validation batches one validation reads
    /// (for the plain lines).
    fn reading(mut self, val_read: (usize, usize)) -> Self {
        self.val_read = val_read;
        self
    }

    /// Validation loss over the validation loader's batches (all of the split, or
    /// `val_batches` spread through it), the state carried across them; `None` when a stop
    /// request cut it short (a partial mean is not a measured loss).
    fn validate(
        &self,
        model: &Trainee<I>,
        loader: &ValidLoader<Components<I>>,
        processor: &mut SupervisedTrainingEventProcessor<Components<I>>,
        (epoch, iteration): (Progress, usize),
        interrupter: &Interrupter,
    ) -> Option<f64> {
        let (mut total, mut n, mut state) = (0.0, 0usize, None);
        let mut iter = loader.iter();
        let world = &*self.world;
        while let Some(batch) = iter.next() {
            if world.any(interrupter.should_stop()) {
                return None;
            }
            // Each rank scores its rows; the ranks' means are of shares of one size.
            let (out, s) = model.eval_batch(batch.rows(self.rows.clone()), state.take());
            state = Some(s);
            let out = out.shared(world);
            total += out.loss_value();
            n += 1;
            let item =
                TrainingItem::new(out, iter.progress(), epoch.clone(), Some(iteration), None);
            let event = LearnerEvent::ProcessedItem(item);
            dashboard::kill_is_a_stop(interrupter, || processor.process_valid(event));
        }
        let event = LearnerEvent::EndEpoch(epoch.items_processed);
        dashboard::kill_is_a_stop(interrupter, || processor.process_valid(event));
        Some(total / n.max(1) as f64)
    }

    /// Writes a checkpoint (model, vocabulary, run config, optimizer, carried state) and
    /// updates the best-checkpoint pointer.
    fn save(
        &self,
        shared: &mut Shared<B<I>>,
        model: &Trainee<B<I>>,
        iteration: usize,
        val_loss: Option<f64>,
        train_loss: f64,
        state: Option<&RnnState<B<I>>>,
    ) -> anyhow::Result<PathBuf> {
        let optim = self
            .handle
            .take()
            .context("optimizer state was not recorded")?;
        let optim = Recorder::<B<I>>::record(&recorder(), optim, ())?;
        let state = state.map(encode_state).unwrap_or_default();
        let meta = CheckpointMeta {
            model: self.config.model(self.vocab.len()),
            vocab: self.vocab.clone(),
            iteration,
            val_loss,
            train_loss: Some(train_loss),
            run: self.config.checkpoint_json(),
        };
        let path = self
            .run
            .checkpoint_path(iteration, self.config.shape.lstm_size, val_loss);
        Checkpoint::save(
            &path,
            &meta,
            &model.model,
            &[("optim", &optim), ("state", &state)],
        )?;
        if let Some(v) = val_loss {
            if shared.best.as_ref().is_none_or(|(_, b)| v < *b) {
                self.run.set_best(&path)?;
                shared.best = Some((path.clone(), v));
            }
        }
        shared.last_checkpoint = Some(path.clone());
        Ok(path)
    }
}

impl<I: CellKernels> SupervisedLearningStrategy<Components<I>> for Carry<I> {
    fn fit(
        &self,
        components: TrainingComponents<Components<I>>,
        learner: Learner<Components<I>>,
        train_loader: TrainLoader<Components<I>>,
        valid_loader: ValidLoader<Components<I>>,
        _starting_epoch: usize,
    ) -> (
        Trainee<B<I>>,
        SupervisedTrainingEventProcessor<Components<I>>,
    ) {
        let mut shared = self.shared.lock().unwrap();
        if !self.plain {
            dashboard::dashboard_started();
        }
        let plan = self.plan;
        debug_assert_eq!(plan.per_epoch, train_loader.num_items());
        let mut run = Loop {
            carry: self,
            state: shared.start_state.take(),
            shared,
            learner,
            processor: components.event_processor,
            interrupter: components.interrupter,
            valid_loader,
            started: Instant::now(),
            stopping: false,
            comm_secs: 0.0,
            step_secs: 0.0,
            steps: 0,
        };
        for epoch in self.start_iteration / plan.per_epoch + 1..=self.config.epochs {
            if !run.epoch(epoch, &train_loader) {
                break;
            }
        }
        if dashboard::killed() {
            run.end_after_kill();
        }
        run.print_communication();
        (run.learner.model(), run.processor)
    }
}

impl<I: CellKernels> Loop<'_, I> {
    /// The rest of `epoch`'s batches, then its end; `false` when the run stops in it.
    fn epoch(&mut self, epoch: usize, train_loader: &TrainLoader<Components<I>>) -> bool {
        let per_epoch = self.carry.plan.per_epoch;
        let first = self.shared.iteration % per_epoch;
        if first == 0 {
            self.state = None; // the notebook resets the state at each epoch
        }
        for (k, batch) in (first + 1..).zip(train_loader.slice(first, per_epoch).iter()) {
            if !self.batch(epoch, k, batch) {
                return false;
            }
        }
        let (processor, event) = (&mut self.processor, LearnerEvent::EndEpoch(epoch));
        dashboard::kill_is_a_stop(&self.interrupter, || processor.process_train(event));
        true
    }

    /// A data-parallel run's closing line on rank 0: the bytes each step's all-reduce moves and
    /// the time it took, against the step's.
    fn print_communication(&self) {
        let world = &*self.carry.world;
        if world.size() == 1 || !world.is_root() || self.steps == 0 || !self.carry.plain {
            return;
        }
        let floats = self.carry.config.model(self.carry.vocab.len()).num_params();
        let (n, steps) = (world.size(), self.steps as f64);
        println!(
            "all-reduce:      {:.1} MB of gradients a step over {n} ranks, {:.1} ms a step ({:.1}% of a {:.0} ms step)",
            (floats * 4) as f64 / 1e6,
            1e3 * self.comm_secs / steps,
            100.0 * self.comm_secs / self.step_secs,
            1e3 * self.step_secs / steps
        );
    }

    /// Ends the process after the dashboard's kill key, once the run has saved (the loop stops
    /// as for any stop): burn-train's kill left its dashboard's and its event processor's
    /// threads dead, and what it does after this strategy returns would wait on them for ever.
    /// Prints what a stopped run prints and exits with a stop's code (0: no signal).
    fn end_after_kill(&mut self) -> ! {
        use std::io::Write;
        self.shared.interrupted = true;
        let mut out = std::io::stdout();
        let _ = out.write_all(self.shared.report(None).summary().as_bytes());
        let _ = out.flush();
        std::process::exit(0)
    }

    /// Batch `k` of `epoch`: a step and its record; `false` when the run stops here (the end,
    /// a stop request, or an error kept for [`train`] to report).
    fn batch(&mut self, epoch: usize, k: usize, batch: CharBatch<B<I>>) -> bool {
        if !self.carry.plain {
            dashboard::ctrl_c_as_signal();
        }
        let t0 = Instant::now();
        let (out, loss) = match self.step(batch) {
            Ok(step) => step,
            Err(e) => {
                self.shared.error = Some(e);
                return false;
            }
        };
        let secs = t0.elapsed().as_secs_f64();
        self.step_secs += secs;
        self.steps += 1;
        let done = Done {
            epoch,
            k,
            loss,
            secs,
            out,
        };
        if let Err(e) = self.record(done) {
            let dir = self.carry.run.path().display();
            self.shared.error = Some(format!("{dir}: {e:#}"));
            return false;
        }
        let interrupted = self.stopping;
        let stopping = interrupted || self.shared.iteration >= self.carry.plan.stop_at;
        if stopping {
            self.shared.interrupted = interrupted;
        }
        !stopping
    }

    /// One optimizer step on `batch` from the carried state: dropout seeded for the
    /// iteration, forward and backward, the clip, Adam; the iteration and the state advance.
    /// The output and its loss; an error when the loss is not finite (nothing is stepped then).
    fn step(&mut self, batch: CharBatch<B<I>>) -> Result<(CharOutput<B<I>>, f64), String> {
        let (config, world) = (&self.carry.config, &*self.carry.world);
        let seed = step_seed(config.seed, self.shared.iteration);
        let rows = self.carry.rows.clone();
        let dropout = match world.size() {
            1 => DropoutSeed::Seeded(seed),
            _ => DropoutSeed::SeededRows {
                seed,
                first: rows.start,
                total: config.batch_size,
            },
        };
        self.learner.lr_step();
        let model = self.learner.model();
        let batch = batch.rows(rows);
        let (out, mut grads, next_state) = model.train_batch(batch, self.state.take(), dropout);
        // Every rank then holds the whole batch's loss and gradients.
        let t0 = Instant::now();
        let out = out.shared(world);
        average_gradients(&model, &mut grads, world);
        self.comm_secs += t0.elapsed().as_secs_f64();
        let loss = out.loss_value();
        if !loss.is_finite() {
            let last = (self.shared.last_checkpoint.as_ref())
                .map_or("none".into(), |p| p.display().to_string());
            return Err(format!(
                "the loss became {loss} at iteration {}: stopping (last good checkpoint: {last}); try a lower learning_rate or grad_clip",
                self.shared.iteration + 1
            ));
        }
        clip_global_norm(&model, &mut grads, config.grad_clip);
        self.carry.handle.request();
        self.learner.optimizer_step(grads);
        self.shared.iteration += 1;
        self.state = Some(next_state);
        Ok((out, loss))
    }

    /// After a step: the metrics item, validation when due, the log row and plain line, and a
    /// checkpoint when due. The run's last iteration is validated and saved; a stop request
    /// saves at once, without starting a validation, and cuts short one under way.
    fn record(&mut self, done: Done<I>) -> anyhow::Result<()> {
        let (plan, iteration) = (self.carry.plan, self.shared.iteration);
        let epoch = Progress::new(done.epoch, plan.last_epoch);
        let chars_per_s = done.out.chars as f64 / done.secs;
        let item = TrainingItem::new(
            done.out,
            Progress::new(done.k, plan.epoch_items(done.epoch)),
            epoch.clone(),
            Some(iteration),
            Some(self.learner.lr_current()),
        );
        let (processor, event) = (&mut self.processor, LearnerEvent::ProcessedItem(item));
        dashboard::kill_is_a_stop(&self.interrupter, || processor.process_train(event));
        let end_of_epoch = done.k == plan.per_epoch;
        let world = self.carry.world.clone();
        let stopped = world.any(self.interrupter.should_stop());
        let (saving, validating) = self.due(end_of_epoch, stopped);
        let val_loss = if validating {
            let model = self.learner.model().valid();
            (self.carry).validate(
                &model,
                &self.valid_loader,
                &mut self.processor,
                (epoch, iteration),
                &self.interrupter,
            )
        } else {
            None
        };
        // A stop that came during the validation saves now.
        let late = world.any(self.interrupter.should_stop());
        self.stopping = stopped || late || (validating && val_loss.is_none());
        let saving = saving || self.stopping;
        let row = Row {
            iteration,
            epoch: done.epoch,
            train_loss: done.loss,
            val_loss,
            chars_per_s,
            elapsed_s: self.shared.elapsed0 + self.started.elapsed().as_secs_f64(),
        };
        if self.carry.plain && world.is_root() {
            self.print_plain(&row, done.secs, validating);
        }
        if let Some(log) = self.shared.log.as_mut() {
            log.push(row)?;
        }
        if saving {
            let carried = self.state.as_ref().filter(|_| !end_of_epoch);
            // The ranks train one model: checked at every checkpoint, before it is written.
            if world.size() > 1 && !world.same_everywhere(weights_digest(&self.learner.model())) {
                bail!(
                    "the {} processes' weights differ at iteration {iteration}: they no longer train one model (nothing saved)",
                    world.size()
                );
            }
            // Every rank's rows of the carried state, on rank 0, which alone saves.
            let carried = gather_state(&*world, carried, self.carry.config.batch_size);
            if !world.is_root() {
                return Ok(());
            }
            let carried = carried.as_ref();
            let model = self.learner.model();
            let saved = (self.carry).save(
                &mut self.shared,
                &model,
                iteration,
                val_loss,
                done.loss,
                carried,
            )?;
            if self.carry.plain {
                println!("saved {}", saved.display());
            }
        }
        Ok(())
    }

    /// Whether the iteration just done saves and whether it validates (a stop request, `stopped`
    /// as every rank agreed, saves and never starts a validation).
    fn due(&self, end_of_epoch: bool, stopped: bool) -> (bool, bool) {
        let (cfg, plan, iteration) = (&self.carry.config, &self.carry.plan, self.shared.iteration);
        // An epoch's end is saved only when epochs are at least `save_every_n` long: a short
        // text (a few batches an epoch) would otherwise write a checkpoint every few
        // iterations. Resuming mid-epoch is exact, so nothing depends on epoch-end saves.
        let saving = iteration.is_multiple_of(cfg.save_every_n)
            || iteration >= plan.stop_at
            || stopped
            || (end_of_epoch && plan.per_epoch >= cfg.save_every_n);
        let validating = cfg.val_fraction > 0.0
            && !stopped
            && (iteration.is_multiple_of(cfg.eval_every) || saving || end_of_epoch);
        (saving, validating)
    }

    /// The plain progress line for `row`, when due (every `log_every`, at a validation, and the
    /// run's first iteration), and a note when a stop cut its validation short.
    fn print_plain(&self, row: &Row, secs: f64, validating: bool) {
        let (cfg, plan) = (&self.carry.config, &self.carry.plan);
        if row.iteration.is_multiple_of(cfg.log_every)
            || row.val_loss.is_some()
            || row.iteration == self.carry.start_iteration + 1
        {
            let (read, all) = self.carry.val_read;
            let of = if read < all {
                format!(" ({read} of {all} batches)")
            } else {
                String::new()
            };
            print_line(row, (plan.stop_at, plan.last_epoch), secs, &of);
        }
        if validating && row.val_loss.is_none() {
            println!("validation stopped by the stop request: not recorded");
        }
    }
}

/// One plain progress line; `of` follows a validation loss (how many batches it read).
fn print_line(row: &Row, (total, epochs): (usize, usize), secs: f64, of: &str) {
    let val = row
        .val_loss
        .map_or(String::new(), |v| format!("  val {v:.4}{of}"));
    let t = row.elapsed_s as u64;
    println!(
        "iter {:>6}/{total}  epoch {}/{epochs}  loss {:.4}{val}  {secs:.3} s/it  {:.0} chars/s  {}m{:02}s",
        row.iteration, row.epoch, row.train_loss, row.chars_per_s, t / 60, t % 60
    );
}
