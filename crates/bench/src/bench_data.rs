//! `karnna bench-data`: what a text's size costs. For each size it writes a generated ASCII
//! text, then runs this binary (or `--bin`, an older one, for a side-by-side table) as a user
//! would: `info` on an empty cache (preparation), `info` again (the prepared text checked and
//! reused), three training iterations ending with a validation, and `eval`. Each command's wall
//! time and peak resident memory (the child's `ru_maxrss`) are printed as `key=value` lines.
//! No timed test: the figures are for docs/PERFORMANCE.md.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// `karnna bench-data`'s arguments: the text sizes, the config, the folder, the binary and the
/// time limits.
#[derive(clap::Args, Debug)]
pub struct BenchDataArgs {
    /// Text sizes to measure, in MB (10^6 bytes); give it several times.
    #[arg(long = "mb", default_values_t = [100u64])]
    sizes: Vec<u64>,
    /// The run's config (its model, batches and validation split).
    #[arg(long, default_value = "configs/anna.toml")]
    config: PathBuf,
    /// Where the texts, the cache and the runs go (texts are kept and reused between calls).
    #[arg(long, default_value = "artifacts/bench-data")]
    dir: PathBuf,
    /// The karnna binary to measure (default: the running one, the `karnna` binary that calls
    /// this), e.g. an older build to compare with.
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Seconds `eval` runs before it is stopped: long enough to be scoring, so that a copy of
    /// the text would show; a big text takes hours to score in full.
    #[arg(long, default_value_t = 30)]
    eval_seconds: u64,
    /// Seconds any one command may take before it is stopped (its peak memory is still
    /// reported, marked `stopped`).
    #[arg(long, default_value_t = 900)]
    limit_seconds: u64,
}

/// Writes texts of each size (kept for the next call), then runs `info`, `train` and `eval` on
/// each as child processes of the `karnna` binary, and prints preparation speed and each
/// command's peak memory.
pub fn run(args: BenchDataArgs) -> anyhow::Result<()> {
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("finding this binary")?,
    };
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("{}: cannot create", args.dir.display()))?;
    for &mb in &args.sizes {
        let text = args.dir.join(format!("text-{mb}mb.txt"));
        let t0 = Instant::now();
        write_text(&text, mb * 1_000_000)?;
        println!(
            "size_mb={mb} text={} written_s={:.1}",
            text.display(),
            t0.elapsed().as_secs_f64()
        );
        let cache = args.dir.join(format!("cache-{mb}mb"));
        let _ = std::fs::remove_dir_all(&cache);
        let run_dir = args.dir.join(format!("run-{mb}mb"));
        let k = Karnna {
            bin: &bin,
            cache: &cache,
            limit: Duration::from_secs(args.limit_seconds),
        };
        let config = args.config.display().to_string();
        let data = text.display().to_string();
        let info = ["info", "--config", &config, "--data", &data];
        let first = k.measure("info", &info, None)?;
        if let Some(rate) = prepared_rate(&first.stdout) {
            println!("prepare_mb_per_s={rate:.0}");
        }
        k.measure("info_again", &info, None)?;
        let run = run_dir.display().to_string();
        let train = [
            "train",
            "--config",
            &config,
            "--data",
            &data,
            "--max-iters",
            "3",
            "--run-dir",
            &run,
            "--fresh",
            "--plain",
        ];
        k.measure("train3", &train, None)?;
        let Some(ckpt) = latest_checkpoint(&run_dir) else {
            println!("eval: skipped (the training run left no checkpoint)");
            continue;
        };
        let ckpt = ckpt.display().to_string();
        let eval = ["eval", "--checkpoint", &ckpt, "--data", &data];
        k.measure("eval", &eval, Some(Duration::from_secs(args.eval_seconds)))?;
    }
    Ok(())
}

/// A binary to run, with the cache folder it is given.
struct Karnna<'a> {
    bin: &'a Path,
    cache: &'a Path,
    limit: Duration,
}

/// What a measured command printed.
struct Measured {
    stdout: String,
}

