//! Suites `audit` and `restore`, on two finished planetary runs of the configured world: a
//! long history and a short one (a tenth of the jobs). Both suites share the runs.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context};
use fabric_ledger::verify::{verify_batch, KeyCache};
use fabric_ledger::Ledger;

use super::{
    bench_run, bench_world_with, events_per_s, scratch_dir, timed, verdict, Against, Bench,
    BenchArgs, Figure, SuiteReport, TARGET_RATIO,
};

/// Ratio of restore times, long history over short with the same tail, that restores aim for.
const RESTORE_RATIO_TARGET: f64 = 1.5;

/// The long and the short history, in a temporary folder that lives as long as they do.
pub(super) struct Histories {
    long: Ledger,
    short: Ledger,
    _scratch: tempfile::TempDir,
}

impl Histories {
    pub(super) fn run(args: &BenchArgs) -> anyhow::Result<Self> {
        let jobs = args
            .jobs
            .unwrap_or(if args.quick { 20_000 } else { 200_000 })
            .max(10);
        let world = bench_world_with(args, args.nodes)?;
        let scratch = scratch_dir(args)?;
        let long = bench_run(&world, jobs, &scratch.path().join("long"))?.ledger;
        let short = bench_run(&world, jobs / 10, &scratch.path().join("short"))?.ledger;
        Ok(Self {
            long,
            short,
            _scratch: scratch,
        })
    }
}

/// The checkpoint in the middle of `ledger`'s history and the one after it.
fn middle_checkpoints(ledger: &Ledger) -> anyhow::Result<(u64, u64)> {
    let checkpoints = ledger.reader().snapshot_sizes()?;
    ensure!(
        checkpoints.len() >= 2,
        "the bench run made fewer than two checkpoints: give it more jobs"
    );
    let middle = (checkpoints.len() - 1) / 2;
    Ok((checkpoints[middle], checkpoints[middle + 1]))
}

/// A restore point of `ledger`: `tail` entries (rounded up to the next signed tree head) past
/// the checkpoint in the middle of its history. Returns (checkpoint, point).
fn restore_point(ledger: &Ledger, tail: u64) -> anyhow::Result<(u64, u64)> {
    let (checkpoint, _) = middle_checkpoints(ledger)?;
    let point = ledger
        .reader()
        .tree_heads()?
        .into_iter()
        .map(|head| head.tree_size)
        .find(|size| *size >= checkpoint + tail)
        .ok_or_else(|| anyhow!("no signed tree head {tail} entries past the checkpoint"))?;
    Ok((checkpoint, point))
}

/// Half the distance between the middle checkpoints: a tail that ends before the next one.
fn checkpoint_gap(ledger: &Ledger) -> anyhow::Result<u64> {
    let (checkpoint, next) = middle_checkpoints(ledger)?;
    Ok((next - checkpoint) / 2)
}

pub(super) fn audit_suite(bench: &mut Bench<'_>) -> anyhow::Result<SuiteReport> {
    let repetitions = bench.repetitions();
    let long = &bench.histories()?.long;
    let events = long.len() as usize;

    // The bound: batch verification of the same entries on every core, nothing else.
    let entries: Vec<fabric_events::Entry> = long
        .entries(0..long.len())
        .collect::<Result<_, _>>()
        .context("could not read the bench ledger")?;
    let (verify_time, ()) = timed(repetitions, || {
        let mut cache = KeyCache::new(1 << 16);
        for chunk in entries.chunks(fabric_audit::audit::AUDIT_CHUNK_ENTRIES) {
            ensure!(
                verify_batch(chunk, &mut cache).is_empty(),
                "a bench signature failed"
            );
        }
        Ok(())
    })?;
    drop(entries);
    let bound = events_per_s(verify_time, events);
    let (_, audit) = timed(repetitions, || {
        let report = fabric_audit::audit::audit_ledger(
            &long.reader(),
            &long.ledger_key(),
            "bench".to_owned(),
            0,
            &mut |_, _| {},
        )?;
        ensure!(report.ok, "the bench audit failed: {:?}", report.failure);
        Ok(report)
    })?;
    let audit_eps = audit.events_per_s;
    let figures = vec![Figure::new(
        "audit",
        audit_eps,
        "events/s",
        (Against::Bound, bound),
        format!(
            "fabric audit (signatures, links, roots, tree heads, authority, states) vs. batch \
             verification alone of the same entries on every core ({} events/s); target >= \
             {TARGET_RATIO}: {}",
            super::format_number(bound),
            verdict(audit_eps >= TARGET_RATIO * bound)
        ),
    )];
    Ok(SuiteReport {
        suite: "audit",
        events,
        batch_events: fabric_audit::audit::AUDIT_CHUNK_ENTRIES,
        repetitions,
        adapter: None,
        notes: vec![format!(
            "history: a planetary run of {events} events, audited from genesis"
        )],
        figures,
    })
}

