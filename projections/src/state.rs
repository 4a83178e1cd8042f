//! [`State`]: the fold of the log into shards, nodes, jobs and metrics.
//!
//! Names are interned into dense indices as they first appear, in log order, so every index
//! is a function of the log alone. Maps are used only for lookups and never iterated into
//! anything observable: what the state shows and hashes is ordered by those indices.
//!
//! The module is split by concern; everything public is re-exported here:
//!
//! - `model`: the types ([`State`], [`Shard`], [`Node`], [`Job`], [`Metrics`], ...) and their
//!   read-only queries.
//! - `fold`: [`State::apply`], one step per event kind, and [`ApplyError`].
//! - `owner`: the effects of owner commands.
//! - `queues`: the derived per-shard indices (class queues with lazy removal, capable-node
//!   lists, resolved spillover and served regions).
//! - `snapshot`: [`State::snapshot_bytes`], [`State::from_snapshot_bytes`], [`state_hash_of`].
//! - `authority`: [`State::admit`], who may author what ([`Authority`]).
//! - `covenant`: federation receipts and forks, recorders and recorded artifacts.
//! - `invariants`: [`State::check_invariants`], a full consistency check for tests; the fold
//!   itself checks in debug builds only what costs O(1) (or O(touched entity)) per event.
//!
//! The limits below bound the indices and masks; compile-time assertions at the end tie them
//! to the integers that hold them.

mod authority;
mod covenant;
mod fold;
mod invariants;
mod model;
mod owner;
mod queues;
mod snapshot;

pub use authority::{Authority, Holder, KeyRecord, OWNER_COMMAND_LIFETIME_TICKS_MAX};
pub use covenant::{Covenant, FederationPeer};
pub use fold::ApplyError;
pub use invariants::InvariantError;
pub use model::{
    IdRanges, Job, JobClass, JobStatus, Metrics, Model, Node, Sequencing, Shard, ShardCounters,
    SkillSet, State, StatusChange,
};
pub use snapshot::{state_hash_of, SnapshotError};

/// Index of a shard, in registration order.
pub type ShardIx = u16;
/// Index of a node, in registration order.
pub type NodeIx = u32;
/// Index of a job, in submission order.
pub type JobIx = u32;
/// Index of a job class (skills + origin region), in order of first appearance.
pub type ClassIx = u32;

/// Most shards a fabric has (visited shards are a 64-bit mask).
pub const SHARDS_MAX: usize = 64;
/// Most distinct skills (a skill set is a 128-bit mask).
pub const SKILLS_MAX: usize = 128;
/// Most distinct job classes.
pub const CLASSES_MAX: usize = 4096;
/// Most jobs one state holds.
pub const JOBS_MAX: usize = u32::MAX as usize - 1;
/// Reputation gained per completed job.
pub const REPUTATION_COMPLETED_PPM: u32 = 1_000;
/// Reputation lost per failed job.
pub const REPUTATION_FAILED_PPM: u32 = 20_000;
/// Reputation lost per outage.
pub const REPUTATION_OUTAGE_PPM: u32 = 50_000;
/// Reputation lost per receipt that re-execution contradicts.
pub const REPUTATION_ATTESTATION_PPM: u32 = 20_000;
/// Ticks a node's treaty is halted (no new assignments) after an attestation mismatch.
pub const ATTESTATION_HALT_TICKS: u64 = 10;
/// Latencies above this many ticks share the histogram's last bucket.
pub const LATENCY_HISTOGRAM_TICKS: usize = 4096;

const PPM: u32 = 1_000_000;
const NO_NODE: NodeIx = NodeIx::MAX;

// The limits fit the integers and masks that hold them.
// A job's `visited` shards and a shard's served regions are one bit per shard in a u64.
const _: () = assert!(SHARDS_MAX <= u64::BITS as usize);
const _: () = assert!(SHARDS_MAX <= ShardIx::MAX as usize + 1);
// A skill set is one bit per skill in a u128; the skill index is a u8.
const _: () = assert!(SKILLS_MAX <= u128::BITS as usize);
const _: () = assert!(SKILLS_MAX <= u8::MAX as usize + 1);
// Class indices stay below `ClassIx::MAX`, which ends a shard's queues in a snapshot.
const _: () = assert!(CLASSES_MAX < ClassIx::MAX as usize);
// Job slots are `JobIx`es.
const _: () = assert!(JOBS_MAX <= JobIx::MAX as usize);
// Reputation is in parts per million: no single change is more than the whole.
const _: () = assert!(
    REPUTATION_COMPLETED_PPM <= PPM
        && REPUTATION_FAILED_PPM <= PPM
        && REPUTATION_OUTAGE_PPM <= PPM
        && REPUTATION_ATTESTATION_PPM <= PPM
);
// A mismatch halts a treaty for at least one tick; the latency histogram has a bucket per tick
// up to its limit and one more for everything longer.
const _: () = assert!(ATTESTATION_HALT_TICKS > 0 && LATENCY_HISTOGRAM_TICKS > 0);
