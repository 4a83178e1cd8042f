//! The events of the fabric: one [`Header`] and one [`Body`] variant per kind.
//!
//! Every quantity is an integer in named units (`_ticks`, `_ms`, `_micros`, `_ppm`): floats have
//! no place in signed, replayed history. Names of shards and nodes are short ASCII strings such
//! as `earth` and `earth.core-alpha`.
//!
//! Tags are positional: the canonical encoding writes a variant's index as a u32, so variants
//! are only ever appended, never reordered or removed (the golden tests pin them).

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::covenant::{ArtifactRecorded, FederationFork, FederationReceipt};
use crate::model::ModelRegistered;
use crate::types::{Hash32, PublicKey, SignatureBytes};

/// A job's identifier, unique within one ledger.
pub type JobId = u64;

/// The role an event's author claims. Which key may act in which role is the ledger's
/// authority table; the role is part of the signed bytes so it cannot be changed afterwards.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Submits jobs.
    Client,
    /// Routes the jobs of one shard (one key per shard).
    Router,
    /// Runs jobs (one key per node).
    Node,
    /// Steers the fabric (M-of-N multisig on commands).
    Owner,
    /// The ledger itself: checkpoints, rejections, tree heads.
    Ledger,
    /// Records artifacts: an owner, or a key registered as a recorder.
    Recorder,
}

impl Role {
    /// The role's name as written in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Router => "router",
            Role::Node => "node",
            Role::Owner => "owner",
            Role::Ledger => "ledger",
            Role::Recorder => "recorder",
        }
    }
}

/// Fields every event carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The role the author acts in.
    pub role: Role,
    /// Logical time: the tick of the run the event belongs to. Never wall-clock in a
    /// simulation, so the same seed gives the same bytes.
    pub tick: u64,
    /// Unique per author; the ledger refuses a nonce it has seen (replay protection).
    pub nonce: u64,
}

/// One event: who claims to say it, when, and what.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
pub struct Event {
    /// Role, tick, nonce.
    #[serde(flatten)]
    pub header: Header,
    /// What happened.
    #[serde(flatten)]
    pub body: Body,
}

impl Event {
    /// Builds an event from its parts.
    pub fn new(role: Role, tick: u64, nonce: u64, body: impl Into<Body>) -> Self {
        Self {
            header: Header { role, tick, nonce },
            body: body.into(),
        }
    }

    /// The kind of the body.
    pub fn kind(&self) -> Kind {
        self.body.kind()
    }

    /// The new ledger key, when this event changes the key in force: an owner command that
    /// rotates the ledger key, or a sequencer's takeover.
    pub fn ledger_rotation(&self) -> Option<PublicKey> {
        match &self.body {
            Body::OwnerCommand(OwnerCommand {
                action:
                    OwnerAction::RotateKey {
                        target: KeyTarget::Ledger,
                        new_key,
                    },
                ..
            }) if self.header.role == Role::Owner => Some(*new_key),
            Body::SequencerTakeover(takeover) if self.header.role == Role::Ledger => {
                Some(takeover.sequencer)
            }
            _ => None,
        }
    }
}

