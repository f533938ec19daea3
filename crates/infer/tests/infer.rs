//! The dedicated CPU path against the Burn forward, and generation's promises.

use std::sync::atomic::AtomicBool;

use burn::backend::Flex;
use karnna_data::Vocab;
use karnna_infer::{
    generate, BurnStepper, CharStepper, CpuCharRnn, Precision, SampleError, SampleOptions, Strategy,
};
use karnna_model::{Cell, CharRnnConfig};

#[test]
fn cpu_path_equals_burn_forward() {
    let device = Default::default();
    let shapes = [(1, 7), (2, 16), (3, 33)];
    let cases = Cell::ALL
        .into_iter()
        .flat_map(|cell| shapes.map(|(layers, h)| (cell, layers, h)));
    for (cell, layers, h) in cases {
        let model = CharRnnConfig::new(11)
            .with_lstm_size(h)
            .with_num_layers(layers)
            .with_cell(cell)
            .init::<Flex>(&device);
        for (parts, precision, tol) in [
            (1, Precision::F32, 1e-4),
            (2, Precision::F32, 1e-4),
            (2, Precision::F16, 1e-2),
            // bf16 keeps 8 bits of each weight: each logit within 2^-8 of the sum of its
            // |terms|, a few 1e-3 for these small models.
            (2, Precision::Bf16, 3e-2),
        ] {
            let mut fast = CpuCharRnn::with(&model, precision, parts);
            let mut burn = BurnStepper::new(model.clone());
            for &id in &[3u32, 0, 10, 5, 5, 7, 1, 2, 9, 4] {
                let a = fast.step(id).to_vec();
                let b = burn.step(id).to_vec();
                assert_eq!(a.len(), 11);
                for (x, y) in a.iter().zip(&b) {
                    assert!(
                        (x - y).abs() < tol,
                        "{cell} {layers}x{h}, {parts} parts, {precision:?}: {x} vs {y}"
                    );
                }
            }
            // Reset really starts over.
            fast.reset();
            burn.reset();
            let (a, b) = (fast.step(3).to_vec(), burn.step(3).to_vec());
            assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < tol));
        }
    }
}

fn sample(
    stepper: &mut CpuCharRnn,
    seed: u64,
    prime: &str,
    len: usize,
) -> Result<String, SampleError> {
    let vocab = Vocab::from_text(FARMS);
    let opts = SampleOptions {
        prime: prime.into(),
        len,
        strategy: Strategy::TopN {
            n: 3,
            temperature: 1.0,
        },
        seed,
    };
    let mut out = Vec::new();
    generate(stepper, &vocab, &opts, &mut out, &AtomicBool::new(false))?;
    Ok(String::from_utf8(out).unwrap())
}

const FARMS: &str = "Far away, the farms are fair.\n";

fn farm_model() -> CpuCharRnn {
    let model = CharRnnConfig::new(Vocab::from_text(FARMS).len()).with_lstm_size(8);
    CpuCharRnn::new(&model.init::<Flex>(&Default::default()))
}

#[test]
fn starts_with_the_prime_and_is_reproducible() {
    let mut m = farm_model();
    let a = sample(&mut m, 7, "Far", 50).unwrap();
    assert!(a.starts_with("Far"));
    assert_eq!(a.chars().count(), 53);
    assert_eq!(a, sample(&mut m, 7, "Far", 50).unwrap());
    assert_ne!(a, sample(&mut m, 8, "Far", 50).unwrap());
}

#[test]
fn prime_errors_name_the_characters() {
    let mut m = farm_model();
    let err = sample(&mut m, 1, "Farz!", 5).unwrap_err().to_string();
    assert!(err.contains("'z', '!'"), "{err}");
    assert!(err.contains("cannot read them"), "{err}");
    assert!(matches!(
        sample(&mut m, 1, "", 5),
        Err(SampleError::EmptyPrime)
    ));
}

#[test]
fn stops_when_asked() {
    let vocab = Vocab::from_text("ab");
    let model = CharRnnConfig::new(2)
        .with_lstm_size(4)
        .init::<Flex>(&Default::default());
    let opts = SampleOptions {
        prime: "a".into(),
        len: 1_000_000,
        strategy: Strategy::Argmax,
        seed: 0,
    };
    let mut out = Vec::new();
    generate(
        &mut CpuCharRnn::new(&model),
        &vocab,
        &opts,
        &mut out,
        &AtomicBool::new(true),
    )
    .unwrap();
    assert_eq!(out, b"a");
}

/// A step that panics on both threads (an id outside the vocabulary, which each part's row
/// lookup refuses) leaves the two-part sampler usable: after a reset it gives a fresh
/// sampler's logits.
#[test]
fn a_panicking_step_does_not_poison_the_sampler() {
    let model = CharRnnConfig::new(11)
        .with_lstm_size(16)
        .init::<Flex>(&Default::default());
    let mut fast = CpuCharRnn::with(&model, Precision::F32, 2);
    fast.step(3);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        fast.step(11);
    }));
    assert!(caught.is_err(), "an id outside the vocabulary must panic");
    fast.reset();
    let mut fresh = CpuCharRnn::with(&model, Precision::F32, 2);
    for id in [3u32, 0, 10] {
        assert_eq!(fast.step(id).to_vec(), fresh.step(id).to_vec());
    }
}
