//! karnna's GPU backends: burn-cuda (NVIDIA) and burn-wgpu (Vulkan, Metal and DX12: AMD, Intel,
//! Apple and NVIDIA GPUs, and Mesa's software Vulkan, llvmpipe, which CI runs on). Each is behind
//! its cargo feature (`cuda`, `wgpu`); code written once over the backend ([`OnBackend`]) runs on
//! the one chosen at run time ([`run_on`]), after a probe has turned a missing device into one
//! clear error. [`Device`], the setting a config and the command line name, is defined here,
//! where it becomes a backend ([`Gpu::of`]).
//!
//! It knows the concrete GPU backends so that no other library crate has to. It must not
//! depend on `karnna-train` (which depends on it for [`Device`]) or parse a command line (clap
//! only derives [`Device`]'s `ValueEnum`); measuring a GPU is `karnna-bench`'s.

use burn::tensor::Tensor;
use karnna_model::CellKernels;
use serde::{Deserialize, Serialize};

/// Where the model runs (in a config's `device` and on the command line's `--device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU (no installation needed).
    #[value(help = "The CPU")]
    Cpu,
    /// An NVIDIA GPU through burn-cuda (build with the `cuda` feature).
    #[value(help = "An NVIDIA GPU (burn-cuda)")]
    Cuda,
    /// Any GPU with Vulkan, Metal or DX12 through burn-wgpu (build with the `wgpu` feature).
    #[value(help = "Any GPU with Vulkan, Metal or DX12 (burn-wgpu): AMD, Intel, Apple, NVIDIA")]
    Wgpu,
}

/// A GPU backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gpu {
    /// NVIDIA GPUs through burn-cuda.
    Cuda,
    /// Any GPU with Vulkan, Metal or DX12 through burn-wgpu.
    Wgpu,
}

impl Gpu {
    /// The GPU a [`Device`] names, or `None` for the CPU: the one place a device becomes a
    /// backend.
    pub fn of(device: Device) -> Option<Gpu> {
        match device {
            Device::Cpu => None,
            Device::Cuda => Some(Gpu::Cuda),
            Device::Wgpu => Some(Gpu::Wgpu),
        }
    }

    /// Its name on the command line and in configs (`cuda`, `wgpu`), also its cargo feature.
    pub fn name(self) -> &'static str {
        match self {
            Gpu::Cuda => "cuda",
            Gpu::Wgpu => "wgpu",
        }
    }

    /// Whether this build has the backend (its cargo feature was on).
    pub fn built(self) -> bool {
        match self {
            Gpu::Cuda => cfg!(feature = "cuda"),
            Gpu::Wgpu => cfg!(feature = "wgpu"),
        }
    }
}

/// Work written once over the backend `B` and run on whichever [`run_on`] chooses: a training
/// run, a sampler, a benchmark.
pub trait OnBackend {
    /// What the work returns.
    type Output;
    /// Runs the work on `device` of backend `B`.
    fn run<B: CellKernels>(self, device: B::Device) -> anyhow::Result<Self::Output>;
}

/// Runs `job` on the first device of `gpu`: an error naming the cargo feature when this build
/// lacks the backend, or saying that no device was found.
pub fn run_on<J: OnBackend>(gpu: Gpu, job: J) -> anyhow::Result<J::Output> {
    match gpu {
        Gpu::Cuda => cuda::run(job),
        Gpu::Wgpu => wgpu::run(job),
    }
}

/// Runs `job` on the device of `gpu` that one of several ranks on a machine uses: device
/// `local_rank mod count` of the machine's `count` devices of that kind (CUDA's devices; wgpu's
/// discrete GPUs, or its default adapter, shared, where there is none), probed as [`run_on`]
/// probes the first.
pub fn run_on_rank<J: OnBackend>(gpu: Gpu, local_rank: usize, job: J) -> anyhow::Result<J::Output> {
    match gpu {
        Gpu::Cuda => cuda::run_rank(local_rank, job),
        Gpu::Wgpu => wgpu::run_rank(local_rank, job),
    }
}

