//! A session's process cgroup (the `pids` controller): every process of the session, the
//! worker and whatever it starts (`setsid` or not, in its process group or not), is in it.
//! It bounds their number (a fork bomb meets `EAGAIN`) and finds them all when the session
//! ends, so none is left behind. cgroup v1 (`/sys/fs/cgroup/pids`) or v2 (a child of the
//! host's own cgroup, where `pids` is enabled for it). Where neither can be written (no
//! privilege, no delegation), sessions run without one: `SessionInfo::limits.processes`
//! then says `None`. Writing to cgroupfs is a few small writes to kernel memory: no I/O to
//! wait for.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One session's cgroup; removed (after killing what is left in it) by [`Self::remove`].
#[derive(Debug)]
pub struct SessionCgroup {
    dir: PathBuf,
    /// `<dir>/cgroup.procs`, for the child to join itself before exec.
    procs: CString,
}

impl SessionCgroup {
    /// A new cgroup for session `id`, or why there is none.
    pub fn create(id: &str) -> io::Result<SessionCgroup> {
        let parent = parent_dir()?;
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| sweep_left_behind(&parent));
        let dir = parent.join(format!("session-{id}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(io::Error::other)?;
        Ok(SessionCgroup { dir, procs })
    }

    /// At most `max` processes (and threads) in the session; `None`: no limit.
    pub fn set_max_processes(&self, max: Option<u64>) -> io::Result<()> {
        let value = max.map_or_else(|| "max".to_string(), |n| n.max(1).to_string());
        std::fs::write(self.dir.join("pids.max"), value)
    }

    /// The limit in force (`None`: "max").
    pub fn max_processes(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.dir.join("pids.max")).ok()?;
        text.trim().parse().ok()
    }

    /// The `cgroup.procs` path, for [`join_here`] in a child before exec.
    pub fn procs_path(&self) -> &CString {
        &self.procs
    }

    /// SIGKILL to every process still in the cgroup (children that left the worker's group,
    /// `setsid` or not), then removes it once empty. Each is signalled through a pidfd taken
    /// while it is a member, so a pid reused meanwhile is never hit.
    pub async fn remove(self) {
        for _ in 0..REMOVE_ATTEMPTS {
            let members = self.members();
            if members.is_empty() {
                break;
            }
            let mut exits = Vec::new();
            for pid in members {
                if let Some(pidfd) = pidfd_of_member(pid, &self.dir) {
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
            // not polling: each wait is one process's exit event (its pidfd), bounded by
            // the group-exit deadline.
            let _ = tokio::time::timeout(EXIT_DEADLINE, wait_all(exits)).await;
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::warn!(cgroup = %self.dir.display(), error = %e, "could not remove a session's cgroup");
        }
    }

    fn members(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

/// Rounds of killing what is left (a process may fork once more while being killed).
const REMOVE_ATTEMPTS: usize = 5;
/// How long killed members may take to exit, per round.
const EXIT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// In a child between fork and exec: moves this process into the cgroup whose
/// `cgroup.procs` is `procs` ("0" names the writer). Async-signal-safe: open, write, close.
pub fn join_here(procs: &CString) -> io::Result<()> {
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

/// Where session cgroups go: `pids/pyrepl3` under cgroup v1, else a `pyrepl3` child of the
/// host's own cgroup under v2 (with `pids` enabled for its children).
fn parent_dir() -> io::Result<PathBuf> {
    let v1 = Path::new("/sys/fs/cgroup/pids");
    let parent = if v1.join("cgroup.procs").exists() {
        v1.join(own_v1_path()?.trim_start_matches('/'))
            .join("pyrepl3")
    } else {
        let own = own_v2_path()?;
        let base = Path::new("/sys/fs/cgroup").join(own.trim_start_matches('/'));
        let controllers = std::fs::read_to_string(base.join("cgroup.controllers"))?;
        if !controllers.split_whitespace().any(|c| c == "pids") {
            return Err(io::Error::other(
                "the pids controller is not available here",
            ));
        }
        base.join("pyrepl3")
    };
    match std::fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if !v1.join("cgroup.procs").exists() {
        // v2: a cgroup with processes cannot enable controllers for its children, so the
        // sessions' parent has none of its own and enables pids below it.
        std::fs::write(parent.join("cgroup.subtree_control"), "+pids")?;
    }
    Ok(parent)
}

fn own_v1_path() -> io::Result<String> {
    own_cgroup(|controllers| controllers.split(',').any(|c| c == "pids"))
}

fn own_v2_path() -> io::Result<String> {
    own_cgroup(str::is_empty)
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
