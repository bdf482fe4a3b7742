//! The session state machine, without I/O: [`Input`]s in (commands, worker frames, pipe
//! bytes, the worker's exit, deadlines), [`Effect`]s out (spawn, send a frame, interrupt,
//! kill the group, hand a finished execution's events to a task). It owns the execution
//! queue, the running execution, cancel escalation, the exit policy (restart or dead), the
//! pending worker requests and the counters. Events reach consumers through their bounded
//! channels ([`Sink`]); the session's state is published on its watch channel. The actor
//! (`actor/`) owns the process, the sockets and the pipes, and feeds this.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::exit::{exit_consequence, ExitCause};
use super::ordering::{OutputOrdering, Text};
use super::requests::{Command, PendingRequests};
use super::sink::Sink;
use super::{CancelOutcome, Event, SessionConfig, SessionState};
use crate::error::Error;
use crate::protocol::{self, Message};
use overrun::{IdleProbe, OverrunWatch};

/// Something that happened, for the core to act on.
pub(crate) enum Input<'a> {
    Command(Command),
    /// Every handle is gone, or the owner's scope was cancelled: shut down gracefully.
    Shutdown,
    /// The worker asked for by [`Effect::SpawnWorker`] runs, as `pid`.
    Spawned {
        pid: u32,
    },
    SpawnFailed(Error),
    Frame(Message),
    /// The worker's channel carried bytes that are not the protocol.
    ProtocolError(String),
    /// Bytes from output pipe 0 (stdout) or 1 (stderr).
    Output {
        pipe: usize,
        bytes: &'a [u8],
    },
    /// Nothing more will come from that pipe.
    OutputEnd {
        pipe: usize,
    },
    /// The worker has exited; what it wrote is drained next (`Output`, `OutputEnd`, `Frame`),
    /// then `Reaped` says how it ended.
    Exited,
    Reaped {
        status: String,
        /// The kernel's OOM killer ended it (the session's memory cgroup counted a kill).
        oom_killed: bool,
    },
    /// The running execution's consumer has room again.
    ConsumerReady,
    /// The earliest deadline has passed.
    Deadline,
    /// The kernel's view of the worker, asked for by [`Effect::ProbeIdle`].
    IdleProbe(IdleProbe),
    /// A snapshot took over, but the session's processes had used up its CPU-time limit
    /// (this many seconds): the worker is replaced as when the limit ends it.
    CpuBudgetSpent(u64),
}

/// Something for the actor to do.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Start a worker whose pipes carry markers made of `marker_token`; answer with
    /// `Input::Spawned` or `Input::SpawnFailed` before anything else.
    SpawnWorker { marker_token: String },
    /// Write a frame to the worker (`execute` on the exec channel, the rest on control).
    Send(Message),
    /// SIGINT to the worker's main thread, for execution number `seq`.
    Interrupt { seq: u64 },
    /// SIGKILL to the worker's process group; its exit follows as `Input::Exited`.
    KillGroup,
    /// SIGKILL to the worker's Python process alone: a transaction's snapshot takes over and
    /// ends the execution (docs/transactions.md).
    KillWorkerProcess,
    /// Deliver the rest of a finished execution's events from a task of its own.
    DrainSink(Sink),
    /// Read whether the worker's main thread is idle; answer with `Input::IdleProbe`.
    ProbeIdle,
}

/// The core's view of the current worker process.
struct WorkerSlot {
    /// `None` until the spawn is confirmed.
    pid: Option<u32>,
    ready: bool,
    start_deadline: Option<Instant>,
    exit_cause: Option<ExitCause>,
    /// Shutdown: kill the group if it has not exited by then.
    kill_deadline: Option<Instant>,
    /// Number of the last execution sent to this worker.
    last_seq: u64,
    ordering: OutputOrdering,
    requests: PendingRequests,
    /// Executions that ended by the worker's word, held to their time limit anyway.
    overrun: OverrunWatch,
    /// The worker keeps transaction snapshots (its `ready` said so).
    transactions: bool,
    /// Its whole group was sent SIGKILL: it is going, whatever a snapshot says.
    group_killed: bool,
}

