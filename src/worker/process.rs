//! One worker process, owned: its pid, a pidfd that tells when it exits, signals to it and to
//! its process group, and reaping it. This is the only place that signals a worker.
//!
//! The rule that makes it safe: a pid (and the process group named after it) can only be
//! reused once the process has been reaped, so every signal is sent while the leader is not
//! reaped yet, and [`WorkerProcess::reap`] consumes the value, leaving nothing to signal with.
//! The Python process that runs the code is not our child (the session's supervisor is its
//! parent, and reaps it): it is held by a pidfd, and killed through it; the SIGINT to its
//! main thread (`tgkill`, which takes a pid) is sent only while that pidfd says it runs,
//! which leaves the moment between the check and the signal (a pid is reused only after
//! the whole range has wrapped).
//! Its exit is learnt from the pidfd (an event), not from `waitpid`, so that the group can be
//! swept while the dead leader still holds its pid.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitStatus;
use std::time::Duration;

use futures::FutureExt;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::process::Child;

use super::procfs::group_members;
use super::spawner::GroupLeader;
use crate::error::Error;

/// A live (not yet reaped) worker process that leads its own process group. The process we
/// start (and track, signal as a group, and reap) is the session's supervisor (the agent's
/// first process, `worker/transaction.py`) or, in a sandbox, its launcher; the Python process
/// that runs the code is a descendant, found from the pid it reports
/// ([`WorkerProcess::relocate`]), and replaced when a transaction's snapshot takes over.
#[derive(Debug)]
pub struct WorkerProcess {
    /// Not reaped while this value exists: `reap` consumes it.
    child: Child,
    /// Started by a sandbox launcher (`sandbox.rs`): the supervisor is not `child`.
    sandboxed: bool,
    /// The Python process that runs the code, once located. It is not our child, so its
    /// pid is checked against its pidfd before each use.
    python: std::sync::Mutex<Option<Located>>,
    /// The group's keeper (see `spawner.rs`), a member of the group: killed with it, and
    /// reaped by `reap` (or, if this value is dropped instead, by tokio in the background).
    keeper: Option<Child>,
    pid: u32,
    /// Tells when the process has exited, without reaping it.
    exit: ExitWatch,
    /// Processes that serve this worker from outside its sandbox (its outbound network
    /// stack): killed and reaped with it.
    helpers: Vec<Child>,
    /// Set by `reap` once the leader is reaped: from then on its pid may be reused, and
    /// `Drop` must not signal it.
    reaped: bool,
}

impl WorkerProcess {
    /// Takes ownership of a just-spawned child that leads its own process group (and of the
    /// group's keeper). On error `group` is dropped, which kills the whole group.
    pub(crate) fn new(group: GroupLeader, sandboxed: bool) -> Result<Self, Error> {
        let not_tracked = || Error::StartFailed {
            status: "exited before it could be tracked".into(),
            stderr: String::new(),
        };
        let pid = group.id().ok_or_else(not_tracked)?;
        // The child is not reaped (nothing waited for it), so `pid` is still its own.
        let exit = ExitWatch::new(pid).map_err(Error::io("watching the worker's exit"))?;
        let (child, keeper) = group.into_parts().ok_or_else(not_tracked)?;
        Ok(WorkerProcess {
            child,
            sandboxed,
            python: std::sync::Mutex::new(None),
            keeper,
            pid,
            helpers: Vec::new(),
            exit,
            reaped: false,
        })
    }

    /// The Python process's pid as the host sees it (what `ps` and `top` show), once known;
    /// until then (a sandbox still being built) the launcher's.
    pub fn pid(&self) -> u32 {
        self.locate().unwrap_or(self.pid)
    }

    /// The host pid of the Python process that runs the code, while it runs (as located by
    /// [`Self::relocate`]).
    pub fn locate(&self) -> Option<u32> {
        let python = self.python.lock().ok()?;
        let located = python.as_ref()?;
        located.alive().then_some(located.pid)
    }

