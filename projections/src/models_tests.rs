//! Models in the state: an owner command registers one under `model_id@model_version`, the
//! fold refuses (as `invalid`, saying what is wrong) a bad id or version, weights that do not
//! fit the job type and a second registration of the same workload, and the snapshot carries
//! the models through a restore.

use fabric_events::{
    derive_signing_key, Event, FabricGenesis, JobType, KeyOrigin, ModelRegistered, OwnerAction,
    OwnerCommand, PublicKey, RejectReason, Role, SigningKey,
};

use crate::state::{ApplyError, State};

fn key(purpose: &str) -> SigningKey {
    derive_signing_key(9, purpose)
}

fn public(key: &SigningKey) -> PublicKey {
    PublicKey::from(&key.verifying_key())
}

/// A founded fabric with owners o1 and o2 (2 of 2) and nothing else.
struct Fabric {
    state: State,
    ledger: SigningKey,
    owners: [SigningKey; 2],
    nonce: u64,
}

impl Fabric {
    fn new() -> Self {
        let mut fabric = Self {
            state: State::new(),
            ledger: key("ledger"),
            owners: [key("owner 1"), key("owner 2")],
            nonce: 0,
        };
        let genesis = FabricGenesis {
            ledger_key: public(&fabric.ledger),
            owners: fabric.owners.iter().map(public).collect(),
            owner_threshold: 2,
            key_origin: KeyOrigin::Operator,
        };
        let event = Event::new(Role::Ledger, 0, 0, genesis);
        fabric
            .state
            .admit(&public(&fabric.ledger), &event)
            .expect("genesis");
        fabric
    }

    /// Registers `registration` by an owner command approved by both owners at tick `nonce`.
    fn register(&mut self, registration: ModelRegistered) -> Result<(), ApplyError> {
        self.nonce += 1;
        let mut command = OwnerCommand {
            action: OwnerAction::RegisterModel { registration },
            expiry_tick: self.nonce + 100,
            approvals: Vec::new(),
        };
        for owner in &self.owners {
            command.approve(self.nonce, owner);
        }
        let event = Event::new(Role::Owner, self.nonce, self.nonce, command);
        self.state.admit(&public(&self.ledger), &event)
    }
}

fn predict_weights(shift: u32, steps: u32) -> Vec<u8> {
    [1i32.to_le_bytes(), shift.to_le_bytes(), steps.to_le_bytes()].concat()
}

fn model(id: &str, version: &str, job_type: JobType, weights: Vec<u8>) -> ModelRegistered {
    ModelRegistered {
        model_id: id.to_owned(),
        model_version: version.to_owned(),
        job_type,
        weights,
    }
}

/// The reason and the message of a refused registration.
fn refusal(result: Result<(), ApplyError>) -> (RejectReason, String) {
    let error = result.expect_err("refused");
    (error.reject_reason(), error.to_string())
}

#[test]
fn a_registered_model_is_in_the_state_and_its_snapshot() {
    let mut fabric = Fabric::new();
    let encoder = model("encoder", "1.0", JobType::EncodeState, vec![7; 1024]);
    let corpus = model("corpus", "2", JobType::ScoreSequence, vec![9; 8192]);
    fabric.register(encoder.clone()).expect("encoder");
    fabric.register(corpus.clone()).expect("corpus");

    let registered = fabric.state.model("encoder@1.0").expect("registered");
    assert_eq!(
        (
            registered.model_id.as_str(),
            registered.model_version.as_str()
        ),
        ("encoder", "1.0")
    );
    assert_eq!(registered.job_type, JobType::EncodeState);
    assert_eq!(
        registered.weights_hash.as_bytes(),
        blake3::hash(&encoder.weights).as_bytes()
    );
    assert_eq!(registered.registered_tick, 1);
    assert_eq!(registered.workload(), "encoder@1.0");
    assert!(fabric.state.model("encoder@1.1").is_none());
    // Listed by workload in byte order, whatever the order of registration.
    let workloads: Vec<String> = fabric.state.models().map(|m| m.workload()).collect();
    assert_eq!(workloads, ["corpus@2", "encoder@1.0"]);

    let restored = State::from_snapshot_bytes(&fabric.state.snapshot_bytes()).expect("restores");
    assert_eq!(restored.snapshot_bytes(), fabric.state.snapshot_bytes());
    assert_eq!(restored.model("corpus@2"), fabric.state.model("corpus@2"));
    assert_eq!(restored.models().count(), 2);
    // A model changes the state hash.
    let before = fabric.state.state_hash();
    fabric
        .register(model(
            "heat",
            "1",
            JobType::PredictNextState,
            predict_weights(3, 16),
        ))
        .expect("heat");
    assert_ne!(fabric.state.state_hash(), before);
}

