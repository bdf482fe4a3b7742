//! The service: one transport-free API for everything a client of `pyrepl3 serve` can do —
//! authenticate (token → tenant, rate limit), create / list / get / delete / restart
//! sessions, execute, answer input, cancel, interrupt, list executions, and replay or follow
//! an execution's events — with every rule that applies to them: tenant isolation (another
//! tenant's session is not found), the tenant session limit, code size, timeout validation,
//! duplicate execution ids, the execution time limit. It owns the state behind them (the
//! pool, the tenants, the sessions held by clients with their execution logs, the metrics)
//! and its life: deadline-driven idle culling and the shutdown sequence. The HTTP and
//! WebSocket servers (`crate::server`) only translate between their transport and this API.
//!
//! Sessions and their registry are in `sessions.rs`, executions (execute, input, cancel,
//! interrupt, readers) in `executions.rs`, the per-execution event log in `execlog.rs`, the
//! client event type in `event.rs`, errors in `error.rs`, counters in `metrics.rs`, the
//! retention budget of finished logs in `retention.rs`, the session's files (upload,
//! download, list, delete) in `files.rs`.

mod checkpoints;
mod config;
mod error;
mod event;
mod execlog;
mod executions;
mod files;
pub use checkpoints::MAX_CHECKPOINT_BYTES;
mod metrics;
mod persistence;
mod retention;
mod sessions;
mod tickets;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::pool::{PoolConfig, PoolInfo, SessionPool};
use crate::ratelimit::RateLimiter;
use crate::session::Event;
use crate::sync::lock_unpoisoned as lock;
pub use config::{Bounds, ServiceConfig, TenantConfig};
pub use error::ServiceError;
pub use event::{ClientEvent, TransactionReport};
pub use execlog::LoggedEvent;
pub use executions::{ExecuteRequest, ExecutionHandle, ExecutionSummary, Reader};
use metrics::Metrics;
use sessions::Hosted;
pub use sessions::{SessionHandle, SessionSummary};
pub use tickets::{WsTicket, TICKETS_PER_TENANT, TICKET_TTL};

/// A tenant: its settings and its request-rate limiter.
struct Tenant {
    config: TenantConfig,
    limiter: RateLimiter,
}

#[cfg(test)]
impl Tenant {
    fn for_tests(name: &str) -> Tenant {
        Tenant {
            config: TenantConfig {
                name: name.to_string(),
                ..TenantConfig::default()
            },
            limiter: RateLimiter::new(1000.0, 1000),
        }
    }
}

/// Who is calling: the tenant that [`Service::authenticate`] found for a token. Every
/// operation on a session checks that the session is this tenant's.
#[derive(Clone)]
pub struct Caller {
    tenant: Arc<Tenant>,
}

impl Caller {
    pub fn tenant_name(&self) -> &str {
        &self.tenant.config.name
    }
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the token.
        f.debug_struct("Caller")
            .field("tenant", &self.tenant.config.name)
            .finish()
    }
}

/// The service. Cloning gives another handle to the same service.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServiceConfig,
    pool: SessionPool,
    /// The durable store (checkpoints), when configured.
    store: Option<Arc<dyn crate::store::Store>>,
    /// Pools of the sandbox networks tenants have that differ from the server's (`pool`'s).
    network_pools: HashMap<crate::worker::Network, SessionPool>,
    /// By token.
    tenants: HashMap<String, Arc<Tenant>>,
    /// Sessions held by clients, by id.
    sessions: Mutex<HashMap<String, Arc<Hosted>>>,
    /// Sessions being created, per tenant name: counted against the tenant's limit while the
    /// pool is awaited. Locked only after `sessions`, never the other way round.
    reserved: Mutex<HashMap<String, usize>>,
    metrics: Metrics,
    /// Wakes the culler when an idle deadline may have changed.
    deadlines_changed: Arc<Notify>,
    /// An execution ended (shutdown waits for the last one).
    execution_ended: Notify,
    /// Shutdown has begun: no new work.
    closing: AtomicBool,
    /// Cancelled when shutdown reaches the point where connections close; ends the culler.
    stopped: CancellationToken,
    /// Counts finished executions: their order, for the retention budget.
    finished: Arc<AtomicU64>,
    /// Unused WebSocket tickets (`tickets.rs`).
    tickets: tickets::Tickets,
}

