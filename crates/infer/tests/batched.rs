//! Several rows stepped at once: each row's logits are a batch-1 step's, and `generate_many`
//! keeps `generate`'s promises row by row.

use std::sync::atomic::AtomicBool;

use burn::backend::Flex;
use karnna_data::Vocab;
use karnna_infer::{
    generate, generate_many, CharStepper, CpuCharRnn, Precision, SampleError, SampleOptions,
    Strategy,
};
use karnna_model::{Cell, CharRnnConfig};

/// The character row `r` reads at step `t`.
fn id(r: usize, t: usize, vocab: usize) -> u32 {
    ((r * 7 + t * 3 + r * t) % vocab) as u32
}

/// Whether this CPU has AVX-512 (where the batch-1 f16 product fuses).
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[test]
fn each_row_of_step_rows_is_a_batch_1_step() {
    let device = Default::default();
    let vocab = 13;
    // Hidden sizes that leave remainders (33: not a multiple of the four weight rows taken
    // together, nor of the vector width); 18 rows: more than one block of 16.
    let shapes = [(1, 8, 2), (2, 16, 3), (3, 33, 5), (2, 12, 18)];
    let cases = Cell::ALL
        .into_iter()
        .flat_map(|cell| shapes.map(|(layers, h, rows)| (cell, layers, h, rows)));
    for (cell, layers, h, rows) in cases {
        let model = CharRnnConfig::new(vocab)
            .with_lstm_size(h)
            .with_num_layers(layers)
            .with_cell(cell)
            .init::<Flex>(&device);
        for precision in [Precision::F32, Precision::F16, Precision::Bf16] {
            for parts in [1, 2] {
                let steps = 6;
                // Each row alone, through the batch-1 path.
                let mut single = CpuCharRnn::with(&model, precision, parts);
                let want: Vec<Vec<Vec<f32>>> = (0..rows)
                    .map(|r| {
                        single.reset();
                        (0..steps)
                            .map(|t| single.step(id(r, t, vocab)).to_vec())
                            .collect()
                    })
                    .collect();
                let mut batched = CpuCharRnn::with_rows(&model, precision, parts, rows);
                assert_eq!(batched.rows(), rows);
                for round in 0..2 {
                    for t in 0..steps {
                        let ids: Vec<u32> = (0..rows).map(|r| id(r, t, vocab)).collect();
                        let got = batched.step_rows(&ids);
                        assert_eq!(got.len(), rows * vocab);
                        for (r, (row, want)) in got.chunks_exact(vocab).zip(&want).enumerate() {
                            for (x, y) in row.iter().zip(&want[t]) {
                                // Bit for bit, as `cpu.rs` promises, but for f16 weights on an
                                // AVX-512 CPU, whose batch-1 product fuses its multiply-adds:
                                // a few units in the last place of logits of about 1.
                                let fused = precision == Precision::F16 && avx512();
                                let tol = if fused { 1e-5 } else { 0.0 };
                                assert!(
                                    (x - y).abs() <= tol,
                                    "{cell} {layers}x{h}, {rows} rows, {precision:?}, {parts} parts, \
                                     round {round}, row {r}, step {t}: {x} vs {y}"
                                );
                            }
                        }
                    }
                    // Reset starts every row over.
                    batched.reset();
                }
            }
        }
    }
}

#[test]
fn set_rows_changes_the_batch_and_starts_over() {
    let model = CharRnnConfig::new(5)
        .with_lstm_size(8)
        .init::<Flex>(&Default::default());
    let mut m = CpuCharRnn::with_rows(&model, Precision::F32, 2, 4);
    m.step_rows(&[1, 2, 3, 4]);
    m.set_rows(2);
    assert_eq!(m.rows(), 2);
    let got = m.step_rows(&[3, 0]).to_vec();
    let mut one = CpuCharRnn::with(&model, Precision::F32, 2);
    let a = one.step(3).to_vec();
    one.reset();
    let b = one.step(0).to_vec();
    assert_eq!(got, [a, b].concat());
}

const FARMS: &str = "Far away, the farms are fair.\n";

