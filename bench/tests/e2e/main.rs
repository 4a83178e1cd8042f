//! End-to-end tests of `fabric-bench`: the program itself, and `fabric bench`, which runs it
//! from the `fabric` executable next to it (`cargo test --workspace` builds both).

mod bench;
mod cli;
mod support;
