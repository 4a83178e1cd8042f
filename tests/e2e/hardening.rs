//! `fabric serve`'s connection layer as an attacker meets it: real servers, real sockets from
//! several loopback source addresses. Trickled bodies are cut off at their deadline while
//! `/v0/health` keeps answering within a second and the memory they held is given back; one
//! address cannot take more than its connections, nor more than its share of the places for
//! batch bodies; SIGTERM ends follow streams and half-read
//! bodies at once; TLS with a certificate made here, and plaintext refused off loopback.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use fabric_api::http_client::{trusting, Client, Target};
use fabric_server::limits::{BODY_READ_TIMEOUT_MS, PEER_CONNECTIONS_MAX, REQUEST_DEADLINE_MS};
use serde_json::Value;

use crate::support::{fabric, path, start_serve, stderr, stdout, Serving};

const SEED: u64 = 7;
/// Ticks slow enough to leave the two cores to the connections.
const TICK_MS: u64 = 50;
/// The bound the issue puts on a health answer under attack.
const HEALTH_MS_MAX: u128 = 1_000;

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    socket
        .bind(&SocketAddrV4::new(from, 0).into())
        .unwrap_or_else(|error| panic!("bind {from}: {error}"));
    socket
        .connect(&to.into())
        .unwrap_or_else(|error| panic!("connect {from} -> {to}: {error}"));
    socket.into()
}

/// `fabric serve` of a simulation on a free port of 127.0.0.1.
fn serve_on_loopback(data: &Path) -> Serving {
    start_serve(data, SEED, TICK_MS, &["--listen", "127.0.0.1:0"]).expect("fabric serve starts")
}

fn socket_address(served: &Serving) -> SocketAddr {
    served.host_port().parse().expect("host:port")
}

/// The server's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// `GET /v0/health` on a new connection from 127.0.0.1; how long the answer took.
fn timed_health(host_port: &str) -> Duration {
    let mut client = Client::new(Target::Tcp(host_port.to_owned()), Duration::from_secs(30));
    let started = Instant::now();
    let response = client
        .request("GET", "/v0/health", None)
        .expect("health is answered");
    let took = started.elapsed();
    assert_eq!(response.status, 200, "{}", response.text());
    took
}

/// The `rejected` events of the log.
fn rejected_events(client: &mut Client) -> usize {
    let response = client
        .request("GET", "/v0/events?from=0", None)
        .expect("the events are answered");
    assert_eq!(response.status, 200, "{}", response.text());
    response
        .text()
        .lines()
        .filter(|line| {
            serde_json::from_str::<Value>(line).expect("an export line is JSON")["kind"]
                == "rejected"
        })
        .count()
}

/// The status and JSON body of the one response at the start of `bytes`.
fn answer_of(bytes: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(bytes);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_else(|| panic!("no body in {text:?}"));
    let json = serde_json::from_str(body).unwrap_or_else(|error| panic!("{body:?}: {error}"));
    (status, json)
}

/// Reads one whole response (by Content-Length) from a blocking stream.
fn read_answer(stream: &TcpStream) -> (u16, Value) {
    let mut reader = BufReader::new(stream);
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("a response line");
        assert!(!line.is_empty(), "the connection closed mid-response");
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().expect("a content length");
        }
        head.extend_from_slice(line.as_bytes());
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("the body");
    head.extend_from_slice(&body);
    answer_of(&head)
}

/// A connection that sent the head of a job request and sends its body a byte at a time.
struct Trickler {
    stream: TcpStream,
    answer: Vec<u8>,
    closed: bool,
}

const TRICKLED_HEAD: &[u8] = b"POST /v0/jobs HTTP/1.1\r\nHost: fabric\r\n\
    Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n{";

impl Trickler {
    fn open(from: Ipv4Addr, to: SocketAddr) -> Self {
        let mut stream = connect_from(from, to);
        stream.write_all(TRICKLED_HEAD).expect("the head is sent");
        stream.set_nonblocking(true).expect("non-blocking");
        Self {
            stream,
            answer: Vec::new(),
            closed: false,
        }
    }

