//! The job sandbox: what a node's job process may not do, and the host checks that say whether
//! this host lets the node enforce it.
//!
//! A sandboxed process (see [`confine`]) is started
//! - in a network namespace of its own, which has no interface but a downed loopback: it can
//!   reach no address, 127.0.0.1 included. Where the host refuses a network namespace to this
//!   user, a user namespace is made with it (the process is root only inside it, mapped to the
//!   node's own uid and gid);
//! - with `no_new_privs` (no set-uid or file capability can give it more than the node has),
//!   killed when the node dies (`PR_SET_PDEATHSIG`), no core dumps, few open files, and an
//!   address-space limit (`RLIMIT_AS`) where one is given.
//!
//! The executor then takes one more step itself, once its GPU is open: [`enter_empty_root`]
//! makes an empty private directory its root and drops every capability, so that it can open
//! no file at all. [`probe`] checks at node start that the host allows each of these steps.
//!
//! Everything done between `fork` and `exec` ([`Confinement::enter`]) is plain system calls
//! on memory prepared before the fork: a forked child of a threaded program may not allocate.

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// Default memory a job may use: its executor's address-space headroom, in bytes.
pub const JOB_MEMORY_BYTES_DEFAULT: u64 = 512 << 20;
/// Default CPU time a job may use, in milliseconds.
pub const JOB_CPU_MS_DEFAULT: u64 = 10_000;
/// Default wall-clock time a job may take, in milliseconds, from its frame sent to its output
/// read back.
pub const JOB_WALL_MS_DEFAULT: u64 = 30_000;
/// Open files a sandboxed process may hold (`RLIMIT_NOFILE`): its pipes and the GPU driver's
/// device files, no more.
pub const SANDBOX_OPEN_FILES_MAX: u64 = 256;

/// What one job may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Address space a job may add to its executor, in bytes (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// CPU time a job may use, in milliseconds (`RLIMIT_CPU`, whole seconds: rounded up).
    pub cpu_ms_per_job: u64,
    /// Wall-clock time a job may take, in milliseconds.
    pub wall_ms_per_job: u64,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            memory_bytes: JOB_MEMORY_BYTES_DEFAULT,
            cpu_ms_per_job: JOB_CPU_MS_DEFAULT,
            wall_ms_per_job: JOB_WALL_MS_DEFAULT,
        }
    }
}

/// Whether jobs run in the sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxMode {
    /// Network namespace, `no_new_privs`, limits, empty root, no capabilities.
    Enforced,
    /// `--no-sandbox`: the job process shares the node's network and file system; it keeps
    /// `no_new_privs`, the death signal and the limits, which need no privilege.
    Disabled,
}

/// One step of entering the sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    /// `unshare(CLONE_NEWNET)`, or `unshare(CLONE_NEWUSER | CLONE_NEWNET)` and its id maps.
    Network = 1,
    /// `prctl(PR_SET_NO_NEW_PRIVS)`.
    NoNewPrivs = 2,
    /// `prctl(PR_SET_PDEATHSIG, SIGKILL)`.
    DeathSignal = 3,
    /// `setrlimit` of `RLIMIT_CORE`, `RLIMIT_NOFILE` and `RLIMIT_AS`.
    Limits = 4,
    /// `chroot` into an empty directory and `chdir("/")`.
    EmptyRoot = 5,
    /// Dropping every capability (bounding set and `capset`).
    DropCapabilities = 6,
}

impl Step {
    const ALL: [Step; 6] = [
        Step::Network,
        Step::NoNewPrivs,
        Step::DeathSignal,
        Step::Limits,
        Step::EmptyRoot,
        Step::DropCapabilities,
    ];

    fn from_code(code: u8) -> Option<Step> {
        Self::ALL.into_iter().find(|step| *step as u8 == code)
    }

