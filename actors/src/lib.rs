//! Fabric's actors (actix): the ledger writer, one router per shard, one actor per node, the
//! checkpointer and (in a simulation) one intake per shard; the sequencer's gate; restore;
//! and the driver of `fabric serve`.
//!
//! - [`world`]: the world's schema (shards, nodes, treaty terms), from `fabric-config`.
//! - [`actors`]: the actors and their messages.
//! - [`work`]: the narrow interfaces actors get their work through ([`work::NodeWork`],
//!   [`work::Intake`]); the simulation (`fabric-sim`) and `fabric serve` implement them.
//! - [`fleet`]: [`fleet::Actors`], the actor set of a fabric started with the keys its
//!   caller hands in ([`fleet::ActorKeys`]), and the stable order of a tick's proposals.
//! - [`genesis`]: tick 0 of every fabric: the `fabric_genesis` event and the owner
//!   commands that register the world.
//! - [`gate`]: the sequencer's gate: each attempt admitted by the authority table, or
//!   replaced by a signed `Rejected` event.
//! - [`restore`]: the state of a stored log from its newest valid checkpoint and its tail.
//! - [`serve`]: the driver of `fabric serve`: ticks on a wall-clock interval, jobs from
//!   clients.
//!
//! Architecture invariant: nothing here derives a key, draws from a seed or simulates a
//! failure. Keys, work and genesis come in through [`fleet::ActorKeys`], [`work`] and the
//! callers' specs, so the service never depends on the simulation.
//!
//! Actors act in ticks. A driver collects every actor's proposed events for a tick, orders
//! them by a stable key, and appends them to the ledger as one batch; actors read state only
//! from projections of appended events. Wall-clock time is measured for telemetry only and
//! never reaches an event.
#![deny(missing_docs)]

pub mod actors;
pub mod fleet;
pub mod gate;
pub mod genesis;
pub mod keyfiles;
pub mod restore;
pub mod serve;
pub mod submit;
pub mod work;
pub use fabric_config::world;

use thiserror::Error;

pub use fleet::{ActorKeys, Actors, TickProposals, ACTOR_THREADS};
pub use gate::owner_command_attempt;
pub use restore::{restore, restore_to, RestoreReport, Restored};
pub use work::{InputStore, Intake, JobResult, NodeWork, ServedJobs};

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
    /// The replicated log cannot hold the served log (docs/FORMAT.md §16): nothing more is
    /// acknowledged.
    #[error("the replicated log: {0}")]
    Replication(String),
    /// The ledger key in force has no secret among the ledger key and the staged keys.
    #[error(
        "the ledger key in force is {0}, and its secret is neither the ledger key nor a staged key"
    )]
    NoLedgerSecret(fabric_events::PublicKey),
    /// A key in force that the server signs with has no secret here (see
    /// [`ActorKeys::missing_secret`]).
    #[error(
        "{0} is in force and its secret is not among the keys given (give it with --staged-key)"
    )]
    MissingSecret(String),
    /// A reader kept the state past its tick.
    #[error("an actor kept its view of the state past its tick")]
    StateShared,
    /// A stored log does not replay (an entry does not decode or does not fit the state).
    #[error("cannot restore the run: {0}")]
    Restore(#[from] fabric_audit::ReplayError),
    /// The log's signed tree head at its size cannot be had.
    #[error("cannot restore the run: {0}")]
    RestoreHead(#[from] fabric_audit::CheckpointError),
    /// The entries after the checkpoint do not lead to the signed tree head's root.
    #[error(
        "cannot restore the run: the entries after the checkpoint give root {computed}, the \
         signed tree head at {size} says {signed}"
    )]
    RestoreRoot {
        /// The log's size.
        size: u64,
        /// The root the entries give.
        computed: fabric_events::Hash32,
        /// The signed tree head's root.
        signed: fabric_events::Hash32,
    },
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
    /// An empty ledger was to be served without the events that found the fabric.
    #[error("the ledger is empty and no genesis events were given to found the fabric")]
    NoGenesis,
    /// The run needs an empty ledger.
    #[error("the ledger already holds {size} events; a run starts from an empty ledger")]
    LedgerNotEmpty {
        /// Its size.
        size: u64,
    },
}
