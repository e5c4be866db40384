//! Faults and bad inputs a user can cause (issue 16), each through the binary: nothing written
//! is lost, nothing wrong is accepted silently, every command ends cleanly.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{
    fails_with, metrics, ok, path, run, scratch, setup, state, stderr, train_ok, vffn, write,
    Scratch,
};
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

/// Trains the tiny config into a scratch directory `name` and returns it with the run
/// directory.
fn trained(name: &str, extra: &[&str]) -> (Scratch, PathBuf) {
    let (dir, cfg, run) = setup(name, TINY);
    train_ok(&cfg, &run, &[&["--sample-bytes", "0", "--threads", "1"][..], extra].concat());
    (dir, run)
}

fn metrics_steps(run: &Path) -> Vec<u64> {
    metrics::<serde_json::Value>(run).iter().map(|row| row["step"].as_u64().unwrap()).collect()
}

/// Rewrites `file` after `edit` changed its bytes; returns the bytes written.
fn edit_file(file: &Path, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = fs::read(file).unwrap();
    edit(&mut bytes);
    fs::write(file, &bytes).unwrap();
    bytes
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

/// A running `vffn train` with stdout discarded and its stderr read line by line.
struct Training {
    child: Child,
    stderr: BufReader<ChildStderr>,
}

impl Training {
    /// Starts `vffn train --config cfg --out run --threads 1 extra..`.
    fn start(cfg: &Path, run: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["train", "--config", path(cfg), "--out", path(run), "--threads", "1"];
        args.extend(extra);
        let spawned = vffn().args(&args).stderr(Stdio::piped()).stdout(Stdio::null()).spawn();
        let mut child = spawned.unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        Training { child, stderr }
    }

    /// Reads stderr lines until one contains `needle` (panics after 60 s).
    fn wait_for(&mut self, needle: &str) {
        let started = Instant::now();
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.stderr.read_line(&mut line).unwrap() > 0,
                "stderr ended before `{needle}`"
            );
            if line.contains(needle) {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "no `{needle}` line");
        }
    }

    /// Sends the signal `name` (`-INT`, `-TERM`).
    fn signal(&self, name: &str) {
        common::signal(self.child.id(), name);
    }

    /// Waits for the exit; returns its status and the rest of stderr.
    fn finish(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().unwrap();
        let mut text = String::new();
        self.stderr.read_to_string(&mut text).unwrap();
        (status, text)
    }
}

// 1. Loss history.
#[test]
fn a_malformed_metrics_row_stops_the_resume_and_never_wipes_the_history() {
    let (_dir, run) = trained("metrics", &["--stop-after", "20"]);
    let file = run.join("metrics.jsonl");
    let bytes = edit_file(&file, |bytes| bytes[100] = 0xff);
    fails_with(&["train", "--resume", "--out", path(&run), "--sample-bytes", "0"], "line 1");
    assert_eq!(fs::read(&file).unwrap(), bytes, "the file is left exactly as it was");
    // A file that cannot be read is an error, not an empty history.
    fs::remove_file(&file).unwrap();
    fs::create_dir(&file).unwrap();
    fails_with(&["train", "--resume", "--out", path(&run), "--sample-bytes", "0"], "metrics");
}

#[test]
fn resume_keeps_the_rows_up_to_the_checkpoint_and_drops_a_torn_last_line() {
    let (_dir, run) = trained("torn", &["--stop-after", "20"]);
    let file = run.join("metrics.jsonl");
    // Rows past the checkpoint (a run killed after logging them) are dropped.
    edit_file(&file, |text| {
        text.extend(b"{\"step\":21,\"loss\":1.0,\"ce\":1.0,\"balance\":0.0,\"lr\":0.001,");
        text.extend(b"\"temperature\":1.0,\"tokens_per_s\":1.0,\"grad_norm\":1.0}\n");
    });
    ok(&["train", "--resume", "--out", path(&run), "--sample-bytes", "0", "--stop-after", "25"]);
    assert_eq!(metrics_steps(&run), (1..=25).collect::<Vec<_>>());
    let loss_21 = fs::read_to_string(&file).unwrap().lines().nth(20).unwrap().to_string();
    assert!(!loss_21.contains("\"loss\":1.0,"), "the stale row 21 is gone: {loss_21}");
    // A last line cut short by a crash is dropped, with a note.
    edit_file(&file, |text| text.extend(b"{\"step\":26,\"lo"));
    let out = ok(&["train", "--resume", "--out", path(&run), "--sample-bytes", "0"]);
    assert!(stderr(&out).contains("incomplete last line"), "{}", stderr(&out));
    assert_eq!(metrics_steps(&run), (1..=30).collect::<Vec<_>>());
}

