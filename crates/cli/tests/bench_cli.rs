//! `vffn bench train|forward|generate`: each prints one JSON line with a positive finite
//! tokens_per_s (tiny preset, few steps), and bad input is one error line.

use std::process::Command;

fn vffn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vffn")).args(args).output().expect("cannot run vffn")
}

/// Runs `vffn bench <args> --json` and returns its single stdout line parsed.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = vffn(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected: {stdout}");
    let value: serde_json::Value = serde_json::from_str(lines[0]).expect("valid JSON");
    let rate = value["tokens_per_s"].as_f64().expect("tokens_per_s is a number");
    assert!(rate.is_finite() && rate > 0.0, "{args:?}: tokens_per_s = {rate}");
    value
}

#[test]
fn model_benches_print_one_json_line() {
    let common = ["--preset", "tiny", "--threads", "2"];
    let train = bench_json(&[&["train"], &common[..], &["--steps", "1", "--warmup", "1"]].concat());
    assert_eq!(train["block"], "versatile");
    assert_eq!(train["batch_tokens"], 16 * 128);
    let step_ms = train["step_ms"].as_f64().unwrap();
    let rate = train["tokens_per_s"].as_f64().unwrap();
    assert!((rate * step_ms / 1e3 - 2048.0).abs() < 1e-6 * 2048.0, "{train}");
    assert!(train["flops_per_token"].as_f64().unwrap() > 0.0);

    let forward =
        bench_json(&[&["forward"], &common[..], &["--block", "dense", "--repeats", "1"]].concat());
    assert_eq!(forward["block"], "dense");
    assert!(forward["realized_flops_per_token"].as_f64().unwrap() > 0.0);

    let generate = bench_json(&[&["generate"], &common[..], &["--tokens", "4"]].concat());
    assert_eq!(generate["tokens"], 4);
}

#[test]
fn model_bench_errors_are_one_line() {
    for args in [
        &["bench", "train", "--preset", "huge", "--json"][..],
        &["bench", "forward", "--threads", "0", "--json"],
        &["bench", "generate", "--tokens", "0"],
    ] {
        let out = vffn(args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error"), "{args:?}: {stderr}");
    }
}
