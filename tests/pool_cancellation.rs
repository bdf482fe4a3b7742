//! `SessionPool::acquire` dropped at every await point (a client that disconnects while its
//! session is created, validated or waited for) leaves the pool's capacity whole: the model is
//! deadpool's `managed_cancellation` test. The fake factory and the fake's validation yield a
//! few times, so that polling the acquire future by hand stops it at each await in turn.
//! Then the same over HTTP: clients that give up during `POST /v1/sessions`, more times than
//! `max_sessions`, and creation still works.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use pyrepl3::pool::{PoolSession, SessionFactory};
use pyrepl3::session::Scope;
use pyrepl3::{Error, PoolConfig, SessionPool, SessionState};
use tokio::sync::watch;

/// Awaits inside the fakes: each is one `Pending` for the hand-polled acquire.
const STEPS: usize = 3;

async fn steps() {
    for _ in 0..STEPS {
        tokio::task::yield_now().await;
    }
}

#[derive(Clone)]
struct Fake(Arc<watch::Sender<SessionState>>);

impl PoolSession for Fake {
    fn is_usable(&self) -> bool {
        *self.0.borrow() == SessionState::Idle
    }
    fn is_busy(&self) -> bool {
        false
    }
    fn execution_count(&self) -> u64 {
        0
    }
    fn died(&self) -> BoxFuture<'static, ()> {
        let mut rx = self.0.subscribe();
        async move {
            // Err: the fake is gone, as dead as it gets.
            let _ = rx
                .wait_for(|s| matches!(s, SessionState::Dead | SessionState::Closed))
                .await;
        }
        .boxed()
    }
    fn settled(&self) -> BoxFuture<'static, ()> {
        async {}.boxed()
    }
    fn validate(&self, _deadline: Duration) -> BoxFuture<'static, Result<(), Error>> {
        async {
            steps().await;
            Ok(())
        }
        .boxed()
    }
    fn cancel_all(&self, _grace: Duration) -> BoxFuture<'static, bool> {
        async { false }.boxed()
    }
    fn restart(&self) -> BoxFuture<'static, Result<(), Error>> {
        async { Ok(()) }.boxed()
    }
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        self.0.send_replace(SessionState::Closed);
        async {}.boxed()
    }
}

struct Factory(Arc<AtomicUsize>);

impl SessionFactory for Factory {
    type Session = Fake;
    fn create(&self, _scope: Scope) -> BoxFuture<'static, Result<Fake, Error>> {
        let created = self.0.clone();
        async move {
            steps().await;
            created.fetch_add(1, Ordering::Relaxed);
            Ok(Fake(Arc::new(watch::Sender::new(SessionState::Idle))))
        }
        .boxed()
    }
}

const MAX: usize = 2;

async fn pool(min_idle: usize, validate: bool) -> SessionPool<Factory> {
    let config = PoolConfig {
        min_idle,
        max_sessions: MAX,
        pre_warm: true,
        validate_after_idle: validate.then_some(Duration::ZERO),
        acquire_timeout: Some(Duration::from_secs(5)),
        ..PoolConfig::default()
    };
    SessionPool::with_factory(config, Factory(Arc::new(AtomicUsize::new(0))))
        .await
        .unwrap()
}

/// Polls `fut` up to `n` times with a waker that does nothing, then drops it. Returns whether
/// it completed within those polls (its output dropped too).
fn poll_then_drop<F: Future>(fut: F, n: usize) -> bool {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    for _ in 0..n {
        if Pin::as_mut(&mut fut).poll(&mut cx).is_ready() {
            return true;
        }
    }
    false
}

/// Nothing is counted as in use or being created, and all `MAX` sessions can be had.
async fn assert_capacity_whole(pool: &SessionPool<Factory>, case: &str) {
    // Releases run their follow-ups as tasks: let them.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let info = pool.info();
    assert_eq!(info.creating, 0, "{case}: {info:?}");
    assert_eq!(info.active, 0, "{case}: {info:?}");
    let mut held = Vec::new();
    for _ in 0..MAX {
        let got = tokio::time::timeout(Duration::from_secs(10), pool.acquire())
            .await
            .unwrap_or_else(|_| panic!("{case}: capacity lost: {:?}", pool.info()));
        held.push(got.unwrap_or_else(|e| panic!("{case}: {e}")));
    }
    drop(held);
}

#[tokio::test]
async fn an_acquire_that_creates_can_be_dropped_at_every_await() {
    for n in 0.. {
        let pool = pool(0, false).await;
        let done = poll_then_drop(pool.acquire(), n);
        assert_capacity_whole(&pool, &format!("create, dropped after {n} polls")).await;
        if done {
            assert!(n > STEPS, "the matrix covered the creation's awaits");
            break;
        }
    }
}

#[tokio::test]
async fn an_acquire_that_validates_can_be_dropped_at_every_await() {
    for n in 0.. {
        let pool = pool(MAX, true).await;
        let done = poll_then_drop(pool.acquire(), n);
        assert_capacity_whole(&pool, &format!("validate, dropped after {n} polls")).await;
        assert_eq!(
            pool.info().total,
            MAX,
            "the validated session went back to idle"
        );
        if done {
            assert!(n > STEPS, "the matrix covered the validation's awaits");
            break;
        }
    }
}

#[tokio::test]
async fn an_acquire_that_waits_can_be_dropped_before_and_after_the_hand_over() {
    for handed_over in [false, true] {
        for n in 0..3 {
            let pool = pool(0, false).await;
            let mut held = Vec::new();
            for _ in 0..MAX {
                held.push(pool.acquire().await.unwrap());
            }
            let mut waiter = Box::pin(pool.acquire());
            // Into the queue.
            assert!(futures::poll!(waiter.as_mut()).is_pending());
            assert_eq!(pool.info().waiting, 1);
            if handed_over {
                // Released straight to the waiter: it now sits in the waiter's channel.
                held.pop();
            }
            let done = poll_then_drop(waiter, n);
            drop(held);
            let case = format!("wait (handed over: {handed_over}), dropped after {n} more polls");
            assert_capacity_whole(&pool, &case).await;
            assert!(done || n == 0 || !handed_over, "{case}");
        }
    }
}

/// Over HTTP: a client that gives up while its session is being created, three times on a
/// server with `max_sessions = 2` and no warm sessions; then a patient client still gets one.
/// The interpreter is a wrapper that takes 2 s to start, so each impatient client (300 ms)
/// leaves during the creation.
#[tokio::test]
async fn clients_that_leave_during_session_creation_do_not_use_up_the_pool() {
    use common::server::*;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let python = dir.path().join("python");
    std::fs::write(&python, "#!/bin/sh\nsleep 2\nexec python3 \"$@\"\n").unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let python = python.to_str().unwrap();
    let (mut server, base) =
        spawn_server(&["--min-idle", "0", "--max-sessions", "2", "--python", python]);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    for _ in 0..3 {
        let sent = impatient
            .post(format!("{base}/v1/sessions"))
            .bearer_auth(ALICE)
            .json(&serde_json::json!({}))
            .send()
            .await;
        assert!(sent.is_err_and(|e| e.is_timeout()), "the client left early");
    }
    let resp = common::guard(
        reqwest::Client::new()
            .post(format!("{base}/v1/sessions"))
            .bearer_auth(ALICE)
            .json(&serde_json::json!({}))
            .send(),
    )
    .await
    .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    server.kill_and_wait();
}
