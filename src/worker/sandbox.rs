//! The sandbox a session's worker runs in, and everything that is decided before its start:
//! the settings ([`SandboxConfig`]), the `bwrap` command line that builds it, the seccomp
//! filters, the lease of a uid of its own when the host runs as root ([`UidLease`]), where
//! the worker's pid is found on the host, and the start-up check that this host can sandbox
//! at all ([`check_available`]).
//!
//! The mechanics are bubblewrap's (`bwrap`, Debian's `bubblewrap`; why that tool, and the
//! threat model: docs/security.md). Each worker gets its own PID, mount, IPC, UTS and cgroup
//! namespaces, and its own network namespace unless the network is `host`; as an ordinary
//! user also its own user namespace. Its file system is a fresh tmpfs root, read-only, with:
//! the system (`/usr` and its links, a short list of `/etc` files) and the interpreter's
//! directories read-only; its working directory writable; a private `/tmp` of bounded size;
//! its own `/proc` and a minimal `/dev`. Nothing else of the host is there: not the server's
//! config, not the run directory, not another session's directory.
//!
//! The process tree, seen from the host: `bwrap` (our child, the worker process we track and
//! signal as a group) → `bwrap` (pid 1 of the namespace: reaps orphans, and its death ends
//! every process in the namespace) → `python` (pid 2 inside, the agent).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use super::Interpreter;
use crate::error::Error;

/// Where a sandboxed worker's network goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Its own network namespace with only a loopback: no route to the server, the host's
    /// services or anywhere else.
    #[default]
    None,
    /// The host's network (for trusted set-ups): every host service and port is reachable.
    Host,
    /// Its own network namespace with a user-mode network stack (`pasta`) to the outside;
    /// the host's loopback (the server included) is not reachable.
    Outbound,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Host => "host",
            Network::Outbound => "outbound",
        }
    }
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            "outbound" => Ok(Network::Outbound),
            other => Err(format!(
                "unknown network {other:?} (none, host or outbound)"
            )),
        }
    }
}

/// How sessions are sandboxed (`[sandbox]` in the server's config; `--sandbox` for `exec`
/// and `repl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    pub network: Network,
    /// Size of the private `/tmp` (and of `/dev/shm`), a tmpfs: writing more fails with
    /// `OSError: [Errno 28] No space left on device`. Its pages count in the session's
    /// memory.
    pub tmp_size_bytes: u64,
    /// When the host runs as root: the uids sessions run as, `[first, count]`, one uid per
    /// live session (its gid is the same number). Not used by an ordinary user, whose
    /// sessions run as that user inside a user namespace of their own.
    pub uid_range: [u32; 2],
    /// The `bwrap` binary; a bare name is looked up in `PATH`.
    pub bwrap: PathBuf,
}

/// Default size of a sandbox's `/tmp`: 64 MiB.
pub const DEFAULT_TMP_SIZE_BYTES: u64 = 64 * 1024 * 1024;
/// Default uids of sandboxed sessions as root: 65 536 of them from 900 000, above the
/// ranges distributions give to users and to the subordinate ids of containers.
pub const DEFAULT_UID_RANGE: [u32; 2] = [900_000, 65_536];

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            network: Network::None,
            tmp_size_bytes: DEFAULT_TMP_SIZE_BYTES,
            uid_range: DEFAULT_UID_RANGE,
            bwrap: PathBuf::from("bwrap"),
        }
    }
}

/// What one worker's sandbox is: its settings and, as root, its uid.
#[derive(Debug, Clone)]
pub struct WorkerSandbox {
    pub config: SandboxConfig,
    /// The uid (and gid) the worker runs as, when the host is root.
    pub uid: Option<u32>,
}

/// Whether this process runs as root (then sandboxes give each session a uid of its own;
/// otherwise they map the host's user into a user namespace).
pub fn host_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

// --- uids ---

/// The uids leased to live sessions (as root), process-wide.
static UIDS_IN_USE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// A uid of the sandbox range held by one session for its whole life (every worker it
/// starts runs as it); back in the range when dropped. The session's processes are all gone
/// by then (its namespace dies with it), so the next holder inherits nothing.
#[derive(Debug)]
pub struct UidLease(u32);

