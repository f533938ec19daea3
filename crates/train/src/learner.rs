//! The pieces burn-train's learner is built from: the model as a training step, the ordered
//! batch loader, the output item and metrics, the optimizer, and global-norm clipping.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, MultiGradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Adaptor, ItemLazy, LossInput, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric,
    NumericAttributes, NumericEntry, SerializedEntry,
};
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use karnna_data::{Batch, Batches};
use karnna_model::{CellBackend, CharRnn, DropoutSeed, Recurrence, RnnState};

use crate::collective::Collective;

/// The model as burn-train sees it (a newtype, since `TrainStep` and `CharRnn` are both foreign
/// to this crate).
#[derive(Module, Debug)]
pub struct Trainee<B: Backend> {
    /// The character model.
    pub model: CharRnn<B>,
}

/// One batch as tensors, with the recurrent state to start from (`None`: zeros).
#[derive(Clone, Debug)]
pub struct CharBatch<B: Backend> {
    /// Input ids `[batch, steps]`.
    pub inputs: Tensor<B, 2, Int>,
    /// Target ids `[batch, steps]`.
    pub targets: Tensor<B, 2, Int>,
}

impl<B: Backend> CharBatch<B> {
    /// Moves a data-crate batch onto `device`.
    pub fn new(batch: &Batch, device: &B::Device) -> Self {
        let shape = [batch.n_seqs, batch.n_steps];
        let ints = |ids: &[u32]| {
            let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
            Tensor::<B, 1, Int>::from_ints(ids.as_slice(), device).reshape(shape)
        };
        Self {
            inputs: ints(&batch.inputs),
            targets: ints(&batch.targets),
        }
    }

    /// Rows `rows` of the batch: a data-parallel rank's share.
    pub fn rows(self, rows: std::ops::Range<usize>) -> Self {
        if rows.start == 0 && rows.end == self.inputs.dims()[0] {
            return self;
        }
        let n = rows.end - rows.start;
        Self {
            inputs: self.inputs.narrow(0, rows.start, n),
            targets: self.targets.narrow(0, rows.start, n),
        }
    }
}

/// Mean cross-entropy (nats per character) of time-major logits `[steps, batch, vocab]` against
/// batch-major targets `[batch, steps]`; returns a `[1]` tensor.
pub fn char_loss<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [steps, batch, vocab] = logits.dims();
    let logits = logits.reshape([steps * batch, vocab]);
    let targets = targets.transpose().reshape([steps * batch, 1]);
    let log_probs = burn::tensor::activation::log_softmax(logits, 1);
    log_probs.gather(1, targets).mean().neg()
}

impl<B: AutodiffBackend + CellBackend> Trainee<B> {
    /// Forward and backward from `state`, the dropout masks drawn from `dropout`: the output
    /// item, the gradients, and the state after the batch (detached: truncated
    /// backpropagation through time).
    pub fn train_batch(
        &self,
        batch: CharBatch<B>,
        state: Option<RnnState<B>>,
        dropout: DropoutSeed,
    ) -> (CharOutput<B>, GradientsParams, RnnState<B>) {
        let chars = batch.inputs.dims().iter().product();
        let (logits, state) =
            (self.model).forward_with(batch.inputs, state, Recurrence::Fused, dropout);
        let loss = char_loss(logits, batch.targets);
        let grads = GradientsParams::from_grads(loss.backward(), self);
        (
            CharOutput {
                loss: loss.detach(),
                chars,
            },
            grads,
            state.detach(),
        )
    }

    /// A whole training step outside burn-train's learner, as the run loop does it (for
    /// benchmarks and device checks): [`Trainee::train_batch`], the global-norm clip to `clip`
    /// ([`clip_global_norm`]), then `optim`'s step at `lr`. Returns the updated model, the
    /// batch's output and the state to carry.
    pub fn optimize<O: Optimizer<Self, B>>(
        self,
        optim: &mut O,
        lr: f64,
        clip: f64,
        batch: CharBatch<B>,
        state: Option<RnnState<B>>,
        dropout: DropoutSeed,
    ) -> (Self, CharOutput<B>, RnnState<B>) {
        let (out, mut grads, state) = self.train_batch(batch, state, dropout);
        clip_global_norm(&self, &mut grads, clip);
        (optim.step(lr, self, grads), out, state)
    }
}

