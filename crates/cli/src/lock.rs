//! One process per run directory: `DIR/lock`, held with an advisory `flock` for as long as the
//! run lives. The kernel drops the lock when the process ends, however it ends (a `kill -9`
//! leaves the file behind but not the lock). The file holds the holder's pid, for the message.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use fs4::{FileExt, TryLockError};

/// The lock file inside a run directory.
pub const LOCK_FILE: &str = "lock";

/// The lock of a run directory, released on drop.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Takes the lock of `run_dir` (which must exist), or says which process holds it.
pub fn lock_run_dir(run_dir: &Path) -> Result<RunLock> {
    let path = run_dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file `{}`", path.display()))?;
    match FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let holder = match file.read_to_string(&mut text) {
                Ok(_) if !text.trim().is_empty() => format!("pid {}", text.trim()),
                _ => "pid unknown".to_string(),
            };
            bail!(
                "`{}` is in use by another vffn process ({holder}); wait for it to finish or \
                 stop it first",
                run_dir.display()
            );
        }
        Err(TryLockError::Error(err)) => {
            return Err(err).with_context(|| format!("cannot lock `{}`", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("cannot write the lock file `{}`", path.display()))?;
    Ok(RunLock { _file: file })
}
