//! Priming the model and drawing characters: one sample streamed to a writer ([`generate`]), or
//! several drawn side by side in one batch and printed one after another ([`generate_many`]).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use karnna_data::Vocab;
use karnna_model::{to_f32_vec, CellBackend, CharRnn, StepState};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::sampler::{pick, Strategy};
use crate::stepper::CharStepper;

/// The Burn model stepped one character at a time on any backend, for one row or several side
/// by side ([`CharRnn::step`]: no autodiff, no time axis; one kernel launch per layer and one
/// for the logits on a GPU), the logits read back to the host each step.
pub struct BurnStepper<B: CellBackend> {
    model: CharRnn<B>,
    state: StepState<B>,
    logits: Vec<f32>,
}

impl<B: CellBackend> BurnStepper<B> {
    /// Wraps `model`, stepping one row.
    pub fn new(model: CharRnn<B>) -> Self {
        let state = StepState::zeros(&model, 1);
        Self {
            model,
            state,
            logits: Vec::new(),
        }
    }
}

impl<B: CellBackend> CharStepper for BurnStepper<B> {
    fn reset(&mut self) {
        self.state = StepState::zeros(&self.model, self.state.rows());
    }

    fn vocab_size(&self) -> usize {
        self.model.output.weight.dims()[1]
    }

    fn rows(&self) -> usize {
        self.state.rows()
    }

    fn set_rows(&mut self, rows: usize) {
        assert!(rows >= 1, "at least one row");
        self.state = StepState::zeros(&self.model, rows);
    }

    fn step_rows(&mut self, ids: &[u32]) -> &[f32] {
        self.logits = to_f32_vec(self.model.step(ids, &mut self.state));
        &self.logits
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
    let prime = encode_prime(vocab, &opts.prime)?;
    let mut rng = row_rng(opts.seed, 0);
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

/// The prime used when none is given: the notebook's, "Far", when the vocabulary has its
/// characters; else a newline (or the vocabulary's first character), so that a model of any
/// text samples without one.
pub fn default_prime(vocab: &Vocab) -> String {
    if vocab.encode("Far").is_ok() {
        "Far".into()
    } else if vocab.id('\n').is_some() {
        "\n".into()
    } else {
        vocab.char(0).to_string()
    }
}

/// The prime's ids, or why the model cannot read it.
fn encode_prime(vocab: &Vocab, prime: &str) -> Result<Vec<u32>, SampleError> {
    if prime.is_empty() {
        return Err(SampleError::EmptyPrime);
    }
    vocab.encode(prime).map_err(|e| {
        SampleError::Prime(
            e.0.iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        )
    })
}

/// The draws of sample `row` for `seed`: row 0 is seeded with `seed` itself (so it is
/// [`generate`]'s sample), row `r` with `seed + r · 0x9E37_79B9_7F4A_7C15` (wrapping).
fn row_rng(seed: u64, row: usize) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_add((row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

/// Draws `n` independent samples in one batch on `model` (which is set to `n` rows and reset):
/// every row is primed with `opts.prime`, then draws `opts.len` characters with its own draws
/// (row 0 with the same seed as [`generate`], so `n = 1` writes exactly what [`generate`] writes;
/// row `r` as [`generate`] would with the seed `opts.seed + r · 0x9E37_79B9_7F4A_7C15`). One step
/// feeds all the rows at once ([`CharStepper::step_rows`]), which is much faster than `n`
/// separate samples, on the CPU and on a GPU alike.
///
/// The samples are written when all are drawn, one after another, each as the prime followed by
/// its text. When `n > 1` each is preceded by the separator line `--- sample K of N ---` (`K`
/// from 1) and each but the last is followed by a newline; as with [`generate`], the last text
/// ends without one. When `stop` becomes true the drawing stops and what each row has drawn so
/// far is written. `n = 0` writes nothing.
pub fn generate_many(
    model: &mut dyn CharStepper,
    vocab: &Vocab,
    opts: &SampleOptions,
    n: usize,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<(), SampleError> {
    let prime = encode_prime(vocab, &opts.prime)?;
    if n == 0 {
        return Ok(());
    }
    if model.rows() != n {
        model.set_rows(n);
    }
    model.reset();
    let v = model.vocab_size();
    let mut rngs: Vec<StdRng> = (0..n).map(|r| row_rng(opts.seed, r)).collect();
    let mut next = vec![0u32; n];
    let mut pick_all = |logits: &[f32], next: &mut [u32]| {
        for ((next, logits), rng) in next.iter_mut().zip(logits.chunks_exact(v)).zip(&mut rngs) {
            *next = pick(logits, opts.strategy, rng);
        }
    };
    let mut ids = vec![0u32; n];
    for &id in &prime {
        ids.fill(id);
        pick_all(model.step_rows(&ids), &mut next);
    }
    let mut texts = vec![String::new(); n];
    for _ in 0..opts.len {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        for (text, &id) in texts.iter_mut().zip(&next) {
            text.push(vocab.char(id));
        }
        ids.copy_from_slice(&next);
        pick_all(model.step_rows(&ids), &mut next);
    }
    for (k, text) in texts.iter().enumerate() {
        if n > 1 {
            writeln!(out, "--- sample {} of {n} ---", k + 1)?;
        }
        out.write_all(opts.prime.as_bytes())?;
        out.write_all(text.as_bytes())?;
        if k + 1 < n {
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}
