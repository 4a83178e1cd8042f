//! The outbox: publishes the durable log on JetStream from a cursor kept in the ledger folder.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, message::PublishMessage};
use fabric_events::Entry;
use fabric_ledger::LedgerReader;
use tokio::sync::mpsc;

use crate::subject::{registered_node, subject, Regions};
use crate::BusError;

/// Entries published per round (and at most in flight): under JetStream's default limit of
/// 5,000 unacknowledged publishes.
const ROUND_ENTRIES_MAX: usize = 2_048;
/// How long the first connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a publish waits for its acknowledgement before the round is retried.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff between retries while NATS is down: doubles from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a line says the outbox is still waiting for NATS.
const DOWN_LOG_EVERY: Duration = Duration::from_secs(5);

/// Keys in the ledger's `outbox` tree.
const KEY_CURSOR: &[u8] = b"cursor";
const PREFIX_REGION: &[u8] = b"region/";

/// What the outbox did.
#[derive(Clone, Debug, Default)]
pub struct OutboxReport {
    /// Entries JetStream acknowledged in this process.
    pub published: u64,
    /// Of those, acknowledged as duplicates (already in the stream: republished after a retry
    /// or a restart).
    pub duplicates: u64,
    /// Rounds that failed and were retried after a backoff (NATS down or slow).
    pub retries: u64,
    /// The seq the outbox will publish next (the log's size once it has caught up).
    pub cursor: u64,
    /// Per entry appended while this outbox ran: microseconds from the append's return (the
    /// entry is durable) to JetStream's acknowledgement.
    pub lag_us: Vec<u32>,
}

enum Note {
    /// The log is durable up to this size since this instant.
    Durable { size: u64, at: Instant },
    /// Publish what is left, waiting for NATS up to `wait`, then stop.
    Finish { wait: Duration },
}

/// A publisher of the log on its own thread; see the crate documentation.
pub struct Outbox {
    notes: mpsc::UnboundedSender<Note>,
    thread: std::thread::JoinHandle<Result<OutboxReport, BusError>>,
}

/// Prints what the outbox has to say (connections, outages): the binary decides where.
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

impl Outbox {
    /// Connects to `url`, creates or checks the stream, and starts publishing the log of
    /// `reader` from the stored cursor (0 the first time). Fails at once when the server
    /// cannot be reached now; later outages only delay publication. `user` is a NATS user and
    /// its password, when the server asks for one.
    pub fn start(
        reader: LedgerReader,
        url: &str,
        user: Option<(String, String)>,
        log: Log,
    ) -> Result<Self, BusError> {
        let (notes, receiver) = mpsc::unbounded_channel();
        let (ready_sender, ready) = std::sync::mpsc::channel();
        let url = url.to_owned();
        let thread = std::thread::Builder::new()
            .name("nats-outbox".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|err| BusError::Runtime(err.to_string()))?;
                runtime.block_on(async move {
                    let publisher = match Publisher::connect(reader, &url, user, log).await {
                        Ok(publisher) => {
                            let _ = ready_sender.send(Ok(()));
                            publisher
                        }
                        Err(err) => {
                            let _ = ready_sender.send(Err(err));
                            return Ok(OutboxReport::default());
                        }
                    };
                    publisher.run(receiver).await
                })
            })
            .map_err(|err| BusError::Runtime(err.to_string()))?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Self { notes, thread }),
            Ok(Err(err)) => Err(err),
            Err(_) => match thread.join() {
                Ok(Err(err)) => Err(err),
                _ => Err(BusError::Runtime("the outbox thread stopped".to_owned())),
            },
        }
    }

    /// The log is durable up to `size` entries (an append has returned): they may go out.
    pub fn durable(&self, size: u64) {
        // A closed channel means the thread has stopped; finish() reports why.
        let _ = self.notes.send(Note::Durable {
            size,
            at: Instant::now(),
        });
    }

    /// Publishes what is left (waiting up to `wait` for NATS) and stops.
    pub fn finish(self, wait: Duration) -> Result<OutboxReport, BusError> {
        let _ = self.notes.send(Note::Finish { wait });
        self.thread
            .join()
            .map_err(|_| BusError::Runtime("the outbox thread panicked".to_owned()))?
    }
}

/// Why a round stopped short.
enum RoundError {
    /// NATS is down, slow or refused a publish: retry after a backoff.
    Retry(String),
    /// The stream's last message is not the entry before the cursor (it was stored by a
    /// client buffer flushed after a reconnect, or the stream was changed behind the outbox's
    /// back): move the cursor to where the stream is, then go on.
    OutOfStep(String),
}

struct Publisher {
    reader: LedgerReader,
    tree: sled::Tree,
    jetstream: jetstream::Context,
    stream: jetstream::stream::Stream,
    regions: Regions,
    cursor: u64,
    durable: u64,
    /// Durable notes not yet passed by the cursor, oldest first.
    pending: VecDeque<(u64, Instant)>,
    report: OutboxReport,
    log: Log,
}

