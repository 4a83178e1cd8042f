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
use fabric_bus::replication::{
    connect_log, log_message_at, log_messages, log_stream, LogLogin, LogMessage,
};
use fabric_events::{Body, Event, SignedEvent};
use fabric_ledger::Ledger;
use futures_util::StreamExt;
use tokio::sync::{oneshot, watch};

use crate::handlers::Shared;
use crate::nodes::Feed;

/// Key of the ledger's `replica` tree: the stream sequence of the last message stored, and the log's
/// size after it (two u64 LE). Where the next start reads from; a copy made before it was
/// written starts at the stream's first message and skips what it holds.
const KEY_CURSOR: &[u8] = b"cursor";

/// Backoff between reads of a stream that cannot be read.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How a read of the stream ended.
enum Read {
    /// Stopped, or read up to the end it was asked to reach.
    Done,
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

/// What a follower shares with the handlers: where the acting sequencer is, and whether
/// this replica sequences now (then it takes submissions itself).
#[derive(Debug, Default)]
pub struct Following {
    /// The HTTP address the sequencer's last message named.
    pub sequencer_url: RwLock<Option<String>>,
    /// This replica took the log over: it is the sequencer.
    pub sequencing: std::sync::atomic::AtomicBool,
}

impl Following {
    /// The sequencer's address, when a message named one.
    pub fn sequencer(&self) -> Option<String> {
        self.sequencer_url
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Whether this replica sequences now.
    pub fn is_sequencing(&self) -> bool {
        self.sequencing.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// What the follower is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Follow,
    /// Read up to the stream's end (as it is when asked), then hand the copy back.
    FinishAtEnd,
    Stop,
}

/// The follower's thread, and how to stop it.
pub(crate) struct Follower {
    mode: watch::Sender<Mode>,
    thread: std::thread::JoinHandle<Result<Copied, String>>,
    /// Told once, when the follower stops by itself (why).
    pub(crate) stopped: Option<oneshot::Receiver<String>>,
}

impl Follower {
    /// Starts following the stream of `login`'s cluster into the copy's ledger (with its
    /// replay to its end and what the node gateway's feed needs), from stream sequence `from`
    /// (or where the copy last stopped), updating `shared` after each message.
    pub(crate) fn start(
        (ledger, replay, feed): Copied,
        login: LogLogin,
        from: Option<u64>,
        shared: actix_web::web::Data<Shared>,
        following: Arc<Following>,
    ) -> Result<Self, String> {
        let (mode, mode_rx) = watch::channel(Mode::Follow);
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
                    feed,
                    shared,
                    following,
                    from,
                    last_sequence: 0,
                };
                let result = runtime.block_on(copy.follow(login, mode_rx));
                if let Err(why) = &result {
                    let _ = stopped_tx.send(why.clone());
                }
                result.map(|()| (copy.ledger, copy.replay, copy.feed))
            })
            .map_err(|error| error.to_string())?;
        Ok(Self {
            mode,
            thread,
            stopped: Some(stopped),
        })
    }

    /// Stops following and hands the copy back.
    pub(crate) fn finish(self) -> Result<Copied, String> {
        let _ = self.mode.send(Mode::Stop);
        self.join()
    }

    /// Reads up to the stream's end as it is now, then hands the copy back: a replica that
    /// holds the lease catches up before it takes over.
    pub(crate) async fn finish_at_end(self) -> Result<Copied, String> {
        let _ = self.mode.send(Mode::FinishAtEnd);
        let (done, answer) = oneshot::channel();
        std::thread::spawn(move || {
            let _ = done.send(self.join());
        });
        answer
            .await
            .map_err(|_| "the follower's thread was lost".to_owned())?
    }

    fn join(self) -> Result<Copied, String> {
        self.thread
            .join()
            .map_err(|_| "the follower panicked".to_owned())?
    }
}

