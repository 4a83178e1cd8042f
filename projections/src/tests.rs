//! The fold and the routing policy on small hand-built worlds.

use fabric_events::{
    Body, Event, Hash32, Heartbeat, JobAssigned, JobOutcome, JobReceipt, JobRequeued, JobSpilled,
    JobSubmitted, NodeHealthChanged, NodeRegistered, OwnerAction, OwnerCommand, PublicKey,
    RequeueReason, RetiredQueue, Role, ShardRegistered, SpillReason,
};

use crate::routing::{Decision, HealthAction, TickPlan};
use crate::state::{ApplyError, JobStatus, State};

fn shard(name: &str, queue_budget: u32, spillover: &[&str]) -> ShardRegistered {
    ShardRegistered {
        shard: name.to_owned(),
        router_key: PublicKey([1; 32]),
        queue_budget,
        latency_budget_ms: 200,
        spillover: spillover.iter().map(|s| s.to_string()).collect(),
        specialties: Vec::new(),
        reputation_floor_ppm: 500_000,
        regions_served: ["a", "b", "c", "p", "q", "r", "tiny"]
            .map(String::from)
            .to_vec(),
        node_quota_jobs: 1_000,
        quota_window_ticks: 100,
    }
}

fn node(name: &str, region: &str, max_concurrency: u32, skills: &[&str]) -> NodeRegistered {
    NodeRegistered {
        node: name.to_owned(),
        region: region.to_owned(),
        node_key: PublicKey([2; 32]),
        capacity: max_concurrency,
        max_concurrency,
        heartbeat_interval_ticks: 5,
        capabilities: skills.iter().map(|s| s.to_string()).collect(),
        latency_ms: 50,
        price_micros_per_hour: 1_000_000,
        reputation_ppm: 900_000,
    }
}

fn job(id: u64, shard: &str, skills: &[&str]) -> JobSubmitted {
    JobSubmitted {
        job: id,
        shard: shard.to_owned(),
        workload: "test".to_owned(),
        skills: skills.iter().map(|s| s.to_string()).collect(),
        duration_ticks: 3,
        deadline_tick: 100,
        budget_micros: 1,
        input_hash: Hash32([3; 32]),
    }
}

pub(crate) struct World {
    pub(crate) state: State,
    nonce: u64,
}

impl World {
    /// Shards a → [b, c], b → [a], c → [b]; nodes a.x (gpu, 2 slots), a.y (cpu, 1), b.z (cpu, 4).
    pub(crate) fn new() -> Self {
        let mut world = Self {
            state: State::new(),
            nonce: 0,
        };
        world.owner(shard("a", 10, &["b", "c"]));
        world.owner(shard("b", 10, &["a"]));
        world.owner(shard("c", 10, &["b"]));
        world.owner(node("a.x", "a", 2, &["gpu", "cpu"]));
        world.owner(node("a.y", "a", 1, &["cpu"]));
        world.owner(node("b.z", "b", 4, &["cpu"]));
        world
    }

    pub(crate) fn apply(
        &mut self,
        role: Role,
        tick: u64,
        body: impl Into<Body>,
    ) -> Result<(), ApplyError> {
        self.nonce += 1;
        let result = self.state.apply(&Event::new(role, tick, self.nonce, body));
        // The worlds here are small enough to check in full after every event.
        self.state
            .check_invariants()
            .expect("the fold keeps the state consistent");
        result
    }

    fn owner(&mut self, body: impl Into<Body>) {
        self.apply(Role::Owner, 0, body)
            .expect("the world registers");
    }

    pub(crate) fn submit(&mut self, tick: u64, id: u64, shard: &str, skills: &[&str]) {
        self.apply(Role::Client, tick, job(id, shard, skills))
            .expect("submission fits");
    }

    fn decisions(&self, shard: &str, tick: u64) -> Vec<Decision> {
        let ix = self.state.shard_ix(shard).expect("shard");
        let mut plan = TickPlan::new(&self.state, ix, tick);
        std::iter::from_fn(|| plan.next_decision()).collect()
    }

    fn node(&self, name: &str) -> u32 {
        self.state.node_ix(name).expect("node")
    }

    fn job(&self, id: u64) -> u32 {
        self.state.job_ix(id).expect("job")
    }
}

