//! The session pool: keeps warm sessions ready and hands them out. It owns the pool state
//! (one mutex, never held across `.await`), the warmup task, the health task, and the pool's
//! shutdown tree (a `CancellationToken` + `TaskTracker` under which every session actor and
//! background task runs).
//!
//! Event-driven throughout (see `docs/event-driven.md`):
//! - acquire takes an idle session (LIFO), else creates one while under `max_sessions`, else
//!   waits in a FIFO queue and is handed a released session directly;
//! - warmup runs when an event may have dropped idle below `min_idle` (triggers coalesce in a
//!   `Notify`), backing off exponentially after failed spawns;
//! - health: each idle session's death is an event (its state watch), and idle eviction sleeps
//!   exactly until the earliest expiry, with no timer at all while idle ≤ `min_idle`.

mod guards;
mod session;
mod state;
mod tasks;

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

use crate::error::Error;
use crate::session::{Scope, SessionConfig};
use guards::{Checkout, CreatingSlot, Waiting};
pub use session::WorkerFactory;
pub use state::PoolMetrics;
use state::{IdleEntry, Member, State};

/// What the pool needs of a session. [`crate::Session`] implements it; tests use fakes.
pub trait PoolSession: Clone + Send + Sync + 'static {
    /// Ready to run code now.
    fn is_usable(&self) -> bool;
    /// Running (or about to run) code.
    fn is_busy(&self) -> bool;
    /// Executions that have ended, ever.
    fn execution_count(&self) -> u64;
    /// Resolves when the session died or was shut down.
    fn died(&self) -> BoxFuture<'static, ()>;
    /// Resolves once the session is neither busy nor restarting.
    fn settled(&self) -> BoxFuture<'static, ()>;
    /// One liveness round trip.
    fn validate(&self, deadline: Duration) -> BoxFuture<'static, Result<(), Error>>;
    /// Stops whatever runs (KeyboardInterrupt, then kill after `grace`). Returns whether
    /// the worker had to be killed and restarted.
    fn cancel_all(&self, grace: Duration) -> BoxFuture<'static, bool>;
    /// A fresh worker (used to recycle).
    fn restart(&self) -> BoxFuture<'static, Result<(), Error>>;
    fn shutdown(&self) -> BoxFuture<'static, ()>;
}

/// Makes sessions for a pool, inside the pool's shutdown tree.
pub trait SessionFactory: Send + Sync + 'static {
    type Session: PoolSession;
    fn create(&self, scope: Scope) -> BoxFuture<'static, Result<Self::Session, Error>>;
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Idle sessions kept ready.
    pub min_idle: usize,
    /// Upper bound of sessions (idle + in use + being created); never exceeded.
    pub max_sessions: usize,
    /// Idle sessions beyond `min_idle` are shut down after this long unused.
    pub idle_timeout: Duration,
    /// Code run in every new session before it counts as idle (e.g. imports).
    pub warmup_code: Option<String>,
    /// A session is restarted (fresh namespace) after this many executions; `None`: never.
    pub recycle_after_executions: Option<u64>,
    /// `acquire` fails with `AcquireTimeout` after this long; `None`: waits as long as needed.
    pub acquire_timeout: Option<Duration>,
    /// Sessions idle longer than this get one heartbeat round trip before being handed out.
    pub validate_after_idle: Option<Duration>,
    /// First delay after a failed spawn; doubled per consecutive failure up to the max.
    pub spawn_backoff_initial: Duration,
    pub spawn_backoff_max: Duration,
    /// A session released while still running code gets this long to stop before its
    /// worker is killed.
    pub release_grace: Duration,
    /// How long `shutdown` may take in all (each session also has its own shutdown grace).
    pub shutdown_timeout: Duration,
    /// Fill to `min_idle` before `start` returns.
    pub pre_warm: bool,
    pub session: SessionConfig,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min_idle: 2,
            max_sessions: 10,
            idle_timeout: Duration::from_secs(300),
            warmup_code: None,
            recycle_after_executions: Some(100),
            acquire_timeout: None,
            validate_after_idle: None,
            spawn_backoff_initial: Duration::from_millis(100),
            spawn_backoff_max: Duration::from_secs(10),
            release_grace: Duration::from_millis(500),
            shutdown_timeout: Duration::from_secs(10),
            pre_warm: false,
            session: SessionConfig::default(),
        }
    }
}

