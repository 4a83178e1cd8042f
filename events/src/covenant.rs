//! The kinds that make a fabric's history checkable from outside (docs/FORMAT.md §18, §19):
//! a federation receipt both ledgers of two fabrics sign, the evidence of a peer that
//! presented an inconsistent head, and a recorded artifact.
//!
//! A receipt is signed as text, like a checkpoint note, so a verifier in another language
//! needs no canonical binary encoding: the message is
//!
//! ```text
//! fabric-federation-receipt/v1
//! <left origin>
//! <left tree size, decimal>
//! <left root, standard base64>
//! <left ledger key, hex>
//! <right origin>
//! <right tree size>
//! <right root>
//! <right ledger key>
//! <merged root, standard base64>
//! ```
//!
//! each line ending in a newline. The left head is the one whose origin sorts first (bytes),
//! so both fabrics build the same bytes whoever starts a sync. Its first bytes,
//! `fabric-federation`, are none of another signed message's (`FABRICv1`, `fabric/`).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::types::{Hash32, PublicKey, SignatureBytes};

/// The first line of a receipt's signed text.
pub const RECEIPT_HEADER: &str = "fabric-federation-receipt/v1";
/// Longest origin line a federated head may have.
pub const ORIGIN_BYTES_MAX: usize = 128;
/// Longest signed text a fork's evidence may hold.
pub const FORK_MESSAGE_BYTES_MAX: usize = 4096;
/// Most hashes in a fork's consistency path (a path of a 2^64-entry tree is shorter).
pub const FORK_PATH_HASHES_MAX: usize = 64;
/// Longest artifact name.
pub const ARTIFACT_NAME_BYTES_MAX: usize = 256;
/// Longest artifact kind.
pub const ARTIFACT_KIND_BYTES_MAX: usize = 32;

/// One fabric's signed head in a federation receipt.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatedHead {
    /// The fabric's checkpoint origin (`fabric/` and 32 hex digits of its genesis hash).
    pub origin: String,
    /// Entries its tree covers.
    pub tree_size: u64,
    /// The root of its tree of that size.
    pub root: Hash32,
    /// The ledger key that signs for it.
    pub ledger_key: PublicKey,
}

impl FederatedHead {
    /// The C2SP checkpoint body of this head (see [`checkpoint_body`]).
    pub fn checkpoint_body(&self) -> String {
        checkpoint_body(&self.origin, self.tree_size, &self.root)
    }

    /// Its leaf in the merged tree: BLAKE3(0x00 ‖ checkpoint body).
    pub fn merged_leaf(&self) -> Hash32 {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&[0x00]);
        hasher.update(self.checkpoint_body().as_bytes());
        Hash32(*hasher.finalize().as_bytes())
    }
}

/// Two fabrics' heads as both ledgers signed them: what each fabric appends after a sync.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationReceipt {
    /// The head whose origin sorts first.
    pub left: FederatedHead,
    /// The other.
    pub right: FederatedHead,
    /// BLAKE3(0x01 ‖ left leaf ‖ right leaf): the root of the two-leaf tree of the heads.
    pub merged_root: Hash32,
    /// The left ledger key's signature of [`FederationReceipt::message`].
    pub left_signature: SignatureBytes,
    /// The right ledger key's.
    pub right_signature: SignatureBytes,
}

/// What is wrong with a federation receipt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// An origin is empty, too long, or holds a character outside printable ASCII.
    #[error(
        "origin {0:?} is not 1 to {ORIGIN_BYTES_MAX} printable ASCII characters without spaces"
    )]
    Origin(String),
    /// The heads are not in origin order, or are of one fabric.
    #[error("the left origin {left:?} does not sort before the right {right:?}")]
    Order {
        /// The left origin.
        left: String,
        /// The right origin.
        right: String,
    },
    /// The merged root is not the rule's.
    #[error("merged root {stated} is not {computed}, the root of the two heads' leaves")]
    MergedRoot {
        /// As stated.
        stated: Hash32,
        /// As computed.
        computed: Hash32,
    },
    /// A head names another key than the one trusted for its origin.
    #[error("the receipt names key {named} for {origin}; the key given for it is {trusted}")]
    OtherKey {
        /// The origin.
        origin: String,
        /// The key the receipt names.
        named: PublicKey,
        /// The key given.
        trusted: PublicKey,
    },
    /// No key is given for a head's origin.
    #[error("no key is given for {0}: both fabrics' keys are needed")]
    Untrusted(String),
    /// A signature does not verify with the key its head names.
    #[error("the {side} signature does not verify with ledger key {key}")]
    Signature {
        /// `left` or `right`.
        side: &'static str,
        /// The key.
        key: PublicKey,
    },
}

