//! A worker that fails under its session: exit and death by signal are reported with their
//! cause, bad protocol frames are a clean ProtocolError, and `restart()` recovers.

mod common;

use common::*;
use pyrepl3::{Event, SessionState};

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
