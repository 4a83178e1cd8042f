//! Suite `peers`: the signed-event append workload of `ingest` on the alternatives a user
//! would pick instead of Fabric, started for real on loopback by the bench:
//!
//! - PostgreSQL: an append-only table (a trigger refuses UPDATE, DELETE and TRUNCATE), one
//!   transaction per batch loaded with binary COPY, `synchronous_commit = on` and `fsync = on`,
//!   signatures made and batch-verified in the client.
//! - NATS JetStream: a file-store stream, each signed event published and every
//!   acknowledgement of a batch awaited before the batch counts as stored.
//!
//! Each runs the same three-stage pipeline as Fabric's ingest (sign, verify, store, one batch
//! in flight between stages), so the only difference is the store.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use fabric_events::SignedEvent;
use fabric_ledger::verify::{verify_batch, KeyCache};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;

use super::ingest::{fabric_pipeline, pipeline, Source};
use super::nats::BenchNatsServer;
use super::{events_per_s, scratch_dir, verdict, Against, Bench, Figure, SuiteReport};

/// Fabric / peer ratio the project aims at, on the same workload with the same durability.
const PEER_RATIO_TARGET: f64 = 1.0;
/// How long a started server may take to accept connections.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The verify stage of a peer: batch verification in the client, on every core.
fn client_verify(
    cache: &mut KeyCache,
    signed: Vec<SignedEvent>,
) -> anyhow::Result<Vec<SignedEvent>> {
    ensure!(
        verify_batch(&signed, cache).is_empty(),
        "a bench signature failed in the client"
    );
    Ok(signed)
}

