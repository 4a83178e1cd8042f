//! Key rotation in the authority table, with real keys and signatures: for each holder (the
//! ledger, a router, a client, a node), after the rotation the old key is refused
//! `retired_key` and the new key accepted, and a rotated-away key is never registered again.

use fabric_events::{
    derive_signing_key, Body, Checkpoint, Event, FabricGenesis, Hash32, Heartbeat, JobAssigned,
    JobSubmitted, KeyTarget, NodeRegistered, OwnerAction, OwnerCommand, PublicKey, RejectReason,
    Role, ShardRegistered, SigningKey,
};

use crate::state::{ApplyError, State};

pub(crate) fn key(purpose: &str) -> SigningKey {
    derive_signing_key(7, purpose)
}

pub(crate) fn public(key: &SigningKey) -> PublicKey {
    PublicKey::from(&key.verifying_key())
}

/// A founded fabric: one shard `a` with node `a.x`, client `acme`, owners o1 and o2 (2 of 2).
pub(crate) struct Fabric {
    pub(crate) state: State,
    pub(crate) ledger: SigningKey,
    pub(crate) owners: [SigningKey; 2],
    nonce: u64,
    tick: u64,
}

impl Fabric {
    pub(crate) fn new() -> Self {
        let ledger = key("ledger");
        let owners = [key("owner 1"), key("owner 2")];
        let mut fabric = Self {
            state: State::new(),
            ledger,
            owners,
            nonce: 0,
            tick: 0,
        };
        let genesis = FabricGenesis {
            ledger_key: public(&fabric.ledger),
            owners: fabric.owners.iter().map(public).collect(),
            owner_threshold: 2,
            key_origin: fabric_events::KeyOrigin::Operator,
        };
        let author = public(&fabric.ledger);
        fabric
            .admit(&author, Role::Ledger, genesis)
            .expect("genesis");
        fabric
            .command(OwnerAction::RegisterShard {
                registration: ShardRegistered {
                    shard: "a".to_owned(),
                    router_key: public(&key("router a")),
                    queue_budget: 10,
                    latency_budget_ms: 200,
                    spillover: Vec::new(),
                    specialties: Vec::new(),
                    reputation_floor_ppm: 0,
                    regions_served: vec!["a".to_owned()],
                    node_quota_jobs: 1_000,
                    quota_window_ticks: 100,
                },
            })
            .expect("shard");
        fabric
            .command(OwnerAction::RegisterNode {
                registration: NodeRegistered {
                    node: "a.x".to_owned(),
                    region: "a".to_owned(),
                    node_key: public(&key("node a.x")),
                    capacity: 2,
                    max_concurrency: 2,
                    heartbeat_interval_ticks: 5,
                    capabilities: vec!["cpu".to_owned()],
                    latency_ms: 50,
                    price_micros_per_hour: 1,
                    reputation_ppm: 900_000,
                },
            })
            .expect("node");
        fabric
            .command(OwnerAction::RegisterClient {
                client: "acme".to_owned(),
                key: public(&key("client acme")),
            })
            .expect("client");
        fabric
    }

    pub(crate) fn admit(
        &mut self,
        author: &PublicKey,
        role: Role,
        body: impl Into<Body>,
    ) -> Result<(), ApplyError> {
        self.nonce += 1;
        self.tick += 1;
        let event = Event::new(role, self.tick, self.nonce, body);
        self.state.admit(author, &event)
    }

    /// An owner command approved by both owners, its envelope signed by the current ledger key.
    pub(crate) fn command(&mut self, action: OwnerAction) -> Result<(), ApplyError> {
        let envelope = public(&self.ledger);
        self.command_by(&envelope, action)
    }

    fn command_by(&mut self, envelope: &PublicKey, action: OwnerAction) -> Result<(), ApplyError> {
        let nonce = self.nonce + 1;
        let mut command = OwnerCommand {
            action,
            expiry_tick: self.tick + 100,
            approvals: Vec::new(),
        };
        for owner in &self.owners {
            command.approve(nonce, owner);
        }
        self.admit(envelope, Role::Owner, command)
    }

