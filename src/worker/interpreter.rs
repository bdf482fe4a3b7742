//! The interpreter a session's workers run on: the real binary behind the configured
//! `python`, resolved once per host process, and the agent compiled for it into a private
//! per-user cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

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
    /// The agent as bytecode (started as `python agent.pyc`), when a private cache directory
    /// could be used; else workers compile the source at every start (`python -c`).
    pub agent_pyc: Option<PathBuf>,
}

/// Prepares `python` once per process: resolves the real interpreter (its `sys.executable`;
/// `python3` is often a launcher shim that adds tens of milliseconds to every start) and, in
/// the same run, compiles the agent into the per-user cache, which saves compiling ~700 lines
/// at every worker start (4 ms of a ~15 ms cold start). Compiled afresh by each host process,
/// so the bytecode always matches the interpreter.
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
    cmd.stdin(Stdio::null())
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
    // not polling: the one start deadline bounding the whole probe.
    let answered = tokio::time::timeout(deadline, probe_output(&mut child)).await;
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
    crate::sync::lock_unpoisoned(&CACHE)
        .get_or_insert_with(HashMap::new)
        .insert(python.to_path_buf(), prepared.clone());
    Ok(prepared)
}

/// The most of its stdout and of its stderr a probe may leave us to read (its answer is one
/// path; its errors a few lines): more is not read, so a probe that writes forever blocks and
/// meets the deadline.
const PROBE_OUTPUT_MAX: u64 = 64 * 1024;

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
