//! `karnna export` and `karnna import` as a user runs them: a trained run of each cell goes to
//! safetensors and back into a run that samples the same text, evaluates and fine-tunes; ONNX
//! is written; bad files and folders are refused with one line and exit code 2.

use std::path::Path;

mod common;
use common::{karnna, run_ok, train_short, workdir, SHORT};

fn refused(dir: &Path, args: &[&str], expect: &str) {
    let o = karnna(dir, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains(expect),
        "{args:?}: expected {expect:?} in {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn export_then_import_samples_the_same_text_for_every_cell() {
    let dir = workdir("exchange");
    std::fs::write(dir.join("short.txt"), SHORT.repeat(30)).unwrap();
    for cell in ["lstm", "gru", "rnn"] {
        let run = format!("run-{cell}");
        let o = train_short(
            &dir,
            &[
                "--cell",
                cell,
                "--run-dir",
                &run,
                "--max-iters",
                "20",
                "--plain",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let file = format!("{cell}.safetensors");
        let out = run_ok(&dir, &["export", "--run", &run, "--out", &file]);
        assert!(out.contains("PyTorch's layout"), "{out}");
        let onnx = format!("{cell}.onnx");
        run_ok(&dir, &["export", "--run", &run, "--out", &onnx]);
        assert!(dir.join(&onnx).metadata().unwrap().len() > 1000);

        let back = format!("back-{cell}");
        let out = run_ok(&dir, &["import", &file, "--out", &back]);
        assert!(
            out.contains(&format!("2 {} layers x 64 units", cell.to_uppercase())),
            "{out}"
        );
        let sample = |run: &str| {
            run_ok(
                &dir,
                &["sample", "--run", run, "--seed", "5", "--len", "120"],
            )
        };
        assert_eq!(
            sample(&run),
            sample(&back),
            "{cell}: the imported run writes the same text"
        );

        let eval = |run: &str| {
            let out = run_ok(&dir, &["eval", "--run", run, "--data", "short.txt"]);
            let line = out.lines().find(|l| l.starts_with("loss_nats_per_char="));
            line.unwrap().to_owned()
        };
        assert_eq!(eval(&run), eval(&back), "{cell}: the same loss");

        // The imported checkpoint fine-tunes like any other.
        let ckpt = std::fs::read_dir(dir.join(&back))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "ckpt"))
            .unwrap();
        let tuned = format!("tuned-{cell}");
        let o = train_short(
            &dir,
            &[
                "--cell",
                cell,
                "--run-dir",
                &tuned,
                "--max-iters",
                "2",
                "--plain",
                "--init-from",
                ckpt.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    refused(
        &dir,
        &["import", "lstm.safetensors", "--out", "back-lstm"],
        "already holds 1 checkpoint",
    );
    refused(
        &dir,
        &["export", "--run", "run-lstm", "--out", "model.bin"],
        "--format",
    );
    let bytes = std::fs::read(dir.join("gru.safetensors")).unwrap();
    std::fs::write(dir.join("cut.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    refused(
        &dir,
        &["import", "cut.safetensors", "--out", "cut"],
        "cut.safetensors: not a readable safetensors file",
    );
    assert!(
        !dir.join("cut").exists(),
        "nothing written for a refused file"
    );
    std::fs::write(dir.join("model.pt"), b"\x80\x02").unwrap();
    refused(
        &dir,
        &["import", "model.pt", "--out", "pt"],
        "safetensors.torch import save_file",
    );
}
