//! Counting the GPU kernels that a piece of work launches, through CubeCL's own execution log.
//!
//! CubeCL's profiling logger, at its `minimal` level, records one `Executing <kernel>` message
//! per kernel launch (`ComputeClient::launch`, which every CubeCL kernel goes through, Burn's
//! and karnna's alike) without timing anything; [`LaunchCounter::install`] turns it on,
//! sends it to the `log` crate, and installs a `log` logger that counts those messages. The
//! count is exact, not estimated: the same figure as the lines of `CUBECL_DEBUG_LOG=<file>
//! CUBECL_DEBUG_OPTION=profile`.
//!
//! CubeCL hands its messages to a logger task of its own, so they arrive a little after the
//! launches. [`LaunchCounter::count`] brackets the work between two marker launches (a cross
//! product, which no model op uses) and waits for each marker's message: everything launched
//! before a marker has been counted once its message is in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use cubecl::config::profiling::ProfilingLogLevel;
use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

/// Launches seen, markers excluded.
static LAUNCHES: AtomicU64 = AtomicU64::new(0);
/// Marker launches seen.
static MARKERS: AtomicU64 = AtomicU64::new(0);

/// The `log` logger that counts CubeCL's execution messages (and drops every other record).
struct Counter;

impl log::Log for Counter {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target().starts_with("cubecl")
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        if let Some(kernel) = message.strip_prefix("Executing ") {
            if kernel.to_ascii_lowercase().contains("cross") {
                MARKERS.fetch_add(1, Ordering::SeqCst);
            } else {
                LAUNCHES.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn flush(&self) {}
}

static COUNTER: Counter = Counter;

/// Counts the kernels that GPU work launches (see the module docs).
#[derive(Debug)]
pub struct LaunchCounter(());

impl LaunchCounter {
    /// Turns CubeCL's execution log on for this process and counts it. It must run before the
    /// first GPU work, which reads CubeCL's configuration once for the whole process; returns
    /// `None` when that has happened already, or when another `log` logger is installed.
    pub fn install() -> Option<Self> {
        if CubeClRuntimeConfig::storage().lock().is_some() {
            return None;
        }
        log::set_logger(&COUNTER).ok()?;
        log::set_max_level(log::LevelFilter::Info);
        let mut config = CubeClRuntimeConfig::default();
        config.profiling.logger.level = ProfilingLogLevel::Minimal;
        // `LogCrateLevel::Info`: the messages go to the `log` crate at level info.
        config.profiling.logger.log = Some(Default::default());
        CubeClRuntimeConfig::set(config);
        Some(Self(()))
    }

    /// Runs `work` on `device` and returns its result with the number of kernels launched
    /// meanwhile, or `None` for the count when CubeCL's log stayed silent (30 s).
    ///
    /// `work` must finish its GPU work before it returns (read a result back), and no other
    /// thread should launch kernels meanwhile: every launch in between is counted.
    pub fn count<B: Backend, T, F: FnOnce() -> T>(
        &self,
        device: &B::Device,
        work: F,
    ) -> (T, Option<u64>) {
        let before = marker::<B>(device);
        let out = work();
        let after = marker::<B>(device);
        let count = before.zip(after).map(|(a, b)| b - a);
        (out, count)
    }
}

/// Launches a marker kernel (a cross product) on `device`, waits until CubeCL's log has
/// reported it, and returns the launches counted by then.
fn marker<B: Backend>(device: &B::Device) -> Option<u64> {
    let target = MARKERS.load(Ordering::SeqCst) + 1;
    let a = Tensor::<B, 2>::from_floats([[1.0, 0.0, 0.0]], device);
    let b = Tensor::<B, 2>::from_floats([[0.0, 1.0, 0.0]], device);
    // Reading the result back runs everything queued before it.
    let _ = a.cross(b, 1).into_data();
    let start = Instant::now();
    while MARKERS.load(Ordering::SeqCst) < target {
        if start.elapsed() > Duration::from_secs(30) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Some(LAUNCHES.load(Ordering::SeqCst))
}