    /// Finds the Python process that reported `worker_pid` (its pid in its own namespace: in
    /// the `ready` message, or when a transaction's snapshot took over) among the
    /// descendants of the process we started, and remembers it with its pidfd. Called while
    /// that process runs (it just spoke), so the pid found is its own; it is checked again
    /// once the pidfd is held. False if it could not be found.
    pub fn relocate(&self, worker_pid: u32) -> bool {
        let root = self.pid;
        let found = descendants(root, LOCATE_DEPTH)
            .into_iter()
            .find(|&pid| innermost_pid(pid) == Some(worker_pid))
            .and_then(|pid| {
                // Checked again once the pidfd is held, which names one process for good:
                // the pid it was taken for is still the one reported, still a descendant of
                // ours, and still running (not a pid reused meanwhile).
                let located = Located {
                    pid,
                    exit: pidfd(pid).ok(),
                };
                (innermost_pid(pid) == Some(worker_pid)
                    && descends_from(pid, root, LOCATE_DEPTH)
                    && located.alive())
                .then_some(located)
            });
        let Ok(mut python) = self.python.lock() else {
            return false;
        };
        let located = found.is_some();
        if located {
            *python = found;
        }
        located
    }

    /// SIGKILL to the Python process alone (a transaction's snapshot then takes over), by
    /// its pidfd: never to a process that reused its pid. False if it is not located or
    /// already gone.
    pub fn kill_python(&self) -> bool {
        let Ok(python) = self.python.lock() else {
            return false;
        };
        let Some(Located { exit: Some(fd), .. }) = python.as_ref() else {
            return false;
        };
        // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        sent == 0
    }

    /// Calls `f` on each process of the worker whose limits its Python process has or will
    /// inherit, parents first: the process we started (the supervisor, or in a sandbox its
    /// launcher), in a sandbox the supervisor (the namespace's pid 1), and the Python process,
    /// as far as they exist yet. Each is looked up only after its parent was done, so a
    /// process started meanwhile inherits what `f` set on its parent (a worker still being
    /// built gets the limits all the same).
    pub fn each_process_parents_first(
        &self,
        mut f: impl FnMut(u32) -> io::Result<()>,
    ) -> io::Result<()> {
        f(self.pid)?;
        // In a sandbox the launcher's child is the supervisor (the namespace's pid 1);
        // without one the process we started is the supervisor.
        let mut supervisor = self.pid;
        if self.sandboxed {
            let Some(child) = super::sandbox::first_child(supervisor) else {
                return Ok(());
            };
            f(child)?;
            supervisor = child;
        }
        // The worker: the one located, else the supervisor's first child (the worker it
        // forked at start-up, before anything else).
        match self
            .locate()
            .or_else(|| super::sandbox::first_child(supervisor))
        {
            Some(python) => f(python),
            None => Ok(()),
        }
    }

    /// CPU seconds of the children the session's supervisor has reaped: the worker processes
    /// that ended (a transaction's snapshot took over from them) and what they left behind.
    /// Read from the kernel (`cutime` + `cstime`), so nothing the worker says can change it.
    pub fn reaped_cpu_secs(&self) -> Option<f64> {
        let supervisor = if self.sandboxed {
            super::sandbox::first_child(self.pid)?
        } else {
            self.pid
        };
        super::procfs::reaped_children_cpu_secs(supervisor)
    }

    /// The pid of the process we started (in a sandbox, its launcher).
    pub(crate) fn launcher_pid(&self) -> u32 {
        self.pid
    }

    /// Makes `helper` (a process serving this worker, `kill_on_drop`) end with it.
    pub(crate) fn attach_helper(&mut self, helper: Child) {
        self.helpers.push(helper);
    }

    /// Resolves once the process has exited (it is then a zombie until [`Self::reap`]).
    /// Cancel-safe: it only waits for readiness.
    pub async fn exited(&self) {
        self.exit.exited().await;
    }

