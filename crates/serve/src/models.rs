//! The served folder: its checkpoints (listed by name, best first), the models loaded from them
//! (each once, then shared by every request), and its `metrics.csv`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use karnna_data::Vocab;
use karnna_infer::{CpuWeights, Precision};
use karnna_model::checkpoint::{parse_checkpoint_name, RunDir};
use karnna_model::Checkpoint;
use serde::Serialize;

/// A checkpoint as the listing shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckpointInfo {
    /// The file's name in the served folder: what `POST /api/sample` takes as `checkpoint`.
    pub name: String,
    /// Training iterations done when it was saved.
    pub iteration: usize,
    /// Its validation loss (nats per character, as its name gives it: 3 decimals), if measured.
    pub val_loss: Option<f64>,
    /// Whether it is the one sampled when no checkpoint is named (`karnna sample`'s choice:
    /// the one `best.txt` names, else the latest).
    pub best: bool,
}

/// A model ready to sample: the weights read once into the CPU sampler's layout and shared by
/// every pool thread, and the vocabulary.
pub(crate) struct Model {
    /// The checkpoint's name.
    pub name: String,
    pub vocab: Vocab,
    pub weights: CpuWeights,
}

/// Models kept loaded at once; the least recently used goes first.
const KEEP_LOADED: usize = 4;

/// How long a listing of the folder is used before the folder is read again: requests do not
/// each read the folder, and a checkpoint a run writes shows up within this.
const LISTING_AGE: Duration = Duration::from_millis(500);

/// A checkpoint of the listing, with what finding and loading it takes.
struct Entry {
    info: CheckpointInfo,
    path: PathBuf,
    /// The file's modification time when listed: a model loaded from an older file is stale.
    modified: Option<SystemTime>,
}

/// A loaded model, the modification time of the file it came from, and when it was last used.
struct Loaded {
    modified: Option<SystemTime>,
    used: u64,
    model: Arc<Model>,
}

/// What is served: one run folder's checkpoints, or a single checkpoint file.
pub(crate) struct Folder {
    /// The folder listed, and whose `metrics.csv` is drawn.
    pub dir: PathBuf,
    /// Only this checkpoint (a `--checkpoint FILE`), instead of the folder's.
    only: Option<PathBuf>,
    precision: Precision,
    parts: usize,
    /// The last listing, best first, and when it was made.
    listing: Mutex<Option<(Instant, Arc<Vec<Entry>>)>>,
    /// Loaded models by name.
    loaded: Mutex<HashMap<String, Loaded>>,
    uses: AtomicU64,
}

/// Why a checkpoint could not be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ModelError {
    /// Not a name of the listing.
    #[error("no checkpoint named {0:?} in the served folder (GET /api/checkpoints lists them)")]
    Unknown(String),
    /// The folder has no checkpoint.
    #[error("{0}: no checkpoints in this folder")]
    Empty(PathBuf),
    /// Reading or building it failed.
    #[error("{0}")]
    Load(String),
}

impl Folder {
    /// Serves `dir`'s checkpoints, or only `checkpoint` (and its folder's metrics) when given.
    pub fn new(dir: PathBuf, only: Option<PathBuf>, precision: Precision, parts: usize) -> Self {
        Self {
            dir,
            only,
            precision,
            parts,
            listing: Mutex::new(None),
            loaded: Mutex::new(HashMap::new()),
            uses: AtomicU64::new(0),
        }
    }

