//! Sequencer failover (docs/FORMAT.md §16): a fabric made by the ceremony with two replicas,
//! each with its own sequencer key, on three `nats-server`s clustered with routes, with node
//! agents and a client submitting all along. The acting sequencer is killed (SIGKILL): the
//! other takes the lease, takes the log over and goes on; the node agents follow it; the
//! killed one, started again, discards what never reached the quorum and follows. Every
//! acknowledged job is in the final log exactly once, both folders audit to the same root,
//! and the stream never held two entries with one seq. A property-style test repeats random
//! kills and restarts of replicas and servers, with the same invariants each time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use fabric_api::http_client::{Client, Target};
use fabric_api::job::{job_id_of, JobSpec};
use fabric_events::{Body, Hash32, JobType, SigningKey};
use fabric_ledger::LedgerReader;

use crate::nodes::{bytes_of, register_models, world, NodeProcess, NODES};
use crate::replication::{audits, check_no_fork, root_of, stream_log, wait_for_role, NatsCluster};
use crate::serve::{get, json_of};
use crate::support::{path, succeed, Ceremony, Served};

/// A fabric of the ceremony whose replica B has its own sequencer key, and a copy of its
/// folder for B.
struct Replicated {
    ceremony: Ceremony,
    /// Replica B's sequencer key.
    key_b: PathBuf,
    data_b: PathBuf,
}

impl Replicated {
    fn make(dir: &Path) -> Self {
        let key_b = dir.join("sequencer-b.key");
        succeed(&["keygen", "--out", path(&key_b)]);
        let public_b = fabric_events::keys::public_path(&key_b);
        let ceremony = Ceremony::run_with_args(dir, &world(dir), &["--sequencer", path(&public_b)]);
        let data_b = dir.join("data-b");
        let status = std::process::Command::new("cp")
            .args(["-r", path(&ceremony.data), path(&data_b)])
            .status()
            .expect("cp runs");
        assert!(status.success(), "the folder is copied");
        Self {
            ceremony,
            key_b,
            data_b,
        }
    }

    /// The arguments of replica A (`b` false) or B on `urls`.
    fn replica_args(&self, b: bool, urls: &str) -> Vec<String> {
        let (data, key) = match b {
            false => (self.ceremony.data.clone(), self.ceremony.ledger_key()),
            true => (self.data_b.clone(), self.key_b.clone()),
        };
        [
            "--data",
            path(&data),
            "--ledger-key",
            path(&key),
            "--router-keys",
            path(&self.ceremony.router_keys()),
            "--tick-ms",
            "20",
            "--replicated",
            "--nats",
            urls,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect()
    }

    fn start(&self, b: bool, urls: &str) -> Served {
        let args = self.replica_args(b, urls);
        Served::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// A node agent for `node`, trusting both sequencers.
    fn node(&self, node: &str, urls: &str) -> NodeProcess {
        let key = self.ceremony.node_keys().join(format!("{node}.key"));
        let public_b = fabric_events::keys::public_path(&self.key_b);
        let genesis = self.ceremony.data.join("genesis.json");
        NodeProcess::start(&[
            "--nats",
            urls,
            "--genesis",
            path(&genesis),
            "--sequencer-key",
            path(&public_b),
            "--key",
            path(&key),
            "--name",
            node,
            "--executors",
            "1",
        ])
    }
}

/// Which of two replicas (their TCP addresses) sequences now, if either says so.
fn sequencer_of(targets: &[Target]) -> Option<Target> {
    targets.iter().find_map(|target| {
        let mut client = Client::new(target.clone(), Duration::from_secs(2));
        let health = client.request("GET", "/v0/health", None).ok()?;
        let health: serde_json::Value = serde_json::from_slice(&health.body).ok()?;
        (health["replica"] == "sequencer").then(|| target.clone())
    })
}

/// A client submitting model jobs to whichever replica sequences, all along: a job whose
/// answer never came is signed again (same job, same nonce, a fresh tick) and sent to the
/// sequencer of the moment; only a 202 counts as acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<(u64, u64)>>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(key: SigningKey, targets: Vec<Target>, label: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let worker = {
            let (stop, acknowledged) = (Arc::clone(&stop), Arc::clone(&acknowledged));
            std::thread::spawn(move || {
                for index in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let job_type = JobType::ALL[(index % 3) as usize];
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
                    let answer =
                        submit_until_answered(&key, &spec, &input, 1 + index, &targets, &stop);
                    if let Some(seq) = answer {
                        acknowledged
                            .lock()
                            .expect("lock")
                            .push((job_id_of(&request_id), seq));
                    }
                }
            })
        };
        Self {
            stop,
            acknowledged,
            worker: Some(worker),
        }
    }

    fn count(&self) -> usize {
        self.acknowledged.lock().expect("lock").len()
    }

    /// Waits until `more` jobs more than now are acknowledged, at most `limit`.
    fn wait_for(&self, more: usize, limit: Duration, what: &str) {
        let target = self.count() + more;
        let deadline = Instant::now() + limit;
        while self.count() < target {
            assert!(
                Instant::now() < deadline,
                "{more} more jobs were not acknowledged within {limit:?} {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(mut self) -> Vec<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(worker) = self.worker.take() {
            worker.join().expect("the load thread");
        }
        let acknowledged = self.acknowledged.lock().expect("lock").clone();
        acknowledged
    }
}