impl UidLease {
    /// The lowest free uid of `range` (`[first, count]`).
    pub fn take(range: [u32; 2]) -> Result<UidLease, Error> {
        let [first, count] = range;
        let mut in_use = crate::sync::lock_unpoisoned(&UIDS_IN_USE);
        let last = first.saturating_add(count);
        let free = (first..last).find(|uid| !in_use.contains(uid));
        match free {
            Some(uid) => {
                in_use.insert(uid);
                Ok(UidLease(uid))
            }
            None => Err(Error::Sandbox(format!(
                "no free sandbox uid: all {count} uids from {first} are in use by live sessions \
                 (widen [sandbox] uid_range)"
            ))),
        }
    }

    pub fn uid(&self) -> u32 {
        self.0
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        crate::sync::lock_unpoisoned(&UIDS_IN_USE).remove(&self.0);
    }
}

// --- the command line ---

/// Files of `/etc` a Python program commonly reads (the dynamic linker, names and
/// addresses, users, time zone, certificates for HTTPS, MIME types), shown read-only when
/// present. Nothing else of `/etc`: the server's own configuration may live there.
const ETC_FILES: &[&str] = &[
    "/etc/alternatives",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/debian_version",
    "/etc/gai.conf",
    "/etc/group",
    "/etc/host.conf",
    "/etc/hosts",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/nsswitch.conf",
    "/etc/os-release",
    "/etc/passwd",
    "/etc/pip.conf",
    "/etc/pki",
    "/etc/protocols",
    "/etc/resolv.conf",
    "/etc/services",
    "/etc/ssl",
    "/etc/timezone",
];

/// Top-level system directories: each is shown read-only, or, where the host has it as a
/// link (a merged `/usr`), as the same link.
const SYSTEM_DIRS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// The fds the seccomp programs are handed to `bwrap` on (it reads and closes them).
pub(super) const SECCOMP_FDS: [i32; 2] = [7, 8];

/// The hostname inside every sandbox.
const HOSTNAME: &str = "pyrepl3";

/// The `bwrap` arguments that build `sandbox` for a worker of `interpreter` working in
/// `cwd`, up to (not including) the command. Everything is decided here, before the fork.
pub(super) fn bwrap_args(
    sandbox: &WorkerSandbox,
    interpreter: &Interpreter,
    cwd: &Path,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::with_capacity(96);
    // The namespace's pid 1 and the worker die with the launcher (which dies with the host:
    // `PR_SET_PDEATHSIG`), however it dies.
    push(
        &mut args,
        &["--die-with-parent".as_ref(), "--new-session".as_ref()],
    );
    push(
        &mut args,
        &[
            "--unshare-pid".as_ref(),
            "--unshare-ipc".as_ref(),
            "--unshare-uts".as_ref(),
            "--unshare-cgroup-try".as_ref(),
            "--hostname".as_ref(),
            HOSTNAME.as_ref(),
        ],
    );
    if sandbox.config.network != Network::Host {
        push(&mut args, &["--unshare-net".as_ref()]);
    }
    if !host_is_root() {
        // An ordinary user gets the powers to build the sandbox inside a user namespace of
        // its own; code inside may not make another one.
        push(
            &mut args,
            &["--unshare-user".as_ref(), "--disable-userns".as_ref()],
        );
    } else if sandbox.uid.is_some() {
        // Root builds the sandbox as root and keeps only what `setpriv` (see
        // `uid_switch`) needs to become the session's uid before the interpreter starts.
        push(
            &mut args,
            &[
                "--cap-add".as_ref(),
                "CAP_SETUID".as_ref(),
                "--cap-add".as_ref(),
                "CAP_SETGID".as_ref(),
            ],
        );
    }
    push(
        &mut args,
        &["--ro-bind".as_ref(), "/usr".as_ref(), "/usr".as_ref()],
    );
    for dir in SYSTEM_DIRS {
        match std::fs::read_link(dir) {
            Ok(target) => push(
                &mut args,
                &["--symlink".as_ref(), target.as_os_str(), dir.as_ref()],
            ),
            Err(_) => push(
                &mut args,
                &["--ro-bind-try".as_ref(), dir.as_ref(), dir.as_ref()],
            ),
        }
    }
    // bwrap makes missing parents private to root (0700): `/etc` must be open to all.
    push(
        &mut args,
        &[
            "--perms".as_ref(),
            "0755".as_ref(),
            "--dir".as_ref(),
            "/etc".as_ref(),
        ],
    );
    for file in ETC_FILES {
        push(
            &mut args,
            &["--ro-bind-try".as_ref(), file.as_ref(), file.as_ref()],
        );
    }
    let mut roots: Vec<&Path> = Vec::new();
    if let Some(dir) = interpreter.python.parent() {
        roots.push(dir);
    }
    roots.extend(interpreter.roots.iter().map(PathBuf::as_path));
    roots.sort();
    roots.dedup();
    let mut shown: Vec<&Path> = vec![Path::new("/usr")];
    for root in roots {
        // Within a directory already shown, or the working directory (bound writable below),
        // or the root itself (the whole host): not shown again.
        if root == Path::new("/")
            || root.starts_with(cwd)
            || shown.iter().any(|s| root.starts_with(s))
        {
            continue;
        }
        open_ancestors(&mut args, root);
        args.extend(["--ro-bind-try".into(), root.into(), root.into()]);
        shown.push(root);
    }
    let tmp_size = sandbox.config.tmp_size_bytes.max(4096).to_string();
    push(
        &mut args,
        &[
            "--proc".as_ref(),
            "/proc".as_ref(),
            "--dev".as_ref(),
            "/dev".as_ref(),
            "--perms".as_ref(),
            "1777".as_ref(),
            "--size".as_ref(),
            tmp_size.as_ref(),
            "--tmpfs".as_ref(),
            "/tmp".as_ref(),
            "--perms".as_ref(),
            "1777".as_ref(),
            "--size".as_ref(),
            tmp_size.as_ref(),
            "--tmpfs".as_ref(),
            "/dev/shm".as_ref(),
        ],
    );
    open_ancestors(&mut args, cwd);
    args.extend([
        "--bind".into(),
        cwd.into(),
        cwd.into(),
        "--chdir".into(),
        cwd.into(),
    ]);
    for fd in SECCOMP_FDS {
        args.extend(["--add-seccomp-fd".into(), fd.to_string().into()]);
    }
    // Last: the new root itself becomes read-only (only the mounts above are writable).
    args.extend(["--remount-ro".into(), "/".into()]);
    args
}

