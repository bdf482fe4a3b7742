//! Cancelling and interrupting executions: KeyboardInterrupt that keeps the namespace (in a
//! busy loop, a sleep, an input wait, right after execute), escalation to a kill and restart
//! for code that will not stop, queued executions cancelled before they start.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pyrepl3::session::InterruptOutcome;
use pyrepl3::{CancelOutcome, Event, ExecuteOptions};

#[tokio::test]
async fn cancel_while_waiting_in_input_ends_promptly() {
    let s = start().await;
    let mut ex = s.execute("input('waiting? ')", ExecuteOptions::default());
    let Some(Event::Input { input_id, .. }) = guard(ex.next_event()).await else {
        panic!("expected an input request")
    };
    let t0 = Instant::now();
    let outcome = guard(s.cancel(ex.id(), Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(outcome, CancelOutcome::Cancelled);
    assert_eq!(error_type(&terminal(&mut ex).await), "KeyboardInterrupt");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    // The request died with the execution.
    assert!(s.input_response(&input_id, "late").await.is_err());
    assert_eq!(eval(&s, "'alive'").await.as_deref(), Some("'alive'"));
    s.shutdown().await.unwrap();
}

async fn cancel_keeps_namespace(code: &str) {
    let s = start().await;
    eval(&s, "x = 41").await;
    let mut ex = s.execute(
        format!("print('started', flush=True)\n{code}"),
        ExecuteOptions::default(),
    );
    wait_for_stdout(&mut ex, "started\n").await;
    let t0 = Instant::now();
    let outcome = guard(s.cancel(ex.id(), Duration::from_secs(5)))
        .await
        .unwrap();
    let cancel_latency = t0.elapsed();
    assert_eq!(outcome, CancelOutcome::Cancelled);
    let end = terminal(&mut ex).await;
    assert_eq!(error_type(&end), "KeyboardInterrupt");
    assert!(
        cancel_latency < Duration::from_secs(1),
        "{cancel_latency:?}"
    );
    assert_eq!(
        eval(&s, "x + 1").await.as_deref(),
        Some("42"),
        "namespace survives"
    );
    assert_eq!(
        guard(s.cancel(ex.id(), Duration::from_secs(1)))
            .await
            .unwrap(),
        CancelOutcome::NotRunning
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancel_busy_loop_keeps_namespace() {
    cancel_keeps_namespace("while True: pass").await;
}

#[tokio::test]
async fn cancel_sleep_keeps_namespace() {
    cancel_keeps_namespace("import time\ntime.sleep(100)").await;
}

async fn cancel_is_escalated_to_kill(code: &str) {
    let s = start().await;
    eval(&s, "x = 1").await;
    let pid_before = s.info().await.unwrap().pid.unwrap();
    // "started" is printed inside the `try`, so the interrupt cannot land before the code is
    // protected. (A bodiless `while True: pass` inside `try` does not catch
    // KeyboardInterrupt on CPython 3.11, so the swallowing loop sleeps.)
    let mut ex = s.execute(
        format!("{code}\nimport time\nwhile True:\n    try:\n        print('started', flush=True)\n        time.sleep(1)\n    except KeyboardInterrupt:\n        pass"),
        ExecuteOptions::default(),
    );
    wait_for_stdout(&mut ex, "started\n").await;
    let outcome = guard(s.cancel(ex.id(), Duration::from_millis(300)))
        .await
        .unwrap();
    let end = terminal(&mut ex).await;
    assert_eq!(outcome, CancelOutcome::Killed, "ended with {end:?}");
    assert_eq!(error_type(&end), "ExecutionKilled");
    let Event::Error {
        exception_message, ..
    } = end
    else {
        unreachable!()
    };
    assert!(
        exception_message.contains("namespace is lost"),
        "{exception_message}"
    );
    assert!(
        wait_pid_exit(pid_before, Duration::from_secs(5)).await,
        "old worker is gone"
    );
    // A fresh worker serves the session; the old namespace is gone.
    let out = run(&s, "x").await;
    assert_eq!(out.error_type(), Some("NameError"));
    assert_eq!(eval(&s, "1+1").await.as_deref(), Some("2"));
    assert_eq!(s.info().await.unwrap().restarts, 1);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancel_of_code_that_swallows_keyboard_interrupt_kills_and_restarts() {
    cancel_is_escalated_to_kill("pass").await;
}

#[tokio::test]
async fn cancel_of_code_that_ignores_sigint_kills_and_restarts() {
    cancel_is_escalated_to_kill("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)")
        .await;
}

#[tokio::test]
async fn queued_executions_run_in_order_and_can_be_cancelled_before_they_start() {
    let s = start().await;
    let mut first = s.execute(
        "print('one', flush=True)\nx = input()",
        ExecuteOptions::default(),
    );
    let second = s.execute("print('two')", ExecuteOptions::default());
    let mut third = s.execute("print('three')", ExecuteOptions::default());
    let fourth = s.execute("print('four')", ExecuteOptions::default());
    wait_for_stdout(&mut first, "one\n").await;
    assert_eq!(
        guard(s.cancel(third.id(), Duration::from_secs(1)))
            .await
            .unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        error_type(&terminal(&mut third).await),
        "ExecutionCancelled"
    );
    let Some(Event::Input { input_id, .. }) = guard(first.next_event()).await else {
        panic!()
    };
    s.input_response(&input_id, "go").await.unwrap();
    assert!(matches!(terminal(&mut first).await, Event::Result { .. }));
    assert_eq!(guard(second.outcome()).await.stdout, "two\n");
    assert_eq!(guard(fourth.outcome()).await.stdout, "four\n");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn interrupt_delivers_keyboard_interrupt_and_force_restart_restarts() {
    let s = start().await;
    let mut ex = s.execute(
        "print('started', flush=True)\nwhile True: pass",
        ExecuteOptions::default(),
    );
    wait_for_stdout(&mut ex, "started").await;
    assert_eq!(
        guard(s.interrupt(ex.id(), false)).await.unwrap(),
        InterruptOutcome::Interrupted
    );
    assert_eq!(error_type(&terminal(&mut ex).await), "KeyboardInterrupt");

    let mut ex = s.execute(
        "print('started', flush=True)\nwhile True: pass",
        ExecuteOptions::default(),
    );
    wait_for_stdout(&mut ex, "started").await;
    assert_eq!(
        guard(s.interrupt(ex.id(), true)).await.unwrap(),
        InterruptOutcome::Restarted
    );
    assert_eq!(error_type(&terminal(&mut ex).await), "ExecutionKilled");
    assert_eq!(eval(&s, "2+2").await.as_deref(), Some("4"));
    assert_eq!(
        guard(s.interrupt("nope", false)).await.unwrap(),
        InterruptOutcome::NotRunning
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cancel_right_after_execute_stops_the_code_without_killing_the_worker() {
    // Regression: SIGINT that reached the worker before the code started was absorbed, and
    // the grace then killed the worker. The cancel is remembered until the code starts.
    let s = start().await;
    eval(&s, "kept = 1").await;
    for _ in 0..10 {
        let mut ex = s.execute("import time\ntime.sleep(100)", ExecuteOptions::default());
        let outcome = guard(s.cancel(ex.id(), Duration::from_millis(1500)))
            .await
            .unwrap();
        assert_eq!(outcome, CancelOutcome::Cancelled);
        assert_eq!(error_type(&terminal(&mut ex).await), "KeyboardInterrupt");
    }
    assert_eq!(
        eval(&s, "kept").await.as_deref(),
        Some("1"),
        "never restarted"
    );
    assert_eq!(s.info().await.unwrap().restarts, 0);
    s.shutdown().await.unwrap();
}

/// The KeyboardInterrupt says what happened: a client's cancel, or the execution's timeout;
/// user code interrupting itself gets a plain one, as in Python.
#[tokio::test]
async fn the_keyboard_interrupt_says_who_stopped_the_code() {
    let s = start().await;
    let mut ex = s.execute(
        "import time\nprint('go', flush=True)\ntime.sleep(60)",
        ExecuteOptions::default(),
    );
    wait_for_stdout(&mut ex, "go").await;
    guard(s.cancel(ex.id(), Duration::from_secs(5)))
        .await
        .unwrap();
    let Event::Error {
        exception_type,
        exception_message,
        traceback,
        ..
    } = terminal(&mut ex).await
    else {
        panic!("expected an error")
    };
    assert_eq!(exception_type, "KeyboardInterrupt");
    assert_eq!(exception_message, "execution cancelled by the client");
    assert!(
        traceback.ends_with("KeyboardInterrupt: execution cancelled by the client\n"),
        "{traceback}"
    );

    let timed = guard(
        s.execute(
            "import time\ntime.sleep(60)",
            ExecuteOptions {
                timeout: Some(Duration::from_millis(200)),
                ..Default::default()
            },
        )
        .outcome(),
    )
    .await;
    let Event::Error { traceback, .. } = &timed.terminal else {
        panic!("{timed:?}")
    };
    assert!(
        traceback.contains("KeyboardInterrupt: execution interrupted at its time limit"),
        "{traceback}"
    );

    let own = run(&s, "import os, signal\nos.kill(os.getpid(), signal.SIGINT)").await;
    let Event::Error {
        exception_message, ..
    } = &own.terminal
    else {
        panic!("{own:?}")
    };
    assert_eq!(
        exception_message, "",
        "user code's own SIGINT is Python's plain one"
    );
    s.shutdown().await.unwrap();
}