    /// What the step does, as an error names it.
    pub fn doing(self) -> &'static str {
        match self {
            Step::Network => "give a job process a network namespace of its own",
            Step::NoNewPrivs => "set no_new_privs on a job process",
            Step::DeathSignal => "have a job process killed when the node dies",
            Step::Limits => "limit a job process's memory, open files and core dumps",
            Step::EmptyRoot => "chroot a job process into an empty directory",
            Step::DropCapabilities => "drop a job process's capabilities",
        }
    }

    /// What the host must allow for the step.
    pub fn host_must_allow(self) -> &'static str {
        match self {
            Step::Network | Step::EmptyRoot => {
                "run the node as root (CAP_SYS_ADMIN and CAP_SYS_CHROOT), or allow unprivileged \
                 user namespaces (sysctl kernel.unprivileged_userns_clone=1 and \
                 user.max_user_namespaces > 0; no seccomp profile or AppArmor rule that denies \
                 unshare, as container runtimes often have)"
            }
            Step::NoNewPrivs | Step::DeathSignal => "allow prctl (a seccomp profile denies it)",
            Step::Limits => "allow setrlimit (a seccomp profile denies it)",
            Step::DropCapabilities => "allow capset and PR_CAPBSET_DROP",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.doing())
    }
}

/// Why the sandbox cannot be had.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// The host refused a step.
    #[error(
        "this host does not let the node {step}: {source}. The host must {}; or start the node \
         with --no-sandbox, which runs jobs with the node's network and files",
        .step.host_must_allow()
    )]
    HostRefuses {
        /// The refused step.
        step: Step,
        /// The system call's error.
        source: io::Error,
    },
    /// A file or process operation of the sandbox failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The probe's process ended in a way the probe does not know.
    #[error("the sandbox probe process ended unexpectedly: {0}")]
    Probe(String),
}

/// What a process does to itself between `fork` and `exec` to enter the sandbox. Everything
/// it needs is prepared here, before the fork, so that [`Confinement::enter`] allocates
/// nothing.
struct Confinement {
    network: bool,
    address_space_bytes: Option<u64>,
    parent_pid: libc::pid_t,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

const SETGROUPS_PATH: &std::ffi::CStr = c"/proc/self/setgroups";
const UID_MAP_PATH: &std::ffi::CStr = c"/proc/self/uid_map";
const GID_MAP_PATH: &std::ffi::CStr = c"/proc/self/gid_map";

impl Confinement {
    fn new(mode: SandboxMode, address_space_bytes: Option<u64>) -> Self {
        // SAFETY: getuid, getgid and getpid have no preconditions and cannot fail.
        let (uid, gid, pid) = unsafe { (libc::getuid(), libc::getgid(), libc::getpid()) };
        Self {
            network: mode == SandboxMode::Enforced,
            address_space_bytes,
            parent_pid: pid,
            // Root inside the new user namespace is the node's own user outside it.
            uid_map: format!("0 {uid} 1").into_bytes(),
            gid_map: format!("0 {gid} 1").into_bytes(),
        }
    }

    /// Enters the sandbox: async-signal-safe (system calls only, no allocation).
    fn enter(&self) -> Result<(), (Step, i32)> {
        if self.network {
            self.enter_network_namespace()
                .map_err(|errno| (Step::Network, errno))?;
        }
        // SAFETY: prctl with integer arguments only.
        check(
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
            Step::NoNewPrivs,
        )?;
        // SAFETY: as above.
        check(
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) },
            Step::DeathSignal,
        )?;
        // The node may have died before the death signal was set: then nobody would kill this.
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != self.parent_pid {
            return Err((Step::DeathSignal, libc::ESRCH));
        }
        set_limit(libc::RLIMIT_CORE, 0)?;
        set_limit(libc::RLIMIT_NOFILE, SANDBOX_OPEN_FILES_MAX)?;
        if let Some(bytes) = self.address_space_bytes {
            set_limit(libc::RLIMIT_AS, bytes)?;
        }
        Ok(())
    }

    fn enter_network_namespace(&self) -> Result<(), i32> {
        // SAFETY: unshare takes flags only; the child is single-threaded after fork, as a new
        // user namespace requires.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
            return Ok(());
        }
        // Without CAP_SYS_ADMIN: a user namespace gives it, inside that namespace only.
        // SAFETY: as above.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } != 0 {
            return Err(errno());
        }
        write_proc_file(SETGROUPS_PATH, b"deny")?;
        write_proc_file(UID_MAP_PATH, &self.uid_map)?;
        write_proc_file(GID_MAP_PATH, &self.gid_map)
    }
}

