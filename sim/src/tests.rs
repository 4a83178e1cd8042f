//! The workload and failure draws (pure functions of the seed), and resumes of cut logs.

use std::collections::BTreeSet;

use crate::workload::{scale_nodes, FailureSchedule, Workload};
use fabric_actors::world::{FailureSpec, JobKindSpec, NodeSpec, ShardSpec, WorkloadSpec, World};

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
        kernel: None,
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
        verify_ppm: fabric_actors::world::VERIFY_PPM_DEFAULT,
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
    use crate::{resume, run, sim_ledger_key, RunSpec};
    use fabric_events::SignedEvent;
    use fabric_ledger::Ledger;

    let seed = 11;
    let spec = RunSpec {
        world: world(),
        seed,
        jobs: 300,
        append_events_max: 4,
        owner_script: Vec::new(),
        byzantine: Vec::new(),
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
    use crate::{resume, run, sim_ledger_key, RunSpec};
    use fabric_ledger::Ledger;

    let spec = |world: World| RunSpec {
        world,
        seed: 3,
        jobs: 50,
        append_events_max: fabric_ledger::BATCH_EVENTS_MAX,
        owner_script: Vec::new(),
        byzantine: Vec::new(),
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
        matches!(result, Err(fabric_actors::RunError::Diverged { .. })),
        "a log of another run was continued"
    );
}

/// The authority table at work: a small run's world, then attempts from outside.
mod authority {
    use fabric_events::{
        Event, Hash32, Heartbeat, JobAssigned, JobOutcome, JobReceipt, NodeRegistered, OwnerAction,
        OwnerCommand, PublicKey, RejectReason, Role, ShardRegistered, SignedEvent, SigningKey,
    };
    use fabric_ledger::Ledger;
    use fabric_projections::{JobStatus, State};
    use proptest::prelude::*;

    use super::world;
    use crate::{run, sim_ledger_key, RunSpec, SimKeys};
    use fabric_actors::gate::{admit, admit_signed, Admitted, Verdict};

    const SEED: u64 = 21;

