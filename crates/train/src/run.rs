//! A training run on burn-train's learner, with karnna's strategy: the LSTM state carried from
//! batch to batch, global-norm clipping, validation every `eval_every` iterations, checkpoints
//! every `save_every_n`, exact resume, and `metrics.csv` / `loss.svg`.

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
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use burn::train::{
    EventProcessorTraining, Learner, LearnerEvent, LearningComponentsMarker,
    SupervisedLearningStrategy, SupervisedTraining, SupervisedTrainingEventProcessor, TrainLoader,
    TrainingComponents, TrainingItem, TrainingStrategy, ValidLoader,
};
use karnna_model::checkpoint::{checkpoint_name, set_best_pointer};
use karnna_model::{CellKernels, Checkpoint, CheckpointMeta, RnnState};

use crate::config::{ReferenceCurve, RunConfig};
use crate::corpus::{Corpus, VocabFrom};
use crate::folder::RunFolder;
use crate::learner::{
    clip_global_norm, BatchLoader, CharMetric, CharMetricKind, OptimHandle, RecordingOptim, Trainee,
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

type Optim<I> = RecordingOptim<
    burn::optim::adaptor::OptimizerAdaptor<burn::optim::Adam, Trainee<Autodiff<I>>, Autodiff<I>>,
    OptimRecord<I>,
>;
type OptimRecord<I> = <burn::optim::adaptor::OptimizerAdaptor<
    burn::optim::Adam,
    Trainee<Autodiff<I>>,
    Autodiff<I>,
> as Optimizer<Trainee<Autodiff<I>>, Autodiff<I>>>::Record;
type Components<I> = LearningComponentsMarker<Autodiff<I>, f64, Trainee<Autodiff<I>>, Optim<I>>;

fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::default()
}