/// A snapshot of the pool, for `info()` and `/metrics`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct PoolInfo {
    pub idle: usize,
    pub active: usize,
    pub creating: usize,
    pub total: usize,
    pub waiting: usize,
    pub min_idle: usize,
    pub max_sessions: usize,
    pub closed: bool,
    pub metrics: PoolMetrics,
}

/// Wake-up signals of the background tasks, shared without keeping the pool alive.
#[derive(Debug, Default)]
struct Signals {
    warmup: Notify,
    health: Notify,
}

struct Inner<F: SessionFactory> {
    config: PoolConfig,
    /// The idle count, published for anyone who waits for the pool to be warm.
    idle_count: watch::Sender<usize>,
    factory: F,
    state: Mutex<State<F::Session>>,
    signals: Arc<Signals>,
    scope: Scope,
}

/// A pool of warm sessions. Cloning gives another handle to the same pool; when the last
/// handle (and every checked-out session) is gone, the pool shuts down.
pub struct SessionPool<F: SessionFactory = WorkerFactory> {
    inner: Arc<Inner<F>>,
}

impl<F: SessionFactory> Clone for SessionPool<F> {
    fn clone(&self) -> Self {
        SessionPool {
            inner: self.inner.clone(),
        }
    }
}

impl SessionPool<WorkerFactory> {
    /// A pool of real Python worker sessions.
    /// Sessions without a configured `cwd` work under the host's run directory: it is made
    /// here (removing what dead hosts left there), so a restarted server cleans up at start.
    pub async fn start(config: PoolConfig) -> Result<Self, Error> {
        if config.session.cwd.is_none() {
            crate::rundir::ensure().await?;
        }
        let factory = WorkerFactory::new(config.session.clone(), config.warmup_code.clone());
        SessionPool::with_factory(config, factory).await
    }
}

impl<F: SessionFactory> SessionPool<F> {
    pub async fn with_factory(config: PoolConfig, factory: F) -> Result<Self, Error> {
        if config.max_sessions == 0 || config.min_idle > config.max_sessions {
            return Err(Error::InvalidConfig(format!(
                "need 1 <= max_sessions and min_idle <= max_sessions (min_idle {}, max_sessions {})",
                config.min_idle, config.max_sessions
            )));
        }
        let inner = Arc::new(Inner {
            config,
            factory,
            state: Mutex::new(State::default()),
            idle_count: watch::Sender::new(0),
            signals: Arc::new(Signals::default()),
            scope: Scope::default(),
        });
        let weak = Arc::downgrade(&inner);
        let (signals, token) = (inner.signals.clone(), inner.scope.token.clone());
        inner.scope.tracker.spawn(tasks::warmup_task(
            weak.clone(),
            signals.clone(),
            token.clone(),
        ));
        inner
            .scope
            .tracker
            .spawn(tasks::health_task(weak, signals, token));
        let pool = SessionPool { inner };
        if pool.inner.config.pre_warm {
            pool.inner.fill_to_min_idle().await?;
        } else {
            pool.inner.trigger_warmup(&mut pool.inner.lock());
        }
        Ok(pool)
    }

    /// A session for exclusive use; it returns to the pool when the guard is dropped.
    pub async fn acquire(&self) -> Result<PooledSession<F>, Error> {
        self.inner.acquire().await.map(|member| PooledSession {
            member: Some(member),
            pool: self.inner.clone(),
        })
    }

    /// The number of idle sessions, updated whenever it changes (to wait for a warm pool
    /// without polling: `idle_changes().wait_for(|n| *n >= 2)`).
    pub fn idle_changes(&self) -> watch::Receiver<usize> {
        self.inner.idle_count.subscribe()
    }

    pub fn info(&self) -> PoolInfo {
        let st = self.inner.lock();
        let now = Instant::now();
        PoolInfo {
            idle: st.idle.len(),
            active: st.active,
            creating: st.creating,
            total: st.total(),
            waiting: st.open_waiters(),
            min_idle: self.inner.config.min_idle,
            max_sessions: self.inner.config.max_sessions,
            closed: st.closed,
            metrics: st.metrics_snapshot(now),
        }
    }