    /// The state after a short run (jobs still queued), its keys, and its ledger.
    fn fabric(jobs: u64) -> (State, SimKeys, Ledger, tempfile::TempDir) {
        let world = world();
        let spec = RunSpec {
            world: world.clone(),
            seed: SEED,
            jobs,
            append_events_max: fabric_ledger::BATCH_EVENTS_MAX,
            owner_script: Vec::new(),
            byzantine: Vec::new(),
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let outcome = run(
            &spec,
            Ledger::open(dir.path().join("ledger"), sim_ledger_key(SEED)).expect("open"),
            |_| {},
        )
        .expect("the run");
        (
            outcome.state,
            SimKeys::derive(&world, SEED),
            outcome.ledger,
            dir,
        )
    }

    fn signed(
        key: &SigningKey,
        role: Role,
        tick: u64,
        nonce: u64,
        body: impl Into<fabric_events::Body>,
    ) -> SignedEvent {
        SignedEvent::sign(&Event::new(role, tick, nonce, body), key).expect("small")
    }

    fn reasons(admitted: &Admitted) -> Vec<Option<RejectReason>> {
        admitted
            .verdicts
            .iter()
            .map(|verdict| match verdict {
                Verdict::Admitted => None,
                Verdict::Refused { reason, .. } | Verdict::Counted { reason, .. } => Some(*reason),
            })
            .collect()
    }

    /// Each refusal is replaced by a `Rejected` event naming the attempt, its claimed author
    /// and the reason; the batch appends and the ledger holds them.
    #[test]
    fn forged_and_misdirected_events_are_refused_and_recorded() {
        let (mut state, keys, mut ledger, _dir) = fabric(40);
        let tick = state.tick() + 1;
        let stranger = fabric_events::derive_signing_key(99, "stranger");
        let node = &state.nodes()[0];
        let (node_name, node_region) = (node.name.clone(), node.region);
        // A job queued or running somewhere, and a router of another shard.
        let heartbeat = Heartbeat {
            node: node_name.clone(),
            running_jobs: 0,
        };
        let receipt = JobReceipt {
            job: 1,
            node: node_name.clone(),
            outcome: JobOutcome::Completed,
            output_hash: Hash32([7; 32]),
            kernel: None,
            started_tick: 1,
            finished_tick: 2,
            execution_us: None,
        };
        let other_shard = (node_region as usize + 1) % state.shards().len();
        let assignment = JobAssigned {
            job: 1,
            shard: state.shards()[node_region as usize].name.clone(),
            node: node_name.clone(),
        };
        let good_heartbeat = signed(
            &keys.nodes[0],
            Role::Node,
            tick,
            tick << 24,
            heartbeat.clone(),
        );
        let mut forged = signed(
            &keys.nodes[0],
            Role::Node,
            tick,
            (tick << 24) + 1,
            heartbeat.clone(),
        );
        forged.signature.0[5] ^= 1;
        let mut oversize = good_heartbeat.clone();
        oversize
            .signed
            .resize(fabric_events::MAX_SIGNED_BYTES + 1, 0);
        let attempts = vec![
            signed(&stranger, Role::Node, tick, 1, heartbeat.clone()),
            signed(&stranger, Role::Node, tick, 2, receipt.clone()),
            signed(
                &keys.routers[other_shard],
                Role::Router,
                tick,
                tick << 24,
                assignment.clone(),
            ),
            signed(
                &keys.nodes[1],
                Role::Node,
                tick,
                tick << 24,
                heartbeat.clone(),
            ),
            signed(
                &keys.routers[0],
                Role::Node,
                tick,
                (tick << 24) + 1,
                heartbeat.clone(),
            ),
            forged,
            oversize,
            good_heartbeat.clone(),
            good_heartbeat,
            signed(
                &keys.owners[0],
                Role::Owner,
                tick,
                5,
                ShardRegistered {
                    shard: "rogue".into(),
                    router_key: PublicKey([9; 32]),
                    queue_budget: 1,
                    latency_budget_ms: 1,
                    spillover: Vec::new(),
                    specialties: Vec::new(),
                    reputation_floor_ppm: 0,
                    regions_served: Vec::new(),
                    node_quota_jobs: 1,
                    quota_window_ticks: 1,
                },
            ),
        ];
        let hashes: Vec<Hash32> = attempts
            .iter()
            .map(|a| Hash32(*blake3::hash(&a.signed).as_bytes()))
            .collect();
        let authors: Vec<PublicKey> = attempts.iter().map(|a| a.author).collect();
        let admitted =
            admit_signed(&mut state, tick, attempts, &keys.actor_keys()).expect("admitted");
        use RejectReason::*;
        assert_eq!(
            reasons(&admitted),
            [
                Some(UnknownKey),
                Some(UnknownKey),
                Some(WrongRole),
                Some(WrongRole),
                Some(WrongRole),
                Some(BadSignature),
                Some(Oversize),
                None,
                Some(ReplayedNonce),
                Some(WrongRole),
            ]
        );
        for (index, event) in admitted.events.iter().enumerate() {
            match &event.body {
                fabric_events::Body::Rejected(rejected) => {
                    assert_eq!(rejected.attempt_hash, hashes[index]);
                    assert_eq!(rejected.claimed_author, authors[index]);
                    assert_eq!(Some(rejected.reason), reasons(&admitted)[index]);
                    assert_eq!(event.header.role, Role::Ledger);
                }
                _ => assert_eq!(reasons(&admitted)[index], None),
            }
        }
        let before = ledger.len();
        ledger.append(&admitted.signed).expect("the batch appends");
        assert_eq!(ledger.len(), before + 10);
        assert_eq!(state.authority().rejections(WrongRole), 4);
        assert_eq!(state.authority().rejections(UnknownKey), 2);
    }

    /// A retired node's key authors nothing; a paused shard's router assigns nothing.
    #[test]
    fn retired_keys_and_paused_shards_are_refused() {
        let (mut state, keys, _ledger, _dir) = fabric(400);
        let tick = state.tick() + 1;
        let approve = |action: OwnerAction, nonce: u64| {
            let mut command = OwnerCommand {
                action,
                expiry_tick: tick,
                approvals: Vec::new(),
            };
            command.approve(nonce, &keys.owners[0]);
            command.approve(nonce, &keys.owners[2]);
            signed(&keys.ledger, Role::Owner, tick, nonce, command)
        };
        let node = state.nodes()[0].name.clone();
        let shard_ix = state.nodes()[0].region;
        let shard = state.shards()[shard_ix as usize].name.clone();
        let queued = state
            .jobs()
            .iter()
            .find(|job| job.status == JobStatus::Queued && job.shard == shard_ix)
            .map(|job| job.id);
        let attempts = vec![
            approve(OwnerAction::RetireNode { node: node.clone() }, 1_000),
            approve(
                OwnerAction::PauseShard {
                    shard: shard.clone(),
                },
                1_001,
            ),
            signed(
                &keys.nodes[0],
                Role::Node,
                tick,
                tick << 24,
                Heartbeat {
                    node: node.clone(),
                    running_jobs: 0,
                },
            ),
        ];
        let admitted =
            admit_signed(&mut state, tick, attempts, &keys.actor_keys()).expect("admitted");
        assert_eq!(
            reasons(&admitted),
            [None, None, Some(RejectReason::RetiredKey)]
        );
        assert!(state.shards()[shard_ix as usize].paused);
        if let Some(job) = queued {
            let other = state
                .nodes()
                .iter()
                .find(|n| n.region == shard_ix && !n.retired)
                .map(|n| n.name.clone());
            if let Some(other) = other {
                let attempt = signed(
                    &keys.routers[shard_ix as usize],
                    Role::Router,
                    tick,
                    tick << 24,
                    JobAssigned {
                        job,
                        shard: shard.clone(),
                        node: other,
                    },
                );
                let admitted = admit_signed(&mut state, tick, vec![attempt], &keys.actor_keys())
                    .expect("admitted");
                assert_eq!(reasons(&admitted), [Some(RejectReason::ShardPaused)]);
            }
        }
    }

    /// After rotations of the ledger, a router and a node key through the gate, the old keys'
    /// events are refused `retired_key` and their `Rejected` events, signed by the new ledger
    /// key, are stored; the new keys' events are admitted; a rotation to a key with no staged
    /// secret is refused `invalid` and changes nothing.
    #[test]
    fn rotated_keys_are_refused_and_their_rejections_are_stored_under_the_new_ledger_key() {
        use fabric_events::KeyTarget;
        let (mut state, keys, mut ledger, _dir) = fabric(40);
        let tick = state.tick() + 1;
        let staged: Vec<SigningKey> = ["ledger", "router", "node"]
            .iter()
            .map(|name| fabric_events::derive_signing_key(SEED, &format!("tests/new {name}")))
            .collect();
        let mut actor_keys = keys.actor_keys();
        actor_keys.staged = staged.clone();
        ledger.stage_keys(staged.clone()).expect("staged");
        let public = |key: &SigningKey| PublicKey::from(&key.verifying_key());
        let node = state.nodes()[0].name.clone();
        let shard_ix = state.nodes()[0].region;
        let shard = state.shards()[shard_ix as usize].name.clone();
        let rotate = |target: KeyTarget, new_key: PublicKey, nonce: u64, envelope: &SigningKey| {
            let mut command = OwnerCommand {
                action: OwnerAction::RotateKey { target, new_key },
                expiry_tick: tick,
                approvals: Vec::new(),
            };
            command.approve(nonce, &keys.owners[0]);
            command.approve(nonce, &keys.owners[1]);
            signed(envelope, Role::Owner, tick, nonce, command)
        };
        let heartbeat = |key: &SigningKey| {
            let body = Heartbeat {
                node: node.clone(),
                running_jobs: 0,
            };
            signed(key, Role::Node, tick, (tick << 24) + 7, body)
        };
        let attempts = vec![
            rotate(
                KeyTarget::Router {
                    shard: shard.clone(),
                },
                public(&staged[1]),
                2_000,
                &keys.ledger,
            ),
            rotate(
                KeyTarget::Node { node: node.clone() },
                public(&staged[2]),
                2_001,
                &keys.ledger,
            ),
            rotate(KeyTarget::Ledger, public(&staged[0]), 2_002, &keys.ledger),
            // Not staged: refused `invalid` (signed by the new ledger key's envelope).
            rotate(
                KeyTarget::Ledger,
                public(&fabric_events::derive_signing_key(SEED, "tests/unstaged")),
                2_003,
                &staged[0],
            ),
            heartbeat(&keys.nodes[0]),
            heartbeat(&staged[2]),
            // An owner command enveloped by the rotated-away ledger key.
            signed(
                &keys.ledger,
                Role::Owner,
                tick,
                2_004,
                OwnerCommand {
                    action: OwnerAction::PauseAll,
                    expiry_tick: tick,
                    approvals: Vec::new(),
                },
            ),
        ];
        let first_seq = ledger.len();
        let admitted = admit_signed(&mut state, tick, attempts, &actor_keys).expect("admitted");
        use RejectReason::{Invalid, RetiredKey};
        assert_eq!(
            reasons(&admitted),
            [
                None,
                None,
                None,
                Some(Invalid),
                Some(RetiredKey),
                None,
                Some(RetiredKey)
            ]
        );
        assert_eq!(state.authority().ledger_key(), public(&staged[0]));
        let receipt = ledger.append(&admitted.signed).expect("appended");
        assert_eq!(receipt.tree_head.ledger_key, public(&staged[0]));
        // Read back: each refusal is a stored `rejected` event signed by the new ledger key.
        let stored: Vec<(PublicKey, RejectReason)> = (first_seq..ledger.len())
            .filter_map(|seq| {
                let entry = ledger.get(seq).expect("entry");
                match entry.event().expect("event").body {
                    fabric_events::Body::Rejected(rejected) => {
                        Some((entry.author, rejected.reason))
                    }
                    _ => None,
                }
            })
            .collect();
        let new_ledger = public(&staged[0]);
        assert_eq!(
            stored,
            [
                (new_ledger, Invalid),
                (new_ledger, RetiredKey),
                (new_ledger, RetiredKey)
            ]
        );
        // The old router key's routing is refused too; the new one's is judged on its merits.
        let node_key = state.nodes()[0].key;
        assert_eq!(node_key, public(&staged[2]));
        assert_eq!(
            state.shards()[shard_ix as usize].router_key,
            public(&staged[1])
        );
        let old_router = state
            .authority()
            .key(&public(&keys.routers[shard_ix as usize]));
        assert!(old_router.is_some_and(|record| record.retired));
    }

    /// What the owners may change: budgets, pause and retirement of shards, the node registry.
    fn governed(state: &State) -> Vec<String> {
        let shards = state.shards().iter().map(|s| {
            format!(
                "{} {} {} {} {} {:?}",
                s.name, s.queue_budget, s.latency_budget_ms, s.paused, s.retired, s.spillover
            )
        });
        let nodes = state.nodes().iter().map(|n| {
            format!(
                "{} {} {} {} {}",
                n.name, n.key, n.draining, n.retired, n.max_concurrency
            )
        });
        shards.chain(nodes).collect()
    }

    fn action_strategy() -> impl Strategy<Value = OwnerAction> {
        prop_oneof![
            Just(OwnerAction::PauseAll),
            (0..2usize).prop_map(|s| OwnerAction::PauseShard {
                shard: ["north", "south"][s].into()
            }),
            (0..2usize, 0..10_000u32).prop_map(|(s, b)| OwnerAction::SetQueueBudget {
                shard: ["north", "south"][s].into(),
                queue_budget: b
            }),
            (0..2usize).prop_map(|n| OwnerAction::RetireNode {
                node: ["north.a", "south.b"][n].into()
            }),
            (0..2usize).prop_map(|n| OwnerAction::DrainNode {
                node: ["north.a", "south.b"][n].into()
            }),
            any::<[u8; 32]>().prop_map(|key| OwnerAction::RegisterNode {
                registration: NodeRegistered {
                    node: "intruder".into(),
                    region: "north".into(),
                    node_key: PublicKey(key),
                    capacity: 9,
                    max_concurrency: 9,
                    heartbeat_interval_ticks: 1,
                    capabilities: vec!["cpu".into()],
                    latency_ms: 1,
                    price_micros_per_hour: 1,
                    reputation_ppm: 1_000_000
                }
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// No sequence of signed or unsigned attempts by keys that are not the owners changes
        /// shard budgets, pause state or the node registry; every one is refused and recorded.
        #[test]
        fn non_owners_cannot_steer_the_fabric(
            attempts in proptest::collection::vec(
                (action_strategy(), 0..4u8, any::<u64>(), 0..3u8, any::<u8>()), 1..12),
        ) {
            let (state0, keys, _ledger, _dir) = fabric(40);
            let mut state = state0.clone();
            let tick = state.tick() + 1;
            let strangers: Vec<SigningKey> = (0..3).map(|i| fabric_events::derive_signing_key(7, &format!("stranger/{i}"))).collect();
            let mut signed_attempts = Vec::new();
            for (action, approvers, nonce, envelope, garbage) in attempts {
                let nonce = nonce % 1_000_000;
                let mut command = OwnerCommand { action: action.clone(), expiry_tick: tick + 10, approvals: Vec::new() };
                for stranger in strangers.iter().take(approvers as usize) {
                    command.approve(nonce, stranger);
                }
                if garbage % 3 == 0 {
                    // Claim to be an owner without the owner's signature.
                    command.approvals.push(fabric_events::Approval {
                        owner: PublicKey::from(&keys.owners[usize::from(garbage) % keys.owners.len()].verifying_key()),
                        signature: fabric_events::SignatureBytes([garbage; 64]),
                    });
                }
                // The envelope by the ledger (as a submission would be), a stranger, or a router.
                let envelope_key = match envelope { 0 => &keys.ledger, 1 => &strangers[0], _ => &keys.routers[0] };
                signed_attempts.push(signed(envelope_key, Role::Owner, tick, nonce, command));
                if let OwnerAction::RegisterNode { registration } = action {
                    signed_attempts.push(signed(&strangers[1], Role::Owner, tick, nonce + 1, registration));
                }
            }
            let count = signed_attempts.len();
            let admitted = admit_signed(&mut state, tick, signed_attempts, &keys.actor_keys()).expect("admitted");
            prop_assert!(reasons(&admitted).iter().all(Option::is_some), "{:?}", reasons(&admitted));
            prop_assert_eq!(admitted.events.len(), count);
            prop_assert_eq!(governed(&state), governed(&state0));
            prop_assert_eq!(state.metrics().rejections, state0.metrics().rejections + count as u64);
        }
    }

    /// Owner commands change what they say: a retired shard's queue spills to its neighbour
    /// (or is cancelled), a drained node takes nothing, budgets and checkpoints follow.
    #[test]
    fn owner_commands_have_their_effects() {
        let (state0, keys, _ledger, _dir) = fabric(400);
        let tick = state0.tick() + 1;
        let command = |action: OwnerAction, nonce: u64| {
            let mut command = OwnerCommand {
                action,
                expiry_tick: tick,
                approvals: Vec::new(),
            };
            command.approve(nonce, &keys.owners[0]);
            command.approve(nonce, &keys.owners[1]);
            signed(&keys.ledger, Role::Owner, tick, nonce, command)
        };
        let north = state0.shard_ix("north").expect("north") as usize;
        let south = state0.shard_ix("south").expect("south") as usize;
        let queued_north = state0.shards()[north].queued();
        assert!(queued_north > 0, "the run leaves jobs queued in north");

        for (queue, nonce) in [
            (fabric_events::RetiredQueue::Spill, 10),
            (fabric_events::RetiredQueue::Cancel, 11),
        ] {
            let mut state = state0.clone();
            let attempts = vec![
                command(
                    OwnerAction::RetireShard {
                        shard: "north".into(),
                        queue,
                    },
                    nonce,
                ),
                command(
                    OwnerAction::DrainNode {
                        node: "south.b".into(),
                    },
                    nonce + 10,
                ),
                command(
                    OwnerAction::SetQueueBudget {
                        shard: "south".into(),
                        queue_budget: 3,
                    },
                    nonce + 20,
                ),
                command(
                    OwnerAction::SetCheckpointInterval { interval_ticks: 7 },
                    nonce + 30,
                ),
                command(OwnerAction::CheckpointNow, nonce + 40),
                command(
                    OwnerAction::RegisterModel {
                        registration: heat_model(),
                    },
                    nonce + 50,
                ),
            ];
            let admitted =
                admit_signed(&mut state, tick, attempts, &keys.actor_keys()).expect("admitted");
            assert!(
                reasons(&admitted).iter().all(Option::is_none),
                "{:?}",
                admitted.verdicts
            );
            let (n, s) = (&state.shards()[north], &state.shards()[south]);
            assert!(n.retired && n.paused && n.queued() == 0);
            match queue {
                fabric_events::RetiredQueue::Spill => {
                    assert_eq!(s.queued(), state0.shards()[south].queued() + queued_north);
                    assert_eq!(state.metrics().cancelled, state0.metrics().cancelled);
                }
                fabric_events::RetiredQueue::Cancel => {
                    assert_eq!(s.queued(), state0.shards()[south].queued());
                    assert_eq!(
                        state.metrics().cancelled,
                        state0.metrics().cancelled + queued_north
                    );
                }
            }
            assert_eq!(s.queue_budget, 3);
            let node = state.node_ix("south.b").expect("node") as usize;
            assert!(
                !state.nodes()[node].takes_work(tick + 1),
                "a drained node takes nothing"
            );
            assert_eq!(state.checkpoint_interval_ticks(), Some(7));
            assert!(state.checkpoint_requested());
            let model = state.model("heat@1").expect("the model is registered");
            assert_eq!(model.job_type, fabric_events::JobType::PredictNextState);
            assert_eq!(model.weights_hash, heat_model().weights_hash());
            assert_eq!(model.registered_tick, tick);
            // Nothing is submitted to a retired shard any more: the intake's attempt does not fit.
            let submission = fabric_events::JobSubmitted {
                job: 1_000_000,
                shard: "north".into(),
                workload: "n.job".into(),
                skills: vec!["cpu".into()],
                duration_ticks: 2,
                deadline_tick: tick + 10,
                budget_micros: 1,
                input_hash: Hash32([1; 32]),
            };
            let attempt = signed(
                &keys.clients[north],
                Role::Client,
                tick,
                (tick << 24) + 5,
                submission,
            );
            let admitted = admit_signed(&mut state, tick, vec![attempt], &keys.actor_keys())
                .expect("admitted");
            assert_eq!(reasons(&admitted), [Some(RejectReason::Invalid)]);
        }
    }

    /// A `predict_next_state` model `heat@1`.
    fn heat_model() -> fabric_events::ModelRegistered {
        fabric_events::ModelRegistered {
            model_id: "heat".into(),
            model_version: "1".into(),
            job_type: fabric_events::JobType::PredictNextState,
            weights: [1i32.to_le_bytes(), 3u32.to_le_bytes(), 16u32.to_le_bytes()].concat(),
        }
    }

    /// The same command with M approvals is executed; the internal gate refuses nothing of a
    /// run (every actor's event is admitted).
    #[test]
    fn m_approvals_execute_a_command() {
        let (mut state, keys, _ledger, _dir) = fabric(40);
        let tick = state.tick() + 1;
        let mut command = OwnerCommand {
            action: OwnerAction::SetQueueBudget {
                shard: "south".into(),
                queue_budget: 7,
            },
            expiry_tick: tick,
            approvals: Vec::new(),
        };
        command.approve(3, &keys.owners[1]);
        let one = fabric_actors::owner_command_attempt(tick, 3, command.clone(), &keys.ledger)
            .expect("signed");
        command.approve(3, &keys.owners[2]);
        let two =
            fabric_actors::owner_command_attempt(tick, 3, command, &keys.ledger).expect("signed");
        let admitted =
            admit(&mut state, tick, vec![one, two], &keys.actor_keys()).expect("admitted");
        assert_eq!(
            reasons(&admitted),
            [Some(RejectReason::TooFewOwnerSignatures), None]
        );
        assert_eq!(
            state.shards()[state.shard_ix("south").expect("south") as usize].queue_budget,
            7
        );
    }
}