/// The body of an event: exactly one kind. The variant's position is its tag on the wire
/// (see [`Kind::tag`]); new kinds go at the end.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Body {
    /// A node joins the marketplace. Kept for its tag: nodes now enter only through an owner
    /// command ([`OwnerAction::RegisterNode`]), and the authority table refuses this kind.
    NodeRegistered(NodeRegistered),
    /// A client submits a job to a shard (intake).
    JobSubmitted(JobSubmitted),
    /// A shard's router places a queued job on a node.
    JobAssigned(JobAssigned),
    /// A shard's router hands a job to another shard.
    JobSpilled(JobSpilled),
    /// A node says it is alive.
    Heartbeat(Heartbeat),
    /// A node became healthy or unhealthy.
    NodeHealthChanged(NodeHealthChanged),
    /// A job goes back to a shard's queue (its node failed, drained or it was rerouted).
    JobRequeued(JobRequeued),
    /// A node reports a job's result.
    JobReceipt(JobReceipt),
    /// The owners steer the fabric (M-of-N approvals inside).
    OwnerCommand(OwnerCommand),
    /// The ledger commits to a state: tree size, Merkle root, state hash.
    Checkpoint(Checkpoint),
    /// The ledger records a refused attempt.
    Rejected(Rejected),
    /// A shard joins the fabric with its budgets, spillover rules and treaty terms. Kept for
    /// its tag: shards now enter only through an owner command
    /// ([`OwnerAction::RegisterShard`]), and the authority table refuses this kind.
    ShardRegistered(ShardRegistered),
    /// The first event of every log: the ledger key and the owners with their threshold.
    FabricGenesis(FabricGenesis),
    /// The ledger's verifier re-executed a GPU job and got another output than its node
    /// reported: the job goes back to its queue, the node's treaty halts for a while.
    AttestationMismatch(AttestationMismatch),
    /// The ledger counts, per reason, the refused attempts of one tick that carried no valid
    /// signature of a registered key: they are not evidence against anyone, so they are not
    /// each recorded.
    RefusalsCounted(RefusalsCounted),
    /// A registered sequencer of a replicated fabric takes over the log: from the next seq
    /// on, its key is the ledger key in force.
    SequencerTakeover(SequencerTakeover),
    /// Two fabrics' heads as both their ledgers signed them after a sync (docs/FORMAT.md
    /// §18); each of the two appends the same receipt.
    FederationReceipt(FederationReceipt),
    /// A federated peer presented a head that does not extend the one last federated: the
    /// evidence; the fabric federates with that peer no more.
    FederationFork(FederationFork),
    /// A file's hashes, size, name and kind, signed by an owner or a registered recorder
    /// (docs/FORMAT.md §19).
    ArtifactRecorded(ArtifactRecorded),
}

macro_rules! kinds {
    ($($variant:ident => $name:literal,)*) => {
        /// The kind of an event without its data, in tag order.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[allow(missing_docs)] // each kind is documented on its `Body` variant
        pub enum Kind {
            $($variant,)*
        }

        /// Number of event kinds.
        pub const KIND_COUNT: usize = Kind::ALL.len();

        impl Kind {
            /// Every kind, in tag order.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant,)*];

            /// The snake_case name used in export lines and NATS subjects.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Kind::$variant => $name,)*
                }
            }

            /// The wire tag: the variant's index in [`Body`], written as a u32.
            pub fn tag(self) -> u32 {
                self as u32
            }
        }

        impl Body {
            /// The kind of this body.
            pub fn kind(&self) -> Kind {
                match self {
                    $(Body::$variant(_) => Kind::$variant,)*
                }
            }
        }

        $(
            impl From<$variant> for Body {
                fn from(value: $variant) -> Self {
                    Body::$variant(value)
                }
            }
        )*
    };
}

kinds! {
    NodeRegistered => "node_registered",
    JobSubmitted => "job_submitted",
    JobAssigned => "job_assigned",
    JobSpilled => "job_spilled",
    Heartbeat => "heartbeat",
    NodeHealthChanged => "node_health_changed",
    JobRequeued => "job_requeued",
    JobReceipt => "job_receipt",
    OwnerCommand => "owner_command",
    Checkpoint => "checkpoint",
    Rejected => "rejected",
    ShardRegistered => "shard_registered",
    FabricGenesis => "fabric_genesis",
    AttestationMismatch => "attestation_mismatch",
    RefusalsCounted => "refusals_counted",
    SequencerTakeover => "sequencer_takeover",
    FederationReceipt => "federation_receipt",
    FederationFork => "federation_fork",
    ArtifactRecorded => "artifact_recorded",
}

crate::with_node_terms! {
    /// A node joins the marketplace (carried by [`OwnerAction::RegisterNode`]): its name,
    /// region and key, then its terms (see [`with_node_terms!`](crate::with_node_terms)).
    #[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct NodeRegistered {
        /// Node name, e.g. `earth.core-alpha`.
        pub node: String,
        /// The shard (region) it serves.
        pub region: String,
        /// The key that signs the node's heartbeats and receipts.
        pub node_key: PublicKey,
    }
}

/// A job enters a shard.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSubmitted {
    /// The job's identifier.
    pub job: JobId,
    /// The shard it is submitted to.
    pub shard: String,
    /// The workload kind, e.g. `finance.settlement`.
    pub workload: String,
    /// Skills a node must have to run it.
    pub skills: Vec<String>,
    /// How long it runs once started.
    pub duration_ticks: u32,
    /// The tick by which it should be done.
    pub deadline_tick: u64,
    /// What the client will pay, in millionths of a credit.
    pub budget_micros: u64,
    /// BLAKE3 of the job's input (content address).
    pub input_hash: Hash32,
}

