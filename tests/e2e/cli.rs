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
fn bench_forwards_to_fabric_bench_its_help_included() {
    // `fabric bench` runs the fabric-bench next to it (`cargo test --workspace` builds it).
    let output = fabric(&["bench", "--help"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let help = stdout(&output);
    assert!(
        help.contains("Usage: fabric bench [OPTIONS] [SUITES]...") && help.contains("--quick"),
        "{help}"
    );
    // Its exit status and messages are the bench's.
    let output = fabric(&["bench", "no-such-suite"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("invalid value 'no-such-suite'"),
        "{}",
        stderr(&output)
    );
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
