//! `fabric tail`: follows the log on NATS, verifying every event as it arrives.

use std::process::ExitCode;
use std::time::Duration;

use fabric_bus::{TailEvent, TailOptions, TailWarning, STREAM_SUBJECTS};

/// Arguments of `fabric tail`.
#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// The NATS server whose JetStream holds the log, e.g. nats://127.0.0.1:4222
    #[arg(long, value_name = "URL")]
    nats: String,
    /// Skip events before this seq
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    from: u64,
    /// Only subjects matching this pattern, e.g. 'fabric.events.mars.>' (gaps and links are
    /// then not checked: other events sit between)
    #[arg(long, value_name = "PATTERN", default_value = STREAM_SUBJECTS)]
    subject: String,
    /// Print each event's export line (JSON) instead of a table row
    #[arg(long)]
    json: bool,
    /// Stop after this many seconds without an event (default: follow forever)
    #[arg(long, value_name = "SECS")]
    idle_exit: Option<f64>,
}

/// Prints events until idle (or forever); exit status 1 when anything did not verify.
pub fn run(args: &TailArgs) -> anyhow::Result<ExitCode> {
    let idle_exit = match args.idle_exit {
        Some(secs) if !(secs.is_finite() && secs > 0.0) => {
            anyhow::bail!("--idle-exit must be a positive number of seconds, not {secs}")
        }
        secs => secs.map(Duration::from_secs_f64),
    };
    let options = TailOptions {
        url: args.nats.clone(),
        from: args.from,
        subject: args.subject.clone(),
        idle_exit,
    };
    if options.subject != STREAM_SUBJECTS {
        eprintln!(
            "note: only {} is followed: lines and signatures are checked, gaps and links are not",
            options.subject
        );
    }
    if !args.json {
        println!(
            "{:>10} {:>8}  {:<20} {:<24} {:<16}",
            "seq", "tick", "kind", "subject", "author"
        );
    }
    let report = fabric_bus::tail(
        &options,
        |event: &TailEvent| {
            if args.json {
                println!("{}", event.line);
            } else {
                println!(
                    "{:>10} {:>8}  {:<20} {:<24} {:<16}",
                    event.entry.seq,
                    event.event.header.tick,
                    event.event.kind().as_str(),
                    event.subject,
                    &event.entry.author.to_hex()[..16]
                );
            }
        },
        |warning: &TailWarning| eprintln!("WARNING: {warning}"),
    )?;
    eprintln!(
        "{} events verified, {} warnings",
        report.events, report.warnings
    );
    Ok(if report.warnings == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
