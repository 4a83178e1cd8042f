//! Signed tree heads: the ledger's signed statement "the log had `tree_size` entries with this
//! Merkle root". Anyone holding the ledger's public key can check one, and then check an
//! inclusion proof against its root.

use ed25519_dalek::Signer;
use fabric_events::wire::verify_signature;
use fabric_events::{Hash32, PublicKey, SignatureBytes, SigningKey, VerifyError};
use serde::{Deserialize, Serialize};

/// Domain prefix of a tree head message. After the `FABRICv1` it shares with event messages
/// comes `-`, which can never start a canonical event (its first four bytes would be a role tag
/// far out of range), so no tree head signature is valid as an event signature or vice versa.
pub const TREE_HEAD_DOMAIN: &[u8] = b"FABRICv1-tree-head";

/// (tree size, root), signed by the ledger key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedTreeHead {
    /// Number of entries.
    pub tree_size: u64,
    /// Merkle root over them.
    pub root: Hash32,
    /// The ledger key's public key.
    pub ledger_key: PublicKey,
    /// Signature over [`SignedTreeHead::message`].
    pub signature: SignatureBytes,
}

impl SignedTreeHead {
    /// The signed bytes: `FABRICv1-tree-head` ‖ tree_size (u64 LE) ‖ root (32 bytes).
    pub fn message(tree_size: u64, root: &Hash32) -> Vec<u8> {
        let mut message = Vec::with_capacity(TREE_HEAD_DOMAIN.len() + 8 + 32);
        message.extend_from_slice(TREE_HEAD_DOMAIN);
        message.extend_from_slice(&tree_size.to_le_bytes());
        message.extend_from_slice(root.as_bytes());
        message
    }

    /// Signs (tree_size, root) with the ledger key.
    pub fn sign(tree_size: u64, root: Hash32, ledger_key: &SigningKey) -> Self {
        let signature = ledger_key.sign(&Self::message(tree_size, &root));
        Self {
            tree_size,
            root,
            ledger_key: PublicKey::from(&ledger_key.verifying_key()),
            signature: signature.into(),
        }
    }

    /// Checks the signature, and that it was made by `expected_key` (the key you trust,
    /// not merely the one the head names).
    pub fn verify(&self, expected_key: &PublicKey) -> Result<(), VerifyError> {
        if self.ledger_key != *expected_key {
            return Err(VerifyError::BadSignature(self.ledger_key));
        }
        verify_signature(
            expected_key,
            &self.signature,
            &Self::message(self.tree_size, &self.root),
        )
    }
}
