//! The executor: a long-lived child process (`fabric node-executor`) that runs a node's jobs
//! in the sandbox, and the node's handle on it.
//!
//! The child opens its engine (per `FABRIC_GPU`), runs each job type once so that the driver
//! has compiled its pipelines and opened every file it needs, enters its empty root
//! ([`crate::sandbox::enter_empty_root`]) and says it is ready; from then on a job's data
//! arrive on its stdin and its output leaves on its stdout (docs/FORMAT.md §15.6, "the
//! executor pipe"). Each job is limited: its CPU time (`RLIMIT_CPU`, which the child sets
//! itself before the job to its CPU time so far plus the budget the job's frame names: no
//! read of `/proc` and no system call of the node's per job), its memory (`RLIMIT_AS`, set once at
//! ready to what the child then holds plus the job's headroom: a GPU driver maps far more
//! address space than any job needs, so a limit from the start would refuse the GPU) and its
//! wall-clock time (the node stops waiting and kills the child). A job that ends the child, or
//! overruns, is a failed job: the child is killed and a new one started, and the node goes on.
//!
//! The child is spawned, fed and killed by one thread of its own: the child's death signal
//! (`PR_SET_PDEATHSIG`) follows the thread that spawned it, so that thread lives as long as
//! the [`Executor`].

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use fabric_gpu_kernels::models::ModelJob;
use fabric_gpu_kernels::Engine;
use thiserror::Error;

use crate::sandbox::{self, EmptyRoot, SandboxLimits, SandboxMode};

/// The hidden subcommand that runs [`executor_main`].
pub const EXECUTOR_SUBCOMMAND: &str = "node-executor";
/// How long a new executor may take to open its engine and warm up, in milliseconds.
pub const EXECUTOR_START_MS_MAX: u64 = 120_000;
/// Longest error message an executor may send back, in bytes.
pub const EXECUTOR_MESSAGE_BYTES_MAX: u32 = 4_096;
/// Longest adapter name an executor may report, in bytes.
pub const EXECUTOR_ADAPTER_BYTES_MAX: u32 = 256;

/// Most jobs written down the pipe together.
pub const EXECUTOR_BATCH_JOBS_MAX: usize = 64;
/// How long the child may hold a finished job's reply while it runs the next frames already
/// read, so that a batch's replies leave in few writes, in microseconds.
const REPLY_HOLD_US_MAX: u64 = 1_000;
/// The child's buffers on its pipes, in bytes: a whole batch of frames in one read.
const PIPE_BUFFER_BYTES: usize = 1 << 16;

/// Frame tags of the executor pipe (FORMAT §15.6).
const READY_MAGIC: &[u8; 4] = b"FXR1";
const JOB_MAGIC: &[u8; 4] = b"FXJ2";
const REPLY_MAGIC: &[u8; 4] = b"FXO1";
const REPLY_OUTPUT: u8 = 0;
const REPLY_REFUSED: u8 = 1;

/// Exit statuses of the executor child.
const EXIT_PROTOCOL: u8 = 2;
const EXIT_ENGINE: u8 = 3;
const EXIT_SANDBOX: u8 = 4;

/// A job's output from the executor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorOutput {
    /// The output bytes (of the job type's size).
    pub output: Vec<u8>,
    /// The job's execution time, measured in the child around the kernel, in microseconds.
    pub execution_us: u64,
    /// The engine it ran on: the adapter's name, or `cpu-reference`.
    pub adapter: String,
}

/// Why a job has no output.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum JobFailure {
    /// The job's output was not back by its wall-clock deadline; the executor was killed.
    #[error("the job ran past its wall-clock deadline of {wall_ms} ms; its executor was killed")]
    Deadline {
        /// The deadline.
        wall_ms: u64,
    },
    /// The executor was killed by SIGXCPU: the job used up its CPU time.
    #[error("the job ran past its CPU time of {cpu_ms} ms (its executor was killed by SIGXCPU)")]
    CpuTime {
        /// The job's CPU budget.
        cpu_ms: u64,
    },
    /// The executor aborted, as the Rust runtime does on an allocation past `RLIMIT_AS`.
    #[error(
        "the job's executor aborted (SIGABRT): an allocation past its memory limit of \
         {memory_bytes} bytes above the executor's own"
    )]
    Memory {
        /// The job's memory headroom.
        memory_bytes: u64,
    },
    /// The executor was killed by another signal (the kernel's OOM killer, an operator).
    #[error("the job's executor was killed by signal {signal} ({name})")]
    Killed {
        /// The signal's number.
        signal: i32,
        /// The signal's name.
        name: &'static str,
    },
    /// The executor exited on its own during the job.
    #[error("the job's executor exited with status {code}")]
    Exited {
        /// Its exit status.
        code: i32,
    },
    /// The executor sent output of the wrong size.
    #[error("the executor sent {bytes} bytes of output for a {job} job, not {wanted}")]
    BadOutput {
        /// The job type.
        job: &'static str,
        /// Bytes it announced.
        bytes: u32,
        /// The job type's output size.
        wanted: usize,
    },
    /// The executor sent something that is not a frame of the pipe.
    #[error("the executor broke the pipe's framing: {0}")]
    Protocol(String),
    /// The job's kernel refused its weights or input (nothing was run).
    #[error("the job was refused: {0}")]
    Refused(String),
    /// No executor could be started to run the job.
    #[error("no executor could be started: {0}")]
    Start(String),
}