impl Publisher {
    async fn connect(
        reader: LedgerReader,
        url: &str,
        user: Option<(String, String)>,
        log: Log,
    ) -> Result<Self, BusError> {
        let events_log = Arc::clone(&log);
        let mut options = async_nats::ConnectOptions::new();
        if let Some((user, password)) = user {
            options = options.user_and_password(user, password);
        }
        let client = options
            .connection_timeout(CONNECT_TIMEOUT)
            .event_callback(move |event| {
                let log = Arc::clone(&events_log);
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            log("nats: disconnected; appends go on, publication waits")
                        }
                        async_nats::Event::Connected => log("nats: connected"),
                        _ => {}
                    }
                }
            })
            .connect(url.split(',').map(str::trim).collect::<Vec<_>>())
            .await
            .map_err(|err| BusError::Connect {
                url: url.to_owned(),
                detail: err.to_string(),
            })?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .build(client);
        let stream = crate::ensure_stream(&jetstream).await?;
        let tree = reader.outbox_tree()?;
        let cursor = match tree.get(KEY_CURSOR).map_err(outbox_storage)? {
            Some(bytes) => {
                let bytes: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
                    BusError::Runtime(format!(
                        "the outbox cursor has {} bytes, not 8",
                        bytes.len()
                    ))
                })?;
                u64::from_le_bytes(bytes)
            }
            None => 0,
        };
        let mut regions = Regions::new();
        for item in tree.scan_prefix(PREFIX_REGION) {
            let (key, value) = item.map_err(outbox_storage)?;
            regions.insert(
                String::from_utf8_lossy(&key[PREFIX_REGION.len()..]).into_owned(),
                String::from_utf8_lossy(&value).into_owned(),
            );
        }
        // The log is durable up to its size when the outbox starts (it was opened, so what it
        // holds was acknowledged or repaired).
        let durable = reader.len()?;
        Ok(Self {
            reader,
            tree,
            jetstream,
            stream,
            regions,
            cursor: cursor.min(durable),
            durable,
            pending: VecDeque::new(),
            report: OutboxReport::default(),
            log,
        })
    }

    fn take(&mut self, note: Note, deadline: &mut Option<(Instant, Duration)>) {
        match note {
            Note::Durable { size, at } => {
                if size > self.durable {
                    self.durable = size;
                    self.pending.push_back((size, at));
                }
            }
            Note::Finish { wait } => *deadline = Some((Instant::now() + wait, wait)),
        }
    }

    async fn run(
        mut self,
        mut notes: mpsc::UnboundedReceiver<Note>,
    ) -> Result<OutboxReport, BusError> {
        let mut deadline = None;
        let mut backoff = BACKOFF_FIRST;
        let mut down_since: Option<Instant> = None;
        let mut down_logged = Instant::now();
        loop {
            while let Ok(note) = notes.try_recv() {
                self.take(note, &mut deadline);
            }
            if self.cursor >= self.durable {
                if deadline.is_some() {
                    break;
                }
                match notes.recv().await {
                    Some(note) => self.take(note, &mut deadline),
                    // The run stopped without finishing: nothing more will come.
                    None => break,
                }
                continue;
            }
            if deadline.is_some_and(|(deadline, _)| Instant::now() >= deadline) {
                break;
            }
            let outcome = match self.round().await {
                Err(RoundError::OutOfStep(why)) => match self.resync().await {
                    Ok(()) => Ok(()),
                    Err(err) => Err(format!("{why}; finding where the stream is: {err}")),
                },
                Err(RoundError::Retry(why)) => Err(why),
                Ok(()) => Ok(()),
            };
            match outcome {
                Ok(()) => {
                    if let Some(since) = down_since.take() {
                        (self.log)(&format!(
                            "nats: publishing again after {:.1} s; backlog {} events",
                            since.elapsed().as_secs_f64(),
                            self.durable - self.cursor
                        ));
                    }
                    backoff = BACKOFF_FIRST;
                }
                Err(why) => {
                    self.report.retries += 1;
                    let since = *down_since.get_or_insert_with(Instant::now);
                    if self.report.retries == 1 || down_logged.elapsed() >= DOWN_LOG_EVERY {
                        down_logged = Instant::now();
                        (self.log)(&format!(
                            "nats: cannot publish for {:.1} s ({why}); {} events wait in the \
                             outbox from seq {}; retrying in {} ms",
                            since.elapsed().as_secs_f64(),
                            self.durable - self.cursor,
                            self.cursor,
                            backoff.as_millis()
                        ));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.tree.flush_async().await.map_err(outbox_storage)?;
        self.report.cursor = self.cursor;
        if self.cursor < self.durable {
            return Err(BusError::Backlog {
                left: self.durable - self.cursor,
                first: self.cursor,
                end: self.durable,
                waited_s: deadline.map_or(0, |(_, wait)| wait.as_secs()),
            });
        }
        Ok(self.report)
    }

    /// Publishes the next entries after the cursor and waits for their acknowledgements; the
    /// cursor moves past each entry acknowledged in order. Says why it stopped short.
    ///
    /// Each message but seq 0's expects the stream's last message to be the entry before it
    /// (`Nats-Expected-Last-Msg-Id`), so the stream only ever grows in seq order: after a
    /// reconnect the client flushes what it had buffered, and without this those late
    /// messages would be stored ahead of the ones the server lost.
    async fn round(&mut self) -> Result<(), RoundError> {
        use RoundError::Retry;
        let end = self.durable.min(self.cursor + ROUND_ENTRIES_MAX as u64);
        let entries: Vec<Entry> = self
            .reader
            .entries(self.cursor..end)
            .collect::<Result<_, _>>()
            .map_err(|err| Retry(format!("reading the log: {err}")))?;
        let mut acks = Vec::with_capacity(entries.len());
        for entry in &entries {
            let event = entry
                .event()
                .map_err(|err| Retry(format!("entry {} does not decode: {err}", entry.seq)))?;
            if let Some((node, region)) = registered_node(&event) {
                self.learn_region(node, region).map_err(Retry)?;
            }
            let line = entry
                .export_line()
                .map_err(|err| Retry(format!("entry {}: {err}", entry.seq)))?;
            let mut message = PublishMessage::build()
                .payload(line.into())
                .message_id(entry.seq.to_string());
            if entry.seq > 0 {
                message = message.expected_last_message_id((entry.seq - 1).to_string());
            }
            let ack = self
                .jetstream
                .send_publish(subject(&event, &self.regions), message)
                .await
                .map_err(|err| Retry(format!("publishing seq {}: {err}", entry.seq)))?;
            acks.push((entry.seq, ack));
        }
        let mut result = Ok(());
        for (seq, ack) in acks {
            match ack.await {
                Ok(ack) => {
                    self.report.published += 1;
                    self.report.duplicates += u64::from(ack.duplicate);
                    self.acknowledged(seq);
                }
                Err(err) if err.kind() == PublishErrorKind::WrongLastMessageId => {
                    result = Err(RoundError::OutOfStep(format!(
                        "the stream's last message is not seq {}",
                        seq.wrapping_sub(1)
                    )));
                    break;
                }
                Err(err) => {
                    result = Err(Retry(format!("no acknowledgement for seq {seq}: {err}")));
                    break;
                }
            }
        }
        // Saved once a round; sled writes it out within its flush interval, and a cursor lost
        // in a crash only means republishing what JetStream then drops as duplicates.
        if let Err(err) = self.tree.insert(KEY_CURSOR, &self.cursor.to_le_bytes()) {
            (self.log)(&format!("nats: could not save the outbox cursor: {err}"));
        }
        result
    }

    /// Moves the cursor to just after the stream's last message (0 for an empty stream): the
    /// stream holds every seq before it, in order, since it only takes the next one.
    async fn resync(&mut self) -> Result<(), String> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|err| err.to_string())?;
        let next = match info.state.last_sequence {
            0 => 0,
            last => {
                let message = self
                    .stream
                    .get_raw_message(last)
                    .await
                    .map_err(|err| err.to_string())?;
                let id = message
                    .headers
                    .get("Nats-Msg-Id")
                    .map(|value| value.as_str().to_owned())
                    .ok_or("its last message has no Nats-Msg-Id")?;
                id.parse::<u64>()
                    .map_err(|_| format!("its last message has Nats-Msg-Id {id:?}, not a seq"))?
                    + 1
            }
        };
        if next > self.durable {
            return Err(format!(
                "it holds seq {} but the log has {} entries: it belongs to another log",
                next - 1,
                self.durable
            ));
        }
        if next != self.cursor {
            (self.log)(&format!(
                "nats: the stream holds seqs up to {}; publishing from seq {next} (was {})",
                next as i128 - 1,
                self.cursor
            ));
            self.cursor = next;
        }
        Ok(())
    }

    fn learn_region(&mut self, node: &str, region: &str) -> Result<(), String> {
        if self.regions.get(node).map(String::as_str) != Some(region) {
            let mut key = PREFIX_REGION.to_vec();
            key.extend_from_slice(node.as_bytes());
            self.tree
                .insert(key, region.as_bytes())
                .map_err(|err| format!("saving a node's region: {err}"))?;
            self.regions.insert(node.to_owned(), region.to_owned());
        }
        Ok(())
    }

    /// Moves the cursor past `seq` and records the entry's lag.
    fn acknowledged(&mut self, seq: u64) {
        let now = Instant::now();
        while self.pending.front().is_some_and(|(size, _)| *size <= seq) {
            self.pending.pop_front();
        }
        if let Some((_, at)) = self.pending.front() {
            let lag = now.saturating_duration_since(*at).as_micros();
            self.report
                .lag_us
                .push(u32::try_from(lag).unwrap_or(u32::MAX));
        }
        self.cursor = seq + 1;
    }
}

fn outbox_storage(err: sled::Error) -> BusError {
    BusError::Runtime(format!("the outbox tree: {err}"))
}