/// Prepares the run folder, builds or restores the model and optimizer, and trains with
/// burn-train's learner on `Autodiff<I>` (its dashboard when stdout is a terminal).
pub fn train<I: CellKernels>(opts: TrainOptions, device: I::Device) -> anyhow::Result<TrainReport> {
    let folder = RunFolder::lock(&opts.run_dir)?;
    let dir = folder.dir();
    let resume_from = folder.prepare(opts.resume, opts.fresh)?;

    // A resumed run keeps its own shape and batches; only the length of the run can change.
    let mut config = opts.config.clone();
    if let Some(ckpt) = &resume_from {
        let saved: RunConfig =
            serde_json::from_value(ckpt.meta.run.clone()).with_context(|| {
                format!(
                    "{}: the run config inside is unreadable",
                    ckpt.path.display()
                )
            })?;
        if config.shape() != saved.shape() {
            println!(
                "note:            resuming keeps the run's own model ({}); the config's {} is not used",
                saved.shape(),
                config.shape()
            );
        }
        config = RunConfig {
            epochs: config.epochs,
            max_iters: config.max_iters,
            data: config.data.clone(),
            device: config.device,
            cpu_backend: config.cpu_backend,
            ..saved
        };
    }
    // Fine-tuning (a new run only; a resumed one has its own weights): the base checkpoint
    // decides the model's shape, and its vocabulary is extended with the text's characters.
    let base = match (&resume_from, &config.init_from) {
        (None, Some(path)) => {
            // A run folder means its best checkpoint.
            let file = if path.is_dir() {
                karnna_model::checkpoint::best_checkpoint(path)
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{}: init_from: no checkpoints in this run folder",
                            path.display()
                        )
                    })?
            } else {
                path.clone()
            };
            Some(Checkpoint::read(&file).context("init_from")?)
        }
        _ => None,
    };
    if let Some(base) = &base {
        let m = &base.meta.model;
        let from_base = RunConfig {
            cell: m.cell(),
            num_layers: m.num_layers,
            lstm_size: m.lstm_size,
            ..config.clone()
        };
        if from_base.shape() != config.shape() {
            println!(
                "note:            the model's shape comes from {} ({}); the config's {} is not used",
                base.path.display(),
                from_base.shape(),
                config.shape()
            );
        }
        config = from_base;
    }
    if let [one] = config.data.as_slice() {
        crate::fetch::ensure_text(one, &config.data_url, &config.data_sha256)?;
    }
    let vocab = match (&resume_from, &base) {
        (Some(ckpt), _) => VocabFrom::Fixed(ckpt.meta.vocab.clone()),
        (None, Some(base)) => VocabFrom::Extend(base.meta.vocab.clone()),
        (None, None) => VocabFrom::Text,
    };
    let corpus = Corpus::load(&config.data, &config, vocab)?;
    let model_config = config.model(corpus.vocab.len());
    let plain = opts.plain || !std::io::stdout().is_terminal();

    println!("{}", corpus.describe(&config));
    println!("run folder:      {}", dir.display());
    let need = MemoryEstimate::of(&model_config, config.batch_size, config.num_steps);
    if let Some(limit) = opts.memory_limit.filter(|&l| need.total() > l) {
        bail!(
            "{}: not enough memory for this model: training it needs {}, and {} is available; make lstm_size, num_layers, batch_size or num_steps smaller",
            dir.display(),
            need.describe(),
            crate::memory::bytes(limit)
        );
    }

    if opts.fresh {
        folder.clear()?;
    }

    // The resolved config and the vocabulary, before the first step.
    std::fs::write(dir.join("config.toml"), toml::to_string_pretty(&config)?)?;
    std::fs::write(
        dir.join("vocab.json"),
        serde_json::to_string(&corpus.vocab)?,
    )?;

    type B<I> = Autodiff<I>;
    I::seed(&device, config.seed);
    let mut model = model_config.init_seeded::<B<I>>(config.init, config.seed, &device);
    if let Some(base) = &base {
        // The untrained model gives the rows of the characters the base never saw.
        model = base
            .model::<B<I>>(&device)?
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
    let optim: Optim<I> = RecordingOptim::new(adam);
    let handle = optim.handle();
    let mut start_iteration = 0;
    let mut start_state = None;
    let mut optim_record = None;
    if let Some(ckpt) = &resume_from {
        model = ckpt.model::<B<I>>(&device)?;
        start_iteration = ckpt.meta.iteration;
        let bad =
            |what: &str| anyhow::anyhow!("{}: {what} missing or unreadable", ckpt.path.display());
        let bytes = ckpt
            .section("optim")
            .ok_or_else(|| bad("optimizer state"))?;
        let record: OptimRecord<I> = Recorder::<B<I>>::load(&recorder(), bytes.to_vec(), &device)
            .map_err(|_| bad("optimizer state"))?;
        optim_record = Some(record);
        let state = ckpt.section("state").ok_or_else(|| bad("LSTM state"))?;
        start_state = decode_state::<B<I>>(state, &model_config, config.batch_size, &device);
        println!(
            "resuming:        {} (iteration {start_iteration})",
            ckpt.path.display()
        );
    }
    let stop_at = corpus.stop_at(&config);
    if start_iteration >= stop_at {
        bail!(
            "{}: the run is complete ({start_iteration} of {stop_at} iterations); raise --epochs or --max-iters to train further",
            dir.display()
        );
    }

    let reference = match config.reference_curve {
        ReferenceCurve::None => None,
        ReferenceCurve::Notebook => Some(("notebook", &NOTEBOOK_VAL_LOSS[..])),
    };
    crate::provenance::record(dir, &config, start_iteration)?;
    let log = MetricsLog::open(dir, start_iteration)?.with_reference(reference);
    let elapsed0 = log.rows().last().map_or(0.0, |r| r.elapsed_s);
    let best = folder.best();
    let carry = Arc::new(Carry::<I> {
        config: config.clone(),
        dir: dir.to_path_buf(),
        vocab: corpus.vocab.clone(),
        start_iteration,
        stop_at,
        plain,
        handle,
        shared: Mutex::new(Shared {
            start_state,
            log,
            elapsed0,
            best,
            last_checkpoint: None,
            error: None,
            interrupted: false,
            iteration: start_iteration,
        }),
    });

    let train_loader: TrainLoader<Components<I>> = Arc::new(BatchLoader::<B<I>>::new(
        corpus.train.clone(),
        device.clone(),
    ));
    let valid_batches = corpus.val.clone().unwrap_or_else(|| corpus.train.clone());
    let valid_loader: ValidLoader<Components<I>> =
        Arc::new(BatchLoader::<I>::new(valid_batches, device.clone()));
    let mut training = SupervisedTraining::new(dir, train_loader, valid_loader)
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
        .with_training_strategy(TrainingStrategy::Custom(carry.clone()));
    if plain {
        training = training.renderer(Quiet);
    }
    let signals =
        StopOnSignal::install(training.interrupter()).context("cannot listen for stop signals")?;

    let mut learner = Learner::new(Trainee { model }, optim, config.learning_rate);
    if let Some(record) = optim_record {
        learner.load_optim(record);
    }
    let result = training.launch(learner);
    let signal = signals.received();
    drop(signals);
    if !plain && !std::io::stdout().is_terminal() {
        // The terminal went away under the dashboard (SIGHUP). burn-train's dashboard thread
        // then spins polling the hung-up terminal, and dropping the renderer joins that thread:
        // the process would never exit. The checkpoint is saved; leave the renderer undropped.
        std::mem::forget(result);
    } else {
        drop(result);
    }

    let shared = carry.shared.lock().unwrap();
    if let Some(e) = &shared.error {
        bail!("{e}");
    }
    Ok(TrainReport {
        iteration: shared.iteration,
        last_checkpoint: shared.last_checkpoint.clone(),
        best: shared.best.clone(),
        interrupted: shared.interrupted,
        signal,
    })
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
    let shape = [model.num_layers, batch, model.lstm_size];
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
    log: MetricsLog,
    elapsed0: f64,
    best: Option<(PathBuf, f64)>,
    last_checkpoint: Option<PathBuf>,
    error: Option<String>,
    interrupted: bool,
    iteration: usize,
}