/// Device `local_rank mod count` of `B`'s devices of type `type_id` (Burn's `device_count`),
/// probed; `None` when there are none of that type.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn rank_device<B: burn::tensor::backend::Backend>(
    type_id: u16,
    local_rank: usize,
) -> Option<anyhow::Result<B::Device>> {
    use burn::tensor::backend::{Device as _, DeviceId};
    let count = B::device_count(type_id);
    if count == 0 {
        return None;
    }
    let index = (local_rank % count) as u16;
    let device = B::Device::from_id(DeviceId::new(type_id, index));
    Some(
        probe::<B>(&device)
            .map(|()| device)
            .map_err(|why| anyhow::anyhow!("device {index} of {count} does not compute: {why}")),
    )
}

/// The memory a run on `gpu` may take, in bytes, for the check before training; `None` when
/// the backend does not say (wgpu exposes buffer limits, not the device's memory) or there is
/// no device.
pub fn memory(gpu: Gpu) -> Option<u64> {
    match gpu {
        Gpu::Cuda => cuda::memory(),
        Gpu::Wgpu => None,
    }
}

/// Whether `device` computes: a one-element tensor written and read back. GPU runtimes start
/// lazily and panic (deep inside the runtime, often on a thread of their own) when they find no
/// device, so the probe catches the panic and returns the first panic message seen on any
/// thread meanwhile, with the default hook silenced.
pub fn probe<B: burn::tensor::backend::Backend>(device: &B::Device) -> Result<(), String> {
    use std::sync::{Arc, Mutex};
    let first: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = first.clone();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get_or_insert(text);
    }));
    // Unwind safety: on a panic the caller gets an error and does not use the device.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Tensor::<B, 1>::from_floats([1.0], device).into_scalar();
    }));
    std::panic::set_hook(hook);
    result.map_err(|_| {
        let text = first.lock().unwrap_or_else(|e| e.into_inner()).take();
        // The runtime's messages can span lines (adapter lists); the first one says it.
        text.unwrap_or_default()
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    })
}

/// `B`'s default device once [`probe`] has found it working, or the error `why` makes of the
/// probe's message.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn probed<B: burn::tensor::backend::Backend>(
    why: impl FnOnce(String) -> anyhow::Error,
) -> anyhow::Result<B::Device> {
    let device = B::Device::default();
    probe::<B>(&device).map_err(why)?;
    Ok(device)
}

/// Why a build without the backend cannot run on it.
fn not_built(gpu: Gpu) -> anyhow::Error {
    anyhow::anyhow!(
        "this karnna was built without {0}: run it through `cargo xtask ... --device {0}`, which builds with the `{0}` feature",
        gpu.name()
    )
}

#[cfg(feature = "cuda")]
pub mod cuda {
    //! burn-cuda: NVIDIA GPUs.
    use super::{probed, OnBackend};

    /// The CUDA backend.
    pub type Backend = burn::backend::Cuda;

    /// The first CUDA device, or a clear error when there is none.
    pub fn device() -> anyhow::Result<burn::backend::cuda::CudaDevice> {
        probed::<Backend>(|_| {
            anyhow::anyhow!("no usable CUDA device: the CUDA driver could not be initialised (use --device cpu, or --device wgpu for other GPUs)")
        })
    }

    pub(crate) fn run<J: OnBackend>(job: J) -> anyhow::Result<J::Output> {
        job.run::<Backend>(device()?)
    }

    pub(crate) fn run_rank<J: OnBackend>(local_rank: usize, job: J) -> anyhow::Result<J::Output> {
        // The first device's probe turns a missing driver into `device`'s clear error before
        // `device_count` asks the driver anything.
        device()?;
        let device = match super::rank_device::<Backend>(0, local_rank) {
            Some(device) => device.map_err(|e| anyhow::anyhow!("CUDA {e}"))?,
            None => anyhow::bail!("CUDA lists no device"),
        };
        job.run::<Backend>(device)
    }

