//! `canary_slo_report.json` of a stored log (run or served). One replay
//! of the log gives each figure; a figure that cannot be computed (no job finished, no routing
//! decision) is an error, never a null.
//!
//! - Fill rate p95: the log's submission ticks are cut into windows of `--window-ticks`; a
//!   window's fill rate is the share of the jobs submitted in it that completed; the p95 over
//!   the windows with submissions (nearest rank, [`crate::stats::nearest_rank`]).
//! - RTT p95: per finished job, the round-trip latency of the node that ran it (its registered
//!   `latency_ms`, as `treaty_rtt_ms` in `summary.json`); the p95 over finished jobs.
//! - Provenance coverage: completed jobs as a share of finished ones (each completion is a
//!   signed receipt naming its output hash).
//! - Policy decision latency p99: during the replay, at each tick, each shard's routing plan is
//!   rebuilt from the state its router saw (the state after the previous tick) and each decision
//!   is timed on this machine (the policy code the routers run, on the log's own states).

use std::collections::HashMap;
use std::time::Instant;

use fabric_audit::{Observer, Replay, ReplayError, Step};
use fabric_events::{Body, JobOutcome};
use fabric_ledger::LedgerReader;
use fabric_projections::state::ShardIx;
use fabric_projections::{State, TickPlan};
use serde_json::{json, Map, Value};
use thiserror::Error;

use crate::stats::nearest_rank;

/// Why there is no SLO report.
#[derive(Debug, Error)]
pub enum SloError {
    /// Fill-rate windows of 0 ticks.
    #[error("the fill-rate window must be at least 1 tick")]
    NoWindow,
    /// The log could not be read or replayed.
    #[error("could not replay the log")]
    Replay(#[from] ReplayError),
    /// No job was submitted.
    #[error("no job was submitted, so there is no fill rate")]
    NoFillRate,
    /// No job finished on a node.
    #[error("no job finished on a node, so there is no RTT or provenance coverage")]
    NoRtt,
    /// The routers made no decision.
    #[error("the routers made no decision, so there is no decision latency")]
    NoDecisions,
}

/// The targets of the report, and its fill-rate window.
#[derive(Clone, Debug)]
pub struct SloTargets {
    /// Ticks per fill-rate window (at least 1).
    pub window_ticks: u64,
    /// Fill rate p95 at least this.
    pub fill_rate_p95_min: f64,
    /// RTT p95 at most this many milliseconds.
    pub rtt_ms_p95_max: f64,
    /// Provenance coverage at least this.
    pub provenance_coverage_min: f64,
    /// Policy decision latency p99 at most this many milliseconds.
    pub policy_decision_latency_ms_p99_max: f64,
}

/// Nearest-rank quantile of a sorted, non-empty slice (the report checks each is non-empty
/// first, with an error that says which figure cannot be computed).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    nearest_rank(sorted, q).unwrap_or(f64::NAN)
}

/// What the replay of the log gives the report.
struct Replayed {
    fill_windows: Vec<f64>,
    rtt_ms: Vec<f64>,
    completed: u64,
    finished: u64,
    decision_ms: Vec<f64>,
    events: u64,
}