/// karnna's training strategy for burn-train: the notebook's loop with the LSTM state carried
/// across the batches of an epoch, feeding the learner's event processor (dashboard, metrics).
struct Carry<I: CellKernels> {
    config: RunConfig,
    dir: PathBuf,
    vocab: karnna_data::Vocab,
    start_iteration: usize,
    /// The iteration the run ends at: the epochs' last, or `max_iters` when sooner.
    stop_at: usize,
    plain: bool,
    handle: OptimHandle<OptimRecord<I>>,
    shared: Mutex<Shared<Autodiff<I>>>,
}

/// The seed of iteration `it`'s dropout masks (counted from 0), which the loop hands to
/// [`karnna_model::seed_dropout`]: a function of the run's seed and the iteration only, so a
/// resumed run draws the masks the uninterrupted run would have.
pub fn step_seed(seed: u64, it: usize) -> u64 {
    let mut z = seed ^ (it as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 31)
}

impl<I: CellKernels> Carry<I> {
    /// Validation loss over the whole validation split, the state carried across its batches.
    fn validate(
        &self,
        model: &Trainee<I>,
        loader: &ValidLoader<Components<I>>,
        processor: &mut SupervisedTrainingEventProcessor<Components<I>>,
        epoch: Progress,
        iteration: usize,
    ) -> f64 {
        let (mut total, mut n, mut state) = (0.0, 0usize, None);
        let mut iter = loader.iter();
        while let Some(batch) = iter.next() {
            let (out, s) = model.eval_batch(batch, state.take());
            state = Some(s);
            total += out.loss_value();
            n += 1;
            let item =
                TrainingItem::new(out, iter.progress(), epoch.clone(), Some(iteration), None);
            processor.process_valid(LearnerEvent::ProcessedItem(item));
        }
        processor.process_valid(LearnerEvent::EndEpoch(epoch.items_processed));
        total / n.max(1) as f64
    }

