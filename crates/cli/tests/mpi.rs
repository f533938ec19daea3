//! Data-parallel training under `mpirun` (the `mpi` feature): two ranks train the model one
//! process trains, over shared memory and over TCP, with dropout on and off, on the CPU and (with
//! the `wgpu` feature) on a GPU; a signal stops every rank at one iteration with one checkpoint,
//! which resumes under another number of ranks; a rank killed ends the job. Needs Open MPI's
//! `mpirun` (`.ci/run` installs it).
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{karnna, tiny_config, workdir, SHORT};
use karnna_exchange::TorchModel;
use karnna_model::Checkpoint;

/// `mpirun -np 2` of `karnna train` with the tiny config on `short.txt` and `extra`.
fn mpirun(dir: &Path, mca_tcp: bool, extra: &[&str]) -> Command {
    let cfg = tiny_config();
    let mut c = Command::new("mpirun");
    c.current_dir(dir)
        .env("KARNNA_CACHE_DIR", dir.join(".cache"))
        // Containers lack the kernel's cross-memory attach that Open MPI's shared memory
        // transport tries first.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"]);
    if mca_tcp {
        c.args(["--mca", "btl", "self,tcp"]);
    }
    c.arg(env!("CARGO_BIN_EXE_karnna"))
        .args(["train", "--config", &cfg, "--data", "short.txt", "--plain"])
        .args(extra);
    c
}

