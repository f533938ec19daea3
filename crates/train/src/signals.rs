//! Stopping a run cleanly on a signal: SIGINT (Ctrl-C), SIGTERM (`kill`, `timeout`, a
//! scheduler's preemption, a container stop) and SIGHUP (the terminal went away) each ask the
//! training loop to finish its iteration, save a checkpoint and stop. A signal that arrives while
//! a checkpoint is being written only repeats the request: the process is never killed in the
//! middle of a save (and saves are atomic besides, so even SIGKILL leaves every earlier
//! checkpoint whole). A signal the process was started with ignored (SIGHUP under `nohup`) is
//! left ignored.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use burn::train::Interrupter;

/// While alive, turns SIGINT, SIGTERM and SIGHUP into a stop request on an [`Interrupter`].
pub struct StopOnSignal {
    received: Arc<AtomicI32>,
    #[cfg(unix)]
    handle: signal_hook::iterator::Handle,
    #[cfg(unix)]
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The name of a stop signal, for messages.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

impl StopOnSignal {
    /// Starts listening. The first signal received is remembered ([`StopOnSignal::received`]).
    #[cfg(unix)]
    pub fn install(interrupter: Interrupter) -> std::io::Result<Self> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        // A signal ignored when the process started stays ignored: `nohup` ignores SIGHUP so
        // that a run outlives its terminal, and a shell ignores SIGINT for background jobs.
        let wanted = [SIGINT, SIGTERM, SIGHUP]
            .into_iter()
            .filter(|&s| !ignored(s));
        let mut signals = signal_hook::iterator::Signals::new(wanted)?;
        let handle = signals.handle();
        let received = Arc::new(AtomicI32::new(0));
        let first = received.clone();
        let thread = std::thread::Builder::new()
            .name("karnna-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    let _ = first.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
                    interrupter.stop(Some(&format!("interrupted ({})", signal_name(signal))));
                }
            })?;
        Ok(Self {
            received,
            handle,
            thread: Some(thread),
        })
    }

    /// Ctrl-C only, where there are no Unix signals.
    #[cfg(not(unix))]
    pub fn install(interrupter: Interrupter) -> std::io::Result<Self> {
        let received = Arc::new(AtomicI32::new(0));
        let first = received.clone();
        let _ = ctrlc::set_handler(move || {
            first.store(2, Ordering::SeqCst);
            interrupter.stop(Some("interrupted (Ctrl-C)"));
        });
        Ok(Self { received })
    }

    /// The first signal received, if any (its number: 2 for SIGINT, 15 for SIGTERM, 1 for
    /// SIGHUP).
    pub fn received(&self) -> Option<i32> {
        match self.received.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}

/// Whether `signal` is ignored in this process (`SIG_IGN`), as a parent such as `nohup` can
/// leave it.
#[cfg(unix)]
fn ignored(signal: i32) -> bool {
    // SAFETY: a query only (no new action), into a zeroed struct of our own.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

#[cfg(unix)]
impl Drop for StopOnSignal {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
