//! Export lines (docs/FORMAT.md §5) from a ledger: `fabric export`, and the `events.ndjson` of
//! a run's reports.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context};
use fabric_events::Entry;
use fabric_ledger::LedgerReader;
use rayon::prelude::*;

/// Entries turned into export lines per parallel step.
const EXPORT_CHUNK_ENTRIES: usize = 16_384;

/// Arguments of `fabric export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The data folder of a run
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// Where the export lines go (replaced atomically)
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// First seq to export
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    from: u64,
    /// Seq to stop before (default: the end of the log)
    #[arg(long, value_name = "SEQ")]
    to: Option<u64>,
}

pub fn run(args: &ExportArgs) -> anyhow::Result<()> {
    let (_, ledger) = crate::run::open_run(&args.data)?;
    let size = ledger.len();
    let to = args.to.unwrap_or(size);
    ensure!(
        to <= size,
        "--to {to} is past the end of the log ({size} entries)"
    );
    ensure!(
        args.from <= to,
        "--from {} is after --to {to}: nothing to export",
        args.from
    );
    let lines = write_file(&args.out, |writer| {
        write_lines(&ledger.reader(), args.from..to, writer, |_| Ok(()))
    })?;
    eprintln!(
        "exported entries {}..{} ({lines} lines) to {}",
        args.from,
        to,
        args.out.display()
    );
    Ok(())
}

/// Writes `path` through a temporary file that is synced and renamed into place, so a reader
/// (or a crash) never sees half of it.
pub fn write_file<T>(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let file = File::create(&tmp).with_context(|| format!("could not write {}", tmp.display()))?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    let value = fill(&mut writer)?;
    let file = writer
        .into_inner()
        .map_err(|err| err.into_error())
        .with_context(|| format!("could not write {}", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("could not write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("could not write {}", path.display()))?;
    Ok(value)
}

/// Writes one export line per entry of `range`, in seq order, built on every core a chunk at
/// a time; `each` sees every entry in order on this thread. Returns the lines written.
pub fn write_lines(
    reader: &LedgerReader,
    range: Range<u64>,
    writer: &mut impl Write,
    mut each: impl FnMut(&Entry) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut entries = reader.entries(range);
    let mut written = 0;
    loop {
        let chunk: Vec<Entry> = entries
            .by_ref()
            .take(EXPORT_CHUNK_ENTRIES)
            .collect::<Result<_, _>>()
            .context("could not read the ledger")?;
        if chunk.is_empty() {
            return Ok(written);
        }
        let lines: Vec<String> = chunk
            .par_iter()
            .map(|entry| {
                entry
                    .export_line()
                    .with_context(|| format!("entry {} does not decode", entry.seq))
            })
            .collect::<anyhow::Result<_>>()?;
        for entry in &chunk {
            each(entry)?;
        }
        for line in lines {
            writer.write_all(line.as_bytes())?;
            writer.write_all(b"\n")?;
        }
        written += chunk.len() as u64;
    }
}