/// A router places a job on a node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobAssigned {
    /// The job.
    pub job: JobId,
    /// The shard whose queue held it.
    pub shard: String,
    /// The node that runs it.
    pub node: String,
}

/// Why a job left a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpillReason {
    /// The shard's queue is over its budget.
    QueueOverBudget,
    /// No node of the shard can take the job.
    NoEligibleNode,
    /// The shard is paused.
    ShardPaused,
}

/// A job moves from one shard's queue to another's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpilled {
    /// The job.
    pub job: JobId,
    /// The shard it leaves.
    pub from_shard: String,
    /// The shard it joins.
    pub to_shard: String,
    /// Why.
    pub reason: SpillReason,
}

/// A node is alive.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The node.
    pub node: String,
    /// Jobs it is running now.
    pub running_jobs: u32,
}

/// A node's health changed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeHealthChanged {
    /// The node.
    pub node: String,
    /// Its new health.
    pub healthy: bool,
    /// The tick of the last heartbeat seen from it.
    pub last_heartbeat_tick: u64,
}

/// Why a job went back to a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequeueReason {
    /// Its node went silent.
    NodeUnhealthy,
    /// Its node is being drained.
    NodeDrained,
    /// An owner rerouted it.
    Rerouted,
    /// Its result failed verification.
    AttestationMismatch,
}

/// A job goes back to a shard's queue.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequeued {
    /// The job.
    pub job: JobId,
    /// The node it was on.
    pub node: String,
    /// The shard whose queue it joins.
    pub shard: String,
    /// Why.
    pub reason: RequeueReason,
}

/// How a job ended on its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    /// It produced its output.
    Completed,
    /// It failed on the node.
    Failed,
}

/// The kernel that computed a GPU job's output.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelRef {
    /// Kernel id, e.g. `embed`.
    pub id: String,
    /// Kernel version.
    pub version: u32,
    /// The adapter it ran on, as the node reports it.
    pub adapter: String,
    /// BLAKE3 of the job's input bytes (its content address; the job's `input_hash`).
    pub input_hash: Hash32,
}

/// A node reports a job's result.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobReceipt {
    /// The job.
    pub job: JobId,
    /// The node that ran it.
    pub node: String,
    /// How it ended.
    pub outcome: JobOutcome,
    /// BLAKE3 of its output.
    pub output_hash: Hash32,
    /// The kernel, for GPU jobs.
    pub kernel: Option<KernelRef>,
    /// Tick it started.
    pub started_tick: u64,
    /// Tick it finished.
    pub finished_tick: u64,
    /// The node's measured execution time of the job, in microseconds (None from a simulated
    /// node, whose jobs take logical time only).
    pub execution_us: Option<u64>,
}

