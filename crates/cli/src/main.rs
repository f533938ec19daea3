//! `karnna`: the command line over the karnna crates: `info`, `train`, `sample`, `eval`,
//! `export`, `import`, `bench`, `bench-data`, `gpu-check`, `report`, `serve`.
//!
//! This binary is only argument parsing, backend choice and glue: it names the CPU backends
//! (burn-flex, burn-ndarray), reaches the GPU ones (burn-cuda, burn-wgpu, behind the `cuda` and
//! `wgpu` features) through `karnna-gpu`, and hands them to `karnna-train` and `karnna-infer`;
//! the measurements (`bench`, `bench-data`, `gpu-check`) are `karnna-bench`'s. It holds no model,
//! training, sampling or measurement logic. Every error is printed as one line
//! on stderr with exit code 2; a closed pipe while sampling exits 0.

mod args;
mod eval;
mod exchange;
mod report;
mod sample;
mod serve;

/// mimalloc keeps freed large blocks for reuse; glibc's malloc returns every tensor-sized block
/// to the OS and page-faults it back in on the next step.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use karnna_data::{ValSplit, Want};
use karnna_gpu::{Gpu, OnBackend};
use karnna_model::{Cell, CellKernels, Init};
use karnna_train::{
    Corpus, CpuBackend, Device, Matmul, Precision, RunConfig, TrainOptions, TrainReport,
};

