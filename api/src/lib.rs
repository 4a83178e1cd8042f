//! Everything a third party needs to speak Fabric's v0 HTTP API (docs/FORMAT.md §14) and to
//! write owner command files (docs/FORMAT.md §10.1), without the server.
//!
//! - [`wire`]: the API's constants, a signed event in JSON ([`WireSignedEvent`]), the error
//!   body every refusal carries, and the bodies of `GET /v0/health` and
//!   `POST /v0/owner/commands`.
//! - [`job`]: job requests: the body of `POST /v0/jobs` ([`JobRequest`]), how a job id is
//!   derived from a request id ([`job_id_of`]), the rules binding the envelope to the signed
//!   event ([`check_envelope`]), building and signing a request ([`JobSpec`]), and the bodies
//!   of the job routes.
//! - [`http_client`]: a small blocking HTTP/1.1 client over TCP or a Unix socket.
//! - [`client`]: the requests `fabric submit | status | result` make, with typed errors.
//! - [`genesis`]: `genesis.json` of the genesis ceremony, the signed genesis the owners
//!   approve the registrations after.
//! - [`owner`]: owner command files: parse a command from words, load, check, save, and turn
//!   a file into a run's script.
//!
//! The server (`fabric serve`) uses the same types, so what this crate writes is what the
//! server reads, byte for byte. A CPU job's output rule (the artifact a result serves and the
//! output hash its receipt names) is [`fabric_events::cpu_job`].
#![deny(missing_docs)]

pub mod client;
pub mod genesis;
pub mod http_client;
pub mod job;
pub mod owner;
pub mod wire;

pub use client::ClientError;
pub use http_client::{Client, Response, Target, TargetError};
pub use job::{check_envelope, job_id_of, EnvelopeError, JobRequest, JobSpec};
pub use owner::{CommandFile, FileCommand};
pub use wire::{ErrorBody, WireError, WireSignedEvent};
