//! The interpreter a session's workers run on: the real binary behind the configured
//! `python`, resolved once per host process, and the agent compiled for it into a sealed
//! anonymous file that no worker can write.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::process::{Child, Command};

use super::procfs::{describe_exit, stderr_excerpt};
use super::spawner;
use super::AGENT_SOURCE;
use crate::error::Error;

/// An interpreter ready to run workers: the real binary behind the configured `python`, and
/// the agent compiled for it.
#[derive(Debug, Clone)]
pub struct Interpreter {
    pub python: PathBuf,
    /// The agent as bytecode in a sealed memfd (no write, grow or shrink, for anyone, ever),
    /// shared by every worker of this interpreter, which runs it as `/proc/self/fd/6`. `None`
    /// when it could not be made: workers then compile the source at every start (`-c`).
    /// Never a file on disk: a worker of the same user could rewrite it for the next ones.
    pub agent_code: Option<Arc<OwnedFd>>,
    /// Where the interpreter's files live (its prefixes and the directories of its
    /// `sys.path`): what a sandbox shows read-only to its workers.
    pub roots: Vec<PathBuf>,
}

/// Prepares `python` once per process: resolves the real interpreter (its `sys.executable`;
/// `python3` is often a launcher shim that adds tens of milliseconds to every start) and, in
/// the same run, compiles the agent (the bytecode comes back on the probe's stdout), which
/// saves compiling ~800 lines at every worker start (4 ms of a ~15 ms cold start). Compiled
/// afresh by each host process, so the bytecode always matches the interpreter.
///
/// The probe must answer within `deadline` (the session's start timeout), else it is killed
/// with its process group and reaped, and the answer is [`Error::ProbeTimeout`]: a `python`
/// that hangs cannot hang the host.
pub async fn prepare_interpreter(python: &Path, deadline: Duration) -> Result<Interpreter, Error> {
    static CACHE: Mutex<Option<HashMap<PathBuf, Interpreter>>> = Mutex::new(None);
    if let Some(found) = crate::sync::lock_unpoisoned(&CACHE)
        .as_ref()
        .and_then(|m| m.get(python))
    {
        return Ok(found.clone());
    }
    // Prints its real executable and a NUL; the directories its files live in, each ended
    // by a NUL, and one more NUL; then the agent (given on stdin) compiled to a .pyc
    // image: magic, 12 bytes of flags and source stamp (unchecked when run directly), the
    // marshalled code.
    let script = "import os, sys\n\
        out = sys.stdout.buffer\n\
        out.write(os.fsencode(sys.executable or '') + b'\\0')\n\
        roots = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]\n\
        roots += [p for p in sys.path if p and os.path.isdir(p)]\n\
        for root in roots:\n    \
            for path in {os.path.abspath(root), os.path.realpath(root)}:\n        \
                out.write(os.fsencode(path) + b'\\0')\n\
        out.write(b'\\0')\n\
        try:\n    \
            import importlib.util, marshal\n    \
            code = compile(sys.stdin.buffer.read(), '<pyrepl3 agent>', 'exec', dont_inherit=True)\n    \
            out.write(importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code))\n\
        except Exception as e:\n    \
            sys.stderr.write('pyrepl3: could not compile the agent: %s\\n' % e)\n\
        out.flush()";
    let mut cmd = Command::new(python);
    // The agent's source on stdin: it is over the kernel's limit for one argument (128 KiB).
    cmd.args(["-c", script]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that a hung probe is killed with whatever it started.
        .process_group(0)
        .kill_on_drop(true);
    let host = spawner::host_pid();
    // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid) are made.
    unsafe {
        cmd.pre_exec(move || spawner::die_with_parent(host));
    }
    let spawn_error = |source| Error::Spawn {
        python: python.to_path_buf(),
        source,
    };
    let mut child = spawner::spawn_child(cmd).await.map_err(spawn_error)?;
    let stdin = child.stdin.take();
    let source = async move {
        use tokio::io::AsyncWriteExt;
        if let Some(mut stdin) = stdin {
            // A probe that fails before reading it says why in its own output and status.
            let _ = stdin.write_all(AGENT_SOURCE.as_bytes()).await;
        } // dropped: end of file
    };
    // not polling: the one start deadline bounding the whole probe.
    let answered = tokio::time::timeout(deadline, async {
        let ((), out) = tokio::join!(source, probe_output(&mut child));
        out
    })
    .await;
    let out = match answered {
        Ok(out) => out.map_err(spawn_error)?,
        Err(_) => {
            // Not reaped yet, so the group id is still the probe's own.
            if let Some(pgid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: killpg has no memory-safety preconditions; pgid > 0.
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
            }
            // Reaped here, not left to the background: nothing of the probe outlives this.
            let _ = child.wait().await;
            return Err(Error::ProbeTimeout {
                python: python.to_path_buf(),
                deadline,
            });
        }
    };
    if !out.status.success() {
        return Err(Error::StartFailed {
            status: describe_exit(out.status),
            stderr: stderr_excerpt(&out.stderr),
        });
    }
    let (real, roots, pyc) = split_probe_answer(&out.stdout);
    let resolved = if real.is_empty() {
        python.to_path_buf()
    } else {
        PathBuf::from(std::ffi::OsStr::from_bytes(real))
    };
    // The bytecode, or when the probe could not compile it, the source: either way a sealed
    // file (the source is too long to pass as an argument).
    let image = if pyc.is_empty() {
        AGENT_SOURCE.as_bytes()
    } else {
        pyc
    };
    let agent_code = match sealed_file(c"pyrepl3-agent.pyc", image) {
        Ok(fd) => Some(Arc::new(fd)),
        Err(e) => {
            tracing::warn!(error = %e, "no sealed file for the agent; workers cannot start");
            None
        }
    };
    let prepared = Interpreter {
        python: resolved,
        agent_code,
        roots,
    };
    crate::sync::lock_unpoisoned(&CACHE)
        .get_or_insert_with(HashMap::new)
        .insert(python.to_path_buf(), prepared.clone());
    Ok(prepared)
}

/// The probe's answer: the executable, the interpreter's directories (absolute, distinct),
/// and the agent's bytecode (empty if it could not be compiled).
fn split_probe_answer(stdout: &[u8]) -> (&[u8], Vec<PathBuf>, &[u8]) {
    let mut fields = stdout.splitn(2, |b| *b == 0);
    let real = fields.next().unwrap_or_default();
    let mut rest = fields.next().unwrap_or_default();
    let mut roots: Vec<PathBuf> = Vec::new();
    while let Some(nul) = rest.iter().position(|b| *b == 0) {
        let field = &rest[..nul];
        rest = &rest[nul + 1..];
        if field.is_empty() {
            break;
        }
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(field));
        if path.is_absolute() && !roots.contains(&path) {
            roots.push(path);
        }
    }
    (real, roots, rest)
}

