//! The checkpoint file: one file that carries the model, its shape, its vocabulary and whatever
//! else the trainer needs to resume, so sampling needs nothing but the file.
//!
//! # Format
//! `KARNNA01` (8 bytes), then named sections, each `u16` name length, name (UTF-8), `u64`
//! length, bytes; then an FNV-1a 64-bit checksum of everything before it (all integers little
//! endian). The `meta` section is JSON ([`CheckpointMeta`]); `model` is the Burn record
//! (named MessagePack, full precision). Other sections belong to the trainer (optimizer state,
//! the carried recurrent state) and are opaque here. A truncated or altered file fails the checksum
//! and is reported, never half-loaded.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;

use crate::model::CharRnn;

mod check;
mod meta;

pub use check::check_record;
pub use meta::CheckpointMeta;

const MAGIC: &[u8; 8] = b"KARNNA01";

/// What is wrong with a checkpoint file. Each message is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file does not exist.
    #[error("{}: no such checkpoint", .0.display())]
    Missing(PathBuf),
    /// Reading or writing failed.
    #[error("{}: {}", .0.display(), .1)]
    Io(PathBuf, std::io::Error),
    /// The file does not start with karnna's magic bytes.
    #[error("{}: not a karnna checkpoint", .0.display())]
    NotACheckpoint(PathBuf),
    /// A run folder without a checkpoint.
    #[error("{}: no checkpoints in this run folder", .0.display())]
    NoCheckpoints(PathBuf),
    /// The file is cut short or altered.
    #[error("{}: checkpoint is truncated or corrupted ({})", .0.display(), .1)]
    Corrupt(PathBuf, String),
    /// The checksum holds but a field is out of range or disagrees with the weights (a file
    /// written by another program, or crafted): the message names the field.
    #[error("{}: invalid checkpoint: {}", .0.display(), .1)]
    Invalid(PathBuf, String),
}

/// A checkpoint read from disk: the meta and every section's bytes.
#[derive(Debug)]
pub struct Checkpoint {
    /// Where it was read from.
    pub path: PathBuf,
    /// The description.
    pub meta: CheckpointMeta,
    sections: Vec<(String, Vec<u8>)>,
}

/// The FNV-1a 64-bit hash of no bytes, where [`fnv1a`] starts.
pub const FNV1A_START: u64 = 0xcbf2_9ce4_8422_2325;

/// The FNV-1a 64-bit hash `hash` (of the bytes so far; [`FNV1A_START`] at first) extended by
/// `bytes`: a checkpoint's checksum, and any digest built a piece at a time.
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::default()
}

/// The sections of a checkpoint's body (after the magic, before the checksum): each a name
/// and its bytes, every length checked against what is left before anything is copied.
fn parse_sections(mut rest: &[u8]) -> Result<Vec<(String, Vec<u8>)>, &'static str> {
    fn take<'a>(rest: &mut &'a [u8], n: u64) -> Result<&'a [u8], &'static str> {
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= rest.len())
            .ok_or("section runs past the end")?;
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head)
    }
    let mut sections = Vec::new();
    loop {
        let name_len = u16::from_le_bytes(take(&mut rest, 2)?.try_into().expect("2 bytes"));
        let name = take(&mut rest, name_len.into())?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| "bad section name")?;
        let len = u64::from_le_bytes(take(&mut rest, 8)?.try_into().expect("8 bytes"));
        sections.push((name, take(&mut rest, len)?.to_vec()));
        if rest.is_empty() {
            return Ok(sections);
        }
    }
}

impl Checkpoint {
    /// Serializes `model` with `meta` and the extra `sections` and writes them to `path`
    /// atomically: to a temporary file in the same folder, synced, then renamed over `path`, so
    /// a run killed at any moment leaves either the old file or the new one, never half of one.
    pub fn save<B: Backend>(
        path: &Path,
        meta: &CheckpointMeta,
        model: &CharRnn<B>,
        sections: &[(&str, &[u8])],
    ) -> Result<(), CheckpointError> {
        let io = |e| CheckpointError::Io(path.to_owned(), e);
        let meta = serde_json::to_vec_pretty(meta).expect("meta serializes");
        let model = Recorder::<B>::record(&recorder(), model.clone().into_record(), ())
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let mut buf = MAGIC.to_vec();
        let all = [("meta", &meta[..]), ("model", &model[..])]
            .into_iter()
            .chain(sections.iter().copied());
        for (name, bytes) in all {
            buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            buf.extend_from_slice(bytes);
        }
        buf.extend_from_slice(&fnv1a(FNV1A_START, &buf).to_le_bytes());
        write_atomically(path, &buf).map_err(io)
    }

