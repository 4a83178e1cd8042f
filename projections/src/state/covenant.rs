//! The evidence a fabric keeps for outsiders (docs/FORMAT.md §18, §19): its federation with
//! other fabrics (the last receipt per peer, a peer's fork) and its recorded artifacts, with
//! the keys that may record them.
//!
//! A federation receipt is the ledger's: signed by the ledger key in force, naming it as one
//! side, with both sides' signatures valid over the receipt's text (checked here, so every
//! replay checks them), and moving the federation with that peer forward. Whether the own
//! side's root is the log's root at its size the state cannot know: an audit checks it
//! against the tree it rebuilds.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};
use fabric_events::{
    ArtifactRecorded, Event, FederatedHead, FederationFork, FederationReceipt, Hash32, PublicKey,
    RejectReason,
};

use super::authority::Holder;
use super::{ApplyError, State};

/// The state's evidence part: empty in every fabric that neither federates nor records, so
/// their states keep their bytes (a trailing snapshot section).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Covenant {
    /// The registered recorders' names, by index ([`Holder::Recorder`]).
    pub recorders: Vec<String>,
    /// The last nonce each owner recorded an artifact with.
    pub owner_record_nonces: BTreeMap<PublicKey, u64>,
    /// Artifacts recorded.
    pub artifacts: u64,
    /// The federated peers, by origin.
    pub peers: BTreeMap<String, FederationPeer>,
}

/// Where the federation with one peer stands.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct FederationPeer {
    /// The ledger key its last receipt names.
    pub key: PublicKey,
    /// The own tree size of the last receipt.
    pub own_size: u64,
    /// The peer's tree size of the last receipt.
    pub peer_size: u64,
    /// The peer's root of the last receipt.
    pub peer_root: Hash32,
    /// The seq of the last receipt.
    pub receipt_seq: u64,
    /// Receipts appended with it.
    pub receipts: u64,
    /// It presented a head that does not extend its last (a `federation_fork` is in the log).
    pub forked: bool,
}

fn invalid<T>(detail: String) -> Result<T, ApplyError> {
    Err(ApplyError::Refused {
        reason: RejectReason::Invalid,
        detail,
    })
}

impl State {
    /// The evidence part: recorders, artifacts, federation peers.
    pub fn covenant(&self) -> &Covenant {
        &self.covenant
    }

    /// A receipt the ledger key in force may append: well formed, both signatures valid, one
    /// side named by the ledger key in force and the other by the peer, moving the federation
    /// with the peer forward (no size smaller than the last receipt's, one bigger), its own
    /// size within the log, the peer not forked.
    pub(super) fn authorize_receipt(&self, receipt: &FederationReceipt) -> Result<(), ApplyError> {
        if let Err(wrong) = receipt.verify() {
            return invalid(format!("federation receipt: {wrong}"));
        }
        let Some((own, peer)) = self.sides(receipt) else {
            return invalid(format!(
                "a federation receipt names the ledger key in force {} as one side",
                self.authority.ledger_key()
            ));
        };
        if own.tree_size > self.events_applied {
            return invalid(format!(
                "the receipt's own size {} is past the log's {}",
                own.tree_size, self.events_applied
            ));
        }
        let Some(last) = self.covenant.peers.get(&peer.origin) else {
            return Ok(());
        };
        if last.forked {
            return invalid(format!(
                "peer {} presented a forked head: it is federated with no more",
                peer.origin
            ));
        }
        let forward = own.tree_size >= last.own_size
            && peer.tree_size >= last.peer_size
            && (own.tree_size, peer.tree_size) != (last.own_size, last.peer_size);
        if !forward {
            return invalid(format!(
                "the receipt's sizes ({} own, {} of {}) do not move past the last ({}, {})",
                own.tree_size, peer.tree_size, peer.origin, last.own_size, last.peer_size
            ));
        }
        if peer.tree_size == last.peer_size && peer.root != last.peer_root {
            return invalid(format!(
                "peer {} has root {} at size {}, not {} as its last receipt",
                peer.origin, peer.root, peer.tree_size, last.peer_root
            ));
        }
        Ok(())
    }

    /// A fork's evidence the ledger may append: of a peer federated with before and not
    /// already forked, its receipt seq the peer's last, within the limits.
    pub(super) fn authorize_fork(&self, fork: &FederationFork) -> Result<(), ApplyError> {
        let Some(peer) = self.covenant.peers.get(&fork.peer_origin) else {
            return invalid(format!(
                "no federation with {} to have forked",
                fork.peer_origin
            ));
        };
        if peer.forked {
            return invalid(format!(
                "peer {} is recorded forked already",
                fork.peer_origin
            ));
        }
        if peer.receipt_seq != fork.receipt_seq {
            return invalid(format!(
                "the last receipt with {} is at seq {}, not {}",
                fork.peer_origin, peer.receipt_seq, fork.receipt_seq
            ));
        }
        if fork.message.len() > fabric_events::covenant::FORK_MESSAGE_BYTES_MAX
            || fork.consistency_path.len() > fabric_events::covenant::FORK_PATH_HASHES_MAX
        {
            return invalid("a fork's evidence is over its limits".to_owned());
        }
        if !fork.states_head() {
            return invalid(format!(
                "the fork's signed text does not state {}'s head of size {} and root {}",
                fork.peer_origin, fork.tree_size, fork.root
            ));
        }
        if fabric_events::verify_signature(&fork.peer_key, &fork.signature, fork.message.as_bytes())
            .is_err()
        {
            return invalid(format!(
                "the fork's signed text does not verify with {}'s key {}",
                fork.peer_origin, fork.peer_key
            ));
        }
        if fork.peer_key != peer.key {
            return invalid(format!(
                "the fork names key {}, the last receipt with {} key {}",
                fork.peer_key, fork.peer_origin, peer.key
            ));
        }
        Ok(())
    }