/// The C2SP tlog-checkpoint body of a head, the text its note signs: origin, size in decimal
/// and the root in standard base64, each line ending in a newline.
pub fn checkpoint_body(origin: &str, tree_size: u64, root: &Hash32) -> String {
    format!(
        "{origin}\n{tree_size}\n{}\n",
        BASE64.encode(root.as_bytes())
    )
}

/// Whether `origin` may be a federated head's origin line.
pub fn origin_is_valid(origin: &str) -> bool {
    !origin.is_empty()
        && origin.len() <= ORIGIN_BYTES_MAX
        && origin.bytes().all(|byte| byte.is_ascii_graphic())
}

impl FederationReceipt {
    /// A receipt of two heads, in origin order, with the merged root and no signatures yet.
    pub fn unsigned(one: FederatedHead, other: FederatedHead) -> Self {
        let (left, right) = if one.origin <= other.origin {
            (one, other)
        } else {
            (other, one)
        };
        let merged_root = merged_root(&left, &right);
        Self {
            left,
            right,
            merged_root,
            left_signature: SignatureBytes([0; 64]),
            right_signature: SignatureBytes([0; 64]),
        }
    }

    /// The text both ledger keys sign (see the module's documentation).
    pub fn message(&self) -> Vec<u8> {
        let side =
            |head: &FederatedHead| format!("{}{}\n", head.checkpoint_body(), head.ledger_key);
        format!(
            "{RECEIPT_HEADER}\n{}{}{}\n",
            side(&self.left),
            side(&self.right),
            BASE64.encode(self.merged_root.as_bytes())
        )
        .into_bytes()
    }

    /// The heads' shape: valid origins in strict order, and the merged root of the rule.
    pub fn check_shape(&self) -> Result<(), ReceiptError> {
        for origin in [&self.left.origin, &self.right.origin] {
            if !origin_is_valid(origin) {
                return Err(ReceiptError::Origin(origin.clone()));
            }
        }
        if self.left.origin >= self.right.origin {
            return Err(ReceiptError::Order {
                left: self.left.origin.clone(),
                right: self.right.origin.clone(),
            });
        }
        let computed = merged_root(&self.left, &self.right);
        if computed != self.merged_root {
            return Err(ReceiptError::MergedRoot {
                stated: self.merged_root,
                computed,
            });
        }
        Ok(())
    }

    /// The shape, then both signatures with the keys the heads name.
    pub fn verify(&self) -> Result<(), ReceiptError> {
        self.check_shape()?;
        let message = self.message();
        for (side, head, signature) in [
            ("left", &self.left, &self.left_signature),
            ("right", &self.right, &self.right_signature),
        ] {
            crate::verify_signature(&head.ledger_key, signature, &message).map_err(|_| {
                ReceiptError::Signature {
                    side,
                    key: head.ledger_key,
                }
            })?;
        }
        Ok(())
    }

    /// [`FederationReceipt::verify`], each head's key also the one `trusted` gives for its
    /// origin: an auditor's check with both fabrics' keys.
    pub fn verify_trusting(&self, trusted: &[(String, PublicKey)]) -> Result<(), ReceiptError> {
        for head in [&self.left, &self.right] {
            match trusted.iter().find(|(origin, _)| *origin == head.origin) {
                Some((_, key)) if *key == head.ledger_key => {}
                Some((_, key)) => {
                    return Err(ReceiptError::OtherKey {
                        origin: head.origin.clone(),
                        named: head.ledger_key,
                        trusted: *key,
                    })
                }
                None => return Err(ReceiptError::Untrusted(head.origin.clone())),
            }
        }
        self.verify()
    }