/// The median of rates.
fn median_rate(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

pub(super) fn suite(bench: &mut Bench<'_>) -> anyhow::Result<SuiteReport> {
    let (events, batch, repetitions) = (bench.events(), bench.args.batch, bench.repetitions());
    let nats_url = bench.args.nats.clone();
    let scratch = scratch_dir(bench.args)?;
    let limits = bench.limits()?;
    let sources = [
        ("pre-signed", Source::Presigned(&limits.signed)),
        (
            "signed in the pipeline",
            Source::Sign {
                plain: &limits.plain,
                authors: &limits.authors,
            },
        ),
    ];

    let mut postgres = Postgres::start(&scratch.path().join("postgres"))?;
    let nats_server = match &nats_url {
        Some(_) => None,
        None => Some(BenchNatsServer::start(&scratch.path().join("nats"))?),
    };
    let nats_url = nats_url
        .or_else(|| nats_server.as_ref().map(|server| server.url.clone()))
        .ok_or_else(|| anyhow!("no NATS server"))?;
    let mut jetstream = JetStream::connect(&nats_url)?;
    let mut notes = vec![
        format!("PostgreSQL: {}", postgres.describe()?),
        format!(
            "NATS JetStream: nats-server {} at {nats_url}, file store; nats-server 2.9 \
             acknowledges a publish once written, without fsync (no sync_interval before 2.10): \
             less durable than Fabric and PostgreSQL",
            jetstream.server_version
        ),
    ];

    let mut run = 0;
    let mut figures = Vec::new();
    for (name, source) in sources {
        // The three take turns, so whatever else the machine does moves them alike.
        let mut rates = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..repetitions {
            run += 1;
            rates[0].push(fabric_pipeline(
                &scratch.path().join(format!("fabric-{run}")),
                source,
                batch,
            )?);
            rates[1].push(postgres.append(run, source, batch)?);
            rates[2].push(jetstream.append(run, source, batch)?);
        }
        let [fabric, on_postgres, on_jetstream] = rates.map(median_rate);
        notes.push(format!(
            "{name}: Fabric {} events/s, PostgreSQL {} events/s, JetStream {} events/s",
            super::format_number(fabric),
            super::format_number(on_postgres),
            super::format_number(on_jetstream)
        ));
        figures.push(Figure::new(
            format!("vs PostgreSQL, {name}"),
            fabric,
            "events/s",
            (Against::Peer, on_postgres),
            format!(
                "Fabric's ledger vs. an append-only PostgreSQL table (binary COPY per batch, \
                 synchronous commit), same events, same client-side verification; target >= \
                 {PEER_RATIO_TARGET}: {}",
                verdict(fabric >= PEER_RATIO_TARGET * on_postgres)
            ),
        ));
        figures.push(Figure::new(
            format!("vs JetStream, {name}"),
            fabric,
            "events/s",
            (Against::Peer, on_jetstream),
            format!(
                "Fabric's ledger vs. acked JetStream publishes to a file-store stream (every ack \
                 of a batch awaited), same events; target >= {PEER_RATIO_TARGET}: {}",
                verdict(fabric >= PEER_RATIO_TARGET * on_jetstream)
            ),
        ));
    }
    drop(jetstream);
    drop(nats_server);
    drop(postgres);
    Ok(SuiteReport {
        suite: "peers",
        events,
        batch_events: batch,
        repetitions,
        adapter: None,
        notes,
        figures,
    })
}

/// A PostgreSQL server the bench started in its own folder, stopped when dropped.
struct Postgres {
    server: Child,
    client: postgres::Client,
}

impl Postgres {
    /// `initdb` and `postgres` on a free loopback port, with the data folder in `root`. As
    /// root, both run as the `postgres` user (PostgreSQL refuses to run as root).
    fn start(root: &Path) -> anyhow::Result<Self> {
        let bin = postgres_bin_dir()?;
        std::fs::create_dir_all(root)
            .with_context(|| format!("could not create {}", root.display()))?;
        let owner = server_owner()?;
        if let Some((uid, gid)) = owner {
            // The server's user must reach its folder through the bench's private one.
            if let Some(parent) = root.parent() {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))?;
            }
            std::os::unix::fs::chown(root, Some(uid), Some(gid)).with_context(|| {
                format!("could not give {} to the postgres user", root.display())
            })?;
        }
        let data = root.join("data");
        let log_path = root.join("server.log");
        let as_owner = |program: PathBuf| {
            let mut command = Command::new(program);
            command.current_dir(root);
            if let Some((uid, gid)) = owner {
                command.uid(uid).gid(gid);
            }
            command
        };
        let initdb = as_owner(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "fabric", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .context("could not run initdb")?;
        ensure!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr).trim()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = File::create(&log_path)?;
        let server = as_owner(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(root)
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            .args(["-c", "full_page_writes=on", "-c", "max_wal_size=4GB"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("could not start postgres")?;
        let mut server = ServerGuard(Some(server));
        let config = format!("host=127.0.0.1 port={port} user=fabric dbname=postgres");
        let started = Instant::now();
        let client =
            loop {
                match postgres::Client::connect(&config, postgres::NoTls) {
                    Ok(client) => break client,
                    Err(error) => {
                        if let Some(status) = server.try_wait()? {
                            bail!(
                            "postgres exited ({status}) before accepting connections; its log: {}",
                            std::fs::read_to_string(&log_path).unwrap_or_default().trim()
                        );
                        }
                        ensure!(
                        started.elapsed() < SERVER_START_TIMEOUT,
                        "postgres did not accept connections on port {port} within {} s: {error}",
                        SERVER_START_TIMEOUT.as_secs()
                    );
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            };
        let server = server.0.take().context("the server was just started")?;
        Ok(Self { server, client })
    }

    /// Version and the durability settings in force.
    fn describe(&mut self) -> anyhow::Result<String> {
        let client = &mut self.client;
        let version: String = client.query_one("SHOW server_version", &[])?.get(0);
        let fsync: String = client.query_one("SHOW fsync", &[])?.get(0);
        let synchronous: String = client.query_one("SHOW synchronous_commit", &[])?.get(0);
        let sync_method: String = client.query_one("SHOW wal_sync_method", &[])?.get(0);
        ensure!(
            fsync == "on" && synchronous == "on",
            "the bench's PostgreSQL runs with fsync={fsync}, synchronous_commit={synchronous}"
        );
        Ok(format!(
            "{version} on loopback, fsync={fsync}, synchronous_commit={synchronous}, \
             wal_sync_method={sync_method}"
        ))
    }

    /// The pipeline of `source` into a new append-only table: events per second.
    fn append(&mut self, run: usize, source: Source<'_>, batch: usize) -> anyhow::Result<f64> {
        let table = format!("events_{run}");
        self.client.batch_execute(&format!(
            "CREATE TABLE {table} (
                 seq bigint PRIMARY KEY,
                 author bytea NOT NULL,
                 signature bytea NOT NULL,
                 body bytea NOT NULL
             );
             CREATE OR REPLACE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'the events table is append-only'; END $$;
             CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table}
                 FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();"
        ))?;
        let copy = format!("COPY {table} (seq, author, signature, body) FROM STDIN BINARY");
        let types = [Type::INT8, Type::BYTEA, Type::BYTEA, Type::BYTEA];
        let client = &mut self.client;
        let mut cache = KeyCache::new(1024);
        let mut seq = 0i64;
        let took = pipeline(
            source,
            batch,
            |signed| client_verify(&mut cache, signed),
            |signed: Vec<SignedEvent>| {
                let mut transaction = client.transaction()?;
                let sink = transaction.copy_in(copy.as_str())?;
                let mut writer = BinaryCopyInWriter::new(sink, &types);
                for event in &signed {
                    writer.write(&[
                        &seq,
                        &&event.author.as_bytes()[..],
                        &&event.signature.as_bytes()[..],
                        &event.signed.as_slice(),
                    ])?;
                    seq += 1;
                }
                writer.finish()?;
                transaction.commit()?;
                Ok(())
            },
        )?;
        let stored: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])?
            .get(0);
        ensure!(
            stored == source.len() as i64,
            "PostgreSQL holds {stored} of {} events",
            source.len()
        );
        client.batch_execute(&format!("DROP TABLE {table}"))?;
        Ok(events_per_s(took, source.len()))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop_postgres(&mut self.server);
    }
}

