//! The text of a run, encoded, split and cut into batches, with the figures `info` prints.

use std::path::{Path, PathBuf};

use karnna_data::{load_text, min_text_len, Batches, DataError, Split, ValSplit, Vocab};

use crate::config::RunConfig;
use crate::memory::MemoryEstimate;

/// A training text ready for a run.
pub struct Corpus {
    /// The file it came from.
    pub path: PathBuf,
    /// Characters in the text (after newline normalisation).
    pub chars: usize,
    /// The vocabulary (the text's own, or a checkpoint's when resuming).
    pub vocab: Vocab,
    /// Characters in the training part.
    pub train_chars: usize,
    /// Characters in the validation part.
    pub val_chars: usize,
    /// Training batches, one epoch.
    pub train: Batches,
    /// Validation batches (none when `val_fraction` is 0).
    pub val: Option<Batches>,
}

impl Corpus {
    /// Loads `path` and prepares it for `config`. With `vocab`, the text must use only its
    /// characters (a resumed run keeps its checkpoint's vocabulary).
    pub fn load(path: &Path, config: &RunConfig, vocab: Option<Vocab>) -> anyhow::Result<Self> {
        let text = load_text(path)?;
        let vocab = vocab.unwrap_or_else(|| Vocab::from_text(&text));
        let ids = vocab.encode(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}, which the checkpoint's vocabulary lacks",
                path.display()
            )
        })?;
        let (n, m) = (config.batch_size, config.num_steps);
        let chars = ids.len();
        let (f, how) = (config.val_fraction, config.val_split);
        let Some(split) = Split::new(ids, n, m, f, how) else {
            let split = if f > 0.0 {
                format!(" (with val_fraction {f}, val_split {})", how.name())
            } else {
                String::new()
            };
            return Err(DataError::TooShort {
                path: path.to_owned(),
                chars,
                n_seqs: n,
                n_steps: m,
                split,
                need: min_text_len(n, m, f, how),
            }
            .into());
        };
        let Split {
            train,
            val,
            train_chars,
            val_chars,
        } = split;
        Ok(Self {
            path: path.to_owned(),
            chars,
            vocab,
            train_chars,
            val_chars,
            train,
            val,
        })
    }

    /// Iterations for `epochs` passes.
    pub fn total_iterations(&self, epochs: usize) -> usize {
        self.train.len() * epochs
    }

    /// The figures a user checks before a long run, one per line.
    pub fn describe(&self, config: &RunConfig) -> String {
        let params = config.model(self.vocab.len()).num_params();
        let ratio = params as f64 / self.train_chars as f64;
        // Karpathy's char-rnn advice: parameters about the size of the data; far more
        // parameters than characters overfits, far fewer underfits.
        let advice = if ratio > 2.0 {
            "more parameters than training characters: likely to overfit (watch the validation loss; raise keep_prob's dropout or shrink the model)"
        } else if ratio < 0.1 {
            "far fewer parameters than characters: likely to underfit (a bigger model would learn more)"
        } else {
            "parameters and characters in the same range: a good fit (watch the validation loss)"
        };
        let val_batches = self.val.as_ref().map_or(0, |v| v.len());
        let split = match (self.val.is_some(), config.val_split) {
            (false, _) => "none (val_fraction 0)",
            (true, ValSplit::Tail) => "tail: the last part of the text",
            (true, ValSplit::Rows) => {
                "rows: the last batches of each row, spread through the text (the notebook's split_data)"
            }
        };
        format!(
            "text:            {}\n\
             characters:      {}\n\
             vocabulary:      {} symbols\n\
             train / val:     {} / {} characters ({} / {} batches of {}x{})\n\
             val split:       {}\n\
             batches/epoch:   {}\n\
             iterations:      {} ({} epochs)\n\
             parameters:      {} ({} layers x {} units), initialised as {}\n\
             memory:          {}\n\
             params/chars:    {:.2}: {}",
            self.path.display(),
            self.chars,
            self.vocab.len(),
            self.train_chars,
            self.val_chars,
            self.train.len(),
            val_batches,
            config.batch_size,
            config.num_steps,
            split,
            self.train.len(),
            self.total_iterations(config.epochs),
            config.epochs,
            params,
            config.num_layers,
            config.lstm_size,
            config.init.name(),
            MemoryEstimate::of(
                &config.model(self.vocab.len()),
                config.batch_size,
                config.num_steps
            )
            .describe(),
            ratio,
            advice
        )
    }
}
