//! The replicated log (docs/FORMAT.md §16): the sequencer's appends on a JetStream stream
//! that a NATS cluster replicates with Raft, fenced so that the log can never fork, and read
//! back by the replicas that follow it.
//!
//! - [`LogMessage`]: one message of stream [`LOG_STREAM`], a run of consecutive entries with
//!   the tree head their sequencer signed at their end; strict, bounded decoding.
//! - [`Replicator`]: the sequencer's side, a thread of its own. [`Replicator::replicate`]
//!   publishes the durable log up to a size and answers once the stream's quorum holds all of
//!   it. Each message expects the stream's last sequence to be the one before it
//!   (`Nats-Expected-Last-Sequence`), so a message built on anything but the stream's end is
//!   refused by the stream itself: a sequencer whose place another took is told
//!   [`ReplicationError::Deposed`] and acknowledges nothing more.
//! - [`connect_log`], [`log_messages`]: the followers' side, an ordered consumer from a
//!   stream sequence.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use fabric_events::{Entry, Hash32, PublicKey, SignatureBytes, SigningKey, MAX_ENTRY_BYTES};
use fabric_ledger::{Frontier, LedgerReader, SignedTreeHead, ARTIFACT_BYTES_MAX, BATCH_EVENTS_MAX};
use futures_util::StreamExt;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::outbox::Log;
use crate::{BusError, DUPLICATE_WINDOW};

/// The stream of the replicated log.
pub const LOG_STREAM: &str = "FABRIC_LOG";
/// Its one subject.
pub const LOG_SUBJECT: &str = "fabric.log";
/// The header that names the acting sequencer's HTTP address (where followers send clients
/// who submit).
pub const HEADER_SEQUENCER_URL: &str = "Fabric-Sequencer-Url";
/// Replicas of the stream when a sequencer creates it and is not told otherwise: three
/// servers, so that one may be lost with the quorum kept.
pub const LOG_REPLICAS_DEFAULT: usize = 3;
/// The first bytes of a message.
pub const LOG_MESSAGE_MAGIC: &[u8; 8] = b"FLOGv1\n\0";
/// Bytes of a message besides its entries and artifacts: magic, first seq, count, artifact
/// count, and the tree head (size, root, key, signature).
const MESSAGE_FRAME_BYTES: usize = 8 + 8 + 4 + 4 + 8 + 32 + 32 + 64;
/// Room left in NATS's payload limit for the headers of a message.
const HEADER_ROOM_BYTES: usize = 4_096;
/// Messages in flight at once (JetStream's limit of unacknowledged publishes is 5,000).
const MESSAGES_IN_FLIGHT_MAX: usize = 256;
/// How long a connection may take, and a publish may wait for its acknowledgement.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff between retries while the quorum is away.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often a line says the sequencer still waits for the quorum.
const DOWN_LOG_EVERY: Duration = Duration::from_secs(5);

/// One message of the replicated log: consecutive entries, the artifacts they name that the
/// sequencer stored (a job's input, a node agent's output), and the tree head at their end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogMessage {
    /// The entries, from seq `entries[0].seq`, each linked to the one before.
    pub entries: Vec<Entry>,
    /// Artifacts the entries name, each with its BLAKE3 (its address).
    pub artifacts: Vec<(Hash32, Vec<u8>)>,
    /// Signed by the ledger key in force at its size, which is the seq after the last entry.
    pub tree_head: SignedTreeHead,
}

/// Why bytes are not a log message.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("log message: {0}")]
pub struct LogMessageError(String);

impl LogMessage {
    /// The seq of its first entry.
    pub fn first_seq(&self) -> u64 {
        self.entries
            .first()
            .map_or(self.tree_head.tree_size, |e| e.seq)
    }

    /// The log's size after it.
    pub fn end(&self) -> u64 {
        self.tree_head.tree_size
    }

    /// The hash of its last entry.
    pub fn last_hash(&self) -> Hash32 {
        self.entries.last().map(Entry::hash).unwrap_or_default()
    }

    /// `Nats-Msg-Id`: the first seq and the last entry's hash, so that a publish retried is
    /// dropped as a duplicate and a different run at the same place is not.
    pub fn message_id(&self) -> String {
        format!("{}-{}", self.first_seq(), self.last_hash())
    }

