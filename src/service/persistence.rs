//! Sessions that outlive the server: each session clients hold is recorded in the store;
//! its namespace is saved at a graceful shutdown and, for tenants with `autosave`, after
//! every successful execution; a starting server brings the recorded sessions back under
//! their ids, their namespaces restored. Deleted and culled sessions are forgotten.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::sessions::Hosted;
use super::{Inner, Service};
use crate::store;

/// How long the saves of a graceful shutdown may take, all sessions together.
const SHUTDOWN_SAVE_DEADLINE: Duration = Duration::from_secs(30);
/// How long bringing the stored sessions back may take at start, all together (they are
/// restored concurrently; one not back by then stays recorded for a later start).
const START_RESTORE_DEADLINE: Duration = Duration::from_secs(30);

impl Inner {
    /// Records a session just handed to a client (a failure is logged: the session works,
    /// it only would not come back after a restart).
    pub(super) async fn record_session(&self, hosted: &Arc<Hosted>) {
        let Some(store) = &self.store else { return };
        let (id, tenant, created_at) = (
            hosted.id.clone(),
            hosted.tenant.config.name.clone(),
            hosted.created_at,
        );
        if let Err(e) =
            store::blocking(store, move |s| s.put_session(&id, &tenant, created_at)).await
        {
            tracing::warn!(session = %hosted.id, error = %e, "could not record the session in the store");
        }
        // Deleted while it was being recorded: its forgetting may have run before the record
        // was written, which would bring it back at the next start.
        let gone = !crate::sync::lock_unpoisoned(&self.sessions).contains_key(&hosted.id);
        if gone {
            let id = hosted.id.clone();
            if let Err(e) = store::blocking(store, move |s| s.delete_session(&id)).await {
                tracing::warn!(session = %hosted.id, error = %e, "could not forget the session in the store");
            }
        }
    }

    /// Forgets a deleted or culled session (in the background).
    pub(super) fn forget_session(&self, id: &str) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let id = id.to_string();
        tokio::spawn(async move {
            let key = id.clone();
            if let Err(e) = store::blocking(&store, move |s| s.delete_session(&key)).await {
                tracing::warn!(session = %id, error = %e, "could not forget the session in the store");
            }
        });
    }
}

/// Saves the namespace of `hosted` as its stored state. Returns whether it was saved.
async fn save_state(store: &Arc<dyn store::Store>, hosted: &Arc<Hosted>) -> bool {
    let timeout = hosted.tenant.config.execution_time_limit();
    let checkpoint = match hosted.session.checkpoint(timeout).await {
        Ok(checkpoint) => checkpoint,
        Err(e) => {
            tracing::warn!(session = %hosted.id, error = %e, "could not save the session's state");
            return false;
        }
    };
    let id = hosted.id.clone();
    let saved_at = crate::time::unix_now();
    let saved = store::blocking(store, move |s| {
        s.save_session_state(&id, saved_at, &checkpoint.data)
    })
    .await;
    match &saved {
        Ok(()) => *crate::sync::lock_unpoisoned(&hosted.saved_at) = Some(saved_at),
        Err(e) => {
            tracing::warn!(session = %hosted.id, error = %e, "could not store the session's state")
        }
    }
    saved.is_ok()
}

/// After an execution of `hosted` ended with a result: saves its namespace if its tenant
/// autosaves. One save at a time per session; an execution that ends meanwhile makes one
/// more follow (so the last state is always saved), never a pile of them.
pub(super) fn autosave(inner: &Arc<Inner>, hosted: &Arc<Hosted>) {
    let Some(store) = inner.store.clone() else {
        return;
    };
    if !hosted.tenant.config.autosave {
        return;
    }
    hosted.autosave_due.store(true, Ordering::SeqCst);
    if hosted.autosaving.swap(true, Ordering::SeqCst) {
        return; // the running save starts another when it ends
    }
    let hosted = hosted.clone();
    tokio::spawn(async move {
        loop {
            while hosted.autosave_due.swap(false, Ordering::SeqCst) {
                save_state(&store, &hosted).await;
            }
            hosted.autosaving.store(false, Ordering::SeqCst);
            // A save asked for between the last check and the release: this task takes it
            // unless another has started meanwhile.
            if !hosted.autosave_due.load(Ordering::SeqCst)
                || hosted.autosaving.swap(true, Ordering::SeqCst)
            {
                break;
            }
        }
    });
}