fn ok(o: Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn one(dir: &Path, extra: &[&str]) -> String {
    let cfg = tiny_config();
    let mut args = vec!["train", "--config", &cfg, "--data", "short.txt", "--plain"];
    args.extend_from_slice(extra);
    ok(karnna(dir, &args))
}

fn checkpoint(run: &Path) -> PathBuf {
    let mut v: Vec<(usize, PathBuf)> = karnna_model::checkpoint::RunDir::new(run)
        .checkpoints()
        .unwrap();
    v.pop().unwrap().1
}

fn weights(run: &Path) -> TorchModel {
    TorchModel::from_checkpoint(&Checkpoint::read(&checkpoint(run)).unwrap()).unwrap()
}

fn max_difference(a: &TorchModel, b: &TorchModel) -> f32 {
    let (ta, tb) = (a.tensors(), b.tensors());
    assert_eq!(ta.len(), tb.len());
    ta.iter()
        .zip(&tb)
        .flat_map(|((_, _, x), (_, _, y))| x.iter().zip(y.iter()).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max)
}

/// `metrics.csv`'s training and validation losses (`NaN` where none was measured).
fn losses(run: &Path) -> Vec<f64> {
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    csv.lines()
        .skip(1)
        .flat_map(|l| {
            l.split(',')
                .skip(2)
                .take(2)
                .map(|x| x.parse().unwrap_or(f64::NAN))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn setup(name: &str) -> PathBuf {
    let dir = workdir(name);
    std::fs::write(dir.join("short.txt"), SHORT.repeat(30)).unwrap();
    dir
}

#[test]
fn two_ranks_train_the_model_one_process_trains() {
    let dir = setup("mpi-same");
    let iters = ["--max-iters", "20"];
    for (keep, tcp) in [("1", false), ("1", true), ("0.9", false)] {
        let (alone, ranks) = (format!("one-{keep}"), format!("two-{keep}-{tcp}"));
        if !dir.join(&alone).exists() {
            one(
                &dir,
                &[&iters[..], &["--keep-prob", keep, "--run-dir", &alone]].concat(),
            );
        }
        let out = ok(mpirun(
            &dir,
            tcp,
            &[&iters[..], &["--keep-prob", keep, "--run-dir", &ranks]].concat(),
        )
        .output()
        .unwrap());
        // Rank 1 is silent: every line is printed once.
        assert_eq!(out.matches("saved ").count(), 1, "{out}");
        let d = max_difference(&weights(&dir.join(&alone)), &weights(&dir.join(&ranks)));
        // The ranks' gradients are summed in another order than one process sums its rows:
        // rounding only, measured at 1.4e-6 after 20 steps.
        assert!(
            d < 1e-5,
            "keep_prob {keep}, tcp {tcp}: weights differ by {d}"
        );
        // The dropout masks are the whole batch's, cut to each rank's rows: the same draws.
        let (a, b) = (losses(&dir.join(&alone)), losses(&dir.join(&ranks)));
        assert_eq!(a.len(), b.len());
        // Rounding only (the losses are written with five decimals); 1e-4 is the bound
        // for the validation loss.
        let worst = a
            .iter()
            .zip(&b)
            .filter(|(x, _)| x.is_finite())
            .map(|(x, y)| (x - y).abs());
        let worst = worst.fold(0.0, f64::max);
        assert!(
            worst <= 1e-4,
            "keep_prob {keep}: losses differ by {worst}: {a:?} {b:?}"
        );
        let provenance = std::fs::read_to_string(dir.join(&ranks).join("provenance.txt")).unwrap();
        assert!(
            provenance.contains("ranks: 2 (MPI, 4 rows each)"),
            "{provenance}"
        );
    }
    // A batch that does not divide among the ranks is refused.
    let o = mpirun(&dir, false, &["--batch-size", "7", "--run-dir", "odd"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("batch_size 7 does not divide among 2 processes"));
}

/// Two ranks on a GPU (wgpu: llvmpipe in CI, one device that both ranks share; on a machine
/// with several discrete GPUs each rank takes device `local rank mod count`) train what one
/// process trains on it, the gradients meeting in host memory.
#[cfg(feature = "wgpu")]
#[test]
fn two_ranks_on_a_gpu_train_the_model_one_process_trains_there() {
    let dir = setup("mpi-wgpu");
    let args = ["--max-iters", "10", "--keep-prob", "1", "--device", "wgpu"];
    one(&dir, &[&args[..], &["--run-dir", "one"]].concat());
    let out = ok(
        mpirun(&dir, false, &[&args[..], &["--run-dir", "two"]].concat())
            .output()
            .unwrap(),
    );
    assert_eq!(out.matches("saved ").count(), 1, "{out}");
    let provenance = std::fs::read_to_string(dir.join("two").join("provenance.txt")).unwrap();
    assert!(provenance.contains("device: wgpu"), "{provenance}");
    assert!(provenance.contains("ranks: 2"), "{provenance}");
    let d = max_difference(&weights(&dir.join("one")), &weights(&dir.join("two")));
    // As on the CPU, the ranks sum their gradients in another order than one process sums its
    // rows: rounding only, measured at 4.6e-7 after 10 steps on llvmpipe.
    assert!(d < 1e-5, "weights differ by {d}");
}

/// Waits for `child` at most `limit`; whether it ended.
fn wait(child: &mut std::process::Child, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The training processes whose command line names `run` (not mpirun's, which names it too).
fn ranks_of(run: &str) -> Vec<i32> {
    let pattern = format!("^[^ ]*karnna train .*{run}");
    let o = Command::new("pgrep")
        .args(["-f", &pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A long run (a 2x256 model, thousands of iterations), started under mpirun.
fn long_run(dir: &Path, run: &str) -> std::process::Child {
    let extra = [
        "--max-iters",
        "100000",
        "--epochs",
        "10000",
        "--lstm-size",
        "256",
        "--run-dir",
        run,
    ];
    let child = mpirun(dir, false, &extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until both ranks are past their first checkpoint (iteration 50).
    let t0 = Instant::now();
    while karnna_model::checkpoint::RunDir::new(dir.join(run))
        .checkpoints()
        .map_or(0, |c| c.len())
        == 0
    {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

#[test]
fn sigterm_to_mpirun_stops_every_rank_with_one_checkpoint_that_resumes_alone() {
    let dir = setup("mpi-term");
    let mut child = long_run(&dir, "term");
    let before = checkpoint(&dir.join("term"));
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(
        wait(&mut child, Duration::from_secs(20)),
        "mpirun did not end"
    );
    assert!(ranks_of("term").is_empty(), "a rank outlived mpirun");
    let last = checkpoint(&dir.join("term"));
    assert_ne!(last, before, "the stop saved a checkpoint of its own");
    let ckpt = Checkpoint::read(&last).unwrap();
    let stopped = ckpt.meta.iteration;
    // One process goes on from the next iteration, with the whole batch's carried state.
    let next = (stopped + 2).to_string();
    let out = one(
        &dir,
        &[
            "--resume",
            "--run-dir",
            "term",
            "--lstm-size",
            "256",
            "--epochs",
            "10000",
            "--max-iters",
            &next,
        ],
    );
    assert!(out.contains(&format!("(iteration {stopped})")), "{out}");
    assert!(out.contains(&format!("iter {:>6}/", stopped + 1)), "{out}");
}

#[test]
fn a_rank_killed_ends_the_job_within_seconds() {
    let dir = setup("mpi-kill");
    let mut child = long_run(&dir, "kill");
    let ranks = ranks_of("kill");
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    unsafe { libc::kill(ranks[1], libc::SIGKILL) };
    let t0 = Instant::now();
    assert!(
        wait(&mut child, Duration::from_secs(10)),
        "the job outlived a dead rank by 10 s"
    );
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("signal 9") || err.contains("non-zero"),
        "{err}"
    );
    assert!(
        ranks_of("kill").is_empty(),
        "an orphan rank after {:?}",
        t0.elapsed()
    );
}
