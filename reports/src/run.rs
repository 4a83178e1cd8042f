//! The reports of a simulated run, from one replay of its log: `events.ndjson`, `shards.json`,
//! `owner-script.json`, `owner-commands-executed.json`, `report.html`, `topology.mmd` and
//! `summary.json` (with its `attestation`).

use std::path::Path;

use fabric_api::owner::{CommandFile, FileCommand};
use fabric_audit::export::write_lines;
use fabric_audit::{Observer, Replay, Sample, Sampled, Step};
use fabric_events::{Body, Event, JobOutcome, OwnerAction, OwnerCommand};
use fabric_projections::State;
use fabric_sim::workload::Workload;
use fabric_sim::{Byzantine, RunOutcome};

use crate::samples::{shard_samples, ShardSample};
use serde_json::{json, Value};

use crate::executed::ExecutedCommands;
use crate::fs::{write_atomically, write_with};
use crate::page::{Chronicle, Headline};
use crate::{ReportError, RunInfo};

/// Writes the reports into `out` (created if missing). `events.ndjson` and `shards.json` come
/// from one replay of the log, so a resumed run reports every event exactly once and the same
/// samples as an uninterrupted one; the replay must end in the run's own state. `summary`
/// (from [`summary`](crate::summary())) gets its `attestation` and is written last. Each file
/// is replaced atomically.
pub fn write_reports(
    run: &RunInfo<'_>,
    out: &Path,
    outcome: &RunOutcome,
    summary: &mut Value,
) -> Result<(), ReportError> {
    std::fs::create_dir_all(out).map_err(|source| ReportError::CreateDir {
        path: out.to_path_buf(),
        source,
    })?;
    let replayed = replay_to_files(run, out, outcome)?;
    let headline = Headline::new(
        run,
        &replayed.state,
        outcome.tree_head.root,
        outcome.tree_head.tree_size,
        Some(summary),
    )
    .with_key_origin(replayed.chronicle.key_origin());
    crate::page::write(out, &replayed.chronicle, &headline, &replayed.state)?;
    summary["attestation"] = replayed.attestation.to_json(run);
    write_json(out, "summary.json", summary)
}

/// What the reports' replay leaves for the page and the summary.
struct Replayed {
    state: State,
    chronicle: Chronicle,
    attestation: AttestationTally,
}

/// Replays the log while writing `events.ndjson`, checks the replay's state against the
/// run's, and writes `shards.json`, `owner-script.json` and `owner-commands-executed.json`.
fn replay_to_files(
    run: &RunInfo<'_>,
    out: &Path,
    outcome: &RunOutcome,
) -> Result<Replayed, ReportError> {
    let reader = outcome.ledger.reader();
    let mut replay = Replay::genesis();
    let mut sampled = Sampled::new(
        outcome.sample_every_ticks,
        (
            Chronicle::new(outcome.sample_every_ticks),
            ShardSamples::default(),
        ),
    );
    let mut executed = ExecutedCommands::default();
    let mut attestation = AttestationTally::new(run);
    write_with(&out.join("events.ndjson"), |writer| {
        let mut observers = (&mut sampled, &mut executed, &mut attestation);
        write_lines(&reader, 0..outcome.ledger.len(), writer, |hash, entry| {
            replay.push(hash, entry, &mut observers).map(drop)
        })
        .map_err(ReportError::from)
    })?;
    sampled.finish(outcome.last_tick, replay.state());
    let (chronicle, ShardSamples(samples)) = sampled.into_inner();
    let state = replay.into_state();
    let (replayed_hash, run_hash) = (state.state_hash(), outcome.state.state_hash());
    if replayed_hash != run_hash {
        return Err(ReportError::StateMismatch {
            replayed: replayed_hash.to_string(),
            run: run_hash.to_string(),
        });
    }
    write_json(
        out,
        "shards.json",
        &json!({
            "sample_every_ticks": outcome.sample_every_ticks,
            "samples": samples,
        }),
    )?;
    write_json(out, "owner-script.json", &owner_script(outcome)?)?;
    write_json(out, "owner-commands-executed.json", &executed.to_json())?;
    Ok(Replayed {
        state,
        chronicle,
        attestation,
    })
}

/// Writes `value` as pretty JSON with a final newline to `out/name`.
fn write_json(out: &Path, name: &str, value: &Value) -> Result<(), ReportError> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    write_atomically(&out.join(name), text.as_bytes())?;
    Ok(())
}

/// The per-shard samples of `shards.json`, at each sample tick of the reports' replay.
#[derive(Default)]
struct ShardSamples(Vec<ShardSample>);

impl Observer for ShardSamples {}