struct CancelState {
    deadline: Instant,
    timed_out: bool,
    replies: Vec<oneshot::Sender<CancelOutcome>>,
}

struct Running {
    id: String,
    sink: Sink,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    cancel: Option<CancelState>,
    pending_inputs: HashSet<String>,
    /// Answers for the next `input()` calls, given with the code; then whoever reads the
    /// events answers.
    stdin: VecDeque<String>,
    /// The output segment (markers passed) whose text belongs to this execution.
    owned_segment: u64,
    /// Its number on the worker (the SIGINT target).
    seq: u64,
    /// Runs in a transaction: killing only the worker process (not its group) brings the
    /// snapshot back instead of ending the session.
    transactional: bool,
    /// The worker process alone was killed (the snapshot is to report and take over).
    worker_killed: bool,
}

struct Queued {
    id: String,
    code: String,
    timeout: Option<Duration>,
    sink: Sink,
    /// See `protocol::Execute::internal`.
    internal: Option<serde_json::Value>,
    policy: protocol::TransactionPolicy,
    mode: protocol::CodeMode,
    stdin: Vec<String>,
}

pub(crate) struct Core {
    id: String,
    config: SessionConfig,
    cwd: PathBuf,
    state: watch::Sender<SessionState>,
    /// Terminal events delivered, shared with the handles for a lock-free read.
    executions: Arc<AtomicU64>,
    worker: Option<WorkerSlot>,
    current: Option<Running>,
    queue: VecDeque<Queued>,
    first_start: Option<oneshot::Sender<Result<String, Error>>>,
    restart_waiters: Vec<oneshot::Sender<Result<(), Error>>>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    closing: bool,
    /// No one will answer `input()` any more ([`Command::EndInput`]): each gets end-of-file.
    input_ended: bool,
    dead_reason: Option<String>,
    created_at: f64,
    last_used_at: f64,
    execution_count: u64,
    error_count: u64,
    restarts: u64,
    timer_wakeups: u64,
    late_messages_dropped: u64,
    python_version: String,
    /// What contains the session's processes (see `SessionInfo::containment`).
    containment: String,
    /// The session's own variables and cwd (`environment.rs`): every worker starts with them.
    environment: crate::session::environment::Kept,
    effects: Vec<Effect>,
}

impl Core {
    /// A core whose first worker is asked for at once (see [`Core::take_effects`]);
    /// `first_start` learns the session id once it is ready, or why it could not start.
    pub fn new(
        id: String,
        config: SessionConfig,
        cwd: PathBuf,
        state: watch::Sender<SessionState>,
        executions: Arc<AtomicU64>,
        first_start: oneshot::Sender<Result<String, Error>>,
    ) -> Core {
        let now = crate::time::unix_now();
        let mut core = Core {
            id,
            config,
            cwd,
            state,
            executions,
            worker: None,
            current: None,
            queue: VecDeque::new(),
            first_start: Some(first_start),
            restart_waiters: Vec::new(),
            shutdown_waiters: Vec::new(),
            closing: false,
            input_ended: false,
            dead_reason: None,
            created_at: now,
            last_used_at: now,
            execution_count: 0,
            error_count: 0,
            restarts: 0,
            timer_wakeups: 0,
            late_messages_dropped: 0,
            python_version: String::new(),
            containment: "process group".to_string(),
            environment: Default::default(),
            effects: Vec::new(),
        };
        core.start_worker();
        core
    }

