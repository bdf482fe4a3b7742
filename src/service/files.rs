//! The files of a client's session (docs/api.md, "Files"): upload, download, list and
//! delete in the session's working directory, through the session's own
//! [`SessionFiles`](crate::session::SessionFiles) (its path rules and size bookkeeping) with
//! the service's limits ([`Bounds::files`](super::Bounds)). Tenant isolation is
//! [`Service::session`](super::Service::session)'s, as for every other operation. A file
//! operation under way counts as use of the session: it is not culled meanwhile, and its
//! idle time counts from the operation's end.

use std::sync::Arc;

use tokio::io::AsyncRead;
use tokio::time::Instant;

use super::sessions::Hosted;
use super::{Inner, ServiceError, SessionHandle};
use crate::session::files::{FilesError, Listing, OpenedFile, SessionFiles, WrittenFile};
use crate::sync::lock_unpoisoned as lock;

/// The session is in use while this lives (see the module's doc).
struct InUse {
    inner: Arc<Inner>,
    hosted: Arc<Hosted>,
}

impl InUse {
    fn new(handle: &SessionHandle) -> InUse {
        lock(&handle.hosted.activity).running += 1;
        handle.inner.deadlines_changed.notify_one();
        InUse {
            inner: handle.inner.clone(),
            hosted: handle.hosted.clone(),
        }
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        {
            let mut activity = lock(&self.hosted.activity);
            activity.running = activity.running.saturating_sub(1);
            activity.last_end = Instant::now();
        }
        self.inner.deadlines_changed.notify_one();
        // Shutdown waits for busy sessions as for executions.
        self.inner.execution_ended.notify_waiters();
    }
}

impl SessionHandle {
    /// The session's files with the service's limits.
    fn files(&self) -> SessionFiles {
        self.hosted
            .session
            .files()
            .with_limits(self.inner.config.bounds.files)
    }

    fn files_error(&self, source: FilesError) -> ServiceError {
        ServiceError::Files {
            session_id: self.hosted.id.clone(),
            source,
        }
    }

    /// Writes `source` to `path` in the session's directory, streamed (see
    /// [`SessionFiles::write`]); `size_hint` (the request's `Content-Length`) refuses a
    /// write bound to pass a limit before anything is read.
    pub async fn put_file<R>(
        &self,
        path: &str,
        size_hint: Option<u64>,
        source: R,
    ) -> Result<WrittenFile, ServiceError>
    where
        R: AsyncRead + Unpin,
    {
        let _in_use = InUse::new(self);
        self.files()
            .write(path, source, size_hint)
            .await
            .map_err(|e| self.files_error(e))
    }

    /// The regular file at `path`, opened for reading, and its size.
    pub async fn open_file(&self, path: &str) -> Result<OpenedFile, ServiceError> {
        let _in_use = InUse::new(self);
        self.files()
            .open(path)
            .await
            .map_err(|e| self.files_error(e))
    }

    /// The entries of the directory at `path` (`""`: the top), bounded.
    pub async fn list_files(&self, path: &str) -> Result<Listing, ServiceError> {
        let _in_use = InUse::new(self);
        self.files()
            .list(path)
            .await
            .map_err(|e| self.files_error(e))
    }

    /// Removes the file, symlink or empty directory at `path` (with `recursive`, a whole
    /// tree, on the blocking pool).
    pub async fn delete_file(&self, path: &str, recursive: bool) -> Result<(), ServiceError> {
        let _in_use = InUse::new(self);
        self.files()
            .remove(path, recursive)
            .await
            .map_err(|e| self.files_error(e))
    }
}