#[test]
fn assignment_picks_the_best_eligible_node_and_respects_max_concurrency() {
    let mut world = World::new();
    for id in 1..=5 {
        world.submit(1, id, "a", &["cpu"]);
    }
    let decisions = world.decisions("a", 2);
    let (x, y) = (world.node("a.x"), world.node("a.y"));
    let assigned: Vec<u32> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Assign { node, .. } => Some(*node),
            _ => None,
        })
        .collect();
    // Three slots in the shard: two on a.x, one on a.y; the rest wait behind them.
    assert_eq!(assigned.len(), 3);
    assert_eq!(assigned.iter().filter(|n| **n == x).count(), 2);
    assert_eq!(assigned.iter().filter(|n| **n == y).count(), 1);
    // a.y is a specialist (alignment 1) with a full free share: it scores first.
    assert_eq!(assigned[0], y);
    assert!(matches!(decisions[3], Decision::Wait { .. }));
    assert_eq!(
        decisions.len(),
        4,
        "the class stops at the first job that must wait"
    );
}

#[test]
fn ties_go_to_the_node_whose_name_sorts_first() {
    let mut world = World::new();
    world.owner(node("b.a-twin", "b", 4, &["cpu"]));
    world.owner(node("b.0-twin", "b", 4, &["cpu"]));
    world.submit(1, 1, "b", &["cpu"]);
    let decisions = world.decisions("b", 2);
    assert_eq!(
        decisions,
        vec![Decision::Assign {
            job: world.job(1),
            node: world.node("b.0-twin")
        }]
    );
}

#[test]
fn unhealthy_unskilled_floor_and_quota_nodes_are_never_chosen() {
    let mut world = World::new();
    // a.x: silent for long → unhealthy this tick; a.y lacks gpu.
    world.submit(1, 1, "a", &["gpu"]);
    let decisions = world.decisions("a", 20);
    let plan_health = {
        let ix = world.state.shard_ix("a").expect("a");
        TickPlan::new(&world.state, ix, 20).health().to_vec()
    };
    assert!(plan_health.contains(&HealthAction::MarkUnhealthy {
        node: world.node("a.x"),
        last_heartbeat_tick: 0
    }));
    // Nothing in a can run gpu work now, and no neighbour has a gpu node: the job waits.
    assert_eq!(decisions, vec![Decision::Wait { job: world.job(1) }]);

    // Reputation under the treaty floor scores zero.
    let mut world = World::new();
    let mut low = node("a.low", "a", 8, &["gpu"]);
    low.reputation_ppm = 100_000;
    world.owner(low);
    world.submit(1, 1, "a", &["gpu"]);
    world.submit(1, 2, "a", &["gpu"]);
    world.submit(1, 3, "a", &["gpu"]);
    let low = world.node("a.low");
    for decision in world.decisions("a", 2) {
        if let Decision::Assign { node, .. } = decision {
            assert_ne!(node, low, "a node under the reputation floor got work");
        }
    }

    // A used-up quota scores zero too.
    let mut world = World::new();
    let mut tight = shard("q", 10, &[]);
    tight.node_quota_jobs = 1;
    world.owner(tight);
    world.owner(node("q.only", "q", 8, &["cpu"]));
    world.submit(1, 1, "q", &["cpu"]);
    world.submit(1, 2, "q", &["cpu"]);
    let decisions = world.decisions("q", 2);
    assert!(matches!(decisions[0], Decision::Assign { .. }));
    assert!(matches!(decisions[1], Decision::Wait { .. }));
}

#[test]
fn the_fold_refuses_assignments_that_break_the_rules() {
    let mut world = World::new();
    world.submit(1, 1, "a", &["gpu"]);
    world.submit(1, 2, "a", &["cpu"]);
    world.submit(1, 3, "a", &["cpu"]);
    let refused = |world: &mut World, job: u64, node: &str| {
        let anomalies = world.state.anomalies();
        let result = world.apply(
            Role::Router,
            2,
            JobAssigned {
                job,
                shard: "a".into(),
                node: node.into(),
            },
        );
        assert!(result.is_err(), "job {job} on {node} was accepted");
        assert_eq!(world.state.anomalies(), anomalies + 1);
        let j = &world.state.jobs()[world.job(job) as usize];
        assert_eq!(
            j.status,
            JobStatus::Queued,
            "a refused event changed job {job}"
        );
    };
    refused(&mut world, 1, "a.y"); // lacks gpu
    refused(&mut world, 2, "b.z"); // another shard's node
    world
        .apply(
            Role::Router,
            2,
            JobAssigned {
                job: 2,
                shard: "a".into(),
                node: "a.y".into(),
            },
        )
        .expect("a free, skilled node");
    refused(&mut world, 3, "a.y"); // a.y is full (max concurrency 1)
    assert!(matches!(
        world.apply(
            Role::Client,
            2,
            JobAssigned {
                job: 3,
                shard: "a".into(),
                node: "a.x".into()
            }
        ),
        Err(ApplyError::WrongRole { .. })
    ));
}

