//! The pool's state, owned by one mutex in `Inner`: idle sessions (LIFO), counts, the FIFO of
//! waiting acquirers, and the metrics. Everything here is plain data; the logic that changes
//! it lives in `mod.rs`.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A session owned by the pool, with what the pool remembers about it.
pub(crate) struct Member<S> {
    pub session: S,
    /// `execution_count()` when it was created or last recycled.
    pub baseline: u64,
}

impl<S: super::PoolSession> Member<S> {
    pub fn new(session: S) -> Self {
        let baseline = session.execution_count();
        Member { session, baseline }
    }
}

pub(crate) struct IdleEntry<S> {
    pub key: u64,
    pub member: Member<S>,
    /// When it became idle.
    pub since: Instant,
    /// Cancelled when it leaves the idle list: ends its death watcher.
    pub watch: CancellationToken,
}

/// Counters that make the pool's behaviour visible (and prove it event-driven).
#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct PoolMetrics {
    /// Acquires served from an idle session.
    pub hits: u64,
    /// Acquires that had to create a session or wait.
    pub misses: u64,
    pub hit_rate: f64,
    /// Successful acquires.
    pub acquisitions: u64,
    /// Acquires that ended with `AcquireTimeout`.
    pub timeouts: u64,
    pub avg_acquire_secs: f64,
    /// Over the last 1024 acquires.
    pub p99_acquire_secs: f64,
    pub sessions_created: u64,
    pub sessions_removed: u64,
    pub sessions_recycled: u64,
    /// Workers replaced while the pool held the session: recycling, and releases of a busy
    /// session whose code had to be killed.
    pub sessions_restarted: u64,
    /// Removed because they were found dead (or failed) when released.
    pub removed_dead_on_release: u64,
    pub spawn_failures: u64,
    pub warmup_triggers: u64,
    /// Wake-ups of the warmup task (each coalesces every trigger since the last).
    pub warmup_iterations: u64,
    pub sessions_created_by_warmup: u64,
    /// Health checks run because an idle session died (an event).
    pub health_check_runs_event: u64,
    /// Health checks run because an idle session's expiry came due (a deadline).
    pub health_check_runs_deadline: u64,
    pub removed_by_health: u64,
    /// Unix time, seconds.
    pub last_health_check_at_unix: Option<f64>,
    /// Unix time, seconds; `None`: no timer armed.
    pub next_health_check_due_at_unix: Option<f64>,
    /// Timer wake-ups of the pool's background tasks (eviction deadlines, spawn back-off).
    pub timer_wakeups: u64,
    pub last_spawn_backoff_secs: Option<f64>,
    #[serde(skip)]
    pub(crate) last_health_check_at: Option<Instant>,
    #[serde(skip)]
    pub(crate) next_health_check_due_at: Option<Instant>,
    #[serde(skip)]
    pub(crate) last_spawn_backoff: Option<Duration>,
}

const SAMPLES: usize = 1024;

pub(crate) struct State<S> {
    /// Idle sessions; the last is the most recently used (handed out first), the first is
    /// the coldest (evicted first).
    pub idle: Vec<IdleEntry<S>>,
    /// Checked out (including sessions being cleaned up after release).
    pub active: usize,
    /// Being started (by acquirers or by warmup).
    pub creating: usize,
    /// Of `creating`, those started by warmup: they will become idle (or go to a waiter),
    /// while an acquirer's own creation never does.
    pub warming: usize,
    pub waiters: VecDeque<oneshot::Sender<Member<S>>>,
    pub closed: bool,
    pub metrics: PoolMetrics,
    next_key: u64,
    acquire_samples: Vec<Duration>,
    acquire_total: Duration,
}

impl<S> Default for State<S> {
    fn default() -> Self {
        State {
            idle: Vec::new(),
            active: 0,
            creating: 0,
            warming: 0,
            waiters: VecDeque::new(),
            closed: false,
            metrics: PoolMetrics::default(),
            next_key: 0,
            acquire_samples: Vec::with_capacity(SAMPLES),
            acquire_total: Duration::ZERO,
        }
    }
}

impl<S> State<S> {
    pub fn total(&self) -> usize {
        self.idle.len() + self.active + self.creating
    }

    pub fn open_waiters(&self) -> usize {
        self.waiters.iter().filter(|w| !w.is_closed()).count()
    }

    pub fn next_key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    /// When the coldest idle session beyond `min_idle` expires; `None` when none can.
    pub fn eviction_due(&self, min_idle: usize, idle_timeout: Duration) -> Option<Instant> {
        (self.idle.len() > min_idle)
            .then(|| crate::time::deadline(self.idle[0].since, idle_timeout))
    }

    pub fn record_acquisition(&mut self, took: Duration) {
        let n = self.metrics.acquisitions as usize;
        if self.acquire_samples.len() < SAMPLES {
            self.acquire_samples.push(took);
        } else {
            self.acquire_samples[n % SAMPLES] = took;
        }
        self.metrics.acquisitions += 1;
        self.acquire_total += took;
    }

    pub fn metrics_snapshot(&self, now: Instant) -> PoolMetrics {
        let mut m = self.metrics.clone();
        let asked = m.hits + m.misses;
        m.hit_rate = if asked == 0 {
            0.0
        } else {
            m.hits as f64 / asked as f64
        };
        if m.acquisitions > 0 {
            m.avg_acquire_secs = self.acquire_total.as_secs_f64() / m.acquisitions as f64;
            let mut sorted = self.acquire_samples.clone();
            sorted.sort();
            let idx = ((sorted.len() - 1) as f64 * 0.99).round() as usize;
            m.p99_acquire_secs = sorted[idx].as_secs_f64();
        }
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let to_unix = |at: Instant| {
            if at >= now {
                unix_now + (at - now).as_secs_f64()
            } else {
                unix_now - (now - at).as_secs_f64()
            }
        };
        m.last_health_check_at_unix = m.last_health_check_at.map(to_unix);
        m.next_health_check_due_at_unix = m.next_health_check_due_at.map(to_unix);
        m.last_spawn_backoff_secs = m.last_spawn_backoff.map(|d| d.as_secs_f64());
        m
    }
}