impl Service {
    /// Starts the pool (filled to its `min_idle` before this returns) and the culler.
    pub async fn start(config: ServiceConfig) -> Result<Service, Error> {
        // Refused, not started half-safe: a host that cannot build the sandbox says why.
        if let Some(sandbox) = &config.pool.session.sandbox {
            crate::worker::check_sandbox_available(sandbox).await?;
        }
        // Opened first: a store another server holds is refused before anything starts.
        let store = match &config.store {
            Some(path) => {
                let path = path.clone();
                let opened =
                    tokio::task::spawn_blocking(move || crate::store::SqliteStore::open(&path))
                        .await
                        .map_err(|e| Error::Store(e.to_string()))?
                        .map_err(|e| Error::Store(e.to_string()))?;
                Some(Arc::new(opened) as Arc<dyn crate::store::Store>)
            }
            None => None,
        };
        if config.pool.session.sandbox.is_none() {
            if let Some(network) = config.tenants.iter().find_map(|t| t.network) {
                return Err(Error::InvalidConfig(format!(
                    "a tenant's network = \"{}\" needs the sandbox, which is off",
                    network.as_str()
                )));
            }
        }
        let pool = SessionPool::start(PoolConfig {
            pre_warm: true,
            ..config.pool.clone()
        })
        .await?;
        let mut network_pools = HashMap::new();
        for network in config.tenants.iter().filter_map(|t| t.network) {
            let server_network = config.pool.session.sandbox.as_ref().map(|s| s.network);
            if Some(network) == server_network || network_pools.contains_key(&network) {
                continue;
            }
            let mut pool_config = config.pool.clone();
            pool_config.pre_warm = true;
            if let Some(sandbox) = pool_config.session.sandbox.as_mut() {
                sandbox.network = network;
            }
            let started = match &pool_config.session.sandbox {
                Some(sandbox) => crate::worker::check_sandbox_available(sandbox).await,
                None => Ok(()),
            };
            let started = match started {
                Ok(()) => SessionPool::start(pool_config).await,
                Err(e) => Err(e),
            };
            match started {
                Ok(started) => {
                    network_pools.insert(network, started);
                }
                Err(e) => {
                    // Nothing started is left running.
                    for other in network_pools.values() {
                        let _ = other.shutdown().await;
                    }
                    let _ = pool.shutdown().await;
                    return Err(e);
                }
            }
        }
        let tenants = config
            .tenants
            .iter()
            .map(|t| {
                let tenant = Tenant {
                    config: t.clone(),
                    limiter: RateLimiter::new(t.rate_per_second, t.burst),
                };
                (t.token.clone(), Arc::new(tenant))
            })
            .collect();
        let inner = Arc::new(Inner {
            config,
            pool,
            store,
            network_pools,
            tenants,
            sessions: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            deadlines_changed: Arc::new(Notify::new()),
            execution_ended: Notify::new(),
            closing: AtomicBool::new(false),
            stopped: CancellationToken::new(),
            finished: Arc::new(AtomicU64::new(0)),
            tickets: tickets::Tickets::default(),
        });
        tokio::spawn(culler(
            Arc::downgrade(&inner),
            inner.deadlines_changed.clone(),
            inner.stopped.clone(),
        ));
        let service = Service { inner };
        service.restore_sessions().await;
        Ok(service)
    }