impl<B: Backend + CellBackend> Trainee<B> {
    /// Validation forward from `state` (no dropout when `B` is not autodiff).
    pub fn eval_batch(
        &self,
        batch: CharBatch<B>,
        state: Option<RnnState<B>>,
    ) -> (CharOutput<B>, RnnState<B>) {
        let chars = batch.inputs.dims().iter().product();
        let (logits, state) = self.model.forward(batch.inputs, state);
        (
            CharOutput {
                loss: char_loss(logits, batch.targets),
                chars,
            },
            state,
        )
    }
}

impl<B: AutodiffBackend + CellBackend> TrainStep for Trainee<B> {
    type Input = CharBatch<B>;
    type Output = CharOutput<B>;

    /// A stateless step (zero initial state); karnna's strategy calls
    /// [`Trainee::train_batch`] instead, to carry the state.
    fn step(&self, item: CharBatch<B>) -> TrainOutput<CharOutput<B>> {
        let (out, grads, _) = self.train_batch(item, None, DropoutSeed::Backend);
        TrainOutput { grads, item: out }
    }
}

impl<B: Backend + CellBackend> InferenceStep for Trainee<B> {
    type Input = CharBatch<B>;
    type Output = CharOutput<B>;

    fn step(&self, item: CharBatch<B>) -> CharOutput<B> {
        self.eval_batch(item, None).0
    }
}

/// What a step reports to the metrics: the loss and how many characters it covered.
pub struct CharOutput<B: Backend> {
    /// Mean loss, nats per character, `[1]`.
    pub loss: Tensor<B, 1>,
    /// Characters in the batch.
    pub chars: usize,
}

/// [`CharOutput`] read back to the host.
#[derive(Clone, Debug)]
pub struct CharOutputSync {
    /// Mean loss, nats per character.
    pub loss: f64,
    /// Characters in the batch.
    pub chars: usize,
}

impl<B: Backend> CharOutput<B> {
    /// The loss as a number (one device read).
    pub fn loss_value(&self) -> f64 {
        self.loss.clone().into_scalar().elem::<f64>()
    }

    /// The output of the whole batch that the ranks of `world` trained a share each of: the
    /// ranks' mean loss (their shares are of one size) and every rank's characters. A run of
    /// one process gets its own output back.
    pub fn shared(self, world: &dyn Collective) -> Self {
        if world.size() == 1 {
            return self;
        }
        let loss = world.mean(self.loss_value());
        Self {
            loss: Tensor::from_floats([loss as f32], &self.loss.device()),
            chars: self.chars * world.size(),
        }
    }
}

impl<B: Backend> ItemLazy for CharOutput<B> {
    type ItemSync = CharOutputSync;

    fn sync(self) -> CharOutputSync {
        CharOutputSync {
            loss: self.loss_value(),
            chars: self.chars,
        }
    }
}

impl Adaptor<LossInput<burn::backend::Flex>> for CharOutputSync {
    fn adapt(&self) -> LossInput<burn::backend::Flex> {
        LossInput::new(Tensor::from_floats([self.loss as f32], &Default::default()))
    }
}

impl Adaptor<CharOutputSync> for CharOutputSync {
    fn adapt(&self) -> CharOutputSync {
        self.clone()
    }
}

/// What a [`CharMetric`] shows.
#[derive(Clone, Copy, Debug)]
pub enum CharMetricKind {
    /// Loss in bits per character (nats / ln 2).
    BitsPerChar,
    /// Perplexity, e^loss.
    Perplexity,
    /// Characters processed per second of wall time.
    CharsPerSecond,
}

/// A dashboard metric derived from [`CharOutputSync`].
#[derive(Clone)]
pub struct CharMetric {
    kind: CharMetricKind,
    name: MetricName,
    state: NumericMetricState,
    last: Option<Instant>,
}

impl CharMetric {
    /// A metric of the given kind.
    pub fn new(kind: CharMetricKind) -> Self {
        let name = match kind {
            CharMetricKind::BitsPerChar => "Bits per char",
            CharMetricKind::Perplexity => "Perplexity",
            CharMetricKind::CharsPerSecond => "Chars per second",
        };
        Self {
            kind,
            name: Arc::new(name.into()),
            state: NumericMetricState::default(),
            last: None,
        }
    }
}

