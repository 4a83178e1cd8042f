//! `fabric run`: determinism, conservation of jobs, routing invariants, replay of the log.

use std::path::Path;
use std::process::Command;

use crate::support::{fabric, DEFAULT_CONFIG};
use fabric_events::{Body, ExportLine};
use fabric_ledger::Ledger;
use fabric_projections::State;
use fabric_sim::sim_ledger_key;
use proptest::prelude::*;
use serde_json::Value;

/// Runs `fabric run --json` into `dir/data` with reports in `dir/out`; returns the summary.
fn run_json(dir: &Path, config: &str, seed: u64, jobs: u64) -> Value {
    let data = dir.join("data");
    let out = dir.join("out");
    let (seed, jobs) = (seed.to_string(), jobs.to_string());
    let output = fabric(&[
        "run",
        "--config",
        config,
        "--seed",
        &seed,
        "--jobs",
        &jobs,
        "--data",
        data.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(
        output.status.success(),
        "fabric run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints one JSON object on stdout")
}

fn assert_no_nulls(value: &Value, path: &str) {
    match value {
        Value::Null => panic!("summary has a null at {path}"),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                assert_no_nulls(item, &format!("{path}[{i}]"));
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                assert_no_nulls(item, &format!("{path}.{key}"));
            }
        }
        _ => {}
    }
}

fn u(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a count: {value}"))
}

/// What replaying a stored run found.
struct Replay {
    state_hash: String,
    assignments: u64,
    running_max_seen: u64,
}

/// Folds the stored log of a run from scratch, checking every assignment against the state
/// just before it: the node is healthy, has the job's skills and has a free slot.
fn replay(data: &Path, seed: u64) -> Replay {
    let ledger = Ledger::open(data.join("ledger"), sim_ledger_key(seed)).expect("ledger opens");
    let mut state = State::new();
    let mut assignments = 0;
    let mut running_max_seen = 0;
    for entry in ledger.entries(0..ledger.len()) {
        let entry = entry.expect("stored entries read back");
        let event = entry.event().expect("stored events decode");
        if let Body::JobAssigned(assigned) = &event.body {
            let node_ix = state
                .node_ix(&assigned.node)
                .expect("assigned to a registered node");
            let node = &state.nodes()[node_ix as usize];
            let job = &state.jobs()[state.job_ix(assigned.job).expect("known job") as usize];
            let skills = state.classes()[job.class as usize].skills;
            assert!(
                node.healthy,
                "seq {}: job {} assigned to unhealthy {}",
                entry.seq, assigned.job, node.name
            );
            assert!(
                node.capabilities.covers(skills),
                "seq {}: job {} assigned to {} which lacks its skills",
                entry.seq,
                assigned.job,
                node.name
            );
            assert!(
                (node.running.len() as u32) < node.max_concurrency,
                "seq {}: {} already runs {} of {}",
                entry.seq,
                node.name,
                node.running.len(),
                node.max_concurrency
            );
            assignments += 1;
        }
        state
            .admit(&entry.author, &event)
            .unwrap_or_else(|err| panic!("seq {}: stored event does not fit: {err}", entry.seq));
        let busiest = state
            .nodes()
            .iter()
            .map(|node| {
                assert!(
                    node.running.len() as u32 <= node.max_concurrency,
                    "{} over its max concurrency",
                    node.name
                );
                node.running.len() as u64
            })
            .max()
            .unwrap_or(0);
        running_max_seen = running_max_seen.max(busiest);
    }
    Replay {
        state_hash: state.state_hash().to_hex(),
        assignments,
        running_max_seen,
    }
}

/// Runs `fabric run --json` in `cwd` as the acceptance asks: `--data NAME`, reports where they
/// go by default (`reports/<NAME>-seed<S>-jobs<J>-nodes6`).
fn run_in(cwd: &Path, data: &str, seed: u64, jobs: u64) -> Value {
    let (seed, jobs) = (seed.to_string(), jobs.to_string());
    let output = Command::new(env!("CARGO_BIN_EXE_fabric"))
        .current_dir(cwd)
        .args([
            "run",
            "--config",
            DEFAULT_CONFIG,
            "--seed",
            &seed,
            "--jobs",
            &jobs,
            "--data",
            data,
            "--json",
        ])
        .output()
        .expect("the fabric binary runs");
    assert!(
        output.status.success(),
        "fabric run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints one JSON object on stdout")
}

