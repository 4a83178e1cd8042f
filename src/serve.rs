//! `fabric serve`: the data folder and the fabric's keys, handed to `fabric-server`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use fabric_actors::serve::ServeSpec;
use fabric_server::{Role, ServerConfig};

/// Arguments of `fabric serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The data folder: a fabric made by `fabric init` (and committed), or with --simulation
    /// a simulated one (created when empty or missing)
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// With --simulation: the world of a new simulated fabric (ignored when resuming: the
    /// folder's run.json has it) [default: the built-in world, config/fabric.toml of the source]
    #[arg(long, value_name = "FILE", requires = "simulation")]
    config: Option<PathBuf>,
    /// With --simulation: the public seed of a new simulated fabric's keys (ignored when
    /// resuming)
    #[arg(long, default_value_t = 1, requires = "simulation")]
    seed: u64,
    #[command(flatten)]
    keys: KeyArgs,
    /// TCP address to listen on (port 0: any free port; the address is printed). Default
    /// 127.0.0.1:8080 unless only --unix is given
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Also (or only) listen on this Unix socket
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Publish every appended event on this NATS server's JetStream; a fabric with operator
    /// keys also serves its node agents there (`fabric node`)
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// The server's NATS user (it publishes work to every node and answers them)
    #[arg(long, value_name = "USER", requires_all = ["nats", "nats_password"])]
    nats_user: Option<String>,
    /// The NATS user's password
    #[arg(long, value_name = "PASSWORD", requires = "nats_user")]
    nats_password: Option<String>,
    /// On shutdown, wait this long for NATS to take the events not yet published
    #[arg(long, value_name = "SECS", default_value_t = 60, requires = "nats")]
    nats_drain_s: u64,
    /// With --nats: do not publish every event on the stream FABRIC_EVENTS (its subscribers,
    /// `fabric tail`, see nothing); node agents and the replicated log are served all the same
    #[arg(long, requires = "nats")]
    no_event_stream: bool,
    /// Milliseconds between ticks
    #[arg(long, value_name = "N", default_value_t = 100)]
    tick_ms: u64,
    /// HTTP worker threads
    #[arg(long, value_name = "N", default_value_t = 2)]
    workers: usize,
    /// Serve --listen over TLS with this certificate chain (PEM, the server's first)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM, mode 0600)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plaintext HTTP on a --listen address that is not loopback (requests and answers
    /// cross the network in the clear)
    #[arg(long, conflicts_with = "tls_cert")]
    insecure_plaintext: bool,
    /// Most connections open at once [default: the file-descriptor limit less 512, at most
    /// 16384]
    #[arg(long, value_name = "N")]
    connections_max: Option<usize>,
    /// How many ticks old the tick a job submission is signed for may be (older ones, and
    /// ticks from the future, are refused)
    #[arg(long, value_name = "TICKS", default_value_t = fabric_actors::serve::SUBMISSION_TICK_WINDOW_DEFAULT)]
    submission_tick_window: u64,
    /// A secret key file (mode 0600) of a key the owners may rotate the ledger, a router or a
    /// node to; from the rotation on, it signs in the old key's place (repeatable)
    #[arg(long = "staged-key", value_name = "FILE")]
    staged_keys: Vec<PathBuf>,
    /// Sequence a replicated fabric: every tick goes to the replicated log (stream FABRIC_LOG
    /// of the --nats cluster, servers comma-separated) and nothing is acknowledged before
    /// the stream's quorum holds it
    #[arg(long, requires = "nats", conflicts_with = "follow")]
    replicated: bool,
    /// Follow a replicated fabric: copy its replicated log from the --nats cluster into
    /// --data (a copy of the fabric's folder), verifying every entry, and serve reads from the
    /// copy; submissions are sent to the sequencer (307). Needs no key
    #[arg(long, requires = "nats", conflicts_with_all = ["ledger_key", "router_keys", "simulation", "staged_keys"])]
    follow: bool,
    /// With --replicated: replicas of the stream when it is created (at most the cluster's
    /// servers; an odd number)
    #[arg(long, value_name = "N", default_value_t = fabric_bus::LOG_REPLICAS_DEFAULT, requires = "replicated")]
    log_replicas: usize,
    /// With --replicated: the address followers send submitting clients to [default: the
    /// first address this server listens on]
    #[arg(long, value_name = "URL", requires = "replicated")]
    advertise: Option<String>,
    /// A witness to ask to cosign each head: its address and its cosigner key, as `fabric
    /// witness` prints it (URL=NAME+ID+KEY); repeatable. GET /v0/checkpoints/latest then
    /// serves only heads that --witness-quorum of them cosigned
    #[arg(long = "witness", value_name = "URL=VKEY", conflicts_with = "follow")]
    witnesses: Vec<String>,
    /// Cosignatures a head needs to be final [default: every --witness]
    #[arg(long, value_name = "K", requires = "witnesses")]
    witness_quorum: Option<usize>,
    /// A fabric to federate with: its address and its checkpoint verifier key, as its
    /// `fabric init --commit` or its /v0/health gives it (URL=ORIGIN+ID+KEY); repeatable.
    /// `fabric federation sync` then exchanges receipts with it
    #[arg(
        long = "federation-peer",
        value_name = "URL=VKEY",
        conflicts_with = "follow"
    )]
    federation_peers: Vec<String>,
    /// Least time between two federation receipts with one peer: a sync asked sooner is
    /// refused (429), so no one can grow the log faster
    #[arg(long, value_name = "MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(100..))]
    federation_interval_ms: u64,
    /// The CA certificate(s) an https:// --federation-peer's certificate must chain to (PEM)
    #[arg(long, value_name = "FILE", requires = "federation_peers")]
    federation_ca: Option<std::path::PathBuf>,
}

