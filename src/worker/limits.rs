//! Resource limits of a worker process, as kernel rlimits: set in the child before it
//! starts (`pre_exec`), and on a live worker (`prlimit`) when a pooled session is handed to a
//! tenant with its own limits. Children of the worker inherit them. Per process, not per
//! session: the fallback for hosts without a delegated cgroup (the sandbox's job).

use std::io;

use serde::Serialize;

/// Limits for one worker; `None` leaves the host's own limit in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ResourceLimits {
    /// Address space (`RLIMIT_AS`): an allocation beyond it fails, which Python raises as
    /// `MemoryError`; the worker lives on.
    pub memory_bytes: Option<u64>,
    /// CPU time (`RLIMIT_CPU`): past it the kernel ends the worker (SIGXCPU, then SIGKILL a
    /// second later); the execution ends with `CpuLimitExceeded` and a fresh worker starts.
    pub cpu_time_secs: Option<u64>,
    /// Open files (`RLIMIT_NOFILE`): one more fails with `OSError` (EMFILE).
    pub open_files: Option<u64>,
    /// Size of one file written (`RLIMIT_FSIZE`): writing past it fails with `OSError`
    /// (EFBIG; Python ignores SIGXFSZ).
    pub file_size_bytes: Option<u64>,
    /// Processes and threads of the whole session (the `pids` cgroup, see `cgroup.rs`; not
    /// an rlimit): one more fork fails with `OSError` EAGAIN. Needs a writable cgroup.
    pub processes: Option<u64>,
    /// Memory of the whole session, its processes' resident memory in all (the `memory`
    /// cgroup): past it the kernel's OOM killer ends the worker, and the execution ends with
    /// `MemoryLimitExceeded` naming the limit (a fresh worker starts). Needs a writable cgroup.
    pub session_memory_bytes: Option<u64>,
}

impl ResourceLimits {
    /// The same limits with `used` seconds of CPU time already spent: a process's CPU-time
    /// limit counts from its own start, so a process that takes over a session (a
    /// transaction's snapshot, docs/transactions.md) gets what is left. At least one second
    /// (the kernel's smallest), so a session over its budget is ended within a second.
    pub fn less_cpu_time(mut self, used: f64) -> ResourceLimits {
        if let Some(limit) = self.cpu_time_secs {
            let used = if used.is_finite() && used > 0.0 {
                used.ceil() as u64
            } else {
                0
            };
            self.cpu_time_secs = Some(limit.saturating_sub(used).max(1));
        }
        self
    }

    /// (resource, soft, hard) of each limit set. The CPU limit's hard value is one second
    /// above the soft one, so that the kernel sends SIGXCPU (which says why) before SIGKILL,
    /// and with it no core dump. Open files: at least [`MIN_OPEN_FILES`], which the worker's
    /// own start needs.
    fn each(&self) -> [(libc::__rlimit_resource_t, Option<(u64, u64)>); 5] {
        let same = |v: Option<u64>| v.map(|v| (v, v));
        [
            (libc::RLIMIT_AS, same(self.memory_bytes)),
            (
                libc::RLIMIT_CPU,
                self.cpu_time_secs.map(|v| (v, v.saturating_add(1))),
            ),
            (libc::RLIMIT_CORE, self.cpu_time_secs.map(|_| (0, 0))),
            (
                libc::RLIMIT_NOFILE,
                same(self.open_files.map(|v| v.max(MIN_OPEN_FILES))),
            ),
            (libc::RLIMIT_FSIZE, same(self.file_size_bytes)),
        ]
    }

    /// These limits as they can be set under the current hard limits (`hard_of`): a limit
    /// above the host's own (a container's, a service manager's) is lowered to it, since
    /// raising a hard limit needs a privilege the host may not have.
    fn clamped(
        &self,
        hard_of: impl Fn(libc::__rlimit_resource_t) -> Option<u64>,
    ) -> Vec<(libc::__rlimit_resource_t, u64, u64)> {
        self.each()
            .into_iter()
            .filter_map(|(resource, value)| {
                let (soft, hard) = value?;
                let ceiling = hard_of(resource).unwrap_or(u64::MAX);
                Some((resource, soft.min(ceiling), hard.min(ceiling)))
            })
            .collect()
    }

    /// What is in force on process `pid` for each limit this asks for (after clamping).
    fn in_force(&self, pid: u32) -> ResourceLimits {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return ResourceLimits::default();
        };
        let soft = |resource| current(pid, resource).map(|(soft, _)| soft);
        let keep = |wanted: Option<u64>, resource| wanted.and(soft(resource));
        ResourceLimits {
            memory_bytes: keep(self.memory_bytes, libc::RLIMIT_AS),
            cpu_time_secs: keep(self.cpu_time_secs, libc::RLIMIT_CPU),
            open_files: keep(self.open_files, libc::RLIMIT_NOFILE),
            file_size_bytes: keep(self.file_size_bytes, libc::RLIMIT_FSIZE),
            // Set by the session's actor, which owns the cgroups.
            processes: None,
            session_memory_bytes: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.each().iter().all(|(_, v)| v.is_none())
            && self.processes.is_none()
            && self.session_memory_bytes.is_none()
    }

