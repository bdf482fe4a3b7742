//! Starting a worker process: the file descriptors (the protocol channels on fds 3 and 4, the
//! signal-target file on fd 5, stdout/stderr pipes, stdin from /dev/null), its own process
//! group (with its keeper), the environment, the working directory, the open-file limit the
//! host was started with, and death with the host (`PR_SET_PDEATHSIG`, armed from the
//! spawner thread).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;

use tokio::net::unix::pipe;
use tokio::net::UnixStream;
use tokio::process::Command;

use super::process::WorkerProcess;
use super::sandbox;
use super::spawner;
use super::{WorkerSpec, AGENT_FD, AGENT_SOURCE, CONTROL_FD, EXEC_FD, SIGNAL_FD};
use crate::error::Error;

/// A started worker: the process and the host's ends of its channels.
#[derive(Debug)]
pub struct SpawnedWorker {
    pub process: WorkerProcess,
    pub exec: UnixStream,
    pub control: UnixStream,
    /// The host's end of the signal-target file (a memfd shared with the worker).
    pub signal_target: OwnedFd,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// Bytes of the signal-target file: the 8-byte target, room for the marker token, and at
/// offset 128 the pid of a transaction's live snapshot, kept there by the worker for its
/// supervisor (`worker/transaction.py`, docs/transactions.md).
const SIGNAL_FILE_LEN: libc::off_t = 128 + 8;
/// The agent reads this many bytes of token (a UUID's 32 hex digits fit).
const MAX_TOKEN_LEN: usize = 64;

/// Starts the agent with an interpreter from [`super::prepare_interpreter`]. The fork happens
/// on the spawner thread (see `spawner.rs`); the worker is SIGKILLed by the kernel if the host
/// dies.
pub async fn spawn(spec: &WorkerSpec) -> Result<SpawnedWorker, Error> {
    let (host_exec, child_exec) =
        std::os::unix::net::UnixStream::pair().map_err(Error::io("creating the exec channel"))?;
    let (host_control, child_control) = std::os::unix::net::UnixStream::pair()
        .map_err(Error::io("creating the control channel"))?;
    // Both at FIRST_UNUSED_FD (11) or above, so that placing one at 3 or 4 cannot clobber the other.
    let child_exec: OwnedFd = raise_fd(child_exec.into())?;
    let child_control: OwnedFd = raise_fd(child_control.into())?;
    let signal_target = signal_target_file(&spec.marker_token)?;
    let child_signal = raise_fd(
        signal_target
            .try_clone()
            .map_err(Error::io("sharing the signal-target file"))?,
    )?;
    let (out_r, out_w) = std::io::pipe().map_err(Error::io("creating the stdout pipe"))?;
    let (err_r, err_w) = std::io::pipe().map_err(Error::io("creating the stderr pipe"))?;

    // A sandboxed worker is started by `bwrap`, which builds the sandbox and runs the
    // interpreter in it (see `sandbox.rs`); its seccomp programs are read from two fds.
    let seccomp_files = match &spec.sandbox {
        Some(_) => {
            let programs = sandbox::seccomp_programs()?;
            Some([
                raise_fd(sandbox::program_file(&programs[0])?)?,
                raise_fd(sandbox::program_file(&programs[1])?)?,
                raise_fd(sandbox::program_file(&programs[2])?)?,
            ])
        }
        None => None,
    };
    // An outbound network is attached between the sandbox's creation and the interpreter's
    // start (see `sandbox::OutboundHandshake`).
    let outbound = match &spec.sandbox {
        Some(sandbox) if sandbox.config.network == sandbox::Network::Outbound => {
            Some(sandbox::OutboundHandshake::new()?)
        }
        _ => None,
    };
    let etc = match &spec.sandbox {
        Some(_) => Some(sandbox::prepared_etc().await?),
        None => None,
    };
    let mut cmd = match (&spec.sandbox, &etc) {
        (Some(sandbox), Some(etc)) => {
            let mut cmd = Command::new(sandbox::resolve_program(&sandbox.config.bwrap));
            cmd.args(sandbox::bwrap_args(
                sandbox,
                &spec.interpreter,
                &spec.cwd,
                etc,
            ));
            if outbound.is_some() {
                cmd.args(sandbox::OutboundHandshake::bwrap_args());
            }
            cmd.arg("--")
                .args(sandbox::uid_switch(sandbox))
                .arg(&spec.interpreter.python);
            cmd
        }
        _ => Command::new(&spec.interpreter.python),
    };
    // First: `env_clear` also drops what was set on the command before it.
    if !spec.inherit_env {
        // Nothing of the host's environment: it may hold secrets (a token given as
        // PYREPL3_TOKEN), and /proc/self/environ would keep them whatever the agent deletes.
        let interpreter_dir = spec.interpreter.python.parent().unwrap_or(Path::new("/"));
        let mut path = std::ffi::OsString::from(interpreter_dir);
        path.push(":/usr/local/bin:/usr/bin:/bin");
        cmd.env_clear()
            .env("PATH", path)
            .env("HOME", &spec.cwd)
            .env("LANG", "C.UTF-8");
    }
    // The agent's bytecode is read from a sealed file placed at AGENT_FD: never from a path
    // that a worker could have rewritten.
    let agent_fd = spec
        .interpreter
        .agent_code
        .as_ref()
        .map(|fd| fd.as_raw_fd());
    match agent_fd {
        Some(_) => cmd
            .arg(format!("/proc/self/fd/{AGENT_FD}"))
            .env("PYREPL3_AGENT_FD", AGENT_FD.to_string()),
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
        // The process started is the session's supervisor, a reaper for the worker's
        // orphans (docs/transactions.md): in a sandbox as the namespace's pid 1, else as a
        // child subreaper (set below).
        .env("PYREPL3_SUPERVISE", "1")
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        // Its own process group: terminating the session kills everything it started, and a
        // Ctrl-C at the host's terminal is not delivered to the worker behind our back.
        .process_group(0)
        .kill_on_drop(true);
    // Raised too (see `raise_fd`): the seccomp files may sit where the channels go.
    let (exec_fd, control_fd, signal_fd) = (
        child_exec.as_raw_fd(),
        child_control.as_raw_fd(),
        child_signal.as_raw_fd(),
    );
    let host = spawner::host_pid();
    let sandboxed = spec.sandbox.is_some();
    let open_files = spawner::workers_open_file_limit();
    let limits = spec.limits;
    let cgroup_procs = spec.cgroup_procs.clone();
    let seccomp_fds = seccomp_files
        .as_ref()
        .map(|files| files.each_ref().map(|f| f.as_raw_fd()));
    let handshake_fd = outbound.as_ref().map(sandbox::OutboundHandshake::child_fd);
    let netns = outbound
        .as_ref()
        .map(sandbox::OutboundHandshake::netns_entry);
    // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid, getrlimit,
    // setrlimit, dup2, fcntl; for an outbound sandbox unshare, open, write, socket, ioctl) are
    // made, on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            spawner::die_with_parent(host)?;
            if !sandboxed {
                become_subreaper()?;
            }
            spawner::restore_open_file_limit(open_files)?;
            limits.apply_here()?;
            for &procs in &cgroup_procs {
                super::cgroup::join_here(procs)?;
            }
            // First: the agent's file may sit at a number the channels are placed at.
            if let Some(fd) = agent_fd {
                place_fd(fd, AGENT_FD)?;
            }
            place_fd(exec_fd, EXEC_FD)?;
            place_fd(control_fd, CONTROL_FD)?;
            place_fd(signal_fd, SIGNAL_FD)?;
            if let Some(fds) = seccomp_fds {
                for (fd, target) in fds.into_iter().zip(sandbox::SECCOMP_FDS) {
                    place_fd(fd, target)?;
                }
            }
            if let Some(fd) = handshake_fd {
                place_fd(fd, sandbox::GO_FD)?;
            }
            if let Some(netns) = &netns {
                netns.enter_here()?;
            }
            // Nothing else the host inherited reaches the worker: an open directory fd from
            // whatever started the host would be a way out of a sandbox's file system.
            close_from_on_exec(FIRST_UNUSED_FD)
        });
    }
    // A sandbox needs no keeper: its namespace's pid 1 dies with the launcher, which dies
    // with the host, and takes every process of the namespace along.
    let group = spawner::spawn_group_leader(cmd, !sandboxed)
        .await
        .map_err(|source| Error::Spawn {
            python: spec.interpreter.python.clone(),
            source,
        })?;
    drop((child_exec, child_control, child_signal, seccomp_files));
    // A failure here or below drops the group (or the process), which kills the whole group,
    // keeper included.
    let mut process = WorkerProcess::new(group, sandboxed)?;
    if let Some(handshake) = outbound {
        let launcher = process.launcher_pid();
        process.attach_helper(handshake.complete(launcher).await?);
    }
    let stdout = pipe::Receiver::from_owned_fd(OwnedFd::from(out_r))
        .map_err(Error::io("registering the stdout pipe"))?;
    let stderr = pipe::Receiver::from_owned_fd(OwnedFd::from(err_r))
        .map_err(Error::io("registering the stderr pipe"))?;
    Ok(SpawnedWorker {
        process,
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

/// Moves an fd to FIRST_UNUSED_FD (11) or above, above every fd a worker is given, so that neither the child's stdio set-up nor placing the
/// other channel can clobber it (fds 0-2 are possible when the host was started with them
/// closed; 3 and 4 are where the channels go).
pub(super) fn raise_fd(fd: OwnedFd) -> Result<OwnedFd, Error> {
    if fd.as_raw_fd() >= FIRST_UNUSED_FD as i32 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd we own, or -1.
    let raw = unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_DUPFD_CLOEXEC,
            FIRST_UNUSED_FD as libc::c_int,
        )
    };
    if raw < 0 {
        return Err(Error::Io {
            context: "moving the protocol socket's fd",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// The first fd number a worker does not get on purpose (0-2, the channels and files at 3-6,
/// a sandbox's seccomp programs at 7-9 and start pipe at 10).
const FIRST_UNUSED_FD: u32 = 11;

/// In the child: marks every fd from `first` on close-on-exec, so that the `exec` closes
/// them (not closed here: the standard library's exec-error pipe is among them). One
/// `close_range` call where the kernel has it (5.11+), else each fd up to the soft limit.
fn close_from_on_exec(first: u32) -> io::Result<()> {
    // SAFETY: close_range with a flag only changes fd flags; fcntl on any number is safe.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return Ok(());
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        let last = i32::try_from(limit.rlim_cur.min(1 << 20)).unwrap_or(1 << 20);
        for fd in i32::try_from(first).unwrap_or(10)..last {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// In the child: puts `fd` at `target`, inheritable across exec.
pub(super) fn place_fd(fd: i32, target: i32) -> io::Result<()> {
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

/// Makes the calling process (the supervisor, between fork and exec: kept across `exec`) the
/// parent that its descendants' orphans get: a transaction's snapshot, once its worker has
/// died, becomes its child (docs/transactions.md).
fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl without memory arguments is async-signal-safe.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An anonymous file (memfd), invisible in the worker's file system, shared by fd: bytes
/// 0..8 are the signal target; bytes 8..72 carry the output marker's token to the agent,
/// which reads and erases it at start; bytes 128..136 are the snapshot slot. Not in the environment: `/proc/<pid>/environ` keeps the
/// environment the process started with, whatever the agent deletes later.
fn signal_target_file(marker_token: &str) -> Result<OwnedFd, Error> {
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
    let token = marker_token.as_bytes();
    if token.len() > MAX_TOKEN_LEN {
        return Err(Error::Io {
            context: "writing the signal-target file",
            source: io::Error::other("marker token too long"),
        });
    }
    // SAFETY: ftruncate and pwrite on an fd we own, from a valid buffer of `token.len()`.
    let written = unsafe {
        if libc::ftruncate(fd.as_raw_fd(), SIGNAL_FILE_LEN) < 0 {
            -1
        } else {
            libc::pwrite(fd.as_raw_fd(), token.as_ptr().cast(), token.len(), 8)
        }
    };
    if usize::try_from(written).ok() != Some(token.len()) {
        return Err(Error::Io {
            context: "writing the signal-target file",
            source: io::Error::last_os_error(),
        });
    }
    Ok(fd)
}