/// A server process stopped when dropped before it is handed over.
struct ServerGuard(Option<Child>);

impl ServerGuard {
    fn try_wait(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match &mut self.0 {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            stop_postgres(&mut child);
        }
    }
}

/// Immediate shutdown (SIGQUIT: the postmaster stops its backends), then SIGKILL if it lingers.
fn stop_postgres(server: &mut Child) {
    let _ = Command::new("kill")
        .args(["-QUIT", &server.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let asked = Instant::now();
    while asked.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = server.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// The folder of PostgreSQL's server programs: the newest `/usr/lib/postgresql/*/bin` (where
/// Debian puts them, off the PATH), else wherever `initdb` is on the PATH.
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
        .ok_or_else(|| {
            anyhow!(
                "PostgreSQL's server programs (initdb, postgres) are not installed (Debian: \
                 apt-get install postgresql)"
            )
        })
}

/// As root, the uid and gid of the `postgres` user to run the server as; else none (the
/// server runs as the bench's own user).
fn server_owner() -> anyhow::Result<Option<(u32, u32)>> {
    let uid = std::fs::metadata("/proc/self")
        .context("could not read /proc/self to learn the bench's user")?
        .uid();
    if uid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("could not read /etc/passwd")?;
    let ids = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"postgres") && fields.len() > 3)
        .and_then(|fields| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)));
    match ids {
        Some(ids) => Ok(Some(ids)),
        None => bail!(
            "PostgreSQL refuses to run as root and there is no `postgres` user to run it as \
             (Debian's postgresql package creates one)"
        ),
    }
}

/// A JetStream client on its own single-threaded runtime.
struct JetStream {
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
    server_version: String,
}

impl JetStream {
    fn connect(url: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = runtime
            .block_on(async_nats::connect(url))
            .with_context(|| format!("cannot connect to NATS at {url}"))?;
        let server_version = client.server_info().version;
        Ok(Self {
            runtime,
            client,
            server_version,
        })
    }

    /// The pipeline of `source` into a new file-store stream: events per second.
    fn append(&mut self, run: usize, source: Source<'_>, batch: usize) -> anyhow::Result<f64> {
        use async_nats::jetstream::stream::{Config, StorageType};
        // The context spawns its acknowledgement task on the runtime it is built in.
        let _entered = self.runtime.enter();
        let jetstream = async_nats::jetstream::ContextBuilder::new()
            .max_ack_inflight(batch)
            .backpressure_on_inflight(true)
            .build(self.client.clone());
        let name = format!("FABRIC_BENCH_{run}");
        let subject = format!("fabric.bench.{run}");
        let runtime = &self.runtime;
        runtime.block_on(jetstream.create_stream(Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: StorageType::File,
            ..Default::default()
        }))?;
        let mut cache = KeyCache::new(1024);
        let took = pipeline(
            source,
            batch,
            |signed| client_verify(&mut cache, signed),
            |signed: Vec<SignedEvent>| {
                runtime.block_on(async {
                    let mut acks = Vec::with_capacity(signed.len());
                    for event in &signed {
                        let mut payload = Vec::with_capacity(96 + event.signed.len());
                        payload.extend_from_slice(event.author.as_bytes());
                        payload.extend_from_slice(event.signature.as_bytes());
                        payload.extend_from_slice(&event.signed);
                        acks.push(jetstream.publish(subject.clone(), payload.into()).await?);
                    }
                    for ack in acks {
                        ack.await?;
                    }
                    anyhow::Ok(())
                })
            },
        )?;
        let stored = runtime.block_on(async {
            let mut stream = jetstream.get_stream(&name).await?;
            let info = stream.info().await?;
            anyhow::Ok(info.state.messages)
        })?;
        ensure!(
            stored == source.len() as u64,
            "JetStream holds {stored} of {} events",
            source.len()
        );
        runtime.block_on(jetstream.delete_stream(&name))?;
        Ok(events_per_s(took, source.len()))
    }
}
