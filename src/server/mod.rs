//! `pyrepl3 serve`: sessions over HTTP and WebSocket. This module owns the server's state —
//! the pool, the tenants (tokens, limits, rate limiters), the registry of sessions held by
//! clients with their recent executions — and its life: start, deadline-driven idle culling,
//! and the shutdown sequence. Routes are in `http.rs` and `ws.rs`, the per-execution event
//! log (resume, back-pressure) in `execlog.rs`.

pub mod config;
pub mod execlog;
mod http;
mod metrics;
mod ws;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::pool::{PooledSession, SessionPool};
use crate::ratelimit::RateLimiter;
use crate::session::{Event, ExecuteOptions, Session};
use crate::sync::lock_unpoisoned as lock;
use crate::time::{sleep_until_opt, unix_now};
pub use config::{Overrides, ServerConfig, TenantConfig};
use execlog::ExecLog;
use metrics::Metrics;

/// Completed executions kept per session for `GET .../executions/{id}` and resuming.
const KEPT_EXECUTIONS: usize = 32;

pub(crate) struct Tenant {
    pub config: TenantConfig,
    pub limiter: RateLimiter,
}

/// A session held by a client.
pub(crate) struct Hosted {
    pub id: String,
    pub tenant: String,
    pub created_at: f64,
    pub session: Session,
    /// The pool's guard; taken (and the session discarded, never reused by another
    /// tenant) when the session is deleted or culled.
    guard: Mutex<Option<PooledSession>>,
    activity: Mutex<Activity>,
    /// Recent executions, oldest first.
    executions: Mutex<VecDeque<Arc<ExecLog>>>,
}

struct Activity {
    running: usize,
    /// End of the last execution (or creation): idle culling counts from here.
    last_end: Instant,
}

impl Hosted {
    pub fn execution(&self, id: &str) -> Option<Arc<ExecLog>> {
        lock(&self.executions)
            .iter()
            .find(|e| e.execution_id == id)
            .cloned()
    }

    /// Executions after `id` in submission order that have not ended.
    pub fn unfinished_after(&self, id: Option<&str>) -> Vec<Arc<ExecLog>> {
        let list = lock(&self.executions);
        let start = match id {
            Some(id) => list
                .iter()
                .position(|e| e.execution_id == id)
                .map_or(list.len(), |p| p + 1),
            None => 0,
        };
        list.iter()
            .skip(start)
            .filter(|e| !e.is_done())
            .cloned()
            .collect()
    }

    fn is_busy(&self) -> bool {
        lock(&self.activity).running > 0
    }
}

pub(crate) struct AppState {
    pub config: ServerConfig,
    pub pool: SessionPool,
    pub tenants: HashMap<String, Arc<Tenant>>,
    pub sessions: Mutex<HashMap<String, Arc<Hosted>>>,
    /// Sessions being created, per tenant: counted against the tenant's limit while the pool
    /// is awaited. Locked only after `sessions`, never the other way round.
    reserved: Mutex<HashMap<String, usize>>,
    pub metrics: Metrics,
    /// Wakes the culler when a deadline may have changed.
    culler: Notify,
    /// An execution ended (shutdown waits for the last one).
    execution_ended: Notify,
    pub closing: AtomicBool,
    /// Cancelled at shutdown: ends WebSocket connections and background tasks.
    pub shutdown: CancellationToken,
}

impl AppState {
    pub fn hosted(&self, tenant: &str, id: &str) -> Option<Arc<Hosted>> {
        // Another tenant's session is "not found": its existence is not disclosed.
        lock(&self.sessions)
            .get(id)
            .filter(|h| h.tenant == tenant)
            .cloned()
    }

    /// A place for one more session of `tenant`, if it is under `max`; held until the
    /// session is added (or the request fails or is dropped).
    pub fn reserve_session(self: &Arc<Self>, tenant: &str, max: usize) -> Option<Reservation> {
        let sessions = lock(&self.sessions);
        let held = sessions.values().filter(|h| h.tenant == tenant).count();
        let mut reserved = lock(&self.reserved);
        let pending = reserved.entry(tenant.to_string()).or_default();
        if held + *pending >= max {
            return None;
        }
        *pending += 1;
        Some(Reservation {
            state: self.clone(),
            tenant: tenant.to_string(),
        })
    }