    /// SIGKILL to every process of the worker's group, and to the worker itself: user code
    /// can move the worker out of its group (`setpgid` into another group of the session),
    /// which a group kill alone would then miss. Safe: the leader is not reaped, so neither
    /// its pid nor the group id can name anybody else's process.
    ///
    /// In a sandbox: SIGKILL to the namespace's pid 1 only, which ends every process of the
    /// namespace; the launcher, which waits for it, then reaps it and exits. Killing the
    /// launcher as well would orphan pid 1, to be reaped whenever its adopter gets to it,
    /// and a zombie keeps the session's cgroup busy (its removal fails). Safe: pid 1 is the
    /// launcher's child, and the launcher (ours, not reaped) has not reaped it while it is
    /// listed. Before pid 1 exists, or once it is gone, the launcher's group is killed.
    pub fn kill_group(&self) {
        // The Python process too: user code can move it out of the group (`setpgid`).
        self.kill_python();
        if self.sandboxed {
            if let Some(init) = super::sandbox::first_child(self.pid)
                .and_then(|p| libc::pid_t::try_from(p).ok())
                .filter(|p| *p > 1)
            {
                // SAFETY: kill has no memory-safety preconditions (see above for the pid).
                unsafe {
                    libc::kill(init, libc::SIGKILL);
                }
                return;
            }
        }
        signal_group(self.pid, libc::SIGKILL);
        if let Ok(pid) = libc::pid_t::try_from(self.pid) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }

    /// Delivers SIGINT to the worker's main thread (its tid is its pid), where user code
    /// runs, for the execution numbered `seq`. Unlike a `cancel` message this needs nothing
    /// from the worker's reader thread, which would first have to win the GIL from a busy
    /// main thread (up to the 5 ms switch interval). The target is written to the
    /// signal-target file first, so the worker can tell a signal for code that has not
    /// started yet (kept until it starts) from one for code that already finished (ignored):
    /// a signal carries no data of its own.
    ///
    /// In a sandbox the Python process is not our child: it could in principle be reaped
    /// (by the namespace's pid 1) and its pid reused just before the signal. It is not a
    /// practical risk: its death ends the namespace and then the launcher, whose exit is
    /// what ends this value's use, and a pid is reused only after the whole range wrapped.
    pub fn interrupt_main_thread(&self, signal_target: &OwnedFd, seq: u64) {
        let Some(pid) = self.locate().and_then(|p| libc::pid_t::try_from(p).ok()) else {
            return;
        };
        let bytes = seq.to_le_bytes();
        // SAFETY: pwrite of 8 bytes from a valid buffer to an fd we own; a failure only
        // means the worker falls back to its untargeted rule.
        unsafe {
            libc::pwrite(
                signal_target.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
            );
        }
        // SAFETY: tgkill has no memory-safety preconditions; the thread is ours (unreaped).
        unsafe {
            libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGINT);
        }
    }

    /// After [`Self::exited`]: sweeps the group (children of user code do not outlive the
    /// worker), takes an exit event of every process of the group still dying, then reaps the
    /// leader. What is left cannot signal anything: it can only wait for the stragglers.
    pub async fn reap(mut self) -> (io::Result<ExitStatus>, Stragglers) {
        self.kill_group();
        // The keeper is a member: killed just above (it cannot leave the group: only the
        // host, its parent, could move it). Reaped here so that no zombie stays behind.
        if let Some(mut keeper) = self.keeper.take() {
            let _ = keeper.wait().await;
        }
        for mut helper in std::mem::take(&mut self.helpers) {
            let _ = helper.start_kill();
            let _ = helper.wait().await;
        }
        // The dead leader still holds the group id (it is reaped only below), so every member
        // found is ours. Scanning /proc is blocking work: not on the runtime's thread.
        let leader = self.pid;
        let members = tokio::task::spawn_blocking(move || group_members(leader))
            .await
            .unwrap_or_default();
        let stragglers = members
            .into_iter()
            .filter(|&pid| pid != leader)
            .filter_map(|pid| pid_exit_event(pid).ok())
            .collect();
        // The leader has exited: this returns at once.
        let status = self.child.wait().await;
        self.reaped = status.is_ok();
        let status = match status {
            Ok(status) if self.sandboxed => Ok(sandboxed_exit(status)),
            other => other,
        };
        (status, Stragglers(stragglers))
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // Whatever path drops a live worker (including the runtime shutting down under us),
        // no process of its group survives it. Not reaped yet, so the group is still ours;
        // tokio's `kill_on_drop` then reaps the leader in the background.
        if !self.reaped {
            self.kill_group();
        }
    }
}

