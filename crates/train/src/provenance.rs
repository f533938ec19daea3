//! `provenance.txt`: where a run was made (karnna's version and commit, the device, the CPU,
//! the date), written into the run folder when the run starts and extended when it resumes,
//! so that a figure taken from the run (`cargo xtask report`) can say what produced it.
//!
//! The commit comes from the `KARNNA_COMMIT` environment variable, which `cargo xtask` sets
//! from `git` before it runs karnna; a binary run on its own says `commit unknown`.

use std::io::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{CpuBackend, Device, Matmul, RunConfig};

/// The file's name in a run folder.
pub const FILE: &str = "provenance.txt";

/// Writes `dir`'s `provenance.txt` for a run starting at `start_iteration` under `config`, on
/// `ranks` processes: a new file for a new run, one more `resumed:` line for a resumed one;
/// then, for a data-parallel run, a `ranks:` line.
pub fn record(
    dir: &Path,
    config: &RunConfig,
    start_iteration: usize,
    ranks: usize,
) -> std::io::Result<()> {
    let path = dir.join(FILE);
    if start_iteration > 0 && path.exists() {
        let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
        writeln!(
            f,
            "resumed: at iteration {start_iteration}, {}, {}, precision {}",
            build(),
            now(),
            config.precision_line()
        )?;
    } else {
        first_lines(&path, config)?;
    }
    if ranks > 1 {
        let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
        let each = config.batch_size / ranks;
        writeln!(f, "ranks: {ranks} (MPI, {each} rows each)")?;
    }
    Ok(())
}

/// A new run's `provenance.txt`: karnna's build, the device, the precision, the CPU, the date.
fn first_lines(path: &Path, config: &RunConfig) -> std::io::Result<()> {
    let device = match config.device {
        Device::Cpu => match config.cpu_backend {
            CpuBackend::Flex => "cpu (flex)".to_string(),
            CpuBackend::Ndarray => "cpu (ndarray)".to_string(),
        },
        Device::Cuda => gpu("cuda", config.gpu_matmul),
        Device::Wgpu => gpu("wgpu", config.gpu_matmul),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::fs::write(
        path,
        format!(
            "karnna: {}\ndevice: {device}\nprecision: {}\ncpu: {}, {threads} threads\nstarted: {}\n",
            build(),
            config.precision_line(),
            cpu_model(),
            now()
        ),
    )
}

/// karnna's version and commit: `0.1.0, commit 72d6771`.
fn build() -> String {
    let commit = std::env::var("KARNNA_COMMIT").unwrap_or_else(|_| "unknown".into());
    format!("{}, commit {commit}", env!("CARGO_PKG_VERSION"))
}

/// The CPU's model name (Linux), or `unknown CPU`.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Now, in UTC: `2026-11-30 03:40 UTC`.
fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

/// `secs` since the Unix epoch as a UTC date and time to the minute (the proleptic Gregorian
/// calendar; Howard Hinnant's `civil_from_days`).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (hh, mm) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02} UTC")
}

/// A GPU device's name in `provenance.txt`, saying when its matrix products were forced to f32.
fn gpu(name: &str, matmul: Matmul) -> String {
    match matmul {
        Matmul::Tf32 | Matmul::Bf16 => name.into(),
        Matmul::F32 => format!("{name} (f32 matmuls)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        // 2000-02-29 (a leap day of a century leap year) 12:34.
        assert_eq!(utc(951_827_640), "2000-02-29 12:34 UTC");
        assert_eq!(utc(1_796_009_100), "2026-11-30 03:25 UTC");
    }

    #[test]
    fn a_new_run_writes_the_file_and_a_resumed_one_adds_a_line() {
        let dir = std::env::temp_dir().join(format!("karnna-prov-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = RunConfig::default();
        record(&dir, &config, 0, 1).unwrap();
        let first = std::fs::read_to_string(dir.join(FILE)).unwrap();
        assert!(first.starts_with("karnna: "), "{first}");
        assert!(first.contains("\ndevice: cpu (flex)\n"), "{first}");
        assert!(first.contains("\nprecision: f32\n"), "{first}");
        assert_eq!(first.lines().count(), 5);
        record(&dir, &config, 200, 1).unwrap();
        let second = std::fs::read_to_string(dir.join(FILE)).unwrap();
        assert!(second.starts_with(&first));
        assert!(second
            .lines()
            .last()
            .unwrap()
            .starts_with("resumed: at iteration 200, "));
        let bf16 = RunConfig {
            precision: crate::config::Precision::Bf16,
            ..config.clone()
        };
        record(&dir, &bf16, 400, 1).unwrap();
        let third = std::fs::read_to_string(dir.join(FILE)).unwrap();
        let line = third.lines().last().unwrap();
        assert!(
            line.contains(", precision ") && !line.ends_with("precision f32"),
            "{line}"
        );
        // A new run in the same folder starts the file again.
        record(&dir, &config, 0, 1).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(FILE))
                .unwrap()
                .lines()
                .count(),
            5
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
