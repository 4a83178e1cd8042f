//! The sequencer lease of a replicated fabric (docs/FORMAT.md §16): which replica sequences.
//!
//! One subject of a JetStream stream that keeps its last message only, replicated like the
//! log (what a JetStream key-value bucket is, on the servers of this stack). Its holder renews
//! it every [`LEASE_RENEW`] with a message conditional on the revision (the stream sequence) it
//! last wrote (`Nats-Expected-Last-Subject-Sequence`); the others watch it, and one that has
//! seen the same revision for [`LEASE_TIMEOUT`] by its own clock writes itself in, conditional
//! on that revision. So at most one replica wins a round, and a
//! holder that finds its revision gone has lost the lease. The clock only says when to try:
//! what keeps the log from forking is the stream's own fencing (a deposed sequencer's next
//! append is refused), never the lease's timing.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use tokio::sync::{oneshot, watch};

use crate::outbox::Log;
use crate::replication::{connect_log, LogLogin};
use crate::BusError;

/// The stream of the lease.
pub const LEASE_STREAM: &str = "FABRIC_SEQUENCER";
/// Its one subject.
pub const LEASE_SUBJECT: &str = "fabric.sequencer";
/// How often the holder renews the lease, and the others look at it.
pub const LEASE_RENEW: Duration = Duration::from_millis(200);
/// How long a revision must stay unchanged before another replica takes the lease.
pub const LEASE_TIMEOUT: Duration = Duration::from_millis(1_200);
/// How often a holder that cannot renew says so.
const DOWN_LOG_EVERY: Duration = Duration::from_secs(5);

/// Who holds the lease: the payload of the lease's message (`<sequencer key hex> <url>`, the
/// URL empty when the replica advertises none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The replica's sequencer key, in hex.
    pub sequencer: String,
    /// Where the replica takes submissions.
    pub url: Option<String>,
}

impl LeaseHolder {
    fn encode(&self) -> bytes::Bytes {
        format!("{} {}", self.sequencer, self.url.as_deref().unwrap_or("")).into()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (sequencer, url) = text.split_once(' ')?;
        Some(Self {
            sequencer: sequencer.to_owned(),
            url: (!url.is_empty()).then(|| url.to_owned()),
        })
    }
}

/// A replica's part in the lease, on a thread of its own.
pub struct Lease {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Told once this replica holds the lease.
    pub acquired: Option<oneshot::Receiver<()>>,
    /// Told, after that, when another replica holds it (why).
    pub lost: Option<oneshot::Receiver<String>>,
    /// The holder the replica last saw (itself once it holds the lease).
    pub holder: watch::Receiver<Option<LeaseHolder>>,
}

