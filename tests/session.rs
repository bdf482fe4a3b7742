//! Black-box tests of the Session API against real python3 workers: results, output
//! ordering, input, cancel, timeouts, worker death, protocol errors, shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pyrepl3::protocol::StreamName;
use pyrepl3::session::InterruptOutcome;
use pyrepl3::{CancelOutcome, Error, Event, ExecuteOptions, Session, SessionConfig, SessionState};

#[tokio::test]
async fn trailing_expression_underscore_and_persistent_namespace() {
    let s = start().await;
    assert_eq!(eval(&s, "1+1").await.as_deref(), Some("2"));
    assert_eq!(eval(&s, "x = 5").await, None);
    assert_eq!(eval(&s, "x * 2").await.as_deref(), Some("10"));
    assert_eq!(eval(&s, "_ + 1").await.as_deref(), Some("11"));
    assert_eq!(eval(&s, "None").await, None);
    let out = run(&s, "{'a': [1, 2.5, None, 'x']}").await;
    match out.terminal {
        Event::Result { value, repr, .. } => {
            assert_eq!(value, serde_json::json!({"a": [1, 2.5, null, "x"]}));
            assert_eq!(repr.as_deref(), Some("{'a': [1, 2.5, None, 'x']}"));
        }
        other => panic!("{other:?}"),
    }
    let out = run(&s, "object()").await;
    match out.terminal {
        Event::Result { value, repr, .. } => {
            assert_eq!(value, serde_json::Value::Null, "not JSON-serialisable");
            assert!(repr.unwrap_or_default().starts_with("<object object at"));
        }
        other => panic!("{other:?}"),
    }
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn top_level_await() {
    let s = start().await;
    let repr = eval(&s, "import asyncio\nawait asyncio.sleep(0.01)\n42").await;
    assert_eq!(repr.as_deref(), Some("42"));
    // One event loop for the session: a task created in one cell is awaited in the next.
    eval(
        &s,
        "t = asyncio.ensure_future(asyncio.sleep(0, result='later'))",
    )
    .await;
    assert_eq!(eval(&s, "await t").await.as_deref(), Some("'later'"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn exceptions_system_exit_and_syntax_errors_keep_the_session() {
    let s = start().await;
    eval(&s, "kept = 'yes'").await;

    let out = run(&s, "def f():\n    return 1/0\nf()").await;
    assert_eq!(out.error_type(), Some("ZeroDivisionError"));
    let Event::Error {
        traceback,
        exception_message,
        ..
    } = &out.terminal
    else {
        unreachable!()
    };
    assert_eq!(exception_message, "division by zero");
    assert!(
        traceback.starts_with("Traceback (most recent call last):"),
        "{traceback}"
    );
    assert!(
        traceback.contains("return 1/0"),
        "source lines shown: {traceback}"
    );
    assert!(
        !traceback.contains("File \"<string>\""),
        "no agent frames: {traceback}"
    );

    let out = run(&s, "raise SystemExit(3)").await;
    assert_eq!(out.error_type(), Some("SystemExit"));

    let out = run(&s, "def broken(:\n    pass").await;
    assert_eq!(out.error_type(), Some("SyntaxError"));
    let Event::Error { traceback, .. } = &out.terminal else {
        unreachable!()
    };
    assert!(traceback.contains("<cell-"), "{traceback}");
    assert!(traceback.contains('^'), "caret line: {traceback}");

    assert_eq!(eval(&s, "kept").await.as_deref(), Some("'yes'"));
    assert_eq!(s.state(), SessionState::Idle);
    let info = s.info().await.unwrap();
    assert_eq!(info.error_count, 3);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn interleaved_output_arrives_once_in_order_before_the_result() {
    let s = start().await;
    let code = r#"
import os, sys, subprocess
for i in range(10000):
    print(f"out {i}")
    print(f"err {i}", file=sys.stderr)
os.write(1, b"raw fd write\n")
os.write(2, b"raw fd err\n")
subprocess.run(["sh", "-c", "echo child out; echo child err >&2"])
print("last")
"#;
    let out = run(&s, code).await;
    assert!(
        matches!(out.terminal, Event::Result { .. }),
        "{:?}",
        out.terminal
    );
    let mut want_out: String = (0..10000).map(|i| format!("out {i}\n")).collect();
    want_out.push_str("raw fd write\nchild out\nlast\n");
    let mut want_err: String = (0..10000).map(|i| format!("err {i}\n")).collect();
    want_err.push_str("raw fd err\nchild err\n");
    assert_eq!(out.stdout.len(), want_out.len());
    assert!(out.stdout == want_out, "stdout differs");
    assert!(out.stderr == want_err, "stderr differs");
    // The terminal event is the last one.
    assert!(out.events.last().is_some_and(Event::is_terminal));
    assert_eq!(out.events.iter().filter(|e| e.is_terminal()).count(), 1);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn output_is_streamed_while_the_code_runs() {
    let s = start().await;
    // The code waits for an answer after printing: the line must arrive before the code ends.
    let mut ex = s.execute(
        "print('first line')\nx = input()\nprint('after', x)",
        ExecuteOptions::default(),
    );
    wait_for_stdout(&mut ex, "first line\n").await;
    match guard(ex.next_event()).await {
        Some(Event::Input { input_id, .. }) => s.input_response(&input_id, "ok").await.unwrap(),
        other => panic!("{other:?}"),
    }
    wait_for_stdout(&mut ex, "after ok\n").await;
    assert!(matches!(terminal(&mut ex).await, Event::Result { .. }));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_inputs_answered_in_turn_and_unknown_ids_rejected() {
    let s = start().await;
    let mut ex = s.execute(
        "print('before')\na = input('first? ')\nb = input('second? ')\nprint(a + '|' + b)",
        ExecuteOptions::default(),
    );
    let mut prompts = Vec::new();
    let mut stdout = String::new();
    let mut answers = vec!["two", "one"];
    let terminal = guard(async {
        loop {
            match ex.next_event().await.expect("terminal event") {
                Event::Output { data, .. } => stdout.push_str(&data),
                Event::Input {
                    input_id,
                    prompt,
                    password,
                } => {
                    assert!(!password);
                    if prompts.is_empty() {
                        assert_eq!(stdout, "before\n", "output before input() arrives first");
                    }
                    prompts.push(prompt);
                    let answer = answers.pop().unwrap();
                    s.input_response(&input_id, answer).await.unwrap();
                    // Answering twice is an error.
                    let again = s.input_response(&input_id, "x").await;
                    assert!(matches!(again, Err(Error::UnknownInput(_))), "{again:?}");
                }
                t => break t,
            }
        }
    })
    .await;
    assert!(matches!(terminal, Event::Result { .. }), "{terminal:?}");
    assert_eq!(prompts, vec!["first? ", "second? "]);
    assert_eq!(stdout, "before\none|two\n");
    let unknown = s.input_response("no-such-input", "x").await;
    assert!(
        matches!(unknown, Err(Error::UnknownInput(_))),
        "{unknown:?}"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn input_eof_getpass_and_stdin_readline() {
    let s = start().await;
    let mut ex = s.execute(
        "import getpass, sys\npw = getpass.getpass()\nline = sys.stdin.readline()\ntry:\n    input()\nexcept EOFError:\n    print('eof')\n(pw, line)",
        ExecuteOptions::default(),
    );
    let mut kinds = Vec::new();
    let end = guard(async {
        loop {
            match ex.next_event().await.expect("terminal") {
                Event::Input {
                    input_id, password, ..
                } => {
                    kinds.push(password);
                    match kinds.len() {
                        1 => s.input_response(&input_id, "secret").await.unwrap(),
                        2 => s.input_response(&input_id, "a line").await.unwrap(),
                        _ => s.input_eof(&input_id).await.unwrap(),
                    }
                }
                Event::Output { data, .. } => assert_eq!(data, "eof\n"),
                t => break t,
            }
        }
    })
    .await;
    assert_eq!(kinds, vec![true, false, false]);
    match end {
        Event::Result { repr, .. } => assert_eq!(repr.as_deref(), Some("('secret', 'a line\\n')")),
        other => panic!("{other:?}"),
    }
    s.shutdown().await.unwrap();
}

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

#[tokio::test]
async fn worker_exit_is_reported_with_its_status_and_restart_recovers() {
    let s = start().await;
    let mut changes = s.state_changes();
    let out = run(&s, "print('bye', flush=True)\nimport os\nos._exit(3)").await;
    assert_eq!(
        out.stdout, "bye\n",
        "output written before death is delivered"
    );
    assert_eq!(out.error_type(), Some("WorkerDied"));
    let Event::Error {
        exception_message, ..
    } = &out.terminal
    else {
        unreachable!()
    };
    assert!(
        exception_message.contains("exited with status 3"),
        "{exception_message}"
    );
    guard(changes.wait_for(|s| *s == SessionState::Dead))
        .await
        .unwrap();
    assert_eq!(s.state(), SessionState::Dead);
    let later = run(&s, "1").await;
    assert_eq!(later.error_type(), Some("SessionDead"));
    guard(s.restart()).await.unwrap();
    assert_eq!(s.state(), SessionState::Idle);
    assert_eq!(eval(&s, "1+1").await.as_deref(), Some("2"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn worker_killed_by_signal_is_reported() {
    let s = start().await;
    let out = run(
        &s,
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    )
    .await;
    assert_eq!(out.error_type(), Some("WorkerDied"));
    let Event::Error {
        exception_message, ..
    } = &out.terminal
    else {
        unreachable!()
    };
    assert!(exception_message.contains("SIGKILL"), "{exception_message}");
    s.shutdown().await.unwrap();
}

/// Finds the worker's protocol socket from user code, to write bad frames to it.
const FIND_SOCKET: &str = "import os, stat
def socket_fd():
    for f in range(3, 256):
        try:
            if stat.S_ISSOCK(os.fstat(f).st_mode):
                return f
        except OSError:
            pass
fd = socket_fd()
";

/// Writes `frame` to the worker's protocol socket from user code: the session must end with
/// a clean ProtocolError (no hang), and come back with `restart()`.
async fn bad_frame_is_a_clean_protocol_error(frame: &str, message_contains: &str) {
    let s = start().await;
    let out = run(
        &s,
        &format!("{FIND_SOCKET}os.write(fd, {frame})\nimport time\ntime.sleep(100)"),
    )
    .await;
    assert_eq!(
        out.error_type(),
        Some("ProtocolError"),
        "{:?}",
        out.terminal
    );
    let Event::Error {
        exception_message, ..
    } = &out.terminal
    else {
        unreachable!()
    };
    assert!(
        exception_message.contains(message_contains),
        "{exception_message}"
    );
    assert_eq!(s.state(), SessionState::Dead);
    guard(s.restart()).await.unwrap();
    assert_eq!(eval(&s, "1+1").await.as_deref(), Some("2"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_frame_from_the_worker_is_a_clean_protocol_error() {
    bad_frame_is_a_clean_protocol_error("b'\\x00\\x00\\x00\\x05hello'", "not a valid message")
        .await;
}

#[tokio::test]
async fn oversized_frame_from_the_worker_is_a_clean_protocol_error() {
    bad_frame_is_a_clean_protocol_error("b'\\x7f\\xff\\xff\\xff'", "exceeds the limit").await;
}

#[tokio::test]
async fn shutdown_of_a_busy_session_is_bounded_and_leaves_no_process() {
    let config = SessionConfig {
        shutdown_grace: Duration::from_millis(500),
        ..Default::default()
    };
    let s = start_with(config).await;
    let pid = s.info().await.unwrap().pid.unwrap();
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
    assert!(!group_alive(pid), "no process of the group left");
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
async fn output_not_valid_utf8_is_replaced_not_lost() {
    let s = start().await;
    let out = run(&s, "import os\nos.write(1, b'a\\xffb\\xe2\\x82\\xacc\\n')").await;
    assert_eq!(out.stdout, "a\u{fffd}b€c\n");
    let _ = StreamName::Stdout;
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn output_rate_limit_slows_the_worker_and_loses_nothing() {
    let config = SessionConfig {
        output_rate: Some(pyrepl3::session::OutputRate {
            bytes_per_second: 1_000_000.0,
            burst_bytes: 65_536,
        }),
        ..Default::default()
    };
    let s = start_with(config).await;
    let t0 = Instant::now();
    // 10 000 lines of 100 bytes: 1 MB, of which the burst covers 64 KiB.
    let out = run(
        &s,
        "import sys\nfor i in range(10000):\n    sys.stdout.write(f'{i:099d}\\n')\n'done'",
    )
    .await;
    let took = t0.elapsed();
    assert_eq!(out.repr(), Some("'done'"));
    assert_eq!(out.stdout.len(), 1_000_000);
    let expected: String = (0..10000).map(|i| format!("{i:099}\n")).collect();
    assert!(out.stdout == expected, "every byte, in order");
    assert!(took >= Duration::from_millis(900), "not limited: {took:?}");
    assert!(
        s.info().await.unwrap().timer_wakeups > 0,
        "the limiter paused the pipes"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn buffered_output_still_streams_while_the_code_blocks() {
    let s = start().await;
    // No input(), no end of execution: only the worker's flush deadline can send these.
    for code in [
        "import time\nprint('text layer')\ntime.sleep(100)",
        "import sys, time\nsys.stdout.buffer.write(b'binary layer\\n')\ntime.sleep(100)",
        "import sys, time\nprint('to stderr', file=sys.stderr)\ntime.sleep(100)",
    ] {
        let mut ex = s.execute(code, ExecuteOptions::default());
        match guard(ex.next_event()).await {
            Some(Event::Output { data, .. }) => assert!(data.ends_with('\n'), "{data:?}"),
            other => panic!("expected streamed output for {code:?}, got {other:?}"),
        }
        assert_eq!(
            guard(s.cancel(ex.id(), Duration::from_secs(5)))
                .await
                .unwrap(),
            CancelOutcome::Cancelled
        );
        terminal(&mut ex).await;
    }
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn buffered_prints_keep_their_order_against_fd_writes_and_child_processes() {
    let s = start().await;
    let code = r#"
import os, subprocess, sys
print("1 print", end="")
os.write(1, b" 2 os.write\n")
print("3 print")
subprocess.run(["echo", "4 subprocess"])
print("5 print")
os.system("echo 6 os.system")
print("7 print")
pid = os.fork()
if pid == 0:
    os.write(1, b"8 forked child\n")
    os._exit(0)
os.waitpid(pid, 0)
print("9 print")
"#;
    let out = run(&s, code).await;
    assert!(
        matches!(out.terminal, Event::Result { .. }),
        "{:?}",
        out.terminal
    );
    assert_eq!(
        out.stdout,
        "1 print 2 os.write\n3 print\n4 subprocess\n5 print\n6 os.system\n7 print\n8 forked child\n9 print\n"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn user_code_sees_an_interactive_interpreters_argv_and_path() {
    let s = start().await;
    let cwd = s.info().await.unwrap().cwd;
    std::fs::write(
        cwd.join("localmod.py"),
        "VALUE = 'from the working directory'\n",
    )
    .unwrap();
    assert_eq!(
        eval(&s, "import sys\nsys.argv").await.as_deref(),
        Some("['']")
    );
    assert_eq!(eval(&s, "sys.path[0]").await.as_deref(), Some("''"));
    assert_eq!(
        eval(&s, "import localmod\nlocalmod.VALUE").await.as_deref(),
        Some("'from the working directory'")
    );
    assert_eq!(eval(&s, "__name__").await.as_deref(), Some("'__main__'"));
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
