//! The node's job sandbox, with real processes: a sandboxed process reaches no listener on
//! 127.0.0.1 and cannot allocate past its memory limit; the executor (`fabric node-executor`)
//! runs real jobs to the CPU reference's bytes, survives its failures by starting a new child,
//! and has an empty root, no capabilities and a network of its own.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fabric_gpu_kernels::models::ModelJob;
use fabric_gpu_kernels::Engine;
use fabric_node::executor::{Executor, ExecutorJob, JobFailure};
use fabric_node::sandbox::{confine, SandboxLimits, SandboxMode};

/// SIGKILL's number on Linux.
const SIGKILL: i32 = 9;

fn fabric_program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fabric"))
}

/// Whether the suite runs with a GPU: the executor then runs its jobs on it.
fn gpu() -> bool {
    std::env::var("FABRIC_GPU").as_deref() == Ok("require")
}

fn run(command: &mut Command) -> Output {
    command.output().expect("the command starts")
}

/// Bytes of a seed (BLAKE3 XOF), as the model tests make inputs.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&[seed])
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Weights of `job` from a seed; a diffusion of many steps for `predict_next_state`.
fn weights(job: ModelJob, seed: u8) -> Vec<u8> {
    match job {
        ModelJob::PredictNextState => [3u32, 4, 64]
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .collect(),
        _ => bytes(job.weights_bytes(), seed),
    }
}

/// An executor of this build, sandboxed, with the default limits.
fn enforced_executor() -> Executor {
    Executor::start_program(
        &fabric_program(),
        SandboxLimits::default(),
        SandboxMode::Enforced,
        gpu(),
    )
    .expect("the executor starts")
}

/// Runs `job` in `executor` and checks its output against the CPU reference.
fn assert_runs_like_the_reference(executor: &mut Executor, job: ModelJob, seed: u8) {
    let (weights, input) = (weights(job, seed), bytes(job.input_bytes(), seed ^ 0x5a));
    let reference = job
        .execute(&weights, &input, Engine::Cpu)
        .expect("the CPU reference runs");
    let ran = executor
        .run(job, &weights, &input)
        .unwrap_or_else(|failure| panic!("{job:?} failed in the executor: {failure}"));
    assert_eq!(
        ran.output, reference,
        "{job:?} seed {seed} on {}",
        ran.adapter
    );
    assert_eq!(ran.adapter, executor.adapter());
}

/// A process started through the sandbox cannot connect to a listener on 127.0.0.1, and the
/// listener accepts nothing from it; the same command outside the sandbox connects.
#[test]
fn a_sandboxed_process_reaches_no_listener_on_loopback() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("its address").port();
    let connect = format!("exec 3<>/dev/tcp/127.0.0.1/{port}");

    let mut sandboxed = Command::new("bash");
    sandboxed.args(["-c", &connect]);
    confine(&mut sandboxed, SandboxMode::Enforced, None);
    let refused = run(&mut sandboxed);
    assert!(!refused.status.success(), "the sandboxed connect succeeded");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("/dev/tcp/127.0.0.1"), "{said}");
    match listener.accept() {
        Err(err) if err.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the listener accepted from the sandbox: {other:?}"),
    }

    let outside = run(Command::new("bash").args(["-c", &connect]));
    assert!(outside.status.success(), "{outside:?}");
    listener
        .accept()
        .expect("the connection from outside the sandbox waits in the backlog");
}

/// A sandboxed process cannot allocate past its memory limit; under it, it can.
#[test]
fn a_sandboxed_process_cannot_allocate_past_its_limit() {
    const LIMIT_BYTES: u64 = 256 << 20;
    let allocate = |bytes: u64| {
        let mut command = Command::new("/usr/bin/python3");
        command.args(["-c", &format!("b = bytearray({bytes}); b[-1] = 1")]);
        confine(&mut command, SandboxMode::Enforced, Some(LIMIT_BYTES));
        run(&mut command)
    };
    let under = allocate(32 << 20);
    assert!(under.status.success(), "{under:?}");
    let over = allocate(LIMIT_BYTES * 2);
    assert!(!over.status.success(), "{over:?}");
    let said = String::from_utf8_lossy(&over.stderr);
    assert!(said.contains("MemoryError"), "{said}");
}

/// Every job type runs in the executor to the CPU reference's bytes.
#[test]
fn the_executor_runs_real_jobs_to_the_reference_bytes() {
    let mut executor = enforced_executor();
    if gpu() {
        assert_ne!(executor.adapter(), "cpu-reference");
    }
    for seed in 1..=3 {
        for job in ModelJob::ALL {
            assert_runs_like_the_reference(&mut executor, job, seed);
        }
    }
    let short = executor
        .run(ModelJob::EncodeState, &[0; 1024], &[0; 1000])
        .expect_err("a short input");
    assert_eq!(
        short,
        JobFailure::Refused("the input of a encode_state job has 1000 bytes, not 1024".into())
    );
}

