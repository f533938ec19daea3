//! `cargo xtask`: the commands a karnna user types. Each builds the `karnna` binary in release
//! (a user must never wait on a debug build by accident), with the `cuda` or `wgpu` feature when
//! the run asks for that GPU backend, and runs it with the remaining arguments.
//!
//! This crate is a thin orchestrator with no dependencies: it must hold no model or training
//! logic (that lives in `crates/`).

use std::process::{Command, ExitCode};

const TASKS: &str = "\
usage: cargo xtask <task> [options]

tasks:
  info     print what a config would train on   (cargo xtask info --config configs/anna.toml)
  train    train a model, with a live dashboard (cargo xtask train --config configs/tiny.toml)
           on N processes over MPI: cargo xtask train --ranks N ... (builds the mpi feature)
  sample   write text from the latest run       (cargo xtask sample [--prime Far --len 2000])
  eval     loss and bits per char on a text     (cargo xtask eval --data data/anna.txt [--run DIR])
  export   a model as safetensors or ONNX       (cargo xtask export [--run DIR] --out anna.safetensors|anna.onnx)
  import   a safetensors model into a run folder (cargo xtask import model.safetensors --out artifacts/imported)
  bench    time a training step and sampling    (cargo xtask bench [--peer PYTHON])
  bench-data  a text's size against preparation speed and memory (cargo xtask bench-data --mb 100 --mb 2000)
  gpu-check  check a GPU against the CPU, time it (cargo xtask gpu-check [--device cuda|wgpu] [--peer PYTHON])
  report   runs beside the notebook's curve     (cargo xtask report artifacts/anna [--into README.md --svg docs/x.svg])
  serve    a page that samples live, the run's curves, an HTTP API (cargo xtask serve [--run DIR] [--addr 127.0.0.1:8080])

`cargo xtask <task> --help` lists a task's options. Add `--device cuda` to run on an NVIDIA GPU,
`--device wgpu` on any GPU with Vulkan, Metal or DX12.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(task) = args.first().cloned() else {
        println!("{TASKS}");
        return ExitCode::SUCCESS;
    };
    if !matches!(
        task.as_str(),
        "info"
            | "train"
            | "sample"
            | "eval"
            | "export"
            | "import"
            | "bench"
            | "bench-data"
            | "gpu-check"
            | "report"
            | "serve"
    ) {
        eprintln!("error: unknown task `{task}`\n\n{TASKS}");
        return ExitCode::from(2);
    }
    let mut args = args;
    // gpu-check is for the CUDA machine unless told otherwise.
    if task == "gpu-check" && device(&args).is_none() {
        args.extend(["--device".to_string(), "cuda".to_string()]);
    }
    if task == "train" {
        if let Some(ranks) = take_flag(&mut args, "--ranks") {
            return train_on_ranks(&ranks, &args);
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["run", "--quiet", "--release", "--package", "karnna"]);
    if let Some(feature) = gpu_feature(&args) {
        cmd.args(["--features", feature]);
    }
    cmd.arg("--").args(&args);
    // The run's provenance.txt names the commit it was made with.
    if let Some(commit) = commit() {
        cmd.env("KARNNA_COMMIT", commit);
    }
    run(cmd)
}

