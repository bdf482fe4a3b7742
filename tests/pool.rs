//! The pool with real python3 workers: warmup after acquires and after a worker is killed,
//! an idle pool that does nothing at all, shutdown that leaves no process, recycling.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pyrepl3::{ExecuteOptions, PoolConfig, SessionPool, SessionState};

fn config(min_idle: usize, max_sessions: usize) -> PoolConfig {
    PoolConfig {
        min_idle,
        max_sessions,
        pre_warm: true,
        ..Default::default()
    }
}

async fn wait_idle(pool: &SessionPool, n: usize) {
    guard(pool.idle_changes().wait_for(|idle| *idle == n))
        .await
        .expect("pool alive");
}

#[tokio::test]
async fn warmup_restores_min_idle_after_acquires() {
    let pool = guard(SessionPool::start(config(2, 6))).await.unwrap();
    assert_eq!(pool.info().idle, 2);
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    let t0 = Instant::now();
    wait_idle(&pool, 2).await;
    eprintln!(
        "idle back to min_idle {:?} after the acquires",
        t0.elapsed()
    );
    assert_eq!(eval(&a, "1+1").await.as_deref(), Some("2"));
    let info = pool.info();
    assert_eq!(info.active, 2);
    assert_eq!(info.metrics.hits, 2);
    drop((a, b));
    pool.shutdown().await.unwrap();
}

#[tokio::test]
async fn warmup_replaces_an_idle_worker_killed_with_sigkill() {
    let pool = guard(SessionPool::start(config(1, 3))).await.unwrap();
    let guard_ = pool.acquire().await.unwrap();
    let pid = guard_.info().await.unwrap().pid.unwrap();
    drop(guard_);
    wait_idle(&pool, 1).await;
    let before = pool.info().metrics;
    // SAFETY: killing a worker this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_idle(&pool, 0).await;
    wait_idle(&pool, 1).await;
    let after = pool.info().metrics;
    assert_eq!(after.removed_by_health - before.removed_by_health, 1);
    assert_eq!(
        after.health_check_runs_event - before.health_check_runs_event,
        1
    );
    assert_eq!(after.health_check_runs_deadline, 0);
    let fresh = pool.acquire().await.unwrap();
    assert_ne!(fresh.info().await.unwrap().pid, Some(pid));
    assert_eq!(eval(&fresh, "'fresh'").await.as_deref(), Some("'fresh'"));
    drop(fresh);
    pool.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_idle_pool_does_nothing_for_three_seconds() {
    let pool = guard(SessionPool::start(config(2, 4))).await.unwrap();
    wait_idle(&pool, 2).await;
    let before = pool.info().metrics;
    assert!(
        before.next_health_check_due_at_unix.is_none(),
        "at min_idle no timer is armed"
    );
    // Measuring quiet needs time to pass: this sleep is the observation window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = pool.info().metrics;
    assert_eq!(
        after.health_check_runs_event,
        before.health_check_runs_event
    );
    assert_eq!(
        after.health_check_runs_deadline,
        before.health_check_runs_deadline
    );
    assert_eq!(after.warmup_iterations, before.warmup_iterations);
    assert_eq!(after.timer_wakeups, 0);
    // Its sessions are as quiet: no timer fired in them either.
    let s = pool.acquire().await.unwrap();
    assert_eq!(s.info().await.unwrap().timer_wakeups, 0);
    drop(s);
    pool.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_with_busy_sessions_leaves_no_process() {
    let mut cfg = config(1, 4);
    cfg.session.shutdown_grace = Duration::from_millis(300);
    let pool = guard(SessionPool::start(cfg)).await.unwrap();
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    let mut pids = Vec::new();
    let mut runs = Vec::new();
    for (session, code) in [
        (&a, "print('go', flush=True)\nwhile True: pass"),
        (&b, "import signal, subprocess\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nsubprocess.Popen(['sleep', '100'])\nprint('go', flush=True)\nwhile True: pass"),
    ] {
        pids.push(pgid_of(session.info().await.unwrap().pid.unwrap()));
        let mut ex = session.execute(code, ExecuteOptions::default());
        wait_for_stdout(&mut ex, "go").await;
        runs.push(ex);
    }
    wait_idle(&pool, 1).await;
    let t0 = Instant::now();
    guard(pool.shutdown()).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    for pid in pids {
        assert!(!group_alive(pid), "group {pid} still has processes");
    }
    for mut ex in runs {
        assert_eq!(error_type(&terminal(&mut ex).await), "SessionShutdown");
    }
    assert_eq!(a.state(), SessionState::Closed);
    assert!(matches!(
        pool.acquire().await.err(),
        Some(pyrepl3::Error::PoolClosed)
    ));
}

#[tokio::test]
async fn a_session_released_mid_execution_comes_back_idle_with_its_namespace() {
    let pool = guard(SessionPool::start(config(0, 1))).await.unwrap();
    let session = pool.acquire().await.unwrap();
    eval(&session, "kept = 7").await;
    let mut ex = session.execute(
        "print('go', flush=True)\nwhile True: pass",
        ExecuteOptions::default(),
    );
    wait_for_stdout(&mut ex, "go").await;
    drop(session);
    let again = guard(pool.acquire()).await.unwrap();
    assert_eq!(again.state(), SessionState::Idle);
    assert_eq!(error_type(&terminal(&mut ex).await), "KeyboardInterrupt");
    assert_eq!(eval(&again, "kept").await.as_deref(), Some("7"));
    drop(again);
    pool.shutdown().await.unwrap();
}

#[tokio::test]
async fn sessions_are_recycled_after_n_executions_and_warmup_code_runs() {
    let cfg = PoolConfig {
        recycle_after_executions: Some(3),
        warmup_code: Some("import json\nwarm = True".into()),
        ..config(1, 1)
    };
    let pool = guard(SessionPool::start(cfg)).await.unwrap();
    let session = pool.acquire().await.unwrap();
    assert_eq!(eval(&session, "warm").await.as_deref(), Some("True"));
    eval(&session, "mine = 1").await;
    eval(&session, "mine").await;
    drop(session);
    let session = guard(pool.acquire()).await.unwrap();
    let out = run(&session, "mine").await;
    assert_eq!(
        out.error_type(),
        Some("NameError"),
        "recycled: a fresh namespace"
    );
    assert_eq!(pool.info().metrics.sessions_recycled, 1);
    drop(session);
    pool.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failing_warmup_code_is_a_clear_error() {
    let cfg = PoolConfig {
        warmup_code: Some("import no_such_module_here".into()),
        ..config(1, 1)
    };
    let err = guard(SessionPool::start(cfg)).await.err().unwrap();
    assert!(err.to_string().contains("ModuleNotFoundError"), "{err}");
}
