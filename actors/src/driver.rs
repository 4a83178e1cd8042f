//! The driver: builds the world at tick 0, then runs tick after tick. At each tick it asks
//! every actor for its proposals, orders them by a stable key (checkpointer, routers by
//! shard, nodes by index, intakes by shard; each actor's events in its own order), appends
//! them as one batch through the ledger writer, and folds the appended batch into the state
//! that every actor reads at the next tick.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use fabric_events::{
    derive_signing_key, Event, FabricGenesis, NodeRegistered, OwnerAction, OwnerCommand, PublicKey,
    Role, ShardRegistered, SignedEvent, SigningKey,
};
use fabric_ledger::{Ledger, SignedTreeHead};
use fabric_projections::state::{NodeIx, ShardIx};
use fabric_projections::State;
use serde::Serialize;

use crate::actors::{
    Append, CheckpointerActor, Close, LedgerWriter, NodeActor, Propose, Proposed, ReceiptToVerify,
    RouterActor, ServedInputs, ShardActor, VerifierActor, Verify,
};
use crate::gate::{self, Attempt, Origin};
use crate::restore::{restore, RestoreReport, Restored};
use crate::workload::{FailureSchedule, Workload};
use crate::world::World;
use crate::RunError;
use fabric_gpu_kernels::Engine;
use rayon::prelude::*;

/// Ticks a run goes on after the last arrival before it stops with jobs still queued.
pub const DRAIN_TICKS_MAX: u64 = 10_000;
/// Telemetry samples a run aims for (the sampling interval follows from the run's length).
pub const SAMPLES_TARGET: u64 = 400;
/// Threads the actors run on (an actix arbiter each); signing happens on them.
pub const ACTOR_THREADS: usize = 2;

/// What to run.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The world, with every node it should have (see [`crate::workload::scale_nodes`]).
    pub world: World,
    /// The seed of every key and every draw.
    pub seed: u64,
    /// Jobs to submit.
    pub jobs: u64,
    /// Most events one append (one group commit) takes: a larger tick is appended in several,
    /// and a crash between them leaves part of the tick stored, which a resume completes.
    /// Normally [`fabric_ledger::BATCH_EVENTS_MAX`].
    pub append_events_max: usize,
    /// Owner commands to submit during the run, each at its tick (after the tick's other
    /// events, so it steers the fabric from the next tick on).
    pub owner_script: Vec<ScriptedCommand>,
    /// Nodes that corrupt GPU outputs, and how often.
    pub byzantine: Vec<Byzantine>,
}

/// A node that corrupts a share of its GPU jobs' outputs (`fabric run --byzantine NODE:RATE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Byzantine {
    /// The node.
    pub node: String,
    /// Share of its GPU outputs it corrupts, in parts per million.
    pub rate_ppm: u32,
}

/// Sends the tick's sampled GPU receipts to the verifier and puts each contradicted one's
/// `AttestationMismatch` in its place.
async fn verify_receipts(
    verifier: &Addr<VerifierActor>,
    workload: &Workload,
    verify_ppm: u32,
    tick: u64,
    attempts: &mut [Attempt],
) -> Result<(), RunError> {
    if verify_ppm == 0 {
        return Ok(());
    }
    let receipts: Vec<ReceiptToVerify> = attempts
        .iter()
        .enumerate()
        .filter_map(|(index, attempt)| match &attempt.event.body {
            fabric_events::Body::JobReceipt(receipt)
                if receipt.kernel.is_some()
                    && receipt.outcome == fabric_events::JobOutcome::Completed
                    && workload.verifies(receipt.job, receipt.started_tick, verify_ppm) =>
            {
                Some(ReceiptToVerify {
                    index,
                    receipt: receipt.clone(),
                    signed: attempt.signed.clone(),
                })
            }
            _ => None,
        })
        .collect();
    if receipts.is_empty() {
        return Ok(());
    }
    for (index, proposal) in verifier.send(Verify { tick, receipts }).await?? {
        attempts[index] = Attempt {
            event: proposal.event,
            signed: proposal.signed,
            origin: Origin::Internal,
        };
    }
    Ok(())
}