/// A job for the executor: its type, its model's weights and its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorJob {
    /// The job type.
    pub job: ModelJob,
    /// The model's weights (of the job type's size).
    pub weights: Vec<u8>,
    /// The job's input (of the job type's size).
    pub input: Vec<u8>,
}

/// What became of one job.
pub type JobResult = Result<ExecutorOutput, JobFailure>;

/// Called on the executor's thread with a batch's results, in the batch's order.
pub type BatchDone = Box<dyn FnOnce(Vec<JobResult>) + Send>;

/// The node's handle on its executor child. Jobs run one at a time, in batches: a batch's
/// frames go down the pipe together and their replies come back as they are ready.
#[derive(Debug)]
pub struct Executor {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
    child_id: Arc<AtomicU32>,
    adapter: String,
}

enum Request {
    Jobs {
        jobs: Vec<ExecutorJob>,
        done: BatchDone,
    },
    Limits(SandboxLimits),
}

impl Executor {
    /// Starts an executor: this program's `node-executor` subcommand, sandboxed under `mode`,
    /// on the GPU (`FABRIC_GPU=require` for the child) or on the CPU references.
    pub fn start(limits: SandboxLimits, mode: SandboxMode, gpu: bool) -> Result<Self, JobFailure> {
        let program = std::env::current_exe()
            .map_err(|err| JobFailure::Start(format!("cannot find this program: {err}")))?;
        Self::start_program(&program, limits, mode, gpu)
    }

    /// Starts an executor from `program` (a `fabric` executable) instead of this program.
    pub fn start_program(
        program: &Path,
        limits: SandboxLimits,
        mode: SandboxMode,
        gpu: bool,
    ) -> Result<Self, JobFailure> {
        let mut supervisor = Supervisor {
            program: program.to_path_buf(),
            limits,
            mode,
            gpu,
            running: None,
            child_id: Arc::new(AtomicU32::new(0)),
        };
        let child_id = Arc::clone(&supervisor.child_id);
        let (requests, received) = mpsc::channel::<Request>();
        let (started, start) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("fabric-executor".to_owned())
            .spawn(move || {
                let adapter = supervisor.restart().map(|()| supervisor.adapter());
                let ok = adapter.is_ok();
                // The caller waits for this answer; it is gone only if start() returned.
                let _ = started.send(adapter);
                if ok {
                    supervisor.serve(received);
                }
            })
            .map_err(|err| JobFailure::Start(format!("cannot start the executor thread: {err}")))?;
        let adapter = start
            .recv()
            .map_err(|_| JobFailure::Start("the executor thread ended".to_owned()))??;
        Ok(Self {
            requests: Some(requests),
            thread: Some(thread),
            child_id,
            adapter,
        })
    }

    /// Runs `job` with `weights` on `input` in the executor: its output, or why there is none.
    /// After any failure but a refusal, the child has been replaced by a new one.
    pub fn run(&mut self, job: ModelJob, weights: &[u8], input: &[u8]) -> JobResult {
        let one = ExecutorJob {
            job,
            weights: weights.to_vec(),
            input: input.to_vec(),
        };
        self.run_batch(vec![one])
            .pop()
            .unwrap_or_else(|| Err(thread_ended()))
    }

    /// Runs `jobs` in the executor, in order, and waits for their results.
    pub fn run_batch(&mut self, jobs: Vec<ExecutorJob>) -> Vec<JobResult> {
        let count = jobs.len();
        let (reply, answer) = mpsc::channel();
        self.submit(
            jobs,
            Box::new(move |results| {
                // The caller may have stopped waiting; the results are then nobody's.
                let _ = reply.send(results);
            }),
        );
        answer
            .recv()
            .unwrap_or_else(|_| vec![Err(thread_ended()); count])
    }

    /// Hands `jobs` to the executor's thread and returns at once; `done` is called on that
    /// thread with their results, in order (at once, with errors, if the thread has ended).
    pub fn submit(&self, jobs: Vec<ExecutorJob>, done: BatchDone) {
        let Some(requests) = &self.requests else {
            done(vec![Err(thread_ended()); jobs.len()]);
            return;
        };
        if let Err(mpsc::SendError(Request::Jobs { jobs, done })) =
            requests.send(Request::Jobs { jobs, done })
        {
            done(vec![Err(thread_ended()); jobs.len()]);
        }
    }

    /// Sets the limits of the jobs after this call. The CPU and wall-clock limits apply from
    /// the next job; the memory limit from the next executor started (after a failure).
    pub fn set_limits(&mut self, limits: SandboxLimits) {
        if let Some(requests) = &self.requests {
            // A thread that has ended answers the next job with an error.
            let _ = requests.send(Request::Limits(limits));
        }
    }

