//! `vffn bench train|forward|generate`: each prints one JSON line with a positive finite
//! tokens_per_s (tiny preset, few steps), and bad input is one error line.

mod common;

use common::{json, numbers, ok, run, scratch};

/// Runs `vffn bench <args> --json` and returns its single stdout line parsed.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = ok(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
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
    // Peak RSS beside the speed (Linux: VmHWM); a training process holds at least the batch.
    if cfg!(target_os = "linux") {
        for v in [&train, &forward] {
            let mb = v["peak_rss_mb"].as_f64().expect("peak_rss_mb on Linux");
            assert!(mb > 1.0 && mb < 64.0 * 1024.0, "{v}");
        }
    }

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
        let out = run(args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error"), "{args:?}: {stderr}");
    }
}

/// `vffn bench all --json --threads 2 --presets tiny` on the items matching `filter`: its
/// stdout, one JSON document.
fn bench_all_tiny(budget_ms: &str, filter: &str) -> (String, serde_json::Value) {
    let args = ["bench", "all", "--json", "--threads", "2", "--budget-ms", budget_ms];
    let out = ok(&[&args[..], &["--presets", "tiny", "--filter", filter]].concat());
    let text = String::from_utf8(out.stdout).unwrap();
    let doc = serde_json::from_str(&text).expect("one JSON document");
    (text, doc)
}

/// The items of a `bench all` document, which must be `names` in this order.
fn items<'a>(doc: &'a serde_json::Value, names: &[&str]) -> &'a [serde_json::Value] {
    let items = doc["items"].as_array().unwrap();
    let got: Vec<&str> = items.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(got, names);
    items
}