// 2. Output errors.
#[test]
fn a_closed_stderr_neither_panics_nor_loses_the_checkpoint() {
    let (_dir, cfg, out) = setup("stderr", TINY);
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
}

// 3. The checkpoint after a diverging update.
#[test]
fn a_diverged_update_never_reaches_a_checkpoint() {
    let (_dir, cfg, run) = setup("diverge", &format!("{TINY}lr = 1e30\nweight_decay = 0.0\n"));
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
}

// 4. Signals.
#[test]
fn sigterm_finishes_the_step_saves_and_exits_143() {
    let (_dir, cfg, run) = setup("sigterm", TINY);
    let mut child = Training::start(&cfg, &run, &["--steps", "1000000"]);
    child.wait_for("step 10:");
    child.signal("-TERM");
    let (status, text) = child.finish();
    assert_eq!(status.code(), Some(143), "{text}");
    assert!(text.contains("terminated (SIGTERM) at step"), "{text}");
    let step = state(&run)["step"].as_u64().unwrap();
    assert!(step >= 10, "{step}");
    assert_eq!(metrics_steps(&run).last(), Some(&step));
}

#[test]
fn ctrl_c_during_the_final_sample_ends_the_command() {
    let (_dir, cfg, run) = setup("sample", TINY);
    let mut child = Training::start(&cfg, &run, &["--steps", "3", "--sample-bytes", "100000000"]);
    child.wait_for("done:");
    std::thread::sleep(Duration::from_millis(200));
    child.signal("-INT");
    let started = Instant::now();
    while child.child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            child.child.kill().unwrap();
            panic!("the sample went on after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, text) = child.finish();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("sample interrupted"), "{text}");
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
    let every_step = TINY.replace("eval_every = 10", "eval_every = 1");
    let cfg = write(&dir, "tiny.toml", &every_step.replace("eval_batches = 2", "eval_batches = 0"));
    let run = dir.join("run");
    let mut child = Training::start(&cfg, &run, &["--data", path(&data), "--sample-bytes", "0"]);
    child.wait_for("training ");
    std::thread::sleep(Duration::from_millis(300));
    child.signal("-INT");
    let (status, text) = child.finish();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("interrupted at step 1/"), "{text}");
    // The evaluation was abandoned: the step-1 row has no validation loss.
    let row: serde_json::Value =
        serde_json::from_str(fs::read_to_string(run.join("metrics.jsonl")).unwrap().trim())
            .unwrap();
    assert_eq!(row["step"].as_u64(), Some(1));
    assert!(row.get("val_loss").is_none(), "{row}");
}

#[test]
fn a_second_ctrl_c_exits_at_once() {
    let dir = scratch("twice");
    // Steps of about a second: both signals arrive during the first one.
    let slow = "[model]\nd_model = 128\nn_heads = 4\nn_layers = 2\nhidden = 512\nseq_len = 256\n\
                batch_size = 16\n[train]\nsteps = 5\n";
    let cfg = write(&dir, "slow.toml", slow);
    let run = dir.join("run");
    let mut child = Training::start(&cfg, &run, &[]);
    child.wait_for("training ");
    std::thread::sleep(Duration::from_millis(50));
    child.signal("-INT");
    std::thread::sleep(Duration::from_millis(30));
    child.signal("-INT");
    let (status, text) = child.finish();
    assert_eq!(status.code(), Some(130), "the second Ctrl-C exits at once: {text}");
    assert!(!run.join("ckpt").exists(), "it did not wait for the step to save: {text}");
}

// 5. Non-finite or corrupted weights.
#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let (_dir, run) = trained("nonfinite", &["--steps", "3"]);
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
}

#[test]
fn a_flipped_bit_in_tensor_data_is_refused_naming_the_tensor() {
    let (_dir, run) = trained("bitflip", &["--steps", "3"]);
    edit_file(&run.join("ckpt/model.safetensors"), |bytes| {
        let last = bytes.len() - 3;
        bytes[last] ^= 0x04;
    });
    let err = fails_with(&["eval", "--checkpoint", path(&run)], "does not match its checksum");
    assert!(err.contains("tensor `transformer."), "{err}");
}

