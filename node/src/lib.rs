//! Fabric's node agent (`fabric node`): a worker process on its own machine that joins a served
//! fabric over NATS, runs only the work it has verified is in the log, each job in a sandboxed
//! child process, and answers with signed receipts (docs/FORMAT.md §15).
#![deny(missing_docs)]

pub mod agent;
pub mod executor;
pub mod protocol;
pub mod sandbox;
pub mod verify;
pub mod work;
