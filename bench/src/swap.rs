//! SWAP POINTS: what the bench still borrows from the `fabric` binary's own modules, in one
//! place, until those modules have library crates. At merge each item below is replaced by its
//! crate's counterpart and this file is deleted:
//!
//! 1. [`load_world`] -> `fabric_config::load` (it includes `src/config.rs` of the binary).
//! 2. [`audit_ledger`] and [`AUDIT_CHUNK_ENTRIES`] -> `fabric_audit::audit::audit_ledger` and
//!    `fabric_audit::audit::AUDIT_CHUNK_ENTRIES` (it includes `src/audit.rs` of the binary,
//!    with [`run`] standing in for the two items of `src/run.rs` that file names).
//! 3. [`nearest_rank`] and [`quantile_ns`] -> the shared stats module (copies of
//!    `src/run.rs`'s `nearest_rank` and `quantile_ns`, which are private to the binary).

use std::path::Path;

use fabric_actors::world::World;
use fabric_ledger::Ledger;

// The binary's world loader, compiled into the bench as it is (only `load` is used here).
#[allow(dead_code)]
#[path = "../../src/config.rs"]
mod config;

// The binary's audit, compiled into the bench as it is (only `audit_ledger` and
// `AUDIT_CHUNK_ENTRIES` are used here).
#[allow(dead_code)]
#[path = "../../src/audit.rs"]
mod audit;

/// SWAP POINT 1: reads and validates the world file at `path`, as `fabric run` does.
pub(crate) fn load_world(path: &Path) -> anyhow::Result<World> {
    Ok(config::load(path)?)
}

/// SWAP POINT 2: entries per chunk of `fabric audit`.
pub(crate) const AUDIT_CHUNK_ENTRIES: usize = audit::AUDIT_CHUNK_ENTRIES;

/// SWAP POINT 2: `fabric audit` of an open ledger from genesis: its events per second, or why
/// it failed.
pub(crate) fn audit_ledger(ledger: &Ledger) -> anyhow::Result<f64> {
    let report = audit::audit_ledger(ledger, "bench".to_owned(), 0)?;
    anyhow::ensure!(report.ok, "the bench audit failed: {:?}", report.failure);
    Ok(report.events_per_s)
}

/// SWAP POINT 2: what `src/audit.rs` names of the binary's `run` module. The bench audits
/// open ledgers only ([`audit_ledger`]), never a run's data folder, so neither is reached.
pub(crate) mod run {
    use std::convert::Infallible;
    use std::path::Path;

    use fabric_ledger::Ledger;

    /// A run's `run.json`: never made here.
    pub(crate) struct RunFile(Infallible);

    impl RunFile {
        pub(crate) fn spec(&self) -> fabric_sim::RunSpec {
            match self.0 {}
        }
    }

    /// Opening a run's data folder: not something the bench does.
    pub(crate) fn open_run(data: &Path) -> anyhow::Result<(RunFile, Ledger)> {
        anyhow::bail!("{}: the bench audits open ledgers only", data.display())
    }
}

/// SWAP POINT 3: the value under which a `quantile` of the sorted samples fall (nearest
/// rank); none without samples.
pub(crate) fn nearest_rank<T: Copy>(sorted: &[T], quantile: f64) -> Option<T> {
    let rank = ((quantile * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

/// SWAP POINT 3: [`nearest_rank`] of nanoseconds (or any u32 samples), 0 without samples.
pub(crate) fn quantile_ns(sorted: &[u32], quantile: f64) -> u64 {
    nearest_rank(sorted, quantile).map_or(0, u64::from)
}
