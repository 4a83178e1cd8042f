//! The v0 API's constants and the JSON bodies that are not about one job (docs/FORMAT.md §14):
//! a signed event in JSON, the error body, `GET /v0/health` and `POST /v0/owner/commands`.
//!
//! The fields of every body are declared in alphabetical order: the server writes JSON
//! objects with their keys sorted, so a body serialized from these types is byte for byte
//! what the server sends.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use fabric_events::{Hash32, OwnerCommand, PublicKey, SignatureBytes, SignedEvent};
use serde::{Deserialize, Serialize};

/// The API's version, in every path.
pub const API_VERSION: &str = "v0";
/// The `schema_version` every job request must carry.
pub const JOB_SCHEMA_VERSION: &str = "fabric.job.v0";
/// Largest request body the server reads; a longer one gets 413 without being read.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;
/// Largest body of `POST /v0/jobs/batch`; a longer one gets 413 without being read. Each job
/// request in it is still held to [`REQUEST_BODY_BYTES_MAX`].
pub const BATCH_BODY_BYTES_MAX: usize = 1024 * 1024;
/// Most job requests one `POST /v0/jobs/batch` carries.
pub const JOBS_PER_BATCH_MAX: usize = 256;
/// Export lines one `GET /v0/events` answer carries at most (`limit` may ask for fewer).
pub const EVENTS_PER_RESPONSE_MAX: u64 = 100_000;
/// The BLAKE3 key-derivation context of a job id derived from a request id
/// (docs/FORMAT.md §14.2; [`crate::job_id_of`]).
pub const REQUEST_ID_CONTEXT: &str = "fabric 2026-12 request id to job id";
/// Longest request id, in bytes.
pub const REQUEST_ID_BYTES_MAX: usize = 128;

/// Bytes of a job request besides its signed event and the copies of the event's strings:
/// keys, quotes, the author and signature in hex, the input hash, the request id, the schema.
const JOB_REQUEST_FIXED_BYTES_MAX: usize = 1024;

// Every event a client may sign fits a request body: the signed bytes in base64, the model
// fields the envelope repeats (at most the event's own size, even JSON-escaped twice over) and
// the fixed fields. A larger event limit would make valid jobs unsubmittable.
const _: () = assert!(
    fabric_events::MAX_SIGNED_BYTES.div_ceil(3) * 4
        + 2 * fabric_events::MAX_SIGNED_BYTES
        + REQUEST_ID_BYTES_MAX
        + JOB_REQUEST_FIXED_BYTES_MAX
        <= REQUEST_BODY_BYTES_MAX
);

/// A signed event in JSON: author and signature in hex, the signed bytes in standard base64.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireSignedEvent {
    /// The author's public key, 64 hex digits.
    pub author: String,
    /// The signature, 128 hex digits; a missing one is an unsigned attempt.
    #[serde(default)]
    pub signature: Option<String>,
    /// `FABRICv1` ‖ canonical event, standard base64.
    pub signed: String,
}

/// Why a [`WireSignedEvent`]'s fields do not decode.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// `author` is not a public key in hex.
    #[error("event.author: {0}")]
    Author(fabric_events::hex_serde::HexError),
    /// `signature` is not hex.
    #[error("event.signature is not hex: {0}")]
    SignatureHex(hex::FromHexError),
    /// `signature` has the wrong length.
    #[error("event.signature has {0} bytes, an ed25519 signature has 64")]
    SignatureLength(usize),
    /// `signed` is not standard base64.
    #[error("event.signed is not standard base64: {0}")]
    Signed(base64::DecodeError),
}

impl WireSignedEvent {
    /// The JSON form of `signed`.
    pub fn from_signed(signed: &SignedEvent) -> Self {
        Self {
            author: signed.author.to_string(),
            signature: Some(signed.signature.to_hex()),
            signed: BASE64.encode(&signed.signed),
        }
    }

    /// Parses the hex and base64 fields; the signature of an unsigned attempt is all zeros
    /// (which no key's signature is), so it is refused and recorded as a bad signature.
    pub fn decode(&self) -> Result<SignedEvent, WireError> {
        let author = PublicKey::from_hex(&self.author).map_err(WireError::Author)?;
        let signature = match &self.signature {
            None => [0u8; 64],
            Some(text) => {
                let bytes = hex::decode(text).map_err(WireError::SignatureHex)?;
                <[u8; 64]>::try_from(bytes.as_slice())
                    .map_err(|_| WireError::SignatureLength(bytes.len()))?
            }
        };
        let signed = BASE64.decode(&self.signed).map_err(WireError::Signed)?;
        Ok(SignedEvent {
            author,
            signature: SignatureBytes(signature),
            signed,
        })
    }
}