fn time_decisions(state: &State, tick: u64, out: &mut Vec<f64>) {
    for shard in 0..state.shards().len() {
        let mut plan = TickPlan::new(state, shard as ShardIx, tick);
        let _ = plan.health();
        loop {
            let started = Instant::now();
            let Some(_) = plan.next_decision() else {
                break;
            };
            out.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
}

/// The figures' raw material, gathered around each event of the replay.
struct Gather {
    window_ticks: u64,
    /// The tick of the events seen so far (routing plans are timed when it moves on).
    tick: u64,
    /// Per window: (submitted, completed) of the jobs submitted in it.
    windows: HashMap<u64, (u64, u64)>,
    window_of: HashMap<u64, u64>,
    /// Jobs completed before the event being folded.
    completed_before: u64,
    rtt_ms: Vec<f64>,
    decision_ms: Vec<f64>,
    events: u64,
}

impl Observer for Gather {
    fn before(&mut self, step: &Step<'_>, state: &State) {
        let event = step.event;
        if event.header.tick > self.tick {
            self.tick = event.header.tick;
            time_decisions(state, self.tick, &mut self.decision_ms);
        }
        match &event.body {
            Body::JobSubmitted(job) => {
                let window = event.header.tick / self.window_ticks;
                self.windows.entry(window).or_default().0 += 1;
                self.window_of.insert(job.job, window);
            }
            Body::JobReceipt(receipt) => {
                // Only a receipt the state takes ends a job (a stale one is an anomaly).
                let ran = state.job_ix(receipt.job).is_some_and(|ix| {
                    state.jobs()[ix as usize].status
                        == fabric_projections::state::JobStatus::Running
                });
                if ran {
                    if let Some(node) = state.node_ix(&receipt.node) {
                        self.rtt_ms
                            .push(f64::from(state.nodes()[node as usize].latency_ms));
                    }
                }
            }
            _ => {}
        }
        self.completed_before = state.metrics().completed;
    }

    fn after(&mut self, step: &Step<'_>, state: &State) {
        if let Body::JobReceipt(receipt) = &step.event.body {
            if state.metrics().completed > self.completed_before
                && receipt.outcome == JobOutcome::Completed
            {
                if let Some(window) = self.window_of.get(&receipt.job) {
                    self.windows.entry(*window).or_default().1 += 1;
                }
            }
        }
        self.events += 1;
    }
}

fn replay(reader: &LedgerReader, size: u64, window_ticks: u64) -> Result<Replayed, SloError> {
    let mut gather = Gather {
        window_ticks,
        tick: 0,
        windows: HashMap::new(),
        window_of: HashMap::new(),
        completed_before: 0,
        rtt_ms: Vec::new(),
        decision_ms: Vec::new(),
        events: 0,
    };
    let mut replay = Replay::genesis();
    replay.read(reader, size, &mut gather)?;
    let metrics = replay.state().metrics();
    let mut keys: Vec<&u64> = gather.windows.keys().collect();
    keys.sort();
    let fill_windows = keys
        .into_iter()
        .filter_map(|key| {
            let (submitted, completed) = gather.windows[key];
            (submitted > 0).then(|| completed as f64 / submitted as f64)
        })
        .collect();
    Ok(Replayed {
        fill_windows,
        rtt_ms: gather.rtt_ms,
        completed: metrics.completed,
        finished: metrics.finished(),
        decision_ms: gather.decision_ms,
        events: gather.events,
    })
}

/// The figures of the report, each sorted sample set checked non-empty.
struct Figures {
    fill: Vec<f64>,
    rtt: Vec<f64>,
    decisions: Vec<f64>,
    provenance_coverage: f64,
}

impl Figures {
    fn of(replayed: &Replayed) -> Result<Self, SloError> {
        let mut fill = replayed.fill_windows.clone();
        let mut rtt = replayed.rtt_ms.clone();
        let mut decisions = replayed.decision_ms.clone();
        if fill.is_empty() {
            return Err(SloError::NoFillRate);
        }
        if rtt.is_empty() || replayed.finished == 0 {
            return Err(SloError::NoRtt);
        }
        if decisions.is_empty() {
            return Err(SloError::NoDecisions);
        }
        for values in [&mut fill, &mut rtt, &mut decisions] {
            values.sort_by(f64::total_cmp);
        }
        Ok(Self {
            fill,
            rtt,
            decisions,
            provenance_coverage: replayed.completed as f64 / replayed.finished as f64,
        })
    }
}

/// `canary_slo_report.json` of the first `size` entries of a log, for the run named `run`.
/// The decision latencies are timed on this machine, so they (and what depends on them)
/// differ between calls.
pub fn report(
    run: &str,
    reader: &LedgerReader,
    size: u64,
    targets: &SloTargets,
) -> Result<Value, SloError> {
    if targets.window_ticks == 0 {
        return Err(SloError::NoWindow);
    }
    let replayed = replay(reader, size, targets.window_ticks)?;
    let figures = Figures::of(&replayed)?;
    let fill_rate_p95 = quantile(&figures.fill, 0.95);
    let rtt_ms_p95 = quantile(&figures.rtt, 0.95);
    let decision_ms_p99 = quantile(&figures.decisions, 0.99);
    let checks = [
        (
            "fill_rate_p95",
            fill_rate_p95,
            ">=",
            targets.fill_rate_p95_min,
        ),
        ("rtt_ms_p95", rtt_ms_p95, "<=", targets.rtt_ms_p95_max),
        (
            "provenance_coverage",
            figures.provenance_coverage,
            ">=",
            targets.provenance_coverage_min,
        ),
        (
            "policy_decision_latency_ms_p99",
            decision_ms_p99,
            "<=",
            targets.policy_decision_latency_ms_p99_max,
        ),
    ];
    let mut compliance = Map::new();
    let mut target_values = Map::new();
    let mut compliant = 0;
    for (name, value, comparison, target) in checks {
        let ok = match comparison {
            ">=" => value >= target,
            _ => value <= target,
        };
        compliant += usize::from(ok);
        compliance.insert(name.to_owned(), json!(ok));
        target_values.insert(
            name.to_owned(),
            json!({"comparison": comparison, "target": target}),
        );
    }
    Ok(json!({
        "format": "fabric-canary-slo-report-v1",
        "run": run,
        "tree_size": size,
        "events_replayed": replayed.events,
        "fill_rate_p95": fill_rate_p95,
        "fill_rate_windows": figures.fill.len(),
        "window_ticks": targets.window_ticks,
        "rtt_ms_p95": rtt_ms_p95,
        "provenance_coverage": figures.provenance_coverage,
        "policy_decision_latency_ms_p99": decision_ms_p99,
        "policy_decisions_timed": figures.decisions.len(),
        "targets": target_values,
        "compliance": compliance,
        "compliance_rate": compliant as f64 / checks.len() as f64,
    }))
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank_quantiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.95), 95.0);
        assert_eq!(quantile(&values, 0.99), 99.0);
        assert_eq!(quantile(&[3.0], 0.95), 3.0);
    }
}
