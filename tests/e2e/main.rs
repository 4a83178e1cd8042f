//! End-to-end tests of Fabric: the crates together on a real sled folder, and the `fabric`
//! binary as a user runs it. One test binary for the whole suite, so one build serves all.

mod audit;
mod bench;
mod cli;
mod durability;
mod gpu;
// The client `fabric submit` uses: a small HTTP/1.1 client over TCP and Unix sockets.
#[allow(dead_code)]
#[path = "../../src/http_client.rs"]
mod http_client;
mod ledger;
mod nats;
mod owner;
mod proof;
mod report;
mod restore;
mod run;
mod serve;
mod support;