/// An owner command prepared (and approved) beforehand, submitted at a given tick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ScriptedCommand {
    /// The tick it is submitted at.
    pub tick: u64,
    /// Its nonce (what the approvals are bound to).
    pub nonce: u64,
    /// The command with its approvals.
    pub command: OwnerCommand,
}

impl ScriptedCommand {
    /// The command as an event of `tick`, its envelope signed by the ledger key.
    pub fn attempt(&self, ledger_key: &SigningKey) -> Result<Attempt, RunError> {
        owner_command_attempt(self.tick, self.nonce, self.command.clone(), ledger_key)
    }
}

/// An owner command as an attempt to append at `tick`: the approvals are the owners', the
/// envelope is signed by the ledger key that sequences it.
pub fn owner_command_attempt(
    tick: u64,
    nonce: u64,
    command: OwnerCommand,
    ledger_key: &SigningKey,
) -> Result<Attempt, RunError> {
    let event = Event::new(Role::Owner, tick, nonce, command);
    let signed = SignedEvent::sign(&event, ledger_key)?;
    Ok(Attempt::external(event, signed))
}

impl RunSpec {
    /// Ticks between the telemetry samples of `shards.json` (and the report's charts): about
    /// [`SAMPLES_TARGET`] samples over the arrivals and twice the longest job after them.
    pub fn sample_every_ticks(&self) -> u64 {
        let last_arrival_tick =
            Workload::new(&self.world, self.seed, self.jobs).last_arrival_tick();
        let longest_run = self
            .world
            .workload
            .kinds
            .iter()
            .map(|kind| u64::from(kind.duration_ticks_max))
            .max()
            .unwrap_or(1);
        ((last_arrival_tick + 2 * longest_run) / SAMPLES_TARGET).max(1)
    }
}

/// The keys of a simulation, derived from its seed.
pub struct SimKeys {
    /// The owners (`sim/owner/<i>`); the first `threshold` approve the genesis registrations.
    pub owners: Vec<SigningKey>,
    /// Signs checkpoints and tree heads.
    pub ledger: SigningKey,
    /// Per shard: the key of its region's clients.
    pub clients: Vec<SigningKey>,
    /// Per shard: its router key.
    pub routers: Vec<SigningKey>,
    /// Per node.
    pub nodes: Vec<SigningKey>,
}

/// The ledger key of a simulation with `seed`.
pub fn sim_ledger_key(seed: u64) -> SigningKey {
    derive_signing_key(seed, "sim/ledger")
}

/// Owner `index`'s key in a simulation with `seed`.
pub fn sim_owner_key(seed: u64, index: u32) -> SigningKey {
    derive_signing_key(seed, &format!("sim/owner/{index}"))
}

impl SimKeys {
    /// Derives every key of `world` from `seed`.
    pub fn derive(world: &World, seed: u64) -> Self {
        Self {
            owners: (0..world.owners.count)
                .map(|index| sim_owner_key(seed, index))
                .collect(),
            ledger: sim_ledger_key(seed),
            clients: world
                .shards
                .iter()
                .map(|shard| derive_signing_key(seed, &format!("sim/client/{}", shard.name)))
                .collect(),
            routers: world
                .shards
                .iter()
                .map(|shard| derive_signing_key(seed, &format!("sim/router/{}", shard.name)))
                .collect(),
            nodes: world
                .nodes
                .iter()
                .map(|node| derive_signing_key(seed, &format!("sim/node/{}", node.name)))
                .collect(),
        }
    }
}

/// What the driver reports after each tick.
pub struct TickProgress<'a> {
    /// The tick just appended.
    pub tick: u64,
    /// The state after it.
    pub state: &'a State,
    /// Events in the ledger.
    pub events_total: u64,
    /// Jobs the run submits in all.
    pub jobs_total: u64,
}

