//! `fabric submit`, `fabric status` and `fabric result`: clients of `fabric serve`'s v0 API.
//! `submit` builds a `job_submitted` event, signs it with a registered client key and posts
//! it as a job request (docs/FORMAT.md §14.2).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use fabric_events::{Event, Hash32, JobSubmitted, Role, SignedEvent, SigningKey};
use serde_json::{json, Value};

use crate::http_client::{Client, Response, Target};
use crate::serve::{job_id_of, pretty, WireSignedEvent, JOB_SCHEMA_VERSION};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the server is.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// The server: http://HOST:PORT or unix:PATH
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    server: String,
}

impl ServerArgs {
    fn client(&self) -> anyhow::Result<Client> {
        let target =
            Target::parse(&self.server).map_err(|reason| anyhow::anyhow!("--server {reason}"))?;
        Ok(Client::new(target, REQUEST_TIMEOUT))
    }
}

/// Arguments of `fabric submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The client's key file (written by `fabric keygen`, registered by the owners)
    #[arg(long, value_name = "FILE", conflicts_with = "sim_client")]
    key: Option<PathBuf>,
    /// Sign as the simulated clients of this shard (the key `<shard>.clients` derived from
    /// --seed, registered at genesis)
    #[arg(long, value_name = "SHARD")]
    sim_client: Option<String>,
    /// The seed the served fabric was started with (for --sim-client)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The shard to submit to (default: the --sim-client shard)
    #[arg(long)]
    shard: Option<String>,
    /// The request's id (the job id is derived from it; default: random)
    #[arg(long)]
    request_id: Option<String>,
    /// The model the job runs
    #[arg(long, default_value = "general")]
    model_id: String,
    /// The model's version
    #[arg(long, default_value = "1")]
    model_version: String,
    /// Skills a node needs, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "general")]
    skills: Vec<String>,
    /// Ticks the job runs once started
    #[arg(long, default_value_t = 3)]
    duration_ticks: u32,
    /// Ticks from now by which it should be done
    #[arg(long, default_value_t = 1_000)]
    deadline_ticks: u64,
    /// What the client pays, in millionths of a credit
    #[arg(long, default_value_t = 1_000_000)]
    budget_micros: u64,
    /// The input's file (its BLAKE3 hash is the job's input hash)
    #[arg(long, value_name = "FILE", conflicts_with = "input_hash")]
    input: Option<PathBuf>,
    /// The input's BLAKE3 hash, 64 hex digits (default: the hash of the request id)
    #[arg(long, value_name = "HEX")]
    input_hash: Option<String>,
    /// Wait for the result and print it
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds
    #[arg(long, default_value_t = 120)]
    wait_s: u64,
}

/// A job to submit.
pub struct JobSpec {
    /// The request id.
    pub request_id: String,
    /// The shard.
    pub shard: String,
    /// Model id and version.
    pub model_id: String,
    /// Model version.
    pub model_version: String,
    /// Skills.
    pub skills: Vec<String>,
    /// Duration.
    pub duration_ticks: u32,
    /// Deadline, in ticks from the submission's tick.
    pub deadline_ticks: u64,
    /// Budget.
    pub budget_micros: u64,
    /// Input hash.
    pub input_hash: Hash32,
}

/// The JSON body of `POST /v0/jobs` for `job`, signed by `key` at `tick` with `nonce`.
pub fn job_request_body(
    job: &JobSpec,
    key: &SigningKey,
    tick: u64,
    nonce: u64,
) -> anyhow::Result<Vec<u8>> {
    let event = Event::new(
        Role::Client,
        tick,
        nonce,
        JobSubmitted {
            job: job_id_of(&job.request_id),
            shard: job.shard.clone(),
            workload: format!("{}@{}", job.model_id, job.model_version),
            skills: job.skills.clone(),
            duration_ticks: job.duration_ticks,
            deadline_tick: tick.saturating_add(job.deadline_ticks),
            budget_micros: job.budget_micros,
            input_hash: job.input_hash,
        },
    );
    let signed = SignedEvent::sign(&event, key).context("the job does not fit in an event")?;
    let body = json!({
        "request_id": job.request_id,
        "model_id": job.model_id,
        "model_version": job.model_version,
        "schema_version": JOB_SCHEMA_VERSION,
        "input_hash": job.input_hash,
        "event": WireSignedEvent::from_signed(&signed),
    });
    Ok(serde_json::to_vec(&body)?)
}

/// A nonce above every earlier one of this client: microseconds since the Unix epoch.
pub fn clock_nonce() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

fn json_of(response: &Response, what: &str) -> anyhow::Result<Value> {
    serde_json::from_slice(&response.body).with_context(|| {
        format!(
            "{what}: the server answered {} with a body that is not JSON: {}",
            response.status,
            response.text()
        )
    })
}

/// The server's current tick (`GET /v0/health`).
pub fn current_tick(client: &mut Client) -> anyhow::Result<u64> {
    let response = client
        .request("GET", "/v0/health", None)
        .context("could not reach the server")?;
    ensure!(
        response.status == 200,
        "GET /v0/health answered {}: {}",
        response.status,
        response.text()
    );
    json_of(&response, "GET /v0/health")?["tick"]
        .as_u64()
        .context("GET /v0/health has no tick")
}

