//! The spawner: one thread, alive for as long as the host process, that forks every child the
//! host starts (workers and the interpreter probe).
//!
//! Why a thread of its own: workers are started with `PR_SET_PDEATHSIG(SIGKILL)`, so that the
//! kernel kills them when the host dies however it dies (`kill -9` included, and a worker
//! stuck in a C call that holds the GIL, which would never notice its closed channels). The
//! kernel sends that signal when the *thread* that forked the child exits, not the process:
//! forking from tokio's blocking pool (whose idle threads exit after a few seconds) or from
//! any short-lived thread would kill healthy workers. This thread never exits (its queue's
//! sender is a static), so the signal comes only with the process's end. It also keeps
//! `fork`/`exec` — blocking work that copies the page tables — off the async runtime's threads.

use std::io;
use std::panic::AssertUnwindSafe;
use std::process::Stdio;
use std::sync::Mutex;

use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce() + Send>;

/// Spawn requests waiting for the thread. Each takes a fork's time (about a millisecond), so
/// a small queue is enough; a caller beyond it waits for room (back-pressure, not memory).
const QUEUE: usize = 64;

static SPAWNER: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);

fn spawner() -> io::Result<mpsc::Sender<Job>> {
    let mut slot = crate::sync::lock_unpoisoned(&SPAWNER);
    if let Some(tx) = slot.as_ref() {
        return Ok(tx.clone());
    }
    let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
    std::thread::Builder::new()
        .name("pyrepl3-spawner".into())
        .spawn(move || {
            // Ends only if every sender is gone, which the static never lets happen.
            while let Some(job) = rx.blocking_recv() {
                // A panicking job must not end the thread: its exit would kill every worker.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
            }
        })?;
    *slot = Some(tx.clone());
    Ok(tx)
}

/// Spawns `cmd` on the spawner thread, inside the caller's runtime (the child's reaping and
/// its pipes belong to that runtime). If the caller stops waiting, the child is dropped there
/// at once (the commands we run are all `kill_on_drop`).
pub(crate) async fn spawn_child(cmd: Command) -> io::Result<Child> {
    run(move || cmd_spawn(cmd)).await
}

/// [`spawn_child`] for a worker, which leads its own process group (`process_group(0)`), plus
/// the group's keeper (see [`spawn_keeper`]), started before the worker can have been reaped.
pub(crate) async fn spawn_group_leader(cmd: Command) -> io::Result<Child> {
    run(move || {
        let child = cmd_spawn(cmd)?;
        if let Some(pgid) = child.id() {
            spawn_keeper(pgid);
        }
        Ok(child)
    })
    .await
}

fn cmd_spawn(mut cmd: Command) -> io::Result<Child> {
    cmd.spawn()
}

async fn run(spawn: impl FnOnce() -> io::Result<Child> + Send + 'static) -> io::Result<Child> {
    let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    let (reply, answer) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _runtime = handle.enter();
        // A caller that stopped waiting gets nothing: the child is dropped here, inside the
        // runtime, which kills and reaps it.
        let _ = reply.send(spawn());
    });
    spawner()?
        .send(job)
        .await
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answer
        .await
        .map_err(|_| io::Error::other("the spawner thread dropped a spawn request"))?
}

/// The keeper of a worker's process group: a stopped `sh` in the group, so that the kernel
/// ends the whole group when the host dies. The parent-death signal kills the worker itself,
/// but not what user code started (it is not inherited across fork), and the worker, killed
/// at once, cannot sweep its group as it does when it sees the host's channels close. The
/// kernel's job-control rule does: when a process group becomes orphaned (its last link to a
/// parent outside the group, in the same session, is gone: here the host) while a member is
/// stopped, every member gets SIGHUP then SIGCONT. The keeper is that stopped member; SIGHUP
/// (reset to its default action for the keeper and the worker, whatever the host ignores)
/// ends the group. While the host lives the keeper only sleeps: the group kill at the end of
/// a session takes it with the rest. Spawned on the spawner thread right after the worker,
/// which cannot have been reaped yet, so its group id is still the worker's. Not waited for:
/// tokio reaps it once the group kill ends it. Best effort: without it the worker still dies
/// with the host.
fn spawn_keeper(pgid: u32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    let mut keeper = Command::new("/bin/sh");
    keeper
        .args(["-c", "kill -STOP $$"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(pgid);
    // SAFETY: between fork and exec only an async-signal-safe call (signal) is made.
    unsafe {
        keeper.pre_exec(|| {
            default_sighup();
            Ok(())
        });
    }
    if let Err(e) = keeper.spawn() {
        tracing::debug!(pgid, error = %e, "no keeper for the worker's group; its children may outlive a killed host");
    }
}

/// In a child before exec: SIGHUP to its default action (terminate), even if the host
/// ignores it (started under `nohup`), so that an orphaned worker group ends.
pub(crate) fn default_sighup() {
    // SAFETY: signal() is async-signal-safe; SIG_DFL needs no handler.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_DFL);
    }
}

/// In the child, between fork and exec: asks the kernel for SIGKILL when the parent (the
/// spawner thread, so the host process) dies. If the host died before this call — the classic
/// race: the signal is only armed for a parent that is still there — the child is already
/// re-parented and must not start at all. `host` is the host's pid, read before the fork.
///
/// # Safety
/// Only to be called between fork and exec: it makes only async-signal-safe calls.
pub(crate) unsafe fn die_with_parent(host: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe syscalls without memory arguments.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != host {
            // No allocation here: an error from a raw code is allocation-free.
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// The host's pid, as the child will see it from `getppid()`.
pub(crate) fn host_pid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}