    /// Whether the file at `path` begins as karnna's checkpoints do (its magic bytes): what a
    /// fresh run checks before deleting a file that only has a checkpoint's name.
    pub fn has_magic(path: &Path) -> bool {
        use std::io::Read;
        let mut head = [0u8; 8];
        std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok_and(|()| &head == MAGIC)
    }

    /// Reads and verifies a checkpoint file: magic, checksum, the meta's fields, and the model
    /// record's tensors against the meta's shape (walked in place, nothing allocated from
    /// them). The model is not built yet; [`Checkpoint::model`] builds it.
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CheckpointError::Missing(path.to_owned()),
            _ => CheckpointError::Io(path.to_owned(), e),
        })?;
        let corrupt = |why: &str| CheckpointError::Corrupt(path.to_owned(), why.to_owned());
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(CheckpointError::NotACheckpoint(path.to_owned()));
        }
        if bytes.len() < 16 {
            return Err(corrupt("too short"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        if fnv1a(FNV1A_START, body).to_le_bytes() != sum {
            return Err(corrupt("checksum mismatch"));
        }
        let sections = parse_sections(&body[8..]).map_err(corrupt)?;
        let meta_bytes = sections
            .iter()
            .find(|(n, _)| n == "meta")
            .map(|(_, b)| b)
            .ok_or_else(|| corrupt("no meta section"))?;
        let invalid = |why: String| CheckpointError::Invalid(path.to_owned(), why);
        let meta = meta::parse_meta(meta_bytes).map_err(invalid)?;
        meta::check_meta(&meta).map_err(invalid)?;
        let model = sections
            .iter()
            .find(|(n, _)| n == "model")
            .map(|(_, b)| b)
            .ok_or_else(|| corrupt("no model section"))?;
        check::check_record(model, false).map_err(|e| invalid(format!("model: {e}")))?;
        check::check_model_shapes(model, &meta.model).map_err(invalid)?;
        Ok(Self {
            path: path.to_owned(),
            meta,
            sections,
        })
    }

    /// The bytes of section `name`, if present.
    pub fn section(&self, name: &str) -> Option<&[u8]> {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| &b[..])
    }

    /// Builds the model described by the meta and loads its weights.
    pub fn model<B: Backend>(&self, device: &B::Device) -> Result<CharRnn<B>, CheckpointError> {
        let corrupt = |why: String| CheckpointError::Corrupt(self.path.clone(), why);
        let bytes = self
            .section("model")
            .ok_or_else(|| corrupt("no model section".into()))?;
        let record = Recorder::<B>::load(&recorder(), bytes.to_vec(), device)
            .map_err(|e| corrupt(format!("model: {e}")))?;
        let model = self.meta.model.init::<B>(device).load_record(record);
        // The record must have exactly the shapes the meta describes. `lazy_shape` reads an
        // untrained parameter's shape without drawing its values: loading a checkpoint must not
        // consume the backend's global random generator (a seeded run on another thread would
        // get other weights).
        let expected = self.meta.model.init::<B>(device);
        let shapes = |m: &CharRnn<B>| {
            let mut v = Vec::new();
            for l in &m.layers {
                v.extend([
                    l.w_ih.lazy_shape().to_vec(),
                    l.w_hh.lazy_shape().to_vec(),
                    l.b_ih.lazy_shape().to_vec(),
                ]);
            }
            v.push(m.output.weight.lazy_shape().to_vec());
            v
        };
        if shapes(&model) != shapes(&expected) {
            return Err(corrupt("weights do not match the model's shape".into()));
        }
        Ok(model)
    }
}

/// Writes `bytes` to `path` atomically: to a temporary file beside it (`path` with the extension
/// `tmp`), synced, then renamed over `path`, so a process killed at any moment leaves either the
/// old file or the new one, never half of one. Checkpoints and exported models are written so.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// The notebook's checkpoint name with the validation loss: `i{iteration}_l{lstm_size}_v{loss}`
/// (`v-` when no validation loss was measured), plus `.ckpt`.
pub fn checkpoint_name(iteration: usize, lstm_size: usize, val_loss: Option<f64>) -> String {
    match val_loss {
        Some(v) => format!("i{iteration}_l{lstm_size}_v{v:.3}.ckpt"),
        None => format!("i{iteration}_l{lstm_size}_v-.ckpt"),
    }
}

