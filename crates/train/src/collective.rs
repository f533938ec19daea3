//! The collective operations of a data-parallel run: every process (a *rank*) trains its own
//! contiguous share of each batch's rows and keeps its rows' carried state; the ranks agree on
//! everything else through these few operations: gradients and losses summed, the stop decided
//! together, the carried state gathered for a checkpoint.
//!
//! [`Alone`] is a run of one process, where each operation is nothing. `Mpi` (the `mpi` cargo
//! feature) is MPI's world communicator, for `mpirun -np N karnna train ...` on one machine or a
//! cluster. All of a rank's MPI calls come from the thread that initialised MPI (the training
//! loop runs on it), as MPI's `FUNNELED` threading level asks.

/// What the ranks of a run do together. Every rank must make the same calls in the same order.
pub trait Collective: Send + Sync + std::fmt::Debug {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// The processes of the run.
    fn size(&self) -> usize;
    /// This process's rank among the ranks on its own machine, `0..` (MPI's shared-memory
    /// split): what picks a rank's GPU on a machine with several.
    fn local_rank(&self) -> usize;
    /// `buf` summed element-wise over every rank, in place (`MPI_Allreduce`).
    fn sum_f32(&self, buf: &mut [f32]);
    /// The same for f64 values (losses, flags).
    fn sum_f64(&self, buf: &mut [f64]);
    /// Every rank's `part` (all of one length), concatenated in rank order, on rank 0;
    /// `None` elsewhere (`MPI_Gather`).
    fn gather(&self, part: &[f32]) -> Option<Vec<f32>>;
    /// Returns once every rank has called it.
    fn barrier(&self);
    /// Ends every rank of the run with exit code `code` (`MPI_Abort`): what a rank does on an
    /// error the others cannot know of, which would otherwise leave them waiting for it.
    fn abort(&self, code: i32) -> !;

    /// Whether this rank owns the outside world: the terminal, the run folder, checkpoints.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// Whether any rank says `flag` (the stop decided together).
    fn any(&self, flag: bool) -> bool {
        let mut v = [f64::from(u8::from(flag))];
        self.sum_f64(&mut v);
        v[0] > 0.0
    }

    /// Whether every rank has the same `digest`: the sums over the ranks of its four 16-bit
    /// quarters and of their squares, from which `N·Σx² = (Σx)²` holds for each quarter only
    /// when all ranks agree (exact in f64 up to 1,024 ranks).
    fn same_everywhere(&self, digest: u64) -> bool {
        let quarters: [f64; 4] = std::array::from_fn(|i| ((digest >> (16 * i)) & 0xffff) as f64);
        let mut v = [0.0; 8];
        for (i, q) in quarters.iter().enumerate() {
            v[i] = *q;
            v[4 + i] = q * q;
        }
        self.sum_f64(&mut v);
        let n = self.size() as f64;
        (0..4).all(|i| n * v[4 + i] == v[i] * v[i])
    }

    /// The mean over the ranks of `x`.
    fn mean(&self, x: f64) -> f64 {
        let mut v = [x];
        self.sum_f64(&mut v);
        v[0] / self.size() as f64
    }
}

/// A run of one process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Alone;

impl Collective for Alone {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn sum_f64(&self, _: &mut [f64]) {}
    fn gather(&self, part: &[f32]) -> Option<Vec<f32>> {
        Some(part.to_vec())
    }
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The rows `rank` trains of a batch of `rows` rows shared by `size` ranks: a contiguous block,
/// the first rank's first. `rows` must divide by `size` ([`crate::RunConfig`] checks it).
pub fn shard(rows: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let each = rows / size;
    rank * each..(rank + 1) * each
}

#[cfg(feature = "mpi")]
pub use with_mpi::Mpi;

#[cfg(feature = "mpi")]
mod with_mpi {
    use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
    use mpi::environment::Universe;
    use mpi::topology::{Communicator, SimpleCommunicator};

    use super::Collective;

    /// MPI's world: the ranks `mpirun` (or `srun`) started. Dropping it finalises MPI.
    pub struct Mpi {
        world: SimpleCommunicator,
        local_rank: usize,
        thread: std::thread::ThreadId,
        _universe: Universe,
    }

    // SAFETY: the communicator is a handle that MPI allows to be used from the thread that
    // initialised it (FUNNELED); every method checks that it is called from that thread.
    unsafe impl Send for Mpi {}
    unsafe impl Sync for Mpi {}

    impl Mpi {
        /// Initialises MPI (`FUNNELED`). `None` when MPI was initialised already or offers no
        /// thread support at all.
        pub fn init() -> Option<Self> {
            let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)?;
            let world = universe.world();
            // The ranks that share this machine's memory, in world order (a collective call:
            // every rank makes it here, once).
            let local_rank = world.split_shared(world.rank()).rank() as usize;
            Some(Self {
                world,
                local_rank,
                thread: std::thread::current().id(),
                _universe: universe,
            })
        }

        fn world(&self) -> &SimpleCommunicator {
            assert_eq!(
                std::thread::current().id(),
                self.thread,
                "MPI is called from the thread that initialised it only"
            );
            &self.world
        }
    }

    impl std::fmt::Debug for Mpi {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Mpi(rank {} of {})", self.rank(), self.size())
        }
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.world().rank() as usize
        }
        fn size(&self) -> usize {
            self.world().size() as usize
        }
        fn local_rank(&self) -> usize {
            self.local_rank
        }
        fn sum_f32(&self, buf: &mut [f32]) {
            let send = buf.to_vec();
            self.world()
                .all_reduce_into(&send[..], buf, SystemOperation::sum());
        }
        fn sum_f64(&self, buf: &mut [f64]) {
            let send = buf.to_vec();
            self.world()
                .all_reduce_into(&send[..], buf, SystemOperation::sum());
        }
        fn gather(&self, part: &[f32]) -> Option<Vec<f32>> {
            let root = self.world().process_at_rank(0);
            if self.is_root() {
                let mut all = vec![0.0f32; part.len() * self.size()];
                root.gather_into_root(part, &mut all[..]);
                Some(all)
            } else {
                root.gather_into(part);
                None
            }
        }
        fn barrier(&self) {
            self.world().barrier();
        }
        fn abort(&self, code: i32) -> ! {
            self.world().abort(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_tile_the_rows_in_rank_order() {
        assert_eq!(shard(100, 0, 4), 0..25);
        assert_eq!(shard(100, 3, 4), 75..100);
        assert_eq!(shard(8, 0, 1), 0..8);
    }

    #[test]
    fn alone_is_its_own_world() {
        let a = Alone;
        assert!(a.is_root());
        assert!(a.any(true) && !a.any(false));
        assert_eq!(a.mean(2.5), 2.5);
        assert_eq!(a.gather(&[1.0, 2.0]), Some(vec![1.0, 2.0]));
        assert!(a.same_everywhere(0xdead_beef_0123_4567));
    }
}
