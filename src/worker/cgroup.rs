//! A session's cgroups (the `pids` and `memory` controllers): every process of the session,
//! the worker and whatever it starts (`setsid` or not, in its process group or not), is in
//! them. They bound the processes' number (a fork bomb meets `EAGAIN`) and their memory in
//! all (the kernel's OOM killer ends the worker: `MemoryLimitExceeded`), and find them all
//! when the session ends, so none is left behind. cgroup v1 (`/sys/fs/cgroup/<controller>`)
//! or v2 (children of the host's own cgroup, where the controllers are enabled for it).
//! Where none can be written (no privilege, no delegation), sessions run without: their info
//! then shows `null` for these limits. Writing to cgroupfs is a few small writes to kernel
//! memory: no I/O to wait for.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One session's cgroups; removed (after killing what is left in them) by [`Self::remove`].
#[derive(Debug)]
pub struct SessionCgroup {
    /// Where `pids.*` is (v1: the pids hierarchy; v2: the session's one directory).
    pids: Option<PathBuf>,
    /// Where `memory.*` is.
    memory: Option<PathBuf>,
    /// cgroup v2: one directory for both controllers, `memory.max` and `memory.events`.
    unified: bool,
    /// `cgroup.procs` of each distinct directory, for the child to join before exec.
    procs: Vec<CString>,
}

