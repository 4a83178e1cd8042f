//! GPU jobs in the fabric: GPU nodes run the kernels (on the machine's adapter under
//! `FABRIC_GPU=require`), receipts name kernel, adapter and input; the ledger's verifier catches
//! a byzantine node's corrupted outputs; `fabric audit --reexecute` re-runs the receipts on the
//! CPU references and `--gpu` hashes the entries on the adapter.

use std::path::Path;

use serde_json::Value;

use crate::support::{fabric, path, run_world, stderr, stdout};

/// A run of the default world with a byzantine GPU node; returns its summary.
fn byzantine_run(dir: &Path, verify_fraction: &str) -> Value {
    let output = run_world(
        dir,
        4,
        3000,
        &[
            "--json",
            "--byzantine",
            "mars.gpu-helion:0.2",
            "--verify-fraction",
            verify_fraction,
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).expect("summary JSON")
}

fn audit(dir: &Path, extra: &[&str]) -> (bool, Value) {
    let data = dir.join("data");
    let mut args = vec!["audit", "--data", path(&data), "--json"];
    args.extend_from_slice(extra);
    let output = fabric(&args);
    let report: Value = serde_json::from_str(&stdout(&output)).expect("audit JSON");
    (output.status.success(), report)
}

#[test]
fn every_corruption_is_caught_when_every_receipt_is_verified() {
    let dir = tempfile::tempdir().expect("temp dir");
    let summary = byzantine_run(dir.path(), "1");
    let node = &summary["attestation"]["byzantine"][0];
    let injected = node["corruptions_injected"].as_u64().expect("a count");
    assert!(
        injected > 0,
        "the byzantine node corrupted nothing: {summary}"
    );
    assert_eq!(node["corruptions_detected"].as_u64(), Some(injected));
    assert_eq!(node["corruptions_missed"].as_u64(), Some(0));
    // Every job ended, and the ones that completed did so with a verified output.
    assert_eq!(summary["stop_reason"], "every job ended");
    assert_eq!(summary["jobs_status"]["queued"], 0);

    // The log: receipts name kernel, adapter and input; each mismatch carries the node's own
    // signed receipt as evidence, and the job completes later, on a node that got it right.
    let lines: Vec<Value> = std::fs::read_to_string(dir.path().join("out/events.ndjson"))
        .expect("events.ndjson")
        .lines()
        .map(|line| serde_json::from_str(line).expect("json"))
        .collect();
    let submitted_inputs: std::collections::HashMap<u64, String> = lines
        .iter()
        .filter(|l| l["kind"] == "job_submitted")
        .map(|l| {
            let data = &l["body"]["data"];
            (
                data["job"].as_u64().expect("job"),
                data["input_hash"].as_str().expect("hash").to_owned(),
            )
        })
        .collect();
    let gpu_receipts: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "job_receipt" && !l["body"]["data"]["kernel"].is_null())
        .collect();
    assert!(!gpu_receipts.is_empty());
    for receipt in &gpu_receipts {
        let data = &receipt["body"]["data"];
        let kernel = &data["kernel"];
        assert!(["simulate", "rerank"].contains(&kernel["id"].as_str().expect("id")));
        assert!(!kernel["adapter"].as_str().expect("adapter").is_empty());
        let job = data["job"].as_u64().expect("job");
        assert_eq!(
            kernel["input_hash"].as_str(),
            submitted_inputs.get(&job).map(String::as_str),
            "a receipt's input is its job's content address"
        );
    }
    let mismatches: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "attestation_mismatch")
        .collect();
    assert_eq!(mismatches.len() as u64, injected);
    for mismatch in &mismatches {
        let data = &mismatch["body"]["data"];
        assert_eq!(data["node"], "mars.gpu-helion");
        assert_ne!(data["expected_output_hash"], data["reported_output_hash"]);
        assert!(data["evidence"].as_str().expect("hex").len() > 2 * 96);
        let job = &data["job"];
        let seq = mismatch["seq"].as_u64().expect("seq");
        let completed_later = lines[seq as usize..].iter().any(|l| {
            l["kind"] == "job_receipt"
                && l["body"]["data"]["job"] == *job
                && l["body"]["data"]["outcome"] == "completed"
        });
        assert!(completed_later, "job {job} was reassigned and completed");
    }

    let (ok, report) = audit(dir.path(), &["--reexecute", "--gpu"]);
    assert!(ok, "{report}");
    assert!(report["reexecuted"].as_u64() > Some(injected));
    assert!(report["gpu_hashed"][0].as_u64() > Some(0), "{report}");
}

#[test]
fn without_verification_corruptions_get_through_and_reexecution_finds_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let summary = byzantine_run(dir.path(), "0");
    let node = &summary["attestation"]["byzantine"][0];
    let missed = node["corruptions_missed"].as_u64().expect("a count");
    assert!(missed > 0, "{summary}");
    assert_eq!(node["corruptions_detected"].as_u64(), Some(0));
    // The plain audit checks signatures, chain and state: the corrupted receipts are validly
    // signed lies, so only re-execution can tell.
    let (ok, _) = audit(dir.path(), &[]);
    assert!(ok);
    let (ok, report) = audit(dir.path(), &["--reexecute"]);
    assert!(!ok);
    assert_eq!(report["failure"]["what"], "reexecute", "{report}");
}

#[test]
fn a_bad_byzantine_or_verification_argument_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (args, message) in [
        (
            vec!["--byzantine", "mars.nowhere:0.2"],
            "the run has no node `mars.nowhere`",
        ),
        (vec!["--byzantine", "mars.gpu-helion"], "expected NODE:RATE"),
        (
            vec!["--byzantine", "mars.gpu-helion:2"],
            "is not between 0 and 1",
        ),
        (vec!["--verify-fraction", "1.5"], "is not between 0 and 1"),
    ] {
        let output = run_world(dir.path(), 1, 10, &args);
        assert!(!output.status.success());
        assert!(
            stderr(&output).contains(message),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}