    /// The process id of the current executor child (0 while none runs).
    pub fn child_id(&self) -> u32 {
        self.child_id.load(Ordering::SeqCst)
    }

    /// The engine the executor reported when it started.
    pub fn adapter(&self) -> &str {
        &self.adapter
    }
}

/// The failure of a job handed to an executor whose thread has ended.
fn thread_ended() -> JobFailure {
    JobFailure::Start("the executor thread has ended".to_owned())
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Closing the channel ends the thread, which kills the child.
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The executor thread's state: the child it runs now.
struct Supervisor {
    program: PathBuf,
    limits: SandboxLimits,
    mode: SandboxMode,
    gpu: bool,
    running: Option<Running>,
    child_id: Arc<AtomicU32>,
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    adapter: String,
    // Dropped after the child: removed once nothing has it as root.
    _root: Option<EmptyRoot>,
}

/// Why reading from the child stopped.
enum ReadStop {
    Deadline,
    Closed,
    Io(io::Error),
}

impl Supervisor {
    fn serve(&mut self, requests: mpsc::Receiver<Request>) {
        for request in requests {
            match request {
                Request::Jobs { jobs, done } => done(self.run(&jobs)),
                Request::Limits(limits) => self.limits = limits,
            }
        }
        self.stop();
    }

    fn adapter(&self) -> String {
        self.running
            .as_ref()
            .map(|running| running.adapter.clone())
            .unwrap_or_default()
    }

    /// Runs `jobs` in order: a job whose weights or input are not its type's is refused here;
    /// the others go to the child, batch by batch. A job that costs the child its life fails,
    /// the child is replaced, and the jobs after it go to the new one.
    fn run(&mut self, jobs: &[ExecutorJob]) -> Vec<JobResult> {
        let mut results: Vec<Option<JobResult>> =
            jobs.iter().map(|job| refusal(job).map(Err)).collect();
        let mut pending: Vec<usize> = (0..jobs.len())
            .filter(|&at| results[at].is_none())
            .collect();
        while !pending.is_empty() {
            if self.running.is_none() {
                if let Err(failure) = self.restart() {
                    for at in pending.drain(..) {
                        results[at] = Some(Err(failure.clone()));
                    }
                    break;
                }
            }
            let batch: Vec<usize> = pending
                .iter()
                .copied()
                .take(EXECUTOR_BATCH_JOBS_MAX)
                .collect();
            let (answered, lost) = self.exchange(jobs, &batch);
            for (at, result) in pending.drain(..answered.len()).zip(answered) {
                results[at] = Some(result);
            }
            if lost {
                self.stop();
                // A new child for the next job; if it cannot start, the next job says so.
                if let Err(err) = self.restart() {
                    eprintln!("fabric node: the executor could not be restarted: {err}");
                }
            }
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| Err(JobFailure::Start("the job was not run".to_owned())))
            })
            .collect()
    }

    /// The jobs `batch` (indices into `jobs`) through the running child: their frames are
    /// written while the replies are read, each reply due `wall_ms_per_job` after the one
    /// before. Returns the results of the jobs answered, in order, and whether the child was
    /// lost (the last result is then its failure, and the jobs after it were not run).
    fn exchange(&mut self, jobs: &[ExecutorJob], batch: &[usize]) -> (Vec<JobResult>, bool) {
        let limits = self.limits;
        let Some(running) = self.running.as_mut() else {
            let failure = JobFailure::Start("no executor is running".to_owned());
            return (vec![Err(failure)], true);
        };
        let mut frames = Vec::new();
        for &at in batch {
            let job = &jobs[at];
            push_job_frame(&mut frames, job, limits.cpu_ms_per_job);
        }
        let mut answered = Vec::with_capacity(batch.len());
        let mut replies = Vec::new();
        let mut parsed = 0;
        let mut written = 0;
        let mut deadline = Instant::now() + Duration::from_millis(limits.wall_ms_per_job);
        while answered.len() < batch.len() {
            let job = jobs[batch[answered.len()]].job;
            match parse_reply(&replies[parsed..], job) {
                Ok(Some((reply, used))) => {
                    parsed += used;
                    answered.push(match reply {
                        Reply::Output {
                            output,
                            execution_us,
                        } => Ok(ExecutorOutput {
                            output,
                            execution_us,
                            adapter: running.adapter.clone(),
                        }),
                        Reply::Refused(message) => Err(JobFailure::Refused(message)),
                    });
                    deadline = Instant::now() + Duration::from_millis(limits.wall_ms_per_job);
                    continue;
                }
                Ok(None) => {}
                Err(failure) => {
                    answered.push(Err(failure));
                    return (answered, true);
                }
            }
            let pipe = pump(running, &frames, &mut written, &mut replies, deadline);
            let failure = match pipe {
                Ok(()) => continue,
                Err(ReadStop::Deadline) => JobFailure::Deadline {
                    wall_ms: limits.wall_ms_per_job,
                },
                Err(ReadStop::Closed) => died(&mut running.child, limits),
                Err(ReadStop::Io(err)) => {
                    JobFailure::Protocol(format!("the executor's pipe: {err}"))
                }
            };
            answered.push(Err(failure));
            return (answered, true);
        }
        (answered, false)
    }

    /// Starts a new child (the old one, if any, is stopped first) and waits for it to be ready.
    fn restart(&mut self) -> Result<(), JobFailure> {
        self.stop();
        let root = match self.mode {
            SandboxMode::Enforced => {
                Some(EmptyRoot::create().map_err(|err| JobFailure::Start(err.to_string()))?)
            }
            SandboxMode::Disabled => None,
        };
        let mut command = Command::new(&self.program);
        command.arg(EXECUTOR_SUBCOMMAND);
        if let Some(root) = &root {
            command.arg("--root").arg(root.path());
        }
        command
            .env("FABRIC_GPU", if self.gpu { "require" } else { "off" })
            // Few malloc arenas: each thread's arena reserves 64 MiB of address space.
            .env("MALLOC_ARENA_MAX", "2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        sandbox::confine(&mut command, self.mode, None);
        let mut child = command.spawn().map_err(|err| {
            JobFailure::Start(format!(
                "cannot start {} {EXECUTOR_SUBCOMMAND} sandboxed: {err}",
                self.program.display()
            ))
        })?;
        let (stdin, mut stdout) = match (child.stdin.take(), child.stdout.take()) {
            (Some(stdin), Some(stdout)) => (stdin, stdout),
            _ => {
                kill(&mut child);
                return Err(JobFailure::Start("the executor has no pipes".to_owned()));
            }
        };
        let ready = read_ready(&mut stdout).and_then(|adapter| {
            set_memory_limit(&child, self.limits.memory_bytes)
                .map_err(|err| format!("cannot set its memory limit: {err}"))?;
            set_nonblocking(&stdin).map_err(|err| format!("cannot set up its stdin: {err}"))?;
            Ok(adapter)
        });
        let adapter = match ready {
            Ok(adapter) => adapter,
            Err(detail) => {
                let status = kill(&mut child);
                return Err(JobFailure::Start(format!(
                    "the executor did not become ready ({detail}; {})",
                    describe(status)
                )));
            }
        };
        self.child_id.store(child.id(), Ordering::SeqCst);
        self.running = Some(Running {
            child,
            stdin,
            stdout,
            adapter,
            _root: root,
        });
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut running) = self.running.take() {
            kill(&mut running.child);
            self.child_id.store(0, Ordering::SeqCst);
        }
    }
}