    /// The bytes of FORMAT §16.
    pub fn encode(&self) -> Vec<u8> {
        let entry_bytes: usize = self
            .entries
            .iter()
            .map(|e| 4 + e.encoded_len())
            .sum::<usize>()
            + self
                .artifacts
                .iter()
                .map(|(_, bytes)| 36 + bytes.len())
                .sum::<usize>();
        let mut out = Vec::with_capacity(MESSAGE_FRAME_BYTES + entry_bytes);
        out.extend_from_slice(LOG_MESSAGE_MAGIC);
        out.extend_from_slice(&self.first_seq().to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for entry in &self.entries {
            out.extend_from_slice(&(entry.encoded_len() as u32).to_le_bytes());
            entry.encode_into(&mut out);
        }
        out.extend_from_slice(&(self.artifacts.len() as u32).to_le_bytes());
        for (hash, bytes) in &self.artifacts {
            out.extend_from_slice(hash.as_bytes());
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        let head = &self.tree_head;
        out.extend_from_slice(&head.tree_size.to_le_bytes());
        out.extend_from_slice(head.root.as_bytes());
        out.extend_from_slice(head.ledger_key.as_bytes());
        out.extend_from_slice(head.signature.as_bytes());
        out
    }

    /// Decodes the bytes of FORMAT §16 whole: 1 to `BATCH_EVENTS_MAX` entries of consecutive
    /// seqs, each within the entry size limit, a tree head at the seq after the last, nothing
    /// after it. Signatures and links are the ledger's to check.
    pub fn decode(bytes: &[u8]) -> Result<Self, LogMessageError> {
        let mut reader = Bytes { bytes, at: 0 };
        if reader.take(8)? != LOG_MESSAGE_MAGIC {
            return Err(LogMessageError("it does not start with FLOGv1".to_owned()));
        }
        let first_seq = reader.u64()?;
        let count = reader.u32()? as usize;
        if count == 0 || count > BATCH_EVENTS_MAX {
            return Err(LogMessageError(format!(
                "{count} entries (1 to {BATCH_EVENTS_MAX})"
            )));
        }
        let mut entries = Vec::with_capacity(count.min(bytes.len() / 140));
        for index in 0..count {
            let len = reader.u32()? as usize;
            if len > MAX_ENTRY_BYTES {
                return Err(LogMessageError(format!(
                    "entry {index} has {len} bytes (at most {MAX_ENTRY_BYTES})"
                )));
            }
            let entry = Entry::decode(reader.take(len)?)
                .map_err(|error| LogMessageError(format!("entry {index}: {error}")))?;
            let seq = first_seq + index as u64;
            if entry.seq != seq {
                return Err(LogMessageError(format!(
                    "entry {index} has seq {}, not {seq}",
                    entry.seq
                )));
            }
            entries.push(entry);
        }
        let artifact_count = reader.u32()? as usize;
        // Each entry names at most one artifact.
        if artifact_count > count {
            return Err(LogMessageError(format!(
                "{artifact_count} artifacts for {count} entries"
            )));
        }
        let mut artifacts = Vec::with_capacity(artifact_count);
        for index in 0..artifact_count {
            let hash = Hash32(reader.array()?);
            let len = reader.u32()? as usize;
            if len > ARTIFACT_BYTES_MAX {
                return Err(LogMessageError(format!(
                    "artifact {index} has {len} bytes (at most {ARTIFACT_BYTES_MAX})"
                )));
            }
            let bytes = reader.take(len)?;
            if Hash32(*blake3::hash(bytes).as_bytes()) != hash {
                return Err(LogMessageError(format!(
                    "artifact {index} is not the bytes of its address {hash}"
                )));
            }
            artifacts.push((hash, bytes.to_vec()));
        }
        let tree_size = reader.u64()?;
        let root = Hash32(reader.array()?);
        let ledger_key = PublicKey(reader.array()?);
        let signature = SignatureBytes(reader.array()?);
        if reader.at != bytes.len() {
            return Err(LogMessageError(format!(
                "{} bytes after the tree head",
                bytes.len() - reader.at
            )));
        }
        if tree_size != first_seq + count as u64 {
            return Err(LogMessageError(format!(
                "its tree head is at size {tree_size}, its entries end at {}",
                first_seq + count as u64
            )));
        }
        Ok(Self {
            entries,
            artifacts,
            tree_head: SignedTreeHead {
                tree_size,
                root,
                ledger_key,
                signature,
            },
        })
    }
}

/// A cursor over bytes that names what is missing.
struct Bytes<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], LogMessageError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| {
            LogMessageError(format!(
                "it ends at byte {} inside a field",
                self.bytes.len()
            ))
        })?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LogMessageError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64, LogMessageError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, LogMessageError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
}

