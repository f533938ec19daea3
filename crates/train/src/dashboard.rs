//! What the dashboard needs around burn-train's renderer: a silent renderer for plain runs
//! ([`Quiet`]), Ctrl-C as a signal under the TUI's raw mode, a quiet exit when the terminal goes
//! away (SIGHUP), the dashboard's kill key turned into a stop ([`kill_is_a_stop`]), and the
//! renderer thread moved to the idle scheduling class.

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

/// The message of burn-train's panics for its dashboard's kill key (`q`, then `k`): the
/// dashboard thread panics with it at once, and the training thread at its next event.
const KILL_MESSAGE: &str = "Killing training from user input.";

/// Set when the dashboard's kill key was pressed (by the panic hook, on its first kill panic):
/// burn-train's event processor has its own thread, which the kill's panic ends, so from then on
/// no event is handed to it (a send to the dead thread would panic again).
static KILLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the dashboard's kill key was pressed in this process.
pub(crate) fn killed() -> bool {
    KILLED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Whether a panic's payload is [`KILL_MESSAGE`].
fn is_kill(payload: &(dyn std::any::Any + Send)) -> bool {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    text == Some(KILL_MESSAGE)
}

/// Runs `f`, a call that hands an event to burn-train's dashboard, and turns the dashboard's
/// kill key into a stop: burn-train panics there (its "kill" unwinds the training loop, losing
/// everything since the last checkpoint, and prints a backtrace); here `interrupter` is asked
/// to stop instead, so the run saves a checkpoint of the iteration it is at, exactly as the
/// dashboard's own stop key (`q`, then `s`) or Ctrl-C do, and ends with a stop's exit code.
/// Losing the work was never what a user pressing a key in a dashboard wanted. After a kill, `f`
/// is not run (the dashboard is gone); a panic of `f` after one is part of it; any other panic
/// goes on.
pub(crate) fn kill_is_a_stop(interrupter: &burn::train::Interrupter, f: impl FnOnce()) {
    use std::sync::atomic::Ordering;
    if !KILLED.load(Ordering::SeqCst) {
        let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) else {
            return;
        };
        if !is_kill(payload.as_ref()) && !KILLED.load(Ordering::SeqCst) {
            std::panic::resume_unwind(payload);
        }
    }
    interrupter.stop(Some("the dashboard's kill key"));
}

/// Silences the panic of burn-train's dashboard thread ("train-renderer") once the terminal is
/// gone (SIGHUP): its renderer unwraps the terminal reset, which a hung-up terminal refuses, and
/// the panic hooks burn-train installed would print a panic and a backtrace to stderr. The stop
/// itself is clean (the checkpoint is saved; see [`end`]). Installed once, after burn-train's
/// own hooks (its experiment logger's is in place when the strategy runs); every other panic
/// goes on to them.
///
/// Also the kill key's panics ([`KILL_MESSAGE`]): the first puts the terminal back (burn-train's
/// hook would, and then print the panic) and says in one line that the run stops and saves; the
/// others, and burn-train's own panics after a kill (its event processor's thread is gone), are
/// silent: [`kill_is_a_stop`] and the run's `launch` catch them.
fn quiet_dashboard_after_hangup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let next = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let dashboard = std::thread::current().name() == Some(RENDERER_THREAD);
            let terminal_gone = !std::io::stdout().is_terminal();
            if is_kill(info.payload()) {
                let first = !KILLED.swap(true, std::sync::atomic::Ordering::SeqCst);
                if first {
                    let _ = crossterm::terminal::disable_raw_mode();
                    let _ = crossterm::execute!(
                        std::io::stdout(),
                        crossterm::terminal::LeaveAlternateScreen
                    );
                    eprintln!("the dashboard's kill key: stopping, saving a checkpoint first");
                }
            } else if killed()
                && info
                    .location()
                    .is_some_and(|l| l.file().contains("burn-train"))
            {
                // The kill's aftermath inside burn-train (its event processor's thread is gone):
                // `launch` catches it, the checkpoint is saved by then.
            } else if !(dashboard && terminal_gone) {
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