/// Kills `child` (if it still runs) and reaps it.
fn kill(child: &mut Child) -> Option<ExitStatus> {
    // An error here means it has already exited: wait reaps it either way.
    let _ = child.kill();
    child.wait().ok()
}

/// What became of a child that closed its pipe during a job.
fn died(child: &mut Child, limits: SandboxLimits) -> JobFailure {
    let Some(status) = kill(child) else {
        return JobFailure::Protocol("the executor closed its pipe and cannot be reaped".into());
    };
    match (status.signal(), status.code()) {
        (Some(libc::SIGXCPU), _) => JobFailure::CpuTime {
            cpu_ms: limits.cpu_ms_per_job,
        },
        (Some(libc::SIGABRT), _) => JobFailure::Memory {
            memory_bytes: limits.memory_bytes,
        },
        (Some(signal), _) => JobFailure::Killed {
            signal,
            name: signal_name(signal),
        },
        (None, Some(code)) => JobFailure::Exited { code },
        (None, None) => JobFailure::Protocol(format!("the executor ended with {status}")),
    }
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(status) => format!("it ended with {status}"),
        None => "it could not be reaped".to_owned(),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "another signal",
    }
}

/// Makes writes to `stdin` return what the pipe takes instead of waiting for room.
fn set_nonblocking(stdin: &ChildStdin) -> io::Result<()> {
    let fd = stdin.as_raw_fd();
    // SAFETY: fcntl on a descriptor this process owns, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the child's address-space limit to what it holds now plus `headroom_bytes`.
fn set_memory_limit(child: &Child, headroom_bytes: u64) -> io::Result<()> {
    let bytes = address_space_bytes(child.id())?.saturating_add(headroom_bytes);
    prlimit(child.id(), libc::RLIMIT_AS, bytes, bytes)
}

fn prlimit(pid: u32, resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: `limit` is valid for the call; the old limit is not asked for (null).
    if unsafe { libc::prlimit(pid, resource, &limit, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A process's address space (VmSize of /proc/PID/status), in bytes.
fn address_space_bytes(pid: u32) -> io::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmSize:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other(format!("{path} has no VmSize")))
}

fn job_code(job: ModelJob) -> u8 {
    match job {
        ModelJob::EncodeState => 0,
        ModelJob::ScoreSequence => 1,
        ModelJob::PredictNextState => 2,
    }
}

fn job_of_code(code: u8) -> Option<ModelJob> {
    ModelJob::ALL.into_iter().find(|job| job_code(*job) == code)
}

/// Why `job` cannot go to the child: weights or an input not of its type.
fn refusal(job: &ExecutorJob) -> Option<JobFailure> {
    if let Err(err) = job.job.check_weights(&job.weights) {
        return Some(JobFailure::Refused(err.to_string()));
    }
    if job.input.len() != job.job.input_bytes() {
        return Some(JobFailure::Refused(format!(
            "the input of a {} job has {} bytes, not {}",
            job.job.name(),
            job.input.len(),
            job.job.input_bytes()
        )));
    }
    None
}

/// Appends `FXJ2 ‖ job u8 ‖ cpu_ms u32 LE ‖ weights_len u32 LE ‖ weights ‖ input_len u32 LE ‖
/// input` to `frames`.
fn push_job_frame(frames: &mut Vec<u8>, job: &ExecutorJob, cpu_ms: u64) {
    frames.extend_from_slice(JOB_MAGIC);
    frames.push(job_code(job.job));
    frames.extend_from_slice(&u32::try_from(cpu_ms).unwrap_or(u32::MAX).to_le_bytes());
    // Both fit: they have the job type's sizes, checked by `refusal`.
    frames.extend_from_slice(&(job.weights.len() as u32).to_le_bytes());
    frames.extend_from_slice(&job.weights);
    frames.extend_from_slice(&(job.input.len() as u32).to_le_bytes());
    frames.extend_from_slice(&job.input);
}

enum Reply {
    Output { output: Vec<u8>, execution_us: u64 },
    Refused(String),
}

enum ReplyError {
    Stop(ReadStop),
    Failure(JobFailure),
}

impl From<ReadStop> for ReplyError {
    fn from(stop: ReadStop) -> Self {
        ReplyError::Stop(stop)
    }
}

/// Parses one reply of a `job` from the front of `bytes`: the reply and the bytes it took,
/// None while it is not all there, or why it is not a reply. A reply is
/// `FXO1 ‖ 0 ‖ execution_us u64 LE ‖ output_len u32 LE ‖ output`, or
/// `FXO1 ‖ 1 ‖ message_len u32 LE ‖ message (UTF-8)`.
fn parse_reply(bytes: &[u8], job: ModelJob) -> Result<Option<(Reply, usize)>, JobFailure> {
    let protocol = JobFailure::Protocol;
    if bytes.len() < 5 {
        return Ok(None);
    }
    if &bytes[..4] != REPLY_MAGIC {
        return Err(protocol(format!("a reply starts {:02x?}", &bytes[..4])));
    }
    match bytes[4] {
        REPLY_OUTPUT => {
            let Some(fixed) = bytes.get(5..17) else {
                return Ok(None);
            };
            let execution_us = u64::from_le_bytes(word(&fixed[..8]));
            let len = u32::from_le_bytes(word(&fixed[8..]));
            if usize::try_from(len).ok() != Some(job.output_bytes()) {
                return Err(JobFailure::BadOutput {
                    job: job.name(),
                    bytes: len,
                    wanted: job.output_bytes(),
                });
            }
            let end = 17 + job.output_bytes();
            let Some(output) = bytes.get(17..end) else {
                return Ok(None);
            };
            let reply = Reply::Output {
                output: output.to_vec(),
                execution_us,
            };
            Ok(Some((reply, end)))
        }
        REPLY_REFUSED => {
            let Some(len) = bytes.get(5..9) else {
                return Ok(None);
            };
            let len = u32::from_le_bytes(word(len));
            if len > EXECUTOR_MESSAGE_BYTES_MAX {
                return Err(protocol(format!(
                    "a text of {len} bytes, over {EXECUTOR_MESSAGE_BYTES_MAX}"
                )));
            }
            let end = 9 + len as usize;
            let Some(text) = bytes.get(9..end) else {
                return Ok(None);
            };
            let message = String::from_utf8(text.to_vec())
                .map_err(|_| protocol("a text not UTF-8".to_owned()))?;
            Ok(Some((Reply::Refused(message), end)))
        }
        other => Err(protocol(format!("a reply of unknown status {other}"))),
    }
}

/// One round on the child's pipes: waits (until `deadline`) for its stdout to be readable or,
/// while some of `frames` is unwritten, its stdin writable; then writes what the pipe takes
/// and reads what it holds into `replies`.
fn pump(
    running: &mut Running,
    frames: &[u8],
    written: &mut usize,
    replies: &mut Vec<u8>,
    deadline: Instant,
) -> Result<(), ReadStop> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(ReadStop::Deadline);
    }
    let writing = *written < frames.len();
    let mut polls = [
        libc::pollfd {
            fd: running.stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: running.stdin.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        },
    ];
    let count = if writing { 2 } else { 1 };
    let timeout_ms = libc::c_int::try_from(remaining.as_millis().max(1)).unwrap_or(i32::MAX);
    // SAFETY: `polls` holds `count` valid pollfds for the duration of the call.
    let ready = unsafe { libc::poll(polls.as_mut_ptr(), count, timeout_ms) };
    if ready < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::Interrupted => Ok(()),
            _ => Err(ReadStop::Io(err)),
        };
    }
    if writing && polls[1].revents != 0 {
        // The child's stdin is non-blocking: this writes what the pipe has room for.
        match running.stdin.write(&frames[*written..]) {
            Ok(count) => *written += count,
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Err(ReadStop::Closed),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(err) => return Err(ReadStop::Io(err)),
        }
    }
    if polls[0].revents != 0 {
        let mut chunk = [0u8; 65_536];
        // poll said readable (or hung up): this read does not block.
        match running.stdout.read(&mut chunk) {
            Ok(0) => return Err(ReadStop::Closed),
            Ok(read) => replies.extend_from_slice(&chunk[..read]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(ReadStop::Io(err)),
        }
    }
    Ok(())
}