/// The most of its stdout and of its stderr a probe may leave us to read (its answer is one
/// path and the agent's bytecode, ~50 KiB; its errors a few lines): more is not read, so a
/// probe that writes forever blocks and meets the deadline.
const PROBE_OUTPUT_MAX: u64 = 1024 * 1024;

/// Everything the probe writes (up to [`PROBE_OUTPUT_MAX`] per pipe) and how it exited.
async fn probe_output(child: &mut Child) -> std::io::Result<std::process::Output> {
    use tokio::io::AsyncReadExt;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let out = child.stdout.take();
    let err = child.stderr.take();
    let read_out = async {
        match out {
            Some(pipe) => pipe.take(PROBE_OUTPUT_MAX).read_to_end(&mut stdout).await,
            None => Ok(0),
        }
    };
    let read_err = async {
        match err {
            Some(pipe) => pipe.take(PROBE_OUTPUT_MAX).read_to_end(&mut stderr).await,
            None => Ok(0),
        }
    };
    let (_, _, status) = tokio::try_join!(read_out, read_err, child.wait())?;
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}

/// An anonymous file holding `bytes`, sealed against any change (write, grow, shrink, and
/// removing the seals): every process that gets it, ours or a worker's, can only read it.
fn sealed_file(name: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<OwnedFd> {
    use std::io::Write;
    // SAFETY: memfd_create with a valid NUL-terminated name; the fd is ours if >= 0.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl F_ADD_SEALS on an fd we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}