fn farm_model() -> CpuCharRnn {
    let model = CharRnnConfig::new(Vocab::from_text(FARMS).len())
        .with_lstm_size(16)
        .with_num_layers(2);
    CpuCharRnn::new(&model.init::<Flex>(&Default::default()))
}

fn opts(seed: u64, len: usize) -> SampleOptions {
    SampleOptions {
        prime: "Far".into(),
        len,
        strategy: Strategy::TopN {
            n: 4,
            temperature: 1.0,
        },
        seed,
    }
}

/// What `write` prints for FARMS's vocabulary and [`opts`]`(seed, len)`.
fn printed(
    seed: u64,
    len: usize,
    write: impl FnOnce(&Vocab, &SampleOptions, &mut Vec<u8>, &AtomicBool) -> Result<(), SampleError>,
) -> String {
    let mut out = Vec::new();
    let vocab = Vocab::from_text(FARMS);
    write(&vocab, &opts(seed, len), &mut out, &AtomicBool::new(false)).unwrap();
    String::from_utf8(out).unwrap()
}

fn one(model: &mut CpuCharRnn, seed: u64, len: usize) -> String {
    printed(seed, len, |v, o, out, stop| {
        generate(model, v, o, out, stop)
    })
}

fn many(model: &mut CpuCharRnn, seed: u64, len: usize, n: usize) -> String {
    printed(seed, len, |v, o, out, stop| {
        generate_many(model, v, o, n, out, stop)
    })
}

#[test]
fn one_sample_is_exactly_generate() {
    let mut m = farm_model();
    for seed in [0, 7, 123_456_789] {
        let a = one(&mut m, seed, 200);
        let b = many(&mut m, seed, 200, 1);
        assert_eq!(a, b, "seed {seed}");
        assert!(!b.contains("---"), "{b}");
    }
}

#[test]
fn samples_are_separated_and_each_is_its_own_seed() {
    let mut m = farm_model();
    let (seed, len) = (11, 80);
    let text = many(&mut m, seed, len, 3);
    // Separator, prime + text, newline; the last text ends without one.
    let mut samples = Vec::new();
    let mut rest = text.as_str();
    for k in 1..=3 {
        let sep = format!("--- sample {k} of 3 ---\n");
        rest = rest
            .strip_prefix(&sep)
            .unwrap_or_else(|| panic!("{sep}: {text}"));
        let end = rest.find("\n--- sample ").unwrap_or(rest.len());
        samples.push(&rest[..end]);
        rest = rest[end..].strip_prefix('\n').unwrap_or("");
    }
    for s in &samples {
        assert!(s.starts_with("Far"), "{s}");
        assert_eq!(s.chars().count(), 3 + len, "{s:?}");
    }
    assert!(
        samples[0] != samples[1] && samples[1] != samples[2] && samples[0] != samples[2],
        "{samples:?}"
    );
    // Row r draws what a single sample draws with the documented derived seed.
    for (r, s) in samples.iter().enumerate() {
        let derived = seed.wrapping_add((r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        assert_eq!(*s, one(&mut m, derived, len), "row {r}");
    }
    // Reproducible, and the model is reusable with another batch size.
    assert_eq!(text, many(&mut m, seed, len, 3));
    assert_eq!(one(&mut m, seed, len), samples[0]);
}

#[test]
fn a_stop_keeps_what_was_drawn_and_errors_are_generates() {
    let mut m = farm_model();
    let vocab = Vocab::from_text(FARMS);
    let mut out = Vec::new();
    generate_many(
        &mut m,
        &vocab,
        &opts(1, 1_000_000),
        2,
        &mut out,
        &AtomicBool::new(true),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "--- sample 1 of 2 ---\nFar\n--- sample 2 of 2 ---\nFar"
    );
    let mut bad = opts(1, 5);
    bad.prime = "Farz".into();
    let err = generate_many(
        &mut m,
        &vocab,
        &bad,
        2,
        &mut Vec::new(),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(err.to_string().contains("'z'"), "{err}");
    bad.prime.clear();
    assert!(matches!(
        generate_many(
            &mut m,
            &vocab,
            &bad,
            2,
            &mut Vec::new(),
            &AtomicBool::new(false)
        ),
        Err(SampleError::EmptyPrime)
    ));
}