/// One restore: its time, the point, its tail and the checkpoint's snapshot size.
struct Restore {
    took: Duration,
    point: u64,
    tail: u64,
    snapshot_bytes: usize,
    /// Folding the history up to the same point from genesis, without a checkpoint.
    replay: Duration,
}

fn restore(ledger: &Ledger, tail: u64, repetitions: usize) -> anyhow::Result<Restore> {
    let (checkpoint, point) = restore_point(ledger, tail)?;
    let reader = ledger.reader();
    let key = ledger.ledger_key();
    let (took, restored) = timed(repetitions, || {
        Ok(fabric_actors::restore_to(&reader, &key, point)?)
    })?;
    ensure!(
        restored.report.checkpoint_tree_size == Some(checkpoint),
        "the bench restore did not start at its checkpoint"
    );
    let (replay, ()) = timed(repetitions, || {
        let mut state = fabric_projections::State::new();
        for entry in ledger.entries(0..point) {
            let entry = entry?;
            let _ = state.admit(&entry.author, &entry.event()?);
        }
        Ok(())
    })?;
    Ok(Restore {
        took,
        point,
        tail: point - checkpoint,
        snapshot_bytes: reader.snapshot(checkpoint)?.bytes.len(),
        replay,
    })
}

pub(super) fn restore_suite(bench: &mut Bench<'_>) -> anyhow::Result<SuiteReport> {
    let repetitions = bench.repetitions();
    let histories = bench.histories()?;
    let tail = checkpoint_gap(&histories.long)?.min(checkpoint_gap(&histories.short)?);
    let short = restore(&histories.short, tail, repetitions)?;
    let long = restore(&histories.long, tail, repetitions)?;
    let ms = |took: Duration| took.as_secs_f64() * 1e3;
    let ratio = ms(long.took) / ms(short.took).max(1e-9);
    let figures = vec![
        Figure::new(
            "restore, short history",
            ms(short.took),
            "ms",
            (Against::Baseline, ms(short.replay)),
            "checkpoint + tail replay vs. folding the same history from genesis",
        ),
        Figure::new(
            "restore, long history",
            ms(long.took),
            "ms",
            (Against::Baseline, ms(long.replay)),
            "the same tail after a longer history vs. folding it from genesis",
        ),
        Figure::new(
            "restore, long / short",
            ratio,
            "x",
            (Against::Target, RESTORE_RATIO_TARGET),
            format!(
                "restore time after the long history over the short one; target <= \
                 {RESTORE_RATIO_TARGET}: {}",
                verdict(ratio <= RESTORE_RATIO_TARGET)
            ),
        ),
    ];
    let describe = |name: &str, restore: &Restore| {
        format!(
            "{name} history: restored at entry {} (tail {}, snapshot {} bytes)",
            restore.point, restore.tail, restore.snapshot_bytes
        )
    };
    Ok(SuiteReport {
        suite: "restore",
        events: long.point as usize,
        batch_events: 0,
        repetitions,
        adapter: None,
        notes: vec![describe("short", &short), describe("long", &long)],
        figures,
    })
}