/// One shard at one tick, for `shards.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardSample {
    /// The tick.
    pub tick: u64,
    /// The shard.
    pub shard: String,
    /// Jobs queued.
    pub queue_depth: u64,
    /// Jobs running on its nodes.
    pub running: u64,
    /// Jobs its nodes completed so far.
    pub completed: u64,
    /// Jobs spilled into it so far.
    pub spilled_in: u64,
    /// Jobs it spilled out so far.
    pub spilled_out: u64,
    /// Its healthy nodes.
    pub healthy_nodes: u64,
}

/// Why a run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Every job completed, failed or was cancelled.
    AllJobsEnded,
    /// Jobs are left waiting, none is running, and nothing moved for longer than an outage and
    /// its detection can last: no node will ever take them.
    Stalled {
        /// Ticks without a submission, assignment, spill, requeue or receipt.
        idle_ticks: u64,
    },
    /// [`DRAIN_TICKS_MAX`] ticks passed after the last arrival.
    DrainLimit,
}

impl StopReason {
    /// Whether every job ended.
    pub fn drained(self) -> bool {
        self == StopReason::AllJobsEnded
    }

    /// A short explanation for reports.
    pub fn describe(self) -> String {
        match self {
            StopReason::AllJobsEnded => "every job ended".to_owned(),
            StopReason::Stalled { idle_ticks } => {
                format!("stalled: waiting jobs, none running, nothing moved for {idle_ticks} ticks")
            }
            StopReason::DrainLimit => {
                format!("drain limit: {DRAIN_TICKS_MAX} ticks after the last arrival")
            }
        }
    }
}

/// How a run went.
pub struct RunOutcome {
    /// The final state.
    pub state: State,
    /// The last tick.
    pub last_tick: u64,
    /// The ledger, closed by the writer and handed back.
    pub ledger: Ledger,
    /// The signed tree head after the last batch.
    pub tree_head: SignedTreeHead,
    /// Nanoseconds of every routing decision (wall clock; telemetry only).
    pub decision_ns: Vec<u32>,
    /// Decisions that left a job waiting.
    pub waits: u64,
    /// Ticks between telemetry samples (see [`Sampler`]).
    pub sample_every_ticks: u64,
    /// Why the run stopped.
    pub stop: StopReason,
    /// Wall time of this process's part of the run, from its first tick to its last append.
    pub wall: Duration,
    /// Events this process appended (all of them, unless the run was resumed).
    pub events_appended: u64,
    /// How a resumed run was restored, and how long that took.
    pub restored: Option<(RestoreReport, Duration)>,
    /// Arrivals per tick of the workload.
    pub arrivals_per_tick: u64,
}