impl Sample for ShardSamples {
    fn sample(&mut self, tick: u64, state: &State) {
        self.0.extend(shard_samples(state, tick));
    }
}

/// GPU receipts and what re-execution made of them, counted in the reports' replay. Which
/// outputs a byzantine node corrupted is a draw of the seed, so the log and the run's
/// parameters tell injected, detected (an `attestation_mismatch`) and missed (a corrupted
/// receipt that was admitted) apart without re-executing anything.
struct AttestationTally {
    workload: Workload,
    nodes: Vec<Byzantine>,
    gpu_receipts: u64,
    mismatches: u64,
    /// Per byzantine node: injected, detected, missed.
    byzantine: Vec<(u64, u64, u64)>,
}

impl AttestationTally {
    fn new(run: &RunInfo<'_>) -> Self {
        let spec = run.spec;
        Self {
            workload: Workload::new(&spec.world, spec.seed, spec.jobs),
            nodes: spec.byzantine.clone(),
            gpu_receipts: 0,
            mismatches: 0,
            byzantine: vec![(0, 0, 0); spec.byzantine.len()],
        }
    }

    fn see(&mut self, event: &Event) {
        match &event.body {
            Body::JobReceipt(receipt) if receipt.kernel.is_some() => {
                self.gpu_receipts += 1;
                if receipt.outcome != JobOutcome::Completed {
                    return;
                }
                for (index, byzantine) in self.nodes.iter().enumerate() {
                    if byzantine.node == receipt.node
                        && self.workload.corrupts(
                            receipt.job,
                            receipt.started_tick,
                            byzantine.rate_ppm,
                        )
                    {
                        self.byzantine[index].0 += 1;
                        self.byzantine[index].2 += 1;
                    }
                }
            }
            Body::AttestationMismatch(mismatch) => {
                self.mismatches += 1;
                for (index, byzantine) in self.nodes.iter().enumerate() {
                    if byzantine.node == mismatch.node {
                        self.byzantine[index].0 += 1;
                        self.byzantine[index].1 += 1;
                    }
                }
            }
            _ => {}
        }
    }

    fn to_json(&self, run: &RunInfo<'_>) -> Value {
        let byzantine: Vec<Value> = run
            .spec
            .byzantine
            .iter()
            .zip(&self.byzantine)
            .map(|(node, (injected, detected, missed))| {
                json!({
                    "node": node.node,
                    "rate_ppm": node.rate_ppm,
                    "corruptions_injected": injected,
                    "corruptions_detected": detected,
                    "corruptions_missed": missed,
                })
            })
            .collect();
        json!({
            "verify_ppm": run.spec.world.verify_ppm,
            "gpu_receipts": self.gpu_receipts,
            "mismatches": self.mismatches,
            "byzantine": byzantine,
        })
    }
}

impl Observer for AttestationTally {
    fn before(&mut self, step: &Step<'_>, _: &State) {
        self.see(step.event);
    }
}

/// Owner commands that pause, resume and re-budget each shard, unapproved, as a command file
/// (`owner-script.json`): each owner approves them with `fabric owner sign`, then `fabric owner
/// submit` hands them to the ledger (they expire 1,000 ticks after the run's last tick).
pub fn owner_script(outcome: &RunOutcome) -> Result<Value, serde_json::Error> {
    let state = &outcome.state;
    let expiry_tick = outcome.last_tick + 1_000;
    let first_nonce = (outcome.last_tick + 1) << 24;
    let mut commands = Vec::new();
    for shard in state.shards().iter().filter(|shard| !shard.retired) {
        let actions = [
            (
                "pause the shard",
                OwnerAction::PauseShard {
                    shard: shard.name.clone(),
                },
            ),
            (
                "resume the shard",
                OwnerAction::ResumeShard {
                    shard: shard.name.clone(),
                },
            ),
            (
                "double the queue budget",
                OwnerAction::SetQueueBudget {
                    shard: shard.name.clone(),
                    queue_budget: shard.queue_budget.saturating_mul(2),
                },
            ),
            (
                "widen the latency budget by half",
                OwnerAction::SetLatencyBudget {
                    shard: shard.name.clone(),
                    latency_budget_ms: shard
                        .latency_budget_ms
                        .saturating_add(shard.latency_budget_ms / 2),
                },
            ),
        ];
        for (purpose, action) in actions {
            let nonce = first_nonce + commands.len() as u64;
            let command = OwnerCommand {
                action,
                expiry_tick,
                approvals: Vec::new(),
            };
            commands.push(FileCommand::new(
                None,
                &format!("{}: {purpose}", shard.name),
                nonce,
                command,
            ));
        }
    }
    serde_json::to_value(CommandFile::new(commands))
}