    /// Reads the folder: its checkpoints, best first (the default one, then by validation loss,
    /// lowest first, then those without one, latest first). Blocking.
    fn scan(&self) -> Result<Arc<Vec<Entry>>, ModelError> {
        let (files, best) = match &self.only {
            Some(file) => (vec![file.clone()], Some(file.clone())),
            None => {
                let run = RunDir::new(&self.dir);
                let files = run
                    .checkpoints()
                    .map_err(|e| ModelError::Load(format!("{}: {e}", self.dir.display())))?
                    .into_iter()
                    .map(|(_, p)| p)
                    .collect();
                (files, run.best().ok().flatten())
            }
        };
        let best = best.as_deref().and_then(file_name);
        let mut list: Vec<Entry> = files
            .into_iter()
            .filter_map(|path| {
                let name = file_name(&path)?;
                let (iteration, val_loss) = parse_name(&name);
                let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                Some(Entry {
                    info: CheckpointInfo {
                        best: best.as_deref() == Some(name.as_str()),
                        name,
                        iteration,
                        val_loss,
                    },
                    path,
                    modified,
                })
            })
            .collect();
        list.sort_by(|a, b| {
            let (a, b) = (&a.info, &b.info);
            b.best
                .cmp(&a.best)
                .then(match (a.val_loss, b.val_loss) {
                    (Some(x), Some(y)) => x.total_cmp(&y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                })
                .then(b.iteration.cmp(&a.iteration))
        });
        let list = Arc::new(list);
        *self.listing.lock().expect("listing lock") = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// The last listing when it is recent enough.
    fn recent(&self) -> Option<Arc<Vec<Entry>>> {
        let listing = self.listing.lock().expect("listing lock");
        listing
            .as_ref()
            .filter(|(t, _)| t.elapsed() < LISTING_AGE)
            .map(|(_, l)| l.clone())
    }

    /// The checkpoints, best first, from a recent listing, without blocking; `None` when the
    /// folder must be read again ([`Folder::list`]).
    pub fn list_recent(&self) -> Option<Vec<CheckpointInfo>> {
        self.recent()
            .map(|l| l.iter().map(|e| e.info.clone()).collect())
    }

    /// The checkpoints, best first. Blocking (reads the folder).
    pub fn list(&self) -> Result<Vec<CheckpointInfo>, ModelError> {
        Ok(self.scan()?.iter().map(|e| e.info.clone()).collect())
    }

    /// The model of checkpoint `name` (the best when `None`) when it is loaded and a recent
    /// listing has it: no blocking. `None` sends the caller to [`Folder::model`].
    pub fn model_now(&self, name: Option<&str>) -> Option<Arc<Model>> {
        let list = self.recent()?;
        let entry = find(&list, name)?;
        self.loaded_model(entry)
    }

    fn loaded_model(&self, entry: &Entry) -> Option<Arc<Model>> {
        let tick = self.uses.fetch_add(1, Ordering::Relaxed);
        let mut loaded = self.loaded.lock().expect("models lock");
        let l = loaded.get_mut(&entry.info.name)?;
        if l.modified != entry.modified {
            return None;
        }
        l.used = tick;
        Some(l.model.clone())
    }

    /// The model of checkpoint `name` (a name of the listing; the best when `None`), loaded on
    /// first use and kept while its file is unchanged. Blocking (reads the folder, and the
    /// checkpoint when it is not loaded).
    pub fn model(&self, name: Option<&str>) -> Result<Arc<Model>, ModelError> {
        let list = self.scan()?;
        let Some(entry) = find(&list, name) else {
            return Err(match name {
                Some(n) => ModelError::Unknown(n.to_owned()),
                None => ModelError::Empty(self.dir.clone()),
            });
        };
        if let Some(model) = self.loaded_model(entry) {
            return Ok(model);
        }
        let ckpt = Checkpoint::read(&entry.path).map_err(|e| ModelError::Load(e.to_string()))?;
        let net = ckpt
            .model::<burn::backend::Flex>(&Default::default())
            .map_err(|e| ModelError::Load(e.to_string()))?;
        let name = entry.info.name.clone();
        let model = Arc::new(Model {
            name: name.clone(),
            vocab: ckpt.meta.vocab.clone(),
            weights: CpuWeights::new(&net, self.precision, self.parts),
        });
        let tick = self.uses.fetch_add(1, Ordering::Relaxed);
        let mut loaded = self.loaded.lock().expect("models lock");
        if loaded.len() >= KEEP_LOADED && !loaded.contains_key(&name) {
            let oldest = loaded
                .iter()
                .min_by_key(|(_, l)| l.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                loaded.remove(&k);
            }
        }
        loaded.insert(
            name,
            Loaded {
                modified: entry.modified,
                used: tick,
                model: model.clone(),
            },
        );
        Ok(model)
    }

    /// The path of `metrics.csv`.
    pub fn metrics_path(&self) -> PathBuf {
        self.dir.join("metrics.csv")
    }
}

/// The entry named `name`, or the first (the best) when `None`.
fn find<'a>(list: &'a [Entry], name: Option<&str>) -> Option<&'a Entry> {
    match name {
        Some(n) => list.iter().find(|e| e.info.name == n),
        None => list.first(),
    }
}

fn file_name(p: &Path) -> Option<String> {
    p.file_name()?.to_str().map(str::to_owned)
}

/// The iteration and validation loss a checkpoint's name gives
/// ([`parse_checkpoint_name`]); 0 for a name without an iteration.
fn parse_name(name: &str) -> (usize, Option<f64>) {
    let (iteration, val_loss) = parse_checkpoint_name(name);
    (iteration.unwrap_or(0), val_loss)
}

/// `metrics.csv` as JSON: one object per row, keyed by the header's column names, numbers as
/// numbers and empty cells as `null`. Rows that do not have the header's width are skipped
/// (the last line of a file being written, say).
pub(crate) fn metrics_json(csv: &str) -> serde_json::Value {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else {
        return serde_json::Value::Array(Vec::new());
    };
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let rows = lines
        .filter_map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            if cells.len() != names.len() {
                return None;
            }
            let mut row = serde_json::Map::new();
            for (name, cell) in names.iter().zip(cells) {
                let cell = cell.trim();
                let value = if cell.is_empty() {
                    serde_json::Value::Null
                } else if let Ok(v) = cell.parse::<i64>() {
                    v.into()
                } else if let Ok(v) = cell.parse::<f64>() {
                    serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into)
                } else {
                    cell.into()
                };
                row.insert((*name).to_owned(), value);
            }
            Some(serde_json::Value::Object(row))
        })
        .collect();
    serde_json::Value::Array(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_iteration_and_loss() {
        assert_eq!(parse_name("i200_l512_v1.234.ckpt"), (200, Some(1.234)));
        assert_eq!(parse_name("i7_l64_v-.ckpt"), (7, None));
        assert_eq!(parse_name("i7_l64_vNaN.ckpt"), (7, None));
    }

    #[test]
    fn metrics_rows_become_objects() {
        let csv = "iteration,epoch,train_loss,val_loss\n1,1,4.2,\n2,1,4.0,3.9\n3,1\n";
        let v = metrics_json(csv);
        assert_eq!(
            v,
            serde_json::json!([
                {"iteration": 1, "epoch": 1, "train_loss": 4.2, "val_loss": null},
                {"iteration": 2, "epoch": 1, "train_loss": 4.0, "val_loss": 3.9},
            ])
        );
        assert_eq!(metrics_json(""), serde_json::json!([]));
    }
}
