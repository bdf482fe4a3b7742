//! Pool logic with a fake session factory under paused tokio time: deterministic timing
//! (eviction at exactly its deadline, back-off doubling), coalescing of warmup triggers, FIFO
//! hand-off, the max bound under contention, acquire timeouts.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use pyrepl3::pool::{PoolSession, SessionFactory};
use pyrepl3::session::Scope;
use pyrepl3::{Error, PoolConfig, SessionPool, SessionState};
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone)]
struct Fake {
    inner: Arc<FakeInner>,
}

struct FakeInner {
    id: usize,
    state: watch::Sender<SessionState>,
    executions: AtomicU64,
    cancels: AtomicUsize,
    answers_heartbeat: std::sync::atomic::AtomicBool,
    shut_down_at: Mutex<Option<Instant>>,
}

impl Fake {
    fn set_state(&self, state: SessionState) {
        self.inner.state.send_replace(state);
    }
    fn id(&self) -> usize {
        self.inner.id
    }
}

impl PoolSession for Fake {
    fn is_usable(&self) -> bool {
        *self.inner.state.borrow() == SessionState::Idle
    }
    fn is_busy(&self) -> bool {
        *self.inner.state.borrow() == SessionState::Busy
    }
    fn execution_count(&self) -> u64 {
        self.inner.executions.load(Ordering::Relaxed)
    }
    fn died(&self) -> BoxFuture<'static, ()> {
        let mut rx = self.inner.state.subscribe();
        async move {
            // Err: the fake's state sender is gone, i.e. the fake itself was dropped, which is
            // as dead as it gets. Either way the future resolves: there is nothing to assert.
            let _ = rx
                .wait_for(|s| matches!(s, SessionState::Dead | SessionState::Closed))
                .await;
        }
        .boxed()
    }
    fn settled(&self) -> BoxFuture<'static, ()> {
        let mut rx = self.inner.state.subscribe();
        async move {
            // Err: the fake was dropped, so it is not busy any more either; both outcomes mean
            // "settled", and the pool may legitimately drop a fake while this is pending.
            let _ = rx.wait_for(|s| *s != SessionState::Busy).await;
        }
        .boxed()
    }
    fn validate(&self, _deadline: Duration) -> BoxFuture<'static, Result<(), Error>> {
        let answers = self.inner.answers_heartbeat.load(Ordering::Relaxed);
        async move {
            if answers {
                Ok(())
            } else {
                Err(Error::HeartbeatTimeout(Duration::from_secs(1)))
            }
        }
        .boxed()
    }
    fn cancel_all(&self, _grace: Duration) -> BoxFuture<'static, bool> {
        self.inner.cancels.fetch_add(1, Ordering::Relaxed);
        self.set_state(SessionState::Idle);
        async { false }.boxed()
    }
    fn restart(&self) -> BoxFuture<'static, Result<(), Error>> {
        async { Ok(()) }.boxed()
    }
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        *self.inner.shut_down_at.lock().unwrap() = Some(Instant::now());
        self.set_state(SessionState::Closed);
        async {}.boxed()
    }
}

#[derive(Default)]
struct FakeFactory {
    fail_first: AtomicUsize,
    attempts: Mutex<Vec<Instant>>,
    next_id: AtomicUsize,
    live: Arc<AtomicUsize>,
}

/// The factory handed to the pool; the test keeps another `Arc` to look inside.
struct Shared(Arc<FakeFactory>);

impl SessionFactory for Shared {
    type Session = Fake;
    fn create(&self, _scope: Scope) -> BoxFuture<'static, Result<Fake, Error>> {
        let this = &self.0;
        this.attempts.lock().unwrap().push(Instant::now());
        let failing = this
            .fail_first
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        let result = if failing {
            Err(Error::StartTimeout(Duration::from_secs(1)))
        } else {
            this.live.fetch_add(1, Ordering::Relaxed);
            Ok(Fake {
                inner: Arc::new(FakeInner {
                    id: this.next_id.fetch_add(1, Ordering::Relaxed),
                    state: watch::Sender::new(SessionState::Idle),
                    executions: AtomicU64::new(0),
                    cancels: AtomicUsize::new(0),
                    answers_heartbeat: std::sync::atomic::AtomicBool::new(true),
                    shut_down_at: Mutex::new(None),
                }),
            })
        };
        async move { result }.boxed()
    }
}

async fn fake_pool(config: PoolConfig) -> (SessionPool<Shared>, Arc<FakeFactory>) {
    let factory = Arc::new(FakeFactory::default());
    let pool = SessionPool::with_factory(config, Shared(factory.clone()))
        .await
        .unwrap();
    (pool, factory)
}

