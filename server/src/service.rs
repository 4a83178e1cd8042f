//! Starting and stopping the service: the HTTP server (TCP and/or a Unix socket) in front of
//! the serve driver on one actix system, the NATS outbox told after each durable tick, and
//! the graceful stop on SIGINT/SIGTERM (stop accepting, end follow streams and half-read
//! bodies at once, answer the requests in flight within [`SHUTDOWN_GRACE_S`], let the driver
//! append its last tick). Connections are capped and timed ([`crate::limits`]); a TCP
//! listener off loopback speaks TLS unless told otherwise.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpServer};
use fabric_actors::serve::{Quorum, QuorumAnswer, ServeOutcome, ServeSpec};
use fabric_actors::world::World;
use fabric_api::job::JobState;
use fabric_audit::Replay;
use fabric_bus::{BusError, Outbox, OutboxReport, Replicator};
use fabric_ledger::{ArtifactLog, Ledger, LedgerError, ARTIFACTS_FILE};
use tokio::sync::{mpsc, watch};

use crate::connections::{connection_caps, peer_of, Connections};
use crate::error::ServerError;
use crate::follow::{Follower, Following};
use crate::handlers::{error, routes, CheckpointSigner, Shared};
use crate::index::{index_log, View};
use crate::limits::{
    HEAD_READ_TIMEOUT_MS, KEEP_ALIVE_MS, PEER_CONNECTIONS_MAX, SHUTDOWN_GRACE_S,
    TLS_HANDSHAKE_TIMEOUT_MS, TRIM_CHECK_MS,
};
use crate::metrics::ServeMetrics;
use crate::nodes::{Feed, FeedBuilder, NatsLogin, NodeGateway};
use crate::replica::ReplicaStart;
use crate::requests::{guard, Stopping};
use crate::tls::{check_plaintext, server_config, TlsFiles};

/// Submissions waiting for a tick; more get 503 (the fabric is overloaded).
pub const INTAKE_CAPACITY: usize = 65_536;
/// Most HTTP worker threads.
pub const WORKERS_MAX: usize = 64;
/// The listener's backlog: connections the kernel completes while every slot is taken.
const BACKLOG: u32 = 2_048;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// TCP address to listen on (port 0: any free port).
    pub listen: Option<String>,
    /// Unix socket to listen on.
    pub unix: Option<PathBuf>,
    /// NATS server to publish every appended event on.
    pub nats: Option<String>,
    /// The server's NATS user and password (for the node gateway, and for publication).
    pub nats_user: Option<(String, String)>,
    /// On shutdown, how long to wait for NATS to take what is not yet published.
    pub nats_drain: Duration,
    /// With NATS, publish every event on the stream `FABRIC_EVENTS` too (docs/FORMAT.md §12).
    pub event_stream: bool,
    /// Milliseconds between ticks.
    pub tick_ms: u64,
    /// HTTP worker threads.
    pub workers: usize,
    /// Serve the TCP listener over TLS with this certificate.
    pub tls: Option<TlsFiles>,
    /// Allow plaintext on a TCP address that is not loopback.
    pub insecure_plaintext: bool,
    /// Most connections served at once (default: sized from the file-descriptor limit, less
    /// the health reserve).
    pub connections_max: Option<usize>,
    /// Where the fabric's keys come from; a simulation says so in every answer.
    pub key_origin: fabric_events::KeyOrigin,
    /// A replicated fabric's sequencer (docs/FORMAT.md §16): no tick is acknowledged before
    /// the replicated log's quorum holds it.
    pub replication: Option<Replication>,
    /// Witnesses to ask for cosignatures of each head (docs/FORMAT.md §17.5).
    pub witnessing: Option<crate::witnesses::Witnessing>,
    /// The fabrics this one federates with (docs/FORMAT.md §18).
    pub federating: crate::federation::Federating,
}

/// How a sequencer reaches its replicated log.
#[derive(Clone, Debug)]
pub struct Replication {
    /// The cluster.
    pub login: fabric_bus::LogLogin,
    /// Replicas of the stream, when this sequencer creates it.
    pub replicas: usize,
    /// The address followers send submitting clients to (default: the first address this
    /// server listens on).
    pub advertise: Option<String>,
}

