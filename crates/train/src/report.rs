//! Runs side by side: each run folder's validation curve (from its `metrics.csv`) beside the
//! notebook's, as a Markdown table and an SVG picture, so that the figures a README shows come
//! from the runs themselves and are made again, not typed.
//!
//! A run folder gives its validation losses (`metrics.csv`), its settings (`config.toml`) and,
//! when the run wrote one, where it was made (`provenance.txt`: karnna's commit, the device and
//! the CPU). The table has one row per iteration the notebook printed (every 200 and its last,
//! 3,560; or also every other iteration a run was validated at, [`Rows::All`]), the notebook's
//! own loss and each run's, and then the best of each column.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::log::{read_rows, Plot, NOTEBOOK_VAL_LOSS};
use crate::RunConfig;

/// Where the generated part of a document starts; [`splice`] replaces what lies between this
/// line and [`END`].
pub const BEGIN: &str = "<!-- report:begin (made by `cargo xtask report`; do not edit by hand) -->";
/// Where the generated part of a document ends.
pub const END: &str = "<!-- report:end -->";

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A run folder without a readable `metrics.csv`.
    #[error("{}: cannot read the run's metrics.csv: {source}", path.display())]
    Metrics {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A run whose `metrics.csv` holds no validation loss.
    #[error("{}: no validation loss in this run's metrics.csv", path.display())]
    NoValidation {
        /// The file.
        path: PathBuf,
    },
    /// A run folder whose `config.toml` is missing or wrong.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// A document without the report's markers.
    #[error("{}: no `{BEGIN}` line followed by a `{END}` line to put the report between", path.display())]
    Markers {
        /// The document.
        path: PathBuf,
    },
}

/// One run's validation curve and what it was made with.
#[derive(Clone, Debug, PartialEq)]
pub struct RunCurve {
    /// The run's name in the table: its folder's name.
    pub label: String,
    /// What the run was: its initialisation and seed (`` `init = "tensorflow"`, seed 42 ``).
    pub settings: String,
    /// `(iteration, validation loss)`, in iteration order.
    pub val: Vec<(usize, f64)>,
    /// The last iteration the run logged.
    pub last_iteration: usize,
    /// Seconds the run took (its last row's `elapsed_s`).
    pub elapsed_s: f64,
    /// `provenance.txt`'s lines, when the run wrote it.
    pub provenance: Vec<String>,
}

impl RunCurve {
    /// Reads the run folder `dir`.
    pub fn read(dir: &Path) -> Result<Self, ReportError> {
        let csv = dir.join("metrics.csv");
        let rows = read_rows(&csv).map_err(|source| ReportError::Metrics {
            path: csv.clone(),
            source,
        })?;
        let val: Vec<(usize, f64)> = rows
            .iter()
            .filter_map(|r| r.val_loss.map(|v| (r.iteration, v)))
            .collect();
        if val.is_empty() {
            return Err(ReportError::NoValidation { path: csv });
        }
        let config = RunConfig::load(&dir.join("config.toml"))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        let provenance = std::fs::read_to_string(dir.join(crate::provenance::FILE))
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default();
        let last = rows.last();
        Ok(Self {
            label: name,
            settings: format!("`init = \"{}\"`, seed {}", config.init.name(), config.seed),
            val,
            last_iteration: last.map_or(0, |r| r.iteration),
            elapsed_s: last.map_or(0.0, |r| r.elapsed_s),
            provenance,
        })
    }

    /// The validation loss at `iteration`, when the run measured one there.
    pub fn at(&self, iteration: usize) -> Option<f64> {
        loss_at(&self.val, iteration)
    }

    /// The lowest validation loss and its iteration.
    pub fn best(&self) -> (usize, f64) {
        lowest(&self.val)
    }
}

/// The loss of `curve` (`(iteration, loss)` points) at `iteration`, when it has one there.
fn loss_at(curve: &[(usize, f64)], iteration: usize) -> Option<f64> {
    curve
        .iter()
        .find(|&&(it, _)| it == iteration)
        .map(|&(_, v)| v)
}

/// The lowest point of `curve`: `(iteration, loss)`.
fn lowest(curve: &[(usize, f64)]) -> (usize, f64) {
    curve
        .iter()
        .copied()
        .fold((0, f64::INFINITY), |b, p| if p.1 < b.1 { p } else { b })
}