    /// Takes what the server sent; notes when it closed the connection.
    fn read(&mut self) {
        let mut buffer = [0u8; 4096];
        while !self.closed {
            match self.stream.read(&mut buffer) {
                Ok(0) => self.closed = true,
                Ok(read) => self.answer.extend_from_slice(&buffer[..read]),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(_) => self.closed = true,
            }
        }
    }

    /// One more byte of the body.
    fn trickle(&mut self) {
        self.read();
        if self.closed {
            return;
        }
        match self.stream.write(b" ") {
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            Err(_) => self.read(),
        }
    }
}

#[test]
fn trickled_bodies_are_cut_off_while_health_answers_within_a_second_and_memory_comes_back() {
    const TRICKLERS: usize = 2_000;
    // A cap under the tricklers' number: the reserve below it is in play too.
    const CAP: &str = "1200";
    let dir = tempfile::tempdir().expect("temp dir");
    let served = start_serve(
        &dir.path().join("data"),
        SEED,
        TICK_MS,
        &["--listen", "127.0.0.1:0", "--connections-max", CAP],
    )
    .expect("fabric serve starts");
    let host_port = served.host_port();
    let to = socket_address(&served);
    let mut client = Client::new(Target::Tcp(host_port.clone()), Duration::from_secs(30));
    let rejected_before = rejected_events(&mut client);
    // The baseline is the server idle before any of the attack's connections: started, asked
    // for its health and its events, nothing else.
    timed_health(&host_port);
    std::thread::sleep(Duration::from_secs(1));
    let rss_before = rss_kib(served.pid());

    // From eight source addresses, each under the per-address cap.
    let mut tricklers: Vec<Trickler> = (0..TRICKLERS)
        .map(|index| Trickler::open(Ipv4Addr::new(127, 0, 1, 1 + (index % 8) as u8), to))
        .collect();
    let started = Instant::now();
    let bound = Duration::from_millis(REQUEST_DEADLINE_MS) + Duration::from_secs(30);
    let mut slowest = Duration::ZERO;
    while tricklers.iter().any(|trickler| !trickler.closed) {
        assert!(
            started.elapsed() < bound,
            "{} trickling connections are still open {} s after their heads",
            tricklers.iter().filter(|trickler| !trickler.closed).count(),
            bound.as_secs()
        );
        tricklers.iter_mut().for_each(Trickler::trickle);
        let took = timed_health(&host_port);
        slowest = slowest.max(took);
        assert!(
            took.as_millis() < HEALTH_MS_MAX,
            "/v0/health took {took:?} with {TRICKLERS} connections trickling"
        );
        std::thread::sleep(Duration::from_secs(2));
    }

    // Each was answered why before its connection closed (a few answers may be lost to a
    // reset when a byte crossed the close), none was answered anything else.
    let (mut timed_out, mut full, mut unanswered) = (0, 0, 0);
    for trickler in &tricklers {
        if trickler.answer.is_empty() {
            unanswered += 1;
            continue;
        }
        match answer_of(&trickler.answer) {
            (408, body) if body["error"]["code"] == "body_timeout" => timed_out += 1,
            (503, body) if body["error"]["code"] == "connections_full" => full += 1,
            other => panic!("a trickled request was answered {other:?}"),
        }
    }
    eprintln!(
        "{timed_out} cut off at the deadline, {full} refused in the reserve, {unanswered} reset; \
         slowest health {slowest:?}"
    );
    assert!(
        timed_out > 0 && full > 0,
        "{timed_out} timed out, {full} refused"
    );
    assert!(
        unanswered * 20 < TRICKLERS,
        "{unanswered} connections closed without an answer"
    );
    drop(tricklers);

    // Nothing of theirs was stored, and the memory they held is given back.
    assert_eq!(rejected_events(&mut client), rejected_before);
    std::thread::sleep(Duration::from_secs(3));
    let rss_after = rss_kib(served.pid());
    eprintln!("VmRSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after * 4 <= rss_before * 5,
        "VmRSS {rss_after} KiB after the connections closed, {rss_before} KiB before"
    );
}

