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
    Body, Checkpoint, Event, Hash32, Heartbeat, JobAssigned, JobReceipt, JobRequeued, JobSpilled,
    NodeHealthChanged, PublicKey, Role, SignedEvent, SigningKey,
};
use fabric_ledger::{AppendReceipt, Ledger};
use fabric_projections::state::{NodeIx, ShardIx};
use fabric_projections::{Decision, HealthAction, State, TickPlan};

use crate::work::{Intake, NodeWork};
use crate::RunError;

/// Events one author may sign per tick: the nonce is `tick << 24 | index`.
pub const EVENTS_PER_AUTHOR_TICK_MAX: u64 = 1 << 24;

/// Follows a rotation of an actor's key: when the state names `wanted` as the actor's key and
/// `key` is another, the staged secret of `wanted` signs from now on. (A rotation the server
/// holds no secret for is refused by the gate before it applies, so one is always found.)
fn follow_rotation(key: &mut SigningKey, staged: &[SigningKey], wanted: &PublicKey) {
    if key.verifying_key().as_bytes() == wanted.as_bytes() {
        return;
    }
    if let Some(secret) = staged
        .iter()
        .find(|secret| secret.verifying_key().as_bytes() == wanted.as_bytes())
    {
        *key = secret.clone();
    }
}

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

    /// The signed events, in signing order. Their signatures are remembered as the process's
    /// own, so the ledger does not verify them again.
    pub fn finish(self) -> Vec<Proposal> {
        fabric_ledger::SignatureMemo::remember_own(
            self.out.iter().map(|proposal| &proposal.signed),
        );
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

/// A shard's intake: submits the jobs its region's clients send at each tick (as its
/// [`Intake`] says), signed with the region's client key.
pub struct ShardActor {
    /// The shard's name.
    pub shard: String,
    /// The key of the region's clients.
    pub client_key: SigningKey,
    /// Where its submissions come from.
    pub intake: Arc<dyn Intake>,
}

impl Actor for ShardActor {
    type Context = Context<Self>;
}

impl Handler<Propose> for ShardActor {
    type Result = Result<Proposed, RunError>;

    fn handle(&mut self, msg: Propose, _: &mut Self::Context) -> Self::Result {
        let mut signer = Signer::new(&self.client_key, Role::Client, msg.tick);
        for submission in self.intake.submissions(msg.tick, &self.shard) {
            signer.sign(submission)?;
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
    /// The operator's staged secrets, for the key a rotation names.
    pub staged: Arc<[SigningKey]>,
}

impl Actor for RouterActor {
    type Context = Context<Self>;
}

impl RouterActor {
    /// Whether the state still lets this router speak: its shard is not retired and its key
    /// is the shard's router key, registered and not retired. The actor set follows the
    /// state, so no owner command can leave an actor proposing what the gate refuses (a
    /// refused internal event stops the fabric).
    fn in_service(&self, state: &State) -> bool {
        state
            .shards()
            .get(self.shard as usize)
            .is_some_and(|shard| {
                !shard.retired && key_in_service(state, &self.router_key, &shard.router_key)
            })
    }
}

/// Whether `key` is `registered` (the key the state names for its holder) and the authority
/// table still accepts it (not retired).
fn key_in_service(state: &State, key: &SigningKey, registered: &PublicKey) -> bool {
    PublicKey::from(&key.verifying_key()) == *registered
        && state
            .authority()
            .key(registered)
            .is_some_and(|record| !record.retired)
}

impl Handler<Propose> for RouterActor {
    type Result = Result<Proposed, RunError>;

    fn handle(&mut self, msg: Propose, _: &mut Self::Context) -> Self::Result {
        let state = &*msg.state;
        let wanted = state.shards()[self.shard as usize].router_key;
        follow_rotation(&mut self.router_key, &self.staged, &wanted);
        if !self.in_service(state) {
            return Ok(Proposed::default());
        }
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
/// max concurrency for each job's duration, and answers with signed receipts. When it is
/// silent and what a finished job's receipt says come from its [`NodeWork`].
pub struct NodeActor {
    /// The node's index (registration order).
    pub node: NodeIx,
    /// Its key.
    pub key: SigningKey,
    /// The operator's staged secrets, for the key a rotation names.
    pub staged: Arc<[SigningKey]>,
    /// Its heartbeat interval.
    pub heartbeat_interval_ticks: u32,
    /// What running a job means for it, and when it is silent.
    pub work: Arc<dyn NodeWork>,
}

impl NodeActor {
    /// Whether the state still lets this node speak: not retired, and its key is the node's
    /// registered key, not retired (see [`RouterActor::in_service`]). A drained node goes on:
    /// it finishes what it runs and heartbeats, so that it can be resumed.
    fn in_service(&self, state: &State) -> bool {
        state
            .nodes()
            .get(self.node as usize)
            .is_some_and(|node| !node.retired && key_in_service(state, &self.key, &node.key))
    }

    fn up(&self, tick: u64) -> bool {
        !self
            .work
            .silent(self.node, self.heartbeat_interval_ticks, tick)
    }
}

impl Actor for NodeActor {
    type Context = Context<Self>;
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
        follow_rotation(&mut self.key, &self.staged, &node.key);
        if !self.in_service(state) {
            return Ok(Proposed::default());
        }
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
                let result = self.work.finish(self.node, job)?;
                signer.sign(JobReceipt {
                    job: job.id,
                    node: node.name.clone(),
                    outcome: result.outcome,
                    output_hash: result.output_hash,
                    kernel: result.kernel,
                    started_tick: job.started_tick,
                    finished_tick,
                    // A simulated job takes logical time only.
                    execution_us: None,
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

/// Every `interval_ticks` commits to the state: a `Checkpoint` signed by the ledger key with
/// the tree size, Merkle root and state hash after the previous tick, and the snapshot itself.
pub struct CheckpointerActor {
    /// The ledger key.
    pub ledger_key: SigningKey,
    /// The operator's staged secrets, for the key a rotation names.
    pub staged: Arc<[SigningKey]>,
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
        let wanted = msg.state.authority().ledger_key();
        follow_rotation(&mut self.ledger_key, &self.staged, &wanted);
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
