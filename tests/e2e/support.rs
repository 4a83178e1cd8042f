//! Keys, events and helpers shared by the tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fabric_api::http_client::{Client, Target};

use fabric_events::{derive_signing_key, Event, Heartbeat, Role, SignedEvent, SigningKey};

/// The world of `config/fabric.toml`.
pub const DEFAULT_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/fabric.toml");

/// Runs the `fabric` binary with `args` and waits for it.
pub fn fabric(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fabric"))
        .args(args)
        .output()
        .expect("the fabric binary runs")
}

/// A command's stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A command's stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `fabric run` of the default world into `dir/data` (reports in `dir/out`) with `extra`
/// arguments, and returns what it did.
pub fn run_world(dir: &Path, seed: u64, jobs: u64, extra: &[&str]) -> Output {
    let (data, out) = (dir.join("data"), dir.join("out"));
    let (seed, jobs) = (seed.to_string(), jobs.to_string());
    let mut args = vec![
        "run",
        "--config",
        DEFAULT_CONFIG,
        "--seed",
        &seed,
        "--jobs",
        &jobs,
        "--data",
        path(&data),
        "--out",
        path(&out),
    ];
    args.extend_from_slice(extra);
    fabric(&args)
}

/// Runs `fabric run` of the default world into `dir/data` (reports in `dir/out`) and returns
/// the data folder.
pub fn small_run(dir: &Path, seed: u64, jobs: u64) -> std::path::PathBuf {
    let output = run_world(dir, seed, jobs, &[]);
    assert!(output.status.success(), "fabric run: {}", stderr(&output));
    dir.join("data")
}

/// A path as a command-line argument.
pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 paths")
}

/// The ledger key of the tests' ledgers.
pub fn ledger_key() -> SigningKey {
    derive_signing_key(11, "tests/ledger")
}

/// A node key.
pub fn node_key(index: u32) -> SigningKey {
    derive_signing_key(11, &format!("tests/node-{index}"))
}

/// `count` heartbeats signed by a few node keys, nonces from `first_nonce`.
pub fn heartbeats(first_nonce: u64, count: usize) -> Vec<SignedEvent> {
    let keys: Vec<SigningKey> = (0..4).map(node_key).collect();
    (0..count as u64)
        .map(|i| {
            let nonce = first_nonce + i;
            let key = &keys[(nonce % 4) as usize];
            let event = Event::new(
                Role::Node,
                nonce / 10,
                nonce,
                Heartbeat {
                    node: format!("earth.node-{}", nonce % 4),
                    running_jobs: (nonce % 13) as u32,
                },
            );
            SignedEvent::sign(&event, key).expect("heartbeats are small")
        })
        .collect()
}

/// The seed of the keys of a simulated fabric [`Served::start`] starts.
pub const SERVE_SEED: u64 = 7;
/// Milliseconds between the ticks of a fabric [`Served::start`] starts.
pub const SERVE_TICK_MS: &str = "10";
/// How many ticks old a job's signed tick may be on a fabric [`Served::spawn`] starts (unless
/// the test names its own): ticks of 10 ms pass quickly on a loaded machine between reading the
/// tick and the job's sequencing, so one second of them rather than the default 8.
pub const SERVE_SUBMISSION_TICK_WINDOW: &str = "100";

/// A running `fabric serve`, killed when dropped (unless it already exited). Every test that
/// serves starts it through [`Served::spawn`].
pub struct Served {
    child: Option<Child>,
    /// Its TCP address, when it listens on one.
    pub tcp: Option<Target>,
    /// Its Unix socket, when it listens on one.
    pub unix: Option<Target>,
    /// What it said of its keys at start (`keys: …`).
    pub keys_line: String,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Served {
    /// Starts a simulated `fabric serve` of seed [`SERVE_SEED`] on `data` on a free loopback
    /// port (and `unix` when given) and waits until it says where it listens.
    pub fn start(data: &Path, unix: Option<&Path>) -> Self {
        Self::start_with(data, unix, &[])
    }

    /// [`Served::start`] with more arguments.
    pub fn start_with(data: &Path, unix: Option<&Path>, extra: &[&str]) -> Self {
        let seed = SERVE_SEED.to_string();
        let mut args = vec![
            "--data",
            path(data),
            "--simulation",
            "--config",
            DEFAULT_CONFIG,
            "--seed",
            &seed,
            "--tick-ms",
            SERVE_TICK_MS,
        ];
        if let Some(socket) = unix {
            args.extend(["--unix", path(socket)]);
        }
        args.extend_from_slice(extra);
        Served::spawn(&args)
    }

    /// Starts `fabric serve ARGS` (on a free loopback port unless `args` has `--listen` or
    /// `--unix`) and waits until it says where it listens; panics, with its stderr, when it
    /// exits before.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_to(args, Stdio::inherit())
    }

