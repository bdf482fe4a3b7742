//! The session core driven by hand, without Python or a runtime: inputs in, effects and
//! events out, time passed in explicitly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::overrun::{IdleProbe, OVERRUN_FLAG, TIMEOUT_FLAG};
use super::{Core, Effect, Input};
use crate::protocol::{self, Heartbeat, MarkerScanner, Message, StreamName};
use crate::session::requests::{Command, WorkerRequest};
use crate::session::{CancelOutcome, Event, SessionConfig, SessionState};

struct Harness {
    core: Core,
    marker: Vec<u8>,
    state: watch::Receiver<SessionState>,
    executions: Arc<AtomicU64>,
    first_start: oneshot::Receiver<Result<String, crate::Error>>,
    now: Instant,
}

impl Harness {
    /// A core whose first worker has been spawned (pid 42), not ready yet.
    fn new() -> Harness {
        let (state_tx, state) = watch::channel(SessionState::Starting);
        let executions = Arc::new(AtomicU64::new(0));
        let (first_tx, first_start) = oneshot::channel();
        let config = SessionConfig {
            timeout_grace: Duration::from_millis(500),
            ..SessionConfig::default()
        };
        let mut core = Core::new(
            "s1".into(),
            config,
            "/tmp".into(),
            state_tx,
            executions.clone(),
            first_tx,
        );
        let token = match core.take_effects().as_slice() {
            [Effect::SpawnWorker { marker_token }] => marker_token.clone(),
            other => panic!("expected one spawn, got {other:?}"),
        };
        let mut h = Harness {
            core,
            marker: MarkerScanner::new(&token).marker().to_vec(),
            state,
            executions,
            first_start,
            now: Instant::now(),
        };
        h.input(Input::Spawned { pid: 42 });
        h
    }

    fn input(&mut self, input: Input<'_>) -> Vec<Effect> {
        self.core.handle(input, self.now);
        self.core.take_effects()
    }

    fn ready(mut self) -> Harness {
        let effects = self.input(Input::Frame(Message::Ready(protocol::Ready {
            id: "w0".into(),
            session_id: "s1".into(),
            capabilities: Vec::new(),
            pid: 42,
            python_version: "3.11".into(),
        })));
        assert!(effects.is_empty(), "{effects:?}");
        assert_eq!(
            self.first_start
                .try_recv()
                .ok()
                .and_then(Result::ok)
                .as_deref(),
            Some("s1")
        );
        assert_eq!(*self.state.borrow(), SessionState::Idle);
        self
    }

    /// Submits code; returns the event stream and the effects.
    fn execute(
        &mut self,
        id: &str,
        timeout: Option<Duration>,
    ) -> (mpsc::Receiver<Event>, Vec<Effect>) {
        let (events, rx) = mpsc::channel(64);
        let effects = self.input(Input::Command(Command::Execute {
            id: id.into(),
            code: "x".into(),
            timeout,
            events,
            internal: None,
            policy: Default::default(),
            mode: Default::default(),
            stdin: Vec::new(),
        }));
        (rx, effects)
    }

    fn output(&mut self, pipe: usize, bytes: &[u8]) -> Vec<Effect> {
        self.input(Input::Output { pipe, bytes })
    }

    fn result(&mut self, execution_id: &str) -> Vec<Effect> {
        self.input(Input::Frame(Message::Result(protocol::ResultMsg {
            id: "r".into(),
            execution_id: execution_id.into(),
            value: serde_json::json!(2),
            repr: Some("2".into()),
            execution_time: 0.001,
            marked: true,
            transaction: None,
            worker_pid: None,
            cpu_time_before: None,
            data: None,
            metadata: None,
        })))
    }

    fn error(&mut self, execution_id: &str, exception_type: &str) -> Vec<Effect> {
        self.input(Input::Frame(Message::Error(protocol::ErrorMsg {
            id: "e".into(),
            execution_id: Some(execution_id.into()),
            exception_type: exception_type.into(),
            exception_message: String::new(),
            traceback: format!("{exception_type}\n"),
            marked: true,
            transaction: None,
            worker_pid: None,
            cpu_time_before: None,
            exit_code: None,
        })))
    }

