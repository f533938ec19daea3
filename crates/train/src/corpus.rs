//! The text of a run, prepared ([`karnna_data::prepare()`]: encoded once, memory-mapped), split
//! and cut into batches, with the figures `info` prints.

use std::io::IsTerminal;
use std::path::PathBuf;

use karnna_data::prepare::{Options, Progress, Stage, DEFAULT_CHUNK};
use karnna_data::{min_text_len, prepare, text_files, Batches, DataError, Ids, Split, ValSplit};
use karnna_data::{Vocab, Want};

use crate::config::RunConfig;
use crate::memory::{bytes, MemoryEstimate};

/// The prepared file behind a [`Corpus`], for the figures `info` prints.
#[derive(Clone, Debug)]
pub struct PreparedFile {
    /// Where it lives.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Bytes an id takes.
    pub width: usize,
    /// Bytes of the source files.
    pub source_bytes: u64,
    /// Found prepared already (only checked).
    pub reused: bool,
    /// Seconds the preparation or the check took.
    pub secs: f64,
}

/// A training text ready for a run.
pub struct Corpus {
    /// The files it came from, in order (one, or a folder's `.txt` files, or a list).
    pub files: Vec<PathBuf>,
    /// Characters in the text (after newline normalisation and joining).
    pub chars: u64,
    /// The vocabulary (the text's own, or a checkpoint's when resuming or fine-tuning).
    pub vocab: Vocab,
    /// Characters of the text that the checkpoint's vocabulary lacked ([`Want::Extend`]).
    pub new_chars: Vec<char>,
    /// Characters in the training part.
    pub train_chars: u64,
    /// Characters in the validation part.
    pub val_chars: u64,
    /// Training batches, one epoch.
    pub train: Batches,
    /// Validation batches (none when `val_fraction` is 0).
    pub val: Option<Batches>,
    /// The prepared file the batches read.
    pub prepared: PreparedFile,
}

/// The cache folder for prepared texts when a config names none: `$KARNNA_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/karnna`, else `~/.cache/karnna`, else `.karnna-cache` in the working
/// directory. Deleting it loses nothing but the time to prepare again.
pub fn default_cache_dir() -> PathBuf {
    let env = |key: &str| {
        std::env::var_os(key)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("KARNNA_CACHE_DIR") {
        return dir;
    }
    if let Some(dir) = env("XDG_CACHE_HOME") {
        return dir.join("karnna");
    }
    match env("HOME") {
        Some(home) => home.join(".cache").join("karnna"),
        None => PathBuf::from(".karnna-cache"),
    }
}

/// How [`Corpus::load_with`] prepares a text: where the cache is, how much it reads at a time,
/// and when to stop.
pub struct Preparation<'a> {
    /// The cache folder ([`default_cache_dir`] unless a config says otherwise).
    pub cache_dir: PathBuf,
    /// Bytes read at a time.
    pub chunk: usize,
    /// Asked after every chunk: `true` stops with [`DataError::Interrupted`].
    pub stop: &'a dyn Fn() -> bool,
}

impl Preparation<'_> {
    /// The cache folder `cache_dir`, the default chunk, no stop.
    pub fn new(cache_dir: PathBuf) -> Preparation<'static> {
        Preparation {
            cache_dir,
            chunk: DEFAULT_CHUNK,
            stop: &|| false,
        }
    }

    /// The config's cache folder, the default chunk, no stop.
    pub fn of(config: &RunConfig) -> Preparation<'static> {
        Preparation::new(config.cache_dir.clone().unwrap_or_else(default_cache_dir))
    }

    /// Prepares `files` with the vocabulary `want` says, showing progress on a terminal.
    pub fn prepare(
        &self,
        files: &[PathBuf],
        want: Want,
    ) -> Result<karnna_data::Prepared, DataError> {
        let mut line = ProgressLine::new(std::io::stderr().is_terminal());
        let prepared = prepare(
            files,
            want,
            Options {
                cache_dir: &self.cache_dir,
                chunk: self.chunk,
                stop: self.stop,
                progress: &mut |p| line.show(p),
            },
        );
        line.clear();
        prepared
    }
}

impl Corpus {
    /// Loads the text `paths` name (files, folders of `.txt` files; several are joined as
    /// [`karnna_data::join_texts`] does), prepared in the config's cache folder, for `config`,
    /// with the vocabulary `want` says.
    pub fn load(paths: &[PathBuf], config: &RunConfig, want: Want) -> anyhow::Result<Self> {
        Self::load_with(paths, config, want, &Preparation::of(config))
    }

