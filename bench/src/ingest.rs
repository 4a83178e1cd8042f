//! Suite `ingest`: signed events appended per second through the ledger, with one group commit
//! (flush + fdatasync) per batch, against the bounds of suite `limits`: pre-signed events, and
//! the full pipeline that signs them too.

use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use fabric_events::{derive_signing_key, Event, SignedEvent, SigningKey};
use fabric_ledger::verify::{VerifiedBatch, Verifier};
use fabric_ledger::Ledger;

use super::{
    events_per_s, median_of, scratch_dir, sign_events, verdict, Against, Bench, Figure,
    SuiteReport, BENCH_SEED, TARGET_RATIO,
};

/// Where a pipeline's events come from.
#[derive(Clone, Copy)]
pub(super) enum Source<'a> {
    /// Signed already (by clients): the pipeline verifies and stores.
    Presigned(&'a [SignedEvent]),
    /// Signed by the pipeline's first stage, round robin by `authors`.
    Sign {
        plain: &'a [Event],
        authors: &'a [SigningKey],
    },
}

impl Source<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Source::Presigned(signed) => signed.len(),
            Source::Sign { plain, .. } => plain.len(),
        }
    }
}

/// Runs `source` through up to three stages on their own threads, at most one batch in flight
/// between each: signing (when the source is unsigned), `verify`, then `store` on the calling
/// thread. So batch n+2 is signed while n+1 is verified and n is stored. Returns the time from
/// the first event to the last store's return.
pub(super) fn pipeline<T: Send>(
    source: Source<'_>,
    batch: usize,
    mut verify: impl FnMut(Vec<SignedEvent>) -> anyhow::Result<T> + Send,
    mut store: impl FnMut(T) -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let (signed_tx, signed_rx) = sync_channel::<Vec<SignedEvent>>(1);
        let signer = scope.spawn(move || -> anyhow::Result<()> {
            match source {
                Source::Presigned(signed) => {
                    for chunk in signed.chunks(batch) {
                        if signed_tx.send(chunk.to_vec()).is_err() {
                            break; // a later stage stopped; its error is reported below
                        }
                    }
                }
                Source::Sign { plain, authors } => {
                    for (index, chunk) in plain.chunks(batch).enumerate() {
                        let signed = sign_events(chunk, index * batch, authors)?;
                        if signed_tx.send(signed).is_err() {
                            break;
                        }
                    }
                }
            }
            Ok(())
        });
        let (verified_tx, verified_rx) = sync_channel::<T>(1);
        let verifier = scope.spawn(move || -> anyhow::Result<()> {
            for signed in signed_rx {
                if verified_tx.send(verify(signed)?).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let stored = verified_rx.into_iter().try_for_each(&mut store);
        // A store error drops the receiver, which stops the stages before it.
        let signed = signer
            .join()
            .map_err(|_| anyhow!("the signing stage panicked"))?;
        let verified = verifier
            .join()
            .map_err(|_| anyhow!("the verifying stage panicked"))?;
        stored.and(signed).and(verified)
    })?;
    Ok(started.elapsed())
}

/// The ledger the bench appends to, in `dir`.
fn bench_ledger(dir: &Path) -> anyhow::Result<Ledger> {
    Ok(Ledger::open(
        dir,
        derive_signing_key(BENCH_SEED, "bench/ledger"),
    )?)
}

/// Fabric's ledger as a pipeline stage: the ledger's verifier, then `append_verified` (one
/// group commit per batch). Returns events appended per second.
pub(super) fn fabric_pipeline(dir: &Path, source: Source<'_>, batch: usize) -> anyhow::Result<f64> {
    let mut ledger = bench_ledger(dir)?;
    let mut verifier = Verifier::new();
    let took = pipeline(
        source,
        batch,
        |signed| Ok(verifier.verify(signed)?),
        |verified: VerifiedBatch| {
            ledger.append_verified(&verified)?;
            Ok(())
        },
    )?;
    ensure!(
        ledger.len() == source.len() as u64,
        "the bench ledger holds {} of {} events",
        ledger.len(),
        source.len()
    );
    Ok(events_per_s(took, source.len()))
}

/// `Ledger::append` of each batch in turn: verification, then the group commit.
fn time_append(dir: &Path, signed: &[SignedEvent], batch: usize) -> anyhow::Result<Duration> {
    let mut ledger = bench_ledger(dir)?;
    let started = Instant::now();
    for chunk in signed.chunks(batch) {
        ledger.append(chunk)?;
    }
    let elapsed = started.elapsed();
    ensure!(
        ledger.len() == signed.len() as u64,
        "the bench ledger lost events"
    );
    Ok(elapsed)
}

pub(super) fn suite(bench: &mut Bench<'_>) -> anyhow::Result<SuiteReport> {
    let (events, batch, repetitions) = (bench.events(), bench.args.batch, bench.repetitions());
    let scratch = scratch_dir(bench.args)?;
    let limits = bench.limits()?;
    let append = median_of(repetitions, |run| {
        time_append(
            &scratch.path().join(format!("append-{run}")),
            &limits.signed,
            batch,
        )
    })?;
    let appended = events_per_s(append, events);
    let rates = |name: &str, source: Source<'_>| -> anyhow::Result<f64> {
        let mut rates = (0..repetitions)
            .map(|run| {
                fabric_pipeline(&scratch.path().join(format!("{name}-{run}")), source, batch)
            })
            .collect::<anyhow::Result<Vec<f64>>>()?;
        rates.sort_by(f64::total_cmp);
        Ok(rates[rates.len() / 2])
    };
    let pipelined = rates("pipelined", Source::Presigned(&limits.signed))?;
    let signed_in_pipeline = rates(
        "signing",
        Source::Sign {
            plain: &limits.plain,
            authors: &limits.authors,
        },
    )?;

    let presigned_bound = limits.presigned_bound();
    let pipeline_bound = limits.pipeline_bound();
    let figures = vec![
        Figure::new(
            "append, pre-signed",
            appended,
            "events/s",
            (Against::Bound, presigned_bound),
            format!(
                "Ledger::append of each batch (batch verify, then store with flush + fdatasync) \
                 vs. the pre-signed bound of limits; target >= {TARGET_RATIO}: {}",
                verdict(appended >= TARGET_RATIO * presigned_bound)
            ),
        ),
        Figure::new(
            "append, pre-signed, pipelined",
            pipelined,
            "events/s",
            (Against::Bound, limits.presigned_work_bound()),
            "the ledger's verifier on its own thread feeding append_verified (batch n+1 \
             verified while n is stored) vs. all that work spread over every core",
        ),
        Figure::new(
            "append, signed in the pipeline",
            signed_in_pipeline,
            "events/s",
            (Against::Bound, pipeline_bound),
            format!(
                "sign (all cores) -> verify -> store, one batch in flight between stages, vs. \
                 the signed-pipeline bound of limits; target >= {TARGET_RATIO}: {}",
                verdict(signed_in_pipeline >= TARGET_RATIO * pipeline_bound)
            ),
        ),
    ];
    Ok(SuiteReport {
        suite: "ingest",
        events,
        batch_events: batch,
        repetitions,
        adapter: None,
        notes: Vec::new(),
        figures,
    })
}
