//! The durable store: checkpoints (and, later, session records), behind the [`Store`] trait so
//! that other back ends (PostgreSQL for a cluster) can take its place. The embedded default
//! is SQLite ([`SqliteStore`]). Every method blocks (disk I/O): callers run them on the
//! blocking pool ([`Store::blocking`]).

mod sqlite;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use sqlite::SqliteStore;

use crate::session::NotSaved;

/// What is known of a stored checkpoint besides its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct CheckpointRecord {
    /// `ckpt-<uuid>`.
    pub id: String,
    /// The tenant it belongs to: no other tenant sees it.
    pub tenant: String,
    /// The session it was made from (`None` for an uploaded one).
    pub session_id: Option<String>,
    /// Unix time, seconds.
    pub created_at: f64,
    /// Bytes of the checkpoint.
    pub size: u64,
    /// Names saved, and those that could not be, with the reason (empty for an upload).
    pub saved: Vec<String>,
    pub skipped: Vec<NotSaved>,
    /// The distributions the session had installed in its package directory
    /// (`name==version`; empty for an upload).
    #[serde(default)]
    pub packages: Vec<String>,
}

/// A session the store knows of, to bring back after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    pub id: String,
    pub tenant: String,
    /// Unix time when the client got it.
    pub created_at: f64,
    /// Its namespace as last saved (a checkpoint), and when; `None` before the first save.
    pub state: Option<(f64, Vec<u8>)>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("the store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store: a record is malformed: {0}")]
    Malformed(String),
    #[error("the store's thread is gone")]
    Gone,
}

/// Where checkpoints live. Implementations are shared by every task of the service.
pub trait Store: Send + Sync + 'static {
    /// Adds a checkpoint (its id is new).
    fn put_checkpoint(&self, record: &CheckpointRecord, data: &[u8]) -> Result<(), StoreError>;
    /// Adds a checkpoint unless its tenant's checkpoints would then pass `limit` bytes
    /// (checked and added as one step); `Err(held)` with the bytes the tenant holds.
    fn put_checkpoint_within(
        &self,
        record: &CheckpointRecord,
        data: &[u8],
        limit: u64,
    ) -> Result<Result<(), u64>, StoreError>;
    /// The checkpoint `id` of `tenant`, with its bytes; `None` if it has no such checkpoint.
    fn get_checkpoint(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(CheckpointRecord, Vec<u8>)>, StoreError>;
    /// The checkpoints of `tenant` (of `session_id` only, when given), oldest first.
    fn list_checkpoints(
        &self,
        tenant: &str,
        session_id: Option<&str>,
    ) -> Result<Vec<CheckpointRecord>, StoreError>;
    /// Removes the checkpoint `id` of `tenant`; whether it existed.
    fn delete_checkpoint(&self, tenant: &str, id: &str) -> Result<bool, StoreError>;
    /// Bytes of all the checkpoints of `tenant`.
    fn tenant_bytes(&self, tenant: &str) -> Result<u64, StoreError>;
    /// Records a session clients hold (its state comes with [`Store::save_session_state`]).
    fn put_session(&self, id: &str, tenant: &str, created_at: f64) -> Result<(), StoreError>;
    /// The session's namespace as of `saved_at` (a checkpoint).
    fn save_session_state(&self, id: &str, saved_at: f64, state: &[u8]) -> Result<(), StoreError>;
    /// Forgets a session (deleted, or culled).
    fn delete_session(&self, id: &str) -> Result<(), StoreError>;
    /// Every session recorded, oldest first.
    fn list_sessions(&self) -> Result<Vec<StoredSession>, StoreError>;
}

/// Runs `f` with the store on the blocking pool (stores do disk I/O).
pub async fn blocking<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|_| StoreError::Gone)?
}
