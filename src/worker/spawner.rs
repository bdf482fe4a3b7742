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
//!
//! Also here: the keeper of each worker's process group (it ends what user code started when
//! the host dies; see [`spawn_keeper`]), the guard that kills a group whose spawn was
//! abandoned ([`GroupLeader`]), and the open-file limit workers get back in `pre_exec`.

use std::io;
use std::os::fd::OwnedFd;
use std::panic::AssertUnwindSafe;
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};

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
/// If the caller stops waiting, the whole group is killed (see [`GroupLeader`]).
pub(crate) async fn spawn_group_leader(cmd: Command, with_keeper: bool) -> io::Result<GroupLeader> {
    run(move || {
        let leader = cmd_spawn(cmd)?;
        let keeper = leader.id().filter(|_| with_keeper).and_then(spawn_keeper);
        Ok(GroupLeader {
            leader: Some(leader),
            keeper,
        })
    })
    .await
}

fn cmd_spawn(mut cmd: Command) -> io::Result<Child> {
    cmd.spawn()
}

async fn run<T: Send + 'static>(
    spawn: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    let (reply, answer) = oneshot::channel();
    let job: Job = Box::new(move || {
        // A caller that stopped waiting while the request was queued: nothing is forked.
        if reply.is_closed() {
            return;
        }
        let _runtime = handle.enter();
        // A caller that stopped waiting during the fork gets nothing: what was spawned is
        // dropped here, inside the runtime, which kills and reaps it.
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

/// A just-spawned worker that leads its own process group, and the group's keeper. Until
/// [`GroupLeader::into_parts`] hands them over, dropping it kills the whole group (keeper
/// included): a caller that went away during the spawn, or a failure before the worker is
/// owned, leaves no process behind. Safe: the leader is not reaped while this value holds
/// it, so its group id cannot name anybody else's group.
#[derive(Debug)]
pub(crate) struct GroupLeader {
    leader: Option<Child>,
    keeper: Option<Child>,
}

impl GroupLeader {
    /// A leader without a keeper (tests).
    #[cfg(test)]
    pub(crate) fn without_keeper(leader: Child) -> GroupLeader {
        GroupLeader {
            leader: Some(leader),
            keeper: None,
        }
    }

    /// The leader's pid, which is its group's id.
    pub(crate) fn id(&self) -> Option<u32> {
        self.leader.as_ref().and_then(Child::id)
    }

    /// The leader and the keeper, for their new owner (which then kills the group itself).
    pub(crate) fn into_parts(mut self) -> Option<(Child, Option<Child>)> {
        let leader = self.leader.take()?;
        Some((leader, self.keeper.take()))
    }
}

impl Drop for GroupLeader {
    fn drop(&mut self) {
        let Some(pgid) = self.id().and_then(|id| libc::pid_t::try_from(id).ok()) else {
            return;
        };
        if pgid > 1 {
            // SAFETY: killpg has no memory-safety preconditions; the leader is not reaped,
            // so the group id is still ours. The fields' `kill_on_drop` then has tokio reap
            // both children.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

/// The pipe whose read end every keeper has as stdin, and whose write end only the host
/// holds. Both ends are close-on-exec, so no child keeps the write end past its `exec` (a
/// child holds a copy only between its fork and its exec); keepers get the read end on fd 0,
/// which `exec` keeps. Nothing is ever written: the host's end, however it happens, closes
/// the write end, and every keeper reads end-of-file at once. Made on first use and held
/// for the life of the process (`None` if it could not be made: then there are no keepers).
static KEEPER_PIPE: OnceLock<Option<(io::PipeReader, io::PipeWriter)>> = OnceLock::new();

/// What a keeper runs: ignore the signals user code may send its own group to end what it
/// started (`os.killpg(0, SIGTERM)`, a Ctrl-C relayed to the group...), which would end a
/// `sh` blocked in `read`; wait for end-of-file on stdin (the host's death); then SIGKILL its
/// process group (`kill` to pid 0 signals the caller's own group: the worker's). Only
/// SIGKILL (the group kill at a session's end) and SIGSTOP reach it.
const KEEPER_SCRIPT: &str = "trap '' HUP INT QUIT TERM TSTP USR1 USR2 ALRM; read _; kill -s KILL 0";

/// Starts the keeper of a worker's process group: a `sh` in the group, blocked reading the
/// host's keeper pipe ([`KEEPER_PIPE`]), that kills the whole group once the host is gone.
/// The parent-death signal kills the worker itself, but not what user code started (it is
/// not inherited across fork), and the worker, killed at once, cannot sweep its group as it
/// does when it sees the host's channels close. Unlike the kernel's orphaned-group SIGHUP,
/// this works whoever adopts the orphans (init, a subreaper, tini in the host's session).
/// While the host lives the keeper only waits: the group kill at the end of a session ends
/// it, and its owner ([`super::WorkerProcess`]) reaps it. Spawned on the spawner thread
/// right after the worker, which cannot have been reaped yet, so its group id is still the
/// worker's. Best effort: without it the worker still dies with the host, its children may
/// not.
fn spawn_keeper(pgid: u32) -> Option<Child> {
    let pgid = i32::try_from(pgid).ok()?;
    let pipe = KEEPER_PIPE.get_or_init(|| match io::pipe() {
        Ok(ends) => Some(ends),
        Err(e) => {
            tracing::warn!(error = %e, "no keeper pipe: children of workers may outlive a killed host");
            None
        }
    });
    let stdin = match pipe.as_ref().map(|(read, _)| read.try_clone()) {
        Some(Ok(read)) => read,
        Some(Err(e)) => {
            tracing::warn!(pgid, error = %e, "no keeper for the worker's group: its children may outlive a killed host");
            return None;
        }
        None => return None,
    };
    let mut keeper = Command::new("/bin/sh");
    keeper
        .args(["-c", KEEPER_SCRIPT])
        .stdin(Stdio::from(OwnedFd::from(stdin)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(pgid)
        .kill_on_drop(true);
    match keeper.spawn() {
        Ok(child) => Some(child),
        Err(e) => {
            tracing::warn!(pgid, error = %e, "no keeper for the worker's group: its children may outlive a killed host");
            None
        }
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

/// The soft open-file limit (`RLIMIT_NOFILE`) workers start with, when the host raised its
/// own (see [`keep_open_file_limit_for_workers`]); unset: workers inherit the host's.
static WORKERS_OPEN_FILES: OnceLock<libc::rlim_t> = OnceLock::new();

/// Records the soft open-file limit the host had before raising it (a server raises it for
/// its sockets), so that workers start with that one, not the raised one: Python code then
/// sees the limit of the login that started the server (a soft limit in the millions breaks
/// `select()` users and makes `close_fds` loops slow). The first call wins.
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
pub fn keep_open_file_limit_for_workers(soft: u64) {
    let _ = WORKERS_OPEN_FILES.set(soft as libc::rlim_t);
}

/// The value for [`restore_open_file_limit`], read before the fork.
pub(crate) fn workers_open_file_limit() -> Option<libc::rlim_t> {
    WORKERS_OPEN_FILES.get().copied()
}

/// In the child, between fork and exec: lowers the soft open-file limit back to `soft` (the
/// hard limit is left as it is). Nothing to do if it was not recorded or is not above it.
///
/// # Safety
/// Only to be called between fork and exec: it makes only async-signal-safe calls.
pub(crate) unsafe fn restore_open_file_limit(soft: Option<libc::rlim_t>) -> io::Result<()> {
    let Some(soft) = soft else {
        return Ok(());
    };
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit are syscalls writing/reading an rlimit on our stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) < 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur > soft {
            limit.rlim_cur = soft;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::*;
    use crate::worker::procfs::group_members;

    /// `sleep` as a group leader that writes its pid to `report` before its exec.
    fn reporting_leader(report: &io::PipeWriter) -> Command {
        let fd = report.as_raw_fd();
        let mut cmd = Command::new("sleep");
        cmd.arg("100").process_group(0).kill_on_drop(true);
        // SAFETY: getpid and write are async-signal-safe; the buffer is on the stack.
        unsafe {
            cmd.pre_exec(move || {
                let pid = libc::getpid();
                libc::write(fd, (&raw const pid).cast(), std::mem::size_of_val(&pid));
                Ok(())
            });
        }
        cmd
    }

    /// Waits (on pidfds, within a deadline) until no live process of `pgid`'s group is left.
    async fn group_ends(pgid: u32) -> bool {
        for pid in group_members(pgid) {
            // SAFETY: pidfd_open has no memory-safety preconditions.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
            if fd < 0 {
                continue; // gone already
            }
            // SAFETY: a fresh fd that nothing else owns.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
            // SAFETY: `fd` stays open, and the same fd, for as long as the AsyncFd owns it.
            let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }.unwrap();
            if tokio::time::timeout(Duration::from_secs(5), fd.readable())
                .await
                .is_err()
            {
                return false;
            }
        }
        group_members(pgid).is_empty()
    }

    #[tokio::test]
    async fn a_dropped_group_leader_takes_its_keeper_along() {
        let (mut read, write) = io::pipe().unwrap();
        let group = spawn_group_leader(reporting_leader(&write), true)
            .await
            .unwrap();
        let pgid = group.id().unwrap();
        let members = group_members(pgid);
        assert_eq!(members.len(), 2, "the leader and its keeper: {members:?}");
        drop((group, write));
        assert!(group_ends(pgid).await, "{:?} left", group_members(pgid));
        let mut pids = Vec::new();
        read.read_to_end(&mut pids).unwrap();
        assert_eq!(pids.len(), 4, "the leader was started once");
    }

    /// A caller that stops waiting while its spawn is queued: nothing of it runs, or, if it
    /// was forked already, nothing of its group is left (no keeper either).
    #[tokio::test]
    async fn a_spawn_abandoned_in_the_queue_leaves_no_process() {
        let (mut read, write) = io::pipe().unwrap();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        // The spawner thread busy with a job that waits for `release`.
        let mut blocker = Box::pin(run(move || {
            let _ = hold.recv();
            Ok(())
        }));
        assert!(futures::poll!(&mut blocker).is_pending());
        let mut abandoned = Box::pin(spawn_group_leader(reporting_leader(&write), true));
        assert!(futures::poll!(&mut abandoned).is_pending());
        drop(abandoned);
        release.send(()).unwrap();
        blocker.await.unwrap();
        // Every job before this one is done (the queue is first in, first out).
        run(|| Ok(())).await.unwrap();
        drop(write);
        let mut pids = Vec::new();
        read.read_to_end(&mut pids).unwrap();
        for pid in pids.chunks_exact(4) {
            let pid = u32::from_ne_bytes(pid.try_into().unwrap());
            assert!(group_ends(pid).await, "{:?} left", group_members(pid));
        }
    }
}