/// `vffn bench all --json` with a short budget on a few items: one JSON document with the
/// machine, the commit and each item's median and GFLOP/s; `--markdown` renders it.
#[test]
fn bench_all_writes_one_json_document() {
    let (_, doc) = bench_all_tiny("20", "1x1024x1024");
    for key in ["date", "commit", "machine", "items", "elapsed_s"] {
        assert!(doc.get(key).is_some(), "missing `{key}`: {doc}");
    }
    assert!(doc["dirty"].is_boolean() || doc["dirty"].is_null());
    let machine = &doc["machine"];
    assert_eq!(machine["threads"], 2);
    assert!(!machine["cpu_model"].as_str().unwrap().is_empty());
    assert!(machine["features"].is_array());
    // The kernel's tile, the caches it was blocked for, the blocking and the measured peak.
    let tile = machine["tile"].as_str().unwrap();
    let kernel = machine["kernel"].as_str().unwrap();
    let want_tile = match kernel {
        "avx512" => "14x32",
        "avx2" => "6x16",
        _ => "2x16",
    };
    assert_eq!(tile, want_tile, "{machine}");
    let caches = &machine["caches"];
    let l1 = caches["l1d"].as_u64().unwrap();
    assert!(l1 >= 8 << 10 && caches["l2"].as_u64().unwrap() >= l1, "{caches}");
    let kc = machine["blocking"]["kc"].as_u64().unwrap();
    assert!((64..=1024).contains(&kc) && kc.is_multiple_of(16), "{machine}");
    let peak = machine["peak_gflops"].as_f64().unwrap();
    assert!(peak.is_finite() && peak > 0.0, "{machine}");
    for item in items(&doc, &["gemm/B_1x1024x1024", "gemm/Wt_1x1024x1024"]) {
        let [median, gflops] = numbers(item, ["median_ms", "gflops"]);
        assert!(median > 0.0 && median.is_finite(), "{item}");
        assert!(gflops > 0.0 && gflops.is_finite(), "{item}");
        assert_eq!(item["flops"].as_f64().unwrap(), 2.0 * 1024.0 * 1024.0);
        assert!(item["samples"].as_u64().unwrap() >= 3, "{item}");
        assert!(item.get("tokens_per_s").is_none(), "{item}");
    }

    // Model items carry tokens/s and FLOPs/token; their FLOPs per call are per batch / step.
    let (text, doc) = bench_all_tiny("1", "tiny/dense");
    let items = items(&doc, &["model/tiny/dense/forward", "model/tiny/dense/train_step"]);
    for item in items {
        let keys = ["tokens_per_s", "flops_per_token", "flops", "gflops"];
        let [rate, per_token, flops, gflops] = numbers(item, keys);
        assert!(rate > 0.0 && rate.is_finite() && per_token > 0.0, "{item}");
        assert!((flops - per_token * 2048.0).abs() <= 1e-9 * flops, "{item}");
        assert!((gflops - per_token * rate / 1e9).abs() <= 1e-9 * gflops, "{item}");
    }
    // Training does 3× the forward's FLOPs (all loops), the forward only the routed work.
    let (fwd, train) = (&items[0], &items[1]);
    let (fwd, train) =
        (fwd["flops_per_token"].as_f64().unwrap(), train["flops_per_token"].as_f64().unwrap());
    assert!((train - 3.0 * fwd).abs() <= 1e-12 * train, "{train} vs 3 × {fwd}");

    let dir = scratch("markdown");
    let file = dir.join("all.json");
    std::fs::write(&file, &text).unwrap();
    let md = ok(&["bench", "all", "--markdown", file.to_str().unwrap()]);
    let md = String::from_utf8(md.stdout).unwrap();
    let commit = doc["commit"].as_str().unwrap();
    assert!(md.contains(&commit[..commit.len().min(12)]), "{md}");
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| `model/")).collect();
    assert_eq!(rows.len(), 2, "{md}");
    assert!(rows[0].starts_with("| `model/tiny/dense/forward` |"), "{md}");

    // Bad input: one error line, nothing on stdout.
    std::fs::write(&file, "{\"date\": 1}").unwrap();
    for args in [
        &["bench", "all", "--markdown", file.to_str().unwrap()][..],
        &["bench", "all", "--filter", "no-such-item"],
        &["bench", "all", "--presets", "huge"],
        &["bench", "all", "--threads", "0", "--filter", "gemm/B_1x"],
    ] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}

/// docs/benchmarks.md shows the table of the `vffn bench all --json` run kept in
/// benches/bench-all.json, exactly as `--markdown` renders it.
#[test]
fn benchmarks_doc_matches_its_bench_all_run() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let json = root.join("benches/bench-all.json");
    let out = ok(&["bench", "all", "--markdown", json.to_str().unwrap()]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.lines().filter(|l| l.starts_with("| `")).count() >= 20, "{table}");
    let doc = std::fs::read_to_string(root.join("docs/benchmarks.md")).unwrap();
    assert!(
        doc.contains(&table),
        "docs/benchmarks.md does not contain `vffn bench all --markdown benches/bench-all.json`"
    );
}

/// `vffn bench peak --json`: one line per ISA the CPU runs, the selected one marked, each with a
/// positive figure; `bench gemm --json` reports its GFLOP/s as a fraction of that peak.
#[test]
fn bench_peak_reports_every_isa_and_gemm_its_fraction_of_it() {
    let out = ok(&["bench", "peak", "--json", "--rounds", "1"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(lines.iter().any(|l| l["isa"] == "portable"), "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l["selected"] == true).count(), 1, "{lines:?}");
    for line in &lines {
        assert_eq!(line["threads"], 1);
        let g = line["gflops"].as_f64().unwrap();
        assert!(g.is_finite() && g > 0.0, "{line}");
    }
    let out =
        ok(&["bench", "gemm", "--m", "64", "--k", "64", "--n", "64", "--samples", "3", "--json"]);
    let gemm = json(&out);
    let fraction = gemm["peak_fraction"].as_f64().unwrap();
    assert!(fraction > 0.0 && fraction.is_finite(), "{gemm}");
    assert!(run(&["bench", "peak", "--threads", "0"]).status.code() == Some(1));
}
