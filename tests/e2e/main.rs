//! End-to-end tests of Fabric: the crates together on a real sled folder, and the `fabric`
//! binary as a user runs it. One test binary for the whole suite, so one build serves all.

mod audit;
mod batch;
mod ceremony;
mod checkpoint;
mod cli;
mod covenant;
mod durability;
mod failover;
mod gpu;
mod hardening;
mod layout;
mod ledger;
mod nats;
mod nodes;
mod owner;
mod proof;
mod replication;
mod report;
mod restore;
mod rotation;
mod run;
mod sandbox;
mod serve;
mod serve_owner;
mod support;
