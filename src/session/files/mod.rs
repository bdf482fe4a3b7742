//! [`SessionFiles`]: reading, writing, listing and deleting the files of a session's working
//! directory from the host, for the library (`Session::files`) and the server's files routes
//! (`src/service/files.rs`). It owns the rules every such access follows:
//!
//! - **Paths** are relative to the directory, `/`-separated; empty and `.` components are
//!   skipped; `..`, an absolute path and a NUL byte are refused ([`FilesError::BadPath`]).
//!   Every path is resolved by the kernel beneath the directory (`cap-std`: `openat2` with
//!   `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, or its component-by-component fallback where
//!   `openat2` is missing), so a symlink that user code planted and that leads outside
//!   (`os.symlink('/etc', 'x')`, `os.symlink('..', 'up')`, a symlinked parent directory)
//!   is refused as `BadPath` at the moment of the access: no check-then-use race. Symlinks
//!   that stay inside are followed.
//! - **Writes** stream to a temporary file (`.pyrepl3-upload-*`) in the target's directory,
//!   renamed over the target at the end: a write that fails, is refused for size or is cut
//!   off (its future dropped) leaves no partial file. The target's parent directories are
//!   made as needed. A write replaces a symlink at the target, never writes through it.
//! - **Sizes**: a write is refused past [`FileLimits::max_file_bytes`], or when the
//!   directory's regular files (measured when the write starts) plus the writes under way
//!   would pass [`FileLimits::max_session_bytes`]. User code's own writes are not bounded by
//!   these (the tenant's `file_size_limit_bytes` is their bound).
//! - **Ownership**: as root, what is created here gets the owner of the directory (a
//!   sandboxed session's own uid), so the session's code can change it.
//!
//! Everything that touches the file system runs on the blocking pool. The size walk and the
//! bookkeeping are in `usage.rs`, path parsing and error mapping in `path.rs`.

mod path;
mod usage;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cap_std::fs::{Dir, MetadataExt as _, OpenOptions, OpenOptionsExt as _};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

pub use path::FilesError;
use path::{io_error, RelPath, UPLOAD_PREFIX};
use usage::Ledger;

/// Bytes read from a writer's source per step (and the largest write to the file).
const CHUNK: usize = 256 * 1024;

/// The bounds on files written through [`SessionFiles`] (the `[files]` section of `serve`'s
/// config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileLimits {
    /// Largest file one write may make (then [`FilesError::FileTooLarge`]).
    pub max_file_bytes: u64,
    /// Bytes of regular files the directory may hold after a write (then
    /// [`FilesError::SessionFull`]).
    pub max_session_bytes: u64,
    /// Entries one listing gives at most (then `truncated`).
    pub max_list_entries: usize,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            max_file_bytes: 256 * 1024 * 1024,
            max_session_bytes: 1024 * 1024 * 1024,
            max_list_entries: 10_000,
        }
    }
}

/// What a write made.
#[derive(Debug, Clone, Serialize)]
pub struct WrittenFile {
    /// The path written, normalised (`a/./b//c` → `a/b/c`).
    pub path: String,
    /// Bytes written.
    pub size: u64,
    /// `false`: an existing file (or symlink) was replaced.
    pub created: bool,
}

/// The kind of a directory entry, as `lstat` tells it (a symlink is not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EntryType {
    File,
    Directory,
    Symlink,
    Other,
}

/// One entry of a listing.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct FileEntry {
    /// The entry's name (bytes that are not UTF-8 shown as U+FFFD).
    pub name: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    /// Bytes (of the link itself for a symlink).
    pub size: u64,
    /// Last modification, Unix time in seconds.
    pub mtime: f64,
}

/// A directory's entries, sorted by name.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "server", schema(as = FileListing))]
pub struct Listing {
    /// The directory listed, normalised (`""`: the top).
    pub path: String,
    pub entries: Vec<FileEntry>,
    /// More entries than [`FileLimits::max_list_entries`]: those given are a subset (the
    /// first the directory yielded), sorted.
    pub truncated: bool,
}

