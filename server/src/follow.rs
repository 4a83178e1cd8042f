//! A follower of a replicated log (docs/FORMAT.md §16): a replica that copies the acting
//! sequencer's appends from the stream into its own ledger, verifying every entry as
//! `fabric audit` would before it stores it, and serves reads from its copy. It submits
//! nothing; clients who submit are sent to the sequencer.
//!
//! A thread of its own reads the stream (an ordered consumer on its own tokio runtime) and,
//! per message: checks that it continues the local log (a message the copy already holds
//! must match it), folds each new entry through the one replay (seq, link, decoding, the
//! authority table) with the checks of a checkpoint (root, state and snapshot hashes; the
//! snapshot is stored for restores), then appends the entries with the sequencer's tree head
//! ([`fabric_ledger::Ledger::append_replicated`]: signatures, root, the head's signature by
//! the ledger key in force), and hands the tick to the views. The first entry that does not
//! verify stops the follower, with its seq, before anything of its message is stored.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fabric_actors::serve::ServedTick;
use fabric_audit::Replay;
use fabric_bus::replication::{connect_log, log_messages, log_stream, LogLogin, LogMessage};
use fabric_events::{Body, Event, SignedEvent};
use fabric_ledger::Ledger;
use futures_util::StreamExt;
use tokio::sync::{oneshot, watch};

use crate::handlers::Shared;

/// Key of the ledger's `replica` tree: the stream sequence of the last message stored, and the log's
/// size after it (two u64 LE). Where the next start reads from; a copy made before it was
/// written starts at the stream's first message and skips what it holds.
const KEY_CURSOR: &[u8] = b"cursor";

/// Backoff between reads of a stream that cannot be read.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How a read of the stream ended.
enum Read {
    /// Something did not verify, or the copy cannot be written: the follower stops.
    Failed(String),
    /// The stream or its consumer is gone for now (a server lost, the stream not made yet).
    Lost(String),
    /// Messages were stored before the consumer was lost: read again at once.
    Progress,
}

impl Read {
    fn progressed(self) -> Self {
        match self {
            Read::Lost(_) => Read::Progress,
            other => other,
        }
    }
}

/// What a follower shares with the handlers: where the acting sequencer is.
#[derive(Debug, Default)]
pub struct Following {
    /// The HTTP address the sequencer's last message named.
    pub sequencer_url: RwLock<Option<String>>,
}

impl Following {
    /// The sequencer's address, when a message named one.
    pub fn sequencer(&self) -> Option<String> {
        self.sequencer_url
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }
}

/// The follower's thread, and how to stop it.
pub(crate) struct Follower {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<Result<Ledger, String>>,
    /// Told once, when the follower stops by itself (why).
    pub(crate) stopped: Option<oneshot::Receiver<String>>,
}

impl Follower {
    /// Starts following the stream of `login`'s cluster into `ledger`, whose replay to its end
    /// is `replay`, updating `shared` after each message.
    pub(crate) fn start(
        ledger: Ledger,
        replay: Replay,
        login: LogLogin,
        shared: actix_web::web::Data<Shared>,
        following: Arc<Following>,
    ) -> Result<Self, String> {
        let (stop, stop_rx) = watch::channel(false);
        let (stopped_tx, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("log-follower".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|error| error.to_string())?;
                let mut copy = Copy {
                    ledger,
                    replay,
                    shared,
                    following,
                };
                let result = runtime.block_on(copy.follow(login, stop_rx));
                if let Err(why) = &result {
                    let _ = stopped_tx.send(why.clone());
                }
                result.map(|()| copy.ledger)
            })
            .map_err(|error| error.to_string())?;
        Ok(Self {
            stop,
            thread,
            stopped: Some(stopped),
        })
    }

    /// Stops following and hands the ledger back.
    pub(crate) fn finish(self) -> Result<Ledger, String> {
        let _ = self.stop.send(true);
        self.thread
            .join()
            .map_err(|_| "the follower panicked".to_owned())?
    }
}

/// The local copy and its views.
struct Copy {
    ledger: Ledger,
    replay: Replay,
    shared: actix_web::web::Data<Shared>,
    following: Arc<Following>,
}

