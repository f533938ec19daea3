//! Priming the model and drawing characters, streamed to a writer.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::*;
use karnna_data::Vocab;
use karnna_model::{to_f32_vec, CharRnn, LstmBackend, LstmState};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::sampler::{pick, Strategy};

/// A model that reads one character at a time and returns its logits for the next one,
/// carrying its LSTM state between calls.
pub trait CharStepper {
    /// Back to the zero state.
    fn reset(&mut self);
    /// Feeds character `id`; returns the logits of the next character (`[vocab]`).
    fn step(&mut self, id: u32) -> &[f32];
    /// Vocabulary size.
    fn vocab_size(&self) -> usize;
}

/// The Burn model stepped one character at a time on any backend (batch 1, no autodiff).
pub struct BurnStepper<B: LstmBackend> {
    model: CharRnn<B>,
    state: Option<LstmState<B>>,
    device: B::Device,
    logits: Vec<f32>,
}

impl<B: LstmBackend> BurnStepper<B> {
    /// Wraps `model` (built on `device`).
    pub fn new(model: CharRnn<B>, device: B::Device) -> Self {
        Self {
            model,
            state: None,
            device,
            logits: Vec::new(),
        }
    }
}

impl<B: LstmBackend> CharStepper for BurnStepper<B> {
    fn reset(&mut self) {
        self.state = None;
    }

    fn step(&mut self, id: u32) -> &[f32] {
        let x = Tensor::<B, 2, Int>::from_ints([[id as i64]], &self.device);
        let (logits, state) = self.model.forward(x, self.state.take());
        self.state = Some(state);
        self.logits = to_f32_vec(logits);
        &self.logits
    }

    fn vocab_size(&self) -> usize {
        self.model.output.weight.dims()[1]
    }
}

/// What to sample.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// Text fed to the network first (the notebook's `prime`, "Far"); printed as is.
    pub prime: String,
    /// Characters to draw after the prime.
    pub len: usize,
    /// How each character is chosen.
    pub strategy: Strategy,
    /// Seed of the draws: same seed, model and options, same text.
    pub seed: u64,
}

/// Why sampling could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The prime has characters the model never saw.
    #[error(
        "the prime has characters the model's vocabulary lacks, so the model cannot read them: {0}"
    )]
    Prime(String),
    /// The prime is empty.
    #[error("the prime is empty: give at least one character")]
    EmptyPrime,
    /// Writing the text failed (a closed pipe, say).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Resets `model`, feeds it the prime (writing it out), then draws `len` characters one at a
/// time, feeding each back, and writes each as it is drawn (flushing, so a reader sees the text
/// appear). Stops early, without error, when `stop` becomes true.
pub fn generate(
    model: &mut dyn CharStepper,
    vocab: &Vocab,
    opts: &SampleOptions,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<(), SampleError> {
    if opts.prime.is_empty() {
        return Err(SampleError::EmptyPrime);
    }
    let prime = vocab.encode(&opts.prime).map_err(|e| {
        SampleError::Prime(
            e.0.iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        )
    })?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    model.reset();
    out.write_all(opts.prime.as_bytes())?;
    out.flush()?;
    let mut next = 0;
    for &id in &prime {
        next = pick(model.step(id), opts.strategy, &mut rng);
    }
    let mut buf = [0u8; 4];
    for _ in 0..opts.len {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        out.write_all(vocab.char(next).encode_utf8(&mut buf).as_bytes())?;
        out.flush()?;
        next = pick(model.step(next), opts.strategy, &mut rng);
    }
    Ok(())
}
