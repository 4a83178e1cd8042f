//! `fabric bench failover`: a replicated fabric (docs/FORMAT.md §16) on three `nats-server`s
//! clustered with routes on loopback, served by two replicas (`fabric serve --replicated`),
//! each with a sequencer key of its own.
//!
//! - Failover: clients submit jobs all along, one at a time each, to whichever replica
//!   sequences. The acting sequencer is killed (SIGKILL), the other takes over, and the killed
//!   one is started again (same arguments, same port) until it follows; then the same again
//!   the other way round. A kill's failover time runs from the last 202 the killed sequencer
//!   answered to the first 202 the other answered.
//! - Throughput: jobs acknowledged per second under the same client load (clients sending
//!   batches of jobs) by the sequencer of the replicated pair, and by the same fabric served
//!   alone by one `fabric serve` without replication and without NATS, in the same run.
//!
//! The fabric is made by the ceremony as an operator makes a replicated one: `fabric keygen`
//! for replica B's sequencer key, `fabric init --sequencer B.pub` (the ledger key is replica
//! A's), M owners' approvals, `fabric init --commit`; its folder is then copied for replica B
//! and for the single host. No node agent runs: a job counts once it is acknowledged.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use fabric_api::http_client::{Client, Target};
use fabric_api::job::{job_request_body, JobSpec};
use fabric_events::{keys, Hash32, JobType, SigningKey};
use serde_json::Value;

use super::serve::{
    fabric_exe, health, quantile_ms, register_clients, wait_for_tick, SUBMISSION_TICK_WINDOW,
};
use super::{scratch_dir, verdict, Against, Bench, Figure, SuiteReport};

/// Milliseconds between the fabric's ticks, as a replicated fabric is served in the tests.
const TICK_MS: u64 = 20;
/// Kills of the acting sequencer (half of each replica), and with --quick.
const KILLS: usize = 10;
const KILLS_QUICK: usize = 3;
/// The failover time the 99th percentile aims under.
const FAILOVER_MS_P99_TARGET: f64 = 3_000.0;
/// Jobs/s of the replicated pair against the single host that replication aims for.
const REPLICATED_RATIO_TARGET: f64 = 0.7;
/// Clients of the throughput load, each with a key of its own and one batch waiting: the
/// batches a server reads at once from one address (more are answered 503).
const LOAD_CLIENTS: usize = 8;
/// Jobs per `POST /v0/jobs/batch` of the throughput load: the most a batch holds, so that
/// 2,048 jobs wait at once, enough to keep either fabric at its capacity.
const JOBS_PER_BATCH: usize = fabric_api::wire::JOBS_PER_BATCH_MAX;
/// Seconds of throughput load on each fabric, and with --quick.
const LOAD_S: u64 = 10;
const LOAD_S_QUICK: u64 = 3;
/// Clients submitting one job at a time during the kills.
const ACK_CLIENTS: usize = 4;
/// 202s the acting sequencer answers between a replica's start and the next kill.
const ACKS_BEFORE_KILL: usize = 20;
/// Servers of the NATS cluster (the replicated log's quorum is two).
const CLUSTER_SERVERS: usize = 3;
/// Longest wait of any step: a step that takes longer fails, naming what did not happen.
const WAIT: Duration = Duration::from_secs(60);
/// Pause before a client asks again (the other replica, or the same after a refusal).
const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// How much of a process's log an error quotes (its end), in bytes.
const LOG_TAIL_BYTES: usize = 2_000;

/// The `failover` suite.
pub(super) fn suite(bench: &mut Bench<'_>) -> anyhow::Result<SuiteReport> {
    let args = bench.args;
    let (kills, load) = match args.quick {
        true => (KILLS_QUICK, Duration::from_secs(LOAD_S_QUICK)),
        false => (KILLS, Duration::from_secs(LOAD_S)),
    };
    let scratch = scratch_dir(args)?;
    let world = fabric_config::load(args.config.as_deref())?;
    let shape = JobShape::of(&world, args.config.as_deref())?;
    let fabric = Fabric::make(args.config.as_deref(), &world, scratch.path())?;
    let keys: Vec<SigningKey> = (0..LOAD_CLIENTS + ACK_CLIENTS)
        .map(|_| keys::generate())
        .collect();
    let single = single_host(&fabric, &keys, &shape, load)?;
    let cluster = NatsCluster::start(&scratch.path().join("nats"))?;
    let replicated = replicated(&fabric, &cluster, &keys, &shape, (load, kills))?;
    drop(cluster);
    Ok(report(&single, &replicated, load))
}

