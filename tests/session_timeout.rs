//! Execution timeouts: an interrupt that keeps the namespace, a restart for code that ignores
//! interrupts, the default timeout from the configuration.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pyrepl3::{ExecuteOptions, SessionConfig};

#[tokio::test]
async fn timeout_interrupts_and_keeps_namespace() {
    let s = start().await;
    eval(&s, "y = 'kept'").await;
    let options = ExecuteOptions {
        timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let t0 = Instant::now();
    let out = guard(s.execute("import time\ntime.sleep(100)", options).outcome()).await;
    assert_eq!(out.error_type(), Some("ExecutionTimeout"));
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(eval(&s, "y").await.as_deref(), Some("'kept'"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn timeout_of_code_that_ignores_interrupts_restarts_the_worker() {
    let config = SessionConfig {
        timeout_grace: Duration::from_millis(200),
        ..Default::default()
    };
    let s = start_with(config).await;
    let options = ExecuteOptions {
        timeout: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    let out = guard(
        s.execute(
            "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(100)",
            options,
        )
        .outcome(),
    )
    .await;
    assert_eq!(out.error_type(), Some("ExecutionTimeout"));
    assert_eq!(eval(&s, "'usable'").await.as_deref(), Some("'usable'"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn default_timeout_from_config_applies() {
    let config = SessionConfig {
        default_timeout: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    let s = start_with(config).await;
    let out = run(&s, "import time\ntime.sleep(100)").await;
    assert_eq!(out.error_type(), Some("ExecutionTimeout"));
    s.shutdown().await.unwrap();
}