    /// The head of `origin`, and the other one.
    pub fn sides_of(&self, origin: &str) -> Option<(&FederatedHead, &FederatedHead)> {
        self.sides_where(|head| head.origin == origin)
    }

    /// The head that names `ledger_key`, and the other one.
    pub fn sides_of_key(&self, ledger_key: &PublicKey) -> Option<(&FederatedHead, &FederatedHead)> {
        self.sides_where(|head| head.ledger_key == *ledger_key)
    }

    /// The first head (left, then right) that `is_own` picks, and the other one.
    fn sides_where(
        &self,
        is_own: impl Fn(&FederatedHead) -> bool,
    ) -> Option<(&FederatedHead, &FederatedHead)> {
        if is_own(&self.left) {
            Some((&self.left, &self.right))
        } else if is_own(&self.right) {
            Some((&self.right, &self.left))
        } else {
            None
        }
    }

    /// Signs as the side of `origin` (no change when the receipt has no such side).
    pub fn sign_as(&mut self, origin: &str, ledger_key: &crate::SigningKey) {
        use ed25519_dalek::Signer;
        let signature = SignatureBytes::from(ledger_key.sign(&self.message()));
        if self.left.origin == origin {
            self.left_signature = signature;
        } else if self.right.origin == origin {
            self.right_signature = signature;
        }
    }

    /// The signature of the side of `origin`.
    pub fn signature_of(&self, origin: &str) -> Option<&SignatureBytes> {
        if self.left.origin == origin {
            Some(&self.left_signature)
        } else if self.right.origin == origin {
            Some(&self.right_signature)
        } else {
            None
        }
    }
}

/// The merged root of two heads in origin order: BLAKE3(0x01 ‖ leaf(left) ‖ leaf(right)),
/// the RFC 9162 tree of the two heads' leaves in Fabric's BLAKE3 hashing.
pub fn merged_root(left: &FederatedHead, right: &FederatedHead) -> Hash32 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[0x01]);
    hasher.update(left.merged_leaf().as_bytes());
    hasher.update(right.merged_leaf().as_bytes());
    Hash32(*hasher.finalize().as_bytes())
}

/// A peer presented a head that does not extend the head this fabric last federated with
/// it: the evidence, recorded once; the fabric federates with that peer no more.
///
/// The evidence is two statements of the peer's ledger key: its signature in the receipt at
/// `receipt_seq` (over the head federated last), and `signature` over `message`, a text that
/// states the presented head: a checkpoint note's text (§17.1) or a receipt's text (§18.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationFork {
    /// The peer's origin.
    pub peer_origin: String,
    /// The peer's ledger key.
    pub peer_key: PublicKey,
    /// The seq of the receipt, in this log, that holds the peer's last federated head.
    pub receipt_seq: u64,
    /// The size of the head the peer presented.
    pub tree_size: u64,
    /// Its root.
    pub root: Hash32,
    /// The signed text that states it.
    pub message: String,
    /// The peer key's Ed25519 signature of `message`.
    pub signature: SignatureBytes,
    /// The consistency path the peer served from its federated head to the presented one
    /// (empty when the sizes alone contradict).
    pub consistency_path: Vec<Hash32>,
    /// What does not hold.
    pub detail: String,
}

impl FederationFork {
    /// The head the peer presented.
    pub fn presented(&self) -> FederatedHead {
        FederatedHead {
            origin: self.peer_origin.clone(),
            tree_size: self.tree_size,
            root: self.root,
            ledger_key: self.peer_key,
        }
    }

    /// Whether `message` states the presented head: it is that head's checkpoint note text,
    /// or a receipt's text with it as one side (under the peer's key).
    pub fn states_head(&self) -> bool {
        let head = self.presented();
        let body = head.checkpoint_body();
        if self.message == body {
            return true;
        }
        let side = format!("\n{body}{}\n", head.ledger_key);
        self.message.starts_with(&format!("{RECEIPT_HEADER}\n")) && self.message.contains(&side)
    }
}

