//! Suites `route` (router decision latency at 100, 1k and 10k nodes) and `scale` (a million
//! jobs on 10,000 nodes, end to end).

use super::{
    bench_run, bench_world_with, scratch_dir, verdict, Against, Bench, Figure, SuiteReport,
};

/// Router decision latency the 99th percentile should stay under, in microseconds.
const ROUTER_P99_US_TARGET: f64 = 25.0;
/// Wall time a million-job run on 10,000 nodes should stay under.
const SCALE_WALL_S_TARGET: f64 = 120.0;
/// Jobs of the scale target.
const SCALE_JOBS_TARGET: f64 = 1_000_000.0;
/// Node counts of the route suite.
const ROUTE_NODES: [usize; 3] = [100, 1_000, 10_000];

/// The decision latencies of a run, sorted, in microseconds at a quantile.
struct Decisions(Vec<u32>);

impl Decisions {
    fn new(mut decision_ns: Vec<u32>) -> anyhow::Result<Self> {
        anyhow::ensure!(!decision_ns.is_empty(), "the run made no routing decision");
        decision_ns.sort_unstable();
        Ok(Self(decision_ns))
    }

    fn us(&self, quantile: f64) -> f64 {
        fabric_reports::stats::quantile_ns(&self.0, quantile) as f64 / 1e3
    }

    /// Rows p50, p99 and max for `nodes` nodes, each against the p99 target.
    fn figures(&self, nodes: usize) -> Vec<Figure> {
        let p99 = self.us(0.99);
        [("p50", 0.5), ("p99", 0.99), ("max", 1.0)]
            .into_iter()
            .map(|(name, quantile)| {
                let what = if name == "p99" {
                    format!(
                        "one assign / spill / wait decision (TickPlan::next_decision), 99th \
                         percentile of {} decisions; target <= {ROUTER_P99_US_TARGET} us: {}",
                        self.0.len(),
                        verdict(p99 <= ROUTER_P99_US_TARGET)
                    )
                } else {
                    format!(
                        "the same decisions, {name}, next to the p99 target (which binds only p99)"
                    )
                };
                Figure::new(
                    format!("router {name}, {nodes} nodes"),
                    self.us(quantile),
                    "us",
                    (Against::Target, ROUTER_P99_US_TARGET),
                    what,
                )
            })
            .collect()
    }
}

pub(super) fn route_suite(bench: &Bench<'_>) -> anyhow::Result<SuiteReport> {
    let args = bench.args;
    let jobs = args
        .jobs
        .unwrap_or(if args.quick { 10_000 } else { 50_000 })
        .max(1);
    let scratch = scratch_dir(args)?;
    let mut figures = Vec::new();
    let mut notes = Vec::new();
    let mut events = 0;
    for nodes in ROUTE_NODES {
        let world = bench_world_with(args, Some(nodes))?;
        let outcome = bench_run(&world, jobs, &scratch.path().join(format!("nodes-{nodes}")))?;
        events += outcome.tree_head.tree_size as usize;
        notes.push(format!(
            "{nodes} nodes: {jobs} jobs, {} decisions, {} ticks",
            outcome.decision_ns.len(),
            outcome.last_tick
        ));
        figures.extend(Decisions::new(outcome.decision_ns)?.figures(nodes));
    }
    Ok(SuiteReport {
        suite: "route",
        events,
        batch_events: 0,
        repetitions: 1,
        adapter: None,
        notes,
        figures,
    })
}

pub(super) fn scale_suite(bench: &mut Bench<'_>) -> anyhow::Result<SuiteReport> {
    let args = bench.args;
    let jobs = args
        .jobs
        .unwrap_or(if args.quick { 100_000 } else { 1_000_000 })
        .max(1);
    let world = bench_world_with(args, Some(args.nodes.unwrap_or(10_000)))?;
    let nodes = world.nodes.len();
    let scratch = scratch_dir(args)?;
    let outcome = bench_run(&world, jobs, &scratch.path().join("ledger"))?;
    let events = outcome.tree_head.tree_size as usize;
    let wall_s = outcome.wall.as_secs_f64();
    let events_per_s = events as f64 / wall_s;
    let finished_per_s = outcome.state.metrics().finished() as f64 / wall_s;
    let decisions = Decisions::new(outcome.decision_ns.clone())?;
    let batch_events = events / outcome.last_tick.max(1) as usize;
    drop(outcome);

    // Every event of a run is signed once and verified once, on all cores.
    let limits = bench.limits()?;
    let crypto_bound = 1e6 / (limits.sign.all_cores_us + limits.batch_verify.all_cores_us);
    // The wall-time target scaled to this run's jobs (equal to it at a million jobs).
    let wall_s_target = SCALE_WALL_S_TARGET * jobs as f64 / SCALE_JOBS_TARGET;
    let mut figures = vec![
        Figure::new(
            "run wall time",
            wall_s,
            "s",
            (Against::Target, wall_s_target),
            format!(
                "genesis to last append, every event signed, verified and fsynced; target <= \
                 {SCALE_WALL_S_TARGET} s per million jobs: {}",
                verdict(wall_s <= wall_s_target)
            ),
        ),
        Figure::new(
            "events signed and stored",
            events_per_s,
            "events/s",
            (Against::Bound, crypto_bound),
            "the run's events per second vs. 1 / (sign + batch verify, all cores) per event \
             (limits)",
        ),
        Figure::new(
            "jobs finished",
            finished_per_s,
            "jobs/s",
            (Against::Target, SCALE_JOBS_TARGET / SCALE_WALL_S_TARGET),
            "completed + failed jobs per second of wall time vs. a million in 120 s",
        ),
    ];
    figures.extend(decisions.figures(nodes));
    Ok(SuiteReport {
        suite: "scale",
        events,
        batch_events,
        repetitions: 1,
        adapter: None,
        notes: vec![format!("{jobs} jobs on {nodes} nodes")],
        figures,
    })
}
