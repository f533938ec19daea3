//! The run configuration: one flat TOML file (`configs/*.toml`), nanoGPT-style, with the
//! notebook's names. Every default lives here, with its reason; a file holds what differs.

use std::path::{Path, PathBuf};

use karnna_data::ValSplit;
use karnna_model::{Cell, CharRnnConfig, Init};
use serde::{Deserialize, Serialize};

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU (no installation needed).
    Cpu,
    /// An NVIDIA GPU through burn-cuda (build with the `cuda` feature).
    Cuda,
    /// Any GPU with Vulkan, Metal or DX12 through burn-wgpu (build with the `wgpu` feature).
    Wgpu,
}

/// Which Burn backend runs on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuBackend {
    /// burn-flex: pure Rust on the `gemm` crate; the faster one on our measurements.
    Flex,
    /// burn-ndarray.
    Ndarray,
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
    /// How the untrained weights are drawn: `pytorch` (default) or `tensorflow` (the
    /// notebook's: Glorot-uniform kernels, forget-gate bias 1, truncated-normal softmax).
    pub init: Init,
    /// Sequences per batch (the notebook's `batch_size`, `n_seqs`).
    pub batch_size: usize,
    /// Characters per sequence in a batch (the notebook's `num_steps`).
    pub num_steps: usize,
    /// The recurrent cell: `lstm` (the default, so every config and checkpoint written before
    /// this key keeps its meaning), `gru` or `rnn` (PyTorch's `nn.GRU` and tanh `nn.RNN`).
    pub cell: Cell,
    /// Units in each recurrent layer (the notebook's name, whatever the cell).
    pub lstm_size: usize,
    /// Stacked recurrent layers.
    pub num_layers: usize,
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
    /// A published curve to draw beside this run's in `loss.svg`: `none` or `notebook`.
    pub reference_curve: ReferenceCurve,
    /// Fine-tuning: start from this checkpoint's weights (its shape, its vocabulary extended
    /// with the new text's characters) instead of untrained ones; a run folder means its best
    /// checkpoint. Unset: a new model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
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
            init: Init::PyTorch,
            batch_size: 100,
            num_steps: 100,
            cell: Cell::Lstm,
            lstm_size: 512,
            num_layers: 2,
            keep_prob: 0.5,
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
            reference_curve: ReferenceCurve::None,
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
        let config: Self = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            let msg = e.message().replace('\n', " ");
            err(match line {
                Some(l) => format!("line {l}: {msg}"),
                None => msg,
            })
        })?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// Checks every value's range; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("batch_size", self.batch_size),
            ("num_steps", self.num_steps),
            ("lstm_size", self.lstm_size),
            ("num_layers", self.num_layers),
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
        if self.name.is_empty() || self.name.contains(['/', '\\']) {
            return Err(format!(
                "name must be a plain folder name, got {:?}",
                self.name
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

    /// The model's shape in words, such as `2 LSTM layers x 512 units`.
    pub fn shape(&self) -> String {
        format!(
            "{} {} layers x {} units",
            self.num_layers,
            self.cell.name().to_uppercase(),
            self.lstm_size
        )
    }

    /// The model this config describes, for a vocabulary of `vocab_size` characters.
    pub fn model(&self, vocab_size: usize) -> CharRnnConfig {
        CharRnnConfig::new(vocab_size)
            .with_cell(Some(self.cell))
            .with_lstm_size(self.lstm_size)
            .with_num_layers(self.num_layers)
            .with_keep_prob(self.keep_prob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("karnna-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
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
                anna.lstm_size,
                anna.num_layers
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
        assert_eq!(none.cell, Cell::Lstm);
        let gru = RunConfig::load(&write("gru.toml", "cell = \"gru\"\n")).unwrap();
        assert_eq!((gru.cell, gru.model(10).cell()), (Cell::Gru, Cell::Gru));
        assert_eq!(gru.shape(), "2 GRU layers x 512 units");
        let e = RunConfig::load(&write("badcell.toml", "cell = \"lstmx\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("badcell.toml: line 1: unknown variant `lstmx`"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
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
        let e = RunConfig::load(&write("none.toml", "data = []\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("none.toml: data must name at least one file or folder"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let p = write("unknown.toml", "name = \"x\"\nlstm_sise = 3\n");
        let e = RunConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("unknown.toml: line 2: unknown field `lstm_sise`"),
            "{e}"
        );
        assert!(!e.contains('\n'));
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
            let p = write("bad.toml", text);
            let e = RunConfig::load(&p).unwrap_err().to_string();
            assert!(e.contains(key) || e.contains("tpu"), "{text}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