fn push(args: &mut Vec<OsString>, items: &[&std::ffi::OsStr]) {
    args.extend(items.iter().map(OsString::from));
}

/// Creates `path`'s ancestors in the sandbox open to all (`bwrap` would make them 0700,
/// hiding, say, an interpreter installed under `/root` from the session's uid). They hold
/// nothing but the mount below them.
fn open_ancestors(args: &mut Vec<OsString>, path: &Path) {
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors.into_iter().filter(|d| d.parent().is_some()) {
        args.extend(["--perms".into(), "0755".into(), "--dir".into(), dir.into()]);
    }
}

/// As root, what runs first inside the sandbox: `setpriv` (util-linux) becomes the
/// session's uid and gid, with no supplementary groups, and then runs the interpreter, which
/// so never runs as root (and, exec'd by its own uid, owns its `/proc/self`). Empty without
/// a uid to become.
pub(super) fn uid_switch(sandbox: &WorkerSandbox) -> Vec<OsString> {
    let Some(uid) = sandbox.uid.filter(|_| host_is_root()) else {
        return Vec::new();
    };
    vec![
        "/usr/bin/setpriv".into(),
        format!("--reuid={uid}").into(),
        format!("--regid={uid}").into(),
        "--clear-groups".into(),
        "--".into(),
    ]
}

/// Finds `name` in `PATH` (or takes it as it is if it has a slash).
pub(super) fn resolve_bwrap(name: &Path) -> PathBuf {
    if name.components().count() > 1 {
        return name.to_path_buf();
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| name.to_path_buf())
}

// --- seccomp ---

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

/// The two seccomp programs (raw BPF, as `bwrap --add-seccomp-fd` reads them): the denials
/// (`EPERM`), and `clone3` answered `ENOSYS` (its flags are in memory, out of a filter's
/// reach; the C library then falls back to `clone`, whose flags are checked). Compiled once.
pub(super) fn seccomp_programs() -> Result<&'static [Vec<u8>; 2], Error> {
    static PROGRAMS: OnceLock<Result<[Vec<u8>; 2], String>> = OnceLock::new();
    PROGRAMS
        .get_or_init(compile_programs)
        .as_ref()
        .map_err(|e| Error::Sandbox(format!("cannot build the seccomp filter: {e}")))
}

fn compile_programs() -> Result<[Vec<u8>; 2], String> {
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
    let rule = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 1)
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(text)?;
    denied.insert(libc::SYS_tgkill, vec![rule]);
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
    Ok([bytes(deny)?, bytes(no_clone3)?])
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
        _ => return None,
    };
    Some(nr)
}