    /// Wakes every waiting `acquire` with `PoolClosed`, shuts every session down (each within
    /// its grace, then killed), and returns when no task and so no worker process of the
    /// pool is left, or fails after `shutdown_timeout`.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.inner.close();
        let tracker = &self.inner.scope.tracker;
        tracker.close();
        // not polling: one deadline for the whole shutdown.
        tokio::time::timeout(self.inner.config.shutdown_timeout, tracker.wait())
            .await
            .map_err(|_| Error::ShutdownTimeout(self.inner.config.shutdown_timeout))
    }
}

/// A checked-out session. Derefs to the session; dropping it returns the session to the
/// pool (a session still running code is cancelled first, and killed after the release
/// grace: it is never handed out mid-execution).
pub struct PooledSession<F: SessionFactory = WorkerFactory> {
    member: Option<Member<F::Session>>,
    pool: Arc<Inner<F>>,
}

impl<F: SessionFactory> PooledSession<F> {
    /// Removes the session from the pool and shuts it down instead of returning it.
    pub fn discard(mut self) {
        if let Some(member) = self.member.take() {
            self.pool.discard(member);
        }
    }
}

impl<F: SessionFactory> Deref for PooledSession<F> {
    type Target = F::Session;
    fn deref(&self) -> &F::Session {
        match &self.member {
            Some(member) => &member.session,
            // `member` is only taken by `discard(self)` and `drop`, after which no deref
            // can happen.
            None => unreachable!("a PooledSession is used after it was given back"),
        }
    }
}

impl<F: SessionFactory> Drop for PooledSession<F> {
    fn drop(&mut self) {
        if let Some(member) = self.member.take() {
            self.pool.release(member);
        }
    }
}

impl<F: SessionFactory> Drop for Inner<F> {
    fn drop(&mut self) {
        // Nobody can reach the pool any more: end its sessions and tasks.
        self.scope.token.cancel();
    }
}

enum Step<S> {
    Got(Member<S>, Instant),
    Create,
    Wait(oneshot::Receiver<Member<S>>),
}

