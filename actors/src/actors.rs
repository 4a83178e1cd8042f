//! The actors of a run and the messages they answer.
//!
//! Every actor answers [`Propose`] with the events it wants appended at that tick, signed with
//! its own key. It reads the fabric only through the projected [`State`] the message carries
//! (the state after the previous tick), so what it proposes depends on the log and the seed
//! alone, never on timing.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use fabric_events::{
    AttestationMismatch, Body, Checkpoint, Event, Hash32, Heartbeat, JobAssigned, JobOutcome,
    JobReceipt, JobRequeued, JobSpilled, KernelRef, NodeHealthChanged, Role, SignedEvent,
    SigningKey,
};
use fabric_gpu_kernels::jobs::output_hash;
use fabric_gpu_kernels::Engine;
use fabric_ledger::{AppendReceipt, Ledger};
use fabric_projections::state::{NodeIx, ShardIx};
use fabric_projections::{Decision, HealthAction, State, TickPlan};

use crate::workload::{FailureSchedule, Workload};
use crate::RunError;

/// Events one author may sign per tick: the nonce is `tick << 24 | index`.
pub const EVENTS_PER_AUTHOR_TICK_MAX: u64 = 1 << 24;

/// One proposed event, with its signed form.
#[derive(Clone, Debug)]
pub struct Proposal {
    /// The event.
    pub event: Event,
    /// Its signed bytes.
    pub signed: SignedEvent,
}

/// Signs events for one author within one tick, numbering their nonces.
pub struct Signer<'a> {
    key: &'a SigningKey,
    role: Role,
    tick: u64,
    index: u64,
    out: Vec<Proposal>,
}

impl<'a> Signer<'a> {
    /// A signer for `key` acting as `role` at `tick`.
    pub fn new(key: &'a SigningKey, role: Role, tick: u64) -> Self {
        Self {
            key,
            role,
            tick,
            index: 0,
            out: Vec::new(),
        }
    }

    /// Signs one event with the next nonce.
    pub fn sign(&mut self, body: impl Into<Body>) -> Result<(), RunError> {
        if self.index >= EVENTS_PER_AUTHOR_TICK_MAX {
            return Err(RunError::TooManyEvents { tick: self.tick });
        }
        let nonce = (self.tick << 24) | self.index;
        self.index += 1;
        let event = Event::new(self.role, self.tick, nonce, body);
        let signed = SignedEvent::sign(&event, self.key)?;
        self.out.push(Proposal { event, signed });
        Ok(())
    }

    /// The signed events, in signing order.
    pub fn finish(self) -> Vec<Proposal> {
        self.out
    }
}

/// Asks an actor for its events of `tick`.
#[derive(Message)]
#[rtype(result = "Result<Proposed, RunError>")]
pub struct Propose {
    /// The tick being built.
    pub tick: u64,
    /// The state after the previous tick.
    pub state: Arc<State>,
    /// The ledger's size and Merkle root after the previous tick.
    pub tree: (u64, Hash32),
}

/// An actor's answer to [`Propose`].
#[derive(Debug, Default)]
pub struct Proposed {
    /// Its events, in the order they must be appended.
    pub proposals: Vec<Proposal>,
    /// Routers: nanoseconds each routing decision took (telemetry only, never logged).
    pub decision_ns: Vec<u32>,
    /// Routers: decisions that left a job waiting.
    pub waits: u64,
    /// Checkpointer: the snapshot to store with this tick's batch, at this tree size.
    pub snapshot: Option<(u64, Vec<u8>)>,
}

impl From<Vec<Proposal>> for Proposed {
    fn from(proposals: Vec<Proposal>) -> Self {
        Self {
            proposals,
            ..Self::default()
        }
    }
}

/// A shard's intake: submits the jobs its region's clients send at each tick, signed with the
/// region's client key.
pub struct ShardActor {
    /// The shard's name.
    pub shard: String,
    /// The key of the region's clients.
    pub client_key: SigningKey,
    /// The workload.
    pub workload: Arc<Workload>,
}

impl Actor for ShardActor {
    type Context = Context<Self>;
}

impl Handler<Propose> for ShardActor {
    type Result = Result<Proposed, RunError>;

    fn handle(&mut self, msg: Propose, _: &mut Self::Context) -> Self::Result {
        let mut signer = Signer::new(&self.client_key, Role::Client, msg.tick);
        for job in self.workload.arrivals(msg.tick, &self.shard) {
            signer.sign(job.submission)?;
        }
        Ok(signer.finish().into())
    }
}

/// A shard's router: watches its nodes' heartbeats and routes its queue, signing with the
/// shard's router key.
pub struct RouterActor {
    /// The shard's index.
    pub shard: ShardIx,
    /// The shard's router key.
    pub router_key: SigningKey,
}

