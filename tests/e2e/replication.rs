//! A replicated fabric (docs/FORMAT.md §16) on real `nats-server`s clustered with routes on
//! loopback: the sequencer acknowledges nothing before the replicated log's quorum holds it,
//! a follower copies and verifies that log into its own data folder and serves reads from
//! it, the quorum outlives the loss of one server, and a second sequencer can never fork the
//! log: the stream refuses the first append not built on its end, and the sequencer that made
//! it stops.

use std::fs::OpenOptions;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use fabric_api::Client;
use fabric_bus::{LogMessage, LOG_STREAM};
use fabric_ledger::LedgerReader;
use tempfile::TempDir;

use crate::nats::{block_on, free_port, nats_server_binary, NatsServer};
use crate::serve::{client_key, current_tick, envelope, job_id_of, json_of, signed_job};
use crate::support::{fabric, path, stderr, stdout, Served};

/// What nats-server logs once it accepts clients.
const READY: &str = "Server is ready";

/// nats-servers clustered with routes, JetStream on, each with its own store, on free loopback
/// ports. Killed (SIGKILL) when dropped.
pub(crate) struct NatsCluster {
    dir: TempDir,
    /// Client port and cluster port of each server.
    ports: Vec<(u16, u16)>,
    children: Vec<Option<Child>>,
}