/// Which iterations the table has a row for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// The notebook's (every 200 and 3,560), up to the longest run's last iteration.
    Notebook,
    /// Those and every other iteration a run was validated at (its epochs' ends).
    All,
}

/// The Markdown report: the table (a row per iteration, see [`Rows`], then the best of each
/// column), a line per run saying what it was and where and how long it ran, and the picture
/// when `svg` names it.
pub fn markdown(runs: &[RunCurve], rows: Rows, svg: Option<&str>) -> String {
    let mut s = String::new();
    let _ = write!(s, "| iteration | notebook |");
    for r in runs {
        let _ = write!(s, " {} |", r.label);
    }
    let _ = write!(s, "\n| ---: | ---: |");
    for _ in runs {
        let _ = write!(s, " ---: |");
    }
    s.push('\n');
    let (_, notebook) = notebook_within(runs);
    let mut iterations: Vec<usize> = notebook.iter().map(|&(it, _)| it).collect();
    if rows == Rows::All {
        iterations.extend(runs.iter().flat_map(|r| r.val.iter().map(|&(it, _)| it)));
    }
    iterations.sort_unstable();
    iterations.dedup();
    for it in iterations {
        match loss_at(&notebook, it) {
            Some(nb) => {
                let _ = write!(s, "| {it} | {nb:.3} |");
            }
            None => {
                let _ = write!(s, "| {it} | |");
            }
        }
        for r in runs {
            match r.at(it) {
                Some(v) => {
                    let _ = write!(s, " {v:.4} |");
                }
                None => s.push_str(" |"),
            }
        }
        s.push('\n');
    }
    let (nb_it, nb_best) = lowest(&notebook);
    let _ = write!(s, "| best | {nb_best:.3} at {nb_it} |");
    for r in runs {
        let (it, v) = r.best();
        let _ = write!(s, " **{v:.4}** at {it} |");
    }
    s.push_str("\n\n");
    for r in runs {
        let _ = write!(
            s,
            "- {}: {}, {} iterations in {}",
            r.label,
            r.settings,
            r.last_iteration,
            duration(r.elapsed_s)
        );
        if r.provenance.is_empty() {
            s.push_str(" (no provenance.txt)");
        } else {
            let _ = write!(s, "; {}", r.provenance.join("; "));
        }
        s.push('\n');
    }
    if let Some(svg) = svg {
        let _ = write!(
            s,
            "\n![validation loss of the runs above and the notebook's]({svg})\n"
        );
    }
    s
}

fn duration(secs: f64) -> String {
    let m = (secs / 60.0).round() as u64;
    match m {
        0..=59 => format!("{m} min"),
        _ => format!("{} h {:02} min", m / 60, m % 60),
    }
}

/// The longest run's last iteration, and the notebook's validation losses up to it.
fn notebook_within(runs: &[RunCurve]) -> (usize, Vec<(usize, f64)>) {
    let last = runs.iter().map(|r| r.last_iteration).max().unwrap_or(0);
    let notebook = NOTEBOOK_VAL_LOSS
        .iter()
        .copied()
        .filter(|&(it, _)| it <= last)
        .collect();
    (last, notebook)
}