/// Every error body: `{"error": {"code", "message"}}`; a refusal the ledger recorded adds
/// `rejected_seq` and `tick`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable code: `bad_body`, `unknown_job`, a refusal's reason (`bad_signature`, …).
    pub code: String,
    /// What is wrong, for a person.
    pub message: String,
    /// The seq of the `rejected` event that records a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_seq: Option<u64>,
    /// The tick the refusal was recorded at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick: Option<u64>,
    /// The seq of the `refusals_counted` event that counts a refusal without a valid
    /// signature of a registered key (such a refusal has no event of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_seq: Option<u64>,
}

impl ErrorBody {
    /// An error that stored nothing.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                rejected_seq: None,
                tick: None,
                counted_seq: None,
            },
        }
    }

    /// A refusal counted in the `refusals_counted` event at `counted_seq`, in tick `tick`.
    pub fn counted(
        code: impl Into<String>,
        message: impl Into<String>,
        counted_seq: u64,
        tick: u64,
    ) -> Self {
        let mut body = Self::new(code, message);
        body.error.counted_seq = Some(counted_seq);
        body.error.tick = Some(tick);
        body
    }

    /// A refusal recorded as the `rejected` event at `rejected_seq`, in tick `tick`.
    pub fn refusal(
        code: impl Into<String>,
        message: impl Into<String>,
        rejected_seq: u64,
        tick: u64,
    ) -> Self {
        let mut body = Self::new(code, message);
        body.error.rejected_seq = Some(rejected_seq);
        body.error.tick = Some(tick);
        body
    }
}

/// The body of `GET /v0/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Where the fabric's keys come from, as its genesis says: `{"origin": "operator"}`, or
    /// `{"origin": "simulation", "seed": N}`.
    pub key_origin: fabric_events::KeyOrigin,
    /// The log.
    pub ledger: LedgerInfo,
    /// On a simulation only: `simulation: keys are public`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulation: Option<String>,
    /// On a replicated fabric only (docs/FORMAT.md §16): `sequencer` when this server
    /// sequences, `follower` when it follows (submissions go to the sequencer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// Always `ok`.
    pub status: String,
    /// The last durable tick (a job request's event carries a tick the client saw here).
    pub tick: u64,
    /// Milliseconds between ticks.
    pub tick_ms: u64,
    /// Milliseconds since the server started.
    pub uptime_ms: u64,
    /// What the server speaks.
    pub versions: Versions,
}

/// The versions in [`Health`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// [`API_VERSION`].
    pub api: String,
    /// The server's version.
    pub fabric: String,
    /// [`JOB_SCHEMA_VERSION`].
    pub schema: String,
    /// The wire format of signed events: `FABRICv1`.
    pub wire_format: String,
}

/// The log in [`Health`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerInfo {
    /// The origin line of the log's checkpoint notes (docs/FORMAT.md §17), and its key name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_origin: Option<String>,
    /// The ledger key in force as note tools name a verifier key:
    /// `origin+key ID (8 hex digits)+base64(0x01 ‖ public key)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_verifier_key: Option<String>,
    /// The ledger key, which signs tree heads and sequences owner commands.
    pub ledger_key: PublicKey,
    /// The Merkle root of the durable log.
    pub root: Hash32,
    /// Entries in the durable log.
    pub size: u64,
    /// The signed tree head of that size.
    pub tree_head: TreeHead,
}

/// A signed tree head as JSON shows it (docs/FORMAT.md §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeHead {
    /// The ledger key's public key.
    pub ledger_key: PublicKey,
    /// The Merkle root.
    pub root: Hash32,
    /// The ledger key's signature over the tree head message.
    pub signature: SignatureBytes,
    /// Number of entries.
    pub tree_size: u64,
}

/// The body of `POST /v0/owner/commands`: one command of a command file (docs/FORMAT.md
/// §10.1); the server ignores keys other than `nonce` and `command`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OwnerRequest {
    /// The command and its approvals.
    pub command: OwnerCommand,
    /// The command's nonce.
    pub nonce: u64,
}

/// The 202 answer to `POST /v0/owner/commands`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerAccepted {
    /// The command's nonce.
    pub nonce: u64,
    /// Where the `owner_command` event is in the log.
    pub seq: u64,
    /// Always `executed`.
    pub status: String,
    /// The tick it was sequenced at.
    pub tick: u64,
}

/// The body of `POST /v0/records` (docs/FORMAT.md §19.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordRequest {
    /// The signed `artifact_recorded` event.
    pub event: WireSignedEvent,
}

/// The 202 answer to `POST /v0/records`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordAccepted {
    /// BLAKE3 of the recorded file, as the event says.
    pub blake3: Hash32,
    /// Where the `artifact_recorded` event is in the log.
    pub seq: u64,
    /// Always `recorded`.
    pub status: String,
    /// The tick it was sequenced at.
    pub tick: u64,
}

/// The body of `POST /v0/federation/sync` (docs/FORMAT.md §18.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSyncRequest {
    /// The peer's origin, as in its verifier key.
    pub peer: String,
}

/// The answer to a sync or a countersign: the receipt both ledgers signed and where this
/// fabric appended it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSynced {
    /// Where the peer appended it (known to the fabric that started the sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_seq: Option<u64>,
    /// The receipt.
    pub receipt: fabric_events::FederationReceipt,
    /// Where this fabric appended it.
    pub seq: u64,
}

