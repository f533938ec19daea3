//! Stopping and sharing safely, on a real training process: signals save a checkpoint and exit
//! with the signal's status, a busy run folder refuses a second run (and frees itself when its
//! process dies, even by SIGKILL), and a model too big for memory is refused before it allocates.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use karnna_model::checkpoint::RunDir;

/// The checkpoints of the run folder `dir`, in iteration order.
fn run_checkpoints(dir: &Path) -> std::io::Result<Vec<(usize, PathBuf)>> {
    RunDir::new(dir).checkpoints()
}
use karnna_model::Checkpoint;

mod common;
use common::{command, karnna, tiny_config, train_short as train};

/// Held by every test of this file: they run training processes of two threads each, and the
/// dashboard's thread runs in the idle scheduling class, which a machine loaded with several of
/// them at once would starve of the time to read a key.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`ONE_AT_A_TIME`], taken whatever an earlier test's failure left it.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("karnna-stops-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("short.txt"),
        "It was the best of times, it was the worst of times, it was the age of wisdom.\n"
            .repeat(60),
    )
    .unwrap();
    d
}

/// `karnna train` on `short.txt` with the tiny config, then `extra`.
fn train_args(extra: &[&str]) -> Vec<String> {
    let base = ["train", "--config", &tiny_config(), "--data", "short.txt"].map(String::from);
    base.into_iter()
        .chain(extra.iter().map(|s| s.to_string()))
        .collect()
}

/// Resumes the run in `dir` and trains until iteration `until`.
fn resume_until(dir: &Path, until: usize) -> Output {
    train(
        dir,
        &[
            "--resume",
            "--epochs",
            "100000",
            "--max-iters",
            &until.to_string(),
        ],
    )
}

/// Gives the stop signals their default action in a child about to exec karnna, whatever the
/// test process inherited (a non-interactive shell starts background jobs with SIGINT
/// ignored, and karnna keeps a signal ignored at start). Async-signal-safe.
fn default_stop_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `signal` is async-signal-safe.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
}

/// `karnna train` in `dir` for a very long time (until stopped), its stop signals at their
/// default actions.
fn long_run(dir: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = command(dir);
    command.args(train_args(&["--epochs", "100000", "--max-iters", "0"]));
    // SAFETY: `signal` only, which is async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            default_stop_signals();
            Ok(())
        });
    }
    command
}

