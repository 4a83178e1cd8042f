//! Keys, events and helpers shared by the tests.

use std::path::Path;
use std::process::{Command, Output};

use fabric_events::{derive_signing_key, Event, Heartbeat, Role, SignedEvent, SigningKey};

/// The world of `config/fabric.toml`.
pub const DEFAULT_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/fabric.toml");

/// Runs the `fabric` binary with `args` and waits for it.
pub fn fabric(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fabric"))
        .args(args)
        .output()
        .expect("the fabric binary runs")
}

/// A command's stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A command's stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `fabric run` of the default world into `dir/data` (reports in `dir/out`) with `extra`
/// arguments, and returns what it did.
pub fn run_world(dir: &Path, seed: u64, jobs: u64, extra: &[&str]) -> Output {
    let (data, out) = (dir.join("data"), dir.join("out"));
    let (seed, jobs) = (seed.to_string(), jobs.to_string());
    let mut args = vec![
        "run",
        "--config",
        DEFAULT_CONFIG,
        "--seed",
        &seed,
        "--jobs",
        &jobs,
        "--data",
        path(&data),
        "--out",
        path(&out),
    ];
    args.extend_from_slice(extra);
    fabric(&args)
}

/// Runs `fabric run` of the default world into `dir/data` (reports in `dir/out`) and returns
/// the data folder.
pub fn small_run(dir: &Path, seed: u64, jobs: u64) -> std::path::PathBuf {
    let output = run_world(dir, seed, jobs, &[]);
    assert!(output.status.success(), "fabric run: {}", stderr(&output));
    dir.join("data")
}

/// A path as a command-line argument.
pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 paths")
}

/// The ledger key of the tests' ledgers.
pub fn ledger_key() -> SigningKey {
    derive_signing_key(11, "tests/ledger")
}

/// A node key.
pub fn node_key(index: u32) -> SigningKey {
    derive_signing_key(11, &format!("tests/node-{index}"))
}

/// `count` heartbeats signed by a few node keys, nonces from `first_nonce`.
pub fn heartbeats(first_nonce: u64, count: usize) -> Vec<SignedEvent> {
    let keys: Vec<SigningKey> = (0..4).map(node_key).collect();
    (0..count as u64)
        .map(|i| {
            let nonce = first_nonce + i;
            let key = &keys[(nonce % 4) as usize];
            let event = Event::new(
                Role::Node,
                nonce / 10,
                nonce,
                Heartbeat {
                    node: format!("earth.node-{}", nonce % 4),
                    running_jobs: (nonce % 13) as u32,
                },
            );
            SignedEvent::sign(&event, key).expect("heartbeats are small")
        })
        .collect()
}