impl Lease {
    /// Connects, makes or finds the bucket (with `replicas`), and starts contending for the
    /// lease as `me`.
    pub fn start(
        login: &LogLogin,
        replicas: usize,
        me: LeaseHolder,
        log: Log,
    ) -> Result<Self, BusError> {
        let (stop, stop_rx) = watch::channel(false);
        let (acquired_tx, acquired) = oneshot::channel();
        let (lost_tx, lost) = oneshot::channel();
        let (holder_tx, holder) = watch::channel(None);
        let login = login.clone();
        let bucket_log = log.clone();
        let thread = crate::spawn_connected(
            "sequencer-lease",
            move || async move { bucket(&login, replicas, bucket_log).await },
            move |store: Store| async move {
                let contender = Contender {
                    store,
                    me,
                    holder: holder_tx,
                    log,
                };
                tokio::select! {
                    _ = contender.run(acquired_tx, lost_tx) => {}
                    _ = stopped(stop_rx) => {}
                }
            },
        )?;
        Ok(Self {
            stop,
            thread: Some(thread),
            acquired: Some(acquired),
            lost: Some(lost),
            holder,
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// The lease's stream, made with `replicas` when missing (a cluster just started may still
/// be electing its leader: asked again for a while).
async fn bucket(login: &LogLogin, replicas: usize, log: Log) -> Result<Store, BusError> {
    let (_client, jetstream) = connect_log(login, log).await?;
    let deadline = Instant::now() + crate::STREAM_WAIT;
    let config = jetstream::stream::Config {
        name: LEASE_STREAM.to_owned(),
        subjects: vec![LEASE_SUBJECT.to_owned()],
        storage: jetstream::stream::StorageType::File,
        max_messages_per_subject: 1,
        num_replicas: replicas,
        deny_delete: true,
        deny_purge: true,
        ..jetstream::stream::Config::default()
    };
    loop {
        match jetstream.get_or_create_stream(config.clone()).await {
            Ok(stream) => return Ok(Store { jetstream, stream }),
            Err(why) if Instant::now() >= deadline => {
                return Err(BusError::LogStream(format!(
                    "lease stream {LEASE_STREAM}: {why}"
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The lease's last message, and conditional writes of the next.
struct Store {
    jetstream: jetstream::Context,
    stream: jetstream::stream::Stream,
}

/// Why a conditional write did not happen.
enum Written {
    /// Another write came first.
    Taken,
    /// The cluster did not answer.
    Failed(String),
}

impl Store {
    /// The lease's revision and holder (none: never held).
    async fn entry(&self) -> Result<Option<(u64, Option<LeaseHolder>)>, String> {
        use jetstream::stream::LastRawMessageErrorKind;
        match self
            .stream
            .get_last_raw_message_by_subject(LEASE_SUBJECT)
            .await
        {
            Ok(message) => Ok(Some((
                message.sequence,
                LeaseHolder::decode(&message.payload),
            ))),
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Writes `holder` if the lease's revision is still `revision` (0: never held); returns
    /// the new revision.
    async fn write(&self, holder: &LeaseHolder, revision: u64) -> Result<u64, Written> {
        let message = PublishMessage::build()
            .payload(holder.encode())
            .expected_last_subject_sequence(revision);
        let ack = self
            .jetstream
            .send_publish(LEASE_SUBJECT, message)
            .await
            .map_err(|error| Written::Failed(error.to_string()))?;
        match ack.await {
            Ok(ack) => Ok(ack.sequence),
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                Err(Written::Taken)
            }
            Err(error) => Err(Written::Failed(error.to_string())),
        }
    }
}

struct Contender {
    store: Store,
    me: LeaseHolder,
    holder: watch::Sender<Option<LeaseHolder>>,
    log: Log,
}

impl Contender {
    async fn run(self, acquired: oneshot::Sender<()>, lost: oneshot::Sender<String>) {
        let revision = self.acquire().await;
        let _ = self.holder.send(Some(self.me.clone()));
        let _ = acquired.send(());
        let why = self.hold(revision).await;
        let _ = lost.send(why);
    }

    /// Watches the lease until this replica writes itself in; returns the revision written.
    async fn acquire(&self) -> u64 {
        let mut seen: Option<(u64, Instant)> = None;
        loop {
            match self.store.entry().await {
                Ok(None) => {
                    if let Ok(revision) = self.store.write(&self.me, 0).await {
                        return revision;
                    }
                }
                Ok(Some((revision, holder))) => {
                    // The lease of this replica's earlier life is its own to take back.
                    let mine = holder
                        .as_ref()
                        .is_some_and(|holder| holder.sequencer == self.me.sequencer);
                    let _ = self.holder.send(holder);
                    let stale = match seen {
                        Some((seen, since)) if seen == revision => since.elapsed() >= LEASE_TIMEOUT,
                        _ => {
                            seen = Some((revision, Instant::now()));
                            false
                        }
                    };
                    if mine || stale {
                        if let Ok(written) = self.store.write(&self.me, revision).await {
                            return written;
                        }
                    }
                }
                Err(_) => {}
            }
            tokio::time::sleep(LEASE_RENEW).await;
        }
    }

    /// Renews the lease until another replica holds it; says why it was lost.
    async fn hold(&self, mut revision: u64) -> String {
        let mut failing_since: Option<Instant> = None;
        let mut logged = Instant::now();
        loop {
            tokio::time::sleep(LEASE_RENEW).await;
            match self.store.write(&self.me, revision).await {
                Ok(next) => {
                    revision = next;
                    failing_since = None;
                }
                Err(Written::Taken) => {
                    let holder = self.store.entry().await.ok().flatten().and_then(|(_, h)| h);
                    let _ = self.holder.send(holder.clone());
                    return match holder {
                        Some(holder) => format!(
                            "sequencer {} holds the lease{}",
                            holder.sequencer,
                            holder
                                .url
                                .map(|url| format!(" ({url})"))
                                .unwrap_or_default()
                        ),
                        None => "another replica holds the lease".to_owned(),
                    };
                }
                Err(Written::Failed(error)) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if logged.elapsed() >= DOWN_LOG_EVERY {
                        logged = Instant::now();
                        (self.log)(&format!(
                            "lease: cannot renew for {:.1} s ({error})",
                            since.elapsed().as_secs_f64()
                        ));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_value_reads_back() {
        for url in [None, Some("http://127.0.0.1:8080".to_owned())] {
            let holder = LeaseHolder {
                sequencer: "ab".repeat(32),
                url,
            };
            assert_eq!(LeaseHolder::decode(&holder.encode()), Some(holder));
        }
        assert_eq!(LeaseHolder::decode(b"no-space"), None);
    }
}