/// What the owners ask for. Variants are appended, never reordered.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum OwnerAction {
    /// Stop assignments in every shard.
    PauseAll,
    /// Resume every shard.
    ResumeAll,
    /// Stop assignments in one shard.
    PauseShard {
        /// The shard.
        shard: String,
    },
    /// Resume one shard.
    ResumeShard {
        /// The shard.
        shard: String,
    },
    /// Change a shard's queue budget.
    SetQueueBudget {
        /// The shard.
        shard: String,
        /// Jobs it may hold queued before spilling.
        queue_budget: u32,
    },
    /// Change a shard's latency budget.
    SetLatencyBudget {
        /// The shard.
        shard: String,
        /// Largest node latency it accepts.
        latency_budget_ms: u32,
    },
    /// Change where a shard spills to, in order of preference.
    SetSpillover {
        /// The shard.
        shard: String,
        /// Target shards, first preferred.
        targets: Vec<String>,
    },
    /// Give a node no new jobs.
    DrainNode {
        /// The node.
        node: String,
    },
    /// Remove a node and its key.
    RetireNode {
        /// The node.
        node: String,
    },
    /// Cancel a job.
    CancelJob {
        /// The job.
        job: JobId,
    },
    /// Move a job to another shard.
    RerouteJob {
        /// The job.
        job: JobId,
        /// The shard it goes to.
        shard: String,
    },
    /// Take a checkpoint at the next tick.
    CheckpointNow,
    /// Change the checkpoint interval.
    SetCheckpointInterval {
        /// Ticks between checkpoints.
        interval_ticks: u32,
    },
    /// An opaque governance payload, recorded as is.
    Governance {
        /// The payload bytes (hex in JSON).
        #[serde(with = "crate::hex_serde")]
        payload: Vec<u8>,
    },
    /// A shard joins the fabric; its router key may then route its queue.
    RegisterShard {
        /// The shard, its router key, budgets, spillover rules and treaty terms.
        registration: ShardRegistered,
    },
    /// A shard leaves the fabric: it takes no more jobs and assigns nothing; its queue spills
    /// to its neighbours or is cancelled. Jobs already running finish.
    RetireShard {
        /// The shard.
        shard: String,
        /// What happens to its queued jobs.
        queue: RetiredQueue,
    },
    /// A node joins the marketplace; its key may then author heartbeats and receipts.
    RegisterNode {
        /// The node, its key and its terms.
        registration: NodeRegistered,
    },
    /// Change a node's terms.
    UpdateNode {
        /// The node.
        node: String,
        /// Jobs it may run at once (at least 1).
        max_concurrency: u32,
        /// Its round-trip latency.
        latency_ms: u32,
        /// Its price, in millionths of a credit per hour.
        price_micros_per_hour: u64,
    },
    /// Change a shard's treaty terms.
    SetTreaty {
        /// The shard.
        shard: String,
        /// Nodes under this reputation score zero.
        reputation_floor_ppm: u32,
        /// Origin regions whose jobs its nodes serve.
        regions_served: Vec<String>,
        /// Jobs one node may take per quota window.
        node_quota_jobs: u32,
        /// Length of a quota window (at least 1).
        quota_window_ticks: u32,
    },
    /// A client key may then submit jobs.
    RegisterClient {
        /// A name for the client (unique).
        client: String,
        /// Its key.
        key: PublicKey,
    },
    /// Give a drained node work again.
    ResumeNode {
        /// The node.
        node: String,
    },
    /// Replace a key the fabric knows by a new one: from the next seq on the old key's
    /// signatures are refused (`retired_key`) and the new key's accepted. A ledger rotation's
    /// own envelope is signed by the old ledger key.
    RotateKey {
        /// Whose key.
        target: KeyTarget,
        /// The key that replaces it (held by no one yet).
        new_key: PublicKey,
    },
    /// A model joins the fabric: jobs whose workload is `model_id@model_version` run it.
    RegisterModel {
        /// The model's id, version, job type and weights.
        registration: ModelRegistered,
    },
    /// A replica's key joins the sequencers of a replicated fabric: it may take over the log
    /// (docs/FORMAT.md §16).
    RegisterSequencer {
        /// Its key (held by no one yet).
        key: PublicKey,
    },
    /// A sequencer leaves the set: it may take over no more (the acting one cannot leave).
    RetireSequencer {
        /// Its key.
        key: PublicKey,
    },
    /// A key may then record artifacts (`artifact_recorded`), as the recorder `recorder`.
    RegisterRecorder {
        /// A name for the recorder (unique).
        recorder: String,
        /// Its key (held by no one else in the fabric).
        key: PublicKey,
    },
}

/// Whose key a [`OwnerAction::RotateKey`] replaces. Variants are appended, never reordered.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(tag = "holder", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyTarget {
    /// The ledger key (checkpoints, rejections, owner-command envelopes, tree heads).
    Ledger,
    /// The router key of a shard.
    Router {
        /// The shard.
        shard: String,
    },
    /// A registered client's key.
    Client {
        /// The client's name.
        client: String,
    },
    /// A node's key.
    Node {
        /// The node.
        node: String,
    },
    /// A registered recorder's key.
    Recorder {
        /// The recorder's name.
        recorder: String,
    },
}

/// What a retired shard's queued jobs become.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetiredQueue {
    /// Each moves to the first of the shard's spillover targets still in service (cancelled
    /// when there is none).
    Spill,
    /// Each is cancelled.
    Cancel,
}

/// One owner's approval of a command.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The owner's key.
    pub owner: PublicKey,
    /// Its signature over [`OwnerCommand::approval_message`].
    pub signature: SignatureBytes,
}