/// What the server does with the log.
pub enum Role {
    /// Sequence it: the serve driver with these actors.
    Sequence(Box<ServeSpec>),
    /// Follow a replicated log (docs/FORMAT.md §16) into the data folder's replica ledger,
    /// verifying it, and serve reads from the copy.
    Follow {
        /// The fabric's world, as the data folder records it.
        world: World,
        /// The cluster.
        login: fabric_bus::LogLogin,
    },
}

/// How serving ended.
pub struct Served {
    /// The driver's last tick, tree head and ledger.
    pub outcome: ServeOutcome,
    /// What the outbox published, with `--nats`.
    pub published: Option<OutboxReport>,
}

/// Serves `ledger` with the actors of `spec` until SIGINT or SIGTERM. `listening` is told
/// the addresses once the server listens (`http://ADDR`, `unix:PATH`).
pub fn serve(
    config: &ServerConfig,
    mut ledger: Ledger,
    role: Role,
    listening: impl FnOnce(&[String]),
) -> Result<Served, ServerError> {
    check(config)?;
    let tls = config.tls.as_ref().map(server_config).transpose()?;
    let connections = Arc::new(Connections::new(
        connection_caps(config.connections_max)?,
        PEER_CONNECTIONS_MAX,
    ));
    let (stop_streams, stopping) = watch::channel(false);
    let (intake, intake_rx) = mpsc::channel(INTAKE_CAPACITY);
    let artifacts = open_artifacts(&mut ledger)?;
    let replicated = match (&role, &config.replication) {
        (Role::Sequence(_), Some(replication)) => Some(replication),
        _ => None,
    };
    // A replica first cuts its log back to what the replicated log holds: a tail it wrote as
    // sequencer that never reached the quorum was never acknowledged.
    let from = match replicated {
        Some(replication) => reconcile(&mut ledger, replication)?,
        None => None,
    };
    let world = match &role {
        Role::Sequence(spec) => &spec.world,
        Role::Follow { world, .. } => world,
    };
    let following = (matches!(role, Role::Follow { .. }) || replicated.is_some())
        .then(|| Arc::new(Following::default()));
    let (shared, mut feed_builder, replay) =
        shared(config, &ledger, artifacts, world, intake.clone())?;
    let secrets = match &role {
        Role::Sequence(spec) => std::iter::once(&spec.keys.ledger)
            .chain(&spec.keys.staged)
            .cloned()
            .collect(),
        Role::Follow { .. } => Vec::new(),
    };
    let shared = web::Data::new(Shared {
        following: following.clone(),
        checkpoints: CheckpointSigner::new(&ledger.reader(), secrets),
        finality: crate::witnesses::Finality {
            required: config.witnessing.is_some(),
            ..Default::default()
        },
        federation: crate::federation::Federation::new(config.federating.clone()),
        ..shared
    });
    if let Some(witnessing) = &config.witnessing {
        let weak = std::sync::Arc::downgrade(&shared.clone().into_inner());
        crate::witnesses::start(weak, witnessing.clone())
            .map_err(|error| ServerError::Witnesses { error })?;
    }
    let (mut spec, follower_login) = match role {
        Role::Sequence(spec) => (Some(spec), None),
        Role::Follow { login, .. } => (None, Some(login)),
    };
    // A follower sequences nothing: no node gateway, no outbox, no driver (a replica starts
    // them once it takes the log over).
    let mut started = None;
    let gateway_intake = intake.clone();
    if let Some(spec) = spec.as_mut().filter(|_| replicated.is_none()) {
        spec.inputs = Some(Arc::new(crate::inputs::ArtifactInputs(
            shared.artifacts.clone(),
        )));
        let verify_ppm = spec.world.verify_ppm;
        let feed = std::mem::take(&mut feed_builder).build(
            &ledger.reader(),
            replay.state(),
            &ledger.tree_head(),
        )?;
        started = Some((
            start_gateway(config, feed, intake, &shared, verify_ppm)?,
            start_outbox(config, &ledger)?,
        ));
    }
    let system = actix_rt::System::new();
    let result = system.block_on(async {
        give_back_memory(Arc::clone(&connections));
        let listener = Listener {
            tls,
            connections,
            stopping,
            following: following.clone(),
        };
        let (running, addresses) = bind(config, listener, shared.clone())?;
        let stop = Stop {
            streams: Rc::new(stop_streams),
            server: running.handle(),
        };
        stop_on_signals(stop.clone())?;
        let running = Running {
            server: running,
            stop,
        };
        listening(&addresses);
        match (spec, started, replicated, follower_login, following) {
            (Some(spec), Some((gateway, outbox)), None, _, _) => {
                run(
                    config,
                    running,
                    shared,
                    ledger,
                    *spec,
                    intake_rx,
                    (outbox, gateway),
                )
                .await
            }
            (Some(spec), None, Some(replication), _, Some(following)) => {
                let feed =
                    feed_builder.build(&ledger.reader(), replay.state(), &ledger.tree_head())?;
                let start = ReplicaStart {
                    ledger,
                    replay,
                    feed,
                    from,
                    intake: gateway_intake,
                    following,
                    addresses,
                };
                let spec = *spec;
                crate::replica::run(config, replication, running, shared, start, spec, intake_rx)
                    .await
            }
            (None, _, _, Some(login), Some(following)) => {
                let copy = (ledger, replay, None);
                let follower = Follower::start(copy, login, None, shared.clone(), following)
                    .map_err(ServerError::Follow)?;
                follow(running, follower).await
            }
            _ => Err(ServerError::Setting(
                "a server sequences, follows, or is a replica",
            )),
        }
    });
    if let Some(path) = &config.unix {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn check(config: &ServerConfig) -> Result<(), ServerError> {
    if config.tick_ms == 0 {
        return Err(ServerError::Setting("--tick-ms must be at least 1"));
    }
    if config.workers == 0 || config.workers > WORKERS_MAX {
        return Err(ServerError::Setting("--workers must be between 1 and 64"));
    }
    if config.tls.is_none() {
        if let Some(address) = &config.listen {
            check_plaintext(address, config.insecure_plaintext)?;
        }
    }
    Ok(())
}

/// The artifact store beside the ledger (FORMAT §7), made durable by each of the ledger's
/// commits before the log's data; artifacts that a server of an earlier build kept in the
/// ledger's sled tree `artifacts` are moved into it once.
fn open_artifacts(ledger: &mut Ledger) -> Result<Arc<ArtifactLog>, ServerError> {
    let failed = |error| ServerError::ArtifactStore { error };
    let reader = ledger.reader();
    let path = reader.path().join(ARTIFACTS_FILE);
    let (artifacts, opened) = ArtifactLog::open(&path).map_err(failed)?;
    if opened.cut_bytes > 0 {
        eprintln!(
            "note: {} ended in {} bytes that are no whole artifact (a write that a crash \
             interrupted, never acknowledged): cut",
            path.display(),
            opened.cut_bytes
        );
    }
    let legacy = reader.artifacts_tree().map_err(failed)?;
    if !legacy.is_empty() {
        let sled_failed = |cause| {
            failed(LedgerError::Storage {
                context: "moving the artifacts tree into the artifact store",
                cause,
            })
        };
        let mut moved = 0;
        for item in legacy.iter() {
            let (key, bytes) = item.map_err(sled_failed)?;
            let hash = fabric_events::Hash32(*blake3::hash(&bytes).as_bytes());
            if key.as_ref() != hash.as_bytes() {
                eprintln!(
                    "warning: the artifacts tree holds damaged bytes under {key:?}: left out"
                );
                continue;
            }
            artifacts.insert(&hash, &bytes).map_err(failed)?;
            moved += 1;
        }
        artifacts.sync().map_err(failed)?;
        legacy.clear().map_err(sled_failed)?;
        eprintln!(
            "note: moved {moved} artifacts from the ledger's sled tree into {}",
            path.display()
        );
    }
    let artifacts = Arc::new(artifacts);
    ledger.sync_with(Arc::clone(&artifacts));
    Ok(artifacts)
}

/// Cuts a replica's log back to what the replicated log holds (a tail it wrote as sequencer
/// that never reached the quorum), saying so, and returns the stream sequence to follow from.
fn reconcile(ledger: &mut Ledger, replication: &Replication) -> Result<Option<u64>, ServerError> {
    let failed = |error: BusError| ServerError::Replicate {
        urls: replication.login.urls.clone(),
        error,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| failed(BusError::Runtime(error.to_string())))?;
    let log: fabric_bus::outbox::Log = Arc::new(|line: &str| eprintln!("{line}"));
    let size = ledger.len();
    let reconciled = runtime.block_on(async {
        let (_client, jetstream) = fabric_bus::replication::connect_log(&replication.login, log)
            .await
            .map_err(failed)?;
        let deadline = Instant::now() + fabric_bus::STREAM_WAIT;
        let stream =
            fabric_bus::replication::log_stream(&jetstream, Some(replication.replicas), deadline)
                .await
                .map_err(failed)?;
        crate::follow::reconcile(ledger, &stream)
            .await
            .map_err(ServerError::Follow)
    })?;
    if reconciled.discarded > 0 {
        eprintln!(
            "note: discarded seqs {}..{} ({} entries) of this replica's log: it wrote them as \
             sequencer and they never reached the replicated log's quorum, so they were never \
             acknowledged",
            size - reconciled.discarded,
            size,
            reconciled.discarded
        );
    }
    Ok(reconciled.from)
}

/// The handlers' shared views, with the job index of the log so far, and what the node
/// gateway's feed needs (both from one replay of the log, which comes back at its end).
fn shared(
    config: &ServerConfig,
    ledger: &Ledger,
    artifacts: Arc<ArtifactLog>,
    world: &World,
    intake: mpsc::Sender<fabric_actors::serve::Submission>,
) -> Result<(Shared, FeedBuilder, Replay), ServerError> {
    let reader = ledger.reader();
    let mut feed = FeedBuilder::default();
    let (jobs, replay) = index_log(&reader, &artifacts, ledger.len(), &mut feed)?;
    let spill_routes: Vec<(String, String)> = world
        .shards
        .iter()
        .flat_map(|shard| {
            shard
                .spillover
                .iter()
                .map(|to| (shard.name.clone(), to.clone()))
        })
        .collect();
    let active = jobs
        .values()
        .filter(|record| record.receipt.is_none() && record.status != JobState::Cancelled)
        .map(|record| record.job)
        .collect();
    let shared = Shared {
        intake,
        ledger_key: ledger.ledger_key(),
        artifacts,
        view: RwLock::new(View {
            tick: 0,
            tree_head: ledger.tree_head(),
            active,
            jobs,
            covenant: replay.state().covenant().clone(),
        }),
        metrics: ServeMetrics::new(&spill_routes),
        refusals: Default::default(),
        batch_readers: Default::default(),
        tick_ms: config.tick_ms,
        key_origin: config.key_origin,
        started: Instant::now(),
        reader,
        following: None,
        checkpoints: CheckpointSigner::default(),
        finality: Default::default(),
        federation: Default::default(),
    };
    Ok((shared, feed, replay))
}

/// The node gateway, for a fabric with operator keys served with NATS (a simulation's nodes
/// run in the server).
pub(crate) fn start_gateway(
    config: &ServerConfig,
    feed: Feed,
    intake: mpsc::Sender<fabric_actors::serve::Submission>,
    shared: &Shared,
    verify_ppm: u32,
) -> Result<Option<NodeGateway>, ServerError> {
    let Some(url) = &config.nats else {
        return Ok(None);
    };
    if config.key_origin.is_simulation() {
        return Ok(None);
    }
    let login = NatsLogin {
        url: url.clone(),
        user: config.nats_user.clone(),
    };
    NodeGateway::start(&login, feed, intake, shared.artifacts.clone(), verify_ppm).map(Some)
}

/// The sequencer's replicator (docs/FORMAT.md §16), as the driver's quorum.
pub(crate) fn start_replicator(
    ledger: &Ledger,
    spec: &ServeSpec,
    replication: &Replication,
    artifacts: Arc<ArtifactLog>,
) -> Result<Arc<dyn Quorum>, ServerError> {
    let login = &replication.login;
    let advertise = replication.advertise.clone();
    let mut secrets = vec![spec.keys.ledger.clone()];
    secrets.extend(spec.keys.staged.iter().cloned());
    let log: fabric_bus::outbox::Log = Arc::new(|line: &str| eprintln!("{line}"));
    let config = fabric_bus::ReplicatorConfig {
        login: login.clone(),
        replicas: replication.replicas,
        advertise,
        secrets,
        artifacts: Some(artifacts),
    };
    let replicator = Replicator::start(ledger.reader(), config, log).map_err(|error| {
        ServerError::Replicate {
            urls: login.urls.clone(),
            error,
        }
    })?;
    Ok(Arc::new(ReplicatedQuorum(replicator)))
}

/// The replicator as the serve driver's [`Quorum`].
struct ReplicatedQuorum(Replicator);

impl Quorum for ReplicatedQuorum {
    fn holds(&self, size: u64) -> QuorumAnswer {
        let answer = self.0.replicate(size);
        Box::pin(async move {
            answer
                .await
                .map_err(|_| "the replicator stopped".to_owned())?
                .map_err(|error| error.to_string())
        })
    }
}

pub(crate) fn start_outbox(
    config: &ServerConfig,
    ledger: &Ledger,
) -> Result<Option<Outbox>, ServerError> {
    let Some(url) = config.nats.as_ref().filter(|_| config.event_stream) else {
        return Ok(None);
    };
    let log: fabric_bus::outbox::Log = Arc::new(|line: &str| eprintln!("{line}"));
    let outbox =
        Outbox::start(ledger.reader(), url, config.nats_user.clone(), log).map_err(|error| {
            ServerError::Nats {
                url: url.clone(),
                error,
            }
        })?;
    outbox.durable(ledger.len());
    Ok(Some(outbox))
}

/// What the listener needs besides the handlers' views.
struct Listener {
    /// The TCP listener's TLS.
    tls: Option<rustls::ServerConfig>,
    /// The connection counts.
    connections: Arc<Connections>,
    /// Becomes true when the server starts stopping.
    stopping: Stopping,
    /// A follower's: where the sequencer is.
    following: Option<Arc<Following>>,
}

/// The HTTP server, bound to its TCP address and/or Unix socket (not yet running).
fn bind(
    config: &ServerConfig,
    listener: Listener,
    shared: web::Data<Shared>,
) -> Result<(Server, Vec<String>), ServerError> {
    let Listener {
        tls,
        connections,
        stopping,
        following,
    } = listener;
    // At the ceiling, each worker stops accepting; the cap and the reserve under the ceiling
    // are the slots' job.
    let per_worker = connections.ceiling().div_ceil(config.workers);
    let on_connect = Arc::clone(&connections);
    let simulation = config.key_origin.is_simulation();
    let mut server = HttpServer::new(move || {
        let stopping = stopping.clone();
        let following = following.clone();
        App::new()
            .wrap_fn(move |request, service| {
                guard(request, service, &stopping, following.as_deref())
            })
            .wrap(crate::handlers::simulation_banner(simulation))
            .app_data(shared.clone())
            .app_data(query_config())
            .configure(routes)
            .default_service(web::to(|| async {
                error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such endpoint (see GET /v0/openapi.json)",
                )
            }))
    })
    .on_connect(move |io, extensions| {
        extensions.insert(on_connect.open(peer_of(io)));
    })
    .workers(config.workers)
    .max_connections(per_worker)
    .backlog(BACKLOG)
    .client_request_timeout(Duration::from_millis(HEAD_READ_TIMEOUT_MS))
    .keep_alive(Duration::from_millis(KEEP_ALIVE_MS))
    .tls_handshake_timeout(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS))
    .shutdown_timeout(SHUTDOWN_GRACE_S)
    // actix-server's own signal handling stops the whole actix system, actors included,
    // before the driver's last tick: the signals are handled in `run` instead.
    .disable_signals();
    let tcp = match (&config.listen, &config.unix) {
        (Some(listen), _) => Some(listen.clone()),
        (None, None) => Some("127.0.0.1:8080".to_owned()),
        (None, Some(_)) => None,
    };
    let mut addresses = Vec::new();
    if let Some(address) = tcp {
        let listen_error = |error| ServerError::Listen {
            address: address.clone(),
            error,
        };
        let scheme = match tls {
            Some(tls) => {
                server = server
                    .bind_rustls_0_23(&address, tls)
                    .map_err(listen_error)?;
                "https"
            }
            None => {
                server = server.bind(&address).map_err(listen_error)?;
                "http"
            }
        };
        addresses.extend(
            server
                .addrs()
                .iter()
                .map(|addr| format!("{scheme}://{addr}")),
        );
    }
    if let Some(path) = &config.unix {
        remove_stale_socket(path)?;
        server = server.bind_uds(path).map_err(|error| ServerError::Socket {
            what: "could not listen on the Unix socket",
            path: path.clone(),
            error,
        })?;
        addresses.push(format!("unix:{}", path.display()));
    }
    Ok((server.run(), addresses))
}