/// The keys flags of `fabric serve`.
#[derive(clap::Args, Debug)]
pub struct KeyArgs {
    /// Serve a simulation: keys derived from the public --seed (anyone can sign as any actor).
    /// An empty --data gets a new simulated fabric; without this flag a simulated folder is
    /// refused
    #[arg(long, conflicts_with_all = ["ledger_key", "router_keys"])]
    pub simulation: bool,
    /// The ledger's secret key file (mode 0600; `fabric keygen --world` writes ledger.key)
    #[arg(long, value_name = "FILE", required_unless_present_any = ["simulation", "follow"])]
    pub ledger_key: Option<PathBuf>,
    /// The folder of the routers' secret keys, `<shard>.key` (mode 0600)
    #[arg(long, value_name = "DIR", required_unless_present_any = ["simulation", "follow"])]
    pub router_keys: Option<PathBuf>,
}

impl KeyArgs {
    fn files(&self) -> fabric_sim::served::KeyFiles {
        fabric_sim::served::KeyFiles {
            simulation: self.simulation,
            ledger_key: self.ledger_key.clone(),
            router_keys: self.router_keys.clone(),
            replica: false,
        }
    }
}

/// The secrets of `--staged-key`, each file checked (mode, format, key pair).
fn load_staged(paths: &[PathBuf]) -> anyhow::Result<Vec<fabric_events::SigningKey>> {
    paths
        .iter()
        .map(|path| {
            fabric_events::keys::load_secret(path)
                .with_context(|| format!("--staged-key {}", path.display()))
        })
        .collect()
}

/// `fabric serve`.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    if args.follow {
        return follow(args);
    }
    let staged = load_staged(&args.staged_keys)?;
    // The keys come from the operator's files, or from the public seed of a simulation: the
    // server and its driver never derive a key.
    let files = fabric_sim::served::KeyFiles {
        replica: args.replicated,
        ..args.keys.files()
    };
    let served = fabric_sim::served::open(
        &args.data,
        args.config.as_deref(),
        args.seed,
        &files,
        &staged,
    )?;
    let mut ledger = served.ledger;
    // The ledger signs its tree heads with the key in force: after a rotation, a staged one.
    // A replica's own key comes into force only when it takes the log over.
    if args.replicated {
        staged.iter().cloned().for_each(|key| ledger.hold(key));
    } else {
        ledger.stage_keys(staged.clone())?;
    }
    let size = ledger.len();
    let key_origin = served.key_origin;
    let mut keys = served.keys;
    keys.staged = staged;
    let spec = ServeSpec {
        keys,
        genesis: served.genesis,
        world: served.world,
        tick_interval: Duration::from_millis(args.tick_ms),
        submission_tick_window: args.submission_tick_window,
        // The server sets its artifact store here.
        inputs: None,
        // A fabric of node agents runs only jobs of registered models.
        models_required: !key_origin.is_simulation(),
        // The server sets the replicated log's quorum here.
        quorum: None,
    };
    let config = server_config(args, key_origin)?;
    let served = fabric_server::serve(
        &config,
        ledger,
        Role::Sequence(Box::new(spec)),
        |addresses| said_listening(args, addresses, key_origin, size),
    )?;
    if let Some(report) = served.published {
        println!(
            "published {} events on NATS ({} duplicates, {} retries)",
            report.published, report.duplicates, report.retries
        );
    }
    let head = served.outcome.tree_head;
    println!(
        "stopped at tick {} with {} events, root {}",
        served.outcome.last_tick, head.tree_size, head.root
    );
    Ok(())
}

/// `fabric serve --follow`.
fn follow(args: &ServeArgs) -> anyhow::Result<()> {
    let replica = fabric_sim::served::open_replica(&args.data)?;
    let size = replica.ledger.len();
    let key_origin = replica.key_origin;
    let config = server_config(args, key_origin)?;
    let role = Role::Follow {
        world: replica.world,
        login: login(args),
    };
    let served = fabric_server::serve(&config, replica.ledger, role, |addresses| {
        said_listening(args, addresses, key_origin, size);
        println!("following the replicated log on {}", login(args).urls);
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })?;
    let head = served.outcome.tree_head;
    println!(
        "stopped following with {} events, root {}",
        head.tree_size, head.root
    );
    Ok(())
}

