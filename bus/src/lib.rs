//! Fabric on NATS: every appended event published to JetStream through an outbox, and a
//! subscriber that checks what it receives.
//!
//! - [`subject`]: where an event is published, `fabric.events.<shard>.<kind>`.
//! - [`Outbox`]: a thread of its own that tails the durable log from a cursor kept in the
//!   ledger's folder and publishes each entry's export line, in seq order, with `Nats-Msg-Id`
//!   = seq. The writer only tells it how far the log is durable; an outage of NATS never
//!   blocks or loses an append (the backlog waits in the log itself and is sent when the
//!   server is back).
//! - [`replication`]: the replicated log of a fabric served by several replicas: the
//!   sequencer's appends on a stream of a NATS cluster, fenced so that it never forks, and
//!   read back by the replicas that follow it; [`lease`]: which replica sequences.
//! - [`tail`]: reads the stream back, verifying every signature and chain link and reporting
//!   gaps, duplicates and bad lines.
//!
//! Architecture invariant: nothing is published before it is durable, and the cursor only
//! moves past an entry once JetStream has acknowledged it; so every seq reaches the stream,
//! and a republished one is dropped there as a duplicate of its `Nats-Msg-Id`.
#![deny(missing_docs)]

pub mod lease;
pub mod outbox;
pub mod replication;
pub mod subject;
mod tail;

use std::time::Duration;

use thiserror::Error;

pub use lease::{Lease, LeaseHolder};
pub use outbox::{Outbox, OutboxReport};
pub use replication::{
    LogLogin, LogMessage, ReplicationError, Replicator, ReplicatorConfig, LOG_REPLICAS_DEFAULT,
    LOG_STREAM, LOG_SUBJECT,
};
pub use tail::{tail, Checker, TailEvent, TailOptions, TailReport, TailWarning};

/// The JetStream stream that holds the log.
pub const STREAM: &str = "FABRIC_EVENTS";
/// Subjects of the stream.
pub const STREAM_SUBJECTS: &str = "fabric.events.>";
/// How long JetStream remembers a `Nats-Msg-Id` to drop a republished message. Longer than
/// the 2 minutes default: an outbox restarted after a crash republishes from its last saved
/// cursor, and the restart may take a while.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(60 * 60);

/// How long a publisher waits for JetStream to make or find its stream (a cluster just
/// started elects its leader first).
pub const STREAM_WAIT: Duration = Duration::from_secs(30);

/// Why publishing or tailing failed.
#[derive(Debug, Error)]
pub enum BusError {
    /// The server cannot be reached or refused the connection.
    #[error("cannot connect to NATS at {url}: {detail}")]
    Connect {
        /// The server's URL.
        url: String,
        /// What the client said.
        detail: String,
    },
    /// The stream cannot be created, or exists with settings that do not fit.
    #[error("JetStream stream {STREAM}: {0}")]
    Stream(String),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] fabric_ledger::LedgerError),
    /// The outbox's runtime could not start.
    #[error("the NATS outbox could not start: {0}")]
    Runtime(String),
    /// The backlog was not sent before the deadline.
    #[error(
        "{left} events (seqs {first}..{end}) are not yet on NATS after waiting {waited_s} s; they \
         stay in the outbox and are sent by the next `fabric resume --nats`"
    )]
    Backlog {
        /// Events left.
        left: u64,
        /// First seq not published.
        first: u64,
        /// The log's size.
        end: u64,
        /// How long the outbox waited.
        waited_s: u64,
    },
    /// The subscriber failed.
    #[error("tailing the stream failed: {0}")]
    Tail(String),
    /// The replicated log's stream cannot be made, found or read.
    #[error("JetStream stream {LOG_STREAM}: {0}")]
    LogStream(String),
    /// The replicated log cannot be sequenced from this data folder.
    #[error("the replicated log ({LOG_STREAM}): {0}")]
    Replication(#[from] ReplicationError),
}

/// Runs `connect`, then `run` with what it made, on a thread of its own with a current-thread
/// tokio runtime; returns once `connect` has finished, with its error when it failed, so a
/// caller learns at once that the cluster cannot be reached.
pub(crate) fn spawn_connected<S, Connect, Run>(
    name: &str,
    connect: impl FnOnce() -> Connect + Send + 'static,
    run: impl FnOnce(S) -> Run + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, BusError>
where
    Connect: std::future::Future<Output = Result<S, BusError>>,
    Run: std::future::Future<Output = ()>,
{
    let (ready_sender, ready) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_sender.send(Err(BusError::Runtime(error.to_string())));
                    return;
                }
            };
            runtime.block_on(async move {
                match connect().await {
                    Ok(connected) => {
                        let _ = ready_sender.send(Ok(()));
                        run(connected).await;
                    }
                    Err(error) => {
                        let _ = ready_sender.send(Err(error));
                    }
                }
            })
        })
        .map_err(|error| BusError::Runtime(error.to_string()))?;
    match ready.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(BusError::Runtime(format!("the {name} thread stopped"))),
    }
}

/// The stream's settings: see docs/FORMAT.md §12 for why each is what it is.
pub fn stream_config() -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
    Config {
        name: STREAM.to_owned(),
        subjects: vec![STREAM_SUBJECTS.to_owned()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: 1,
        deny_delete: true,
        deny_purge: true,
        ..Config::default()
    }
}

/// Creates the stream, or checks that the one there holds the log's subjects in files.
pub async fn ensure_stream(
    jetstream: &async_nats::jetstream::Context,
) -> Result<async_nats::jetstream::stream::Stream, BusError> {
    use async_nats::jetstream::stream::StorageType;
    let wanted = stream_config();
    // A cluster just started may still be electing its JetStream leader: ask again for a while.
    let deadline = std::time::Instant::now() + STREAM_WAIT;
    let mut stream = loop {
        match jetstream.get_or_create_stream(wanted.clone()).await {
            Ok(stream) => break stream,
            Err(err) if std::time::Instant::now() >= deadline => {
                return Err(BusError::Stream(err.to_string()))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let info = stream
        .info()
        .await
        .map_err(|err| BusError::Stream(err.to_string()))?;
    let config = &info.config;
    if !config.subjects.iter().any(|s| s == STREAM_SUBJECTS) {
        return Err(BusError::Stream(format!(
            "exists with subjects {:?}, not {STREAM_SUBJECTS}",
            config.subjects
        )));
    }
    if config.storage != StorageType::File {
        return Err(BusError::Stream(
            "exists with memory storage; the log needs file storage".to_owned(),
        ));
    }
    Ok(stream)
}