    fn exit(&mut self, status: &str) -> Vec<Effect> {
        let mut effects = self.input(Input::Exited);
        effects.extend(self.input(Input::OutputEnd { pipe: 0 }));
        effects.extend(self.input(Input::OutputEnd { pipe: 1 }));
        effects.extend(self.input(Input::Reaped {
            status: status.into(),
            oom_killed: false,
        }));
        effects
    }

    fn advance_to_deadline(&mut self) -> Vec<Effect> {
        self.now = self.core.next_deadline().expect("a deadline is armed");
        self.input(Input::Deadline)
    }
}

fn drain(rx: &mut mpsc::Receiver<Event>) -> Vec<Event> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

fn sent_execute(effects: &[Effect]) -> Option<u64> {
    effects.iter().find_map(|e| match e {
        Effect::Send(Message::Execute(x)) => Some(x.seq),
        _ => None,
    })
}

#[test]
fn code_queued_before_ready_runs_once_the_worker_is_ready() {
    let mut h = Harness::new();
    let (_rx, effects) = h.execute("e1", None);
    assert_eq!(
        sent_execute(&effects),
        None,
        "not sent to a worker that is not ready"
    );
    let effects = h.input(Input::Frame(Message::Ready(protocol::Ready {
        id: "w0".into(),
        session_id: "s1".into(),
        capabilities: Vec::new(),
        pid: 42,
        python_version: "3.11".into(),
    })));
    assert_eq!(sent_execute(&effects), Some(1));
    assert_eq!(*h.state.borrow(), SessionState::Busy);
}

#[test]
fn output_is_delivered_before_the_result_that_overtook_it() {
    let mut h = Harness::new().ready();
    let (mut rx, _) = h.execute("e1", None);
    h.output(0, b"one\n");
    // The result frame arrives before the marker that follows the output on the pipes.
    h.result("e1");
    assert_eq!(drain(&mut rx).len(), 1, "only the output so far");
    let mut tail = b"two\n".to_vec();
    tail.extend(h.marker.clone());
    h.output(0, &tail);
    let marker = h.marker.clone();
    h.output(1, &marker);
    let events = drain(&mut rx);
    assert_eq!(
        events[0],
        Event::Output {
            stream: StreamName::Stdout,
            data: "two\n".into()
        }
    );
    assert!(matches!(&events[1], Event::Result { repr: Some(r), .. } if r == "2"));
    assert_eq!(h.executions.load(Ordering::Relaxed), 1);
    assert_eq!(*h.state.borrow(), SessionState::Idle);
}

#[test]
fn executions_run_one_at_a_time_in_order() {
    let mut h = Harness::new().ready();
    let (_a, first) = h.execute("a", None);
    let (mut b, second) = h.execute("b", None);
    assert_eq!(sent_execute(&first), Some(1));
    assert_eq!(sent_execute(&second), None, "queued behind a");
    let marker = h.marker.clone();
    h.output(0, &marker);
    h.output(1, &marker);
    let effects = h.result("a");
    assert_eq!(sent_execute(&effects), Some(2));
    assert!(drain(&mut b).is_empty());
}

#[test]
fn a_cancel_that_is_ignored_escalates_to_a_kill_and_a_restart() {
    let mut h = Harness::new().ready();
    let (mut rx, _) = h.execute("e1", None);
    let (reply, mut outcome) = oneshot::channel();
    let effects = h.input(Input::Command(Command::Cancel {
        execution_id: "e1".into(),
        grace: Duration::from_millis(500),
        reply,
    }));
    assert!(matches!(effects.as_slice(), [Effect::Interrupt { seq: 1 }]));
    let start = h.now;
    let effects = h.advance_to_deadline();
    assert_eq!(h.now - start, Duration::from_millis(500));
    assert!(matches!(effects.as_slice(), [Effect::KillGroup]));
    let effects = h.exit("killed by signal 9 (SIGKILL)");
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::SpawnWorker { .. })));
    assert_eq!(outcome.try_recv().ok(), Some(CancelOutcome::Killed));
    let events = drain(&mut rx);
    assert!(
        matches!(&events[..], [Event::Error { exception_type, .. }] if exception_type == "ExecutionKilled")
    );
    assert_eq!(*h.state.borrow(), SessionState::Restarting);
}