/// Tick 0: the ledger names itself and the owners, then the owners register every client,
/// shard and node, each by a command approved by the first `threshold` owners.
pub(crate) fn genesis(world: &World, keys: &SimKeys) -> Result<Vec<Attempt>, RunError> {
    let ledger = PublicKey::from(&keys.ledger.verifying_key());
    let founding = Event::new(
        Role::Ledger,
        0,
        0,
        FabricGenesis {
            ledger_key: ledger,
            owners: keys
                .owners
                .iter()
                .map(|owner| PublicKey::from(&owner.verifying_key()))
                .collect(),
            owner_threshold: world.owners.threshold,
        },
    );
    let mut attempts = vec![Attempt {
        signed: SignedEvent::sign(&founding, &keys.ledger)?,
        event: founding,
        origin: Origin::Internal,
    }];
    let mut actions = Vec::new();
    for (shard, client) in world.shards.iter().zip(&keys.clients) {
        actions.push(OwnerAction::RegisterClient {
            client: format!("{}.clients", shard.name),
            key: PublicKey::from(&client.verifying_key()),
        });
    }
    for (shard, router) in world.shards.iter().zip(&keys.routers) {
        actions.push(OwnerAction::RegisterShard {
            registration: ShardRegistered {
                shard: shard.name.clone(),
                router_key: PublicKey::from(&router.verifying_key()),
                queue_budget: shard.queue_budget,
                latency_budget_ms: shard.latency_budget_ms,
                spillover: shard.spillover.clone(),
                specialties: shard.specialties.clone(),
                reputation_floor_ppm: shard.reputation_floor_ppm,
                regions_served: shard.regions_served.clone(),
                node_quota_jobs: shard.node_quota_jobs,
                quota_window_ticks: shard.quota_window_ticks,
            },
        });
    }
    for (node, key) in world.nodes.iter().zip(&keys.nodes) {
        actions.push(OwnerAction::RegisterNode {
            registration: NodeRegistered {
                node: node.name.clone(),
                region: node.region.clone(),
                node_key: PublicKey::from(&key.verifying_key()),
                capacity: node.capacity,
                max_concurrency: node.max_concurrency,
                heartbeat_interval_ticks: node.heartbeat_interval_ticks,
                capabilities: node.capabilities.clone(),
                latency_ms: node.latency_ms,
                price_micros_per_hour: node.price_micros_per_hour,
                reputation_ppm: node.reputation_ppm,
            },
        });
    }
    let approvers = &keys.owners[..world.owners.threshold as usize];
    // Thousands of registrations, each signed M + 1 times: sign them on every core (ed25519
    // signatures are deterministic, so the order of work changes no byte).
    let registrations: Vec<Result<Attempt, RunError>> = actions
        .into_par_iter()
        .enumerate()
        .map(|(index, action)| {
            let nonce = index as u64 + 1;
            let mut command = OwnerCommand {
                action,
                expiry_tick: 0,
                approvals: Vec::with_capacity(approvers.len()),
            };
            for owner in approvers {
                command.approve(nonce, owner);
            }
            let mut attempt = owner_command_attempt(0, nonce, command, &keys.ledger)?;
            attempt.origin = Origin::Internal;
            Ok(attempt)
        })
        .collect();
    for attempt in registrations {
        attempts.push(attempt?);
    }
    Ok(attempts)
}

/// One sample per shard of the state after `tick`.
pub fn shard_samples(state: &State, tick: u64) -> impl Iterator<Item = ShardSample> + '_ {
    state.shards().iter().map(move |shard| {
        let healthy_nodes = shard
            .nodes
            .iter()
            .filter(|node| state.nodes()[**node as usize].healthy)
            .count() as u64;
        ShardSample {
            tick,
            shard: shard.name.clone(),
            queue_depth: shard.queued(),
            running: shard.running,
            completed: shard.counters.completed,
            spilled_in: shard.counters.spilled_in,
            spilled_out: shard.counters.spilled_out,
            healthy_nodes,
        }
    })
}

/// Replays a log and samples every shard at tick 0, at every multiple of `every_ticks` and at
/// the last tick: the telemetry of `shards.json`, a function of the log alone, so a resumed
/// run reports exactly what an uninterrupted one does.
pub struct Sampler {
    state: State,
    every_ticks: u64,
    next_tick: u64,
    last_sampled: Option<u64>,
    samples: Vec<ShardSample>,
}

impl Sampler {
    /// An empty replay sampling every `every_ticks` ticks.
    pub fn new(every_ticks: u64) -> Self {
        Self {
            state: State::new(),
            every_ticks: every_ticks.max(1),
            next_tick: 0,
            last_sampled: None,
            samples: Vec::new(),
        }
    }

    /// Samples every due tick before `tick` (the state has not changed since), showing each
    /// sampled state to `observe`.
    fn sample_before(&mut self, tick: u64, observe: &mut impl FnMut(u64, &State)) {
        while self.next_tick < tick {
            self.samples
                .extend(shard_samples(&self.state, self.next_tick));
            observe(self.next_tick, &self.state);
            self.last_sampled = Some(self.next_tick);
            self.next_tick += self.every_ticks;
        }
    }

