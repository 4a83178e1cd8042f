//! Why a world file could not be used.

use std::path::PathBuf;

use thiserror::Error;

/// Why a world file could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    // The cause is already in the message: no `source`, so error chains do not repeat it.
    #[error("{}: could not read the world file: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The file was read but is not a valid world.
    #[error("{origin}:{line}: {field}: {message}")]
    Invalid {
        /// The file name, as given to [`crate::parse`] (`config/fabric.toml` for the embedded
        /// default world).
        origin: String,
        /// The 1-based line of the offending value, key or table header.
        line: usize,
        /// The field path, e.g. `shards.earth.queue_budget` or `nodes[2].latency_ms`.
        field: String,
        /// What is wrong, and where it helps, what would be right.
        message: String,
    },
}