    pub fn add_session(&self, tenant: &str, guard: PooledSession) -> Arc<Hosted> {
        let session: Session = (*guard).clone();
        let hosted = Arc::new(Hosted {
            id: session.id().to_string(),
            tenant: tenant.to_string(),
            created_at: unix_now(),
            session,
            guard: Mutex::new(Some(guard)),
            activity: Mutex::new(Activity {
                running: 0,
                last_end: Instant::now(),
            }),
            executions: Mutex::new(VecDeque::new()),
        });
        lock(&self.sessions).insert(hosted.id.clone(), hosted.clone());
        self.culler.notify_one();
        hosted
    }

    /// Removes a session and shuts its worker down (it is never handed to anyone else).
    pub fn remove_session(&self, id: &str) -> Option<Arc<Hosted>> {
        let hosted = lock(&self.sessions).remove(id)?;
        if let Some(guard) = lock(&hosted.guard).take() {
            guard.discard();
        }
        self.culler.notify_one();
        Some(hosted)
    }

    /// Starts `code` on `hosted` and returns its log; a task moves the events into the log.
    pub fn start_execution(
        self: &Arc<Self>,
        hosted: &Arc<Hosted>,
        code: String,
        execution_id: Option<String>,
        timeout: Option<Duration>,
    ) -> Arc<ExecLog> {
        let limit = self
            .tenant_named(&hosted.tenant)
            .and_then(|t| t.config.execution_time_limit_secs)
            .filter(|s| *s > 0.0)
            .and_then(crate::time::duration_from_secs);
        let timeout = match (timeout, limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let execution = hosted.session.execute(
            code,
            ExecuteOptions {
                timeout,
                execution_id,
            },
        );
        let log = ExecLog::new(execution.id());
        {
            let mut list = lock(&hosted.executions);
            list.push_back(log.clone());
            while list.len() > KEPT_EXECUTIONS {
                match list.front() {
                    Some(oldest) if oldest.is_done() => {
                        list.pop_front();
                    }
                    _ => break,
                }
            }
        }
        lock(&hosted.activity).running += 1;
        self.culler.notify_one();
        let state = self.clone();
        let hosted = hosted.clone();
        let pump_log = log.clone();
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            let metrics_state = state.clone();
            pump_log
                .pump(execution, move |event: &Event| {
                    if event.is_terminal() {
                        metrics_state
                            .metrics
                            .record(event, started.elapsed().as_secs_f64());
                    }
                })
                .await;
            {
                let mut activity = lock(&hosted.activity);
                activity.running = activity.running.saturating_sub(1);
                activity.last_end = Instant::now();
            }
            state.culler.notify_one();
            state.execution_ended.notify_waiters();
        });
        log
    }

    /// The earliest moment an idle (not busy) session is due to be culled.
    fn next_cull(&self) -> Option<Instant> {
        let sessions = lock(&self.sessions);
        sessions
            .values()
            .filter_map(|h| {
                let activity = lock(&h.activity);
                if activity.running > 0 {
                    return None; // busy sessions are never culled for idleness
                }
                let timeout = self.tenant_named(&h.tenant)?.config.idle_timeout();
                Some(crate::time::deadline(activity.last_end, timeout))
            })
            .min()
    }

    fn tenant_named(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.tenants.values().find(|t| t.config.name == name)
    }

    fn cull_expired(&self) {
        let now = Instant::now();
        let expired: Vec<String> = lock(&self.sessions)
            .values()
            .filter(|h| {
                let activity = lock(&h.activity);
                let timeout = self
                    .tenant_named(&h.tenant)
                    .map(|t| t.config.idle_timeout());
                activity.running == 0
                    && timeout.is_some_and(|t| crate::time::deadline(activity.last_end, t) <= now)
            })
            .map(|h| h.id.clone())
            .collect();
        for id in expired {
            tracing::info!(session = %id, "culled after its idle timeout");
            self.remove_session(&id);
        }
    }
}

/// A tenant's place for a session being created (see `AppState::reserve_session`).
pub(crate) struct Reservation {
    state: Arc<AppState>,
    tenant: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.state.reserved).get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Deadline-driven culling: sleeps until the earliest idle deadline, re-armed whenever it
