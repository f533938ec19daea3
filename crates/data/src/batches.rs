//! The notebook's batch layout (`get_batches`) and the train/validation split.

use serde::{Deserialize, Serialize};

use crate::Ids;

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
/// continues row `i` of batch `k`: that is what makes carrying the recurrent state from one batch
/// to the next meaningful. Each target is the true next character of the text (the notebook set
/// the last target of each window to the window's first input, a bug fixed upstream later), so
/// one extra id past the last window is needed. With N = M = 100, `anna.txt` gives 198 batches.
#[derive(Clone, Debug)]
pub struct Batches {
    ids: Ids,
    n_seqs: usize,
    n_steps: usize,
    len: usize,
    /// Where row 0's first window starts in `ids`.
    offset: u64,
    /// Distance in `ids` from the start of one row to the start of the next.
    stride: u64,
}

impl Batches {
    /// Cuts `ids` into batches of `n_seqs` x `n_steps`. `None` when not even one batch fits
    /// (fewer than `n_seqs * n_steps + 1` ids) or a size is zero.
    pub fn new(ids: impl Into<Ids>, n_seqs: usize, n_steps: usize) -> Option<Self> {
        let ids = ids.into();
        if n_seqs == 0 || n_steps == 0 {
            return None;
        }
        let len = ids.len().saturating_sub(1) / (n_seqs as u64 * n_steps as u64);
        let len = usize::try_from(len).ok()?;
        (len > 0).then_some(Self {
            ids,
            n_seqs,
            n_steps,
            len,
            offset: 0,
            stride: len as u64 * n_steps as u64,
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
    pub fn chars_per_epoch(&self) -> u64 {
        (self.len * self.n_seqs * self.n_steps) as u64
    }

    /// Batch `k` (`k < len()`): each row's window read from the ids (one copy of
    /// `n_seqs x (n_steps + 1)` ids, whatever the text's size).
    pub fn get(&self, k: usize) -> Batch {
        assert!(k < self.len, "batch {k} of {}", self.len);
        let (n, m) = (self.n_seqs, self.n_steps);
        let mut inputs = Vec::with_capacity(n * m);
        let mut targets = Vec::with_capacity(n * m);
        let mut window = vec![0; m + 1];
        for row in 0..n {
            let start = self.offset + row as u64 * self.stride + (k * m) as u64;
            self.ids.read(start, &mut window);
            inputs.extend_from_slice(&window[..m]);
            targets.extend_from_slice(&window[1..]);
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

/// Which of `len` batches a validation of at most `cap` batches reads (`cap == 0`: all):
/// `cap` indices spread evenly through `0..len`, in order, the first always included, so that
/// a capped validation samples the whole split and not only its start. The same `len` and
/// `cap` always give the same batches.
pub fn spread(len: usize, cap: usize) -> Vec<usize> {
    if cap == 0 || cap >= len {
        return (0..len).collect();
    }
    (0..cap)
        .map(|i| (i as u128 * len as u128 / cap as u128) as usize)
        .collect()
}

/// Where the validation part of a text comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ValSplit {
    /// The last `val_fraction` of the text, as one passage (karnna's first split).
    #[default]
    #[value(help = "The end of the text")]
    Tail,
    /// The notebook's `split_data`: the text laid out as `n_seqs` rows, and the last
    /// `val_fraction` of each row's batches held out, so validation is `n_seqs` pieces spread
    /// through the whole text.
    #[value(help = "The end of each batch row (the notebook's split_data)")]
    Rows,
}

impl ValSplit {
    /// The name used in config files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ValSplit::Tail => "tail",
            ValSplit::Rows => "rows",
        }
    }
}

/// A text's ids cut into training batches and, when `val_fraction > 0`, validation batches.
#[derive(Clone, Debug)]
pub struct Split {
    /// Training batches, one epoch.
    pub train: Batches,
    /// Validation batches (none when `val_fraction` is 0).
    pub val: Option<Batches>,
    /// Characters in the training part.
    pub train_chars: u64,
    /// Characters in the validation part.
    pub val_chars: u64,
}

impl Split {
    /// Splits `ids` the way `how` says and cuts both parts into `n_seqs` x `n_steps` batches.
    /// `None` when the text is too short for one batch of each (see [`min_text_len`]).
    ///
    /// - [`ValSplit::Tail`]: the last `round(len * val_fraction)` ids are validation; each part
    ///   is laid out on its own ([`Split::tails`] of the one text).
    /// - [`ValSplit::Rows`]: exactly the notebook's `split_data`. The text gives
    ///   `n = (len - 1) / (n_seqs * n_steps)` batches laid out as `n_seqs` rows of `n * n_steps`
    ///   ids; the first `floor(n * (1 - val_fraction))` batches of every row are training and the
    ///   rest validation. (The notebook computes `n` from `len`; `len - 1` keeps the last
    ///   target inside the text and differs only where the notebook's arrays would not line up.)
    pub fn new(
        ids: impl Into<Ids>,
        n_seqs: usize,
        n_steps: usize,
        val_fraction: f64,
        how: ValSplit,
    ) -> Option<Self> {
        let ids: Ids = ids.into();
        match how {
            ValSplit::Tail => Self::tails(&[ids], n_seqs, n_steps, val_fraction),
            ValSplit::Rows => {
                let all = Batches::new(ids, n_seqs, n_steps)?;
                let (train_len, val_len) = row_split(all.len, val_fraction)?;
                let chars = |batches: usize| (batches * n_seqs * n_steps) as u64;
                let val = (val_len > 0).then(|| Batches {
                    len: val_len,
                    offset: (train_len * n_steps) as u64,
                    ..all.clone()
                });
                Some(Self {
                    train: Batches {
                        len: train_len,
                        ..all
                    },
                    val,
                    train_chars: chars(train_len),
                    val_chars: chars(val_len),
                })
            }
        }
    }
}

impl Split {
    /// The tail split of several texts, each validated on its own end: the last
    /// `round(len * val_fraction)` ids of every part ([`split_len`]) are validation, and the
    /// rest of every part is training. The training heads are joined in order, and so are the
    /// validation tails (as ranges of the same ids: nothing is copied), so no file is left out
    /// of validation and no training batch reads a validation character. `None` when either
    /// side is too short for one batch.
    pub fn tails(parts: &[Ids], n_seqs: usize, n_steps: usize, val_fraction: f64) -> Option<Self> {
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for part in parts {
            let cut = part.len() - split_len(part.len(), val_fraction);
            train.push(part.slice(0, cut));
            val.push(part.slice(cut, part.len()));
        }
        let (train, val) = (Ids::concat(&train), Ids::concat(&val));
        let (train_chars, val_chars) = (train.len(), val.len());
        let train = Batches::new(train, n_seqs, n_steps)?;
        let val = if val_chars > 0 {
            Some(Batches::new(val, n_seqs, n_steps)?)
        } else {
            None
        };
        Some(Self {
            train,
            val,
            train_chars,
            val_chars,
        })
    }
}

/// The notebook's `split_idx = int(n_batches * split_frac)`: of `batches` per row, how many
/// train and how many validate. `None` unless both parts get at least one batch (training only,
/// when `val_fraction` is 0).
fn row_split(batches: usize, val_fraction: f64) -> Option<(usize, usize)> {
    let train = (batches as f64 * (1.0 - val_fraction)).floor() as usize;
    let val = batches - train;
    (train > 0 && (val_fraction == 0.0 || val > 0)).then_some((train, val))
}

/// How many of `len` characters go to validation with [`ValSplit::Tail`]:
/// `round(len * val_fraction)`, taken from the end of the text.
pub fn split_len(len: u64, val_fraction: f64) -> u64 {
    (len as f64 * val_fraction).round() as u64
}

/// The smallest text length (in characters) that gives at least one training batch and, when
/// `val_fraction > 0`, one validation batch of `n_seqs` x `n_steps`, split the way `how` says.
pub fn min_text_len(n_seqs: usize, n_steps: usize, val_fraction: f64, how: ValSplit) -> usize {
    match how {
        ValSplit::Tail => min_tail_len(n_seqs, n_steps, val_fraction),
        ValSplit::Rows => {
            let batches = (1..)
                .find(|&b| row_split(b, val_fraction).is_some())
                .expect("val_fraction < 1 leaves a training batch");
            batches * n_seqs * n_steps + 1
        }
    }
}

fn min_tail_len(n_seqs: usize, n_steps: usize, val_fraction: f64) -> usize {
    let one = n_seqs * n_steps + 1;
    let fits = |len: usize| {
        let val = split_len(len as u64, val_fraction) as usize;
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
    fn several_texts_each_validate_on_their_own_end() {
        // Two texts of 20 ids, a quarter held out of each: 5 + 5 validation ids.
        let parts: Vec<Ids> = vec![
            (0..20).collect::<Vec<u32>>().into(),
            (100..120).collect::<Vec<u32>>().into(),
        ];
        let s = Split::tails(&parts, 1, 4, 0.25).unwrap();
        assert_eq!((s.train_chars, s.val_chars), (30, 10));
        let train: Vec<u32> = s.train.iter().flat_map(|b| b.inputs).collect();
        let val: Vec<u32> = s.val.unwrap().iter().flat_map(|b| b.inputs).collect();
        // Training reads the heads only (7 batches of 4 from 30 ids, targets up to id 114).
        assert_eq!(train[..8], [0, 1, 2, 3, 4, 5, 6, 7]);
        assert!(
            train.iter().all(|&i| i < 15 || (100..115).contains(&i)),
            "{train:?}"
        );
        // Validation covers both texts' tails.
        assert_eq!(val, vec![15, 16, 17, 18, 19, 115, 116, 117]);
        // 10 validation ids are too few for one batch of 1x10 (11 ids): none.
        assert!(Split::tails(&parts, 1, 10, 0.25).is_none());
    }

    #[test]
    fn capped_validation_spreads_through_the_split() {
        assert_eq!(spread(5, 0), vec![0, 1, 2, 3, 4]);
        assert_eq!(spread(5, 9), vec![0, 1, 2, 3, 4]);
        assert_eq!(spread(10, 4), vec![0, 2, 5, 7]);
        let picked = spread(5_023, 100);
        assert_eq!(picked.len(), 100);
        assert!(picked.windows(2).all(|w| w[0] < w[1]));
        assert!(picked[99] > 4_900, "{:?}", &picked[95..]);
    }

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
            for how in [ValSplit::Tail, ValSplit::Rows] {
                let len = min_text_len(n, m, f, how);
                let ok = |l: usize| {
                    Split::new(vec![0u32; l], n, m, f, how)
                        .is_some_and(|s| f == 0.0 || s.val.is_some())
                };
                assert!(ok(len), "{how:?} {n}x{m} {f}: {len}");
                assert!(!ok(len - 1), "{how:?} {n}x{m} {f}: {len} not minimal");
            }
        }
    }

    #[test]
    fn rows_split_is_the_notebooks_split_data() {
        // 3 rows x 2 steps over ids 0..=36: (37 - 1) / 6 = 6 batches, rows of 12 ids:
        //   row 0: 0..12, row 1: 12..24, row 2: 24..36 (id 36 is only a target).
        // val_fraction 0.34: split_idx = int(6 * 0.66) = 3, so columns 0..6 of each row train
        // and columns 6..12 validate, as `x[:, :split_idx*num_steps]` / `x[:, split_idx*num_steps:]`.
        let ids: Vec<u32> = (0..37).collect();
        let s = Split::new(ids, 3, 2, 0.34, ValSplit::Rows).unwrap();
        let val = s.val.as_ref().unwrap();
        assert_eq!((s.train.len(), val.len()), (3, 3));
        assert_eq!((s.train_chars, s.val_chars), (18, 18));
        let train: Vec<Batch> = s.train.iter().collect();
        assert_eq!(train[0].inputs, vec![0, 1, 12, 13, 24, 25]);
        assert_eq!(train[0].targets, vec![1, 2, 13, 14, 25, 26]);
        assert_eq!(train[2].inputs, vec![4, 5, 16, 17, 28, 29]);
        // The last training target of a row is the row's first validation input.
        assert_eq!(train[2].targets, vec![5, 6, 17, 18, 29, 30]);
        let valid: Vec<Batch> = val.iter().collect();
        assert_eq!(valid[0].inputs, vec![6, 7, 18, 19, 30, 31]);
        assert_eq!(valid[2].inputs, vec![10, 11, 22, 23, 34, 35]);
        // The last validation target is the next row's first character (or the text's last).
        assert_eq!(valid[2].targets, vec![11, 12, 23, 24, 35, 36]);
    }

    #[test]
    fn rows_split_for_the_notebooks_sizes() {
        // anna.txt, 100 x 100, val 0.1: 198 batches, split_idx = int(198 * 0.9) = 178, so
        // 178 training iterations an epoch (3,560 in 20 epochs) and 20 validation batches.
        let s = Split::new(vec![0u32; 1_985_223], 100, 100, 0.1, ValSplit::Rows).unwrap();
        assert_eq!((s.train.len(), s.val.unwrap().len()), (178, 20));
        // Without validation, rows and tail lay the text out the same way.
        let rows = Split::new((0..1000).collect::<Vec<u32>>(), 4, 10, 0.0, ValSplit::Rows).unwrap();
        let tail = Split::new((0..1000).collect::<Vec<u32>>(), 4, 10, 0.0, ValSplit::Tail).unwrap();
        assert!(rows.val.is_none() && tail.val.is_none());
        assert_eq!(
            rows.train.iter().collect::<Vec<_>>(),
            tail.train.iter().collect::<Vec<_>>()
        );
    }

    #[test]
    fn tail_split_holds_out_the_end() {
        let ids: Vec<u32> = (0..100).collect();
        let s = Split::new(ids, 2, 3, 0.3, ValSplit::Tail).unwrap();
        assert_eq!((s.train_chars, s.val_chars), (70, 30));
        // Validation starts at id 70: (30 - 1) / 6 = 4 batches, rows of 12.
        let val = s.val.unwrap();
        assert_eq!(val.len(), 4);
        assert_eq!(val.get(0).inputs, vec![70, 71, 72, 82, 83, 84]);
        // Training never reads into the validation part.
        let last = s.train.get(s.train.len() - 1);
        assert!(last.targets.iter().all(|&t| t < 70));
    }
}