/// Reads the ready frame `FXR1 ‖ adapter_len u32 LE ‖ adapter (UTF-8)`.
fn read_ready(stdout: &mut ChildStdout) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_millis(EXECUTOR_START_MS_MAX);
    let stop = |stop: ReadStop| match stop {
        ReadStop::Deadline => format!("not ready within {EXECUTOR_START_MS_MAX} ms"),
        ReadStop::Closed => "it closed its pipe".to_owned(),
        ReadStop::Io(err) => format!("reading its pipe: {err}"),
    };
    let mut magic = [0u8; 4];
    read_exact_by(stdout, &mut magic, deadline).map_err(stop)?;
    if &magic != READY_MAGIC {
        return Err(format!("its first frame starts {magic:02x?}, not FXR1"));
    }
    read_text(stdout, EXECUTOR_ADAPTER_BYTES_MAX, deadline).map_err(|err| match err {
        ReplyError::Stop(reason) => stop(reason),
        ReplyError::Failure(failure) => failure.to_string(),
    })
}

/// Reads `len u32 LE ‖ UTF-8` of at most `max` bytes.
fn read_text(stdout: &mut ChildStdout, max: u32, deadline: Instant) -> Result<String, ReplyError> {
    let mut len = [0u8; 4];
    read_exact_by(stdout, &mut len, deadline)?;
    let len = u32::from_le_bytes(len);
    if len > max {
        return Err(ReplyError::Failure(JobFailure::Protocol(format!(
            "a text of {len} bytes, over {max}"
        ))));
    }
    let mut text = vec![0u8; len as usize];
    read_exact_by(stdout, &mut text, deadline)?;
    String::from_utf8(text)
        .map_err(|_| ReplyError::Failure(JobFailure::Protocol("a text not UTF-8".to_owned())))
}