/// Processes of a reaped worker's group that were killed but had not died yet, each held by
/// its own pidfd (no pid is kept, so none can be signalled after it is reused).
#[derive(Debug, Default)]
pub struct Stragglers(Vec<AsyncFd<OwnedFd>>);

impl Stragglers {
    /// Processes known by their exit events (pidfds).
    pub(super) fn of(events: Vec<AsyncFd<OwnedFd>>) -> Stragglers {
        Stragglers(events)
    }

    /// Adds `other`, forgetting those known to have exited already (the reactor learns that
    /// a pidfd is readable only on a later turn, so this prunes the older entries), so the
    /// list stays about as long as what is dying.
    pub fn merge(&mut self, other: Stragglers) {
        self.0.extend(other.0);
        self.0.retain(|fd| fd.readable().now_or_never().is_none());
    }

    /// Waits until every straggler has exited, or `within` passes. Returns whether all did.
    pub async fn wait_gone(self, within: Duration) -> bool {
        // not polling: one deadline bounding the wait for every member's exit event.
        let deadline = tokio::time::Instant::now() + within;
        for exited in &self.0 {
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
}

/// How the exit of a worker is learnt without reaping it: its pidfd becoming readable, or,
/// where `pidfd_open` fails (kernels before 5.3, seccomp profiles, valgrind), a thread of its
/// own blocked in `waitid(WNOWAIT)` that reports the exit once.
#[derive(Debug)]
enum ExitWatch {
    Pidfd(AsyncFd<OwnedFd>),
    Thread(tokio::sync::watch::Receiver<bool>),
}

impl ExitWatch {
    fn new(pid: u32) -> io::Result<ExitWatch> {
        match pid_exit_event(pid) {
            Ok(fd) => Ok(ExitWatch::Pidfd(fd)),
            // ENOSYS where the kernel or a tool lacks it, EPERM/EACCES where a seccomp
            // profile refuses it: either way the thread still tells the exit.
            Err(e) => {
                tracing::debug!(error = %e, "no pidfd for the worker; a thread waits for its exit");
                ExitWatch::thread(pid)
            }
        }
    }

    fn thread(pid: u32) -> io::Result<ExitWatch> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        // A plain thread, not the blocking pool: it stays blocked for the worker's whole
        // life, and the pool's bound would otherwise cap the number of sessions.
        std::thread::Builder::new()
            .name(format!("pyrepl3-exit-{pid}"))
            .stack_size(64 * 1024)
            .spawn(move || {
                wait_exited_not_reaped(pid);
                let _ = tx.send(true);
            })?;
        Ok(ExitWatch::Thread(rx))
    }

    async fn exited(&self) {
        match self {
            // An error here means the fd cannot be polled, which a pidfd always can; treating
            // it as "exited" leads to `reap`, whose wait tells the truth either way.
            ExitWatch::Pidfd(fd) => {
                let _ = fd.readable().await;
            }
            ExitWatch::Thread(rx) => {
                let _ = rx.clone().wait_for(|exited| *exited).await;
            }
        }
    }
}

/// Blocks until `pid` (a child of this process) has exited, leaving it a zombie.
fn wait_exited_not_reaped(pid: u32) {
    loop {
        // SAFETY: waitid writes into the zeroed siginfo we own; WNOWAIT leaves the child
        // unreaped, so its pid stays ours until `reap`.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return;
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINTR) {
            // ECHILD: the embedding program ignores SIGCHLD, so children are reaped by the
            // kernel and no exit can be told without reaping. Reporting it anyway ends the
            // session (its group is killed by `reap`) instead of leaving its code to wait
            // forever for a death nobody would see.
            tracing::error!(pid, %error, "cannot wait for the worker's exit; ending its session");
            return;
        }
    }
}

/// How a sandboxed worker ended, from its launcher's exit: `bwrap` exits with the worker's
/// code, or 128 + the signal that killed it, which is reported as that signal (so a worker
/// that calls `sys.exit(137)` in a sandbox is reported as killed by SIGKILL).
fn sandboxed_exit(status: ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match status.code() {
        Some(code) if (129..129 + 64).contains(&code) => ExitStatus::from_raw(code - 128),
        _ => status,
    }
}