    fn rotate(&mut self, target: KeyTarget, new_key: &SigningKey) -> Result<(), ApplyError> {
        self.command(OwnerAction::RotateKey {
            target,
            new_key: public(new_key),
        })
    }
}

pub(crate) fn reason(result: Result<(), ApplyError>) -> RejectReason {
    result.expect_err("refused").reject_reason()
}

fn submission(id: u64) -> JobSubmitted {
    JobSubmitted {
        job: id,
        shard: "a".to_owned(),
        workload: "test".to_owned(),
        skills: vec!["cpu".to_owned()],
        duration_ticks: 1,
        deadline_tick: 1_000,
        budget_micros: 1,
        input_hash: Hash32([3; 32]),
    }
}

#[test]
fn a_rotated_client_key_is_refused_and_the_new_one_submits() {
    let mut fabric = Fabric::new();
    let (old, new) = (public(&key("client acme")), key("client acme 2"));
    fabric
        .admit(&old, Role::Client, submission(1))
        .expect("old key before");
    fabric
        .rotate(
            KeyTarget::Client {
                client: "acme".to_owned(),
            },
            &new,
        )
        .expect("rotation");
    assert_eq!(
        reason(fabric.admit(&old, Role::Client, submission(2))),
        RejectReason::RetiredKey
    );
    fabric
        .admit(&public(&new), Role::Client, submission(3))
        .expect("new key after");
    assert!(fabric.state.job_ix(2).is_none() && fabric.state.job_ix(3).is_some());
    // A client that is not registered has no key to rotate.
    assert_eq!(
        reason(fabric.rotate(
            KeyTarget::Client {
                client: "nobody".to_owned()
            },
            &key("nobody"),
        )),
        RejectReason::Invalid
    );
}

#[test]
fn a_rotated_router_key_is_refused_and_the_new_one_routes() {
    let mut fabric = Fabric::new();
    let client = public(&key("client acme"));
    fabric
        .admit(&client, Role::Client, submission(1))
        .expect("job");
    fabric
        .admit(&client, Role::Client, submission(2))
        .expect("job");
    let (old, new) = (public(&key("router a")), key("router a 2"));
    fabric
        .rotate(
            KeyTarget::Router {
                shard: "a".to_owned(),
            },
            &new,
        )
        .expect("rotation");
    let assign = |job| JobAssigned {
        job,
        shard: "a".to_owned(),
        node: "a.x".to_owned(),
    };
    assert_eq!(
        reason(fabric.admit(&old, Role::Router, assign(1))),
        RejectReason::RetiredKey
    );
    fabric
        .admit(&public(&new), Role::Router, assign(1))
        .expect("new router key assigns");
    let shard = fabric.state.shard_ix("a").expect("shard");
    assert_eq!(
        fabric.state.shards()[shard as usize].router_key,
        public(&new)
    );
}

#[test]
fn a_rotated_node_key_is_refused_and_a_retired_node_keeps_its_retired_key() {
    let mut fabric = Fabric::new();
    let (old, new) = (public(&key("node a.x")), key("node a.x 2"));
    let heartbeat = || Heartbeat {
        node: "a.x".to_owned(),
        running_jobs: 0,
    };
    fabric
        .rotate(
            KeyTarget::Node {
                node: "a.x".to_owned(),
            },
            &new,
        )
        .expect("rotation");
    assert_eq!(
        reason(fabric.admit(&old, Role::Node, heartbeat())),
        RejectReason::RetiredKey
    );
    fabric
        .admit(&public(&new), Role::Node, heartbeat())
        .expect("new node key");
    fabric
        .command(OwnerAction::RetireNode {
            node: "a.x".to_owned(),
        })
        .expect("retire");
    // Rotating a retired node's key would bring it back: refused, and nothing changes.
    let third = key("node a.x 3");
    assert_eq!(
        reason(fabric.rotate(
            KeyTarget::Node {
                node: "a.x".to_owned()
            },
            &third,
        )),
        RejectReason::Invalid
    );
    assert_eq!(
        reason(fabric.admit(&public(&new), Role::Node, heartbeat())),
        RejectReason::RetiredKey
    );
    assert!(fabric.state.authority().key(&public(&third)).is_none());
}