/// may have changed (a session or an execution started or ended); no timer while nothing
/// can expire.
async fn culler(state: Arc<AppState>) {
    loop {
        let due = state.next_cull();
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = state.culler.notified() => {}
            // not polling: the earliest idle deadline, re-armed when it changes.
            _ = sleep_until_opt(due) => state.cull_expired(),
        }
    }
}

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    tokens: Vec<(String, String)>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// (tenant name, token) pairs, e.g. to print a generated token.
    pub fn tokens(&self) -> &[(String, String)] {
        &self.tokens
    }

    /// Shuts down (see [`start`]) and waits until it is done.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.stop.cancel();
        self.wait().await
    }

    /// Waits until the server has stopped (after `shutdown`, or a fatal error).
    pub async fn wait(self) -> Result<(), Error> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(Error::Io {
                context: "running the server",
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// A token that cancels to shut the server down.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// Binds, fills the pool and serves until the handle's stop token is cancelled. Shutdown:
/// stop accepting; running executions get the shutdown grace to end, then end with
/// `ServerShutdown`; every session is shut down; returns when no worker is left.
pub async fn start(config: ServerConfig) -> Result<ServerHandle, Error> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Io {
            context: "binding the listen address",
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(Error::io("reading the bound address"))?;
    let pool = SessionPool::start(crate::pool::PoolConfig {
        pre_warm: true,
        ..config.pool_config()
    })
    .await?;
    let tenants: HashMap<String, Arc<Tenant>> = config
        .tenants
        .iter()
        .map(|t| {
            (
                t.token.clone(),
                Arc::new(Tenant {
                    config: t.clone(),
                    limiter: RateLimiter::new(t.rate_per_second, t.burst),
                }),
            )
        })
        .collect();
    let tokens = config
        .tenants
        .iter()
        .map(|t| (t.name.clone(), t.token.clone()))
        .collect();
    let state = Arc::new(AppState {
        config,
        pool,
        tenants,
        sessions: Mutex::new(HashMap::new()),
        reserved: Mutex::new(HashMap::new()),
        metrics: Metrics::default(),
        culler: Notify::new(),
        execution_ended: Notify::new(),
        closing: AtomicBool::new(false),
        shutdown: CancellationToken::new(),
    });
    tokio::spawn(culler(state.clone()));
    let stop = CancellationToken::new();
    let router = http::router(state.clone());
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let graceful = {
                let state = state.clone();
                async move {
                    stop.cancelled().await;
                    shut_down(&state).await;
                }
            };
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(graceful)
                .await
                .map_err(Error::io("serving HTTP"));
            // Whatever ended serving, no session outlives the server.
            state.shutdown.cancel();
            state.pool.shutdown().await?;
            served
        }
    });
    Ok(ServerHandle {
        addr,
        tokens,
        stop,
        task,
    })
}

/// The shutdown sequence, up to the point where connections can close.
async fn shut_down(state: &Arc<AppState>) {
    state.closing.store(true, Ordering::SeqCst);
    // Running executions get the grace to finish: wait for the "ended" events, bounded by
    // one deadline.
    // not polling: one deadline for the whole grace.
    let deadline = crate::time::deadline(Instant::now(), state.config.shutdown_grace());
    loop {
        let ended = state.execution_ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        let busy = lock(&state.sessions).values().any(|h| h.is_busy());
        if !busy {
            break;
        }
        tokio::select! {
            _ = &mut ended => {}
            // not polling: the one deadline of the shutdown grace.
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    // What still runs ends now, with the reason.
    let hosted: Vec<Arc<Hosted>> = lock(&state.sessions).values().cloned().collect();
    for h in &hosted {
        let logs: Vec<Arc<ExecLog>> = lock(&h.executions).iter().cloned().collect();
        for log in logs {
            log.end_with(Event::error(
                "ServerShutdown",
                "the server is shutting down; the execution was stopped",
            ))
            .await;
        }
    }
    // WebSocket loops and the culler end; sessions go back to the pool, which the caller
    // shuts down (killing what remains) once connections have closed.
    state.shutdown.cancel();
    for h in hosted {
        state.remove_session(&h.id);
    }
}
