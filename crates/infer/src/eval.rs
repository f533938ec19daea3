//! Scoring a text: the model's mean cross-entropy (nats per character), bits per character and
//! perplexity on a text it reads with its recurrent state carried along, as in training.
//!
//! The text is first encoded with the model's vocabulary ([`encode_known`]); characters the
//! vocabulary lacks are *removed* from the stream and counted. They can be neither an input
//! (the model has no row for them) nor a target (the model gives them no probability, so their
//! loss would be infinite); dropping them keeps the loss finite and comparable, at the price of
//! the model reading the characters on either side of a removed one as neighbours. A text with
//! few unknown characters (a stray typographic quote) scores as it should; a text with many is
//! reported as such by the count, so the figure is never silently misleading.
//!
//! [`evaluate`] then runs the model over the ids without autodiff (any [`CellBackend`]: on the
//! CPU, burn-flex with karnna's fused recurrent kernels), in the training layout: the stream is cut
//! into `rows` contiguous rows read side by side, a chunk of `steps` characters at a time, each
//! chunk starting from the state the previous chunk ended in.

use burn::prelude::*;
use karnna_data::{Ids, Vocab};
use karnna_model::{to_f32_vec, CellBackend, CharRnn, RnnState};

/// A text encoded with a model's vocabulary, characters it lacks removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// The ids of the characters the vocabulary has, in text order.
    pub ids: Vec<u32>,
    /// How many characters of the text the vocabulary lacks (every occurrence counted).
    pub unknown: usize,
    /// The distinct characters the vocabulary lacks, in order of first appearance.
    pub unknown_chars: Vec<char>,
}

/// Encodes `text` with `vocab`, leaving out (and counting) every character `vocab` lacks, so
/// that any text can be scored: see the module documentation for why they are removed rather
/// than replaced.
pub fn encode_known(vocab: &Vocab, text: &str) -> Encoded {
    let mut ids = Vec::with_capacity(text.len());
    let mut unknown = 0;
    let mut unknown_chars = Vec::new();
    for c in text.chars() {
        match vocab.id(c) {
            Some(id) => ids.push(id),
            None => {
                unknown += 1;
                if !unknown_chars.contains(&c) {
                    unknown_chars.push(c);
                }
            }
        }
    }
    Encoded {
        ids,
        unknown,
        unknown_chars,
    }
}

/// What [`evaluate`] measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalReport {
    /// Targets scored: `rows · row_len`.
    pub chars_scored: u64,
    /// Mean cross-entropy over the scored targets, in nats per character (the training loss).
    pub loss_nats: f64,
    /// The same in bits per character: `loss_nats / ln 2`.
    pub bits_per_char: f64,
    /// `exp(loss_nats)`: the number of equally likely characters the model hesitates between,
    /// on average.
    pub perplexity: f64,
    /// Targets at the end of the stream left out so that every row has the same length:
    /// `(ids.len() - 1) % rows`.
    pub unscored_tail: u64,
    /// Rows read side by side.
    pub rows: usize,
    /// Targets per row.
    pub row_len: u64,
}

