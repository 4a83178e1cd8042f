//! The keys of a simulation, every one derived from its seed (so anyone who knows the seed
//! holds them: simulated keys exist only in simulations), and the simulated genesis: tick 0,
//! where the ledger names itself and the owners, and the owners register every client, shard
//! and node of the world.

use fabric_actors::gate::{owner_command_attempt, Attempt, Origin};
use fabric_actors::genesis::{founding, registrations, WorldKeys};
use fabric_actors::world::World;
use fabric_actors::{ActorKeys, RunError};
use fabric_events::{
    derive_signing_key, KeyOrigin, OwnerCommand, PublicKey, SignedEvent, SigningKey,
};
use rayon::prelude::*;

/// The keys of a simulation, derived from its seed.
pub struct SimKeys {
    /// The seed they derive from.
    pub seed: u64,
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
            seed,
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

impl SimKeys {
    /// The keys the actors sign with.
    pub fn actor_keys(&self) -> ActorKeys {
        ActorKeys {
            ledger: self.ledger.clone(),
            routers: self.routers.clone(),
            nodes: self.nodes.clone(),
            clients: self.clients.clone(),
            staged: Vec::new(),
        }
    }
}

/// Tick 0: the ledger names itself, the owners and the key origin (a simulation of `seed`:
/// its keys are public), then the owners register every client, shard and node, each by a
/// command approved by the first `threshold` owners.
pub fn genesis(world: &World, keys: &SimKeys) -> Result<Vec<Attempt>, RunError> {
    let public = |key: &SigningKey| PublicKey::from(&key.verifying_key());
    let founding = founding(
        public(&keys.ledger),
        keys.owners.iter().map(public).collect(),
        world.owners.threshold,
        KeyOrigin::Simulation { seed: keys.seed },
    );
    let mut attempts = vec![Attempt {
        signed: SignedEvent::sign(&founding, &keys.ledger)?,
        event: founding,
        origin: Origin::Internal,
    }];
    let world_keys = WorldKeys {
        clients: world
            .shards
            .iter()
            .zip(&keys.clients)
            .map(|(shard, client)| (format!("{}.clients", shard.name), public(client)))
            .collect(),
        routers: keys.routers.iter().map(public).collect(),
        nodes: keys.nodes.iter().map(public).collect(),
        // A simulation has one sequencer: its ledger key.
        sequencers: Vec::new(),
    };
    let actions = registrations(world, &world_keys);
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