    /// The caller behind `token`, after its tenant's rate limit (one token per call) and the
    /// shutdown check, in that order.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Caller, ServiceError> {
        let caller = self.authenticate_continuing(token)?;
        self.check_open()?;
        Ok(caller)
    }

    /// [`Service::authenticate`] without the shutdown check: for a request that carries on
    /// work already under way (an open MCP session's request during the shutdown grace),
    /// which new work is still refused to.
    pub fn authenticate_continuing(&self, token: Option<&str>) -> Result<Caller, ServiceError> {
        let tenant = token
            .and_then(|t| self.inner.tenants.get(t))
            .ok_or(ServiceError::Unauthorized)?;
        if !tenant.limiter.try_acquire() {
            return Err(ServiceError::RateLimited {
                tenant: tenant.config.name.clone(),
                retry_in: tenant.limiter.time_until_available(),
            });
        }
        Ok(Caller {
            tenant: tenant.clone(),
        })
    }

    /// One more message of `caller` (a WebSocket message) against its tenant's rate limit,
    /// as every HTTP request is in [`Service::authenticate`].
    pub fn rate_limit(&self, caller: &Caller) -> Result<(), ServiceError> {
        let tenant = &caller.tenant;
        if tenant.limiter.try_acquire() {
            return Ok(());
        }
        Err(ServiceError::RateLimited {
            tenant: tenant.config.name.clone(),
            retry_in: tenant.limiter.time_until_available(),
        })
    }

    /// The sandbox every session's worker runs in (`None`: sandboxing is off).
    pub fn sandbox(&self) -> Option<&crate::worker::SandboxConfig> {
        self.inner.config.pool.session.sandbox.as_ref()
    }

    /// The memory bounds the service applies.
    pub fn bounds(&self) -> Bounds {
        self.inner.config.bounds
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.closing.load(Ordering::SeqCst)
    }

    pub(crate) fn check_open(&self) -> Result<(), ServiceError> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(ServiceError::ShuttingDown);
        }
        Ok(())
    }

    pub fn pool_info(&self) -> PoolInfo {
        self.inner.pool.info()
    }

    /// The Prometheus text of `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        let sessions = lock(&self.inner.sessions).len();
        let tenants: Vec<_> = self
            .inner
            .tenants
            .values()
            .map(|t| (t.config.name.clone(), t.limiter.metrics()))
            .collect();
        self.inner
            .metrics
            .render(sessions, &self.inner.pool.info(), &tenants)
    }

    /// Counts an error answer of a transport (by its HTTP status).
    pub fn record_http_error(&self, status: u16) {
        self.inner.metrics.record_http_error(status);
    }

    /// Resolves once shutdown has ended every execution: open connections close then.
    pub async fn stopped(&self) {
        self.inner.stopped.cancelled().await
    }

    /// The shutdown sequence, up to the point where connections can close: no new work;
    /// `input()` gets end-of-file; running executions get the shutdown grace to end, then end with `ServerShutdown`;
    /// [`Service::stopped`] resolves; every session is removed (its worker shut down).
    pub async fn shut_down(&self) {
        let inner = &self.inner;
        inner.closing.store(true, Ordering::SeqCst);
        // not polling: one deadline for the whole grace.
        let deadline = crate::time::deadline(Instant::now(), inner.config.shutdown_grace);
        // No request is taken from here on, so no `input()` can be answered: each gets
        // end-of-file now (all sessions told at once), and its code's `except EOFError` runs
        // (its output streaming) within the grace instead of waiting it out. A session
        // whose actor is gone has no code waiting.
        let hosted: Vec<Arc<Hosted>> = lock(&inner.sessions).values().cloned().collect();
        futures::future::join_all(hosted.iter().map(|h| h.session.end_input())).await;
        loop {
            let ended = inner.execution_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !inner.any_busy() {
                break;
            }
            tokio::select! {
                _ = &mut ended => {}
                // not polling: the one deadline of the shutdown grace.
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // What still runs ends now, with the reason.
        let hosted: Vec<Arc<Hosted>> = lock(&inner.sessions).values().cloned().collect();
        // The idle ones are saved, to come back when the server starts again (a session
        // still running has no state to save: its last autosave, if any, stands).
        let idle: Vec<Arc<Hosted>> = hosted
            .iter()
            .filter(|h| lock(&h.activity).running == 0)
            .cloned()
            .collect();
        self.save_all_sessions(&idle).await;
        let stopped = Event::error(
            "ServerShutdown",
            "the server is shutting down; the execution was stopped",
        );
        for h in &hosted {
            for log in h.logs() {
                log.end_with(&stopped).await;
            }
        }
        inner.stopped.cancel();
        for h in hosted {
            inner.remove_session(&h.id);
        }
    }

    /// Ends the culler (if `shut_down` has not) and shuts the pool down, killing every worker
    /// that remains. Returns when no worker is left.
    pub async fn close(&self) -> Result<(), Error> {
        self.inner.stopped.cancel();
        // Every pool is shut down, whatever one of them answers; the first error is told.
        let mut first_error = None;
        for pool in self.inner.network_pools.values() {
            if let Err(e) = pool.shutdown().await {
                first_error.get_or_insert(e);
            }
        }
        let main = self.inner.pool.shutdown().await;
        crate::worker::retry_pending_cgroup_removals();
        match first_error {
            Some(e) => Err(e),
            None => main,
        }
    }
}

/// Deadline-driven culling: sleeps until the earliest idle deadline, re-armed whenever it
/// may have changed (a session or an execution started or ended); no timer while nothing
/// can expire.
///
/// It holds the service only weakly, so that dropping the last `Service` drops the pool (and
/// shuts its workers down); `Inner`'s `Drop` then ends it through `stopped`.
async fn culler(inner: Weak<Inner>, changed: Arc<Notify>, stopped: CancellationToken) {
    loop {
        let changed_now = changed.notified();
        tokio::pin!(changed_now);
        changed_now.as_mut().enable();
        let Some(due) = inner.upgrade().map(|inner| inner.next_cull()) else {
            return;
        };
        tokio::select! {
            _ = stopped.cancelled() => return,
            _ = &mut changed_now => {}
            // not polling: the earliest idle deadline, re-armed when it changes.
            _ = crate::time::sleep_until_opt(due) => {
                if let Some(inner) = inner.upgrade() {
                    inner.cull_expired();
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: the culler ends; the pool's own drop ends its workers.
        self.stopped.cancel();
    }
}

#[cfg(test)]
mod tests;
