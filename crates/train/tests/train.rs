//! Training behaviour: the carried state reaches the next batch, clipping bounds the global
//! norm, and a run stopped and resumed ends exactly where an uninterrupted one does.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use karnna_data::{Batches, Vocab};
use karnna_model::{Cell, CharRnnConfig, Checkpoint, Init, ModelShape};
use karnna_train::learner::{char_loss, clip_global_norm, CharBatch, Trainee};
use karnna_train::{train, RunConfig, TrainOptions};

type AD = Autodiff<Flex>;

const TEXT: &str =
    "Happy families are all alike; every unhappy family is unhappy in its own way.\n\
Everything was in confusion in the Oblonskys' house. The wife had discovered that the husband \
was carrying on an intrigue with a French girl, who had been a governess in their family.\n";

/// One test that draws random numbers (a training run, a model's initialisation) at a time: the
/// backend's random generator (weights, dropout seeds) is global, so tests on parallel threads
/// would draw from each other's streams, and a run would not redo what another did.
static ONE_RUN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn text_ids(vocab: &Vocab) -> Vec<u32> {
    vocab.encode(&TEXT.repeat(4)).unwrap()
}

/// TEXT's vocabulary and its batches of 3 rows x 20 steps, for the tests of one batch.
fn small_batches() -> (Vocab, Batches) {
    let vocab = Vocab::from_text(TEXT);
    let batches = Batches::new(text_ids(&vocab), 3, 20).unwrap();
    (vocab, batches)
}

#[test]
fn carried_state_changes_the_next_batch() {
    let _one = ONE_RUN.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    // A fixed initialization (drawn from its own seeded generator, so no other test's draws
    // change it): at random ones the untrained model's mean loss moves by less than the bound
    // below about one time in ten (9.3e-5 in one CI run); with this one it moves 2.2e-3.
    let (vocab, batches) = small_batches();
    assert!(batches.len() >= 2);
    let model = CharRnnConfig::new(vocab.len())
        .with_lstm_size(16)
        .init_seeded::<Flex>(Init::PyTorch, 3, &device);
    let trainee = Trainee { model };
    let b0 = CharBatch::<Flex>::new(&batches.get(0), &device);
    let b1 = CharBatch::<Flex>::new(&batches.get(1), &device);
    let (_, state) = trainee.eval_batch(b0, None);
    let (with_state, _) = trainee.eval_batch(b1.clone(), Some(state));
    let (from_zero, _) = trainee.eval_batch(b1, None);
    let (a, b) = (with_state.loss_value(), from_zero.loss_value());
    assert!(
        (a - b).abs() > 1e-4,
        "loss with carried state {a} equals loss from zeros {b}"
    );
}

struct Norm<'a> {
    grads: &'a GradientsParams,
    sum: f64,
}

impl ModuleVisitor<AD> for Norm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
        if let Some(g) = self.grads.get::<Flex, D>(param.id) {
            self.sum += g.powi_scalar(2).sum().into_scalar() as f64;
        }
    }
}

fn global_norm(model: &Trainee<AD>, grads: &GradientsParams) -> f64 {
    let mut n = Norm { grads, sum: 0.0 };
    model.visit(&mut n);
    n.sum.sqrt()
}

