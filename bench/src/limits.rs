//! Suite `limits`: what every signed event costs on this machine, measured now on one core and
//! on all cores, and the bounds that follow from those costs. The other suites compare with
//! these bounds, so they are measured once per `fabric bench` and shared.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::ensure;
use fabric_events::{Entry, Event, Hash32, SignedEvent, SigningKey};
use fabric_ledger::storage::{block_key, BlockWriter};
use fabric_ledger::verify::{verify_batch, KeyCache};
use rayon::prelude::*;

use super::{
    bench_authors, bench_event, median_of, per_event_us, scratch_dir, sign_events, Against, Bench,
    Figure, SuiteReport,
};

/// Events of the one-at-a-time measurements (sign, verify): enough for a stable mean.
const SINGLE_OPS_MAX: usize = 20_000;
/// Events stored one sled key each: the slow layout, measured on a prefix.
const PER_KEY_EVENTS_MAX: usize = 50_000;

/// A cost per operation, in microseconds, on one core and on all cores.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cost {
    pub one_core_us: f64,
    pub all_cores_us: f64,
}

impl Cost {
    fn measure(
        pool: &rayon::ThreadPool,
        ops: usize,
        mut work: impl FnMut() -> anyhow::Result<Duration> + Send,
    ) -> anyhow::Result<Self> {
        let one_core = pool.install(&mut work)?;
        let all_cores = work()?;
        Ok(Self {
            one_core_us: per_event_us(one_core, ops),
            all_cores_us: per_event_us(all_cores, ops),
        })
    }
}

/// The costs of this machine and the bench's events.
pub(super) struct Limits {
    pub cores: usize,
    /// The bench's intake events, unsigned (for pipelines that sign).
    pub plain: Vec<Event>,
    /// The same, signed round robin by the bench's authors.
    pub signed: Vec<SignedEvent>,
    pub authors: Vec<SigningKey>,
    pub signed_bytes_mean: f64,
    pub entry_bytes_mean: f64,
    pub sign: Cost,
    pub verify: Cost,
    pub batch_verify: Cost,
    pub blake3: Cost,
    pub sled_insert: Cost,
    /// Entries packed into blocks (the ledger's layout), one writer thread: per event.
    pub store_packed_us: f64,
}

impl Limits {
    pub(super) fn measure(bench: &Bench<'_>) -> anyhow::Result<Self> {
        let events = bench.events();
        let batch = bench.args.batch;
        let repetitions = bench.repetitions();
        let one_core = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
        let authors = bench_authors();
        let plain: Vec<Event> = (0..events as u64).map(bench_event).collect();
        let signed = sign_events(&plain, 0, &authors)?;
        let signed_bytes_mean =
            signed.iter().map(|e| e.signed.len()).sum::<usize>() as f64 / events as f64;

        let single = events.min(SINGLE_OPS_MAX);
        let sign = Cost::measure(&one_core, single, || {
            let started = Instant::now();
            let again = sign_events(&plain[..single], 0, &authors)?;
            ensure!(
                again[..] == signed[..single],
                "signing is not deterministic"
            );
            Ok(started.elapsed())
        })?;
        let verify = Cost::measure(&one_core, single, || {
            let started = Instant::now();
            signed[..single]
                .par_iter()
                .try_for_each(SignedEvent::verify)?;
            Ok(started.elapsed())
        })?;
        let batch_verify = Cost::measure(&one_core, events, || {
            median_of(repetitions, |_| time_batch_verify(&signed, batch))
        })?;

        let mut prev = Hash32::default();
        let entries: Vec<Vec<u8>> = signed
            .iter()
            .enumerate()
            .map(|(seq, event)| {
                let entry = Entry::new(seq as u64, prev, event.clone());
                prev = entry.hash();
                entry.encode()
            })
            .collect();
        let entry_bytes_mean = entries.iter().map(Vec::len).sum::<usize>() as f64 / events as f64;
        let blake3 = Cost::measure(&one_core, events, || {
            median_of(repetitions, |_| {
                let started = Instant::now();
                let hashes: Vec<Hash32> = entries
                    .par_iter()
                    .map(|entry| fabric_events::entry_hash(entry))
                    .collect();
                ensure!(hashes.len() == entries.len(), "lost a hash");
                Ok(started.elapsed())
            })
        })?;
        drop(entries);

        let scratch = scratch_dir(bench.args)?;
        let per_key = &signed[..events.min(PER_KEY_EVENTS_MAX)];
        let mut run = 0;
        let sled_insert = Cost::measure(&one_core, per_key.len(), || {
            run += 1;
            time_store_per_key(
                &scratch.path().join(format!("per-key-{run}")),
                per_key,
                batch,
            )
        })?;
        let store_packed = median_of(repetitions, |run| {
            time_store_packed(
                &scratch.path().join(format!("packed-{run}")),
                &signed,
                batch,
            )
        })?;

        Ok(Self {
            cores: rayon::current_num_threads(),
            plain,
            signed,
            authors,
            signed_bytes_mean,
            entry_bytes_mean,
            sign,
            verify,
            batch_verify,
            blake3,
            sled_insert,
            store_packed_us: per_event_us(store_packed, events),
        })
    }