/// Why the replicated log cannot take the sequencer's appends.
#[derive(Debug, Error)]
pub enum ReplicationError {
    /// Another sequencer appended to the stream: this one's place is gone, and it must not
    /// acknowledge anything more.
    #[error("deposed: {0}")]
    Deposed(String),
    /// The stream holds more of the log than this data folder: it is behind (a replica must
    /// catch up before it sequences).
    #[error(
        "the replicated log holds {stream_size} entries and this data folder {local_size}: \
         catch up with `fabric serve --follow` before sequencing"
    )]
    Behind {
        /// Entries in the stream.
        stream_size: u64,
        /// Entries in the local log.
        local_size: u64,
    },
    /// The stream and the local log differ at a seq both hold.
    #[error("the replicated log and this data folder differ at seq {seq}: {detail}")]
    Diverged {
        /// The seq.
        seq: u64,
        /// How.
        detail: String,
    },
    /// The local log cannot be read, or a tree head cannot be signed.
    #[error("the local log: {0}")]
    Local(String),
    /// The replicator has stopped.
    #[error("the replicator stopped")]
    Stopped,
}

/// How the sequencer reaches the cluster.
#[derive(Clone, Debug)]
pub struct LogLogin {
    /// One or more servers of the cluster, comma-separated (`nats://a:4222,nats://b:4222`).
    pub urls: String,
    /// A NATS user and its password, when the servers ask for one.
    pub user: Option<(String, String)>,
}

/// Connects to the cluster, with the client's own reconnection to any of its servers.
pub async fn connect_log(
    login: &LogLogin,
    log: Log,
) -> Result<(async_nats::Client, jetstream::Context), BusError> {
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_TIMEOUT)
        .event_callback(move |event| {
            let log = log.clone();
            async move {
                match event {
                    async_nats::Event::Disconnected => log("nats: disconnected from the cluster"),
                    async_nats::Event::Connected => log("nats: connected to the cluster"),
                    _ => {}
                }
            }
        });
    if let Some((user, password)) = &login.user {
        options = options.user_and_password(user.clone(), password.clone());
    }
    let client = options
        .connect(login.urls.split(',').map(str::trim).collect::<Vec<_>>())
        .await
        .map_err(|error| BusError::Connect {
            url: login.urls.clone(),
            detail: error.to_string(),
        })?;
    let jetstream = jetstream::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .build(client.clone());
    Ok((client, jetstream))
}

/// The stream's settings (FORMAT §16 says why).
pub fn log_stream_config(replicas: usize) -> jetstream::stream::Config {
    use jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
    Config {
        name: LOG_STREAM.to_owned(),
        subjects: vec![LOG_SUBJECT.to_owned()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas,
        deny_delete: true,
        deny_purge: true,
        ..Config::default()
    }
}

/// The stream of the replicated log, created with `replicas` when missing (a sequencer's
/// first start) or waited for until `deadline` (a follower's: the sequencer creates it).
pub async fn log_stream(
    jetstream: &jetstream::Context,
    replicas: Option<usize>,
    deadline: Instant,
) -> Result<jetstream::stream::Stream, BusError> {
    loop {
        let found = match replicas {
            Some(replicas) => jetstream
                .get_or_create_stream(log_stream_config(replicas))
                .await
                .map_err(|error| error.to_string()),
            None => jetstream
                .get_stream(LOG_STREAM)
                .await
                .map_err(|error| error.to_string()),
        };
        match found {
            Ok(mut stream) => {
                let info = stream
                    .info()
                    .await
                    .map_err(|error| BusError::LogStream(error.to_string()))?;
                if info.config.subjects != [LOG_SUBJECT] {
                    return Err(BusError::LogStream(format!(
                        "exists with subjects {:?}, not [{LOG_SUBJECT}]",
                        info.config.subjects
                    )));
                }
                return Ok(stream);
            }
            // The cluster may still be electing its meta leader, or the sequencer may not
            // have made the stream yet.
            Err(why) if Instant::now() >= deadline => return Err(BusError::LogStream(why)),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The stream's message at `sequence`, decoded, with its sequencer URL header.
pub async fn log_message_at(
    stream: &jetstream::stream::Stream,
    sequence: u64,
) -> Result<(LogMessage, Option<String>), String> {
    let message = stream
        .get_raw_message(sequence)
        .await
        .map_err(|error| format!("stream sequence {sequence}: {error}"))?;
    let decoded = LogMessage::decode(&message.payload)
        .map_err(|error| format!("stream sequence {sequence}: {error}"))?;
    let url = message
        .headers
        .get(HEADER_SEQUENCER_URL)
        .map(|value| value.as_str().to_owned());
    Ok((decoded, url))
}

/// One message a follower received: its stream sequence, the sequencer URL it names, and the
/// message (or why it does not decode).
pub type Received = (u64, Option<String>, Result<LogMessage, LogMessageError>);

/// The stream's messages from stream sequence `from` on, in order, with no gap (an ordered
/// consumer: recreated by the client after a server is lost).
pub async fn log_messages(
    stream: &jetstream::stream::Stream,
    from: u64,
) -> Result<impl futures_util::Stream<Item = Result<Received, String>>, BusError> {
    use jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            ..OrderedConfig::default()
        })
        .await
        .map_err(|error| BusError::LogStream(error.to_string()))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|error| BusError::LogStream(error.to_string()))?;
    Ok(messages.map(|message| {
        let message = message.map_err(|error| error.to_string())?;
        let sequence = message
            .info()
            .map_err(|error| error.to_string())?
            .stream_sequence;
        let url = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(HEADER_SEQUENCER_URL))
            .map(|value| value.as_str().to_owned());
        Ok((sequence, url, LogMessage::decode(&message.payload)))
    }))
}

