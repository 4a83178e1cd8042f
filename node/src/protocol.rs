//! The node protocol on NATS (docs/FORMAT.md §15): subjects, and the bodies the server and its
//! nodes exchange: JSON, except the work batch (bytes, [`crate::work`]). Both sides use these types: the server (`fabric-server`) answers and
//! publishes, the agent ([`crate::agent`]) asks and subscribes.
//!
//! Every body is a JSON object whose keys are declared in alphabetical order, as the HTTP API's
//! are. Signed events travel as [`WireSignedEvent`]s (wire format v1 bytes in base64); log
//! entries, in work batches, as wire format v1 entries with their inclusion proofs against a
//! tree head signed by the ledger key.
//!
//! | subject | from → to | body | answer |
//! | --- | --- | --- | --- |
//! | `fabric.v1.tick` | server → every node | [`TickHead`] | none |
//! | `fabric.v1.node.<token>.work` | server → the node | [`WorkBatch`] | none |
//! | `fabric.v1.node.<token>.hello` | node → server (request) | [`Hello`] | [`Welcome`] |
//! | `fabric.v1.node.<token>.attempts` | node → server (request) | [`AttemptBatch`] | [`AttemptAck`] |
//! | `fabric.v1.node.<token>.fetch` | node → server (request) | [`Fetch`] | [`Fetched`] |
//!
//! `<token>` is the node's name with each `.` written as `:` ([`node_token`]): node names are
//! `[a-z0-9._-]`, so the mapping is one to one and a name is one subject token.

use fabric_api::wire::WireSignedEvent;
use fabric_events::{Hash32, JobId};
use fabric_ledger::SignedTreeHead;
use serde::{Deserialize, Serialize};

pub use crate::work::{ProvedEntry, WorkBatch, WorkDecodeError, WorkOrder};

/// The subject of every tick's signed tree head.
pub const TICK_SUBJECT: &str = "fabric.v1.tick";
/// The first tokens of every node's subjects.
pub const NODE_SUBJECT_PREFIX: &str = "fabric.v1.node";
/// Most signed events one [`AttemptBatch`] carries.
pub const ATTEMPTS_PER_BATCH_MAX: usize = 256;
/// Most bytes of one job output (its [`AttemptBatch::outputs`] entry, decoded).
pub const OUTPUT_BYTES_MAX: usize = 64 * 1024;
/// Most bytes of one message body on these subjects (NATS's default payload limit is 1 MiB).
pub const MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Most requests of one node (`hello`, `attempts`, `fetch`) the server works on at once;
/// the next ones are answered `{"error": …}` at once, unread, until one is answered.
pub const NODE_REQUESTS_IN_FLIGHT_MAX: usize = 32;

/// The subject token of a node name: `.` written as `:`.
pub fn node_token(node: &str) -> String {
    node.replace('.', ":")
}

/// The node name of a subject token (the inverse of [`node_token`]).
pub fn node_of_token(token: &str) -> String {
    token.replace(':', ".")
}

/// What a node subject is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeSubject {
    /// `work`: the node's assignments.
    Work,
    /// `hello`: a node starts.
    Hello,
    /// `attempts`: heartbeats and receipts.
    Attempts,
    /// `fetch`: an input by content address.
    Fetch,
}

impl NodeSubject {
    /// Its last token.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeSubject::Work => "work",
            NodeSubject::Hello => "hello",
            NodeSubject::Attempts => "attempts",
            NodeSubject::Fetch => "fetch",
        }
    }

    /// The subject of `node`.
    pub fn of(self, node: &str) -> String {
        format!(
            "{NODE_SUBJECT_PREFIX}.{}.{}",
            node_token(node),
            self.as_str()
        )
    }

    /// The node and kind of a subject, if it is a node subject the server answers.
    pub fn parse(subject: &str) -> Option<(String, NodeSubject)> {
        let rest = subject
            .strip_prefix(NODE_SUBJECT_PREFIX)?
            .strip_prefix('.')?;
        let (token, kind) = rest.split_once('.')?;
        let kind = match kind {
            "hello" => NodeSubject::Hello,
            "attempts" => NodeSubject::Attempts,
            "fetch" => NodeSubject::Fetch,
            _ => return None,
        };
        (!token.is_empty()).then(|| (node_of_token(token), kind))
    }
}

