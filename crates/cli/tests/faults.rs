//! Faults and bad inputs a user can cause (issue 16), each through the binary: nothing written
//! is lost, nothing wrong is accepted silently, every command ends cleanly.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use vffn_model::{load_model, read_tensors, save_model, TensorRef};

/// A model small enough that 30 steps take a fraction of a second.
const TINY: &str = "
[model]
d_model = 32
n_heads = 2
n_layers = 1
hidden = 64
seq_len = 32
batch_size = 4
[train]
steps = 30
warmup_steps = 5
eval_every = 10
eval_batches = 2
log_every = 1
";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vffn-faults-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn vffn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vffn"))
}

fn run(args: &[&str]) -> Output {
    vffn().args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(out.status.success(), "vffn {args:?}: {}", stderr(&out));
    out
}

/// Exit 1, no panic, and the last stderr line is `error: ...` containing `needle`.
fn fails_with(args: &[&str], needle: &str) -> String {
    let out = run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "vffn {args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let last = err.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("error: "), "vffn {args:?}: {err}");
    assert!(last.contains(needle), "vffn {args:?}: expected `{needle}` in: {err}");
    last
}

/// Writes the tiny config into `dir` (with `extra` lines appended to `[train]`).
fn config(dir: &Path, extra: &str) -> PathBuf {
    let file = dir.join("tiny.toml");
    fs::write(&file, format!("{TINY}{extra}")).unwrap();
    file
}

/// Trains the tiny config into `dir/run` and returns the run directory.
fn trained(dir: &Path, extra: &[&str]) -> PathBuf {
    let cfg = config(dir, "");
    let out = dir.join("run");
    let mut args = vec!["train", "--config", path(&cfg), "--out", path(&out)];
    args.extend(["--sample-bytes", "0", "--threads", "1"]);
    args.extend(extra);
    ok(&args);
    out
}

fn state(run: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(run.join("ckpt/state.json")).unwrap()).unwrap()
}

fn metrics_steps(run: &Path) -> Vec<u64> {
    fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect()
}

/// Rewrites the model file of `run` after `edit` changed its tensors (valid checksums).
fn rewrite_model(run: &Path, edit: impl FnOnce(&mut BTreeMap<String, vffn_model::TensorData>)) {
    let file = run.join("ckpt/model.safetensors");
    let model = load_model(&fs::read(&file).unwrap()).unwrap();
    let mut tensors = model.tensors.clone();
    edit(&mut tensors);
    let bytes = save_model(&model.config, model.temperature, &model.extra, &refs(&tensors));
    fs::write(file, bytes.unwrap()).unwrap();
}

fn refs(tensors: &BTreeMap<String, vffn_model::TensorData>) -> Vec<TensorRef<'_>> {
    tensors.iter().map(|(name, t)| TensorRef { name, shape: &t.shape, data: &t.data }).collect()
}

/// Rewrites `state.json` of `run` after `edit` changed it.
fn edit_state(run: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut json = state(run);
    edit(&mut json);
    fs::write(run.join("ckpt/state.json"), json.to_string()).unwrap();
}

/// Reads stderr lines of a child until one contains `needle` (panics after 60 s).
fn wait_for_line(child: &mut Child, needle: &str) -> BufReader<std::process::ChildStderr> {
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let started = Instant::now();
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stderr ended before `{needle}`");
        if line.contains(needle) {
            return reader;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no `{needle}` line");
    }
}

/// Starts `vffn` with stderr piped (for [`wait_for_line`]) and stdout discarded.
fn spawn(args: &[&str]) -> Child {
    vffn().args(args).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap()
}