/// Makes `command` start sandboxed under `mode`: see the module's documentation. With
/// `address_space_bytes`, its address space is limited from its start; the executor instead
/// sets it once its GPU is open.
pub fn confine(command: &mut Command, mode: SandboxMode, address_space_bytes: Option<u64>) {
    let confinement = Confinement::new(mode, address_space_bytes);
    // SAFETY: the closure runs between fork and exec; `enter` makes system calls on memory
    // prepared before the fork and allocates nothing (the error is a raw OS error).
    unsafe {
        command.pre_exec(move || {
            confinement
                .enter()
                .map_err(|(_, errno)| io::Error::from_raw_os_error(errno))
        });
    }
}

/// The executor's last step into the sandbox, taken by itself once its GPU is open: `root`
/// (which must be an empty directory) becomes its root directory and every capability is
/// dropped, so that it can open no file and cannot leave the root.
pub fn enter_empty_root(root: &Path) -> Result<(), SandboxError> {
    let io_error = |what, source| SandboxError::Io {
        what,
        path: root.to_path_buf(),
        source,
    };
    let mut entries = std::fs::read_dir(root).map_err(|err| io_error("cannot list", err))?;
    if entries.next().is_some() {
        return Err(io_error(
            "the executor's root is not empty:",
            io::Error::from(io::ErrorKind::DirectoryNotEmpty),
        ));
    }
    let path = c_path(root)?;
    chroot_and_drop_capabilities(&path).map_err(|(step, errno)| SandboxError::HostRefuses {
        step,
        source: io::Error::from_raw_os_error(errno),
    })
}

/// `chroot(root)`, `chdir("/")`, then no capabilities: async-signal-safe.
fn chroot_and_drop_capabilities(root: &std::ffi::CStr) -> Result<(), (Step, i32)> {
    // SAFETY: `root` is a valid NUL-terminated path.
    check(unsafe { libc::chroot(root.as_ptr()) }, Step::EmptyRoot)?;
    // SAFETY: a static NUL-terminated path.
    check(unsafe { libc::chdir(c"/".as_ptr()) }, Step::EmptyRoot)?;
    drop_capabilities().map_err(|errno| (Step::DropCapabilities, errno))
}

/// Empties the bounding set (nothing gained at an exec) and the effective, permitted and
/// inheritable sets: async-signal-safe.
fn drop_capabilities() -> Result<(), i32> {
    const CAPABILITY_NUMBER_MAX: libc::c_ulong = 63;
    for capability in 0..=CAPABILITY_NUMBER_MAX {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) } != 0 {
            // EINVAL: the kernel knows no capability of this number, nor any after it.
            match errno() {
                libc::EINVAL => break,
                other => return Err(other),
            }
        }
    }
    let mut header = CapabilityHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapabilityData::default(); 2];
    // SAFETY: capset reads one header and, for version 3, two data structs, laid out as the
    // kernel's `__user_cap_header_struct` and `__user_cap_data_struct`.
    let status = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapabilityHeader,
            data.as_ptr(),
        )
    };
    if status != 0 {
        return Err(errno());
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapabilityHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapabilityData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> Result<(), (Step, i32)> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    check(unsafe { libc::setrlimit(resource, &limit) }, Step::Limits)
}