/// A file's record: its hashes, size, name and kind, signed by an owner or a registered
/// recorder (the event's author).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRecorded {
    /// A name for it (1 to 256 bytes, no control characters), e.g. its file name.
    pub name: String,
    /// What it is: `deploy`, `decision`, `report`, … (1 to 32 of `a-z 0-9 . _ -`).
    pub artifact_kind: String,
    /// Its length in bytes.
    pub size_bytes: u64,
    /// BLAKE3 of its bytes.
    pub blake3: Hash32,
    /// SHA-256 of its bytes.
    pub sha256: Hash32,
}

impl ArtifactRecorded {
    /// The record of `bytes` under `name` and `artifact_kind`.
    pub fn of(bytes: &[u8], name: String, artifact_kind: String) -> Self {
        let mut reader = bytes;
        match Self::of_reader(&mut reader, name.clone(), artifact_kind.clone()) {
            Ok(record) => record,
            // Reading a slice cannot fail.
            Err(_) => unreachable!("a slice reads without error"),
        }
    }

    /// The record of what `reader` reads to its end, hashed as it streams by.
    pub fn of_reader(
        reader: &mut impl std::io::Read,
        name: String,
        artifact_kind: String,
    ) -> std::io::Result<Self> {
        use sha2::Digest as _;
        let (mut blake3, mut sha256) = (blake3::Hasher::new(), sha2::Sha256::new());
        let mut size_bytes = 0u64;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            blake3.update(&buffer[..read]);
            sha256.update(&buffer[..read]);
            size_bytes += read as u64;
        }
        Ok(Self {
            name,
            artifact_kind,
            size_bytes,
            blake3: Hash32(*blake3.finalize().as_bytes()),
            sha256: Hash32(sha256.finalize().into()),
        })
    }

    /// Whether `other` records the same bytes (size and both hashes).
    pub fn same_bytes(&self, other: &ArtifactRecorded) -> bool {
        (self.size_bytes, self.blake3, self.sha256)
            == (other.size_bytes, other.blake3, other.sha256)
    }

    /// Why its name or kind breaks the rules, if it does.
    pub fn check_shape(&self) -> Result<(), String> {
        if !name_is_valid(&self.name) {
            return Err(format!(
                "artifact name {:?} is not 1 to {ARTIFACT_NAME_BYTES_MAX} bytes without control characters",
                self.name
            ));
        }
        if !artifact_kind_is_valid(&self.artifact_kind) {
            return Err(format!(
                "artifact kind {:?} is not 1 to {ARTIFACT_KIND_BYTES_MAX} of a-z 0-9 . _ -",
                self.artifact_kind
            ));
        }
        Ok(())
    }
}

/// Whether `name` may name an artifact or a recorder: 1 to [`ARTIFACT_NAME_BYTES_MAX`] bytes,
/// no control characters.
pub fn name_is_valid(name: &str) -> bool {
    !name.is_empty() && name.len() <= ARTIFACT_NAME_BYTES_MAX && !name.chars().any(char::is_control)
}