    /// The state of the log folded so far.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Folds in (admits) the next event of the log, by `author`.
    pub fn apply(
        &mut self,
        author: &PublicKey,
        event: &fabric_events::Event,
    ) -> Result<(), fabric_projections::ApplyError> {
        self.apply_observed(author, event, |_, _| {})
    }

    /// Folds in (admits) the next event of the log; `observe` sees the state at each sample
    /// tick it passes, before the event.
    pub fn apply_observed(
        &mut self,
        author: &PublicKey,
        event: &fabric_events::Event,
        mut observe: impl FnMut(u64, &State),
    ) -> Result<(), fabric_projections::ApplyError> {
        self.sample_before(event.header.tick, &mut observe);
        self.state.admit(author, event)
    }

    /// Samples up to and including `last_tick` (the run's last tick) and hands back the state
    /// and the samples.
    pub fn finish(self, last_tick: u64) -> (State, Vec<ShardSample>) {
        self.finish_observed(last_tick, |_, _| {})
    }

    /// [`Sampler::finish`], showing each remaining sampled state to `observe`.
    pub fn finish_observed(
        mut self,
        last_tick: u64,
        mut observe: impl FnMut(u64, &State),
    ) -> (State, Vec<ShardSample>) {
        self.sample_before(last_tick + 1, &mut observe);
        if self.last_sampled != Some(last_tick) {
            self.samples.extend(shard_samples(&self.state, last_tick));
            observe(last_tick, &self.state);
        }
        (self.state, self.samples)
    }
}

