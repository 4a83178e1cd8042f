//! Fabric's audit library: what an auditor links, alone, to verify a Fabric log from their own
//! program. It reads a stored log (a [`LedgerReader`](fabric_ledger::LedgerReader), opened
//! read-only with [`LedgerReader::open`](fabric_ledger::LedgerReader::open)) or its export
//! lines, and depends on nothing that can write a log: fabric-ledger comes without its
//! `writer` feature.
//!
//! - [`replay`]: [`Replay`], the one fold of the log. It reads a range of entries (from a
//!   reader, or fed one by one), checks each one's seq and chain link, decodes it, folds it into
//!   the projections with [`State::admit`](fabric_projections::State::admit) (the authority
//!   table) and keeps the Merkle frontier; [`Observer`]s see every event before and after its
//!   fold. It starts at genesis or at a checkpoint's state. [`Sampled`] samples the state at
//!   tick boundaries (the reports' telemetry).
//! - [`checkpoint`]: loading a stored checkpoint that verifies (snapshot, signature, roots).
//! - [`audit`]: the audit of a whole history (signatures, links, roots, checkpoints, tree
//!   heads, admissibility) of a ledger folder or an export file, and the re-execution of GPU
//!   receipts through inputs the caller regenerates ([`audit::Inputs`]).
//! - [`proof`]: inclusion and consistency proof documents bound to signed tree heads, built
//!   from a ledger and verified offline.
//! - [`export`]: the export lines of a range of the log (docs/FORMAT.md §5).
//!
//! Architecture invariant: every check here is a function of the log's bytes and the ledger
//! key; nothing is taken on trust from the storage beyond what a signature or a hash covers.
#![deny(missing_docs)]

pub mod audit;
pub mod bundle;
pub mod checkpoint;
pub mod export;
pub mod proof;
pub mod replay;

pub use audit::{AuditReport, Failure};
pub use checkpoint::{load_checkpoint, CheckpointError, Loaded};
pub use replay::{Observer, Replay, ReplayError, Sample, Sampled, Step};
