//! Wire format v1: the bytes that are signed, stored, hashed and exported.
//!
//! - `signed` = `FABRICv1` (8 ASCII bytes) ‖ canonical event. The author's ed25519 signature
//!   (RFC 8032, pure, not prehashed) covers exactly `signed`.
//! - `entry` = seq (u64 LE) ‖ prev (32) ‖ author public key (32) ‖ signature (64) ‖ `signed`.
//! - entry hash = BLAKE3(0x00 ‖ entry); `prev` of seq 0 is 32 zero bytes, of seq n the hash of
//!   entry n-1.
//! - export line: one JSON object per entry (see [`ExportLine`]).

use base64::Engine;
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::codec::{decode_event, encode_event, DecodeError, OversizeEvent};
use crate::event::Event;
use crate::keys::{verifying_key, SigningKey};
use crate::types::{Hash32, PublicKey, SignatureBytes};

/// The 8 bytes every `signed` starts with.
pub const WIRE_MAGIC: [u8; 8] = *b"FABRICv1";
/// Largest `signed`, magic included.
pub const MAX_SIGNED_BYTES: usize = 16 * 1024;
/// Bytes of an entry before `signed`: seq 8 + prev 32 + author 32 + signature 64.
pub const ENTRY_HEADER_LEN: usize = 8 + 32 + 32 + 64;
/// Largest entry.
pub const MAX_ENTRY_BYTES: usize = ENTRY_HEADER_LEN + MAX_SIGNED_BYTES;

/// The `signed` bytes of an event: magic ‖ canonical encoding.
pub fn signed_bytes(event: &Event) -> Result<Vec<u8>, OversizeEvent> {
    let encoded = encode_event(event)?;
    let mut signed = Vec::with_capacity(WIRE_MAGIC.len() + encoded.len());
    signed.extend_from_slice(&WIRE_MAGIC);
    signed.extend_from_slice(&encoded);
    Ok(signed)
}

/// Decodes `signed` bytes: checks the size, the magic, then decodes the event strictly.
pub fn event_from_signed(signed: &[u8]) -> Result<Event, DecodeError> {
    if signed.len() > MAX_SIGNED_BYTES {
        return Err(DecodeError::Oversize {
            len: signed.len(),
            max: MAX_SIGNED_BYTES,
        });
    }
    let encoded = signed
        .strip_prefix(&WIRE_MAGIC)
        .ok_or(DecodeError::BadMagic)?;
    decode_event(encoded)
}

/// Why a signature is not accepted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// The author's 32 bytes are not a curve point.
    #[error("author {0} is not a valid ed25519 public key")]
    InvalidKey(PublicKey),
    /// The author's key is a small-order point: anyone could forge its signatures.
    #[error("author {0} is a weak (small-order) ed25519 key")]
    WeakKey(PublicKey),
    /// The signature does not verify for these bytes and this key.
    #[error("signature does not verify for author {0}")]
    BadSignature(PublicKey),
}

/// An event as its author sent it: the signed bytes, the author and the signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedEvent {
    /// The author's public key.
    pub author: PublicKey,
    /// The author's signature over `signed`.
    pub signature: SignatureBytes,
    /// `FABRICv1` ‖ canonical event.
    pub signed: Vec<u8>,
}

impl SignedEvent {
    /// Encodes and signs an event.
    pub fn sign(event: &Event, key: &SigningKey) -> Result<Self, OversizeEvent> {
        let signed = signed_bytes(event)?;
        let signature = key.sign(&signed);
        Ok(Self {
            author: PublicKey::from(&key.verifying_key()),
            signature: signature.into(),
            signed,
        })
    }

    /// Decodes the event inside (no signature check).
    pub fn event(&self) -> Result<Event, DecodeError> {
        event_from_signed(&self.signed)
    }

    /// Checks the signature alone (one at a time; the ledger verifies in batches).
    pub fn verify(&self) -> Result<(), VerifyError> {
        verify_signature(&self.author, &self.signature, &self.signed)
    }
}

/// Checks one ed25519 signature (cofactored, see [`crate::ed25519`]), refusing invalid and
/// weak keys.
pub fn verify_signature(
    author: &PublicKey,
    signature: &SignatureBytes,
    message: &[u8],
) -> Result<(), VerifyError> {
    let key = verifying_key(author).map_err(|_| VerifyError::InvalidKey(*author))?;
    if key.is_weak() {
        return Err(VerifyError::WeakKey(*author));
    }
    let item = crate::ed25519::Item {
        key: &key,
        message,
        signature: signature.as_bytes(),
    };
    if crate::ed25519::verify(&item) {
        Ok(())
    } else {
        Err(VerifyError::BadSignature(*author))
    }
}

