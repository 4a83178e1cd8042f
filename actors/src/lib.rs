//! Fabric's actors (actix): the ledger writer, one intake actor per shard, one router per
//! shard, one actor per node, the checkpointer, and the tick driver that runs them.
//!
//! - [`world`]: the world a run simulates (shards, nodes, workload, failures), from
//!   `fabric-config`.
//! - [`workload`]: arrivals, outages and outcomes as pure functions of the seed.
//! - [`actors`]: the actors and their messages.
//! - [`driver`]: [`driver::run`], the planetary run, and [`driver::resume`], which continues an
//!   interrupted one.
//! - [`restore`]: the state of a stored run from its newest valid checkpoint and its tail.
//! - [`gate`]: the sequencer's gate: each attempt admitted by the authority table, or
//!   replaced by a signed `Rejected` event.
//!
//! Architecture invariant: actors act in ticks. The driver collects every actor's proposed
//! events for a tick, orders them by a stable key, and appends them to the ledger as one
//! batch; actors read state only from projections of appended events. Wall-clock time is
//! measured for telemetry only and never reaches an event.
#![deny(missing_docs)]

pub mod actors;
pub mod driver;
pub mod gate;
pub mod restore;
pub mod serve;
pub mod workload;
pub use fabric_config::world;

use thiserror::Error;

pub use driver::{
    owner_command_attempt, resume, run, shard_samples, sim_ledger_key, sim_owner_key, Byzantine,
    RunOutcome, RunSpec, Sampler, ScriptedCommand, ShardSample, SimKeys, StopReason, TickProgress,
};
pub use restore::{load_checkpoint, restore, restore_to, Loaded, RestoreReport, Restored};

/// Why a run stopped.
#[derive(Debug, Error)]
pub enum RunError {
    /// The ledger refused or failed to store a batch.
    #[error("appending to the ledger failed: {0}")]
    Append(#[from] fabric_ledger::AppendError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] fabric_ledger::LedgerError),
    /// An event is over the size limit.
    #[error(transparent)]
    Oversize(#[from] fabric_events::codec::OversizeEvent),
    /// An appended event did not fit the projected state: a bug in an actor.
    #[error("event {index} of tick {tick} ({kind}) does not fit the state: {error}")]
    Apply {
        /// The tick.
        tick: u64,
        /// Its position in the tick's batch.
        index: usize,
        /// Its kind.
        kind: &'static str,
        /// Why.
        error: fabric_projections::ApplyError,
    },
    /// A GPU kernel failed.
    #[error("a GPU job failed: {0}")]
    Gpu(#[from] fabric_gpu_kernels::GpuError),
    /// An actor is gone.
    #[error("an actor stopped answering: {0}")]
    Mailbox(#[from] actix::MailboxError),
    /// An author tried to sign more events in one tick than nonces allow.
    #[error("an author signed more than 2^24 events at tick {tick}")]
    TooManyEvents {
        /// The tick.
        tick: u64,
    },
    /// A tick with nothing in it reached the writer.
    #[error("the driver handed the ledger writer an empty tick")]
    EmptyTick,
    /// The writer's ledger was already handed back.
    #[error("the ledger writer is closed")]
    LedgerClosed,
    /// A reader kept the state past its tick.
    #[error("an actor kept its view of the state past its tick")]
    StateShared,
    /// A resumed run's log cannot be restored.
    #[error("cannot restore the run: {0}")]
    Restore(String),
    /// A resumed tick's stored events are not what the run proposes for it.
    #[error(
        "the log does not continue this run: event {index} of tick {tick} is not what the run \
         proposes there (was it made with other parameters, or by another build?)"
    )]
    Diverged {
        /// The tick.
        tick: u64,
        /// The event's position in the tick.
        index: usize,
    },
    /// The events-per-append limit is out of range.
    #[error("appends of {given} events are not possible: between 1 and {max}")]
    AppendSize {
        /// The limit given.
        given: usize,
        /// The ledger's limit.
        max: usize,
    },
    /// A node of `fabric serve` was assigned a job whose submission the server never saw.
    #[error("job {job} runs on a node, but no submission of it is known to the server")]
    UnknownServedJob {
        /// The job.
        job: u64,
    },
    /// The run needs an empty ledger.
    #[error("the ledger already holds {size} events; a run starts from an empty ledger")]
    LedgerNotEmpty {
        /// Its size.
        size: u64,
    },
}

#[cfg(test)]
mod tests;