#[test]
fn a_timeout_interrupts_and_reports_execution_timeout() {
    let mut h = Harness::new().ready();
    let (mut rx, _) = h.execute("e1", Some(Duration::from_secs(1)));
    let effects = h.advance_to_deadline();
    // The signal target says it is the timeout (the KeyboardInterrupt says so).
    assert!(matches!(effects.as_slice(), [Effect::Interrupt { seq }] if *seq == TIMEOUT_FLAG | 1));
    let marker = h.marker.clone();
    h.output(0, &marker);
    h.output(1, &marker);
    h.error("e1", "KeyboardInterrupt");
    let events = drain(&mut rx);
    assert!(
        matches!(&events[..], [Event::Error { exception_type, traceback, .. }]
            if exception_type == "ExecutionTimeout" && traceback.starts_with("KeyboardInterrupt")),
        "{events:?}"
    );
    // The worker's word is checked once at the kill point: idle, so nothing more.
    assert!(matches!(
        h.advance_to_deadline().as_slice(),
        [Effect::ProbeIdle]
    ));
    assert!(h.input(Input::IdleProbe(probe(true, 0))).is_empty());
    assert!(h.core.next_deadline().is_none(), "no timer left armed");
}

fn probe(reading_exec: bool, unread_exec_bytes: usize) -> IdleProbe {
    IdleProbe {
        reading_exec: Some(reading_exec),
        unread_exec_bytes: Some(unread_exec_bytes),
    }
}

#[test]
fn code_reported_finished_but_still_running_at_its_limit_is_interrupted_then_killed() {
    let mut h = Harness::new().ready();
    let (mut rx, _) = h.execute("e1", Some(Duration::from_secs(1)));
    let started = h.now;
    let marker = h.marker.clone();
    h.output(0, &marker);
    h.output(1, &marker);
    h.result("e1"); // forged: the code goes on
    assert!(matches!(drain(&mut rx)[..], [Event::Result { .. }]));
    // Another execution is sent but not read: the thread is still in e1's code.
    let (mut rx2, _) = h.execute("e2", None);
    assert!(h.core.next_deadline() >= Some(started + Duration::from_secs(1)));
    assert!(matches!(
        h.advance_to_deadline().as_slice(),
        [Effect::ProbeIdle]
    ));
    let effects = h.input(Input::IdleProbe(probe(false, 120)));
    // Aimed at code older than e2 (seq 2): never e2 itself.
    assert!(
        matches!(effects.as_slice(), [Effect::Interrupt { seq }] if *seq == OVERRUN_FLAG | 2),
        "{effects:?}"
    );
    // Still busy one grace later: killed; e2, which never ran, says why.
    assert!(matches!(
        h.advance_to_deadline().as_slice(),
        [Effect::ProbeIdle]
    ));
    let effects = h.input(Input::IdleProbe(probe(false, 120)));
    assert!(
        matches!(effects.as_slice(), [Effect::KillGroup]),
        "{effects:?}"
    );
    h.exit("killed by signal 9 (SIGKILL)");
    assert!(
        matches!(&drain(&mut rx2)[..], [Event::Error { exception_type, .. }] if exception_type == "WorkerKilled")
    );
    assert_eq!(*h.state.borrow(), SessionState::Restarting);
}

#[test]
fn a_busy_thread_that_read_the_running_execution_is_not_blamed() {
    let mut h = Harness::new().ready();
    let (_rx, _) = h.execute("e1", Some(Duration::from_millis(10)));
    let marker = h.marker.clone();
    h.output(0, &marker);
    h.output(1, &marker);
    h.result("e1");
    let (_rx2, _) = h.execute("e2", None);
    assert!(matches!(
        h.advance_to_deadline().as_slice(),
        [Effect::ProbeIdle]
    ));
    // e2's frame is read (nothing unread) and the thread is busy: with e2, under its own
    // limit.
    assert!(h.input(Input::IdleProbe(probe(false, 0))).is_empty());
    assert!(h.core.next_deadline().is_none());
}