/// The runs' validation curves and the notebook's (dashed, as far as the runs go) against
/// iterations, each measured point a dot, as SVG.
pub fn svg(runs: &[RunCurve]) -> String {
    let (last, notebook) = notebook_within(runs);
    let all = runs
        .iter()
        .flat_map(|r| r.val.iter().map(|&(_, v)| v))
        .chain(notebook.iter().map(|&(_, v)| v));
    let plot = Plot::new(all, last);
    let (x, y) = (|it: f64| plot.x(it), |v: f64| plot.y(v));
    let (w, right, top) = (Plot::W, Plot::RIGHT, Plot::TOP);
    let mut s = plot.frame("validation loss (nats per character)");
    const COLOURS: [&str; 9] = [
        "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
        "#bcbd22",
    ];
    let notebook = ("notebook (2017)".to_string(), notebook);
    let curves =
        std::iter::once(notebook).chain(runs.iter().map(|r| (plain(&r.label), r.val.clone())));
    for (k, (label, points)) in curves.enumerate() {
        let pts: Vec<String> = points
            .iter()
            .map(|&(it, v)| format!("{:.1},{:.1}", x(it as f64), y(v)))
            .collect();
        let (colour, dash) = match k {
            0 => ("#555", r#" stroke-dasharray="6 4""#),
            _ => (COLOURS[(k - 1) % COLOURS.len()], ""),
        };
        let ly = top + 20.0 + 18.0 * k as f64;
        let lx = w - right - 260.0;
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/><line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            pts.join(" "),
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(&label),
        );
        for &(it, v) in &points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                x(it as f64),
                y(v)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// A label without Markdown's backticks.
fn plain(label: &str) -> String {
    label.replace('`', "")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `doc` with the lines between its [`BEGIN`] and [`END`] markers replaced by `content`
/// (`path` names the document in the error when the markers are missing).
pub fn splice(doc: &str, content: &str, path: &Path) -> Result<String, ReportError> {
    let markers = || ReportError::Markers {
        path: path.to_owned(),
    };
    let start = doc.find(BEGIN).ok_or_else(markers)? + BEGIN.len();
    let end = start + doc[start..].find(END).ok_or_else(markers)?;
    Ok(format!(
        "{}\n{}\n{}",
        &doc[..start],
        content.trim_end(),
        &doc[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(label: &str, val: &[(usize, f64)]) -> RunCurve {
        RunCurve {
            label: label.into(),
            settings: "`init = \"tensorflow\"`, seed 42".into(),
            val: val.to_vec(),
            last_iteration: val.last().unwrap().0,
            elapsed_s: 3900.0,
            provenance: vec!["commit: abc1234".into()],
        }
    }

    #[test]
    fn the_table_has_the_notebooks_rows_and_each_runs_best() {
        let runs = [
            curve("a", &[(200, 2.5), (400, 2.0), (3560, 1.2)]),
            curve("b", &[(200, 2.4), (300, 1.0), (400, 1.9)]),
        ];
        let md = markdown(&runs, Rows::Notebook, Some("curves.svg"));
        assert!(md.contains("| iteration | notebook | a | b |"), "{md}");
        assert!(md.contains("| 200 | 2.432 | 2.5000 | 2.4000 |"), "{md}");
        // A run without a loss at an iteration leaves its cell empty.
        assert!(md.contains("| 3560 | 1.123 | 1.2000 | |"), "{md}");
        // The best is any iteration the run measured, not only the notebook's.
        assert!(
            md.contains("| best | 1.123 at 3560 | **1.2000** at 3560 | **1.0000** at 300 |"),
            "{md}"
        );
        // Rows stop at the longest run's last iteration.
        let short = markdown(&runs[1..], Rows::Notebook, None);
        assert!(
            short.contains("| 400 | 2.012 | 1.9000 |") && !short.contains("| 600 |"),
            "{short}"
        );
        assert!(
            short.contains("| best | 2.012 at 400 | **1.0000** at 300 |"),
            "{short}"
        );
        assert!(md.contains(
            "- a: `init = \"tensorflow\"`, seed 42, 3560 iterations in 1 h 05 min; commit: abc1234"
        ));
        // Every validated iteration on request: b's 300 gets a row with no notebook figure.
        let all = markdown(&runs, Rows::All, None);
        assert!(all.contains("| 300 | | | 1.0000 |"), "{all}");
        assert!(!md.contains("| 300 |"), "{md}");
        assert!(md.contains("](curves.svg)"));
    }

    #[test]
    fn the_picture_draws_every_run_and_the_notebook() {
        let runs = [curve("a `x`", &[(200, 2.5), (400, 2.0)])];
        let pic = svg(&runs);
        assert_eq!(pic.matches("<polyline").count(), 2);
        // The run's two points and the notebook's two (200, 400; the rest lie beyond the run).
        assert_eq!(pic.matches("<circle").count(), 4);
        assert!(pic.contains(">a x</text>") && pic.contains(">notebook (2017)</text>"));
        assert!(pic.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn splice_replaces_only_between_the_markers() {
        let doc = format!("top\n{BEGIN}\nold\n{END}\nbottom\n");
        let new = splice(&doc, "new table\n", Path::new("README.md")).unwrap();
        assert_eq!(new, format!("top\n{BEGIN}\nnew table\n{END}\nbottom\n"));
        // Again: the same result (idempotent).
        assert_eq!(
            splice(&new, "new table", Path::new("README.md")).unwrap(),
            new
        );
        let err = splice("no markers", "x", Path::new("README.md")).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("README.md: no `<!-- report:begin"));
    }
}