/// The owners steer the fabric.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerCommand {
    /// What to do.
    pub action: OwnerAction,
    /// The last tick at which the command may still be applied.
    pub expiry_tick: u64,
    /// M or more distinct owner approvals.
    pub approvals: Vec<Approval>,
}

/// What each owner approval signs: the command without the approvals, bound to its nonce.
#[derive(Encode)]
struct ApprovalScope<'a> {
    nonce: u64,
    expiry_tick: u64,
    action: &'a OwnerAction,
}

impl OwnerCommand {
    /// Domain prefix of an approval message (distinct from event and tree-head messages).
    pub const APPROVAL_DOMAIN: &'static [u8] = b"FABRICv1-owner-approval";

    /// The bytes every owner signs to approve this command under `nonce`:
    /// `FABRICv1-owner-approval` ‖ nonce (u64 LE) ‖ expiry_tick (u64 LE) ‖ canonical action.
    pub fn approval_message(&self, nonce: u64) -> Vec<u8> {
        let scope = ApprovalScope {
            nonce,
            expiry_tick: self.expiry_tick,
            action: &self.action,
        };
        let mut message = Self::APPROVAL_DOMAIN.to_vec();
        crate::codec::encode_canonical_into(&scope, &mut message);
        message
    }

    /// Adds `owner`'s approval of this command under `nonce`.
    pub fn approve(&mut self, nonce: u64, owner: &crate::SigningKey) {
        use ed25519_dalek::Signer;
        let signature = owner.sign(&self.approval_message(nonce));
        self.approvals.push(Approval {
            owner: PublicKey::from(&owner.verifying_key()),
            signature: signature.into(),
        });
    }
}

/// The ledger commits to a state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Number of entries covered (the tree size).
    pub tree_size: u64,
    /// Merkle root over those entries.
    pub merkle_root: Hash32,
    /// Hash of the projected state after them.
    pub state_hash: Hash32,
    /// Hash of the stored state snapshot.
    pub snapshot_hash: Hash32,
}

/// Why an attempt was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The signature does not verify.
    BadSignature,
    /// The bytes are not a canonical event.
    Malformed,
    /// The event is over the size limit.
    Oversize,
    /// The author's key is not registered.
    UnknownKey,
    /// The author's key was retired.
    RetiredKey,
    /// The key may not author this kind in this role.
    WrongRole,
    /// Fewer than M distinct owner approvals.
    TooFewOwnerSignatures,
    /// The same owner approved twice.
    DuplicateOwnerSigner,
    /// The nonce was seen before.
    ReplayedNonce,
    /// The command expired.
    ExpiredNonce,
    /// The shard is paused.
    ShardPaused,
    /// The author's key is a small-order point.
    WeakKey,
    /// The event is authorised but does not fit the state (an unknown shard, a job that is
    /// not queued, a name registered twice).
    Invalid,
}

impl RejectReason {
    /// Every reason, in tag order.
    pub const ALL: [RejectReason; 13] = [
        RejectReason::BadSignature,
        RejectReason::Malformed,
        RejectReason::Oversize,
        RejectReason::UnknownKey,
        RejectReason::RetiredKey,
        RejectReason::WrongRole,
        RejectReason::TooFewOwnerSignatures,
        RejectReason::DuplicateOwnerSigner,
        RejectReason::ReplayedNonce,
        RejectReason::ExpiredNonce,
        RejectReason::ShardPaused,
        RejectReason::WeakKey,
        RejectReason::Invalid,
    ];

    /// The snake_case name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadSignature => "bad_signature",
            RejectReason::Malformed => "malformed",
            RejectReason::Oversize => "oversize",
            RejectReason::UnknownKey => "unknown_key",
            RejectReason::RetiredKey => "retired_key",
            RejectReason::WrongRole => "wrong_role",
            RejectReason::TooFewOwnerSignatures => "too_few_owner_signatures",
            RejectReason::DuplicateOwnerSigner => "duplicate_owner_signer",
            RejectReason::ReplayedNonce => "replayed_nonce",
            RejectReason::ExpiredNonce => "expired_nonce",
            RejectReason::ShardPaused => "shard_paused",
            RejectReason::WeakKey => "weak_key",
            RejectReason::Invalid => "invalid",
        }
    }

    /// The wire tag (the variant's index).
    pub fn tag(self) -> usize {
        self as usize
    }
}