/// A training run that would go on for a long time, and its stdout lines as they come.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_ignoring(dir, extra, None)
    }

    /// [`Running::start`] with `ignored` set to be ignored in the process, as `nohup` does.
    fn start_ignoring(dir: &Path, extra: &[&str], ignored: Option<i32>) -> Self {
        use std::os::unix::process::CommandExt;
        let mut command = long_run(dir);
        command
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(signal) = ignored {
            // SAFETY: `signal` only, which is async-signal-safe, between fork and exec (after
            // `long_run`'s defaults).
            unsafe {
                command.pre_exec(move || {
                    libc::signal(signal, libc::SIG_IGN);
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (up to two minutes) for a stdout line that starts with `prefix`.
    fn wait_for(&mut self, prefix: &str) {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(120)) {
                Ok(line) => {
                    let hit = line.starts_with(prefix);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(e) => panic!("no line starting {prefix:?} ({e}): {:?}", self.seen),
            }
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: sends a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Waits for the process to end: its exit code (None when killed) and the rest of stdout.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        let mut err = String::new();
        use std::io::Read;
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.code(), self.seen.join("\n"), err)
    }
}

#[test]
fn each_stop_signal_saves_a_checkpoint_of_the_current_iteration() {
    let _serial = one_at_a_time();
    for (signal, name, code) in [
        (libc::SIGTERM, "SIGTERM", 143),
        (libc::SIGINT, "SIGINT", 130),
        (libc::SIGHUP, "SIGHUP", 129),
    ] {
        let dir = workdir(name);
        let mut run = Running::start(&dir, &[]);
        run.wait_for("saved "); // past the first periodic checkpoint
        run.signal(signal);
        // A second one while the first is being handled (finishing the iteration, validating,
        // saving) changes nothing: the checkpoint below is whole.
        std::thread::sleep(Duration::from_millis(2));
        run.signal(signal);
        let (status, out, err) = run.finish();
        assert_eq!(status, Some(code), "{name}: {out}\n{err}");
        assert!(err.is_empty(), "{name}: nothing on stderr, got {err}");
        let stopped: usize = out
            .lines()
            .find_map(|l| l.strip_prefix("stopped at iteration "))
            .and_then(|rest| rest.strip_suffix(&format!(" ({name})")))
            .unwrap_or_else(|| panic!("{name}: no stop line in {out}"))
            .parse()
            .unwrap();
        // The last checkpoint is the iteration it stopped at, whole and loadable.
        let run_dir = dir.join("artifacts/tiny");
        let (last, path) = run_checkpoints(&run_dir).unwrap().pop().unwrap();
        assert_eq!(last, stopped, "{name}: {out}");
        Checkpoint::read(&path).unwrap();
        let name_of = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(out.contains(&name_of), "{name}: {out}");
        // And the run goes on from it, to the weights a run that was never stopped reaches.
        let again = resume_until(&dir, stopped + 3);
        assert!(
            again.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        let whole = workdir(&format!("{name}-whole"));
        let until = (stopped + 3).to_string();
        let o = train(&whole, &["--epochs", "100000", "--max-iters", &until]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let last = |d: &Path| {
            run_checkpoints(&d.join("artifacts/tiny"))
                .unwrap()
                .pop()
                .unwrap()
        };
        let ((resumed_at, resumed), (whole_at, uninterrupted)) = (last(&dir), last(&whole));
        assert_eq!((resumed_at, whole_at), (stopped + 3, stopped + 3), "{name}");
        assert!(
            weights(&resumed) == weights(&uninterrupted),
            "{name}: resumed after the stop, the weights differ from an uninterrupted run's"
        );
    }
}

/// Every parameter of the checkpoint at `path`, bit for bit, in module order.
fn weights(path: &Path) -> Vec<Vec<u32>> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::prelude::*;
    type F = burn::backend::Flex;
    struct All(Vec<Vec<u32>>);
    impl ModuleVisitor<F> for All {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<F, D>>) {
            let v = p.val().into_data().to_vec::<f32>().unwrap();
            self.0.push(v.into_iter().map(f32::to_bits).collect());
        }
    }
    let model = Checkpoint::read(path)
        .unwrap()
        .model::<F>(&Default::default())
        .unwrap();
    let mut all = All(Vec::new());
    model.visit(&mut all);
    all.0
}

/// A stop during a validation that would take far longer (every one of 12,000 batches read)
/// ends the run at once: the validation is cut short and not recorded, and the checkpoint of the
/// last finished iteration is saved.
#[test]
fn a_stop_during_a_slow_validation_ends_the_run_at_once() {
    let _serial = one_at_a_time();
    let dir = workdir("slow-validation");
    let line = "It was the best of times, it was the worst of times, it was the age of wisdom.\n";
    std::fs::write(dir.join("short.txt"), line.repeat(32_000_000 / line.len())).unwrap();
    let mut run = Running::start(&dir, &["--val-batches", "0"]);
    // The validation of iteration 50 begins a few iterations after this line.
    run.wait_for("iter     40/");
    std::thread::sleep(Duration::from_millis(1500));
    let signalled = std::time::Instant::now();
    run.signal(libc::SIGTERM);
    let (status, out, err) = run.finish();
    let took = signalled.elapsed();
    eprintln!("stopped {:.2} s after SIGTERM", took.as_secs_f64());
    assert_eq!(status, Some(143), "{out}\n{err}");
    assert!(took < Duration::from_secs(10), "{took:?}: {out}");
    assert!(out.contains("validation stopped"), "{out}");
    let run_dir = dir.join("artifacts/tiny");
    let rows = std::fs::read_to_string(run_dir.join("metrics.csv")).unwrap();
    let last = rows.lines().last().unwrap();
    assert!(last.starts_with("50,"), "{rows}");
    assert_eq!(
        last.split(',').nth(3),
        Some(""),
        "no validation loss recorded: {last}"
    );
    let (at, path) = run_checkpoints(&run_dir).unwrap().pop().unwrap();
    assert_eq!(at, 50, "{out}");
    assert_eq!(Checkpoint::read(&path).unwrap().meta.val_loss, None);
}

#[test]
fn a_run_started_under_nohup_outlives_a_hangup() {
    let _serial = one_at_a_time();
    let dir = workdir("nohup");
    let mut run = Running::start_ignoring(&dir, &[], Some(libc::SIGHUP));
    run.wait_for("saved ");
    run.signal(libc::SIGHUP);
    // Still training: two more periodic checkpoints (a stop would have saved only one).
    run.wait_for("saved ");
    run.wait_for("saved ");
    run.signal(libc::SIGTERM);
    let (status, out, err) = run.finish();
    assert_eq!(status, Some(143), "{out}\n{err}");
    assert!(
        out.contains("(SIGTERM)") && !out.contains("SIGHUP"),
        "{out}"
    );
}

/// A dashboard run: `long_run` in `dir` on a pseudo-terminal of its own (its controlling
/// terminal), stderr piped; and the terminal's master side, drained on a thread so that the
/// dashboard never blocks on a full terminal (the drain stops, and closes its copy, when `hang_up`
/// is set). Returns the child, a handle to write keys to the terminal, and `hang_up`.
fn dashboard_on_a_terminal(
    dir: &Path,
) -> (
    Child,
    std::fs::File,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors we then own.
    let opened = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0, "no pseudo-terminal");
    for fd in [master, slave] {
        // SAFETY: fcntl on a descriptor we own. Close-on-exec: a master side inherited by the
        // child would keep the terminal alive.
        assert_eq!(
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) },
            0
        );
    }
    // SAFETY: both are open descriptors returned by openpty, owned from here on.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut command = long_run(dir);
    command
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(Stdio::piped());
    // SAFETY: setsid and ioctl only, both async-signal-safe, between fork and exec: the child
    // leads a new session whose controlling terminal is the pseudo-terminal.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY as _, 0);
            Ok(())
        });
    }
    let child = command.spawn().unwrap();
    drop(slave);
    let hang_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asked = hang_up.clone();
    let master = std::fs::File::from(master);
    let keys = master.try_clone().unwrap();
    let mut drain = master;
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 1 << 16];
        while !asked.load(std::sync::atomic::Ordering::SeqCst)
            && matches!(drain.read(&mut buf), Ok(n) if n > 0)
        {}
    });
    (child, keys, hang_up)
}