#[test]
fn bad_ids_and_versions_are_refused_as_invalid() {
    let mut fabric = Fabric::new();
    let weights = || predict_weights(3, 16);
    let long = "v".repeat(65);
    for (id, version, why) in [
        ("", "1", "the model id is empty"),
        ("heat", "", "the model version is empty"),
        (
            &long as &str,
            "1",
            "the model id has 65 bytes, more than 64",
        ),
        (
            "heat",
            &long,
            "the model version has 65 bytes, more than 64",
        ),
        ("Heat", "1", "the model id `Heat` has the character 'H'"),
        (
            "heat",
            "1 0",
            "the model version `1 0` has the character ' '",
        ),
        ("he@t", "1", "the model id `he@t` has the character '@'"),
        (
            "heat",
            "1/0",
            "the model version `1/0` has the character '/'",
        ),
    ] {
        let (reason, message) =
            refusal(fabric.register(model(id, version, JobType::PredictNextState, weights())));
        assert_eq!(reason, RejectReason::Invalid, "{message}");
        assert!(message.contains(why), "{id:?} {version:?}: {message}");
    }
    assert_eq!(fabric.state.models().count(), 0);
    // The longest id and version allowed, with every character allowed.
    let longest = "a".repeat(64);
    fabric
        .register(model(
            &longest,
            "0.9_rc-1",
            JobType::PredictNextState,
            weights(),
        ))
        .expect("64 bytes and a-z 0-9 . _ -");
}

#[test]
fn weights_that_do_not_fit_the_job_type_are_refused_as_invalid() {
    let mut fabric = Fabric::new();
    for (job_type, weights, why) in [
        (
            JobType::EncodeState,
            vec![0; 1023],
            "model `m@1`: weights of a encode_state model have 1023 bytes, not 1024",
        ),
        (
            JobType::ScoreSequence,
            vec![0; 1024],
            "weights of a score_sequence model have 1024 bytes, not 8192",
        ),
        (
            JobType::PredictNextState,
            predict_weights(32, 16),
            "not shift 32 and steps 16",
        ),
        (
            JobType::PredictNextState,
            predict_weights(3, 0),
            "not shift 3 and steps 0",
        ),
        (
            JobType::PredictNextState,
            predict_weights(3, 65),
            "not shift 3 and steps 65",
        ),
    ] {
        let (reason, message) = refusal(fabric.register(model("m", "1", job_type, weights)));
        assert_eq!(reason, RejectReason::Invalid, "{message}");
        assert!(message.contains(why), "{message}");
    }
    assert_eq!(fabric.state.models().count(), 0);
}

#[test]
fn a_workload_is_registered_once() {
    let mut fabric = Fabric::new();
    fabric
        .register(model(
            "heat",
            "1",
            JobType::PredictNextState,
            predict_weights(3, 16),
        ))
        .expect("first");
    let hash_before = fabric.state.state_hash();
    // Same id and version with other weights, even of another job type: refused.
    let (reason, message) =
        refusal(fabric.register(model("heat", "1", JobType::EncodeState, vec![1; 1024])));
    assert_eq!(reason, RejectReason::Invalid);
    assert_eq!(message, "model `heat@1` is already registered");
    let kept = fabric.state.model("heat@1").expect("kept");
    assert_eq!(kept.job_type, JobType::PredictNextState);
    assert_eq!(kept.registered_tick, 1);
    // A refused command changes nothing but the refusal.
    assert_eq!(fabric.state.state_hash(), hash_before);
    // Another version is another model.
    fabric
        .register(model(
            "heat",
            "2",
            JobType::PredictNextState,
            predict_weights(4, 8),
        ))
        .expect("second version");
    assert_eq!(fabric.state.models().count(), 2);
}

#[test]
fn a_snapshot_with_models_out_of_order_is_refused() {
    let mut fabric = Fabric::new();
    fabric
        .register(model(
            "a",
            "1",
            JobType::PredictNextState,
            predict_weights(3, 16),
        ))
        .expect("a");
    fabric
        .register(model(
            "b",
            "1",
            JobType::PredictNextState,
            predict_weights(3, 16),
        ))
        .expect("b");
    let bytes = fabric.state.snapshot_bytes();
    // The models are the snapshot's tail; both ids are one byte: swap them.
    let at_a = bytes.len() - 2 * model_bytes() + 8;
    let mut swapped = bytes.clone();
    swapped[at_a] = b'b';
    swapped[at_a + model_bytes()] = b'a';
    let error = State::from_snapshot_bytes(&swapped).expect_err("out of order");
    assert!(
        error.to_string().contains("model `a@1` out of order"),
        "{error}"
    );
}

/// Bytes of one model of one-byte id and version in a snapshot: id (8 + 1), version (8 + 1),
/// job type (4), weights hash (32), registered tick (8).
fn model_bytes() -> usize {
    9 + 9 + 4 + 32 + 8
}