#[test]
fn a_job_with_no_capable_node_spills_by_the_rules_and_never_returns() {
    let mut world = World::new();
    world.owner(node("c.gpu", "c", 2, &["gpu"]));
    // a has a gpu node, b none, c one. A gpu job in b spills to a (b's only rule).
    world.submit(1, 1, "b", &["gpu"]);
    let decisions = world.decisions("b", 2);
    let a = world.state.shard_ix("a").expect("a");
    assert_eq!(
        decisions,
        vec![Decision::Spill {
            job: world.job(1),
            to: a,
            reason: SpillReason::NoEligibleNode
        }]
    );
    world
        .apply(
            Role::Router,
            2,
            JobSpilled {
                job: 1,
                from_shard: "b".into(),
                to_shard: "a".into(),
                reason: SpillReason::NoEligibleNode,
            },
        )
        .expect("spill fits");
    // a's gpu node goes down: a must not send the job back to b (visited); c has one: go there.
    let silent_tick = 40;
    let ax = world.node("a.x");
    world
        .apply(
            Role::Router,
            silent_tick,
            NodeHealthChanged {
                node: "a.x".into(),
                healthy: false,
                last_heartbeat_tick: 0,
            },
        )
        .expect("a.x runs nothing");
    world
        .apply(
            Role::Node,
            silent_tick,
            Heartbeat {
                node: "c.gpu".into(),
                running_jobs: 0,
            },
        )
        .expect("hb");
    let decisions = world.decisions("a", silent_tick + 1);
    let c = world.state.shard_ix("c").expect("c");
    assert_eq!(
        decisions,
        vec![Decision::Spill {
            job: world.job(1),
            to: c,
            reason: SpillReason::NoEligibleNode
        }]
    );
    world
        .apply(
            Role::Router,
            silent_tick + 1,
            JobSpilled {
                job: 1,
                from_shard: "a".into(),
                to_shard: "c".into(),
                reason: SpillReason::NoEligibleNode,
            },
        )
        .expect("spill fits");
    // In c, c.gpu goes down too: c's only rule is b, which the job has left. It waits.
    world
        .apply(
            Role::Router,
            silent_tick + 2,
            NodeHealthChanged {
                node: "c.gpu".into(),
                healthy: false,
                last_heartbeat_tick: silent_tick,
            },
        )
        .expect("c.gpu runs nothing");
    let decisions = world.decisions("c", silent_tick + 3);
    assert_eq!(decisions, vec![Decision::Wait { job: world.job(1) }]);
    let job = &world.state.jobs()[world.job(1) as usize];
    assert_eq!(job.spills, 2, "at most shards - 1 moves");
    assert_eq!(world.state.metrics().spills_per_job[2], 1);
    assert!(!world.state.nodes()[ax as usize].healthy);
}

#[test]
fn an_over_budget_queue_spills_its_newest_jobs() {
    let mut world = World::new();
    world.owner(shard("tiny", 2, &["b"]));
    world.owner(node("tiny.n", "tiny", 1, &["cpu"]));
    for id in 1..=6 {
        world.submit(1, id, "tiny", &["cpu"]);
    }
    let decisions = world.decisions("tiny", 2);
    let b = world.state.shard_ix("b").expect("b");
    // One runs, one waits at the front, 6 - 1 = 5 left > budget 2: the 3 newest spill to b.
    assert_eq!(
        decisions[0],
        Decision::Assign {
            job: world.job(1),
            node: world.node("tiny.n")
        }
    );
    assert_eq!(decisions[1], Decision::Wait { job: world.job(2) });
    let spilled: Vec<u32> = decisions[2..]
        .iter()
        .map(|d| match d {
            Decision::Spill { job, to, reason } => {
                assert_eq!((*to, *reason), (b, SpillReason::QueueOverBudget));
                *job
            }
            other => panic!("expected a spill, got {other:?}"),
        })
        .collect();
    assert_eq!(spilled, vec![world.job(6), world.job(5), world.job(4)]);
}

