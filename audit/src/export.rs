//! Export lines (docs/FORMAT.md §5) of a range of a ledger: what `fabric export` writes, and a
//! run's `events.ndjson`.

use std::io::Write;
use std::ops::Range;

use fabric_events::{DecodeError, Entry, Hash32};
use fabric_ledger::{LedgerError, LedgerReader};
use rayon::prelude::*;
use thiserror::Error;

use crate::replay::ReplayError;

/// Entries turned into export lines per parallel step.
pub const EXPORT_CHUNK_ENTRIES: usize = 16_384;

/// Why writing export lines stopped.
#[derive(Debug, Error)]
pub enum ExportError {
    /// The ledger could not be read, or an entry failed its hash or chain check.
    #[error("could not read the ledger: {0}")]
    Read(#[from] LedgerError),
    /// An entry's event does not decode.
    #[error("entry {seq} does not decode: {source}")]
    Decode {
        /// The entry.
        seq: u64,
        /// Why.
        source: DecodeError,
    },
    /// The writer failed.
    #[error("could not write the export lines: {0}")]
    Write(#[from] std::io::Error),
    /// The replay fed with the entries stopped.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// Writes one export line per entry of `range`, in seq order, built on every core a chunk at
/// a time; `each` sees every entry with its hash in order on this thread (a [`Replay`]
/// (crate::Replay) fed as the lines are written, say). Returns the lines written.
pub fn write_lines(
    reader: &LedgerReader,
    range: Range<u64>,
    writer: &mut impl Write,
    mut each: impl FnMut(Hash32, &Entry) -> Result<(), ReplayError>,
) -> Result<u64, ExportError> {
    let mut entries = reader.entries(range);
    let mut written = 0;
    loop {
        let mut chunk: Vec<(Hash32, Entry)> = Vec::with_capacity(EXPORT_CHUNK_ENTRIES);
        while chunk.len() < EXPORT_CHUNK_ENTRIES {
            match entries.next_with_hash()? {
                Some(pair) => chunk.push(pair),
                None => break,
            }
        }
        if chunk.is_empty() {
            return Ok(written);
        }
        let lines: Vec<String> = chunk
            .par_iter()
            .map(|(_, entry)| {
                entry.export_line().map_err(|source| ExportError::Decode {
                    seq: entry.seq,
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        for (hash, entry) in &chunk {
            each(*hash, entry)?;
        }
        for line in lines {
            writer.write_all(line.as_bytes())?;
            writer.write_all(b"\n")?;
        }
        written += chunk.len() as u64;
    }
}
