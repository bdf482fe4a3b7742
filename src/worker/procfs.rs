//! What /proc and wait statuses say about worker processes: live members of a process group,
//! memory and CPU time, and exit statuses and stderr excerpts as text for error messages.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// The pids of the live (non-zombie) processes in process group `pgid`, from /proc.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command name: state, ppid, pgrp.
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                return false;
            };
            let mut fields = after.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
            pgrp == Some(pgid) && state != Some("Z") && state != Some("X")
        })
        .collect()
}

/// CPU seconds (user + system) of the children `pid` has waited for (`cutime` + `cstime` of
/// `/proc/<pid>/stat`, in clock ticks).
pub fn reaped_children_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name: state is field 3; cutime and cstime are fields 16 and 17.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3)?.parse::<u64>().ok();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|t| *t > 0)?;
    Some((ticks(16)? + ticks(17)?) as f64 / per_second as f64)
}

/// "exited with status 3" / "killed by signal 9 (SIGKILL)".
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(sig) = status.signal() {
        format!("killed by signal {sig} ({})", signal_name(sig))
    } else {
        format!("ended: {status}")
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        _ => "signal",
    }
}

/// The last few lines of what a worker wrote to stderr, for start-up error messages.
pub fn stderr_excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(15)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!(":\n{}", tail.join("\n"))
    }
}

/// Whether the main thread of `pid` is blocked in `read(fd, ...)`, as the kernel reports it
/// (`/proc/<pid>/task/<pid>/syscall`, which needs ptrace access to the process: ours, as its
/// parent). `None` when it cannot be read. One small procfs read: no I/O to wait for.
pub fn main_thread_reading(pid: u32, fd: i32) -> Option<bool> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/syscall")).ok()?;
    Some(is_blocked_reading(&text, fd))
}

/// Parses a `syscall` file: `running`, `-1 <sp> <pc>` (blocked outside a syscall), or the
/// syscall number and its arguments in hex.
fn is_blocked_reading(syscall_file: &str, fd: i32) -> bool {
    let mut fields = syscall_file.split_whitespace();
    let number = fields.next().and_then(|n| n.parse::<libc::c_long>().ok());
    let first_arg = fields
        .next()
        .and_then(|a| i64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
    number == Some(libc::SYS_read) && first_arg == Some(i64::from(fd))
}

/// Resident memory and CPU time (user + system) of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    pub rss_bytes: u64,
    pub cpu_time_secs: f64,
}

pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), so utime (14) is index 11, stime 12, rss 21.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    let page = if page > 0 { page as u64 } else { 4096 };
    Some(ProcStats {
        rss_bytes: rss_pages * page,
        cpu_time_secs: (utime + stime) as f64 / ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stats_of_this_process_are_plausible() {
        let stats = proc_stats(std::process::id()).expect("own /proc entry");
        assert!(stats.rss_bytes > 1024 * 1024);
    }

    #[test]
    fn a_read_on_the_given_fd_is_told_from_anything_else() {
        let read = libc::SYS_read;
        assert!(is_blocked_reading(
            &format!("{read} 0x3 0x7f00 0x4 0x0 0x0 0x0 0x7ffc 0x7f01\n"),
            3
        ));
        assert!(!is_blocked_reading(
            &format!("{read} 0x4 0x7f00 0x4 0x0 0x0 0x0 0x7ffc 0x7f01\n"),
            3
        ));
        assert!(!is_blocked_reading("running\n", 3));
        assert!(!is_blocked_reading("-1 0x7ffc 0x7f01\n", 3));
        assert!(!is_blocked_reading(
            "230 0x3 0x0 0x0 0x0 0x0 0x0 0x7ffc 0x7f01\n",
            3
        ));
    }

    #[test]
    fn exit_statuses_are_described() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(9)),
            "killed by signal 9 (SIGKILL)"
        );
    }
}
