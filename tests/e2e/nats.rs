//! Publication on NATS JetStream: `fabric run --nats` puts every event on stream
//! `FABRIC_EVENTS` exactly once, in seq order, as its export line (docs/FORMAT.md §5), also
//! across a server outage; `fabric tail` reads the stream back, checks signatures and links,
//! and warns about gaps and bad signatures. Each test starts its own `nats-server` (the Debian
//! package's, 2.9) on a free loopback port with its own store.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::Value;
use tempfile::TempDir;

use crate::support::{fabric, path, stderr, stdout, DEFAULT_CONFIG};

/// The stream Fabric publishes to.
const STREAM: &str = "FABRIC_EVENTS";

/// What nats-server logs once it accepts clients (JetStream recovered and enabled).
const READY: &str = "Server is ready";

/// A `nats-server -js` of its own: a free loopback port, a store in a temp dir, a log file
/// beside it. Killed (SIGKILL) when dropped.
pub struct NatsServer {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for nats-server");
        let port = free_port();
        let mut server = NatsServer {
            dir,
            port,
            child: None,
        };
        server.spawn_until_ready(1);
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL (no flush, no goodbye) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL reaches nats-server");
            child.wait().expect("nats-server is reaped");
        }
    }

    /// Starts the server again on the same port with the same store. The port can be briefly
    /// unavailable after a kill, so a server that exits at once is started again.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn_until_ready(5);
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&self) -> Child {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("nats-server's log file opens");
        let log_too = log.try_clone().expect("the log file handle clones");
        let port = self.port.to_string();
        let store = self.store();
        Command::new(nats_server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd", path(&store)])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_too)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("nats-server does not start ({e}); the nats-server package provides it")
            })
    }

    /// Spawns the server (up to `attempts` times when it exits early) and waits until it logs
    /// that it is ready and a TCP connect to its port succeeds; panics with its log otherwise.
    fn spawn_until_ready(&mut self, attempts: u32) {
        for attempt in 1..=attempts {
            let ready_before = self.log().matches(READY).count();
            let mut child = self.spawn();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = child.try_wait().expect("nats-server's status") {
                    if attempt == attempts {
                        panic!(
                            "nats-server exited with {status} on port {} ({attempts} tries); \
                             its log:\n{}",
                            self.port,
                            self.log()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(300));
                    break;
                }
                if self.log().matches(READY).count() > ready_before
                    && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                {
                    self.child = Some(child);
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "nats-server is not ready on port {} after 10 s; its log:\n{}",
                        self.port,
                        self.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The Debian package installs nats-server in /usr/sbin, which is not always on PATH.
pub(crate) fn nats_server_binary() -> PathBuf {
    let sbin = Path::new("/usr/sbin/nats-server");
    if sbin.exists() {
        sbin.to_path_buf()
    } else {
        PathBuf::from("nats-server")
    }
}

/// A loopback port nobody listens on (the kernel's choice, released at once).
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener
        .local_addr()
        .expect("the listener's address")
        .port()
}

/// Runs `future` to its end on a current-thread tokio runtime.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

/// One message of the stream: subject, `Nats-Msg-Id` header, payload.
pub type StreamMessage = (String, Option<String>, Vec<u8>);

/// Every message of stream `FABRIC_EVENTS`, in stream order, once it holds at least
/// `expected` messages or `timeout` has passed (then with what it holds).
pub fn stream_messages(url: &str, expected: usize, timeout: Duration) -> Vec<StreamMessage> {
    block_on(async {
        let deadline = Instant::now() + timeout;
        let client = async_nats::connect(url)
            .await
            .expect("the test connects to nats-server");
        let context = jetstream::new(client);
        let mut stream = loop {
            match context.get_stream(STREAM).await {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline => panic!("no stream {STREAM}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let state = loop {
            let state = stream
                .info()
                .await
                .expect("the stream's info")
                .state
                .clone();
            if state.messages >= expected as u64 || Instant::now() >= deadline {
                break state;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut messages = Vec::with_capacity(state.messages as usize);
        if state.messages == 0 {
            return messages;
        }
        // Direct reads by stream sequence, a few hundred in flight at a time.
        let sequences: Vec<u64> = (state.first_sequence..=state.last_sequence).collect();
        for chunk in sequences.chunks(256) {
            let reads: Vec<_> = chunk
                .iter()
                .map(|&sequence| {
                    let stream = stream.clone();
                    tokio::spawn(async move { (sequence, stream.get_raw_message(sequence).await) })
                })
                .collect();
            for read in reads {
                let (sequence, message) = read.await.expect("a stream read task ends");
                let message = message.unwrap_or_else(|e| {
                    panic!("stream {STREAM} has no message at sequence {sequence}: {e}")
                });
                let id = message
                    .headers
                    .get("Nats-Msg-Id")
                    .map(|id| id.as_str().to_owned());
                messages.push((message.subject.to_string(), id, message.payload.to_vec()));
            }
        }
        messages
    })
}

/// How many messages stream `FABRIC_EVENTS` holds (0 while it does not exist).
async fn stream_len(context: &jetstream::Context) -> u64 {
    match context.get_stream(STREAM).await {
        Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
        Err(_) => 0,
    }
}

/// Creates stream `FABRIC_EVENTS` as Fabric does and publishes `(seq, kind, payload)` to
/// `fabric.events.global.<kind>` with `Nats-Msg-Id` = seq, waiting for every ack.
fn publish_lines(url: &str, lines: &[(u64, String, Vec<u8>)]) {
    block_on(async {
        let client = async_nats::connect(url)
            .await
            .expect("the test connects to nats-server");
        let context = jetstream::new(client);
        context
            .create_stream(jetstream::stream::Config {
                name: STREAM.to_owned(),
                subjects: vec!["fabric.events.>".to_owned()],
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .expect("stream FABRIC_EVENTS is created");
        let mut acks = Vec::with_capacity(lines.len());
        for (seq, kind, payload) in lines {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", seq.to_string());
            let ack = context
                .publish_with_headers(
                    format!("fabric.events.global.{kind}"),
                    headers,
                    payload.clone().into(),
                )
                .await
                .expect("the line is published");
            acks.push(ack);
        }
        for ack in acks {
            ack.await.expect("JetStream acknowledges the line");
        }
    });
}

/// The lines of `out/events.ndjson`, without their newlines.
fn export_lines(out: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(out.join("events.ndjson")).expect("the run wrote events.ndjson");
    assert!(bytes.ends_with(b"\n"), "events.ndjson ends with a newline");
    bytes[..bytes.len() - 1]
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn parse(line: &[u8]) -> Value {
    serde_json::from_slice(line).expect("an export line is one JSON object")
}

/// Asserts that the stream holds exactly the log: message i has `Nats-Msg-Id` i and payload
/// line i; on failure it names the missing and repeated seqs, where the order breaks and the
/// first difference.
fn assert_stream_is_the_log(messages: &[StreamMessage], lines: &[Vec<u8>]) {
    let ids: Vec<Option<u64>> = messages
        .iter()
        .map(|(_, id, _)| id.as_deref().and_then(|id| id.parse().ok()))
        .collect();
    let mut seen = BTreeSet::new();
    let repeated: Vec<u64> = ids
        .iter()
        .flatten()
        .filter(|&&id| !seen.insert(id))
        .copied()
        .collect();
    let missing: Vec<u64> = (0..lines.len() as u64)
        .filter(|seq| !seen.contains(seq))
        .collect();
    // Where the order breaks: (stream position, Msg-Id there, Msg-Id before it).
    let breaks: Vec<String> = ids
        .windows(2)
        .enumerate()
        .filter(|(_, pair)| pair[0].map(|id| id + 1) != pair[1])
        .take(10)
        .map(|(i, pair)| format!("message {} has {:?} after {:?}", i + 2, pair[1], pair[0]))
        .collect();
    let first_difference = messages
        .iter()
        .zip(lines)
        .enumerate()
        .find(|(i, ((_, id, payload), line))| {
            id.as_deref() != Some(i.to_string().as_str()) || payload != *line
        })
        .map(|(i, ((subject, id, payload), _))| {
            format!(
                "stream message {} (subject {subject}, Nats-Msg-Id {id:?}) is not line {i}: {}",
                i + 1,
                String::from_utf8_lossy(&payload[..payload.len().min(200)])
            )
        });
    assert!(
        messages.len() == lines.len() && first_difference.is_none(),
        "the stream holds {} messages for {} events; missing seqs (first 20) {:?} of {}, \
         repeated seqs (first 20) {:?} of {}, messages without a numeric Nats-Msg-Id {}; \
         order breaks (first 10) {breaks:?}; {}",
        messages.len(),
        lines.len(),
        &missing[..missing.len().min(20)],
        missing.len(),
        &repeated[..repeated.len().min(20)],
        repeated.len(),
        ids.iter().filter(|id| id.is_none()).count(),
        first_difference.unwrap_or_else(|| "the common prefix agrees".to_owned())
    );
}

/// `fabric run` of the default world with `--nats`, arguments only.
fn nats_run_args<'a>(data: &'a str, out: &'a str, jobs: &'a str, url: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--config",
        DEFAULT_CONFIG,
        "--seed",
        "4",
        "--jobs",
        jobs,
        "--data",
        data,
        "--out",
        out,
        "--nats",
        url,
        "--json",
    ]
}

fn summary(output: &Output, what: &str) -> Value {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        stderr(output)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints one JSON object on stdout")
}

#[test]
fn a_run_publishes_every_event_once_in_order_as_its_export_line() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    let url = server.url();
    let run = summary(
        &fabric(&nats_run_args(path(&data), path(&out), "1500", &url)),
        "fabric run --nats",
    );
    assert!(
        run["nats"].is_object(),
        "the --json summary has a `nats` object: {run}"
    );
    let events = run["events"].as_u64().expect("the summary counts events") as usize;
    let lines = export_lines(&out);
    assert_eq!(lines.len(), events, "events.ndjson has a line per event");

    let messages = stream_messages(&url, events, Duration::from_secs(20));
    assert_stream_is_the_log(&messages, &lines);

    // Subjects: fabric.events.<shard>.<kind>, the shard of the body or `global`.
    let parsed: Vec<Value> = lines.iter().map(|line| parse(line)).collect();
    let shards: BTreeSet<String> = parsed
        .iter()
        .filter(|line| {
            line["kind"] == "owner_command"
                && line["body"]["data"]["action"]["command"] == "register_shard"
        })
        .map(|line| {
            line["body"]["data"]["action"]["registration"]["shard"]
                .as_str()
                .expect("a registered shard has a name")
                .to_owned()
        })
        .collect();
    assert!(!shards.is_empty(), "the run registers shards");
    let mut kinds = BTreeSet::new();
    for ((subject, _, _), line) in messages.iter().zip(&parsed) {
        let seq = &line["seq"];
        let kind = line["kind"].as_str().expect("a line names its kind");
        kinds.insert(kind.to_owned());
        let shard = subject
            .strip_prefix("fabric.events.")
            .and_then(|rest| rest.strip_suffix(&format!(".{kind}")))
            .unwrap_or_else(|| {
                panic!("seq {seq}: subject {subject} is not fabric.events.<shard>.{kind}")
            });
        if let Some(named) = line["body"]["data"]["shard"].as_str() {
            assert_eq!(
                shard, named,
                "seq {seq} ({kind}): the subject names the body's shard"
            );
        } else if kind == "checkpoint" {
            assert_eq!(shard, "global", "seq {seq}: a checkpoint is about no shard");
        } else {
            assert!(
                shard == "global" || shards.contains(shard),
                "seq {seq} ({kind}): subject {subject} names neither a shard of the run \
                 {shards:?} nor `global`"
            );
        }
    }
    for kind in ["checkpoint", "job_submitted", "job_assigned", "job_receipt"] {
        assert!(kinds.contains(kind), "the run has {kind} events: {kinds:?}");
    }
}

#[test]
fn an_outage_mid_run_loses_and_duplicates_nothing() {
    let mut server = NatsServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    let (stdout_path, stderr_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let url = server.url();
    let mut run = Command::new(env!("CARGO_BIN_EXE_fabric"))
        .args(nats_run_args(path(&data), path(&out), "6000", &url))
        .stdout(File::create(&stdout_path).expect("stdout file"))
        .stderr(File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("the fabric binary starts");
    let run_stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

    // The outage begins once a few thousand of the ~18,500 events are on the stream.
    let published_at_kill = block_on(async {
        let client = async_nats::connect(url.as_str())
            .await
            .expect("the test connects to nats-server");
        let context = jetstream::new(client);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let published = stream_len(&context).await;
            if published >= 3000 {
                break published;
            }
            assert!(
                Instant::now() < deadline,
                "only {published} events published after 60 s; fabric's stderr:\n{}",
                run_stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let running_at_kill = matches!(run.try_wait(), Ok(None));
    server.kill();
    assert!(
        running_at_kill,
        "the run ended before the outage ({published_at_kill} events were published); \
         its stderr:\n{}",
        run_stderr()
    );
    std::thread::sleep(Duration::from_secs(1));
    server.restart();

    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = run.try_wait().expect("the run's status") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = run.kill();
            let _ = run.wait();
            panic!(
                "fabric run --nats did not end within 120 s of the outage; its stderr:\n{}",
                run_stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "fabric run --nats failed after the outage ({status}): {}",
        run_stderr()
    );
    let summary: Value =
        serde_json::from_slice(&std::fs::read(&stdout_path).expect("the run's stdout"))
            .expect("--json prints one JSON object on stdout");
    assert!(
        summary["nats"].is_object(),
        "the --json summary has a `nats` object: {summary}"
    );
    let events = summary["events"]
        .as_u64()
        .expect("the summary counts events") as usize;
    assert!(
        (published_at_kill as usize) < events,
        "the outage began after the last event ({published_at_kill} of {events})"
    );
    let lines = export_lines(&out);
    assert_eq!(lines.len(), events, "events.ndjson has a line per event");
    let messages = stream_messages(&url, events, Duration::from_secs(20));
    assert_stream_is_the_log(&messages, &lines);
}

/// Runs `fabric tail --nats URL --json --idle-exit 2`.
fn tail(url: &str) -> Output {
    fabric(&["tail", "--nats", url, "--json", "--idle-exit", "2"])
}

/// The `WARNING:` lines of a command's stderr.
fn warnings(output: &Output) -> Vec<String> {
    stderr(output)
        .lines()
        .filter(|line| line.starts_with("WARNING:"))
        .map(str::to_owned)
        .collect()
}

/// `lines` as a file of lines, each ending in a newline.
fn joined(lines: &[&Vec<u8>]) -> String {
    lines
        .iter()
        .map(|line| format!("{}\n", String::from_utf8_lossy(line)))
        .collect()
}

#[test]
fn tail_reports_a_gap_and_a_bad_signature() {
    let dir = tempfile::tempdir().expect("temp dir");
    crate::support::small_run(dir.path(), 4, 200);
    let lines = export_lines(&dir.path().join("out"));
    assert!(lines.len() > 60, "the small run has more than 60 events");
    let published = |line: &Vec<u8>| {
        let value = parse(line);
        let seq = value["seq"].as_u64().expect("a line has a seq");
        let kind = value["kind"]
            .as_str()
            .expect("a line names its kind")
            .to_owned();
        (seq, kind, line.clone())
    };

    // A: seq 40 never published.
    let gap = NatsServer::start();
    let without_40: Vec<&Vec<u8>> = lines
        .iter()
        .enumerate()
        .filter(|(seq, _)| *seq != 40)
        .map(|(_, line)| line)
        .collect();
    publish_lines(
        &gap.url(),
        &without_40
            .iter()
            .map(|line| published(line))
            .collect::<Vec<_>>(),
    );

    // B: one hex digit of seq 50's signature changed.
    let forged = NatsServer::start();
    let mut line_50 = lines[50].clone();
    let at = line_50
        .windows(13)
        .position(|w| w == b"\"signature\":\"")
        .expect("an export line has a signature")
        + 13
        + 17;
    line_50[at] = if line_50[at] == b'0' { b'1' } else { b'0' };
    let mut with_forged_50: Vec<(u64, String, Vec<u8>)> = lines.iter().map(published).collect();
    with_forged_50[50].2 = line_50;
    publish_lines(&forged.url(), &with_forged_50);

    // C: the whole log, intact.
    let intact = NatsServer::start();
    publish_lines(
        &intact.url(),
        &lines.iter().map(published).collect::<Vec<_>>(),
    );

    let (gap_url, forged_url, intact_url) = (gap.url(), forged.url(), intact.url());
    let (gap_tail, forged_tail, intact_tail) = std::thread::scope(|scope| {
        let a = scope.spawn(|| tail(&gap_url));
        let b = scope.spawn(|| tail(&forged_url));
        let c = scope.spawn(|| tail(&intact_url));
        (
            a.join().expect("the tail of case A ends"),
            b.join().expect("the tail of case B ends"),
            c.join().expect("the tail of case C ends"),
        )
    });

    assert_eq!(
        gap_tail.status.code(),
        Some(1),
        "tail over a gap exits with 1; stderr: {}",
        stderr(&gap_tail)
    );
    let gap_warnings = warnings(&gap_tail);
    assert!(
        gap_warnings
            .iter()
            .any(|w| w.contains("gap") && w.contains("40")),
        "tail names the gap at seq 40; stderr: {}",
        stderr(&gap_tail)
    );
    assert_eq!(
        stdout(&gap_tail),
        joined(&without_40),
        "tail --json prints every line it received, as is"
    );

    assert_eq!(
        forged_tail.status.code(),
        Some(1),
        "tail over a forged signature exits with 1; stderr: {}",
        stderr(&forged_tail)
    );
    assert!(
        warnings(&forged_tail)
            .iter()
            .any(|w| w.contains("bad signature")),
        "tail reports the bad signature of seq 50; stderr: {}",
        stderr(&forged_tail)
    );

    assert!(
        intact_tail.status.success(),
        "tail over the intact log exits with 0 ({}); stderr: {}",
        intact_tail.status,
        stderr(&intact_tail)
    );
    assert!(
        !stderr(&intact_tail).contains("WARNING"),
        "no warning over the intact log; stderr: {}",
        stderr(&intact_tail)
    );
    assert_eq!(
        stdout(&intact_tail),
        joined(&lines.iter().collect::<Vec<_>>()),
        "tail --json over the intact log prints events.ndjson"
    );
}
