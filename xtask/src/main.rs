//! `cargo xtask`: the commands a karnna user types. Each builds the `karnna` binary in release
//! (a user must never wait on a debug build by accident), with the `cuda` feature when the run
//! asks for the GPU, and runs it with the remaining arguments.
//!
//! This crate is a thin orchestrator with no dependencies: it must hold no model or training
//! logic (that lives in `crates/`).

use std::process::{Command, ExitCode};

const TASKS: &str = "\
usage: cargo xtask <task> [options]

tasks:
  info     print what a config would train on   (cargo xtask info --config configs/anna.toml)
  train    train a model, with a live dashboard (cargo xtask train --config configs/tiny.toml)
  sample   write text from the latest run       (cargo xtask sample [--prime Far --len 2000])
  bench    time a training step and sampling    (cargo xtask bench [--peer PYTHON])

`cargo xtask <task> --help` lists a task's options. Add `--device cuda` to run on an NVIDIA GPU.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(task) = args.first() else {
        println!("{TASKS}");
        return ExitCode::SUCCESS;
    };
    if !matches!(task.as_str(), "info" | "train" | "sample" | "bench") {
        eprintln!("error: unknown task `{task}`\n\n{TASKS}");
        return ExitCode::from(2);
    }
    let cuda = wants_cuda(&args);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["run", "--quiet", "--release", "--package", "karnna"]);
    if cuda {
        cmd.args(["--features", "cuda"]);
    }
    cmd.arg("--").args(&args);
    run(cmd)
}

/// Becomes `cmd` (Unix `exec`): cargo then execs `karnna` in this same process, so the shell
/// waits for the program itself. A parent that died on Ctrl-C while `karnna` was still saving a
/// checkpoint would hand the terminal back to the shell from under the dashboard.
#[cfg(unix)]
fn run(mut cmd: Command) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let e = cmd.exec(); // returns only on failure
    eprintln!("error: cannot run cargo: {e}");
    ExitCode::from(2)
}

/// Runs `cmd` and exits with its status (elsewhere than Unix, where there is no `exec`).
#[cfg(not(unix))]
fn run(mut cmd: Command) -> ExitCode {
    match cmd.status() {
        Ok(status) => ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: cannot run cargo: {e}");
            ExitCode::from(2)
        }
    }
}

/// True when the command line says `--device cuda`, or names a config whose `device` is cuda
/// and no `--device` overrides it.
fn wants_cuda(args: &[String]) -> bool {
    let value = |flag: &str| {
        args.iter().enumerate().find_map(|(i, a)| {
            a.strip_prefix(&format!("{flag}="))
                .map(str::to_owned)
                .or_else(|| (a == flag).then(|| args.get(i + 1).cloned()).flatten())
        })
    };
    if let Some(device) = value("--device") {
        return device == "cuda";
    }
    let Some(config) = value("--config") else {
        return false;
    };
    let text = std::fs::read_to_string(config).unwrap_or_default();
    text.lines().any(|line| {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut kv = line.splitn(2, '=').map(str::trim);
        kv.next() == Some("device") && kv.next() == Some("\"cuda\"")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn cuda_from_flag_or_config() {
        assert!(wants_cuda(&args("train --device cuda")));
        assert!(wants_cuda(&args("sample --device=cuda")));
        assert!(!wants_cuda(&args("train --device cpu")));
        assert!(!wants_cuda(&args("train --config ../configs/anna.toml")));
        let dir = std::env::temp_dir().join(format!("xtask-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("gpu.toml");
        std::fs::write(&cfg, "device = \"cuda\"   # the GPU\n").unwrap();
        let cfg = cfg.display().to_string();
        assert!(wants_cuda(&args(&format!("train --config {cfg}"))));
        assert!(!wants_cuda(&args(&format!(
            "train --config {cfg} --device cpu"
        ))));
    }
}
