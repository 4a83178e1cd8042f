//! The workload and failure draws (pure functions of the seed), and resumes of cut logs.

use std::collections::BTreeSet;

use crate::workload::{scale_nodes, FailureSchedule, Workload};
use crate::world::{FailureSpec, JobKindSpec, NodeSpec, ShardSpec, WorkloadSpec, World};

fn world() -> World {
    let shard = |name: &str, spill: &str| ShardSpec {
        name: name.to_owned(),
        queue_budget: 100,
        latency_budget_ms: 200,
        spillover: vec![spill.to_owned()],
        specialties: Vec::new(),
        reputation_floor_ppm: 500_000,
        regions_served: vec!["north".into(), "south".into()],
        node_quota_jobs: 1_000,
        quota_window_ticks: 100,
    };
    let node = |name: &str, region: &str, latency_ms: u32| NodeSpec {
        name: name.to_owned(),
        region: region.to_owned(),
        capacity: 8,
        max_concurrency: 4,
        heartbeat_interval_ticks: 5,
        capabilities: vec!["cpu".into()],
        latency_ms,
        price_micros_per_hour: 1_000_000,
        reputation_ppm: 900_000,
    };
    let kind = |name: &str, shard: &str, weight: u32| JobKindSpec {
        name: name.to_owned(),
        shard: shard.to_owned(),
        weight,
        skills: vec!["cpu".into()],
        duration_ticks_min: 2,
        duration_ticks_max: 6,
        deadline_slack_ticks: 10,
        budget_micros: 100,
        failure_ppm: 100_000,
    };
    World {
        shards: vec![shard("north", "south"), shard("south", "north")],
        nodes: vec![node("north.a", "north", 50), node("south.b", "south", 190)],
        workload: WorkloadSpec {
            load_percent: 90,
            kinds: vec![kind("n.job", "north", 3), kind("s.job", "south", 1)],
        },
        failures: FailureSpec {
            epoch_ticks: 50,
            outage_ppm: 500_000,
            outage_heartbeats_min: 1,
            outage_heartbeats_max: 4,
        },
        checkpoint_interval_ticks: 50,
        owners: Default::default(),
    }
}

#[test]
fn every_job_arrives_once_with_consecutive_ids() {
    let workload = Workload::new(&world(), 9, 1_003);
    assert!(workload.ids_at(0).is_empty(), "tick 0 is genesis");
    let mut seen = Vec::new();
    for tick in 1..=workload.last_arrival_tick() + 2 {
        let ids = workload.ids_at(tick);
        assert!(ids.end - ids.start <= workload.arrivals_per_tick());
        seen.extend(ids);
    }
    assert_eq!(seen, (1..=1_003).collect::<Vec<_>>());
}

#[test]
fn jobs_are_a_function_of_seed_and_id_and_split_by_shard() {
    let a = Workload::new(&world(), 9, 500);
    let b = Workload::new(&world(), 9, 500);
    let c = Workload::new(&world(), 10, 500);
    assert_eq!(a.job(77, 3), b.job(77, 3));
    assert_ne!(
        a.job(77, 3).submission.input_hash,
        c.job(77, 3).submission.input_hash
    );
    let tick = 2;
    let north = a.arrivals(tick, "north");
    let south = a.arrivals(tick, "south");
    assert_eq!(north.len() + south.len(), a.ids_at(tick).count());
    assert!(north.iter().all(|job| job.submission.shard == "north"));
    // Weights 3:1 over 500 jobs: both kinds appear, north more often.
    let all: Vec<_> = (1..=500).map(|id| a.job(id, 1)).collect();
    let north_share = all.iter().filter(|j| j.submission.shard == "north").count();
    assert!((300..450).contains(&north_share), "{north_share}");
    for job in &all {
        let d = job.submission.duration_ticks;
        assert!((2..=6).contains(&d), "duration {d}");
        assert_eq!(job.submission.deadline_tick, 1 + 10 + u64::from(d));
    }
    // Run outcomes are drawn per (job, attempt): about 10% fail, the same each time.
    let failures = (1..=2_000)
        .filter(|id| a.run_fails(&a.job(*id, 1), 1))
        .count();
    assert!((120..300).contains(&failures), "{failures}");
    assert_eq!(a.run_fails(&a.job(5, 1), 1), b.run_fails(&b.job(5, 1), 1));
}

#[test]
fn outages_are_drawn_from_the_seed_and_bounded() {
    let spec = world().failures;
    let schedule = FailureSchedule::new(&spec, 4);
    let again = FailureSchedule::new(&spec, 4);
    let mut outages = 0;
    for node in 0..20 {
        let silent: Vec<bool> = (0..400)
            .map(|tick| schedule.silent(node, 5, tick))
            .collect();
        let silent_again: Vec<bool> = (0..400).map(|tick| again.silent(node, 5, tick)).collect();
        assert_eq!(silent, silent_again);
        assert!(!silent[0], "no node is silent at registration");
        for epoch in 0..8 {
            if let Some(range) = schedule.outage(node, 5, epoch) {
                outages += 1;
                let length = range.end - range.start;
                assert!((5..=20).contains(&length), "outage of {length} ticks");
                assert!(range.clone().all(|tick| schedule.silent(node, 5, tick)));
            }
        }
    }
    // 20 nodes × 8 epochs at 50%: outages happen, not everywhere.
    assert!((40..120).contains(&outages), "{outages}");
}

