//! A session's cgroups (the `pids` and `memory` controllers): every process of the session,
//! the worker and whatever it starts (`setsid` or not, in its process group or not), is in
//! them. They bound the processes' number (a fork bomb meets `EAGAIN`) and their memory in
//! all (the kernel's OOM killer ends the worker: `MemoryLimitExceeded`), and find them all
//! when the session ends, so none is left behind. cgroup v1 (`/sys/fs/cgroup/<controller>`)
//! or v2 (children of the host's own cgroup, where the controllers are enabled for it).
//! Where none can be written (no privilege, no delegation), sessions run without: their info
//! then shows `null` for these limits.
//!
//! Layout: `<parent>/pyrepl3/host-<pid>-<start time>/session-<id>`. A host's directory is
//! its own; one whose process is gone (the host was killed) is emptied — its processes
//! killed — and removed by the next host that starts, so survivors of a `kill -9` of the
//! server do not run on forever. Writing to cgroupfs is a few small writes to kernel
//! memory: no I/O to wait for.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;

use super::process::{pid_exit_event, Stragglers};

/// What the last attempt to make a session's cgroups gave: 0 not tried yet, 1 none could be
/// made, 2 cgroup v1, 3 cgroup v2 (shown by `/healthz`).
static LAST_OUTCOME: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Which cgroups sessions get on this host, as last seen: `"v1"`, `"v2"`, `"unavailable"`,
/// or `"unknown"` before the first session (`/healthz`).
#[cfg(feature = "server")]
pub fn cgroups_in_use() -> &'static str {
    match LAST_OUTCOME.load(std::sync::atomic::Ordering::Relaxed) {
        1 => "unavailable",
        2 => "v1",
        3 => "v2",
        _ => "unknown",
    }
}

/// One session's cgroups; emptied and removed by [`Self::remove`].
#[derive(Debug)]
pub struct SessionCgroup {
    /// Where `pids.*` is (v1: the pids hierarchy; v2: the session's one directory).
    pids: Option<PathBuf>,
    /// Where `memory.*` is.
    memory: Option<PathBuf>,
    /// cgroup v2: one directory for both controllers, `memory.max` and `memory.events`.
    unified: bool,
    /// `cgroup.procs` of each directory, opened here (close-on-exec) so that the child only
    /// has to write to it before exec: no `open` in the child, which the open-file limit
    /// set just before could refuse.
    procs: Vec<OwnedFd>,
}

impl SessionCgroup {
    /// The session's cgroups for `id`, or why there are none.
    pub async fn create(id: &str) -> io::Result<SessionCgroup> {
        let made = Self::make(id).await;
        let outcome = match &made {
            Ok(c) if c.unified => 3,
            Ok(_) => 2,
            Err(_) => 1,
        };
        LAST_OUTCOME.store(outcome, std::sync::atomic::Ordering::Relaxed);
        made
    }

