//! The run directory of a host process, and the working directories of its sessions in it.
//!
//! Each host process that needs a session directory gets
//! `<root>/run-<pid>-<random>/`, next to a lock file `<root>/run-<pid>-<random>.lock` that it
//! holds with `flock` for its whole life (the fd is close-on-exec, so no worker keeps it).
//! Sessions without a configured `cwd` work in `session-*` directories under it. When a
//! process starts using its run directory, it removes every sibling whose lock it can take:
//! their owner is dead (a `kill -9`, a crash, a power cut), since the kernel drops a `flock`
//! only when its last holder is gone. Unlike a pid file, a lock cannot be fooled by pid reuse.
//!
//! The root is `$PYREPL3_RUN_ROOT`, else `$TMPDIR/pyrepl3-<uid>`; it is created 0700 and
//! refused unless it is a directory owned by this user and closed to others (another user
//! must not be able to plant or remove session files).
//!
//! Everything here blocks (mkdir, flock, removing trees): callers run it on the blocking pool.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::Error;

/// The environment variable that moves the root (tests, or hosts with a private tmpfs).
pub const ROOT_ENV: &str = "PYREPL3_RUN_ROOT";

struct RunDir {
    path: PathBuf,
    /// Held (locked) for the life of the process: its lock says "alive".
    _lock: File,
}

static RUN_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
/// The lock files of this process's run directory; never dropped.
static LOCKS: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// This process's run directory, created (and the dead siblings removed) on first use.
/// Blocking.
pub fn run_dir() -> Result<PathBuf, Error> {
    let mut slot = crate::sync::lock_unpoisoned(&RUN_DIR);
    if let Some(path) = slot.as_ref() {
        return Ok(path.clone());
    }
    let root = root();
    let created = create_in(&root)?;
    sweep_dead(&root);
    crate::sync::lock_unpoisoned(&LOCKS).push(created._lock);
    *slot = Some(created.path.clone());
    Ok(created.path)
}

/// Prepares the run directory off the async threads (see [`run_dir`]).
pub async fn ensure() -> Result<PathBuf, Error> {
    tokio::task::spawn_blocking(run_dir)
        .await
        .map_err(|e| Error::Io {
            context: "preparing the run directory",
            source: io::Error::other(e),
        })?
}

fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os(ROOT_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!("pyrepl3-{uid}"))
}

/// Creates the root if needed (0700, checked private), then this process's lock and run
/// directory. The lock is taken on a temporary name and renamed into place, so a sweeper can
/// never find it unlocked; the directory is made only after that.
fn create_in(root: &Path) -> Result<RunDir, Error> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root);
    let meta =
        std::fs::symlink_metadata(root).map_err(Error::io("reading the run-directory root"))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::InvalidConfig(format!(
            "the run-directory root {} must be a directory owned by this user with mode 0700 \
             (set {ROOT_ENV} to use another)",
            root.display()
        )));
    }
    let name = format!(
        "run-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let tmp = root.join(format!(".{name}.lock.tmp"));
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io("creating the run directory's lock file"))?;
    if !try_lock(&lock).map_err(Error::io("locking the run directory"))? {
        return Err(Error::Io {
            context: "locking the run directory",
            source: io::Error::from(io::ErrorKind::WouldBlock),
        });
    }
    std::fs::rename(&tmp, root.join(format!("{name}.lock")))
        .map_err(Error::io("publishing the run directory's lock file"))?;
    let path = root.join(&name);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .map_err(Error::io("creating the run directory"))?;
    Ok(RunDir { path, _lock: lock })
}

/// `flock(LOCK_EX | LOCK_NB)`: whether the lock was taken (false: somebody holds it).
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Removes the run directories (and stray temporary locks) of dead processes. Each is removed
/// while its lock is held, directory first and lock file last, so a crash half-way leaves a
/// lock file that the next sweep finds again.
fn sweep_dead(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let run = if let Some(run) = name.strip_suffix(".lock").filter(|n| n.starts_with("run-")) {
            Some(run.to_string())
        } else if name.starts_with(".run-") && name.ends_with(".lock.tmp") {
            None
        } else {
            continue;
        };
        let lock_path = entry.path();
        let Ok(lock) = File::open(&lock_path) else {
            continue;
        };
        if !matches!(try_lock(&lock), Ok(true)) {
            continue; // its owner lives
        }
        if let Some(run) = run {
            let dir = root.join(&run);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), "removed the run directory of a dead host")
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove a dead host's run directory");
                    continue;
                }
            }
        }
        let _ = std::fs::remove_file(&lock_path);
    }
}

/// A session's working directory in the run directory, removed when the session ends: by
/// [`SessionDir::remove`] on the blocking pool (a large tree takes seconds to remove, and the
/// async threads serve every other session meanwhile), or, if the session is dropped without
/// that, by a blocking task spawned from `Drop`.
#[derive(Debug)]
pub struct SessionDir {
    path: Option<PathBuf>,
}

impl SessionDir {
    /// Creates `session-*` in the run directory, off the async threads.
    pub async fn create() -> Result<SessionDir, Error> {
        let created = tokio::task::spawn_blocking(|| {
            let run = run_dir()?;
            let dir = tempfile::Builder::new()
                .prefix("session-")
                .tempdir_in(&run)
                .map_err(Error::io("creating the session's working directory"))?;
            Ok::<_, Error>(dir.keep())
        })
        .await
        .map_err(|e| Error::Io {
            context: "creating the session's working directory",
            source: io::Error::other(e),
        })??;
        Ok(SessionDir {
            path: Some(created),
        })
    }

    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Removes the directory on the blocking pool and waits for it.
    pub async fn remove(mut self) {
        if let Some(path) = self.path.take() {
            let _ = tokio::task::spawn_blocking(move || remove_tree(&path)).await;
        }
    }
}

impl Drop for SessionDir {
    fn drop(&mut self) {
        let Some(path) = self.path.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(move || remove_tree(&path));
            }
            // No runtime: no async thread to stall either.
            Err(_) => remove_tree(&path),
        }
    }
}

fn remove_tree(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(dir = %path.display(), error = %e, "could not remove a session's working directory");
        }
    }
}
