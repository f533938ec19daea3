//! What a run leaves besides checkpoints: `metrics.csv`, one row per iteration, and `loss.svg`,
//! the train and validation loss against iterations, redrawn at each validation.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// One iteration's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Iterations done (optimizer steps), from 1.
    pub iteration: usize,
    /// Epoch, from 1.
    pub epoch: usize,
    /// Training loss of this iteration's batch (nats per character).
    pub train_loss: f64,
    /// Validation loss, when measured at this iteration.
    pub val_loss: Option<f64>,
    /// Characters trained per second in this iteration.
    pub chars_per_s: f64,
    /// Seconds since the run began (resumed runs continue the count).
    pub elapsed_s: f64,
}

const HEADER: &str = "iteration,epoch,train_loss,val_loss,chars_per_s,elapsed_s";

/// The notebook's validation loss (2017 revision, `configs/anna.toml`'s model, its
/// `split_data` split) every 200 iterations and at its last, 3,560, as it printed them.
pub const NOTEBOOK_VAL_LOSS: [(usize, f64); 18] = [
    (200, 2.432),
    (400, 2.012),
    (600, 1.783),
    (800, 1.619),
    (1000, 1.499),
    (1200, 1.418),
    (1400, 1.357),
    (1600, 1.305),
    (1800, 1.255),
    (2000, 1.228),
    (2200, 1.202),
    (2400, 1.189),
    (2600, 1.170),
    (2800, 1.156),
    (3000, 1.146),
    (3200, 1.137),
    (3400, 1.131),
    (3560, 1.1225),
];

/// A published validation curve drawn beside a run's own: a label and `(iteration, loss)`.
pub type Reference = (&'static str, &'static [(usize, f64)]);

/// `metrics.csv` and `loss.svg` of one run folder.
pub struct MetricsLog {
    csv: PathBuf,
    svg: PathBuf,
    rows: Vec<Row>,
    reference: Option<Reference>,
}

impl MetricsLog {
    /// Opens the log of `dir`, keeping rows up to `keep_through` iterations (those after it are
    /// dropped: a resumed run redoes them). A new run passes 0.
    pub fn open(dir: &Path, keep_through: usize) -> std::io::Result<Self> {
        let csv = dir.join("metrics.csv");
        let rows = match read_rows(&csv) {
            Ok(rows) => rows
                .into_iter()
                .filter(|r| r.iteration <= keep_through)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let log = Self {
            csv,
            svg: dir.join("loss.svg"),
            rows,
            reference: None,
        };
        let mut text = format!("{HEADER}\n");
        for r in &log.rows {
            text.push_str(&format_row(r));
        }
        std::fs::write(&log.csv, text)?;
        Ok(log)
    }

    /// Draws `reference` in `loss.svg` beside the run's own curves.
    pub fn with_reference(mut self, reference: Option<Reference>) -> Self {
        self.reference = reference;
        self
    }

    /// Rows so far.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Appends a row to `metrics.csv` (and redraws `loss.svg` when it has a validation loss).
    pub fn push(&mut self, row: Row) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.csv)?;
        f.write_all(format_row(&row).as_bytes())?;
        let redraw = row.val_loss.is_some();
        self.rows.push(row);
        if redraw {
            self.draw()?;
        }
        Ok(())
    }

    /// Writes `loss.svg` (atomically).
    pub fn draw(&self) -> std::io::Result<()> {
        let tmp = self.svg.with_extension("svg.tmp");
        std::fs::write(&tmp, loss_svg(&self.rows, self.reference))?;
        std::fs::rename(tmp, &self.svg)
    }
}

/// The rows of a `metrics.csv` (lines that do not parse, the header among them, are skipped).
pub fn read_rows(csv: &Path) -> std::io::Result<Vec<Row>> {
    Ok(std::fs::read_to_string(csv)?
        .lines()
        .filter_map(parse_row)
        .collect())
}

fn format_row(r: &Row) -> String {
    let val = r.val_loss.map(|v| format!("{v:.5}")).unwrap_or_default();
    format!(
        "{},{},{:.5},{},{:.0},{:.2}\n",
        r.iteration, r.epoch, r.train_loss, val, r.chars_per_s, r.elapsed_s
    )
}

