//! karnna's measurements: the commands that time and check rather than train or sample.
//! [`bench`](mod@bench) times a training step and sampling, judged against this CPU's measured peak and
//! optionally beside the PyTorch peer; [`bench_data`] measures what a text's size costs
//! (preparation speed and the peak memory of `info`, `train` and `eval`, run as child
//! processes); [`gpu_check`] holds a GPU to the CPU's results ([`check`]: the comparisons the
//! tests also run on wgpu) and times it; [`launches`] counts the kernels GPU work launches.
//!
//! Each command is a clap `Args` struct and a `run` function, which the `karnna` binary
//! flattens and calls: the binary holds no measurement logic, and this crate no argument
//! parsing of its own, no `main` and no exit codes. It may depend on every library crate of
//! karnna (it measures them all), and no library crate may depend on it.

pub mod bench;
pub mod bench_data;
pub mod check;
pub mod gpu_check;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod launches;

/// Without a GPU backend there are no GPU launches to count.
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
pub mod launches {
    /// Counts GPU kernel launches; this build has no GPU backend, so it never installs.
    #[derive(Debug)]
    pub struct LaunchCounter(());

    impl LaunchCounter {
        /// Always `None`: this build has no GPU backend.
        pub fn install() -> Option<Self> {
            None
        }

        /// Never called: [`LaunchCounter::install`] returns `None`.
        pub fn count<B: burn::tensor::backend::Backend, T, F: FnOnce() -> T>(
            &self,
            _device: &B::Device,
            work: F,
        ) -> (T, Option<u64>) {
            (work(), None)
        }
    }
}
