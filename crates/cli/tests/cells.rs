//! The recurrent cells from the command line: the GRU and the RNN train, checkpoint, resume and
//! sample; an LSTM checkpoint written before cells existed still samples the same text.

use std::path::{Path, PathBuf};

mod common;
use common::{karnna, run_ok, tiny_config, workdir, SHORT};

fn checkpoints(run: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ckpt"))
        .collect();
    v.sort();
    v
}

#[test]
fn gru_and_rnn_train_checkpoint_resume_and_sample() {
    let dir = workdir("flow");
    std::fs::write(dir.join("short.txt"), SHORT.repeat(30)).unwrap();
    let cfg = tiny_config();
    let info = |cell: &str| {
        let out = run_ok(
            &dir,
            &[
                "info",
                "--config",
                &cfg,
                "--data",
                "short.txt",
                "--cell",
                cell,
            ],
        );
        let line = out
            .lines()
            .find(|l| l.starts_with("parameters:"))
            .unwrap()
            .to_owned();
        line
    };
    let (lstm, gru, rnn) = (info("lstm"), info("gru"), info("rnn"));
    assert!(lstm.contains("2 LSTM layers x 64 units"), "{lstm}");
    assert!(gru.contains("2 GRU layers x 64 units"), "{gru}");
    assert!(rnn.contains("2 RNN layers x 64 units"), "{rnn}");

    for cell in ["gru", "rnn"] {
        let run = format!("run-{cell}");
        let train = |cell_flag: &str, more: &[&str]| {
            let mut args = vec![
                "train",
                "--config",
                &cfg,
                "--data",
                "short.txt",
                "--cell",
                cell_flag,
                "--run-dir",
                &run,
                "--epochs",
                "4",
            ];
            args.extend_from_slice(more);
            run_ok(&dir, &args)
        };
        let out = train(cell, &["--max-iters", "30"]);
        let shape = format!("2 {} layers x 64 units", cell.to_uppercase());
        assert!(out.contains(&shape), "{out}");
        let first = checkpoints(&dir.join(&run));
        assert_eq!(first.len(), 1, "{out}");
        // The checkpoint records the cell.
        let bytes = std::fs::read(&first[0]).unwrap();
        let meta = String::from_utf8_lossy(&bytes[..4096.min(bytes.len())]).into_owned();
        assert!(meta.contains(&format!("\"cell\": \"{cell}\"")), "{meta}");

        // Resuming follows the checkpoint's cell, even when the flag names another.
        let out = train("lstm", &["--resume", "--max-iters", "50"]);
        assert!(out.contains("resuming keeps the run's own model"), "{out}");
        assert!(out.contains(&shape), "{out}");
        assert!(out.contains("iter     50/"), "{out}");
        assert_eq!(checkpoints(&dir.join(&run)).len(), 2, "{out}");

        let sample = |precision: &str| {
            run_ok(
                &dir,
                &[
                    "sample",
                    "--run",
                    &run,
                    "--seed",
                    "3",
                    "--len",
                    "80",
                    "--precision",
                    precision,
                ],
            )
        };
        let (a, b) = (sample("f32"), sample("f32"));
        assert!(a.starts_with("Far"), "{a}");
        assert_eq!(a, b);
        assert!(a.chars().count() >= 80, "{a}");
        // The CPU sampler with f16 weights picks the f32 weights' most likely characters.
        let argmax = |extra: &[&str]| {
            let mut args = vec!["sample", "--run", &run, "--argmax", "--len", "60"];
            args.extend_from_slice(extra);
            run_ok(&dir, &args)
        };
        let cpu = argmax(&["--precision", "f32"]);
        assert_eq!(cpu, argmax(&["--precision", "f16"]));
        // The generic Burn path (what a GPU runs, `BurnStepper`) against the dedicated CPU
        // sampler: the same argmax text. On wgpu, when this build has it (`cargo test
        // --workspace` turns it on) and a device answers (llvmpipe in CI); under CI=true it
        // must run.
        let args = [
            "sample", "--run", &run, "--argmax", "--len", "60", "--device", "wgpu",
        ];
        let o = karnna(&dir, &args);
        if o.status.success() {
            assert_eq!(
                String::from_utf8_lossy(&o.stdout),
                cpu,
                "{cell}: Burn on wgpu"
            );
        } else {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "CI=true and the Burn path did not run: {err}"
            );
            eprintln!("skipped the Burn path on wgpu: {err}");
        }
    }
}

/// A 2x16 LSTM checkpoint written by karnna before cells could be chosen (its model config has
/// no `cell`), with what it sampled then for seed 7.
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn an_lstm_checkpoint_from_before_cells_samples_the_same_text() {
    let dir = workdir("old");
    let ckpt = fixture("lstm-v1.ckpt");
    let ckpt = ckpt.to_str().unwrap();
    let bytes = std::fs::read(ckpt).unwrap();
    assert!(
        !String::from_utf8_lossy(&bytes).contains("\"cell\""),
        "an old checkpoint"
    );
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--checkpoint",
            ckpt,
            "--prime",
            "Anna ",
            "--seed",
            "7",
        ];
        args.extend_from_slice(extra);
        run_ok(&dir, &args)
    };
    for precision in ["f32", "f16"] {
        let out = sample(&["--len", "200", "--precision", precision]);
        let want = std::fs::read_to_string(fixture("lstm-v1-seed7.txt")).unwrap();
        assert_eq!(out, want, "{precision}");
    }
    let out = sample(&["--len", "100", "--num-samples", "2"]);
    let want = std::fs::read_to_string(fixture("lstm-v1-seed7-two.txt")).unwrap();
    assert_eq!(out, want);
}
