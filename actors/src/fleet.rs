//! The actor set of a fabric: the checkpointer, a router per shard, a node per node and
//! (in a simulation) an intake per shard, spread over a few arbiter threads, and the one way
//! to ask them all for a tick's events in the stable order.

use std::sync::Arc;

use actix::prelude::*;
use fabric_events::{KeyTarget, OwnerAction, PublicKey, SigningKey};
use fabric_projections::state::{NodeIx, ShardIx};
use fabric_projections::State;

use crate::actors::{CheckpointerActor, NodeActor, Propose, Proposed, RouterActor, ShardActor};
use crate::gate::{Attempt, Origin};
use crate::work::{Intake, NodeWork};
use crate::world::World;
use crate::RunError;

/// Threads the actors run on (an actix arbiter each); signing happens on them.
pub const ACTOR_THREADS: usize = 2;

/// The signing keys of the actors: whoever starts a fabric hands them in (a simulation derives
/// them from its seed; nothing here knows where they came from).
pub struct ActorKeys {
    /// Signs checkpoints (and, in the gate, rejections and owner-command envelopes).
    pub ledger: SigningKey,
    /// Per shard, in the world's order: its router key.
    pub routers: Vec<SigningKey>,
    /// Per node, in the world's order.
    pub nodes: Vec<SigningKey>,
    /// Per shard: the key its intake signs submissions with (only used with intakes).
    pub clients: Vec<SigningKey>,
    /// The operator's staged secrets: when an owner command rotates the ledger key, a router
    /// key or a node key to one of their public keys, that secret signs for it from the next
    /// event on. A rotation of those to a key not staged here is refused (`invalid`).
    pub staged: Vec<SigningKey>,
}

impl ActorKeys {
    /// The keys of a signer that holds only the ledger key (no router, node or client): what
    /// the gate needs to sequence a genesis or owner commands offline.
    pub fn ledger_only(ledger: SigningKey) -> Self {
        Self {
            ledger,
            routers: Vec::new(),
            nodes: Vec::new(),
            clients: Vec::new(),
            staged: Vec::new(),
        }
    }

    /// The secret of the ledger key in force in `state` (the genesis key before genesis):
    /// what signs rejections and owner-command envelopes now.
    pub fn ledger_secret(&self, state: &State) -> Result<&SigningKey, RunError> {
        let authority = state.authority();
        if !authority.founded() {
            return Ok(&self.ledger);
        }
        let wanted = authority.ledger_key();
        std::iter::once(&self.ledger)
            .chain(&self.staged)
            .find(|secret| is_secret_of(secret, &wanted))
            .ok_or(RunError::NoLedgerSecret(wanted))
    }

    /// A key in force in `state` that this server signs with (the ledger's, an active router's
    /// or node's) and holds no secret of, named: after rotations, every new secret must be
    /// given again (staged) when the fabric restarts, or its actor could not sign.
    pub fn missing_secret(&self, state: &State) -> Option<String> {
        let holds = |own: Option<&SigningKey>, wanted: &PublicKey| {
            own.into_iter()
                .chain(&self.staged)
                .any(|secret| is_secret_of(secret, wanted))
        };
        let authority = state.authority();
        if authority.founded() && !holds(Some(&self.ledger), &authority.ledger_key()) {
            return Some(format!("the ledger key {}", authority.ledger_key()));
        }
        // Only the shards and nodes this server runs actors for (the world's, in its order):
        // one registered later by owner command has no actor here, and no secret to hold.
        for (shard, own) in state.shards().iter().zip(&self.routers) {
            if !shard.retired && !holds(Some(own), &shard.router_key) {
                return Some(format!(
                    "the router key {} of shard `{}`",
                    shard.router_key, shard.name
                ));
            }
        }
        for (node, own) in state.nodes().iter().zip(&self.nodes) {
            if !node.retired && !holds(Some(own), &node.key) {
                return Some(format!("the key {} of node `{}`", node.key, node.name));
            }
        }
        None
    }

    /// Why a rotation cannot be followed here, if it cannot: the ledger, router and node keys
    /// are the server's to sign with, so their new key must be one of the staged secrets. A
    /// client's key is its client's business.
    pub fn unstaged_rotation(&self, action: &OwnerAction) -> Option<String> {
        let OwnerAction::RotateKey { target, new_key } = action else {
            return None;
        };
        if matches!(
            target,
            KeyTarget::Client { .. } | KeyTarget::Recorder { .. }
        ) || self
            .staged
            .iter()
            .any(|secret| is_secret_of(secret, new_key))
        {
            return None;
        }
        Some(format!(
            "the server holds no staged secret of {new_key}, the new key of {}: it could not \
             sign with it (start it with --staged-key)",
            match target {
                KeyTarget::Ledger => "the ledger".to_owned(),
                KeyTarget::Router { shard } => format!("the router of shard `{shard}`"),
                KeyTarget::Node { node } => format!("node `{node}`"),
                KeyTarget::Client { client } => format!("client `{client}`"),
                KeyTarget::Recorder { recorder } => format!("recorder `{recorder}`"),
            }
        ))
    }
}

fn is_secret_of(secret: &SigningKey, public: &PublicKey) -> bool {
    secret.verifying_key().as_bytes() == public.as_bytes()
}

/// The actors of a run (or of `fabric serve`, which has no intakes: its jobs come from clients).
pub struct Actors {
    checkpointer: Addr<CheckpointerActor>,
    routers: Vec<Addr<RouterActor>>,
    nodes: Vec<Addr<NodeActor>>,
    intakes: Vec<Addr<ShardActor>>,
}

/// What the actors proposed for one tick, in the stable order, as attempts for the gate.
pub struct TickProposals {
    /// The events, as internal attempts.
    pub attempts: Vec<Attempt>,
    /// The checkpointer's snapshot to store with the tick's batch.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// Nanoseconds each routing decision took (telemetry only).
    pub decision_ns: Vec<u32>,
    /// Routing decisions that left a job waiting.
    pub waits: u64,
}

impl Actors {
    /// Starts the checkpointer, a router per shard, a node per node of `world` (each running
    /// its jobs through `work`) and, with an `intake`, a shard intake per shard, spread over
    /// `arbiters`.
    pub fn start(
        world: &World,
        keys: &ActorKeys,
        work: &Arc<dyn NodeWork>,
        intake: Option<&Arc<dyn Intake>>,
        arbiters: &[Arbiter],
    ) -> Self {
        let on = |index: usize| arbiters[index % arbiters.len()].handle();
        let staged: Arc<[SigningKey]> = keys.staged.clone().into();
        let checkpointer = {
            let actor = CheckpointerActor {
                ledger_key: keys.ledger.clone(),
                staged: Arc::clone(&staged),
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
                    staged: Arc::clone(&staged),
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
                    staged: Arc::clone(&staged),
                    heartbeat_interval_ticks: node.heartbeat_interval_ticks,
                    work: Arc::clone(work),
                };
                NodeActor::start_in_arbiter(&on(index), move |_| actor)
            })
            .collect();
        // Intakes sit on the other thread from their shard's router, to spread the signing.
        let intakes = if let Some(intake) = intake {
            world
                .shards
                .iter()
                .zip(&keys.clients)
                .enumerate()
                .map(|(index, (shard, key))| {
                    let actor = ShardActor {
                        shard: shard.name.clone(),
                        client_key: key.clone(),
                        intake: Arc::clone(intake),
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
    pub async fn propose(
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
