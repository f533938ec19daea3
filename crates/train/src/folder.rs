//! A run folder as training holds it: one training run at a time (an OS file lock), and never
//! overwrite a run's checkpoints silently (`--resume` or `--fresh`). Its checkpoints (names,
//! listing, latest, best) are [`RunDir`]'s, which sampling and serving share.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use karnna_model::checkpoint::RunDir;
use karnna_model::Checkpoint;

/// The lock file inside a run folder; it holds the training process's id.
pub const LOCK_FILE: &str = "train.lock";

/// A run folder that this process trains in. It holds an exclusive lock on
/// [`LOCK_FILE`] (`File::try_lock`: `flock` on Unix, `LockFileEx` on Windows) for as long as
/// it lives; the operating system releases the lock when the
/// process ends, however it ends (even by SIGKILL), so a stale lock never blocks a folder.
/// Readers (sampling) do not take the lock.
#[derive(Debug)]
pub struct RunFolder {
    run: RunDir,
    _lock: Option<File>,
}

impl RunFolder {
    /// Creates `dir` if needed and locks it for this process. A folder that another process
    /// is training in is refused at once, with that process's id in the message.
    pub fn lock(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the run folder", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                bail!("{}: cannot lock: {e}", path.display())
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let holder = match pid.trim() {
                    "" => "another process".to_string(),
                    pid => format!("process {pid}"),
                };
                bail!(
                "{}: {holder} is training in this folder; wait for it to finish, or train into another --run-dir",
                dir.display()
            );
            }
        }
        // Ours now: record who holds it, for the message above.
        let id = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(id.as_bytes()))
            .with_context(|| format!("{}: cannot write", path.display()))?;
        Ok(Self {
            run: RunDir::new(dir),
            _lock: Some(file),
        })
    }

    /// `dir` as the other ranks of a data-parallel run see it: rank 0 holds the lock and writes;
    /// they only read (the checkpoint they resume from).
    pub fn follow(dir: &Path) -> Self {
        Self {
            run: RunDir::new(dir),
            _lock: None,
        }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        self.run.path()
    }

    /// Its checkpoints.
    pub fn run(&self) -> &RunDir {
        &self.run
    }

    /// Applies the run-folder rules and returns the checkpoint to resume from, if any:
    /// - a folder with checkpoints is refused unless `resume` or `fresh` says what to do;
    /// - `resume` reads the latest checkpoint (an error when there is none).
    ///
    /// Nothing is deleted here: a `fresh` run calls [`RunFolder::clear`] once every check
    /// that could still refuse the run has passed.
    pub fn prepare(&self, resume: bool, fresh: bool) -> anyhow::Result<Option<Checkpoint>> {
        let dir = self.dir();
        let existing = self.run.checkpoints()?;
        if !existing.is_empty() && !resume && !fresh {
            bail!(
                "{}: has {} checkpoint(s) already; pass --resume to continue the run or --fresh to start over",
                dir.display(),
                existing.len()
            );
        }
        match (resume, existing.last()) {
            (true, Some((_, path))) => Ok(Some(Checkpoint::read(path)?)),
            (true, None) => bail!("{}: no checkpoint to resume from", dir.display()),
            _ => Ok(None),
        }
    }

    /// Deletes what karnna wrote in the folder (`--fresh`): its checkpoints (files with a
    /// checkpoint's name and karnna's magic bytes; another file of that name stays), and, in a
    /// folder that a karnna run wrote (its `provenance.txt` says so), `best.txt`, `metrics.csv`
    /// and `loss.svg`.
    pub fn clear(&self) -> anyhow::Result<()> {
        for (_, path) in self.run.checkpoints()? {
            if Checkpoint::has_magic(&path) {
                std::fs::remove_file(&path)
                    .with_context(|| format!("{}: cannot delete", path.display()))?;
            }
        }
        let provenance = std::fs::read_to_string(self.dir().join(crate::provenance::FILE));
        if provenance.is_ok_and(|p| p.starts_with("karnna: ")) {
            for name in [RunDir::BEST_POINTER, "metrics.csv", "loss.svg"] {
                let _ = std::fs::remove_file(self.dir().join(name));
            }
        }
        Ok(())
    }

    /// The best checkpoint recorded in the folder and its validation loss.
    pub fn best(&self) -> Option<(PathBuf, f64)> {
        let path = self.run.best_pointer()?;
        let loss = Checkpoint::read(&path).ok()?.meta.val_loss?;
        Some((path, loss))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_in_one_folder_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("karnna-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = RunFolder::lock(&dir).unwrap();
        let pid = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        // flock locks belong to the open file, so a second open in this process conflicts too.
        let e = RunFolder::lock(&dir).unwrap_err().to_string();
        assert!(
            e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        assert!(
            e.contains(&dir.display().to_string()) && !e.contains('\n'),
            "{e}"
        );
        drop(first);
        RunFolder::lock(&dir).unwrap();
    }

    /// `--fresh` deletes what karnna wrote and nothing else: a user's file that only has a
    /// checkpoint's name stays, and so do `metrics.csv` and `loss.svg` in a folder no karnna run
    /// wrote.
    #[test]
    fn fresh_clears_only_what_karnna_wrote() {
        let dir = std::env::temp_dir().join(format!("karnna-fresh-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let theirs = dir.join("i5_l64_v1.0.ckpt");
        std::fs::write(&theirs, "the user's notes").unwrap();
        std::fs::write(dir.join("metrics.csv"), "the user's table").unwrap();
        let folder = RunFolder::lock(&dir).unwrap();
        folder.clear().unwrap();
        assert!(theirs.exists() && dir.join("metrics.csv").exists());
        // A karnna run's folder: its own checkpoint and files go, the user's file stays.
        std::fs::write(dir.join(crate::provenance::FILE), "karnna: 0.1.0\n").unwrap();
        let ours = dir.join("i10_l64_v1.0.ckpt");
        std::fs::write(&ours, b"KARNNA01 and the rest").unwrap();
        folder.clear().unwrap();
        assert!(!ours.exists() && !dir.join("metrics.csv").exists());
        assert!(theirs.exists());
    }
}
