//! Sessions held by clients: the registry (which tenant holds which session; another
//! tenant's is not found), the tenant session limit with its reservations, each session's
//! activity (what idle culling counts from) and its recent execution logs; create, list,
//! get, delete, restart, and the culler's deadlines.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::time::Instant;

use super::execlog::ExecLog;
use super::{Caller, Inner, Service, ServiceError, Tenant};
use crate::pool::PooledSession;
use crate::session::{Session, SessionEnvironment, SessionInfo, SessionState};
use crate::sync::lock_unpoisoned as lock;

/// Completed executions kept per session for replay and resuming.
pub(super) const KEPT_EXECUTIONS: usize = 32;
/// Ids of dropped executions remembered per session (for the "expired" answer).
pub(super) const EXPIRED_IDS_KEPT: usize = 64;

/// A session held by a client.
pub(super) struct Hosted {
    pub id: String,
    pub tenant: Arc<Tenant>,
    /// Unix time when the client got the session.
    pub created_at: f64,
    pub session: Session,
    /// The pool's guard; taken (and the session discarded, never reused by another
    /// tenant) when the session is deleted or culled.
    guard: Mutex<Option<PooledSession>>,
    pub activity: Mutex<Activity>,
    /// Recent executions, oldest first.
    pub executions: Mutex<VecDeque<Arc<ExecLog>>>,
    /// Ids of the latest executions dropped by retention (at most [`EXPIRED_IDS_KEPT`]), so
    /// that asking for one answers "expired" rather than "no such execution".
    pub expired: Mutex<VecDeque<String>>,
    /// Brought back after a restart: from the state saved when, and what of it failed.
    pub restored: Option<(Option<f64>, Vec<crate::session::NotSaved>)>,
    /// An autosave is under way / another is due when it ends (`persistence.rs`).
    pub autosaving: std::sync::atomic::AtomicBool,
    pub autosave_due: std::sync::atomic::AtomicBool,
    /// When its namespace was last saved in the store (autosave, shutdown).
    pub saved_at: Mutex<Option<f64>>,
}

pub(super) struct Activity {
    pub running: usize,
    /// End of the last execution (or creation): idle culling counts from here.
    pub last_end: Instant,
}

impl Hosted {
    pub fn execution(&self, id: &str) -> Option<Arc<ExecLog>> {
        lock(&self.executions)
            .iter()
            .find(|e| e.execution_id == id)
            .cloned()
    }

    /// Whether `id` names an execution that retention dropped.
    pub fn is_expired(&self, id: &str) -> bool {
        lock(&self.expired).iter().any(|e| e == id)
    }

    pub fn logs(&self) -> Vec<Arc<ExecLog>> {
        lock(&self.executions).iter().cloned().collect()
    }

    fn is_busy(&self) -> bool {
        lock(&self.activity).running > 0
    }

    fn summary(&self) -> SessionSummary {
        SessionSummary {
            created_at: self.created_at,
            id: self.id.clone(),
            state: self.session.state(),
        }
    }
}

/// A session as listed (and as `POST /v1/sessions` answers).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct SessionSummary {
    /// Unix time when the client got the session.
    pub created_at: f64,
    pub id: String,
    pub state: SessionState,
}

/// One of the caller's sessions, found by [`Service::session`]: the operations on it.
/// Holding it keeps working on the session even after it is deleted (its operations then
/// fail as on a closed session), as a WebSocket connection does.
#[derive(Clone)]
pub struct SessionHandle {
    pub(super) inner: Arc<Inner>,
    pub(super) hosted: Arc<Hosted>,
}

/// A pooled session on its way to a tenant: discarded (never given back to the pool) unless
/// taken out.
pub(super) struct DiscardUnlessKept(pub(super) Option<crate::pool::PooledSession>);

impl Drop for DiscardUnlessKept {
    fn drop(&mut self) {
        if let Some(session) = self.0.take() {
            session.discard();
        }
    }
}

impl Service {
    /// Takes a warm session from the pool for the caller, within its tenant's session
    /// limit.
    pub async fn create_session(&self, caller: &Caller) -> Result<SessionSummary, ServiceError> {
        self.create_session_with(caller, SessionEnvironment::default())
            .await
    }