#[test]
fn worker_requests_are_answered_by_id_and_only_when_ready() {
    let mut h = Harness::new();
    let (reply, mut early) = oneshot::channel();
    let effects = h.input(Input::Command(Command::Ask(WorkerRequest::Heartbeat {
        reply,
    })));
    assert!(effects.is_empty());
    assert!(
        early.try_recv().is_err(),
        "dropped: the worker is not ready"
    );

    let mut h = h.ready();
    let (reply, mut answer) = oneshot::channel();
    let effects = h.input(Input::Command(Command::Ask(WorkerRequest::Heartbeat {
        reply,
    })));
    let id = match effects.as_slice() {
        [Effect::Send(Message::Heartbeat(beat))] => beat.id.clone(),
        other => panic!("{other:?}"),
    };
    h.input(Input::Frame(Message::Heartbeat(Heartbeat {
        id: "w9".into(),
        in_reply_to: Some(id),
        namespace_size: Some(7),
        ..Heartbeat::default()
    })));
    assert_eq!(
        answer.try_recv().ok().and_then(|b| b.namespace_size),
        Some(7)
    );
}

#[test]
fn a_message_for_an_ended_execution_is_dropped_and_counted() {
    let mut h = Harness::new().ready();
    let (mut rx, _) = h.execute("e1", None);
    h.input(Input::OutputEnd { pipe: 0 });
    h.input(Input::OutputEnd { pipe: 1 });
    h.result("someone-else");
    assert!(drain(&mut rx).is_empty());
    let (reply, info) = oneshot::channel();
    h.input(Input::Command(Command::Info { reply }));
    let info = info.blocking_recv().expect("info");
    assert_eq!(info.late_messages_dropped, 1);
}

#[test]
fn an_unexpected_death_fails_the_running_and_queued_code_and_marks_the_session_dead() {
    let mut h = Harness::new().ready();
    let (mut running, _) = h.execute("e1", None);
    let (mut queued, _) = h.execute("e2", None);
    h.output(0, b"partial");
    let effects = h.exit("exited with status 3");
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::SpawnWorker { .. })));
    let events = drain(&mut running);
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        matches!(&events[1], Event::Error { exception_type, .. } if exception_type == "WorkerDied")
    );
    assert!(
        matches!(&drain(&mut queued)[..], [Event::Error { exception_type, .. }] if exception_type == "SessionDead")
    );
    assert_eq!(*h.state.borrow(), SessionState::Dead);
}

#[test]
fn shutdown_asks_then_kills_after_the_grace_and_finishes_once_reaped() {
    let mut h = Harness::new().ready();
    let effects = h.input(Input::Shutdown);
    assert!(matches!(
        effects.as_slice(),
        [Effect::Send(Message::Shutdown(_))]
    ));
    assert_eq!(*h.state.borrow(), SessionState::ShuttingDown);
    assert!(!h.core.finished());
    let effects = h.advance_to_deadline();
    assert!(matches!(effects.as_slice(), [Effect::KillGroup]));
    let effects = h.exit("killed by signal 9 (SIGKILL)");
    assert!(effects.is_empty(), "no restart while closing: {effects:?}");
    assert!(h.core.finished());
}

#[test]
fn a_worker_that_never_gets_ready_is_killed_at_the_start_deadline() {
    let mut h = Harness::new();
    let effects = h.advance_to_deadline();
    assert!(matches!(effects.as_slice(), [Effect::KillGroup]));
    h.exit("killed by signal 9 (SIGKILL)");
    let error = h.first_start.try_recv().ok().and_then(Result::err);
    assert!(
        matches!(error, Some(crate::Error::StartTimeout(_))),
        "{error:?}"
    );
    assert!(
        h.core.finished(),
        "a session that never started is not kept"
    );
}