    /// Writes a checkpoint (model, config, vocabulary, optimizer, carried state) and updates
    /// the best-checkpoint pointer.
    fn save(
        &self,
        shared: &mut Shared<Autodiff<I>>,
        model: &Trainee<Autodiff<I>>,
        iteration: usize,
        val_loss: Option<f64>,
        train_loss: f64,
        state: Option<&RnnState<Autodiff<I>>>,
    ) -> anyhow::Result<PathBuf> {
        let optim = self
            .handle
            .take()
            .context("optimizer state was not recorded")?;
        let optim = Recorder::<Autodiff<I>>::record(&recorder(), optim, ())?;
        let state = state.map(encode_state).unwrap_or_default();
        let meta = CheckpointMeta {
            model: self.config.model(self.vocab.len()),
            vocab: self.vocab.clone(),
            iteration,
            val_loss,
            train_loss: Some(train_loss),
            run: serde_json::to_value(&self.config)?,
        };
        let path = self
            .dir
            .join(checkpoint_name(iteration, self.config.lstm_size, val_loss));
        Checkpoint::save(
            &path,
            &meta,
            &model.model,
            &[("optim", &optim), ("state", &state)],
        )?;
        if let Some(v) = val_loss {
            if shared.best.as_ref().is_none_or(|(_, b)| v < *b) {
                set_best_pointer(&self.dir, &path)?;
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
        mut learner: Learner<Components<I>>,
        train_loader: TrainLoader<Components<I>>,
        valid_loader: ValidLoader<Components<I>>,
        _starting_epoch: usize,
    ) -> (
        Trainee<Autodiff<I>>,
        SupervisedTrainingEventProcessor<Components<I>>,
    ) {
        let mut processor = components.event_processor;
        let interrupter = components.interrupter;
        let cfg = &self.config;
        let per_epoch = train_loader.num_items();
        let mut shared = self.shared.lock().unwrap();
        if !self.plain {
            idle_priority_for("train-renderer");
            quiet_dashboard_after_hangup();
        }
        let mut state = shared.start_state.take();
        let mut iteration = self.start_iteration;
        let stop_at = self.stop_at;
        // The dashboard's bars and the plain lines end where the run stops: max_iters can end
        // it inside an epoch, before `epochs`.
        let last_epoch = stop_at.div_ceil(per_epoch);
        let epoch_items = |epoch: usize| per_epoch.min(stop_at - (epoch - 1) * per_epoch);
        let started = Instant::now();
        let has_val = cfg.val_fraction > 0.0;

        'epochs: for epoch in iteration / per_epoch + 1..=cfg.epochs {
            let first = iteration % per_epoch;
            if first == 0 {
                state = None; // the notebook resets the state at each epoch
            }
            let loader = train_loader.slice(first, per_epoch);
            let batches = loader.iter();
            let mut k = first;
            for batch in batches {
                if !self.plain {
                    ctrl_c_as_signal();
                }
                let t0 = Instant::now();
                karnna_model::seed_dropout(step_seed(cfg.seed, iteration));
                learner.lr_step();
                let model = learner.model();
                let (out, mut grads, next_state) = model.train_batch(batch, state.take());
                let loss = out.loss_value();
                if !loss.is_finite() {
                    let last = shared
                        .last_checkpoint
                        .as_ref()
                        .map_or("none".into(), |p| p.display().to_string());
                    shared.error = Some(format!(
                        "the loss became {loss} at iteration {}: stopping (last good checkpoint: {last}); try a lower learning_rate or grad_clip",
                        iteration + 1
                    ));
                    break 'epochs;
                }
                clip_global_norm(&model, &mut grads, cfg.grad_clip);
                self.handle.request();
                learner.optimizer_step(grads);
                iteration += 1;
                k += 1;
                state = Some(next_state);
                let secs = t0.elapsed().as_secs_f64();
                let chars = out.chars;
                let item = TrainingItem::new(
                    out,
                    Progress::new(k, epoch_items(epoch)),
                    Progress::new(epoch, last_epoch),
                    Some(iteration),
                    Some(learner.lr_current()),
                );
                processor.process_train(LearnerEvent::ProcessedItem(item));

                let end_of_epoch = k == per_epoch;
                let stopping = interrupter.should_stop() || iteration >= stop_at;
                // An epoch's end is saved only when epochs are at least `save_every_n` long: a
                // short text (a few batches an epoch) would otherwise write a checkpoint every few
                // iterations. Resuming mid-epoch is exact, so nothing depends on epoch-end saves.
                let saving = iteration.is_multiple_of(cfg.save_every_n)
                    || stopping
                    || (end_of_epoch && per_epoch >= cfg.save_every_n);
                let val_loss = (has_val
                    && (iteration.is_multiple_of(cfg.eval_every) || saving || end_of_epoch))
                    .then(|| {
                        self.validate(
                            &learner.model().valid(),
                            &valid_loader,
                            &mut processor,
                            Progress::new(epoch, last_epoch),
                            iteration,
                        )
                    });
                let row = Row {
                    iteration,
                    epoch,
                    train_loss: loss,
                    val_loss,
                    chars_per_s: chars as f64 / secs,
                    elapsed_s: shared.elapsed0 + started.elapsed().as_secs_f64(),
                };
                if self.plain
                    && (iteration.is_multiple_of(cfg.log_every)
                        || val_loss.is_some()
                        || iteration == self.start_iteration + 1)
                {
                    print_line(&row, stop_at, last_epoch, secs);
                }
                let mut result = shared.log.push(row).map_err(anyhow::Error::from);
                if saving && result.is_ok() {
                    let carried = (!end_of_epoch).then_some(state.as_ref()).flatten();
                    result = self
                        .save(
                            &mut shared,
                            &learner.model(),
                            iteration,
                            val_loss,
                            loss,
                            carried,
                        )
                        .map(|p| {
                            if self.plain {
                                println!("saved {}", p.display());
                            }
                        });
                }
                if let Err(e) = result {
                    shared.error = Some(format!("{}: {e:#}", self.dir.display()));
                    break 'epochs;
                }
                shared.iteration = iteration;
                if stopping {
                    shared.interrupted = interrupter.should_stop();
                    break 'epochs;
                }
            }
            processor.process_train(LearnerEvent::EndEpoch(epoch));
        }
        (learner.model(), processor)
    }
}

fn print_line(row: &Row, total: usize, epochs: usize, secs: f64) {
    let val = row
        .val_loss
        .map_or(String::new(), |v| format!("  val {v:.4}"));
    let t = row.elapsed_s as u64;
    println!(
        "iter {:>6}/{total}  epoch {}/{epochs}  loss {:.4}{val}  {secs:.3} s/it  {:.0} chars/s  {}m{:02}s",
        row.iteration, row.epoch, row.train_loss, row.chars_per_s, t / 60, t % 60
    );
}

/// The renderer when stdout is not a terminal: the strategy prints its own plain lines.
struct Quiet;

impl MetricsRendererTraining for Quiet {
    fn update_train(&mut self, _: MetricState) {}
    fn update_valid(&mut self, _: MetricState) {}
    fn render_train(&mut self, _: TrainingProgress, _: Vec<ProgressType>) {}
    fn render_valid(&mut self, _: TrainingProgress, _: Vec<ProgressType>) {}
    fn on_train_end(
        &mut self,
        _: Option<burn::train::LearnerSummary>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        Ok(())
    }
}

impl MetricsRendererEvaluation for Quiet {
    fn update_test(&mut self, _: EvaluationName, _: MetricState) {}
    fn render_test(&mut self, _: EvaluationProgress, _: Vec<ProgressType>) {}
}

impl MetricsRenderer for Quiet {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _: burn::train::metric::MetricDefinition) {}
}

