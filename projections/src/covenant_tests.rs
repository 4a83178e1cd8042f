//! The covenant part of the authority table, with real keys and signatures: who may record
//! artifacts, which federation receipts the ledger may append, and a peer's fork; and the
//! state's covenant section surviving a snapshot.

use fabric_events::{
    ArtifactRecorded, FederatedHead, FederationFork, FederationReceipt, Hash32, KeyTarget,
    OwnerAction, RejectReason, Role, SignatureBytes, SigningKey,
};

use crate::rotation_tests::{key, public, reason, Fabric};
use crate::state::State;

fn artifact(name: &str) -> ArtifactRecorded {
    ArtifactRecorded::of(name.as_bytes(), name.to_owned(), "report".to_owned())
}

#[test]
fn owners_and_registered_recorders_record_and_no_one_else() {
    let mut fabric = Fabric::new();
    let owner = public(&fabric.owners[0]);
    fabric
        .admit(&owner, Role::Recorder, artifact("a"))
        .expect("an owner records");
    let recorder = key("recorder");
    assert_eq!(
        reason(fabric.admit(&public(&recorder), Role::Recorder, artifact("b"))),
        RejectReason::UnknownKey
    );
    fabric
        .command(OwnerAction::RegisterRecorder {
            recorder: "bot".to_owned(),
            key: public(&recorder),
        })
        .expect("registered");
    fabric
        .admit(&public(&recorder), Role::Recorder, artifact("b"))
        .expect("the recorder records");
    // Not as another role, not under another key's role, not with a bad kind.
    assert_eq!(
        reason(fabric.admit(&public(&recorder), Role::Client, artifact("c"))),
        RejectReason::WrongRole
    );
    let client = public(&key("client acme"));
    assert_eq!(
        reason(fabric.admit(&client, Role::Recorder, artifact("c"))),
        RejectReason::WrongRole
    );
    let mut bad = artifact("d");
    bad.artifact_kind = "Not A Kind".to_owned();
    assert_eq!(
        reason(fabric.admit(&owner, Role::Recorder, bad)),
        RejectReason::Invalid
    );
    // A recorder key is one holder's: registering it again, or an owner's, is refused.
    assert!(fabric
        .command(OwnerAction::RegisterRecorder {
            recorder: "other".to_owned(),
            key: owner,
        })
        .is_err());
    assert_eq!(fabric.state.covenant().artifacts, 2);
    assert_eq!(fabric.state.covenant().recorders, ["bot"]);

    // A recorder's key is rotated like a client's: the old one records no more.
    let rotated = key("recorder 2");
    fabric
        .command(OwnerAction::RotateKey {
            target: KeyTarget::Recorder {
                recorder: "bot".to_owned(),
            },
            new_key: public(&rotated),
        })
        .expect("rotated");
    assert_eq!(
        reason(fabric.admit(&public(&recorder), Role::Recorder, artifact("e"))),
        RejectReason::RetiredKey
    );
    fabric
        .admit(&public(&rotated), Role::Recorder, artifact("e"))
        .expect("the new key records");
    // A recorder's name follows the artifact names' rule.
    assert!(fabric
        .command(OwnerAction::RegisterRecorder {
            recorder: "bad\nname".to_owned(),
            key: public(&key("recorder 3")),
        })
        .is_err());
}

#[test]
fn an_owners_replayed_record_is_refused() {
    let mut fabric = Fabric::new();
    let owner = public(&fabric.owners[1]);
    let event = fabric_events::Event::new(Role::Recorder, 50, 9, artifact("a"));
    fabric.state.admit(&owner, &event).expect("recorded");
    let again = fabric.state.admit(&owner, &event);
    assert_eq!(reason(again), RejectReason::ReplayedNonce);
}

fn head(origin: &str, size: u64, root: u8, key: &SigningKey) -> FederatedHead {
    FederatedHead {
        origin: origin.to_owned(),
        tree_size: size,
        root: Hash32([root; 32]),
        ledger_key: public(key),
    }
}

fn receipt(own: FederatedHead, peer: FederatedHead, keys: [&SigningKey; 2]) -> FederationReceipt {
    let (own_origin, peer_origin) = (own.origin.clone(), peer.origin.clone());
    let mut receipt = FederationReceipt::unsigned(own, peer);
    receipt.sign_as(&own_origin, keys[0]);
    receipt.sign_as(&peer_origin, keys[1]);
    receipt
}

