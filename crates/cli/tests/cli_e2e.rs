//! End-to-end tests of the `vffn` binary: training on the built-in corpus, bit-exact resume,
//! Ctrl-C, eval, generate, and one clear error line for every bad input of ours.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    error_line, json, ok, path, run, setup, signal, state, stderr, train_ok, vffn, write,
};

/// A small model so that 50 steps take about a second.
const SMALL_CONFIG: &str = "
[model]
d_model = 32
n_heads = 2
n_layers = 2
hidden = 64
seq_len = 32
batch_size = 8
[train]
steps = 50
warmup_steps = 10
eval_every = 25
eval_batches = 4
log_every = 1
";

/// Fails as [`common::fails_with`] checks, and only progress lines and notes come before the
/// error (never a backtrace or a multi-line message).
fn fails_with(args: &[&str], needle: &str) {
    let out = run(args);
    error_line(args, &out, needle);
    let err = stderr(&out);
    for line in err.lines().filter(|l| !l.trim().is_empty()).rev().skip(1) {
        let progress = ["training ", "step ", "note: "].iter().any(|p| line.starts_with(p));
        assert!(progress, "{err}");
    }
}

#[derive(Debug, serde::Deserialize)]
struct Row {
    step: u64,
    loss: f32,
    val_loss: Option<f32>,
    depth_agree: Option<Vec<f64>>,
    depth_margin: Option<Vec<f64>>,
}

fn metrics(run: &Path) -> Vec<Row> {
    common::metrics(run)
}