impl<F: SessionFactory> Inner<F> {
    fn lock(&self) -> MutexGuard<'_, State<F::Session>> {
        crate::sync::lock_unpoisoned(&self.state)
    }

    fn trigger_warmup(&self, st: &mut State<F::Session>) {
        st.metrics.warmup_triggers += 1;
        self.signals.warmup.notify_one();
    }

    /// Call after changing `idle`: publishes the count and re-arms the eviction timer if its
    /// deadline moved.
    fn idle_changed(&self, st: &mut State<F::Session>, due_before: Option<Instant>) {
        let due = st.eviction_due(self.config.min_idle, self.config.idle_timeout);
        if due != due_before {
            self.signals.health.notify_one();
        }
        self.idle_count.send_replace(st.idle.len());
    }

    /// Call after an event that lowered idle (or may leave it low): wakes warmup if needed.
    fn idle_lowered(&self, st: &mut State<F::Session>) {
        if st.idle.len() < self.config.min_idle {
            self.trigger_warmup(st);
        }
    }

    async fn acquire(self: &Arc<Self>) -> Result<Member<F::Session>, Error> {
        let t0 = Instant::now();
        // not polling: the caller's one acquire deadline.
        let deadline = self
            .config
            .acquire_timeout
            .map(|t| crate::time::deadline(t0, t));
        loop {
            let step = {
                let mut st = self.lock();
                if st.closed {
                    return Err(Error::PoolClosed);
                }
                let due = st.eviction_due(self.config.min_idle, self.config.idle_timeout);
                if let Some(entry) = st.idle.pop() {
                    entry.watch.cancel();
                    st.active += 1;
                    st.metrics.hits += 1;
                    self.idle_changed(&mut st, due);
                    self.idle_lowered(&mut st);
                    Step::Got(entry.member, entry.since)
                } else if st.total() < self.config.max_sessions {
                    st.creating += 1;
                    st.metrics.misses += 1;
                    self.idle_lowered(&mut st);
                    Step::Create
                } else {
                    let (tx, rx) = oneshot::channel();
                    st.waiters.push_back(tx);
                    st.metrics.misses += 1;
                    // A waiter is demand: warmup creates for it if capacity frees up.
                    self.trigger_warmup(&mut st);
                    Step::Wait(rx)
                }
            };
            // From here on, every await may be the last: whatever was taken from the pool
            // above is held by a guard that gives it back if this future is dropped.
            let member = match step {
                Step::Got(member, since) => {
                    let checkout = Checkout::new(self, member);
                    let usable = checkout.session().is_some_and(|s| s.is_usable());
                    let stale = self
                        .config
                        .validate_after_idle
                        .is_some_and(|after| since.elapsed() > after);
                    let valid = if usable && stale {
                        match checkout.session() {
                            Some(session) => session.validate(Duration::from_secs(1)).await.is_ok(),
                            None => false,
                        }
                    } else {
                        usable
                    };
                    let Some(member) = checkout.take() else {
                        continue;
                    };
                    if !valid {
                        self.remove_active(member, false);
                        continue;
                    }
                    member
                }
                Step::Create => {
                    let slot = CreatingSlot::counted(self);
                    let created = match deadline {
                        // not polling: the caller's acquire deadline.
                        Some(at) => tokio::time::timeout_at(at, self.create())
                            .await
                            .unwrap_or(Err(Error::AcquireTimeout(t0.elapsed()))),
                        None => self.create().await,
                    };
                    match created {
                        Ok(session) => slot.commit(session),
                        Err(e) => {
                            drop(slot);
                            if matches!(e, Error::AcquireTimeout(_)) {
                                self.lock().metrics.timeouts += 1;
                            }
                            return Err(e);
                        }
                    }
                }
                Step::Wait(rx) => {
                    let mut waiting = Waiting::new(self, rx);
                    let received = match deadline {
                        // not polling: the caller's acquire deadline.
                        Some(at) => tokio::time::timeout_at(at, &mut waiting.rx).await.ok(),
                        None => Some((&mut waiting.rx).await),
                    };
                    match received {
                        Some(Ok(member)) => member,
                        Some(Err(_)) => return Err(Error::PoolClosed),
                        None => {
                            // Timed out; a session handed over at the last instant is ours.
                            match waiting.close() {
                                Some(member) => member,
                                None => {
                                    self.lock().metrics.timeouts += 1;
                                    return Err(Error::AcquireTimeout(t0.elapsed()));
                                }
                            }
                        }
                    }
                }
            };
            self.lock().record_acquisition(t0.elapsed());
            return Ok(member);
        }
    }

    fn create(&self) -> BoxFuture<'static, Result<F::Session, Error>> {
        self.factory.create(Scope {
            token: self.scope.token.child_token(),
            tracker: self.scope.tracker.clone(),
        })
    }

    async fn fill_to_min_idle(self: &Arc<Self>) -> Result<(), Error> {
        let n = {
            let mut st = self.lock();
            let n = self.config.min_idle.saturating_sub(st.total());
            st.creating += n;
            st.warming += n;
            n
        };
        match self.warm(n).await.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Starts `n` sessions that were counted in `creating` and `warming` by the caller, and
    /// hands each to a waiter or to idle. Returns the errors of those that failed.
    async fn warm(self: &Arc<Self>, n: usize) -> Vec<Error> {
        let created = futures::future::join_all((0..n).map(|_| self.create())).await;
        let mut errors = Vec::new();
        for result in created {
            let mut st = self.lock();
            st.creating -= 1;
            st.warming -= 1;
            match result {
                Ok(session) => {
                    st.metrics.sessions_created += 1;
                    st.metrics.sessions_created_by_warmup += 1;
                    self.put_back(&mut st, Member::new(session));
                }
                Err(e) => {
                    st.metrics.spawn_failures += 1;
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// Hands a session to the first live waiter, else makes it idle. The session is not
    /// counted as active when this is called.
    fn put_back(self: &Arc<Self>, st: &mut State<F::Session>, mut member: Member<F::Session>) {
        while let Some(waiter) = st.waiters.pop_front() {
            st.active += 1;
            match waiter.send(member) {
                Ok(()) => return,
                Err(back) => {
                    st.active -= 1;
                    member = back;
                }
            }
        }
        let due = st.eviction_due(self.config.min_idle, self.config.idle_timeout);
        let key = st.next_key();
        let watch = self.scope.token.child_token();
        let died = member.session.died();
        st.idle.push(IdleEntry {
            key,
            member,
            since: Instant::now(),
            watch: watch.clone(),
        });
        self.idle_changed(st, due);
        let pool = Arc::downgrade(self);
        self.scope.tracker.spawn(async move {
            tokio::select! {
                _ = died => {
                    if let Some(pool) = pool.upgrade() {
                        pool.on_idle_death(key);
                    }
                }
                _ = watch.cancelled() => {}
            }
        });
    }

    /// Health, by event: an idle session died.
    fn on_idle_death(self: &Arc<Self>, key: u64) {
        let mut st = self.lock();
        let due = st.eviction_due(self.config.min_idle, self.config.idle_timeout);
        st.metrics.health_check_runs_event += 1;
        st.metrics.last_health_check_at = Some(Instant::now());
        if let Some(pos) = st.idle.iter().position(|e| e.key == key) {
            let entry = st.idle.remove(pos);
            st.metrics.removed_by_health += 1;
            st.metrics.sessions_removed += 1;
            self.spawn_shutdown(entry.member.session);
            self.idle_changed(&mut st, due);
            self.idle_lowered(&mut st);
        }
    }

    /// Health, by deadline: shuts down idle sessions beyond `min_idle` that expired.
    fn evict_expired(self: &Arc<Self>) {
        let mut st = self.lock();
        let now = Instant::now();
        st.metrics.timer_wakeups += 1;
        st.metrics.health_check_runs_deadline += 1;
        st.metrics.last_health_check_at = Some(now);
        let due = st.eviction_due(self.config.min_idle, self.config.idle_timeout);
        while st.idle.len() > self.config.min_idle
            && crate::time::deadline(st.idle[0].since, self.config.idle_timeout) <= now
        {
            let entry = st.idle.remove(0);
            entry.watch.cancel();
            st.metrics.removed_by_health += 1;
            st.metrics.sessions_removed += 1;
            self.spawn_shutdown(entry.member.session);
        }
        self.idle_changed(&mut st, due);
    }

    fn release(self: &Arc<Self>, member: Member<F::Session>) {
        let mut st = self.lock();
        let session = &member.session;
        if st.closed {
            st.active -= 1;
            self.spawn_shutdown(member.session);
            return;
        }
        if session.is_busy() {
            // Never hand out a session mid-execution: stop the code, then release again.
            let pool = self.clone();
            let grace = self.config.release_grace;
            self.scope.tracker.spawn(async move {
                if member.session.cancel_all(grace).await {
                    pool.lock().metrics.sessions_restarted += 1;
                }
                member.session.settled().await;
                pool.release(member);
            });
            return;
        }
        if !session.is_usable() {
            drop(st);
            self.remove_active(member, true);
            return;
        }
        let recycle = self
            .config
            .recycle_after_executions
            .is_some_and(|n| session.execution_count().saturating_sub(member.baseline) >= n);
        if recycle {
            let pool = self.clone();
            self.scope.tracker.spawn(async move {
                let mut member = member;
                pool.lock().metrics.sessions_restarted += 1;
                if member.session.restart().await.is_ok() {
                    member.baseline = member.session.execution_count();
                    let mut st = pool.lock();
                    st.metrics.sessions_recycled += 1;
                    st.active -= 1;
                    pool.put_back(&mut st, member);
                } else {
                    pool.remove_active(member, true);
                }
            });
            return;
        }
        st.active -= 1;
        self.put_back(&mut st, member);
    }

    fn discard(self: &Arc<Self>, member: Member<F::Session>) {
        self.remove_active(member, false);
    }

    /// Takes an active session out of the pool for good and shuts it down.
    fn remove_active(self: &Arc<Self>, member: Member<F::Session>, dead: bool) {
        let mut st = self.lock();
        st.active -= 1;
        st.metrics.sessions_removed += 1;
        if dead {
            st.metrics.removed_dead_on_release += 1;
        }
        self.spawn_shutdown(member.session);
        if st.idle.len() < self.config.min_idle || st.open_waiters() > 0 {
            self.trigger_warmup(&mut st);
        }
    }

    fn spawn_shutdown(&self, session: F::Session) {
        self.scope.tracker.spawn(session.shutdown());
    }

    fn close(&self) {
        let idle: Vec<IdleEntry<F::Session>> = {
            let mut st = self.lock();
            st.closed = true;
            // Dropping the senders wakes every waiter with PoolClosed.
            st.waiters = VecDeque::new();
            let idle = std::mem::take(&mut st.idle);
            self.idle_count.send_replace(0);
            idle
        };
        for entry in idle {
            entry.watch.cancel();
            self.spawn_shutdown(entry.member.session);
        }
        // Every session (in use, idle or being created) and background task ends.
        self.scope.token.cancel();
    }
}
