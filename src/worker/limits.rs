//! Resource limits of a worker process, as kernel rlimits: set in the child before it
//! starts (`pre_exec`), and on a live worker (`prlimit`) when a pooled session is handed to a
//! tenant with its own limits. Children of the worker inherit them. Per process, not per
//! session: the fallback for hosts without a delegated cgroup (the sandbox's job).

use std::io;

use serde::Serialize;

/// Limits for one worker; `None` leaves the host's own limit in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
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
}

impl ResourceLimits {
    /// (resource, soft, hard) of each limit set. The CPU limit's hard value is one second
    /// above the soft one, so that the kernel sends SIGXCPU (which says why) before SIGKILL.
    fn each(&self) -> [(libc::__rlimit_resource_t, Option<(u64, u64)>); 4] {
        let same = |v: Option<u64>| v.map(|v| (v, v));
        [
            (libc::RLIMIT_AS, same(self.memory_bytes)),
            (
                libc::RLIMIT_CPU,
                self.cpu_time_secs.map(|v| (v, v.saturating_add(1))),
            ),
            (libc::RLIMIT_NOFILE, same(self.open_files)),
            (libc::RLIMIT_FSIZE, same(self.file_size_bytes)),
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.each().iter().all(|(_, v)| v.is_none())
    }

    /// In a child between fork and exec: sets each limit (the hard limit too, so that user
    /// code cannot raise it again). Async-signal-safe: only `setrlimit`.
    pub(crate) fn apply_here(&self) -> io::Result<()> {
        for (resource, value) in self.each() {
            if let Some((soft, hard)) = value {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                // SAFETY: setrlimit with a valid pointer.
                if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }

    /// On the live process `pid` (ours, not reaped): the same as [`Self::apply_here`].
    pub(crate) fn apply_to(&self, pid: u32) -> io::Result<()> {
        let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
        for (resource, value) in self.each() {
            if let Some((soft, hard)) = value {
                let limit = libc::rlimit64 {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                // SAFETY: prlimit64 with a valid new limit and no old-limit pointer.
                if unsafe { libc::prlimit64(pid, resource, &limit, std::ptr::null_mut()) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
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
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
