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