/// A query string that does not parse gets the API's JSON error (400 `bad_query`) naming what
/// is wrong, like every other refusal, not actix's plain text.
fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _| {
        let response = error(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("the query string does not parse: {err}"),
        );
        actix_web::error::InternalError::from_response(err, response).into()
    })
}

/// A socket left by a server that is gone is replaced; anything else at the path is not.
fn remove_stale_socket(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::FileTypeExt;
    if !path.exists() {
        return Ok(());
    }
    let socket_error = |what, error| ServerError::Socket {
        what,
        path: path.to_path_buf(),
        error,
    };
    let metadata = std::fs::symlink_metadata(path)
        .map_err(|error| socket_error("could not inspect", error))?;
    if !metadata.file_type().is_socket() {
        return Err(ServerError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    std::fs::remove_file(path)
        .map_err(|error| socket_error("could not remove the old socket", error))
}

/// Every [`TRIM_CHECK_MS`], gives memory back to the system when many connections closed.
fn give_back_memory(connections: Arc<Connections>) {
    actix_rt::spawn(async move {
        let mut every = actix_rt::time::interval(Duration::from_millis(TRIM_CHECK_MS));
        loop {
            every.tick().await;
            connections.give_back_memory();
        }
    });
}

/// The HTTP server, running, and how to stop it.
pub(crate) struct Running {
    pub(crate) server: Server,
    pub(crate) stop: Stop,
}

/// How the server is stopped.
#[derive(Clone)]
pub(crate) struct Stop {
    /// Ends follow streams and half-read bodies.
    streams: Rc<watch::Sender<bool>>,
    /// Stops accepting and gives the requests in flight [`SHUTDOWN_GRACE_S`].
    server: ServerHandle,
}

impl Stop {
    pub(crate) async fn stop(&self) {
        let _ = self.streams.send(true);
        self.server.stop(true).await;
    }
}

/// Stops on SIGINT or SIGTERM: no more connections, follow streams and half-read bodies end
/// at once, the requests in flight are answered (their tick still comes) within the grace.
/// Both handlers are installed before this returns (before the server says it listens): a
/// signal right after the word is a clean stop, not the default death.
fn stop_on_signals(stop: Stop) -> Result<(), ServerError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|error| ServerError::Signal { error })?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|error| ServerError::Signal { error })?;
    actix_rt::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        stop.stop().await;
    });
    Ok(())
}