/// What the throughput load measured on one fabric.
struct Throughput {
    jobs: u64,
    jobs_per_s: f64,
    /// CPU time per acknowledged job of each process group, as [`CpuUse`] names them.
    cpu: Vec<CpuUse>,
}

/// CPU time (user and system) a group of processes used during a throughput load, per job
/// it acknowledged.
struct CpuUse {
    what: &'static str,
    us_per_job: f64,
}

/// What the replicated pair measured.
struct Replicated {
    throughput: Throughput,
    /// Each kill's failover time, in kill order.
    failovers: Vec<Duration>,
    /// Jobs the clients gave up on during the kills (refused on their second sending: the
    /// first had been sequenced, its answer lost with the killed sequencer).
    refused: u64,
    /// The log's size at the first kill and after the last: a replica that takes over
    /// starts from the whole log.
    log_sizes: (u64, u64),
}

/// The throughput load on the fabric served alone, without replication and without NATS.
fn single_host(
    fabric: &Fabric,
    keys: &[SigningKey],
    shape: &JobShape,
    load: Duration,
) -> anyhow::Result<Throughput> {
    let server = Served::start("the single host", fabric.serve_args(&fabric.single, None))?;
    let mut control = server.client();
    wait_for_tick(&mut control, 1)?;
    register_clients(&mut control, &fabric.approvers, keys)?;
    let cpu = CpuMeter::start(vec![("single host", server.pids())])?;
    let (jobs, jobs_per_s) = throughput(
        &server.target(),
        &keys[..LOAD_CLIENTS],
        shape,
        load,
        "single",
    )?;
    Ok(Throughput {
        jobs,
        jobs_per_s,
        cpu: cpu.per_job(jobs)?,
    })
}

/// The replicated pair on `cluster`: the throughput load on its sequencer, then the kills, on
/// the log of some history that load left (a replica that takes over starts from all of it).
fn replicated(
    fabric: &Fabric,
    cluster: &NatsCluster,
    keys: &[SigningKey],
    shape: &JobShape,
    (load, kills): (Duration, usize),
) -> anyhow::Result<Replicated> {
    let a = Served::start("replica A", fabric.replica_args(false, &cluster.urls))?;
    wait_for_role(&a, "sequencer")?;
    let b = Served::start("replica B", fabric.replica_args(true, &cluster.urls))?;
    wait_for_role(&b, "follower")?;
    let mut control = a.client();
    register_clients(&mut control, &fabric.approvers, keys)?;
    let mut replicas = [a, b];
    wait_caught_up(&replicas, 0)?;
    let sequencer_cpu = CpuMeter::start(vec![("sequencer", replicas[0].pids())])?;
    let others_cpu = CpuMeter::start(vec![
        ("follower", replicas[1].pids()),
        ("nats-servers", cluster.pids()),
    ])?;
    let (jobs, jobs_per_s) = throughput(
        &replicas[0].target(),
        &keys[..LOAD_CLIENTS],
        shape,
        load,
        "replicated",
    )?;
    let mut cpu = sequencer_cpu.per_job(jobs)?;
    // The follower's copy and the servers' storing end once it caught up.
    wait_caught_up(&replicas, 0)?;
    cpu.extend(others_cpu.per_job(jobs)?);
    let measured = Throughput {
        jobs,
        jobs_per_s,
        cpu,
    };
    let targets = [replicas[0].target(), replicas[1].target()];
    let acks = AckLoad::start(targets, keys[LOAD_CLIENTS..].to_vec(), shape);
    let first_size = log_size(&replicas)?;
    let mut failovers = Vec::with_capacity(kills);
    for kill in 0..kills {
        let failover = kill_sequencer(&mut replicas, &acks)
            .with_context(|| format!("kill {} of {kills}", kill + 1))?;
        failovers.push(failover);
    }
    let refused = acks.finish()?;
    Ok(Replicated {
        throughput: measured,
        failovers,
        refused,
        log_sizes: (first_size, log_size(&replicas)?),
    })
}

/// One kill: waits for a steady pair (the follower caught up, the sequencer answering),
/// kills the sequencer, waits for the other's first 202, starts the killed one again and
/// waits until it follows. The time from the last 202 of the killed one to that first 202.
fn kill_sequencer(replicas: &mut [Served; 2], acks: &AckLoad) -> anyhow::Result<Duration> {
    let old = sequencer_of(replicas)?;
    let new = 1 - old;
    wait_caught_up(replicas, old)?;
    acks.wait_for(old, ACKS_BEFORE_KILL, &replicas[old].name)?;
    replicas[old].kill();
    let killed = Instant::now();
    let first_new = acks.first_after(new, killed, &replicas[new].name)?;
    let last_old = acks
        .last_of(old)
        .ok_or_else(|| anyhow!("{} answered no 202 before the kill", replicas[old].name))?;
    replicas[old].restart()?;
    wait_for_role(&replicas[old], "follower")?;
    Ok(first_new.saturating_duration_since(last_old))
}

