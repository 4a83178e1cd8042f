//! `fabric serve` as a library: the fabric as a long-running service.
//!
//! The serve driver (`fabric_actors::serve`) runs the actors and the ledger with a tick every
//! `tick_ms`; this crate puts the v0 HTTP API in front of it (docs/FORMAT.md §14) on TCP
//! and/or a Unix socket ([`service::serve`]), keeps the views the API reads up to date after
//! each durable tick (the job index, [`index`]; the artifacts; the [`metrics`]), and shuts
//! down gracefully on SIGINT/SIGTERM: the server stops accepting, follow streams and
//! half-read bodies end, the requests in flight get their answers, the driver appends one last
//! tick. Connections are capped (in all, with a reserve for `/v0/health`, and per source
//! address) and request bodies have a deadline ([`limits`]); TCP off loopback speaks TLS
//! ([`tls`]). With NATS, the [`nodes`] gateway serves the fabric's node agents: it hands their
//! heartbeats and receipts to the driver and publishes each tick's head and assignments.
//! A replicated fabric ([`Replication`], [`Role`], docs/FORMAT.md §16): the sequencer acknowledges a
//! tick only once the replicated log's quorum holds it; a [`follow`]er copies that log into
//! its own data folder, verifying it, and serves reads from the copy.
//!
//! Architecture invariant: this crate does not depend on the simulation (`fabric-sim`): the
//! keys and genesis of a served fabric come in through [`fabric_actors::serve::ServeSpec`]
//! (a test checks the crate graph).
#![deny(missing_docs)]

mod batch_readers;
mod connections;
pub mod error;
pub mod federation;
pub mod follow;
mod handlers;
pub mod index;
mod inputs;
pub mod limits;
pub mod metrics;
pub mod nodes;
mod records;
pub mod refusals;
mod replica;
mod requests;
pub mod service;
pub mod tls;
pub mod witnesses;

pub use error::ServerError;
pub use federation::{Federating, Peer as FederationPeer};
pub use nodes::NatsLogin;
pub use service::{serve, Replication, Role, Served, ServerConfig, INTAKE_CAPACITY};
pub use tls::TlsFiles;
pub use witnesses::{WitnessPeer, Witnessing};

/// The API's OpenAPI document (`GET /v0/openapi.json`).
pub const OPENAPI_JSON: &str = include_str!("openapi.json");