    /// Appending pre-signed events, one stage after the other: batch verification on all
    /// cores, then the packed store.
    pub(super) fn presigned_bound(&self) -> f64 {
        1e6 / (self.batch_verify.all_cores_us + self.store_packed_us)
    }

    /// The same with no core ever idle: all the work spread over every core.
    pub(super) fn presigned_work_bound(&self) -> f64 {
        self.cores as f64 * 1e6 / (self.batch_verify.one_core_us + self.store_packed_us)
    }

    /// A fully signed pipeline: sign, batch verify, store, one after the other per event.
    pub(super) fn pipeline_bound(&self) -> f64 {
        1e6 / (self.sign.all_cores_us + self.batch_verify.all_cores_us + self.store_packed_us)
    }

    fn pipeline_work_bound(&self) -> f64 {
        self.cores as f64 * 1e6
            / (self.sign.one_core_us + self.batch_verify.one_core_us + self.store_packed_us)
    }

    /// An audit that only verifies signatures, in batches on all cores.
    pub(super) fn audit_bound(&self) -> f64 {
        1e6 / self.batch_verify.all_cores_us
    }
}

pub(super) fn suite(bench: &mut Bench<'_>) -> anyhow::Result<SuiteReport> {
    let (events, batch, repetitions) = (bench.events(), bench.args.batch, bench.repetitions());
    let limits = bench.limits()?;
    let cores = limits.cores as f64;
    let cost = |name: &str, cost: Cost, what: &str| {
        let (one, all) = (1e6 / cost.one_core_us, 1e6 / cost.all_cores_us);
        Figure::new(
            name,
            all,
            "ops/s",
            (Against::LinearScaling, cores * one),
            format!(
                "{what}; all cores vs. {cores} x one core ({} ops/s, {:.2} us each)",
                super::format_number(one),
                cost.one_core_us
            ),
        )
    };
    let per_key_rate = 1e6 / limits.sled_insert.all_cores_us;
    let figures =
        vec![
        cost(
            "ed25519 sign",
            limits.sign,
            &format!(
                "one signature of a {:.0}-byte event (FABRICv1 + canonical event)",
                limits.signed_bytes_mean
            ),
        ),
        cost(
            "ed25519 verify",
            limits.verify,
            "one signature checked alone (key decompressed, strict: weak keys refused)",
        ),
        cost(
            "ed25519 batch verify",
            limits.batch_verify,
            "per signature, batches of --batch with cached keys, strict decoding included",
        ),
        cost(
            "blake3 of an entry",
            limits.blake3,
            &format!(
                "the entry hash of a {:.0}-byte entry",
                limits.entry_bytes_mean
            ),
        ),
        cost(
            "sled insert, flush per batch",
            limits.sled_insert,
            "one sled key per event, one flush + fdatasync per batch; all cores = one inserting \
             thread per core",
        ),
        Figure::new(
            "store, packed blocks",
            1e6 / limits.store_packed_us,
            "events/s",
            (Against::Baseline, per_key_rate),
            "the ledger's layout (entries packed into blocks, one flush + fdatasync per batch, \
             one writer) vs. one sled key per event on all cores",
        ),
        Figure::new(
            "bound: signed pipeline",
            limits.pipeline_bound(),
            "events/s",
            (Against::LinearScaling, limits.pipeline_work_bound()),
            "1 / (sign + batch verify, all cores, + packed store) per event: what a fully \
             signed ledger can append here; vs. every cost spread perfectly over all cores",
        ),
        Figure::new(
            "bound: pre-signed append",
            limits.presigned_bound(),
            "events/s",
            (Against::LinearScaling, limits.presigned_work_bound()),
            "1 / (batch verify, all cores, + packed store) per event",
        ),
        Figure::new(
            "bound: verify-only audit",
            limits.audit_bound(),
            "events/s",
            (Against::LinearScaling, cores * 1e6 / limits.batch_verify.one_core_us),
            "1 / batch verify on all cores: an audit that checked nothing but signatures",
        ),
    ];
    Ok(SuiteReport {
        suite: "limits",
        events,
        batch_events: batch,
        repetitions,
        adapter: None,
        notes: Vec::new(),
        figures,
    })
}

