//! Checkpoints as a service: made from a caller's session into the durable store, listed,
//! read, downloaded, uploaded, deleted, and restored into a session, each for the caller's
//! own tenant only (another tenant's checkpoint is not found, as for sessions), within the
//! tenant's byte limit.

use std::sync::Arc;

use super::sessions::SessionHandle;
use super::{Caller, Service, ServiceError};
use crate::session::RestoreReport;
use crate::store::{self, CheckpointRecord, Store};

/// The largest checkpoint accepted by an upload (what a worker can make or take).
pub use crate::session::MAX_CHECKPOINT_BYTES;

impl Service {
    fn store(&self) -> Result<&Arc<dyn Store>, ServiceError> {
        self.inner
            .store
            .as_ref()
            .ok_or(ServiceError::StoreUnavailable)
    }

    /// Saves the namespace of the caller's session `id` as a new checkpoint.
    pub async fn create_checkpoint(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<CheckpointRecord, ServiceError> {
        let store = self.store()?.clone();
        let handle = self.session(caller, id)?;
        let timeout = caller.tenant.config.execution_time_limit();
        let checkpoint = handle
            .session()
            .checkpoint(timeout)
            .await
            .map_err(|e| checkpoint_error("create_checkpoint", Some(id), e))?;
        let record = CheckpointRecord {
            id: format!("ckpt-{}", uuid::Uuid::new_v4().simple()),
            tenant: caller.tenant_name().to_string(),
            session_id: Some(id.to_string()),
            created_at: crate::time::unix_now(),
            size: checkpoint.data.len() as u64,
            saved: checkpoint.saved,
            skipped: checkpoint.skipped,
            packages: checkpoint.packages,
        };
        self.put(caller, &store, record, checkpoint.data).await
    }

    /// Stores `data` (a checkpoint file, e.g. downloaded from another server) as a new
    /// checkpoint of the caller's tenant. It is checked when it is restored.
    pub async fn upload_checkpoint(
        &self,
        caller: &Caller,
        data: Vec<u8>,
    ) -> Result<CheckpointRecord, ServiceError> {
        let store = self.store()?.clone();
        if data.is_empty() {
            return Err(ServiceError::CheckpointFailed {
                reason: "an empty file is not a checkpoint".into(),
            });
        }
        if data.len() > MAX_CHECKPOINT_BYTES {
            return Err(ServiceError::CheckpointTooLarge {
                bytes: data.len(),
                limit: MAX_CHECKPOINT_BYTES,
            });
        }
        let record = CheckpointRecord {
            id: format!("ckpt-{}", uuid::Uuid::new_v4().simple()),
            tenant: caller.tenant_name().to_string(),
            session_id: None,
            created_at: crate::time::unix_now(),
            size: data.len() as u64,
            saved: Vec::new(),
            skipped: Vec::new(),
            packages: Vec::new(),
        };
        self.put(caller, &store, record, data).await
    }

    async fn put(
        &self,
        caller: &Caller,
        store: &Arc<dyn Store>,
        record: CheckpointRecord,
        data: Vec<u8>,
    ) -> Result<CheckpointRecord, ServiceError> {
        let limit = caller.tenant.config.checkpoint_bytes_limit;
        let tenant = record.tenant.clone();
        let kept = record.clone();
        // The check and the insert are one step of the store: concurrent requests cannot
        // both pass the limit.
        let added = store::blocking(store, move |store| {
            store.put_checkpoint_within(&record, &data, limit)
        })
        .await
        .map_err(store_error)?;
        match added {
            Ok(()) => Ok(kept),
            Err(held) => Err(ServiceError::CheckpointLimit {
                tenant,
                held,
                size: kept.size,
                limit,
            }),
        }
    }

    /// The checkpoints of the caller's session `id`, oldest first.
    pub async fn list_checkpoints(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Vec<CheckpointRecord>, ServiceError> {
        let store = self.store()?.clone();
        self.session(caller, id)?;
        let (tenant, id) = (caller.tenant_name().to_string(), id.to_string());
        store::blocking(&store, move |store| {
            store.list_checkpoints(&tenant, Some(&id))
        })
        .await
        .map_err(store_error)
    }

    /// Every checkpoint of the caller's tenant (of sessions gone, uploads...), oldest first.
    pub async fn list_tenant_checkpoints(
        &self,
        caller: &Caller,
    ) -> Result<Vec<CheckpointRecord>, ServiceError> {
        let store = self.store()?.clone();
        let tenant = caller.tenant_name().to_string();
        store::blocking(&store, move |store| store.list_checkpoints(&tenant, None))
            .await
            .map_err(store_error)
    }

    /// The caller's checkpoint `cid` and its bytes.
    pub async fn checkpoint(
        &self,
        caller: &Caller,
        cid: &str,
    ) -> Result<(CheckpointRecord, Vec<u8>), ServiceError> {
        let store = self.store()?.clone();
        let (tenant, key) = (caller.tenant_name().to_string(), cid.to_string());
        store::blocking(&store, move |store| store.get_checkpoint(&tenant, &key))
            .await
            .map_err(store_error)?
            .ok_or_else(|| ServiceError::CheckpointNotFound {
                checkpoint_id: cid.to_string(),
            })
    }

    /// Removes the caller's checkpoint `cid`.
    pub async fn delete_checkpoint(&self, caller: &Caller, cid: &str) -> Result<(), ServiceError> {
        let store = self.store()?.clone();
        let (tenant, key) = (caller.tenant_name().to_string(), cid.to_string());
        let deleted = store::blocking(&store, move |store| store.delete_checkpoint(&tenant, &key))
            .await
            .map_err(store_error)?;
        if deleted {
            Ok(())
        } else {
            Err(ServiceError::CheckpointNotFound {
                checkpoint_id: cid.to_string(),
            })
        }
    }

    /// Restores checkpoint bytes the caller read (with [`Service::checkpoint`]) into its
    /// session `id`. The restore is queued on the session when this future is first polled.
    pub async fn restore_checkpoint_data(
        &self,
        caller: &Caller,
        id: &str,
        data: &[u8],
        clear_existing: bool,
    ) -> Result<RestoreReport, ServiceError> {
        let handle = self.session(caller, id)?;
        restore_into(&handle, caller, data, clear_existing).await
    }

    /// Restores the caller's checkpoint `cid` into its session `id` (merged, or replacing
    /// the namespace with `clear_existing`).
    pub async fn restore_checkpoint(
        &self,
        caller: &Caller,
        id: &str,
        cid: &str,
        clear_existing: bool,
    ) -> Result<RestoreReport, ServiceError> {
        let handle = self.session(caller, id)?;
        let (_, data) = self.checkpoint(caller, cid).await?;
        restore_into(&handle, caller, &data, clear_existing).await
    }
}

impl Service {
    /// A new session (as [`Service::create_session`]) whose namespace is the caller's
    /// checkpoint `cid`. The checkpoint is read first; a session it cannot be restored into
    /// is deleted again, and the error is the caller's.
    pub async fn create_session_from_checkpoint(
        &self,
        caller: &Caller,
        cid: &str,
        environment: crate::session::SessionEnvironment,
    ) -> Result<(super::SessionSummary, RestoreReport), ServiceError> {
        let (_, data) = self.checkpoint(caller, cid).await?;
        let summary = self.create_session_with(caller, environment).await?;
        let restored = match self.session(caller, &summary.id) {
            Ok(handle) => restore_into(&handle, caller, &data, true).await,
            Err(e) => Err(e),
        };
        match restored {
            Ok(report) => Ok((summary, report)),
            Err(e) => {
                let _ = self.delete_session(caller, &summary.id);
                Err(e)
            }
        }
    }
}

/// Restores `data` into the session of `handle`.
pub(super) async fn restore_into(
    handle: &SessionHandle,
    caller: &Caller,
    data: &[u8],
    clear_existing: bool,
) -> Result<RestoreReport, ServiceError> {
    let timeout = caller.tenant.config.execution_time_limit();
    handle
        .session()
        .restore(data, clear_existing, timeout)
        .await
        .map_err(|e| checkpoint_error("restore", Some(handle.id()), e))
}

fn checkpoint_error(
    operation: &'static str,
    session_id: Option<&str>,
    e: crate::error::Error,
) -> ServiceError {
    match e {
        crate::error::Error::Checkpoint(reason) => ServiceError::CheckpointFailed { reason },
        other => ServiceError::from_session(operation, session_id, other),
    }
}

fn store_error(e: crate::store::StoreError) -> ServiceError {
    ServiceError::Store(e.to_string())
}