    /// [`Corpus::load`], prepared as `prep` says.
    ///
    /// Several files with `val_split = "tail"` are validated on the end of each file
    /// ([`Split::tails`]), so that validation is never all one file; with `rows`, on the end of
    /// every batch row of the joined text.
    pub fn load_with(
        paths: &[PathBuf],
        config: &RunConfig,
        want: Want,
        prep: &Preparation,
    ) -> anyhow::Result<Self> {
        let files = text_files(paths)?;
        let prepared = prep.prepare(&files, want)?;
        let (n, m) = (config.batch_size, config.num_steps);
        let (f, how) = (config.val_fraction, config.val_split);
        let split = if files.len() > 1 && how == ValSplit::Tail {
            Split::tails(&per_file(&prepared.ids, &prepared.file_ids), n, m, f)
        } else {
            Split::new(prepared.ids.clone(), n, m, f, how)
        };
        let Some(split) = split else {
            return Err(too_short(&files, prepared.chars, config).into());
        };
        let file = PreparedFile {
            bytes: prepared.bytes(),
            width: prepared.width.bytes(),
            path: prepared.path,
            source_bytes: prepared.source_bytes,
            reused: prepared.reused,
            secs: prepared.secs,
        };
        Ok(Self {
            files,
            chars: prepared.chars,
            vocab: prepared.vocab,
            new_chars: prepared.new_chars,
            train_chars: split.train_chars,
            val_chars: split.val_chars,
            train: split.train,
            val: split.val,
            prepared: file,
        })
    }

    /// Validation batches one validation reads (`val_batches` of them at most), and of how many.
    pub fn val_batches(&self, config: &RunConfig) -> (usize, usize) {
        let all = self.val.as_ref().map_or(0, |v| v.len());
        let read = match config.val_batches {
            0 => all,
            cap => cap.min(all),
        };
        (read, all)
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
        let (_, val_batches) = self.val_batches(config);
        let memory = MemoryEstimate::of(&model, config.batch_size, config.num_steps).with_text(
            self.prepared.width,
            config.batch_size,
            config.num_steps,
        );
        format!(
            "text:            {}\n\
             prepared:        {}\n\
             characters:      {}\n\
             vocabulary:      {}\n\
             train / val:     {} / {} characters ({} / {} batches of {}x{})\n\
             val split:       {}\n\
             validation:      {}\n\
             batches/epoch:   {}\n\
             iterations:      {}\n\
             parameters:      {} ({}), initialised as {}\n\
             memory:          {}\n\
             params/chars:    {:.2}: {}",
            self.text_line(),
            self.prepared_line(),
            self.chars,
            self.vocabulary_line(),
            self.train_chars,
            self.val_chars,
            self.train.len(),
            val_batches,
            config.batch_size,
            config.num_steps,
            self.split_line(config.val_split),
            self.validation_line(config),
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

    /// Where the prepared text lives, its size, and what preparing it took.
    fn prepared_line(&self) -> String {
        let p = &self.prepared;
        let per = match p.width {
            1 => "1 byte a character".to_string(),
            w => format!("{w} bytes a character"),
        };
        let how = if p.reused {
            format!("ready, checked in {:.1} s", p.secs)
        } else {
            let rate = p.source_bytes as f64 / 1e6 / p.secs.max(1e-9);
            format!("prepared in {:.1} s, {rate:.0} MB/s", p.secs)
        };
        format!("{} ({}, {per}; {how})", p.path.display(), bytes(p.bytes))
    }

    /// How many batches a validation reads.
    fn validation_line(&self, config: &RunConfig) -> String {
        match self.val_batches(config) {
            (_, 0) => "none".into(),
            (read, all) if read == all => format!("all {all} batches, each time"),
            (read, all) => format!(
                "{read} of {all} batches each time, spread through the split (val_batches = {})",
                config.val_batches
            ),
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

/// The ids of each file, `file_ids` long each, in order.
fn per_file(ids: &Ids, file_ids: &[u64]) -> Vec<Ids> {
    let mut at = 0;
    (file_ids.iter())
        .map(|&n| {
            at += n;
            ids.slice(at - n, at)
        })
        .collect()
}

/// The error for a text too short for one batch of each split.
fn too_short(files: &[PathBuf], chars: u64, config: &RunConfig) -> DataError {
    let (n, m) = (config.batch_size, config.num_steps);
    let (f, how) = (config.val_fraction, config.val_split);
    let split = if f > 0.0 {
        format!(" (with val_fraction {f}, val_split {})", how.name())
    } else {
        String::new()
    };
    DataError::TooShort {
        path: karnna_data::prepare::named(files),
        chars,
        n_seqs: n,
        n_steps: m,
        split,
        need: min_text_len(n, m, f, how),
    }
}

/// The `\r`-updated preparation line on stderr (`preparing: encoding 1.2 / 5.0 GB, 240 MB/s`),
/// or nothing when stderr is not a terminal.
pub struct ProgressLine {
    on: bool,
    width: usize,
}

impl ProgressLine {
    /// A line shown only when `on`.
    pub fn new(on: bool) -> Self {
        Self { on, width: 0 }
    }

    /// Redraws the line.
    pub fn show(&mut self, p: Progress) {
        if !self.on {
            return;
        }
        let line = match p.stage {
            Stage::Waiting => format!("preparing the text: {}", p.stage.name()),
            _ => format!(
                "preparing the text: {} {:.1} / {:.1} GB, {:.0} MB/s",
                p.stage.name(),
                p.done as f64 / 1e9,
                p.total as f64 / 1e9,
                p.done as f64 / 1e6 / p.secs.max(1e-3)
            ),
        };
        self.width = self.width.max(line.len());
        eprint!("\r{line:w$}", w = self.width);
    }

    /// Erases the line.
    pub fn clear(&mut self) {
        if self.on && self.width > 0 {
            eprint!("\r{:w$}\r", "", w = self.width);
        }
    }
}