/// Makes Ctrl-C raise SIGINT again while the dashboard runs: the TUI puts the terminal in raw
/// mode, which turns Ctrl-C into a key press it ignores. With the signal back, Ctrl-C reaches
/// the handler that asks the loop to save a checkpoint and stop cleanly.
#[cfg(unix)]
fn ctrl_c_as_signal() {
    // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed, then filled, termios struct.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(libc::STDIN_FILENO, &mut t) == 0 && t.c_lflag & libc::ISIG == 0 {
            t.c_lflag |= libc::ISIG;
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t);
        }
    }
}

#[cfg(not(unix))]
fn ctrl_c_as_signal() {}

/// Silences the panic of burn-train's dashboard thread ("train-renderer") once the terminal is
/// gone (SIGHUP): its renderer unwraps the terminal reset, which a hung-up terminal refuses, and
/// the panic hooks burn-train installed would print a panic and a backtrace to stderr. The stop
/// itself is clean (the checkpoint is saved; see `train`). Installed once, after burn-train's
/// own hooks (its experiment logger's is in place when the strategy runs); every other panic
/// goes on to them.
fn quiet_dashboard_after_hangup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let next = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let dashboard = std::thread::current().name() == Some("train-renderer");
            let terminal_gone = !std::io::stdout().is_terminal();
            if !(dashboard && terminal_gone) {
                next(info);
            }
        }));
    });
}

/// Moves this process's threads named `name` to the idle scheduling class.
///
/// burn-train's dashboard thread ("train-renderer") polls its event channel in a loop without
/// sleeping between its 10 Hz redraws, so it keeps a core busy: on a 2-core machine that took a
/// quarter of the training speed (300 iterations of `anna-cpu`: 30.2 s under the dashboard,
/// 24.4 s without). In the idle class it runs on what the training leaves, which is plenty for
/// its redraws and key presses.
#[cfg(target_os = "linux")]
fn idle_priority_for(name: &str) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        if comm.trim_end() == name {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: sets the policy of one of this process's threads; a failure changes nothing.
            unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) };
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn idle_priority_for(_: &str) {}