    /// [`Served::spawn`] with its stderr written to `stderr` (a file the test reads).
    pub fn spawn_with_stderr(args: &[&str], stderr: &Path) -> Self {
        let file = std::fs::File::create(stderr).expect("the stderr file is created");
        Self::spawn_to(args, Stdio::from(file))
    }

    /// `fabric serve ARGS` that must refuse to start: waits (at most 60 s) for its exit and
    /// returns what it said on stderr.
    pub fn refused(args: &[&str]) -> String {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fabric"))
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fabric serve starts");
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("its status").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("fabric serve {args:?} did not refuse to start within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut said = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            std::io::Read::read_to_string(&mut stderr, &mut said).expect("stderr reads");
        }
        let status = child.wait().expect("reaped");
        assert!(!status.success(), "fabric serve {args:?} exited 0: {said}");
        said
    }

    /// Waits (at most `timeout`) for the server to exit by itself; true when it exited 0.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> bool {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("the server's status") {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("fabric serve did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn_to(args: &[&str], stderr: Stdio) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fabric"));
        command.arg("serve").args(args);
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--submission-tick-window") {
            command.args(["--submission-tick-window", SERVE_SUBMISSION_TICK_WINDOW]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("fabric serve starts");
        let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (mut tcp, mut unix, mut keys_line) = (None, None, String::new());
        loop {
            let mut line = String::new();
            let read = reader.read_line(&mut line).expect("serve's stdout reads");
            assert!(read > 0, "fabric serve exited before it listened");
            let line = line.trim();
            if let Some(address) = line.strip_prefix("listening on ") {
                let target = Target::parse(address).expect("a printed address parses");
                match target {
                    Target::Tcp(_) | Target::Https(_) => tcp = Some(target),
                    Target::Unix(_) => unix = Some(target),
                }
            }
            if line.starts_with("keys: ") {
                keys_line = line.to_owned();
            }
            if line.starts_with("data ") {
                break;
            }
        }
        Self {
            child: Some(child),
            tcp,
            unix,
            keys_line,
            stdout: Some(reader),
        }
    }

    /// A client of its TCP address.
    pub fn client(&self) -> Client {
        Client::new(
            self.tcp.clone().expect("a TCP address"),
            Duration::from_secs(30),
        )
    }