/// The suite's report: the failover times against their target, the replicated pair's jobs/s
/// against the single host's.
fn report(single: &Throughput, replicated: &Replicated, load: Duration) -> SuiteReport {
    let mut sorted = replicated.failovers.clone();
    sorted.sort_unstable();
    let (p50, p99) = (quantile_ms(&sorted, 0.5), quantile_ms(&sorted, 0.99));
    let each = replicated
        .failovers
        .iter()
        .map(|failover| format!("{:.0}", failover.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .join(", ");
    let kills = replicated.failovers.len();
    let ratio = replicated.throughput.jobs_per_s / single.jobs_per_s;
    let notes = vec![
        format!(
            "{CLUSTER_SERVERS} nats-servers clustered with routes, 2 replicas (--replicated \
             --no-event-stream, {TICK_MS} ms ticks); {ACK_CLIENTS} clients submitting one job at a time; {kills} \
             kills (SIGKILL) of the acting sequencer, the killed replica started again as a \
             follower after each, the log holding {} to {} entries (the throughput load \
             below ran first); failover of each kill (ms): {each}; {} jobs given up \
             (sequenced before, their answer lost with the killed sequencer)",
            replicated.log_sizes.0, replicated.log_sizes.1, replicated.refused
        ),
        format!(
            "throughput: {LOAD_CLIENTS} clients sending batches of {JOBS_PER_BATCH} jobs \
             (1,024-byte inputs inline) for {} s to each fabric, every process on this \
             machine's {} cores: the replicated pair's sequencer (its follower and the \
             cluster running beside it) acknowledged {} jobs, the single host (one `fabric \
             serve`, no replication, no NATS) {} jobs",
            load.as_secs(),
            std::thread::available_parallelism().map_or(1, usize::from),
            replicated.throughput.jobs,
            single.jobs
        ),
        format!(
            "CPU time (user and system) per acknowledged job: the single host {:.1} µs; the \
             replicated pair's {} (the follower and the servers until the follower caught up)",
            cpu_of(&single.cpu, "single host"),
            cpu_list(&replicated.throughput.cpu),
        ),
    ];
    SuiteReport {
        suite: "failover",
        events: replicated.throughput.jobs as usize,
        batch_events: 0,
        repetitions: 1,
        adapter: None,
        notes,
        figures: figures((p50, p99), kills, (replicated, single), ratio),
    }
}

/// `what X µs` for each group, comma-separated.
fn cpu_list(cpu: &[CpuUse]) -> String {
    cpu.iter()
        .map(|used| format!("{} {:.1} µs", used.what, used.us_per_job))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The CPU time per job of the group named `what`.
fn cpu_of(cpu: &[CpuUse], what: &str) -> f64 {
    cpu.iter()
        .find(|used| used.what == what)
        .map_or(f64::NAN, |used| used.us_per_job)
}

fn figures(
    (p50, p99): (f64, f64),
    kills: usize,
    (replicated, single): (&Replicated, &Throughput),
    ratio: f64,
) -> Vec<Figure> {
    vec![
        Figure::new(
            "failover p50",
            p50,
            "ms",
            (Against::Target, FAILOVER_MS_P99_TARGET),
            format!(
                "the killed sequencer's last 202 to the other replica's first, median of \
                 {kills} kills; next to the p99 target"
            ),
        ),
        Figure::new(
            "failover p99",
            p99,
            "ms",
            (Against::Target, FAILOVER_MS_P99_TARGET),
            format!(
                "99th percentile (nearest rank) of {kills} kills; target <= \
                 {FAILOVER_MS_P99_TARGET} ms: {}",
                verdict(p99 <= FAILOVER_MS_P99_TARGET)
            ),
        ),
        Figure::new(
            "replicated vs single host",
            replicated.throughput.jobs_per_s,
            "jobs/s",
            (Against::Baseline, single.jobs_per_s),
            format!(
                "jobs acknowledged per second by the sequencer of the replicated pair (each \
                 tick held by the cluster's quorum before its answers) vs. the same fabric \
                 served alone without NATS, same load; target >= {REPLICATED_RATIO_TARGET}: {}",
                verdict(ratio >= REPLICATED_RATIO_TARGET)
            ),
        ),
        Figure::new(
            "sequencer CPU per job",
            cpu_of(&replicated.throughput.cpu, "sequencer"),
            "us",
            (Against::Baseline, cpu_of(&single.cpu, "single host")),
            "CPU time of the replicated pair's sequencer process per job it acknowledged vs. \
             the single host's, same load: what replication costs the sequencer's own host"
                .to_owned(),
        ),
    ]
}

/// The fabric of the ceremony with replica B's sequencer key registered, and its copies.
struct Fabric {
    operator: PathBuf,
    /// Replica A's folder (the ceremony's), B's, the single host's.
    data_a: PathBuf,
    data_b: PathBuf,
    single: PathBuf,
    key_b: PathBuf,
    /// The owners that approve (the first M).
    approvers: Vec<SigningKey>,
}

impl Fabric {
    /// The ceremony in `scratch`, through the CLI, then the folder copied for B and the single
    /// host.
    fn make(
        config: Option<&Path>,
        world: &fabric_actors::world::World,
        scratch: &Path,
    ) -> anyhow::Result<Self> {
        let key_b = scratch.join("sequencer-b.key");
        Cli::new(scratch).run(&[OsStr::new("keygen"), OsStr::new("--out"), key_b.as_os_str()])?;
        let public_b = keys::public_path(&key_b);
        let extra = [OsStr::new("--sequencer"), public_b.as_os_str()];
        let ceremony = super::serve::ceremony(config, world, scratch, &extra)?;
        let fabric = Self {
            data_a: ceremony.data,
            data_b: scratch.join("replica-b"),
            single: scratch.join("single"),
            operator: ceremony.operator,
            key_b,
            approvers: ceremony.approvers,
        };
        copy_dir(&fabric.data_a, &fabric.data_b)?;
        copy_dir(&fabric.data_a, &fabric.single)?;
        Ok(fabric)
    }

    fn ledger_key(&self) -> PathBuf {
        self.operator.join("ledger.key")
    }

    fn routers(&self) -> PathBuf {
        self.operator.join("routers")
    }

    /// `fabric serve` arguments for `data` signed with `key` (the ledger key without), less
    /// `--listen`.
    fn serve_args(&self, data: &Path, key: Option<&Path>) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["serve".into(), "--data".into(), data.into()];
        args.extend([
            "--ledger-key".into(),
            key.map_or(self.ledger_key(), Path::to_path_buf).into(),
        ]);
        args.extend(["--router-keys".into(), self.routers().into()]);
        args.extend(["--tick-ms".into(), TICK_MS.to_string().into()]);
        args.extend([
            "--submission-tick-window".into(),
            SUBMISSION_TICK_WINDOW.into(),
        ]);
        args
    }

    /// Replica A's (`b` false) or B's arguments on the cluster of `urls`.
    fn replica_args(&self, b: bool, urls: &str) -> Vec<OsString> {
        let mut args = match b {
            false => self.serve_args(&self.data_a, None),
            true => self.serve_args(&self.data_b, Some(&self.key_b)),
        };
        // The single host publishes no event stream (it has no NATS): neither do the replicas,
        // so that the ratio is replication's cost alone.
        args.extend([
            "--replicated".into(),
            "--nats".into(),
            urls.into(),
            "--no-event-stream".into(),
        ]);
        args
    }
}

/// Runs `fabric` commands to their end, each within [`WAIT`], its stderr in a file of
/// `scratch`.
struct Cli {
    said: PathBuf,
}

impl Cli {
    fn new(scratch: &Path) -> Self {
        Self {
            said: scratch.join("cli.stderr"),
        }
    }

    fn run(&self, args: &[&OsStr]) -> anyhow::Result<()> {
        let shown = args
            .iter()
            .map(|arg| arg.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = Command::new(fabric_exe()?)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&self.said)?)
            .spawn()
            .context("could not run `fabric`")?;
        let status = wait_bounded(&mut child).with_context(|| format!("`fabric {shown}`"))?;
        ensure!(
            status.success(),
            "`fabric {shown}` failed: {}",
            std::fs::read_to_string(&self.said)
                .unwrap_or_default()
                .trim()
        );
        Ok(())
    }
}

/// Waits at most [`WAIT`] for `child` to exit; killed when it does not.
fn wait_bounded(child: &mut Child) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("it did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Copies the folder `from` to `to`, recursively.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let into = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &into)?;
        } else {
            std::fs::copy(entry.path(), &into)
                .with_context(|| format!("could not copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// A `fabric serve` child: its arguments and address, kept to start it again on the same
/// port; its stderr in a file (appended to by each start). Killed when dropped.
struct Served {
    name: String,
    args: Vec<OsString>,
    /// `host:port`, known once it listens.
    listen: String,
    stderr: PathBuf,
    child: Option<Child>,
}

impl Served {
    /// Starts `fabric ARGS --listen 127.0.0.1:0`, its stderr next to its data folder.
    fn start(name: &str, args: Vec<OsString>) -> anyhow::Result<Self> {
        let data = args
            .iter()
            .skip_while(|arg| *arg != "--data")
            .nth(1)
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("{name}: no --data"))?;
        let mut served = Self {
            name: name.to_owned(),
            args,
            listen: "127.0.0.1:0".to_owned(),
            stderr: data.with_extension("stderr"),
            child: None,
        };
        served.spawn()?;
        Ok(served)
    }

    /// Starts it on `self.listen`, and waits until it says where it listens.
    fn spawn(&mut self) -> anyhow::Result<()> {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)?;
        let mut child = Command::new(fabric_exe()?)
            .args(&self.args)
            .args(["--listen", &self.listen])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("could not start `fabric serve` for {}", self.name))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout of `fabric serve`"))?;
        self.child = Some(child);
        let lines = stdout_lines(stdout);
        self.listen = self.read_address(&lines)?;
        Ok(())
    }

    /// The `host:port` its stdout names before its `data` line, within [`WAIT`].
    fn read_address(&self, lines: &mpsc::Receiver<String>) -> anyhow::Result<String> {
        let deadline = Instant::now() + WAIT;
        let mut address = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "{} did not say where it listens within {WAIT:?}: {}",
                    self.name,
                    self.log_tail()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "{} exited before it listened: {}",
                    self.name,
                    self.log_tail()
                ),
            };
            if let Some(url) = line.strip_prefix("listening on ") {
                address = url.strip_prefix("http://").map(str::to_owned);
            }
            if line.starts_with("data ") {
                return address
                    .ok_or_else(|| anyhow!("{} did not say where it listens", self.name));
            }
        }
    }

    fn target(&self) -> Target {
        Target::Tcp(self.listen.clone())
    }

    fn client(&self) -> Client {
        Client::new(self.target(), Duration::from_secs(30))
    }

    /// Its process, while it runs.
    fn pids(&self) -> Vec<u32> {
        self.child.iter().map(Child::id).collect()
    }

    /// Kills it (SIGKILL): it says nothing more.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same arguments on the same port.
    fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
            .with_context(|| format!("starting {} again", self.name))
    }

    /// Its health, or none while it does not answer.
    fn health(&self) -> Option<Value> {
        health(&mut Client::new(self.target(), Duration::from_secs(5))).ok()
    }

    /// The end of what it said on stderr.
    fn log_tail(&self) -> String {
        file_tail(&self.stderr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The lines of a child's stdout, read (and, once nobody listens, dropped) on a thread of
/// their own so that the child never blocks on a full pipe.
fn stdout_lines(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = send.send(line);
        }
    });
    lines
}