/// A regular file opened for reading, with its size when opened.
#[derive(Debug)]
pub struct OpenedFile {
    pub file: tokio::fs::File,
    pub size: u64,
}

/// The files of one session's working directory. Cloning shares the bookkeeping of writes
/// under way (one per session: `Session::files` gives the session's own).
#[derive(Debug, Clone)]
pub struct SessionFiles {
    inner: Arc<Inner>,
    limits: FileLimits,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    ledger: Ledger,
}

impl SessionFiles {
    /// The files of the directory `root` (which must exist), with the default limits.
    pub fn new(root: impl Into<PathBuf>) -> SessionFiles {
        SessionFiles {
            inner: Arc::new(Inner {
                root: root.into(),
                ledger: Ledger::default(),
            }),
            limits: FileLimits::default(),
        }
    }

    /// The same files (and bookkeeping) with other limits.
    pub fn with_limits(&self, limits: FileLimits) -> SessionFiles {
        SessionFiles {
            inner: self.inner.clone(),
            limits,
        }
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn limits(&self) -> FileLimits {
        self.limits
    }

    /// Writes `source` to `path` (see the module's rules), reading it in chunks as it comes:
    /// it is never held whole. `size_hint` (e.g. a `Content-Length`) lets a write that is
    /// bound to be too large be refused before anything is read.
    pub async fn write<R>(
        &self,
        path: &str,
        mut source: R,
        size_hint: Option<u64>,
    ) -> Result<WrittenFile, FilesError>
    where
        R: AsyncRead + Unpin,
    {
        let rel = RelPath::parse(path)?;
        let Some((parents, name)) = rel.split_last() else {
            return Err(FilesError::bad_path(path, "names the directory itself"));
        };
        if name.starts_with(UPLOAD_PREFIX) {
            return Err(FilesError::bad_path(
                path,
                "names starting with .pyrepl3-upload- are reserved",
            ));
        }
        let limits = self.limits;
        if let Some(hint) = size_hint.filter(|h| *h > limits.max_file_bytes) {
            return Err(FilesError::FileTooLarge {
                path: rel.to_string(),
                limit: limits.max_file_bytes,
                size: Some(hint),
            });
        }
        let inner = self.inner.clone();
        let (parents, name) = (parents.to_vec(), name.to_string());
        let (shown, target) = (rel.to_string(), name.clone());
        let prepared = blocking(move || prepare_write(&inner, &shown, &parents, &target)).await?;
        let mut upload = Upload {
            inner: self.inner.clone(),
            parent: Some(prepared.parent),
            temp: prepared.temp,
            written: 0,
            done: false,
            inline: false,
        };
        let full = |used: u64| FilesError::SessionFull {
            path: rel.to_string(),
            limit: limits.max_session_bytes,
            used,
        };
        let mut file = tokio::fs::File::from_std(prepared.file);
        let streamed = async {
            if let Some(hint) = size_hint {
                let used = self
                    .inner
                    .ledger
                    .used_since(prepared.measure, prepared.old_size)
                    .saturating_add(hint);
                if used > limits.max_session_bytes {
                    return Err(full(used));
                }
            }
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = source
                    .read(&mut buf)
                    .await
                    .map_err(|source| FilesError::SourceFailed {
                        path: rel.to_string(),
                        source,
                    })?;
                if n == 0 {
                    break;
                }
                if upload.written + n as u64 > limits.max_file_bytes {
                    return Err(FilesError::FileTooLarge {
                        path: rel.to_string(),
                        limit: limits.max_file_bytes,
                        size: None,
                    });
                }
                self.inner
                    .ledger
                    .try_add_in_flight(
                        n as u64,
                        prepared.measure,
                        prepared.old_size,
                        limits.max_session_bytes,
                    )
                    .map_err(full)?;
                upload.written += n as u64;
                file.write_all(&buf[..n])
                    .await
                    .map_err(io_error(&rel, "writing the file"))?;
            }
            file.flush()
                .await
                .map_err(io_error(&rel, "writing the file"))
        }
        .await;
        drop(file);
        if let Err(e) = streamed {
            // Removed before the caller hears of it (a dropped future removes it in the
            // background instead).
            let _ = blocking(move || {
                upload.discard();
                Ok(())
            })
            .await;
            return Err(e);
        }
        let size = upload.written;
        let shown = rel.to_string();
        let existed = blocking(move || upload.finish(&name, &shown)).await?;
        Ok(WrittenFile {
            path: rel.to_string(),
            size,
            created: !existed,
        })
    }

