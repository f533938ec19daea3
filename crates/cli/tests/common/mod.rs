//! What the binary's integration tests share: running `karnna` and finding the tiny config.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `karnna` binary in `dir` with `args` and waits for it.
pub fn karnna(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_karnna"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// The path of `configs/tiny.toml`.
pub fn tiny_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/tiny.toml")
        .display()
        .to_string()
}