/// A batch goes down the pipe together and comes back in order, each job to the reference's
/// bytes; a job the executor refuses is refused alone, and the jobs after it still run.
#[test]
fn a_batch_runs_in_order_and_a_refusal_stays_its_own() {
    let mut executor = enforced_executor();
    let mut jobs = Vec::new();
    for seed in 1..=30u8 {
        let job = ModelJob::ALL[usize::from(seed) % ModelJob::ALL.len()];
        jobs.push(ExecutorJob {
            job,
            weights: weights(job, seed),
            input: bytes(job.input_bytes(), seed ^ 0x5a),
        });
    }
    jobs[7].input.truncate(10);
    let first_child = executor.child_id();
    let results = executor.run_batch(jobs.clone());
    assert_eq!(results.len(), jobs.len());
    for (at, (job, result)) in jobs.iter().zip(results).enumerate() {
        if at == 7 {
            let refused = result.expect_err("a short input");
            assert!(
                matches!(&refused, JobFailure::Refused(why) if why.contains("has 10 bytes")),
                "{refused}"
            );
            continue;
        }
        let reference = job
            .job
            .execute(&job.weights, &job.input, Engine::Cpu)
            .expect("the CPU reference runs");
        let ran = result.unwrap_or_else(|failure| panic!("job {at} failed: {failure}"));
        assert_eq!(ran.output, reference, "job {at} ({:?})", job.job);
    }
    assert_eq!(
        executor.child_id(),
        first_child,
        "no job cost the child its life"
    );
}

/// A job past its deadline, and an executor killed under the node, are named failures; the
/// same executor then runs the next job correctly, in a new child.
#[test]
fn the_executor_survives_its_failures() {
    let limits = SandboxLimits::default();
    let mut executor =
        Executor::start_program(&fabric_program(), limits, SandboxMode::Enforced, gpu())
            .expect("the executor starts");
    let job = ModelJob::PredictNextState;
    assert_runs_like_the_reference(&mut executor, job, 1);

    // No time at all: the output cannot be back by the deadline.
    let first_child = executor.child_id();
    executor.set_limits(SandboxLimits {
        wall_ms_per_job: 0,
        ..limits
    });
    let late = executor
        .run(job, &weights(job, 2), &bytes(job.input_bytes(), 2))
        .expect_err("no time to run");
    assert_eq!(late, JobFailure::Deadline { wall_ms: 0 });
    executor.set_limits(limits);
    assert_runs_like_the_reference(&mut executor, job, 2);
    let second_child = executor.child_id();
    assert_ne!(second_child, first_child, "the late child was replaced");
    assert!(!Path::new(&format!("/proc/{first_child}")).exists());

    // Killed as the kernel's OOM killer would.
    let kill = run(Command::new("kill").args(["-KILL", &second_child.to_string()]));
    assert!(kill.status.success(), "{kill:?}");
    let killed = executor
        .run(job, &weights(job, 3), &bytes(job.input_bytes(), 3))
        .expect_err("a dead executor");
    assert_eq!(
        killed,
        JobFailure::Killed {
            signal: SIGKILL,
            name: "SIGKILL"
        }
    );
    for job in ModelJob::ALL {
        assert_runs_like_the_reference(&mut executor, job, 3);
    }
    assert_ne!(executor.child_id(), second_child);
}

/// The executor's child has an empty directory as root (it can read no file, /etc/hostname
/// included), no capabilities, no_new_privs, a network namespace of its own and its limits.
#[test]
fn the_executor_can_open_no_file_and_reach_no_network() {
    let executor = enforced_executor();
    let proc_dir = PathBuf::from(format!("/proc/{}", executor.child_id()));
    let root = std::fs::read_link(proc_dir.join("root")).expect("its root");
    assert!(
        root.starts_with(std::env::temp_dir())
            && root
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("fabric-executor-")),
        "{}",
        root.display()
    );
    assert!(Path::new("/etc/hostname").exists());
    assert!(!proc_dir.join("root/etc/hostname").exists());
    let in_root = std::fs::read_dir(proc_dir.join("root"))
        .expect("its root is listable from outside")
        .count();
    assert_eq!(in_root, 0);

    let ours = std::fs::read_link("/proc/self/ns/net").expect("our network namespace");
    let its = std::fs::read_link(proc_dir.join("ns/net")).expect("its network namespace");
    assert_ne!(ours, its);

    let status = std::fs::read_to_string(proc_dir.join("status")).expect("its status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .to_owned()
    };
    assert_eq!(field("NoNewPrivs:"), "1");
    for capabilities in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:"] {
        assert_eq!(field(capabilities), "0000000000000000", "{capabilities}");
    }
    let limits = std::fs::read_to_string(proc_dir.join("limits")).expect("its limits");
    let limit = |name: &str| {
        limits
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {limits}"))
            .split_whitespace()
            .skip(name.split_whitespace().count())
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(limit("Max core file size"), "0 0");
    assert_eq!(limit("Max open files"), "256 256");
    assert_ne!(limit("Max address space"), "unlimited unlimited");
}

/// Under --no-sandbox the executor shares the node's network and root, and still runs jobs.
#[test]
fn without_the_sandbox_the_executor_shares_the_host() {
    let mut executor = Executor::start_program(
        &fabric_program(),
        SandboxLimits::default(),
        SandboxMode::Disabled,
        gpu(),
    )
    .expect("the executor starts");
    let proc_dir = PathBuf::from(format!("/proc/{}", executor.child_id()));
    assert_eq!(
        std::fs::read_link(proc_dir.join("root")).expect("its root"),
        PathBuf::from("/")
    );
    assert_eq!(
        std::fs::read_link(proc_dir.join("ns/net")).expect("its namespace"),
        std::fs::read_link("/proc/self/ns/net").expect("ours")
    );
    assert_runs_like_the_reference(&mut executor, ModelJob::ScoreSequence, 9);
}