impl Actor for RouterActor {
    type Context = Context<Self>;
}

impl Handler<Propose> for RouterActor {
    type Result = Result<Proposed, RunError>;

    fn handle(&mut self, msg: Propose, _: &mut Self::Context) -> Self::Result {
        let state = &*msg.state;
        let mut signer = Signer::new(&self.router_key, Role::Router, msg.tick);
        let shard_name = &state.shards()[self.shard as usize].name;
        let node_name = |node: NodeIx| state.nodes()[node as usize].name.clone();
        let job_id = |job: u32| state.jobs()[job as usize].id;
        let mut plan = TickPlan::new(state, self.shard, msg.tick);
        for action in plan.health() {
            match *action {
                HealthAction::Requeue { job, node } => signer.sign(JobRequeued {
                    job: job_id(job),
                    node: node_name(node),
                    shard: shard_name.clone(),
                    reason: fabric_events::RequeueReason::NodeUnhealthy,
                })?,
                HealthAction::MarkUnhealthy {
                    node,
                    last_heartbeat_tick,
                } => signer.sign(NodeHealthChanged {
                    node: node_name(node),
                    healthy: false,
                    last_heartbeat_tick,
                })?,
                HealthAction::MarkHealthy {
                    node,
                    last_heartbeat_tick,
                } => signer.sign(NodeHealthChanged {
                    node: node_name(node),
                    healthy: true,
                    last_heartbeat_tick,
                })?,
            }
        }
        let mut decision_ns = Vec::new();
        let mut waits = 0;
        loop {
            let started = Instant::now();
            let Some(decision) = plan.next_decision() else {
                break;
            };
            decision_ns.push(u32::try_from(started.elapsed().as_nanos()).unwrap_or(u32::MAX));
            match decision {
                Decision::Assign { job, node } => signer.sign(JobAssigned {
                    job: job_id(job),
                    shard: shard_name.clone(),
                    node: node_name(node),
                })?,
                Decision::Spill { job, to, reason } => signer.sign(JobSpilled {
                    job: job_id(job),
                    from_shard: shard_name.clone(),
                    to_shard: state.shards()[to as usize].name.clone(),
                    reason,
                })?,
                Decision::Wait { .. } => waits += 1,
            }
        }
        Ok(Proposed {
            proposals: signer.finish(),
            decision_ns,
            waits,
            snapshot: None,
        })
    }
}

/// One node of the marketplace: heartbeats while it is up, runs what it is assigned up to its
/// max concurrency for each job's duration, and answers with signed receipts.
pub struct NodeActor {
    /// The node's index (registration order).
    pub node: NodeIx,
    /// Its key.
    pub key: SigningKey,
    /// Its heartbeat interval.
    pub heartbeat_interval_ticks: u32,
    /// When it is silent.
    pub failures: Arc<FailureSchedule>,
    /// The workload (a run's outcome is drawn from the job and the attempt).
    pub workload: Arc<Workload>,
    /// Where its GPU jobs run.
    pub engine: Engine,
    /// How often it corrupts a GPU job's output (`--byzantine`), in parts per million.
    pub byzantine_ppm: u32,
    /// In `fabric serve`: the input hashes of the jobs clients submitted, which the node runs
    /// as CPU jobs that always complete. `None` in a simulation, whose jobs come from the
    /// workload.
    pub served_inputs: Option<Arc<ServedInputs>>,
}

/// The input hash of each job in flight that a client submitted to `fabric serve`, written by
/// the serve driver when it admits the submission and read by the nodes when they run it.
pub type ServedInputs = std::sync::RwLock<std::collections::HashMap<fabric_events::JobId, Hash32>>;

/// What a byzantine node reports instead of a GPU job's real output hash.
pub fn corrupted_output_hash(real: &Hash32) -> Hash32 {
    Hash32(blake3::derive_key(
        "fabric 2026-12 corrupted output",
        real.as_bytes(),
    ))
}

impl NodeActor {
    fn up(&self, tick: u64) -> bool {
        !self
            .failures
            .silent(self.node, self.heartbeat_interval_ticks, tick)
    }
}

impl Actor for NodeActor {
    type Context = Context<Self>;
}

/// The output of a simulated CPU job: a hash of its input and identity, so a receipt commits
/// to something only this job produces.
pub fn cpu_output_hash(input_hash: &Hash32, job: u64, attempt: u32) -> Hash32 {
    fabric_events::cpu_job::output_hash(input_hash, job, attempt)
}

impl Handler<Propose> for NodeActor {
    type Result = Result<Proposed, RunError>;