fn parse_row(line: &str) -> Option<Row> {
    let f: Vec<&str> = line.split(',').collect();
    if f.len() != 6 {
        return None;
    }
    Some(Row {
        iteration: f[0].parse().ok()?,
        epoch: f[1].parse().ok()?,
        train_loss: f[2].parse().ok()?,
        val_loss: if f[3].is_empty() {
            None
        } else {
            Some(f[3].parse().ok()?)
        },
        chars_per_s: f[4].parse().ok()?,
        elapsed_s: f[5].parse().ok()?,
    })
}

/// The frame every loss picture shares (`loss.svg`, the report's): losses against iterations
/// on an 800 x 480 canvas, with a title, a grid of six ticks on each axis and a border.
pub(crate) struct Plot {
    lo: f64,
    hi: f64,
    max_it: f64,
}

impl Plot {
    pub(crate) const W: f64 = 800.0;
    const H: f64 = 480.0;
    const LEFT: f64 = 70.0;
    pub(crate) const RIGHT: f64 = 20.0;
    pub(crate) const TOP: f64 = 40.0;
    const BOTTOM: f64 = 50.0;

    /// Scales that fit `losses` (the finite ones, with 5% to spare) over iterations
    /// `0..=last`.
    pub(crate) fn new(losses: impl Iterator<Item = f64>, last: usize) -> Self {
        let (mut lo, mut hi) = losses
            .filter(|v| v.is_finite())
            .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        if lo > hi {
            (lo, hi) = (0.0, 1.0);
        }
        let pad = ((hi - lo) * 0.05).max(0.01);
        Self {
            lo: (lo - pad).max(0.0),
            hi: hi + pad,
            max_it: last.max(1) as f64,
        }
    }

    /// The horizontal position of iteration `it`.
    pub(crate) fn x(&self, it: f64) -> f64 {
        Self::LEFT + (Self::W - Self::LEFT - Self::RIGHT) * it / self.max_it
    }

    /// The vertical position of loss `v`.
    pub(crate) fn y(&self, v: f64) -> f64 {
        Self::TOP
            + (Self::H - Self::TOP - Self::BOTTOM) * (1.0 - (v - self.lo) / (self.hi - self.lo))
    }

    /// The picture's opening: canvas, `title`, grid, tick labels, axis name and border (the
    /// caller adds its curves and `</svg>`).
    pub(crate) fn frame(&self, title: &str) -> String {
        let (w, h, left, right, top, bottom) = (
            Self::W,
            Self::H,
            Self::LEFT,
            Self::RIGHT,
            Self::TOP,
            Self::BOTTOM,
        );
        let mut s = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{title}</text>
"#,
            w / 2.0
        );
        for i in 0..=5 {
            let v = self.lo + (self.hi - self.lo) * i as f64 / 5.0;
            let it = self.max_it * i as f64 / 5.0;
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.2}</text><text x="{:.1}" y="{}" text-anchor="middle">{it:.0}</text>"##,
                w - right,
                left - 6.0,
                self.y(v) + 4.0,
                self.x(it),
                h - bottom + 18.0,
                y = self.y(v),
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle">iteration</text><rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
            (left + w - right) / 2.0,
            h - 12.0,
            w - left - right,
            h - top - bottom
        );
        s
    }
}

/// The train loss smoothed with a trailing mean over a window that keeps ~400 points:
/// (iteration, mean) at each window's last row.
fn smoothed_train(rows: &[Row]) -> Vec<(usize, f64)> {
    let window = (rows.len() / 400).max(1);
    rows.windows(window)
        .filter(|ws| ws.iter().all(|r| r.train_loss.is_finite()))
        .map(|ws| {
            let mean = ws.iter().map(|r| r.train_loss).sum::<f64>() / ws.len() as f64;
            (ws[ws.len() - 1].iteration, mean)
        })
        .collect()
}

/// The train and validation entries of the legend at (`lx`, `ly`), and the end of the SVG.
fn legend(s: &mut String, lx: f64, ly: f64) {
    let _ = write!(
        s,
        r##"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="#1f77b4" stroke-width="2"/><text x="{}" y="{}">train</text>
<line x1="{lx}" x2="{}" y1="{}" y2="{}" stroke="#d62728" stroke-width="2.5"/><text x="{}" y="{}">validation</text>
</svg>
"##,
        lx + 24.0,
        lx + 30.0,
        ly + 4.0,
        lx + 24.0,
        ly + 18.0,
        ly + 18.0,
        lx + 30.0,
        ly + 22.0
    );
}

