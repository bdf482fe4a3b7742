//! Paths of [`super::SessionFiles`]: parsing a client's path into normal components (the
//! lexical refusals: `..`, absolute, NUL), and [`FilesError`], with the mapping of the
//! kernel's answers to it (an escape refused by the resolution beneath the directory is a
//! bad path, not an I/O error).

use std::io;
use std::path::PathBuf;

/// Temporary files of writes under way start with this; such names cannot be written and
/// are not listed.
pub(super) const UPLOAD_PREFIX: &str = ".pyrepl3-upload-";

/// Why a file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The path is refused: `..`, absolute, a NUL byte, a reserved name, the top where a
    /// file is needed, or (found while resolving it) a symlink that leads outside the
    /// directory.
    #[error("bad path {path:?}: {reason}")]
    BadPath { path: String, reason: String },
    #[error("no such file or directory: {path:?}")]
    NotFound { path: String },
    /// A file was needed (to read or replace).
    #[error("{path:?} is a directory")]
    IsADirectory { path: String },
    /// A directory was needed (to list, or as a parent of the path).
    #[error("{path:?} is not a directory")]
    NotADirectory { path: String },
    /// A FIFO, socket or device: not read.
    #[error("{path:?} is not a regular file")]
    NotAFile { path: String },
    #[error("directory {path:?} is not empty (remove it with recursive=true)")]
    DirectoryNotEmpty { path: String },
    /// The kernel refused the access (the file's permissions).
    #[error("permission denied: {path:?}")]
    PermissionDenied { path: String },
    /// The write passed the size limit of one file (`size`: as announced, when it was).
    #[error("{path:?} would be larger than the limit of {limit} bytes per file{}",
        size.map(|s| format!(" ({s} bytes)")).unwrap_or_default())]
    FileTooLarge {
        path: String,
        limit: u64,
        size: Option<u64>,
    },
    /// The write would make the directory's files pass the session's limit.
    #[error("writing {path:?} would bring the session's files to {used} bytes, past its limit of {limit}")]
    SessionFull { path: String, limit: u64, used: u64 },
    /// Reading what was to be written failed (e.g. the client went away mid-upload).
    #[error("the upload of {path:?} was cut off: {source}")]
    SourceFailed { path: String, source: io::Error },
    /// The session's directory is gone (the session ended).
    #[error("the session's directory is gone (the session has ended)")]
    Gone,
    #[error("{context} ({path:?}): {source}")]
    Io {
        path: String,
        context: &'static str,
        source: io::Error,
    },
}

impl FilesError {
    pub(super) fn bad_path(path: &str, reason: &str) -> FilesError {
        FilesError::BadPath {
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Maps an error of an access to `rel` during `context`.
pub(super) fn io_error(rel: &RelPath, context: &'static str) -> impl Fn(io::Error) -> FilesError {
    let path = rel.to_string();
    move |source| {
        let path = path.clone();
        // cap-std's refusal of an escape (EXDEV from openat2's RESOLVE_BENEATH, or its own
        // fallback's check) is a PermissionDenied without an OS error code.
        if source.kind() == io::ErrorKind::PermissionDenied && source.raw_os_error().is_none() {
            return FilesError::BadPath {
                path,
                reason: "it leads outside the session's directory (through a symlink)".into(),
            };
        }
        match source.raw_os_error() {
            Some(libc::EXDEV) | Some(libc::ELOOP) => FilesError::BadPath {
                path,
                reason: "it leads outside the session's directory, or through too many symlinks"
                    .into(),
            },
            Some(libc::ENAMETOOLONG) => FilesError::BadPath {
                path,
                reason: "a name in it is too long (255 bytes at most), or the whole path is".into(),
            },
            Some(libc::ENOENT) => FilesError::NotFound { path },
            Some(libc::ENOTDIR) => FilesError::NotADirectory { path },
            Some(libc::EISDIR) => FilesError::IsADirectory { path },
            Some(libc::ENOTEMPTY) => FilesError::DirectoryNotEmpty { path },
            Some(libc::EACCES) | Some(libc::EPERM) => FilesError::PermissionDenied { path },
            _ => FilesError::Io {
                path,
                context,
                source,
            },
        }
    }
}

/// A path relative to the session's directory: its normal components (none: the top).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RelPath {
    components: Vec<String>,
}

impl RelPath {
    /// `/`-separated; empty and `.` components skipped; `..`, a leading `/` and NUL refused.
    pub(super) fn parse(path: &str) -> Result<RelPath, FilesError> {
        if path.contains('\0') {
            return Err(FilesError::bad_path(path, "it contains a NUL byte"));
        }
        if path.starts_with('/') {
            return Err(FilesError::bad_path(
                path,
                "absolute paths are refused: paths are relative to the session's directory",
            ));
        }
        let mut components = Vec::new();
        for component in path.split('/') {
            match component {
                "" | "." => {}
                ".." => {
                    return Err(FilesError::bad_path(path, "`..` components are refused"));
                }
                c => components.push(c.to_string()),
            }
        }
        Ok(RelPath { components })
    }

    /// A path [`RelPath::parse`] made and `to_string` showed (normal already).
    pub(super) fn from_shown(shown: &str) -> RelPath {
        RelPath {
            components: shown
                .split('/')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }

    pub(super) fn is_top(&self) -> bool {
        self.components.is_empty()
    }

    /// The parent components and the last one (`None`: the top).
    pub(super) fn split_last(&self) -> Option<(&[String], &str)> {
        let (last, parents) = self.components.split_last()?;
        Some((parents, last))
    }

    pub(super) fn as_path(&self) -> PathBuf {
        self.components.iter().collect()
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.components.join("/"))
    }
}
