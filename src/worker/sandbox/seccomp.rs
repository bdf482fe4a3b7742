//! The seccomp filters of a sandboxed worker: the system calls it is refused, compiled once
//! with `seccompiler` into the raw BPF `bwrap --add-seccomp-fd` loads.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use crate::error::Error;

/// System calls a sandboxed worker is refused (`EPERM`): those that look into or act on
/// other processes (`ptrace`, `process_vm_*`, `kcmp`, `pidfd_getfd`), change mounts or
/// namespaces, reach the kernel's keyrings, BPF or performance counters, load or replace
/// the kernel, or touch the machine (reboot, swap, clock, accounting, quotas); plus
/// `io_uring` (a large attack surface that bypasses this list) and handle-based opens (a
/// classic container escape).
const DENIED: &[&str] = &[
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "setns",
    "unshare",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "syslog",
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "lookup_dcookie",
    "fanotify_init",
    "quotactl_fd",
    "iopl",
    "ioperm",
];

/// The namespace flags `clone` may not be given (a new namespace of any kind).
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// How many seccomp programs a sandbox loads.
pub(crate) const PROGRAMS: usize = 3;

/// The seccomp programs (raw BPF, as `bwrap --add-seccomp-fd` reads them): the denials
/// (`EPERM`); `clone3` answered `ENOSYS` (its flags are in memory, out of a filter's reach;
/// the C library then falls back to `clone`, whose flags are checked); the x32 ABI refused
/// (see `no_x32`). Compiled once.
pub(crate) fn seccomp_programs() -> Result<&'static [Vec<u8>; PROGRAMS], Error> {
    static COMPILED: OnceLock<Result<[Vec<u8>; PROGRAMS], String>> = OnceLock::new();
    COMPILED
        .get_or_init(compile_programs)
        .as_ref()
        .map_err(|e| Error::Sandbox(format!("cannot build the seccomp filter: {e}")))
}

fn compile_programs() -> Result<[Vec<u8>; PROGRAMS], String> {
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule,
    };
    use std::collections::BTreeMap;
    let arch: seccompiler::TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("{e:?}"))?;
    let text = |e: seccompiler::BackendError| e.to_string();
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for name in DENIED {
        if let Some(nr) = syscall_number(name) {
            denied.insert(nr, Vec::new());
        }
    }
    let flag_rules = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
            .and_then(|c| SeccompRule::new(vec![c]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(text)?;
    denied.insert(libc::SYS_clone, flag_rules);
    // Signals to pid 1 (the namespace's init, which ignores them): refused, so that the
    // attempt fails visibly instead of doing nothing.
    for call in [libc::SYS_kill, libc::SYS_tkill] {
        let rule = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 1)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(text)?;
        denied.insert(call, vec![rule]);
    }
    for call in [
        libc::SYS_tgkill,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
    ] {
        let rule = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 1)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(text)?;
        denied.insert(call, vec![rule]);
    }
    // vsock: a channel to the hypervisor that no network namespace cuts.
    let vsock = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_VSOCK as u64,
    )
    .and_then(|c| SeccompRule::new(vec![c]))
    .map_err(text)?;
    denied.insert(libc::SYS_socket, vec![vsock]);
    // personality: only the values ordinary programs use (as Docker's default profile).
    let keep = [0u64, 0x0008, 0x2_0000, 0x2_0008, 0xffff_ffff];
    let others = keep
        .iter()
        .map(|&v| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, v))
        .collect::<Result<Vec<_>, _>>()
        .and_then(SeccompRule::new)
        .map_err(text)?;
    denied.insert(libc::SYS_personality, vec![others]);
    let deny = SeccompFilter::new(
        denied,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(text)?;
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    let no_clone3 = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(text)?;
    let bytes = |filter: SeccompFilter| -> Result<Vec<u8>, String> {
        let program: BpfProgram = filter.try_into().map_err(text)?;
        let mut out = Vec::with_capacity(program.len() * 8);
        for insn in program {
            out.extend_from_slice(&insn.code.to_ne_bytes());
            out.push(insn.jt);
            out.push(insn.jf);
            out.extend_from_slice(&insn.k.to_ne_bytes());
        }
        Ok(out)
    };
    Ok([bytes(deny)?, bytes(no_clone3)?, no_x32()])
}

