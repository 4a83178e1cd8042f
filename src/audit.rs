//! `fabric audit`: the arguments, the printing, and the wiring of fabric-audit's audit to a
//! run's data folder (its ledger, and for `--reexecute` the workload that regenerates GPU
//! inputs from the run's seed and the model jobs on the CPU references; for `--gpu` the
//! BLAKE3 kernel on the GPU adapter).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use fabric_audit::audit::{
    audit_export, audit_ledger, gpu_checks, AuditReport, CallerError, EntryHasher, Failure,
    GpuChecks, Inputs, ModelRunner,
};
use fabric_events::{Hash32, JobType};
use fabric_gpu_kernels::jobs::{output_hash, JobInput};
use fabric_gpu_kernels::models::ModelJob;
use fabric_gpu_kernels::Engine;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Arguments of `fabric audit`.
#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// The data folder of a run
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// Audit an export file (`fabric export`, a run's events.ndjson) instead of a data folder
    #[arg(long, value_name = "FILE")]
    export: Option<PathBuf>,
    /// Start at the newest checkpoint at or before SEQ that verifies, instead of genesis
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    from: u64,
    /// Print the result as one JSON object on stdout
    #[arg(long)]
    json: bool,
    /// Also re-run GPU receipts (and attestation mismatches) on the kernels' CPU references
    /// and compare their output hashes (data folders only; a registered model's job runs on
    /// its input from the ledger folder's artifacts)
    #[arg(long)]
    reexecute: bool,
    /// With --reexecute: the share (0 to 1) of GPU jobs to re-run, chosen by job id
    #[arg(
        long,
        value_name = "FRACTION",
        default_value_t = 1.0,
        requires = "reexecute"
    )]
    sample: f64,
    /// Also hash every entry with the BLAKE3 kernel on the GPU adapter and compare with the
    /// chain (data folders only; FABRIC_GPU picks the adapter)
    #[arg(long)]
    gpu: bool,
}

