//! The run configuration: one flat TOML file (`configs/*.toml`), nanoGPT-style, with the
//! notebook's names. Every default lives here, with its reason; a file holds what differs.

use std::path::{Path, PathBuf};

use karnna_data::ValSplit;
use karnna_model::{CharRnnConfig, Checkpoint, Init, ModelShape};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where the model runs: defined in `karnna-gpu`, which turns it into a backend.
pub use karnna_gpu::Device;

/// Which Burn backend runs on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CpuBackend {
    /// burn-flex: pure Rust on the `gemm` crate; the faster one on our measurements.
    #[value(help = "burn-flex (default: faster here)")]
    Flex,
    /// burn-ndarray.
    #[value(help = "burn-ndarray")]
    Ndarray,
}

/// The arithmetic of the model's matrix products: the model's own setting
/// ([`karnna_model::CharRnn::matmul`]), which a run takes from its config
/// ([`RunConfig::matmul`]).
pub use karnna_model::Matmul;

/// The arithmetic of a training step's matrix products on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout.
    #[default]
    #[value(help = "f32 throughout (default)")]
    F32,
    /// Every product's operands rounded to bf16, sums in f32, on a CPU with AVX512_BF16
    /// (`VDPBF16PS`); the weights, Adam's state, the cells' maths and the loss stay f32, and so
    /// do checkpoints. Without AVX512_BF16 a run says so in one line and computes in f32.
    #[value(help = "bf16 products with f32 sums where the CPU has AVX512_BF16 (else f32)")]
    Bf16,
}

impl Precision {
    /// Its name in output and in config files (`f32`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The model's products for this precision on `device`: [`Matmul::Bf16`] for bf16 on a
    /// CPU whose kernels have `VDPBF16PS`; otherwise `gpu_matmul` (which the CPU backends
    /// compute in f32).
    pub fn matmul(self, device: Device, gpu_matmul: Matmul) -> Matmul {
        match (device, self) {
            (Device::Cpu, Precision::Bf16) if karnna_kernels::bf16_dot() => Matmul::Bf16,
            _ => gpu_matmul,
        }
    }
}

/// A published curve drawn beside the run's own in `loss.svg`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReferenceCurve {
    /// No reference.
    #[default]
    None,
    /// The notebook's 2017 revision: its validation loss every 200 iterations
    /// ([`crate::log::NOTEBOOK_VAL_LOSS`]), for `configs/anna.toml` with `val_split = "rows"`.
    Notebook,
}