/// An SVG plot of train loss (thin line, smoothed over a few iterations) and validation loss
/// (thick line with dots) against iterations, with a reference validation curve (dashed, up to
/// the run's last iteration) when one is given.
pub fn loss_svg(rows: &[Row], reference: Option<Reference>) -> String {
    let last_it = rows.iter().map(|r| r.iteration).max().unwrap_or(1).max(1);
    let reference = reference.map(|(label, points)| {
        let shown: Vec<(usize, f64)> = points
            .iter()
            .copied()
            .filter(|&(it, _)| it <= last_it)
            .collect();
        (label, shown)
    });
    let ref_losses = reference
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, v)| v));
    let losses = rows
        .iter()
        .flat_map(|r| std::iter::once(r.train_loss).chain(r.val_loss))
        .chain(ref_losses);
    let plot = Plot::new(losses, last_it);
    let (x, y) = (|it: f64| plot.x(it), |v: f64| plot.y(v));
    let (w, right, top) = (Plot::W, Plot::RIGHT, Plot::TOP);
    let mut s = plot.frame("karnna: loss (nats per character)");
    let train: Vec<String> = smoothed_train(rows)
        .into_iter()
        .map(|(it, mean)| format!("{:.1},{:.1}", x(it as f64), y(mean)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="1.2" points="{}"/>"##,
        train.join(" ")
    );
    let val: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| r.val_loss.map(|v| (x(r.iteration as f64), y(v))))
        .collect();
    let pts: Vec<String> = val.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#d62728" stroke-width="2.5" points="{}"/>"##,
        pts.join(" ")
    );
    for (a, b) in &val {
        let _ = writeln!(
            s,
            r##"<circle cx="{a:.1}" cy="{b:.1}" r="3.5" fill="#d62728"/>"##
        );
    }
    let (lx, ly) = (w - right - 160.0, top + 20.0);
    if let Some((label, points)) = &reference {
        let pts: Vec<String> = points
            .iter()
            .map(|&(it, v)| format!("{:.1},{:.1}", x(it as f64), y(v)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="#555" stroke-width="2" stroke-dasharray="6 4" points="{}"/>
<line x1="{lx}" x2="{}" y1="{y3}" y2="{y3}" stroke="#555" stroke-width="2" stroke-dasharray="6 4"/><text x="{}" y="{}">{label}</text>"##,
            pts.join(" "),
            lx + 24.0,
            lx + 30.0,
            ly + 40.0,
            y3 = ly + 36.0,
        );
    }
    legend(&mut s, lx, ly);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: usize, val: Option<f64>) -> Row {
        Row {
            iteration: i,
            epoch: 1,
            train_loss: 4.0 / i as f64,
            val_loss: val,
            chars_per_s: 100.0,
            elapsed_s: i as f64,
        }
    }

    #[test]
    fn csv_round_trips_and_resume_truncates() {
        let dir = std::env::temp_dir().join(format!("karnna-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut log = MetricsLog::open(&dir, 0).unwrap();
        for i in 1..=10 {
            log.push(row(i, (i % 5 == 0).then_some(1.0 / i as f64)))
                .unwrap();
        }
        assert!(dir.join("loss.svg").exists());
        let again = MetricsLog::open(&dir, 6).unwrap();
        assert_eq!(again.rows().len(), 6);
        assert_eq!(again.rows()[4].val_loss, Some(0.2));
        let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        assert_eq!(text.lines().count(), 7);
        assert!(text.starts_with(HEADER));
    }

    #[test]
    fn svg_has_both_curves() {
        let rows: Vec<Row> = (1..=50)
            .map(|i| row(i, (i % 10 == 0).then_some(2.0)))
            .collect();
        let svg = loss_svg(&rows, None);
        assert_eq!(svg.matches("<circle").count(), 5);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn svg_draws_the_reference_up_to_the_run() {
        let rows: Vec<Row> = (1..=450)
            .map(|i| row(i, (i % 200 == 0).then_some(2.0)))
            .collect();
        let svg = loss_svg(&rows, Some(("notebook", &NOTEBOOK_VAL_LOSS)));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains(">notebook</text>"));
        // Iterations 200 and 400 of the reference: two points on the dashed line.
        let dashed = svg
            .lines()
            .find(|l| l.starts_with("<polyline") && l.contains("stroke-dasharray"))
            .unwrap();
        let points = dashed.split("points=\"").nth(1).unwrap();
        assert_eq!(points.split_whitespace().count(), 2, "{dashed}");
    }
}
