//! The `fabric` binary as a user runs it.

use crate::support::{fabric, stderr, stdout};
use std::os::unix::fs::PermissionsExt;

#[test]
fn help_has_a_line_per_command() {
    let output = fabric(&["--help"]);
    assert!(output.status.success());
    let help = stdout(&output);
    for command in ["run", "keygen", "bench"] {
        assert!(
            help.lines()
                .any(|line| line.trim_start().starts_with(command)),
            "no line for {command} in:\n{help}"
        );
    }
}

#[test]
fn keygen_writes_a_private_key_pair_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.key");
    let path_text = path.to_str().expect("utf-8 path");
    let output = fabric(&["keygen", "--out", path_text]);
    assert!(output.status.success(), "{}", stderr(&output));
    let mode = std::fs::metadata(&path)
        .expect("written")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let key = fabric_events::keys::load_secret(&path).expect("loads");
    let public = fabric_events::keys::load_public(&dir.path().join("node.key.pub")).expect("loads");
    assert_eq!(public, key.verifying_key());
    assert!(stdout(&output).contains(&hex_of(&public)));

    let again = fabric(&["keygen", "--out", path_text]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        fabric_events::keys::load_secret(&path)
            .expect("unchanged")
            .to_bytes(),
        key.to_bytes()
    );

    let forced = fabric(&["keygen", "--out", path_text, "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_ne!(
        fabric_events::keys::load_secret(&path)
            .expect("replaced")
            .to_bytes(),
        key.to_bytes()
    );
}

fn hex_of(key: &fabric_events::VerifyingKey) -> String {
    fabric_events::PublicKey::from(key).to_hex()
}

#[test]
fn keygen_into_a_missing_folder_names_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing").join("k.key");
    let output = fabric(&["keygen", "--out", path.to_str().expect("utf-8")]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.starts_with("error:"), "{message}");
    assert!(message.contains("missing"), "{message}");
}

#[test]
fn bench_ingest_reports_throughput_next_to_its_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = fabric(&[
        "bench",
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
fn bench_refuses_a_batch_over_the_ledger_limit() {
    let output = fabric(&["bench", "ingest", "--batch", "1000000"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("over the ledger's limit"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bench_gpu_reports_each_kernel_on_the_adapter_against_its_cpu_reference() {
    let output = fabric(&["bench", "gpu", "--quick", "--json"]);
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

/// `fabric run` in an empty folder, outside the source tree and without `--config`: the
/// embedded default world, with the data and the reports in that folder. Its log is the one
/// `--config config/fabric.toml` gives, and a resume continues it.
#[test]
fn run_without_config_uses_the_embedded_world_and_writes_where_it_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fabric"))
        .args(["run", "--jobs", "200", "--json"])
        .current_dir(dir.path())
        .output()
        .expect("the fabric binary runs");
    assert!(output.status.success(), "{}", stderr(&output));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert!(dir.path().join("data/run.json").is_file());
    assert!(dir.path().join("data/ledger").is_dir());
    let reports = dir.path().join("reports/data-seed1-jobs200-nodes6");
    assert!(reports.join("events.ndjson").is_file());
    assert!(reports.join("summary.json").is_file());
    let run_file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("data/run.json")).expect("run.json"))
            .expect("JSON");
    assert_eq!(run_file["config"], "config/fabric.toml");

    let other = tempfile::tempdir().expect("tempdir");
    let (data, out) = (other.path().join("data"), other.path().join("out"));
    let with_file = fabric(&[
        "run",
        "--config",
        crate::support::DEFAULT_CONFIG,
        "--jobs",
        "200",
        "--json",
        "--data",
        data.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(with_file.status.success(), "{}", stderr(&with_file));
    let with_file: serde_json::Value = serde_json::from_slice(&with_file.stdout).expect("JSON");
    assert_eq!(summary["merkle_root"], with_file["merkle_root"]);

    // A finished run resumes to the same log (resume reads the world from run.json).
    let resumed = std::process::Command::new(env!("CARGO_BIN_EXE_fabric"))
        .args(["resume", "--json", "--out", "resumed"])
        .current_dir(dir.path())
        .output()
        .expect("the fabric binary runs");
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let resumed: serde_json::Value = serde_json::from_slice(&resumed.stdout).expect("JSON");
    assert_eq!(summary["merkle_root"], resumed["merkle_root"]);
}