/// A fresh anonymous file holding `bytes`, read from its start (each `bwrap` reads its own
/// copy: a shared file offset would leave the next one nothing to read).
pub(super) fn program_file(bytes: &[u8]) -> Result<OwnedFd, Error> {
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

// --- the outbound network ---

/// The fds (in `bwrap`) of the outbound handshake: `bwrap` writes its information (the
/// namespace's pid 1, as the host sees it) on the first, and waits for a byte on the second
/// before it starts the interpreter.
pub(super) const HANDSHAKE_FDS: [i32; 2] = [9, 10];

/// How long attaching the network stack may take (`bwrap`'s report, then `slirp4netns`
/// ready): each takes milliseconds; past it the start fails instead of hanging.
const OUTBOUND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The network namespace of a sandbox with `network = "outbound"` gets a user-mode network
/// stack before the interpreter starts: `slirp4netns` (Debian's package), a host process
/// that relays the namespace's connections to the outside as its own sockets. It is given
/// `--disable-host-loopback`, so the host's loopback (the server, any local service) is not
/// reachable through it; inside, 127.0.0.1 is the namespace's own loopback.
pub(super) struct OutboundHandshake {
    info: OwnedFd,
    info_child: OwnedFd,
    go_child: OwnedFd,
    go: OwnedFd,
}

impl OutboundHandshake {
    pub(super) fn new() -> Result<OutboundHandshake, Error> {
        let (info, info_child) =
            io::pipe().map_err(Error::io("creating the sandbox's info pipe"))?;
        let (go_child, go) = io::pipe().map_err(Error::io("creating the sandbox's start pipe"))?;
        let raise = |fd: OwnedFd| super::spawn::raise_fd(fd);
        Ok(OutboundHandshake {
            info: info.into(),
            info_child: raise(info_child.into())?,
            go_child: raise(go_child.into())?,
            go: go.into(),
        })
    }

    pub(super) fn bwrap_args() -> [OsString; 4] {
        [
            "--info-fd".into(),
            HANDSHAKE_FDS[0].to_string().into(),
            "--block-fd".into(),
            HANDSHAKE_FDS[1].to_string().into(),
        ]
    }

    /// The ends `bwrap` gets, placed at [`HANDSHAKE_FDS`].
    pub(super) fn child_fds(&self) -> [i32; 2] {
        [self.info_child.as_raw_fd(), self.go_child.as_raw_fd()]
    }

    /// After `bwrap` started: reads which process is the namespace's pid 1, starts
    /// `slirp4netns` on its network namespace, waits until it is ready, then lets `bwrap`
    /// start the interpreter. Returns the network stack's process, to end with the worker.
    pub(super) async fn complete(self) -> Result<tokio::process::Child, Error> {
        let OutboundHandshake {
            info,
            info_child,
            go_child,
            go,
        } = self;
        drop((info_child, go_child));
        let failed = |why: String| Error::Sandbox(format!("attaching the outbound network: {why}"));
        // not polling: one deadline over the whole attachment.
        tokio::time::timeout(OUTBOUND_DEADLINE, async move {
            let report = read_until(info, b'}', 4096)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let report: serde_json::Value = serde_json::from_slice(&report)
                .map_err(|e| failed(format!("bwrap's report: {e}")))?;
            let init = report["child-pid"]
                .as_u64()
                .ok_or_else(|| failed(format!("no child-pid in bwrap's report {report}")))?;
            let (ready, ready_child) = io::pipe().map_err(|e| failed(e.to_string()))?;
            let ready_child = super::spawn::raise_fd(ready_child.into())?;
            let ready_fd = ready_child.as_raw_fd();
            let mut cmd = tokio::process::Command::new("slirp4netns");
            cmd.args([
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                "--enable-sandbox",
            ])
            .arg("--ready-fd=3");
            if !host_is_root() {
                cmd.arg(format!("--userns-path=/proc/{init}/ns/user"));
            }
            cmd.arg(init.to_string())
                .arg("tap0")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            let host = super::spawner::host_pid();
            // SAFETY: prctl, getppid and dup2/fcntl only, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    super::spawner::die_with_parent(host)?;
                    super::spawn::place_fd(ready_fd, 3)
                });
            }
            let stack = super::spawner::spawn_child(cmd)
                .await
                .map_err(|e| failed(format!("cannot start slirp4netns: {e}")))?;
            drop(ready_child);
            let said = read_until(ready.into(), b'1', 16)
                .await
                .map_err(|e| failed(e.to_string()))?;
            if !said.ends_with(b"1") {
                return Err(failed("slirp4netns ended before it was ready".into()));
            }
            let go = pipe::Sender::from_owned_fd(go).map_err(|e| failed(e.to_string()))?;
            go.writable().await.map_err(|e| failed(e.to_string()))?;
            go.try_write(b"g").map_err(|e| failed(e.to_string()))?;
            Ok(stack)
        })
        .await
        .map_err(|_| failed(format!("not done within {OUTBOUND_DEADLINE:?}")))?
    }
}