    /// [`Service::create_session`], the session given its own variables and working
    /// directory (`Session::set_environment`; kept across its worker's restarts). A refused
    /// environment is `InvalidEnvironment`, checked before a session is taken where it can
    /// be (a `cwd` that leads out of the session's directory is known only after).
    pub async fn create_session_with(
        &self,
        caller: &Caller,
        environment: SessionEnvironment,
    ) -> Result<SessionSummary, ServiceError> {
        // Shutdown saves and then removes the sessions it finds: one made after would be
        // recorded, never saved, and come back empty at the next start.
        self.check_open()?;
        environment
            .validate()
            .map_err(|e| ServiceError::from_session("create_session", None, e))?;
        let tenant = &caller.tenant.config;
        // Reserved before waiting for the pool, so concurrent requests cannot all pass the check.
        let Some(_reservation) = self
            .inner
            .reserve_session(&tenant.name, tenant.max_sessions)
        else {
            return Err(ServiceError::SessionLimit {
                tenant: tenant.name.clone(),
                limit: tenant.max_sessions,
            });
        };
        let environment = (!environment.is_empty()).then_some(environment);
        let guard = self.acquire_for(tenant, environment).await?;
        let hosted = self.inner.add_session(&caller.tenant, guard);
        self.inner.record_session(&hosted).await;
        Ok(hosted.summary())
    }

    /// A warm session from the pool of `tenant`'s network, with the tenant's limits set, and
    /// the caller's `environment` when given.
    pub(super) async fn acquire_for(
        &self,
        tenant: &super::TenantConfig,
        environment: Option<SessionEnvironment>,
    ) -> Result<crate::pool::PooledSession, ServiceError> {
        let pool = tenant
            .network
            .and_then(|network| self.inner.network_pools.get(&network))
            .unwrap_or(&self.inner.pool);
        let guard = pool
            .acquire()
            .await
            .map_err(|e| ServiceError::from_session("create_session", None, e))?;
        // The pool's sessions are warmed before anyone's: the tenant's limits (and the
        // caller's environment) are set on the worker as it is handed over (and kept for any
        // restart). A session that got them, or may have, is never given back to the pool
        // for another tenant: if this fails or the caller goes away meanwhile, it is
        // discarded.
        let mut handover = DiscardUnlessKept(Some(guard));
        if let Some(session) = &handover.0 {
            session
                .set_limits(tenant.limits())
                .await
                .map_err(|e| ServiceError::from_session("create_session", None, e))?;
            if let Some(environment) = environment {
                session
                    .set_environment(environment)
                    .await
                    .map_err(|e| ServiceError::from_session("create_session", None, e))?;
            }
        }
        let Some(guard) = handover.0.take() else {
            return Err(ServiceError::from_session(
                "create_session",
                None,
                crate::error::Error::SessionClosed,
            ));
        };
        Ok(guard)
    }

    /// The caller's sessions, oldest first.
    pub fn list_sessions(&self, caller: &Caller) -> Vec<SessionSummary> {
        let sessions = lock(&self.inner.sessions);
        let mut mine: Vec<&Arc<Hosted>> = sessions
            .values()
            .filter(|h| h.tenant.config.name == caller.tenant_name())
            .collect();
        mine.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
        mine.into_iter().map(|h| h.summary()).collect()
    }

    /// The caller's session `id`. Another tenant's session is not found: its existence is
    /// not disclosed.
    pub fn session(&self, caller: &Caller, id: &str) -> Result<SessionHandle, ServiceError> {
        let hosted = lock(&self.inner.sessions)
            .get(id)
            .filter(|h| h.tenant.config.name == caller.tenant_name())
            .cloned()
            .ok_or_else(|| ServiceError::SessionNotFound {
                session_id: id.to_string(),
            })?;
        Ok(SessionHandle {
            inner: self.inner.clone(),
            hosted,
        })
    }

    /// Removes the caller's session `id` and shuts its worker down (it is never handed to
    /// anyone else); a running execution ends with `SessionShutdown`.
    pub fn delete_session(&self, caller: &Caller, id: &str) -> Result<(), ServiceError> {
        self.session(caller, id)?;
        self.inner.remove_session(id);
        self.inner.forget_session(id);
        Ok(())
    }
}

impl SessionHandle {
    pub fn id(&self) -> &str {
        &self.hosted.id
    }

    /// The session itself.
    pub(super) fn session(&self) -> &crate::Session {
        &self.hosted.session
    }

    pub fn summary(&self) -> SessionSummary {
        self.hosted.summary()
    }

    /// A snapshot of the session (see [`Session::info`]), `created_at` being when the client
    /// got it.
    pub async fn info(&self) -> Result<SessionInfo, ServiceError> {
        let mut info = self
            .hosted
            .session
            .info()
            .await
            .map_err(|e| ServiceError::from_session("get_session", Some(self.id()), e))?;
        info.created_at = self.hosted.created_at;
        // The service's id (a session brought back after a restart keeps its own).
        info.id = self.hosted.id.clone();
        info.saved_at = *lock(&self.hosted.saved_at);
        if let Some((saved_at, failed)) = &self.hosted.restored {
            info.restored_from = *saved_at;
            info.restore_failed = failed.clone();
        }
        Ok(info)
    }