#[test]
fn a_rotated_ledger_key_signs_from_the_next_event_and_the_old_one_is_retired() {
    let mut fabric = Fabric::new();
    let old = public(&fabric.ledger);
    let new = key("ledger 2");
    fabric.rotate(KeyTarget::Ledger, &new).expect("rotation");
    assert_eq!(fabric.state.authority().ledger_key(), public(&new));
    let checkpoint = || Checkpoint {
        tree_size: 0,
        merkle_root: Hash32([0; 32]),
        state_hash: Hash32([0; 32]),
        snapshot_hash: Hash32([0; 32]),
    };
    assert_eq!(
        reason(fabric.admit(&old, Role::Ledger, checkpoint())),
        RejectReason::RetiredKey
    );
    // An owner command enveloped by the old ledger key is refused as retired too.
    assert_eq!(
        reason(fabric.command_by(&old, OwnerAction::PauseAll)),
        RejectReason::RetiredKey
    );
    fabric.ledger = new;
    fabric.command(OwnerAction::PauseAll).expect("new envelope");
    let new_key = public(&fabric.ledger);
    fabric
        .admit(&new_key, Role::Ledger, checkpoint())
        .expect("new key checkpoints");
}

#[test]
fn a_key_ever_held_is_never_registered_or_rotated_to_again() {
    let mut fabric = Fabric::new();
    let old = key("client acme");
    fabric
        .rotate(
            KeyTarget::Client {
                client: "acme".to_owned(),
            },
            &key("client acme 2"),
        )
        .expect("rotation");
    assert_eq!(
        reason(fabric.command(OwnerAction::RegisterClient {
            client: "again".to_owned(),
            key: public(&old),
        })),
        RejectReason::Invalid
    );
    // Back to the retired key, or to a key another holder has: refused.
    for taken in [old, key("router a"), fabric.owners[0].clone()] {
        assert_eq!(
            reason(fabric.rotate(KeyTarget::Ledger, &taken)),
            RejectReason::Invalid
        );
    }
    assert_eq!(
        fabric.state.authority().ledger_key(),
        public(&fabric.ledger)
    );
}

#[test]
fn a_rotation_survives_the_snapshot() {
    let mut fabric = Fabric::new();
    let new = key("ledger 2");
    fabric.rotate(KeyTarget::Ledger, &new).expect("rotation");
    let restored = State::from_snapshot_bytes(&fabric.state.snapshot_bytes()).expect("snapshot");
    assert_eq!(restored.state_hash(), fabric.state.state_hash());
    assert_eq!(restored.authority().ledger_key(), public(&new));
    let old = public(&fabric.ledger);
    assert!(restored.authority().key(&old).is_some_and(|r| r.retired));
}

fn checkpoint() -> Checkpoint {
    Checkpoint {
        tree_size: 0,
        merkle_root: Hash32([0; 32]),
        state_hash: Hash32([0; 32]),
        snapshot_hash: Hash32([0; 32]),
    }
}

fn takeover(term: u64, sequencer: &SigningKey) -> fabric_events::SequencerTakeover {
    fabric_events::SequencerTakeover {
        term,
        sequencer: public(sequencer),
    }
}