impl Copy {
    async fn follow(
        &mut self,
        login: LogLogin,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let log: fabric_bus::outbox::Log = Arc::new(|line: &str| eprintln!("{line}"));
        let (_client, jetstream) = connect_log(&login, log)
            .await
            .map_err(|error| error.to_string())?;
        // The stream and its consumer come and go with the cluster's servers (the sequencer
        // makes the stream; a lost server takes consumers with it): each time, read again
        // from after the last message stored. Only what does not verify stops the follower.
        let mut backoff = BACKOFF_FIRST;
        loop {
            let read = tokio::select! {
                read = self.read(&jetstream) => read,
                _ = stop.changed() => return Ok(()),
            };
            match read {
                Read::Failed(why) => return Err(why),
                Read::Lost(why) => {
                    eprintln!(
                        "follower: the replicated log cannot be read now ({why}); again in {} ms",
                        backoff.as_millis()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Read::Progress => backoff = BACKOFF_FIRST,
            }
        }
    }

    /// Reads the stream from after the last message stored until the consumer fails.
    async fn read(&mut self, jetstream: &async_nats::jetstream::Context) -> Read {
        let deadline = Instant::now() + Duration::from_secs(2);
        let stream = match log_stream(jetstream, None, deadline).await {
            Ok(stream) => stream,
            Err(error) => return Read::Lost(error.to_string()),
        };
        let from = match self.cursor() {
            Ok(from) => from,
            Err(why) => return Read::Failed(why),
        };
        let messages = match log_messages(&stream, from).await {
            Ok(messages) => messages,
            Err(error) => return Read::Lost(error.to_string()),
        };
        tokio::pin!(messages);
        let mut taken = false;
        loop {
            let (sequence, url, message) = match messages.next().await {
                Some(Ok(received)) => received,
                Some(Err(error)) if taken => return Read::Lost(error).progressed(),
                Some(Err(error)) => return Read::Lost(error),
                None => return Read::Lost("the consumer ended".to_owned()),
            };
            if let Some(url) = url {
                *self
                    .following
                    .sequencer_url
                    .write()
                    .unwrap_or_else(|poison| poison.into_inner()) = Some(url);
            }
            let taken_now = message
                .map_err(|error| format!("stream sequence {sequence}: {error}"))
                .and_then(|message| self.take(sequence, &message));
            if let Err(why) = taken_now {
                return Read::Failed(why);
            }
            taken = true;
        }
    }

    /// Where to read the stream from: after the last message stored, or its start.
    fn cursor(&self) -> Result<u64, String> {
        let tree = self
            .ledger
            .reader()
            .replica_tree()
            .map_err(|error| error.to_string())?;
        let stored = tree.get(KEY_CURSOR).map_err(|error| error.to_string())?;
        Ok(match stored.as_deref() {
            Some(bytes) if bytes.len() == 16 => {
                let mut sequence = [0u8; 8];
                sequence.copy_from_slice(&bytes[..8]);
                let mut size = [0u8; 8];
                size.copy_from_slice(&bytes[8..]);
                // A cursor past the copy (its append lost, or the folder copied back from an
                // older one) is not used.
                if u64::from_le_bytes(size) <= self.ledger.len() {
                    u64::from_le_bytes(sequence) + 1
                } else {
                    1
                }
            }
            _ => 1,
        })
    }

    /// Stores one message of the stream (verified first), or checks it against the copy
    /// when the copy holds it already.
    fn take(&mut self, sequence: u64, message: &LogMessage) -> Result<(), String> {
        let size = self.ledger.len();
        let first = message.first_seq();
        if message.end() <= size {
            let local = self
                .ledger
                .get(message.end() - 1)
                .map_err(|error| error.to_string())?;
            if local.hash() != message.last_hash() {
                return Err(format!(
                    "stream sequence {sequence}: the replicated log and this copy differ at seq \
                     {} (this copy holds entries the replicated log does not)",
                    message.end() - 1
                ));
            }
            return self.save_cursor(sequence, message.end());
        }
        if first > size {
            return Err(format!(
                "stream sequence {sequence} starts at seq {first}, this copy ends at {size}: \
                 seqs {size}..{first} are missing"
            ));
        }
        let new = &message.entries[(size - first) as usize..];
        let started = Instant::now();
        let events = self.verify(new)?;
        let signed: Vec<SignedEvent> = new.iter().map(|entry| entry.signed_event()).collect();
        self.ledger
            .append_replicated(new, &message.tree_head)
            .map_err(|error| error.to_string())?;
        self.save_cursor(sequence, message.end())?;
        let append_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let tick = events.last().map_or(0, |event| event.header.tick);
        self.shared.on_tick(&ServedTick {
            tick,
            state: self.replay.state(),
            first_seq: size,
            events: &events,
            signed: &signed,
            tree_head: &message.tree_head,
            append_ns,
            decision_ns: &[],
        });
        Ok(())
    }

    /// Folds `entries` through the replay as an audit does, checking each checkpoint against
    /// the state and tree before it (and storing its snapshot, for restores of this copy).
    fn verify(&mut self, entries: &[fabric_events::Entry]) -> Result<Vec<Event>, String> {
        let mut events = Vec::with_capacity(entries.len());
        for entry in entries {
            let hash = entry.hash();
            let event = Replay::decode(entry).map_err(|error| error.to_string())?;
            if let Body::Checkpoint(checkpoint) = &event.body {
                let verified =
                    fabric_audit::audit::verify_checkpoint(entry.seq, checkpoint, &self.replay)
                        .map_err(|failure| format!("{} ({})", failure.detail, failure.what))?;
                // Stored where the log's head is the checkpoint's size (the checkpoint opens
                // its message, as a tick's first event does).
                if entry.seq == self.ledger.len() {
                    self.ledger
                        .store_snapshot(entry.seq, &verified.snapshot)
                        .map_err(|error| error.to_string())?;
                }
            }
            self.replay
                .fold(hash, entry, &event, ())
                .map_err(|error| error.to_string())?;
            events.push(event);
        }
        Ok(events)
    }

    fn save_cursor(&self, sequence: u64, size: u64) -> Result<(), String> {
        let tree = self
            .ledger
            .reader()
            .replica_tree()
            .map_err(|error| error.to_string())?;
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&sequence.to_le_bytes());
        value[8..].copy_from_slice(&size.to_le_bytes());
        // Made durable by the next append's flush; a cursor lost only means reading again
        // what the copy holds, which is checked and skipped.
        tree.insert(KEY_CURSOR, &value)
            .map(|_| ())
            .map_err(|error| error.to_string())
    }
}