/// Waits until the run folder `run_dir` has a checkpoint (two minutes at most).
fn wait_for_a_checkpoint(run_dir: &Path) {
    use std::time::Instant;
    let deadline = Instant::now() + Duration::from_secs(120);
    while run_checkpoints(run_dir).map_or(true, |c| c.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "no checkpoint under the dashboard"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (a minute at most) for `child` to exit: its status and its stderr.
fn exit_within_a_minute(mut child: Child, what: &str) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    use std::time::Instant;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run did not exit within a minute of {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

/// The dashboard on a real terminal (a pseudo-terminal this test holds) that goes away, as when
/// its window is closed: the run saves, exits with SIGHUP's status and prints no panic. (It used
/// to hang for ever: burn-train's dashboard thread spun on the dead terminal while the run waited
/// for it.)
#[test]
fn the_dashboard_run_stops_cleanly_when_its_terminal_goes_away() {
    let _serial = one_at_a_time();
    let dir = workdir("hangup");
    let (child, keys, hang_up) = dashboard_on_a_terminal(&dir);
    let run_dir = dir.join("artifacts/tiny");
    wait_for_a_checkpoint(&run_dir);
    // The terminal goes away: its master side closes.
    drop(keys);
    hang_up.store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, err) = exit_within_a_minute(child, "its terminal going away");
    assert_eq!(status.code(), Some(129), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (_, last) = run_checkpoints(&run_dir).unwrap().pop().unwrap();
    Checkpoint::read(&last).unwrap();
}

/// The dashboard's own kill choice (`q`, then `k`): burn-train panics there; karnna stops the
/// run as its stop key does instead, saving a checkpoint of the iteration it is at, with the
/// terminal put back, one line on stderr, no panic and a stop's exit code (0: no signal).
#[test]
fn the_dashboard_kill_key_stops_and_saves_without_a_panic() {
    let _serial = one_at_a_time();
    use std::io::Write;
    let dir = workdir("kill-key");
    let (child, mut keys, hang_up) = dashboard_on_a_terminal(&dir);
    let run_dir = dir.join("artifacts/tiny");
    wait_for_a_checkpoint(&run_dir);
    let first = run_checkpoints(&run_dir).unwrap()[0].0;
    keys.write_all(b"q").unwrap();
    // `k` chooses "kill" once the popup that `q` opens is up; before, the dashboard ignores it.
    let mut keys_thread = keys.try_clone().unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_keys = done.clone();
    std::thread::spawn(move || {
        while !stop_keys.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(300));
            if keys_thread.write_all(b"k").is_err() {
                break;
            }
        }
    });
    let (status, err) = exit_within_a_minute(child, "the kill key");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    hang_up.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert!(err.contains("the dashboard's kill key: stopping"), "{err}");
    let (last_iteration, last) = run_checkpoints(&run_dir).unwrap().pop().unwrap();
    assert!(
        last_iteration > first,
        "no checkpoint at the stop: {last_iteration}"
    );
    Checkpoint::read(&last).unwrap();
}

#[test]
fn a_busy_run_folder_refuses_a_second_run_and_is_freed_by_sigkill() {
    let _serial = one_at_a_time();
    let dir = workdir("lock");
    let mut first = Running::start(&dir, &[]);
    first.wait_for("saved ");
    let run_dir = dir.join("artifacts/tiny");
    let config_before = std::fs::read(run_dir.join("config.toml")).unwrap();
    let checkpoints_before = run_checkpoints(&run_dir).unwrap();

    // A second run with --fresh (which would delete the checkpoints) and another shape
    // (which would rewrite config.toml) is refused before it touches anything.
    let second = train(&dir, &["--fresh", "--lstm-size", "16"]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "process {} is training in this folder",
            first.child.id()
        )),
        "{err}"
    );
    assert_eq!(
        std::fs::read(run_dir.join("config.toml")).unwrap(),
        config_before
    );
    let now = run_checkpoints(&run_dir).unwrap();
    for c in &checkpoints_before {
        assert!(now.contains(c), "{c:?} was removed");
    }

    // Sampling from the folder while it trains is allowed.
    let sample = karnna(&dir, &["sample", "--run", "artifacts/tiny", "--len", "20"]);
    assert!(
        sample.status.success(),
        "{}",
        String::from_utf8_lossy(&sample.stderr)
    );

    // SIGKILL: no chance to clean up, yet the OS drops the lock with the process.
    first.signal(libc::SIGKILL);
    let (status, _, _) = first.finish();
    assert_eq!(status, None);
    let (last, _) = run_checkpoints(&run_dir).unwrap().pop().unwrap();
    let resumed = resume_until(&dir, last + 2);
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{err}");
}

#[test]
fn a_model_too_big_for_memory_is_refused_before_it_allocates() {
    let _serial = one_at_a_time();
    let dir = workdir("memory");
    // A run folder with a checkpoint in it...
    let first = train(&dir, &["--max-iters", "3"]);
    assert!(first.status.success());
    let run_dir = dir.join("artifacts/tiny");
    let before = run_checkpoints(&run_dir).unwrap();
    assert_eq!(before.len(), 1);
    // ...keeps it when a --fresh run is refused for its size.
    let o = train(&dir, &["--fresh", "--lstm-size", "200000"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("not enough memory for this model"), "{err}");
    assert!(err.contains("TiB") && err.contains("is available"), "{err}");
    assert_eq!(run_checkpoints(&run_dir).unwrap(), before);
    // `info` shows the estimate.
    let info = karnna(
        &dir,
        &["info", "--config", &tiny_config(), "--data", "short.txt"],
    );
    let out = String::from_utf8_lossy(&info.stdout);
    assert!(out.contains("memory:          about"), "{out}");
}