    /// The first device's memory in bytes, or `None` without a usable device. cubecl's CUDA
    /// runtime reads `cuDeviceTotalMem` and allows pages of a quarter of it, which is the one
    /// figure it exposes: the total is four pages.
    pub fn memory() -> Option<u64> {
        use cubecl::Runtime;
        let device = device().ok()?;
        let client = cubecl::cuda::CudaRuntime::client(&device);
        Some(client.properties().memory.max_page_size.saturating_mul(4))
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::{not_built, Gpu, OnBackend};

    pub(crate) fn run<J: OnBackend>(_: J) -> anyhow::Result<J::Output> {
        Err(not_built(Gpu::Cuda))
    }

    pub(crate) fn run_rank<J: OnBackend>(_: usize, _: J) -> anyhow::Result<J::Output> {
        Err(not_built(Gpu::Cuda))
    }

    pub(crate) fn memory() -> Option<u64> {
        None
    }
}

#[cfg(feature = "wgpu")]
pub mod wgpu {
    //! burn-wgpu: the first adapter wgpu offers (a discrete GPU before an integrated one, and
    //! a software one, such as llvmpipe, when there is nothing else).
    use super::{probed, OnBackend};

    /// The wgpu backend.
    pub type Backend = burn::backend::Wgpu;

    /// The default wgpu device, or a clear error when wgpu finds no adapter.
    pub fn device() -> anyhow::Result<burn::backend::wgpu::WgpuDevice> {
        probed::<Backend>(|why| {
            let why = if why.is_empty() || why.contains("No possible adapter") {
                "wgpu found no adapter (no Vulkan, Metal or DX12 driver)".to_string()
            } else {
                why
            };
            anyhow::anyhow!("no usable wgpu device: {why}; install a Vulkan driver (Debian: mesa-vulkan-drivers) or use --device cpu")
        })
    }

    pub(crate) fn run<J: OnBackend>(job: J) -> anyhow::Result<J::Output> {
        job.run::<Backend>(device()?)
    }

    /// Discrete GPUs are wgpu's device type 0 (`WgpuDevice::DiscreteGpu`).
    const DISCRETE: u16 = 0;

    pub(crate) fn run_rank<J: OnBackend>(local_rank: usize, job: J) -> anyhow::Result<J::Output> {
        let default = device()?;
        let device = match super::rank_device::<Backend>(DISCRETE, local_rank) {
            Some(device) => device.map_err(|e| anyhow::anyhow!("wgpu discrete GPU: {e}"))?,
            // No discrete GPU (an integrated one, or llvmpipe): every rank shares the default.
            None => default,
        };
        job.run::<Backend>(device)
    }

    /// The device for a test: [`device`], or `None` when there is none, said on stderr (the
    /// test then skips); under `CI=true` a missing device panics instead, so CI cannot pass
    /// without running the GPU tests.
    pub fn test_device() -> Option<burn::backend::wgpu::WgpuDevice> {
        match device() {
            Ok(d) => Some(d),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI=true and {e}"),
            Err(e) => {
                // Straight to stderr: the test harness hides what `eprintln!` prints.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped (set CI=true to fail instead): {e}"
                );
                None
            }
        }
    }
}

#[cfg(not(feature = "wgpu"))]
mod wgpu {
    use super::{not_built, Gpu, OnBackend};

    pub(crate) fn run<J: OnBackend>(_: J) -> anyhow::Result<J::Output> {
        Err(not_built(Gpu::Wgpu))
    }

    pub(crate) fn run_rank<J: OnBackend>(_: usize, _: J) -> anyhow::Result<J::Output> {
        Err(not_built(Gpu::Wgpu))
    }
}
