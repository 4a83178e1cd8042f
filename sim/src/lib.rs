//! Fabric's planetary simulation: everything that comes from a seed; and the data folder
//! that records a run, or a fabric whose keys its operator and owners hold, with its ceremony.
//!
//! - [`workload`]: arrivals, outages and outcomes as pure functions of the seed, and the
//!   generated nodes of `--nodes N`.
//! - [`keys`]: [`SimKeys`], every key of a simulated fabric derived from its seed, and the
//!   simulated genesis ([`keys::genesis`]).
//! - [`nodes`]: the simulation's implementations of the actors' interfaces
//!   ([`nodes::SimNodes`], [`nodes::SimIntake`]), byzantine nodes included.
//! - [`verifier`]: the ledger's verifier, re-executing sampled GPU receipts.
//! - [`driver`]: [`run`], the planetary run, and [`resume`], which continues an interrupted
//!   one.
//! - [`datadir`]: the data folder of a fabric, simulated or not: `run.json` ([`datadir::RunFile`],
//!   which records a run's [`RunSpec`]) and its ledger, opened with the keys it says.
//! - [`served`]: which fabric `fabric serve` serves, and with which keys: the operator's key
//!   files checked against the log's registrations, or a simulation's derived keys.
//! - [`ceremony`]: the genesis ceremony of a fabric whose keys its operator and owners hold
//!   (`fabric init`, `fabric init --commit`).
//!
//! Architecture invariant: the service (`fabric-server`, `fabric_actors::serve`) never
//! depends on this crate. A simulated key is derivable from public data (the seed is found
//! from any public key in seconds), so it must never guard a served fabric.
#![deny(missing_docs)]

pub mod ceremony;
pub mod datadir;
pub mod driver;
pub mod keys;
pub mod nodes;
pub mod served;
pub mod verifier;
pub mod workload;

pub use driver::{
    resume, run, RunOutcome, RunSpec, ScriptedCommand, StopReason, TickProgress, DRAIN_TICKS_MAX,
    SAMPLES_TARGET,
};
pub use keys::{genesis, sim_ledger_key, sim_owner_key, SimKeys};
pub use nodes::Byzantine;

#[cfg(test)]
mod tests;