fn word<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// Fills `buf` from `stdout`, or says why not by `deadline`.
fn read_exact_by(
    stdout: &mut ChildStdout,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), ReadStop> {
    let mut filled = 0;
    while filled < buf.len() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ReadStop::Deadline);
        }
        let mut poll = libc::pollfd {
            fd: stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout_ms = libc::c_int::try_from(remaining.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: `poll` is one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ReadStop::Io(err));
        }
        if ready == 0 {
            continue;
        }
        // poll said readable (or hung up): this read does not block.
        match stdout.read(&mut buf[filled..]) {
            Ok(0) => return Err(ReadStop::Closed),
            Ok(read) => filled += read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(ReadStop::Io(err)),
        }
    }
    Ok(())
}

/// The executor child (`fabric node-executor [--root DIR]`): opens the engine `FABRIC_GPU`
/// asks for, warms it up, enters `root` (when given) as its empty root, says it is ready, then
/// runs the jobs framed on its stdin until stdin closes. Its exit status says why it stopped:
/// 0 stdin closed, 2 a malformed frame, 3 no engine, 4 the sandbox refused.
pub fn executor_main(root: Option<&Path>) -> ExitCode {
    let engine = match Engine::from_env() {
        Ok(engine) => engine,
        Err(err) => {
            eprintln!("fabric node-executor: {err}");
            return ExitCode::from(EXIT_ENGINE);
        }
    };
    if let Err(err) = warm_up(engine) {
        eprintln!(
            "fabric node-executor: warming up on {}: {err}",
            engine.name()
        );
        return ExitCode::from(EXIT_ENGINE);
    }
    if let Some(root) = root {
        if let Err(err) = sandbox::enter_empty_root(root) {
            eprintln!("fabric node-executor: {err}");
            return ExitCode::from(EXIT_SANDBOX);
        }
    }
    let pipes = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|stdin| Ok((stdin, io::stdout().as_fd().try_clone_to_owned()?)));
    let (stdin, stdout) = match pipes {
        Ok(pipes) => pipes,
        Err(err) => {
            eprintln!("fabric node-executor: cannot take its pipes: {err}");
            return ExitCode::from(EXIT_PROTOCOL);
        }
    };
    let mut input = BufReader::with_capacity(PIPE_BUFFER_BYTES, File::from(stdin));
    let mut output = BufWriter::with_capacity(PIPE_BUFFER_BYTES, File::from(stdout));
    match serve_jobs(engine, &mut input, &mut output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fabric node-executor: {err}");
            ExitCode::from(EXIT_PROTOCOL)
        }
    }
}