impl Karnna<'_> {
    /// Runs the binary with `args` (stopped after `stop_after`, or the limit), and prints its
    /// wall time and peak resident memory under `name`.
    fn measure(
        &self,
        name: &str,
        args: &[&str],
        stop_after: Option<Duration>,
    ) -> anyhow::Result<Measured> {
        let (out, err) = (
            output_path(self.cache, name, "out"),
            output_path(self.cache, name, "err"),
        );
        let create = |p: &Path| {
            std::fs::File::create(p).with_context(|| format!("{}: cannot create", p.display()))
        };
        let child = Command::new(self.bin)
            .args(args)
            .env("KARNNA_CACHE_DIR", self.cache)
            .stdin(Stdio::null())
            .stdout(create(&out)?)
            .stderr(create(&err)?)
            .spawn()
            .with_context(|| format!("{}: cannot run", self.bin.display()))?;
        let started = Instant::now();
        let (status, rss_kib, stopped) =
            wait_measuring(child.id() as i32, stop_after.unwrap_or(self.limit))?;
        let secs = started.elapsed().as_secs_f64();
        let stdout = std::fs::read_to_string(&out).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        let _ = (std::fs::remove_file(&out), std::fs::remove_file(&err));
        let note = match (stopped, stop_after) {
            (false, _) => String::new(),
            (true, Some(_)) => format!(" (stopped after {} s, as asked)", secs.round()),
            (true, None) => format!(" (stopped at the {} s limit)", secs.round()),
        };
        println!(
            "peak_rss_mib_{name}={:.0} {name}_s={secs:.1}{note}",
            rss_kib as f64 / 1024.0
        );
        if !stopped && status != 0 {
            bail!("{name} failed (exit {status}): {}", stderr.trim());
        }
        Ok(Measured { stdout })
    }
}

/// Where a measured command's output goes while it runs (beside the cache folder).
fn output_path(cache: &Path, name: &str, ext: &str) -> PathBuf {
    cache.with_file_name(format!("{name}-{}.{ext}", std::process::id()))
}

/// Waits for the child `pid` (killing it after `limit`), and returns its exit status, its
/// peak resident memory in KiB and whether it was stopped.
fn wait_measuring(pid: i32, limit: Duration) -> anyhow::Result<(i32, i64, bool)> {
    let started = Instant::now();
    let mut stopped = false;
    loop {
        let mut status = 0;
        // SAFETY: wait4 on our own child, into a zeroed rusage and a status of ours.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let done = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if done == pid {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            return Ok((code, usage.ru_maxrss, stopped));
        }
        if done < 0 {
            bail!(
                "waiting for the command: {}",
                std::io::Error::last_os_error()
            );
        }
        if !stopped && started.elapsed() >= limit {
            // SAFETY: a signal to our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            stopped = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `info`'s preparation rate (`prepared in 3.1 s, 160 MB/s`), when it prepared the text.
fn prepared_rate(info: &str) -> Option<f64> {
    let line = info.lines().find(|l| l.starts_with("prepared:"))?;
    let rate = line.split("s, ").nth(1)?.split(" MB/s").next()?;
    rate.trim().parse().ok()
}

/// The newest checkpoint of a run folder.
fn latest_checkpoint(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ckpt"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// Writes `bytes` bytes of generated English-like ASCII text to `path` (kept when it is there
/// with that size already): words from a fixed list in a seeded order, sentences, lines and
/// paragraphs, so that the vocabulary and the line structure look like a book's.
fn write_text(path: &Path, bytes: u64) -> anyhow::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == bytes) {
        return Ok(());
    }
    let tmp = path.with_extension("txt.tmp");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let block = generated_block(8 << 20);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block.as_bytes()[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

/// The words and marks the generated text draws from: frequent English words, the novel's names,
/// punctuation, digits and rare capitals, so its vocabulary is a plausible ~70 characters.
const WORDS: &str = concat!(
    "the and of to a he in that was his her she with had it not at as for him but said ",
    "Levin Anna Vronsky Kitty Stepan Arkadyevitch Oblonsky Dolly what could would all from on ",
    "be felt know why yes no quite evening moment horse peasants mowing love husband wife ",
    "Moscow Petersburg ! ? ( ) \" ' ; : - 1 2 3 7 9 X Z Q J",
);

/// At least `len` bytes of generated prose: words drawn by an xorshift generator with a fixed
/// seed, sentences that start with a capital, lines of about 70 characters, an empty line now
/// and then.
fn generated_block(len: usize) -> String {
    let words: Vec<&str> = WORDS.split(' ').collect();
    let mut block = String::with_capacity(len);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let (mut line, mut sentence) = (0usize, 0usize);
    while block.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let word = words[(x % words.len() as u64) as usize];
        if sentence == 0 {
            let mut c = word.chars();
            block.extend(c.next().map(|f| f.to_ascii_uppercase()));
            block.push_str(c.as_str());
        } else {
            block.push_str(word);
        }
        sentence += 1;
        line += word.len() + 1;
        let end = if x.is_multiple_of(11) {
            ". "
        } else if x.is_multiple_of(17) {
            ", "
        } else {
            " "
        };
        block.push_str(end.trim_end());
        sentence = if end == ". " { 0 } else { sentence };
        if line > 68 {
            block.push_str(if x.is_multiple_of(23) { "\n\n" } else { "\n" });
            line = 0;
        } else {
            block.push(' ');
        }
    }
    block
}
