//! Training for karnna: burn-train's learner driven by a strategy that carries the recurrent state
//! from batch to batch, as the notebook does.
//!
//! It owns the run configuration ([`config`]), getting the text ([`fetch`]) and preparing it
//! ([`corpus`]: prepared once into the cache by `karnna-data`, mapped, split), the pieces the learner is built from (the model as a training step, the ordered
//! batch loader, metrics, the optimizer, global-norm clipping: [`learner`]), the run itself with
//! its checkpoints and resume ([`run`]), the run's `metrics.csv` and `loss.svg` ([`log`]), where
//! the run was made ([`provenance`]), and runs side by side with the notebook's curve
//! ([`report`]).
//!
//! It builds on `karnna-data` and `karnna-model`. The backend a model trains on is the
//! binary's choice (it calls [`run::train`] with one); this crate names a CPU backend only as a
//! tool, `Flex` for burn-train's loss metric, which receives a number already on the host.
//! Sampling must not depend on this crate.

pub mod collective;
pub mod config;
pub mod corpus;
mod dashboard;
pub mod fetch;
pub mod folder;
pub mod learner;
pub mod log;
pub mod memory;
pub mod provenance;
pub mod report;
pub mod run;
pub mod signals;

pub use config::{CpuBackend, Device, Matmul, Precision, ReferenceCurve, RunConfig};
pub use corpus::{default_cache_dir, Corpus, Preparation};
pub use run::{train, TrainOptions, TrainReport};