/// What the sequencer's replicator is given.
#[derive(Clone)]
pub struct ReplicatorConfig {
    /// The cluster.
    pub login: LogLogin,
    /// Replicas of the stream when it is created.
    pub replicas: usize,
    /// The HTTP address followers send submitting clients to.
    pub advertise: Option<String>,
    /// The secrets of the ledger keys the sequencer may sign tree heads with (the one it
    /// serves with, and the staged ones).
    pub secrets: Vec<SigningKey>,
    /// The artifact store: the artifacts the entries name go with them.
    pub artifacts: Option<std::sync::Arc<fabric_ledger::ArtifactLog>>,
}

/// The artifact an entry names, that a sequencer may hold: a submission's input, a receipt's
/// output.
pub fn named_artifact(entry: &Entry) -> Option<Hash32> {
    match entry.event().ok()?.body {
        fabric_events::Body::JobSubmitted(job) => Some(job.input_hash),
        fabric_events::Body::JobReceipt(receipt) => Some(receipt.output_hash),
        _ => None,
    }
}

struct Request {
    size: u64,
    done: oneshot::Sender<Result<(), ReplicationError>>,
}

/// The sequencer's side of the replicated log; see the module documentation.
pub struct Replicator {
    requests: mpsc::UnboundedSender<Request>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replicator {
    /// Connects to the cluster, creates or finds the stream, and checks that the stream is a
    /// prefix of the local log of `reader` (its unreplicated tail is published by the first
    /// [`Replicator::replicate`]). Fails when the cluster cannot be reached, when the stream
    /// holds more than the local log ([`ReplicationError::Behind`]) or something else
    /// ([`ReplicationError::Diverged`]).
    pub fn start(
        reader: LedgerReader,
        config: ReplicatorConfig,
        log: Log,
    ) -> Result<Self, BusError> {
        let (requests, mut receiver) = mpsc::unbounded_channel::<Request>();
        let thread = crate::spawn_connected(
            "log-replicator",
            move || Sequencer::connect(reader, config, log),
            move |mut sequencer: Sequencer| async move {
                let mut deposed: Option<String> = None;
                while let Some(Request { size, done }) = receiver.recv().await {
                    if let Some(why) = &deposed {
                        let _ = done.send(Err(ReplicationError::Deposed(why.clone())));
                        continue;
                    }
                    let result = sequencer.replicate(size).await;
                    if let Err(ReplicationError::Deposed(why)) = &result {
                        deposed = Some(why.clone());
                    }
                    let _ = done.send(result);
                }
            },
        )?;
        Ok(Self {
            requests,
            thread: Some(thread),
        })
    }

    /// The local log is durable up to `size`: the answer comes once the stream's quorum holds
    /// it all (waiting out an outage of the quorum), or says why it never will.
    pub fn replicate(&self, size: u64) -> oneshot::Receiver<Result<(), ReplicationError>> {
        let (done, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(request)) = self.requests.send(Request { size, done }) {
            let _ = request.done.send(Err(ReplicationError::Stopped));
        }
        answer
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        // Closing the channel ends the thread once the request in hand is answered.
        let (closed, _) = mpsc::unbounded_channel();
        self.requests = closed;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Why a round of publishes stopped short.
enum RoundError {
    Retry(String),
    Final(ReplicationError),
}

/// A message in flight: where it ends, and the frontier there.
struct InFlight {
    id: String,
    end: u64,
    frontier: Frontier,
}

struct Sequencer {
    reader: LedgerReader,
    jetstream: jetstream::Context,
    stream: jetstream::stream::Stream,
    secrets: Vec<SigningKey>,
    advertise: Option<String>,
    artifacts: Option<std::sync::Arc<fabric_ledger::ArtifactLog>>,
    /// The log's size the stream holds.
    replicated: u64,
    /// The Merkle frontier at `replicated`.
    frontier: Frontier,
    /// The stream sequence of its last message (0: none).
    stream_last: u64,
    /// Payload bytes a message may have.
    payload_max: usize,
    log: Log,
}

impl Sequencer {
    async fn connect(
        reader: LedgerReader,
        config: ReplicatorConfig,
        log: Log,
    ) -> Result<Self, BusError> {
        let (client, jetstream) = connect_log(&config.login, log.clone()).await?;
        let deadline = Instant::now() + crate::STREAM_WAIT;
        let mut stream = log_stream(&jetstream, Some(config.replicas), deadline).await?;
        let payload_max = client
            .server_info()
            .max_payload
            .saturating_sub(HEADER_ROOM_BYTES)
            .max(MESSAGE_FRAME_BYTES + 4 + MAX_ENTRY_BYTES);
        let info = stream
            .info()
            .await
            .map_err(|error| BusError::LogStream(error.to_string()))?;
        let stream_last = info.state.last_sequence;
        let local_size = reader.len()?;
        let replicated = if stream_last == 0 {
            0
        } else {
            let (last, _) = log_message_at(&stream, stream_last)
                .await
                .map_err(BusError::Stream)?;
            check_prefix(&reader, &last, local_size)?;
            last.end()
        };
        // A replica that caught up holds exactly the stream: its head's frontier is the one.
        let frontier = match reader.head_frontier()? {
            (size, frontier) if size == replicated => frontier,
            _ => {
                let mut frontier = Frontier::new();
                for leaf in reader.leaf_hashes(0..replicated)? {
                    frontier.push(leaf);
                }
                frontier
            }
        };
        Ok(Self {
            reader,
            jetstream,
            stream,
            secrets: config.secrets,
            advertise: config.advertise,
            artifacts: config.artifacts,
            replicated,
            frontier,
            stream_last,
            payload_max,
            log,
        })
    }

    async fn replicate(&mut self, size: u64) -> Result<(), ReplicationError> {
        let mut backoff = BACKOFF_FIRST;
        let mut down_since: Option<Instant> = None;
        let mut down_logged = Instant::now();
        while self.replicated < size {
            match self.round(size).await {
                Ok(()) => {
                    if let Some(since) = down_since.take() {
                        (self.log)(&format!(
                            "replication: the quorum holds the log again after {:.1} s",
                            since.elapsed().as_secs_f64()
                        ));
                    }
                    backoff = BACKOFF_FIRST;
                }
                Err(RoundError::Final(error)) => return Err(error),
                Err(RoundError::Retry(why)) => {
                    let since = *down_since.get_or_insert_with(Instant::now);
                    if down_logged.elapsed() >= DOWN_LOG_EVERY || since.elapsed() < backoff {
                        down_logged = Instant::now();
                        (self.log)(&format!(
                            "replication: waiting for the quorum for {:.1} s ({why}); nothing \
                             after seq {} is acknowledged until it holds it",
                            since.elapsed().as_secs_f64(),
                            self.replicated
                        ));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        Ok(())
    }

    /// Publishes the log from `replicated` towards `size` in messages of at most
    /// `payload_max` bytes, each expecting the stream's last sequence to be the message before
    /// it, and waits for their acknowledgements in order.
    async fn round(&mut self, size: u64) -> Result<(), RoundError> {
        let local = |error: fabric_ledger::LedgerError| {
            RoundError::Final(ReplicationError::Local(error.to_string()))
        };
        let keys = self.reader.ledger_keys().map_err(local)?;
        let mut entries = self.reader.entries(self.replicated..size);
        let mut frontier = self.frontier.clone();
        let mut in_flight: Vec<(InFlight, jetstream::context::PublishAckFuture)> = Vec::new();
        let mut pending: Option<Entry> = None;
        while in_flight.len() < MESSAGES_IN_FLIGHT_MAX {
            let mut batch = Vec::new();
            let mut artifacts = Vec::new();
            let mut bytes = MESSAGE_FRAME_BYTES;
            loop {
                let entry = match pending.take() {
                    Some(entry) => entry,
                    None => match entries.next() {
                        Some(entry) => entry.map_err(local)?,
                        None => break,
                    },
                };
                let artifact = self.artifact_of(&entry).map_err(local)?;
                let entry_bytes = 4
                    + entry.encoded_len()
                    + artifact.as_ref().map_or(0, |(_, bytes)| 36 + bytes.len());
                if !batch.is_empty()
                    && (bytes + entry_bytes > self.payload_max || batch.len() >= BATCH_EVENTS_MAX)
                {
                    pending = Some(entry);
                    break;
                }
                bytes += entry_bytes;
                frontier.push(entry.hash());
                batch.push(entry);
                artifacts.extend(artifact);
            }
            if batch.is_empty() {
                break;
            }
            let end = frontier.size();
            let key = keys.at(end);
            let secret = self
                .secrets
                .iter()
                .find(|secret| PublicKey::from(&secret.verifying_key()) == key)
                .ok_or_else(|| {
                    RoundError::Final(ReplicationError::Local(format!(
                        "no secret of the ledger key in force at size {end} ({key})"
                    )))
                })?;
            let message = LogMessage {
                entries: batch,
                artifacts,
                tree_head: SignedTreeHead::sign(end, frontier.root(), secret),
            };
            let id = message.message_id();
            let mut publish = PublishMessage::build()
                .payload(message.encode().into())
                .message_id(&id)
                .expected_last_sequence(self.stream_last + in_flight.len() as u64);
            if let Some(url) = &self.advertise {
                publish = publish.header(HEADER_SEQUENCER_URL, url.as_str());
            }
            let ack = self
                .jetstream
                .send_publish(LOG_SUBJECT, publish)
                .await
                .map_err(|error| RoundError::Retry(format!("publishing: {error}")))?;
            in_flight.push((
                InFlight {
                    id,
                    end,
                    frontier: frontier.clone(),
                },
                ack,
            ));
        }
        for (message, ack) in in_flight {
            match ack.await {
                Ok(ack) => self.acknowledged(&message, ack.sequence),
                Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                    return Err(self.out_of_step(&message).await);
                }
                Err(error) => {
                    return Err(RoundError::Retry(format!(
                        "no acknowledgement for the log up to {}: {error}",
                        message.end
                    )))
                }
            }
        }
        Ok(())
    }

    /// The artifact `entry` names, when the store holds it (and it fits in a message).
    fn artifact_of(
        &self,
        entry: &Entry,
    ) -> Result<Option<(Hash32, Vec<u8>)>, fabric_ledger::LedgerError> {
        let (Some(store), Some(hash)) = (&self.artifacts, named_artifact(entry)) else {
            return Ok(None);
        };
        Ok(store
            .get(&hash)?
            // Damaged bytes are not sent (the store's reader checks them too), nor any too
            // large for a message.
            .filter(|bytes| Hash32(*blake3::hash(bytes).as_bytes()) == hash)
            .filter(|bytes| {
                MESSAGE_FRAME_BYTES + 4 + MAX_ENTRY_BYTES + 36 + bytes.len() <= self.payload_max
            })
            .map(|bytes| (hash, bytes)))
    }

    fn acknowledged(&mut self, message: &InFlight, sequence: u64) {
        self.stream_last = sequence;
        self.replicated = message.end;
        self.frontier = message.frontier.clone();
    }

    /// The stream's last sequence was not the one `message` expected: either messages of
    /// this sequencer were stored whose acknowledgements were lost (then it goes on after
    /// them), or another sequencer appended (then it is deposed).
    async fn out_of_step(&mut self, message: &InFlight) -> RoundError {
        let info = match self.stream.get_info().await {
            Ok(info) => info.state,
            Err(error) => return RoundError::Retry(format!("reading the stream: {error}")),
        };
        let next = self.stream_last + 1;
        if info.last_sequence < next {
            return RoundError::Retry("the stream is behind what it acknowledged".to_owned());
        }
        match log_message_at(&self.stream, next).await {
            Ok((stored, _)) if stored.message_id() == message.id => {
                self.acknowledged(message, next);
                RoundError::Retry("an acknowledgement was lost".to_owned())
            }
            Ok((stored, url)) => RoundError::Final(ReplicationError::Deposed(format!(
                "stream sequence {next} holds seqs {}..{} from another sequencer{}",
                stored.first_seq(),
                stored.end(),
                url.map(|url| format!(" ({url})")).unwrap_or_default()
            ))),
            Err(why) => RoundError::Retry(why),
        }
    }
}

/// Checks that the stream, whose last message is `last`, holds a prefix of the local log of
/// `local_size` entries.
fn check_prefix(
    reader: &LedgerReader,
    last: &LogMessage,
    local_size: u64,
) -> Result<(), ReplicationError> {
    if last.end() > local_size {
        return Err(ReplicationError::Behind {
            stream_size: last.end(),
            local_size,
        });
    }
    let seq = last.end() - 1;
    let local = reader
        .get(seq)
        .map_err(|error| ReplicationError::Local(error.to_string()))?;
    if local.hash() != last.last_hash() {
        return Err(ReplicationError::Diverged {
            seq,
            detail: "the entries there differ".to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric_events::{Event, Heartbeat, Role, SignedEvent};

    fn message(first_seq: u64, count: u64) -> LogMessage {
        let key = fabric_events::derive_signing_key(1, "tests/replication");
        let mut prev = Hash32::default();
        let mut frontier = Frontier::new();
        let entries: Vec<Entry> = (first_seq..first_seq + count)
            .map(|seq| {
                let event = Event::new(
                    Role::Node,
                    seq,
                    seq + 1,
                    Heartbeat {
                        node: "n".to_owned(),
                        running_jobs: 0,
                    },
                );
                let signed = SignedEvent::sign(&event, &key).expect("signs");
                let entry = Entry::new(seq, prev, signed);
                prev = entry.hash();
                frontier.push(prev);
                entry
            })
            .collect();
        LogMessage {
            entries,
            artifacts: vec![(
                Hash32(*blake3::hash(b"an input").as_bytes()),
                b"an input".to_vec(),
            )],
            tree_head: SignedTreeHead::sign(first_seq + count, frontier.root(), &key),
        }
    }

    #[test]
    fn a_log_message_decodes_to_itself_and_nothing_else() {
        let original = message(7, 3);
        let bytes = original.encode();
        assert_eq!(LogMessage::decode(&bytes), Ok(original.clone()));
        assert_eq!(original.first_seq(), 7);
        assert_eq!(original.end(), 10);
        // Every cut is refused, and so is a byte more.
        for cut in 0..bytes.len() {
            assert!(LogMessage::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(LogMessage::decode(&longer).is_err());
        // A count that does not match the entries, a seq out of place, a tree head elsewhere.
        let mut count = bytes.clone();
        count[16] = 2;
        assert!(LogMessage::decode(&count).is_err());
        let mut first = bytes.clone();
        first[8] = 8;
        assert!(LogMessage::decode(&first)
            .expect_err("seq out of place")
            .to_string()
            .contains("seq 7, not 8"));
        let mut size = bytes.clone();
        let at = bytes.len() - 136;
        size[at] = 11;
        assert!(LogMessage::decode(&size).is_err());
        // An artifact that is not the bytes of its address.
        let mut artifact = bytes.clone();
        let at = bytes.len() - 137;
        artifact[at] ^= 1;
        assert!(LogMessage::decode(&artifact)
            .expect_err("a changed artifact")
            .to_string()
            .contains("address"));
        let mut zero = bytes;
        zero[16..20].copy_from_slice(&0u32.to_le_bytes());
        assert!(LogMessage::decode(&zero).is_err());
    }

    #[test]
    fn message_ids_differ_with_the_entries_at_one_place() {
        let a = message(4, 2);
        let mut b = message(4, 2);
        assert_eq!(a.message_id(), b.message_id());
        b.entries.pop();
        assert_ne!(a.message_id(), b.message_id());
    }
}