impl Service {
    /// At a graceful shutdown, before the sessions end: saves every session's namespace
    /// (concurrently, within [`SHUTDOWN_SAVE_DEADLINE`]).
    pub(super) async fn save_all_sessions(&self, hosted: &[Arc<Hosted>]) {
        let Some(store) = self.inner.store.clone() else {
            return;
        };
        let saves = hosted.iter().map(|h| save_state(&store, h));
        // not polling: one deadline for all the saves.
        if tokio::time::timeout(SHUTDOWN_SAVE_DEADLINE, futures::future::join_all(saves))
            .await
            .is_err()
        {
            tracing::warn!("not every session's state was saved within {SHUTDOWN_SAVE_DEADLINE:?}");
        }
    }

    /// At start: brings back every session the store has, under its id, for its tenant, its
    /// namespace restored from its saved state. One that cannot come back (its tenant is
    /// gone, no session to be had) is logged; its record stays only if it may come back
    /// later (no session available now).
    pub(super) async fn restore_sessions(&self) {
        let Some(store) = self.inner.store.clone() else {
            return;
        };
        let stored = match store::blocking(&store, |s| s.list_sessions()).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the stored sessions");
                return;
            }
        };
        let mut returning = Vec::new();
        for record in stored {
            let Some(tenant) = self
                .inner
                .tenants
                .values()
                .find(|t| t.config.name == record.tenant)
                .cloned()
            else {
                tracing::warn!(session = %record.id, tenant = %record.tenant, "the session's tenant is gone; forgotten");
                self.inner.forget_session(&record.id);
                continue;
            };
            returning.push(async move {
                let id = record.id.clone();
                match self.bring_back(&tenant, record).await {
                    Ok(()) => tracing::info!(session = %id, "session restored"),
                    // Still recorded, its state untouched: it comes back at a later start.
                    Err(e) => tracing::warn!(session = %id, error = %e, "could not bring the session back now"),
                }
            });
        }
        // not polling: one deadline for all of them, restored concurrently.
        if tokio::time::timeout(START_RESTORE_DEADLINE, futures::future::join_all(returning))
            .await
            .is_err()
        {
            tracing::warn!("not every stored session came back within {START_RESTORE_DEADLINE:?}; the rest come back at a later start");
        }
    }

    async fn bring_back(
        &self,
        tenant: &Arc<super::Tenant>,
        record: store::StoredSession,
    ) -> Result<(), super::ServiceError> {
        // Within the tenant's session limit (it may have been lowered since): one over it
        // stays recorded, and comes back at a later start with room for it.
        let Some(_reservation) = self
            .inner
            .reserve_session(&tenant.config.name, tenant.config.max_sessions)
        else {
            return Err(super::ServiceError::SessionLimit {
                tenant: tenant.config.name.clone(),
                limit: tenant.config.max_sessions,
            });
        };
        // Held so that, should this fail or be dropped (the start deadline), the session is
        // discarded: it holds this tenant's limits and state, and must never go back to the
        // pool for another tenant.
        let mut holder =
            super::sessions::DiscardUnlessKept(Some(self.acquire_for(&tenant.config, None).await?));
        let mut failed = Vec::new();
        let mut saved_at = None;
        if let (Some((at, state)), Some(session)) = (&record.state, holder.0.as_ref()) {
            // A state that cannot be restored at all is not given up: the session does not
            // come back now (its record and state stay), rather than come back empty and be
            // saved over.
            let report = session
                .restore(state, true, tenant.config.execution_time_limit())
                .await
                .map_err(|e| super::ServiceError::CheckpointFailed {
                    reason: e.to_string(),
                })?;
            failed = report.failed;
            saved_at = Some(*at);
        } else {
            // Never saved (it was running code at every save, and had no autosave): it comes
            // back with an empty namespace, and its info says why.
            failed.push(crate::session::NotSaved {
                name: "*".to_string(),
                reason: "no saved state: the session was running code at shutdown and had no \
                         autosave, so its namespace starts empty"
                    .to_string(),
            });
        }
        let Some(guard) = holder.0.take() else {
            return Err(super::ServiceError::from_session(
                "restore_session",
                None,
                crate::error::Error::SessionClosed,
            ));
        };
        let hosted = self.inner.add_session_as(
            tenant,
            guard,
            Some((record.id, record.created_at, saved_at, failed)),
        );
        *crate::sync::lock_unpoisoned(&hosted.saved_at) = saved_at;
        Ok(())
    }
}