/// The ledger records a refused attempt.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejected {
    /// BLAKE3 of the refused `signed` bytes.
    pub attempt_hash: Hash32,
    /// The key that claimed to author it.
    pub claimed_author: PublicKey,
    /// Why it was refused.
    pub reason: RejectReason,
    /// A human-readable detail.
    pub detail: String,
}

crate::with_shard_terms! {
    /// A shard joins the fabric (carried by [`OwnerAction::RegisterShard`]): its name and
    /// router key, then its terms (see [`with_shard_terms!`](crate::with_shard_terms)). Its
    /// router key routes its queue; its treaty terms decide which nodes may score above zero.
    #[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ShardRegistered {
        /// Shard name, e.g. `earth`; also the region its nodes live in.
        pub shard: String,
        /// The key that signs the shard's routing decisions.
        pub router_key: PublicKey,
    }
}

/// The first event of every log, signed by the ledger key: who the ledger is and who the
/// owners are. Every later event is judged against it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FabricGenesis {
    /// The ledger key: it signs this event, checkpoints, rejections, tree heads and the
    /// envelopes of owner commands.
    pub ledger_key: PublicKey,
    /// The owners' keys (distinct).
    pub owners: Vec<PublicKey>,
    /// Distinct owner approvals an owner command needs (1 ≤ M ≤ owners).
    pub owner_threshold: u32,
    /// Where every key of the fabric comes from: held by its operator and owners, or derived
    /// from a public seed (a simulation, whose keys anyone can compute).
    pub key_origin: KeyOrigin,
}

/// Where the keys of a fabric come from, as its genesis says. Variants are appended, never
/// reordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(tag = "origin", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyOrigin {
    /// Made by the operator and the owners on their own machines (`fabric keygen`); only the
    /// public keys are in the log.
    Operator,
    /// Derived from the public `seed`: anyone can sign as any actor. Only for simulations.
    Simulation {
        /// The seed every key derives from.
        seed: u64,
    },
}

impl KeyOrigin {
    /// Whether the keys are public (derived from a seed).
    pub fn is_simulation(self) -> bool {
        matches!(self, KeyOrigin::Simulation { .. })
    }
}

impl std::fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyOrigin::Operator => f.write_str("operator keys"),
            KeyOrigin::Simulation { seed } => {
                write!(
                    f,
                    "simulation keys of seed {seed} (simulation: keys are public)"
                )
            }
        }
    }
}

/// A node's receipt that re-execution contradicts, with the node's own signed words as
/// evidence.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationMismatch {
    /// The job.
    pub job: JobId,
    /// The node whose receipt is contradicted.
    pub node: String,
    /// The kernel, adapter and input the node reported.
    pub kernel: KernelRef,
    /// BLAKE3 of the output re-execution gave.
    pub expected_output_hash: Hash32,
    /// BLAKE3 the node reported.
    pub reported_output_hash: Hash32,
    /// The node's signed receipt: author (32) ‖ signature (64) ‖ `signed` (hex in JSON).
    #[serde(with = "crate::hex_serde")]
    pub evidence: Vec<u8>,
}

/// How many refused attempts of one tick had one reason.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusalCount {
    /// The reason.
    pub reason: RejectReason,
    /// Attempts refused for it (at least 1).
    pub attempts: u64,
}

/// The refused attempts of one tick that carried no valid signature of a registered key
/// (malformed, bad signature, weak or unknown key, oversize, an owner command without one
/// valid approval of an owner), counted instead of each recorded. Signed by the ledger key
/// at the tick it counts; it stands before the tick's admitted submissions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusalsCounted {
    /// One count per reason that had any, in the reasons' tag order (each reason once). Empty
    /// only when the event marks the tick its submissions are sequenced at (a submission
    /// signed for an earlier tick, and no event of this tick before it).
    pub counts: Vec<RefusalCount>,
}

/// A registered sequencer takes over a replicated fabric's log (docs/FORMAT.md §16), signed
/// by its own key, as the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequencerTakeover {
    /// The term it opens: one more than the log's last (the genesis opens term 0).
    pub term: u64,
    /// The sequencer's key: the event's author, the ledger key in force after it.
    pub sequencer: PublicKey,
}
