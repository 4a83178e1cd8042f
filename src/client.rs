//! `fabric submit`, `fabric status` and `fabric result`: clients of `fabric serve`'s v0 API.
//! `submit` builds a `job_submitted` event, signs it with a registered client key and posts
//! it as a job request (docs/FORMAT.md §14.2).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use fabric_api::client::{self, Answer, REQUEST_TIMEOUT};
use fabric_api::http_client::{self, Client, Target};
use fabric_api::JobSpec;
use fabric_events::Hash32;
use serde_json::Value;

/// Where the server is.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// The server: http://HOST:PORT, https://HOST:PORT or unix:PATH
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// For an https:// server: the CA certificate(s) that its certificate must chain to (PEM);
    /// no other certificate is trusted
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

impl ServerArgs {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        self.client_of(&self.server, "--server", true)
    }

    /// A client of `url` (given as `flag`), trusting the same --ca for https://; `--ca` for a
    /// plain server is an error only when `strict`.
    pub(crate) fn client_of(&self, url: &str, flag: &str, strict: bool) -> anyhow::Result<Client> {
        let target = Target::parse(url).map_err(|reason| anyhow::anyhow!("{flag} {reason}"))?;
        let client = Client::new(target.clone(), REQUEST_TIMEOUT);
        match (&target, &self.ca) {
            (Target::Https(_), Some(ca)) => {
                let tls = http_client::trusting(ca).context("--ca")?;
                Ok(client.with_tls(tls))
            }
            (Target::Https(_), None) => {
                bail!("{flag} {target} speaks TLS: give --ca FILE, the CA that signed its certificate")
            }
            (_, Some(_)) if strict => bail!("--ca is for an https:// server, not {target}"),
            _ => Ok(client),
        }
    }
}

/// Renders a JSON value for the terminal.
fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// Arguments of `fabric submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The client's key file (written by `fabric keygen`, registered by the owners)
    #[arg(long, value_name = "FILE", conflicts_with = "sim_client")]
    key: Option<PathBuf>,
    /// Sign as the simulated clients of this shard (the key `<shard>.clients` derived from the
    /// simulation's public seed, registered at genesis); refused unless the server says its
    /// fabric is a simulation
    #[arg(long, value_name = "SHARD")]
    sim_client: Option<String>,
    /// With --sim-client: the seed the simulation must have [default: the server's]
    #[arg(long, requires = "sim_client")]
    seed: Option<u64>,
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
    /// The input's file: sent with the job (its BLAKE3 hash is the job's input hash)
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

/// `fabric submit`.
pub fn submit(args: &SubmitArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.server.client()?;
    // Only a simulation's server hands out the seed a simulated client key derives from.
    let server_origin = match &args.sim_client {
        Some(_) => Some(client::key_origin(&mut client)?),
        None => None,
    };
    let key = client::client_key(
        args.key.as_deref(),
        args.sim_client.as_deref(),
        args.seed,
        server_origin,
    )?;
    let shard = match (&args.shard, &args.sim_client) {
        (Some(shard), _) => shard.clone(),
        (None, Some(shard)) => shard.clone(),
        (None, None) => bail!("--shard is needed with --key"),
    };
    let request_id = args
        .request_id
        .clone()
        .unwrap_or_else(client::random_request_id);
    let input = match &args.input {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("--input {}: cannot read it", path.display()))?,
        ),
        None => None,
    };
    let input_hash = match (&input, &args.input_hash) {
        (Some(bytes), _) => Hash32(*blake3::hash(bytes).as_bytes()),
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
    let answer = client::submit(
        &mut client,
        &job,
        &key,
        client::clock_nonce(),
        input.as_deref(),
    )?;
    if answer.status != 202 {
        eprintln!("{}", pretty(&answer.body));
        return Ok(ExitCode::FAILURE);
    }
    if !args.wait {
        println!("{}", pretty(&answer.body));
        return Ok(ExitCode::SUCCESS);
    }
    let result =
        client::wait_for_result(&mut client, job.job_id(), Duration::from_secs(args.wait_s))?;
    println!("{}", pretty(&result));
    Ok(ExitCode::SUCCESS)
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

/// Prints a failed answer on stderr: the exit status says so.
fn failed(answer: &Answer) -> ExitCode {
    eprintln!("{}", pretty(&answer.body));
    ExitCode::FAILURE
}

/// `fabric status JOB`.
pub fn status(args: &JobArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.server.client()?;
    let answer = client::job_status(&mut client, args.job)?;
    if answer.status != 200 {
        return Ok(failed(&answer));
    }
    println!("{}", pretty(&answer.body));
    Ok(ExitCode::SUCCESS)
}

/// `fabric result JOB`.
pub fn result(args: &JobArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.server.client()?;
    let answer = client::job_result(&mut client, args.job)?;
    if answer.status != 200 {
        return Ok(failed(&answer));
    }
    if let Some(out) = &args.artifact_out {
        let hash = client::artifact_hash(&answer.body)?;
        let bytes = client::fetch_artifact(&mut client, &hash)?;
        std::fs::write(out, &bytes)
            .with_context(|| format!("could not write {}", out.display()))?;
    }
    println!("{}", pretty(&answer.body));
    Ok(ExitCode::SUCCESS)
}
