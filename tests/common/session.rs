//! Sessions with real python3 workers: start, run code, read events, each wait guarded.

use pyrepl3::protocol::StreamName;
use pyrepl3::{Event, ExecuteOptions, Execution, ExecutionOutcome, Session, SessionConfig};

use super::GUARD;

pub async fn start() -> Session {
    start_with(SessionConfig::default()).await
}

pub async fn start_with(config: SessionConfig) -> Session {
    guard(Session::start(config)).await.expect("session starts")
}

pub async fn guard<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(GUARD, fut)
        .await
        .expect("operation finished within the test guard")
}

/// Runs `code` to its end and returns everything it produced.
pub async fn run(session: &Session, code: &str) -> ExecutionOutcome {
    guard(session.execute(code, ExecuteOptions::default()).outcome()).await
}

/// Runs `code` and returns the repr of its result, panicking on an error.
pub async fn eval(session: &Session, code: &str) -> Option<String> {
    let out = run(session, code).await;
    match &out.terminal {
        Event::Result { repr, .. } => repr.clone(),
        other => panic!(
            "`{code}` failed: {other:?}\nstdout: {}\nstderr: {}",
            out.stdout, out.stderr
        ),
    }
}

/// Reads events until stdout contains `needle`; returns the stdout seen so far.
pub async fn wait_for_stdout(execution: &mut Execution, needle: &str) -> String {
    let mut seen = String::new();
    guard(async {
        while let Some(event) = execution.next_event().await {
            match event {
                Event::Output {
                    stream: StreamName::Stdout,
                    data,
                } => {
                    seen.push_str(&data);
                    if seen.contains(needle) {
                        return;
                    }
                }
                Event::Output { .. } => {}
                other => {
                    panic!("expected output {needle:?}, got {other:?} (stdout so far {seen:?})")
                }
            }
        }
        panic!("execution ended before printing {needle:?}");
    })
    .await;
    seen
}

/// Reads events to the end and returns the terminal one.
pub async fn terminal(execution: &mut Execution) -> Event {
    guard(async {
        let mut last = None;
        while let Some(event) = execution.next_event().await {
            last = Some(event);
        }
        last.expect("an execution always ends with a terminal event")
    })
    .await
}

pub fn error_type(event: &Event) -> &str {
    match event {
        Event::Error { exception_type, .. } => exception_type,
        other => panic!("expected an error, got {other:?}"),
    }
}