/// karnna: a character-level recurrent network (LSTM, GRU or RNN) that learns a text and writes more of it.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print what a run would train on: characters, vocabulary, batches, iterations, parameters.
    Info {
        /// The run's config file.
        #[arg(long)]
        config: PathBuf,
        /// Train on this text instead of the config's `data`: a file or a folder of `.txt`
        /// files; give it several times for several.
        #[arg(long)]
        data: Vec<PathBuf>,
        /// The recurrent cell (default: the config's `cell`).
        #[arg(long, value_enum)]
        cell: Option<Cell>,
    },
    /// Train a model; checkpoints go to artifacts/NAME/ (or --run-dir).
    Train(TrainArgs),
    /// Write new text from a trained model.
    Sample(sample::SampleArgs),
    /// A checkpoint's loss, bits per character and perplexity on a text.
    Eval(eval::EvalArgs),
    /// Write a checkpoint's model as safetensors (PyTorch's layout) or ONNX.
    Export(exchange::ExportArgs),
    /// Make a run folder from a safetensors file (a karnna export or a PyTorch state_dict).
    Import(exchange::ImportArgs),
    /// Time a training step and sampling (optionally beside the PyTorch peer).
    Bench(karnna_bench::bench::BenchArgs),
    /// What a text's size costs: preparation speed, and peak memory of info, train and eval.
    BenchData(karnna_bench::bench_data::BenchDataArgs),
    /// Check a GPU against the CPU (fused op, training steps, sampling) and time it.
    GpuCheck(karnna_bench::gpu_check::GpuCheckArgs),
    /// Runs side by side with the notebook's validation curve: a Markdown table and an SVG.
    Report(report::ReportArgs),
    /// Serve a page that samples live and draws the run's curves, and an HTTP API (loopback).
    Serve(serve::ServeArgs),
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// The run's config file (configs/anna.toml, configs/tiny.toml, ...).
    #[arg(long)]
    config: PathBuf,
    /// Train on this text instead of the config's `data`: a file or a folder of `.txt` files;
    /// give it several times for several (joined with an empty line between files).
    #[arg(long)]
    data: Vec<PathBuf>,
    /// Fine-tune: start from this checkpoint's weights (default: the config's `init_from`).
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// cpu, cuda or wgpu (default: the config's `device`).
    #[arg(long, value_enum)]
    device: Option<Device>,
    /// CPU backend (default: the config's `cpu_backend`).
    #[arg(long, value_enum)]
    backend: Option<CpuBackend>,
    /// The model's matrix products on a GPU (default: the config's `gpu_matmul`).
    #[arg(long, value_enum)]
    gpu_matmul: Option<Matmul>,
    /// The products of a CPU step: f32 or bf16 (default: the config's `precision`).
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Run folder (default: artifacts/NAME, NAME the config's name key).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Continue from the run folder's latest checkpoint.
    #[arg(long, conflicts_with = "fresh")]
    resume: bool,
    /// Delete the run folder's checkpoints and logs and start over.
    #[arg(long)]
    fresh: bool,
    /// Stop after this many iterations in all, saving a checkpoint (0: no limit).
    #[arg(long)]
    max_iters: Option<usize>,
    /// Passes over the text.
    #[arg(long)]
    epochs: Option<usize>,
    /// Sequences per batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Characters per sequence.
    #[arg(long)]
    num_steps: Option<usize>,
    /// The recurrent cell (default: the config's `cell`).
    #[arg(long, value_enum)]
    cell: Option<Cell>,
    /// Units per recurrent layer.
    #[arg(long)]
    lstm_size: Option<usize>,
    /// Recurrent layers.
    #[arg(long)]
    num_layers: Option<usize>,
    /// Adam's learning rate.
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Fraction of outputs kept by dropout in training.
    #[arg(long)]
    keep_prob: Option<f64>,
    /// Global gradient-norm clip (0 disables).
    #[arg(long)]
    grad_clip: Option<f64>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Where the validation part comes from (default: the config's `val_split`).
    #[arg(long, value_enum)]
    val_split: Option<ValSplit>,
    /// Most batches one validation reads, spread through the split (0: all; default: the
    /// config's `val_batches`).
    #[arg(long)]
    val_batches: Option<usize>,
    /// How the untrained weights are drawn (default: the config's `init`).
    #[arg(long, value_enum)]
    init: Option<Init>,
    /// Plain progress lines instead of the dashboard.
    #[arg(long)]
    plain: bool,
}

/// Loads a config and applies `--data`.
fn load_config(path: &std::path::Path, data: &[PathBuf]) -> anyhow::Result<RunConfig> {
    let mut config = RunConfig::load(path)?;
    if !data.is_empty() {
        config.data = data.to_vec();
        config.data_url.clear(); // a text given on the command line is never downloaded
    }
    Ok(config)
}

/// Trains; a run stopped by a signal exits with the shell's code for it (128 + the signal's
/// number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP), after saving its checkpoint.
fn train(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let config = train_config(&args)?;
    let gpu = Gpu::of(config.device);
    let world = world()?;
    let result = train_with(args, config, gpu, world.clone());
    // An error on one rank of several (a bad batch size, a full disk) ends them all: the others
    // would wait for it in their next collective call for ever.
    if let Err(e) = &result {
        if world.size() > 1 {
            eprintln!("error: rank {}: {}", world.rank(), one_line(e));
            world.abort(2);
        }
    }
    result
}

fn train_with(
    args: TrainArgs,
    config: RunConfig,
    gpu: Option<Gpu>,
    world: std::sync::Arc<dyn karnna_train::collective::Collective>,
) -> anyhow::Result<ExitCode> {
    let opts = TrainOptions {
        run_dir: args
            .run_dir
            .unwrap_or_else(|| PathBuf::from("artifacts").join(&config.name)),
        resume: args.resume,
        fresh: args.fresh,
        plain: args.plain,
        // What the machine has free on the CPU; the device's own memory on a GPU.
        memory_limit: match gpu {
            None => karnna_train::memory::available(),
            Some(gpu) => karnna_gpu::memory(gpu),
        },
        collective: world.clone(),
        config,
    };
    let report = match (gpu, opts.config.cpu_backend) {
        (None, CpuBackend::Flex) => Train(opts).run::<burn::backend::Flex>(Default::default()),
        (None, CpuBackend::Ndarray) => {
            Train(opts).run::<burn::backend::NdArray>(Default::default())
        }
        (Some(gpu), _) if world.size() == 1 => karnna_gpu::run_on(gpu, Train(opts)),
        // Several ranks: each its machine's device `local rank mod count`; the gradients meet
        // in host memory (`average_gradients`), which is correct on any device.
        (Some(gpu), _) => karnna_gpu::run_on_rank(gpu, world.local_rank(), Train(opts)),
    }?;
    // Written without `println!`, which panics when the terminal is gone (a run stopped by
    // SIGHUP has already saved its checkpoint; only these lines are lost).
    let _ = std::io::Write::write_all(&mut std::io::stdout(), report.summary().as_bytes());
    Ok(match report.signal {
        Some(s) => ExitCode::from(128 + s as u8),
        None => ExitCode::SUCCESS,
    })
}

/// The processes training together: MPI's world when this binary has the `mpi` feature and
/// `mpirun` (or `srun`) started it, which set `OMPI_COMM_WORLD_SIZE` (`PMI_SIZE`,
/// `PMIX_RANK`); else this process alone. Every rank but 0 writes nothing to stdout.
fn world() -> anyhow::Result<std::sync::Arc<dyn karnna_train::collective::Collective>> {
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    let alone = std::sync::Arc::new(karnna_train::collective::Alone);
    if !launched {
        return Ok(alone);
    }
    #[cfg(feature = "mpi")]
    {
        use karnna_train::collective::Collective;
        let mpi = karnna_train::collective::Mpi::init()
            .ok_or_else(|| anyhow::anyhow!("MPI could not be initialised"))?;
        if mpi.rank() != 0 {
            silence_stdout();
        }
        if mpi.size() > 1 {
            // A panic unwinds into MPI_Finalize, which waits for the other ranks for ever:
            // end the process instead, and mpirun ends the job.
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                hook(info);
                std::process::abort();
            }));
        }
        Ok(std::sync::Arc::new(mpi))
    }
    #[cfg(not(feature = "mpi"))]
    {
        match std::env::var("OMPI_COMM_WORLD_SIZE").as_deref() {
            Ok("1") | Err(_) => Ok(alone),
            Ok(n) => anyhow::bail!(
                "started as one of {n} MPI ranks, but this karnna was built without the `mpi` feature: build it with `--features mpi` (`cargo xtask train --ranks N` does)"
            ),
        }
    }
}