#[test]
fn a_body_that_stalls_is_cut_off_with_its_reason_and_its_connection_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let served = serve_on_loopback(&dir.path().join("data"));
    let mut stream = connect_from(Ipv4Addr::LOCALHOST, socket_address(&served));
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("a read timeout");
    let sent = Instant::now();
    // A tenth of the body it announces, then nothing.
    stream
        .write_all(
            b"POST /v0/owner/commands HTTP/1.1\r\nHost: fabric\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"nonce\": 1",
        )
        .expect("the head and a part of the body are sent");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("answered, then closed");
    let waited = sent.elapsed();
    let (status, body) = answer_of(&answer);
    assert_eq!(
        (status, &body["error"]["code"]),
        (408, &Value::from("body_timeout"))
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no part of the request body"), "{body}");
    // Timers do not fire early: the stall was waited out, not guessed.
    assert!(
        waited >= Duration::from_millis(BODY_READ_TIMEOUT_MS),
        "{waited:?}"
    );
    let mut client = Client::new(Target::Tcp(served.host_port()), Duration::from_secs(30));
    assert_eq!(
        rejected_events(&mut client),
        0,
        "a cut-off body stores nothing"
    );
}

#[test]
fn one_address_gets_no_more_than_its_connections_and_another_is_still_answered() {
    const OVER: usize = 8;
    let dir = tempfile::tempdir().expect("temp dir");
    let served = serve_on_loopback(&dir.path().join("data"));
    let to = socket_address(&served);
    let greedy = Ipv4Addr::new(127, 0, 0, 2);
    let streams: Vec<TcpStream> = (0..PEER_CONNECTIONS_MAX + OVER)
        .map(|_| connect_from(greedy, to))
        .collect();
    // Every connection is accepted (and counted) before any asks for anything.
    std::thread::sleep(Duration::from_secs(1));
    for mut stream in &streams {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("a read timeout");
        stream
            .write_all(b"GET /v0/health HTTP/1.1\r\nHost: fabric\r\n\r\n")
            .expect("the request is sent");
    }
    let (mut answered, mut refused) = (0, 0);
    for stream in &streams {
        match read_answer(stream) {
            (200, body) if body["status"] == "ok" => answered += 1,
            (429, body) => {
                assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .is_some_and(|message| message.contains("127.0.0.2")),
                    "{body}"
                );
                refused += 1;
            }
            other => panic!("answered {other:?}"),
        }
    }
    assert_eq!((answered, refused), (PEER_CONNECTIONS_MAX, OVER));
    // Another address is answered while the first holds all it may.
    let took = timed_health(&served.host_port());
    assert!(took.as_millis() < HEALTH_MS_MAX, "health took {took:?}");
    let mut client = Client::new(Target::Tcp(served.host_port()), Duration::from_secs(30));
    assert_eq!(
        rejected_events(&mut client),
        0,
        "refused connections store nothing"
    );
    // Once its connections are closed, the address is answered again.
    drop(streams);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stream = connect_from(greedy, to);
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("a read timeout");
        (&stream)
            .write_all(b"GET /v0/health HTTP/1.1\r\nHost: fabric\r\n\r\n")
            .expect("the request is sent");
        if read_answer(&stream).0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "127.0.0.2 is still refused");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_ends_a_follow_stream_and_a_half_read_body_at_once_and_the_log_audits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut served = serve_on_loopback(&data);
    let to = socket_address(&served);
    let loopback = Ipv4Addr::LOCALHOST;

    let mut follow = connect_from(loopback, to);
    follow
        .write_all(b"GET /v0/events?from=0&follow=true HTTP/1.1\r\nHost: fabric\r\n\r\n")
        .expect("the follow request is sent");
    follow
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    let mut first = [0u8; 512];
    let read = follow.read(&mut first).expect("the stream starts");
    assert!(
        first[..read].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &first[..read]
    );

    let mut half_read = connect_from(loopback, to);
    half_read
        .write_all(TRICKLED_HEAD)
        .expect("the head is sent");
    half_read
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    std::thread::sleep(Duration::from_millis(500));

    let (status, took) = served.terminate(Duration::from_secs(60));
    assert!(status.success(), "fabric serve exited with {status}");
    assert!(took < Duration::from_secs(10), "the stop took {took:?}");

    // The stream ended as a complete chunked body; the half-read request was told why.
    let mut rest = Vec::new();
    follow.read_to_end(&mut rest).expect("the stream ends");
    assert!(
        rest.ends_with(b"0\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    let mut answer = Vec::new();
    half_read.read_to_end(&mut answer).expect("the answer");
    let (status, body) = answer_of(&answer);
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &Value::from("shutting_down"))
    );
    assert!(served.rest_of_stdout().contains("stopped at tick"));

    let audit = fabric(&["audit", "--data", path(&data)]);
    assert!(
        audit.status.success(),
        "audit after SIGTERM: {}{}",
        stdout(&audit),
        stderr(&audit)
    );
}

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files in
/// `dir`: (ca.pem, server.pem, server.key).
fn make_certificates(dir: &Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fabric test CA");
    let ca = ca_params.self_signed(&ca_key).expect("a CA certificate");
    let server_key = KeyPair::generate().expect("a server key");
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server parameters");
    let cert = params
        .signed_by(&server_key, &ca, &ca_key)
        .expect("a server certificate");
    let files = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&files.0, ca.pem()).expect("ca.pem");
    std::fs::write(&files.1, cert.pem()).expect("server.pem");
    std::fs::write(&files.2, server_key.serialize_pem()).expect("server.key");
    let text = |file: &Path| path(file).to_owned();
    (text(&files.0), text(&files.1), text(&files.2))
}