#[tokio::test(start_paused = true)]
async fn idle_eviction_fires_exactly_at_the_deadline() {
    let config = PoolConfig {
        min_idle: 0,
        idle_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let (pool, _factory) = fake_pool(config).await;
    let guard = pool.acquire().await.unwrap();
    let session = (*guard).clone();
    let released_at = Instant::now();
    drop(guard);
    assert_eq!(pool.info().idle, 1);
    pool.idle_changes().wait_for(|n| *n == 0).await.unwrap();
    let evicted_at = session.inner.shut_down_at.lock().unwrap().unwrap();
    assert_eq!(evicted_at - released_at, Duration::from_secs(10));
    let m = pool.info().metrics;
    assert_eq!(m.health_check_runs_deadline, 1);
    assert_eq!(m.timer_wakeups, 1);
    assert_eq!(m.removed_by_health, 1);
    assert!(
        m.next_health_check_due_at_unix.is_none(),
        "no timer left armed"
    );
}

#[tokio::test(start_paused = true)]
async fn eviction_keeps_min_idle_and_rearms_when_the_coldest_changes() {
    let config = PoolConfig {
        min_idle: 1,
        idle_timeout: Duration::from_secs(10),
        pre_warm: true,
        ..Default::default()
    };
    let (pool, _factory) = fake_pool(config).await;
    // Three sessions: `a` released at t=0, `b` and `c` at t=3. With min_idle 1, `a` expires
    // at t=10 and `b` at t=13; `c` stays as the one idle session.
    let start = Instant::now();
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    let c = pool.acquire().await.unwrap();
    let (sa, sb, sc) = ((*a).clone(), (*b).clone(), (*c).clone());
    drop(a);
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(b);
    drop(c);
    pool.idle_changes().wait_for(|n| *n == 1).await.unwrap();
    let evicted = |s: &Fake| s.inner.shut_down_at.lock().unwrap().map(|t| t - start);
    assert_eq!(evicted(&sa), Some(Duration::from_secs(10)));
    assert_eq!(evicted(&sb), Some(Duration::from_secs(13)));
    assert_eq!(evicted(&sc), None);
    let m = pool.info().metrics;
    assert_eq!(m.removed_by_health, 2);
    assert_eq!(m.health_check_runs_deadline, 2, "one wake-up per expiry");
    assert_eq!(pool.info().idle, 1, "min_idle is never evicted");
}

#[tokio::test(start_paused = true)]
async fn failed_spawns_back_off_doubling_up_to_the_bound() {
    let factory = Arc::new(FakeFactory::default());
    factory.fail_first.store(6, Ordering::Relaxed);
    let config = PoolConfig {
        min_idle: 1,
        spawn_backoff_initial: Duration::from_millis(100),
        spawn_backoff_max: Duration::from_millis(1000),
        ..Default::default()
    };
    let pool = SessionPool::with_factory(config, Shared(factory.clone()))
        .await
        .unwrap();
    pool.idle_changes().wait_for(|n| *n == 1).await.unwrap();
    let attempts = factory.attempts.lock().unwrap().clone();
    let gaps: Vec<u64> = attempts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis() as u64)
        .collect();
    assert_eq!(gaps, vec![100, 200, 400, 800, 1000, 1000]);
    let m = pool.info().metrics;
    assert_eq!(m.spawn_failures, 6);
    assert_eq!(m.timer_wakeups, 6, "one wake-up per back-off, nothing else");
}

#[tokio::test(start_paused = true)]
async fn a_hundred_triggers_coalesce_into_one_warmup_pass() {
    let config = PoolConfig {
        min_idle: 1,
        max_sessions: 200,
        pre_warm: true,
        ..Default::default()
    };
    let (pool, _factory) = fake_pool(config).await;
    let before = pool.info().metrics;
    let mut guards = Vec::new();
    for _ in 0..100 {
        guards.push(pool.acquire().await.unwrap());
    }
    let mid = pool.info().metrics;
    assert_eq!(mid.warmup_triggers - before.warmup_triggers, 100);
    pool.idle_changes().wait_for(|n| *n == 1).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = pool.info().metrics;
    assert_eq!(after.warmup_iterations - before.warmup_iterations, 1);
    assert_eq!(
        after.sessions_created_by_warmup - before.sessions_created_by_warmup,
        1
    );
}

