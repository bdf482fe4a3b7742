//! The outbound network of a sandbox (`network = "outbound"`): a network namespace made by
//! the launcher itself, and `slirp4netns` attached to it before the interpreter starts.
//!
//! Why the launcher makes the namespace (and not `bwrap --unshare-net`): `bwrap` sets up
//! the namespace's loopback with netlink inside its child, at a moment the host cannot
//! observe; a network stack attached meanwhile races with it (seen as `bwrap: loopback:
//! Failed RTM_NEWADDR`). A namespace that exists, loopback up, before `bwrap` even starts
//! has nothing left to race with, and the host knows where it is (the launcher's own).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::net::unix::pipe;

use super::host_is_root;
use crate::error::Error;

/// The fd (in `bwrap`) it waits on for a byte before it starts the interpreter
/// (`--block-fd`): sent once the network stack is ready.
pub(crate) const GO_FD: i32 = 10;

/// How long attaching the network stack may take (it takes milliseconds); past it the
/// start fails instead of hanging.
const OUTBOUND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The network namespace of a sandbox with `network = "outbound"` gets a user-mode network
/// stack before the interpreter starts: `slirp4netns` (Debian's package), a host process
/// that relays the namespace's connections to the outside as its own sockets. It is given
/// `--disable-host-loopback`, so the host's loopback (the server, any local service) is not
/// reachable through it; inside, 127.0.0.1 is the namespace's own loopback.
pub(crate) struct OutboundHandshake {
    go_child: OwnedFd,
    go: OwnedFd,
    /// What the launcher writes to its `uid_map`, `gid_map` when it makes a user namespace
    /// for its network namespace (an ordinary user); built before the fork.
    id_maps: Option<(Vec<u8>, Vec<u8>)>,
}

impl OutboundHandshake {
    pub(crate) fn new() -> Result<OutboundHandshake, Error> {
        let (go_child, go) = io::pipe().map_err(Error::io("creating the sandbox's start pipe"))?;
        let id_maps = (!host_is_root()).then(|| {
            // SAFETY: getuid/getgid have no preconditions.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            (
                format!("{uid} {uid} 1\n").into_bytes(),
                format!("{gid} {gid} 1\n").into_bytes(),
            )
        });
        Ok(OutboundHandshake {
            go_child: super::super::spawn::raise_fd(go_child.into())?,
            go: go.into(),
            id_maps,
        })
    }

    pub(crate) fn bwrap_args() -> [std::ffi::OsString; 2] {
        ["--block-fd".into(), GO_FD.to_string().into()]
    }

    /// The end `bwrap` gets, placed at [`GO_FD`].
    pub(crate) fn child_fd(&self) -> i32 {
        self.go_child.as_raw_fd()
    }

    /// What the launcher does between fork and exec (see [`NetnsEntry::enter_here`]).
    pub(crate) fn netns_entry(&self) -> NetnsEntry {
        NetnsEntry {
            id_maps: self.id_maps.clone(),
        }
    }
}

/// The launcher's move into its own network namespace.
#[derive(Clone)]
pub(crate) struct NetnsEntry {
    id_maps: Option<(Vec<u8>, Vec<u8>)>,
}

impl NetnsEntry {
    /// In the launcher, between fork and exec: moves it into a new network namespace (for
    /// an ordinary user, inside a new user namespace mapping only its own ids) and brings
    /// that namespace's loopback up.
    ///
    /// # Safety
    /// Only between fork and exec: it makes only async-signal-safe calls on memory made
    /// before the fork.
    pub(crate) unsafe fn enter_here(&self) -> io::Result<()> {
        // SAFETY: unshare, open, write, close, socket and ioctl with valid arguments.
        unsafe {
            match &self.id_maps {
                None => check(libc::unshare(libc::CLONE_NEWNET))?,
                Some((uid_map, gid_map)) => {
                    check(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET))?;
                    write_file(c"/proc/self/setgroups", b"deny")?;
                    write_file(c"/proc/self/uid_map", uid_map)?;
                    write_file(c"/proc/self/gid_map", gid_map)?;
                }
            }
            let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            check(sock)?;
            let mut request: libc::ifreq = std::mem::zeroed();
            for (i, b) in b"lo\0".iter().enumerate() {
                request.ifr_name[i] = *b as libc::c_char;
            }
            request.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            let set = libc::ioctl(sock, libc::SIOCSIFFLAGS, &request);
            libc::close(sock);
            check(set)
        }
    }
}

impl OutboundHandshake {
    /// After the launcher started (`launcher` is its pid): starts `slirp4netns` on the
    /// launcher's network namespace, waits until it is ready, then lets `bwrap` start the
    /// interpreter. Returns the network stack's process, to end with the worker.
    pub(crate) async fn complete(self, launcher: u32) -> Result<tokio::process::Child, Error> {
        let OutboundHandshake { go_child, go, .. } = self;
        drop(go_child);
        let failed = |why: String| Error::Sandbox(format!("attaching the outbound network: {why}"));
        // not polling: one deadline over the whole attachment.
        tokio::time::timeout(OUTBOUND_DEADLINE, async move {
            let (ready, ready_child) = io::pipe().map_err(|e| failed(e.to_string()))?;
            let ready_child = super::super::spawn::raise_fd(ready_child.into())?;
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
                cmd.arg(format!("--userns-path=/proc/{launcher}/ns/user"));
            }
            cmd.arg(launcher.to_string())
                .arg("tap0")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                // Read only if it fails to become ready: its own words say why.
                .stderr(std::process::Stdio::piped())
                // A group of its own: a Ctrl-C at the host's terminal is not for it.
                .process_group(0)
                .kill_on_drop(true);
            let host = super::super::spawner::host_pid();
            // SAFETY: prctl, getppid and dup2/fcntl only, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    super::super::spawner::die_with_parent(host)?;
                    super::super::spawn::place_fd(ready_fd, 3)
                });
            }
            let mut stack = super::super::spawner::spawn_child(cmd)
                .await
                .map_err(|e| failed(format!("cannot start slirp4netns: {e}")))?;
            drop(ready_child);
            let said = read_until(ready.into(), b'1', 16)
                .await
                .map_err(|e| failed(e.to_string()))?;
            if !said.ends_with(b"1") {
                let words = match stack.stderr.take() {
                    Some(stderr) => {
                        use tokio::io::AsyncReadExt;
                        let mut text = Vec::new();
                        let _ = stderr.take(4096).read_to_end(&mut text).await;
                        String::from_utf8_lossy(&text).trim().replace('\n', "; ")
                    }
                    None => String::new(),
                };
                return Err(failed(format!(
                    "slirp4netns ended before it was ready: {words}"
                )));
            }
            // From now on its words are discarded as they come (never a full pipe that would
            // block it; never a closed one that would end it with SIGPIPE).
            if let Some(mut stderr) = stack.stderr.take() {
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
                });
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

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes `bytes` to `path` in one `write` (as `/proc/self/uid_map` requires).
///
/// # Safety
/// Async-signal-safe: open, write, close.
unsafe fn write_file(path: &std::ffi::CStr, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: a valid NUL-terminated path; a valid buffer of `bytes.len()`.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        check(fd)?;
        let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::close(fd);
        if usize::try_from(written).ok() != Some(bytes.len()) {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

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
