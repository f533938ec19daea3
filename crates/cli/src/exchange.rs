//! `karnna export` and `karnna import`: a checkpoint to safetensors or ONNX, and a safetensors
//! file (from karnna or PyTorch) to a run folder that samples, evaluates and fine-tunes.

use std::path::{Path, PathBuf};

use karnna_data::{load_text, Vocab};
use karnna_exchange::{safetensors_file, Format, TorchModel};
use karnna_model::checkpoint::{checkpoint_name, Checkpoint, RunDir};

use crate::args::CheckpointArgs;

/// `karnna export`'s arguments.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    from: CheckpointArgs,
    /// The file to write (`.safetensors` or `.onnx`; the format follows the extension).
    #[arg(long)]
    out: PathBuf,
    /// The format, when the extension does not say it.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
}

/// The formats on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum FormatArg {
    /// safetensors in PyTorch's nn.LSTM/GRU/RNN + nn.Linear layout, metadata with the vocabulary.
    Safetensors,
    /// An ONNX graph (opset 14) with the ONNX LSTM/GRU/RNN operator.
    Onnx,
}

/// `karnna import`'s arguments.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// A safetensors file in PyTorch's layout (a karnna export, or a state_dict saved with
    /// safetensors.torch.save_file).
    file: PathBuf,
    /// The run folder to create; it gets one checkpoint, marked best.
    #[arg(long)]
    out: PathBuf,
    /// The text the model was trained on, for a file whose metadata has no vocabulary (ids in
    /// Python's sorted(set(text)) order).
    #[arg(long)]
    vocab_from: Option<PathBuf>,
}

/// Writes the checkpoint's model to `--out`.
pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let format = match args.format {
        Some(FormatArg::Safetensors) => Format::Safetensors,
        Some(FormatArg::Onnx) => Format::Onnx,
        None => Format::from_path(&args.out).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: say the format with a .safetensors or .onnx extension, or --format",
                args.out.display()
            )
        })?,
    };
    let path = args.from.checkpoint()?;
    let ckpt = Checkpoint::read(&path)?;
    let model = TorchModel::from_checkpoint(&ckpt)?;
    karnna_exchange::export(&model, &args.out, format)?;
    let what = match format {
        Format::Safetensors => "safetensors, PyTorch's layout",
        Format::Onnx => "ONNX, opset 14",
    };
    println!(
        "wrote {} ({what}): {}, {} characters, iteration {}, from {}",
        args.out.display(),
        ckpt.meta.model.shape,
        ckpt.meta.vocab.len(),
        ckpt.meta.iteration,
        path.display()
    );
    Ok(())
}

/// Reads `args.file` and writes it as a run folder's one checkpoint.
pub fn import(args: ImportArgs) -> anyhow::Result<()> {
    let vocab = match &args.vocab_from {
        Some(text) => Some(Vocab::from_text(&load_text(text)?)),
        None => None,
    };
    let imported = safetensors_file::read(&args.file, vocab.as_ref())?;
    for note in &imported.notes {
        eprintln!("note: {}: {note}", args.file.display());
    }
    let run = RunDir::new(&args.out);
    refuse_a_run(&run)?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.out.display()))?;
    let m = &imported.model;
    let path = args
        .out
        .join(checkpoint_name(m.iteration, m.hidden(), m.val_loss));
    let device = Default::default();
    let model = m.model::<burn::backend::NdArray>(&device);
    let meta = m.checkpoint_meta(serde_json::json!({}));
    Checkpoint::save(&path, &meta, &model, &[])?;
    run.set_best(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.out.display()))?;
    write_provenance(&args.out, &args.file)?;
    println!(
        "imported {}: {}, {} characters, into {}",
        args.file.display(),
        m.config.shape,
        m.vocab.len(),
        path.display()
    );
    Ok(())
}

/// An import makes a new run folder: one that holds checkpoints already is left alone.
fn refuse_a_run(run: &RunDir) -> anyhow::Result<()> {
    let held = run.checkpoints().map(|c| c.len()).unwrap_or(0);
    if held > 0 {
        anyhow::bail!(
            "{}: already holds {held} checkpoint(s); import into a new folder",
            run.path().display()
        );
    }
    Ok(())
}

/// `provenance.txt` of an imported run: karnna's first line says a karnna run wrote the folder
/// (what `train --fresh` looks for before it deletes anything).
fn write_provenance(dir: &Path, file: &Path) -> anyhow::Result<()> {
    let path = dir.join("provenance.txt");
    let line = format!(
        "karnna: {}, imported from {}\n",
        env!("CARGO_PKG_VERSION"),
        file.display()
    );
    std::fs::write(&path, line).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
