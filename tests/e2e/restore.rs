//! Crash and restore: `fabric run` killed with SIGKILL at random moments and continued with
//! `fabric resume` ends exactly where an uninterrupted run ends, and `fabric audit` passes.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{fabric, path, DEFAULT_CONFIG};
use serde_json::Value;

const JOBS: &str = "3000";

fn run_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--config",
        DEFAULT_CONFIG,
        "--seed",
        "5",
        "--jobs",
        JOBS,
        "--data",
        data,
        "--out",
        out,
        "--json",
        // A lying GPU node, so the kills also cut through attestation mismatches.
        "--byzantine",
        "mars.gpu-helion:0.2",
    ]
}

fn summary(output: &Output, what: &str) -> Value {
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints one JSON object")
}

/// Starts `args`, kills it with SIGKILL after `delay` (if it is still running), and says
/// whether it was killed.
fn kill_after(args: &[&str], delay: Duration) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fabric"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the fabric binary starts");
    std::thread::sleep(delay);
    let killed = matches!(child.try_wait(), Ok(None));
    child.kill().expect("SIGKILL is delivered");
    child.wait().expect("the child is reaped");
    killed
}

/// A tiny deterministic generator: the kill moments are random but reproducible from the seed
/// printed when the test fails.
fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

#[test]
fn runs_killed_at_random_moments_and_resumed_end_where_an_uninterrupted_run_ends() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (reference_data, reference_out) = (dir.path().join("ref"), dir.path().join("ref-out"));
    let started = Instant::now();
    let reference = summary(
        &fabric(&run_args(path(&reference_data), path(&reference_out))),
        "the uninterrupted run",
    );
    let run_time = started.elapsed();
    let reference_events =
        std::fs::read(reference_out.join("events.ndjson")).expect("reference events");

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut rng = seed;
    let mut kills = 0;
    for attempt in 0..3 {
        let data = dir.path().join(format!("killed-{attempt}"));
        let out = dir.path().join(format!("killed-{attempt}-out"));
        let (data, out) = (path(&data).to_owned(), path(&out).to_owned());
        // First kill during `fabric run`, then up to two more during the resumes.
        // The first kill lands within the run; the resumes have less left to do.
        let mut args = run_args(&data, &out);
        let run_ms = run_time.as_millis() as u64;
        let mut window_ms = (run_ms / 10, run_ms * 8 / 10);
        for _ in 0..3 {
            let delay_ms = window_ms.0 + next(&mut rng) % (window_ms.1 - window_ms.0 + 1);
            window_ms = (0, run_ms / 3);
            if kill_after(&args, Duration::from_millis(delay_ms)) {
                kills += 1;
            }
            args = vec!["resume", "--data", &data, "--out", &out, "--json"];
        }
        let resumed = summary(
            &fabric(&["resume", "--data", &data, "--out", &out, "--json"]),
            &format!("the resume of attempt {attempt} (kill seed {seed})"),
        );
        for key in ["merkle_root", "state_hash", "events", "ticks"] {
            assert_eq!(
                resumed[key], reference[key],
                "{key} after kills (attempt {attempt}, kill seed {seed})"
            );
        }
        let events = std::fs::read(Path::new(&out).join("events.ndjson")).expect("events");
        assert!(
            events == reference_events,
            "events.ndjson after a resume differs from the uninterrupted run's (kill seed {seed})"
        );
        let audit = fabric(&["audit", "--data", &data, "--json"]);
        let verdict = summary(&audit, "the audit of a resumed run");
        assert_eq!(verdict["ok"], true);
        assert_eq!(verdict["merkle_root"], reference["merkle_root"]);
        assert_eq!(verdict["state_hash"], reference["state_hash"]);
    }
    assert!(
        kills >= 3,
        "only {kills} kills hit a running process (kill seed {seed})"
    );
}

/// Flips one byte in the newest snapshot's first chunk of a stored run.
fn damage_newest_snapshot(data: &Path) -> u64 {
    let db = fabric_ledger::sled_config(&data.join("ledger"))
        .open()
        .expect("sled opens");
    let tree = db
        .open_tree(fabric_ledger::SNAPSHOT_TREE)
        .expect("snapshot tree");
    let (key, value) = tree
        .scan_prefix(b"c")
        .last()
        .expect("a snapshot chunk")
        .expect("readable");
    let tree_size = u64::from_be_bytes(key[1..9].try_into().expect("8 bytes"));
    let first_chunk: Vec<u8> = [&key[..9], &0u32.to_be_bytes()[..]].concat();
    let mut damaged = tree
        .get(&first_chunk)
        .expect("readable")
        .unwrap_or(value)
        .to_vec();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x10;
    tree.insert(first_chunk, damaged).expect("write");
    db.flush().expect("flush");
    tree_size
}

#[test]
fn a_damaged_newest_snapshot_is_skipped_and_the_one_before_is_used() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (reference_data, reference_out) = (dir.path().join("ref"), dir.path().join("ref-out"));
    let reference = summary(
        &fabric(&run_args(path(&reference_data), path(&reference_out))),
        "the uninterrupted run",
    );
    // A run stopped after a few checkpoints: a finished run resumed is the same thing, since
    // resume continues from the newest checkpoint either way.
    let data = dir.path().join("damaged");
    let out = dir.path().join("damaged-out");
    summary(
        &fabric(&run_args(path(&data), path(&out))),
        "the run to damage",
    );
    let damaged_size = damage_newest_snapshot(&data);
    let resumed = fabric(&[
        "resume",
        "--data",
        path(&data),
        "--out",
        path(&out),
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&resumed.stderr).into_owned();
    let resumed = summary(&resumed, "the resume past a damaged snapshot");
    assert!(
        stderr.contains(&format!("skipped checkpoint at tree size {damaged_size}")),
        "resume does not say it skipped the damaged snapshot: {stderr}"
    );
    let restored_from = resumed["resumed"]["checkpoint_tree_size"]
        .as_u64()
        .expect("a checkpoint was used");
    assert!(restored_from < damaged_size);
    assert_eq!(resumed["merkle_root"], reference["merkle_root"]);
    assert_eq!(resumed["state_hash"], reference["state_hash"]);
    // The audit names the damaged snapshot.
    let audit = fabric(&["audit", "--data", path(&data), "--json"]);
    assert!(!audit.status.success());
    let verdict: Value = serde_json::from_slice(&audit.stdout).expect("JSON verdict");
    assert_eq!(verdict["failure"]["what"], "storage");
    assert_eq!(verdict["failure"]["seq"], damaged_size);
}