/// `vffn train --config cfg --out run --threads 1 extra..`, as [`spawn`] starts it.
fn train_child(cfg: &Path, run: &Path, extra: &[&str]) -> Child {
    let mut args = vec!["train", "--config", path(cfg), "--out", path(run), "--threads", "1"];
    args.extend(extra);
    spawn(&args)
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args([name, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

fn rest(mut reader: BufReader<std::process::ChildStderr>) -> String {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut reader, &mut text).unwrap();
    text
}

// 1. Loss history.
#[test]
fn a_malformed_metrics_row_stops_the_resume_and_never_wipes_the_history() {
    let dir = scratch("metrics");
    let run = trained(&dir, &["--stop-after", "20"]);
    let file = run.join("metrics.jsonl");
    let mut bytes = fs::read(&file).unwrap();
    bytes[100] = 0xff;
    fs::write(&file, &bytes).unwrap();
    fails_with(&["train", "--resume", "--out", path(&run), "--sample-bytes", "0"], "line 1");
    assert_eq!(fs::read(&file).unwrap(), bytes, "the file is left exactly as it was");
    // A file that cannot be read is an error, not an empty history.
    fs::remove_file(&file).unwrap();
    fs::create_dir(&file).unwrap();
    fails_with(&["train", "--resume", "--out", path(&run), "--sample-bytes", "0"], "metrics");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_keeps_the_rows_up_to_the_checkpoint_and_drops_a_torn_last_line() {
    let dir = scratch("torn");
    let run = trained(&dir, &["--stop-after", "20"]);
    let file = run.join("metrics.jsonl");
    let mut text = fs::read_to_string(&file).unwrap();
    // Rows past the checkpoint (a run killed after logging them) are dropped.
    text.push_str("{\"step\":21,\"loss\":1.0,\"ce\":1.0,\"balance\":0.0,\"lr\":0.001,");
    text.push_str("\"temperature\":1.0,\"tokens_per_s\":1.0,\"grad_norm\":1.0}\n");
    fs::write(&file, text).unwrap();
    ok(&["train", "--resume", "--out", path(&run), "--sample-bytes", "0", "--stop-after", "25"]);
    assert_eq!(metrics_steps(&run), (1..=25).collect::<Vec<_>>());
    let loss_21 = fs::read_to_string(&file).unwrap().lines().nth(20).unwrap().to_string();
    assert!(!loss_21.contains("\"loss\":1.0,"), "the stale row 21 is gone: {loss_21}");
    // A last line cut short by a crash is dropped, with a note.
    let mut text = fs::read_to_string(&file).unwrap();
    text.push_str("{\"step\":26,\"lo");
    fs::write(&file, text).unwrap();
    let out = ok(&["train", "--resume", "--out", path(&run), "--sample-bytes", "0"]);
    assert!(stderr(&out).contains("incomplete last line"), "{}", stderr(&out));
    assert_eq!(metrics_steps(&run), (1..=30).collect::<Vec<_>>());
    fs::remove_dir_all(&dir).unwrap();
}

// 2. Output errors.
#[test]
fn a_closed_stderr_neither_panics_nor_loses_the_checkpoint() {
    let dir = scratch("stderr");
    let cfg = config(&dir, "");
    let out = dir.join("run");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = vffn()
        .args(["train", "--config", path(&cfg), "--out", path(&out), "--steps", "3"])
        .stdout(Stdio::null())
        .stderr(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(state(&out)["step"].as_u64(), Some(3));
    // A closed stdout ends eval with exit 1, not a panic.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let result = vffn()
        .args(["eval", "--checkpoint", path(&out), "--json"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(1), "{}", stderr(&result));
    assert!(stderr(&result).starts_with("error: cannot write to stdout"), "{}", stderr(&result));
    fs::remove_dir_all(&dir).unwrap();
}

// 3. The checkpoint after a diverging update.
#[test]
fn a_diverged_update_never_reaches_a_checkpoint() {
    let dir = scratch("diverge");
    let cfg = config(&dir, "lr = 1e30\nweight_decay = 0.0\n");
    let run = dir.join("run");
    let args = ["train", "--config", path(&cfg), "--out", path(&run), "--save-every", "1"];
    let err = fails_with(&[&args[..], &["--sample-bytes", "0"]].concat(), "training stopped");
    if run.join("ckpt").exists() {
        // Whatever was kept evaluates to a finite loss and resumes.
        let out = ok(&["eval", "--checkpoint", path(&run), "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(json["loss"].as_f64().is_some_and(f64::is_finite), "{json}");
        assert!(err.contains("the last good checkpoint"), "{err}");
    } else {
        assert!(err.contains("no checkpoint was written yet"), "{err}");
    }
    fs::remove_dir_all(&dir).unwrap();
}

// 4. Signals.
#[test]
fn sigterm_finishes_the_step_saves_and_exits_143() {
    let dir = scratch("sigterm");
    let cfg = config(&dir, "");
    let run = dir.join("run");
    let mut child = train_child(&cfg, &run, &["--steps", "1000000"]);
    let reader = wait_for_line(&mut child, "step 10:");
    signal(&child, "-TERM");
    let status = child.wait().unwrap();
    let text = rest(reader);
    assert_eq!(status.code(), Some(143), "{text}");
    assert!(text.contains("terminated (SIGTERM) at step"), "{text}");
    let step = state(&run)["step"].as_u64().unwrap();
    assert!(step >= 10, "{step}");
    assert_eq!(metrics_steps(&run).last(), Some(&step));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctrl_c_during_the_final_sample_ends_the_command() {
    let dir = scratch("sample");
    let cfg = config(&dir, "");
    let run = dir.join("run");
    let mut child = train_child(&cfg, &run, &["--steps", "3", "--sample-bytes", "100000000"]);
    let reader = wait_for_line(&mut child, "done:");
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, "-INT");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("the sample went on after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().unwrap();
    let text = rest(reader);
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("sample interrupted"), "{text}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctrl_c_during_an_evaluation_stops_it_and_saves_the_step() {
    let dir = scratch("eval-int");
    // A long validation split (whole-split evaluation after every step).
    let data = dir.join("data.txt");
    let mut state_word = 7u64;
    let text: Vec<u8> = (0..6_000_000)
        .map(|_| {
            state_word = state_word.wrapping_mul(6364136223846793005).wrapping_add(1);
            b"abcdefgh \n"[(state_word >> 60) as usize % 10]
        })
        .collect();
    fs::write(&data, text).unwrap();
    let cfg = dir.join("tiny.toml");
    fs::write(
        &cfg,
        TINY.replace("eval_every = 10", "eval_every = 1")
            .replace("eval_batches = 2", "eval_batches = 0"),
    )
    .unwrap();
    let run = dir.join("run");
    let mut child = train_child(&cfg, &run, &["--data", path(&data), "--sample-bytes", "0"]);
    let reader = wait_for_line(&mut child, "training ");
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "-INT");
    let status = child.wait().unwrap();
    let text = rest(reader);
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("interrupted at step 1/"), "{text}");
    // The evaluation was abandoned: the step-1 row has no validation loss.
    let row: serde_json::Value =
        serde_json::from_str(fs::read_to_string(run.join("metrics.jsonl")).unwrap().trim())
            .unwrap();
    assert_eq!(row["step"].as_u64(), Some(1));
    assert!(row.get("val_loss").is_none(), "{row}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_ctrl_c_exits_at_once() {
    let dir = scratch("twice");
    // Steps of about a second: both signals arrive during the first one.
    let cfg = dir.join("slow.toml");
    let slow = "[model]\nd_model = 128\nn_heads = 4\nn_layers = 2\nhidden = 512\nseq_len = 256\n\
                batch_size = 16\n[train]\nsteps = 5\n";
    fs::write(&cfg, slow).unwrap();
    let run = dir.join("run");
    let mut child = train_child(&cfg, &run, &[]);
    let reader = wait_for_line(&mut child, "training ");
    std::thread::sleep(Duration::from_millis(50));
    signal(&child, "-INT");
    std::thread::sleep(Duration::from_millis(30));
    signal(&child, "-INT");
    let status = child.wait().unwrap();
    let text = rest(reader);
    assert_eq!(status.code(), Some(130), "the second Ctrl-C exits at once: {text}");
    assert!(!run.join("ckpt").exists(), "it did not wait for the step to save: {text}");
    fs::remove_dir_all(&dir).unwrap();
}

// 5. Non-finite or corrupted weights.
#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let dir = scratch("nonfinite");
    let run = trained(&dir, &["--steps", "3"]);
    rewrite_model(&run, |tensors| {
        tensors.get_mut("transformer.wte.weight").unwrap().data[5] = f32::NAN;
    });
    let ckpt = path(&run);
    for args in [
        &["eval", "--checkpoint", ckpt][..],
        &["generate", "--checkpoint", ckpt, "--prompt", "a", "--max-new", "4"],
        &["inspect", "--checkpoint", ckpt, "--batches", "1"],
    ] {
        let err = fails_with(args, "transformer.wte.weight");
        assert!(err.contains("not finite"), "{err}");
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_flipped_bit_in_tensor_data_is_refused_naming_the_tensor() {
    let dir = scratch("bitflip");
    let run = trained(&dir, &["--steps", "3"]);
    let file = run.join("ckpt/model.safetensors");
    let mut bytes = fs::read(&file).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x04;
    fs::write(&file, bytes).unwrap();
    let err = fails_with(&["eval", "--checkpoint", path(&run)], "does not match its checksum");
    assert!(err.contains("tensor `transformer."), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

// 6. --resume and flags.
#[test]
fn resume_applies_changed_train_values_and_refuses_another_architecture() {
    let dir = scratch("resume-config");
    let run = trained(&dir, &["--stop-after", "10"]);
    // A changed [train] value is applied, with a note.
    let other = dir.join("other.toml");
    fs::write(&other, TINY.replace("log_every = 1", "log_every = 1\nlr = 0.0005")).unwrap();
    let args = ["train", "--resume", "--out", path(&run), "--config", path(&other)];
    let out = ok(&[&args[..], &["--stop-after", "12", "--sample-bytes", "0"]].concat());
    assert!(stderr(&out).contains("note: train.lr = 0.0005"), "{}", stderr(&out));
    assert_eq!(state(&run)["train"]["lr"].as_f64().map(|lr| lr as f32), Some(0.0005));
    // --block laid over the checkpoint's own config (a versatile run) is the same model.
    let args = ["train", "--resume", "--out", path(&run), "--block", "versatile"];
    ok(&[&args[..], &["--stop-after", "14", "--sample-bytes", "0"]].concat());
    // Another architecture is refused naming the key.
    let wider = dir.join("wider.toml");
    fs::write(&wider, TINY.replace("d_model = 32", "d_model = 48")).unwrap();
    let args = ["train", "--resume", "--out", path(&run), "--config", path(&wider)];
    fails_with(&args, "d_model");
    fails_with(&["train", "--resume", "--out", path(&run), "--block", "dense"], "block");
    fs::remove_dir_all(&dir).unwrap();
}

// 7. --out RUN/ckpt.
#[test]
fn out_naming_a_checkpoint_directory_is_refused() {
    let dir = scratch("nested");
    let run = trained(&dir, &["--steps", "3"]);
    let inner = run.join("ckpt");
    fails_with(&["train", "--resume", "--out", path(&inner)], "give its run directory");
    let cfg = config(&dir, "");
    fails_with(&["train", "--config", path(&cfg), "--out", path(&inner)], "checkpoint directory");
    assert!(!inner.join("ckpt").exists(), "no nested checkpoint");
    fs::remove_dir_all(&dir).unwrap();
}

// 8. Command-line errors.
#[test]
fn command_line_errors_are_printed_whole() {
    let out = run(&["eval"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--checkpoint <CHECKPOINT>") && err.contains("Usage:"), "{err}");
    let out = run(&["train", "--preset", "huge"]);
    assert!(stderr(&out).contains("[possible values: tiny, small]"), "{}", stderr(&out));
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("train") && stderr(&out).contains("generate"), "{out:?}");
}

// 9. Bench sizes.
#[test]
fn oversized_bench_sizes_are_refused_before_allocating() {
    let cases: [&[&str]; 4] = [
        &["bench", "gemm", "--m", "100000", "--k", "100000", "--n", "1"],
        &["bench", "gemm", "--m", "4611686018427387904", "--k", "4", "--n", "1"],
        &["bench", "ffn", "--tokens", "10000000", "--d", "1024"],
        &["bench", "generate", "--tokens", "1000000000000"],
    ];
    for args in cases {
        fails_with(args, "--");
    }
}

// 10. Each cause once.
#[test]
fn checkpoint_errors_say_their_cause_once() {
    let dir = scratch("cause");
    let run = trained(&dir, &["--steps", "3"]);
    let file = run.join("ckpt/model.safetensors");
    let mut bytes = fs::read(&file).unwrap();
    bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    fs::write(&file, &bytes).unwrap();
    let err = fails_with(&["eval", "--checkpoint", path(&run)], "not a valid safetensors file");
    let cause = err.rsplit(": ").next().unwrap().to_string();
    assert_eq!(err.matches(cause.as_str()).count(), 1, "{err}");
    // A config with a bad value: `model.d_model` named once.
    let tensors = [TensorRef { name: "w", shape: &[1], data: &[1.0] }];
    let mut metadata = BTreeMap::from([("temperature".to_string(), "1.0".to_string())]);
    let bad = vffn_model::Config::tiny().to_json().replacen("\"d_model\":128", "\"d_model\":0", 1);
    assert!(bad.contains("\"d_model\":0"), "{bad}");
    metadata.insert("config".into(), bad);
    fs::write(&file, vffn_model::write_tensors(&tensors, &metadata).unwrap()).unwrap();
    let err = fails_with(&["eval", "--checkpoint", path(&run)], "d_model");
    assert_eq!(err.matches("d_model").count(), 1, "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

// 11. One process per run directory.
#[test]
fn a_second_process_on_a_run_directory_is_refused_naming_the_holder() {
    let dir = scratch("lock");
    let cfg = config(&dir, "");
    let run = dir.join("run");
    let mut child = train_child(&cfg, &run, &["--steps", "1000000", "--sample-bytes", "0"]);
    let reader = wait_for_line(&mut child, "step 10:");
    let holder = format!("pid {}", child.id());
    fails_with(&["train", "--resume", "--out", path(&run)], &holder);
    signal(&child, "-INT");
    assert!(child.wait().unwrap().success(), "{}", rest(reader));
    let steps = metrics_steps(&run);
    assert_eq!(steps, (1..=*steps.last().unwrap()).collect::<Vec<_>>(), "no duplicate rows");
    fs::remove_dir_all(&dir).unwrap();
}

// 12. Smaller ones.
#[test]
fn a_negative_adam_second_moment_is_refused() {
    let dir = scratch("adam");
    let run = trained(&dir, &["--steps", "3"]);
    let file = run.join("ckpt/optimizer.safetensors");
    let optimizer = read_tensors(&fs::read(&file).unwrap()).unwrap();
    let mut tensors = optimizer.tensors.clone();
    tensors.get_mut("transformer.wte.weight.adam_v").unwrap().data[2] = -1.0;
    fs::write(&file, vffn_model::write_tensors(&refs(&tensors), &optimizer.metadata).unwrap())
        .unwrap();
    let err = fails_with(&["train", "--resume", "--out", path(&run)], "negative");
    assert!(err.contains("transformer.wte.weight.adam_v"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_all_zero_rng_state_is_refused() {
    let dir = scratch("rng");
    let run = trained(&dir, &["--steps", "3"]);
    edit_state(&run, |json| json["model_rng"] = serde_json::json!(["0", "0", "0", "0"]));
    fails_with(&["train", "--resume", "--out", path(&run), "--steps", "5"], "model_rng");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn forward_refuses_to_overwrite_a_checkpoint_file() {
    let dir = scratch("forward");
    let run = trained(&dir, &["--steps", "3"]);
    let model = run.join("ckpt/model.safetensors");
    let before = fs::read(&model).unwrap();
    let args = ["forward", "--checkpoint", path(&run), "--text", "ab", "--out", path(&model)];
    fails_with(&args, "would overwrite");
    assert_eq!(fs::read(&model).unwrap(), before);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn stop_after_zero_runs_no_step() {
    let dir = scratch("stop0");
    let run = trained(&dir, &["--stop-after", "0"]);
    assert_eq!(state(&run)["step"].as_u64(), Some(0));
    assert!(metrics_steps(&run).is_empty());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn out_naming_a_regular_file_is_a_clear_error() {
    let dir = scratch("outfile");
    let file = dir.join("file");
    fs::write(&file, "x").unwrap();
    let cfg = config(&dir, "");
    fails_with(&["train", "--config", path(&cfg), "--out", path(&file)], "is a file, not a run");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tokens_seen_saturates_instead_of_wrapping() {
    let dir = scratch("tokens");
    let run = trained(&dir, &["--stop-after", "3"]);
    edit_state(&run, |json| json["tokens_seen"] = serde_json::json!(u64::MAX - 1));
    ok(&["train", "--resume", "--out", path(&run), "--stop-after", "4", "--sample-bytes", "0"]);
    assert_eq!(state(&run)["tokens_seen"].as_u64(), Some(u64::MAX));
    fs::remove_dir_all(&dir).unwrap();
}

/// The losses and validation losses of a metrics file, as bits, by step.
fn loss_bits(run: &Path) -> Vec<(u64, u32, Option<u32>)> {
    fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let bits = |v: &serde_json::Value| v.as_f64().map(|x| (x as f32).to_bits());
            (row["step"].as_u64().unwrap(), bits(&row["loss"]).unwrap(), bits(&row["val_loss"]))
        })
        .collect()
}

#[test]
fn sigkill_at_ten_random_moments_then_resume_matches_an_uninterrupted_run() {
    let dir = scratch("sigkill");
    let cfg = config(&dir, "");
    let common = ["--steps", "100", "--save-every", "4", "--threads", "1", "--sample-bytes", "0"];
    let whole = dir.join("whole");
    ok(&[&["train", "--config", path(&cfg), "--out", path(&whole)][..], &common].concat());
    let parts = dir.join("parts");
    // A fixed generator: the same "random" moments on every run of the test.
    let mut seed = 0x5EED_u64;
    let mut next = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        seed >> 33
    };
    let rows = || fs::read_to_string(parts.join("metrics.jsonl")).map_or(0, |t| t.lines().count());
    let (mut kills, mut attempts) = (0, 0);
    while kills < 10 {
        attempts += 1;
        assert!(attempts <= 40, "only {kills} kills landed in {attempts} runs");
        // Kill k lands at a random point of steps 9k+1 ..= 9k+9 (logged rows tell where the
        // run is), plus up to 15 ms: inside a step, a checkpoint write or a metrics append.
        // The child stops by itself 9 steps later should this process be too slow to kill it.
        let target = 9 * kills + 1 + next() % 9;
        let extra = Duration::from_micros(next() % 15_000);
        let stop_after = (target + 9).to_string();
        let mut args = vec!["train", "--out", path(&parts), "--stop-after", &stop_after];
        if parts.join("ckpt/model.safetensors").exists() {
            args.push("--resume");
        } else {
            args.extend(["--config", path(&cfg)]);
        }
        args.extend(common);
        let mut child =
            vffn().args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        while (rows() as u64) < target && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_micros(500));
        }
        std::thread::sleep(extra);
        if child.try_wait().unwrap().is_some() {
            continue; // It stopped before the kill: no kill this time.
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    ok(&[&["train", "--resume", "--out", path(&parts)][..], &common].concat());
    let (a, b) = (loss_bits(&whole), loss_bits(&parts));
    assert_eq!(b.iter().map(|r| r.0).collect::<Vec<_>>(), (1..=100).collect::<Vec<_>>());
    assert_eq!(a, b, "losses bit for bit ({kills} kills)");
    fs::remove_dir_all(&dir).unwrap();
}

/// A trained run directory shared by the property test's cases.
fn shared_run() -> &'static PathBuf {
    static RUN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    RUN.get_or_init(|| trained(&scratch("proptest"), &["--steps", "3"]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Random byte changes anywhere in the model file (header or data): eval and generate
    /// refuse it with one `error:` line, exit 1, never a panic.
    #[test]
    fn random_corruptions_of_a_checkpoint_are_refused_by_eval_and_generate(
        changes in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        in_header in any::<bool>(),
    ) {
        let trained_run = shared_run();
        let original = fs::read(trained_run.join("ckpt/model.safetensors")).unwrap();
        let header = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
        let mut bytes = original.clone();
        for (at, flip) in &changes {
            let at = if in_header { at.index(header) } else { header + at.index(bytes.len() - header) };
            bytes[at] ^= flip;
        }
        // Two changes of one byte can cancel out.
        prop_assume!(bytes != original);
        let case = scratch(&format!("case-{}", changes.iter().map(|c| c.1 as usize).sum::<usize>()));
        fs::write(case.join("model.safetensors"), &bytes).unwrap();
        for args in [
            &["eval", "--checkpoint", path(&case), "--threads", "1"][..],
            &["generate", "--checkpoint", path(&case), "--prompt", "a", "--max-new", "4"],
        ] {
            let out = run(args);
            let err = stderr(&out);
            prop_assert_eq!(out.status.code(), Some(1), "{:?}: {}", args, err);
            prop_assert_eq!(err.lines().count(), 1, "{}", err);
            prop_assert!(err.starts_with("error: "), "{}", err);
        }
        fs::remove_dir_all(&case).unwrap();
    }
}