/// `GET /v0/federation`: this fabric's origin and where it stands with each peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationStatus {
    /// Least time between two receipts with one peer.
    pub interval_ms: u64,
    /// This fabric's checkpoint origin (none before its genesis is stored).
    pub origin: Option<String>,
    /// The configured peers, then any other the log has receipts with.
    pub peers: Vec<FederationPeerStatus>,
}

/// One peer in [`FederationStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationPeerStatus {
    /// Whether it presented a head that does not extend its last (a `federation_fork` is in
    /// the log; no receipt with it is appended any more).
    pub forked: bool,
    /// Its ledger key.
    pub ledger_key: PublicKey,
    /// The seq of the last receipt with it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_receipt_seq: Option<u64>,
    /// Its origin.
    pub origin: String,
    /// This fabric's size in the last receipt.
    pub own_size: u64,
    /// Its root in the last receipt.
    pub peer_root: Hash32,
    /// Its size in the last receipt.
    pub peer_size: u64,
    /// Receipts with it in this log.
    pub receipts: u64,
    /// Where this fabric reaches it (none: not configured here, known from the log only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_the_documented_shape() {
        let plain = ErrorBody::new("not_found", "no such endpoint");
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"error":{"code":"not_found","message":"no such endpoint"}}"#
        );
        let refusal = ErrorBody::refusal("bad_signature", "no", 7, 3);
        assert_eq!(
            serde_json::to_string(&refusal).unwrap(),
            r#"{"error":{"code":"bad_signature","message":"no","rejected_seq":7,"tick":3}}"#
        );
        let back: ErrorBody = serde_json::from_str(&serde_json::to_string(&refusal).unwrap())
            .expect("an error body parses");
        assert_eq!(back, refusal);
    }

    #[test]
    fn health_fields_are_in_the_servers_order() {
        let head = TreeHead {
            ledger_key: PublicKey([1; 32]),
            root: Hash32([2; 32]),
            signature: SignatureBytes([3; 64]),
            tree_size: 9,
        };
        let health = Health {
            key_origin: fabric_events::KeyOrigin::Simulation { seed: 1 },
            simulation: Some("simulation: keys are public".to_owned()),
            replica: None,
            ledger: LedgerInfo {
                checkpoint_origin: Some("fabric/00".to_owned()),
                checkpoint_verifier_key: Some("fabric/00+01020304+AQ==".to_owned()),
                ledger_key: head.ledger_key,
                root: head.root,
                size: 9,
                tree_head: head,
            },
            status: "ok".to_owned(),
            tick: 4,
            tick_ms: 10,
            uptime_ms: 5,
            versions: Versions {
                api: API_VERSION.to_owned(),
                fabric: "0.1.0".to_owned(),
                schema: JOB_SCHEMA_VERSION.to_owned(),
                wire_format: "FABRICv1".to_owned(),
            },
        };
        let direct = serde_json::to_string(&health).unwrap();
        let sorted = serde_json::to_value(&health).unwrap().to_string();
        assert_eq!(direct, sorted);
        let accepted = OwnerAccepted {
            nonce: 1,
            seq: 2,
            status: "executed".to_owned(),
            tick: 3,
        };
        assert_eq!(
            serde_json::to_string(&accepted).unwrap(),
            serde_json::to_value(&accepted).unwrap().to_string()
        );
    }

    #[test]
    fn a_wire_event_round_trips_and_bad_fields_are_named() {
        let key = fabric_events::derive_signing_key(1, "test/client");
        let event = fabric_events::Event::new(
            fabric_events::Role::Client,
            1,
            1,
            fabric_events::JobSubmitted {
                job: 5,
                shard: "earth".to_owned(),
                workload: "general@1".to_owned(),
                skills: vec!["general".to_owned()],
                duration_ticks: 1,
                deadline_tick: 10,
                budget_micros: 1,
                input_hash: Hash32([4; 32]),
            },
        );
        let signed = SignedEvent::sign(&event, &key).expect("a small event");
        let wire = WireSignedEvent::from_signed(&signed);
        assert_eq!(wire.decode().expect("it decodes"), signed);
        let unsigned = WireSignedEvent {
            signature: None,
            ..wire.clone()
        };
        assert_eq!(
            unsigned.decode().unwrap().signature,
            SignatureBytes([0; 64])
        );
        let short = WireSignedEvent {
            signature: Some("abcd".to_owned()),
            ..wire.clone()
        };
        assert_eq!(
            short.decode().unwrap_err().to_string(),
            "event.signature has 2 bytes, an ed25519 signature has 64"
        );
        let bad = WireSignedEvent {
            signed: "***".to_owned(),
            ..wire
        };
        assert!(bad
            .decode()
            .unwrap_err()
            .to_string()
            .starts_with("event.signed is not standard base64: "));
    }
}
