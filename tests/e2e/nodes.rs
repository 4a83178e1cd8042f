//! Node agents (`fabric node`, the real binary) on a fabric made by the ceremony and served by
//! `fabric serve --nats` (the real binary), over a real `nats-server` whose users are the
//! fabric's server and one user per node, each allowed only its own subjects. Jobs of three
//! registered models run on real inputs; every output is downloaded and compared with the CPU
//! reference; a node killed with SIGKILL has its jobs requeued and run elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use fabric_api::http_client::Client;
use fabric_api::job::{job_id_of, JobSpec};
use fabric_events::{Hash32, JobType, ModelRegistered, OwnerAction, OwnerCommand, SigningKey};
use fabric_gpu_kernels::models::ModelJob;
use fabric_gpu_kernels::Engine;
use serde_json::json;
use tempfile::TempDir;

use crate::serve::{current_tick, export_lines, get, json_of, post};
use crate::support::{fabric, path, stderr, stdout, Ceremony, Served};

/// A world of one shard and three nodes, for node agents.
const WORLD: &str = r#"
[shards.earth]
queue_budget = 100000
latency_budget_ms = 1000
spillover = []
specialties = ["models"]

[shards.earth.treaty]
reputation_floor_ppm = 0
regions_served = ["earth"]
node_quota_jobs = 1000000
quota_window_ticks = 100

[[nodes]]
name = "earth.node-a"
region = "earth"
capacity = 8
max_concurrency = 4
heartbeat_interval_ticks = 10
capabilities = ["models"]
latency_ms = 10
price_micros_per_hour = 1000000
reputation_ppm = 990000

[[nodes]]
name = "earth.node-b"
region = "earth"
capacity = 8
max_concurrency = 4
heartbeat_interval_ticks = 10
capabilities = ["models"]
latency_ms = 10
price_micros_per_hour = 1000000
reputation_ppm = 990000

[[nodes]]
name = "earth.node-c"
region = "earth"
capacity = 8
max_concurrency = 4
heartbeat_interval_ticks = 10
capabilities = ["models"]
latency_ms = 10
price_micros_per_hour = 1000000
reputation_ppm = 990000

[workload]
load_percent = 10

[[workload.kinds]]
name = "models.run"
shard = "earth"
weight = 1
skills = ["models"]
duration_ticks_min = 1
duration_ticks_max = 1
deadline_slack_ticks = 1000
budget_micros = 1000
failure_ppm = 0

[failures]
epoch_ticks = 200
outage_ppm = 0
outage_heartbeats_min = 1
outage_heartbeats_max = 1

[checkpoints]
interval_ticks = 50

[owners]
count = 3
threshold = 2

[verification]
fraction_ppm = 100000
"#;

pub(crate) const NODES: [&str; 3] = ["earth.node-a", "earth.node-b", "earth.node-c"];
const SERVER_USER: (&str, &str) = ("fabric", "fabric-password");

/// A node's NATS user and password.
fn nats_user(node: &str) -> (String, String) {
    let user = node.replace('.', "-");
    let password = format!("{user}-password");
    (user, password)
}

/// A `nats-server -js` with a user for the fabric's server (every subject) and one per node
/// (its own subjects, the tick heads and its own inbox). Killed when dropped.
struct NatsWithUsers {
    _dir: TempDir,
    port: u16,
    child: Child,
}

