//! What the dashboard needs around burn-train's renderer: a silent renderer for plain runs
//! ([`Quiet`]), Ctrl-C as a signal under the TUI's raw mode, a quiet exit when the terminal goes
//! away (SIGHUP), and the renderer thread moved to the idle scheduling class.

use std::io::IsTerminal;

use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};

/// The name of burn-train's dashboard thread.
const RENDERER_THREAD: &str = "train-renderer";

/// Prepares the process for the dashboard, once the learner has started it: its thread in the
/// idle class, and its panic silenced when the terminal goes away.
pub(crate) fn dashboard_started() {
    idle_priority_for(RENDERER_THREAD);
    quiet_dashboard_after_hangup();
}

/// Drops what [`burn::train::SupervisedTraining::launch`] returned, unless the terminal went
/// away under the dashboard (SIGHUP). burn-train's dashboard thread then spins polling the
/// hung-up terminal, and dropping the renderer joins that thread: the process would never
/// exit. The checkpoint is saved by then; the renderer is left undropped.
pub(crate) fn end<T>(result: T, plain: bool) {
    if !plain && !std::io::stdout().is_terminal() {
        std::mem::forget(result);
    } else {
        drop(result);
    }
}

/// The renderer when stdout is not a terminal: the strategy prints its own plain lines.
pub(crate) struct Quiet;

impl MetricsRendererTraining for Quiet {
    fn update_train(&mut self, _: MetricState) {}
    fn update_valid(&mut self, _: MetricState) {}
    fn render_train(&mut self, _: TrainingProgress, _: Vec<ProgressType>) {}
    fn render_valid(&mut self, _: TrainingProgress, _: Vec<ProgressType>) {}
    fn on_train_end(
        &mut self,
        _: Option<burn::train::LearnerSummary>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        Ok(())
    }
}

impl MetricsRendererEvaluation for Quiet {
    fn update_test(&mut self, _: EvaluationName, _: MetricState) {}
    fn render_test(&mut self, _: EvaluationProgress, _: Vec<ProgressType>) {}
}

impl MetricsRenderer for Quiet {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _: burn::train::metric::MetricDefinition) {}
}

/// Makes Ctrl-C raise SIGINT again while the dashboard runs: the TUI puts the terminal in raw
/// mode, which turns Ctrl-C into a key press it ignores. With the signal back, Ctrl-C reaches
/// the handler that asks the loop to save a checkpoint and stop cleanly.
#[cfg(unix)]
pub(crate) fn ctrl_c_as_signal() {
    // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed, then filled, termios struct.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(libc::STDIN_FILENO, &mut t) == 0 && t.c_lflag & libc::ISIG == 0 {
            t.c_lflag |= libc::ISIG;
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t);
        }
    }
}

#[cfg(not(unix))]
pub(crate) fn ctrl_c_as_signal() {}

/// Silences the panic of burn-train's dashboard thread ("train-renderer") once the terminal is
/// gone (SIGHUP): its renderer unwraps the terminal reset, which a hung-up terminal refuses, and
/// the panic hooks burn-train installed would print a panic and a backtrace to stderr. The stop
/// itself is clean (the checkpoint is saved; see [`end`]). Installed once, after burn-train's
/// own hooks (its experiment logger's is in place when the strategy runs); every other panic
/// goes on to them.
fn quiet_dashboard_after_hangup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let next = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let dashboard = std::thread::current().name() == Some(RENDERER_THREAD);
            let terminal_gone = !std::io::stdout().is_terminal();
            if !(dashboard && terminal_gone) {
                next(info);
            }
        }));
    });
}

/// Moves this process's threads named `name` to the idle scheduling class.
///
/// burn-train's dashboard thread ("train-renderer") polls its event channel in a loop without
/// sleeping between its 10 Hz redraws, so it keeps a core busy and slows training on a machine
/// with few cores. In the idle class it runs on what the training leaves, which is plenty for
/// its redraws and key presses.
#[cfg(target_os = "linux")]
fn idle_priority_for(name: &str) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        if comm.trim_end() == name {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: sets the policy of one of this process's threads; a failure changes nothing.
            unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) };
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn idle_priority_for(_: &str) {}