pub fn run(args: &AuditArgs) -> anyhow::Result<std::process::ExitCode> {
    let report = match &args.export {
        Some(path) => {
            let progress = Progress::new();
            let report = audit_export(path, &mut |done, all| progress.show(done, all));
            progress.finish();
            report?
        }
        None => audit_data(args)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    let summary = format!(
        "{} events verified from seq {} in {:.1} s ({:.0} events/s); {} checkpoints, {} snapshots, {} signed tree heads\nroot        {}\nstate hash  {}",
        report.events_verified,
        report.first_seq,
        report.elapsed_ms as f64 / 1e3,
        report.events_per_s,
        report.checkpoints_verified,
        report.snapshots_verified,
        report.tree_heads_verified,
        report.merkle_root,
        report.state_hash
    );
    let mut text = summary;
    if let Some(origin) = &report.key_origin {
        text.push_str(&format!("\nkeys        {origin}"));
    }
    if report.reexecuted > 0 {
        text.push_str(&format!(
            "\nre-executed {} GPU jobs on the CPU references",
            report.reexecuted
        ));
    }
    if let Some((hashed, adapter)) = &report.gpu_hashed {
        text.push_str(&format!(
            "\nhashed {hashed} entries with the BLAKE3 kernel on {adapter}"
        ));
    }
    for note in &report.notes {
        text.push_str(&format!("\nnote: {note}"));
    }
    match &report.failure {
        None => text.push_str(&format!("\naudit passed: {}", report.source)),
        Some(failure) => text.push_str(&format!(
            "\naudit FAILED at {}: {} ({})",
            failure
                .seq
                .map_or_else(|| "open".to_owned(), |seq| format!("seq {seq}")),
            failure.what,
            failure.detail
        )),
    }
    if args.json || report.failure.is_some() {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    Ok(if report.ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

fn audit_data(args: &AuditArgs) -> anyhow::Result<AuditReport> {
    let source = args.data.display().to_string();
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.sample),
        "--sample {} is not a share between 0 and 1",
        args.sample
    );
    let (run_file, ledger) = match fabric_sim::datadir::open_run(&args.data) {
        Ok(opened) => opened,
        Err(err) => {
            return Ok(AuditReport::failed(
                source,
                Failure {
                    seq: None,
                    what: "storage",
                    detail: format!("{err:#}"),
                },
            ))
        }
    };
    let reader = ledger.reader();
    let progress = Progress::new();
    let report = audit_ledger(
        &reader,
        &ledger.ledger_key(),
        source,
        args.from,
        &mut |done, all| progress.show(done, all),
    );
    progress.finish();
    let mut report = report?;
    if report.ok && (args.reexecute || args.gpu) {
        let started = Instant::now();
        if let Err(failure) = gpu(&reader, ledger.len(), &run_file, args, &mut report) {
            report.ok = false;
            report.failure = Some(failure);
        }
        report.elapsed_ms += started.elapsed().as_millis() as u64;
    }
    Ok(report)
}

/// The GPU checks of an audit that passed: `--reexecute` through the run's workload, `--gpu`
/// with the BLAKE3 kernel on the adapter FABRIC_GPU picks.
fn gpu(
    reader: &fabric_ledger::LedgerReader,
    size: u64,
    run_file: &fabric_sim::datadir::RunFile,
    args: &AuditArgs,
    report: &mut AuditReport,
) -> Result<(), Failure> {
    let spec = run_file.spec();
    let workload = WorkloadInputs(fabric_sim::workload::Workload::new(
        &spec.world,
        spec.seed,
        spec.jobs,
    ));
    let engine = if args.gpu {
        Some(Engine::from_env().map_err(|err| Failure {
            seq: None,
            what: "gpu",
            detail: err.to_string(),
        })?)
    } else {
        None
    };
    let hasher = engine.map(Kernel);
    let checks = GpuChecks {
        reexecute: args.reexecute.then_some(&workload),
        sample: args.sample,
        hasher: hasher.as_ref().map(|kernel| kernel as &dyn EntryHasher),
        models: Some(&CpuModels),
    };
    gpu_checks(reader, size, &checks, report)
}

/// GPU inputs regenerated from a simulated run's seed, re-run on the CPU references.
struct WorkloadInputs(fabric_sim::workload::Workload);

impl Inputs for WorkloadInputs {
    type Input = JobInput;

    fn input(&self, job: u64) -> Option<JobInput> {
        self.0.job_with_input(job, 0).1
    }

    fn input_hash(&self, input: &JobInput) -> Hash32 {
        Hash32(input.hash())
    }

    fn output_hash(&self, input: &JobInput) -> Result<Hash32, fabric_audit::audit::CallerError> {
        Ok(Hash32(output_hash(&input.execute(Engine::Cpu)?)))
    }
}

/// Model jobs on the kernels' CPU references.
struct CpuModels;

impl ModelRunner for CpuModels {
    fn output(
        &self,
        job_type: JobType,
        weights: &[u8],
        input: &[u8],
    ) -> Result<Vec<u8>, CallerError> {
        let job = ModelJob::from_name(job_type.name())
            .ok_or_else(|| format!("no kernel runs the job type `{job_type}`"))?;
        Ok(job.execute(weights, input, Engine::Cpu)?)
    }
}

/// The BLAKE3 kernel on an adapter.
struct Kernel(Engine);

impl EntryHasher for Kernel {
    fn name(&self) -> String {
        self.0.name()
    }

    fn hash_batch(
        &self,
        messages: &[&[u8]],
    ) -> Result<Vec<[u8; 32]>, fabric_audit::audit::CallerError> {
        Ok(fabric_gpu_kernels::blake3_batch::hash_batch(
            self.0, messages,
        )?)
    }
}

/// The audit's progress bar on a terminal (hidden otherwise).
struct Progress(ProgressBar);

impl Progress {
    fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(ProgressBar::with_draw_target(
                None,
                ProgressDrawTarget::hidden(),
            ));
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} events verified ({per_sec})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Self(bar)
    }

    fn show(&self, verified: u64, expected: u64) {
        self.0.set_length(expected);
        self.0.set_position(verified);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