/// What a name written by [`checkpoint_name`] gives (`.ckpt` or not): the iteration (`None`
/// when the name has none) and the validation loss (`None` for `v-` or an unreadable one).
pub fn parse_checkpoint_name(name: &str) -> (Option<usize>, Option<f64>) {
    let stem = name.strip_suffix(".ckpt").unwrap_or(name);
    let mut fields = stem.split('_');
    let iteration = fields
        .next()
        .and_then(|f| f.strip_prefix('i'))
        .and_then(|n| n.parse().ok());
    let val_loss = fields
        .find_map(|f| f.strip_prefix('v'))
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite());
    (iteration, val_loss)
}

/// A run folder's checkpoints: their names, the list in iteration order, the latest, and the
/// best one (named by [`RunDir::BEST_POINTER`]). Training, sampling, evaluation and serving
/// find a run's checkpoints through it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    /// The file in a run folder that names its best checkpoint (lowest validation loss).
    pub const BEST_POINTER: &str = "best.txt";

    /// The run folder `dir` (nothing is read yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where the checkpoint of `iteration` goes ([`checkpoint_name`]).
    pub fn checkpoint_path(
        &self,
        iteration: usize,
        lstm_size: usize,
        val_loss: Option<f64>,
    ) -> PathBuf {
        self.dir
            .join(checkpoint_name(iteration, lstm_size, val_loss))
    }

    /// The checkpoints, in iteration order (read from their names).
    pub fn checkpoints(&self) -> std::io::Result<Vec<(usize, PathBuf)>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let (true, (Some(iteration), _)) =
                (name.ends_with(".ckpt"), parse_checkpoint_name(name))
            {
                found.push((iteration, path));
            }
        }
        found.sort();
        Ok(found)
    }

    /// The latest checkpoint (highest iteration), if any.
    pub fn latest(&self) -> std::io::Result<Option<PathBuf>> {
        Ok(self.checkpoints()?.pop().map(|(_, p)| p))
    }

    /// The checkpoint that [`RunDir::BEST_POINTER`] names, when it names one that exists.
    pub fn best_pointer(&self) -> Option<PathBuf> {
        let name = std::fs::read_to_string(self.dir.join(Self::BEST_POINTER)).ok()?;
        let path = self.dir.join(name.trim());
        path.is_file().then_some(path)
    }

    /// Points [`RunDir::BEST_POINTER`] at `checkpoint` (a file in this folder), atomically.
    pub fn set_best(&self, checkpoint: &Path) -> std::io::Result<()> {
        let name = checkpoint.file_name().unwrap_or_default().to_string_lossy();
        let tmp = self.dir.join(format!("{}.tmp", Self::BEST_POINTER));
        std::fs::write(&tmp, format!("{name}\n"))?;
        std::fs::rename(tmp, self.dir.join(Self::BEST_POINTER))
    }

    /// The run's best checkpoint: the one [`RunDir::BEST_POINTER`] names, or else its latest.
    pub fn best(&self) -> std::io::Result<Option<PathBuf>> {
        match self.best_pointer() {
            Some(path) => Ok(Some(path)),
            None => self.latest(),
        }
    }

    /// [`RunDir::best`], or an error naming the folder when it has no checkpoint.
    pub fn best_or_err(&self) -> Result<PathBuf, CheckpointError> {
        self.best()
            .ok()
            .flatten()
            .ok_or_else(|| CheckpointError::NoCheckpoints(self.dir.clone()))
    }

    /// The run folder under `artifacts` with the most recently written checkpoint.
    pub fn most_recent(artifacts: &Path) -> Option<RunDir> {
        let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
        for entry in std::fs::read_dir(artifacts).ok()?.flatten() {
            let run = RunDir::new(entry.path());
            let Ok(ckpts) = run.checkpoints() else {
                continue;
            };
            for (_, p) in ckpts {
                let t = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
                if let Some(t) = t {
                    if newest.as_ref().is_none_or(|(nt, _)| t > *nt) {
                        newest = Some((t, run.dir.clone()));
                    }
                }
            }
        }
        newest.map(|(_, d)| RunDir::new(d))
    }
}
