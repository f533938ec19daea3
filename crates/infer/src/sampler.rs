//! Choosing the next character from the model's logits.

use rand::Rng;

/// Characters sampled when no length is given (`karnna sample --len`, the server's `len`).
pub const DEFAULT_LEN: usize = 2000;

/// Candidates kept when no top-n is given (the notebook's `top_n`).
pub const DEFAULT_TOP_N: usize = 5;

/// Softmax temperature when none is given.
pub const DEFAULT_TEMPERATURE: f32 = 1.0;

/// Checks a top-n against a vocabulary of `vocab_len` characters (`None`: not known yet, so
/// only the lower bound): `Err` with what is wrong, for the caller to put after the option's
/// name (`--top-n`, `top_n`).
pub fn check_top_n(n: usize, vocab_len: Option<usize>) -> Result<(), String> {
    match vocab_len {
        Some(v) if n == 0 || n > v => Err(format!(
            "must be between 1 and {v} (the vocabulary size), got {n}"
        )),
        None if n == 0 => Err(format!("must be at least 1, got {n}")),
        _ => Ok(()),
    }
}

/// Checks a softmax temperature (finite and positive), as [`check_top_n`] does a top-n.
pub fn check_temperature(t: f32) -> Result<(), String> {
    if t.is_finite() && t > 0.0 {
        Ok(())
    } else {
        Err(format!("must be positive, got {t}"))
    }
}

/// How the next character is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Strategy {
    /// Always the most likely character.
    Argmax,
    /// The notebook's `pick_top_n`: keep the `n` most likely characters, renormalise their
    /// probabilities (after dividing the logits by `temperature`), draw one.
    TopN {
        /// How many candidates to keep (at least 1).
        n: usize,
        /// Softmax temperature (> 0): below 1 sharpens, above 1 flattens.
        temperature: f32,
    },
}

/// Picks a character id from `logits` (one per vocabulary entry) with `strategy`, drawing from
/// `rng`. Ties in the top-n cut keep the lower id.
pub fn pick(logits: &[f32], strategy: Strategy, rng: &mut impl Rng) -> u32 {
    let argmax = || {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    let (n, temperature) = match strategy {
        Strategy::Argmax => return argmax(),
        Strategy::TopN { n, temperature } => (n.clamp(1, logits.len()), temperature),
    };
    // The n largest, by logit (the softmax keeps the order).
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    order.truncate(n);
    let top = logits[order[0] as usize];
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| (((logits[i as usize] - top) / temperature) as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    if !total.is_finite() || total <= 0.0 {
        return order[0];
    }
    let mut r = rng.random::<f64>() * total;
    for (&id, &w) in order.iter().zip(&weights) {
        if r < w {
            return id;
        }
        r -= w;
    }
    order[n - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn histogram(logits: &[f32], strategy: Strategy, draws: usize) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(1);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[pick(logits, strategy, &mut rng) as usize] += 1;
        }
        counts
            .into_iter()
            .map(|c| c as f64 / draws as f64)
            .collect()
    }

    #[test]
    fn only_the_top_n_are_drawn_with_renormalised_probabilities() {
        // Probabilities 0.4, 0.3, 0.2, 0.1 as logits (ids shuffled).
        let logits = [0.2f32.ln(), 0.4f32.ln(), 0.1f32.ln(), 0.3f32.ln()];
        let h = histogram(
            &logits,
            Strategy::TopN {
                n: 2,
                temperature: 1.0,
            },
            40_000,
        );
        assert_eq!(h[0], 0.0);
        assert_eq!(h[2], 0.0);
        // 0.4 / 0.7 and 0.3 / 0.7.
        assert!((h[1] - 4.0 / 7.0).abs() < 0.01, "{h:?}");
        assert!((h[3] - 3.0 / 7.0).abs() < 0.01, "{h:?}");
    }

    #[test]
    fn top_n_of_all_matches_the_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let h = histogram(
            &logits,
            Strategy::TopN {
                n: 3,
                temperature: 1.0,
            },
            60_000,
        );
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for (i, &l) in logits.iter().enumerate() {
            assert!((h[i] - (l as f64).exp() / z).abs() < 0.01, "{h:?}");
        }
    }

    #[test]
    fn low_temperature_tends_to_argmax() {
        let logits = [1.0f32, 1.5, 1.2, 0.3];
        assert_eq!(
            pick(&logits, Strategy::Argmax, &mut StdRng::seed_from_u64(0)),
            1
        );
        let h = histogram(
            &logits,
            Strategy::TopN {
                n: 4,
                temperature: 0.01,
            },
            5_000,
        );
        assert!(h[1] > 0.999, "{h:?}");
        let warm = histogram(
            &logits,
            Strategy::TopN {
                n: 4,
                temperature: 1.0,
            },
            5_000,
        );
        assert!(warm[1] < 0.5, "{warm:?}");
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let s = Strategy::TopN {
            n: 5,
            temperature: 0.8,
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..100)
                .map(|_| pick(&logits, s, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