/// Cuts the local log back to the longest prefix that the replicated log holds, and says
/// where to read the stream from. What goes is a tail this replica wrote as sequencer that
/// never reached the quorum: never acknowledged to anyone (docs/FORMAT.md §16.4).
pub(crate) async fn reconcile(
    ledger: &mut Ledger,
    stream: &async_nats::jetstream::stream::Stream,
) -> Result<Reconciled, String> {
    let last = stream
        .get_info()
        .await
        .map_err(|error| format!("reading the replicated log: {error}"))?
        .state
        .last_sequence;
    let size = ledger.len();
    if last == 0 || size == 0 {
        return Ok(Reconciled::default());
    }
    let (last_message, _) = log_message_at(stream, last).await?;
    let end = last_message.end();
    let probe = size.min(end) - 1;
    let (at, message) = message_holding(stream, last, probe).await?;
    let local = |seq| {
        ledger
            .get(seq)
            .map(|entry| entry.hash())
            .map_err(|e| e.to_string())
    };
    let (cut, from, head) = if local(probe)? == entry_hash(&message, probe) {
        if size <= end {
            return Ok(Reconciled {
                discarded: 0,
                from: Some(at),
            });
        }
        (end, last, last_message.tree_head)
    } else {
        // The first message that the copy contradicts: the copy is cut back to where it starts.
        let (mut low, mut high) = (1, at);
        while low < high {
            let middle = low + (high - low) / 2;
            let (candidate, _) = log_message_at(stream, middle).await?;
            let seq = candidate.end().min(size) - 1;
            if local(seq)? == entry_hash(&candidate, seq) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        if low == 1 {
            return Err(
                "the replicated log is another fabric's: its first entries differ \
                        from this folder's"
                    .to_owned(),
            );
        }
        let (before, _) = log_message_at(stream, low - 1).await?;
        (before.end(), low, before.tree_head)
    };
    let discarded = ledger
        .discard_after(cut, &head)
        .map_err(|error| error.to_string())?;
    Ok(Reconciled {
        discarded,
        from: Some(from),
    })
}

/// What [`reconcile`] did.
#[derive(Debug, Default)]
pub(crate) struct Reconciled {
    /// Entries cut from the local log (never acknowledged).
    pub(crate) discarded: u64,
    /// The stream sequence to read from.
    pub(crate) from: Option<u64>,
}

/// The hash of entry `seq` of `message`, which holds it.
fn entry_hash(message: &LogMessage, seq: u64) -> fabric_events::Hash32 {
    message.entries[(seq - message.first_seq()) as usize].hash()
}

/// The stream sequence of the message holding log seq `seq`, and the message (binary search:
/// messages hold consecutive runs of the log in stream order).
async fn message_holding(
    stream: &async_nats::jetstream::stream::Stream,
    last: u64,
    seq: u64,
) -> Result<(u64, LogMessage), String> {
    let (mut low, mut high) = (1, last);
    loop {
        let middle = low + (high - low) / 2;
        let (message, _) = log_message_at(stream, middle).await?;
        if seq < message.first_seq() && middle > low {
            high = middle - 1;
        } else if seq >= message.end() && middle < high {
            low = middle + 1;
        } else if (message.first_seq()..message.end()).contains(&seq) {
            return Ok((middle, message));
        } else {
            return Err(format!(
                "the replicated log holds no message with seq {seq}"
            ));
        }
    }
}

/// A follower's copy: its ledger, the replay at its end, and (a replica's) the node gateway's
/// feed it would start with should it take the log over, kept up as it copies so that a
/// takeover replays nothing and proves nothing again.
pub(crate) type Copied = (Ledger, Replay, Option<Feed>);

/// The local copy and its views.
struct Copy {
    ledger: Ledger,
    replay: Replay,
    feed: Option<Feed>,
    shared: actix_web::web::Data<Shared>,
    following: Arc<Following>,
    /// Where to read the stream from at the first read (else the stored cursor).
    from: Option<u64>,
    /// The stream sequence of the last message taken.
    last_sequence: u64,
}

impl Copy {
    async fn follow(
        &mut self,
        login: LogLogin,
        mut mode: watch::Receiver<Mode>,
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
            match self.read(&jetstream, &mut mode).await {
                Read::Failed(why) => return Err(why),
                Read::Done => return Ok(()),
                Read::Lost(why) => {
                    eprintln!(
                        "follower: the replicated log cannot be read now ({why}); again in {} ms",
                        backoff.as_millis()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = mode.changed() => if *mode.borrow() == Mode::Stop {
                            return Ok(());
                        },
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Read::Progress => backoff = BACKOFF_FIRST,
            }
        }
    }

    /// Reads the stream from after the last message stored until the consumer fails, or the
    /// follower is done.
    async fn read(
        &mut self,
        jetstream: &async_nats::jetstream::Context,
        mode: &mut watch::Receiver<Mode>,
    ) -> Read {
        let deadline = Instant::now() + Duration::from_secs(2);
        let stream = match log_stream(jetstream, None, deadline).await {
            Ok(stream) => stream,
            Err(error) => return Read::Lost(error.to_string()),
        };
        let from = match self.from.take() {
            Some(from) => from,
            None => match self.cursor() {
                Ok(from) => from,
                Err(why) => return Read::Failed(why),
            },
        };
        let messages = match log_messages(&stream, from).await {
            Ok(messages) => messages,
            Err(error) => return Read::Lost(error.to_string()),
        };
        tokio::pin!(messages);
        let mut taken = false;
        // Set once asked to finish: the stream's last sequence then. The ask may have come
        // while the stream could not be read (a backoff consumed its change): look now.
        let mut target: Option<u64> = None;
        match *mode.borrow_and_update() {
            Mode::Stop => return Read::Done,
            Mode::FinishAtEnd => match stream.get_info().await {
                Ok(info) => target = Some(info.state.last_sequence),
                Err(error) => return Read::Lost(error.to_string()),
            },
            Mode::Follow => {}
        }
        loop {
            if target.is_some_and(|target| self.last_sequence >= target) {
                return Read::Done;
            }
            let next = tokio::select! {
                next = messages.next() => next,
                _ = mode.changed() => {
                    match *mode.borrow() {
                        Mode::Stop => return Read::Done,
                        Mode::FinishAtEnd => {}
                        Mode::Follow => continue,
                    }
                    match stream.get_info().await {
                        Ok(info) => target = Some(info.state.last_sequence),
                        Err(error) => return Read::Lost(error.to_string()),
                    }
                    continue;
                }
            };
            let (sequence, url, message) = match next {
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
            self.last_sequence = sequence;
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
        // The artifacts first: the append's sync makes them durable with the entries.
        for (hash, bytes) in &message.artifacts {
            if !self.shared.artifacts.contains(hash) {
                self.shared
                    .artifacts
                    .insert(hash, bytes)
                    .map_err(|error| error.to_string())?;
            }
        }
        self.ledger
            .append_replicated(new, &message.tree_head)
            .map_err(|error| error.to_string())?;
        self.save_cursor(sequence, message.end())?;
        let append_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let tick = events.last().map_or(0, |event| event.header.tick);
        let served = ServedTick {
            tick,
            state: self.replay.state(),
            first_seq: size,
            events: &events,
            signed: &signed,
            tree_head: &message.tree_head,
            append_ns,
            decision_ns: &[],
        };
        self.shared.on_tick(&served);
        if let Some(feed) = &mut self.feed {
            feed.follow(&served);
        }
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
