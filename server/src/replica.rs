//! A replica of a replicated fabric (`fabric serve --replicated`, docs/FORMAT.md §16): it
//! follows the replicated log (a live auditor and a hot standby) until it holds the sequencer
//! lease; then it catches up with the log's end, takes the log over (a `sequencer_takeover`
//! signed by its own key) and sequences, until it stops or loses its place. A replica that
//! loses its place (the lease gone to another, or an append the stream refused) stops with an
//! error and acknowledges nothing more; started again, it discards what never reached the
//! quorum and follows.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use fabric_actors::serve::{ServeOutcome, ServeSpec, Submission};
use fabric_audit::Replay;
use fabric_bus::{BusError, Lease, LeaseHolder, ReplicationError};
use fabric_events::PublicKey;
use fabric_ledger::Ledger;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::ServerError;
use crate::follow::{Follower, Following};
use crate::handlers::Shared;
use crate::nodes::Feed;
use crate::service::{
    drive, start_gateway, start_outbox, start_replicator, Driving, Replication, Running, Served,
    ServerConfig, Stop,
};

/// How long a replica that won the lease lets the sequencer before it notice the loss (at
/// its next renewal) before it catches up: a sequencer still publishing then would make the
/// new one's takeover fail its fencing.
const TAKEOVER_GRACE: Duration =
    Duration::from_millis(2 * fabric_bus::lease::LEASE_RENEW.as_millis() as u64);

/// What a replica starts with.
pub(crate) struct ReplicaStart {
    pub(crate) ledger: Ledger,
    pub(crate) replay: Replay,
    /// The node gateway's feed of the log at start.
    pub(crate) feed: Feed,
    /// The stream sequence to follow from (after the reconciliation at start).
    pub(crate) from: Option<u64>,
    /// Where the node gateway hands its requests, once this replica sequences.
    pub(crate) intake: mpsc::Sender<Submission>,
    pub(crate) following: Arc<Following>,
    /// The addresses the server listens on.
    pub(crate) addresses: Vec<String>,
}

/// Serves as a replica until SIGINT/SIGTERM, or until it stops by itself.
pub(crate) async fn run(
    config: &ServerConfig,
    replication: &Replication,
    running: Running,
    shared: web::Data<Shared>,
    start: ReplicaStart,
    spec: ServeSpec,
    intake: mpsc::Receiver<Submission>,
) -> Result<Served, ServerError> {
    let Running {
        server,
        stop: stop_server,
    } = running;
    let advertise = replication.advertise.clone().or_else(|| {
        start
            .addresses
            .iter()
            .find(|address| address.starts_with("http"))
            .cloned()
    });
    let own = PublicKey::from(&spec.keys.ledger.verifying_key());
    let log: fabric_bus::outbox::Log = Arc::new(|line: &str| eprintln!("{line}"));
    let me = LeaseHolder {
        sequencer: own.to_string(),
        url: advertise.clone(),
    };
    let lease =
        Lease::start(&replication.login, replication.replicas, me, log).map_err(|error| {
            ServerError::Replicate {
                urls: replication.login.urls.clone(),
                error,
            }
        })?;
    let follower = Follower::start(
        (start.ledger, start.replay, Some(start.feed)),
        replication.login.clone(),
        start.from,
        shared.clone(),
        Arc::clone(&start.following),
    )
    .map_err(ServerError::Follow)?;
    let (stop, stop_rx) = watch::channel(false);
    let life = Life {
        config: config.clone(),
        replication: Replication {
            advertise,
            ..replication.clone()
        },
        shared,
        following: start.following,
        gateway_intake: start.intake,
        driving_intake: intake,
        stop: stop_rx,
        stop_server,
    };
    let lived = actix_rt::spawn(life.live(lease, follower, spec));
    // Returns after SIGINT/SIGTERM (or a stop of the replica), once the requests in flight
    // have been answered.
    let served = server.await;
    let _ = stop.send(true);
    let lived = lived.await.map_err(|_| ServerError::DriverPanicked)?;
    served.map_err(|error| ServerError::Http { error })?;
    lived
}

struct Life {
    config: ServerConfig,
    replication: Replication,
    shared: web::Data<Shared>,
    following: Arc<Following>,
    gateway_intake: mpsc::Sender<Submission>,
    driving_intake: mpsc::Receiver<Submission>,
    stop: watch::Receiver<bool>,
    stop_server: Stop,
}