/// After each appended tick, on [`TICK_SUBJECT`]: the fabric's clock and its signed tree head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TickHead {
    /// The tick just appended.
    pub tick: u64,
    /// The tree head after it.
    pub tree_head: SignedTreeHead,
}

/// A node's first request: who it is to the fabric.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {}

/// The answer to [`Hello`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    /// Ticks between the node's heartbeats (its registration).
    pub heartbeat_interval_ticks: u32,
    /// The highest nonce the log holds from the node's key (its next events must be above).
    pub last_nonce: Option<u64>,
    /// Jobs it may run at once.
    pub max_concurrency: u32,
    /// The node.
    pub node: String,
    /// The fabric's tick.
    pub tick: u64,
    /// The newest signed tree head.
    pub tree_head: SignedTreeHead,
    /// The work the log says it runs now (after a restart: to finish or to hand back): a
    /// [`WorkBatch`] without inputs, standard base64, as much as fits in one message; the node
    /// says hello again for the rest.
    pub work: String,
}

/// Heartbeats and receipts, each signed by the node's key, in nonce order; and the output of
/// each completed receipt.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptBatch {
    /// The signed events (at most [`ATTEMPTS_PER_BATCH_MAX`]).
    pub events: Vec<WireSignedEvent>,
    /// The outputs of the batch's completed receipts, standard base64, each at most
    /// [`OUTPUT_BYTES_MAX`] bytes; matched to a receipt by its BLAKE3 (`output_hash`).
    pub outputs: Vec<String>,
}

/// What became of one event of an [`AttemptBatch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptResult {
    /// Why it was refused (`null` when it was not).
    pub detail: Option<String>,
    /// The refusal's reason (a `rejected` reason), `null` when it was not refused.
    pub reason: Option<String>,
    /// Where it is in the log: the event's own seq, the seq of an earlier copy of it
    /// (`duplicate`), or of the `rejected` / `refusals_counted` event standing for it.
    pub seq: Option<u64>,
    /// `admitted`, `duplicate` (the log holds this receipt already), `refused`, `counted`
    /// (refused, counted in the tick's `refusals_counted`) or `unanswered` (the server
    /// stopped before its tick).
    pub status: String,
}

/// The answer to an [`AttemptBatch`], sent once the tick holding its events is durable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptAck {
    /// A refusal of the whole batch (malformed, too large, outputs not matching): `null` when
    /// the events were judged one by one.
    pub error: Option<String>,
    /// One per event, in order.
    pub results: Vec<AttemptResult>,
    /// The jobs the log says the node runs after the batch's tick.
    pub running: Vec<JobId>,
    /// The tick the batch was sequenced at.
    pub tick: u64,
}

/// An input by content address: only the input of a job the node runs now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fetch {
    /// BLAKE3 of the bytes.
    pub hash: Hash32,
}

/// The answer to [`Fetch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fetched {
    /// The bytes, standard base64 (`null` with an error).
    pub bytes: Option<String>,
    /// Why there are no bytes.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_their_node_and_kind() {
        let subject = NodeSubject::Attempts.of("earth.core-alpha");
        assert_eq!(subject, "fabric.v1.node.earth:core-alpha.attempts");
        assert_eq!(
            NodeSubject::parse(&subject),
            Some(("earth.core-alpha".to_owned(), NodeSubject::Attempts))
        );
        assert_eq!(NodeSubject::parse("fabric.v1.node.x.work"), None);
        assert_eq!(NodeSubject::parse("fabric.v1.node..hello"), None);
        assert_eq!(NodeSubject::parse("fabric.v1.nodes.x.hello"), None);
    }
}