// 6. --resume and flags.
#[test]
fn resume_applies_changed_train_values_and_refuses_another_architecture() {
    let (dir, run) = trained("resume-config", &["--stop-after", "10"]);
    // A changed [train] value is applied, with a note.
    let other =
        write(&dir, "other.toml", &TINY.replace("log_every = 1", "log_every = 1\nlr = 0.0005"));
    let args = ["train", "--resume", "--out", path(&run), "--config", path(&other)];
    let out = ok(&[&args[..], &["--stop-after", "12", "--sample-bytes", "0"]].concat());
    assert!(stderr(&out).contains("note: train.lr = 0.0005"), "{}", stderr(&out));
    assert_eq!(state(&run)["train"]["lr"].as_f64().map(|lr| lr as f32), Some(0.0005));
    // --block laid over the checkpoint's own config (a versatile run) is the same model.
    let args = ["train", "--resume", "--out", path(&run), "--block", "versatile"];
    ok(&[&args[..], &["--stop-after", "14", "--sample-bytes", "0"]].concat());
    // Another architecture is refused naming the key.
    let wider = write(&dir, "wider.toml", &TINY.replace("d_model = 32", "d_model = 48"));
    let args = ["train", "--resume", "--out", path(&run), "--config", path(&wider)];
    fails_with(&args, "d_model");
    fails_with(&["train", "--resume", "--out", path(&run), "--block", "dense"], "block");
}

// 7. --out RUN/ckpt.
#[test]
fn out_naming_a_checkpoint_directory_is_refused() {
    let (dir, run) = trained("nested", &["--steps", "3"]);
    let inner = run.join("ckpt");
    fails_with(&["train", "--resume", "--out", path(&inner)], "give its run directory");
    let cfg = write(&dir, "tiny.toml", TINY);
    fails_with(&["train", "--config", path(&cfg), "--out", path(&inner)], "checkpoint directory");
    assert!(!inner.join("ckpt").exists(), "no nested checkpoint");
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
    let (_dir, run) = trained("cause", &["--steps", "3"]);
    let file = run.join("ckpt/model.safetensors");
    edit_file(&file, |bytes| bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes()));
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
}

// 11. One process per run directory.
#[test]
fn a_second_process_on_a_run_directory_is_refused_naming_the_holder() {
    let (_dir, cfg, run) = setup("lock", TINY);
    let mut child = Training::start(&cfg, &run, &["--steps", "1000000", "--sample-bytes", "0"]);
    child.wait_for("step 10:");
    let holder = format!("pid {}", child.child.id());
    fails_with(&["train", "--resume", "--out", path(&run)], &holder);
    child.signal("-INT");
    let (status, text) = child.finish();
    assert!(status.success(), "{text}");
    let steps = metrics_steps(&run);
    assert_eq!(steps, (1..=*steps.last().unwrap()).collect::<Vec<_>>(), "no duplicate rows");
}

// 12. Smaller ones.
#[test]
fn a_negative_adam_second_moment_is_refused() {
    let (_dir, run) = trained("adam", &["--steps", "3"]);
    let file = run.join("ckpt/optimizer.safetensors");
    let optimizer = read_tensors(&fs::read(&file).unwrap()).unwrap();
    let mut tensors = optimizer.tensors.clone();
    tensors.get_mut("transformer.wte.weight.adam_v").unwrap().data[2] = -1.0;
    fs::write(&file, vffn_model::write_tensors(&refs(&tensors), &optimizer.metadata).unwrap())
        .unwrap();
    let err = fails_with(&["train", "--resume", "--out", path(&run)], "negative");
    assert!(err.contains("transformer.wte.weight.adam_v"), "{err}");
}

#[test]
fn an_all_zero_rng_state_is_refused() {
    let (_dir, run) = trained("rng", &["--steps", "3"]);
    edit_state(&run, |json| json["model_rng"] = serde_json::json!(["0", "0", "0", "0"]));
    fails_with(&["train", "--resume", "--out", path(&run), "--steps", "5"], "model_rng");
}

#[test]
fn forward_refuses_to_overwrite_a_checkpoint_file() {
    let (_dir, run) = trained("forward", &["--steps", "3"]);
    let model = run.join("ckpt/model.safetensors");
    let before = fs::read(&model).unwrap();
    let args = ["forward", "--checkpoint", path(&run), "--text", "ab", "--out", path(&model)];
    fails_with(&args, "would overwrite");
    assert_eq!(fs::read(&model).unwrap(), before);
}

#[test]
fn stop_after_zero_runs_no_step() {
    let (_dir, run) = trained("stop0", &["--stop-after", "0"]);
    assert_eq!(state(&run)["step"].as_u64(), Some(0));
    assert!(metrics_steps(&run).is_empty());
}

#[test]
fn out_naming_a_regular_file_is_a_clear_error() {
    let (dir, cfg, _) = setup("outfile", TINY);
    let file = write(&dir, "file", "x");
    fails_with(&["train", "--config", path(&cfg), "--out", path(&file)], "is a file, not a run");
}