/// Raw BPF (seccompiler matches exact numbers, which a call of the x32 ABI, its number
/// with bit 30 set, would slip past): on x86-64, every x32 call is refused (`ENOSYS`);
/// elsewhere, everything is allowed.
fn no_x32() -> Vec<u8> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let program: &[(u16, u8, u8, u32)] = if cfg!(target_arch = "x86_64") {
        &[
            (LD_W_ABS, 0, 0, 4), // seccomp_data.arch
            (JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
            (LD_W_ABS, 0, 0, 0), // seccomp_data.nr
            (JGE_K, 0, 1, 0x4000_0000),
            (RET_K, 0, 0, RET_ERRNO | libc::ENOSYS as u32),
            (RET_K, 0, 0, RET_ALLOW),
        ]
    } else {
        &[(RET_K, 0, 0, RET_ALLOW)]
    };
    let mut out = Vec::with_capacity(program.len() * 8);
    for &(code, jt, jf, k) in program {
        out.extend_from_slice(&code.to_ne_bytes());
        out.push(jt);
        out.push(jf);
        out.extend_from_slice(&k.to_ne_bytes());
    }
    out
}

/// The number of a system call on this architecture, if it has it.
fn syscall_number(name: &str) -> Option<i64> {
    let nr = match name {
        "ptrace" => libc::SYS_ptrace,
        "process_vm_readv" => libc::SYS_process_vm_readv,
        "process_vm_writev" => libc::SYS_process_vm_writev,
        "kcmp" => libc::SYS_kcmp,
        "pidfd_getfd" => libc::SYS_pidfd_getfd,
        "mount" => libc::SYS_mount,
        "umount2" => libc::SYS_umount2,
        "pivot_root" => libc::SYS_pivot_root,
        "chroot" => libc::SYS_chroot,
        "setns" => libc::SYS_setns,
        "unshare" => libc::SYS_unshare,
        "fsopen" => libc::SYS_fsopen,
        "fsconfig" => libc::SYS_fsconfig,
        "fsmount" => libc::SYS_fsmount,
        "fspick" => libc::SYS_fspick,
        "move_mount" => libc::SYS_move_mount,
        "open_tree" => libc::SYS_open_tree,
        "mount_setattr" => libc::SYS_mount_setattr,
        "bpf" => libc::SYS_bpf,
        "perf_event_open" => libc::SYS_perf_event_open,
        "keyctl" => libc::SYS_keyctl,
        "add_key" => libc::SYS_add_key,
        "request_key" => libc::SYS_request_key,
        "kexec_load" => libc::SYS_kexec_load,
        "kexec_file_load" => libc::SYS_kexec_file_load,
        "init_module" => libc::SYS_init_module,
        "finit_module" => libc::SYS_finit_module,
        "delete_module" => libc::SYS_delete_module,
        "reboot" => libc::SYS_reboot,
        "swapon" => libc::SYS_swapon,
        "swapoff" => libc::SYS_swapoff,
        "acct" => libc::SYS_acct,
        "quotactl" => libc::SYS_quotactl,
        "settimeofday" => libc::SYS_settimeofday,
        "clock_settime" => libc::SYS_clock_settime,
        "clock_adjtime" => libc::SYS_clock_adjtime,
        "adjtimex" => libc::SYS_adjtimex,
        "syslog" => libc::SYS_syslog,
        "userfaultfd" => libc::SYS_userfaultfd,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "name_to_handle_at" => libc::SYS_name_to_handle_at,
        "io_uring_setup" => libc::SYS_io_uring_setup,
        "io_uring_enter" => libc::SYS_io_uring_enter,
        "io_uring_register" => libc::SYS_io_uring_register,
        #[cfg(target_arch = "x86_64")]
        "lookup_dcookie" => libc::SYS_lookup_dcookie,
        "fanotify_init" => libc::SYS_fanotify_init,
        "quotactl_fd" => libc::SYS_quotactl_fd,
        #[cfg(target_arch = "x86_64")]
        "iopl" => libc::SYS_iopl,
        #[cfg(target_arch = "x86_64")]
        "ioperm" => libc::SYS_ioperm,
        _ => return None,
    };
    Some(nr)
}

/// A fresh anonymous file holding `bytes`, read from its start (each `bwrap` reads its own
/// copy: a shared file offset would leave the next one nothing to read).
pub(crate) fn program_file(bytes: &[u8]) -> Result<OwnedFd, Error> {
    // SAFETY: memfd_create with a valid NUL-terminated name; the fd is ours if >= 0.
    let raw = unsafe { libc::memfd_create(c"pyrepl3-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(Error::io("creating a seccomp program file")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: pwrite from a valid buffer of `bytes.len()` to an fd we own.
    let written = unsafe { libc::pwrite(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
    if usize::try_from(written).ok() != Some(bytes.len()) {
        return Err(Error::io("writing a seccomp program file")(
            io::Error::last_os_error(),
        ));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seccomp_programs_compile_to_whole_instructions() {
        let programs = seccomp_programs().unwrap();
        for program in programs {
            assert!(!program.is_empty());
            assert_eq!(program.len() % 8, 0);
        }
    }
}
