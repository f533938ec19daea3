//! The text of a run, encoded, split and cut into batches, with the figures `info` prints.

use std::path::PathBuf;

use karnna_data::{
    join_texts, load_text, min_text_len, text_files, with_separator, Batches, DataError, Split,
    ValSplit, Vocab,
};

use crate::config::RunConfig;
use crate::memory::MemoryEstimate;

/// Where a run's vocabulary comes from.
#[derive(Clone, Debug)]
pub enum VocabFrom {
    /// The text's own characters (a new run).
    Text,
    /// A checkpoint's, which the text must not go beyond (a resumed run).
    Fixed(Vocab),
    /// A checkpoint's, with the text's other characters added (fine-tuning with `init_from`):
    /// the union, in code-point order like every vocabulary.
    Extend(Vocab),
}

/// A training text ready for a run.
pub struct Corpus {
    /// The files it came from, in order (one, or a folder's `.txt` files, or a list).
    pub files: Vec<PathBuf>,
    /// Characters in the text (after newline normalisation and joining).
    pub chars: usize,
    /// The vocabulary (the text's own, or a checkpoint's when resuming or fine-tuning).
    pub vocab: Vocab,
    /// Characters of the text that the checkpoint's vocabulary lacked ([`VocabFrom::Extend`]).
    pub new_chars: Vec<char>,
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
    /// Loads the text `paths` name (files, folders of `.txt` files; several are joined with
    /// [`karnna_data::join_texts`]) and prepares it for `config`, with the vocabulary `vocab`
    /// says.
    ///
    /// Several files with `val_split = "tail"` are validated on the end of each file
    /// ([`Split::tails`]), so that validation is never all one file; with `rows`, on the end of
    /// every batch row of the joined text.
    pub fn load(paths: &[PathBuf], config: &RunConfig, vocab: VocabFrom) -> anyhow::Result<Self> {
        let files = text_files(paths)?;
        let texts = files
            .iter()
            .map(|f| load_text(f))
            .collect::<Result<Vec<_>, _>>()?;
        let joined = join_texts(&texts);
        let named = match files.as_slice() {
            [one] => one.display().to_string(),
            many => format!("{} files", many.len()),
        };
        let (vocab, new_chars) = match vocab {
            VocabFrom::Text => (Vocab::from_text(&joined), Vec::new()),
            VocabFrom::Fixed(v) => (v, Vec::new()),
            VocabFrom::Extend(old) => {
                let text = Vocab::from_text(&joined);
                let new: Vec<char> = text
                    .chars()
                    .iter()
                    .copied()
                    .filter(|&c| old.id(c).is_none())
                    .collect();
                let all: String = old.chars().iter().chain(&new).collect();
                (Vocab::from_text(&all), new)
            }
        };
        let encode = |text: &str| {
            vocab.encode(text).map_err(|e| {
                anyhow::anyhow!("{named}: {e}, which the checkpoint's vocabulary lacks")
            })
        };
        let (n, m) = (config.batch_size, config.num_steps);
        let (f, how) = (config.val_fraction, config.val_split);
        let chars = joined.chars().count();
        let split = if texts.len() > 1 && how == ValSplit::Tail {
            let parts = texts
                .iter()
                .enumerate()
                .map(|(i, t)| encode(&with_separator(t, i + 1 == texts.len())))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Split::tails(&parts, n, m, f)
        } else {
            Split::new(encode(&joined)?, n, m, f, how)
        };
        let Some(split) = split else {
            let split = if f > 0.0 {
                format!(" (with val_fraction {f}, val_split {})", how.name())
            } else {
                String::new()
            };
            return Err(DataError::TooShort {
                path: PathBuf::from(named),
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
            files,
            chars,
            vocab,
            new_chars,
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

    /// The iteration a run of `config` on this text stops at: its epochs' last, or `max_iters`
    /// when that comes sooner.
    pub fn stop_at(&self, config: &RunConfig) -> usize {
        let total = self.total_iterations(config.epochs);
        match config.max_iters {
            0 => total,
            max => max.min(total),
        }
    }

    /// The figures a user checks before a long run, one per line.
    pub fn describe(&self, config: &RunConfig) -> String {
        let model = config.model(self.vocab.len());
        let params = model.num_params();
        let ratio = params as f64 / self.train_chars as f64;
        let val_batches = self.val.as_ref().map_or(0, |v| v.len());
        let memory = MemoryEstimate::of(&model, config.batch_size, config.num_steps);
        format!(
            "text:            {}\n\
             characters:      {}\n\
             vocabulary:      {}\n\
             train / val:     {} / {} characters ({} / {} batches of {}x{})\n\
             val split:       {}\n\
             batches/epoch:   {}\n\
             iterations:      {}\n\
             parameters:      {} ({}), initialised as {}\n\
             memory:          {}\n\
             params/chars:    {:.2}: {}",
            self.text_line(),
            self.chars,
            self.vocabulary_line(),
            self.train_chars,
            self.val_chars,
            self.train.len(),
            val_batches,
            config.batch_size,
            config.num_steps,
            self.split_line(config.val_split),
            self.train.len(),
            self.iterations_line(config),
            params,
            config.shape,
            config.init.name(),
            memory.describe(),
            ratio,
            fit_advice(ratio)
        )
    }

    /// The text's file, or its files.
    fn text_line(&self) -> String {
        match self.files.as_slice() {
            [one] => one.display().to_string(),
            many => {
                let names: Vec<String> = many.iter().map(|f| f.display().to_string()).collect();
                format!("{} files: {}", many.len(), names.join(", "))
            }
        }
    }

    /// The vocabulary's size, and the characters new to a fine-tuned checkpoint.
    fn vocabulary_line(&self) -> String {
        if self.new_chars.is_empty() {
            return format!("{} symbols", self.vocab.len());
        }
        let shown: String = self.new_chars.iter().take(20).collect();
        let more = if self.new_chars.len() > 20 {
            ", ..."
        } else {
            ""
        };
        format!(
            "{} symbols ({} new to the checkpoint: {shown:?}{more})",
            self.vocab.len(),
            self.new_chars.len()
        )
    }

    /// Where the validation part comes from.
    fn split_line(&self, val_split: ValSplit) -> &'static str {
        match (self.val.is_some(), val_split) {
            (false, _) => "none (val_fraction 0)",
            (true, ValSplit::Tail) if self.files.len() > 1 => "tail: the last part of each file",
            (true, ValSplit::Tail) => "tail: the last part of the text",
            (true, ValSplit::Rows) => {
                "rows: the last batches of each row, spread through the text (the notebook's split_data)"
            }
        }
    }

    /// The iterations the run does: the epochs', or where `max_iters` stops it sooner.
    fn iterations_line(&self, config: &RunConfig) -> String {
        let (total, stop_at) = (self.total_iterations(config.epochs), self.stop_at(config));
        let epochs = match config.epochs {
            1 => "1 epoch".to_string(),
            n => format!("{n} epochs"),
        };
        if stop_at < total {
            format!("{stop_at} (max_iters; {epochs} would be {total})")
        } else {
            format!("{total} ({epochs})")
        }
    }
}

/// Karpathy's char-rnn advice on the ratio of parameters to training characters: about the
/// size of the data; far more parameters than characters overfits, far fewer underfits.
fn fit_advice(ratio: f64) -> &'static str {
    if ratio > 2.0 {
        "more parameters than training characters: likely to overfit (watch the validation loss; lower keep_prob for more dropout, or shrink the model)"
    } else if ratio < 0.1 {
        "far fewer parameters than characters: likely to underfit (a bigger model would learn more)"
    } else {
        "parameters and characters in the same range: a good fit (watch the validation loss)"
    }
}
