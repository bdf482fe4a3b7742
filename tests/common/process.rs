//! What the kernel says about processes, read directly from /proc and pidfds, so the tests
//! depend on no internals of the crate.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A pidfd for `pid`: readable once the process has exited. `None` if it is gone (ESRCH).
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open has no memory-safety preconditions.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ESRCH),
            "pidfd_open({pid}): {err}"
        );
        return None;
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until process `pid` has exited, on the kernel's pidfd event (no polling), or the
/// deadline passes. Returns whether it exited in time.
pub async fn wait_pid_exit(pid: u32, within: Duration) -> bool {
    use tokio::io::unix::AsyncFd;
    let Some(owned) = pidfd_open(pid) else {
        return true; // already gone
    };
    // SAFETY: `owned` is an open pidfd that the AsyncFd owns until it is dropped.
    let Ok(async_fd) = (unsafe { AsyncFd::register(owned) }) else {
        return false;
    };
    tokio::time::timeout(within, async_fd.readable())
        .await
        .is_ok()
}

/// Waits for our own `child` to exit, blocking on its pidfd until `deadline`; reaps it and
/// returns its status, or `None` if it is still running at the deadline (it is left running:
/// the caller decides whether to kill it).
pub fn wait_child_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    if let Some(status) = child.try_wait().expect("try_wait on our own child") {
        return Some(status);
    }
    // An unreaped child keeps its pid (as a zombie at worst), so the pidfd names this child.
    let pidfd = pidfd_open(child.id()).expect("an unreaped child has a pid");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Rounded up: a wait shorter than a millisecond must not become a busy return.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // One blocking wait for the exit event, bounded by the deadline.
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        match ready {
            0 => return None,
            n if n > 0 => return Some(child.wait().expect("reaping an exited child")),
            _ => {
                let err = std::io::Error::last_os_error();
                assert_eq!(err.kind(), std::io::ErrorKind::Interrupted, "poll: {err}");
            }
        }
    }
}

/// Whether `pid` exists (a zombie counts: it still has its pid).
pub fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// The process group of live process `pid` (a session's worker is in its supervisor's group,
/// which the supervisor leads).
pub fn pgid_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process runs");
    let close = stat.rfind(')').expect("a stat line");
    stat[close + 1..]
        .split_whitespace()
        .nth(2)
        .and_then(|f| f.parse().ok())
        .expect("a pgrp field")
}

/// Whether any live (non-zombie) process is in process group `pgid`, from /proc/<pid>/stat.
pub fn group_alive(pgid: u32) -> bool {
    !group_members(pgid).is_empty()
}

/// Waits until no live process is left in group `pgid` (members killed a moment ago may
/// still be on their way out), blocking on each member's pidfd until `within` has passed.
/// Returns whether the group was empty in time.
pub fn group_gone_within(pgid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    for pid in group_members(pgid) {
        let Some(pidfd) = pidfd_open(pid) else {
            continue;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let mut poll = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: poll on one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, millis) } <= 0 {
            return !group_alive(pgid);
        }
    }
    !group_alive(pgid)
}

/// The live (non-zombie) members of process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let entries = std::fs::read_dir("/proc").expect("/proc is readable");
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(close) = stat.rfind(')') else {
                return false;
            };
            let mut fields = stat[close + 1..].split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
            pgrp == Some(pgid) && !matches!(state, Some("Z" | "X"))
        })
        .collect()
}

/// Resident memory of `pid` in bytes, from /proc/<pid>/statm (resident pages × page size).
pub fn rss_bytes(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/statm: {e}"));
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("/proc/{pid}/statm: {statm:?}"));
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * if page > 0 { page as u64 } else { 4096 }
}

/// A watch on `path` (a directory) that tells when it is removed, from inotify's
/// `IN_DELETE_SELF` (an event, not a poll of the path). Set it up before the removal starts.
pub struct RemovalWatch(OwnedFd);

impl RemovalWatch {
    pub fn new(path: &std::path::Path) -> RemovalWatch {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: inotify_init1 has no memory-safety preconditions.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path and an inotify fd we own.
        let wd =
            unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_DELETE_SELF) };
        assert!(
            wd >= 0,
            "inotify_add_watch({path:?}): {}",
            std::io::Error::last_os_error()
        );
        RemovalWatch(fd)
    }

    /// Blocks until the directory is removed, or `deadline`; returns whether it was.
    pub fn wait(self, deadline: Instant) -> bool {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready == 0 {
                return false;
            }
            if ready < 0 {
                let err = std::io::Error::last_os_error();
                assert_eq!(err.kind(), std::io::ErrorKind::Interrupted, "poll: {err}");
                continue;
            }
            let mut buf = [0u8; 4096];
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            assert!(
                n > 0,
                "reading inotify events: {}",
                std::io::Error::last_os_error()
            );
            // Each event: wd (i32), mask (u32), cookie (u32), len (u32), then `len` name bytes.
            let mut at = 0;
            while at + 16 <= n as usize {
                let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                if mask & libc::IN_DELETE_SELF != 0 {
                    return true;
                }
                at += 16 + len;
            }
        }
    }
}

/// Host pids whose command line is exactly `args`.
pub fn processes_running(args: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()
                .as_deref()
                == Some(&wanted[..])
        })
        .collect()
}