impl NatsWithUsers {
    fn start(nodes: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut users = vec![format!(
            r#"{{ user: "{}", password: "{}" }}"#,
            SERVER_USER.0, SERVER_USER.1
        )];
        for node in nodes {
            let (user, password) = nats_user(node);
            let token = node.replace('.', ":");
            users.push(format!(
                r#"{{ user: "{user}", password: "{password}", permissions: {{
                    publish: {{ allow: ["fabric.v1.node.{token}.hello", "fabric.v1.node.{token}.attempts", "fabric.v1.node.{token}.fetch"] }},
                    subscribe: {{ allow: ["fabric.v1.node.{token}.work", "fabric.v1.tick", "_INBOX.{user}.>"] }}
                }} }}"#
            ));
        }
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\nauthorization {{ users = [\n{}\n] }}\n",
            dir.path().join("js").display(),
            users.join(",\n")
        );
        let config_path = dir.path().join("nats.conf");
        std::fs::write(&config_path, config).expect("nats config written");
        let log = std::fs::File::create(dir.path().join("nats.log")).expect("log file");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts (the nats-server package provides it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server does not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            _dir: dir,
            port,
            child,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsWithUsers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// A running `fabric node`, killed (SIGKILL) when dropped.
pub(crate) struct NodeProcess {
    child: Option<Child>,
    stdout: BufReader<ChildStdout>,
}

impl NodeProcess {
    /// Starts `fabric node ARGS` and waits for `node ready`; panics with its output when it
    /// exits first.
    pub(crate) fn start(args: &[&str]) -> Self {
        let mut process = Self::spawn(args);
        let mut line = String::new();
        loop {
            line.clear();
            let read = process
                .stdout
                .read_line(&mut line)
                .expect("node stdout reads");
            if read == 0 {
                let status = process.child.as_mut().map(|child| child.wait());
                panic!("fabric node {args:?} exited before it was ready: {status:?}");
            }
            if line.starts_with("node ready:") {
                return process;
            }
        }
    }

    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fabric"))
            .arg("node")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("fabric node starts");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Self {
            child: Some(child),
            stdout,
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then its exit status and the rest of its stdout.
    fn terminate(&mut self) -> (bool, String) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let exit = loop {
            if let Some(exit) = child.try_wait().expect("status") {
                break exit;
            }
            assert!(Instant::now() < deadline, "fabric node ignores SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stdout, &mut rest);
        (exit.success(), rest)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The arguments of `fabric node` for `node` of `ceremony` as its own NATS user.
fn node_args(ceremony: &Ceremony, nats: &NatsWithUsers, node: &str, user: &str) -> Vec<String> {
    let (user, password) = nats_user(user);
    vec![
        "--nats".to_owned(),
        nats.url(),
        "--nats-user".to_owned(),
        user,
        "--nats-password".to_owned(),
        password,
        "--genesis".to_owned(),
        path(&ceremony.data.join("genesis.json")).to_owned(),
        "--key".to_owned(),
        path(&ceremony.node_keys().join(format!("{node}.key"))).to_owned(),
        "--name".to_owned(),
        node.to_owned(),
        "--executors".to_owned(),
        "1".to_owned(),
    ]
}

fn start_node(ceremony: &Ceremony, nats: &NatsWithUsers, node: &str) -> NodeProcess {
    let args = node_args(ceremony, nats, node, node);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    NodeProcess::start(&args)
}

pub(crate) fn world(dir: &Path) -> PathBuf {
    let file = dir.join("world.toml");
    std::fs::write(&file, WORLD).expect("world written");
    file
}

fn serve(ceremony: &Ceremony, nats: &NatsWithUsers) -> Served {
    let url = nats.url();
    ceremony.serve(&[
        "--nats",
        &url,
        "--nats-user",
        SERVER_USER.0,
        "--nats-password",
        SERVER_USER.1,
        "--tick-ms",
        "50",
        "--submission-tick-window",
        "100",
    ])
}

/// Bytes of a seed byte and a label: inputs and weights anyone can regenerate.
pub(crate) fn bytes_of(label: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(label.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// The weights of the test model of `job_type`.
fn weights_of(job_type: JobType) -> Vec<u8> {
    match job_type {
        JobType::PredictNextState => {
            [1i32.to_le_bytes(), 3u32.to_le_bytes(), 8u32.to_le_bytes()].concat()
        }
        other => bytes_of(other.name(), other.weights_bytes()),
    }
}

/// Registers one model per job type (`<job type>@1`) by an owner command approved by two
/// of the ceremony's owners.
pub(crate) fn register_models(client: &mut Client, ceremony: &Ceremony) {
    let owners: Vec<SigningKey> = ceremony
        .owners
        .iter()
        .map(|owner| fabric_events::keys::load_secret(owner).expect("owner key"))
        .collect();
    let tick = current_tick(client);
    for (index, job_type) in JobType::ALL.into_iter().enumerate() {
        let nonce = 500 + index as u64;
        let mut command = OwnerCommand {
            action: OwnerAction::RegisterModel {
                registration: ModelRegistered {
                    model_id: job_type.name().replace('_', "-"),
                    model_version: "1".to_owned(),
                    job_type,
                    weights: weights_of(job_type),
                },
            },
            expiry_tick: tick + 10_000,
            approvals: Vec::new(),
        };
        command.approve(nonce, &owners[0]);
        command.approve(nonce, &owners[1]);
        let body = json!({"nonce": nonce, "command": command}).to_string();
        let response = post(client, "/v0/owner/commands", body.as_bytes());
        assert_eq!(response.status, 202, "{}", response.text());
    }
}

/// One submitted job: its id, type and input.
pub(crate) struct Submitted {
    job: u64,
    job_type: JobType,
    input: Vec<u8>,
}

/// Submits `count` jobs, the three job types in turn, each with its input inline, with nonces
/// from `first_nonce` on.
pub(crate) fn submit_jobs(
    client: &mut Client,
    key: &SigningKey,
    count: usize,
    label: &str,
    first_nonce: u64,
) -> Vec<Submitted> {
    let mut submitted = Vec::with_capacity(count);
    for index in 0..count {
        let job_type = JobType::ALL[index % 3];
        let request_id = format!("{label}-{index}");
        let input = bytes_of(&request_id, job_type.input_bytes());
        let spec = JobSpec {
            request_id: request_id.clone(),
            shard: "earth".to_owned(),
            model_id: job_type.name().replace('_', "-"),
            model_version: "1".to_owned(),
            skills: vec!["models".to_owned()],
            duration_ticks: 1,
            deadline_ticks: 100_000,
            budget_micros: 1_000,
            input_hash: Hash32(*blake3::hash(&input).as_bytes()),
        };
        let tick = current_tick(client);
        let mut request = spec
            .request(key, tick, first_nonce + index as u64)
            .expect("a job request");
        request.input = Some(BASE64.encode(&input));
        let body = serde_json::to_vec(&request).expect("json");
        let response = post(client, "/v0/jobs", &body);
        assert_eq!(response.status, 202, "{request_id}: {}", response.text());
        submitted.push(Submitted {
            job: job_id_of(&request_id),
            job_type,
            input,
        });
    }
    submitted
}

/// Polls until `done` jobs of `jobs` have a receipt (completed or failed), at most `limit`.
fn wait_for_results(client: &mut Client, jobs: &[Submitted], done: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let finished = jobs
            .iter()
            .filter(|job| {
                let status = json_of(&get(client, &format!("/v0/jobs/{}", job.job)));
                status["status"] == "completed" || status["status"] == "failed"
            })
            .count();
        if finished >= done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{finished} of {} jobs finished within {limit:?} (waited for {done})",
            jobs.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls the log until each of `nodes` has a heartbeat in it and its router's last word on its
/// health (if any) is healthy, at most `limit`.
pub(crate) fn wait_until_healthy(client: &mut Client, nodes: &[&str], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let lines = export_lines(client);
        let healthy = |node: &str| {
            let of_node = |kind: &'static str| {
                lines.values().filter(move |line| {
                    line["kind"] == kind && line["body"]["data"]["node"] == node
                })
            };
            of_node("heartbeat").next().is_some()
                && of_node("node_health_changed")
                    .next_back()
                    .is_none_or(|line| line["body"]["data"]["healthy"] == true)
        };
        let unhealthy: Vec<&str> = nodes
            .iter()
            .copied()
            .filter(|node| !healthy(node))
            .collect();
        if unhealthy.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{unhealthy:?} not healthy within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls the log until at least `receipts` receipts are in it and `node` holds an assignment
/// without a receipt (true), or until the `submitted` jobs all have their receipts and `node`
/// holds nothing (false: the work ran out before a poll caught it holding some), at most
/// `limit`.
fn holding_work(
    client: &mut Client,
    node: &str,
    receipts: usize,
    submitted: usize,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let lines = export_lines(client);
        let of_kind = |kind: &str| {
            lines
                .values()
                .filter(move |line| line["kind"] == kind && line["body"]["data"]["node"] == node)
                .map(|line| line["body"]["data"]["job"].as_u64())
                .collect::<Vec<_>>()
        };
        let receipted: BTreeSet<Option<u64>> = of_kind("job_receipt").into_iter().collect();
        let holding = of_kind("job_assigned")
            .into_iter()
            .any(|job| !receipted.contains(&job));
        let all_receipts = lines
            .values()
            .filter(|line| line["kind"] == "job_receipt")
            .count();
        if all_receipts >= receipts && holding {
            return true;
        }
        if all_receipts >= submitted && !holding {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "{node} held no work with {all_receipts} of {submitted} receipts in the log within \
             {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The reference output of a job: the CPU reference of its job type with the model's weights.
fn reference(job: &Submitted) -> Vec<u8> {
    let model_job = ModelJob::from_name(job.job_type.name()).expect("a kernel per job type");
    model_job
        .execute(&weights_of(job.job_type), &job.input, Engine::Cpu)
        .expect("the reference runs")
}

fn audit(data: &Path, extra: &[&str]) {
    let mut args = vec!["audit", "--data", path(data)];
    args.extend_from_slice(extra);
    let output = fabric(&args);
    assert!(
        output.status.success(),
        "fabric audit {extra:?}: {}{}",
        stdout(&output),
        stderr(&output)
    );
}

#[test]
fn three_node_agents_run_300_real_jobs_and_a_killed_nodes_jobs_run_elsewhere() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ceremony = Ceremony::run_with(dir.path(), &world(dir.path()));
    let nats = NatsWithUsers::start(&NODES);
    let mut served = serve(&ceremony, &nats);
    let mut client = served.client();
    register_models(&mut client, &ceremony);
    let mut nodes: BTreeMap<&str, NodeProcess> = NODES
        .iter()
        .map(|node| (*node, start_node(&ceremony, &nats, node)))
        .collect();
    // A node process slow to start (a loaded machine) may have been marked unhealthy before
    // its first heartbeat: the jobs go out once the routers count on all three.
    wait_until_healthy(&mut client, &NODES, Duration::from_secs(120));
    let key = fabric_events::keys::load_secret(&ceremony.client).expect("client key");

    // Mid-run, while it holds work, node b dies without a word; half the jobs are still to
    // come, and its router gives it some until it marks it unhealthy. Jobs run fast and a poll
    // of the log is slow on a loaded machine: the log is polled while the jobs are submitted,
    // and if they all ran before a poll caught node b holding some, 30 more go out.
    let mut jobs = Vec::new();
    let mut killed_at = None;
    for round in 0..10u64 {
        let (label, count, first_nonce) = match round {
            0 => ("job".to_owned(), 150, 1_000),
            more => (format!("more-{more}"), 30, 1_150 + 30 * (more - 1)),
        };
        let submitted = jobs.len() + count;
        let batch = std::thread::scope(|scope| {
            let submitter =
                scope.spawn(|| submit_jobs(&mut served.client(), &key, count, &label, first_nonce));
            let timeout = Duration::from_secs(300);
            if holding_work(&mut client, "earth.node-b", 30, submitted, timeout) {
                killed_at = Some(current_tick(&mut client));
                nodes.get_mut("earth.node-b").expect("node b").kill();
            }
            submitter.join().expect("the submitter thread")
        });
        jobs.extend(batch);
        if killed_at.is_some() {
            break;
        }
    }
    let killed_at = killed_at.expect("node b was caught holding work in one of ten rounds");
    jobs.extend(submit_jobs(&mut client, &key, 150, "late", 2_000));
    wait_for_results(&mut client, &jobs, jobs.len(), Duration::from_secs(300));

    // Every job completed, and its output is the CPU reference's.
    for job in &jobs {
        let result = json_of(&get(&mut client, &format!("/v0/jobs/{}/result", job.job)));
        assert_eq!(result["outcome"], "completed", "{result}");
        let url = result["artifact"]["url"].as_str().expect("an artifact");
        let output = get(&mut client, url);
        assert_eq!(output.status, 200);
        assert_eq!(
            output.body,
            reference(job),
            "job {} ({:?})",
            job.job,
            job.job_type
        );
        assert!(result["execution_us"].as_u64().is_some(), "{result}");
    }

    // Node b's jobs were requeued when it went silent and completed on the others.
    let lines = export_lines(&mut client);
    let requeued: BTreeSet<u64> = lines
        .values()
        .filter(|line| {
            line["kind"] == "job_requeued" && line["body"]["data"]["node"] == "earth.node-b"
        })
        .map(|line| line["body"]["data"]["job"].as_u64().expect("a job"))
        .collect();
    // Its router marked it unhealthy after it was killed (unless a slow moment had marked it
    // so just before, and it never heartbeated again).
    let b_health: Vec<(u64, bool)> = lines
        .values()
        .filter(|line| {
            line["kind"] == "node_health_changed" && line["body"]["data"]["node"] == "earth.node-b"
        })
        .map(|line| {
            (
                line["body"]["tick"].as_u64().expect("a tick"),
                line["body"]["data"]["healthy"] == true,
            )
        })
        .collect();
    assert_eq!(
        b_health.last().map(|(_, healthy)| *healthy),
        Some(false),
        "node b is unhealthy after it was killed at tick {killed_at}: {b_health:?}"
    );
    assert!(
        !requeued.is_empty(),
        "node b held work when it was killed at tick {killed_at}: some of it was requeued"
    );
    for job in &requeued {
        let result = json_of(&get(&mut client, &format!("/v0/jobs/{job}/result")));
        assert_ne!(result["node"], "earth.node-b", "{result}");
        assert_eq!(result["outcome"], "completed", "{result}");
    }

    // Started again, node b is healthy again.
    let restarted_at = current_tick(&mut client);
    nodes.insert("earth.node-b", start_node(&ceremony, &nats, "earth.node-b"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = export_lines(&mut client);
        let healthy = lines.values().any(|line| {
            line["kind"] == "node_health_changed"
                && line["body"]["data"]["node"] == "earth.node-b"
                && line["body"]["data"]["healthy"] == true
                && line["body"]["tick"].as_u64() >= Some(restarted_at)
        });
        if healthy {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node b did not become healthy again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    for (_, mut node) in nodes {
        let (ok, said) = node.terminate();
        assert!(ok, "fabric node exits 0 on SIGTERM: {said}");
    }
    assert!(served.terminate(), "fabric serve exits 0 on SIGTERM");
    audit(&ceremony.data, &[]);
    audit(&ceremony.data, &["--reexecute"]);
}

#[test]
fn a_node_with_another_nodes_nats_user_is_refused_by_the_permissions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ceremony = Ceremony::run_with(dir.path(), &world(dir.path()));
    let nats = NatsWithUsers::start(&NODES);
    let _served = serve(&ceremony, &nats);
    // Node b's key, under node a's NATS user: it may not speak on node b's subjects.
    let args = node_args(&ceremony, &nats, "earth.node-b", "earth.node-a");
    let output = fabric(
        &std::iter::once("node")
            .chain(args.iter().map(String::as_str))
            .collect::<Vec<_>>(),
    );
    assert!(!output.status.success(), "{}", stdout(&output));
    let said = stderr(&output);
    assert!(
        said.to_lowercase().contains("permissions violation"),
        "the refusal names the permissions: {said}"
    );
    // Its own user works.
    let mut own = start_node(&ceremony, &nats, "earth.node-b");
    let (ok, said) = own.terminate();
    assert!(ok, "{said}");
}

/// A world of one shard and `count` nodes, named `earth.n0000`, `earth.n0001`, ….
fn many_nodes_world(dir: &Path, count: usize) -> PathBuf {
    let shard = WORLD
        .split("[[nodes]]")
        .next()
        .expect("the shard comes first");
    let rest = &WORLD[WORLD.find("[workload]").expect("a workload")..];
    let mut text = shard.to_owned();
    for index in 0..count {
        text.push_str(&format!(
            "[[nodes]]\nname = \"earth.n{index:04}\"\nregion = \"earth\"\ncapacity = 1\n\
             max_concurrency = 1\nheartbeat_interval_ticks = 20\ncapabilities = [\"models\"]\n\
             latency_ms = 10\nprice_micros_per_hour = 1000000\nreputation_ppm = 990000\n\n"
        ));
    }
    text.push_str(rest);
    let file = dir.join("many.toml");
    std::fs::write(&file, text).expect("world written");
    file
}

/// A `nats-server` whose one `pool` user may speak for every node (the nodes of one
/// `fabric node --count` process share its connection).
fn nats_with_pool_user() -> NatsWithUsers {
    let mut nats = NatsWithUsers::start(&[]);
    let dir = nats._dir.path().to_path_buf();
    let _ = nats.child.kill();
    let _ = nats.child.wait();
    let config = format!(
        "listen: \"127.0.0.1:{}\"\njetstream {{ store_dir: \"{}\" }}\nauthorization {{ users = [\n\
         {{ user: \"{}\", password: \"{}\" }},\n\
         {{ user: \"pool\", password: \"pool-password\", permissions: {{\n\
           publish: {{ allow: [\"fabric.v1.node.*.hello\", \"fabric.v1.node.*.attempts\", \"fabric.v1.node.*.fetch\"] }},\n\
           subscribe: {{ allow: [\"fabric.v1.node.*.work\", \"fabric.v1.tick\", \"_INBOX.pool.>\"] }} }} }}\n] }}\n",
        nats.port,
        dir.join("js").display(),
        SERVER_USER.0,
        SERVER_USER.1
    );
    let config_path = dir.join("nats.conf");
    std::fs::write(&config_path, config).expect("nats config written");
    nats.child = Command::new("nats-server")
        .arg("-c")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", nats.port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server does not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    nats
}

#[test]
fn one_node_process_keeps_1000_nodes_healthy_for_60_ticks() {
    const COUNT: usize = 1_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let ceremony = Ceremony::run_with(dir.path(), &many_nodes_world(dir.path(), COUNT));
    let nats = nats_with_pool_user();
    let url = nats.url();
    let mut served = ceremony.serve(&[
        "--nats",
        &url,
        "--nats-user",
        SERVER_USER.0,
        "--nats-password",
        SERVER_USER.1,
        "--tick-ms",
        "100",
    ]);
    let mut client = served.client();
    let count = COUNT.to_string();
    let genesis = ceremony.data.join("genesis.json");
    let keys = ceremony.node_keys();
    let mut nodes = NodeProcess::start(&[
        "--nats",
        &url,
        "--nats-user",
        "pool",
        "--nats-password",
        "pool-password",
        "--genesis",
        path(&genesis),
        "--key-dir",
        path(&keys),
        "--count",
        &count,
        "--executors",
        "1",
    ]);
    // Nodes registered at tick 0 may have been marked unhealthy before the process was up:
    // two heartbeat intervals later each is healthy again, or the test fails below.
    let ready_at = current_tick(&mut client);
    let window_start = wait_until_tick(&mut client, ready_at + 45);
    let window_end = wait_until_tick(&mut client, window_start + 60);

    let lines = export_lines(&mut client);
    let mut healthy: BTreeMap<String, bool> = BTreeMap::new();
    let mut heard: BTreeSet<String> = BTreeSet::new();
    for line in lines.values() {
        let tick = line["body"]["tick"].as_u64().expect("a tick");
        let data = &line["body"]["data"];
        if line["kind"] == "node_health_changed" {
            let node = data["node"].as_str().expect("a node").to_owned();
            let now = data["healthy"] == true;
            assert!(
                now || tick < window_start || tick > window_end,
                "node {node} was marked unhealthy at tick {tick}, inside the window \
                 {window_start}..={window_end}; its heartbeats: {:?}",
                heartbeat_ticks(&lines, &node)
            );
            healthy.insert(node, now);
        }
        if line["kind"] == "heartbeat" && (window_start..=window_end).contains(&tick) {
            heard.insert(data["node"].as_str().expect("a node").to_owned());
        }
    }
    assert_eq!(
        heard.len(),
        COUNT,
        "every node heartbeated within the window"
    );
    let unhealthy: Vec<&String> = healthy
        .iter()
        .filter(|(_, healthy)| !**healthy)
        .map(|(node, _)| node)
        .collect();
    assert!(unhealthy.is_empty(), "unhealthy at the end: {unhealthy:?}");
    let (ok, said) = nodes.terminate();
    assert!(ok, "{said}");
    assert!(said.contains("node stopped"), "{said}");
    assert!(served.terminate());
}

/// Waits until the fabric's tick is at least `tick`; the tick reached.
fn wait_until_tick(client: &mut Client, tick: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = current_tick(client);
        if now >= tick {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the fabric stopped at tick {now}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The ticks (signed, sequenced at) of a node's heartbeats in the log.
fn heartbeat_ticks(lines: &BTreeMap<u64, serde_json::Value>, node: &str) -> Vec<(u64, u64)> {
    let mut sequenced_at = 0;
    let mut ticks = Vec::new();
    for line in lines.values() {
        let tick = line["body"]["tick"].as_u64().unwrap_or(0);
        sequenced_at = sequenced_at.max(tick);
        if line["kind"] == "heartbeat" && line["body"]["data"]["node"] == node {
            ticks.push((tick, sequenced_at));
        }
    }
    ticks
}

#[test]
fn a_job_that_fails_in_the_sandbox_is_a_failed_receipt_and_its_node_goes_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ceremony = Ceremony::run_with(dir.path(), &world(dir.path()));
    let nats = NatsWithUsers::start(&NODES);
    let served = serve(&ceremony, &nats);
    let mut client = served.client();
    register_models(&mut client, &ceremony);
    // Only node a runs: b and c are marked unhealthy after two heartbeat intervals of silence.
    let start = current_tick(&mut client);
    wait_until_tick(&mut client, start + 20);
    // A wall-clock deadline of 0 ms: every job's executor is killed at its deadline.
    let mut args = node_args(&ceremony, &nats, "earth.node-a", "earth.node-a");
    args.extend(["--job-wall-ms".to_owned(), "0".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = NodeProcess::start(&args);
    let key = fabric_events::keys::load_secret(&ceremony.client).expect("client key");
    let failing = submit_jobs(&mut client, &key, 3, "deadline", 1_000);
    wait_for_results(
        &mut client,
        &failing,
        failing.len(),
        Duration::from_secs(120),
    );
    for job in &failing {
        let result = json_of(&get(&mut client, &format!("/v0/jobs/{}/result", job.job)));
        assert_eq!(result["outcome"], "failed", "{result}");
        assert_eq!(result["node"], "earth.node-a", "{result}");
        assert!(result["artifact"].is_null(), "{result}");
    }
    // The node is alive and well: it goes on heartbeating, and with room to run, its next
    // jobs complete.
    let (ok, said) = node.terminate();
    assert!(ok, "{said}");
    assert!(said.contains("3 failed"), "{said}");
    let mut node = start_node(&ceremony, &nats, "earth.node-a");
    let passing = submit_jobs(&mut client, &key, 3, "roomy", 2_000);
    wait_for_results(
        &mut client,
        &passing,
        passing.len(),
        Duration::from_secs(120),
    );
    for job in &passing {
        let result = json_of(&get(&mut client, &format!("/v0/jobs/{}/result", job.job)));
        assert_eq!(result["outcome"], "completed", "{result}");
    }
    let (ok, said) = node.terminate();
    assert!(ok, "{said}");
    let lines = export_lines(&mut client);
    let failed_receipts = lines
        .values()
        .filter(|line| line["kind"] == "job_receipt" && line["body"]["data"]["outcome"] == "failed")
        .count();
    assert_eq!(
        failed_receipts, 3,
        "each failure is a recorded failed receipt"
    );
}

#[test]
fn a_lying_node_is_caught_by_re_execution_and_halted() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Every completed receipt is re-executed in this world.
    let world_file = dir.path().join("checked.toml");
    std::fs::write(
        &world_file,
        WORLD.replace("fraction_ppm = 100000", "fraction_ppm = 1000000"),
    )
    .expect("world written");
    let ceremony = Ceremony::run_with(dir.path(), &world_file);
    let nats = NatsWithUsers::start(&NODES);
    let served = serve(&ceremony, &nats);
    let mut client = served.client();
    register_models(&mut client, &ceremony);
    let start = current_tick(&mut client);
    wait_until_tick(&mut client, start + 30);
    let mut args = node_args(&ceremony, &nats, "earth.node-a", "earth.node-a");
    args.extend(["--byzantine".to_owned(), "1".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut liar = NodeProcess::start(&args);
    let key = fabric_events::keys::load_secret(&ceremony.client).expect("client key");
    let jobs = submit_jobs(&mut client, &key, 3, "lie", 1_000);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mismatches = loop {
        let lines = export_lines(&mut client);
        let mismatches: Vec<serde_json::Value> = lines
            .values()
            .filter(|line| line["kind"] == "attestation_mismatch")
            .cloned()
            .collect();
        if !mismatches.is_empty() {
            break mismatches;
        }
        assert!(Instant::now() < deadline, "no lie was caught");
        std::thread::sleep(Duration::from_millis(200));
    };
    let caught = &mismatches[0]["body"]["data"];
    assert_eq!(caught["node"], "earth.node-a", "{caught}");
    assert_ne!(
        caught["expected_output_hash"],
        caught["reported_output_hash"]
    );
    // The lie stands in no result: the job went back to its queue.
    let job = caught["job"].as_u64().expect("a job");
    assert!(jobs.iter().any(|submitted| submitted.job == job));
    let status = json_of(&get(&mut client, &format!("/v0/jobs/{job}")));
    assert_ne!(status["status"], "completed", "{status}");
    let (ok, said) = liar.terminate();
    assert!(ok, "{said}");
}

/// A node that floods its own `attempts` subject (with its own NATS user and its own key, as
/// a compromised node could) gets at most `NODE_REQUESTS_IN_FLIGHT_MAX` requests worked on at
/// once: the others are answered busy at once, every request is answered, its heartbeats
/// reach the log only a few a tick, and the fabric goes on serving the other nodes and its
/// clients.
#[test]
fn a_node_flooding_its_subjects_is_answered_busy_and_the_fabric_goes_on() {
    use fabric_api::wire::WireSignedEvent;
    use fabric_events::{Body, Event, Heartbeat, Role, SignedEvent};
    use fabric_node::protocol::{AttemptBatch, NodeSubject};

    const FLOOD: usize = 400;
    let dir = tempfile::tempdir().expect("temp dir");
    let ceremony = Ceremony::run_with(dir.path(), &world(dir.path()));
    let nats = NatsWithUsers::start(&NODES);
    let served = serve(&ceremony, &nats);
    let mut client = served.client();
    let tick = current_tick(&mut client);
    let node = "earth.node-a";
    let key = fabric_events::keys::load_secret(&ceremony.node_keys().join(format!("{node}.key")))
        .expect("node a's key");
    // Each batch a heartbeat of node a's own key, nonces rising: each waits for a tick.
    let batches: Vec<Vec<u8>> = (0..FLOOD as u64)
        .map(|index| {
            let event = Event::new(
                Role::Node,
                tick,
                (tick << 24) + index,
                Body::from(Heartbeat {
                    node: node.to_owned(),
                    running_jobs: 0,
                }),
            );
            let signed = SignedEvent::sign(&event, &key).expect("signed");
            let batch = AttemptBatch {
                events: vec![WireSignedEvent::from_signed(&signed)],
                outputs: Vec::new(),
            };
            serde_json::to_vec(&batch).expect("a batch")
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let answers: Vec<String> = runtime.block_on(async {
        let connect = |node: &str| {
            let (user, password) = nats_user(node);
            async_nats::ConnectOptions::new()
                .user_and_password(user.clone(), password)
                .custom_inbox_prefix(format!("_INBOX.{user}"))
                .connect(nats.url())
        };
        let flooder = connect(node).await.expect("node a's user connects");
        let subject = NodeSubject::Attempts.of(node);
        let asked: Vec<_> = batches
            .into_iter()
            .map(|body| {
                let (flooder, subject) = (flooder.clone(), subject.clone());
                tokio::spawn(async move {
                    let answer = tokio::time::timeout(
                        Duration::from_secs(60),
                        flooder.request(subject, body.into()),
                    )
                    .await;
                    match answer {
                        Ok(Ok(message)) => String::from_utf8_lossy(&message.payload).into_owned(),
                        other => format!("no answer: {other:?}"),
                    }
                })
            })
            .collect();
        let mut answers = Vec::new();
        for task in asked {
            answers.push(task.await.expect("the request task"));
        }
        // Another node is still welcomed.
        let other = connect("earth.node-b")
            .await
            .expect("node b's user connects");
        let welcome = other
            .request(NodeSubject::Hello.of("earth.node-b"), "{}".into())
            .await
            .expect("node b's hello is answered");
        let welcome: serde_json::Value =
            serde_json::from_slice(&welcome.payload).expect("a JSON welcome");
        assert!(welcome.get("error").is_none(), "{welcome}");
        answers
    });
    assert_eq!(answers.len(), FLOOD);
    let unanswered: Vec<&String> = answers
        .iter()
        .filter(|a| a.starts_with("no answer"))
        .collect();
    assert!(unanswered.is_empty(), "{unanswered:?}");
    let busy = answers
        .iter()
        .filter(|answer| answer.contains("NODE_REQUESTS_IN_FLIGHT_MAX"))
        .count();
    assert!(
        busy > 0,
        "a flood of {FLOOD} gets busy answers: {answers:?}"
    );
    assert!(busy < FLOOD, "some of the flood is worked on: {answers:?}");
    // However many heartbeats its key signs, a node's attempts that are not receipts of its
    // work reach the log at most NODE_OTHER_ATTEMPTS_PER_TICK_MAX a tick of the gateway (so at
    // most twice that in one tick of the log); the rest are answered without being stored.
    let limit = fabric_server::nodes::NODE_OTHER_ATTEMPTS_PER_TICK_MAX as usize;
    let capped = answers
        .iter()
        .filter(|answer| answer.contains("too_many_attempts"))
        .count();
    assert!(
        capped > 0,
        "the flood is capped per tick: {:?}",
        &answers[..answers.len().min(8)]
    );
    let mut per_tick: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, sequenced_at) in heartbeat_ticks(&export_lines(&mut client), node) {
        *per_tick.entry(sequenced_at).or_default() += 1;
    }
    assert!(!per_tick.is_empty(), "some heartbeats are admitted");
    assert!(
        per_tick.values().all(|count| *count <= 2 * limit),
        "heartbeats of {node} per tick: {per_tick:?}"
    );
    // The server still answers its clients.
    let health = get(&mut client, "/v0/health");
    assert_eq!(health.status, 200);
    assert!(current_tick(&mut client) > tick);
}