#[test]
fn the_same_seed_gives_the_same_log_and_another_seed_another_root() {
    let work = tempfile::tempdir().expect("tempdir");
    let summary_a = run_in(work.path(), "A", 7, 20_000);
    let summary_b = run_in(work.path(), "B", 7, 20_000);
    let summary_c = run_in(work.path(), "C", 8, 20_000);
    assert_eq!(summary_a["merkle_root"], summary_b["merkle_root"]);
    assert_eq!(summary_a["state_hash"], summary_b["state_hash"]);
    assert_ne!(summary_a["merkle_root"], summary_c["merkle_root"]);
    let reports_a = work.path().join("reports/A-seed7-jobs20000-nodes6");
    let reports_b = work.path().join("reports/B-seed7-jobs20000-nodes6");
    let events_a = std::fs::read(reports_a.join("events.ndjson")).expect("events.ndjson of A");
    let events_b = std::fs::read(reports_b.join("events.ndjson")).expect("events.ndjson of B");
    assert!(
        events_a == events_b,
        "events.ndjson differs between two runs of seed 7"
    );
    let a = work.path().join("A");
    let a = a.as_path();
    let out_a = reports_a.as_path();

    // Conservation: every submitted job is completed, failed, or still waiting somewhere.
    let s = &summary_a;
    assert_no_nulls(s, "summary");
    let status = &s["jobs_status"];
    assert_eq!(u(&status["submitted"]), 20_000);
    assert_eq!(
        u(&status["submitted"]),
        u(&status["completed"])
            + u(&status["failed"])
            + u(&status["queued"])
            + u(&status["running"])
            + u(&status["cancelled"])
    );
    assert!(u(&s["spillovers"]) >= 1, "no spillover in {s}");
    assert!(u(&s["requeues"]) >= 1, "no requeue in {s}");
    let spills_max = u(&s["spills_per_job_max"]);
    assert!(
        spills_max < u(&s["shards_count"]),
        "a job moved {spills_max} times"
    );
    assert_eq!(u(&s["anomalies"]), 0);

    // The export is the ledger, line for line, and every line verifies on its own.
    let text = String::from_utf8(events_a).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, u(&s["events"]));
    for (seq, line) in lines.iter().enumerate().step_by(97) {
        let entry = ExportLine::parse(line)
            .and_then(|l| l.verify())
            .expect("export line verifies");
        assert_eq!(entry.seq, seq as u64);
    }
    assert_eq!(
        ExportLine::parse(lines[lines.len() - 1])
            .expect("parses")
            .hash
            .to_hex()
            .len(),
        64
    );

    // The other reports are there and well-formed.
    let shards: Value =
        serde_json::from_slice(&std::fs::read(out_a.join("shards.json")).expect("shards.json"))
            .expect("json");
    let samples = shards["samples"].as_array().expect("samples");
    assert!(samples.len() >= 4 * 2);
    for key in [
        "tick",
        "shard",
        "queue_depth",
        "running",
        "completed",
        "spilled_in",
        "spilled_out",
        "healthy_nodes",
    ] {
        assert!(samples[0].get(key).is_some(), "sample lacks {key}");
    }
    let script: Value = serde_json::from_slice(
        &std::fs::read(out_a.join("owner-script.json")).expect("owner-script.json"),
    )
    .expect("json");
    let commands = script["commands"].as_array().expect("commands");
    assert_eq!(
        commands.len(),
        4 * 4,
        "pause, resume and two budgets per shard"
    );
    assert!(commands
        .iter()
        .any(|c| c["command"]["action"]["command"] == "pause_shard"));

    // Rebuilding the projections from the stored log gives the live run's state hash, and no
    // assignment broke the rules on the way.
    let replayed = replay(a, 7);
    assert_eq!(Value::String(replayed.state_hash), s["state_hash"]);
    assert!(replayed.assignments >= 20_000);
    assert!(replayed.running_max_seen >= 1);
}

/// The default world with outages made frequent, so short runs see failures too.
fn stormy_config(dir: &Path) -> String {
    let text = std::fs::read_to_string(DEFAULT_CONFIG).expect("default config");
    let mut stormy = String::new();
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match key {
            "epoch_ticks" => stormy.push_str("epoch_ticks = 40"),
            "outage_ppm" => stormy.push_str("outage_ppm = 600_000"),
            _ => stormy.push_str(line),
        }
        stormy.push('\n');
    }
    let path = dir.join("stormy.toml");
    std::fs::write(&path, stormy).expect("write config");
    path.to_str().expect("utf-8").to_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    /// Over random seeds: no node ever runs more than its max concurrency, no job goes to an
    /// unhealthy node or one lacking its skills, jobs are conserved, and the replayed log
    /// gives the live state hash.
    #[test]
    fn routing_invariants_hold_for_any_seed(seed in any::<u64>(), jobs in 300u64..1500) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = stormy_config(dir.path());
        let summary = run_json(dir.path(), &config, seed, jobs);
        let status = &summary["jobs_status"];
        prop_assert_eq!(
            u(&status["submitted"]),
            u(&status["completed"]) + u(&status["failed"]) + u(&status["queued"]) + u(&status["running"]) + u(&status["cancelled"])
        );
        prop_assert_eq!(u(&status["submitted"]), jobs);
        let replayed = replay(&dir.path().join("data"), seed);
        prop_assert_eq!(Value::String(replayed.state_hash), summary["state_hash"].clone());
    }
}