/// Everything a run needs, as read from a config file (unknown keys are errors).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Run name: outputs go to `artifacts/<name>/` unless `--run-dir` says otherwise.
    pub name: String,
    /// The training text, UTF-8 (relative paths are relative to the working directory): a
    /// file, a folder (its `.txt` files, sorted by name), or a list of them. Several files are
    /// joined with an empty line between them ([`karnna_data::join_texts`]).
    #[serde(with = "one_or_many")]
    pub data: Vec<PathBuf>,
    /// Where to download the text from when `data` is missing (empty: never download).
    pub data_url: String,
    /// sha256 of the downloaded file, checked before it is kept (empty: not checked).
    pub data_sha256: String,
    /// Fraction of the text held out for validation (0 disables).
    pub val_fraction: f64,
    /// Where the validation part comes from: `tail` (the end of the text; the default, so
    /// configs and checkpoints written before this key existed keep their meaning) or `rows`
    /// (the end of each batch row: the notebook's `split_data`).
    pub val_split: ValSplit,
    /// Most batches one validation reads (0: all of them). A big text's validation split holds
    /// thousands of batches; this many, spread evenly through it ([`karnna_data::spread`]),
    /// keep each validation to seconds whatever the text's size. The default reads all 20 of
    /// `configs/anna.toml`'s.
    pub val_batches: usize,
    /// How the untrained weights are drawn: `pytorch` (default) or `tensorflow` (the
    /// notebook's: Glorot-uniform kernels, forget-gate bias 1, truncated-normal softmax).
    pub init: Init,
    /// Sequences per batch (the notebook's `batch_size`, `n_seqs`).
    pub batch_size: usize,
    /// Characters per sequence in a batch (the notebook's `num_steps`).
    pub num_steps: usize,
    /// The model's shape, as the flat keys `cell` (`lstm`, the default; `gru` or `rnn`:
    /// PyTorch's `nn.GRU` and tanh `nn.RNN`), `lstm_size` (units in each recurrent layer, the
    /// notebook's name whatever the cell) and `num_layers`.
    #[serde(flatten)]
    pub shape: ModelShape,
    /// Probability of keeping a layer's output in training (dropout is `1 - keep_prob`).
    pub keep_prob: f64,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// Clip the gradients' global norm to this (the notebook's `grad_clip`; 0 disables).
    pub grad_clip: f64,
    /// Passes over the training text.
    pub epochs: usize,
    /// Stop after this many iterations in all, even mid-epoch (0: no limit).
    pub max_iters: usize,
    /// Save a checkpoint every this many iterations (and at the end).
    pub save_every_n: usize,
    /// Measure the validation loss every this many iterations (and at each epoch's end).
    pub eval_every: usize,
    /// Print a plain progress line every this many iterations when not on a terminal.
    pub log_every: usize,
    /// Seed for the weights and for dropout (the run is reproducible for a seed).
    pub seed: u64,
    /// `cpu`, `cuda` or `wgpu`.
    pub device: Device,
    /// The CPU backend: `flex` (default, faster) or `ndarray`.
    pub cpu_backend: CpuBackend,
    /// The model's matrix products on a GPU: `tf32` (default: TF32 tensor cores where the card
    /// has them) or `f32`.
    pub gpu_matmul: Matmul,
    /// The products of a CPU step: `f32` (default) or `bf16` (where the CPU has AVX512_BF16).
    pub precision: Precision,
    /// A published curve to draw beside this run's in `loss.svg`: `none` or `notebook`.
    pub reference_curve: ReferenceCurve,
    /// Where prepared texts are kept ([`karnna_data::prepare()`]): empty for the user's cache
    /// folder ([`crate::corpus::default_cache_dir`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Fine-tuning: start from this checkpoint's weights (its shape, its vocabulary extended
    /// with the new text's characters) instead of untrained ones; a run folder means its best
    /// checkpoint. Unset: a new model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

/// The keys a resumed run takes from its config and command line ([`RunConfig::resume`]);
/// every other key is the checkpoint's.
pub const RESUME_KEEPS: [&str; 8] = [
    "epochs",
    "max_iters",
    "data",
    "cache_dir",
    "device",
    "cpu_backend",
    "gpu_matmul",
    "precision",
];

/// The one rule for a shape that a checkpoint decides (resume, fine-tuning): shapes compare
/// as values, and a config that asked for another gets a note naming both.
fn shape_note(used: ModelShape, asked: ModelShape, why: impl FnOnce() -> String) -> Option<String> {
    (used != asked).then(|| {
        format!(
            "note:            {} ({used}); the config's {asked} is not used",
            why()
        )
    })
}

/// A TOML error as one line: `line N: message`. The flattened shape makes serde read the
/// whole table at once, so a bad value or an unknown key reports a span over the whole file;
/// such an error is pinned to the line of the first key that fails on its own.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = |e: &toml::de::Error| e.message().replace('\n', " ");
    let line_at = |offset: usize| text[..offset].matches('\n').count() + 1;
    let whole_file = |s: &std::ops::Range<usize>| s.start == 0 && s.end >= text.trim_end().len();
    let located = match e.span() {
        Some(s) if !whole_file(&s) => Some((line_at(s.start), message(e))),
        _ => failing_key(text, line_at).map(|(line, e)| (line, message(&e))),
    };
    match located {
        Some((line, msg)) => format!("line {line}: {msg}"),
        None => message(e),
    }
}

/// The first key of a config file (by line) that does not read on its own, its line and its
/// error.
fn failing_key(text: &str, line_at: impl Fn(usize) -> usize) -> Option<(usize, toml::de::Error)> {
    let table: toml::Table = text.parse().ok()?;
    let key_line = |key: &str| {
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let rest = line.trim_start().strip_prefix(key);
            if rest.is_some_and(|r| r.trim_start().starts_with('=')) {
                return line_at(offset);
            }
            offset += line.len();
        }
        usize::MAX
    };
    table
        .into_iter()
        .filter_map(|(key, value)| {
            let one = toml::Table::from_iter([(key.clone(), value)]);
            let e = toml::Value::Table(one).try_into::<RunConfig>().err()?;
            Some((key_line(&key), e))
        })
        .min_by_key(|(line, _)| *line)
}