    /// What the session's namespace holds (see `Session::namespace`).
    pub async fn namespace(&self) -> Result<crate::protocol::NamespaceReply, ServiceError> {
        self.hosted
            .session
            .namespace()
            .await
            .map_err(|e| ServiceError::from_session("namespace", Some(self.id()), e))
    }

    /// A fresh worker, empty namespace; a running execution ends with `SessionRestarted`.
    pub async fn restart(&self) -> Result<SessionSummary, ServiceError> {
        self.hosted
            .session
            .restart()
            .await
            .map_err(|e| ServiceError::from_session("restart", Some(self.id()), e))?;
        Ok(self.summary())
    }
}

impl Inner {
    /// A place for one more session of `tenant`, if it is under `max`; held until the
    /// session is added (or the request fails or is dropped).
    pub(super) fn reserve_session(
        self: &Arc<Self>,
        tenant: &str,
        max: usize,
    ) -> Option<Reservation> {
        let sessions = lock(&self.sessions);
        let held = sessions
            .values()
            .filter(|h| h.tenant.config.name == tenant)
            .count();
        let mut reserved = lock(&self.reserved);
        let pending = reserved.entry(tenant.to_string()).or_default();
        if held + *pending >= max {
            return None;
        }
        *pending += 1;
        Some(Reservation {
            inner: self.clone(),
            tenant: tenant.to_string(),
        })
    }

    fn add_session(&self, tenant: &Arc<Tenant>, guard: PooledSession) -> Arc<Hosted> {
        self.add_session_as(tenant, guard, None)
    }

    /// [`Self::add_session`]; with `restored`, under the id, creation time and saved state's
    /// time (`None`: it had none) of a session brought back after a restart.
    pub(super) fn add_session_as(
        &self,
        tenant: &Arc<Tenant>,
        guard: PooledSession,
        restored: Option<(String, f64, Option<f64>, Vec<crate::session::NotSaved>)>,
    ) -> Arc<Hosted> {
        let session: Session = (*guard).clone();
        let (id, created_at, restored) = match restored {
            Some((id, created_at, saved_at, failed)) => (id, created_at, Some((saved_at, failed))),
            None => (session.id().to_string(), crate::time::unix_now(), None),
        };
        let hosted = Arc::new(Hosted {
            id,
            tenant: tenant.clone(),
            created_at,
            session,
            guard: Mutex::new(Some(guard)),
            activity: Mutex::new(Activity {
                running: 0,
                last_end: Instant::now(),
            }),
            executions: Mutex::new(VecDeque::new()),
            expired: Mutex::new(VecDeque::new()),
            restored,
            autosaving: std::sync::atomic::AtomicBool::new(false),
            autosave_due: std::sync::atomic::AtomicBool::new(false),
            saved_at: Mutex::new(None),
        });
        lock(&self.sessions).insert(hosted.id.clone(), hosted.clone());
        self.deadlines_changed.notify_one();
        hosted
    }

    /// Removes a session and shuts its worker down (it is never handed to anyone else).
    pub(super) fn remove_session(&self, id: &str) -> Option<Arc<Hosted>> {
        let hosted = lock(&self.sessions).remove(id)?;
        if let Some(guard) = lock(&hosted.guard).take() {
            guard.discard();
        }
        self.deadlines_changed.notify_one();
        Some(hosted)
    }

    pub(super) fn any_busy(&self) -> bool {
        lock(&self.sessions).values().any(|h| h.is_busy())
    }

    /// The earliest moment an idle (not busy) session is due to be culled.
    pub(super) fn next_cull(&self) -> Option<Instant> {
        let sessions = lock(&self.sessions);
        sessions
            .values()
            .filter_map(|h| {
                let activity = lock(&h.activity);
                if activity.running > 0 {
                    return None; // busy sessions are never culled for idleness
                }
                let timeout = h.tenant.config.idle_timeout();
                Some(crate::time::deadline(activity.last_end, timeout))
            })
            .min()
    }

    pub(super) fn cull_expired(&self) {
        let now = Instant::now();
        let expired: Vec<String> = lock(&self.sessions)
            .values()
            .filter(|h| {
                let activity = lock(&h.activity);
                let timeout = h.tenant.config.idle_timeout();
                activity.running == 0 && crate::time::deadline(activity.last_end, timeout) <= now
            })
            .map(|h| h.id.clone())
            .collect();
        for id in expired {
            tracing::info!(session = %id, "culled after its idle timeout");
            self.remove_session(&id);
            self.forget_session(&id);
        }
    }
}

/// A tenant's place for a session being created (see `Inner::reserve_session`).
pub(super) struct Reservation {
    inner: Arc<Inner>,
    tenant: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.inner.reserved).get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
        }
    }
}