/// The model's loss on the id stream `ids` (in memory, or a prepared text's map: only a
/// window per row is read at a time), read as in training: each id predicts the next one.
///
/// # Layout
/// The `ids.len() - 1` targets are cut into `rows` contiguous rows of
/// `L = (ids.len() - 1) / rows` targets each (row `i` reads ids `i·L .. i·L + L` and predicts
/// `i·L + 1 ..= i·L + L`); the last `(ids.len() - 1) % rows` targets are not scored
/// ([`EvalReport::unscored_tail`]). Each row starts from the zero state and is read in chunks
/// of `steps` characters (the last one shorter), every chunk starting from the state the
/// previous one ended in, so with `rows = 1` the result does not depend on `steps`. The loss is
/// the mean of `-log softmax(logits)[target]` over every scored target, accumulated in `f64`.
///
/// `progress(done, total)` is called after each chunk with the targets scored so far and in all.
///
/// # Panics
/// When `rows` or `steps` is 0, or when `ids` has fewer than `rows + 1` ids (a row would be
/// empty), or an id is outside the model's vocabulary (ids encoded with the model's own
/// vocabulary never are). Callers check these first.
pub fn evaluate<B: CellBackend>(
    model: &CharRnn<B>,
    ids: &Ids,
    rows: usize,
    steps: usize,
    device: &B::Device,
    progress: &mut dyn FnMut(u64, u64),
) -> EvalReport {
    assert!(rows > 0 && steps > 0, "rows and steps must be positive");
    assert!(
        ids.len() > rows as u64,
        "{} ids cannot fill {rows} rows of at least one target",
        ids.len()
    );
    let targets = ids.len() - 1;
    let row_len = targets / rows as u64;
    let total = rows as u64 * row_len;
    let vocab = model.output.weight.dims()[1];
    let mut state: Option<RnnState<B>> = None;
    let mut sum = 0.0f64;
    let mut inputs: Vec<i64> = Vec::with_capacity(rows * steps);
    // The targets of a chunk, row-major: `[rows, t]`.
    let mut next: Vec<u32> = Vec::with_capacity(rows * steps);
    let mut window = vec![0u32; steps + 1];
    let mut start = 0u64;
    while start < row_len {
        let t = (steps as u64).min(row_len - start) as usize;
        inputs.clear();
        next.clear();
        for i in 0..rows {
            let window = &mut window[..t + 1];
            ids.read(i as u64 * row_len + start, window);
            if let Some(&bad) = window.iter().find(|&&id| id as usize >= vocab) {
                panic!("id {bad} is outside the model's vocabulary of {vocab}");
            }
            inputs.extend(window[..t].iter().map(|&id| id as i64));
            next.extend_from_slice(&window[1..]);
        }
        let x = Tensor::<B, 1, Int>::from_ints(inputs.as_slice(), device).reshape([rows, t]);
        let (logits, state_after) = model.forward(x, state.take());
        state = Some(state_after);
        // Time-major: row `j·rows + i` of the flattened logits is step `j` of row `i`.
        let logits = to_f32_vec(logits);
        for (k, z) in logits.chunks_exact(vocab).enumerate() {
            let (j, i) = (k / rows, k % rows);
            sum += neg_log_softmax(z, next[i * t + j] as usize);
        }
        start += t as u64;
        progress(start * rows as u64, total);
    }
    let loss_nats = sum / total as f64;
    EvalReport {
        chars_scored: total,
        loss_nats,
        bits_per_char: loss_nats / std::f64::consts::LN_2,
        perplexity: loss_nats.exp(),
        unscored_tail: targets - total,
        rows,
        row_len,
    }
}

/// `-log softmax(z)[target]`, computed stably (`logsumexp(z) - z[target]`) in `f64`.
fn neg_log_softmax(z: &[f32], target: usize) -> f64 {
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = z.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln() - z[target] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neg_log_softmax_matches_the_definition() {
        let z = [1.0f32, 2.0, 3.0];
        let den: f64 = z.iter().map(|&v| (v as f64).exp()).sum();
        for t in 0..3 {
            let want = -((z[t] as f64).exp() / den).ln();
            assert!((neg_log_softmax(&z, t) - want).abs() < 1e-12);
        }
        // Large logits do not overflow.
        assert!((neg_log_softmax(&[1000.0, 1000.0], 0) - std::f64::consts::LN_2).abs() < 1e-12);
    }

    #[test]
    fn unknown_characters_are_removed_and_counted() {
        let vocab = Vocab::from_text("abc");
        let e = encode_known(&vocab, "aXbYcXa");
        assert_eq!(e.ids, vec![0, 1, 2, 0]);
        assert_eq!(e.unknown, 3);
        assert_eq!(e.unknown_chars, vec!['X', 'Y']);
    }
}
