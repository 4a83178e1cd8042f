//! `fabric report`: the mission report page of a stored run ([`fabric_reports::page`]) and
//! topology.mmd beside it.

use std::path::PathBuf;

use anyhow::Context;
use fabric_reports::page::PageSource;
use fabric_reports::RunInfo;
use serde_json::Value;

/// Arguments of `fabric report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The data folder of a run
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// Where the page goes (topology.mmd is written beside it)
    #[arg(long, value_name = "FILE.html")]
    out: PathBuf,
    /// The run's summary.json, for its wall-clock figures (default: reports/<label>/summary.json
    /// when it exists)
    #[arg(long, value_name = "FILE")]
    summary: Option<PathBuf>,
}

/// `fabric report`: replays the log of `--data` and writes the page.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let (run_file, ledger) = fabric_sim::datadir::open_run(&args.data)?;
    let summary_path = args.summary.clone().unwrap_or_else(|| {
        PathBuf::from("reports")
            .join(&run_file.label)
            .join("summary.json")
    });
    let summary: Option<Value> = match std::fs::read_to_string(&summary_path) {
        Ok(text) => Some(
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a run summary", summary_path.display()))?,
        ),
        Err(_) if args.summary.is_none() => None,
        Err(err) => {
            return Err(err).with_context(|| format!("could not read {}", summary_path.display()))
        }
    };
    let spec = run_file.spec();
    let source = PageSource {
        run: &RunInfo {
            label: &run_file.label,
            spec: &spec,
        },
        reader: &ledger.reader(),
        size: ledger.len(),
        root: ledger.root(),
        summary: summary.as_ref(),
    };
    let mermaid = fabric_reports::page::write_from_log(&args.out, &source)?;
    eprintln!("wrote {} and {}", args.out.display(), mermaid.display());
    Ok(())
}