#[test]
fn a_data_folder_of_another_run_is_refused_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    run_json(dir.path(), DEFAULT_CONFIG, 3, 200);
    let data = dir.path().join("data");
    let out = dir.path().join("out2");
    let args = |force: bool| {
        let mut args = vec![
            "run",
            "--jobs",
            "100",
            "--data",
            data.to_str().expect("utf-8"),
            "--out",
            out.to_str().expect("utf-8"),
            "--config",
            DEFAULT_CONFIG,
        ];
        if force {
            args.push("--force");
        }
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let refused = fabric(&args(false).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("already holds the run data-seed3-jobs200-nodes6"),
        "{message}"
    );
    assert!(message.contains("--force"), "{message}");
    let forced = fabric(&args(true).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    let run_file: Value =
        serde_json::from_slice(&std::fs::read(data.join("run.json")).expect("run.json"))
            .expect("json");
    assert_eq!(run_file["jobs"], 100);
    assert_eq!(
        run_file["world"]["shards"].as_array().map(Vec::len),
        Some(4)
    );

    // A folder with files no run wrote is never wiped, even with --force.
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).expect("mkdir");
    std::fs::write(foreign.join("notes.txt"), "mine").expect("write");
    let output = fabric(&[
        "run",
        "--jobs",
        "10",
        "--force",
        "--config",
        DEFAULT_CONFIG,
        "--data",
        foreign.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("notes.txt"));
    assert!(foreign.join("notes.txt").exists());
}

#[test]
fn a_bad_config_is_refused_with_its_file_line_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(DEFAULT_CONFIG).expect("default config");
    let cases = [
        (
            "queue_budget = 6000",
            "queue_budget = -5",
            "shards.earth.queue_budget",
        ),
        (
            "spillover = [\"luna\", \"mars\"]",
            "spillover = [\"luna\", \"venus\"]",
            "shards.earth.spillover",
        ),
        ("region = \"luna\"", "region = \"venus\"", "region"),
        (
            "latency_budget_ms = 120",
            "latency_budget_ms = 120\nflavour = \"mint\"",
            "flavour",
        ),
    ];
    for (from, to, field) in cases {
        assert!(text.contains(from), "the default config has no `{from}`");
        let bad = text.replacen(from, to, 1);
        let line = bad
            .lines()
            .position(|l| l.contains(to.lines().last().expect("a line")))
            .expect("edited line")
            + 1;
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &bad).expect("write");
        let data = dir.path().join("data");
        let output = fabric(&[
            "run",
            "--config",
            path.to_str().expect("utf-8"),
            "--data",
            data.to_str().expect("utf-8"),
            "--jobs",
            "10",
        ]);
        assert!(!output.status.success(), "{to} was accepted");
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(
            message.contains(&format!("bad.toml:{line}:")),
            "no file:line {line} for `{to}`: {message}"
        );
        assert!(
            message.contains(field),
            "no field {field} for `{to}`: {message}"
        );
        assert!(!data.exists(), "a bad config created the data folder");
    }
}

#[test]
fn a_run_whose_jobs_no_node_can_take_stops_as_stalled_and_counts_them() {
    // Luna's jobs needing astronomy: only helios has it, and helios's treaty does not serve
    // luna's region, while luna spills only to earth, which has none. They can never run.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = std::fs::read_to_string(DEFAULT_CONFIG).expect("default config");
    let kinds = text
        .find("[[workload.kinds]]\nname")
        .expect("a kinds table");
    text.insert_str(
        kinds,
        "[[workload.kinds]]\nname = \"luna.stargazing\"\nshard = \"luna\"\nweight = 40\nskills = [\"astronomy\"]\nduration_ticks_min = 1\nduration_ticks_max = 2\ndeadline_slack_ticks = 10\nbudget_micros = 1000\nfailure_ppm = 0\n\n",
    );
    let config = dir.path().join("stargazing.toml");
    std::fs::write(&config, text).expect("write config");
    let summary = run_json(dir.path(), config.to_str().expect("utf-8"), 5, 600);
    assert_eq!(summary["drained"], false);
    let reason = summary["stop_reason"].as_str().expect("a stop reason");
    assert!(reason.starts_with("stalled"), "{reason}");
    let status = &summary["jobs_status"];
    assert!(u(&status["queued"]) > 0);
    assert_eq!(u(&status["running"]), 0);
    assert_eq!(
        u(&status["submitted"]),
        u(&status["completed"]) + u(&status["failed"]) + u(&status["queued"])
    );
    // It stopped within an outage's reach of the last movement, not at the drain limit.
    assert!(u(&summary["ticks"]) < 2_000, "{}", summary["ticks"]);
}