    /// Which cgroup version this session's cgroups are.
    pub fn version(&self) -> &'static str {
        if self.unified {
            "v2"
        } else {
            "v1"
        }
    }

    async fn make(id: &str) -> io::Result<SessionCgroup> {
        let name = format!("session-{id}");
        let v1 = Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists();
        let (pids, memory) = if v1 {
            let mut made = [None, None];
            for (slot, controller) in made.iter_mut().zip(["pids", "memory"]) {
                if let Ok(host) = host_dir(controller, v1_parent(controller)).await {
                    let dir = host.join(&name);
                    *slot = make_dir(&dir).ok().map(|()| dir);
                }
            }
            let [pids, memory] = made;
            (pids, memory)
        } else {
            let host = host_dir("unified", v2_parent()).await?;
            let dir = host.join(&name);
            make_dir(&dir)?;
            let has = |c: &str| dir.join(format!("{c}.max")).exists();
            let (pids, memory) = (has("pids"), has("memory"));
            if !pids && !memory {
                let _ = std::fs::remove_dir(&dir);
                return Err(io::Error::other(
                    "neither pids nor memory is enabled for the host's cgroup's children",
                ));
            }
            if memory {
                // Swap would let a session go past its memory limit instead of meeting it.
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            }
            (pids.then(|| dir.clone()), memory.then(|| dir.clone()))
        };
        let mut cgroup = SessionCgroup {
            pids,
            memory,
            unified: !v1,
            procs: Vec::new(),
        };
        let dirs: Vec<PathBuf> = cgroup.dirs().into_iter().cloned().collect();
        if dirs.is_empty() {
            return Err(io::Error::other("no cgroup controller can be written here"));
        }
        for dir in dirs {
            match open_procs(&dir) {
                Ok(fd) => cgroup.procs.push(fd),
                Err(e) => {
                    cgroup.remove().await;
                    return Err(e);
                }
            }
        }
        Ok(cgroup)
    }

    /// At most `max` processes (and threads) in the session; `None`: no limit. Without a
    /// pids cgroup nothing is set (the info then shows no limit).
    pub fn set_max_processes(&self, max: Option<u64>) -> io::Result<()> {
        let Some(dir) = &self.pids else { return Ok(()) };
        let value = max.map_or_else(|| "max".to_string(), |n| n.max(1).to_string());
        std::fs::write(dir.join("pids.max"), value)
    }

    /// The process limit in force (`None`: none).
    pub fn max_processes(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.pids.as_ref()?.join("pids.max")).ok()?;
        text.trim().parse().ok()
    }

    /// At most `max` bytes of memory for the session's processes in all; `None`: no limit.
    /// Without a memory cgroup nothing is set (the info then shows no limit).
    pub fn set_max_memory(&self, max: Option<u64>) -> io::Result<()> {
        let Some(dir) = &self.memory else {
            return Ok(());
        };
        if self.unified {
            let value = max.map_or_else(|| "max".to_string(), |n| n.to_string());
            std::fs::write(dir.join("memory.max"), value)
        } else {
            let value = max.map_or_else(|| "-1".to_string(), |n| n.to_string());
            std::fs::write(dir.join("memory.limit_in_bytes"), value)
        }
    }

    /// The memory limit in force (`None`: none; v1 shows "none" as a huge number).
    pub fn max_memory(&self) -> Option<u64> {
        let file = if self.unified {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        let text = std::fs::read_to_string(self.memory.as_ref()?.join(file)).ok()?;
        text.trim().parse().ok().filter(|n: &u64| *n < (1 << 62))
    }

    /// How many times the kernel's OOM killer ended a process of the session.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.unified {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let Some(dir) = &self.memory else { return 0 };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The `cgroup.procs` fds, for [`join_here`] in a child before exec.
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    fn dirs(&self) -> Vec<&PathBuf> {
        let mut dirs: Vec<&PathBuf> = self.pids.iter().chain(self.memory.iter()).collect();
        dirs.dedup();
        dirs
    }

    /// SIGKILL to every process still in the cgroups (what a worker that was replaced left,
    /// children that left its group, `setsid` or not), waiting until they are gone.
    pub async fn kill_all(&self) {
        for dir in self.dirs() {
            kill_members(dir).await;
        }
    }

    /// [`Self::kill_all`], then removes the cgroups (see [`PENDING_REMOVAL`] for one the
    /// kernel still holds busy).
    pub async fn remove(self) {
        self.kill_all().await;
        retry_pending_removals();
        for dir in self.dirs() {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let mut pending = crate::sync::lock_unpoisoned(&PENDING_REMOVAL);
                    if pending.len() < MAX_PENDING_REMOVALS {
                        tracing::debug!(cgroup = %dir.display(), "session cgroup still busy; removed later");
                        pending.push(dir.clone());
                    } else {
                        tracing::warn!(cgroup = %dir.display(), "could not remove a session's cgroup (busy); the next server's start removes it");
                    }
                }
                Err(e) => {
                    tracing::warn!(cgroup = %dir.display(), error = %e, "could not remove a session's cgroup");
                }
            }
        }
    }
}

/// Session cgroups whose removal the kernel refused for a moment (`EBUSY`, though every
/// process of the session was reported gone: the release of a sandbox's namespace, its
/// mounts and their memory, finishes in the kernel's own time). Not waited for (there is no
/// event for it under cgroup v1): retried each time another session's cgroups are removed,
/// and at the service's close; what is still left then is removed by the next server's
/// start (the sweep of dead hosts).
static PENDING_REMOVAL: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
/// At most this many are remembered (each is an empty directory).
const MAX_PENDING_REMOVALS: usize = 1024;

/// Tries again to remove the cgroups [`PENDING_REMOVAL`] holds; keeps those still busy.
pub fn retry_pending_removals() {
    crate::sync::lock_unpoisoned(&PENDING_REMOVAL).retain(|dir| match std::fs::remove_dir(dir) {
        Ok(()) => false,
        Err(e) => e.raw_os_error() == Some(libc::EBUSY),
    });
}

/// Rounds of killing what is left (a process may fork once more while being killed).
const REMOVE_ATTEMPTS: usize = 5;
/// How long killed members may take to exit, per round.
const EXIT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Kills every member of the cgroup at `dir`, each through a pidfd taken while it is a
/// member (so a pid reused meanwhile is never hit), and waits for their exits.
async fn kill_members(dir: &Path) {
    for _ in 0..REMOVE_ATTEMPTS {
        let members = members(dir);
        if members.is_empty() {
            return;
        }
        let mut exits = Vec::new();
        for pid in members {
            if let Some(exit) = exit_event_of_member(pid, dir) {
                // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        exit.get_ref().as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    );
                }
                exits.push(exit);
            }
        }
        Stragglers::of(exits).wait_gone(EXIT_DEADLINE).await;
    }
}