#[test]
fn clipping_bounds_the_global_norm_and_keeps_the_direction() {
    // Its untrained model draws from the global generator: not while a run is drawing.
    let _one = ONE_RUN.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    let (vocab, batches) = small_batches();
    // No dropout, so two backward passes give the same gradients.
    let config = CharRnnConfig::new(vocab.len())
        .with_lstm_size(16)
        .with_keep_prob(1.0);
    let model = Trainee {
        model: config.init::<AD>(&device),
    };
    let grads_of = || {
        let batch = CharBatch::<AD>::new(&batches.get(0), &device);
        let (logits, _) = model.model.forward(batch.inputs, None);
        let loss = char_loss(logits, batch.targets);
        GradientsParams::from_grads(loss.backward(), &model)
    };
    let grads = grads_of();
    let before = global_norm(&model, &grads);
    assert!(before > 0.1, "norm {before}");
    let w_before = grads.get::<Flex, 2>(model.model.layers[0].w_hh.id).unwrap();

    // A loose bound changes nothing.
    let mut loose = grads_of();
    let reported = clip_global_norm(&model, &mut loose, before * 2.0);
    assert!((reported - before).abs() < 1e-3 * before);
    assert!((global_norm(&model, &loose) - before).abs() < 1e-3 * before);

    // A tight bound scales every gradient by the same factor, to the bound.
    let mut tight = grads;
    let max = before / 10.0;
    clip_global_norm(&model, &mut tight, max);
    let after = global_norm(&model, &tight);
    assert!(
        (after - max).abs() < 1e-3 * max,
        "clipped norm {after}, bound {max}"
    );
    let w_after = tight.get::<Flex, 2>(model.model.layers[0].w_hh.id).unwrap();
    w_after.into_data().assert_approx_eq::<f32>(
        &(w_before / 10.0).into_data(),
        burn::tensor::Tolerance::absolute(1e-6),
    );
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("karnna-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(data: &Path) -> RunConfig {
    RunConfig {
        name: "t".into(),
        data: vec![data.to_owned()],
        batch_size: 3,
        num_steps: 10,
        shape: ModelShape {
            lstm_size: 12,
            ..ModelShape::default()
        },
        keep_prob: 0.8,
        learning_rate: 0.01,
        epochs: 2,
        save_every_n: 3,
        eval_every: 3,
        val_fraction: 0.2,
        cache_dir: Some(
            std::env::temp_dir().join(format!("karnna-train-cache-{}", std::process::id())),
        ),
        ..RunConfig::default()
    }
}

fn try_run(
    dir: &Path,
    config: RunConfig,
    resume: bool,
) -> anyhow::Result<karnna_train::TrainReport> {
    let _one = ONE_RUN.lock().unwrap_or_else(|e| e.into_inner());
    let opts = TrainOptions {
        config,
        run_dir: dir.to_owned(),
        resume,
        fresh: false,
        plain: true,
        memory_limit: None,
        collective: std::sync::Arc::new(karnna_train::collective::Alone),
    };
    train::<Flex>(opts, Default::default())
}

fn run(dir: &Path, config: RunConfig, resume: bool) -> karnna_train::TrainReport {
    try_run(dir, config, resume).unwrap()
}

fn weights(path: &Path) -> Vec<f32> {
    let model = Checkpoint::read(path)
        .unwrap()
        .model::<Flex>(&Default::default())
        .unwrap();
    let mut all = Vec::new();
    for l in &model.layers {
        all.extend(l.w_hh.val().into_data().to_vec::<f32>().unwrap());
        all.extend(l.w_ih.val().into_data().to_vec::<f32>().unwrap());
    }
    all
}

#[test]
fn resume_continues_exactly_and_refuses_to_overwrite() {
    resume_continues_exactly(Cell::Lstm);
}

#[test]
fn a_gru_resumes_exactly() {
    resume_continues_exactly(Cell::Gru);
}

#[test]
fn an_rnn_resumes_exactly() {
    resume_continues_exactly(Cell::Rnn);
}

fn resume_continues_exactly(cell: Cell) {
    let dir = scratch(&format!("resume-{cell}"));
    let data = dir.join("text.txt");
    std::fs::write(&data, TEXT.repeat(3)).unwrap();
    let config = |data: &Path| {
        let mut c = config(data);
        c.shape.cell = cell;
        c
    };

    // Uninterrupted: 2 epochs. Stopped after 5 iterations (mid-epoch), then resumed.
    let straight = run(&dir.join("a"), config(&data), false);
    let mut first = config(&data);
    first.max_iters = 5;
    let stopped = run(&dir.join("b"), first, false);
    assert_eq!(stopped.iteration, 5);
    let err = try_run(&dir.join("b"), config(&data), false).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    let resumed = run(&dir.join("b"), config(&data), true);
    // The checkpoint says which cell it holds.
    let ckpt = Checkpoint::read(resumed.last_checkpoint.as_ref().unwrap()).unwrap();
    assert_eq!(ckpt.meta.model.cell(), cell);
    assert_eq!(resumed.iteration, straight.iteration);

    let a = weights(straight.last_checkpoint.as_ref().unwrap());
    let b = weights(resumed.last_checkpoint.as_ref().unwrap());
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    if diff >= 1e-5 {
        let a = std::fs::read_to_string(dir.join("a/metrics.csv")).unwrap();
        let b = std::fs::read_to_string(dir.join("b/metrics.csv")).unwrap();
        eprintln!("DEBUG {cell}\nA:\n{a}\nB:\n{b}");
    }
    assert!(
        diff < 1e-5,
        "{cell}: resumed weights differ from the uninterrupted run by {diff}"
    );

    // The log continues: one row per iteration, no gaps or repeats.
    let csv = std::fs::read_to_string(dir.join("b/metrics.csv")).unwrap();
    let its: Vec<usize> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(its, (1..=straight.iteration).collect::<Vec<_>>());
    for f in ["config.toml", "vocab.json", "loss.svg", "best.txt"] {
        assert!(dir.join("b").join(f).exists(), "{f} missing");
    }
}

#[test]
fn too_short_text_is_a_clear_error() {
    let dir = scratch("short");
    let data = dir.join("short.txt");
    std::fs::write(&data, "abc").unwrap();
    let err = try_run(&dir.join("r"), config(&data), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("short.txt: too short: 3 characters"), "{err}");
    assert!(err.contains("need at least"), "{err}");
}

#[test]
fn fine_tuning_keeps_the_base_and_extends_its_vocabulary() {
    let dir = scratch("finetune");
    let english = dir.join("english.txt");
    std::fs::write(&english, "the cat sat on the mat. ".repeat(40)).unwrap();
    let base = run(&dir.join("base"), config(&english), false);
    let base_path = base.last_checkpoint.unwrap();
    let base_ckpt = Checkpoint::read(&base_path).unwrap();

    // A text with characters the base never saw, and a config asking for another shape.
    let other = dir.join("other.txt");
    std::fs::write(&other, "猫坐在垫子上。the mat. ".repeat(40)).unwrap();
    let mut c = config(&other);
    c.shape.lstm_size = 99; // ignored: the base decides
    c.shape.num_layers = 1;
    c.max_iters = 1;
    c.init_from = Some(base_path.clone());
    let tuned = run(&dir.join("tuned"), c, false);
    let tuned = Checkpoint::read(&tuned.last_checkpoint.unwrap()).unwrap();

    // The vocabulary is the union: the base's characters keep their place in code-point order.
    let base_vocab = &base_ckpt.meta.vocab;
    let vocab = &tuned.meta.vocab;
    for c in base_vocab.chars() {
        assert!(vocab.id(*c).is_some(), "{c:?} dropped");
    }
    for c in "猫坐在垫子上。".chars() {
        assert!(vocab.id(c).is_some(), "{c:?} not added");
    }
    assert_eq!(vocab.len(), base_vocab.len() + 7);
    assert_eq!(tuned.meta.model.shape, base_ckpt.meta.model.shape);
    assert_eq!(tuned.meta.iteration, 1);

    // One step of Adam at 0.01 moves a weight by at most ~0.01: the second layer's recurrent
    // weights are the base's, not a new draw.
    let device = Default::default();
    let b = base_ckpt.model::<Flex>(&device).unwrap();
    let t = tuned.model::<Flex>(&device).unwrap();
    let before = b.layers[1].w_hh.val().into_data().to_vec::<f32>().unwrap();
    let after = t.layers[1].w_hh.val().into_data().to_vec::<f32>().unwrap();
    let moved = before
        .iter()
        .zip(&after)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(moved < 0.02, "layer 2 moved by {moved}");

    // A missing base is one clear error naming it, and nothing is trained.
    let mut c = config(&other);
    c.init_from = Some(dir.join("nope.ckpt"));
    let err = try_run(&dir.join("bad"), c, false).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("nope.ckpt"), "{msg}");
}

