//! Why a worker went away, and what that means for the execution that was running: the
//! error it ends with, and whether a fresh worker replaces the dead one.

use std::time::Duration;

use super::Event;

/// Why the current worker is going away; decides what happens once it has exited.
#[derive(Debug, Clone)]
pub(crate) enum ExitCause {
    /// It died on its own (crash, `os._exit`, OOM kill, closed socket).
    Unexpected,
    Protocol(String),
    StartTimeout,
    /// A cancel's grace ran out; `timed_out` when the cancel came from the execution timeout.
    CancelGraceExpired {
        timed_out: bool,
    },
    ForcedInterrupt,
    /// Code that the worker reported finished was still running one grace after being
    /// interrupted at its time limit (`core/overrun.rs`).
    Overran,
    Restart,
    Shutdown,
    /// A transaction's snapshot took over a worker, and the session's worker processes had
    /// used up its CPU-time limit of this many seconds between them (docs/transactions.md).
    CpuBudgetSpent(u64),
}

/// After the worker exited for `cause`: whether a fresh worker replaces it, and the error
/// that ends the execution that was running.
pub(crate) fn exit_consequence(
    cause: &ExitCause,
    status: &str,
    timeout_grace: Duration,
) -> (bool, Event) {
    match cause {
        ExitCause::Unexpected => (
            false,
            Event::error(
                "WorkerDied",
                format!("the worker {status} while running this code; the session's state is lost"),
            ),
        ),
        ExitCause::Protocol(e) => (
            false,
            Event::error(
                "ProtocolError",
                format!("the worker broke the protocol ({e}) and was killed; the session's state is lost"),
            ),
        ),
        ExitCause::CancelGraceExpired { timed_out: true } => (
            true,
            Event::error(
                "ExecutionTimeout",
                format!(
                    "the execution exceeded its timeout and did not stop within {timeout_grace:?} of being interrupted; the worker was killed and restarted, the namespace is lost"
                ),
            ),
        ),
        ExitCause::CancelGraceExpired { timed_out: false } => (
            true,
            Event::error(
                "ExecutionKilled",
                "the code did not stop within the cancel grace period; the worker was killed and restarted, the namespace is lost",
            ),
        ),
        ExitCause::ForcedInterrupt => (
            true,
            Event::error(
                "ExecutionKilled",
                "interrupted with force_restart: the worker was killed and restarted, the namespace is lost",
            ),
        ),
        ExitCause::Overran => (
            true,
            Event::error(
                "WorkerKilled",
                "an earlier execution of this session reported its end but went on running past its time limit, and ignored the interrupt; the worker was killed and restarted, the namespace is lost, and this code did not run",
            ),
        ),
        ExitCause::Restart => (
            true,
            Event::error(
                "SessionRestarted",
                "the session was restarted while this code ran; the namespace is lost",
            ),
        ),
        ExitCause::CpuBudgetSpent(secs) => (
            true,
            Event::error(
                "CpuLimitExceeded",
                format!("the session's worker processes used up its CPU-time limit of {secs} s between them (a rolled-back transaction's snapshot took over, with no CPU time left); a fresh worker was started, the namespace is lost"),
            ),
        ),
        ExitCause::StartTimeout | ExitCause::Shutdown => (
            false,
            Event::error("SessionShutdown", "the session was shut down while this code ran"),
        ),
    }
}

/// A transaction's execution past its timeout that ignored the interrupt: its worker process
/// was killed and the snapshot took over (docs/transactions.md).
pub(crate) fn killed_timeout_event(timeout: Option<Duration>) -> Event {
    let limit = timeout.map_or(String::new(), |t| format!(" of {t:?}"));
    Event::error(
        "ExecutionTimeout",
        format!("the execution exceeded its timeout{limit}, did not stop when interrupted and was killed; the session was rolled back to its state before the execution"),
    )
}

pub(crate) fn timeout_event(timeout: Option<Duration>, traceback: Option<String>) -> Event {
    let message = match timeout {
        Some(t) => format!("the execution exceeded its timeout of {t:?} and was interrupted"),
        None => "the execution exceeded its timeout and was interrupted".to_string(),
    };
    let mut traceback = traceback.unwrap_or_default();
    traceback.push_str(&format!("ExecutionTimeout: {message}\n"));
    Event::Error {
        exception_type: "ExecutionTimeout".into(),
        exception_message: message,
        traceback,
        transaction: None,
        exit_code: None,
    }
}
