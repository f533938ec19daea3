//! What the binary's integration tests share: running `karnna` and finding the tiny config.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `karnna` binary, to run in `dir`, with its prepared texts cached in `dir/.cache` (so
/// that tests neither share a cache nor fill the user's).
pub fn command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_karnna"));
    command
        .current_dir(dir)
        .env("KARNNA_CACHE_DIR", dir.join(".cache"));
    command
}

/// Runs the `karnna` binary in `dir` with `args` and waits for it.
pub fn karnna(dir: &Path, args: &[&str]) -> Output {
    command(dir).args(args).output().unwrap()
}

/// Runs the `karnna` binary in `dir` with `args`, asserts that it succeeded (its output in
/// the message otherwise) and returns its stdout.
#[allow(dead_code)] // not every test binary uses it
pub fn run_ok(dir: &Path, args: &[&str]) -> String {
    let o = karnna(dir, args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{args:?}:\n{out}\n{err}");
    out
}

/// Runs `karnna train` in `dir` with `configs/tiny.toml` on `dir/short.txt`, then `extra`.
#[allow(dead_code)]
pub fn train_short(dir: &Path, extra: &[&str]) -> Output {
    let cfg = tiny_config();
    let mut args = vec!["train", "--config", &cfg, "--data", "short.txt"];
    args.extend_from_slice(extra);
    karnna(dir, &args)
}

/// The path of `configs/tiny.toml`.
pub fn tiny_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/tiny.toml")
        .display()
        .to_string()
}

/// A fresh, empty scratch folder for one test: `karnna-cli-{pid}-{name}` in the temporary folder.
#[allow(dead_code)] // not every test binary uses it
pub fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("karnna-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A short English text that the tiny config learns something of in a few dozen iterations.
#[allow(dead_code)]
pub const SHORT: &str = "Far from here, it was the best of times, it was the worst of times, it was the age of wisdom, \
it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity.\n";