/// Sends one job to the sequencer of the moment until an answer says what became of it: its
/// seq when acknowledged (202), none when refused (it was sequenced before, unanswered).
fn submit_until_answered(
    key: &SigningKey,
    spec: &JobSpec,
    input: &[u8],
    nonce: u64,
    targets: &[Target],
    stop: &AtomicBool,
) -> Option<u64> {
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let Some(target) = sequencer_of(targets) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let mut client = Client::new(target, Duration::from_secs(10));
        let Ok(health) = client.request("GET", "/v0/health", None) else {
            continue;
        };
        let Some(tick) = serde_json::from_slice::<serde_json::Value>(&health.body)
            .ok()
            .and_then(|health| health["tick"].as_u64())
        else {
            continue;
        };
        let mut request = spec.request(key, tick, nonce).expect("a job request");
        request.input = Some(BASE64.encode(input));
        let body = serde_json::to_vec(&request).expect("json");
        match client.request("POST", "/v0/jobs", Some(("application/json", &body))) {
            Ok(response) if response.status == 202 => {
                return json_of(&response)["seq"].as_u64();
            }
            // Not the sequencer any more, or not yet: ask again.
            Ok(response) if matches!(response.status, 307 | 503) => {}
            // Refused: sequenced before (its answer lost with a killed sequencer).
            Ok(response) if (400..500).contains(&response.status) => return None,
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every acknowledged job is at its seq in the log of `data`, and each job was submitted
/// there exactly once.
fn check_acknowledged(data: &Path, acknowledged: &[(u64, u64)]) {
    let reader = LedgerReader::open(data.join("ledger")).expect("the log opens");
    let mut submitted: BTreeMap<u64, u64> = BTreeMap::new();
    for entry in reader.entries(0..reader.len().expect("a size")) {
        let entry = entry.expect("an entry");
        if let Body::JobSubmitted(job) = entry.event().expect("it decodes").body {
            *submitted.entry(job.job).or_default() += 1;
        }
    }
    for (job, seq) in acknowledged {
        let event = reader
            .get(*seq)
            .expect("an acknowledged seq is in the log")
            .event()
            .expect("it decodes");
        match event.body {
            Body::JobSubmitted(at_seq) => assert_eq!(at_seq.job, *job, "seq {seq}"),
            other => panic!("seq {seq} holds {other:?}, not job {job}"),
        }
        assert_eq!(submitted.get(job), Some(&1), "job {job} is in the log once");
    }
}

/// Waits until every job of `acknowledged` has a receipt, asking `served`.
fn wait_for_receipts(served: &Served, acknowledged: &[(u64, u64)], limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut client = served.client();
    for (job, _) in acknowledged {
        loop {
            let status = json_of(&get(&mut client, &format!("/v0/jobs/{job}")));
            if status["status"] == "completed" || status["status"] == "failed" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "job {job} has no receipt within {limit:?}: {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The size a replica's `GET /v0/health` says.
fn size_of(served: &Served) -> u64 {
    let mut client = served.client();
    json_of(&get(&mut client, "/v0/health"))["ledger"]["size"]
        .as_u64()
        .expect("a size")
}

/// Stops the follower (so that it cannot take the log over), then the sequencer; lets the
/// follower's folder catch up as a read-only follower (`--follow`); then checks the
/// invariants: no fork in the stream, the same root in both folders, every acknowledged job
/// once, both audits pass.
fn stop_and_check(
    urls: &str,
    mut sequencer: Served,
    mut follower: Served,
    (sequencer_data, follower_data): (&Path, &Path),
    acknowledged: &[(u64, u64)],
) {
    assert!(follower.terminate(), "the follower stops cleanly");
    assert!(sequencer.terminate(), "the sequencer stops cleanly");
    let (size, root) = root_of(sequencer_data);
    assert_eq!(
        check_no_fork(&stream_log(urls)),
        size,
        "the stream is the log"
    );
    let mut reader = Served::spawn(&["--data", path(follower_data), "--follow", "--nats", urls]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while size_of(&reader) < size {
        assert!(
            Instant::now() < deadline,
            "the follower's folder does not reach size {size} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(reader.terminate(), "the read-only follower stops cleanly");
    for data in [sequencer_data, follower_data] {
        assert_eq!(root_of(data), (size, root.clone()), "{}", data.display());
        audits(data);
        check_acknowledged(data, acknowledged);
    }
}

#[test]
fn the_other_replica_takes_over_a_killed_sequencer_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fabric = Replicated::make(dir.path());
    let cluster = NatsCluster::start(3);
    let urls = cluster.urls();
    // A key the owners never registered as a sequencer is refused.
    let stranger = dir.path().join("stranger.key");
    succeed(&["keygen", "--out", path(&stranger)]);
    let mut refused_args = fabric.replica_args(false, &urls);
    refused_args[3] = path(&stranger).to_owned();
    let said = Served::refused(&refused_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(said.contains("no sequencer"), "{said}");

    let a = fabric.start(false, &urls);
    wait_for_role(&a, "sequencer");
    let b = fabric.start(true, &urls);
    wait_for_role(&b, "follower");
    register_models(&mut a.client(), &fabric.ceremony);
    let _nodes: Vec<NodeProcess> = NODES.iter().map(|node| fabric.node(node, &urls)).collect();
    crate::nodes::wait_until_healthy(&mut a.client(), &NODES, Duration::from_secs(120));
    let key = fabric_events::keys::load_secret(&fabric.ceremony.client).expect("client key");
    let targets = vec![a.tcp.clone().expect("tcp"), b.tcp.clone().expect("tcp")];
    let load = Load::start(key, targets, "failover");
    load.wait_for(30, Duration::from_secs(120), "before the kill");

    // The acting sequencer dies without a word: the other takes over, the load goes on.
    drop(a);
    let killed = Instant::now();
    wait_for_role(&b, "sequencer");
    eprintln!(
        "failover: the other replica sequences {:?} after the kill",
        killed.elapsed()
    );
    load.wait_for(30, Duration::from_secs(120), "after the failover");

    // Started again, the killed replica discards what never reached the quorum and follows.
    let a = fabric.start(false, &urls);
    wait_for_role(&a, "follower");
    load.wait_for(10, Duration::from_secs(120), "with the replica back");
    let acknowledged = load.finish();
    // The node agents ran every acknowledged job, before and after the failover.
    wait_for_receipts(&b, &acknowledged, Duration::from_secs(300));
    let folders = (fabric.data_b.as_path(), fabric.ceremony.data.as_path());
    stop_and_check(&urls, b, a, folders, &acknowledged);

    // A proof of a job acknowledged after the takeover verifies offline from the genesis key
    // only with the second sequencer's key trusted too.
    let (_, last_seq) = *acknowledged.last().expect("jobs were acknowledged");
    let proof = dir.path().join("proof.json");
    let printed = succeed(&[
        "proof",
        "--data",
        path(&fabric.data_b),
        "--seq",
        &last_seq.to_string(),
    ]);
    std::fs::write(&proof, &printed.stdout).expect("proof written");
    let genesis_key = fabric_events::keys::load_secret(&fabric.ceremony.ledger_key())
        .map(|key| fabric_events::PublicKey::from(&key.verifying_key()).to_hex())
        .expect("ledger key");
    let b_key = fabric_events::keys::load_secret(&fabric.key_b)
        .map(|key| fabric_events::PublicKey::from(&key.verifying_key()).to_hex())
        .expect("sequencer key");
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "verify-proof",
            "--proof",
            path(&proof),
            "--ledger-key",
            &genesis_key,
        ];
        args.extend_from_slice(extra);
        crate::support::fabric(&args)
    };
    assert!(verify(&["--sequencer-key", &b_key]).status.success());
    let refused = verify(&[]);
    assert!(
        !refused.status.success(),
        "a takeover by a key not trusted is refused"
    );
    assert!(crate::support::stderr(&refused).contains("takeover"));
}

/// Draws of a schedule from its seed (splitmix64), so that a failing seed replays.
struct Draws(u64);

impl Draws {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % bound
    }
}

#[test]
fn random_kills_of_replicas_and_servers_never_fork_nor_lose_an_acknowledged_job() {
    let seed: u64 = std::env::var("FABRIC_FAILOVER_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x5eed);
    let mut draws = Draws(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let fabric = Replicated::make(dir.path());
    let mut cluster = NatsCluster::start(3);
    let urls = cluster.urls();
    let a = fabric.start(false, &urls);
    wait_for_role(&a, "sequencer");
    register_models(&mut a.client(), &fabric.ceremony);
    let mut replicas = [Some(a), Some(fabric.start(true, &urls))];
    let key = fabric_events::keys::load_secret(&fabric.ceremony.client).expect("client key");
    let targets: Vec<Target> = replicas
        .iter()
        .map(|replica| replica.as_ref().and_then(|r| r.tcp.clone()).expect("tcp"))
        .collect();
    let load = Load::start(key, targets.clone(), "random");
    load.wait_for(10, Duration::from_secs(120), "at the start");
    // Each step kills something and starts it again: the acting sequencer, the follower, or
    // one nats-server; the load must go on after each.
    for step in 0..6 {
        // Half the steps kill the acting sequencer.
        let choice = match draws.below(4) {
            0 | 1 => 0,
            2 => 1,
            _ => 2,
        };
        let pause = Duration::from_millis(draws.below(1_500));
        eprintln!("failover property (seed {seed}): step {step}: choice {choice}, pause {pause:?}");
        match choice {
            0 | 1 => {
                let sequencer = sequencer_of(&targets).expect("a sequencer");
                let index = targets
                    .iter()
                    .position(|target| target.to_string() == sequencer.to_string())
                    .expect("one of the two");
                // 0: the sequencer; 1: the follower.
                let index = if choice == 0 { index } else { 1 - index };
                let killed = replicas[index].take().expect("running");
                drop(killed);
                std::thread::sleep(pause);
                // Started again on the same port, so that the load finds it.
                let mut args = fabric.replica_args(index == 1, &urls);
                args.extend([
                    "--listen".to_owned(),
                    targets[index].to_string().replace("http://", ""),
                ]);
                let restarted = Served::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
                replicas[index] = Some(restarted);
            }
            _ => {
                let server = draws.below(3) as usize;
                cluster.kill(server);
                std::thread::sleep(pause);
                cluster.restart(server);
            }
        }
        load.wait_for(5, Duration::from_secs(120), &format!("after step {step}"));
    }
    let acknowledged = load.finish();
    let sequencer = sequencer_of(&targets).expect("a sequencer at the end");
    let index = targets
        .iter()
        .position(|target| target.to_string() == sequencer.to_string())
        .expect("one of the two");
    let sequencer = replicas[index].take().expect("running");
    let follower = replicas[1 - index].take().expect("running");
    let (a, b) = (fabric.ceremony.data.as_path(), fabric.data_b.as_path());
    let folders = if index == 0 { (a, b) } else { (b, a) };
    stop_and_check(&urls, sequencer, follower, folders, &acknowledged);
}