/// `data` as one path or a list of paths (one path is written back as one path, so configs and
/// checkpoints from before lists keep their form).
mod one_or_many {
    use std::path::PathBuf;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }

    pub fn serialize<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        match paths {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(p) => vec![p],
            OneOrMany::Many(v) => v,
        })
    }
}

impl Default for RunConfig {
    /// The notebook's run on `anna.txt`.
    fn default() -> Self {
        Self {
            name: "anna".into(),
            data: vec!["data/anna.txt".into()],
            data_url: String::new(),
            data_sha256: String::new(),
            val_fraction: 0.1,
            val_split: ValSplit::Tail,
            val_batches: 100,
            init: Init::PyTorch,
            batch_size: 100,
            num_steps: 100,
            shape: ModelShape::default(),
            keep_prob: karnna_model::DEFAULT_KEEP_PROB,
            learning_rate: 0.001,
            grad_clip: 5.0,
            epochs: 20,
            max_iters: 0,
            save_every_n: 200,
            eval_every: 200,
            log_every: 10,
            seed: 42,
            device: Device::Cpu,
            cpu_backend: CpuBackend::Flex,
            gpu_matmul: Matmul::Tf32,
            precision: Precision::F32,
            reference_curve: ReferenceCurve::None,
            cache_dir: None,
            init_from: None,
        }
    }
}