    fn handle(&mut self, msg: Propose, _: &mut Self::Context) -> Self::Result {
        let tick = msg.tick;
        if !self.up(tick) {
            return Ok(Proposed::default());
        }
        let state = &*msg.state;
        let node = &state.nodes()[self.node as usize];
        let mut signer = Signer::new(&self.key, Role::Node, tick);
        let revived = tick > 0 && !self.up(tick - 1);
        // Receipts wait a tick after a revival: the router, reading the state before this
        // tick, may still requeue the node's jobs now, and a job must not end twice.
        if !revived {
            for job_ix in &node.running {
                let job = &state.jobs()[*job_ix as usize];
                let finished_tick = job.started_tick + u64::from(job.duration_ticks);
                if finished_tick > tick {
                    continue;
                }
                let (input, gpu_input, failed) = match &self.served_inputs {
                    // A served job is a CPU job whose input its client named; it completes.
                    Some(served) => {
                        let inputs = served.read().unwrap_or_else(|poison| poison.into_inner());
                        let input = *inputs
                            .get(&job.id)
                            .ok_or(RunError::UnknownServedJob { job: job.id })?;
                        (input, None, false)
                    }
                    None => {
                        let (generated, gpu_input) =
                            self.workload.job_with_input(job.id, job.submitted_tick);
                        let failed = self.workload.run_fails(&generated, job.attempts);
                        (generated.submission.input_hash, gpu_input, failed)
                    }
                };
                let (output, kernel) = match gpu_input {
                    None if failed => (Hash32::default(), None),
                    None => (cpu_output_hash(&input, job.id, job.attempts), None),
                    Some(gpu_input) => {
                        let kernel = gpu_input.kernel.id();
                        let output = if failed {
                            Hash32::default()
                        } else {
                            let real = Hash32(output_hash(&gpu_input.execute(self.engine)?));
                            let corrupt = self.byzantine_ppm > 0
                                && self.workload.corrupts(
                                    job.id,
                                    job.started_tick,
                                    self.byzantine_ppm,
                                );
                            if corrupt {
                                corrupted_output_hash(&real)
                            } else {
                                real
                            }
                        };
                        let kernel = KernelRef {
                            id: kernel.id.to_owned(),
                            version: kernel.version,
                            adapter: self.engine.name(),
                            input_hash: input,
                        };
                        (output, Some(kernel))
                    }
                };
                signer.sign(JobReceipt {
                    job: job.id,
                    node: node.name.clone(),
                    outcome: if failed {
                        JobOutcome::Failed
                    } else {
                        JobOutcome::Completed
                    },
                    output_hash: output,
                    kernel,
                    started_tick: job.started_tick,
                    finished_tick,
                })?;
            }
        }
        let interval = u64::from(self.heartbeat_interval_ticks.max(1));
        if revived || tick % interval == u64::from(self.node) % interval {
            signer.sign(Heartbeat {
                node: node.name.clone(),
                running_jobs: node.running.len() as u32,
            })?;
        }
        Ok(signer.finish().into())
    }
}

/// One GPU receipt of a tick's batch, for the verifier.
#[derive(Clone, Debug)]
pub struct ReceiptToVerify {
    /// Its position in the tick's batch.
    pub index: usize,
    /// The receipt.
    pub receipt: JobReceipt,
    /// As the node signed it.
    pub signed: SignedEvent,
}

/// Asks the verifier to re-execute a tick's sampled GPU receipts.
#[derive(Message)]
#[rtype(result = "Result<Vec<(usize, Proposal)>, RunError>")]
pub struct Verify {
    /// The tick.
    pub tick: u64,
    /// The receipts.
    pub receipts: Vec<ReceiptToVerify>,
}

/// The ledger's verifier: re-executes a fraction of GPU receipts on the CPU reference and
/// answers each contradicted one with an `AttestationMismatch` (signed by the ledger key) to
/// stand in its place.
pub struct VerifierActor {
    /// The ledger key.
    pub ledger_key: SigningKey,
    /// The workload (inputs come from it).
    pub workload: Arc<Workload>,
}

impl Actor for VerifierActor {
    type Context = Context<Self>;
}

/// Nonces of the verifier's events within a tick: above the checkpoint's, below the gate's.
const VERIFIER_NONCE_BASE: u64 = 1 << 22;

impl Handler<Verify> for VerifierActor {
    type Result = Result<Vec<(usize, Proposal)>, RunError>;

