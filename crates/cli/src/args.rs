//! The arguments several commands share, flattened into each (`#[command(flatten)]`).

use std::path::PathBuf;

use karnna_model::checkpoint::RunDir;

/// Which checkpoints a command reads (`sample`, `eval`, `serve`): a file, or a run folder.
#[derive(clap::Args, Debug)]
pub struct CheckpointArgs {
    /// Read this run folder: its best checkpoint (serve: all of them, and its curves) [default:
    /// the most recent run under --artifacts]
    #[arg(long, conflicts_with = "checkpoint")]
    pub run: Option<PathBuf>,
    /// Read this checkpoint file (serve: only it, and its folder's curves).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Where runs are looked for.
    #[arg(long, default_value = "artifacts")]
    pub artifacts: PathBuf,
}

impl CheckpointArgs {
    /// `--run`, or else the run folder under `--artifacts` with the newest checkpoint.
    pub fn run_dir(&self) -> anyhow::Result<RunDir> {
        match &self.run {
            Some(dir) => Ok(RunDir::new(dir)),
            None => RunDir::most_recent(&self.artifacts).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no training run found (train one first: cargo xtask train --config configs/tiny.toml)",
                    self.artifacts.display()
                )
            }),
        }
    }

    /// `--checkpoint`, or else the run folder's best checkpoint.
    pub fn checkpoint(&self) -> anyhow::Result<PathBuf> {
        match &self.checkpoint {
            Some(file) => Ok(file.clone()),
            None => Ok(self.run_dir()?.best_or_err()?),
        }
    }
}