impl Life {
    async fn live(
        self,
        mut lease: Lease,
        mut follower: Follower,
        mut spec: ServeSpec,
    ) -> Result<Served, ServerError> {
        let mut stop = self.stop.clone();
        let acquired = lease.acquired.take();
        let failed = follower.stopped.take();
        tokio::select! {
            () = told(acquired) => {}
            why = told(failed) => return self.fail(ServerError::Follow(why)).await,
            () = stopped(&mut stop) => {
                let (ledger, _, _) = follower.finish().map_err(ServerError::Follow)?;
                let tree_head = ledger.tree_head();
                return Ok(Served {
                    outcome: ServeOutcome { ledger, last_tick: 0, tree_head },
                    published: None,
                });
            }
        }
        eprintln!(
            "replica: this replica holds the sequencer lease: it catches up with the \
             replicated log and takes it over"
        );
        tokio::time::sleep(TAKEOVER_GRACE).await;
        let (ledger, feed, quorum) = loop {
            let (ledger, replay, feed) = follower
                .finish_at_end()
                .await
                .map_err(ServerError::Follow)?;
            let artifacts = self.shared.artifacts.clone();
            match start_replicator(&ledger, &spec, &self.replication, artifacts) {
                Ok(quorum) => break (ledger, feed, quorum),
                // The sequencer before appended after the catch-up: catch up again.
                Err(ServerError::Replicate {
                    error: BusError::Replication(ReplicationError::Behind { .. }),
                    ..
                }) => {
                    follower = Follower::start(
                        (ledger, replay, feed),
                        self.replication.login.clone(),
                        None,
                        self.shared.clone(),
                        Arc::clone(&self.following),
                    )
                    .map_err(ServerError::Follow)?;
                }
                Err(error) => return self.fail(error).await,
            }
        };
        spec.quorum = Some(quorum);
        spec.inputs = Some(Arc::new(crate::inputs::ArtifactInputs(
            self.shared.artifacts.clone(),
        )));
        let Some(feed) = feed else {
            return self
                .fail(ServerError::Follow(
                    "the replica's follower kept no feed".to_owned(),
                ))
                .await;
        };
        // The gateway starts a runtime of its own and waits for it: not from this one's thread.
        let (gateway, outbox) = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let gateway = start_gateway(
                        &self.config,
                        feed,
                        self.gateway_intake.clone(),
                        &self.shared,
                        spec.world.verify_ppm,
                    )?;
                    Ok::<_, ServerError>((gateway, start_outbox(&self.config, &ledger)?))
                })
                .join()
                .map_err(|_| ServerError::DriverPanicked)?
        })?;
        self.following
            .sequencing
            .store(true, std::sync::atomic::Ordering::Release);
        // A lease gone to another replica stops this one: it acknowledges nothing more.
        let deposed = Rc::new(RefCell::new(None));
        if let Some(lost) = lease.lost.take() {
            let (deposed, stop_server) = (Rc::clone(&deposed), self.stop_server.clone());
            actix_rt::spawn(async move {
                if let Ok(why) = lost.await {
                    eprintln!("error: this replica lost the sequencer lease: {why}");
                    *deposed.borrow_mut() = Some(why);
                    stop_server.stop().await;
                }
            });
        }
        let driving = Driving {
            config: self.config,
            shared: self.shared,
            intake: self.driving_intake,
            stop: self.stop,
            stop_server: self.stop_server,
        };
        let served = drive(driving, spec, ledger, outbox, gateway).await;
        drop(lease);
        let deposed = deposed.borrow_mut().take();
        match deposed {
            Some(why) => Err(ServerError::Deposed(why)),
            None => served,
        }
    }

    async fn fail(self, error: ServerError) -> Result<Served, ServerError> {
        eprintln!("error: the replica stopped: {error}");
        self.stop_server.stop().await;
        Err(error)
    }
}

/// What a one-shot says once it says it; never, when its sender is gone unheard.
async fn told<T>(receiver: Option<oneshot::Receiver<T>>) -> T {
    match receiver {
        Some(receiver) => match receiver.await {
            Ok(value) => value,
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}
