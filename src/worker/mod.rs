//! Starting a worker process: the interpreter path, the file descriptors (protocol socket on
//! fd 3, stdout/stderr pipes, stdin from /dev/null), the process group, the environment and the
//! working directory; plus the OS-level helpers that act on a worker (group kill, exit status
//! text, /proc readings). It owns no running state: the session actor owns the process.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;

use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::unix::pipe;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use crate::error::Error;

/// The Python side, embedded so the binary is self-contained.
pub const AGENT_SOURCE: &str = include_str!("../../worker/agent.py");

/// The fd number of the exec channel in the worker (`execute` in, `ready`/`input`/`result`/
/// `error` out; read by the worker's main thread).
pub const EXEC_FD: i32 = 3;
/// The fd number of the control channel in the worker (everything else; read by the
/// worker's reader thread).
pub const CONTROL_FD: i32 = 4;
/// The fd number of the signal-target file in the worker: 8 bytes, the `seq` of the
/// execution the next SIGINT is meant for (see [`interrupt_main_thread`]).
pub const SIGNAL_FD: i32 = 5;

/// What to start.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub interpreter: Interpreter,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub session_id: String,
    pub marker_token: String,
}

/// A started worker: the process and the host's ends of its channels.
#[derive(Debug)]
pub struct SpawnedWorker {
    pub child: Child,
    pub pid: u32,
    pub exec: UnixStream,
    pub control: UnixStream,
    /// The host's end of the signal-target file (a memfd shared with the worker).
    pub signal_target: OwnedFd,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// An interpreter ready to run workers: the real binary behind the configured `python`, and
/// the agent compiled for it.
#[derive(Debug, Clone)]
pub struct Interpreter {
    pub python: PathBuf,
    /// The agent as bytecode (started as `python agent.pyc`), when a private cache directory
    /// could be used; else workers compile the source at every start (`python -c`).
    pub agent_pyc: Option<PathBuf>,
}

/// Prepares `python` once per process: resolves the real interpreter (its `sys.executable`;
/// `python3` is often a launcher shim that adds tens of milliseconds to every start) and, in
/// the same run, compiles the agent into the per-user cache, which saves compiling ~700 lines
/// at every worker start (4 ms of a ~15 ms cold start). Compiled afresh by each host process,
/// so the bytecode always matches the interpreter.
pub async fn prepare_interpreter(python: &Path) -> Result<Interpreter, Error> {
    static CACHE: Mutex<Option<HashMap<PathBuf, Interpreter>>> = Mutex::new(None);
    if let Some(found) = lock_cache(&CACHE).as_ref().and_then(|m| m.get(python)) {
        return Ok(found.clone());
    }
    let cache = agent_cache_paths(python);
    let script = "import sys\n\
        if len(sys.argv) == 3:\n    \
            import py_compile\n    \
            try:\n        \
                py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)\n    \
            except Exception as e:\n        \
                sys.stderr.write('pyrepl3: could not compile the agent: %s\\n' % e)\n\
        sys.stdout.write(sys.executable or '')";
    let mut cmd = Command::new(python);
    cmd.args(["-c", script]);
    if let Some((source, pyc_tmp, _)) = &cache {
        cmd.arg(source).arg(pyc_tmp);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|source| Error::Spawn {
            python: python.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::StartFailed {
            status: describe_exit(out.status),
            stderr: stderr_excerpt(&out.stderr),
        });
    }
    let real = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let resolved = if real.is_empty() {
        python.to_path_buf()
    } else {
        PathBuf::from(real)
    };
    let agent_pyc = cache.and_then(|(_, pyc_tmp, pyc)| {
        // The rename publishes a complete file; a failed compile leaves no file to rename.
        std::fs::rename(&pyc_tmp, &pyc).ok().map(|()| pyc)
    });
    let prepared = Interpreter {
        python: resolved,
        agent_pyc,
    };
    lock_cache(&CACHE)
        .get_or_insert_with(HashMap::new)
        .insert(python.to_path_buf(), prepared.clone());
    Ok(prepared)
}

/// (agent source, temporary bytecode path, final bytecode path) in the per-user cache, with
/// the source written there; `None` when no private cache directory is available.
fn agent_cache_paths(python: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    use std::hash::{Hash, Hasher};
    let dir = private_cache_dir()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    AGENT_SOURCE.hash(&mut hasher);
    let source_hash = hasher.finish();
    python.hash(&mut hasher);
    let key = hasher.finish();
    let source = dir.join(format!("agent-{source_hash:016x}.py"));
    if !source.exists() {
        let tmp = dir.join(format!(
            "agent-{source_hash:016x}.py.{}",
            std::process::id()
        ));
        std::fs::write(&tmp, AGENT_SOURCE).ok()?;
        std::fs::rename(&tmp, &source).ok()?;
    }
    let pyc_tmp = dir.join(format!("agent-{key:016x}.pyc.{}", std::process::id()));
    let pyc = dir.join(format!("agent-{key:016x}.pyc"));
    Some((source, pyc_tmp, pyc))
}

/// `$XDG_CACHE_HOME/pyrepl3` or `~/.cache/pyrepl3`, created 0700; refused unless it is a
/// real directory owned by this user and closed to others (another user must not be able to
/// plant the code our workers run).
fn private_cache_dir() -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let dir = base.join("pyrepl3");
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let private = meta.is_dir() && meta.uid() == me && meta.permissions().mode() & 0o077 == 0;
    private.then_some(dir)
}

