//! Suite `celery`: the bench's model jobs as Celery 5 tasks, Redis as the broker and the result
//! backend, started for real on loopback by the bench: the tool a user would pick to run jobs
//! on worker processes, measured next to the same jobs on the CPU reference.
//!
//! - `redis-server` (Debian's), its store in the bench's temporary folder, the append-only file
//!   on with `appendfsync everysec` (Redis's recommended durability: up to a second of results
//!   lost on a crash; Fabric's ledger fsyncs every group commit).
//! - `celery worker --concurrency K --pool prefork`, configured in `bench/celery/fabric_peer.py`
//!   (acks late, prefetch 16, results stored in Redis, Celery's throughput advice for short
//!   tasks), computing the jobs on numpy.
//! - its client, the same file run as `fabric_peer.py drive`: submits every job from a few
//!   threads, waits for every result, writes the outputs; the bench checks every output against
//!   Fabric's CPU reference.
//!
//! Celery and its clients come from a Python virtual environment: `--python` names one, else
//! the bench makes (once) one in the user's cache folder with pip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use fabric_gpu_kernels::models::ModelJob;
use serde::Deserialize;

use super::model_jobs::ModelJobs;
use super::serve::quantile_ms;
use super::{scratch_dir, Against, Bench, Figure, SuiteReport};

/// The Celery app and its client, written into the bench's folder for the worker to import.
const PEER_APP: &str = include_str!("../celery/fabric_peer.py");
/// What the bench's virtual environment installs: Celery 5 with its Redis client, and numpy.
const PEER_REQUIREMENTS: [&str; 2] = ["celery[redis]>=5.3,<6", "numpy>=1.26"];
/// Threads of the Celery client that submit jobs.
pub(super) const CLIENT_THREADS: usize = 4;
/// How long a started redis-server may take to accept connections.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the client waits for the last result of a run.
const RESULTS_TIMEOUT_S: u64 = 600;
/// Jobs sent through Celery before the timed run: the workers are up, their models loaded and
/// their outputs checked before anything is timed.
pub(super) const WARM_UP_JOBS: usize = 30;

/// A process (and its process group: Celery's prefork children) killed when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

/// Starts `command` in a process group of its own.
fn spawn_group(command: &mut Command) -> std::io::Result<Group> {
    use std::os::unix::process::CommandExt;
    command.process_group(0).spawn().map(Group)
}

/// A `redis-server` on a free loopback port, stopped when dropped.
struct Redis {
    _server: Group,
    url: String,
    version: String,
}

impl Redis {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        let binary = ["redis-server", "/usr/bin/redis-server"]
            .into_iter()
            .find(|candidate| {
                Command::new(candidate)
                    .arg("--version")
                    .output()
                    .is_ok_and(|output| output.status.success())
            })
            .ok_or_else(|| {
                anyhow!("redis-server is not installed (Debian: apt-get install redis-server)")
            })?;
        let version =
            String::from_utf8_lossy(&Command::new(binary).arg("--version").output()?.stdout)
                .split_whitespace()
                .find_map(|word| word.strip_prefix("v="))
                .unwrap_or("unknown")
                .to_owned();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let server = spawn_group(
            Command::new(binary)
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .arg("--dir")
                .arg(dir)
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .with_context(|| format!("could not start {binary}"))?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                started.elapsed() < REDIS_START_TIMEOUT,
                "redis-server did not listen on port {port} within {} s",
                REDIS_START_TIMEOUT.as_secs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            _server: server,
            url: format!("redis://127.0.0.1:{port}/0"),
            version,
        })
    }
}