    fn handle(&mut self, msg: Verify, _: &mut Self::Context) -> Self::Result {
        let mut out = Vec::new();
        for item in msg.receipts {
            let receipt = &item.receipt;
            let (Some(kernel), (_, Some(input))) = (
                &receipt.kernel,
                self.workload.job_with_input(receipt.job, 0),
            ) else {
                continue;
            };
            let expected = Hash32(output_hash(&input.execute(Engine::Cpu)?));
            if expected == receipt.output_hash {
                continue;
            }
            let index = out.len() as u64;
            if index >= VERIFIER_NONCE_BASE {
                return Err(RunError::TooManyEvents { tick: msg.tick });
            }
            let mut evidence = Vec::with_capacity(96 + item.signed.signed.len());
            evidence.extend_from_slice(item.signed.author.as_bytes());
            evidence.extend_from_slice(item.signed.signature.as_bytes());
            evidence.extend_from_slice(&item.signed.signed);
            let event = Event::new(
                Role::Ledger,
                msg.tick,
                (msg.tick << 24) | VERIFIER_NONCE_BASE | index,
                AttestationMismatch {
                    job: receipt.job,
                    node: receipt.node.clone(),
                    kernel: kernel.clone(),
                    expected_output_hash: expected,
                    reported_output_hash: receipt.output_hash,
                    evidence,
                },
            );
            let signed = SignedEvent::sign(&event, &self.ledger_key)?;
            out.push((item.index, Proposal { event, signed }));
        }
        Ok(out)
    }
}

/// Every `interval_ticks` commits to the state: a `Checkpoint` signed by the ledger key with
/// the tree size, Merkle root and state hash after the previous tick, and the snapshot itself.
pub struct CheckpointerActor {
    /// The ledger key.
    pub ledger_key: SigningKey,
    /// Ticks between checkpoints, unless the owners set another interval.
    pub interval_ticks: u64,
}

impl Actor for CheckpointerActor {
    type Context = Context<Self>;
}

impl Handler<Propose> for CheckpointerActor {
    type Result = Result<Proposed, RunError>;

    fn handle(&mut self, msg: Propose, _: &mut Self::Context) -> Self::Result {
        // The owners may change the interval or ask for a checkpoint now (both in the state).
        let interval_ticks = msg
            .state
            .checkpoint_interval_ticks()
            .map_or(self.interval_ticks, u64::from)
            .max(1);
        if msg.tick == 0 || (msg.tick % interval_ticks != 0 && !msg.state.checkpoint_requested()) {
            return Ok(Proposed::default());
        }
        let snapshot = msg.state.snapshot_bytes();
        let state_hash = fabric_projections::state::state_hash_of(&snapshot);
        let snapshot_hash = Hash32(*blake3::hash(&snapshot).as_bytes());
        let (tree_size, merkle_root) = msg.tree;
        let mut signer = Signer::new(&self.ledger_key, Role::Ledger, msg.tick);
        signer.sign(Checkpoint {
            tree_size,
            merkle_root,
            state_hash,
            snapshot_hash,
        })?;
        Ok(Proposed {
            proposals: signer.finish(),
            snapshot: Some((tree_size, snapshot)),
            ..Proposed::default()
        })
    }
}

/// Appends a tick's batch (and stores its snapshot) as one durable group commit.
#[derive(Message)]
#[rtype(result = "Result<AppendReceipt, RunError>")]
pub struct Append {
    /// The events, in order.
    pub events: Vec<SignedEvent>,
    /// A snapshot to store first, at its tree size.
    pub snapshot: Option<(u64, Vec<u8>)>,
}

/// The single sequencer: owns the ledger, verifies and appends what the driver hands it.
pub struct LedgerWriter {
    /// The ledger, until [`Close`] takes it back.
    pub ledger: Option<Ledger>,
    /// Most events per append.
    pub append_events_max: usize,
}

impl Actor for LedgerWriter {
    type Context = Context<Self>;
}

impl Handler<Append> for LedgerWriter {
    type Result = Result<AppendReceipt, RunError>;

    fn handle(&mut self, msg: Append, _: &mut Self::Context) -> Self::Result {
        let ledger = self.ledger.as_mut().ok_or(RunError::LedgerClosed)?;
        if let Some((tree_size, bytes)) = &msg.snapshot {
            ledger.store_snapshot(*tree_size, bytes)?;
        }
        // A tick larger than one group commit is appended in consecutive commits.
        let mut receipt = None;
        for chunk in msg.events.chunks(self.append_events_max.max(1)) {
            receipt = Some(ledger.append(chunk)?);
        }
        receipt.ok_or(RunError::EmptyTick)
    }
}

/// Hands the ledger back when the run ends.
#[derive(Message)]
#[rtype(result = "Option<Ledger>")]
pub struct Close;

impl Handler<Close> for LedgerWriter {
    type Result = Option<Ledger>;

    fn handle(&mut self, _: Close, ctx: &mut Self::Context) -> Self::Result {
        ctx.stop();
        self.ledger.take()
    }
}