use tokio::net::unix::pipe;

/// Reads `fd` (a pipe) until `end` arrives, end of file, or `max` bytes.
async fn read_until(fd: OwnedFd, end: u8, max: usize) -> io::Result<Vec<u8>> {
    let pipe = pipe::Receiver::from_owned_fd(fd)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while out.len() < max && !out.contains(&end) {
        pipe.readable().await?;
        match pipe.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

// --- the worker's pid ---

/// The host pid of the Python process of a sandbox whose launcher (our child `bwrap`) is
/// `launcher`: the child of the namespace's pid 1, itself the launcher's child. `None` until
/// the worker runs (or if the kernel does not list children, `CONFIG_PROC_CHILDREN`).
pub fn locate_worker(launcher: u32) -> Option<u32> {
    let init = first_child(launcher)?;
    first_child(init)
}

fn first_child(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

// --- can this host sandbox? ---

/// Whether this host can build the sandbox `config` describes: runs a trivial program in
/// one (same namespaces and mounts as a worker's, with a stand-in interpreter) and returns
/// `bwrap`'s own words when it cannot (not installed, user namespaces disabled, a
/// container without the rights). The server refuses to start on an error.
pub async fn check_available(config: &SandboxConfig) -> Result<(), Error> {
    let bwrap = resolve_bwrap(&config.bwrap);
    let dir = tempfile::tempdir().map_err(Error::io("creating the sandbox check's directory"))?;
    let sandbox = WorkerSandbox {
        config: config.clone(),
        uid: None,
    };
    let stand_in = Interpreter {
        python: PathBuf::from("/usr/bin/true"),
        agent_code: None,
        roots: Vec::new(),
    };
    let programs = seccomp_programs()?;
    let files = [program_file(&programs[0])?, program_file(&programs[1])?];
    let raw = [files[0].as_raw_fd(), files[1].as_raw_fd()];
    let mut cmd = tokio::process::Command::new(&bwrap);
    cmd.args(bwrap_args(&sandbox, &stand_in, dir.path()))
        .arg("--")
        .arg("true")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: dup2/fcntl only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for (fd, target) in raw.into_iter().zip(SECCOMP_FDS) {
                super::spawn::place_fd(fd, target)?;
            }
            Ok(())
        });
    }
    let unavailable = |why: String| {
        Error::Sandbox(format!(
            "this host cannot sandbox workers with {}: {why}",
            bwrap.display()
        ))
    };
    let child = super::spawner::spawn_child(cmd)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    // not polling: one deadline for a program that exits at once.
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| unavailable("it did not finish within 10 s".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
    drop(files);
    if out.status.success() {
        Ok(())
    } else {
        Err(unavailable(format!(
            "{} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            super::describe_exit(out.status)
        )))
    }
}

/// The containment a sandboxed session reports (`SessionInfo.containment`).
pub fn describe(sandbox: &WorkerSandbox) -> String {
    let identity = match sandbox.uid {
        Some(uid) => format!("uid {uid}"),
        None if host_is_root() => "root without capabilities".to_string(),
        None => "user namespace".to_string(),
    };
    format!(
        "sandbox (bubblewrap; {identity}; network {})",
        sandbox.config.network.as_str()
    )
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

    #[test]
    fn uids_are_leased_once_and_come_back() {
        let range = [4_000_000_000, 2];
        let a = UidLease::take(range).unwrap();
        let b = UidLease::take(range).unwrap();
        assert_ne!(a.uid(), b.uid());
        assert!(UidLease::take(range).is_err(), "the range is exhausted");
        let freed = a.uid();
        drop(a);
        assert_eq!(UidLease::take(range).unwrap().uid(), freed);
    }

    #[test]
    fn the_network_setting_reads_its_three_values() {
        for n in ["none", "host", "outbound"] {
            assert_eq!(n.parse::<Network>().unwrap().as_str(), n);
        }
        assert!("lan".parse::<Network>().is_err());
    }
}
