//! Suite `nats`: `fabric run --nats` against the same run without NATS, and the lag from an
//! append to JetStream's acknowledgement. Also the bench's own `nats-server`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use fabric_ledger::Ledger;

use super::{
    bench_world_with, events_per_s, scratch_dir, verdict, Against, Bench, Figure, SuiteReport,
    BENCH_SEED,
};

/// Lag from append to JetStream acknowledgement that publication aims under, at the 99th
/// percentile.
const NATS_LAG_P99_MS_TARGET: f64 = 50.0;

/// The `nats-server` executable (the Debian package puts it in /usr/sbin).
pub(super) fn nats_server_binary() -> anyhow::Result<&'static str> {
    ["nats-server", "/usr/sbin/nats-server"]
        .into_iter()
        .find(|candidate| {
            std::process::Command::new(candidate)
                .arg("--version")
                .output()
                .is_ok_and(|output| output.status.success())
        })
        .ok_or_else(|| {
            anyhow!("nats-server is not installed (Debian: apt-get install nats-server)")
        })
}

/// A `nats-server` the bench started, stopped when dropped.
pub(super) struct BenchNatsServer {
    child: std::process::Child,
    pub(super) url: String,
}

impl BenchNatsServer {
    /// Starts `nats-server -js` on a free loopback port with its store in `dir`.
    pub(super) fn start(dir: &Path) -> anyhow::Result<Self> {
        let binary =
            nats_server_binary().map_err(|error| anyhow!("{error}; or pass --nats URL"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("could not start {binary}"))?;
        let server = Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server did not listen on port {port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for BenchNatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn suite(bench: &Bench<'_>) -> anyhow::Result<SuiteReport> {
    let args = bench.args;
    let jobs = args
        .jobs
        .unwrap_or(if args.quick { 20_000 } else { 100_000 })
        .max(1);
    let world = bench_world_with(args, args.nodes)?;
    let scratch = scratch_dir(args)?;
    let server = match &args.nats {
        Some(_) => None,
        None => Some(BenchNatsServer::start(&scratch.path().join("nats"))?),
    };
    let url = args
        .nats
        .clone()
        .or_else(|| server.as_ref().map(|server| server.url.clone()))
        .ok_or_else(|| anyhow!("no NATS server"))?;
    let spec = fabric_sim::RunSpec {
        world,
        seed: BENCH_SEED,
        jobs,
        append_events_max: fabric_ledger::BATCH_EVENTS_MAX,
        owner_script: Vec::new(),
        byzantine: Vec::new(),
    };
    let ledger_key = || fabric_sim::sim_ledger_key(BENCH_SEED);

    let plain = fabric_sim::run(
        &spec,
        Ledger::open(scratch.path().join("plain"), ledger_key())?,
        |_| {},
    )
    .context("the run without NATS failed")?;
    let events = plain.tree_head.tree_size as usize;
    let plain_eps = events_per_s(plain.wall, events);
    drop(plain);

    let ledger = Ledger::open(scratch.path().join("published"), ledger_key())?;
    let log: fabric_bus::outbox::Log = std::sync::Arc::new(|line: &str| eprintln!("{line}"));
    let outbox = fabric_bus::Outbox::start(ledger.reader(), &url, None, log)
        .with_context(|| format!("cannot publish on {url}"))?;
    let published = fabric_sim::run(&spec, ledger, |tick| outbox.durable(tick.events_total))
        .context("the run with NATS failed")?;
    let drain_started = Instant::now();
    let report = outbox.finish(Duration::from_secs(120))?;
    let drain = drain_started.elapsed();
    ensure!(
        report.published == published.tree_head.tree_size,
        "{} of {} events were published",
        report.published,
        published.tree_head.tree_size
    );
    let published_eps = events_per_s(published.wall, events);
    let mut lag_us = report.lag_us;
    lag_us.sort_unstable();
    let lag_ms = |quantile: f64| fabric_reports::stats::quantile_ns(&lag_us, quantile) as f64 / 1e3;
    let (p50, p99) = (lag_ms(0.5), lag_ms(0.99));
    let wall_ms = published.wall.as_secs_f64() * 1e3;
    let drain_ms = drain.as_secs_f64() * 1e3;
    let figures = figures((published_eps, plain_eps), (p50, p99), drain_ms, wall_ms);
    Ok(SuiteReport {
        suite: "nats",
        events,
        batch_events: events / published.last_tick.max(1) as usize,
        repetitions: 1,
        adapter: None,
        notes: Vec::new(),
        figures,
    })
}

/// The suite's figures: the run with NATS against the run without, the lag against its
/// target, the drain against the run's wall time.
fn figures(
    (published_eps, plain_eps): (f64, f64),
    (p50, p99): (f64, f64),
    drain_ms: f64,
    wall_ms: f64,
) -> Vec<Figure> {
    let ratio = published_eps / plain_eps;
    vec![
        Figure::new(
            "run with --nats",
            published_eps,
            "events/s",
            (Against::Baseline, plain_eps),
            format!(
                "signed, stored and published vs. the same run without NATS; target >= 0.9: {}",
                verdict(ratio >= 0.9)
            ),
        ),
        Figure::new(
            "publication lag p50",
            p50,
            "ms",
            (Against::Target, NATS_LAG_P99_MS_TARGET),
            "from the append's return (durable) to JetStream's acknowledgement, median, next to \
             the p99 target",
        ),
        Figure::new(
            "publication lag p99",
            p99,
            "ms",
            (Against::Target, NATS_LAG_P99_MS_TARGET),
            format!(
                "99th percentile; target <= {NATS_LAG_P99_MS_TARGET} ms: {}",
                verdict(p99 <= NATS_LAG_P99_MS_TARGET)
            ),
        ),
        Figure::new(
            "drain after the run",
            drain_ms,
            "ms",
            (Against::Baseline, wall_ms),
            "from the last append to the last acknowledgement vs. the run's wall time",
        ),
    ]
}
