//! `fabric slo-report`: `canary_slo_report.json` from a stored log (run or served), written
//! by [`fabric_reports::slo`] (which says how each figure is computed) and printed.

use std::path::PathBuf;

use anyhow::bail;
use fabric_reports::slo::{self, SloError, SloTargets};

/// Arguments of `fabric slo-report`.
#[derive(clap::Args, Debug)]
pub struct SloArgs {
    /// The data folder of a run or of `fabric serve`
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// Where the report goes
    #[arg(long, value_name = "FILE", default_value = "canary_slo_report.json")]
    out: PathBuf,
    /// Ticks per fill-rate window
    #[arg(long, default_value_t = 100)]
    window_ticks: u64,
    /// Target: fill rate p95 at least this
    #[arg(long, default_value_t = 0.8)]
    fill_rate_p95_min: f64,
    /// Target: RTT p95 at most this many milliseconds
    #[arg(long, default_value_t = 250.0)]
    rtt_ms_p95_max: f64,
    /// Target: provenance coverage at least this
    #[arg(long, default_value_t = 0.99)]
    provenance_coverage_min: f64,
    /// Target: policy decision latency p99 at most this many milliseconds
    #[arg(long, default_value_t = 1.0)]
    policy_decision_latency_ms_p99_max: f64,
}

/// `fabric slo-report`.
pub fn run(args: &SloArgs) -> anyhow::Result<()> {
    if args.window_ticks == 0 {
        bail!("--window-ticks must be at least 1");
    }
    let (run_file, ledger) = fabric_sim::datadir::open_run(&args.data)?;
    let targets = SloTargets {
        window_ticks: args.window_ticks,
        fill_rate_p95_min: args.fill_rate_p95_min,
        rtt_ms_p95_max: args.rtt_ms_p95_max,
        provenance_coverage_min: args.provenance_coverage_min,
        policy_decision_latency_ms_p99_max: args.policy_decision_latency_ms_p99_max,
    };
    let report = match slo::report(&run_file.label, &ledger.reader(), ledger.len(), &targets) {
        Ok(report) => report,
        // A figure that cannot be computed: say of which data folder.
        Err(err @ (SloError::NoFillRate | SloError::NoRtt | SloError::NoDecisions)) => {
            return Err(anyhow::Error::new(err).context(args.data.display().to_string()))
        }
        Err(err) => return Err(err.into()),
    };
    let text = serde_json::to_string_pretty(&report)?;
    fabric_reports::fs::write_atomically(&args.out, text.as_bytes())?;
    println!("{text}");
    Ok(())
}