/// Points stdout at /dev/null: the ranks other than 0 of a data-parallel run are silent (their
/// errors still go to stderr).
#[cfg(feature = "mpi")]
fn silence_stdout() {
    // SAFETY: plain POSIX calls on a path literal and the process's own descriptor 1.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
}

/// The config file with the command line's overrides, checked.
fn train_config(args: &TrainArgs) -> anyhow::Result<RunConfig> {
    let mut c = load_config(&args.config, &args.data)?;
    fn set<T: Clone>(field: &mut T, arg: &Option<T>) {
        if let Some(v) = arg {
            *field = v.clone();
        }
    }
    set(&mut c.epochs, &args.epochs);
    set(&mut c.max_iters, &args.max_iters);
    set(&mut c.batch_size, &args.batch_size);
    set(&mut c.num_steps, &args.num_steps);
    set(&mut c.shape.lstm_size, &args.lstm_size);
    set(&mut c.shape.num_layers, &args.num_layers);
    set(&mut c.shape.cell, &args.cell);
    set(&mut c.learning_rate, &args.learning_rate);
    set(&mut c.keep_prob, &args.keep_prob);
    set(&mut c.grad_clip, &args.grad_clip);
    set(&mut c.seed, &args.seed);
    set(&mut c.device, &args.device);
    set(&mut c.val_split, &args.val_split);
    set(&mut c.val_batches, &args.val_batches);
    set(&mut c.init, &args.init);
    set(&mut c.cpu_backend, &args.backend);
    set(&mut c.gpu_matmul, &args.gpu_matmul);
    set(&mut c.precision, &args.precision);
    if args.init_from.is_some() {
        c.init_from = args.init_from.clone();
    }
    c.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    Ok(c)
}

/// A training run, on whichever backend the config chose.
struct Train(TrainOptions);

impl OnBackend for Train {
    type Output = TrainReport;

    fn run<B: CellKernels>(self, device: B::Device) -> anyhow::Result<TrainReport> {
        karnna_train::train::<B>(self.0, device)
    }
}

fn info(config: PathBuf, data: Vec<PathBuf>, cell: Option<Cell>) -> anyhow::Result<()> {
    let mut c = load_config(&config, &data)?;
    if let Some(cell) = cell {
        c.shape.cell = cell;
    }
    let corpus = Corpus::load(&c.data, &c, Want::Text).map_err(|e| {
        if c.data.iter().any(|d| !d.exists()) && !c.data_url.is_empty() {
            anyhow::anyhow!("{e} (`cargo xtask train` downloads it from {})", c.data_url)
        } else {
            e
        }
    })?;
    println!("{}", corpus.describe(&c));
    println!("precision:       {}", c.precision_line());
    if c.device == Device::Cpu {
        let isa = karnna_kernels::simd_name();
        println!(
            "cpu kernels:     {isa} (cap: {}=...)",
            karnna_kernels::SIMD_ENV
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    // Keep freed memory for reuse instead of returning it to the OS at once: each training step
    // frees and reallocates the same large buffers, which would otherwise page-fault back in.
    // SAFETY: setting a documented mimalloc option; no allocation is in flight.
    // `mi_option_purge_delay` is 15 in mimalloc's option enum (v2 and v3; the -sys crate does
    // not name it); -1 means never purge.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // Make this thread worker 0 of rayon's global pool (which Burn's CPU backends and karnna's
    // CPU kernels share). Parallel work started from outside the pool is injected into it while
    // the caller sleeps on a futex until it is done; from inside, it is a cheap fork-join with a
    // worker that is still spinning. A training step makes hundreds of such calls (what that
    // saves: docs/PERFORMANCE.md). Only fails if the pool already exists.
    let _ = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global();
    let cli = Cli::parse();
    // A misspelt instruction-set cap would be ignored by the kernels: refuse it before any work.
    if let Err(e) = karnna_kernels::check_simd_env() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Info { config, data, cell } => {
            info(config, data, cell).map(|()| ExitCode::SUCCESS)
        }
        Command::Train(args) => train(args),
        Command::Sample(args) => sample::run(args).map(|()| ExitCode::SUCCESS),
        Command::Eval(args) => eval::run(args).map(|()| ExitCode::SUCCESS),
        Command::Export(args) => exchange::export(args).map(|()| ExitCode::SUCCESS),
        Command::Import(args) => exchange::import(args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => karnna_bench::bench::run(args).map(|_| ExitCode::SUCCESS),
        Command::BenchData(args) => karnna_bench::bench_data::run(args).map(|()| ExitCode::SUCCESS),
        Command::GpuCheck(args) => karnna_bench::gpu_check::run(args).map(|ok| {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }),
        Command::Report(args) => report::run(args).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => serve::run(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, as every error of the binary is printed.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<karnna_infer::SampleError>()
                .is_some_and(|s| matches!(s, karnna_infer::SampleError::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe))
    })
}