/// A config that cannot be used: a one-line message naming the file (and line or key).
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ConfigError {
    /// The config file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

impl RunConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => err("no such config file".into()),
            _ => err(format!("cannot read: {e}")),
        })?;
        let config: Self = toml::from_str(&text).map_err(|e| err(toml_error(&text, &e)))?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// The model's products for this config ([`Precision::matmul`] of its `precision`).
    pub fn matmul(&self) -> Matmul {
        self.precision.matmul(self.device, self.gpu_matmul)
    }

    /// The precision of this config's products in one line (for `train` and `info`), saying so
    /// when bf16 was asked for where it does not run.
    pub fn precision_line(&self) -> String {
        match (self.device, self.precision, self.matmul()) {
            (Device::Cpu, Precision::F32, _) => "f32".into(),
            (Device::Cpu, Precision::Bf16, Matmul::Bf16) => {
                "bf16 products, f32 sums (VDPBF16PS); f32 weights, optimizer and cells".into()
            }
            (Device::Cpu, Precision::Bf16, _) => {
                "f32: this CPU has no AVX512_BF16 (no bf16 dot product), and f32 is faster and \
                 more accurate here than rounding to bf16 would be"
                    .into()
            }
            (_, Precision::Bf16, m) => format!(
                "{}: precision = \"bf16\" is the CPU's; a GPU's products follow gpu_matmul",
                m.name()
            ),
            (_, Precision::F32, m) => m.name().into(),
        }
    }

    /// Checks every value's range; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("batch_size", self.batch_size),
            ("num_steps", self.num_steps),
            ("lstm_size", self.shape.lstm_size),
            ("num_layers", self.shape.num_layers),
            ("epochs", self.epochs),
            ("save_every_n", self.save_every_n),
            ("eval_every", self.eval_every),
            ("log_every", self.log_every),
        ];
        if self.data.is_empty() {
            return Err("data must name at least one file or folder".into());
        }
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("{key} must be at least 1, got 0"));
            }
        }
        if !(self.keep_prob > 0.0 && self.keep_prob <= 1.0) {
            return Err(format!(
                "keep_prob must be in (0, 1], got {}",
                self.keep_prob
            ));
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(format!(
                "val_fraction must be in [0, 1), got {}",
                self.val_fraction
            ));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(format!(
                "learning_rate must be positive, got {}",
                self.learning_rate
            ));
        }
        if !(self.grad_clip >= 0.0 && self.grad_clip.is_finite()) {
            return Err(format!(
                "grad_clip must be 0 (off) or positive, got {}",
                self.grad_clip
            ));
        }
        let name = self.name.as_str();
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains(['/', '\\'])
            || Path::new(name).is_absolute()
        {
            return Err(format!(
                "name must be one plain folder name under the artifacts folder (no '/', '\\', \
                 '.' or '..'), got {name:?}"
            ));
        }
        if !self.data_sha256.is_empty()
            && (self.data_sha256.len() != 64
                || !self.data_sha256.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err("data_sha256 must be 64 hexadecimal digits".into());
        }
        Ok(())
    }

    /// The run as a checkpoint stores it (its meta's `run`): without the keys of the model's
    /// config, which the checkpoint holds once, in its meta's `model`.
    pub fn checkpoint_json(&self) -> serde_json::Value {
        let mut run = serde_json::to_value(self).expect("a run config serializes");
        let model = serde_json::to_value(self.model(0)).expect("a model config serializes");
        if let (Value::Object(run), Value::Object(model)) = (&mut run, model) {
            for key in model.keys() {
                run.remove(key);
            }
        }
        run
    }

    /// The run a checkpoint was saved by: its meta's `run` with the model's keys from its
    /// meta's `model` (checkpoints that repeat them in `run` hold the same values there),
    /// range-checked as a config file is ([`RunConfig::validate`]): a resumed run takes it.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> anyhow::Result<Self> {
        let mut run = ckpt.meta.run.clone();
        let model = serde_json::to_value(&ckpt.meta.model)?;
        if let (Value::Object(run), Value::Object(model)) = (&mut run, model) {
            run.extend(model.into_iter().filter(|(key, _)| key != "vocab_size"));
        }
        let path = ckpt.path.display();
        let run: Self = serde_json::from_value(run.clone()).map_err(|e| {
            let why = bad_key(&run).unwrap_or_else(|| e.to_string());
            anyhow::anyhow!("{path}: the run config inside is unreadable: {why}")
        })?;
        run.validate()
            .map_err(|e| anyhow::anyhow!("{path}: the run config inside: {e}"))?;
        Ok(run)
    }

    /// This config resuming the run of `ckpt`, and a note when the config asked for another
    /// shape. A checkpoint's run fixes every key except [`RESUME_KEEPS`]: the length of the run,
    /// the text's paths and the device, which come from this config.
    pub fn resume(self, ckpt: &Checkpoint) -> anyhow::Result<(Self, Option<String>)> {
        let saved = Self::from_checkpoint(ckpt)?;
        let note = shape_note(saved.shape, self.shape, || {
            "resuming keeps the run's own model".to_string()
        });
        let resumed = Self {
            epochs: self.epochs,
            max_iters: self.max_iters,
            data: self.data,
            cache_dir: self.cache_dir,
            device: self.device,
            cpu_backend: self.cpu_backend,
            gpu_matmul: self.gpu_matmul,
            precision: self.precision,
            ..saved
        };
        Ok((resumed, note))
    }

    /// This config fine-tuning `base`: the base's model decides the shape ([`ModelShape`]'s
    /// keys); a note when the config asked for another.
    pub fn fine_tune(self, base: &Checkpoint) -> (Self, Option<String>) {
        let shape = base.meta.model.shape;
        let note = shape_note(shape, self.shape, || {
            format!("the model's shape comes from {}", base.path.display())
        });
        (Self { shape, ..self }, note)
    }

    /// The model this config describes, for a vocabulary of `vocab_size` characters.
    pub fn model(&self, vocab_size: usize) -> CharRnnConfig {
        CharRnnConfig {
            vocab_size,
            shape: self.shape,
            keep_prob: self.keep_prob,
        }
    }
}

