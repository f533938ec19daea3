//! `karnna report`: runs side by side with the notebook's curve (`karnna_train::report`), as a
//! Markdown table on stdout or spliced into a document, and as an SVG picture.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use karnna_train::report::{self, RunCurve};

/// `karnna report`'s arguments.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run folders (each with its metrics.csv and config.toml), in the table's column order.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Write the picture of the validation curves here (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Put the table between this document's report markers instead of printing it (the
    /// picture is linked relative to the document).
    #[arg(long)]
    into: Option<PathBuf>,
    /// A row for every iteration a run was validated at, not only the notebook's.
    #[arg(long)]
    all_rows: bool,
}

/// Runs `karnna report`.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let runs = args
        .runs
        .iter()
        .map(|dir| RunCurve::read(dir))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = &args.svg {
        std::fs::write(path, report::svg(&runs))
            .with_context(|| format!("{}: cannot write the picture", path.display()))?;
    }
    let link = args.svg.as_ref().map(|svg| {
        let base = args
            .into
            .as_ref()
            .and_then(|d| d.parent())
            .filter(|p| !p.as_os_str().is_empty());
        match base.and_then(|b| svg.strip_prefix(b).ok()) {
            Some(rel) => rel.display().to_string(),
            None => svg.display().to_string(),
        }
    });
    let rows = match args.all_rows {
        true => report::Rows::All,
        false => report::Rows::Notebook,
    };
    let table = report::markdown(&runs, rows, link.as_deref());
    match &args.into {
        None => print!("{table}"),
        Some(doc_path) => {
            let doc = std::fs::read_to_string(doc_path)
                .with_context(|| format!("{}: cannot read", doc_path.display()))?;
            let new = report::splice(&doc, &table, doc_path)?;
            std::fs::write(doc_path, new)
                .with_context(|| format!("{}: cannot write", doc_path.display()))?;
            println!(
                "report: {} runs written into {}",
                runs.len(),
                doc_path.display()
            );
        }
    }
    Ok(())
}