fn lock_cache<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent (single insert).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts the agent with an interpreter from [`prepare_interpreter`].
pub fn spawn(spec: &WorkerSpec) -> Result<SpawnedWorker, Error> {
    let (host_exec, child_exec) =
        std::os::unix::net::UnixStream::pair().map_err(Error::io("creating the exec channel"))?;
    let (host_control, child_control) = std::os::unix::net::UnixStream::pair()
        .map_err(Error::io("creating the control channel"))?;
    // Both at 10 or above, so that placing one at 3 or 4 cannot clobber the other.
    let child_exec: OwnedFd = raise_fd(child_exec.into())?;
    let child_control: OwnedFd = raise_fd(child_control.into())?;
    let signal_target = signal_target_file()?;
    let child_signal = raise_fd(
        signal_target
            .try_clone()
            .map_err(Error::io("sharing the signal-target file"))?,
    )?;
    let (out_r, out_w) = std::io::pipe().map_err(Error::io("creating the stdout pipe"))?;
    let (err_r, err_w) = std::io::pipe().map_err(Error::io("creating the stderr pipe"))?;

    let mut cmd = Command::new(&spec.interpreter.python);
    match &spec.interpreter.agent_pyc {
        Some(pyc) => cmd.arg(pyc),
        None => cmd.arg("-c").arg(AGENT_SOURCE),
    };
    cmd.current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(OwnedFd::from(out_w)))
        .stderr(Stdio::from(OwnedFd::from(err_w)))
        .env("PYREPL3_FD", EXEC_FD.to_string())
        .env("PYREPL3_CONTROL_FD", CONTROL_FD.to_string())
        .env("PYREPL3_SIGNAL_FD", SIGNAL_FD.to_string())
        .env("PYREPL3_SESSION_ID", &spec.session_id)
        .env("PYREPL3_MARKER", &spec.marker_token)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        // Its own process group: terminating the session kills everything it started, and a
        // Ctrl-C at the host's terminal is not delivered to the worker behind our back.
        .process_group(0)
        .kill_on_drop(true);
    let (exec_fd, control_fd, signal_fd) = (
        child_exec.as_raw_fd(),
        child_control.as_raw_fd(),
        child_signal.as_raw_fd(),
    );
    // SAFETY: between fork and exec only async-signal-safe calls (dup2) are made.
    unsafe {
        cmd.pre_exec(move || {
            place_fd(exec_fd, EXEC_FD)?;
            place_fd(control_fd, CONTROL_FD)?;
            place_fd(signal_fd, SIGNAL_FD)
        });
    }
    let child = cmd.spawn().map_err(|source| Error::Spawn {
        python: spec.interpreter.python.clone(),
        source,
    })?;
    drop((child_exec, child_control, child_signal));
    let pid = child.id().ok_or_else(|| Error::StartFailed {
        status: "exited before it could be tracked".into(),
        stderr: String::new(),
    })?;
    let stdout = pipe::Receiver::from_owned_fd(OwnedFd::from(out_r))
        .map_err(Error::io("registering the stdout pipe"))?;
    let stderr = pipe::Receiver::from_owned_fd(OwnedFd::from(err_r))
        .map_err(Error::io("registering the stderr pipe"))?;
    Ok(SpawnedWorker {
        child,
        pid,
        exec: register_socket(host_exec)?,
        control: register_socket(host_control)?,
        signal_target,
        stdout,
        stderr,
    })
}

fn register_socket(sock: std::os::unix::net::UnixStream) -> Result<UnixStream, Error> {
    sock.set_nonblocking(true)
        .map_err(Error::io("configuring a protocol channel"))?;
    UnixStream::from_std(sock).map_err(Error::io("registering a protocol channel"))
}