#[test]
fn scaled_worlds_add_uniquely_named_nodes_within_budget() {
    let world = world();
    let nodes = scale_nodes(&world, 3, 500);
    assert_eq!(nodes.len(), 500);
    assert_eq!(&nodes[..2], &world.nodes[..]);
    let names: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names.len(), 500);
    for node in &nodes[2..] {
        assert!(
            node.name.starts_with(&format!("{}.", node.region)),
            "{}",
            node.name
        );
        assert!(
            node.latency_ms <= 200,
            "{} has {} ms",
            node.name,
            node.latency_ms
        );
    }
    assert_eq!(scale_nodes(&world, 3, 500), nodes);
    assert_eq!(
        scale_nodes(&world, 3, 1),
        world.nodes,
        "never fewer than configured"
    );
}

/// A tick larger than one append is stored in several; a crash between them leaves part of the
/// tick in the log. A resume must propose the tick again, check the stored part and append
/// only the rest, ending with the uninterrupted run's log.
#[test]
fn a_resume_completes_a_tick_cut_between_its_appends() {
    use crate::driver::{resume, run, sim_ledger_key, RunSpec};
    use fabric_events::SignedEvent;
    use fabric_ledger::Ledger;

    let seed = 11;
    let spec = RunSpec {
        world: world(),
        seed,
        jobs: 300,
        append_events_max: 4,
        owner_script: Vec::new(),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let full = run(
        &spec,
        Ledger::open(dir.path().join("full"), sim_ledger_key(seed)).expect("open"),
        |_| {},
    )
    .expect("the uninterrupted run");
    let full_ledger = full.ledger;
    let reader = full_ledger.reader();
    let entries: Vec<fabric_events::Entry> = full_ledger
        .entries(0..full_ledger.len())
        .collect::<Result<_, _>>()
        .expect("entries read back");
    let tick_of = |seq: usize| entries[seq].event().expect("decodes").header.tick;
    let heads: Vec<u64> = reader
        .tree_heads()
        .expect("heads")
        .iter()
        .map(|head| head.tree_size)
        .collect();
    let snapshots = reader.snapshot_sizes().expect("snapshots");
    // Cut points inside a tick, after a checkpoint (so the restore starts from it).
    let cuts: Vec<u64> = heads
        .iter()
        .copied()
        .filter(|size| {
            let size = *size as usize;
            size > 0
                && size < entries.len()
                && tick_of(size - 1) == tick_of(size)
                && snapshots
                    .first()
                    .is_some_and(|first| (*first as usize) < size)
        })
        .collect();
    assert!(cuts.len() > 10, "the run has ticks cut between appends");
    for cut in [cuts[cuts.len() / 3], cuts[cuts.len() - 1]] {
        // The log as a crash after the append that ended at `cut` leaves it: the same appends
        // and snapshots up to there.
        let path = dir.path().join(format!("cut-{cut}"));
        let mut torn = Ledger::open(&path, sim_ledger_key(seed)).expect("open");
        let mut start = 0u64;
        for end in heads
            .iter()
            .copied()
            .filter(|size| *size > 0 && *size <= cut)
        {
            if snapshots.contains(&start) {
                let snapshot = reader.snapshot(start).expect("snapshot");
                torn.store_snapshot(start, &snapshot.bytes)
                    .expect("store snapshot");
            }
            let batch: Vec<SignedEvent> = entries[start as usize..end as usize]
                .iter()
                .map(|entry| SignedEvent {
                    author: entry.author,
                    signature: entry.signature,
                    signed: entry.signed.clone(),
                })
                .collect();
            torn.append(&batch).expect("append");
            start = end;
        }
        assert_eq!(torn.len(), cut);
        let resumed = resume(&spec, torn, |_| {}).expect("the resume");
        let report = &resumed.restored.as_ref().expect("a restore").0;
        assert!(
            report.checkpoint_tree_size.is_some(),
            "restored from a checkpoint"
        );
        assert_eq!(resumed.tree_head.root, full.tree_head.root, "cut at {cut}");
        assert_eq!(resumed.state.state_hash(), full.state.state_hash());
        assert_eq!(resumed.last_tick, full.last_tick);
    }
}

#[test]
fn a_resume_refuses_a_log_another_run_wrote() {
    use crate::driver::{resume, run, sim_ledger_key, RunSpec};
    use fabric_ledger::Ledger;

    let spec = |world: World| RunSpec {
        world,
        seed: 3,
        jobs: 50,
        append_events_max: fabric_ledger::BATCH_EVENTS_MAX,
        owner_script: Vec::new(),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Ledger::open(dir.path().join("ledger"), sim_ledger_key(3)).expect("open");
    let outcome = run(&spec(world()), ledger, |_| {}).expect("a run of 50 jobs");
    // Other node names give the nodes other keys: the receipts of the log's last tick are not
    // what this world's nodes would sign.
    let mut other = world();
    for node in &mut other.nodes {
        node.name.push_str("-other");
    }
    let result = resume(&spec(other), outcome.ledger, |_| {});
    assert!(
        matches!(result, Err(crate::RunError::Diverged { .. })),
        "a log of another run was continued"
    );
}