    /// What to do, in order; empties the list.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub fn handle(&mut self, input: Input<'_>, now: Instant) {
        match input {
            Input::Command(cmd) => self.on_command(cmd, now),
            Input::Shutdown => self.begin_shutdown(now),
            Input::Spawned { pid } => {
                if let Some(w) = &mut self.worker {
                    w.pid = Some(pid);
                    // not polling: a deadline, raced in the one sleep_until of the actor.
                    w.start_deadline = Some(crate::time::deadline(now, self.config.start_timeout));
                }
            }
            Input::SpawnFailed(error) => {
                self.worker = None;
                self.start_failed(error);
            }
            Input::Frame(msg) => self.on_frame(msg, now),
            Input::ProtocolError(e) => {
                tracing::warn!(session = %self.id, error = %e, "protocol error from the worker");
                if let Some(w) = &mut self.worker {
                    w.exit_cause.get_or_insert(ExitCause::Protocol(e));
                    self.effects.push(Effect::KillGroup);
                }
            }
            Input::Output { pipe, bytes } => {
                let mut out = Vec::new();
                let owner = self.owner_segment();
                let Some(w) = &mut self.worker else { return };
                let passed_marker = w.ordering.feed(pipe, bytes, owner, &mut out);
                self.deliver_output(out);
                if passed_marker {
                    self.release_held(now);
                }
            }
            Input::OutputEnd { pipe } => {
                let mut out = Vec::new();
                let owner = self.owner_segment();
                let Some(w) = &mut self.worker else { return };
                w.ordering.end(pipe, owner, &mut out);
                self.deliver_output(out);
                self.release_held(now);
            }
            Input::Exited => {
                if let Some(w) = &mut self.worker {
                    w.exit_cause.get_or_insert(ExitCause::Unexpected);
                }
            }
            Input::Reaped { status, oom_killed } => self.on_reaped(status, oom_killed),
            Input::CpuBudgetSpent(secs) => {
                // Over any cause set before (a cancel's kill the snapshot answered): this is
                // why the worker goes now; and set before the snapshot's frame is routed, so
                // that nothing queued is started on it.
                if let Some(w) = &mut self.worker {
                    w.exit_cause = Some(ExitCause::CpuBudgetSpent(secs));
                    w.group_killed = true;
                    self.effects.push(Effect::KillGroup);
                }
            }
            Input::ConsumerReady => {
                if let Some(run) = &mut self.current {
                    run.sink.flush();
                }
            }
            Input::Deadline => self.on_deadline(now),
            Input::IdleProbe(probe) => self.on_idle_probe(probe, now),
        }
    }

    // ---- what the actor waits on ----

    /// The earliest deadline: worker start, shutdown kill, overrun check, cancel grace,
    /// execution timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        let w = self.worker.as_ref();
        let start = w
            .filter(|w| !w.ready && w.exit_cause.is_none())
            .and_then(|w| w.start_deadline);
        let kill = w.and_then(|w| w.kill_deadline);
        let overrun = w
            .filter(|w| w.ready && w.exit_cause.is_none())
            .and_then(|w| w.overrun.next_deadline());
        let run = self.current.as_ref().and_then(|run| match &run.cancel {
            Some(c) => Some(c.deadline),
            None => run.deadline,
        });
        [start, kill, overrun, run].into_iter().flatten().min()
    }

    /// Whether output pipe `i` may be read: the consumer is not too far behind and the
    /// pipe's unowned text is under its limit.
    pub fn wants_output(&self, i: usize) -> bool {
        let backlog = self.current.as_ref().map_or(0, |r| r.sink.backlog_bytes());
        backlog < super::sink::BACKLOG_LIMIT
            && self
                .worker
                .as_ref()
                .is_some_and(|w| w.ordering.wants_input(i))
    }

    /// The consumer's channel to wait on for room, while it is behind.
    pub fn consumer_behind(&self) -> Option<&tokio::sync::mpsc::Sender<Event>> {
        self.current.as_ref()?.sink.waiting_for_room()
    }

    /// What contains the session's processes (set by the actor, which owns its cgroups).
    pub fn set_containment(&mut self, containment: String) {
        self.containment = containment;
    }

    /// The worker's pid as the host sees it, learnt after its spawn (a sandboxed worker's
    /// Python process exists only once the sandbox is built).
    pub fn set_worker_pid(&mut self, pid: u32) {
        if let Some(w) = &mut self.worker {
            w.pid = Some(pid);
        }
    }

    /// The limits now in force (set by the actor, which applies them to the process).
    pub fn set_limits(&mut self, limits: crate::worker::ResourceLimits) {
        self.config.limits = limits;
    }

    /// Keeps the session's own variables (merged over those set before) and cwd.
    pub fn set_environment(&mut self, kept: crate::session::environment::Kept) {
        for (name, value) in kept.vars {
            self.environment.vars.retain(|(n, _)| *n != name);
            self.environment.vars.push((name, value));
        }
        if let Some(cwd) = kept.cwd {
            self.cwd = cwd.clone();
            self.environment.cwd = Some(cwd);
        }
    }

    /// What a worker starts with besides the session's configuration (see `set_environment`).
    pub fn environment(&self) -> &crate::session::environment::Kept {
        &self.environment
    }

    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Shutting down and no worker left: the actor may end.
    pub fn finished(&self) -> bool {
        self.closing && self.worker.is_none()
    }

    /// Those waiting for `shutdown()`, answered by the actor once no process is left.
    pub fn take_shutdown_waiters(&mut self) -> Vec<oneshot::Sender<()>> {
        std::mem::take(&mut self.shutdown_waiters)
    }

    pub fn set_closed(&mut self) {
        self.state.send_replace(SessionState::Closed);
    }

    fn set_state(&self, state: SessionState) {
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    // ---- worker lifecycle ----

    fn start_worker(&mut self) {
        let marker_token = uuid::Uuid::new_v4().simple().to_string();
        self.worker = Some(WorkerSlot {
            pid: None,
            ready: false,
            start_deadline: None,
            exit_cause: None,
            kill_deadline: None,
            last_seq: 0,
            ordering: OutputOrdering::new(&marker_token),
            requests: PendingRequests::default(),
            overrun: OverrunWatch::default(),
            transactions: false,
            group_killed: false,
        });
        self.effects.push(Effect::SpawnWorker { marker_token });
    }

    /// The worker could not be started (or died before `ready`).
    fn start_failed(&mut self, error: Error) {
        let message = error.to_string();
        if let Some(first) = self.first_start.take() {
            let _ = first.send(Err(error));
            // The caller never got a handle: there is no session to keep.
            self.closing = true;
        } else {
            for waiter in self.restart_waiters.drain(..) {
                let _ = waiter.send(Err(Error::SessionDead(message.clone())));
            }
        }
        self.mark_dead(message);
    }

    fn mark_dead(&mut self, reason: String) {
        self.dead_reason = Some(reason.clone());
        for queued in std::mem::take(&mut self.queue) {
            self.end_sink(
                queued.sink,
                Event::error(
                    "SessionDead",
                    format!("the session's worker is dead ({reason}); the code did not run"),
                ),
            );
        }
        if !self.closing {
            self.set_state(SessionState::Dead);
        }
    }

    /// Ends a sink with its terminal event; a backlog left over is drained by a task.
    fn end_sink(&mut self, mut sink: Sink, event: Event) {
        sink.push(event);
        if let Some(rest) = sink.close() {
            self.effects.push(Effect::DrainSink(rest));
        }
    }

    /// Kills the worker's process group; what follows is decided by `cause` once the exit is
    /// observed (`Input::Reaped`).
    fn kill_worker(&mut self, cause: ExitCause) {
        if let Some(w) = &mut self.worker {
            w.exit_cause.get_or_insert(cause);
            w.group_killed = true;
            self.effects.push(Effect::KillGroup);
        }
    }

    fn on_reaped(&mut self, status: String, oom_killed: bool) {
        let Some(mut w) = self.worker.take() else {
            return;
        };
        let cause = w.exit_cause.unwrap_or(ExitCause::Unexpected);
        // Output that never found its owner goes to the execution that is ending, or, when
        // the worker never got ready, explains why.
        let leftover = w.ordering.take_all_stray();
        if !w.ready {
            let error = match cause {
                ExitCause::StartTimeout => Error::StartTimeout(self.config.start_timeout),
                _ => {
                    let text: String = leftover.into_iter().map(|t| t.text).collect();
                    Error::StartFailed {
                        status,
                        stderr: crate::worker::stderr_excerpt(text.as_bytes()),
                    }
                }
            };
            if self.closing {
                // Shut down while starting: not a failure anyone waits for.
                if let Some(first) = self.first_start.take() {
                    let _ = first.send(Err(Error::SessionClosed));
                }
            } else {
                self.start_failed(error);
            }
            return;
        }

        let memory_limit = self.config.limits.session_memory_bytes;
        let (restart, event) = match (&cause, self.config.limits.cpu_time_secs) {
            (ExitCause::Unexpected, _) if oom_killed => (
                true,
                Event::error(
                    "MemoryLimitExceeded",
                    match memory_limit {
                        Some(bytes) => format!("the session went over its memory limit of {bytes} bytes and the kernel ended the worker ({status}); a fresh worker was started, the namespace is lost"),
                        None => format!("the kernel ended the worker for want of memory ({status}); a fresh worker was started, the namespace is lost"),
                    },
                ),
            ),
            // The kernel ends a worker past its CPU-time limit with SIGXCPU (then SIGKILL).
            (ExitCause::Unexpected, Some(secs)) if status.contains("(SIGXCPU)") => (
                true,
                Event::error(
                    "CpuLimitExceeded",
                    format!("the worker used up its CPU-time limit of {secs} s and was ended by the kernel ({status}); a fresh worker was started, the namespace is lost"),
                ),
            ),
            _ => exit_consequence(&cause, &status, self.config.timeout_grace),
        };
        if let Some(mut run) = self.current.take() {
            for Text { stream, text } in leftover {
                run.sink.push(Event::Output { stream, data: text });
            }
            let outcome = if matches!(cause, ExitCause::CancelGraceExpired { .. }) {
                CancelOutcome::Killed
            } else {
                CancelOutcome::Cancelled
            };
            if let Some(cancel) = run.cancel.take() {
                for reply in cancel.replies {
                    let _ = reply.send(outcome);
                }
            }
            self.count_execution(true);
            self.end_sink(run.sink, event);
        }

        if self.closing {
            return;
        }
        if restart {
            self.restarts += 1;
            self.set_state(SessionState::Restarting);
            self.start_worker();
        } else {
            let reason = match cause {
                ExitCause::Protocol(e) => format!("protocol error: {e}"),
                _ => format!("worker {status}"),
            };
            self.mark_dead(reason);
        }
    }

    fn on_ready(&mut self, ready: protocol::Ready, now: Instant) {
        let Some(w) = &mut self.worker else { return };
        if w.ready {
            return;
        }
        w.ready = true;
        w.transactions = ready.capabilities.iter().any(|c| c == "transactions");
        self.python_version = ready.python_version;
        self.dead_reason = None;
        if let Some(first) = self.first_start.take() {
            let _ = first.send(Ok(self.id.clone()));
        }
        for waiter in self.restart_waiters.drain(..) {
            let _ = waiter.send(Ok(()));
        }
        if !self.closing {
            self.set_state(SessionState::Idle);
        }
        self.pump(now);
    }

    fn begin_shutdown(&mut self, now: Instant) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.set_state(SessionState::ShuttingDown);
        for queued in std::mem::take(&mut self.queue) {
            self.end_sink(
                queued.sink,
                Event::error(
                    "SessionShutdown",
                    "the session was shut down before this code ran",
                ),
            );
        }
        if let Some(first) = self.first_start.take() {
            let _ = first.send(Err(Error::SessionClosed));
        }
        for waiter in self.restart_waiters.drain(..) {
            let _ = waiter.send(Err(Error::SessionClosed));
        }
        let grace = self.config.shutdown_grace;
        if let Some(w) = &mut self.worker {
            w.exit_cause.get_or_insert(ExitCause::Shutdown);
            // not polling: a deadline, raced in the one sleep_until of the actor.
            w.kill_deadline = Some(crate::time::deadline(now, grace));
            self.effects
                .push(Effect::Send(Message::Shutdown(protocol::Shutdown {
                    id: new_id(),
                    reason: "session shutdown".into(),
                    checkpoint: false,
                })));
        }
    }
}

mod commands;
pub(crate) mod overrun;
mod routing;

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests;