fn set_mode(file: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn tls_serves_submit_and_status_with_the_ca_and_plaintext_off_loopback_needs_the_flag() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = make_certificates(dir.path());
    let data = dir.path().join("data");
    let tls = [
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];

    // A private key others can read is refused.
    set_mode(&key, 0o644);
    let refused = start_serve(&data, SEED, TICK_MS, &tls).err();
    assert!(
        refused
            .as_ref()
            .is_some_and(|message| message.contains("chmod 600")),
        "{refused:?}"
    );
    set_mode(&key, 0o600);
    let served = start_serve(&data, SEED, TICK_MS, &tls).expect("fabric serve starts");
    let server = served.address("https://");

    let submitted = fabric(&[
        "submit",
        "--server",
        &server,
        "--ca",
        &ca,
        "--sim-client",
        "earth",
        "--seed",
        "7",
        "--request-id",
        "over-tls",
    ]);
    assert!(submitted.status.success(), "{}", stderr(&submitted));
    let accepted: Value = serde_json::from_str(&stdout(&submitted)).expect("JSON");
    assert_eq!(accepted["status"], "accepted", "{accepted}");
    let job_id = accepted["job"].as_u64().expect("a job id");
    let job = job_id.to_string();
    let status = fabric(&["status", &job, "--server", &server, "--ca", &ca]);
    assert!(status.status.success(), "{}", stderr(&status));
    let shown: Value = serde_json::from_str(&stdout(&status)).expect("JSON");
    assert_eq!(shown["job"], job_id, "{shown}");

    // Stored: the job's event is in the log, read over TLS.
    let mut client = Client::new(
        Target::parse(&server).expect("https"),
        Duration::from_secs(30),
    )
    .with_tls(trusting(Path::new(&ca)).expect("the CA"));
    let events = client
        .request("GET", "/v0/events?from=0", None)
        .expect("events over TLS");
    let stored = events.text().lines().any(|line| {
        let line: Value = serde_json::from_str(line).expect("JSON line");
        line["kind"] == "job_submitted" && line["body"]["data"]["job"] == job_id
    });
    assert!(stored, "job {job} is not in the log");

    // Without the CA, or trusting another one, nothing is sent; nor is plaintext answered.
    let no_ca = fabric(&["status", &job, "--server", &server]);
    assert!(!no_ca.status.success());
    assert!(stderr(&no_ca).contains("--ca"), "{}", stderr(&no_ca));
    let other_dir = tempfile::tempdir().expect("temp dir");
    let (other_ca, _, _) = make_certificates(other_dir.path());
    let wrong_ca = fabric(&["status", &job, "--server", &server, "--ca", &other_ca]);
    assert!(!wrong_ca.status.success(), "{}", stdout(&wrong_ca));
    let mut plain = Client::new(Target::Tcp(served.host_port()), Duration::from_secs(10));
    let answered = plain.request("GET", "/v0/health", None);
    assert!(
        answered
            .as_ref()
            .map_or(true, |response| response.status != 200),
        "plain HTTP was answered on the TLS port: {:?}",
        answered.map(|response| response.text())
    );
    drop(served);

    // Plaintext on every address only with the flag that says so.
    let open = ["--listen", "0.0.0.0:0"];
    let refused = start_serve(&data, SEED, TICK_MS, &open).err();
    assert!(
        refused
            .as_ref()
            .is_some_and(|message| message.contains("--insecure-plaintext")),
        "{refused:?}"
    );
    let insecure = ["--listen", "0.0.0.0:0", "--insecure-plaintext"];
    let served = start_serve(&data, SEED, TICK_MS, &insecure).expect("starts with the flag");
    let port = served
        .host_port()
        .rsplit_once(':')
        .map(|(_, port)| port.to_owned());
    let local = format!("127.0.0.1:{}", port.expect("a port"));
    assert!(timed_health(&local).as_millis() < 30_000);
}