impl Metric for CharMetric {
    type Input = CharOutputSync;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        let higher = matches!(self.kind, CharMetricKind::CharsPerSecond);
        NumericAttributes {
            unit: None,
            higher_is_better: higher,
        }
        .into()
    }

    fn update(&mut self, item: &CharOutputSync, _: &MetricMetadata) -> SerializedEntry {
        let (value, precision) = match self.kind {
            CharMetricKind::BitsPerChar => (item.loss / std::f64::consts::LN_2, 3),
            CharMetricKind::Perplexity => (item.loss.exp(), 2),
            CharMetricKind::CharsPerSecond => {
                let now = Instant::now();
                let secs = self.last.map(|t| now.duration_since(t).as_secs_f64());
                self.last = Some(now);
                (secs.map_or(0.0, |s| item.chars as f64 / s.max(1e-9)), 0)
            }
        };
        self.state.update(
            value,
            1,
            FormatOptions::new(self.name()).precision(precision),
        )
    }

    fn clear(&mut self) {
        self.state.reset();
        self.last = None;
    }
}

impl Numeric for CharMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}

/// The batches of one split as a burn data loader: ordered, never shuffled (row `i` of batch
/// `k + 1` continues row `i` of batch `k`), optionally a sub-range (to resume mid-epoch) or a
/// pick of the batches (a capped validation, [`karnna_data::spread`]).
#[derive(Clone)]
pub struct BatchLoader<B: Backend> {
    batches: Batches,
    /// The batches read, by index into `batches`; `None`: all of them.
    pick: Option<Arc<[usize]>>,
    start: usize,
    end: usize,
    device: B::Device,
}

impl<B: Backend> BatchLoader<B> {
    /// A loader over every batch of `batches`.
    pub fn new(batches: Batches, device: B::Device) -> Self {
        Self {
            end: batches.len(),
            batches,
            pick: None,
            start: 0,
            device,
        }
    }

    /// A loader over at most `cap` batches of `batches`, spread evenly through them
    /// ([`karnna_data::spread`]; `cap == 0`: all).
    pub fn spread(batches: Batches, cap: usize, device: B::Device) -> Self {
        let pick: Arc<[usize]> = karnna_data::spread(batches.len(), cap).into();
        Self {
            end: pick.len(),
            pick: Some(pick),
            ..Self::new(batches, device)
        }
    }

    /// Batches in one pass of this loader (before any slicing).
    fn count(&self) -> usize {
        self.pick.as_ref().map_or(self.batches.len(), |p| p.len())
    }
}

struct BatchIter<'a, B: Backend> {
    loader: &'a BatchLoader<B>,
    next: usize,
}

impl<B: Backend> Iterator for BatchIter<'_, B> {
    type Item = CharBatch<B>;

    fn next(&mut self) -> Option<CharBatch<B>> {
        (self.next < self.loader.end).then(|| {
            let loader = self.loader;
            let k = loader.pick.as_ref().map_or(self.next, |p| p[self.next]);
            self.next += 1;
            CharBatch::new(&loader.batches.get(k), &loader.device)
        })
    }
}

impl<B: Backend> DataLoaderIterator<CharBatch<B>> for BatchIter<'_, B> {
    fn progress(&self) -> Progress {
        Progress::new(self.next, self.loader.count())
    }
}

impl<B: Backend> DataLoader<B, CharBatch<B>> for BatchLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<CharBatch<B>> + 'a> {
        Box::new(BatchIter {
            loader: self,
            next: self.start,
        })
    }

    fn num_items(&self) -> usize {
        self.end - self.start
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, CharBatch<B>>> {
        Arc::new(Self {
            device: device.clone(),
            ..self.clone()
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, CharBatch<B>>> {
        let (start, end) = (self.start + start, (self.start + end).min(self.end));
        Arc::new(Self {
            start,
            end,
            ..self.clone()
        })
    }
}

/// An optimizer that can hand out its state (burn-train's `Learner` keeps its optimizer
/// private): [`OptimHandle::request`] a record, step, then [`OptimHandle::take`] it.
pub struct RecordingOptim<O, R> {
    inner: O,
    slot: Arc<Mutex<(bool, Option<R>)>>,
}

impl<O: Clone, R> Clone for RecordingOptim<O, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            slot: self.slot.clone(),
        }
    }
}

impl<O, R> RecordingOptim<O, R> {
    /// Wraps `inner`.
    pub fn new(inner: O) -> Self {
        Self {
            inner,
            slot: Arc::new(Mutex::new((false, None))),
        }
    }

    /// A handle on the same slot, for the training loop.
    pub fn handle(&self) -> OptimHandle<R> {
        OptimHandle(self.slot.clone())
    }
}

/// The training loop's side of a [`RecordingOptim`].
pub struct OptimHandle<R>(Arc<Mutex<(bool, Option<R>)>>);

impl<R> OptimHandle<R> {
    /// Asks for the state after the next step.
    pub fn request(&self) {
        self.0.lock().unwrap().0 = true;
    }