/// The Python to run Celery with: `--python`, else the bench's virtual environment in the
/// user's cache folder, made with pip on first use.
pub(super) fn python(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(python) = given {
        ensure!(
            has_requirements(python),
            "{} cannot import celery, redis and numpy (pip install {})",
            python.display(),
            PEER_REQUIREMENTS.join(" ")
        );
        return Ok(python.to_owned());
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .ok_or_else(|| anyhow!("neither XDG_CACHE_HOME nor HOME is set: pass --python"))?;
    let venv = cache.join("fabric-bench").join("celery-5");
    let python = venv.join("bin").join("python");
    if has_requirements(&python) {
        return Ok(python);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .context("could not run python3 to make the Celery peer's virtual environment")?;
    ensure!(
        made.status.success(),
        "`python3 -m venv {}` failed (Debian: apt-get install python3-venv): {}",
        venv.display(),
        String::from_utf8_lossy(&made.stderr)
    );
    let installed = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet"])
        .args(PEER_REQUIREMENTS)
        .output()
        .context("could not run pip in the Celery peer's virtual environment")?;
    ensure!(
        installed.status.success() && has_requirements(&python),
        "pip could not install {} into {}: {}",
        PEER_REQUIREMENTS.join(" "),
        venv.display(),
        String::from_utf8_lossy(&installed.stderr)
    );
    Ok(python)
}

fn has_requirements(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import celery, redis, numpy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// What the client reports of a run (`fabric_peer.py drive`).
#[derive(Deserialize)]
struct DriveReport {
    jobs: usize,
    /// Wall-clock seconds (the Unix epoch) of the first submission.
    first_submitted: f64,
    /// Wall-clock seconds of the last result stored in Redis.
    last_done: f64,
    /// Each job's submission to its result stored, sorted.
    latencies_s: Vec<f64>,
    celery: String,
    redis_py: String,
    numpy: String,
}

/// A timed run of the peer.
pub(super) struct PeerRun {
    pub(super) jobs_per_s: f64,
    /// Each job's submission to its result stored in Redis, sorted.
    pub(super) latencies: Vec<Duration>,
    /// Versions and configuration, for the suite's notes.
    pub(super) describe: String,
}

/// The Celery peer: Redis and `workers` prefork worker processes, up until dropped.
pub(super) struct Celery {
    redis: Redis,
    _worker: Group,
    python: PathBuf,
    dir: PathBuf,
    workers: usize,
    threads: usize,
}

impl Celery {
    /// Starts Redis and a Celery worker of `workers` processes with the models of `jobs`, in
    /// `dir`; `threads` client threads submit.
    pub(super) fn start(
        python: PathBuf,
        dir: &Path,
        jobs: &ModelJobs,
        workers: usize,
        threads: usize,
    ) -> anyhow::Result<Self> {
        let redis = Redis::start(&dir.join("redis"))?;
        let app = dir.join("fabric_peer.py");
        std::fs::write(&app, PEER_APP)
            .with_context(|| format!("could not write {}", app.display()))?;
        let models = dir.join("models");
        std::fs::write(&models, ModelJob::ALL.map(|job| jobs.weights(job)).concat())
            .with_context(|| format!("could not write {}", models.display()))?;
        let worker = spawn_group(
            Command::new(&python)
                .args(["-m", "celery", "-A", "fabric_peer", "worker"])
                .args(["--pool", "prefork", "--concurrency", &workers.to_string()])
                // Nothing to sync with at start, no other workers to gossip or beat with.
                .args([
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ])
                .args(["--loglevel", "WARNING"])
                .current_dir(dir)
                .env("FABRIC_PEER_REDIS", &redis.url)
                .env("FABRIC_PEER_MODELS", &models)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .context("could not start the Celery worker")?;
        Ok(Self {
            redis,
            _worker: worker,
            python,
            dir: dir.to_owned(),
            workers,
            threads,
        })
    }

    /// Submits `jobs[range]` and waits for every result: each output is checked against the
    /// CPU reference.
    pub(super) fn run(
        &self,
        jobs: &ModelJobs,
        range: std::ops::Range<usize>,
    ) -> anyhow::Result<PeerRun> {
        let jobs_file = self.dir.join("jobs");
        let outputs_file = self.dir.join("outputs");
        std::fs::write(&jobs_file, jobs.encode(range.clone())?)
            .with_context(|| format!("could not write {}", jobs_file.display()))?;
        let output = Command::new(&self.python)
            .arg(self.dir.join("fabric_peer.py"))
            .arg("drive")
            .arg(&jobs_file)
            .arg(&outputs_file)
            .arg(self.threads.to_string())
            .arg(RESULTS_TIMEOUT_S.to_string())
            .current_dir(&self.dir)
            .env("FABRIC_PEER_REDIS", &self.redis.url)
            .stdin(Stdio::null())
            .output()
            .context("could not run the Celery peer's client")?;
        ensure!(
            output.status.success(),
            "the Celery peer's client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: DriveReport = serde_json::from_slice(&output.stdout)
            .context("the Celery peer's client did not print its report")?;
        ensure!(
            report.jobs == range.len() && report.latencies_s.len() == range.len(),
            "the Celery peer ran {} jobs, not {}",
            report.jobs,
            range.len()
        );
        let outputs = std::fs::read(&outputs_file)
            .with_context(|| format!("could not read {}", outputs_file.display()))?;
        jobs.check_outputs(range, &outputs, "the Celery peer")?;
        let elapsed = report.last_done - report.first_submitted;
        if !elapsed.is_finite() || elapsed <= 0.0 {
            bail!("the Celery peer's run took {elapsed} s");
        }
        Ok(PeerRun {
            jobs_per_s: report.jobs as f64 / elapsed,
            latencies: report
                .latencies_s
                .iter()
                .map(|seconds| Duration::from_secs_f64(seconds.max(0.0)))
                .collect(),
            describe: format!(
                "Celery {} (redis-py {}, numpy {}), Redis {} (appendonly, appendfsync \
                 everysec) as broker and result backend; {} prefork worker processes, acks \
                 late, prefetch multiplier 16, results stored; {} client threads",
                report.celery,
                report.redis_py,
                report.numpy,
                self.redis.version,
                self.workers,
                self.threads
            ),
        })
    }
}

/// The Celery peer measured on the bench's model jobs, kept for the other suites of the run.
pub(super) struct PeerMeasure {
    pub(super) jobs: usize,
    pub(super) workers: usize,
    pub(super) run: PeerRun,
    /// The same jobs on the CPU reference in this process, on `workers` threads.
    pub(super) reference_jobs_per_s: f64,
    /// One job on the CPU reference on one core, on average.
    pub(super) reference_job: Duration,
}

impl PeerMeasure {
    /// Starts Redis and Celery in a folder of the bench, warms them up, and times `jobs` jobs
    /// (the median of the bench's repetitions by jobs/s).
    pub(super) fn measure(bench: &Bench<'_>, jobs: usize) -> anyhow::Result<Self> {
        let args = bench.args;
        let workers = bench.workers();
        let model_jobs = ModelJobs::new(WARM_UP_JOBS + jobs)?;
        let python = python(args.python.as_deref())?;
        let scratch = scratch_dir(args)?;
        let celery = Celery::start(python, scratch.path(), &model_jobs, workers, CLIENT_THREADS)?;
        celery
            .run(&model_jobs, 0..WARM_UP_JOBS)
            .context("the Celery peer's warm-up")?;
        let mut runs = (0..bench.repetitions())
            .map(|_| celery.run(&model_jobs, WARM_UP_JOBS..WARM_UP_JOBS + jobs))
            .collect::<anyhow::Result<Vec<_>>>()?;
        drop(celery);
        runs.sort_by(|a, b| a.jobs_per_s.total_cmp(&b.jobs_per_s));
        let run = runs.swap_remove(runs.len() / 2);
        let (reference_jobs_per_s, reference_job) =
            model_jobs.reference_rates(WARM_UP_JOBS..WARM_UP_JOBS + jobs, workers)?;
        Ok(Self {
            jobs,
            workers,
            run,
            reference_jobs_per_s,
            reference_job,
        })
    }
}

/// The `celery` suite: the peer alone, next to the computation it runs.
pub(super) fn suite(bench: &mut Bench<'_>) -> anyhow::Result<SuiteReport> {
    let repetitions = bench.repetitions();
    let measure = bench.celery()?;
    let (p50, p99) = (
        quantile_ms(&measure.run.latencies, 0.5),
        quantile_ms(&measure.run.latencies, 0.99),
    );
    let one_job_ms = measure.reference_job.as_secs_f64() * 1e3;
    Ok(SuiteReport {
        suite: "celery",
        events: measure.jobs,
        batch_events: 0,
        repetitions,
        adapter: None,
        notes: vec![
            measure.run.describe.clone(),
            "jobs: a third each of encode_state, score_sequence, predict_next_state, every \
             output checked against Fabric's CPU reference"
                .to_owned(),
        ],
        figures: vec![
            Figure::new(
                "Celery+Redis jobs",
                measure.run.jobs_per_s,
                "jobs/s",
                (Against::Bound, measure.reference_jobs_per_s),
                format!(
                    "first submission to last result stored, vs. the same jobs on the CPU \
                     reference in one process on {} threads: the share of the machine's \
                     compute the queue leaves to the jobs",
                    measure.workers
                ),
            ),
            Figure::new(
                "Celery+Redis latency p50",
                p50,
                "ms",
                (Against::Baseline, one_job_ms),
                "submission to result stored in Redis (its date_done), vs. one job on the \
                 CPU reference on one core",
            ),
            Figure::new(
                "Celery+Redis latency p99",
                p99,
                "ms",
                (Against::Baseline, one_job_ms),
                "99th percentile, vs. one job on the CPU reference on one core (the run \
                 submits every job at once: the latency includes the wait in the queue)",
            ),
        ],
    })
}
