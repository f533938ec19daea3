//! Row-block scheduling, independent of the cell: a batch's rows split into one block per thread
//! of the pool, `[T, B, width]` arrays sliced into those blocks, and the blocks run.

use rayon::prelude::*;

/// Runs `part(block, threaded)` on every row block: one block per thread of the pool, or, when
/// there is a single block, on this thread with `threaded` set so that its products may use the
/// pool.
pub(super) fn run_blocks<P: Send>(blocks: Vec<P>, part: impl Fn(P, bool) + Sync) {
    if blocks.len() == 1 {
        blocks.into_iter().for_each(|p| part(p, true));
    } else {
        blocks.into_par_iter().for_each(|p| part(p, false));
    }
}

/// Row boundaries splitting `b` rows into one block per thread of the pool (one block when
/// there is one row or one thread). The rows of a batch are independent sequences, so each block
/// runs its whole recurrence on one thread, with no synchronization between steps: at small
/// batches that beats splitting each step's product between threads.
pub(super) fn row_bounds(b: usize) -> Vec<usize> {
    let parts = rayon::current_num_threads().min(b).max(1);
    (0..=parts).map(|p| p * b / parts).collect()
}

/// The row blocks `bounds` of every step of a `[T, B, width]` array: `out[p][t]`.
pub(super) fn blocks<'a>(
    a: &'a [f32],
    b: usize,
    width: usize,
    bounds: &[usize],
) -> Vec<Vec<&'a [f32]>> {
    let mut out: Vec<Vec<&[f32]>> = vec![Vec::new(); bounds.len() - 1];
    for step in a.chunks_exact(b * width) {
        for (p, r) in bounds.windows(2).enumerate() {
            out[p].push(&step[r[0] * width..r[1] * width]);
        }
    }
    out
}

/// [`blocks`] of a mutable array.
pub(super) fn blocks_mut<'a>(
    a: &'a mut [f32],
    b: usize,
    width: usize,
    bounds: &[usize],
) -> Vec<Vec<&'a mut [f32]>> {
    let mut out: Vec<Vec<&mut [f32]>> = (0..bounds.len() - 1).map(|_| Vec::new()).collect();
    for mut step in a.chunks_exact_mut(b * width) {
        for (p, r) in bounds.windows(2).enumerate() {
            let (block, rest) = step.split_at_mut((r[1] - r[0]) * width);
            out[p].push(block);
            step = rest;
        }
    }
    out
}

/// Runs `f` on a rayon worker thread.
///
/// A parallel `gemm` called from outside the pool injects its work and puts the caller to sleep
/// until a worker finishes it: a futex round trip for each of the sequence's steps. Called from a
/// worker it forks and joins in the pool, whose idle threads are still spinning between steps.
pub(super) fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}
