//! Output that never panics: `println!`/`eprintln!` panic when stdout or stderr is a closed
//! pipe or a full disk, which would kill a training run before it saves. These macros write
//! through [`stdout_fmt`] and [`stderr_fmt`] instead: a failed stdout write is recorded (the
//! command then ends with an error, see [`stdout_failed`]); a failed stderr write is ignored,
//! since there is nowhere left to report it.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_FAILED: AtomicBool = AtomicBool::new(false);

/// Writes and flushes to stdout; a failure is remembered, not raised.
pub fn stdout_fmt(args: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    if out.write_fmt(args).and_then(|()| out.flush()).is_err() {
        STDOUT_FAILED.store(true, Ordering::SeqCst);
    }
}

/// Writes to stderr, ignoring failures.
pub fn stderr_fmt(args: fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// True once a write to stdout has failed.
pub fn stdout_failed() -> bool {
    STDOUT_FAILED.load(Ordering::SeqCst)
}

/// `println!` that does not panic.
macro_rules! outln {
    () => { $crate::out::stdout_fmt(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::stdout_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` that does not panic.
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::stdout_fmt(format_args!($($arg)*)) };
}

/// `eprintln!` that does not panic.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::out::stderr_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprint!` that does not panic.
macro_rules! err {
    ($($arg:tt)*) => { $crate::out::stderr_fmt(format_args!($($arg)*)) };
}