/// Runs the simulation of `spec` into an empty `ledger` (opened with
/// [`sim_ledger_key`]`(spec.seed)`), calling `on_tick` after each appended tick.
pub fn run(
    spec: &RunSpec,
    ledger: Ledger,
    on_tick: impl FnMut(&TickProgress<'_>),
) -> Result<RunOutcome, RunError> {
    if !ledger.is_empty() {
        return Err(RunError::LedgerNotEmpty { size: ledger.len() });
    }
    execute(spec, ledger, None, on_tick)
}

/// Continues the run of `spec` stored in `ledger` (interrupted at any moment) to its end,
/// from the newest checkpoint that verifies (see [`restore`]). The log it leaves is the one
/// an uninterrupted run leaves, byte for byte.
pub fn resume(
    spec: &RunSpec,
    ledger: Ledger,
    on_tick: impl FnMut(&TickProgress<'_>),
) -> Result<RunOutcome, RunError> {
    let started = Instant::now();
    let restored = restore(&ledger.reader(), &ledger.ledger_key())?;
    execute(spec, ledger, Some((restored, started.elapsed())), on_tick)
}

fn execute(
    spec: &RunSpec,
    ledger: Ledger,
    restored: Option<(Restored, Duration)>,
    on_tick: impl FnMut(&TickProgress<'_>),
) -> Result<RunOutcome, RunError> {
    let system = actix::System::new();
    let result = system.block_on(drive(spec, ledger, restored, on_tick));
    System::current().stop();
    result
}

/// The actors of a run (or of `fabric serve`, which has no intakes: its jobs come from clients).
pub(crate) struct Actors {
    pub(crate) checkpointer: Addr<CheckpointerActor>,
    pub(crate) routers: Vec<Addr<RouterActor>>,
    pub(crate) nodes: Vec<Addr<NodeActor>>,
    pub(crate) intakes: Vec<Addr<ShardActor>>,
}

/// How a fabric's nodes run their jobs.
pub(crate) struct NodeSetup<'a> {
    /// Where GPU kernels run.
    pub(crate) engine: Engine,
    /// Nodes that corrupt a share of their GPU outputs (`--byzantine`).
    pub(crate) byzantine: &'a [Byzantine],
    /// `fabric serve`: the inputs clients named for their jobs, by job.
    pub(crate) served_inputs: Option<Arc<ServedInputs>>,
}

/// What the actors proposed for one tick, in the stable order, as attempts for the gate.
pub(crate) struct TickProposals {
    pub(crate) attempts: Vec<Attempt>,
    /// The checkpointer's snapshot to store with the tick's batch.
    pub(crate) snapshot: Option<(u64, Vec<u8>)>,
    /// Nanoseconds each routing decision took (telemetry only).
    pub(crate) decision_ns: Vec<u32>,
    /// Routing decisions that left a job waiting.
    pub(crate) waits: u64,
}

impl Actors {
    /// Starts the checkpointer, a router per shard, a node per configured node and, with
    /// `intakes`, a shard intake per shard, spread over `arbiters`.
    pub(crate) fn start(
        world: &World,
        keys: &SimKeys,
        workload: &Arc<Workload>,
        failures: &Arc<FailureSchedule>,
        arbiters: &[Arbiter],
        node_setup: NodeSetup<'_>,
        intakes: bool,
    ) -> Self {
        let on = |index: usize| arbiters[index % arbiters.len()].handle();
        let checkpointer = {
            let actor = CheckpointerActor {
                ledger_key: keys.ledger.clone(),
                interval_ticks: u64::from(world.checkpoint_interval_ticks),
            };
            CheckpointerActor::start_in_arbiter(&on(0), move |_| actor)
        };
        let routers = keys
            .routers
            .iter()
            .enumerate()
            .map(|(index, key)| {
                let actor = RouterActor {
                    shard: index as ShardIx,
                    router_key: key.clone(),
                };
                RouterActor::start_in_arbiter(&on(index), move |_| actor)
            })
            .collect();
        let nodes = world
            .nodes
            .iter()
            .zip(&keys.nodes)
            .enumerate()
            .map(|(index, (node, key))| {
                let actor = NodeActor {
                    node: index as NodeIx,
                    key: key.clone(),
                    heartbeat_interval_ticks: node.heartbeat_interval_ticks,
                    failures: Arc::clone(failures),
                    workload: Arc::clone(workload),
                    engine: node_setup.engine,
                    byzantine_ppm: node_setup
                        .byzantine
                        .iter()
                        .find(|b| b.node == node.name)
                        .map_or(0, |b| b.rate_ppm),
                    served_inputs: node_setup.served_inputs.clone(),
                };
                NodeActor::start_in_arbiter(&on(index), move |_| actor)
            })
            .collect();
        // Intakes sit on the other thread from their shard's router, to spread the signing.
        let intakes = if intakes {
            world
                .shards
                .iter()
                .zip(&keys.clients)
                .enumerate()
                .map(|(index, (shard, key))| {
                    let actor = ShardActor {
                        shard: shard.name.clone(),
                        client_key: key.clone(),
                        workload: Arc::clone(workload),
                    };
                    ShardActor::start_in_arbiter(&on(index + 1), move |_| actor)
                })
                .collect()
        } else {
            Vec::new()
        };
        Self {
            checkpointer,
            routers,
            nodes,
            intakes,
        }
    }

    /// Sends `Propose` to every actor and gathers the answers in the stable order
    /// (checkpointer, routers by shard, nodes by index, intakes by shard) as internal attempts.
    pub(crate) async fn propose(
        &self,
        tick: u64,
        state: &Arc<State>,
        tree: (u64, fabric_events::Hash32),
    ) -> Result<TickProposals, RunError> {
        let mut proposals = TickProposals {
            attempts: Vec::new(),
            snapshot: None,
            decision_ns: Vec::new(),
            waits: 0,
        };
        for answer in self.answers(tick, state, tree).await? {
            proposals.decision_ns.extend_from_slice(&answer.decision_ns);
            proposals.waits += answer.waits;
            if answer.snapshot.is_some() {
                proposals.snapshot = answer.snapshot;
            }
            proposals
                .attempts
                .extend(answer.proposals.into_iter().map(|proposal| Attempt {
                    event: proposal.event,
                    signed: proposal.signed,
                    origin: Origin::Internal,
                }));
        }
        Ok(proposals)
    }

    /// The actors' answers to `Propose`, in the stable order. The messages are all sent before
    /// the first answer is awaited, so the actors work in parallel on their threads.
    async fn answers(
        &self,
        tick: u64,
        state: &Arc<State>,
        tree: (u64, fabric_events::Hash32),
    ) -> Result<Vec<Proposed>, RunError> {
        let message = || Propose {
            tick,
            state: Arc::clone(state),
            tree,
        };
        let checkpointer = self.checkpointer.send(message());
        let routers: Vec<_> = self.routers.iter().map(|a| a.send(message())).collect();
        let nodes: Vec<_> = self.nodes.iter().map(|a| a.send(message())).collect();
        let intakes: Vec<_> = self.intakes.iter().map(|a| a.send(message())).collect();
        let mut answers = Vec::with_capacity(2 + routers.len() + nodes.len() + intakes.len());
        answers.push(checkpointer.await??);
        for request in routers {
            answers.push(request.await??);
        }
        for request in nodes {
            answers.push(request.await??);
        }
        for request in intakes {
            answers.push(request.await??);
        }
        Ok(answers)
    }
}

async fn drive(
    spec: &RunSpec,
    ledger: Ledger,
    restored: Option<(Restored, Duration)>,
    mut on_tick: impl FnMut(&TickProgress<'_>),
) -> Result<RunOutcome, RunError> {
    let started = Instant::now();
    let events_before = ledger.len();
    let mut tree_head = ledger.tree_head();
    let world = &spec.world;
    let keys = SimKeys::derive(world, spec.seed);
    let workload = Arc::new(Workload::new(world, spec.seed, spec.jobs));
    let failures = Arc::new(FailureSchedule::new(&world.failures, spec.seed));

    let arbiters: Vec<Arbiter> = (0..ACTOR_THREADS).map(|_| Arbiter::new()).collect();
    if spec.append_events_max == 0 || spec.append_events_max > fabric_ledger::BATCH_EVENTS_MAX {
        return Err(RunError::AppendSize {
            given: spec.append_events_max,
            max: fabric_ledger::BATCH_EVENTS_MAX,
        });
    }
    let writer = LedgerWriter {
        ledger: Some(ledger),
        append_events_max: spec.append_events_max,
    }
    .start();
    // The process's one device, opened only when the world has GPU jobs.
    let engine = if world
        .workload
        .kinds
        .iter()
        .any(|kind| kind.kernel.is_some())
    {
        Engine::from_env()?
    } else {
        Engine::Cpu
    };
    let verifier = {
        let actor = VerifierActor {
            ledger_key: keys.ledger.clone(),
            workload: Arc::clone(&workload),
        };
        VerifierActor::start_in_arbiter(&arbiters[1 % arbiters.len()].handle(), move |_| actor)
    };
    let actors = Actors::start(
        world,
        &keys,
        &workload,
        &failures,
        &arbiters,
        NodeSetup {
            engine,
            byzantine: &spec.byzantine,
            served_inputs: None,
        },
        true,
    );

    // A fresh run starts at tick 0 (the world registers); a resumed one at the log's last tick,
    // whose stored events must be the start of what the actors propose for it again.
    let (state, mut tick, mut stored, mut tree, restore_report) = match restored {
        None => (State::new(), 0, Vec::new(), (0, tree_head.root), None),
        Some((restored, took)) => (
            restored.state,
            restored.tick,
            restored.stored,
            restored.tree_before,
            Some((restored.report, took)),
        ),
    };
    let mut state = Arc::new(state);

    let last_arrival_tick = workload.last_arrival_tick();
    let sample_every_ticks = spec.sample_every_ticks();
    let mut decision_ns = Vec::new();
    let mut waits = 0;
    // A run whose waiting jobs no node can ever take would otherwise idle until the drain
    // limit: stop once nothing has moved for longer than any outage and its detection take.
    let interval_max = world
        .nodes
        .iter()
        .map(|node| u64::from(node.heartbeat_interval_ticks))
        .max()
        .unwrap_or(1);
    let stall_ticks = u64::from(world.failures.epoch_ticks)
        + interval_max * (u64::from(world.failures.outage_heartbeats_max) + 2);
    let stop = loop {
        let (mut attempts, mut snapshot) = if tick == 0 {
            (genesis(world, &keys)?, None)
        } else {
            let proposals = actors.propose(tick, &state, tree).await?;
            decision_ns.extend_from_slice(&proposals.decision_ns);
            waits += proposals.waits;
            (proposals.attempts, proposals.snapshot)
        };
        verify_receipts(&verifier, &workload, world.verify_ppm, tick, &mut attempts).await?;
        for scripted in spec.owner_script.iter().filter(|c| c.tick == tick) {
            attempts.push(scripted.attempt(&keys.ledger)?);
        }
        // The sequencer's gate: every attempt is admitted against the state the tick builds
        // up, or replaced by a signed `Rejected` event. Actors see the new state only at the
        // next tick, after the append below has made it durable.
        let admitted = {
            let state = Arc::get_mut(&mut state).ok_or(RunError::StateShared)?;
            match gate::admit(state, tick, attempts, &keys.ledger) {
                Ok(admitted) => admitted,
                // A resumed tick whose proposals the log's authority refuses (keys of another
                // world) is a log this run did not write.
                Err(RunError::Apply { index, .. }) if !stored.is_empty() => {
                    return Err(RunError::Diverged { tick, index })
                }
                Err(error) => return Err(error),
            }
        };
        let mut signed = admitted.signed;
        if !stored.is_empty() {
            check_stored_prefix(tick, &stored, &signed)?;
            // The snapshot went to disk with the tick's first commit.
            snapshot = None;
        }
        let missing = signed.split_off(stored.len());
        stored.clear();
        if !missing.is_empty() {
            tree_head = writer
                .send(Append {
                    events: missing,
                    snapshot,
                })
                .await??
                .tree_head;
        }
        tree = (tree_head.tree_size, tree_head.root);
        on_tick(&TickProgress {
            tick,
            state: &state,
            events_total: tree_head.tree_size,
            jobs_total: spec.jobs,
        });
        let metrics = state.metrics();
        if metrics.submitted == spec.jobs
            && metrics.completed + metrics.dropped + metrics.cancelled == spec.jobs
        {
            break StopReason::AllJobsEnded;
        }
        let running: u64 = state.shards().iter().map(|shard| shard.running).sum();
        let idle_ticks = tick - state.jobs_moved_tick();
        if tick > last_arrival_tick && running == 0 && idle_ticks > stall_ticks {
            break StopReason::Stalled { idle_ticks };
        }
        if tick >= last_arrival_tick + DRAIN_TICKS_MAX {
            break StopReason::DrainLimit;
        }
        tick += 1;
    };
    let wall = started.elapsed();
    let ledger = writer.send(Close).await?.ok_or(RunError::LedgerClosed)?;
    for arbiter in &arbiters {
        arbiter.stop();
    }
    drop(actors);
    let state = Arc::try_unwrap(state).map_err(|_| RunError::StateShared)?;
    Ok(RunOutcome {
        state,
        last_tick: tick,
        tree_head,
        events_appended: tree_head.tree_size - events_before,
        restored: restore_report,
        ledger,
        decision_ns,
        waits,
        sample_every_ticks,
        stop,
        wall,
        arrivals_per_tick: workload.arrivals_per_tick(),
    })
}

/// Checks that the events a resumed tick already stored are the start of what is proposed
/// for it now: the same authors, signatures and bytes.
fn check_stored_prefix(
    tick: u64,
    stored: &[(fabric_events::Event, fabric_events::SignedEvent)],
    proposed: &[fabric_events::SignedEvent],
) -> Result<(), RunError> {
    for (index, (_, stored)) in stored.iter().enumerate() {
        if proposed.get(index) != Some(stored) {
            return Err(RunError::Diverged { tick, index });
        }
    }
    Ok(())
}