#[test]
fn silence_requeues_running_jobs_and_a_heartbeat_heals() {
    let mut world = World::new();
    world.submit(1, 1, "a", &["gpu"]);
    world
        .apply(
            Role::Router,
            2,
            JobAssigned {
                job: 1,
                shard: "a".into(),
                node: "a.x".into(),
            },
        )
        .expect("assign");
    let ix = world.state.shard_ix("a").expect("a");
    // Interval 5, grace 10: silent since tick 0, so at tick 11 it is overdue.
    assert!(TickPlan::new(&world.state, ix, 10).health().is_empty());
    let health = TickPlan::new(&world.state, ix, 11).health().to_vec();
    let x = world.node("a.x");
    assert_eq!(
        health,
        vec![
            HealthAction::Requeue {
                job: world.job(1),
                node: x
            },
            HealthAction::MarkUnhealthy {
                node: x,
                last_heartbeat_tick: 0
            },
            HealthAction::MarkUnhealthy {
                node: world.node("a.y"),
                last_heartbeat_tick: 0
            },
        ]
    );
    world
        .apply(
            Role::Router,
            11,
            JobRequeued {
                job: 1,
                node: "a.x".into(),
                shard: "a".into(),
                reason: RequeueReason::NodeUnhealthy,
            },
        )
        .expect("requeue");
    world
        .apply(
            Role::Router,
            11,
            NodeHealthChanged {
                node: "a.x".into(),
                healthy: false,
                last_heartbeat_tick: 0,
            },
        )
        .expect("unhealthy");
    let j = &world.state.jobs()[world.job(1) as usize];
    assert_eq!((j.status, j.requeues), (JobStatus::Queued, 1));
    // A receipt for the requeued job is refused: it is no longer on the node.
    assert!(world
        .apply(
            Role::Node,
            12,
            JobReceipt {
                job: 1,
                node: "a.x".into(),
                outcome: JobOutcome::Completed,
                output_hash: Hash32::default(),
                kernel: None,
                started_tick: 2,
                finished_tick: 5,
                execution_us: None,
            }
        )
        .is_err());
    world
        .apply(
            Role::Node,
            13,
            Heartbeat {
                node: "a.x".into(),
                running_jobs: 0,
            },
        )
        .expect("hb");
    let health = TickPlan::new(&world.state, ix, 14).health().to_vec();
    assert!(health.contains(&HealthAction::MarkHealthy {
        node: x,
        last_heartbeat_tick: 13
    }));
}

#[test]
fn paused_shards_make_no_decisions() {
    let mut world = World::new();
    world.submit(1, 1, "a", &["cpu"]);
    world
        .apply(
            Role::Owner,
            1,
            OwnerCommand {
                action: OwnerAction::PauseShard { shard: "a".into() },
                expiry_tick: 10,
                approvals: Vec::new(),
            },
        )
        .expect("pause");
    assert!(world.decisions("a", 2).is_empty());
}

#[test]
fn the_state_hash_follows_the_log_and_nothing_else() {
    let build = |extra: bool| {
        let mut world = World::new();
        world.submit(1, 1, "a", &["cpu"]);
        world.submit(1, 2, "b", &["cpu"]);
        if extra {
            world
                .apply(
                    Role::Node,
                    2,
                    Heartbeat {
                        node: "b.z".into(),
                        running_jobs: 0,
                    },
                )
                .expect("hb");
        }
        world.state.state_hash()
    };
    assert_eq!(build(false), build(false));
    assert_ne!(build(false), build(true));
}

#[test]
fn shards_full_of_each_others_jobs_still_exchange_them() {
    // p runs only x, r runs only y; each queue is over budget with jobs for the other.
    let mut world = World::new();
    world.owner(shard("p", 2, &["r"]));
    world.owner(shard("r", 2, &["p"]));
    world.owner(node("p.x", "p", 1, &["x"]));
    world.owner(node("r.y", "r", 1, &["y"]));
    for id in 1..=4 {
        world.submit(1, id, "p", &["y"]);
        world.submit(1, 10 + id, "r", &["x"]);
    }
    let r = world.state.shard_ix("r").expect("r");
    let decisions = world.decisions("p", 2);
    assert_eq!(decisions.len(), 4);
    for decision in decisions {
        assert!(
            matches!(decision, Decision::Spill { to, reason: SpillReason::NoEligibleNode, .. } if to == r),
            "{decision:?}"
        );
    }
    // Spilling for room, though, never goes to a shard without room.
    let mut world = World::new();
    world.owner(shard("p", 1, &["r"]));
    world.owner(shard("r", 1, &["p"]));
    world.owner(node("p.x", "p", 1, &["x"]));
    world.owner(node("r.x", "r", 1, &["x"]));
    for id in 1..=4 {
        world.submit(1, id, "p", &["x"]);
        world.submit(1, 10 + id, "r", &["x"]);
    }
    let decisions = world.decisions("p", 2);
    assert!(
        decisions
            .iter()
            .all(|d| !matches!(d, Decision::Spill { .. })),
        "{decisions:?}"
    );
}