#[tokio::test(start_paused = true)]
async fn waiters_are_handed_sessions_first_come_first_served() {
    let config = PoolConfig {
        min_idle: 0,
        max_sessions: 1,
        ..Default::default()
    };
    let (pool, factory) = fake_pool(config).await;
    let held = pool.acquire().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let pool = pool.clone();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let guard = pool.acquire().await.unwrap();
            order.lock().unwrap().push((i, guard.id()));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }));
        tokio::task::yield_now().await;
    }
    assert_eq!(pool.info().waiting, 5);
    let id = held.id();
    drop(held);
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(
        order,
        (0..5).map(|i| (i, id)).collect::<Vec<_>>(),
        "same session, FIFO"
    );
    assert_eq!(factory.live.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn max_sessions_is_never_exceeded_under_contention() {
    let config = PoolConfig {
        min_idle: 2,
        max_sessions: 5,
        ..Default::default()
    };
    let (pool, factory) = fake_pool(config).await;
    let in_use = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        let (pool, in_use, peak) = (pool.clone(), in_use.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            let guard = pool.acquire().await.unwrap();
            let now = in_use.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            assert!(pool.info().total <= 5);
            tokio::time::sleep(Duration::from_millis(1 + i % 7)).await;
            in_use.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 5);
    assert!(factory.live.load(Ordering::Relaxed) <= 5);
    assert_eq!(pool.info().metrics.acquisitions, 50);
}

#[tokio::test(start_paused = true)]
async fn acquire_times_out_exactly_at_its_deadline() {
    let config = PoolConfig {
        min_idle: 0,
        max_sessions: 1,
        acquire_timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let (pool, _factory) = fake_pool(config).await;
    let _held = pool.acquire().await.unwrap();
    let t0 = Instant::now();
    let err = pool.acquire().await.err().unwrap();
    assert!(matches!(err, Error::AcquireTimeout(_)), "{err}");
    assert_eq!(t0.elapsed(), Duration::from_secs(2));
    assert_eq!(pool.info().metrics.timeouts, 1);
    assert_eq!(pool.info().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn a_busy_session_is_cancelled_before_it_is_handed_out_again() {
    let config = PoolConfig {
        min_idle: 0,
        max_sessions: 1,
        ..Default::default()
    };
    let (pool, _factory) = fake_pool(config).await;
    let guard = pool.acquire().await.unwrap();
    let session = (*guard).clone();
    session.set_state(SessionState::Busy);
    drop(guard);
    let again = pool.acquire().await.unwrap();
    assert_eq!(again.id(), session.id());
    assert!(again.is_usable());
    assert_eq!(session.inner.cancels.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn dead_sessions_are_never_handed_out_and_recycling_restarts() {
    let config = PoolConfig {
        min_idle: 0,
        max_sessions: 2,
        recycle_after_executions: Some(3),
        ..Default::default()
    };
    let (pool, _factory) = fake_pool(config).await;
    let guard = pool.acquire().await.unwrap();
    guard.set_state(SessionState::Dead);
    let dead_id = guard.id();
    drop(guard);
    let fresh = pool.acquire().await.unwrap();
    assert_ne!(fresh.id(), dead_id);
    fresh.inner.executions.store(3, Ordering::Relaxed);
    drop(fresh);
    pool.idle_changes().wait_for(|n| *n == 1).await.unwrap();
    let m = pool.info().metrics;
    assert_eq!(m.sessions_recycled, 1);
    assert_eq!(m.removed_dead_on_release, 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_wakes_waiters_and_shuts_every_session_down() {
    let config = PoolConfig {
        min_idle: 1,
        max_sessions: 1,
        pre_warm: true,
        ..Default::default()
    };
    let (pool, _factory) = fake_pool(config).await;
    let held = pool.acquire().await.unwrap();
    let session = (*held).clone();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.err() })
    };
    tokio::task::yield_now().await;
    pool.shutdown().await.unwrap();
    assert!(matches!(waiter.await.unwrap(), Some(Error::PoolClosed)));
    drop(held);
    tokio::task::yield_now().await;
    assert!(session.inner.shut_down_at.lock().unwrap().is_some());
    assert!(matches!(
        pool.acquire().await.err(),
        Some(Error::PoolClosed)
    ));
}

#[tokio::test(start_paused = true)]
async fn warmup_refills_even_while_acquirers_create_their_own_sessions() {
    // Regression: an acquirer's inline creation was counted as warmup in flight, so warmup
    // saw no deficit and idle stayed below min_idle.
    let config = PoolConfig {
        min_idle: 1,
        max_sessions: 4,
        pre_warm: true,
        ..Default::default()
    };
    let (pool, _factory) = fake_pool(config).await;
    let _a = pool.acquire().await.unwrap();
    let _b = pool.acquire().await.unwrap();
    pool.idle_changes().wait_for(|n| *n == 1).await.unwrap();
    assert_eq!(pool.info().total, 3);
}

#[tokio::test(start_paused = true)]
async fn sessions_idle_too_long_are_validated_and_replaced_if_silent() {
    let config = PoolConfig {
        min_idle: 0,
        max_sessions: 2,
        validate_after_idle: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let (pool, _factory) = fake_pool(config).await;
    let first = pool.acquire().await.unwrap();
    let silent = (*first).clone();
    drop(first);
    // Fresh enough: handed out without a check.
    silent
        .inner
        .answers_heartbeat
        .store(false, Ordering::Relaxed);
    assert_eq!(pool.acquire().await.unwrap().id(), silent.id());
    // Idle past the threshold and not answering: replaced by a new session.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let next = pool.acquire().await.unwrap();
    assert_ne!(next.id(), silent.id());
    assert!(silent.inner.shut_down_at.lock().unwrap().is_some());
    assert_eq!(pool.info().metrics.sessions_removed, 1);
}