#[test]
fn receipts_need_both_signatures_and_move_forward_and_a_fork_ends_the_federation() {
    let mut fabric = Fabric::new();
    let ledger = fabric.ledger.clone();
    let author = public(&ledger);
    let peer = key("peer ledger");
    let first = receipt(
        head("fabric/own", 3, 1, &ledger),
        head("fabric/peer", 10, 2, &peer),
        [&ledger, &peer],
    );
    let mut unsigned = first.clone();
    unsigned.right_signature = SignatureBytes([0; 64]);
    unsigned.left_signature = SignatureBytes([0; 64]);
    assert_eq!(
        reason(fabric.admit(&author, Role::Ledger, unsigned)),
        RejectReason::Invalid
    );
    // Its own side must be the ledger key in force; only the ledger appends receipts.
    let stranger = key("stranger");
    let foreign = receipt(
        head("fabric/own", 3, 1, &stranger),
        head("fabric/peer", 10, 2, &peer),
        [&stranger, &peer],
    );
    assert_eq!(
        reason(fabric.admit(&author, Role::Ledger, foreign)),
        RejectReason::Invalid
    );
    let owner = public(&fabric.owners[0]);
    assert!(fabric.admit(&owner, Role::Ledger, first.clone()).is_err());
    fabric
        .admit(&author, Role::Ledger, first.clone())
        .expect("the first receipt");
    assert_eq!(
        reason(fabric.admit(&author, Role::Ledger, first.clone())),
        RejectReason::Invalid,
        "the same sizes again move nothing forward"
    );
    let other_root = receipt(
        head("fabric/own", 4, 1, &ledger),
        head("fabric/peer", 10, 9, &peer),
        [&ledger, &peer],
    );
    assert_eq!(
        reason(fabric.admit(&author, Role::Ledger, other_root)),
        RejectReason::Invalid
    );
    let second = receipt(
        head("fabric/own", 5, 3, &ledger),
        head("fabric/peer", 12, 4, &peer),
        [&ledger, &peer],
    );
    fabric
        .admit(&author, Role::Ledger, second.clone())
        .expect("the second receipt");
    let standing = fabric.state.covenant().peers["fabric/peer"].clone();
    assert_eq!(
        (standing.own_size, standing.peer_size, standing.receipts),
        (5, 12, 2)
    );

    // The fork's evidence: a statement the peer's key signed, naming the last receipt.
    use ed25519_dalek::Signer;
    let presented = head("fabric/peer", 11, 7, &peer);
    let sign = |message: &str| SignatureBytes::from(peer.sign(message.as_bytes()));
    let message = presented.checkpoint_body();
    let fork = FederationFork {
        peer_origin: "fabric/peer".to_owned(),
        peer_key: public(&peer),
        receipt_seq: standing.receipt_seq,
        tree_size: 11,
        root: Hash32([7; 32]),
        message: message.clone(),
        signature: sign(&message),
        consistency_path: Vec::new(),
        detail: "size below".to_owned(),
    };
    // Signed, but stating another head: no evidence of this one.
    let other = head("fabric/peer", 12, 7, &peer).checkpoint_body();
    let misstated = FederationFork {
        message: other.clone(),
        signature: sign(&other),
        ..fork.clone()
    };
    assert_eq!(
        reason(fabric.admit(&author, Role::Ledger, misstated)),
        RejectReason::Invalid
    );
    // A receipt's text with the head as one side states it too.
    let proposed = receipt(
        head("fabric/own", 6, 3, &ledger),
        presented,
        [&ledger, &peer],
    );
    let text = String::from_utf8(proposed.message()).expect("text");
    assert!(FederationFork {
        message: text.clone(),
        signature: sign(&text),
        ..fork.clone()
    }
    .states_head());
    let mut unsigned_fork = fork.clone();
    unsigned_fork.signature = SignatureBytes([0; 64]);
    assert_eq!(
        reason(fabric.admit(&author, Role::Ledger, unsigned_fork)),
        RejectReason::Invalid
    );
    fabric
        .admit(&author, Role::Ledger, fork.clone())
        .expect("the fork");
    assert!(fabric.state.covenant().peers["fabric/peer"].forked);
    assert!(fabric.admit(&author, Role::Ledger, fork).is_err(), "once");
    let third = receipt(
        head("fabric/own", 9, 3, &ledger),
        head("fabric/peer", 20, 4, &peer),
        [&ledger, &peer],
    );
    assert!(fabric.admit(&author, Role::Ledger, third).is_err());

    // The covenant section survives a snapshot, and the state hash covers it.
    let bytes = fabric.state.snapshot_bytes();
    let restored = State::from_snapshot_bytes(&bytes).expect("restores");
    assert_eq!(restored.covenant(), fabric.state.covenant());
    assert_eq!(restored.snapshot_bytes(), bytes);
}
