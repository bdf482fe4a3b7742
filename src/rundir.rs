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

/// Removes this process's run directory and its lock file, at the process's end, once every
/// session is gone (a graceful end leaves nothing behind; what a crash leaves, the next
/// process sweeps). Blocking. The directory is not made again afterwards by mistake: a later
/// [`run_dir`] makes a new one, under a new name.
#[cfg_attr(not(feature = "cli"), allow(dead_code))] // called by the binary's commands
pub fn remove_own() {
    let Some(path) = crate::sync::lock_unpoisoned(&RUN_DIR).take() else {
        return;
    };
    if let Err(e) = std::fs::remove_dir_all(&path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(dir = %path.display(), error = %e, "could not remove the run directory");
            return; // its lock file stays with it: the next sweep finds both
        }
    }
    let mut lock = path.into_os_string();
    lock.push(".lock");
    // Unlinked while still locked, then unlocked: no sweep can see it unlocked meanwhile.
    let _ = std::fs::remove_file(&lock);
    crate::sync::lock_unpoisoned(&LOCKS).clear();
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
/// never find it unlocked under its final name; the directory is made only after that.
fn create_in(root: &Path) -> Result<RunDir, Error> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
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
    // Another host's sweep spares temporary locks younger than `TMP_LOCK_GRACE`, so the first
    // attempt wins unless this thread stalled for that long between two syscalls; then the
    // sweep may have taken the lock or removed the file, and a fresh name is tried.
    let mut attempt = 0;
    let (name, lock) = loop {
        attempt += 1;
        match publish_lock(root) {
            Ok(published) => break published,
            Err(e) if attempt < LOCK_ATTEMPTS && e.raced => continue,
            Err(e) => return Err(e.error),
        }
    };
    let path = root.join(&name);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .map_err(Error::io("creating the run directory"))?;
    Ok(RunDir { path, _lock: lock })
}

/// How many times [`create_in`] tries a fresh lock name when a sweep got in its way.
const LOCK_ATTEMPTS: u32 = 3;
/// A sweep leaves alone temporary lock files younger than this: another host may be between
/// creating one and locking it (microseconds apart). Older ones are what a crash left.
const TMP_LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Why publishing a lock failed; `raced`: another host's sweep took or removed the file.
struct LockFailure {
    error: Error,
    raced: bool,
}

/// Creates `.run-<pid>-<random>.lock.tmp`, locks it, and renames it to
/// `run-<pid>-<random>.lock`. Returns the name and the held lock.
fn publish_lock(root: &Path) -> Result<(String, File), LockFailure> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |context: &'static str, source: io::Error, raced: bool| LockFailure {
        error: Error::Io { context, source },
        raced,
    };
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
        .map_err(|e| fail("creating the run directory's lock file", e, false))?;
    match try_lock(&lock) {
        Ok(true) => {}
        Ok(false) => {
            let busy = io::Error::from(io::ErrorKind::WouldBlock);
            return Err(fail("locking the run directory", busy, true));
        }
        Err(e) => return Err(fail("locking the run directory", e, false)),
    }
    // ENOENT: a sweep removed the file before the lock was taken.
    std::fs::rename(&tmp, root.join(format!("{name}.lock"))).map_err(|e| {
        let raced = e.kind() == io::ErrorKind::NotFound;
        fail("publishing the run directory's lock file", e, raced)
    })?;
    Ok((name, lock))
}

/// Whether the file was modified less than [`TMP_LOCK_GRACE`] ago (or its age is unknown).
fn young(entry: &std::fs::DirEntry) -> bool {
    let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
        return true;
    };
    modified.elapsed().map_or(true, |age| age < TMP_LOCK_GRACE)
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
            if young(&entry) {
                continue; // maybe another host, between creating and locking it
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_spares_young_temporary_locks_and_removes_old_ones() {
        let root = tempfile::tempdir().unwrap();
        let young = root.path().join(".run-1-young.lock.tmp");
        let old = root.path().join(".run-2-old.lock.tmp");
        std::fs::write(&young, "").unwrap();
        let file = File::create(&old).unwrap();
        let past = std::time::SystemTime::now() - 2 * TMP_LOCK_GRACE;
        file.set_modified(past).unwrap();
        drop(file);
        sweep_dead(root.path());
        assert!(young.exists(), "another host may be about to lock it");
        assert!(!old.exists(), "what a crash left is removed");
    }

    /// Hosts starting at once (threads here: a `flock` belongs to the open file, so each
    /// thread's lock is as separate as another process's), each sweeping the others' dead
    /// run directories while they create their own: none fails.
    #[test]
    fn hosts_starting_at_once_do_not_fail_each_other() {
        let root = tempfile::tempdir().unwrap();
        let root = std::sync::Arc::new(root.path().join("runs"));
        let hosts: Vec<_> = (0..4)
            .map(|_| {
                let root = root.clone();
                std::thread::spawn(move || {
                    for _ in 0..3000 {
                        let created = create_in(&root).map_err(|e| e.to_string())?;
                        sweep_dead(&root);
                        drop(created);
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        for host in hosts {
            host.join().unwrap().unwrap();
        }
    }
}