/// BLAKE3(0x00 ‖ entry): the hash that chains entries and is the Merkle leaf.
pub fn entry_hash(entry: &[u8]) -> Hash32 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[0x00]);
    hasher.update(entry);
    hasher.finalize().into()
}

/// Why bytes are not an entry.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EntryError {
    /// Shorter than the fixed header plus the magic.
    #[error("entry is {len} bytes, shorter than the minimum of {min}")]
    TooShort {
        /// Bytes given.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// Longer than any entry may be.
    #[error("entry is {len} bytes, over the limit of {max}")]
    TooLong {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// One ledger entry: an event as stored, with its position and chain link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log, from 0, no gaps.
    pub seq: u64,
    /// Hash of the previous entry (zeros for seq 0).
    pub prev: Hash32,
    /// The author's public key.
    pub author: PublicKey,
    /// The author's signature over `signed`.
    pub signature: SignatureBytes,
    /// `FABRICv1` ‖ canonical event.
    pub signed: Vec<u8>,
}

impl Entry {
    /// Places a signed event at `seq` after `prev`.
    pub fn new(seq: u64, prev: Hash32, event: SignedEvent) -> Self {
        Self {
            seq,
            prev,
            author: event.author,
            signature: event.signature,
            signed: event.signed,
        }
    }

    /// Its size in bytes.
    pub fn encoded_len(&self) -> usize {
        ENTRY_HEADER_LEN + self.signed.len()
    }

    /// Appends the entry bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(self.prev.as_bytes());
        out.extend_from_slice(self.author.as_bytes());
        out.extend_from_slice(self.signature.as_bytes());
        out.extend_from_slice(&self.signed);
    }

    /// The entry bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Splits entry bytes into their fields (sizes checked; the event is not decoded).
    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        let min = ENTRY_HEADER_LEN + WIRE_MAGIC.len();
        if bytes.len() < min {
            return Err(EntryError::TooShort {
                len: bytes.len(),
                min,
            });
        }
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(EntryError::TooLong {
                len: bytes.len(),
                max: MAX_ENTRY_BYTES,
            });
        }
        let (seq, rest) = bytes.split_at(8);
        let (prev, rest) = rest.split_at(32);
        let (author, rest) = rest.split_at(32);
        let (signature, signed) = rest.split_at(64);
        Ok(Self {
            seq: u64::from_le_bytes(fixed(seq)),
            prev: Hash32(fixed(prev)),
            author: PublicKey(fixed(author)),
            signature: SignatureBytes(fixed(signature)),
            signed: signed.to_vec(),
        })
    }

    /// BLAKE3(0x00 ‖ entry).
    pub fn hash(&self) -> Hash32 {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&[0x00]);
        hasher.update(&self.seq.to_le_bytes());
        hasher.update(self.prev.as_bytes());
        hasher.update(self.author.as_bytes());
        hasher.update(self.signature.as_bytes());
        hasher.update(&self.signed);
        hasher.finalize().into()
    }

    /// The signed event it stores (author, signature, signed bytes).
    pub fn signed_event(&self) -> SignedEvent {
        SignedEvent {
            author: self.author,
            signature: self.signature,
            signed: self.signed.clone(),
        }
    }

    /// Decodes the event inside.
    pub fn event(&self) -> Result<Event, DecodeError> {
        event_from_signed(&self.signed)
    }

    /// Checks the author's signature over `signed`.
    pub fn verify_signature(&self) -> Result<(), VerifyError> {
        verify_signature(&self.author, &self.signature, &self.signed)
    }

    /// The export line of this entry, without the trailing newline.
    pub fn export_line(&self) -> Result<String, DecodeError> {
        let line = ExportLine::from_entry(self)?;
        Ok(serde_json::to_string(&line).expect("export lines serialise to JSON"))
    }
}

fn fixed<const N: usize>(bytes: &[u8]) -> [u8; N] {
    // Callers split at exactly N bytes.
    <[u8; N]>::try_from(bytes).expect("slice split at the array length")
}