    /// A client of its Unix socket.
    pub fn unix_client(&self) -> Client {
        Client::new(
            self.unix.clone().expect("a Unix socket"),
            Duration::from_secs(30),
        )
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The rest of its stdout (after it exited).
    pub fn rest_of_stdout(&mut self) -> String {
        let mut rest = String::new();
        if let Some(reader) = &mut self.stdout {
            std::io::Read::read_to_string(reader, &mut rest).expect("serve's stdout reads");
        }
        rest
    }

    /// Sends SIGTERM and waits for the exit; true when it exited with 0.
    pub fn terminate(&mut self) -> bool {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {pid}");
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("the server's status") {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "fabric serve did not exit within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A fabric made by the genesis ceremony in a folder: three owners (threshold 2) with their
/// own keys, the operator's world keys, one registered client `ops` (earth), committed.
pub struct Ceremony {
    /// The data folder.
    pub data: PathBuf,
    /// The operator's keys (`fabric keygen --world`): ledger.key, routers/, nodes/.
    pub operator_keys: PathBuf,
    /// The owners' secret key files.
    pub owners: Vec<PathBuf>,
    /// The registered client's secret key file.
    pub client: PathBuf,
    /// The world's config file.
    pub config: PathBuf,
    /// The checkpoint verifier key `fabric init --commit` printed (none before it ran).
    pub checkpoint_verifier_key: Option<String>,
}

/// The owners of a [`Ceremony`], and how many approve a command.
pub const CEREMONY_OWNERS: usize = 3;
/// Approvals an owner command of a [`Ceremony`] fabric needs.
pub const CEREMONY_THRESHOLD: usize = 2;
/// The client a [`Ceremony`] registers.
pub const CEREMONY_CLIENT: &str = "ops";

impl Ceremony {
    /// Runs the whole ceremony in `dir` with the commands an operator and the owners type,
    /// each checked to succeed.
    pub fn run(dir: &Path) -> Self {
        Self::run_with(dir, Path::new(DEFAULT_CONFIG))
    }

    /// [`Ceremony::run`] of the world of `config`.
    pub fn run_with(dir: &Path, config: &Path) -> Self {
        Self::run_with_args(dir, config, &[])
    }

    /// [`Ceremony::run_with`], `fabric init` given `extra` arguments too.
    pub fn run_with_args(dir: &Path, config: &Path, extra: &[&str]) -> Self {
        let mut ceremony = Self::prepare_with_args(dir, config, extra);
        let commands = ceremony.commands_file();
        for owner in &ceremony.owners[..CEREMONY_THRESHOLD] {
            succeed(&["owner", "sign", path(&commands), "--key", path(owner)]);
        }
        let committed = succeed(&[
            "init",
            "--commit",
            "--data",
            path(&ceremony.data),
            "--ledger-key",
            path(&ceremony.ledger_key()),
        ]);
        ceremony.checkpoint_verifier_key = stdout(&committed)
            .lines()
            .find_map(|line| line.strip_prefix("checkpoint verifier key "))
            .map(str::to_owned);
        ceremony
    }

    /// The ceremony up to the owners' approvals: keys made, `fabric init` run.
    pub fn prepare(dir: &Path) -> Self {
        Self::prepare_with(dir, Path::new(DEFAULT_CONFIG))
    }

    /// [`Ceremony::prepare`] of the world of `config`.
    pub fn prepare_with(dir: &Path, config: &Path) -> Self {
        Self::prepare_with_args(dir, config, &[])
    }

    /// [`Ceremony::prepare_with`], `fabric init` given `extra` arguments too.
    pub fn prepare_with_args(dir: &Path, config: &Path, extra: &[&str]) -> Self {
        let owners: Vec<PathBuf> = (0..CEREMONY_OWNERS)
            .map(|index| dir.join(format!("owner-{index}.key")))
            .collect();
        for owner in &owners {
            succeed(&["keygen", "--out", path(owner)]);
        }
        let client = dir.join("ops.key");
        succeed(&["keygen", "--out", path(&client)]);
        let operator_keys = dir.join("operator");
        succeed(&[
            "keygen",
            "--world",
            "--config",
            path(config),
            "--out",
            path(&operator_keys),
        ]);
        let ceremony = Self {
            data: dir.join("data"),
            operator_keys,
            owners,
            client,
            config: config.to_path_buf(),
            checkpoint_verifier_key: None,
        };
        let owner_pubs: Vec<PathBuf> = ceremony
            .owners
            .iter()
            .map(|owner| fabric_events::keys::public_path(owner))
            .collect();
        let client_arg = format!(
            "{CEREMONY_CLIENT}={}",
            path(&fabric_events::keys::public_path(&ceremony.client))
        );
        let (ledger_key, routers, nodes) = (
            ceremony.ledger_key(),
            ceremony.router_keys(),
            ceremony.node_keys(),
        );
        let threshold = CEREMONY_THRESHOLD.to_string();
        let mut args = vec![
            "init",
            "--data",
            path(&ceremony.data),
            "--config",
            path(&ceremony.config),
            "--threshold",
            &threshold,
            "--ledger-key",
            path(&ledger_key),
            "--router-keys",
            path(&routers),
            "--node-keys",
            path(&nodes),
            "--client",
            &client_arg,
        ];
        for owner in &owner_pubs {
            args.extend(["--owner", path(owner)]);
        }
        args.extend_from_slice(extra);
        succeed(&args);
        ceremony
    }

    /// The owner command file `fabric init` wrote.
    pub fn commands_file(&self) -> PathBuf {
        self.data.join("genesis-commands.json")
    }

    /// The ledger's secret key file.
    pub fn ledger_key(&self) -> PathBuf {
        self.operator_keys.join("ledger.key")
    }

    /// The routers' key folder.
    pub fn router_keys(&self) -> PathBuf {
        self.operator_keys.join("routers")
    }

    /// The nodes' key folder.
    pub fn node_keys(&self) -> PathBuf {
        self.operator_keys.join("nodes")
    }

    /// Serves the fabric with the operator's keys and `extra` arguments.
    pub fn serve(&self, extra: &[&str]) -> Served {
        let (ledger_key, routers) = (self.ledger_key(), self.router_keys());
        let mut args = vec![
            "--data",
            path(&self.data),
            "--ledger-key",
            path(&ledger_key),
            "--router-keys",
            path(&routers),
        ];
        if !extra.contains(&"--tick-ms") {
            args.extend(["--tick-ms", "10"]);
        }
        args.extend_from_slice(extra);
        Served::spawn(&args)
    }

    /// `fabric serve` with the operator's keys and `extra` arguments, expected to refuse to
    /// start: its output.
    pub fn serve_refused(&self, extra: &[&str]) -> Output {
        let (ledger_key, routers) = (self.ledger_key(), self.router_keys());
        let mut args = vec![
            "serve",
            "--data",
            path(&self.data),
            "--listen",
            "127.0.0.1:0",
        ];
        let keys = [
            ("--ledger-key", path(&ledger_key)),
            ("--router-keys", path(&routers)),
        ];
        for (flag, value) in keys {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        args.extend_from_slice(extra);
        let output = fabric(&args);
        assert!(
            !output.status.success(),
            "fabric serve {args:?} started: {}",
            stdout(&output)
        );
        output
    }
}

/// Runs `fabric ARGS` and asserts it succeeded; its output.
pub fn succeed(args: &[&str]) -> Output {
    let output = fabric(args);
    assert!(
        output.status.success(),
        "fabric {args:?} failed: {}{}",
        stdout(&output),
        stderr(&output)
    );
    output
}

/// A running `fabric serve`, killed when dropped (unless it already exited).
pub struct Serving {
    child: Option<std::process::Child>,
    /// The addresses it printed (`http://…`, `https://…`, `unix:…`).
    pub addresses: Vec<String>,
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

/// Starts `fabric serve` of the default world with `seed` on `data`, ticks of `tick_ms`, and
/// `extra` arguments (the listen address among them), and waits until it says where it
/// listens. Err(its stderr) when it exits first. Every test of the hardening module starts
/// its servers here.
pub fn start_serve(
    data: &Path,
    seed: u64,
    tick_ms: u64,
    extra: &[&str],
) -> Result<Serving, String> {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    let (seed, tick_ms) = (seed.to_string(), tick_ms.to_string());
    let mut child = Command::new(env!("CARGO_BIN_EXE_fabric"))
        .args([
            "serve",
            "--data",
            path(data),
            "--simulation",
            "--config",
            DEFAULT_CONFIG,
        ])
        .args(["--seed", &seed, "--tick-ms", &tick_ms])
        .args(if extra.contains(&"--submission-tick-window") {
            &[][..]
        } else {
            &["--submission-tick-window", SERVE_SUBMISSION_TICK_WINDOW][..]
        })
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fabric serve starts");
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut pipe = child.stderr.take().expect("piped stderr");
    let sink = std::sync::Arc::clone(&stderr);
    // Drained all along, so that the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(read @ 1..) = pipe.read(&mut buffer) {
            let text = String::from_utf8_lossy(&buffer[..read]);
            eprint!("{text}");
            sink.lock().expect("stderr lock").push_str(&text);
        }
    });
    let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut addresses = Vec::new();
    loop {
        let mut line = String::new();
        let read = reader.read_line(&mut line).expect("serve's stdout reads");
        if read == 0 {
            let _ = child.wait();
            // The drain thread has the rest once the pipe closes.
            std::thread::sleep(std::time::Duration::from_millis(200));
            return Err(stderr.lock().expect("stderr lock").clone());
        }
        let line = line.trim();
        if let Some(address) = line.strip_prefix("listening on ") {
            addresses.push(address.to_owned());
        }
        if line.starts_with("data ") {
            break;
        }
    }
    Ok(Serving {
        child: Some(child),
        addresses,
        _stdout: reader,
    })
}

impl Serving {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The first printed address starting with `scheme` (`http://`, `https://`, `unix:`).
    pub fn address(&self, scheme: &str) -> String {
        self.addresses
            .iter()
            .find(|address| address.starts_with(scheme))
            .unwrap_or_else(|| panic!("no {scheme} address in {:?}", self.addresses))
            .clone()
    }

    /// The `host:port` of its plain or TLS TCP listener.
    pub fn host_port(&self) -> String {
        let address = self
            .addresses
            .iter()
            .find(|address| address.starts_with("http"))
            .unwrap_or_else(|| panic!("no TCP address in {:?}", self.addresses));
        address
            .split_once("://")
            .map(|(_, host_port)| host_port.to_owned())
            .expect("scheme://host:port")
    }

    /// Sends SIGTERM and waits at most `within` for the exit; the exit status and how long it
    /// took.
    pub fn terminate(
        &mut self,
        within: std::time::Duration,
    ) -> (std::process::ExitStatus, std::time::Duration) {
        let pid = self.pid().to_string();
        let started = std::time::Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {pid}");
        let mut child = self.child.take().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("the server's status") {
                return (status, started.elapsed());
            }
            if started.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!("fabric serve did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The rest of its stdout (after it exited).
    pub fn rest_of_stdout(&mut self) -> String {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self._stdout, &mut rest).expect("stdout reads");
        rest
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
