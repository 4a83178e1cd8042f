//! What can stop `fabric serve` from starting, serving or stopping cleanly.

use std::path::PathBuf;

use fabric_events::{Hash32, JobId};
use thiserror::Error;

/// Why the server could not start, went down, or could not finish cleanly.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A setting is out of range.
    #[error("{0}")]
    Setting(&'static str),
    /// The sequencer's replicated log cannot start.
    #[error("--nats {urls}: {error}")]
    Replicate {
        /// The cluster's servers.
        urls: String,
        /// Why.
        error: fabric_bus::BusError,
    },
    /// A replica lost its place as sequencer to another.
    #[error("deposed: {0}")]
    Deposed(String),
    /// The follower of a replicated log could not start, or stopped.
    #[error("following the replicated log: {0}")]
    Follow(String),
    /// The log does not replay: an entry could not be read, does not decode or does not fit.
    #[error("the log does not replay: {error}")]
    Replay {
        /// Why.
        error: fabric_audit::ReplayError,
    },
    /// The artifact store could not be opened.
    #[error("could not open the artifact store: {error}")]
    ArtifactStore {
        /// Why.
        error: fabric_ledger::LedgerError,
    },
    /// A completed job's receipt names another output than its artifact gives.
    #[error(
        "the receipt of job {job} (seq {seq}) names output {named}, its result artifact gives \
         {derived}: no artifact stored"
    )]
    ArtifactMismatch {
        /// The job.
        job: JobId,
        /// Seq of the receipt.
        seq: u64,
        /// The output hash the receipt names.
        named: Hash32,
        /// The output hash of the artifact.
        derived: Hash32,
    },
    /// An artifact could not be stored.
    #[error("could not store the artifact of job {job}: {error}")]
    ArtifactWrite {
        /// The job.
        job: JobId,
        /// Why.
        error: fabric_ledger::LedgerError,
    },
    /// The thread that asks the witnesses could not start.
    #[error("could not start asking the witnesses: {error}")]
    Witnesses {
        /// Why.
        error: std::io::Error,
    },
    /// A TCP address could not be bound.
    #[error("could not listen on {address}: {error}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        error: std::io::Error,
    },
    /// The Unix socket path holds something that is not a socket.
    #[error("--unix {} exists and is not a socket", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The Unix socket could not be set up.
    #[error("{what} {}: {error}", path.display())]
    Socket {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// SIGTERM or SIGINT cannot be listened for.
    #[error("could not listen for SIGTERM and SIGINT: {error}")]
    Signal {
        /// Why.
        error: std::io::Error,
    },
    /// The node gateway could not start.
    #[error("the node gateway: {detail}")]
    NodeGateway {
        /// What failed.
        detail: String,
    },
    /// An entry the node feed proves could not be read.
    #[error("the node feed could not read entry {seq}: {error}")]
    NodeFeed {
        /// The entry.
        seq: u64,
        /// Why.
        error: fabric_ledger::LedgerError,
    },
    /// An entry the node feed proves is outside the tree.
    #[error("the node feed cannot prove entry {seq} in a tree of {size}")]
    NodeFeedRange {
        /// The entry.
        seq: u64,
        /// The tree size.
        size: u64,
    },
    /// NATS publication could not start.
    #[error("--nats {url}: cannot publish there: {error}")]
    Nats {
        /// The server.
        url: String,
        /// Why.
        error: fabric_bus::BusError,
    },
    /// NATS did not take every event before the drain deadline.
    #[error(
        "not every event reached NATS; the next `fabric serve --nats` publishes the rest: {error}"
    )]
    Drain {
        /// Why.
        error: fabric_bus::BusError,
    },
    /// The driver task panicked.
    #[error("the serve driver panicked")]
    DriverPanicked,
    /// The fabric (driver, actors, ledger) stopped with an error.
    #[error("the fabric stopped: {error}")]
    Fabric {
        /// Why.
        error: fabric_actors::RunError,
    },
    /// The HTTP server failed.
    #[error("the HTTP server failed: {error}")]
    Http {
        /// Why.
        error: std::io::Error,
    },
    /// The file-descriptor limit could not be read or raised.
    #[error("could not raise the file-descriptor limit (RLIMIT_NOFILE): {error}")]
    Rlimit {
        /// Why.
        error: std::io::Error,
    },
    /// The file-descriptor limit leaves too few descriptors for connections.
    #[error(
        "the file-descriptor limit is {limit}: serving needs at least {needed} (raise `ulimit -n`)"
    )]
    FdLimit {
        /// The limit (its hard value).
        limit: u64,
        /// The least that serves.
        needed: u64,
    },
    /// `--connections-max` is out of range.
    #[error(
        "--connections-max {cap}: give {least} to {most} (the file-descriptor limit less the \
         connections kept for /v0/health)"
    )]
    ConnectionCap {
        /// The cap asked for.
        cap: usize,
        /// The least.
        least: usize,
        /// The most.
        most: usize,
    },
    /// A TLS file does not serve.
    #[error("{}: {what}", path.display())]
    Tls {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// Plaintext on an address that is not loopback, without `--insecure-plaintext`.
    #[error(
        "--listen {address} is not a loopback address: serve it with TLS (--tls-cert and \
         --tls-key), or say --insecure-plaintext to send requests and answers in the clear"
    )]
    Plaintext {
        /// The address.
        address: String,
    },
}