#[test]
fn several_files_train_together_and_each_is_validated() {
    let dir = scratch("files");
    let texts = dir.join("texts");
    std::fs::create_dir_all(&texts).unwrap();
    std::fs::write(texts.join("a.txt"), "aaaa bbbb. ".repeat(30)).unwrap();
    std::fs::write(texts.join("b.txt"), "cccc dddd. ".repeat(30)).unwrap();
    std::fs::write(texts.join("notes.md"), "zzzz").unwrap();
    let extra = dir.join("extra.txt");
    std::fs::write(&extra, "eeee ffff. ".repeat(30)).unwrap();
    let mut c = config(&texts);
    c.data.push(extra.clone());
    let corpus = karnna_train::Corpus::load(&c.data, &c, karnna_data::Want::Text).unwrap();
    assert_eq!(
        corpus.files,
        vec![texts.join("a.txt"), texts.join("b.txt"), extra]
    );
    // The .md file is not read; every .txt file's characters are in the vocabulary.
    assert!(corpus.vocab.id('z').is_none());
    for ch in "abcdef".chars() {
        assert!(corpus.vocab.id(ch).is_some(), "{ch}");
    }
    // Validation holds the end of every file (tail split per file).
    let val: Vec<u32> = corpus
        .val
        .as_ref()
        .unwrap()
        .iter()
        .flat_map(|b| b.inputs)
        .collect();
    let text = corpus.vocab.decode(&val);
    for ch in "bdf".chars() {
        assert!(
            text.contains(ch),
            "validation lacks file with {ch}: {text:?}"
        );
    }
    assert!(corpus.describe(&c).contains("3 files"));
    // The header says where the run stops: the epochs' iterations, or max_iters when sooner.
    let total = corpus.total_iterations(1);
    let line = |c: &RunConfig| {
        let described = corpus.describe(c);
        let line = described.lines().find(|l| l.starts_with("iterations:"));
        line.unwrap().to_string()
    };
    let (mut one, mut capped) = (c.clone(), c.clone());
    (one.epochs, one.max_iters) = (1, 0);
    (capped.epochs, capped.max_iters) = (1, total - 1);
    assert!(
        line(&one).ends_with(&format!(" {total} (1 epoch)")),
        "{}",
        line(&one)
    );
    assert!(
        line(&capped).ends_with(&format!(
            " {} (max_iters; 1 epoch would be {total})",
            total - 1
        )),
        "{}",
        line(&capped)
    );
    run(&dir.join("run"), c, false);

    // A file that is not UTF-8 is named.
    std::fs::write(texts.join("c.txt"), b"ok \xff no").unwrap();
    let err = karnna_train::Corpus::load(
        std::slice::from_ref(&texts),
        &config(&texts),
        karnna_data::Want::Text,
    )
    .err()
    .unwrap();
    assert!(
        format!("{err}").contains("c.txt: not valid UTF-8 at byte 3"),
        "{err}"
    );
}