/// The last [`LOG_TAIL_BYTES`] of a log file.
fn file_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text
        .char_indices()
        .map(|(at, _)| at)
        .find(|at| text.len() - at <= LOG_TAIL_BYTES)
        .unwrap_or(0);
    text[start..].trim().to_owned()
}

/// Waits until `served` says it is the replica `role` (`sequencer`, `follower`).
fn wait_for_role(served: &Served, role: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let health = served.health();
        if health
            .as_ref()
            .is_some_and(|health| health["replica"] == role)
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{} is not the {role} within {WAIT:?} (health: {}); its log: {}",
            served.name,
            health.map_or("no answer".to_owned(), |health| health.to_string()),
            served.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Which replica says it sequences, within [`WAIT`].
fn sequencer_of(replicas: &[Served; 2]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = replicas.iter().position(|replica| {
            replica
                .health()
                .is_some_and(|health| health["replica"] == "sequencer")
        });
        if let Some(index) = found {
            return Ok(index);
        }
        ensure!(
            Instant::now() < deadline,
            "neither replica says it sequences within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The size of the sequencer's log.
fn log_size(replicas: &[Served; 2]) -> anyhow::Result<u64> {
    let sequencer = &replicas[sequencer_of(replicas)?];
    sequencer
        .health()
        .and_then(|health| health["ledger"]["size"].as_u64())
        .ok_or_else(|| anyhow!("{} does not say its log's size", sequencer.name))
}

/// Waits until the follower's log is as long as the sequencer's was when asked.
fn wait_caught_up(replicas: &[Served; 2], sequencer: usize) -> anyhow::Result<()> {
    let size = |replica: &Served| {
        replica
            .health()
            .and_then(|health| health["ledger"]["size"].as_u64())
    };
    let (leader, follower) = (&replicas[sequencer], &replicas[1 - sequencer]);
    let target = size(leader).ok_or_else(|| anyhow!("{} does not answer", leader.name))?;
    let deadline = Instant::now() + WAIT;
    while size(follower).is_none_or(|size| size < target) {
        ensure!(
            Instant::now() < deadline,
            "{} does not reach the sequencer's size {target} within {WAIT:?}",
            follower.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Three `nats-server`s clustered with routes on loopback, JetStream on, each with its
/// store and log in `dir`. Killed when dropped.
struct NatsCluster {
    children: Vec<Child>,
    /// Every server's URL, comma-separated (what `--nats` takes).
    urls: String,
}

impl NatsCluster {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let binary = super::nats::nats_server_binary()?;
        let ports = free_ports(2 * CLUSTER_SERVERS)?;
        let (clients, routes) = ports.split_at(CLUSTER_SERVERS);
        let routes = routes
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>();
        let mut cluster = Self {
            children: Vec::new(),
            urls: clients
                .iter()
                .map(|port| format!("nats://127.0.0.1:{port}"))
                .collect::<Vec<_>>()
                .join(","),
        };
        for (index, port) in clients.iter().enumerate() {
            let log = File::create(dir.join(format!("n{index}.log")))?;
            let child = Command::new(binary)
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
                .args(["-n", &format!("n{index}"), "--cluster_name", "fabric"])
                .args(["--cluster", &routes[index], "--routes", &routes.join(",")])
                .arg("-sd")
                .arg(dir.join(format!("store-{index}")))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("could not start {binary}"))?;
            cluster.children.push(child);
        }
        for (index, port) in clients.iter().enumerate() {
            wait_until_ready(dir, index, *port)?;
        }
        wait_for_leader(dir)?;
        Ok(cluster)
    }
}

impl NatsCluster {
    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What nats-server `index` has logged in `dir`.
fn nats_log(dir: &Path, index: usize) -> String {
    std::fs::read_to_string(dir.join(format!("n{index}.log"))).unwrap_or_default()
}

/// Waits until nats-server `index` says it is ready and its `port` takes connections.
fn wait_until_ready(dir: &Path, index: usize, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while !(nats_log(dir, index).contains("Server is ready")
        && TcpStream::connect(("127.0.0.1", port)).is_ok())
    {
        ensure!(
            Instant::now() < deadline,
            "nats-server n{index} is not ready within {WAIT:?}; its log: {}",
            file_tail(&dir.join(format!("n{index}.log")))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits until a server of the cluster says it elected a JetStream metadata leader: JetStream
/// answers from then on.
fn wait_for_leader(dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while !(0..CLUSTER_SERVERS).any(|index| nats_log(dir, index).contains("metadata leader")) {
        ensure!(
            Instant::now() < deadline,
            "the nats-server cluster elected no JetStream metadata leader within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `count` distinct free loopback ports (all bound at once while chosen).
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect::<std::io::Result<_>>()?)
}

/// What the bench's jobs are: the `bench@1` model (`encode_state`, registered with the
/// clients), on the world's first shard, with a skill of a node there.
#[derive(Clone)]
struct JobShape {
    shard: String,
    skill: String,
}

impl JobShape {
    fn of(world: &fabric_actors::world::World, config: Option<&Path>) -> anyhow::Result<Self> {
        let (shard, skill) = super::serve::served_shard(world, config)?;
        Ok(Self { shard, skill })
    }

    /// Job `request_id` and its input: 1,024 bytes drawn from its request id.
    fn job(&self, request_id: String) -> (JobSpec, Vec<u8>) {
        let mut input = vec![0u8; JobType::EncodeState.input_bytes()];
        blake3::Hasher::new()
            .update(request_id.as_bytes())
            .finalize_xof()
            .fill(&mut input);
        let spec = JobSpec {
            request_id,
            shard: self.shard.clone(),
            model_id: "bench".to_owned(),
            model_version: "1".to_owned(),
            skills: vec![self.skill.clone()],
            duration_ticks: 2,
            deadline_ticks: 1_000,
            budget_micros: 1_000,
            input_hash: Hash32(*blake3::hash(&input).as_bytes()),
        };
        (spec, input)
    }
}

/// The tick `client`'s server is at.
fn tick_of(client: &mut Client) -> anyhow::Result<u64> {
    health(client)?["tick"]
        .as_u64()
        .ok_or_else(|| anyhow!("GET /v0/health names no tick"))
}

/// Jobs acknowledged, and per second, by `target` while one client per key sends batches of
/// [`JOBS_PER_BATCH`] for `duration`, each batch as soon as the one before is answered.
fn throughput(
    target: &Target,
    keys: &[SigningKey],
    shape: &JobShape,
    duration: Duration,
    label: &str,
) -> anyhow::Result<(u64, f64)> {
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let jobs = std::thread::scope(|scope| {
        let clients: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(client, key)| {
                let (stop, label) = (&stop, format!("{label}-{client}"));
                scope.spawn(move || batch_client(target, key, shape, &label, stop))
            })
            .collect();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        clients
            .into_iter()
            .map(|client| {
                client
                    .join()
                    .map_err(|_| anyhow!("a client thread panicked"))?
            })
            .sum::<anyhow::Result<u64>>()
    })?;
    Ok((jobs, jobs as f64 / started.elapsed().as_secs_f64()))
}

/// The CPU time groups of processes use from its start: each group's pids, read from
/// `/proc/PID/stat` (user and system time of all the process's threads).
struct CpuMeter {
    groups: Vec<(&'static str, Vec<u32>, Duration)>,
}

impl CpuMeter {
    fn start(groups: Vec<(&'static str, Vec<u32>)>) -> anyhow::Result<Self> {
        let groups = groups
            .into_iter()
            .map(|(what, pids)| {
                let used = cpu_time(&pids)?;
                Ok((what, pids, used))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { groups })
    }

    /// Each group's CPU time since the start, per job of `jobs`.
    fn per_job(&self, jobs: u64) -> anyhow::Result<Vec<CpuUse>> {
        ensure!(jobs > 0, "no job was acknowledged: no CPU time per job");
        self.groups
            .iter()
            .map(|(what, pids, before)| {
                let used = cpu_time(pids)?.saturating_sub(*before);
                Ok(CpuUse {
                    what,
                    us_per_job: used.as_secs_f64() * 1e6 / jobs as f64,
                })
            })
            .collect()
    }
}

/// The CPU time (user and system, every thread) the processes `pids` have used.
fn cpu_time(pids: &[u32]) -> anyhow::Result<Duration> {
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(ticks_per_s > 0, "sysconf(_SC_CLK_TCK) gives {ticks_per_s}");
    let mut ticks = 0u64;
    for pid in pids {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // After the command's name (in parentheses, perhaps with spaces): state, then the
        // fields from ppid on; utime and stime are fields 14 and 15 of the line.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |index: usize| -> anyhow::Result<u64> {
            fields
                .get(index)
                .and_then(|value| value.parse().ok())
                .ok_or_else(|| anyhow!("{path} has no CPU time field {}", index + 3))
        };
        ticks += field(11)? + field(12)?;
    }
    Ok(Duration::from_secs_f64(ticks as f64 / ticks_per_s as f64))
}

/// One client's batches until `stop`, each job signed at the newest tick answered: the jobs
/// acknowledged. Any refusal is an error.
fn batch_client(
    target: &Target,
    key: &SigningKey,
    shape: &JobShape,
    label: &str,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let mut http = Client::new(target.clone(), WAIT);
    let mut tick = tick_of(&mut http)?;
    let (mut nonce, mut acknowledged) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let mut bodies = Vec::with_capacity(JOBS_PER_BATCH);
        for _ in 0..JOBS_PER_BATCH {
            nonce += 1;
            let (spec, input) = shape.job(format!("{label}-{nonce}"));
            bodies.push(job_request_body(&spec, key, tick, nonce, Some(&input))?);
        }
        let answer = super::serve::post_batch(&mut http, &bodies)?;
        for item in &answer.results {
            let accepted = item.accepted.as_ref().ok_or_else(|| {
                anyhow!(
                    "a job of a batch was refused: {} {:?}",
                    item.status,
                    item.error
                )
            })?;
            tick = tick.max(accepted.tick);
            acknowledged += 1;
        }
    }
    Ok(acknowledged)
}

/// What the clients of the kills share: every 202 (when it was read, which replica answered
/// it), the jobs given up, the last refusal.
#[derive(Default)]
struct Acks {
    stop: AtomicBool,
    answered: Mutex<Vec<(Instant, usize)>>,
    refused: Mutex<(u64, Option<String>)>,
}

/// Clients submitting one job at a time each, all along, to whichever replica sequences: a
/// job a replica does not take (307 or 5xx from a follower, no connection to a killed one)
/// is signed again at the other's tick with the same nonce and sent there.
struct AckLoad {
    acks: Arc<Acks>,
    clients: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl AckLoad {
    fn start(targets: [Target; 2], keys: Vec<SigningKey>, shape: &JobShape) -> Self {
        let acks = Arc::new(Acks::default());
        let clients = keys
            .into_iter()
            .enumerate()
            .map(|(client, key)| {
                let (acks, targets) = (Arc::clone(&acks), targets.clone());
                let shape = shape.clone();
                let label = format!("failover-{client}");
                std::thread::spawn(move || ack_client(&targets, &key, &shape, &label, &acks))
            })
            .collect();
        Self { acks, clients }
    }

    fn answered(&self) -> MutexGuard<'_, Vec<(Instant, usize)>> {
        lock(&self.acks.answered)
    }

    /// Waits until `replica` (named `name`) has answered `more` 202s more than now.
    fn wait_for(&self, replica: usize, more: usize, name: &str) -> anyhow::Result<()> {
        let count = || {
            self.answered()
                .iter()
                .filter(|(_, by)| *by == replica)
                .count()
        };
        let target = count() + more;
        let deadline = Instant::now() + WAIT;
        while count() < target {
            self.ensure_running()?;
            ensure!(
                Instant::now() < deadline,
                "{name} did not answer {more} more 202s within {WAIT:?}{}",
                self.last_refusal()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// The first 202 `replica` (named `name`) answered after `after`, waited for.
    fn first_after(&self, replica: usize, after: Instant, name: &str) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + WAIT;
        loop {
            let first = self
                .answered()
                .iter()
                .filter(|(at, by)| *by == replica && *at > after)
                .map(|(at, _)| *at)
                .min();
            if let Some(first) = first {
                return Ok(first);
            }
            self.ensure_running()?;
            ensure!(
                Instant::now() < deadline,
                "{name} answered no 202 within {WAIT:?} of the kill{}",
                self.last_refusal()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last 202 `replica` answered.
    fn last_of(&self, replica: usize) -> Option<Instant> {
        self.answered()
            .iter()
            .filter(|(_, by)| *by == replica)
            .map(|(at, _)| *at)
            .max()
    }

    /// An error when a client stopped by itself.
    fn ensure_running(&self) -> anyhow::Result<()> {
        ensure!(
            self.clients.iter().all(|client| !client.is_finished()),
            "a client stopped submitting{}",
            self.last_refusal()
        );
        Ok(())
    }

    fn last_refusal(&self) -> String {
        lock(&self.acks.refused)
            .1
            .as_ref()
            .map_or(String::new(), |last| format!(" (last refusal: {last})"))
    }

    /// Stops the clients: the jobs they gave up on.
    fn finish(mut self) -> anyhow::Result<u64> {
        self.acks.stop.store(true, Ordering::Relaxed);
        for client in std::mem::take(&mut self.clients) {
            client
                .join()
                .map_err(|_| anyhow!("a client thread panicked"))??;
        }
        let given_up = lock(&self.acks.refused).0;
        Ok(given_up)
    }
}

impl Drop for AckLoad {
    fn drop(&mut self) {
        self.acks.stop.store(true, Ordering::Relaxed);
        for client in std::mem::take(&mut self.clients) {
            let _ = client.join();
        }
    }
}

/// One client of the kills: jobs one after the other until `acks.stop`, each sent until a
/// replica answers what became of it.
fn ack_client(
    targets: &[Target; 2],
    key: &SigningKey,
    shape: &JobShape,
    label: &str,
    acks: &Acks,
) -> anyhow::Result<()> {
    let mut clients = targets
        .clone()
        .map(|target| Client::new(target, Duration::from_secs(5)));
    let (mut at, mut tick) = (0, None);
    for nonce in 1u64.. {
        let (spec, input) = shape.job(format!("{label}-{nonce}"));
        loop {
            if acks.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let client = &mut clients[at];
            let signed_at = match tick {
                Some(tick) => tick,
                None => match tick_of(client) {
                    Ok(now) => now,
                    Err(_) => {
                        at = 1 - at;
                        std::thread::sleep(RETRY_PAUSE);
                        continue;
                    }
                },
            };
            let body = job_request_body(&spec, key, signed_at, nonce, Some(&input))?;
            let response = client.request("POST", "/v0/jobs", Some(("application/json", &body)));
            match response {
                Ok(response) if response.status == 202 => {
                    let read = Instant::now();
                    let answer: Value = serde_json::from_slice(&response.body)?;
                    tick = answer["tick"].as_u64();
                    lock(&acks.answered).push((read, at));
                    break;
                }
                // Not the sequencer (any more, or yet), or gone: ask the other.
                Ok(response) if response.status == 307 || response.status >= 500 => {}
                Err(_) => {}
                // Refused: sequenced before, its answer lost with a killed sequencer (or a
                // tick out of the window): given up.
                Ok(response) => {
                    let mut refused = lock(&acks.refused);
                    refused.0 += 1;
                    refused.1 = Some(format!("{} {}", response.status, response.text()));
                    tick = None;
                    break;
                }
            }
            at = 1 - at;
            tick = None;
            std::thread::sleep(RETRY_PAUSE);
        }
    }
    Ok(())
}

/// The guarded value, even after a client thread panicked holding it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
