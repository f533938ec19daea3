//! The exports against the other side: a numpy forward pass in PyTorch's conventions reads the
//! safetensors export, onnxruntime runs the ONNX export, and a file written in Python imports
//! into a model that writes the same argmax text (`tests/py/reference.py`).
//!
//! They need `python3` with numpy and onnxruntime (`.ci/run` installs both). Without them the
//! tests say so and pass, unless `CI` is set, where a missing side is a failure. The two tests
//! against PyTorch itself need torch and safetensors, which CI does not install (torch is a
//! gigabyte); they skip without them, everywhere.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{greedy, logits, scaled_model, scratch, B};
use karnna_data::Vocab;
use karnna_exchange::{export, safetensors_file, Format, TorchModel};
use karnna_model::Cell;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/reference.py")
}

/// Whether `python3` imports `modules`; if not, panics under CI and returns false elsewhere.
fn python_has(modules: &str) -> bool {
    let ok = python_imports(modules);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with {modules} is needed (pip install numpy onnxruntime)"
        );
        eprintln!("skipped: python3 cannot import {modules}");
    }
    ok
}

fn python_imports(modules: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether PyTorch and safetensors are at hand (never required, not even under CI).
fn torch_at_hand() -> bool {
    let ok = python_imports("torch, safetensors, numpy");
    if !ok {
        eprintln!("skipped: python3 cannot import torch and safetensors");
    }
    ok
}

fn python(args: &[&str]) -> String {
    let o = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "reference.py {args:?}:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("reference.py {}: {}", args[0], out.trim_end()); // the differences, with --nocapture
    out
}

/// karnna's logits and final state for two rows of 200 characters, as JSON for reference.py.
/// The weights are PyTorch's initial ones: logits of a few units, like a trained model's, for
/// which karnna's f32 rounding stays well inside 1e-5 (weights three times wider made the RNN's
/// logits differ from a float64 forward by up to 7.6e-6 on a Zen 4).
fn case(cell: Cell, seed: u64, dir: &Path) -> (PathBuf, karnna_model::CharRnn<B>, Vocab) {
    let (model, vocab) = scaled_model(cell, seed, 1.0);
    let path = write_case(&model, &vocab, &dir.join(format!("{}.json", cell.name())));
    (path, model, vocab)
}

fn write_case(model: &karnna_model::CharRnn<B>, vocab: &Vocab, path: &Path) -> PathBuf {
    let v = vocab.len();
    let ids: Vec<Vec<i64>> = (0..2)
        .map(|r| {
            (0..200)
                .map(|i| ((i * 7 + r * 13 + i / 5) % v) as i64)
                .collect()
        })
        .collect();
    let (out, state) = logits(model, &ids);
    let json = serde_json::json!({
        "ids": ids,
        "logits": out,
        "hn": karnna_model::to_f32_vec(state.h),
        "cn": karnna_model::to_f32_vec(state.c),
        "vocab_size": v,
    });
    std::fs::write(path, json.to_string()).unwrap();
    path.to_owned()
}

#[test]
fn numpy_in_pytorchs_conventions_reads_the_safetensors_export() {
    if !python_has("numpy") {
        return;
    }
    let dir = scratch("py-safetensors");
    for cell in Cell::ALL {
        let (case, model, vocab) = case(cell, 21, &dir);
        let file = dir.join(format!("{}.safetensors", cell.name()));
        export(
            &TorchModel::from_model(&model, vocab, 0, None),
            &file,
            Format::Safetensors,
        )
        .unwrap();
        python(&[
            "safetensors",
            file.to_str().unwrap(),
            case.to_str().unwrap(),
        ]);
    }
}

#[test]
fn onnxruntime_runs_the_onnx_export_with_the_state_carried() {
    if !python_has("numpy, onnxruntime") {
        return;
    }
    let dir = scratch("py-onnx");
    for cell in Cell::ALL {
        let (case, model, vocab) = case(cell, 22, &dir);
        let file = dir.join(format!("{}.onnx", cell.name()));
        export(
            &TorchModel::from_model(&model, vocab, 0, None),
            &file,
            Format::Onnx,
        )
        .unwrap();
        python(&["onnx", file.to_str().unwrap(), case.to_str().unwrap()]);
    }
}

#[test]
fn a_file_written_in_python_imports_and_writes_the_same_argmax_text() {
    if !python_has("numpy") {
        return;
    }
    let dir = scratch("py-import");
    let text = "It was the best of times, it was the worst of times.\n";
    for (cell, mode) in [
        (Cell::Lstm, "sorted"),
        (Cell::Gru, "shuffled"),
        (Cell::Rnn, "none"),
    ] {
        let file = dir.join(format!("{}.safetensors", cell.name()));
        let want = python(&[
            "write",
            file.to_str().unwrap(),
            cell.name(),
            "7",
            mode,
            "It was",
            "80",
        ]);
        let vocab_from = (mode == "none").then(|| Vocab::from_text(text));
        let imported = safetensors_file::read(&file, vocab_from.as_ref()).unwrap();
        assert_eq!(
            imported.notes.len(),
            usize::from(mode == "shuffled"),
            "{:?}",
            imported.notes
        );
        let model = imported.model.model::<B>(&Default::default());
        let got = greedy(&model, &imported.model.vocab, "It was", 80);
        assert_eq!(got, want, "{cell} ({mode} vocabulary)");
    }
}

/// The notebook's model (2 x 512 LSTM, 83 characters) in PyTorch itself: `load_state_dict` with
/// `strict=True` takes the export and its logits are karnna's. The model is a seeded untrained
/// one, or the checkpoint `KARNNA_EXCHANGE_CHECKPOINT` names (a trained anna run, say).
#[test]
fn pytorch_loads_the_notebooks_model_strictly_with_karnnas_logits() {
    if !torch_at_hand() {
        return;
    }
    let dir = scratch("py-torch");
    let (model, vocab) = match std::env::var_os("KARNNA_EXCHANGE_CHECKPOINT") {
        Some(path) => {
            let ckpt = karnna_model::Checkpoint::read(Path::new(&path)).unwrap();
            let torch = TorchModel::from_checkpoint(&ckpt).unwrap();
            (torch.model::<B>(&Default::default()), torch.vocab)
        }
        None => {
            let vocab = Vocab::from_chars((0..83u8).map(|i| char::from(b' ' + i)));
            let config = karnna_model::CharRnnConfig::new(vocab.len());
            let model =
                config.init_seeded::<B>(karnna_model::Init::PyTorch, 9, &Default::default());
            (model, vocab)
        }
    };
    let case = write_case(&model, &vocab, &dir.join("notebook.json"));
    let file = dir.join("notebook.safetensors");
    export(
        &TorchModel::from_model(&model, vocab, 0, None),
        &file,
        Format::Safetensors,
    )
    .unwrap();
    python(&["torch", file.to_str().unwrap(), case.to_str().unwrap()]);
}

/// A model trained in PyTorch and saved with `safetensors.torch.save_file` (a plain state_dict,
/// no metadata) imports with `--vocab-from` its text and writes PyTorch's argmax text.
#[test]
fn a_pytorch_trained_state_dict_writes_the_same_argmax_text_in_karnna() {
    if !torch_at_hand() {
        return;
    }
    let dir = scratch("py-torch-train");
    let text = common::TEXT.repeat(20);
    let text_path = dir.join("text.txt");
    std::fs::write(&text_path, &text).unwrap();
    let file = dir.join("trained.safetensors");
    let want = python(&[
        "torch-train",
        file.to_str().unwrap(),
        text_path.to_str().unwrap(),
        "Happy",
        "100",
    ]);
    let imported = safetensors_file::read(&file, Some(&Vocab::from_text(&text))).unwrap();
    let model = imported.model.model::<B>(&Default::default());
    assert_eq!(greedy(&model, &imported.model.vocab, "Happy", 100), want);
}