    /// In a child between fork and exec: sets each limit (the hard limit too, so that user
    /// code cannot raise it again). Async-signal-safe: only `setrlimit`.
    pub(crate) fn apply_here(&self) -> io::Result<()> {
        for (resource, value) in self.each() {
            if let Some((soft, hard)) = value {
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: getrlimit/setrlimit with valid pointers (async-signal-safe).
                unsafe {
                    if libc::getrlimit(resource, &mut limit) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // Never above the hard limit in force (see `clamped`).
                    limit.rlim_cur = soft.min(limit.rlim_max);
                    limit.rlim_max = hard.min(limit.rlim_max);
                    if libc::setrlimit(resource, &limit) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
        }
        Ok(())
    }

    /// On the live process `pid`: sets the limits (as [`Self::apply_here`] does in a
    /// starting one) and returns those then in force. A sandboxed worker of a root host runs
    /// as a uid of its own, and `prlimit` on another user's process needs
    /// `CAP_SYS_RESOURCE`, which root in a container often lacks: the kernel also accepts a
    /// caller whose real uid and gid are the target's, so the calls are made from a short
    /// thread of ours that takes the worker's real ids for that time (raw syscalls change
    /// only the calling thread's credentials; its effective uid stays root throughout).
    pub(crate) fn apply_and_read(&self, pid: u32) -> io::Result<ResourceLimits> {
        let Some((uid, gid)) = real_ids(pid).filter(|ids| needs_ids_of(*ids)) else {
            self.apply_to(pid)?;
            return Ok(self.in_force(pid));
        };
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: raw setresgid/setresuid change this thread's credentials only
                    // (the C library's wrappers would change every thread's); -1 keeps a field.
                    unsafe {
                        if libc::syscall(libc::SYS_setresgid, gid, -1, -1) != 0
                            || libc::syscall(libc::SYS_setresuid, uid, -1, -1) != 0
                        {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    let applied = self.apply_to(pid).map(|()| self.in_force(pid));
                    // The thread ends next, and its credentials with it: restoring them is
                    // for tidiness, not safety.
                    // SAFETY: as above, with the ids this thread had.
                    unsafe {
                        libc::syscall(libc::SYS_setresuid, 0, -1, -1);
                        libc::syscall(libc::SYS_setresgid, 0, -1, -1);
                    }
                    applied
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the limits thread panicked")))
        })
    }

    /// On the live process `pid` (ours, not reaped): the same as [`Self::apply_here`].
    fn apply_to(&self, pid: u32) -> io::Result<()> {
        let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
        for (resource, soft, hard) in self.clamped(|r| current(pid, r).map(|(_, hard)| hard)) {
            let limit = libc::rlimit64 {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: prlimit64 with a valid new limit and no old-limit pointer.
            if unsafe { libc::prlimit64(pid, resource, &limit, std::ptr::null_mut()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// The real uid and gid of `pid`, from `/proc/<pid>/status`.
fn real_ids(pid: u32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let first = |key: &str| -> Option<u32> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((first("Uid:")?, first("Gid:")?))
}

/// Whether this (root) process must take `ids` to set another process's limits.
fn needs_ids_of((uid, gid): (u32, u32)) -> bool {
    // SAFETY: getuid/getgid/geteuid have no preconditions.
    let (our_uid, our_gid, euid) = unsafe { (libc::getuid(), libc::getgid(), libc::geteuid()) };
    euid == 0 && (uid != our_uid || gid != our_gid)
}

/// The fewest open files a worker may be limited to: its start needs a few more than the
/// standard streams and its channels (fds 0-6, its own duplicates, the interpreter's files).
pub const MIN_OPEN_FILES: u64 = 32;

/// (soft, hard) of `resource` on process `pid`.
fn current(pid: libc::pid_t, resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit64 reading into a valid pointer, setting nothing.
    let read = unsafe { libc::prlimit64(pid, resource, std::ptr::null(), &mut old) };
    (read == 0).then_some((old.rlim_cur, old.rlim_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_set_on_a_live_process_are_read_back() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let limits = ResourceLimits {
            memory_bytes: Some(512 << 20),
            cpu_time_secs: Some(7),
            open_files: Some(64),
            file_size_bytes: Some(1 << 20),
            processes: None,
            session_memory_bytes: None,
        };
        limits.apply_to(child.id()).unwrap();
        let text = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(line("Max cpu time").contains("7 8"), "{text}");
        assert!(line("Max open files").contains("64 64"), "{text}");
        assert!(
            line("Max address space").contains("536870912 536870912"),
            "{text}"
        );
        assert!(line("Max file size").contains("1048576 1048576"), "{text}");
        // A limit above the hard limit in force is lowered to it, not refused.
        let above = ResourceLimits {
            open_files: Some(1 << 40),
            ..ResourceLimits::default()
        };
        above.apply_to(child.id()).unwrap();
        assert_eq!(above.in_force(child.id()).open_files, Some(64));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