/// Whether `kind` may be an artifact's kind.
pub fn artifact_kind_is_valid(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= ARTIFACT_KIND_BYTES_MAX
        && kind
            .bytes()
            .all(|byte| matches!(byte, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::derive_signing_key;

    fn head(origin: &str, size: u64, key: &crate::SigningKey) -> FederatedHead {
        FederatedHead {
            origin: origin.to_owned(),
            tree_size: size,
            root: Hash32([size as u8; 32]),
            ledger_key: PublicKey::from(&key.verifying_key()),
        }
    }

    #[test]
    fn both_sides_build_the_same_receipt_and_it_verifies_signed_by_both() {
        let (a, b) = (derive_signing_key(1, "a"), derive_signing_key(1, "b"));
        let one = FederationReceipt::unsigned(head("fabric/bb", 7, &b), head("fabric/aa", 3, &a));
        let other = FederationReceipt::unsigned(head("fabric/aa", 3, &a), head("fabric/bb", 7, &b));
        assert_eq!(one, other);
        assert_eq!(one.left.origin, "fabric/aa");
        let mut receipt = one;
        receipt.sign_as("fabric/aa", &a);
        assert_eq!(
            receipt.verify(),
            Err(ReceiptError::Signature {
                side: "right",
                key: receipt.right.ledger_key
            })
        );
        receipt.sign_as("fabric/bb", &b);
        assert_eq!(receipt.verify(), Ok(()));
        let text = String::from_utf8(receipt.message()).unwrap();
        assert!(text.starts_with("fabric-federation-receipt/v1\nfabric/aa\n3\n"));
        assert_eq!(text.lines().count(), 10);
    }

    /// The example of docs/FORMAT.md §18.1, byte for byte.
    #[test]
    fn the_documented_receipt_is_what_both_keys_sign() {
        let (a, b) = (
            derive_signing_key(7, "golden/federation/a"),
            derive_signing_key(7, "golden/federation/b"),
        );
        let head = |origin: &str, size: u64, root: u8, key: &crate::SigningKey| FederatedHead {
            origin: origin.to_owned(),
            tree_size: size,
            root: Hash32([root; 32]),
            ledger_key: PublicKey::from(&key.verifying_key()),
        };
        let mut receipt = FederationReceipt::unsigned(
            head("fabric/0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", 7, 7, &b),
            head("fabric/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a", 3, 3, &a),
        );
        receipt.sign_as("fabric/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a", &a);
        receipt.sign_as("fabric/0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", &b);
        assert_eq!(
            receipt.left.merged_leaf().to_hex(),
            "fbd1b28dabd5d60d715c8cae867e1a3f27d8407773e4690b7f344e6d7edb6c75"
        );
        assert_eq!(
            receipt.right.merged_leaf().to_hex(),
            "2b420e4e2d841177129bffbfa3b9b79d45e882d8180c407f8a0492f47354aa72"
        );
        assert_eq!(
            receipt.merged_root.to_hex(),
            "4843ac1600c8017df3f1850d32d9f6797364e1dde24c4eb75b6256286de68e42"
        );
        assert_eq!(
            receipt.left_signature.to_hex(),
            "8b2c4570282913cd1cd027fa775c2e638c84184587b3480aacf8209e92828ac1\
             d0754c5c7da7280f5257e327d4ef64e6e6ca7c19413d5f1e38cf38d7b0e75007"
        );
        assert_eq!(
            receipt.right_signature.to_hex(),
            "7005606480b7c014e98a6ddc7f7a544f74f2c0c10ece587e3dedeb136df3469a\
             b74ffd22e71607ecb5696bdf7ccb5dbfea3306eff56c79daff94377bedb1600b"
        );
        let text = String::from_utf8(receipt.message()).expect("text");
        assert!(
            text.ends_with("\nSEOsFgDIAX3z8YUNMtn2eXNk4d3iTE63W2JWKG3mjkI=\n"),
            "{text}"
        );
        assert_eq!(receipt.verify(), Ok(()));
    }

    #[test]
    fn a_changed_head_or_merged_root_fails() {
        let (a, b) = (derive_signing_key(1, "a"), derive_signing_key(1, "b"));
        let mut receipt =
            FederationReceipt::unsigned(head("fabric/aa", 3, &a), head("fabric/bb", 7, &b));
        receipt.sign_as("fabric/aa", &a);
        receipt.sign_as("fabric/bb", &b);
        let mut changed = receipt.clone();
        changed.right.tree_size += 1;
        assert!(matches!(
            changed.verify(),
            Err(ReceiptError::MergedRoot { .. })
        ));
        changed.merged_root = merged_root(&changed.left, &changed.right);
        assert!(matches!(
            changed.verify(),
            Err(ReceiptError::Signature { side: "left", .. })
        ));
        let mut swapped = receipt.clone();
        std::mem::swap(&mut swapped.left, &mut swapped.right);
        assert!(matches!(swapped.verify(), Err(ReceiptError::Order { .. })));
    }

    #[test]
    fn artifact_names_and_kinds_are_checked() {
        let record = ArtifactRecorded::of(b"abc", "notes.txt".into(), "report".into());
        assert_eq!(record.check_shape(), Ok(()));
        assert_eq!(
            record.sha256.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let bad_kind = ArtifactRecorded {
            artifact_kind: "Deploy".into(),
            ..record.clone()
        };
        assert!(bad_kind.check_shape().is_err());
        let bad_name = ArtifactRecorded {
            name: "a\nb".into(),
            ..record
        };
        assert!(bad_name.check_shape().is_err());
    }
}