fn members(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn make_dir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn open_procs(dir: &Path) -> io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?;
    Ok(OwnedFd::from(file))
}

/// In a child between fork and exec: moves this process into the cgroup whose
/// `cgroup.procs` is open as `procs` ("0" names the writer). Async-signal-safe: one write.
pub(crate) fn join_here(procs: RawFd) -> io::Result<()> {
    // SAFETY: write of one byte from a static buffer to an fd the parent opened for us.
    if unsafe { libc::write(procs, b"0".as_ptr().cast(), 1) } != 1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// This host's directory under `parent` (made on first use), after emptying and removing,
/// once per process and hierarchy, those of hosts that are gone.
async fn host_dir(key: &str, parent: io::Result<PathBuf>) -> io::Result<PathBuf> {
    let parent = parent?;
    let me = host_name(std::process::id()).ok_or_else(|| io::Error::other("no /proc/self"))?;
    let dir = parent.join(&me);
    let first_use = {
        static SWEPT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let mut swept = crate::sync::lock_unpoisoned(&SWEPT);
        let first = !swept.iter().any(|k| k == key);
        if first {
            swept.push(key.to_string());
        }
        first
    };
    if first_use {
        sweep_dead_hosts(&parent).await;
    }
    make_dir(&dir)?;
    if key == "unified" {
        for controller in ["+pids", "+memory"] {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), controller);
        }
    }
    Ok(dir)
}

/// `host-<pid>-<start time>`: names this process and no other, even after its pid is
/// reused (the start time, in clock ticks since boot, differs).
fn host_name(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime); the fields after the command name start after the last ')'.
    let start = stat[stat.rfind(')')? + 2..].split_whitespace().nth(19)?;
    Some(format!("host-{pid}-{start}"))
}

/// Empties (kills every process in) and removes the session cgroups of hosts that are gone:
/// survivors of a `kill -9` of the server, outside the worker's group, end here.
async fn sweep_dead_hosts(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("host-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if host_name(pid).as_deref() == Some(name.as_str()) {
            continue; // alive
        }
        let host = entry.path();
        if let Ok(sessions) = std::fs::read_dir(&host) {
            for session in sessions.flatten().filter(|e| e.path().is_dir()) {
                kill_members(&session.path()).await;
                let _ = std::fs::remove_dir(session.path());
            }
        }
        let _ = std::fs::remove_dir(&host);
    }
}

/// Where session cgroups go under cgroup v1: `pyrepl3` under the host's own cgroup of the
/// controller's hierarchy.
fn v1_parent(controller: &str) -> io::Result<PathBuf> {
    let own = own_cgroup(|controllers| controllers.split(',').any(|c| c == controller))?;
    let parent = Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(own.trim_start_matches('/'))
        .join("pyrepl3");
    make_dir(&parent)?;
    Ok(parent)
}

/// Under cgroup v2: a `pyrepl3` child of the host's own cgroup, with `pids` and `memory`
/// enabled for its children. This works where the host's own cgroup already enables them
/// for its children (the host then sits in a leaf of its own, as a service manager's
/// delegation sets it up); else sessions run without cgroups.
fn v2_parent() -> io::Result<PathBuf> {
    let own = own_cgroup(str::is_empty)?;
    let base = Path::new("/sys/fs/cgroup").join(own.trim_start_matches('/'));
    let parent = base.join("pyrepl3");
    make_dir(&parent)?;
    for controller in ["+pids", "+memory"] {
        // Each on its own: one the host was not delegated does not stop the other.
        let _ = std::fs::write(parent.join("cgroup.subtree_control"), controller);
    }
    // The host directories below need them enabled for the sessions too.
    Ok(parent)
}

/// This process's cgroup path for the hierarchy whose controller list matches.
fn own_cgroup(matches: impl Fn(&str) -> bool) -> io::Result<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            matches(controllers).then(|| path.to_string())
        })
        .next()
        .ok_or_else(|| io::Error::other("no such cgroup hierarchy for this process"))
}

/// The exit event (pidfd) of `pid` if it is (still) in the cgroup at `dir`: taken first,
/// checked after, so the pidfd is known to name a member.
fn exit_event_of_member(pid: u32, dir: &Path) -> Option<AsyncFd<OwnedFd>> {
    let exit = pid_exit_event(pid).ok()?;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let name = dir.file_name()?.to_str()?;
    cgroups
        .lines()
        .any(|l| l.ends_with(&format!("/{name}")))
        .then_some(exit)
}