mod heap_matches_a_full_scan {
    use super::*;
    use crate::routing::treaty_score;
    use proptest::prelude::*;

    /// The decisions of one tick, recomputed the slow way: for each job, score every capable
    /// node with the slots taken so far and take the best (ties: first name).
    fn greedy_reference(state: &State, shard_name: &str, tick: u64, jobs: usize) -> Vec<u32> {
        let shard_ix = state.shard_ix(shard_name).expect("shard");
        let shard = &state.shards()[shard_ix as usize];
        let class = state.jobs()[0].class;
        let skills = state.classes()[class as usize].skills.len();
        let mut taken = vec![0u32; state.nodes().len()];
        let mut picks = Vec::new();
        for _ in 0..jobs {
            let mut best: Option<(f64, u32)> = None;
            for node_ix in shard.capable_nodes(class) {
                let node = &state.nodes()[*node_ix as usize];
                let free =
                    node.max_concurrency - node.running.len() as u32 - taken[*node_ix as usize];
                let treaty = treaty_score(node, shard, tick);
                if free == 0 || treaty <= 0.0 {
                    continue;
                }
                let score = treaty
                    * (1.0
                        + f64::from(free) / f64::from(node.max_concurrency)
                        + f64::from(skills) / f64::from(node.capabilities.len()));
                if best.is_none_or(|(b, _)| score > b) {
                    best = Some((score, *node_ix));
                }
            }
            match best {
                Some((_, node)) => {
                    taken[node as usize] += 1;
                    picks.push(node);
                }
                None => break,
            }
        }
        picks
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn the_candidate_heap_picks_what_a_full_scan_picks(
            nodes in proptest::collection::vec((1u32..6, 1u64..4, 1u32..4, 400_000u32..1_000_001, 0usize..3), 1..24),
            jobs in 1usize..60,
        ) {
            let mut world = World::new();
            for (i, (slots, price, latency, reputation, extra)) in nodes.iter().enumerate() {
                let mut n = node(&format!("b.n{:02}", (i * 7) % 24), "b", *slots, &["cpu", "gpu", "io"][..1 + extra]);
                if world.state.node_ix(&n.node).is_some() {
                    continue;
                }
                // Coarse prices and latencies make equal scores, so ties get exercised.
                n.price_micros_per_hour = price * 1_000_000;
                n.latency_ms = latency * 50;
                n.reputation_ppm = *reputation - reputation % 100_000;
                world.owner(n);
            }
            for id in 0..jobs as u64 {
                world.submit(1, 1000 + id, "b", &["cpu"]);
            }
            let expected = greedy_reference(&world.state, "b", 2, jobs);
            let got: Vec<u32> = world
                .decisions("b", 2)
                .into_iter()
                .filter_map(|d| match d {
                    Decision::Assign { node, .. } => Some(node),
                    _ => None,
                })
                .collect();
            prop_assert_eq!(got, expected);
        }
    }
}

