//! The `karnna` binary as a user meets it: train the tiny config on a short text, sample from
//! it, and get one-line errors with exit code 2 for bad input.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{karnna, tiny_config};

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("karnna-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `karnna ARGS` fails with exit code 2 and a single stderr line containing `needle`.
fn assert_one_line_error(dir: &Path, args: &[&str], needle: &str) {
    let o = karnna(dir, args);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
}

const SHORT: &str = "Far from here, it was the best of times, it was the worst of times, it was the age of wisdom, \
it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity.\n";

#[test]
fn train_then_sample_a_short_text() {
    let dir = workdir("flow");
    std::fs::write(dir.join("short.txt"), SHORT.repeat(30)).unwrap();
    let cfg = tiny_config();
    let o = karnna(
        &dir,
        &[
            "train",
            "--config",
            &cfg,
            "--data",
            "short.txt",
            "--epochs",
            "4",
            "--max-iters",
            "30",
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("parameters:"), "{out}");
    assert!(
        out.contains("iter     30/"),
        "piped output has plain progress lines: {out}"
    );
    let run = dir.join("artifacts/tiny");
    for f in [
        "config.toml",
        "vocab.json",
        "metrics.csv",
        "loss.svg",
        "best.txt",
    ] {
        assert!(run.join(f).exists(), "{f}");
    }

    // Training again into the same folder refuses without --resume or --fresh.
    let o = karnna(&dir, &["train", "--config", &cfg, "--data", "short.txt"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--resume"));

    let a = karnna(&dir, &["sample", "--seed", "7", "--len", "120"]);
    let b = karnna(&dir, &["sample", "--seed", "7", "--len", "120"]);
    assert!(a.status.success(), "{}", text(&a).1);
    assert!(a.stdout.starts_with(b"Far"));
    assert_eq!(a.stdout, b.stdout);

    let all = karnna(
        &dir,
        &["sample", "--all-checkpoints", "--len", "20", "--seed", "1"],
    );
    let (out, _) = text(&all);
    assert!(out.matches("==> ").count() >= 2, "{out}");

    for (args, needle) in [
        (
            vec!["sample", "--top-n", "0"],
            "--top-n must be between 1 and",
        ),
        (
            vec!["sample", "--top-n", "1000"],
            "--top-n must be between 1 and",
        ),
        (
            vec!["sample", "--temperature", "0"],
            "--temperature must be positive",
        ),
        (vec!["sample", "--prime", "Zq字"], "cannot read them"),
        (
            vec!["sample", "--checkpoint", "nothing.ckpt"],
            "nothing.ckpt: no such checkpoint",
        ),
        (
            vec!["sample", "--checkpoint", "short.txt"],
            "short.txt: not a karnna checkpoint",
        ),
    ] {
        assert_one_line_error(&dir, &args, needle);
    }
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let dir = workdir("errors");
    std::fs::write(dir.join("bad.txt"), b"abc\xffdef").unwrap();
    std::fs::write(dir.join("bad.toml"), "num_layers = 0\n").unwrap();
    let cfg = tiny_config();
    for (args, needle) in [
        (
            vec!["info", "--config", cfg.as_str(), "--data", "missing.txt"],
            "missing.txt: no such file",
        ),
        (
            vec!["info", "--config", cfg.as_str(), "--data", "bad.txt"],
            "bad.txt: not valid UTF-8 at byte 3",
        ),
        (
            vec!["info", "--config", "bad.toml"],
            "bad.toml: num_layers must be at least 1",
        ),
        (
            vec!["train", "--config", cfg.as_str(), "--data", "bad.txt"],
            "not valid UTF-8",
        ),
        (
            vec!["train", "--config", cfg.as_str(), "--keep-prob", "1.5"],
            "keep_prob must be in (0, 1]",
        ),
        (vec!["sample"], "no training run found"),
    ] {
        assert_one_line_error(&dir, &args, needle);
    }
}

#[test]
fn info_on_anna_when_present() {
    let anna = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/anna.txt");
    if !anna.exists() {
        eprintln!(
            "SKIPPED info_on_anna_when_present: {} is absent",
            anna.display()
        );
        return;
    }
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/anna.toml")
        .display()
        .to_string();
    let o = karnna(
        &workdir("anna"),
        &[
            "info",
            "--config",
            &cfg,
            "--data",
            &anna.display().to_string(),
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("characters:      1985223"), "{out}");
    assert!(out.contains("vocabulary:      83 symbols"), "{out}");
    assert!(out.contains("parameters:      3366483"), "{out}");
}
