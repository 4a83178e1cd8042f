//! Tick 0 of every fabric, whoever holds its keys: the ledger names itself, the owners and
//! where the keys come from ([`founding`]), then the owners register every client, shard and
//! node of the world ([`registrations`], each an owner command approved M of N). A simulation
//! builds both from keys derived from its seed (`fabric-sim`); `fabric init` builds them from
//! public keys its operator and owners made, and the owners approve the registrations on their
//! own machines; [`admit_genesis`] judges their approvals before `fabric init --commit`
//! writes tick 0.

use fabric_events::{
    Event, FabricGenesis, KeyOrigin, NodeRegistered, OwnerAction, OwnerCommand, PublicKey, Role,
    ShardRegistered, SigningKey,
};
use fabric_projections::State;

use crate::fleet::ActorKeys;
use crate::gate::{self, owner_command_attempt, Admitted, Attempt, Verdict};
use crate::world::World;
use crate::RunError;

/// The public keys the registrations of a world name.
pub struct WorldKeys {
    /// The clients to register: name and key.
    pub clients: Vec<(String, PublicKey)>,
    /// Per shard, in the world's order: its router key.
    pub routers: Vec<PublicKey>,
    /// Per node, in the world's order: its node key.
    pub nodes: Vec<PublicKey>,
    /// The other replicas' sequencer keys of a replicated fabric (the ledger key is the
    /// first sequencer).
    pub sequencers: Vec<PublicKey>,
}

/// The `fabric_genesis` event (tick 0, nonce 0), for the ledger key to sign.
pub fn founding(
    ledger_key: PublicKey,
    owners: Vec<PublicKey>,
    owner_threshold: u32,
    key_origin: KeyOrigin,
) -> Event {
    Event::new(
        Role::Ledger,
        0,
        0,
        FabricGenesis {
            ledger_key,
            owners,
            owner_threshold,
            key_origin,
        },
    )
}

/// The owner actions that register the world: its clients, then its shards with their router
/// keys, then its nodes with their node keys, in the world's order. The command with nonce
/// `n` carries the action at index `n - 1`.
pub fn registrations(world: &World, keys: &WorldKeys) -> Vec<OwnerAction> {
    let mut actions =
        Vec::with_capacity(keys.clients.len() + world.shards.len() + world.nodes.len());
    for (client, key) in &keys.clients {
        actions.push(OwnerAction::RegisterClient {
            client: client.clone(),
            key: *key,
        });
    }
    for (shard, router_key) in world.shards.iter().zip(&keys.routers) {
        actions.push(OwnerAction::RegisterShard {
            registration: ShardRegistered {
                shard: shard.name.clone(),
                router_key: *router_key,
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
    for (node, node_key) in world.nodes.iter().zip(&keys.nodes) {
        actions.push(OwnerAction::RegisterNode {
            registration: NodeRegistered {
                node: node.name.clone(),
                region: node.region.clone(),
                node_key: *node_key,
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
    for key in &keys.sequencers {
        actions.push(OwnerAction::RegisterSequencer { key: *key });
    }
    actions
}

/// Why a fabric's genesis is not committed.
#[derive(Debug, thiserror::Error)]
pub enum GenesisError {
    /// The gate failed (not a refusal: a refusal is [`GenesisError::Refused`]).
    #[error(transparent)]
    Run(#[from] RunError),
    /// Commands were refused; nothing is written.
    #[error("the genesis is not committed, {} of {commands} commands are refused:\n{}", refusals.len(), refusals.join("\n"))]
    Refused {
        /// Commands in all.
        commands: usize,
        /// Each refused command: its nonce, reason and detail.
        refusals: Vec<String>,
    },
    /// The registrations are not the world's.
    #[error("the genesis registers the {what} {registered:?}, the world has {expected:?}")]
    OtherWorld {
        /// `shards` or `nodes`.
        what: &'static str,
        /// What the genesis registers.
        registered: Vec<String>,
        /// What the world has.
        expected: Vec<String>,
    },
}

/// Tick 0 of a fabric with operator keys: `genesis` (signed by `ledger_key`), then each
/// `(nonce, command)` through the gate at tick 0. Every command must be admitted (each refusal
/// is named) and the registered shards and nodes must be `world`'s; the events to append.
pub fn admit_genesis(
    world: &World,
    genesis: Attempt,
    commands: &[(u64, OwnerCommand)],
    ledger_key: &SigningKey,
) -> Result<Admitted, GenesisError> {
    let mut attempts = vec![genesis];
    for (nonce, command) in commands {
        attempts.push(owner_command_attempt(
            0,
            *nonce,
            command.clone(),
            ledger_key,
        )?);
    }
    let mut state = State::new();
    let keys = ActorKeys::ledger_only(ledger_key.clone());
    let admitted = gate::admit(&mut state, 0, attempts, &keys)?;
    // The first verdict is the genesis event's own.
    let refusals: Vec<String> = commands
        .iter()
        .zip(admitted.verdicts.iter().skip(1))
        .filter_map(|((nonce, _), verdict)| match verdict {
            Verdict::Admitted => None,
            Verdict::Refused { reason, detail } | Verdict::Counted { reason, detail } => Some(
                format!("command {nonce} refused ({}): {detail}", reason.as_str()),
            ),
        })
        .collect();
    if !refusals.is_empty() {
        return Err(GenesisError::Refused {
            commands: commands.len(),
            refusals,
        });
    }
    same_names(
        "shards",
        state.shards().iter().map(|s| &s.name),
        world.shards.iter().map(|s| &s.name),
    )?;
    same_names(
        "nodes",
        state.nodes().iter().map(|n| &n.name),
        world.nodes.iter().map(|n| &n.name),
    )?;
    Ok(admitted)
}

fn same_names<'a>(
    what: &'static str,
    registered: impl Iterator<Item = &'a String>,
    expected: impl Iterator<Item = &'a String>,
) -> Result<(), GenesisError> {
    let registered: Vec<String> = registered.cloned().collect();
    let expected: Vec<String> = expected.cloned().collect();
    if registered == expected {
        Ok(())
    } else {
        Err(GenesisError::OtherWorld {
            what,
            registered,
            expected,
        })
    }
}