fn random_request_id() -> String {
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    hex::encode(bytes)
}

/// `fabric submit`.
pub fn submit(args: &SubmitArgs) -> anyhow::Result<ExitCode> {
    let key = crate::serve::client_key(args.key.as_deref(), args.sim_client.as_deref(), args.seed)?;
    let shard = match (&args.shard, &args.sim_client) {
        (Some(shard), _) => shard.clone(),
        (None, Some(shard)) => shard.clone(),
        (None, None) => bail!("--shard is needed with --key"),
    };
    let request_id = args.request_id.clone().unwrap_or_else(random_request_id);
    let input_hash = match (&args.input, &args.input_hash) {
        (Some(path), _) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("--input {}: cannot read it", path.display()))?;
            Hash32(*blake3::hash(&bytes).as_bytes())
        }
        (None, Some(text)) => {
            Hash32::from_hex(text).map_err(|reason| anyhow::anyhow!("--input-hash: {reason}"))?
        }
        (None, None) => Hash32(*blake3::hash(request_id.as_bytes()).as_bytes()),
    };
    let job = JobSpec {
        request_id,
        shard,
        model_id: args.model_id.clone(),
        model_version: args.model_version.clone(),
        skills: args.skills.clone(),
        duration_ticks: args.duration_ticks,
        deadline_ticks: args.deadline_ticks,
        budget_micros: args.budget_micros,
        input_hash,
    };
    let mut client = args.server.client()?;
    let tick = current_tick(&mut client)?;
    let body = job_request_body(&job, &key, tick, clock_nonce())?;
    let response = client
        .request("POST", "/v0/jobs", Some(("application/json", &body)))
        .context("could not send the job")?;
    let answer = json_of(&response, "POST /v0/jobs")?;
    if response.status != 202 {
        eprintln!("{}", pretty(&answer));
        return Ok(ExitCode::FAILURE);
    }
    if !args.wait {
        println!("{}", pretty(&answer));
        return Ok(ExitCode::SUCCESS);
    }
    let job_id = job_id_of(&job.request_id);
    let deadline = Instant::now() + Duration::from_secs(args.wait_s);
    loop {
        let response = client.request("GET", &format!("/v0/jobs/{job_id}/result"), None)?;
        if response.status == 200 {
            println!("{}", pretty(&json_of(&response, "GET result")?));
            return Ok(ExitCode::SUCCESS);
        }
        ensure!(
            response.status == 409,
            "GET /v0/jobs/{job_id}/result answered {}: {}",
            response.status,
            response.text()
        );
        ensure!(
            Instant::now() < deadline,
            "job {job_id} has no result after {} s",
            args.wait_s
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Arguments of `fabric status` and `fabric result`.
#[derive(clap::Args, Debug)]
pub struct JobArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The job id
    job: u64,
    /// `fabric result`: also fetch its artifact into FILE (checked against its hash)
    #[arg(long, value_name = "FILE")]
    artifact_out: Option<PathBuf>,
}

fn get_json(client: &mut Client, path: &str) -> anyhow::Result<(u16, Value)> {
    let response = client
        .request("GET", path, None)
        .with_context(|| format!("GET {path}: could not reach the server"))?;
    let value = json_of(&response, path)?;
    Ok((response.status, value))
}

/// `fabric status JOB`.
pub fn status(args: &JobArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.server.client()?;
    let (status, value) = get_json(&mut client, &format!("/v0/jobs/{}", args.job))?;
    if status != 200 {
        eprintln!("{}", pretty(&value));
        return Ok(ExitCode::FAILURE);
    }
    println!("{}", pretty(&value));
    Ok(ExitCode::SUCCESS)
}

/// `fabric result JOB`.
pub fn result(args: &JobArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.server.client()?;
    let (status, value) = get_json(&mut client, &format!("/v0/jobs/{}/result", args.job))?;
    if status != 200 {
        eprintln!("{}", pretty(&value));
        return Ok(ExitCode::FAILURE);
    }
    if let Some(out) = &args.artifact_out {
        let hash_text = value["artifact"]["hash"]
            .as_str()
            .context("the job's result has no artifact")?;
        let hash = Hash32::from_hex(hash_text)
            .map_err(|reason| anyhow::anyhow!("the artifact hash {hash_text:?}: {reason}"))?;
        let response = client.request("GET", &format!("/v0/artifacts/{hash}"), None)?;
        ensure!(
            response.status == 200,
            "GET /v0/artifacts/{hash} answered {}: {}",
            response.status,
            response.text()
        );
        let actual = Hash32(*blake3::hash(&response.body).as_bytes());
        ensure!(
            actual == hash,
            "the artifact served as {hash} hashes to {actual}"
        );
        std::fs::write(out, &response.body)
            .with_context(|| format!("could not write {}", out.display()))?;
    }
    println!("{}", pretty(&value));
    Ok(ExitCode::SUCCESS)
}