/// Runs each job type once, so that the engine has compiled its pipelines and the driver has
/// opened what it opens lazily while files can still be opened.
fn warm_up(engine: Engine) -> Result<(), fabric_gpu_kernels::GpuError> {
    for job in ModelJob::ALL {
        let weights = match job {
            // alpha 0, shift 0, one step: the smallest diffusion there is.
            ModelJob::PredictNextState => {
                [0u32, 0, 1].iter().flat_map(|w| w.to_le_bytes()).collect()
            }
            _ => vec![0u8; job.weights_bytes()],
        };
        let input = vec![0u8; job.input_bytes()];
        job.execute(&weights, &input, engine)?;
    }
    Ok(())
}

/// The child's loop: the ready frame, then one reply per job frame until stdin ends. A reply
/// waits (at most [`REPLY_HOLD_US_MAX`]) while the frames read so far hold more jobs.
fn serve_jobs<R: Read>(
    engine: Engine,
    input: &mut BufReader<R>,
    output: &mut impl Write,
) -> io::Result<()> {
    let adapter = engine.name();
    let mut ready = READY_MAGIC.to_vec();
    ready.extend_from_slice(&(adapter.len() as u32).to_le_bytes());
    ready.extend_from_slice(adapter.as_bytes());
    output.write_all(&ready)?;
    output.flush()?;
    let mut replies = Vec::new();
    let mut held_since: Option<Instant> = None;
    while let Some(frame) = read_job(input)? {
        let reply = run_job(engine, &frame);
        replies.extend_from_slice(&reply);
        let held = *held_since.get_or_insert_with(Instant::now);
        if input.buffer().is_empty() || held.elapsed() >= Duration::from_micros(REPLY_HOLD_US_MAX) {
            output.write_all(&replies)?;
            output.flush()?;
            replies.clear();
            held_since = None;
        }
    }
    output.write_all(&replies)?;
    output.flush()
}

/// Runs one job frame under its CPU limit: its reply frame.
fn run_job(engine: Engine, frame: &JobFrame) -> Vec<u8> {
    let mut reply = REPLY_MAGIC.to_vec();
    let result = limit_cpu_time(frame.cpu_ms)
        .map_err(|err| format!("cannot set the job's CPU limit: {err}"))
        .and_then(|()| {
            let started = Instant::now();
            let out = frame
                .job
                .execute(&frame.weights, &frame.input, engine)
                .map_err(|err| err.to_string())?;
            Ok((out, started.elapsed()))
        });
    match result {
        Ok((out, elapsed)) => {
            let execution_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            reply.push(REPLY_OUTPUT);
            reply.extend_from_slice(&execution_us.to_le_bytes());
            reply.extend_from_slice(&(out.len() as u32).to_le_bytes());
            reply.extend_from_slice(&out);
        }
        Err(mut message) => {
            truncate_utf8(&mut message, EXECUTOR_MESSAGE_BYTES_MAX as usize);
            reply.push(REPLY_REFUSED);
            reply.extend_from_slice(&(message.len() as u32).to_le_bytes());
            reply.extend_from_slice(message.as_bytes());
        }
    }
    reply
}

/// Sets this process's soft `RLIMIT_CPU` to its CPU time so far plus `budget_ms`, rounded up
/// to a whole second (at most the hard limit): past it the kernel sends SIGXCPU, which ends
/// the process.
fn limit_cpu_time(budget_ms: u32) -> io::Result<()> {
    // SAFETY: rusage is plain data, filled by the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is valid for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let ms = |time: libc::timeval| {
        u64::try_from(time.tv_sec).unwrap_or(0) * 1_000
            + u64::try_from(time.tv_usec).unwrap_or(0) / 1_000
    };
    let used_ms = ms(usage.ru_utime) + ms(usage.ru_stime);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is valid for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_CPU, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    limit.rlim_cur = (used_ms + u64::from(budget_ms))
        .div_ceil(1_000)
        .min(limit.rlim_max);
    // SAFETY: `limit` is valid for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_CPU, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// A job as the executor reads it: its type, CPU budget, weights and input.
#[derive(Debug)]
struct JobFrame {
    job: ModelJob,
    cpu_ms: u32,
    weights: Vec<u8>,
    input: Vec<u8>,
}

/// One job frame, or None where stdin ends between frames.
fn read_job(input: &mut impl Read) -> io::Result<Option<JobFrame>> {
    let mut head = [0u8; 9];
    match input.read(&mut head[..1])? {
        0 => return Ok(None),
        _ => input.read_exact(&mut head[1..5])?,
    }
    let bad = |detail: String| io::Error::new(io::ErrorKind::InvalidData, detail);
    if &head[..4] != JOB_MAGIC {
        return Err(bad(format!("a job frame starts {:02x?}", &head[..4])));
    }
    let job = job_of_code(head[4]).ok_or_else(|| bad(format!("unknown job type {}", head[4])))?;
    input.read_exact(&mut head[5..9])?;
    let cpu_ms = u32::from_le_bytes(word(&head[5..9]));
    let weights = read_sized(input, job.weights_bytes(), "weights")?;
    let data = read_sized(input, job.input_bytes(), "input")?;
    Ok(Some(JobFrame {
        job,
        cpu_ms,
        weights,
        input: data,
    }))
}