/// Writes `bytes` to a /proc file of this process: async-signal-safe.
fn write_proc_file(path: &std::ffi::CStr, bytes: &[u8]) -> Result<(), i32> {
    // SAFETY: `path` is a valid NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: `bytes` is valid for its length; `fd` is open.
    let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    let write_errno = errno();
    // SAFETY: `fd` is open and closed once.
    unsafe { libc::close(fd) };
    if written != bytes.len() as isize {
        return Err(write_errno);
    }
    Ok(())
}

fn check(status: libc::c_int, step: Step) -> Result<(), (Step, i32)> {
    if status == 0 {
        Ok(())
    } else {
        Err((step, errno()))
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn c_path(path: &Path) -> Result<CString, SandboxError> {
    CString::new(OsString::from(path).into_vec()).map_err(|err| SandboxError::Io {
        what: "a path with a NUL byte:",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, err),
    })
}

/// How many names [`EmptyRoot::create`] tries before it gives up on a temporary directory
/// full of names it cannot use.
const EMPTY_ROOT_NAME_TRIES_MAX: u32 = 1_024;

/// The `<n>` of the next executor root name this process tries.
static EMPTY_ROOTS_NAMED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A private empty directory for one executor's root, removed when dropped.
#[derive(Debug)]
pub struct EmptyRoot {
    path: PathBuf,
}

impl EmptyRoot {
    /// Makes `TMPDIR/fabric-executor-<pid>-<n>`, readable and searchable by its owner only,
    /// writable by nobody. A name that exists already is skipped, not reused: a node killed
    /// with SIGKILL leaves its roots behind, and a later process may get its PID.
    pub fn create() -> Result<Self, SandboxError> {
        use std::os::unix::fs::DirBuilderExt;
        use std::sync::atomic::Ordering;
        let mut tries_left = EMPTY_ROOT_NAME_TRIES_MAX;
        loop {
            let path = std::env::temp_dir().join(format!(
                "fabric-executor-{}-{}",
                std::process::id(),
                EMPTY_ROOTS_NAMED.fetch_add(1, Ordering::Relaxed)
            ));
            tries_left -= 1;
            match std::fs::DirBuilder::new().mode(0o500).create(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(source) if source.kind() == io::ErrorKind::AlreadyExists && tries_left > 0 => {}
                Err(source) => {
                    return Err(SandboxError::Io {
                        what: "cannot create the executor's root",
                        path,
                        source,
                    })
                }
            }
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for EmptyRoot {
    fn drop(&mut self) {
        // Nothing can have been written into it: a failure leaves an empty directory behind.
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Checks that this host lets the node start a job process sandboxed: a process is started
/// through every step of [`confine`] and [`enter_empty_root`] and exits. The error names the
/// first refused step and what the host must allow.
pub fn probe() -> Result<(), SandboxError> {
    let root = EmptyRoot::create()?;
    let root_path = c_path(root.path())?;
    let confinement = Confinement::new(SandboxMode::Enforced, Some(JOB_MEMORY_BYTES_DEFAULT));
    let (report_read, report_write) = report_pipe()?;
    let report_fd = std::os::fd::AsRawFd::as_raw_fd(&report_write);
    let program = std::env::current_exe().map_err(|source| SandboxError::Io {
        what: "cannot find this program",
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let mut command = Command::new(&program);
    // SAFETY: the closure runs between fork and exec and makes system calls only, on memory
    // prepared before the fork. It never returns: the probe exits before exec.
    unsafe {
        command.pre_exec(move || {
            let entered = confinement
                .enter()
                .and_then(|()| chroot_and_drop_capabilities(&root_path));
            if let Err((step, errno)) = entered {
                let mut report = [0u8; 5];
                report[0] = step as u8;
                report[1..].copy_from_slice(&errno.to_le_bytes());
                libc::write(report_fd, report.as_ptr().cast(), report.len());
                libc::_exit(1);
            }
            libc::_exit(0)
        });
    }
    let status = command
        .spawn()
        .and_then(|mut child| child.wait())
        .map_err(|source| SandboxError::Io {
            what: "cannot start the sandbox probe",
            path: program.clone(),
            source,
        })?;
    drop(report_write);
    let mut report = Vec::new();
    io::Read::read_to_end(&mut std::fs::File::from(report_read), &mut report).map_err(
        |source| SandboxError::Io {
            what: "cannot read the sandbox probe's report",
            path: program.clone(),
            source,
        },
    )?;
    match (status.code(), report.as_slice()) {
        (Some(0), []) => Ok(()),
        (Some(1), [step, errno @ ..]) if errno.len() == 4 => {
            let step = Step::from_code(*step)
                .ok_or_else(|| SandboxError::Probe(format!("unknown step {step}")))?;
            let errno = i32::from_le_bytes([errno[0], errno[1], errno[2], errno[3]]);
            Err(SandboxError::HostRefuses {
                step,
                source: io::Error::from_raw_os_error(errno),
            })
        }
        _ => Err(SandboxError::Probe(format!(
            "status {:?} (signal {:?}), report {report:?}",
            status.code(),
            status.signal()
        ))),
    }
}

/// A pipe whose write end the probe's process inherits (it never execs, so CLOEXEC does not
/// close it there) and writes its refused step to.
fn report_pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), SandboxError> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SandboxError::Io {
            what: "cannot make a pipe for",
            path: PathBuf::from("the sandbox probe"),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: pipe2 succeeded: both descriptors are open and owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This crate's tests run where the suite runs: a host that allows the sandbox.
    #[test]
    fn the_host_allows_the_sandbox() {
        probe().expect("sandbox probe");
    }

    /// Roots left behind by a killed process whose PID this one got are skipped.
    #[test]
    fn an_executor_root_left_behind_under_our_pid_is_skipped() {
        use std::os::unix::fs::DirBuilderExt;
        use std::sync::atomic::Ordering;
        let next = EMPTY_ROOTS_NAMED.load(Ordering::Relaxed);
        let left_behind: Vec<PathBuf> = (next..next + 16)
            .map(|n| {
                std::env::temp_dir().join(format!("fabric-executor-{}-{n}", std::process::id()))
            })
            .filter(|path| std::fs::DirBuilder::new().mode(0o500).create(path).is_ok())
            .collect();
        assert!(!left_behind.is_empty());
        let root = EmptyRoot::create().expect("a root beside the ones left behind");
        assert!(!left_behind.iter().any(|path| path == root.path()));
        for path in &left_behind {
            std::fs::remove_dir(path).expect("remove what the test left");
        }
    }

    /// A refused step names itself and what the host must allow.
    #[test]
    fn a_refusal_says_what_the_host_must_allow() {
        let error = SandboxError::HostRefuses {
            step: Step::Network,
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        let text = error.to_string();
        assert!(text.contains("network namespace"), "{text}");
        assert!(text.contains("unprivileged_userns_clone"), "{text}");
        assert!(text.contains("--no-sandbox"), "{text}");
        for step in Step::ALL {
            assert_eq!(Step::from_code(step as u8), Some(step));
        }
    }

    /// A sandboxed process is in another network namespace, with no_new_privs and the limits.
    #[test]
    fn a_confined_process_has_its_own_network_and_limits() {
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "readlink /proc/self/ns/net; grep NoNewPrivs /proc/self/status; ulimit -c; ulimit -n",
        ]);
        confine(&mut command, SandboxMode::Enforced, None);
        let output = command.output().expect("sandboxed sh");
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = text.lines().collect();
        let ours = std::fs::read_link("/proc/self/ns/net").expect("our namespace");
        assert_ne!(lines[0], ours.to_string_lossy(), "{text}");
        assert!(lines[1].ends_with('1'), "{text}");
        assert_eq!(lines[2], "0", "{text}");
        assert_eq!(lines[3], SANDBOX_OPEN_FILES_MAX.to_string(), "{text}");
    }
}