/// `train --ranks N`: builds karnna with the `mpi` feature (and the GPU feature a `--device` or
/// the config asks for), then runs `mpirun -np N karnna train` on this machine (on a cluster,
/// run the binary under `mpirun -H ...` or `srun` yourself).
fn train_on_ranks(ranks: &str, args: &[String]) -> ExitCode {
    if ranks.parse::<usize>().map_or(true, |n| n == 0) {
        eprintln!("error: --ranks {ranks}: a number of processes, at least 1");
        return ExitCode::from(2);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // A GPU run's ranks need its backend too (`mpi,cuda` or `mpi,wgpu`).
    let features = match gpu_feature(args) {
        Some(gpu) => format!("mpi,{gpu}"),
        None => "mpi".to_owned(),
    };
    build.args([
        "build",
        "--quiet",
        "--release",
        "--package",
        "karnna",
        "--features",
        &features,
    ]);
    match build.status() {
        Ok(s) if s.success() => {}
        Ok(_) => {
            eprintln!("error: the mpi feature needs an MPI library and libclang (Debian: openmpi-bin libopenmpi-dev libclang-dev)");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: cannot run cargo: {e}");
            return ExitCode::from(2);
        }
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let binary = std::path::Path::new(&target).join("release").join("karnna");
    let mut cmd = Command::new("mpirun");
    // Open MPI refuses root without this; elsewhere it is ignored.
    cmd.args(["--allow-run-as-root", "-np", ranks])
        .arg(binary)
        .args(args);
    if let Some(commit) = commit() {
        cmd.env("KARNNA_COMMIT", commit);
    }
    run(cmd)
}

/// Removes `name VALUE` (or `name=VALUE`) from `args` and returns the value.
fn take_flag(args: &mut Vec<String>, name: &str) -> Option<String> {
    let i = args
        .iter()
        .position(|a| a == name || a.starts_with(&format!("{name}=")))?;
    let flag = args.remove(i);
    match flag.strip_prefix(&format!("{name}=")) {
        Some(v) => Some(v.to_owned()),
        None => (i < args.len()).then(|| args.remove(i)),
    }
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

/// The checked-out commit (`git rev-parse --short HEAD`), `-dirty` after it when tracked files
/// have changes; `None` outside a git checkout.
fn commit() -> Option<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "--short=7", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

/// The value of `--device` on the command line (`--device X` or `--device=X`).
fn device(args: &[String]) -> Option<String> {
    flag(args, "--device")
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(&format!("{name}="))
            .map(str::to_owned)
            .or_else(|| (a == name).then(|| args.get(i + 1).cloned()).flatten())
    })
}

/// The GPU feature the run needs: `--device cuda|wgpu` on the command line, or else the
/// `device` of the config it names.
fn gpu_feature(args: &[String]) -> Option<&'static str> {
    let named = |device: &str| match device {
        "cuda" => Some("cuda"),
        "wgpu" => Some("wgpu"),
        _ => None,
    };
    if let Some(d) = device(args) {
        return named(&d);
    }
    let text = std::fs::read_to_string(flag(args, "--config")?).unwrap_or_default();
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut kv = line.splitn(2, '=').map(str::trim);
        if kv.next() != Some("device") {
            return None;
        }
        named(kv.next()?.trim_matches(['"', '\'']))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn gpu_feature_from_flag_or_config() {
        assert_eq!(gpu_feature(&args("train --device cuda")), Some("cuda"));
        assert_eq!(gpu_feature(&args("sample --device=cuda")), Some("cuda"));
        assert_eq!(gpu_feature(&args("bench --device wgpu")), Some("wgpu"));
        assert_eq!(gpu_feature(&args("train --device cpu")), None);
        assert_eq!(
            gpu_feature(&args("train --config ../configs/anna.toml")),
            None
        );
        let dir = std::env::temp_dir().join(format!("xtask-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("gpu.toml");
        std::fs::write(&cfg, "device = \"cuda\"   # the GPU\n").unwrap();
        let cfg = cfg.display().to_string();
        assert_eq!(
            gpu_feature(&args(&format!("train --config {cfg}"))),
            Some("cuda")
        );
        assert_eq!(
            gpu_feature(&args(&format!("train --config {cfg} --device wgpu"))),
            Some("wgpu")
        );
        assert_eq!(
            gpu_feature(&args(&format!("train --config {cfg} --device cpu"))),
            None
        );
        let other = dir.join("wgpu.toml");
        std::fs::write(&other, "device = 'wgpu'\n").unwrap();
        assert_eq!(
            gpu_feature(&args(&format!("train --config {}", other.display()))),
            Some("wgpu")
        );
    }
}