impl NatsCluster {
    pub(crate) fn start(size: usize) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for the cluster");
        let ports = (0..size).map(|_| (free_port(), free_port())).collect();
        let mut cluster = Self {
            dir,
            ports,
            children: (0..size).map(|_| None).collect(),
        };
        for index in 0..size {
            cluster.spawn(index);
        }
        for index in 0..size {
            cluster.wait_ready(index, 1);
        }
        // JetStream answers once the cluster has elected its metadata leader.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(0..size).any(|index| {
            std::fs::read_to_string(cluster.log_path(index))
                .unwrap_or_default()
                .contains("metadata leader")
        }) {
            assert!(
                Instant::now() < deadline,
                "the cluster elects no JetStream leader in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// Every server's URL, comma-separated (what `--nats` takes).
    pub(crate) fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|(port, _)| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn log_path(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("n{index}.log"))
    }

    fn spawn(&mut self, index: usize) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(index))
            .expect("the server's log opens");
        let log_too = log.try_clone().expect("the log file clones");
        let (port, cluster_port) = self.ports[index];
        let routes = self
            .ports
            .iter()
            .map(|(_, cluster)| format!("nats://127.0.0.1:{cluster}"))
            .collect::<Vec<_>>()
            .join(",");
        let store = self.dir.path().join(format!("store-{index}"));
        let child = Command::new(nats_server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-n", &format!("n{index}"), "--cluster_name", "fabric"])
            .args(["--cluster", &format!("nats://127.0.0.1:{cluster_port}")])
            .args(["--routes", &routes, "-sd", path(&store)])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_too)
            .spawn()
            .expect("nats-server starts (the nats-server package provides it)");
        self.children[index] = Some(child);
    }

    /// Waits until server `index` has said it is ready `times` times and takes connections.
    fn wait_ready(&mut self, index: usize, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(self.log_path(index)).unwrap_or_default();
            if log.matches(READY).count() >= times
                && TcpStream::connect(("127.0.0.1", self.ports[index].0)).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server n{index} is not ready after 20 s; its log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            child.kill().expect("SIGKILL reaches nats-server");
            child.wait().expect("nats-server is reaped");
        }
    }

    /// Starts server `index` again with its store (it has been ready once before).
    pub(crate) fn restart(&mut self, index: usize) {
        self.kill(index);
        self.spawn(index);
        self.wait_ready(index, 2);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A simulated fabric's folder after its genesis and a few ticks (served once, unreplicated,
/// then stopped), and a copy of it: where a replica starts from.
fn fabric_and_copy(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("a");
    let mut served = Served::start(&data, None);
    assert!(served.terminate(), "the first serve stops cleanly");
    let copy = dir.join("b");
    let status = Command::new("cp")
        .args(["-r", path(&data), path(&copy)])
        .status()
        .expect("cp runs");
    assert!(status.success(), "the folder is copied");
    (data, copy)
}

/// Submits jobs to `target` from one thread per shard until told to stop, keeping the
/// acknowledged ones (job, seq).
struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<(u64, u64)>>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(served: &Served) -> Self {
        let target = served.tcp.clone().expect("tcp");
        let tick = current_tick(&mut served.client());
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let workers = ["earth", "luna"]
            .into_iter()
            .map(|shard| {
                let (target, stop, acknowledged) =
                    (target.clone(), Arc::clone(&stop), Arc::clone(&acknowledged));
                std::thread::spawn(move || {
                    let key = client_key(shard);
                    let mut client = Client::new(target, Duration::from_secs(30));
                    let mut tick = tick;
                    for index in 0u64.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let request_id = format!("replicated-{shard}-{index}");
                        let signed = signed_job(&key, shard, &request_id, tick, 1 + index);
                        let body = envelope(&request_id, &signed).to_string();
                        let Ok(response) = client.request(
                            "POST",
                            "/v0/jobs",
                            Some(("application/json", body.as_bytes())),
                        ) else {
                            break;
                        };
                        if response.status != 202 {
                            break;
                        }
                        let answer = json_of(&response);
                        tick = answer["tick"].as_u64().expect("a tick");
                        let seq = answer["seq"].as_u64().expect("a seq");
                        acknowledged
                            .lock()
                            .expect("lock")
                            .push((job_id_of(&request_id), seq));
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Self {
            stop,
            acknowledged,
            workers,
        }
    }

    /// Waits until `more` jobs more than now are acknowledged.
    fn wait_for(&self, more: usize, what: &str) {
        let target = self.acknowledged.lock().expect("lock").len() + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.acknowledged.lock().expect("lock").len() < target {
            assert!(
                Instant::now() < deadline,
                "{more} more jobs were not acknowledged within 60 s {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(self) -> Vec<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.join().expect("a load thread");
        }
        let acknowledged = self.acknowledged.lock().expect("lock").clone();
        acknowledged
    }
}

/// Waits (at most 60 s) until `served` says it is the replica `role` (`sequencer`,
/// `follower`).
pub(crate) fn wait_for_role(served: &Served, role: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut client = served.client();
        let health = json_of(&crate::serve::get(&mut client, "/v0/health"));
        if health["replica"] == role {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica is not the {role} within 60 s: {health}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /v0/health`'s tree size.
fn size_of(served: &Served) -> u64 {
    let mut client = served.client();
    let health = json_of(&crate::serve::get(&mut client, "/v0/health"));
    health["ledger"]["size"]
        .as_u64()
        .expect("health has a size")
}

/// Every message of the replicated log's stream, decoded, in stream order.
pub(crate) fn stream_log(urls: &str) -> Vec<LogMessage> {
    block_on(async {
        let urls: Vec<&str> = urls.split(',').collect();
        let client = async_nats::connect(urls)
            .await
            .expect("the test connects to the cluster");
        let context = jetstream::new(client);
        let mut stream = context.get_stream(LOG_STREAM).await.expect("the stream");
        let last = stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence;
        let mut messages = Vec::new();
        for sequence in 1..=last {
            let message = stream
                .get_raw_message(sequence)
                .await
                .expect("a stored message");
            messages.push(LogMessage::decode(&message.payload).expect("a log message"));
        }
        messages
    })
}

/// The stream never held two entries with one seq, nor a gap: each message starts where the
/// one before ended, from seq 0; returns the log's size it holds.
pub(crate) fn check_no_fork(messages: &[LogMessage]) -> u64 {
    let mut end = 0;
    for (index, message) in messages.iter().enumerate() {
        assert_eq!(
            message.first_seq(),
            end,
            "stream message {} starts at seq {}, the one before ended at {end}",
            index + 1,
            message.first_seq()
        );
        end = message.end();
    }
    end
}

/// The root of a stored log (its signed tree head at its size) and its size.
pub(crate) fn root_of(data: &Path) -> (u64, String) {
    let reader = LedgerReader::open(data.join("ledger")).expect("the ledger opens read-only");
    let size = reader.len().expect("a size");
    let head = reader
        .tree_head_at(size)
        .expect("a tree head reads")
        .expect("a tree head at the head's size");
    (size, head.root.to_string())
}

pub(crate) fn audits(data: &Path) {
    let audit = fabric(&["audit", "--data", path(data)]);
    assert!(
        audit.status.success(),
        "fabric audit --data {}: {}{}",
        data.display(),
        stdout(&audit),
        stderr(&audit)
    );
}

#[test]
fn a_follower_copies_and_verifies_the_replicated_log_through_the_loss_of_a_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = NatsCluster::start(3);
    let urls = cluster.urls();
    let (data, copy) = fabric_and_copy(dir.path());
    let mut sequencer = Served::start_with(&data, None, &["--replicated", "--nats", &urls]);
    wait_for_role(&sequencer, "sequencer");
    let follow =
        |folder: &Path| Served::spawn(&["--data", path(folder), "--follow", "--nats", &urls]);
    let mut follower = follow(&copy);
    let load = Load::start(&sequencer);
    load.wait_for(100, "with the whole cluster");

    // A follower appends nothing: it sends the client to the sequencer, with the same path.
    let mut client = follower.client();
    let redirected = client
        .request(
            "POST",
            "/v0/jobs",
            Some(("application/json", b"{}".as_slice())),
        )
        .expect("the follower answers");
    assert_eq!(redirected.status, 307, "{}", redirected.text());
    let location = redirected
        .header("location")
        .expect("a Location header")
        .to_owned();
    let sequencer_address = sequencer.tcp.clone().expect("tcp").to_string();
    assert!(
        location.ends_with("/v0/jobs") && location.contains(&sequencer_address),
        "Location {location} is the sequencer's ({sequencer_address}) /v0/jobs"
    );

    // A checkpoint note is the key holder's to sign: the follower sends the client to the
    // sequencer, whose note verifies with the key in force.
    let redirected = client
        .request("GET", "/v0/checkpoints/latest", None)
        .expect("the follower answers");
    assert_eq!(redirected.status, 307, "{}", redirected.text());
    let location = redirected.header("location").expect("a Location header");
    assert!(
        location.ends_with("/v0/checkpoints/latest") && location.contains(&sequencer_address),
        "Location {location} is the sequencer's ({sequencer_address}) checkpoint"
    );
    let mut sequencer_client = sequencer.client();
    let note = sequencer_client
        .request("GET", "/v0/checkpoints/latest", None)
        .expect("the sequencer answers");
    assert_eq!(note.status, 200, "{}", note.text());
    let note = fabric_ledger::CheckpointNote::parse(&note.text()).expect("a checkpoint note");
    let health = sequencer_client
        .request("GET", "/v0/health", None)
        .expect("health");
    let health: serde_json::Value = serde_json::from_slice(&health.body).expect("JSON");
    let key_in_force: fabric_events::PublicKey =
        serde_json::from_value(health["ledger"]["tree_head"]["ledger_key"].clone())
            .expect("the key in force");
    note.verify(&note.origin, &key_in_force)
        .expect("the sequencer's note verifies");

    // `fabric submit` given the follower follows it to the sequencer.
    let follower_address = follower.tcp.clone().expect("tcp").to_string();
    let submitted = fabric(&[
        "submit",
        "--server",
        &follower_address,
        "--sim-client",
        "mars",
    ]);
    assert!(
        submitted.status.success() && stdout(&submitted).contains("\"seq\""),
        "{}{}",
        stdout(&submitted),
        stderr(&submitted)
    );

    // One server of three lost: the quorum holds, acknowledgements go on.
    cluster.kill(2);
    load.wait_for(100, "with one server of three lost");
    cluster.restart(2);
    load.wait_for(50, "after the server came back");

    // The follower killed and started again: it catches up from where it was.
    drop(follower);
    load.wait_for(50, "while the follower is down");
    follower = follow(&copy);
    let acknowledged = load.finish();

    // The sequencer stops (its last tick replicated first); the follower reaches its end.
    assert!(sequencer.terminate(), "the sequencer stops cleanly");
    let (size, root) = root_of(&data);
    let deadline = Instant::now() + Duration::from_secs(60);
    while size_of(&follower) < size {
        assert!(
            Instant::now() < deadline,
            "the follower did not reach size {size} within 60 s (at {})",
            size_of(&follower)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(follower.terminate(), "the follower stops cleanly");

    // Both folders audit, to the same root; every acknowledged job is in the copy at its seq.
    audits(&data);
    audits(&copy);
    assert_eq!(
        root_of(&copy),
        (size, root),
        "the copy is the sequencer's log"
    );
    let reader = LedgerReader::open(copy.join("ledger")).expect("the copy opens");
    for (job, seq) in &acknowledged {
        let event = reader
            .get(*seq)
            .expect("an acknowledged seq is in the copy")
            .event()
            .expect("it decodes");
        match event.body {
            fabric_events::Body::JobSubmitted(submitted) => {
                assert_eq!(submitted.job, *job, "seq {seq}")
            }
            other => panic!("seq {seq} holds {other:?}, not job {job}"),
        }
    }
    assert_eq!(check_no_fork(&stream_log(&urls)), size);
}

fn args(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[test]
fn a_second_sequencer_cannot_fork_the_replicated_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = NatsServer::start();
    let url = nats.url();
    let (data, copy) = fabric_and_copy(dir.path());
    let replica = |folder: &Path| -> Vec<String> {
        [
            "--data",
            path(folder),
            "--simulation",
            "--config",
            crate::support::DEFAULT_CONFIG,
            "--seed",
            "7",
            "--tick-ms",
            "50",
            "--replicated",
            "--nats",
            url.as_str(),
            "--log-replicas",
            "1",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect()
    };
    let first_stderr = dir.path().join("first.stderr");
    let first_args = replica(&data);
    let mut first = Served::spawn_with_stderr(&args(&first_args), &first_stderr);
    wait_for_role(&first, "sequencer");
    // A second replica of the same fabric follows while the first holds the lease.
    let second_args = replica(&copy);
    let mut second = Served::spawn(&args(&second_args));
    wait_for_role(&second, "follower");

    // The first sequencer is cut off (stopped, as a partition would): the second takes the
    // lease once it is stale, catches up and sequences from the stream's end.
    signal(first.pid(), "STOP");
    wait_for_role(&second, "sequencer");
    // Both simulate the same world from the same state, so their ticks would be the same
    // bytes (and the stream would take the first's as duplicates): a job makes the second's
    // log its own.
    let mut client = second.client();
    let tick = current_tick(&mut client);
    let signed = signed_job(&client_key("earth"), "earth", "second-only", tick, 1);
    let body = envelope("second-only", &signed).to_string();
    let answer = client
        .request(
            "POST",
            "/v0/jobs",
            Some(("application/json", body.as_bytes())),
        )
        .expect("the second sequencer answers");
    assert_eq!(answer.status, 202, "{}", answer.text());
    let seq = json_of(&answer)["seq"].as_u64().expect("a seq");
    assert!(
        check_no_fork(&stream_log(&url)) > seq,
        "acknowledged means replicated"
    );

    // Back, the first one finds its place gone (its lease, or its next append refused by the
    // stream): it stops without acknowledging anything more.
    signal(first.pid(), "CONT");
    let exit = first.wait_for_exit(Duration::from_secs(60));
    let said = std::fs::read_to_string(&first_stderr).expect("its stderr");
    assert!(!exit, "the deposed sequencer exits with an error: {said}");
    assert!(said.contains("deposed"), "it says it was deposed: {said}");
    assert!(second.terminate(), "the second sequencer stops cleanly");
    let stream_size = check_no_fork(&stream_log(&url));
    assert_eq!(
        root_of(&copy).0,
        stream_size,
        "the stream is the second's log"
    );
    audits(&copy);
    audits(&data);

    // Started again, the first replica discards what it wrote that never reached the
    // quorum, follows, and ends with the stream's log.
    let restarted_stderr = dir.path().join("restarted.stderr");
    let mut restarted = Served::spawn_with_stderr(&args(&first_args), &restarted_stderr);
    wait_for_role(&restarted, "sequencer");
    // "sequencer" from the moment it won the lease: its takeover is appended just after.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while size_of(&restarted) <= stream_size {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted replica appends nothing after the stream's {stream_size} entries"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(restarted.terminate(), "the restarted replica stops cleanly");
    let said = std::fs::read_to_string(&restarted_stderr).expect("its stderr");
    let (first_size, _) = root_of(&data);
    assert!(
        first_size > stream_size,
        "it went on as the sequencer: {said}"
    );
    audits(&data);
    let first_log = LedgerReader::open(data.join("ledger")).expect("the first's opens");
    let second_log = LedgerReader::open(copy.join("ledger")).expect("the copy opens");
    let hash = |reader: &LedgerReader, seq| reader.get(seq).expect("an entry").hash();
    assert_eq!(
        hash(&first_log, stream_size - 1),
        hash(&second_log, stream_size - 1),
        "the first replica's log holds the second's"
    );
}