    /// The state recorded at the last requested step.
    pub fn take(&self) -> Option<R> {
        self.0.lock().unwrap().1.take()
    }
}

impl<M, B, O> Optimizer<M, B> for RecordingOptim<O, O::Record>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
    O: Optimizer<M, B>,
    O::Record: Send,
{
    type Record = O::Record;

    fn step(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        let module = self.inner.step(lr, module, grads);
        let mut slot = self.slot.lock().unwrap();
        if std::mem::take(&mut slot.0) {
            slot.1 = Some(self.inner.to_record());
        }
        module
    }

    fn step_multi(&mut self, lr: f64, module: M, grads: MultiGradientsParams) -> M {
        self.inner.step_multi(lr, module, grads)
    }

    fn to_record(&self) -> Self::Record {
        self.inner.to_record()
    }

    fn load_record(self, record: Self::Record) -> Self {
        Self {
            inner: self.inner.load_record(record),
            slot: self.slot,
        }
    }
}

/// Sums every gradient over the ranks of `world` and divides by their number: the gradient of
/// the whole batch's mean loss, since each rank's loss is the mean over a share of one size.
/// One `MPI_Allreduce` of one flat f32 buffer, in module order (the order every rank visits
/// the same model in; `ParamId`s are random per process). Nothing for a run of one process.
pub fn average_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    world: &dyn Collective,
) {
    if world.size() == 1 {
        return;
    }
    struct Flatten<'a> {
        grads: &'a mut GradientsParams,
        flat: Vec<f32>,
        shapes: Vec<Option<Vec<usize>>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let g = self.grads.remove::<B::InnerBackend, D>(param.id);
            self.shapes.push(g.as_ref().map(|g| g.dims().to_vec()));
            if let Some(g) = g {
                self.flat.extend(karnna_model::to_f32_vec(g));
            }
        }
    }
    struct Restore<'a> {
        grads: &'a mut GradientsParams,
        flat: &'a [f32],
        shapes: std::slice::Iter<'a, Option<Vec<usize>>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Restore<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let Some(shape) = self.shapes.next().expect("the same parameters").clone() else {
                return;
            };
            let n: usize = shape.iter().product();
            let (mine, rest) = self.flat.split_at(n);
            self.flat = rest;
            let device = param.val().device();
            let g = Tensor::<B::InnerBackend, D>::from_data(
                TensorData::new(mine.to_vec(), shape),
                &device,
            );
            self.grads.register::<B::InnerBackend, D>(param.id, g);
        }
    }
    let mut flatten = Flatten {
        grads,
        flat: Vec::new(),
        shapes: Vec::new(),
    };
    module.visit(&mut flatten);
    let (mut flat, shapes) = (flatten.flat, flatten.shapes);
    world.sum_f32(&mut flat);
    let scale = 1.0 / world.size() as f32;
    flat.iter_mut().for_each(|x| *x *= scale);
    module.visit(&mut Restore {
        grads,
        flat: &flat,
        shapes: shapes.iter(),
    });
}

/// The FNV-1a digest of every parameter's bits (little endian), in module order: equal on two
/// processes only when their weights are (what a data-parallel run checks at each checkpoint).
pub fn weights_digest<B: Backend, M: Module<B>>(module: &M) -> u64 {
    use karnna_model::checkpoint::{fnv1a, FNV1A_START};
    struct Digest(u64);
    impl<B: Backend> ModuleVisitor<B> for Digest {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let values = karnna_model::to_f32_vec(param.val());
            let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.0 = fnv1a(self.0, &bytes);
        }
    }
    let mut d = Digest(FNV1A_START);
    module.visit(&mut d);
    d.0
}

/// Scales all gradients by `min(1, max_norm / ‖g‖)`, where `‖g‖` is the global norm over every
/// parameter's gradient, as the notebook's `tf.clip_by_global_norm` does (burn-optim's
/// `GradientClipping::Norm` clips each tensor on its own). Returns the norm before clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    struct SumSquares<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SumSquares<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let s = g.powi_scalar(2).sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        scale: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads
                    .register::<B::InnerBackend, D>(param.id, g * self.scale);
            }
        }
    }

    let mut sum = SumSquares::<B> { grads, total: None };
    module.visit(&mut sum);
    let norm = sum
        .total
        .map_or(0.0, |t| t.into_scalar().elem::<f64>().sqrt());
    if max_norm > 0.0 && norm > max_norm {
        module.visit(&mut Scale {
            grads,
            scale: max_norm / norm,
        });
    }
    norm
}