/// A follower's life: until SIGINT/SIGTERM, or until the follower stops by itself (the
/// replicated log does not verify, or cannot be read), which stops the server too.
async fn follow(running: Running, mut follower: Follower) -> Result<Served, ServerError> {
    let Running {
        server: running,
        stop: stop_server,
    } = running;
    if let Some(stopped) = follower.stopped.take() {
        actix_rt::spawn(async move {
            if let Ok(why) = stopped.await {
                eprintln!("error: the follower stopped: {why}");
                stop_server.stop().await;
            }
        });
    }
    let served = running.await;
    let (ledger, _, _) = follower.finish().map_err(ServerError::Follow)?;
    served.map_err(|error| ServerError::Http { error })?;
    let tree_head = ledger.tree_head();
    Ok(Served {
        outcome: ServeOutcome {
            ledger,
            last_tick: 0,
            tree_head,
        },
        published: None,
    })
}

async fn run(
    config: &ServerConfig,
    running: Running,
    shared: web::Data<Shared>,
    ledger: Ledger,
    spec: ServeSpec,
    intake: mpsc::Receiver<fabric_actors::serve::Submission>,
    (outbox, gateway): (Option<Outbox>, Option<NodeGateway>),
) -> Result<Served, ServerError> {
    let Running {
        server: running,
        stop: stop_server,
    } = running;
    let (stop, stop_rx) = watch::channel(false);
    let driving = Driving {
        config: config.clone(),
        shared,
        intake,
        stop: stop_rx,
        stop_server,
    };
    let driver = actix_rt::spawn(drive(driving, spec, ledger, outbox, gateway));
    // Returns after SIGINT/SIGTERM, once the requests in flight have been answered.
    let served = running.await;
    let _ = stop.send(true);
    let driven = driver.await.map_err(|_| ServerError::DriverPanicked)?;
    served.map_err(|error| ServerError::Http { error })?;
    driven
}

