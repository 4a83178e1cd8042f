//! `summary.json` of a run, and the table `fabric run` prints.

use std::path::Path;

use fabric_projections::state::JobStatus;
use fabric_projections::State;
use fabric_sim::RunOutcome;
use serde_json::{json, Map, Value};

use crate::stats::quantile_ns;
use crate::RunInfo;

/// The run's summary (`summary.json` without its `attestation`, which the reports' replay
/// adds, nor its `nats`, which the publication adds).
pub fn summary(run: &RunInfo<'_>, outcome: &RunOutcome) -> Value {
    let state = &outcome.state;
    let metrics = state.metrics();
    let (spills_per_job, spills_per_job_max) = spills_per_job(state);
    let wall_s = outcome.wall.as_secs_f64().max(1e-9);
    let events = outcome.tree_head.tree_size;
    let mut summary = json!({
        "label": run.label,
        "seed": run.spec.seed,
        "jobs": run.spec.jobs,
        "nodes": state.nodes().len(),
        "shards_count": state.shards().len(),
        "ticks": outcome.last_tick,
        "drained": outcome.stop.drained(),
        "stop_reason": outcome.stop.describe(),
        "arrivals_per_tick": outcome.arrivals_per_tick,
        "events": events,
        "final_seq": events.saturating_sub(1),
        "merkle_root": outcome.tree_head.root.to_hex(),
        "tree_head_signature": outcome.tree_head.signature.to_hex(),
        "state_hash": state.state_hash().to_hex(),
        "wall_ms": outcome.wall.as_millis() as u64,
        "throughput": {
            "events_per_s": outcome.events_appended as f64 / wall_s,
            "jobs_per_s": metrics.finished() as f64 / wall_s,
            "jobs_per_tick": metrics.finished() as f64 / outcome.last_tick.max(1) as f64,
        },
        "jobs_status": jobs_status(state),
        "latency_ticks": {
            "mean": metrics.latency_ticks_mean(),
            "p50": metrics.latency_ticks_quantile(0.5),
            "p99": metrics.latency_ticks_quantile(0.99),
            "max": metrics.latency_ticks_max,
        },
        "spillovers": metrics.spillovers,
        "spills_per_job": spills_per_job,
        "spills_per_job_max": spills_per_job_max,
        "requeues": metrics.requeues,
        "node_failures": metrics.failures,
        "deadline_missed": metrics.deadline_missed,
        "heartbeats": metrics.heartbeats,
        "checkpoints": metrics.checkpoints,
        "anomalies": state.anomalies(),
        "owner_commands": metrics.owner_commands,
        "rejections": rejections_by_reason(state),
        "router": router(outcome),
        "metrics": treaty_metrics(state),
        "shards": shards(state),
    });
    if let Some((report, took)) = &outcome.restored {
        summary["resumed"] = json!({
            "checkpoint_tree_size": report.checkpoint_tree_size.unwrap_or(0),
            "from_genesis": report.checkpoint_tree_size.is_none(),
            "tail_events": report.tail_events,
            "skipped_checkpoints": report.skipped,
            "restore_ms": took.as_millis() as u64,
            "events_appended": outcome.events_appended,
        });
    }
    summary
}

/// `jobs_status`: jobs by where they ended.
fn jobs_status(state: &State) -> Value {
    let metrics = state.metrics();
    let (mut queued, mut running) = (0u64, 0u64);
    for job in state.jobs() {
        match job.status {
            JobStatus::Queued => queued += 1,
            JobStatus::Running => running += 1,
            _ => {}
        }
    }
    json!({
        "submitted": metrics.submitted,
        "completed": metrics.completed,
        "failed": metrics.dropped,
        "cancelled": metrics.cancelled,
        "queued": queued,
        "running": running,
    })
}

/// Jobs by how many times they spilled (counts above zero only), and the most spills of one.
fn spills_per_job(state: &State) -> (Map<String, Value>, usize) {
    let metrics = state.metrics();
    let counts = metrics
        .spills_per_job
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .map(|(spills, count)| (spills.to_string(), json!(count)))
        .collect();
    let max = metrics
        .spills_per_job
        .iter()
        .rposition(|count| *count > 0)
        .unwrap_or(0);
    (counts, max)
}

/// `router`: the routing decisions timed during the run (wall-clock).
fn router(outcome: &RunOutcome) -> Value {
    let mut decision_ns = outcome.decision_ns.clone();
    decision_ns.sort_unstable();
    json!({
        "decisions": decision_ns.len(),
        "waits": outcome.waits,
        "decision_ns_p50": quantile_ns(&decision_ns, 0.5),
        "decision_ns_p99": quantile_ns(&decision_ns, 0.99),
        "decision_ns_max": decision_ns.last().copied().unwrap_or(0),
    })
}