/// `len u32 LE ‖ bytes`, where `len` must be `wanted`.
fn read_sized(input: &mut impl Read, wanted: usize, what: &str) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if usize::try_from(len).ok() != Some(wanted) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} of {len} bytes, not {wanted}"),
        ));
    }
    let mut bytes = vec![0u8; wanted];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The child's loop answers each frame in order and stops cleanly at the end of stdin.
    #[test]
    fn the_pipe_carries_jobs_and_their_outputs() {
        let job = ModelJob::PredictNextState;
        let weights: Vec<u8> = [1u32, 3, 8].iter().flat_map(|w| w.to_le_bytes()).collect();
        let input: Vec<u8> = (0..job.input_bytes()).map(|i| (i * 7) as u8).collect();
        let one = ExecutorJob {
            job,
            weights: weights.clone(),
            input: input.clone(),
        };
        let mut frames = Vec::new();
        push_job_frame(&mut frames, &one, 1_000);
        push_job_frame(&mut frames, &one, 1_000);
        let mut out = Vec::new();
        serve_jobs(
            Engine::Cpu,
            &mut BufReader::new(frames.as_slice()),
            &mut out,
        )
        .expect("serve");
        let expected = job.execute(&weights, &input, Engine::Cpu).expect("cpu");
        let adapter = b"cpu-reference";
        assert_eq!(&out[..4], READY_MAGIC);
        assert_eq!(&out[4..8], &(adapter.len() as u32).to_le_bytes());
        let mut rest = &out[8 + adapter.len()..];
        for _ in 0..2 {
            assert_eq!(&rest[..5], b"FXO1\0");
            assert_eq!(&rest[13..17], &(expected.len() as u32).to_le_bytes());
            assert_eq!(&rest[17..17 + expected.len()], expected.as_slice());
            rest = &rest[17 + expected.len()..];
        }
        assert!(rest.is_empty());
    }

    /// A reply is parsed whole or not at all, however the pipe cuts it; a reply that is not
    /// one is a failure.
    #[test]
    fn replies_are_parsed_across_reads() {
        let job = ModelJob::ScoreSequence;
        let mut stream = REPLY_MAGIC.to_vec();
        stream.push(REPLY_OUTPUT);
        stream.extend_from_slice(&42u64.to_le_bytes());
        stream.extend_from_slice(&(job.output_bytes() as u32).to_le_bytes());
        stream.extend((0..job.output_bytes()).map(|i| i as u8));
        let output_end = stream.len();
        stream.extend_from_slice(REPLY_MAGIC);
        stream.push(REPLY_REFUSED);
        stream.extend_from_slice(&2u32.to_le_bytes());
        stream.extend_from_slice(b"no");
        for cut in 0..output_end {
            assert!(parse_reply(&stream[..cut], job).is_ok_and(|reply| reply.is_none()));
        }
        let Ok(Some((
            Reply::Output {
                output,
                execution_us,
            },
            used,
        ))) = parse_reply(&stream, job)
        else {
            panic!("an output reply");
        };
        assert_eq!(
            (used, execution_us, output.len()),
            (output_end, 42, job.output_bytes())
        );
        let Ok(Some((Reply::Refused(message), _))) = parse_reply(&stream[used..], job) else {
            panic!("a refused reply");
        };
        assert_eq!(message, "no");
        let mut wrong = stream.clone();
        wrong[13] ^= 1;
        assert!(matches!(
            parse_reply(&wrong, job),
            Err(JobFailure::BadOutput { .. })
        ));
        assert!(matches!(
            parse_reply(b"FXO9\0", job),
            Err(JobFailure::Protocol(_))
        ));
    }

    /// A frame of the wrong size or type is a protocol error, not a job.
    #[test]
    fn malformed_frames_are_refused() {
        let job = ModelJob::EncodeState;
        let frame_of = |weights: usize| {
            let mut frame = Vec::new();
            let job = ExecutorJob {
                job,
                weights: vec![0; weights],
                input: vec![0; 1024],
            };
            push_job_frame(&mut frame, &job, 1_000);
            frame
        };
        let mut frame = frame_of(1024);
        frame[4] = 9;
        assert!(read_job(&mut frame.as_slice()).is_err());
        let short = frame_of(1000);
        let error = read_job(&mut short.as_slice()).expect_err("short weights");
        assert!(
            error
                .to_string()
                .contains("weights of 1000 bytes, not 1024"),
            "{error}"
        );
        assert!(read_job(&mut &b""[..]).expect("end").is_none());
    }
}
