//! `fabric export`: fabric-audit's export lines (docs/FORMAT.md §5) of a run's ledger into a
//! file.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::ensure;
use fabric_audit::export::write_lines;

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
    let (_, ledger) = fabric_sim::datadir::open_run(&args.data)?;
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
        Ok(write_lines(
            &ledger.reader(),
            args.from..to,
            writer,
            |_, _| Ok(()),
        )?)
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
/// (or a crash) never sees half of it ([`fabric_reports::fs::write_with`]).
pub fn write_file<T>(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    fabric_reports::fs::write_with(path, fill)
}
