//! Fabric's actors (actix): the ledger writer, one actor per shard, the routers, one actor per
//! node, the owner, telemetry, the checkpointer and the tick driver.
//!
//! Architecture invariant (for what lands here): actors act in ticks. The driver collects every
//! actor's proposed events for a tick, orders them by a stable key, and appends them to the
//! ledger as one batch; actors read state only from projections of appended events.
//!
//! This crate is empty until the planetary run lands: it has no API yet, so nothing here can
//! be mistaken for working orchestration.
#![deny(missing_docs)]