/// `metrics`: the treaty's figures.
fn treaty_metrics(state: &State) -> Value {
    let metrics = state.metrics();
    // Mean latency of the nodes that ran jobs, weighted by the jobs each finished.
    let (rtt_weighted, finished_on_nodes) = state.nodes().iter().fold((0u64, 0u64), |acc, n| {
        let finished = n.completed + n.failed;
        (acc.0 + u64::from(n.latency_ms) * finished, acc.1 + finished)
    });
    json!({
        "treaty_fill_rate": metrics.fill_rate(),
        "treaty_rtt_ms": if finished_on_nodes == 0 { 0.0 } else { rtt_weighted as f64 / finished_on_nodes as f64 },
        "treaty_provenance_coverage": if metrics.finished() == 0 { 0.0 } else { metrics.completed as f64 / metrics.finished() as f64 },
        "gpu_hours_total": 0.0,
        "treaty_dropped_requests": metrics.dropped,
        "treaty_failover_events_total": metrics.requeues + metrics.spillovers,
    })
}

/// `shards`: each shard's counters at the end.
fn shards(state: &State) -> Vec<Value> {
    state
        .shards()
        .iter()
        .map(|shard| {
            let c = &shard.counters;
            json!({
                "shard": shard.name,
                "submitted": c.submitted,
                "completed": c.completed,
                "failed": c.failed,
                "spilled_in": c.spilled_in,
                "spilled_out": c.spilled_out,
                "requeued": c.requeued,
                "queue_peak": c.queue_peak,
                "queued_at_end": shard.queued(),
                "latency_ticks_mean": c.latency_ticks_mean(),
            })
        })
        .collect()
}

/// `Rejected` events recorded, by reason (every reason, zeros included).
pub fn rejections_by_reason(state: &State) -> Value {
    let authority = state.authority();
    let counts: Map<String, Value> = fabric_events::RejectReason::ALL
        .iter()
        .map(|reason| {
            (
                reason.as_str().to_owned(),
                json!(authority.rejections(*reason)),
            )
        })
        .collect();
    Value::Object(counts)
}

/// The text `fabric run` prints: a row per shard, then the run's totals, roots and where the
/// reports went.
pub fn table(outcome: &RunOutcome, summary: &Value, out: &Path) -> String {
    let state = &outcome.state;
    let mut text = String::new();
    let line = |text: &mut String, s: String| {
        text.push_str(&s);
        text.push('\n');
    };
    line(
        &mut text,
        format!(
            "{:<8} {:>10} {:>10} {:>8} {:>10} {:>11} {:>9} {:>10} {:>13}",
            "shard",
            "submitted",
            "completed",
            "failed",
            "spilled in",
            "spilled out",
            "requeued",
            "queue peak",
            "latency ticks"
        ),
    );
    for shard in state.shards() {
        let c = &shard.counters;
        let latency = c.latency_ticks_mean();
        line(
            &mut text,
            format!(
                "{:<8} {:>10} {:>10} {:>8} {:>10} {:>11} {:>9} {:>10} {:>13.1}",
                shard.name,
                c.submitted,
                c.completed,
                c.failed,
                c.spilled_in,
                c.spilled_out,
                c.requeued,
                c.queue_peak,
                latency
            ),
        );
    }
    let metrics = state.metrics();
    line(
        &mut text,
        format!(
            "\n{} jobs ({} completed, {} failed, {} still queued) on {} nodes in {} ticks; {} events signed and stored in {:.1} s",
            metrics.submitted,
            metrics.completed,
            metrics.dropped,
            summary["jobs_status"]["queued"],
            state.nodes().len(),
            outcome.last_tick,
            outcome.tree_head.tree_size,
            outcome.wall.as_secs_f64()
        ),
    );
    line(
        &mut text,
        format!(
            "spillovers {} (per job: {}), requeues {}, node failures {}, router decision p50 {} ns / p99 {} ns",
            metrics.spillovers,
            summary["spills_per_job"],
            metrics.requeues,
            metrics.failures,
            summary["router"]["decision_ns_p50"],
            summary["router"]["decision_ns_p99"],
        ),
    );
    line(&mut text, format!("merkle root {}", outcome.tree_head.root));
    line(
        &mut text,
        format!(
            "state hash  {}",
            summary["state_hash"].as_str().unwrap_or("")
        ),
    );
    line(&mut text, format!("reports in  {}", out.display()));
    text
}
