//! The ledger keys of a log: the key named at genesis, then one key per executed rotation
//! (an owner command `rotate_key` of the ledger, docs/FORMAT.md §4.3).
//!
//! The rule, for any verifier: the key *in force at tree size n* is the genesis key followed
//! through every ledger rotation among the first n entries. The entry at seq s, when the
//! ledger signs it, is signed by the key in force at s (so a rotation's own envelope is signed
//! by the old key); the tree head of size n is signed by the key in force at n.

use fabric_events::{event_from_signed, PublicKey, Role, WIRE_MAGIC};

/// The genesis ledger key and its rotations, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerKeys {
    genesis: PublicKey,
    /// (seq of the rotating entry, the new key), by seq.
    rotations: Vec<(u64, PublicKey)>,
}

impl LedgerKeys {
    /// A log whose key was never rotated.
    pub fn new(genesis: PublicKey) -> Self {
        Self {
            genesis,
            rotations: Vec::new(),
        }
    }

    /// The key named at genesis.
    pub fn genesis(&self) -> PublicKey {
        self.genesis
    }

    /// The rotations: (seq of the rotating entry, the new key), oldest first.
    pub fn rotations(&self) -> &[(u64, PublicKey)] {
        &self.rotations
    }

    /// The key in force at tree size `size`: it signs the tree head of `size` entries and the
    /// ledger's own entry at seq `size`.
    pub fn at(&self, size: u64) -> PublicKey {
        self.rotations
            .iter()
            .take_while(|(seq, _)| *seq < size)
            .last()
            .map_or(self.genesis, |(_, key)| *key)
    }

    /// The key in force after every rotation.
    pub fn current(&self) -> PublicKey {
        self.rotations.last().map_or(self.genesis, |(_, key)| *key)
    }

    /// Seq of the last rotation (none: the genesis key is in force).
    pub fn last_rotation(&self) -> Option<u64> {
        self.rotations.last().map(|(seq, _)| *seq)
    }

    /// Whether `key` is or was a ledger key of this log.
    pub fn held(&self, key: &PublicKey) -> bool {
        self.genesis == *key || self.rotations.iter().any(|(_, k)| k == key)
    }

    /// Adds the rotation of the entry at `seq` (after every rotation already known).
    pub fn push(&mut self, seq: u64, key: PublicKey) {
        debug_assert!(self.rotations.last().is_none_or(|(last, _)| *last < seq));
        self.rotations.push((seq, key));
    }
}

/// Byte offset of the role tag in `signed` bytes: after the wire magic (docs/FORMAT.md §2).
const ROLE_TAG_OFFSET: usize = WIRE_MAGIC.len();

/// The new ledger key, when `signed` is an owner command rotating the ledger key or a
/// sequencer's takeover. Only owner and ledger events are decoded (their role tag is read
/// first), so a batch costs almost nothing more.
pub fn rotation_in(signed: &[u8]) -> Option<PublicKey> {
    let role = signed.get(ROLE_TAG_OFFSET..ROLE_TAG_OFFSET + 4)?;
    let tagged = |role_of: Role| role == (role_of as u32).to_le_bytes();
    if !tagged(Role::Owner) && !tagged(Role::Ledger) {
        return None;
    }
    event_from_signed(signed).ok()?.ledger_rotation()
}