/// What the serve driver runs with, besides its actors and its ledger.
pub(crate) struct Driving {
    pub(crate) config: ServerConfig,
    pub(crate) shared: web::Data<Shared>,
    pub(crate) intake: mpsc::Receiver<fabric_actors::serve::Submission>,
    /// Turns true when the server stops.
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) stop_server: Stop,
}

/// The serve driver until it stops, with the views, the outbox and the node gateway told
/// after each durable tick; a fabric that stops by itself stops the server too. Then the
/// gateway finishes and the outbox drains.
pub(crate) async fn drive(
    driving: Driving,
    spec: ServeSpec,
    ledger: Ledger,
    outbox: Option<Outbox>,
    gateway: Option<NodeGateway>,
) -> Result<Served, ServerError> {
    let Driving {
        config,
        shared,
        intake,
        stop,
        stop_server,
    } = driving;
    // The driver's callback tells the outbox after each tick; it runs on this thread.
    let outbox = Rc::new(RefCell::new(outbox));
    let tick_outbox = Rc::clone(&outbox);
    let outbox_cursor = shared.reader.outbox_tree().ok();
    let gateway = Rc::new(gateway);
    let tick_gateway = Rc::clone(&gateway);
    let outcome = fabric_actors::serve::serve(&spec, ledger, intake, stop, move |tick| {
        if let Some(outbox) = &*tick_outbox.borrow() {
            outbox.durable(tick.tree_head.tree_size);
        }
        if let Some(tree) = &outbox_cursor {
            shared
                .metrics
                .observe_outbox(tree, tick.tree_head.tree_size);
        }
        shared.on_tick(tick);
        if let Some(gateway) = &*tick_gateway {
            gateway.tick(tick);
        }
    })
    .await;
    if let Err(error) = &outcome {
        // The fabric cannot go on: neither can the server.
        eprintln!("error: the fabric stopped: {error}");
        stop_server.stop().await;
    }
    let outcome = outcome.map_err(|error| ServerError::Fabric { error })?;
    if let Some(gateway) = Rc::into_inner(gateway).flatten() {
        gateway.finish();
    }
    let publisher = outbox.borrow_mut().take();
    let published = match publisher {
        None => None,
        Some(publisher) => Some(
            publisher
                .finish(config.nats_drain)
                .map_err(|error| ServerError::Drain { error })?,
        ),
    };
    Ok(Served { outcome, published })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_of_an_earlier_build_move_from_sled_into_the_store_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = fabric_events::derive_signing_key(3, "tests/ledger");
        let good = vec![5u8; 2000];
        let good_hash = fabric_events::Hash32(*blake3::hash(&good).as_bytes());
        {
            let ledger = Ledger::open(dir.path(), key.clone()).expect("ledger");
            let tree = ledger.reader().artifacts_tree().expect("tree");
            tree.insert(good_hash.as_bytes(), good.as_slice())
                .expect("insert");
            tree.insert([1u8; 32], b"not the bytes of that address".as_slice())
                .expect("insert");
            ledger
                .reader()
                .artifacts_tree()
                .expect("tree")
                .flush()
                .expect("flush");
        }
        let mut ledger = Ledger::open(dir.path(), key.clone()).expect("reopen");
        let artifacts = open_artifacts(&mut ledger).expect("opened");
        assert_eq!(artifacts.len(), 1, "the damaged one is left out");
        assert_eq!(artifacts.get(&good_hash).expect("get"), Some(good.clone()));
        assert!(ledger.reader().artifacts_tree().expect("tree").is_empty());
        // An append syncs the store with the log: a new artifact survives a reopen.
        let fresh = b"fresh".to_vec();
        let fresh_hash = fabric_events::Hash32(*blake3::hash(&fresh).as_bytes());
        artifacts.insert(&fresh_hash, &fresh).expect("insert");
        let owner = fabric_events::derive_signing_key(3, "tests/owner");
        let event = fabric_events::Event::new(
            fabric_events::Role::Owner,
            1,
            1,
            fabric_events::Heartbeat {
                node: "n".to_owned(),
                running_jobs: 0,
            },
        );
        let signed = fabric_events::SignedEvent::sign(&event, &owner).expect("signed");
        ledger.append(&[signed]).expect("appended");
        drop(artifacts);
        drop(ledger);
        let mut ledger = Ledger::open(dir.path(), key).expect("reopen");
        let artifacts = open_artifacts(&mut ledger).expect("opened again");
        assert_eq!(artifacts.len(), 2);
        assert_eq!(artifacts.get(&fresh_hash).expect("get"), Some(fresh));
    }
}