    /// Who may record an artifact: an owner, or a registered recorder not retired, with a
    /// nonce above its last; and the record's name and kind must be good.
    pub(super) fn authorize_record(
        &self,
        author: &PublicKey,
        event: &Event,
        record: &ArtifactRecorded,
    ) -> Result<(), ApplyError> {
        let nonce = event.header.nonce;
        let last = if self.authority.owners().contains(author) {
            self.covenant.owner_record_nonces.get(author).copied()
        } else {
            match self.authority.key(author) {
                Some(key) if matches!(key.holder, Holder::Recorder(_)) && !key.retired => {
                    key.last_nonce
                }
                Some(key) if key.retired => {
                    return Err(ApplyError::Refused {
                        reason: RejectReason::RetiredKey,
                        detail: format!("key {author} was retired"),
                    })
                }
                Some(_) => {
                    return Err(ApplyError::Refused {
                        reason: RejectReason::WrongRole,
                        detail: format!("key {author} is neither an owner nor a recorder"),
                    })
                }
                None => {
                    return Err(ApplyError::Refused {
                        reason: RejectReason::UnknownKey,
                        detail: format!("key {author} is not registered"),
                    })
                }
            }
        };
        if last.is_some_and(|last| nonce <= last) {
            return Err(ApplyError::Refused {
                reason: RejectReason::ReplayedNonce,
                detail: format!("nonce {nonce} of recorder {author} is not above its last"),
            });
        }
        record.check_shape().map_err(|detail| ApplyError::Refused {
            reason: RejectReason::Invalid,
            detail,
        })
    }

    /// Remembers an owner's recording nonce (a recorder's is its key record's).
    pub(super) fn commit_record_nonce(&mut self, author: &PublicKey, nonce: u64) {
        if self.authority.owners().contains(author) {
            self.covenant.owner_record_nonces.insert(*author, nonce);
        }
    }

    /// The receipt's own head (named by the ledger key in force) and the peer's.
    fn sides<'a>(
        &self,
        receipt: &'a FederationReceipt,
    ) -> Option<(&'a FederatedHead, &'a FederatedHead)> {
        receipt.sides_of_key(&self.authority.ledger_key())
    }

    /// Folds a receipt in (authorised by [`State::authorize_receipt`]).
    pub(super) fn fold_receipt(&mut self, receipt: &FederationReceipt) -> Result<(), ApplyError> {
        let Some((own, peer)) = self.sides(receipt) else {
            return Err(ApplyError::Conflict(
                "a federation receipt that names no ledger key in force".to_owned(),
            ));
        };
        // The fold counted this event already: its seq is one less.
        let seq = self.events_applied - 1;
        let last = self.covenant.peers.get(&peer.origin);
        let standing = FederationPeer {
            key: peer.ledger_key,
            own_size: own.tree_size,
            peer_size: peer.tree_size,
            peer_root: peer.root,
            receipt_seq: seq,
            receipts: last.map_or(0, |last| last.receipts) + 1,
            forked: last.is_some_and(|last| last.forked),
        };
        self.covenant.peers.insert(peer.origin.clone(), standing);
        Ok(())
    }

    /// Marks a peer forked (authorised by [`State::authorize_fork`]).
    pub(super) fn fold_fork(&mut self, fork: &FederationFork) -> Result<(), ApplyError> {
        match self.covenant.peers.get_mut(&fork.peer_origin) {
            Some(peer) => {
                peer.forked = true;
                Ok(())
            }
            None => Err(ApplyError::Unknown {
                what: "federation peer",
                name: fork.peer_origin.clone(),
            }),
        }
    }

    /// The live key of a registered recorder.
    pub(super) fn recorder_key(&self, recorder: &str) -> Result<PublicKey, ApplyError> {
        let unknown = || ApplyError::Unknown {
            what: "recorder",
            name: recorder.to_owned(),
        };
        let ix = self
            .covenant
            .recorders
            .iter()
            .position(|name| name == recorder)
            .ok_or_else(unknown)? as u32;
        self.authority
            .live_key_of(Holder::Recorder(ix))
            .ok_or_else(unknown)
    }

    /// A recorder joins: its name unique, its key new (checked with the owner command).
    pub(super) fn register_recorder(
        &mut self,
        recorder: &str,
        key: PublicKey,
    ) -> Result<(), ApplyError> {
        if !fabric_events::covenant::name_is_valid(recorder) {
            return Err(ApplyError::Conflict(format!(
                "recorder name {recorder:?} is not 1 to {} bytes without control characters",
                fabric_events::covenant::ARTIFACT_NAME_BYTES_MAX
            )));
        }
        if self.covenant.recorders.iter().any(|name| name == recorder) {
            return Err(ApplyError::Duplicate {
                what: "recorder",
                name: recorder.to_owned(),
            });
        }
        if self.covenant.recorders.len() >= u32::MAX as usize {
            return Err(ApplyError::Limit("u32::MAX recorders"));
        }
        let ix = self.covenant.recorders.len() as u32;
        self.authority.register_key(key, Holder::Recorder(ix));
        self.covenant.recorders.push(recorder.to_owned());
        Ok(())
    }
}
