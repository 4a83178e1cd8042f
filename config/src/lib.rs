//! Fabric's world: the schema of what a run simulates ([`world`]: shards, nodes, workload,
//! failure schedule, owners), its validation, and the default world, `config/fabric.toml`,
//! embedded in the build ([`DEFAULT_WORLD_TOML`]) so that a binary runs anywhere without its
//! source tree.
//!
//! Reading happens in two steps. First serde reads the TOML into `Raw*` mirrors of the world
//! types whose fields keep their byte spans ([`toml::Spanned`]) and whose numbers are signed
//! (`i64`), so that a negative number gets its own message rather than a type error. Then a
//! checker checks every value and every cross-reference (regions, spillover targets, skills)
//! and builds the plain [`World`] that the actors use.
//!
//! API boundary: every problem in a file is a [`ConfigError::Invalid`], whose message names
//! the file, the 1-based line and the field path (`shards.earth.queue_budget`,
//! `nodes[2].latency_ms`, `workload.kinds[0].skills[1]`; array indices count from 0), so a
//! user can go straight to the line. The embedded world is named by its origin,
//! `config/fabric.toml` ([`DEFAULT_WORLD_ORIGIN`]). A [`World`] returned by [`parse`],
//! [`load`], [`load_file`] or [`default_world`] satisfies every rule; nothing downstream needs
//! to check it again.
//!
//! Layout of a world file: `[shards.<name>]` tables (with a `[shards.<name>.treaty]`
//! sub-table) in the order their shard actors are numbered, `[[nodes]]`, `[workload]` with
//! `[[workload.kinds]]`, `[failures]`, an optional `[checkpoints]`, an optional `[owners]` and
//! an optional `[verification]`.
#![deny(missing_docs)]

mod check;
mod error;
mod locate;
mod raw;
pub mod world;

use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use toml::de::DeTable;

pub use error::ConfigError;
pub use world::World;

/// Ticks between checkpoints when the file has no `[checkpoints]` table.
pub const CHECKPOINT_INTERVAL_TICKS_DEFAULT: u32 = 50;
/// Most owners a fabric has.
pub const OWNERS_MAX: u32 = 64;

/// The default world: `config/fabric.toml` of the source tree, embedded in the build.
pub const DEFAULT_WORLD_TOML: &str = include_str!("../fabric.toml");
/// The name the embedded default world goes by in messages and in `run.json`: the file it
/// was embedded from.
pub const DEFAULT_WORLD_ORIGIN: &str = "config/fabric.toml";

/// The largest world file read; a real one is a few kilobytes, so anything near this is a
/// wrong path (a ledger, a log), not a world.
const FILE_SIZE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// The world of the file at `path`, or without one the embedded default world.
pub fn load(path: Option<&Path>) -> Result<World, ConfigError> {
    match path {
        Some(path) => load_file(path),
        None => default_world(),
    }
}

/// The embedded default world ([`DEFAULT_WORLD_TOML`]); messages name it
/// `config/fabric.toml`.
pub fn default_world() -> Result<World, ConfigError> {
    parse(DEFAULT_WORLD_TOML, DEFAULT_WORLD_ORIGIN)
}

/// What messages and `run.json` call the world of [`load`]`(path)`: the path, or
/// `config/fabric.toml` for the embedded default world.
pub fn origin(path: Option<&Path>) -> &Path {
    path.unwrap_or(Path::new(DEFAULT_WORLD_ORIGIN))
}

/// Reads and validates the world file at `path`; messages name it as given.
pub fn load_file(path: &Path) -> Result<World, ConfigError> {
    let read_error = |error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut text = String::new();
    // Read one byte past the limit to tell "exactly at the limit" from "over it".
    file.take(FILE_SIZE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > FILE_SIZE_BYTES_MAX {
        return Err(read_error(std::io::Error::other(format!(
            "larger than {FILE_SIZE_BYTES_MAX} bytes; is this really a world file?"
        ))));
    }
    parse(&text, &path.display().to_string())
}

/// Parses and validates a world from TOML `text`; `origin` is the file name used in messages.
pub fn parse(text: &str, origin: &str) -> Result<World, ConfigError> {
    let checker = check::Checker { text, origin };
    // Parse first, then deserialize: a syntax error and a schema error need their field
    // paths found differently (see `Checker::syntax_error`).
    let document = DeTable::parse(text).map_err(|error| checker.syntax_error(&error))?;
    let raw = raw::RawWorld::deserialize(toml::de::Deserializer::from(document))
        .map_err(|error| checker.schema_error(&error))?;
    let world = checker.world(raw)?;
    // What the actors rely on, checked once more on the way out.
    debug_assert!(!world.shards.is_empty() && !world.nodes.is_empty());
    debug_assert!(world.nodes.iter().all(|n| n.max_concurrency <= n.capacity));
    Ok(world)
}

#[cfg(test)]
mod tests;
