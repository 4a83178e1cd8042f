//! The driver: builds the world at tick 0, then runs tick after tick. At each tick it asks
//! every actor for its proposals, orders them by a stable key (checkpointer, routers by
//! shard, nodes by index, intakes by shard; each actor's events in its own order), appends
//! them as one batch through the ledger writer, and folds the appended batch into the state
//! that every actor reads at the next tick.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use fabric_actors::actors::{Append, Close, LedgerWriter};
use fabric_actors::gate::{self, owner_command_attempt, Attempt};
use fabric_actors::restore::{restore, RestoreReport, Restored};
use fabric_actors::work::{Intake, NodeWork};
use fabric_actors::world::World;
use fabric_actors::{Actors, RunError, ACTOR_THREADS};
use fabric_events::{Event, OwnerCommand, SignedEvent, SigningKey};
use fabric_gpu_kernels::Engine;
use fabric_ledger::{Ledger, SignedTreeHead};
use fabric_projections::State;
use serde::{Deserialize, Serialize};

use crate::keys::{genesis, SimKeys};
use crate::nodes::{Byzantine, SimIntake, SimNodes};
use crate::verifier::{verify_receipts, VerifierActor};
use crate::workload::{FailureSchedule, Workload};

/// Ticks a run goes on after the last arrival before it stops with jobs still queued.
pub const DRAIN_TICKS_MAX: u64 = 10_000;
/// Telemetry samples a run aims for (the sampling interval follows from the run's length).
pub const SAMPLES_TARGET: u64 = 400;

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

/// An owner command prepared (and approved) beforehand, submitted at a given tick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Ticks between telemetry samples (see `shards.json`).
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

/// A running simulation: its keys and workload, the ledger writer, the verifier and the actors.
struct Fabric {
    keys: SimKeys,
    workload: Arc<Workload>,
    writer: Addr<LedgerWriter>,
    verifier: Addr<VerifierActor>,
    actors: Actors,
    arbiters: Vec<Arbiter>,
}

impl Fabric {
    /// Starts the writer on `ledger`, the verifier and the actors of `spec`.
    fn start(spec: &RunSpec, ledger: Ledger) -> Result<Self, RunError> {
        let world = &spec.world;
        if spec.append_events_max == 0 || spec.append_events_max > fabric_ledger::BATCH_EVENTS_MAX {
            return Err(RunError::AppendSize {
                given: spec.append_events_max,
                max: fabric_ledger::BATCH_EVENTS_MAX,
            });
        }
        let keys = SimKeys::derive(world, spec.seed);
        let workload = Arc::new(Workload::new(world, spec.seed, spec.jobs));
        let failures = FailureSchedule::new(&world.failures, spec.seed);
        let arbiters: Vec<Arbiter> = (0..ACTOR_THREADS).map(|_| Arbiter::new()).collect();
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
        let nodes: Arc<dyn NodeWork> = Arc::new(SimNodes::new(
            world,
            Arc::clone(&workload),
            failures,
            engine,
            &spec.byzantine,
        ));
        let intake: Arc<dyn Intake> = Arc::new(SimIntake {
            workload: Arc::clone(&workload),
        });
        let actors = Actors::start(world, &keys.actor_keys(), &nodes, Some(&intake), &arbiters);
        Ok(Self {
            keys,
            workload,
            writer,
            verifier,
            actors,
            arbiters,
        })
    }

    /// The tick's events through the gate: the actors' proposals (or genesis at tick 0), the
    /// verifier's mismatches in place of contradicted receipts, then the owner script's
    /// commands of the tick. Actors see the new state only at the next tick, after the append
    /// has made it durable.
    async fn admit_tick(
        &self,
        spec: &RunSpec,
        tick: u64,
        state: &mut Arc<State>,
        tree: (u64, fabric_events::Hash32),
        telemetry: &mut Telemetry,
    ) -> Result<(Vec<SignedEvent>, Option<(u64, Vec<u8>)>), RunError> {
        let (mut attempts, snapshot) = if tick == 0 {
            (genesis(&spec.world, &self.keys)?, None)
        } else {
            let proposals = self.actors.propose(tick, state, tree).await?;
            telemetry
                .decision_ns
                .extend_from_slice(&proposals.decision_ns);
            telemetry.waits += proposals.waits;
            (proposals.attempts, proposals.snapshot)
        };
        let verify_ppm = spec.world.verify_ppm;
        verify_receipts(
            &self.verifier,
            &self.workload,
            verify_ppm,
            tick,
            &mut attempts,
        )
        .await?;
        for scripted in spec.owner_script.iter().filter(|c| c.tick == tick) {
            attempts.push(scripted.attempt(&self.keys.ledger)?);
        }
        let state = Arc::get_mut(state).ok_or(RunError::StateShared)?;
        let admitted = gate::admit(state, tick, attempts, &self.keys.actor_keys())?;
        Ok((admitted.signed, snapshot))
    }