/// The events a tiny fabric produces at `tick`: health actions and routing decisions of every
/// shard, receipts of finished jobs (every third one fails), heartbeats of the nodes that are
/// up (a.y is silent from tick 6 to 23), and two submissions.
fn tick_events(state: &State, tick: u64) -> Vec<Event> {
    let mut bodies: Vec<(Role, Body)> = Vec::new();
    for shard in state.shards() {
        let ix = state.shard_ix(&shard.name).expect("shard");
        let mut plan = TickPlan::new(state, ix, tick);
        let node_name = |node: u32| state.nodes()[node as usize].name.clone();
        let job_id = |job: u32| state.jobs()[job as usize].id;
        for action in plan.health().to_vec() {
            let body: Body = match action {
                HealthAction::Requeue { job, node } => JobRequeued {
                    job: job_id(job),
                    node: node_name(node),
                    shard: shard.name.clone(),
                    reason: RequeueReason::NodeUnhealthy,
                }
                .into(),
                HealthAction::MarkUnhealthy {
                    node,
                    last_heartbeat_tick,
                } => NodeHealthChanged {
                    node: node_name(node),
                    healthy: false,
                    last_heartbeat_tick,
                }
                .into(),
                HealthAction::MarkHealthy {
                    node,
                    last_heartbeat_tick,
                } => NodeHealthChanged {
                    node: node_name(node),
                    healthy: true,
                    last_heartbeat_tick,
                }
                .into(),
            };
            bodies.push((Role::Router, body));
        }
        while let Some(decision) = plan.next_decision() {
            match decision {
                Decision::Assign { job, node } => bodies.push((
                    Role::Router,
                    JobAssigned {
                        job: job_id(job),
                        shard: shard.name.clone(),
                        node: node_name(node),
                    }
                    .into(),
                )),
                Decision::Spill { job, to, reason } => bodies.push((
                    Role::Router,
                    JobSpilled {
                        job: job_id(job),
                        from_shard: shard.name.clone(),
                        to_shard: state.shards()[to as usize].name.clone(),
                        reason,
                    }
                    .into(),
                )),
                Decision::Wait { .. } => {}
            }
        }
    }
    for node in state.nodes() {
        let silent = node.name == "a.y" && (6..24).contains(&tick);
        if silent {
            continue;
        }
        for job in &node.running {
            let job = &state.jobs()[*job as usize];
            if job.started_tick + u64::from(job.duration_ticks) <= tick {
                let failed = job.id % 3 == 0 && job.attempts == 1;
                bodies.push((
                    Role::Node,
                    JobReceipt {
                        job: job.id,
                        node: node.name.clone(),
                        outcome: if failed {
                            JobOutcome::Failed
                        } else {
                            JobOutcome::Completed
                        },
                        output_hash: Hash32([7; 32]),
                        kernel: None,
                        started_tick: job.started_tick,
                        finished_tick: tick,
                        execution_us: None,
                    }
                    .into(),
                ));
            }
        }
        bodies.push((
            Role::Node,
            Heartbeat {
                node: node.name.clone(),
                running_jobs: node.running.len() as u32,
            }
            .into(),
        ));
    }
    if tick < 20 {
        let skills: &[&str] = if tick % 4 == 0 { &["gpu"] } else { &["cpu"] };
        for (k, shard) in ["a", "b"].into_iter().enumerate() {
            bodies.push((
                Role::Client,
                job(tick * 10 + k as u64, shard, skills).into(),
            ));
        }
    }
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, (role, body))| Event::new(role, tick, (tick << 24) | i as u64, body))
        .collect()
}

#[test]
fn a_state_rebuilt_from_its_snapshot_evolves_exactly_like_the_original() {
    let world = World::new();
    for rebuild_at in [1u64, 5, 9, 12, 17, 23] {
        let mut original = world.state.clone();
        for tick in 1..rebuild_at {
            for event in tick_events(&original, tick) {
                let _ = original.apply(&event);
            }
        }
        let bytes = original.snapshot_bytes();
        let mut rebuilt = State::from_snapshot_bytes(&bytes).expect("snapshot decodes");
        assert_eq!(
            rebuilt.snapshot_bytes(),
            bytes,
            "rebuilt at tick {rebuild_at}"
        );
        for tick in rebuild_at..40 {
            let events = tick_events(&original, tick);
            assert_eq!(
                events,
                tick_events(&rebuilt, tick),
                "tick {tick} after a rebuild at {rebuild_at}"
            );
            for event in &events {
                assert_eq!(original.apply(event), rebuilt.apply(event));
            }
            assert_eq!(original.state_hash(), rebuilt.state_hash());
        }
        let m = original.metrics();
        assert!(
            m.completed > 10 && m.requeues > 0 && m.failures > 0,
            "{m:?}"
        );
        assert!(original.metrics().spillovers > 0);
    }
}