#[test]
fn tokens_seen_saturates_instead_of_wrapping() {
    let (_dir, run) = trained("tokens", &["--stop-after", "3"]);
    edit_state(&run, |json| json["tokens_seen"] = serde_json::json!(u64::MAX - 1));
    ok(&["train", "--resume", "--out", path(&run), "--stop-after", "4", "--sample-bytes", "0"]);
    assert_eq!(state(&run)["tokens_seen"].as_u64(), Some(u64::MAX));
}

/// The losses and validation losses of a metrics file, as bits, by step.
fn loss_bits(run: &Path) -> Vec<(u64, u32, Option<u32>)> {
    let bits = |v: &serde_json::Value| v.as_f64().map(|x| (x as f32).to_bits());
    let row_bits = |row: &serde_json::Value| {
        (row["step"].as_u64().unwrap(), bits(&row["loss"]).unwrap(), bits(&row["val_loss"]))
    };
    metrics::<serde_json::Value>(run).iter().map(row_bits).collect()
}

#[test]
fn sigkill_at_ten_random_moments_then_resume_matches_an_uninterrupted_run() {
    let (dir, cfg, _) = setup("sigkill", TINY);
    let common = ["--steps", "100", "--save-every", "4", "--threads", "1", "--sample-bytes", "0"];
    let whole = dir.join("whole");
    let started = Instant::now();
    ok(&[&["train", "--config", path(&cfg), "--out", path(&whole)][..], &common].concat());
    // One step's time on this machine (start-up and checkpoint writes included): the kills'
    // random delays are measured in it, so they land inside the run on a fast CPU and a slow one.
    let step_ns = (started.elapsed().as_nanos() / 100).max(1) as u64;
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
        // run is), plus up to two steps' time: inside a step, a checkpoint write or a metrics
        // append. The child stops by itself 30 steps later should this process be too slow
        // (starved by the other tests) to kill it; then that attempt is not counted.
        let target = 9 * kills + 1 + next() % 9;
        let extra = Duration::from_nanos(next() % (2 * step_ns));
        let stop_after = (target + 30).to_string();
        let mut args = vec!["train", "--out", path(&parts), "--stop-after", &stop_after];
        // A kill between the two renames of a checkpoint write leaves only `ckpt.old`, which
        // `--resume` falls back to (and a fresh start refuses).
        if ["ckpt", "ckpt.old"].iter().any(|d| parts.join(d).join("model.safetensors").exists()) {
            args.push("--resume");
        } else {
            args.extend(["--config", path(&cfg)]);
        }
        args.extend(common);
        let log = dir.join("child-stderr");
        let stderr_file = fs::File::create(&log).unwrap();
        let mut child =
            vffn().args(&args).stdout(Stdio::null()).stderr(stderr_file).spawn().unwrap();
        while (rows() as u64) < target && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_micros(500));
        }
        std::thread::sleep(extra);
        if let Some(status) = child.try_wait().unwrap() {
            // It stopped by itself before the kill: no kill this time, but it must have
            // succeeded (a resume that fails after a kill is what this test is for).
            let err = fs::read_to_string(&log).unwrap();
            assert!(status.success(), "attempt {attempts} ({args:?}) failed: {err}");
            continue;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    ok(&[&["train", "--resume", "--out", path(&parts)][..], &common].concat());
    let (a, b) = (loss_bits(&whole), loss_bits(&parts));
    assert_eq!(b.iter().map(|r| r.0).collect::<Vec<_>>(), (1..=100).collect::<Vec<_>>());
    assert_eq!(a, b, "losses bit for bit ({kills} kills)");
}

/// Random byte changes anywhere in the model file (header or data): eval and generate refuse
/// it with one `error:` line, exit 1, never a panic. (An explicit runner rather than `proptest!`
/// so the trained run the 32 cases share is a local, removed at the end like every scratch.)
#[test]
fn random_corruptions_of_a_checkpoint_are_refused_by_eval_and_generate() {
    let (_dir, trained_run) = trained("proptest", &["--steps", "3"]);
    let original = fs::read(trained_run.join("ckpt/model.safetensors")).unwrap();
    let header = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let config = ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(32) };
    let changes = prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4);
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&(changes, any::<bool>()), |(changes, in_header)| {
        let mut bytes = original.clone();
        for (at, flip) in &changes {
            let at =
                if in_header { at.index(header) } else { header + at.index(bytes.len() - header) };
            bytes[at] ^= flip;
        }
        // Two changes of one byte can cancel out.
        prop_assume!(bytes != original);
        let case =
            scratch(&format!("case-{}", changes.iter().map(|c| c.1 as usize).sum::<usize>()));
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
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