#[test]
fn fifty_steps_on_the_builtin_corpus_lower_the_loss_then_eval_and_generate() {
    let (dir, config, run) = setup("train", SMALL_CONFIG);
    let out = train_ok(&config, &run, &["--threads", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("--- sample"), "the run ends with sample text: {stdout}");
    let rows = metrics(&run);
    assert_eq!(rows.iter().map(|r| r.step).collect::<Vec<_>>(), (1..=50).collect::<Vec<_>>());
    let mean = |rows: &[Row]| rows.iter().map(|r| r.loss).sum::<f32>() / rows.len() as f32;
    let (first, last) = (mean(&rows[..5]), mean(&rows[45..]));
    assert!(first > 5.3, "starts near ln 256 = 5.55: {first}");
    assert!(last < first - 0.5, "loss falls: first {first}, last {last}");
    let vals: Vec<f32> = rows.iter().filter_map(|r| r.val_loss).collect();
    assert_eq!(vals.len(), 2, "validation at steps 25 and 50");
    // The depth router's Gumbel pick against its argmax, per layer, at every logged step.
    for row in &rows {
        let (agree, margin) = (row.depth_agree.as_ref(), row.depth_margin.as_ref());
        let (agree, margin) = (agree.expect("depth_agree"), margin.expect("depth_margin"));
        assert_eq!((agree.len(), margin.len()), (2, 2), "one per layer: {row:?}");
        assert!(agree.iter().all(|a| (0.0..=1.0).contains(a)), "{row:?}");
        assert!(margin.iter().all(|m| m.is_finite() && *m >= 0.0), "{row:?}");
    }
    // At init (logits ≈ 0 against Gumbel noise) the pick is near-random among D = 4 loops.
    let early: f64 = rows[..5].iter().flat_map(|r| r.depth_agree.clone().unwrap()).sum::<f64>();
    assert!(early / 10.0 < 0.6, "mean early agreement {}", early / 10.0);
    assert!(vals[1] < vals[0], "{vals:?}");
    for file in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        assert!(run.join("ckpt").join(file).is_file(), "{file}");
    }

    // eval --json: one line, bits_per_byte = loss / ln 2, every validation window.
    let out = ok(&["eval", "--checkpoint", path(&run), "--json"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("{\"loss\":"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let loss = json["loss"].as_f64().unwrap();
    let bpb = json["bits_per_byte"].as_f64().unwrap();
    assert!((bpb - loss / std::f64::consts::LN_2).abs() < 1e-9);
    // 256 KiB of validation in windows of 32: (262144 − 1) / 32 = 8191 windows of 32 targets.
    assert_eq!(json["tokens"].as_u64(), Some(8191 * 32));
    assert!(loss < 5.3 && (loss - *vals.last().unwrap() as f64).abs() < 0.3, "{loss} {vals:?}");

    // generate: the prompt echoed, then exactly --max-new bytes; greedy is reproducible.
    let gen = |seed: &str, temperature: &str| {
        let args = [
            "generate",
            "--checkpoint",
            path(&run),
            "--prompt",
            "12+",
            "--max-new",
            "70",
            "--temperature",
            temperature,
            "--seed",
            seed,
        ];
        ok(&args).stdout
    };
    let greedy = gen("1", "0");
    assert_eq!(greedy.len(), 3 + 70 + 1);
    assert!(greedy.starts_with(b"12+"));
    assert_eq!(greedy, gen("2", "0"), "greedy ignores the seed");
    assert_eq!(gen("5", "1.0"), gen("5", "1.0"), "same seed, same sample");

    // inspect: per-layer routing, FLOPs against dense, easy vs hard depth, SVG plots.
    let svg = dir.join("svg");
    let out = ok(&["inspect", "--checkpoint", path(&run), "--svg", path(&svg), "--batches", "4"]);
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in ["layer 0: depth [1:", "layer 1: depth", "mean λ", "expert load %", "dense"] {
        assert!(text.contains(needle), "`{needle}` in {text}");
    }
    assert!(text.contains("mean depth by target difficulty: easy"), "{text}");
    // h 64 over E 8 experts: width 8, which the fused kernels refuse, and inspect says so.
    let composed = "composed: expert width 8 is not a multiple of 16";
    assert!(text.contains(&format!("ffn path: {composed}\n")), "{text}");
    for file in ["loss-curves.svg", "depth-histograms.svg", "expert-load.svg", "routing.svg"] {
        let body = fs::read_to_string(svg.join(file)).unwrap();
        assert!(body.starts_with("<svg") || body.starts_with("<?xml"), "{file}");
    }
    // inspect --json: the same statistics as one line of numbers.
    let out = ok(&["inspect", "--checkpoint", path(&run), "--batches", "4", "--json"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["ffn_path"], composed);
    let layers = json["layers"].as_array().unwrap();
    let tokens = json["tokens"].as_u64().unwrap();
    assert!(tokens > 0 && !layers.is_empty());
    for layer in layers {
        let depth: u64 =
            layer["depth_counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum();
        assert_eq!(depth, tokens, "every token chose a depth: {layer}");
        let mean = layer["mean_depth"].as_f64().unwrap();
        let lambda = layer["mean_lambda"].as_f64().unwrap();
        assert!((1.0..=4.0).contains(&mean) && (0.0..1.0).contains(&lambda), "{layer}");
        // Expert load: the router's choice for every token (top-2), and over the tokens whose
        // width path runs (ℓ < D = 4).
        let sum = |key: &str| -> u64 {
            layer[key].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum()
        };
        let below_max: u64 = layer["depth_counts"].as_array().unwrap()[..3]
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(sum("expert_counts"), 2 * tokens, "{layer}");
        assert_eq!(sum("width_expert_counts"), 2 * below_max, "{layer}");
    }
    let realized = json["inference_ffn_flops_per_token"].as_f64().unwrap();
    let dense = json["dense_inference_ffn_flops_per_token"].as_f64().unwrap();
    assert!(realized > 0.9 * dense && json["params"].as_u64().unwrap() > 0, "{json}");
    assert!(json["train_flops_per_token"].as_f64().unwrap() > realized);
    assert!(json["mean_depth_easy"].as_f64().is_some() && json["mean_depth_hard"].is_number());
}

#[test]
fn interrupted_and_resumed_run_equals_an_uninterrupted_one() {
    // Expert width 64/8 = 8: the layers run the composed autograd path.
    resume_equals_uninterrupted("resume", SMALL_CONFIG);
}

#[test]
fn resume_is_bit_exact_on_the_fused_kernel_path_too() {
    // Expert width 64/4 = 16: the layers run the fused FFN kernels (versatile, then moe).
    let versatile = SMALL_CONFIG.replace("[model]\n", "[model]\nn_experts = 4\n");
    resume_equals_uninterrupted("resume-fused", &versatile);
    let moe = SMALL_CONFIG.replace("[model]\n", "[model]\nn_experts = 4\nblock = \"moe\"\n");
    resume_equals_uninterrupted("resume-fused-moe", &moe);
}

fn resume_equals_uninterrupted(name: &str, config_text: &str) {
    let (dir, config, _) = setup(name, config_text);
    let (whole, parts) = (dir.join("whole"), dir.join("parts"));
    let common = ["--steps", "20", "--threads", "2", "--sample-bytes", "0"];
    let train = |run: &Path, extra: &[&str]| train_ok(&config, run, &[&common[..], extra].concat());
    train(&whole, &[]);
    let out = train(&parts, &["--stop-after", "10"]);
    assert!(stderr(&out).contains("stopped (--stop-after) at step 10/20"), "{}", stderr(&out));
    assert_eq!(metrics(&parts).len(), 10);
    // Resuming needs no --config: the checkpoint holds the model and the recipe.
    let mut args = vec!["train", "--resume", "--out", path(&parts)];
    args.extend(common);
    ok(&args);
    let (a, b) = (metrics(&whole), metrics(&parts));
    assert_eq!(a.len(), 20);
    assert_eq!(b.len(), 20);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.step, y.step);
        assert_eq!(x.loss.to_bits(), y.loss.to_bits(), "step {}", x.step);
        assert_eq!(x.val_loss.map(f32::to_bits), y.val_loss.map(f32::to_bits), "step {}", x.step);
    }
    // The thread count does not change the numbers either (work splits never reorder sums).
    let one_thread = dir.join("one-thread");
    train_ok(&config, &one_thread, &["--steps", "20", "--threads", "1", "--sample-bytes", "0"]);
    let c = metrics(&one_thread);
    assert_eq!(
        a.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>(),
        c.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>()
    );
    let read = |run: &Path| fs::read(run.join("ckpt/model.safetensors")).unwrap();
    assert_eq!(read(&whole), read(&parts), "final weights bitwise equal");
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_cleanly() {
    let (_dir, config, run) = setup("ctrlc", SMALL_CONFIG);
    let child = vffn()
        .args(["train", "--config", path(&config), "--out", path(&run), "--steps", "100000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training is under way, then interrupt.
    let started = Instant::now();
    while fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count()) < 5 {
        assert!(started.elapsed() < Duration::from_secs(60), "training did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(child.id(), "-INT");
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("interrupted at step"), "{err}");
    let step = state(&run)["step"].as_u64().unwrap();
    assert!((5..100000).contains(&step), "{step}");
    assert_eq!(metrics(&run).last().unwrap().step, step);
}

#[test]
fn every_bad_input_is_one_clear_error_line() {
    let (dir, config, _) = setup("bad", SMALL_CONFIG);
    let cfg = path(&config);
    let out = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let quick = ["--steps", "4", "--sample-bytes", "0"];
    let train = |extra: &[&str], needle: &str| {
        let mut args = vec!["train"];
        args.extend(extra);
        args.extend(quick);
        fails_with(&args, needle);
    };

    // Data files: missing, empty, a directory, too short for one window.
    let missing = out("no-such-file.txt");
    train(&["--config", cfg, "--out", &out("r1"), "--data", &missing], "cannot read data file");
    let empty = write(&dir, "empty.txt", "");
    train(&["--config", cfg, "--out", &out("r1"), "--data", path(&empty)], "is empty");
    train(&["--config", cfg, "--out", &out("r1"), "--data", path(&dir)], "is a directory");
    let short = write(&dir, "short.txt", "just a few bytes of text, far too few");
    train(&["--config", cfg, "--out", &out("r1"), "--data", path(&short)], "seq_len + 1");

    // Config files: missing, unknown key (named, with a suggestion), bad values.
    train(&["--config", &out("none.toml"), "--out", &out("r1")], "cannot read config file");
    let typo = write(&dir, "typo.toml", "[model]\nd_modle = 64\n");
    train(&["--config", path(&typo), "--out", &out("r1")], "unknown key `model.d_modle`");
    let bad = write(&dir, "bad.toml", "[model]\nd_model = \"big\"\n");
    train(&["--config", path(&bad), "--out", &out("r1")], "model.d_model");
    let constraint = write(&dir, "c.toml", "[model]\nn_heads = 3\n");
    train(&["--config", path(&constraint), "--out", &out("r1")], "model.n_heads");
    let syntax = write(&dir, "syntax.toml", "[model\n");
    train(&["--config", path(&syntax), "--out", &out("r1")], "not valid TOML");
    fails_with(&["train", "--config", cfg, "--out", &out("r1"), "--steps", "0"], "train.steps");
    train(&["--config", cfg, "--out", &out("r1"), "--threads", "0"], "--threads");

    // Command-line values clap refuses: clap's whole message (exit code 2, clap's convention).
    for args in [&["train", "--steps", "abc"][..], &["train", "--block", "mlp"], &["eval"]] {
        let out = run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error: ") && err.contains("--help"), "{err}");
    }

    // Too big for the memory asked.
    train(&["--preset", "small", "--out", &out("r1"), "--max-memory-mb", "16"], "model too big");

    // Checkpoints: none there, of another architecture, truncated, corrupted.
    fails_with(&["eval", "--checkpoint", &out("nothing")], "does not exist");
    train(&["--config", cfg, "--out", &out("nothing"), "--resume"], "cannot resume");
    let run = out("run");
    ok(&["train", "--config", cfg, "--out", &run, "--steps", "3", "--sample-bytes", "0"]);
    train(&["--config", cfg, "--out", &run], "already holds a checkpoint");
    let wider = write(&dir, "wider.toml", &SMALL_CONFIG.replace("d_model = 32", "d_model = 48"));
    train(&["--config", path(&wider), "--out", &run, "--resume"], "another architecture");
    train(
        &["--config", path(&wider), "--out", &out("r2"), "--init-from", &run],
        "transformer.wte.weight",
    );
    // Continued pre-training into another block kind works.
    ok(&[
        "train",
        "--config",
        cfg,
        "--block",
        "dense",
        "--out",
        &out("r3"),
        "--init-from",
        &run,
        "--steps",
        "2",
        "--sample-bytes",
        "0",
    ]);
    train(&["--config", cfg, "--out", &run, "--resume", "--data", path(&short)], "trained on");

    let model_file = dir.join("run/ckpt/model.safetensors");
    let bytes = fs::read(&model_file).unwrap();
    fs::write(&model_file, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&["eval", "--checkpoint", &run], "truncated or corrupted");
    fails_with(&["generate", "--checkpoint", &run, "--prompt", "a"], "truncated or corrupted");
    train(&["--out", &run, "--resume"], "truncated or corrupted");
    let mut corrupted = bytes.clone();
    corrupted[8..40].fill(b'#');
    fs::write(&model_file, &corrupted).unwrap();
    fails_with(&["eval", "--checkpoint", &run], "model.safetensors");
    fs::write(&model_file, &bytes).unwrap();
    fs::remove_file(dir.join("run/ckpt/optimizer.safetensors")).unwrap();
    train(&["--out", &run, "--resume"], "optimizer.safetensors");

    // Generation arguments.
    fails_with(&["generate", "--checkpoint", &run, "--prompt", ""], "prompt is empty");
    let negative = ["generate", "--checkpoint", &run, "--prompt", "a", "--temperature=-1"];
    fails_with(&negative, "--temperature");
}

/// `vffn forward` (issue 4 §7): inference writes logits and per-layer routing; `--train-mode
/// --zero-noise` adds the loss and one gradient per parameter, and its logits give that loss.
#[test]
fn forward_writes_logits_routing_loss_and_gradients() {
    let (dir, config, run) = setup("forward", SMALL_CONFIG);
    train_ok(&config, &run, &["--block", "versatile", "--steps", "3", "--threads", "1"]);
    let text = "12+34=46 copy ab > ab";
    let t = text.len();

    let infer_out = dir.join("infer.safetensors");
    ok(&["forward", "--checkpoint", path(&run), "--text", text, "--out", path(&infer_out)]);
    let infer = vffn_model::read_tensors(&fs::read(&infer_out).unwrap()).unwrap();
    assert_eq!(infer.tensors["logits"].shape, vec![t, 256]);
    for layer in 0..2 {
        let depth = &infer.tensors[&format!("blocks.{layer}.depth")];
        assert_eq!(depth.shape, vec![t]);
        assert!(depth.data.iter().all(|&d| (1.0..=4.0).contains(&d) && d.fract() == 0.0));
        let experts = &infer.tensors[&format!("blocks.{layer}.experts")];
        assert_eq!(experts.shape, vec![t, 2]);
        assert!(experts.data.iter().all(|&e| (0.0..8.0).contains(&e) && e.fract() == 0.0));
    }

    let train_out = dir.join("train.safetensors");
    ok(&[
        "forward",
        "--checkpoint",
        path(&run),
        "--text",
        text,
        "--out",
        path(&train_out),
        "--train-mode",
        "--zero-noise",
    ]);
    let train = vffn_model::read_tensors(&fs::read(&train_out).unwrap()).unwrap();
    let logits = &train.tensors["logits"];
    assert_eq!(logits.shape, vec![t - 1, 256]);
    // The stored loss is the mean next-byte cross-entropy of the stored logits.
    let bytes = text.as_bytes();
    let mut ce = 0.0f64;
    for (row, &target) in logits.data.chunks(256).zip(&bytes[1..]) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        ce += lse - row[target as usize] as f64;
    }
    ce /= (t - 1) as f64;
    let loss = train.tensors["loss"].data[0] as f64;
    assert!((loss - ce).abs() < 1e-4 * ce.max(1.0), "loss {loss} vs ce of logits {ce}");
    // Every parameter of the checkpoint has a gradient of its own shape, and some are non-zero.
    let model =
        vffn_model::read_tensors(&fs::read(run.join("ckpt/model.safetensors")).unwrap()).unwrap();
    for (name, tensor) in &model.tensors {
        let grad = &train.tensors[&format!("{name}.grad")];
        assert_eq!(grad.shape, tensor.shape, "{name}.grad");
        assert!(grad.data.iter().all(|g| g.is_finite()), "{name}.grad");
    }
    let ff_grad = &train.tensors["transformer.blocks.0.ff_proj.weight.grad"];
    assert!(ff_grad.data.iter().any(|&g| g != 0.0));
}

#[test]
fn exported_bf16_f16_and_f32_files_are_checkpoints_of_every_reading_command() {
    let (dir, config, run) = setup("export", SMALL_CONFIG);
    train_ok(&config, &run, &["--block", "versatile", "--steps", "10", "--sample-bytes", "0"]);
    let eval_loss = |checkpoint: &Path| {
        let out = ok(&["eval", "--checkpoint", path(checkpoint), "--json"]);
        let json = json(&out);
        json["loss"].as_f64().unwrap()
    };
    let original = eval_loss(&run);
    let model_file = run.join("ckpt").join("model.safetensors");
    for dtype in ["f32", "bf16", "f16"] {
        let file = dir.join(format!("model-{dtype}.safetensors"));
        let out =
            ok(&["export", "--checkpoint", path(&run), "--dtype", dtype, "--out", path(&file)]);
        assert!(String::from_utf8_lossy(&out.stdout).contains(dtype));
        let (size, full) =
            (fs::metadata(&file).unwrap().len(), fs::metadata(&model_file).unwrap().len());
        if dtype == "f32" {
            // Names, metadata and values as in the checkpoint: the same bytes.
            assert_eq!(fs::read(&file).unwrap(), fs::read(&model_file).unwrap());
        } else {
            assert!(size < full * 52 / 100, "{dtype}: {size} of {full} bytes");
        }
        let loss = eval_loss(&file);
        assert!((loss - original).abs() < 0.01, "{dtype}: {loss} vs {original}");
        ok(&["generate", "--checkpoint", path(&file), "--prompt", "1+", "--max-new", "8"]);
        let fwd = dir.join(format!("forward-{dtype}.safetensors"));
        ok(&["forward", "--checkpoint", path(&file), "--text", "12+3", "--out", path(&fwd)]);
        ok(&["inspect", "--checkpoint", path(&file), "--batches", "2"]);
    }
    let nowhere = dir.join("missing").join("x.safetensors");
    fails_with(
        &["export", "--checkpoint", path(&run), "--dtype", "bf16", "--out", path(&nowhere)],
        "cannot write",
    );
}

#[test]
fn every_inference_command_runs_bf16_weights_and_refuses_other_values_in_one_line() {
    let (dir, config, run) = setup("weights", SMALL_CONFIG);
    train_ok(&config, &run, &["--block", "versatile", "--steps", "10", "--sample-bytes", "0"]);
    let fwd = dir.join("forward.safetensors");
    let commands: Vec<Vec<&str>> = vec![
        vec!["eval", "--checkpoint", path(&run), "--json"],
        vec!["generate", "--checkpoint", path(&run), "--prompt", "1+", "--max-new", "8"],
        vec!["forward", "--checkpoint", path(&run), "--text", "12+3", "--out", path(&fwd)],
        vec!["inspect", "--checkpoint", path(&run), "--batches", "2", "--json"],
        vec!["bench", "forward", "--config", path(&config), "--repeats", "1", "--json"],
        vec!["bench", "generate", "--config", path(&config), "--tokens", "4", "--json"],
    ];
    let loss = |out: &Output| {
        let json = json(out);
        json["loss"].as_f64().unwrap()
    };
    let mut eval_losses = Vec::new();
    for command in &commands {
        for weights in ["f32", "bf16"] {
            let out = ok(&[&command[..], &["--weights", weights]].concat());
            match command[0] {
                "eval" => eval_losses.push(loss(&out)),
                "inspect" | "bench" => {
                    let json = json(&out);
                    assert_eq!(json["weights"], weights, "{command:?}");
                }
                _ => {}
            }
        }
        for bad in ["f16", "f64"] {
            fails_with(&[&command[..], &["--weights", bad]].concat(), "--weights");
        }
    }
    // bf16 weights move the loss a little, not a lot.
    let [f32_loss, bf16_loss] = eval_losses[..] else { panic!("{eval_losses:?}") };
    assert!(f32_loss != bf16_loss && (f32_loss - bf16_loss).abs() < 0.01, "{eval_losses:?}");
    // inspect --against: the routing of the two dtypes, compared token by token.
    let out = ok(&[
        "inspect",
        "--checkpoint",
        path(&run),
        "--batches",
        "2",
        "--json",
        "--weights",
        "bf16",
        "--against",
        "f32",
    ]);
    let json = json(&out);
    let against = &json["against"];
    assert_eq!(against["weights"], "f32");
    assert_eq!(against["tokens"], json["tokens"]);
    let all_layers = against["depth_agreement_all_layers"].as_f64().unwrap();
    assert!((0.9..=1.0).contains(&all_layers), "{against}");
    // The same weights agree on every token.
    let out = ok(&["inspect", "--checkpoint", path(&run), "--batches", "2", "--against", "f32"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("f32 weights;"), "{text}");
    assert!(text.contains("agrees on 100.00% of tokens in every layer"), "{text}");
    fails_with(
        &[
            "forward",
            "--checkpoint",
            path(&run),
            "--text",
            "12",
            "--out",
            path(&fwd),
            "--train-mode",
        ]
        .iter()
        .chain(&["--weights", "bf16"])
        .copied()
        .collect::<Vec<_>>(),
        "--train-mode runs the f32 model",
    );
}
