//! Checkpoint files: round trip, and every way a bad file is refused without a panic.

use burn::backend::Flex;
use karnna_data::Vocab;
use karnna_model::{CharRnnConfig, Checkpoint, CheckpointError, CheckpointMeta};

fn dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("karnna-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn saved(name: &str) -> (std::path::PathBuf, CheckpointMeta) {
    let (path, meta, _) = saved_model(name);
    (path, meta)
}

/// Every parameter's values, in module order.
fn weights(model: &karnna_model::CharRnn<Flex>) -> Vec<Vec<f32>> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::prelude::*;
    struct All(Vec<Vec<f32>>);
    impl ModuleVisitor<Flex> for All {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Flex, D>>) {
            self.0.push(p.val().into_data().to_vec::<f32>().unwrap());
        }
    }
    let mut all = All(Vec::new());
    model.visit(&mut all);
    all.0
}

/// A checkpoint `name` of a small model: its path, its meta and the model saved.
fn saved_model(
    name: &str,
) -> (
    std::path::PathBuf,
    CheckpointMeta,
    karnna_model::CharRnn<Flex>,
) {
    let device = Default::default();
    let vocab = Vocab::from_text("hello, 世界\n");
    let config = CharRnnConfig::new(vocab.len())
        .with_lstm_size(5)
        .with_num_layers(2);
    let model = config.init_seeded::<Flex>(karnna_model::Init::PyTorch, 3, &device);
    let meta = CheckpointMeta {
        model: config,
        vocab,
        iteration: 7,
        val_loss: Some(1.5),
        train_loss: None,
        run: serde_json::json!({"name": "t"}),
    };
    let path = dir().join(name);
    Checkpoint::save(&path, &meta, &model, &[("extra", b"abc")]).unwrap();
    (path, meta, model)
}

#[test]
fn round_trip_keeps_weights_meta_and_sections() {
    let device = Default::default();
    let (path, meta, model) = saved_model("a.ckpt");
    let ckpt = Checkpoint::read(&path).unwrap();
    assert_eq!(ckpt.meta.vocab, meta.vocab);
    assert_eq!(ckpt.meta.iteration, 7);
    assert_eq!(ckpt.section("extra"), Some(&b"abc"[..]));
    // The model loaded is the model saved: every tensor, bit for bit.
    let loaded = ckpt.model::<Flex>(&device).unwrap();
    let (want, got) = (weights(&model), weights(&loaded));
    assert_eq!(
        want.len(),
        2 * 4 + 2,
        "two layers of four tensors and the output layer's two"
    );
    assert_eq!(want.len(), got.len());
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(w), bits(g), "tensor {i}");
    }
    assert!(!path.with_extension("tmp").exists());
}

#[test]
fn bad_files_are_errors() {
    let (path, _) = saved("b.ckpt");
    let bytes = std::fs::read(&path).unwrap();
    let truncated = dir().join("truncated.ckpt");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = Checkpoint::read(&truncated).unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt(..)), "{err}");
    assert!(
        err.to_string()
            .contains("truncated.ckpt: checkpoint is truncated or corrupted"),
        "{err}"
    );

    let flipped = dir().join("flipped.ckpt");
    let mut b2 = bytes.clone();
    let mid = b2.len() / 2;
    b2[mid] ^= 1;
    std::fs::write(&flipped, &b2).unwrap();
    assert!(matches!(
        Checkpoint::read(&flipped),
        Err(CheckpointError::Corrupt(..))
    ));

    let other = dir().join("other.txt");
    std::fs::write(&other, b"just some text, long enough").unwrap();
    assert!(matches!(
        Checkpoint::read(&other),
        Err(CheckpointError::NotACheckpoint(..))
    ));
    assert!(matches!(
        Checkpoint::read(&dir().join("none.ckpt")),
        Err(CheckpointError::Missing(..))
    ));
}

#[test]
fn names_and_listing() {
    use karnna_model::checkpoint::{checkpoint_name, RunDir};
    assert_eq!(
        checkpoint_name(3960, 512, Some(1.2155)),
        "i3960_l512_v1.216.ckpt"
    );
    let run = RunDir::new(dir().join("run"));
    assert!(matches!(
        run.best_or_err(),
        Err(CheckpointError::NoCheckpoints(..))
    ));
    let run_path = run.path().to_owned();
    std::fs::create_dir_all(&run_path).unwrap();
    for n in [
        "i200_l8_v2.000.ckpt",
        "i1000_l8_v1.500.ckpt",
        "i400_l8_v1.000.ckpt",
        "notes.txt",
    ] {
        std::fs::write(run_path.join(n), b"x").unwrap();
    }
    let its: Vec<usize> = run
        .checkpoints()
        .unwrap()
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert_eq!(its, vec![200, 400, 1000]);
    assert!(run.best_or_err().unwrap().ends_with("i1000_l8_v1.500.ckpt"));
    run.set_best(&run_path.join("i400_l8_v1.000.ckpt")).unwrap();
    let pointer = std::fs::read_to_string(run_path.join("best.txt")).unwrap();
    assert_eq!(pointer, "i400_l8_v1.000.ckpt\n");
    assert!(run.best_or_err().unwrap().ends_with("i400_l8_v1.000.ckpt"));
    assert!(run
        .latest()
        .unwrap()
        .unwrap()
        .ends_with("i1000_l8_v1.500.ckpt"));
}