/// One line of an export (and one NATS payload): an entry for people and for machines.
///
/// `entry` (standard base64 of the entry bytes) is authoritative; the other fields repeat it in
/// readable form, and [`ExportLine::verify`] checks that they agree with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportLine {
    /// Position in the log.
    pub seq: u64,
    /// Entry hash (hex).
    pub hash: Hash32,
    /// Previous entry's hash (hex).
    pub prev: Hash32,
    /// Author's public key (hex).
    pub author: PublicKey,
    /// Signature (hex).
    pub signature: SignatureBytes,
    /// The event kind, snake_case.
    pub kind: String,
    /// The event as JSON: role, tick, nonce, kind and data.
    pub body: Event,
    /// The entry bytes, standard base64 with padding.
    pub entry: String,
}

/// Why an export line cannot be trusted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ExportError {
    /// Not JSON of the export line shape.
    #[error("not an export line: {0}")]
    Json(String),
    /// `entry` is not base64.
    #[error("seq {seq}: entry is not standard base64: {reason}")]
    Base64 {
        /// The line's seq.
        seq: u64,
        /// The decoder's complaint.
        reason: String,
    },
    /// `entry` is not an entry.
    #[error("seq {seq}: {source}")]
    Entry {
        /// The line's seq.
        seq: u64,
        /// What is wrong.
        source: EntryError,
    },
    /// The event inside `entry` does not decode.
    #[error("seq {seq}: {source}")]
    Event {
        /// The line's seq.
        seq: u64,
        /// What is wrong.
        source: DecodeError,
    },
    /// A readable field disagrees with `entry`.
    #[error("seq {seq}: field `{field}` does not match the entry bytes")]
    Mismatch {
        /// The line's seq.
        seq: u64,
        /// The field.
        field: &'static str,
    },
    /// The signature does not verify.
    #[error("seq {seq}: {source}")]
    Signature {
        /// The line's seq.
        seq: u64,
        /// What is wrong.
        source: VerifyError,
    },
}

impl ExportLine {
    /// The export line of an entry.
    pub fn from_entry(entry: &Entry) -> Result<Self, DecodeError> {
        let body = entry.event()?;
        Ok(Self {
            seq: entry.seq,
            hash: entry.hash(),
            prev: entry.prev,
            author: entry.author,
            signature: entry.signature,
            kind: body.kind().as_str().to_owned(),
            body,
            entry: base64::engine::general_purpose::STANDARD.encode(entry.encode()),
        })
    }

    /// Parses one line of JSON.
    pub fn parse(line: &str) -> Result<Self, ExportError> {
        serde_json::from_str(line).map_err(|err| ExportError::Json(err.to_string()))
    }

    /// Checks the line on its own: `entry` decodes, every readable field equals what the
    /// entry bytes say, the hash is right and the signature verifies. (Chain links between
    /// lines are the reader's to check: `prev` of line n must be `hash` of line n-1.)
    pub fn verify(&self) -> Result<Entry, ExportError> {
        let entry = self.check_fields()?;
        entry
            .verify_signature()
            .map_err(|source| ExportError::Signature {
                seq: self.seq,
                source,
            })?;
        Ok(entry)
    }

    /// Everything [`ExportLine::verify`] checks but the signature, for callers that verify
    /// signatures in batches.
    pub fn check_fields(&self) -> Result<Entry, ExportError> {
        let seq = self.seq;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.entry)
            .map_err(|err| ExportError::Base64 {
                seq,
                reason: err.to_string(),
            })?;
        let entry = Entry::decode(&bytes).map_err(|source| ExportError::Entry { seq, source })?;
        let event = entry
            .event()
            .map_err(|source| ExportError::Event { seq, source })?;
        let mismatch = |field| ExportError::Mismatch { seq, field };
        if entry.seq != self.seq {
            return Err(mismatch("seq"));
        }
        if entry.prev != self.prev {
            return Err(mismatch("prev"));
        }
        if entry.author != self.author {
            return Err(mismatch("author"));
        }
        if entry.signature != self.signature {
            return Err(mismatch("signature"));
        }
        if entry_hash(&bytes) != self.hash {
            return Err(mismatch("hash"));
        }
        if event.kind().as_str() != self.kind {
            return Err(mismatch("kind"));
        }
        if event != self.body {
            return Err(mismatch("body"));
        }
        Ok(entry)
    }
}