/// Batch verification of `signed` in chunks of `batch` with a key cache, on the current pool.
pub(super) fn time_batch_verify(signed: &[SignedEvent], batch: usize) -> anyhow::Result<Duration> {
    let mut cache = KeyCache::new(1024);
    let started = Instant::now();
    for chunk in signed.chunks(batch) {
        let refusals = verify_batch(chunk, &mut cache);
        ensure!(refusals.is_empty(), "bench events failed verification");
    }
    Ok(started.elapsed())
}

/// `Db::flush` and then `fdatasync` of sled's data file: what acknowledging a batch costs.
pub(super) fn sync_sled(db: &sled::Db, data_file: &File) -> anyhow::Result<()> {
    db.flush()?;
    data_file.sync_data()?;
    Ok(())
}

/// The ledger's storage layout alone: entries packed into blocks, one group commit per batch.
fn time_store_packed(dir: &Path, signed: &[SignedEvent], batch: usize) -> anyhow::Result<Duration> {
    let db = fabric_ledger::sled_config(dir).open()?;
    let data_file = File::open(dir.join("db"))?;
    let started = Instant::now();
    let mut seq = 0u64;
    let mut prev = Hash32::default();
    for chunk in signed.chunks(batch) {
        let mut writer = BlockWriter::new();
        for event in chunk {
            prev = writer.push(seq, &prev, event);
            seq += 1;
        }
        let mut sled_batch = sled::Batch::default();
        for (first_seq, block) in writer.finish() {
            sled_batch.insert(&block_key(first_seq), block);
        }
        db.apply_batch(sled_batch)?;
        sync_sled(&db, &data_file)?;
    }
    Ok(started.elapsed())
}

/// One sled key per event, inserted by one thread per core of the current pool, one group
/// commit per batch.
fn time_store_per_key(
    dir: &Path,
    signed: &[SignedEvent],
    batch: usize,
) -> anyhow::Result<Duration> {
    let db = fabric_ledger::sled_config(dir).open()?;
    let data_file = File::open(dir.join("db"))?;
    let threads = rayon::current_num_threads();
    let started = Instant::now();
    for (index, chunk) in signed.chunks(batch).enumerate() {
        let first_seq = (index * batch) as u64;
        let share = chunk.len().div_ceil(threads);
        chunk.par_chunks(share.max(1)).enumerate().try_for_each(
            |(part, events)| -> anyhow::Result<()> {
                for (offset, event) in events.iter().enumerate() {
                    let seq = first_seq + (part * share + offset) as u64;
                    let mut value = Vec::with_capacity(96 + event.signed.len());
                    value.extend_from_slice(event.author.as_bytes());
                    value.extend_from_slice(event.signature.as_bytes());
                    value.extend_from_slice(&event.signed);
                    db.insert(seq.to_be_bytes(), value)?;
                }
                Ok(())
            },
        )?;
        sync_sled(&db, &data_file)?;
    }
    let elapsed = started.elapsed();
    ensure!(
        db.len() == signed.len(),
        "the per-key store lost events ({} of {})",
        db.len(),
        signed.len()
    );
    Ok(elapsed)
}