    /// Opens the regular file at `path` for reading (symlinks inside the directory are
    /// followed). A directory is [`FilesError::IsADirectory`], a FIFO, socket or device
    /// [`FilesError::NotAFile`] (opened without blocking, so a FIFO cannot hang it).
    pub async fn open(&self, path: &str) -> Result<OpenedFile, FilesError> {
        let rel = RelPath::parse(path)?;
        if rel.is_top() {
            return Err(FilesError::IsADirectory {
                path: String::new(),
            });
        }
        let inner = self.inner.clone();
        let (file, size) = blocking(move || {
            let root = open_root(&inner.root)?;
            let mut options = OpenOptions::new();
            options
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
            let file = root
                .open_with(rel.as_path(), &options)
                .map_err(io_error(&rel, "opening the file"))?
                .into_std();
            let meta = file
                .metadata()
                .map_err(io_error(&rel, "reading the file's metadata"))?;
            if meta.is_dir() {
                return Err(FilesError::IsADirectory {
                    path: rel.to_string(),
                });
            }
            if !meta.is_file() {
                return Err(FilesError::NotAFile {
                    path: rel.to_string(),
                });
            }
            Ok((file, meta.len()))
        })
        .await?;
        Ok(OpenedFile {
            file: tokio::fs::File::from_std(file),
            size,
        })
    }

    /// Reads the whole file at `path` (a convenience for small files: [`SessionFiles::open`]
    /// streams), up to the size limit of a write.
    pub async fn read(&self, path: &str) -> Result<Vec<u8>, FilesError> {
        let opened = self.open(path).await?;
        if opened.size > self.limits.max_file_bytes {
            return Err(FilesError::FileTooLarge {
                path: path.to_string(),
                limit: self.limits.max_file_bytes,
                size: Some(opened.size),
            });
        }
        let mut data = Vec::new();
        opened
            .file
            .take(self.limits.max_file_bytes)
            .read_to_end(&mut data)
            .await
            .map_err(|source| FilesError::Io {
                path: path.to_string(),
                context: "reading the file",
                source,
            })?;
        Ok(data)
    }

    /// The entries of the directory at `path` (`""`: the top), at most
    /// [`FileLimits::max_list_entries`] of them, sorted by name. The temporary files of
    /// writes under way are not shown.
    pub async fn list(&self, path: &str) -> Result<Listing, FilesError> {
        let rel = RelPath::parse(path)?;
        let inner = self.inner.clone();
        let max = self.limits.max_list_entries;
        blocking(move || {
            let root = open_root(&inner.root)?;
            let dir = if rel.is_top() {
                root
            } else {
                match root.open_dir(rel.as_path()) {
                    Ok(dir) => dir,
                    Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                        return Err(FilesError::NotADirectory {
                            path: rel.to_string(),
                        })
                    }
                    Err(e) => return Err(io_error(&rel, "opening the directory")(e)),
                }
            };
            let mut entries = Vec::new();
            let mut truncated = false;
            for entry in dir
                .entries()
                .map_err(io_error(&rel, "reading the directory"))?
            {
                let entry = entry.map_err(io_error(&rel, "reading the directory"))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // Uploads under way, and the service's own directory at the top (the
                // session's packages): not the user's files.
                if name.starts_with(UPLOAD_PREFIX)
                    || (rel.is_top() && name == crate::session::environment::SERVICE_SUBDIR)
                {
                    continue;
                }
                if entries.len() == max {
                    truncated = true;
                    break;
                }
                // An entry removed meanwhile is left out.
                let Ok(meta) = entry.metadata() else { continue };
                let file_type = meta.file_type();
                let kind = if file_type.is_file() {
                    EntryType::File
                } else if file_type.is_dir() {
                    EntryType::Directory
                } else if file_type.is_symlink() {
                    EntryType::Symlink
                } else {
                    EntryType::Other
                };
                let mtime = meta.mtime() as f64 + f64::from(meta.mtime_nsec() as u32) / 1e9;
                entries.push(FileEntry {
                    name,
                    kind,
                    size: meta.len(),
                    mtime,
                });
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(Listing {
                path: rel.to_string(),
                entries,
                truncated,
            })
        })
        .await
    }