/// Moves an fd to 10 or above, so that neither the child's stdio set-up nor placing the
/// other channel can clobber it (fds 0-2 are possible when the host was started with them
/// closed; 3 and 4 are where the channels go).
fn raise_fd(fd: OwnedFd) -> Result<OwnedFd, Error> {
    if fd.as_raw_fd() >= 10 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd we own, or -1.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if raw < 0 {
        return Err(Error::Io {
            context: "moving the protocol socket's fd",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// In the child: puts `fd` at `target`, inheritable across exec.
fn place_fd(fd: i32, target: i32) -> io::Result<()> {
    // SAFETY: plain syscalls on fds owned by this (child) process.
    unsafe {
        if fd == target {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
        } else if libc::dup2(fd, target) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends `signal` to the worker's whole process group. The worker leads its own group (it is
/// spawned with `process_group(0)`), so `pid` is the group id; pids ≤ 1 are refused so that a
/// bug can never signal the host's own group or every process.
pub fn kill_group(pid: u32, signal: i32) {
    let Ok(pgid) = i32::try_from(pid) else { return };
    if pgid <= 1 {
        return;
    }
    // SAFETY: killpg has no memory-safety preconditions. ESRCH (group already gone) is fine.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

/// An anonymous 8-byte file (memfd): invisible in the worker's file system, shared by fd.
fn signal_target_file() -> Result<OwnedFd, Error> {
    // SAFETY: memfd_create with a valid NUL-terminated name; the fd is ours if >= 0.
    let raw = unsafe { libc::memfd_create(c"pyrepl3-signal-target".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(Error::Io {
            context: "creating the signal-target file",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: ftruncate on an fd we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), 8) } < 0 {
        return Err(Error::Io {
            context: "sizing the signal-target file",
            source: io::Error::last_os_error(),
        });
    }
    Ok(fd)
}

/// Delivers SIGINT to the worker's main thread (its tid is its pid), where user code runs,
/// for the execution numbered `seq`. Unlike a `cancel` message this needs nothing from the
/// worker's reader thread, which would first have to win the GIL from a busy main thread (up
/// to the 5 ms switch interval). The target is written to the signal-target file first, so
/// the worker can tell a signal for code that has not started yet (kept until it starts)
/// from one for code that already finished (ignored): a signal carries no data of its own.
pub fn interrupt_main_thread(pid: u32, signal_target: &OwnedFd, seq: u64) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    let bytes = seq.to_le_bytes();
    // SAFETY: pwrite of 8 bytes from a valid buffer to an fd we own; a failure only means
    // the worker falls back to its untargeted rule.
    unsafe {
        libc::pwrite(
            signal_target.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
        );
    }
    // SAFETY: tgkill has no memory-safety preconditions; ESRCH (gone) is fine.
    unsafe {
        libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGINT);
    }
}

/// Whether any process of the group `pid` is still running. Zombies (dead, waiting to be
/// reaped by their parent or init) do not count: they hold no resources but a pid.
pub fn group_alive(pid: u32) -> bool {
    !group_members(pid).is_empty()
}

/// The pids of the live (non-zombie) processes in process group `pgid`, from /proc.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command name: state, ppid, pgrp.
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                return false;
            };
            let mut fields = after.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
            pgrp == Some(pgid) && state != Some("Z") && state != Some("X")
        })
        .collect()
}

/// Kills the group `pgid` and waits until none of its processes is running any more (each
/// member's exit is awaited on its pidfd: an event, not a poll), or until `within` passes.
/// Returns whether the group is gone.
pub async fn kill_group_and_wait(pgid: u32, within: Duration) -> bool {
    kill_group(pgid, libc::SIGKILL);
    // not polling: one deadline bounding the wait for every member's exit event.
    let deadline = tokio::time::Instant::now() + within;
    for pid in group_members(pgid) {
        let Some(exited) = pid_exit_event(pid) else {
            continue; // already gone
        };
        // not polling: waits on the exit event, bounded by the one deadline.
        if tokio::time::timeout_at(deadline, exited.readable())
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// A pidfd that becomes readable when `pid` exits; `None` if it is gone already.
fn pid_exit_event(pid: u32) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: pidfd_open has no memory-safety preconditions.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // SAFETY: `owned` stays open, and is the same fd, for as long as the AsyncFd owns it.
    unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }.ok()
}

/// "exited with status 3" / "killed by signal 9 (SIGKILL)".
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(sig) = status.signal() {
        format!("killed by signal {sig} ({})", signal_name(sig))
    } else {
        format!("ended: {status}")
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        _ => "signal",
    }
}

/// The last few lines of what a worker wrote to stderr, for start-up error messages.
pub fn stderr_excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(15)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!(":\n{}", tail.join("\n"))
    }
}

/// Resident memory and CPU time (user + system) of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    pub rss_bytes: u64,
    pub cpu_time_secs: f64,
}

pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), so utime (14) is index 11, stime 12, rss 21.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    let page = if page > 0 { page as u64 } else { 4096 };
    Some(ProcStats {
        rss_bytes: rss_pages * page,
        cpu_time_secs: (utime + stime) as f64 / ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stats_of_this_process_are_plausible() {
        let stats = proc_stats(std::process::id()).expect("own /proc entry");
        assert!(stats.rss_bytes > 1024 * 1024);
    }

    #[test]
    fn exit_statuses_are_described() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(9)),
            "killed by signal 9 (SIGKILL)"
        );
    }
}