fn login(args: &ServeArgs) -> fabric_bus::LogLogin {
    fabric_bus::LogLogin {
        urls: args.nats.clone().unwrap_or_default(),
        user: args.nats_user.clone().zip(args.nats_password.clone()),
    }
}

fn said_listening(
    args: &ServeArgs,
    addresses: &[String],
    key_origin: fabric_events::KeyOrigin,
    size: u64,
) {
    for address in addresses {
        println!("listening on {address}");
    }
    // A simulation's start log says "simulation: keys are public".
    println!("keys: {key_origin}");
    println!("data {} (tree size {size})", args.data.display());
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

fn server_config(
    args: &ServeArgs,
    key_origin: fabric_events::KeyOrigin,
) -> anyhow::Result<ServerConfig> {
    Ok(ServerConfig {
        listen: args.listen.clone(),
        unix: args.unix.clone(),
        nats: args.nats.clone(),
        nats_user: args.nats_user.clone().zip(args.nats_password.clone()),
        nats_drain: Duration::from_secs(args.nats_drain_s),
        event_stream: !args.no_event_stream,
        tick_ms: args.tick_ms,
        workers: args.workers,
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(fabric_server::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        },
        insecure_plaintext: args.insecure_plaintext,
        connections_max: args.connections_max,
        key_origin,
        replication: args.replicated.then(|| fabric_server::Replication {
            login: login(args),
            replicas: args.log_replicas,
            advertise: args.advertise.clone(),
        }),
        witnessing: witnessing(args)?,
        federating: federating(args, key_origin)?,
    })
}

/// The peers of `--federation-peer` and `--federation-interval-ms`, checked.
fn federating(
    args: &ServeArgs,
    key_origin: fabric_events::KeyOrigin,
) -> anyhow::Result<fabric_server::Federating> {
    anyhow::ensure!(
        args.federation_peers.is_empty() || !key_origin.is_simulation(),
        "--federation-peer: a simulation's keys are public, so its receipts would be anyone's \
         word; federate fabrics made by `fabric init`"
    );
    let peers = parse_peers(
        "--federation-peer",
        &args.federation_peers,
        fabric_server::federation::PEERS_MAX,
        fabric_server::FederationPeer::parse,
    )?;
    let mut origins: Vec<&str> = peers.iter().map(|peer| peer.origin.as_str()).collect();
    origins.sort_unstable();
    if let Some(twice) = origins.windows(2).find(|pair| pair[0] == pair[1]) {
        anyhow::bail!("--federation-peer names {} twice", twice[0]);
    }
    let https = peers
        .iter()
        .any(|peer| matches!(peer.target, fabric_api::http_client::Target::Https(_)));
    let tls = match (&args.federation_ca, https) {
        (Some(ca), true) => Some(
            fabric_api::http_client::trusting(ca)
                .with_context(|| format!("--federation-ca {}", ca.display()))?,
        ),
        (None, true) => anyhow::bail!(
            "an https:// --federation-peer needs --federation-ca FILE, the CA that signed its \
             certificate"
        ),
        (Some(_), false) => {
            anyhow::bail!("--federation-ca is for https:// peers, and none is given")
        }
        (None, false) => None,
    };
    let peers = peers
        .into_iter()
        .map(|peer| fabric_server::FederationPeer {
            tls: tls.clone(),
            ..peer
        })
        .collect();
    Ok(fabric_server::Federating {
        peers,
        interval: std::time::Duration::from_millis(args.federation_interval_ms),
    })
}

/// Each `URL=VKEY` of a repeated `flag`, parsed, and at most `most` of them.
fn parse_peers<T>(
    flag: &str,
    texts: &[String],
    most: usize,
    parse: impl Fn(&str) -> Result<T, String>,
) -> anyhow::Result<Vec<T>> {
    anyhow::ensure!(
        texts.len() <= most,
        "{} {flag} (at most {most})",
        texts.len()
    );
    texts
        .iter()
        .map(|text| parse(text).map_err(|why| anyhow::anyhow!("{flag} {text}: {why}")))
        .collect()
}

/// The witnesses of `--witness` and `--witness-quorum`, checked.
fn witnessing(args: &ServeArgs) -> anyhow::Result<Option<fabric_server::Witnessing>> {
    if args.witnesses.is_empty() {
        return Ok(None);
    }
    let peers = parse_peers(
        "--witness",
        &args.witnesses,
        fabric_server::witnesses::WITNESSES_MAX,
        fabric_server::WitnessPeer::parse,
    )?;
    let quorum = args.witness_quorum.unwrap_or(peers.len());
    anyhow::ensure!(
        (1..=peers.len()).contains(&quorum),
        "--witness-quorum {quorum}: 1 to the {} witnesses given",
        peers.len()
    );
    Ok(Some(fabric_server::Witnessing { peers, quorum }))
}