impl SessionCgroup {
    /// The session's cgroups for `id`, or why there are none.
    pub fn create(id: &str) -> io::Result<SessionCgroup> {
        let name = format!("session-{id}");
        let v1 = Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists();
        let (pids, memory) = if v1 {
            let make = |controller: &str| -> Option<PathBuf> {
                let parent = v1_parent(controller).ok()?;
                sweep_once(controller, &parent);
                let dir = parent.join(&name);
                make_dir(&dir).ok().map(|()| dir)
            };
            (make("pids"), make("memory"))
        } else {
            let parent = v2_parent()?;
            sweep_once("unified", &parent);
            let dir = parent.join(&name);
            make_dir(&dir)?;
            let has = |c: &str| dir.join(format!("{c}.max")).exists();
            (
                has("pids").then(|| dir.clone()),
                has("memory").then(|| dir.clone()),
            )
        };
        let mut dirs: Vec<&PathBuf> = pids.iter().chain(memory.iter()).collect();
        dirs.dedup();
        if dirs.is_empty() {
            return Err(io::Error::other("no cgroup controller can be written here"));
        }
        let procs = dirs
            .iter()
            .map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io::Error::other)?;
        Ok(SessionCgroup {
            pids,
            memory,
            unified: !v1,
            procs,
        })
    }

    /// At most `max` processes (and threads) in the session; `None`: no limit.
    pub fn set_max_processes(&self, max: Option<u64>) -> io::Result<()> {
        let Some(dir) = &self.pids else {
            return if max.is_some() {
                Err(io::Error::other("no pids cgroup for this session"))
            } else {
                Ok(())
            };
        };
        let value = max.map_or_else(|| "max".to_string(), |n| n.max(1).to_string());
        std::fs::write(dir.join("pids.max"), value)
    }

    /// The process limit in force (`None`: none).
    pub fn max_processes(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.pids.as_ref()?.join("pids.max")).ok()?;
        text.trim().parse().ok()
    }

    /// At most `max` bytes of memory for the session's processes in all; `None`: no limit.
    pub fn set_max_memory(&self, max: Option<u64>) -> io::Result<()> {
        let Some(dir) = &self.memory else {
            return if max.is_some() {
                Err(io::Error::other("no memory cgroup for this session"))
            } else {
                Ok(())
            };
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

    /// The `cgroup.procs` paths, for [`join_here`] in a child before exec.
    pub fn procs_paths(&self) -> &[CString] {
        &self.procs
    }

    fn dirs(&self) -> Vec<&PathBuf> {
        let mut dirs: Vec<&PathBuf> = self.pids.iter().chain(self.memory.iter()).collect();
        dirs.dedup();
        dirs
    }

    /// SIGKILL to every process still in the cgroups (children that left the worker's
    /// group, `setsid` or not), then removes them once empty. Each is signalled through a
    /// pidfd taken while it is a member, so a pid reused meanwhile is never hit.
    pub async fn remove(self) {
        for dir in self.dirs() {
            kill_members(dir).await;
            if let Err(e) = std::fs::remove_dir(dir) {
                tracing::warn!(cgroup = %dir.display(), error = %e, "could not remove a session's cgroup");
            }
        }
    }
}

async fn kill_members(dir: &Path) {
    for _ in 0..REMOVE_ATTEMPTS {
        let members = members(dir);
        if members.is_empty() {
            return;
        }
        let mut exits = Vec::new();
        for pid in members {
            if let Some(pidfd) = pidfd_of_member(pid, dir) {
                // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        pidfd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    );
                }
                exits.push(pidfd);
            }
        }
        // not polling: each wait is one process's exit event (its pidfd), bounded by the
        // group-exit deadline.
        let _ = tokio::time::timeout(EXIT_DEADLINE, wait_all(exits)).await;
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

/// Sweeps a parent once per host process (see [`sweep_left_behind`]).
fn sweep_once(key: &str, parent: &Path) {
    static SWEPT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut swept = crate::sync::lock_unpoisoned(&SWEPT);
    if !swept.iter().any(|k| k == key) {
        swept.push(key.to_string());
        sweep_left_behind(parent);
    }
}

/// Rounds of killing what is left (a process may fork once more while being killed).
const REMOVE_ATTEMPTS: usize = 5;
/// How long killed members may take to exit, per round.
const EXIT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// In a child between fork and exec: moves this process into the cgroup whose
/// `cgroup.procs` is `procs` ("0" names the writer). Async-signal-safe: open, write, close.
pub(crate) fn join_here(procs: &CString) -> io::Result<()> {
    // SAFETY: open/write/close with a valid NUL-terminated path and a 1-byte buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        libc::close(fd);
        if written != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Removes session cgroups that a host which died without ending its sessions left behind:
/// empty ones (the kernel refuses to remove a cgroup with processes in it) older than a
/// minute (a live host's session is empty only between creating its cgroup and its worker
/// joining it, a matter of milliseconds).
fn sweep_left_behind(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(60));
        let name = entry.file_name();
        if old && name.to_string_lossy().starts_with("session-") {
            let _ = std::fs::remove_dir(entry.path());
        }
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
/// enabled for its children (a cgroup with processes cannot enable controllers for its
/// children, so the sessions' parent has none of its own).
fn v2_parent() -> io::Result<PathBuf> {
    let own = own_cgroup(str::is_empty)?;
    let base = Path::new("/sys/fs/cgroup").join(own.trim_start_matches('/'));
    let parent = base.join("pyrepl3");
    make_dir(&parent)?;
    for controller in ["+pids", "+memory"] {
        // Each on its own: one the host was not delegated does not stop the other.
        let _ = std::fs::write(parent.join("cgroup.subtree_control"), controller);
    }
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

/// A pidfd for `pid` if it is (still) in the cgroup at `dir`: taken first, checked after, so
/// the pidfd is known to name a member.
fn pidfd_of_member(pid: u32, dir: &Path) -> Option<OwnedFd> {
    // SAFETY: pidfd_open has no memory-safety preconditions.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if raw < 0 {
        return None;
    }
    // SAFETY: a fresh fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let name = dir.file_name()?.to_str()?;
    cgroups
        .lines()
        .any(|l| l.ends_with(&format!("/{name}")))
        .then_some(pidfd)
}

async fn wait_all(pidfds: Vec<OwnedFd>) {
    for pidfd in pidfds {
        // SAFETY: the AsyncFd owns the open pidfd until it is dropped.
        if let Ok(fd) = unsafe { tokio::io::unix::AsyncFd::register(pidfd) } {
            let _ = fd.readable().await;
        }
    }
}