    /// Removes the file, symlink (not what it points to) or empty directory at `path`;
    /// with `recursive`, a directory and everything in it. The top cannot be removed.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), FilesError> {
        let rel = RelPath::parse(path)?;
        if rel.is_top() {
            return Err(FilesError::bad_path(path, "names the directory itself"));
        }
        let inner = self.inner.clone();
        blocking(move || {
            let root = open_root(&inner.root)?;
            let meta = root
                .symlink_metadata(rel.as_path())
                .map_err(io_error(&rel, "reading the entry"))?;
            let removed = if !meta.is_dir() {
                root.remove_file(rel.as_path())
            } else if recursive {
                root.remove_dir_all(rel.as_path())
            } else {
                root.remove_dir(rel.as_path())
            };
            removed.map_err(io_error(&rel, "removing"))
        })
        .await
    }
}

impl super::Session {
    /// The files of the session's working directory (the same across restarts of its
    /// worker; a directory the session made is removed when it ends), with the default
    /// [`FileLimits`]: see [`SessionFiles`].
    pub fn files(&self) -> &SessionFiles {
        &self.inner.files
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FilesError> + Send + 'static,
) -> Result<T, FilesError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FilesError::Io {
            path: String::new(),
            context: "running a file operation on the blocking pool",
            source: io::Error::other(e.to_string()),
        })?
}

/// The session's directory itself (a path the host chose: opened as it is).
fn open_root(root: &Path) -> Result<Dir, FilesError> {
    Dir::open_ambient_dir(root, cap_std::ambient_authority()).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            FilesError::Gone
        } else {
            FilesError::Io {
                path: String::new(),
                context: "opening the session's directory",
                source,
            }
        }
    })
}

/// The owner that what is created here gets: the directory's, when this process is root (a
/// sandboxed session's uid); `None` otherwise (it is ours already).
fn owner_of(root: &Dir) -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let meta = root.dir_metadata().ok()?;
    Some((meta.uid(), meta.gid()))
}

fn chown_fd(fd: impl std::os::fd::AsFd, owner: Option<(u32, u32)>) -> io::Result<()> {
    match owner {
        Some((uid, gid)) => std::os::unix::fs::fchown(fd, Some(uid), Some(gid)),
        None => Ok(()),
    }
}

/// What a write has once its target's directory is ready.
struct Prepared {
    parent: Dir,
    file: std::fs::File,
    temp: String,
    /// The size of the file being replaced (it stops counting once replaced).
    old_size: u64,
    measure: usage::Measure,
}