/// The first key of a run config in JSON whose value does not read (with serde's message,
/// which names no key): the default config with that one key set fails to read.
fn bad_key(run: &Value) -> Option<String> {
    let base = serde_json::to_value(RunConfig::default()).ok()?;
    run.as_object()?.iter().find_map(|(key, value)| {
        let mut one = base.clone();
        one[key] = value.clone();
        let e = serde_json::from_value::<RunConfig>(one).err()?;
        Some(format!("{key}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use karnna_model::Cell;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("karnna-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The error of loading `text` written as `name`; every config error is one line.
    fn load_error(name: &str, text: &str) -> String {
        let e = RunConfig::load(&write(name, text)).unwrap_err().to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        e
    }

    /// Loading `text` written as `name` fails with an error that contains `needle`.
    fn assert_refused(name: &str, text: &str, needle: &str) {
        let e = load_error(name, text);
        assert!(e.contains(needle), "{e}");
    }

    #[test]
    fn gpu_matmul_is_tf32_unless_the_config_says_f32() {
        assert_eq!(RunConfig::default().gpu_matmul, Matmul::Tf32);
        let f32 = RunConfig::load(&write("f32.toml", "gpu_matmul = \"f32\"\n")).unwrap();
        assert_eq!(f32.gpu_matmul, Matmul::F32);
        assert_refused("fp16.toml", "gpu_matmul = \"fp16\"\n", "fp16.toml");
    }

    /// A run's name is one folder under `artifacts/`: `..`, `.`, separators and absolute paths
    /// would put (and `--fresh` clear) a run elsewhere.
    #[test]
    fn a_run_name_is_one_plain_folder_name() {
        for (file, name) in [
            ("up.toml", ".."),
            ("here.toml", "."),
            ("abs.toml", "/tmp/run"),
            ("sub.toml", "a/b"),
            ("back.toml", "a\\\\b"),
            ("empty.toml", ""),
        ] {
            let e = load_error(file, &format!("name = \"{name}\"\n"));
            assert!(
                e.starts_with(&format!("{}", write(file, "").display())),
                "{e}"
            );
            assert!(
                e.contains("name must be one plain folder name"),
                "{name}: {e}"
            );
        }
        let ok = RunConfig::load(&write("dots.toml", "name = \"anna..v2\"\n")).unwrap();
        assert_eq!(ok.name, "anna..v2");
    }

    #[test]
    fn precision_is_f32_unless_the_config_says_bf16_and_bf16_is_no_gpu_matmul() {
        assert_eq!(RunConfig::default().precision, Precision::F32);
        let bf16 = RunConfig::load(&write("bf16.toml", "precision = \"bf16\"\n")).unwrap();
        assert_eq!(bf16.precision, Precision::Bf16);
        // The model's products are bf16 exactly where the CPU has the dot product.
        let want = if karnna_kernels::bf16_dot() {
            Matmul::Bf16
        } else {
            Matmul::Tf32
        };
        assert_eq!(bf16.matmul(), want);
        assert_eq!(RunConfig::default().matmul(), Matmul::Tf32);
        // On a GPU the key says so and the GPU's own choice holds.
        let gpu = RunConfig {
            device: Device::Cuda,
            ..bf16.clone()
        };
        assert_eq!(gpu.matmul(), Matmul::Tf32);
        assert!(
            gpu.precision_line().contains("gpu_matmul"),
            "{}",
            gpu.precision_line()
        );
        assert_refused("p16.toml", "precision = \"f16\"\n", "p16.toml");
        // bf16 is the CPU's key, not a value of the GPU's.
        assert_refused("gb.toml", "gpu_matmul = \"bf16\"\n", "gb.toml");
    }

    #[test]
    fn shipped_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&root).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                RunConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 3, "expected anna, anna-cpu and tiny configs");
        let anna = RunConfig::load(&root.join("anna.toml")).unwrap();
        let notebook = RunConfig::default();
        assert_eq!(
            (
                anna.batch_size,
                anna.num_steps,
                anna.shape.lstm_size,
                anna.shape.num_layers
            ),
            (100, 100, 512, 2)
        );
        assert_eq!(
            (anna.keep_prob, anna.learning_rate, anna.grad_clip),
            (0.5, 0.001, 5.0)
        );
        assert_eq!(
            (anna.epochs, anna.save_every_n),
            (notebook.epochs, notebook.save_every_n)
        );
        // The notebook's validation split, initialisation and curve to compare with.
        assert_eq!(
            (anna.val_split, anna.init, anna.reference_curve),
            (ValSplit::Rows, Init::TensorFlow, ReferenceCurve::Notebook)
        );
    }

    #[test]
    fn the_cell_is_lstm_unless_named() {
        let none = RunConfig::load(&write("nocell.toml", "data = \"a.txt\"\n")).unwrap();
        assert_eq!(none.shape.cell, Cell::Lstm);
        let gru = RunConfig::load(&write("gru.toml", "cell = \"gru\"\n")).unwrap();
        assert_eq!(
            (gru.shape.cell, gru.model(10).cell()),
            (Cell::Gru, Cell::Gru)
        );
        assert_eq!(gru.shape.to_string(), "2 GRU layers x 512 units");
        let e = RunConfig::load(&write("badcell.toml", "cell = \"lstmx\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("badcell.toml: line 1: unknown variant `lstmx`"),
            "{e}"
        );
    }

    #[test]
    fn data_is_one_path_or_a_list_and_init_from_is_optional() {
        let one = RunConfig::load(&write("one.toml", "data = \"a.txt\"\n")).unwrap();
        assert_eq!(one.data, vec![PathBuf::from("a.txt")]);
        assert_eq!(one.init_from, None);
        // Written back as it was read: one path stays one path, no init_from key.
        let text = toml::to_string(&one).unwrap();
        assert!(text.contains("data = \"a.txt\""), "{text}");
        assert!(!text.contains("init_from"), "{text}");
        let many = RunConfig::load(&write(
            "many.toml",
            "data = [\"texts/\", \"b.txt\"]\ninit_from = \"base.ckpt\"\n",
        ))
        .unwrap();
        assert_eq!(
            many.data,
            vec![PathBuf::from("texts/"), PathBuf::from("b.txt")]
        );
        assert_eq!(many.init_from, Some(PathBuf::from("base.ckpt")));
        let back: RunConfig = toml::from_str(&toml::to_string(&many).unwrap()).unwrap();
        assert_eq!(back, many);
        assert_refused(
            "none.toml",
            "data = []\n",
            "none.toml: data must name at least one file or folder",
        );
    }

    #[test]
    fn unknown_key_is_named() {
        assert_refused(
            "unknown.toml",
            "name = \"x\"\nlstm_sise = 3\n",
            "unknown.toml: line 2: unknown field `lstm_sise`",
        );
    }

    #[test]
    fn a_bad_value_or_key_names_its_line() {
        let p = write(
            "lines.toml",
            "name = \"x\"\n\nlstm_size = 8\ncell = \"lstmx\"\nnum_layers = 2.5\n",
        );
        let e = RunConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("lines.toml: line 4: unknown variant `lstmx`"),
            "{e}"
        );
        assert_refused(
            "lines2.toml",
            "name = \"x\"\nseed = 1\n  num_layers = -2\n",
            "lines2.toml: line 3: invalid value",
        );
        assert_refused(
            "lines3.toml",
            "name = \"x\"\nbatch_size = \"many\"\n",
            "lines3.toml: line 2: invalid type",
        );
    }

    #[test]
    fn a_checkpoint_holds_the_shape_once_and_resume_keeps_only_its_keys() {
        let mut config = RunConfig::default();
        config.shape.cell = Cell::Gru;
        let run = config.checkpoint_json();
        for key in ["cell", "lstm_size", "num_layers", "keep_prob", "vocab_size"] {
            assert!(run.get(key).is_none(), "{key} in {run}");
        }
        assert_eq!(run["batch_size"], 100);
        // Every key of the new config differs from the saved run's.
        let new = RunConfig {
            name: "other".into(),
            data: vec!["b.txt".into()],
            data_url: "u".into(),
            data_sha256: "0".repeat(64),
            val_fraction: 0.2,
            val_split: ValSplit::Rows,
            val_batches: 7,
            init: Init::TensorFlow,
            batch_size: 7,
            num_steps: 7,
            shape: ModelShape {
                cell: Cell::Rnn,
                lstm_size: 7,
                num_layers: 7,
            },
            keep_prob: 0.7,
            learning_rate: 0.7,
            grad_clip: 7.0,
            epochs: 7,
            max_iters: 7,
            save_every_n: 7,
            eval_every: 7,
            log_every: 7,
            seed: 7,
            device: Device::Wgpu,
            cpu_backend: CpuBackend::Ndarray,
            gpu_matmul: Matmul::F32,
            precision: Precision::Bf16,
            reference_curve: ReferenceCurve::Notebook,
            cache_dir: Some("d".into()),
            init_from: Some("c".into()),
        };
        let saved = serde_json::to_value(&config).unwrap();
        let wanted = serde_json::to_value(&new).unwrap();
        let ckpt_dir = std::env::temp_dir().join(format!("karnna-resume-{}", std::process::id()));
        std::fs::create_dir_all(&ckpt_dir).unwrap();
        let path = ckpt_dir.join("a.ckpt");
        let vocab = karnna_data::Vocab::from_text("ab");
        let model = config
            .model(vocab.len())
            .with_lstm_size(2)
            .with_num_layers(1);
        let meta = karnna_model::CheckpointMeta {
            model: model.clone(),
            vocab,
            iteration: 1,
            val_loss: None,
            train_loss: None,
            run: RunConfig {
                shape: model.shape,
                ..config.clone()
            }
            .checkpoint_json(),
        };
        let device = Default::default();
        let weights = model.init::<burn::backend::Flex>(&device);
        Checkpoint::save(&ckpt_dir.join("a.ckpt"), &meta, &weights, &[]).unwrap();
        let ckpt = Checkpoint::read(&path).unwrap();
        let (resumed, note) = new.resume(&ckpt).unwrap();
        assert_eq!(resumed.shape, model.shape);
        assert_eq!(
            note.unwrap(),
            "note:            resuming keeps the run's own model (1 GRU layers x 2 units); the config's 7 RNN layers x 7 units is not used"
        );
        let resumed = serde_json::to_value(&resumed).unwrap();
        for (key, value) in resumed.as_object().unwrap() {
            let from_new = RESUME_KEEPS.contains(&key.as_str());
            let want = if from_new { &wanted[key] } else { &saved[key] };
            if !["lstm_size", "num_layers"].contains(&key.as_str()) {
                assert_eq!(value, want, "{key}");
            }
        }
    }

    #[test]
    fn out_of_range_values_are_named() {
        for (text, key) in [
            ("num_layers = 0", "num_layers"),
            ("keep_prob = 1.5", "keep_prob"),
            ("keep_prob = 0.0", "keep_prob"),
            ("val_fraction = 1.0", "val_fraction"),
            ("learning_rate = -1.0", "learning_rate"),
            ("device = \"tpu\"", "device"),
        ] {
            let e = load_error("bad.toml", text);
            assert!(e.contains(key) || e.contains("tpu"), "{text}: {e}");
        }
    }

    /// A checkpoint in a folder of its own whose meta's run is `run`: a 1x2 LSTM over "ab".
    fn checkpoint_with_run(name: &str, run: serde_json::Value) -> Checkpoint {
        let dir = std::env::temp_dir().join(format!("karnna-run-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let vocab = karnna_data::Vocab::from_text("ab");
        let model = CharRnnConfig::new(vocab.len())
            .with_lstm_size(2)
            .with_num_layers(1);
        let weights = model.init::<burn::backend::Flex>(&Default::default());
        let meta = karnna_model::CheckpointMeta {
            model,
            vocab,
            iteration: 1,
            val_loss: None,
            train_loss: None,
            run,
        };
        let path = dir.join("i1_l2_v-.ckpt");
        Checkpoint::save(&path, &meta, &weights, &[]).unwrap();
        Checkpoint::read(&path).unwrap()
    }

    #[test]
    fn resuming_refuses_a_run_config_out_of_range_naming_the_checkpoint_and_the_key() {
        for (key, value) in [
            ("batch_size", serde_json::json!(0)),
            ("num_steps", serde_json::json!(0)),
            ("learning_rate", serde_json::json!(-1.0)),
            ("name", serde_json::json!("../elsewhere")),
            ("batch_size", serde_json::json!("many")),
        ] {
            let mut run = RunConfig::default().checkpoint_json();
            run[key] = value;
            let ckpt = checkpoint_with_run(key, run);
            let e = RunConfig::default().resume(&ckpt).unwrap_err().to_string();
            assert!(e.contains("i1_l2_v-.ckpt") && e.contains(key), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    /// Seeded random byte changes to a real config file: each loads as a valid config or is a
    /// one-line error naming the file, never a panic.
    #[test]
    fn random_changes_to_a_config_file_load_or_are_named_errors() {
        let text = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../configs/anna.toml"
        ))
        .unwrap();
        // A seeded generator (xorshift64): `below(n)` is a number in 0..n.
        let mut state = 28u64;
        let mut below = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut loaded, mut refused) = (0, 0);
        for case in 0..300 {
            let mut t = text.clone();
            for _ in 0..1 + below(3) {
                let at = below(t.len());
                t[at] = match below(3) {
                    0 => below(256) as u8,
                    1 => b"0123456789-.e\"=[]{}#\n"[below(20)],
                    _ => t[at] ^ (1 << below(8)),
                };
            }
            let path = write("mutated.toml", "");
            std::fs::write(&path, &t).unwrap();
            match RunConfig::load(&path) {
                Ok(c) => {
                    c.validate().unwrap();
                    loaded += 1;
                }
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        e.starts_with(&path.display().to_string()),
                        "case {case}: {e}"
                    );
                    assert_eq!(e.lines().count(), 1, "case {case}: {e}");
                    refused += 1;
                }
            }
        }
        assert!(
            loaded > 0 && refused > 0,
            "{loaded} loaded, {refused} refused"
        );
    }
}
