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
//! Here: the settings, the uids, the `bwrap` command line, finding the worker's pid, the
//! start-up check. In `seccomp.rs` the refused system calls; in `outbound.rs` the outbound
//! network stack; in `etc.rs` the sandbox's `/etc`.
//!
//! The process tree, seen from the host: `bwrap` (our child, the worker process we track and
//! signal as a group) → `python`, the session's supervisor (pid 1 of the namespace, with
//! `--as-pid-1`: it reaps orphans, and its death ends every process in the namespace) →
//! `python`, the worker (pid 2 inside, the agent; docs/transactions.md).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

mod etc;
mod outbound;
mod seccomp;

pub(super) use etc::{prepared_etc, PreparedEtc};

pub(super) use outbound::{OutboundHandshake, GO_FD};
pub(super) use seccomp::{program_file, seccomp_programs};

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
    /// Files or directories hidden in the sandbox even where they lie in what it shows
    /// (`serve` adds its configuration file: it may sit under `/usr/local/etc`). Not a
    /// setting of the file: the host fills it in.
    #[serde(skip)]
    pub hidden_paths: Vec<PathBuf>,
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
            hidden_paths: Vec::new(),
        }
    }
}

impl SandboxConfig {
    /// Refuses settings that would weaken the sandbox: a uid range with root in it (a
    /// session would run as uid 0 with every capability), or one past the last valid uid.
    pub fn validate(&self) -> Result<(), Error> {
        let [first, count] = self.uid_range;
        if first == 0 || count == 0 || u64::from(first) + u64::from(count) > u64::from(u32::MAX - 1)
        {
            return Err(Error::InvalidConfig(format!(
                "[sandbox] uid_range = [{first}, {count}]: expected a first uid above 0 and a \
                 count of at least 1, ending below {}",
                u32::MAX - 1
            )));
        }
        if self.tmp_size_bytes == 0 {
            return Err(Error::InvalidConfig(
                "[sandbox] tmp_size_bytes = 0: expected a size in bytes".into(),
            ));
        }
        Ok(())
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

/// The uids leased to live sessions of this process.
static UIDS_IN_USE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Where the lease of a uid is also held across processes (several pyrepl3 hosts as root
/// on one machine must not hand out the same uid): a lock file per uid, `flock`ed for as
/// long as the lease lives (the kernel drops it when its holder dies, however it dies).
const LEASE_DIR: &str = "/run/pyrepl3/uid-leases";

/// A uid of the sandbox range held by one session for its whole life (every worker it
/// starts runs as it); back in the range when dropped. The session's processes are all gone
/// by then (its namespace dies with it), so the next holder inherits nothing.
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    /// The locked file that holds the uid for this process against others (`None` where
    /// the lease directory cannot be made: then only this process's leases are known).
    _lock: Option<std::fs::File>,
}

impl UidLease {
    /// The lowest uid of `range` (`[first, count]`) that no live session of this or another
    /// pyrepl3 process holds. A few small file operations (no waiting).
    pub fn take(range: [u32; 2]) -> Result<UidLease, Error> {
        let [first, count] = range;
        let mut in_use = crate::sync::lock_unpoisoned(&UIDS_IN_USE);
        let last = first.saturating_add(count);
        for uid in first..last {
            if in_use.contains(&uid) {
                continue;
            }
            match lock_uid(uid) {
                Locked::Ours(file) => {
                    in_use.insert(uid);
                    return Ok(UidLease {
                        uid,
                        _lock: Some(file),
                    });
                }
                Locked::Elsewhere => continue,
                Locked::Unknown => {
                    in_use.insert(uid);
                    return Ok(UidLease { uid, _lock: None });
                }
            }
        }
        Err(Error::Sandbox(format!(
            "no free sandbox uid: all {count} uids from {first} are in use by live sessions \
             (widen [sandbox] uid_range)"
        )))
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        crate::sync::lock_unpoisoned(&UIDS_IN_USE).remove(&self.uid);
    }
}

enum Locked {
    Ours(std::fs::File),
    Elsewhere,
    /// No lease directory (not root, a read-only /run): other processes cannot be asked.
    Unknown,
}

fn lock_uid(uid: u32) -> Locked {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    static DIR: OnceLock<bool> = OnceLock::new();
    let usable = *DIR.get_or_init(|| {
        let made = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(LEASE_DIR);
        if let Err(e) = &made {
            tracing::warn!(dir = LEASE_DIR, error = %e, "no cross-process uid leases: two pyrepl3 hosts on this machine may give sessions the same uid");
        }
        made.is_ok()
    });
    if !usable {
        return Locked::Unknown;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(Path::new(LEASE_DIR).join(uid.to_string()));
    let Ok(file) = file else {
        return Locked::Unknown;
    };
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Locked::Ours(file)
    } else {
        Locked::Elsewhere
    }
}

// --- the command line ---

/// Top-level system directories: each is shown read-only, or, where the host has it as a
/// link (a merged `/usr`), as the same link.
const SYSTEM_DIRS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// The fds the seccomp programs are handed to `bwrap` on (it reads and closes them).
pub(super) const SECCOMP_FDS: [i32; seccomp::PROGRAMS] = [7, 8, 9];

/// The hostname inside every sandbox.
const HOSTNAME: &str = "pyrepl3";

/// The `bwrap` arguments that build `sandbox` for a worker of `interpreter` working in
/// `cwd`, up to (not including) the command. Everything is decided here, before the fork.
pub(super) fn bwrap_args(
    sandbox: &WorkerSandbox,
    interpreter: &Interpreter,
    cwd: &Path,
    etc: &PreparedEtc,
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
            // No init of bwrap's: the session's supervisor (the agent's first process) is
            // the namespace's pid 1, the reaper of every orphan in it (a transaction's
            // snapshot among them); its death ends the namespace.
            "--as-pid-1".as_ref(),
            "--unshare-ipc".as_ref(),
            "--unshare-uts".as_ref(),
            "--unshare-cgroup-try".as_ref(),
            "--hostname".as_ref(),
            HOSTNAME.as_ref(),
        ],
    );
    // An outbound sandbox's network namespace is the launcher's own (`outbound.rs`).
    if sandbox.config.network == Network::None {
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
                "--cap-drop".as_ref(),
                "ALL".as_ref(),
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
    // One bind for the prepared `/etc`, then its directories and live files on top.
    args.extend(["--ro-bind".into(), etc.dir.clone().into(), "/etc".into()]);
    for path in &etc.live {
        args.extend(["--ro-bind-try".into(), path.into(), path.into()]);
    }
    // The kernel file systems and the private tmpfs first: what is bound below may live
    // under /tmp (an interpreter, a working directory) and must not be hidden by them.
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
    // `/dev` is a tmpfs that `bwrap` gives to an ordinary user's sandbox: read-only, so that
    // it is no place to store unbounded data (`/dev/shm` is its own sized mount).
    args.extend(["--remount-ro".into(), "/dev".into()]);
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
    open_ancestors(&mut args, cwd);
    args.extend([
        "--bind".into(),
        cwd.into(),
        cwd.into(),
        "--chdir".into(),
        cwd.into(),
    ]);
    // Hidden: an empty read-only file or directory mounted over each that lies in what is
    // shown (elsewhere it is not there at all, and mounting over it would make it appear).
    let in_view = |path: &Path| {
        shown.iter().any(|s| path.starts_with(s))
            || path.starts_with(cwd)
            || path.starts_with("/etc")
    };
    for path in sandbox.config.hidden_paths.iter().filter(|p| in_view(p)) {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => args.extend([
                "--tmpfs".into(),
                path.into(),
                "--remount-ro".into(),
                path.into(),
            ]),
            Ok(_) => args.extend([
                "--ro-bind".into(),
                etc.empty_file.clone().into(),
                path.into(),
            ]),
            Err(_) => {}
        }
    }
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
        // The kernel clears the parent-death signal (bwrap's --die-with-parent) when the
        // uid changes: set again after the switch, so pid 1 still dies with the launcher.
        "--pdeathsig".into(),
        "KILL".into(),
        "--".into(),
    ]
}