/// Whether `signed` is a sequencer's takeover (signed by the key it puts in force, where an
/// owner rotation is enveloped by the key before it).
pub fn is_takeover(signed: &[u8]) -> bool {
    event_from_signed(signed)
        .is_ok_and(|event| matches!(event.body, fabric_events::Body::SequencerTakeover(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_in_force_at_a_size_follows_the_rotations_before_it() {
        let (a, b, c) = (PublicKey([1; 32]), PublicKey([2; 32]), PublicKey([3; 32]));
        let mut keys = LedgerKeys::new(a);
        keys.push(5, b);
        keys.push(9, c);
        // The rotation at seq 5 is signed by a; the tree of 5 entries does not hold it.
        assert_eq!([keys.at(0), keys.at(5)], [a, a]);
        assert_eq!([keys.at(6), keys.at(9)], [b, b]);
        assert_eq!([keys.at(10), keys.current()], [c, c]);
        assert!(keys.held(&b) && !keys.held(&PublicKey([4; 32])));
    }
}

#[cfg(all(test, feature = "writer"))]
mod writer_tests {
    use fabric_events::{
        derive_signing_key, Event, KeyTarget, OwnerAction, OwnerCommand, PublicKey, Role,
        SignedEvent, SigningKey,
    };

    use crate::{Ledger, LedgerError, LedgerReader};

    fn public(key: &SigningKey) -> PublicKey {
        PublicKey::from(&key.verifying_key())
    }

    /// An owner command rotating the ledger key to `new`, enveloped by `envelope` (the ledger
    /// does not judge approvals: the gate does).
    fn rotation(nonce: u64, new: &SigningKey, envelope: &SigningKey) -> SignedEvent {
        let command = OwnerCommand {
            action: OwnerAction::RotateKey {
                target: KeyTarget::Ledger,
                new_key: public(new),
            },
            expiry_tick: 10,
            approvals: Vec::new(),
        };
        SignedEvent::sign(&Event::new(Role::Owner, 1, nonce, command), envelope).expect("sign")
    }

    fn governance(nonce: u64, envelope: &SigningKey) -> SignedEvent {
        let command = OwnerCommand {
            action: OwnerAction::Governance { payload: vec![1] },
            expiry_tick: 10,
            approvals: Vec::new(),
        };
        SignedEvent::sign(&Event::new(Role::Owner, 1, nonce, command), envelope).expect("sign")
    }

    #[test]
    fn tree_heads_follow_a_ledger_rotation_across_reopens() {
        let folder = tempfile::tempdir().expect("tempdir");
        let (old, new) = (derive_signing_key(3, "old"), derive_signing_key(3, "new"));
        let mut ledger = Ledger::open(folder.path(), old.clone()).expect("open");
        ledger.append(&[governance(1, &old)]).expect("append");
        // Without the new key's secret the rotation is refused whole and nothing changes.
        let refused = ledger.append(&[rotation(2, &new, &old)]).unwrap_err();
        assert!(refused
            .to_string()
            .contains("whose secret the writer does not hold"));
        assert_eq!(ledger.len(), 1);
        ledger.stage_keys([new.clone()]).expect("stage");
        let receipt = ledger
            .append(&[rotation(2, &new, &old), governance(3, &new)])
            .expect("rotation");
        // The rotation is entry 1: the head of 3 entries is the new key's.
        assert_eq!(receipt.tree_head.ledger_key, public(&new));
        assert_eq!(receipt.tree_head.verify(&public(&new)), Ok(()));
        assert_eq!(ledger.ledger_key(), public(&old));
        assert_eq!(ledger.current_ledger_key(), public(&new));
        drop(ledger);

        // Reopened with the genesis key alone, the writer knows it cannot sign.
        let mut ledger = Ledger::open(folder.path(), old.clone()).expect("reopen");
        assert_eq!(ledger.current_ledger_key(), public(&new));
        assert!(matches!(
            ledger.stage_keys([]),
            Err(LedgerError::NoCurrentSecret { rotated_at: 1, .. })
        ));
        assert!(ledger.append(&[governance(4, &new)]).is_err());
        ledger.stage_keys([new.clone()]).expect("stage");
        ledger.append(&[governance(4, &new)]).expect("append");
        let reader = ledger.reader();
        let keys = reader.ledger_keys().expect("keys");
        assert_eq!(keys.rotations(), &[(1, public(&new))]);
        let heads = reader.tree_heads().expect("heads");
        let signers: Vec<(u64, PublicKey)> =
            heads.iter().map(|h| (h.tree_size, h.ledger_key)).collect();
        assert_eq!(
            signers,
            vec![
                (0, public(&old)),
                (1, public(&old)),
                (3, public(&new)),
                (4, public(&new))
            ]
        );
        for head in &heads {
            assert_eq!(head.verify(&head.ledger_key), Ok(()));
        }
        drop((reader, ledger));
        let reader = LedgerReader::open(folder.path()).expect("read-only open verifies");
        assert_eq!(reader.len().expect("len"), 4);
        drop(reader);
        // A key the ledger never had opens nothing.
        let stranger = derive_signing_key(3, "stranger");
        assert!(matches!(
            Ledger::open(folder.path(), stranger),
            Err(LedgerError::KeyMismatch { .. })
        ));
        // The new key alone opens and writes.
        let mut ledger = Ledger::open(folder.path(), new.clone()).expect("open by new key");
        ledger.append(&[governance(5, &new)]).expect("append");
        drop(ledger);

        // A rotation record that its entry does not hold (here: at the governance entry 2)
        // is damage, named at its seq, and nothing opens on it.
        let db = crate::open_sled(folder.path()).expect("sled");
        let record = crate::storage::numbered_key(crate::storage::PREFIX_ROTATION, 2);
        db.insert(record, &[9u8; 32][..]).expect("insert");
        db.flush().expect("flush");
        drop(db);
        assert!(matches!(
            LedgerReader::open(folder.path()),
            Err(LedgerError::CorruptRotation { seq: 2, .. })
        ));
        assert!(matches!(
            Ledger::open(folder.path(), new),
            Err(LedgerError::CorruptRotation { seq: 2, .. })
        ));
    }
}