/// Makes the parent directories, checks the target, creates the temporary file and measures
/// the directory. Blocking.
fn prepare_write(
    inner: &Inner,
    shown: &str,
    parents: &[String],
    name: &str,
) -> Result<Prepared, FilesError> {
    let rel = RelPath::from_shown(shown);
    let root = open_root(&inner.root)?;
    let owner = owner_of(&root);
    let mut prefix = PathBuf::new();
    for component in parents {
        prefix.push(component);
        match root.create_dir(&prefix) {
            Ok(()) if owner.is_some() => {
                // A real descriptor (cap-std's directories are O_PATH, which fchown refuses),
                // and not through a symlink that replaced the new directory meanwhile.
                let mut options = OpenOptions::new();
                options
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW);
                let made = root
                    .open_with(&prefix, &options)
                    .map_err(io_error(&rel, "opening a directory it made"))?;
                chown_fd(&made, owner).map_err(io_error(&rel, "giving a directory its owner"))?;
            }
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(&rel, "making its parent directories")(e)),
        }
    }
    let parent = if parents.is_empty() {
        root.try_clone()
            .map_err(io_error(&rel, "opening the session's directory"))?
    } else {
        root.open_dir(&prefix).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOTDIR) {
                FilesError::NotADirectory {
                    path: prefix.to_string_lossy().into_owned(),
                }
            } else {
                io_error(&rel, "opening its directory")(e)
            }
        })?
    };
    let old_size = match parent.symlink_metadata(name) {
        Ok(meta) if meta.is_dir() => {
            return Err(FilesError::IsADirectory {
                path: rel.to_string(),
            })
        }
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(_) => 0,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io_error(&rel, "reading the target")(e)),
    };
    let temp = format!("{UPLOAD_PREFIX}{}", uuid::Uuid::new_v4().simple());
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o644);
    let file = parent
        .open_with(&temp, &options)
        .map_err(io_error(&rel, "creating the temporary file"))?
        .into_std();
    let cleanup = |e: FilesError| {
        let _ = parent.remove_file(&temp);
        e
    };
    chown_fd(&file, owner)
        .map_err(io_error(&rel, "giving the file its owner"))
        .map_err(cleanup)?;
    let measure = inner
        .ledger
        .measure(&root)
        .map_err(io_error(&rel, "measuring the session's directory"))
        .map_err(cleanup)?;
    Ok(Prepared {
        parent,
        file,
        temp,
        old_size,
        measure,
    })
}

/// A write under way: its temporary file, removed (and its bytes no longer counted) unless
/// the write finished.
struct Upload {
    inner: Arc<Inner>,
    parent: Option<Dir>,
    temp: String,
    written: u64,
    done: bool,
    /// On a blocking thread already: the temporary file is removed in `drop` itself.
    inline: bool,
}

impl Upload {
    /// Removes the temporary file now. Blocking.
    fn discard(mut self) {
        self.inline = true;
    }

    /// Renames the temporary file over `name` (`shown` in errors); whether something was
    /// there. Blocking.
    fn finish(mut self, name: &str, shown: &str) -> Result<bool, FilesError> {
        self.inline = true;
        let Some(parent) = self.parent.as_ref() else {
            return Err(FilesError::Gone);
        };
        let existed = parent.symlink_metadata(name).is_ok();
        let renamed = self
            .inner
            .ledger
            .complete(self.written, || parent.rename(&self.temp, parent, name));
        match renamed {
            Ok(()) => {
                self.done = true;
                Ok(existed)
            }
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Err(FilesError::IsADirectory {
                path: shown.to_string(),
            }),
            Err(source) => Err(FilesError::Io {
                path: shown.to_string(),
                context: "renaming the written file into place",
                source,
            }),
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.inner.ledger.remove_in_flight(self.written);
        let (Some(parent), temp) = (self.parent.take(), std::mem::take(&mut self.temp)) else {
            return;
        };
        let remove = move || {
            if let Err(e) = parent.remove_file(&temp) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(file = %temp, error = %e, "could not remove an unfinished upload");
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if !self.inline => {
                handle.spawn_blocking(remove);
            }
            // On a blocking thread, or no runtime: no async thread to stall.
            _ => remove(),
        }
    }
}

#[cfg(test)]
mod tests;
