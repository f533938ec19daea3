//! The notebook's batch layout (`get_batches`) and the train/validation split.

use std::sync::Arc;

/// One batch: `n_seqs` rows of `n_steps` ids, row-major (`[n_seqs, n_steps]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Input ids, `[n_seqs, n_steps]`.
    pub inputs: Vec<u32>,
    /// The true next character of each input, `[n_seqs, n_steps]`.
    pub targets: Vec<u32>,
    /// Rows (the notebook's `n_seqs`, our `batch_size`).
    pub n_seqs: usize,
    /// Columns (the notebook's `n_steps`, our `num_steps`).
    pub n_steps: usize,
}

/// A text cut into batches the notebook's way.
///
/// The ids are cut to `n_seqs` rows of equal length, one after the other in the text; batch `k`
/// is the `k`-th window of `n_steps` columns across all rows, so row `i` of batch `k + 1`
/// continues row `i` of batch `k`: that is what makes carrying the LSTM state from one batch to
/// the next meaningful. Each target is the true next character of the text (the notebook set the
/// last target of each window to the window's first input, a bug fixed upstream later), so one
/// extra id past the last window is needed. With N = M = 100, `anna.txt` gives 198 batches.
#[derive(Clone, Debug)]
pub struct Batches {
    ids: Arc<[u32]>,
    n_seqs: usize,
    n_steps: usize,
    len: usize,
}

impl Batches {
    /// Cuts `ids` into batches of `n_seqs` x `n_steps`. `None` when not even one batch fits
    /// (fewer than `n_seqs * n_steps + 1` ids) or a size is zero.
    pub fn new(ids: impl Into<Arc<[u32]>>, n_seqs: usize, n_steps: usize) -> Option<Self> {
        let ids = ids.into();
        if n_seqs == 0 || n_steps == 0 {
            return None;
        }
        let len = ids.len().saturating_sub(1) / (n_seqs * n_steps);
        (len > 0).then_some(Self {
            ids,
            n_seqs,
            n_steps,
            len,
        })
    }

    /// Batches in one pass over the text (one epoch).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a `Batches` holds at least one batch.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows per batch.
    pub fn n_seqs(&self) -> usize {
        self.n_seqs
    }

    /// Steps per batch.
    pub fn n_steps(&self) -> usize {
        self.n_steps
    }

    /// Characters covered by one epoch (the rest of the text is dropped, as in the notebook).
    pub fn chars_per_epoch(&self) -> usize {
        self.len * self.n_seqs * self.n_steps
    }

    /// Batch `k` (`k < len()`).
    pub fn get(&self, k: usize) -> Batch {
        assert!(k < self.len, "batch {k} of {}", self.len);
        let (n, m) = (self.n_seqs, self.n_steps);
        let row_len = self.len * m;
        let mut inputs = Vec::with_capacity(n * m);
        let mut targets = Vec::with_capacity(n * m);
        for row in 0..n {
            let start = row * row_len + k * m;
            inputs.extend_from_slice(&self.ids[start..start + m]);
            targets.extend_from_slice(&self.ids[start + 1..start + m + 1]);
        }
        Batch {
            inputs,
            targets,
            n_seqs: n,
            n_steps: m,
        }
    }

    /// All batches of an epoch, in order.
    pub fn iter(&self) -> impl Iterator<Item = Batch> + '_ {
        (0..self.len).map(|k| self.get(k))
    }
}

/// How many of `len` characters go to validation: `round(len * val_fraction)`. The validation
/// part is taken from the end of the text, as in the notebook's 2017 revision.
pub fn split_len(len: usize, val_fraction: f64) -> usize {
    (len as f64 * val_fraction).round() as usize
}

/// The smallest text length (in characters) that gives at least one training batch and, when
/// `val_fraction > 0`, one validation batch of `n_seqs` x `n_steps`.
pub fn min_text_len(n_seqs: usize, n_steps: usize, val_fraction: f64) -> usize {
    let one = n_seqs * n_steps + 1;
    let fits = |len: usize| {
        let val = split_len(len, val_fraction);
        len - val >= one && (val_fraction == 0.0 || val >= one)
    };
    let mut len = if val_fraction > 0.0 {
        ((one as f64 / val_fraction.min(1.0 - val_fraction)).floor() as usize).max(one)
    } else {
        one
    };
    // The estimate is within rounding of the answer; step down then up to the exact minimum.
    while len > one && fits(len - 1) {
        len -= 1;
    }
    while !fits(len) {
        len += 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notebook_layout_rows_continue_across_batches() {
        // 2 rows x 3 steps over ids 0..=13: 13 usable / 6 = 2 batches, rows of 6.
        let ids: Vec<u32> = (0..14).collect();
        let b = Batches::new(ids, 2, 3).unwrap();
        assert_eq!(b.len(), 2);
        let b0 = b.get(0);
        let b1 = b.get(1);
        assert_eq!(b0.inputs, vec![0, 1, 2, 6, 7, 8]);
        assert_eq!(b1.inputs, vec![3, 4, 5, 9, 10, 11]);
        // Targets are the true next character, including the last column.
        assert_eq!(b0.targets, vec![1, 2, 3, 7, 8, 9]);
        assert_eq!(b1.targets, vec![4, 5, 6, 10, 11, 12]);
    }

    #[test]
    fn needs_one_id_past_the_last_window() {
        assert!(Batches::new((0..6).collect::<Vec<u32>>(), 2, 3).is_none());
        assert_eq!(
            Batches::new((0..7).collect::<Vec<u32>>(), 2, 3)
                .unwrap()
                .len(),
            1
        );
        assert!(Batches::new(vec![1, 2, 3], 0, 1).is_none());
    }

    #[test]
    fn notebook_batch_count_for_anna_sizes() {
        // 1,985,223 characters, no split, 100 x 100: 198 batches (5,223 dropped).
        let b = Batches::new(vec![0u32; 1_985_223], 100, 100).unwrap();
        assert_eq!(b.len(), 198);
        assert_eq!(b.chars_per_epoch(), 1_980_000);
    }

    #[test]
    fn min_len_is_exact() {
        for &(n, m, f) in &[
            (2, 3, 0.1),
            (100, 100, 0.1),
            (4, 5, 0.0),
            (3, 3, 0.5),
            (7, 2, 0.25),
        ] {
            let len = min_text_len(n, m, f);
            let ok = |l: usize| {
                let v = split_len(l, f);
                l - v > n * m && (f == 0.0 || v > n * m)
            };
            assert!(ok(len), "{n}x{m} {f}: {len}");
            assert!(!ok(len - 1), "{n}x{m} {f}: {len} not minimal");
        }
    }
}
