//! `fabric bench --quick --json`, through the `fabric` next to `fabric-bench`: every suite's
//! figures, each with its bound (or peer, or target) and its ratio, from one run that starts
//! its own PostgreSQL, nats-server, Redis and Celery workers.

use serde_json::Value;

use crate::support::{fabric, path, stderr, stdout, DEFAULT_CONFIG};

/// The figures each suite must print, by suite.
fn expected_figures() -> Vec<(&'static str, Vec<String>)> {
    let owned = |names: &[&str]| names.iter().map(|name| (*name).to_owned()).collect();
    let route = [100, 1_000, 10_000]
        .into_iter()
        .flat_map(|nodes| {
            ["p50", "p99", "max"].map(|quantile| format!("router {quantile}, {nodes} nodes"))
        })
        .collect();
    vec![
        (
            "limits",
            owned(&[
                "ed25519 sign",
                "ed25519 verify",
                "ed25519 batch verify",
                "blake3 of an entry",
                "sled insert, flush per batch",
                "store, packed blocks",
                "bound: signed pipeline",
                "bound: pre-signed append",
                "bound: verify-only audit",
            ]),
        ),
        (
            "ingest",
            owned(&[
                "append, pre-signed",
                "append, pre-signed, pipelined",
                "append, signed in the pipeline",
            ]),
        ),
        ("audit", owned(&["audit"])),
        ("route", route),
        (
            "restore",
            owned(&[
                "restore, short history",
                "restore, long history",
                "restore, long / short",
            ]),
        ),
        (
            "peers",
            owned(&[
                "vs PostgreSQL, pre-signed",
                "vs JetStream, pre-signed",
                "vs PostgreSQL, signed in the pipeline",
                "vs JetStream, signed in the pipeline",
            ]),
        ),
        (
            "gpu",
            owned(&[
                "embed (int8 matmul)",
                "rerank (top 10)",
                "simulate (diffusion)",
                "blake3 (batch hashing)",
            ]),
        ),
        (
            "nats",
            owned(&[
                "run with --nats",
                "publication lag p50",
                "publication lag p99",
                "drain after the run",
            ]),
        ),
        (
            "serve",
            owned(&[
                "accepted jobs",
                "accepted jobs vs ingest",
                "events appended by the server",
                "submission latency p50",
                "submission latency p99",
            ]),
        ),
        (
            "celery",
            owned(&[
                "Celery+Redis jobs",
                "Celery+Redis latency p50",
                "Celery+Redis latency p99",
            ]),
        ),
        (
            "nodes",
            owned(&[
                "node jobs vs Celery+Redis",
                "node jobs vs signatures",
                "node job latency p50",
                "node job latency p99",
            ]),
        ),
        (
            "failover",
            owned(&[
                "failover p50",
                "failover p99",
                "replicated vs single host",
                "sequencer CPU per job",
            ]),
        ),
    ]
}

#[test]
fn bench_quick_json_prints_every_figure_with_its_ratio() {
    let scratch = tempfile::tempdir().expect("temporary folder");
    // Fewer events and jobs than --quick's own sizes: the suite checks the report's shape,
    // not the numbers (which docs/BENCHMARKS.md gets from a release build).
    let output = fabric(&[
        "bench",
        "--quick",
        "--json",
        "--events",
        "6000",
        "--jobs",
        "10000",
        "--model-jobs",
        "300",
        "--config",
        DEFAULT_CONFIG,
        "--dir",
        path(scratch.path()),
    ]);
    assert!(output.status.success(), "fabric bench: {}", stderr(&output));
    let report: Value = serde_json::from_str(&stdout(&output)).expect("bench prints JSON");

    assert!(report["nproc"].as_u64().is_some_and(|n| n >= 1));
    assert_eq!(report["quick"], Value::Bool(true));
    let mut skipped: Vec<serde_json::Value> =
        report["skipped"].as_array().expect("skipped").clone();
    let gpu_required = std::env::var("FABRIC_GPU").as_deref() == Ok("require");
    let gpu_skipped = !gpu_required && skipped.iter().any(|s| s["suite"] == "gpu");
    if gpu_skipped {
        // Without FABRIC_GPU=require a machine without an adapter leaves gpu out, saying why.
        skipped.retain(|s| s["suite"] != "gpu");
    }
    assert_eq!(
        skipped,
        vec![serde_json::json!({"suite": "scale", "why": "left out by --quick"})],
        "--quick leaves out scale, and only scale"
    );
    let suites = report["suites"].as_array().expect("suites");
    for (suite, figures) in expected_figures() {
        if suite == "gpu" && gpu_skipped {
            continue;
        }
        let printed = suites
            .iter()
            .find(|printed| printed["suite"] == suite)
            .unwrap_or_else(|| panic!("suite {suite} is missing"));
        let rows = printed["figures"].as_array().expect("figures");
        let names: Vec<&str> = rows
            .iter()
            .filter_map(|row| row["figure"].as_str())
            .collect();
        assert_eq!(names, figures, "the figures of suite {suite}");
        for row in rows {
            let name = &row["figure"];
            let number = |field: &str| {
                row[field].as_f64().unwrap_or_else(|| {
                    panic!("{suite} / {name}: {field} is missing or not a number: {row}")
                })
            };
            let (value, bound, ratio) = (number("value"), number("bound"), number("ratio"));
            assert!(
                value.is_finite() && value >= 0.0,
                "{suite} / {name}: value {value}"
            );
            assert!(
                bound.is_finite() && bound > 0.0,
                "{suite} / {name}: bound {bound}"
            );
            assert!(
                (ratio - value / bound).abs() <= 1e-9 * ratio.abs().max(1.0),
                "{suite} / {name}: ratio {ratio} is not value / bound"
            );
            assert!(
                ["bound", "linear_scaling", "peer", "target", "baseline"]
                    .contains(&row["against"].as_str().unwrap_or_default()),
                "{suite} / {name}: compared with {}",
                row["against"]
            );
            assert!(row["unit"].as_str().is_some_and(|unit| !unit.is_empty()));
            assert!(row["what"].as_str().is_some_and(|what| !what.is_empty()));
        }
    }
    let peers = suites
        .iter()
        .find(|printed| printed["suite"] == "peers")
        .expect("peers");
    let notes = peers["notes"].to_string();
    assert!(
        notes.contains("synchronous_commit=on") && notes.contains("fsync=on"),
        "the PostgreSQL peer runs with the ledger's durability: {notes}"
    );
    let celery = suites
        .iter()
        .find(|printed| printed["suite"] == "celery")
        .expect("celery");
    let notes = celery["notes"].to_string();
    assert!(
        notes.contains(
            "2 prefork worker processes, acks late, prefetch multiplier 16, results stored"
        ),
        "the Celery peer runs as the comparison fixes it: {notes}"
    );
    assert_eq!(
        celery["events"], 300,
        "the Celery peer ran the jobs asked for"
    );
    // The bench cleans up after itself, the servers' folders included.
    assert_eq!(
        std::fs::read_dir(scratch.path()).expect("lists").count(),
        0,
        "the bench left files in its folder"
    );
}