#[test]
fn damaged_snapshots_are_errors_not_states() {
    let mut world = World::new();
    for tick in 1..12 {
        for event in tick_events(&world.state, tick) {
            let _ = world.state.apply(&event);
        }
    }
    let bytes = world.state.snapshot_bytes();
    assert!(State::from_snapshot_bytes(&bytes[..bytes.len() - 1]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(State::from_snapshot_bytes(&longer).is_err());
    assert!(State::from_snapshot_bytes(b"not a snapshot").is_err());
    // Every single-byte change either fails to decode or decodes into other bytes: never a
    // panic, never silently the same state.
    for at in (0..bytes.len()).step_by(7) {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x5a;
        if let Ok(state) = State::from_snapshot_bytes(&damaged) {
            assert_ne!(state.snapshot_bytes(), bytes, "byte {at}");
        }
    }
}

#[test]
fn ended_jobs_leave_the_state_but_their_ids_stay_taken() {
    let mut world = World::new();
    for tick in 1..40 {
        for event in tick_events(&world.state, tick) {
            let _ = world.state.apply(&event);
        }
    }
    let state = &world.state;
    let m = state.metrics();
    assert!(m.completed + m.dropped > 20, "{m:?}");
    // Only the jobs still in the fabric hold a slot; ended ones freed theirs for reuse.
    let live = state.live_jobs().count() as u64;
    assert_eq!(live, m.submitted - m.completed - m.dropped - m.cancelled);
    assert!(
        state.jobs().len() < m.submitted as usize,
        "slots were reused"
    );
    // Job 10 (submitted at tick 1) ended long ago: its id is still refused.
    assert!(state.job_ix(10).is_none() && state.was_submitted(10));
    let anomalies = state.anomalies();
    let duplicate = world.apply(Role::Client, 41, job(10, "a", &["cpu"]));
    assert!(matches!(duplicate, Err(ApplyError::Duplicate { .. })));
    assert_eq!(world.state.anomalies(), anomalies + 1);
    // A receipt for an ended job is refused.
    let late = world.apply(
        Role::Node,
        41,
        JobReceipt {
            job: 10,
            node: "a.x".into(),
            outcome: JobOutcome::Completed,
            output_hash: Hash32([7; 32]),
            kernel: None,
            started_tick: 1,
            finished_tick: 41,
            execution_us: None,
        },
    );
    assert_eq!(late, Err(ApplyError::UnknownJob(10)));
}

#[test]
fn submitted_ids_merge_into_ranges() {
    let mut state = World::new().state;
    let mut nonce = 0;
    for id in [5u64, 7, 6, 1, 3, 2, 100] {
        nonce += 1;
        state
            .apply(&Event::new(Role::Client, 1, nonce, job(id, "a", &["cpu"])))
            .expect("a new id");
    }
    for id in [1, 2, 3, 5, 6, 7, 100] {
        assert!(state.was_submitted(id), "{id}");
    }
    for id in [0, 4, 8, 99, 101] {
        assert!(!state.was_submitted(id), "{id}");
    }
    // The ranges 1..4, 5..8 and 100..101 survive a snapshot.
    let bytes = state.snapshot_bytes();
    let rebuilt = State::from_snapshot_bytes(&bytes).expect("decodes");
    assert!(rebuilt.was_submitted(6) && !rebuilt.was_submitted(4));
    assert_eq!(rebuilt.snapshot_bytes(), bytes);
}

/// Owner commands of the consistency test, by tick: settings that rebuild derived lists,
/// node updates, retirements of shards (spilling and cancelling their queues) and nodes.
fn owner_actions_at(tick: u64) -> Vec<OwnerAction> {
    let (shard, node) = (|name: &str| name.to_owned(), |name: &str| name.to_owned());
    match tick {
        5 => vec![OwnerAction::SetLatencyBudget {
            shard: shard("b"),
            latency_budget_ms: 5,
        }],
        7 => vec![OwnerAction::UpdateNode {
            node: node("a.y"),
            max_concurrency: 3,
            latency_ms: 1,
            price_micros_per_hour: 7,
        }],
        9 => vec![OwnerAction::SetTreaty {
            shard: shard("a"),
            reputation_floor_ppm: 1,
            regions_served: vec![shard("a"), shard("b"), shard("d")],
            node_quota_jobs: 4,
            quota_window_ticks: 3,
        }],
        13 => vec![
            OwnerAction::SetSpillover {
                shard: shard("c"),
                targets: vec![shard("d"), shard("zz")],
            },
            OwnerAction::DrainNode { node: node("b.z") },
        ],
        15 => vec![
            OwnerAction::ResumeNode { node: node("b.z") },
            OwnerAction::CheckpointNow,
        ],
        17 => vec![
            OwnerAction::RetireShard {
                shard: shard("c"),
                queue: RetiredQueue::Spill,
            },
            OwnerAction::RetireNode { node: node("a.y") },
        ],
        19 => vec![OwnerAction::UpdateNode {
            node: node("a.x"),
            max_concurrency: 1,
            latency_ms: 1,
            price_micros_per_hour: 7,
        }],
        23 => vec![
            OwnerAction::RetireShard {
                shard: shard("d"),
                queue: RetiredQueue::Cancel,
            },
            OwnerAction::PauseAll,
        ],
        25 => vec![
            OwnerAction::ResumeAll,
            OwnerAction::SetQueueBudget {
                shard: shard("a"),
                queue_budget: 2,
            },
        ],
        _ => Vec::new(),
    }
}

#[test]
fn the_fold_and_the_snapshot_keep_the_state_consistent() {
    let mut world = World::new();
    world.owner(shard("d", 3, &["a", "b"]));
    world.owner(node("d.w", "d", 3, &["cpu", "gpu"]));
    for tick in 1..60 {
        let mut actions = owner_actions_at(tick);
        if tick % 4 == 2 {
            // Cancel one queued job and reroute two.
            let queued: Vec<u64> = world
                .state
                .live_jobs()
                .filter(|job| job.status == JobStatus::Queued)
                .map(|job| job.id)
                .collect();
            let cancel = queued
                .first()
                .map(|job| OwnerAction::CancelJob { job: *job });
            let reroutes =
                queued
                    .iter()
                    .skip(1)
                    .zip(["d", "c"])
                    .map(|(job, to)| OwnerAction::RerouteJob {
                        job: *job,
                        shard: to.to_owned(),
                    });
            actions.extend(cancel.into_iter().chain(reroutes));
        }
        for action in actions {
            let command = OwnerCommand {
                action,
                expiry_tick: tick + 10,
                approvals: Vec::new(),
            };
            let _ = world.apply(Role::Owner, tick, command);
        }
        for event in tick_events(&world.state, tick) {
            let _ = world.state.apply(&event);
        }
        world
            .state
            .check_invariants()
            .expect("consistent after a tick");
        let rebuilt = State::from_snapshot_bytes(&world.state.snapshot_bytes()).expect("decodes");
        rebuilt
            .check_invariants()
            .expect("consistent after a rebuild");
    }
    let m = world.state.metrics();
    assert!(
        m.cancelled > 0 && m.spillovers > 0 && m.completed > 0 && m.requeues > 0,
        "{m:?}"
    );
}

/// A `refusals_counted` event adds its counts to the rejection counters; counts out of tag
/// order, twice the same reason or zero attempts do not fit and change nothing.
#[test]
fn counted_refusals_add_to_the_rejection_counters_in_one_encoding_only() {
    use fabric_events::{RefusalCount, RefusalsCounted, RejectReason};
    let mut world = World::new();
    let count = |reason, attempts| RefusalCount { reason, attempts };
    world
        .apply(
            Role::Ledger,
            4,
            RefusalsCounted {
                counts: vec![
                    count(RejectReason::BadSignature, 7),
                    count(RejectReason::UnknownKey, 2),
                ],
            },
        )
        .expect("counts in tag order fit");
    let authority = world.state.authority();
    assert_eq!(authority.rejections(RejectReason::BadSignature), 7);
    assert_eq!(authority.rejections(RejectReason::UnknownKey), 2);
    assert_eq!(world.state.metrics().rejections, 9);
    for counts in [
        vec![
            count(RejectReason::UnknownKey, 1),
            count(RejectReason::BadSignature, 1),
        ],
        vec![
            count(RejectReason::Malformed, 1),
            count(RejectReason::Malformed, 1),
        ],
        vec![count(RejectReason::Oversize, 0)],
    ] {
        let refused = world.apply(Role::Ledger, 5, RefusalsCounted { counts });
        assert!(
            matches!(refused, Err(ApplyError::Conflict(_))),
            "{refused:?}"
        );
    }
    assert_eq!(world.state.metrics().rejections, 9);
    assert!(
        matches!(
            world.apply(Role::Client, 5, RefusalsCounted { counts: Vec::new() }),
            Err(ApplyError::WrongRole { .. })
        ),
        "only the ledger counts refusals"
    );
}

/// A job counts from the tick it was sequenced at: the newest tick of the log when it is
/// folded, not the older tick its client signed.
#[test]
fn a_backdated_job_counts_from_the_tick_it_is_sequenced_at() {
    let mut world = World::new();
    world
        .apply(
            Role::Ledger,
            20,
            fabric_events::RefusalsCounted { counts: Vec::new() },
        )
        .expect("an empty count marks the tick");
    world.submit(12, 1, "a", &["cpu"]);
    let job = world.job(1);
    assert_eq!(world.state.jobs()[job as usize].submitted_tick, 20);
    // Without a newer event its own tick is the newest.
    world.submit(25, 2, "a", &["cpu"]);
    let job = world.job(2);
    assert_eq!(world.state.jobs()[job as usize].submitted_tick, 25);
}
