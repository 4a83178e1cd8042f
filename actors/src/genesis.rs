//! Tick 0 of every fabric, whoever holds its keys: the ledger names itself, the owners and
//! where the keys come from ([`founding`]), then the owners register every client, shard and
//! node of the world ([`registrations`], each an owner command approved M of N). A simulation
//! builds both from keys derived from its seed (`fabric-sim`); `fabric init` builds them from
//! public keys its operator and owners made, and the owners approve the registrations on their
//! own machines.

use fabric_events::{
    Event, FabricGenesis, KeyOrigin, NodeRegistered, OwnerAction, PublicKey, Role, ShardRegistered,
};

use crate::world::World;

/// The public keys the registrations of a world name.
pub struct WorldKeys {
    /// The clients to register: name and key.
    pub clients: Vec<(String, PublicKey)>,
    /// Per shard, in the world's order: its router key.
    pub routers: Vec<PublicKey>,
    /// Per node, in the world's order: its node key.
    pub nodes: Vec<PublicKey>,
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
    actions
}
