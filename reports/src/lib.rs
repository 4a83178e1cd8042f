//! Fabric's reports: everything that turns a log (and, for a run, its outcome) into the files a
//! person or a program reads afterwards, linkable without the `fabric` binary.
//!
//! - [`run`]: the reports of a simulated run, from one replay of its log: `summary.json`
//!   ([`mod@summary`]), `events.ndjson`, `shards.json`, `owner-script.json`,
//!   `owner-commands-executed.json` ([`executed`]), `report.html` and `topology.mmd`
//!   ([`page`]); and the table `fabric run` prints.
//! - [`page`]: the mission report page (inline SVG charts, no fetch of any kind) and the
//!   Mermaid topology, from a run's outcome or from a stored log alone.
//! - [`slo`]: `canary_slo_report.json` of a stored log (fill rate, RTT, provenance coverage,
//!   policy decision latency, each against its target).
//! - [`samples`]: the per-shard telemetry rows of `shards.json`.
//! - [`stats`]: the one quantile rule (nearest rank) every report uses.
//! - [`fs`]: the one atomic file write (temporary file in the same folder, synced, renamed).
//!
//! Every figure is a function of the log and the run's parameters, except the ones that say
//! they are wall-clock (`wall_ms`, throughputs, router decision timings, restore times).
#![deny(missing_docs)]

pub mod executed;
/// The one atomic file write, from `fabric-events` (shared with the command files of
/// `fabric-api`).
pub use fabric_events::fs;
pub mod page;
pub mod run;
pub mod samples;
pub mod slo;
pub mod stats;
pub mod summary;

use fabric_sim::RunSpec;
use thiserror::Error;

pub use executed::ExecutedCommands;
pub use fs::{write_atomically, write_with, WriteError};
pub use page::{Chronicle, Headline};
pub use run::write_reports;
pub use summary::summary;

/// The run a report is about: its label and what it ran.
#[derive(Clone, Copy)]
pub struct RunInfo<'a> {
    /// The run's name (its default report folder).
    pub label: &'a str,
    /// The world (with its generated nodes), seed, jobs, owner script and byzantine nodes.
    pub spec: &'a RunSpec,
}

/// Why a report could not be written.
#[derive(Debug, Error)]
pub enum ReportError {
    /// A report file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A report folder could not be created.
    #[error("could not create the report folder {}", path.display())]
    CreateDir {
        /// The folder.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The log could not be read or replayed.
    #[error("could not replay the log")]
    Replay(#[from] fabric_audit::ReplayError),
    /// The log could not be read or written as export lines.
    #[error(transparent)]
    Export(#[from] fabric_audit::export::ExportError),
    /// The log's replay does not end in the run's own state.
    #[error("the log replays to state {replayed}, but the run ended in state {run}")]
    StateMismatch {
        /// The replay's state hash.
        replayed: String,
        /// The run's state hash.
        run: String,
    },
    /// A report could not be turned into JSON.
    #[error("could not encode a report as JSON")]
    Json(#[from] serde_json::Error),
}