/// Finds the program `name` in `PATH` (or takes it as it is if it has a slash); `name`
/// itself when it is not found.
pub(super) fn resolve_program(name: &Path) -> PathBuf {
    if name.components().count() > 1 {
        return name.to_path_buf();
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| name.to_path_buf())
}

// --- the worker's pid ---

/// The first child `/proc` lists for `pid`.
pub(crate) fn first_child(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

// --- can this host sandbox? ---

/// Whether this host can build the sandbox `config` describes: runs a trivial program in
/// one (same namespaces and mounts as a worker's, with a stand-in interpreter) and returns
/// `bwrap`'s own words when it cannot (not installed, user namespaces disabled, a
/// container without the rights). The server refuses to start on an error.
pub async fn check_available(config: &SandboxConfig) -> Result<(), Error> {
    config.validate()?;
    let bwrap = resolve_program(&config.bwrap);
    if config.network == Network::Outbound
        && resolve_program(Path::new("slirp4netns"))
            .components()
            .count()
            < 2
    {
        return Err(Error::Sandbox(
            "network = \"outbound\" needs slirp4netns, which is not in PATH".into(),
        ));
    }
    let dir = tempfile::tempdir().map_err(Error::io("creating the sandbox check's directory"))?;
    // As root, also the switch to a session uid (the range's first; nothing runs as it
    // for long, and the check's directory is not written).
    let sandbox = WorkerSandbox {
        config: config.clone(),
        uid: host_is_root().then_some(config.uid_range[0]),
    };
    let stand_in = Interpreter {
        python: PathBuf::from("/usr/bin/true"),
        agent_code: None,
        roots: Vec::new(),
    };
    let programs = seccomp_programs()?;
    let files = [
        program_file(&programs[0])?,
        program_file(&programs[1])?,
        program_file(&programs[2])?,
    ];
    let raw = files.each_ref().map(|f| f.as_raw_fd());
    let mut cmd = tokio::process::Command::new(&bwrap);
    let etc = prepared_etc().await?;
    cmd.args(bwrap_args(&sandbox, &stand_in, dir.path(), &etc))
        .arg("--")
        .args(uid_switch(&sandbox))
        .arg("/usr/bin/true")
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
        let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let said = if said.is_empty() {
            "it said nothing".to_string()
        } else {
            said
        };
        Err(unavailable(format!(
            "{said} ({})",
            super::describe_exit(out.status)
        )))
    }
}

/// The containment a sandboxed session reports (`SessionInfo.containment`).
pub fn describe(sandbox: &WorkerSandbox) -> String {
    let identity = match sandbox.uid {
        Some(uid) => format!("uid {uid}"),
        None if host_is_root() => "root, no capabilities".to_string(),
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
    fn a_uid_range_with_root_in_it_is_refused() {
        let with = |uid_range| SandboxConfig {
            uid_range,
            ..SandboxConfig::default()
        };
        assert!(with([0, 10]).validate().is_err());
        assert!(with([1000, 0]).validate().is_err());
        assert!(with([u32::MAX - 5, 10]).validate().is_err());
        assert!(with(DEFAULT_UID_RANGE).validate().is_ok());
    }

    #[test]
    fn the_network_setting_reads_its_three_values() {
        for n in ["none", "host", "outbound"] {
            assert_eq!(n.parse::<Network>().unwrap().as_str(), n);
        }
        assert!("lan".parse::<Network>().is_err());
    }
}