#[test]
fn only_a_registered_sequencer_takes_over_opening_the_next_term() {
    let mut fabric = Fabric::new();
    let first = fabric.ledger.clone();
    let second = key("sequencer b");
    let stranger = key("stranger");
    // Before its registration, and for a key nobody registered: unknown.
    assert_eq!(
        reason(fabric.admit(&public(&second), Role::Ledger, takeover(1, &second))),
        RejectReason::UnknownKey
    );
    fabric
        .command(OwnerAction::RegisterSequencer {
            key: public(&second),
        })
        .expect("registered");
    assert_eq!(fabric.state.sequencing().keys, vec![public(&second)]);
    assert_eq!(
        reason(fabric.admit(&public(&stranger), Role::Ledger, takeover(1, &stranger))),
        RejectReason::UnknownKey
    );
    // Naming another key, skipping a term, as another role, or the key in force: refused.
    assert_eq!(
        reason(fabric.admit(&public(&second), Role::Ledger, takeover(1, &first))),
        RejectReason::Invalid
    );
    assert_eq!(
        reason(fabric.admit(&public(&second), Role::Ledger, takeover(2, &second))),
        RejectReason::Invalid
    );
    assert_eq!(
        reason(fabric.admit(&public(&second), Role::Owner, takeover(1, &second))),
        RejectReason::WrongRole
    );
    assert_eq!(
        reason(fabric.admit(&public(&first), Role::Ledger, takeover(1, &first))),
        RejectReason::Invalid
    );
    // A standing-by sequencer signs nothing the ledger signs.
    assert_eq!(
        reason(fabric.admit(&public(&second), Role::Ledger, checkpoint())),
        RejectReason::WrongRole
    );

    fabric
        .admit(&public(&second), Role::Ledger, takeover(1, &second))
        .expect("the takeover");
    assert_eq!(fabric.state.authority().ledger_key(), public(&second));
    assert_eq!(fabric.state.sequencing().term, 1);
    // The sequencer before stands by: it signs nothing more, but may take over again.
    assert_eq!(
        reason(fabric.admit(&public(&first), Role::Ledger, checkpoint())),
        RejectReason::WrongRole
    );
    assert_eq!(
        reason(fabric.command_by(&public(&first), OwnerAction::PauseAll)),
        RejectReason::UnknownKey
    );
    fabric
        .admit(&public(&second), Role::Ledger, checkpoint())
        .expect("the new sequencer checkpoints");
    fabric.ledger = second.clone();
    fabric.command(OwnerAction::PauseAll).expect("its envelope");
    fabric
        .admit(&public(&first), Role::Ledger, takeover(2, &first))
        .expect("the first takes over again");
    assert_eq!(fabric.state.authority().ledger_key(), public(&first));
    assert_eq!(fabric.state.sequencing().term, 2);
}

#[test]
fn a_retired_sequencer_takes_over_no_more_and_the_acting_one_cannot_leave() {
    let mut fabric = Fabric::new();
    let second = key("sequencer b");
    fabric
        .command(OwnerAction::RegisterSequencer {
            key: public(&second),
        })
        .expect("registered");
    // Its key is held: it cannot be registered again, nor as another holder.
    assert_eq!(
        reason(fabric.command(OwnerAction::RegisterClient {
            client: "sequencer".to_owned(),
            key: public(&second),
        })),
        RejectReason::Invalid
    );
    let acting = public(&fabric.ledger);
    assert!(matches!(
        fabric.command(OwnerAction::RetireSequencer { key: acting }),
        Err(ApplyError::Conflict(_))
    ));
    fabric
        .command(OwnerAction::RetireSequencer {
            key: public(&second),
        })
        .expect("retired");
    assert!(fabric.state.sequencing().keys.is_empty());
    assert_eq!(
        reason(fabric.admit(&public(&second), Role::Ledger, takeover(1, &second))),
        RejectReason::RetiredKey
    );
}

#[test]
fn sequencers_survive_the_snapshot_and_a_fabric_without_them_keeps_its_bytes() {
    let mut fabric = Fabric::new();
    let before = fabric.state.snapshot_bytes();
    assert_eq!(
        State::from_snapshot_bytes(&before)
            .expect("snapshot")
            .snapshot_bytes(),
        before
    );
    let second = key("sequencer b");
    fabric
        .command(OwnerAction::RegisterSequencer {
            key: public(&second),
        })
        .expect("registered");
    fabric
        .admit(&public(&second), Role::Ledger, takeover(1, &second))
        .expect("the takeover");
    let bytes = fabric.state.snapshot_bytes();
    let restored = State::from_snapshot_bytes(&bytes).expect("snapshot");
    assert_eq!(restored.snapshot_bytes(), bytes);
    assert_eq!(restored.state_hash(), fabric.state.state_hash());
    assert_eq!(restored.sequencing(), fabric.state.sequencing());
    assert_eq!(restored.authority().ledger_key(), public(&second));
    // A state with an empty sequencing section written out is not canonical: refused.
    let mut padded = before;
    padded.extend_from_slice(&[0; 16]);
    assert!(State::from_snapshot_bytes(&padded).is_err());
}
