//! What the integration tests of the `vffn` binary share: scratch directories, running the
//! binary, and the checks made of every command that must succeed or fail.

// Each test binary uses the helpers it needs.
#![allow(dead_code)]

use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory for one test. It is removed when the test ends, unless the test
/// panicked: a failed test leaves it to look at.
pub struct Scratch(PathBuf);

impl Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            fs::remove_dir_all(&self.0).unwrap();
        }
    }
}

/// A fresh scratch directory, named after the test binary and `name`.
pub fn scratch(name: &str) -> Scratch {
    let binary = env!("CARGO_CRATE_NAME");
    let dir = std::env::temp_dir().join(format!("vffn-{binary}-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// Writes `text` to `dir/name` and returns that path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

/// A path as a command-line argument.
pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The `vffn` binary under test.
pub fn vffn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vffn"))
}

/// Sends the signal `name` (`-INT`, `-TERM`) to the process `pid`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").args([name, &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// Runs `vffn args..` to the end.
pub fn run(args: &[&str]) -> Output {
    vffn().args(args).output().unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs and expects success.
pub fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(out.status.success(), "vffn {args:?} failed: {}", stderr(&out));
    out
}

/// A scratch directory `name` with `config` in `dir/config.toml`, and the run directory to
/// train into: `(dir, config file, dir/run)`.
pub fn setup(name: &str, config: &str) -> (Scratch, PathBuf, PathBuf) {
    let dir = scratch(name);
    let file = write(&dir, "config.toml", config);
    let run = dir.join("run");
    (dir, file, run)
}

/// `vffn train --config cfg --out run extra..`, expected to succeed.
pub fn train_ok(cfg: &Path, run: &Path, extra: &[&str]) -> Output {
    ok(&[&["train", "--config", path(cfg), "--out", path(run)][..], extra].concat())
}

/// Runs and expects exit 1, no panic, and a last stderr line `error: ...` containing `needle`;
/// returns that line.
pub fn fails_with(args: &[&str], needle: &str) -> String {
    error_line(args, &run(args), needle)
}

/// Checks what [`fails_with`] checks of the output `out` of `vffn args..`.
pub fn error_line(args: &[&str], out: &Output, needle: &str) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "vffn {args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let last = err.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("error: "), "vffn {args:?}: {err}");
    assert!(last.contains(needle), "vffn {args:?}: expected `{needle}` in: {err}");
    last
}

/// Stdout of a command that printed one JSON value.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The numbers `keys` of a JSON object (each must be one).
pub fn numbers<const N: usize>(value: &serde_json::Value, keys: [&str; N]) -> [f64; N] {
    keys.map(|key| value[key].as_f64().unwrap_or_else(|| panic!("`{key}` is a number: {value}")))
}

/// The rows of `run/metrics.jsonl`, each as `T`.
pub fn metrics<T: serde::de::DeserializeOwned>(run: &Path) -> Vec<T> {
    fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// `run/ckpt/state.json`.
pub fn state(run: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(run.join("ckpt/state.json")).unwrap()).unwrap()
}
