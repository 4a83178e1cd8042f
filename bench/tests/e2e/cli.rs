//! The `fabric-bench` program as a user runs it.

use crate::support::{bench, stderr};

#[test]
fn bench_ingest_reports_throughput_next_to_its_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = bench(&[
        "ingest",
        "--quick",
        "--json",
        "--events",
        "3000",
        "--batch",
        "1000",
        "--dir",
        dir.path().to_str().expect("utf-8"),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let suite = &report["suites"][0];
    assert_eq!(suite["suite"], "ingest");
    assert_eq!(suite["events"], 3000);
    assert_eq!(suite["batch_events"], 1000);
    let figures = suite["figures"].as_array().expect("figures");
    let figure = |name: &str| {
        figures
            .iter()
            .find(|f| f["figure"] == name)
            .unwrap_or_else(|| panic!("no figure {name}"))
    };
    for name in [
        "append, pre-signed",
        "append, pre-signed, pipelined",
        "append, signed in the pipeline",
    ] {
        let row = figure(name);
        assert_eq!(row["unit"], "events/s");
        assert_eq!(row["against"], "bound");
        let (value, bound, ratio) = (
            row["value"].as_f64().expect("a value"),
            row["bound"].as_f64().expect("a bound"),
            row["ratio"].as_f64().expect("a ratio"),
        );
        assert!(value > 0.0 && bound > 0.0, "{name}: {value} vs {bound}");
        assert!((ratio - value / bound).abs() < 1e-9);
    }
    // Signing costs more than verifying alone: the signed pipeline's bound is the lower one.
    assert!(
        figure("append, signed in the pipeline")["bound"].as_f64()
            < figure("append, pre-signed")["bound"].as_f64()
    );
    // The bench cleans up after itself.
    assert_eq!(std::fs::read_dir(dir.path()).expect("lists").count(), 0);
}

#[test]
fn bench_gpu_reports_each_kernel_on_the_adapter_against_its_cpu_reference() {
    let output = bench(&["gpu", "--quick", "--json"]);
    if std::env::var("FABRIC_GPU").as_deref() != Ok("require") && !output.status.success() {
        // Without FABRIC_GPU=require a machine without an adapter may refuse; it must say why.
        assert!(
            stderr(&output).contains("needs a GPU adapter"),
            "{}",
            stderr(&output)
        );
        return;
    }
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let suite = &report["suites"][0];
    assert_eq!(suite["suite"], "gpu");
    assert!(!suite["adapter"]
        .as_str()
        .expect("an adapter name")
        .is_empty());
    let figures = suite["figures"].as_array().expect("figures");
    let names: Vec<&str> = figures
        .iter()
        .filter_map(|f| f["figure"].as_str())
        .collect();
    for kernel in ["embed", "rerank", "simulate", "blake3"] {
        assert!(
            names.iter().any(|n| n.starts_with(kernel)),
            "no {kernel} in {names:?}"
        );
    }
    for figure in figures {
        let (value, bound, ratio) = (
            figure["value"].as_f64().expect("value"),
            figure["bound"].as_f64().expect("the CPU reference"),
            figure["ratio"].as_f64().expect("ratio"),
        );
        assert!(value > 0.0 && bound > 0.0);
        assert!((ratio - value / bound).abs() < 1e-9 * ratio.max(1.0));
    }
}
