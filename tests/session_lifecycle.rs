//! A session's life: start errors and start timeout, info, restart, shutdown of a busy
//! session that leaves no process, and the worker ending when every handle is dropped.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pyrepl3::{Error, ExecuteOptions, Session, SessionConfig, SessionState};

#[tokio::test]
async fn start_errors_are_clear() {
    let missing = SessionConfig {
        python: "/no/such/python".into(),
        ..Default::default()
    };
    let err = Session::start(missing).await.unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("/no/such/python"));

    let not_python = SessionConfig {
        python: "false".into(),
        ..Default::default()
    };
    let err = Session::start(not_python).await.unwrap_err();
    assert!(matches!(err, Error::StartFailed { .. }), "{err}");
}

#[tokio::test]
async fn start_timeout_is_an_error_not_a_hang() {
    // A sitecustomize that sleeps stands in for an interpreter that never reports ready.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sitecustomize.py"),
        "import time\ntime.sleep(100)\n",
    )
    .unwrap();
    let config = SessionConfig {
        start_timeout: Duration::from_millis(500),
        env: vec![("PYTHONPATH".into(), dir.path().display().to_string())],
        ..Default::default()
    };
    let t0 = Instant::now();
    let err = guard(Session::start(config)).await.unwrap_err();
    assert!(matches!(err, Error::StartTimeout(_)), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn info_reports_process_and_namespace() {
    let s = start().await;
    eval(&s, "a = 1\nb = 2").await;
    let info = s.info().await.unwrap();
    assert_eq!(info.state, SessionState::Idle);
    assert!(info.pid.is_some());
    assert!(info.rss_bytes.unwrap() > 1_000_000);
    assert!(info.cpu_time_secs.is_some());
    assert_eq!(info.namespace_size, Some(2));
    assert_eq!(info.execution_count, 1);
    assert!(
        info.python_version.starts_with('3'),
        "{}",
        info.python_version
    );
    assert_eq!(
        info.timer_wakeups, 0,
        "an idle session never woke on a timer"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn restart_gives_a_fresh_namespace() {
    let s = start().await;
    eval(&s, "z = 1").await;
    guard(s.restart()).await.unwrap();
    assert_eq!(run(&s, "z").await.error_type(), Some("NameError"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_of_a_busy_session_is_bounded_and_leaves_no_process() {
    let config = SessionConfig {
        shutdown_grace: Duration::from_millis(500),
        ..Default::default()
    };
    let s = start_with(config).await;
    let pid = s.info().await.unwrap().pid.unwrap();
    let pgid = pgid_of(pid);
    let cwd = s.info().await.unwrap().cwd;
    assert!(cwd.exists());
    let mut ex = s.execute(
        "import subprocess, signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nchild = subprocess.Popen(['sleep', '100'])\nprint(child.pid, flush=True)\nwhile True: pass",
        ExecuteOptions::default(),
    );
    let printed = wait_for_stdout(&mut ex, "\n").await;
    let child: u32 = printed.trim().parse().unwrap();
    let t0 = Instant::now();
    guard(s.shutdown()).await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        t0.elapsed()
    );
    assert_eq!(error_type(&terminal(&mut ex).await), "SessionShutdown");
    assert!(!process_exists(pid), "worker gone");
    assert!(
        wait_pid_exit(child, Duration::from_secs(2)).await,
        "its child gone too"
    );
    assert!(!group_alive(pgid), "no process of the group left");
    assert!(!cwd.exists(), "temporary working directory removed");
    assert_eq!(s.state(), SessionState::Closed);
    let after = run(&s, "1").await;
    assert_eq!(after.error_type(), Some("SessionClosed"));
}

#[tokio::test]
async fn dropping_every_handle_ends_the_worker() {
    let s = start().await;
    let pid = s.info().await.unwrap().pid.unwrap();
    drop(s);
    assert!(wait_pid_exit(pid, Duration::from_secs(5)).await);
}