    /// Appends what the log does not hold yet of the tick (all of it, except for the first
    /// tick of a resume, whose stored part must be the start of what was proposed again).
    async fn append_tick(
        &self,
        tick: u64,
        signed: Vec<SignedEvent>,
        snapshot: Option<(u64, Vec<u8>)>,
        stored: &mut Vec<(Event, SignedEvent)>,
    ) -> Result<Option<SignedTreeHead>, RunError> {
        let mut signed = signed;
        let mut snapshot = snapshot;
        if !stored.is_empty() {
            check_stored_prefix(tick, stored, &signed)?;
            // The snapshot went to disk with the tick's first commit.
            snapshot = None;
        }
        let missing = signed.split_off(stored.len());
        stored.clear();
        if missing.is_empty() {
            return Ok(None);
        }
        let receipt = self
            .writer
            .send(Append {
                events: missing,
                snapshot,
            })
            .await??;
        Ok(Some(receipt.tree_head))
    }

    /// Stops the actors and hands the ledger back.
    async fn close(self) -> Result<Ledger, RunError> {
        let ledger = self
            .writer
            .send(Close)
            .await?
            .ok_or(RunError::LedgerClosed)?;
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
        Ok(ledger)
    }
}

/// Routing telemetry gathered over a run (wall clock; never logged).
#[derive(Default)]
struct Telemetry {
    decision_ns: Vec<u32>,
    waits: u64,
}

/// When a run stops: all jobs ended, stalled, or the drain limit.
struct StopRule {
    jobs: u64,
    last_arrival_tick: u64,
    stall_ticks: u64,
}

impl StopRule {
    fn new(world: &World, jobs: u64, last_arrival_tick: u64) -> Self {
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
        Self {
            jobs,
            last_arrival_tick,
            stall_ticks,
        }
    }

    fn after(&self, tick: u64, state: &State) -> Option<StopReason> {
        let metrics = state.metrics();
        if metrics.submitted == self.jobs
            && metrics.completed + metrics.dropped + metrics.cancelled == self.jobs
        {
            return Some(StopReason::AllJobsEnded);
        }
        let running: u64 = state.shards().iter().map(|shard| shard.running).sum();
        let idle_ticks = tick - state.jobs_moved_tick();
        if tick > self.last_arrival_tick && running == 0 && idle_ticks > self.stall_ticks {
            return Some(StopReason::Stalled { idle_ticks });
        }
        if tick >= self.last_arrival_tick + DRAIN_TICKS_MAX {
            return Some(StopReason::DrainLimit);
        }
        None
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
    let fabric = Fabric::start(spec, ledger)?;
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
    let stop_rule = StopRule::new(&spec.world, spec.jobs, fabric.workload.last_arrival_tick());
    let mut telemetry = Telemetry::default();
    let stop = loop {
        let (signed, snapshot) = match fabric
            .admit_tick(spec, tick, &mut state, tree, &mut telemetry)
            .await
        {
            Ok(admitted) => admitted,
            // A resumed tick whose proposals the log's authority refuses (keys of another
            // world) is a log this run did not write.
            Err(RunError::Apply { index, .. }) if !stored.is_empty() => {
                return Err(RunError::Diverged { tick, index })
            }
            Err(error) => return Err(error),
        };
        if let Some(head) = fabric
            .append_tick(tick, signed, snapshot, &mut stored)
            .await?
        {
            tree_head = head;
        }
        tree = (tree_head.tree_size, tree_head.root);
        on_tick(&TickProgress {
            tick,
            state: &state,
            events_total: tree_head.tree_size,
            jobs_total: spec.jobs,
        });
        if let Some(stop) = stop_rule.after(tick, &state) {
            break stop;
        }
        tick += 1;
    };
    let wall = started.elapsed();
    let arrivals_per_tick = fabric.workload.arrivals_per_tick();
    let ledger = fabric.close().await?;
    let state = Arc::try_unwrap(state).map_err(|_| RunError::StateShared)?;
    Ok(RunOutcome {
        state,
        last_tick: tick,
        tree_head,
        events_appended: tree_head.tree_size - events_before,
        restored: restore_report,
        ledger,
        decision_ns: telemetry.decision_ns,
        waits: telemetry.waits,
        sample_every_ticks: spec.sample_every_ticks(),
        stop,
        wall,
        arrivals_per_tick,
    })
}

/// Checks that the events a resumed tick already stored are the start of what is proposed
/// for it now: the same authors, signatures and bytes.
fn check_stored_prefix(
    tick: u64,
    stored: &[(Event, SignedEvent)],
    proposed: &[SignedEvent],
) -> Result<(), RunError> {
    for (index, (_, stored)) in stored.iter().enumerate() {
        if proposed.get(index) != Some(stored) {
            return Err(RunError::Diverged { tick, index });
        }
    }
    Ok(())
}