/// SIGKILL/SIGINT/... to the process group `pgid`; pids ≤ 1 are refused so that a bug can
/// never signal the host's own group or every process.
fn signal_group(pgid: u32, signal: i32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: killpg has no memory-safety preconditions. ESRCH (group already gone) is fine.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

/// How deep below the process we start the Python process may be: launcher, the supervisor
/// (the namespace's pid 1), the worker.
const LOCATE_DEPTH: usize = 2;

/// The located Python process: its host pid and, if the kernel gave one, its pidfd.
#[derive(Debug)]
struct Located {
    pid: u32,
    exit: Option<OwnedFd>,
}

impl Located {
    /// Whether it still runs. It is not our child: once it exits, its parent reaps it and
    /// its pid may in principle be reused. Its pidfd (taken while it ran) tells, without a
    /// wait. Without a pidfd it counts as running.
    fn alive(&self) -> bool {
        let Some(fd) = &self.exit else {
            return true;
        };
        let mut poll = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // not polling: a zero-timeout look at an exit event, once per use of the pid.
        // SAFETY: poll on one valid pollfd we own.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready == 0
    }
}

/// `root`'s descendants down to `depth` levels, nearest first (children as the kernel lists
/// them for each process's main thread).
fn descendants(root: u32, depth: usize) -> Vec<u32> {
    let mut found = Vec::new();
    let mut level = vec![root];
    for _ in 0..depth {
        let next: Vec<u32> = level
            .iter()
            .flat_map(|&pid| {
                std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        found.extend(&next);
        level = next;
    }
    found
}

/// Whether `root` is among `pid`'s ancestors, at most `depth` generations up.
fn descends_from(pid: u32, root: u32, depth: usize) -> bool {
    let mut current = pid;
    for _ in 0..depth {
        match parent_of(current) {
            Some(parent) if parent == root => return true,
            Some(parent) if parent > 1 => current = parent,
            _ => return false,
        }
    }
    false
}

fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("PPid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `pid`'s pid in its innermost pid namespace (the last `NSpid` field of its status): what
/// the process itself sees from `getpid()`.
fn innermost_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// A pidfd of `pid` (readable once it exits).
fn pidfd(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open has no memory-safety preconditions.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A pidfd that becomes readable when `pid` exits.
pub(super) fn pid_exit_event(pid: u32) -> io::Result<AsyncFd<OwnedFd>> {
    let owned = pidfd(pid)?;
    // SAFETY: `owned` stays open, and is the same fd, for as long as the AsyncFd owns it.
    unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leader that exits at once, leaving a child behind in its group.
    fn leader_with_orphan() -> WorkerProcess {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "sleep 1000 & echo $! ; exec true"])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        WorkerProcess::new(GroupLeader::without_keeper(cmd.spawn().unwrap()), false).unwrap()
    }

    #[tokio::test]
    async fn reaping_sweeps_the_group_first_and_waits_for_what_was_left() {
        let mut process = leader_with_orphan();
        let stdout = process.child.stdout.take().unwrap();
        let mut line = String::new();
        use tokio::io::AsyncBufReadExt;
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .unwrap();
        let orphan: u32 = line.trim().parse().unwrap();
        process.exited().await;
        let pgid = process.pid();
        assert!(
            group_members(pgid).contains(&orphan),
            "the child outlived its leader"
        );
        let (status, stragglers) = process.reap().await;
        assert!(status.unwrap().success());
        assert!(stragglers.wait_gone(Duration::from_secs(5)).await);
        assert!(
            group_members(pgid).is_empty(),
            "nothing of the group is left"
        );
    }

    #[tokio::test]
    async fn without_pidfd_a_thread_learns_the_exit_and_leaves_the_reaping_to_reap() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "exit 7"])
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().unwrap();
        let pid = child.id().unwrap();
        let mut process = WorkerProcess::new(GroupLeader::without_keeper(child), false).unwrap();
        process.exit = ExitWatch::thread(pid).unwrap();
        process.exited().await;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        assert!(stat.contains(") Z "), "a zombie, not reaped yet: {stat}");
        let (status, _) = process.reap().await;
        assert_eq!(status.unwrap().code(), Some(7));
    }
}
