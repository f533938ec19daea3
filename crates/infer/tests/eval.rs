//! `evaluate` against the loss computed by hand from one forward pass, its chunking, and the
//! handling of characters the vocabulary lacks.

use burn::backend::Flex;
use burn::module::{ModuleMapper, Param};
use burn::prelude::*;
use karnna_data::{Ids, Vocab};
use karnna_infer::{encode_known, evaluate};
use karnna_model::{to_f32_vec, CharRnn, CharRnnConfig};

const V: usize = 11;

fn model() -> CharRnn<Flex> {
    CharRnnConfig::new(V)
        .with_lstm_size(16)
        .with_num_layers(2)
        .init::<Flex>(&Default::default())
}

/// Multiplies every weight by a factor: an untrained model's outputs hardly depend on its
/// state, so a test that must tell carried state from reset state needs larger weights.
struct Scale(f32);

impl ModuleMapper<Flex> for Scale {
    fn map_float<const D: usize>(
        &mut self,
        param: Param<Tensor<Flex, D>>,
    ) -> Param<Tensor<Flex, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor * self.0, mapper)
    }
}

/// A fixed pseudo-random id stream (a linear congruential generator).
fn ids(n: usize) -> Vec<u32> {
    let mut x = 12345u64;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % V as u64) as u32
        })
        .collect()
}

/// `-log softmax` of each target in one forward pass of `ids[..n-1]` from the zero state,
/// predicting `ids[1..]`, with the softmax written out by hand.
fn direct_losses(model: &CharRnn<Flex>, ids: &[u32]) -> Vec<f64> {
    let n = ids.len() - 1;
    let x: Vec<i64> = ids[..n].iter().map(|&i| i as i64).collect();
    let x = Tensor::<Flex, 1, Int>::from_ints(x.as_slice(), &Default::default()).reshape([1, n]);
    let (logits, _) = model.forward(x, None);
    assert_eq!(logits.dims(), [n, 1, V]);
    let z = to_f32_vec(logits);
    (0..n)
        .map(|t| {
            let row = &z[t * V..(t + 1) * V];
            let den: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
            -((row[ids[t + 1] as usize] as f64).exp() / den).ln()
        })
        .collect()
}

/// The summed loss of [`direct_losses`].
fn direct_sum(model: &CharRnn<Flex>, ids: &[u32]) -> f64 {
    direct_losses(model, ids).iter().sum()
}

#[test]
fn loss_equals_a_direct_computation() {
    let model = model();
    let ids = ids(301);
    let want = direct_sum(&model, &ids) / 300.0;
    let mut calls = Vec::new();
    let r = evaluate(
        &model,
        &Ids::from(&ids[..]),
        1,
        300,
        &Default::default(),
        &mut |d, t| calls.push((d, t)),
    );
    assert_eq!(r.chars_scored, 300);
    assert_eq!(r.unscored_tail, 0);
    assert!(
        (r.loss_nats - want).abs() < 1e-4,
        "{} vs {want}",
        r.loss_nats
    );
    assert!((r.bits_per_char - want / std::f64::consts::LN_2).abs() < 1e-4);
    assert!((r.perplexity - want.exp()).abs() < 1e-3);
    assert_eq!(calls, vec![(300, 300)]);
    // An untrained model is close to uniform over the vocabulary.
    assert!(
        (r.loss_nats - (V as f64).ln()).abs() < 0.5,
        "{}",
        r.loss_nats
    );
}

#[test]
fn chunks_carry_the_state() {
    let model = model().map(&mut Scale(4.0));
    let ids = ids(301);
    let whole = evaluate(
        &model,
        &Ids::from(&ids[..]),
        1,
        300,
        &Default::default(),
        &mut |_, _| {},
    );
    for steps in [1, 7, 100, 299, 1000] {
        let mut last = (0, 0);
        let r = evaluate(
            &model,
            &Ids::from(&ids[..]),
            1,
            steps,
            &Default::default(),
            &mut |d, t| {
                assert!(d > last.0, "progress goes forward");
                last = (d, t);
            },
        );
        assert_eq!(last, (300, 300), "steps {steps}");
        assert!(
            (r.loss_nats - whole.loss_nats).abs() < 1e-4,
            "steps {steps}: {} vs {}",
            r.loss_nats,
            whole.loss_nats
        );
    }
    // Resetting the state at each chunk of 8 would change the targets' losses: the test can
    // tell. Compared target by target (each chunk's 7 inner targets), so that no average can
    // hide the difference.
    let carried = direct_losses(&model, &ids);
    let biggest = ids
        .chunks(8)
        .enumerate()
        .filter(|(_, c)| c.len() > 1)
        .flat_map(|(i, c)| {
            let reset = direct_losses(&model, c);
            let carried = &carried[i * 8..i * 8 + reset.len()];
            reset.into_iter().zip(carried).map(|(r, c)| (r - c).abs())
        })
        .fold(0.0, f64::max);
    assert!(
        biggest > 0.1,
        "reset and carried differ by at most {biggest}"
    );
}

#[test]
fn rows_are_independent_contiguous_parts() {
    let model = model();
    let ids = ids(305); // 304 targets: 3 rows of 101, 1 left out
    let r = evaluate(
        &model,
        &Ids::from(&ids[..]),
        3,
        10,
        &Default::default(),
        &mut |_, _| {},
    );
    assert_eq!(
        (r.rows, r.row_len, r.chars_scored, r.unscored_tail),
        (3, 101, 303, 1)
    );
    let want: f64 = (0..3)
        .map(|i| direct_sum(&model, &ids[i * 101..i * 101 + 102]))
        .sum::<f64>()
        / 303.0;
    assert!(
        (r.loss_nats - want).abs() < 1e-4,
        "{} vs {want}",
        r.loss_nats
    );
}

#[test]
fn unknown_characters_are_counted_and_left_out() {
    let model = model();
    let known = "abcdefghij\n";
    let vocab = Vocab::from_text(known);
    assert_eq!(vocab.len(), V);
    let noisy = "a bad «face»\nhid a Big cab\n€";
    let e = encode_known(&vocab, noisy);
    assert_eq!(e.unknown_chars, vec![' ', '«', '»', 'B', '€']);
    assert_eq!(e.unknown, 9);
    // Left out of inputs and targets alike: the same loss as the text without them.
    let want = encode_known(&vocab, "abadface\nhidaigcab\n");
    assert_eq!(want.unknown, 0);
    assert_eq!(e.ids, want.ids);
    let a = evaluate(
        &model,
        &Ids::from(&e.ids[..]),
        1,
        5,
        &Default::default(),
        &mut |_, _| {},
    );
    let b = evaluate(
        &model,
        &Ids::from(&want.ids[..]),
        1,
        5,
        &Default::default(),
        &mut |_, _| {},
    );
    assert_eq!(a, b);
    assert!(a.loss_nats.is_finite());
}
