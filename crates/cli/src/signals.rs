//! SIGINT and SIGTERM during training: the first one asks the run to stop after the current
//! step (it then saves and exits: 0 after SIGINT, 143 after SIGTERM); a second one of either
//! kind exits at once.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;

/// Exit status of a process killed by SIGINT / SIGTERM, as shells report it (128 + signal).
const SIGINT_STATUS: i32 = 130;
const SIGTERM_STATUS: i32 = 143;

/// The exit code `main` uses after a successful command (set when SIGTERM stopped a run).
static EXIT_CODE: AtomicI32 = AtomicI32::new(0);

/// Which stop request arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Interrupt,
    Terminate,
}

/// The installed handlers' flags.
pub struct Signals {
    interrupt: Arc<AtomicBool>,
    terminate: Arc<AtomicBool>,
}

impl Signals {
    /// Installs the handlers for the rest of the process.
    pub fn install() -> Result<Self> {
        let any = Arc::new(AtomicBool::new(false));
        let interrupt = Arc::new(AtomicBool::new(false));
        let terminate = Arc::new(AtomicBool::new(false));
        for (signal, status, own) in
            [(SIGINT, SIGINT_STATUS, &interrupt), (SIGTERM, SIGTERM_STATUS, &terminate)]
        {
            // Registered first, so it sees the flag as it was before this signal: armed only
            // by an earlier one.
            flag::register_conditional_shutdown(signal, status, Arc::clone(&any))
                .and_then(|_| flag::register(signal, Arc::clone(&any)))
                .and_then(|_| flag::register(signal, Arc::clone(own)))
                .context("cannot install the signal handlers")?;
        }
        Ok(Signals { interrupt, terminate })
    }

    /// The stop request received so far, if any (SIGTERM wins if both came).
    pub fn received(&self) -> Option<Stop> {
        if self.terminate.load(Ordering::SeqCst) {
            Some(Stop::Terminate)
        } else if self.interrupt.load(Ordering::SeqCst) {
            Some(Stop::Interrupt)
        } else {
            None
        }
    }
}

/// Records that the command ends because of `stop` (after saving): SIGTERM exits with 143.
pub fn finish_after(stop: Stop) {
    if stop == Stop::Terminate {
        EXIT_CODE.store(SIGTERM_STATUS, Ordering::SeqCst);
    }
}

/// The exit code of a command that returned successfully.
pub fn exit_code() -> i32 {
    EXIT_CODE.load(Ordering::SeqCst)
}