/// The head of a batch whose body comes slowly: it holds one of its address's batch places.
const SLOW_BATCH_HEAD: &[u8] = b"POST /v0/jobs/batch HTTP/1.1\r\nHost: fabric\r\n\
    Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{";

/// A whole batch of one request that is not a job request (answered 200, the item refused).
fn small_batch(stream: &mut TcpStream) -> (u16, Value) {
    let body = br#"{"jobs": [{"request_id": "x"}]}"#;
    let head = format!(
        "POST /v0/jobs/batch HTTP/1.1\r\nHost: fabric\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("the head is sent");
    stream.write_all(body).expect("the body is sent");
    read_answer(stream)
}

#[test]
fn slow_batch_bodies_of_one_address_hold_only_its_share_of_batch_places() {
    use fabric_server::limits::BATCHES_READING_PER_PEER_MAX;
    let dir = tempfile::tempdir().expect("temp dir");
    let served = serve_on_loopback(&dir.path().join("data"));
    let to = socket_address(&served);
    // One more slow batch than an address may have read at once: whichever of them the server
    // comes to last finds no place and is answered at once; the others are held.
    let slow = Ipv4Addr::new(127, 0, 0, 2);
    let mut streams: Vec<TcpStream> = (0..=BATCHES_READING_PER_PEER_MAX)
        .map(|_| {
            let mut stream = connect_from(slow, to);
            stream.write_all(SLOW_BATCH_HEAD).expect("the head is sent");
            stream.set_nonblocking(true).expect("non-blocking");
            stream
        })
        .collect();
    let answered = |stream: &TcpStream| {
        let mut byte = [0u8; 1];
        matches!(stream.peek(&mut byte), Ok(read) if read > 0)
    };
    // The slow bodies get a byte at each look, so that the body read timeout frees no place;
    // a loaded machine may take a while to read every head.
    let deadline = Instant::now() + Duration::from_millis(REQUEST_DEADLINE_MS - 1_000);
    let refused = loop {
        if let Some(at) = streams.iter().position(answered) {
            break streams.swap_remove(at);
        }
        assert!(
            Instant::now() < deadline,
            "none of {} slow batches of one address was refused",
            BATCHES_READING_PER_PEER_MAX + 1
        );
        for stream in &mut streams {
            let _ = stream.write(b" ");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    refused.set_nonblocking(false).expect("blocking");
    refused
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    let (status, body) = read_answer(&refused);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("BATCHES_READING_PER_PEER_MAX")),
        "{body}"
    );
    // Another address is read and answered meanwhile, and the held batches are still held.
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 3), to);
    other
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    let (status, answer) = small_batch(&mut other);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["results"][0]["error"]["code"], "bad_body",
        "{answer}"
    );
    assert!(
        !streams.iter().any(answered),
        "only one slow batch of the address is refused"
    );
}
