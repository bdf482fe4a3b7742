//! The session actor: one task per session that owns the worker process and every piece of
//! session state (execution queue, the running execution, pending inputs, timers, counters).
//! It waits in a single `select!` on: commands from handles, the protocol socket, both output
//! pipes, the child's exit, the consumer's channel (when it is behind), and one `sleep_until`
//! for the earliest deadline. Nothing here wakes up unless one of those happened.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::unix::pipe;
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::output::{OutputPipe, PipeItem};
use super::{
    CancelOutcome, Event, InterruptOutcome, Scope, SessionConfig, SessionInfo, SessionState,
};
use crate::error::Error;
use crate::protocol::{self, FrameDecoder, Heartbeat, IsCompleteReply, Message, StreamName};
use crate::ratelimit::RateLimiter;
use crate::worker::{self, SpawnedWorker, WorkerSpec};

/// Events buffered per execution between the actor and the consumer.
pub const EVENT_CHANNEL_CAPACITY: usize = 64;
/// Output held for a consumer that is behind before the pipes stop being read (the worker
/// then blocks in its writes: back-pressure, never dropped output).
const BACKLOG_LIMIT: usize = 1024 * 1024;
/// Output of unknown owner held per pipe before that pipe stops being read.
const STRAY_LIMIT: usize = 1024 * 1024;
const READ_CHUNK: usize = 64 * 1024;
/// How long the processes left in a closed session's group may take to die after SIGKILL.
const GROUP_EXIT_DEADLINE: Duration = Duration::from_secs(2);

pub(crate) enum Command {
    Execute {
        id: String,
        code: String,
        timeout: Option<Duration>,
        events: mpsc::Sender<Event>,
    },
    InputResponse {
        input_id: String,
        data: Option<String>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Cancel {
        execution_id: String,
        grace: Duration,
        reply: oneshot::Sender<CancelOutcome>,
    },
    Interrupt {
        execution_id: String,
        force_restart: bool,
        reply: oneshot::Sender<Result<InterruptOutcome, Error>>,
    },
    /// Cancels the running execution and removes every queued one.
    CancelAll {
        grace: Duration,
        reply: oneshot::Sender<CancelOutcome>,
    },
    Restart {
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    Info {
        reply: oneshot::Sender<SessionInfo>,
    },
    Heartbeat {
        reply: oneshot::Sender<Heartbeat>,
    },
    /// Whether `code` is a complete statement (an `is_complete` round trip).
    IsComplete {
        code: String,
        reply: oneshot::Sender<IsCompleteReply>,
    },
}

type ReadyReply = oneshot::Receiver<Result<String, Error>>;

/// Creates the actor, starts its first worker and spawns the task. The returned receiver
/// yields the session id once the worker is ready, or the start-up error.
pub(crate) async fn spawn(
    config: SessionConfig,
    scope: Scope,
) -> Result<
    (
        mpsc::UnboundedSender<Command>,
        watch::Receiver<SessionState>,
        Arc<AtomicU64>,
        ReadyReply,
    ),
    Error,
> {
    let interpreter = worker::prepare_interpreter(&config.python).await?;
    let (tempdir, cwd) = match &config.cwd {
        Some(dir) => (None, dir.clone()),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("pyrepl3-session-")
                .tempdir()
                .map_err(Error::io("creating the session's working directory"))?;
            let path = dir.path().to_path_buf();
            (Some(dir), path)
        }
    };
    let id = config
        .session_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(SessionState::Starting);
    let (ready_tx, ready_rx) = oneshot::channel();
    let now = unix_now();
    let executions = Arc::new(AtomicU64::new(0));
    let output_limiter = config
        .output_rate
        .map(|rate| RateLimiter::new(rate.bytes_per_second, rate.burst_bytes.max(1)));
    let mut actor = Actor {
        last_pid: None,
        output_limiter,
        output_paused_until: None,
        shutdown_token: scope.token,
        executions: executions.clone(),
        id,
        config,
        interpreter,
        cwd,
        _tempdir: tempdir,
        commands,
        commands_open: true,
        state: state_tx,
        worker: None,
        current: None,
        queue: VecDeque::new(),
        first_start: Some(ready_tx),
        restart_waiters: Vec::new(),
        shutdown_waiters: Vec::new(),
        closing: false,
        dead_reason: None,
        created_at: now,
        last_used_at: now,
        execution_count: 0,
        error_count: 0,
        restarts: 0,
        timer_wakeups: 0,
        late_messages_dropped: 0,
        python_version: String::new(),
        read_buf: vec![0; READ_CHUNK],
    };
    actor.start_worker();
    scope.tracker.spawn(actor.run());
    Ok((commands_tx, state_rx, executions, ready_rx))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Why the current worker is going away; decides what happens once it has exited.
#[derive(Debug, Clone)]
enum ExitCause {
    /// It died on its own (crash, `os._exit`, OOM kill, closed socket).
    Unexpected,
    Protocol(String),
    StartTimeout,
    /// A cancel's grace ran out; `timed_out` when the cancel came from the execution timeout.
    CancelGraceExpired {
        timed_out: bool,
    },
    ForcedInterrupt,
    Restart,
    Shutdown,
}

/// One running worker process and the host's ends of its channels.
struct Worker {
    child: Child,
    pid: u32,
    /// `EXEC` and `CONTROL` (see `docs/protocol.md`).
    channels: [Channel; 2],
    /// Where the target of the next SIGINT is written.
    signal_target: std::os::fd::OwnedFd,
    /// Number of the last execution sent to this worker.
    last_seq: u64,
    pipes: [OutputPipe; 2],
    ready: bool,
    start_deadline: Instant,
    /// Markers announced so far: ordered messages (`input`, `result`, `error`) received with
    /// `marked: true`. The k-th marked message is preceded by the k-th marker on each pipe.
    markers_expected: u64,
    /// Ordered messages received but not yet delivered, with the marker count both pipes
    /// must reach first (an unmarked message waits only for those before it).
    held: VecDeque<(u64, Message)>,
    exit_cause: Option<ExitCause>,
    /// Shutdown: kill the group if it has not exited by then.
    kill_deadline: Option<Instant>,
    heartbeats: HashMap<String, oneshot::Sender<Heartbeat>>,
    is_complete_waiters: HashMap<String, oneshot::Sender<IsCompleteReply>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Whatever path drops a worker (including the runtime shutting down under us), no
        // process of its group survives it.
        worker::kill_group(self.pid, libc::SIGKILL);
    }
}

const EXEC: usize = 0;
const CONTROL: usize = 1;

/// One of the two protocol channels to the worker.
struct Channel {
    sock: UnixStream,
    open: bool,
    decoder: FrameDecoder,
    /// Encoded frames not yet written (the socket was full).
    outbox: Vec<u8>,
}

impl Channel {
    fn new(sock: UnixStream, max_frame_len: usize) -> Self {
        Channel {
            sock,
            open: true,
            decoder: FrameDecoder::new(max_frame_len),
            outbox: Vec::new(),
        }
    }

    /// Reads once without blocking into the decoder. Returns whether bytes arrived.
    fn read_available(&mut self) -> bool {
        let spare = self.decoder.spare(READ_CHUNK);
        match self.sock.try_read(spare) {
            Ok(0) => {
                self.decoder.commit(READ_CHUNK, 0);
                self.open = false;
                false
            }
            Ok(n) => {
                self.decoder.commit(READ_CHUNK, n);
                true
            }
            Err(e) => {
                self.decoder.commit(READ_CHUNK, 0);
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) {
                    self.open = false;
                }
                false
            }
        }
    }

    fn flush(&mut self) {
        let mut written = 0;
        while written < self.outbox.len() {
            match self.sock.try_write(&self.outbox[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // The worker is gone; its exit is reported through `on_exit`.
                    written = self.outbox.len();
                }
            }
        }
        self.outbox.drain(..written);
    }
}

/// Where an execution's events go.
struct Sink {
    tx: mpsc::Sender<Event>,
    /// Events the consumer has not made room for yet, in order.
    backlog: VecDeque<Event>,
    backlog_bytes: usize,
    /// The consumer dropped its `Execution`: events are discarded.
    gone: bool,
}

impl Sink {
    fn new(tx: mpsc::Sender<Event>) -> Self {
        Sink {
            tx,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            gone: false,
        }
    }

    fn push(&mut self, event: Event) {
        if self.gone {
            return;
        }
        if !self.backlog.is_empty() {
            // Keep order: nothing overtakes what is already waiting.
            self.queue(event);
            return;
        }
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => self.gone = true,
            Err(mpsc::error::TrySendError::Full(event)) => self.queue(event),
        }
    }

    fn queue(&mut self, event: Event) {
        self.backlog_bytes += event_size(&event);
        self.backlog.push_back(event);
    }

    /// Moves backlog into the channel while it has room.
    fn flush(&mut self) {
        while let Some(event) = self.backlog.pop_front() {
            let size = event_size(&event);
            match self.tx.try_send(event) {
                Ok(()) => self.backlog_bytes -= size,
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.backlog.push_front(event);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.gone = true;
                    self.backlog.clear();
                    self.backlog_bytes = 0;
                    return;
                }
            }
        }
    }

    /// Hands the sink over after its terminal event: what the consumer has not taken yet is
    /// sent by a small task, so the actor can move on to the next execution.
    fn close(mut self) {
        self.flush();
        if self.gone || self.backlog.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for event in self.backlog {
                if self.tx.send(event).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn event_size(event: &Event) -> usize {
    match event {
        Event::Output { data, .. } => data.len(),
        _ => 64,
    }
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
    /// The output segment (markers passed) whose text belongs to this execution.
    owned_segment: u64,
    /// Its number on the worker (the SIGINT target).
    seq: u64,
}

struct Queued {
    id: String,
    code: String,
    timeout: Option<Duration>,
    sink: Sink,
}

/// What woke the actor.
enum Wake {
    Command(Option<Command>),
    OwnerShutdown,
    SocketReadable(usize),
    SocketWritable(usize),
    Pipe(usize),
    Exited(std::io::Result<ExitStatus>),
    ConsumerReady,
    Deadline,
}

struct Actor {
    id: String,
    /// Process group of the last worker that exited, checked empty before the actor ends.
    last_pid: Option<u32>,
    /// `SessionConfig::output_rate`: bytes per second read from the worker's pipes.
    output_limiter: Option<RateLimiter>,
    /// The output rate was exceeded: the pipes are not read until then.
    output_paused_until: Option<Instant>,
    /// Cancelled by the owner of the session (a pool shutting down): shut down gracefully.
    shutdown_token: CancellationToken,
    /// Terminal events delivered, shared with the handles for a lock-free read.
    executions: Arc<AtomicU64>,
    config: SessionConfig,
    interpreter: worker::Interpreter,
    cwd: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    state: watch::Sender<SessionState>,
    worker: Option<Worker>,
    current: Option<Running>,
    queue: VecDeque<Queued>,
    first_start: Option<oneshot::Sender<Result<String, Error>>>,
    restart_waiters: Vec<oneshot::Sender<Result<(), Error>>>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    closing: bool,
    dead_reason: Option<String>,
    created_at: f64,
    last_used_at: f64,
    execution_count: u64,
    error_count: u64,
    restarts: u64,
    timer_wakeups: u64,
    late_messages_dropped: u64,
    python_version: String,
    read_buf: Vec<u8>,
}

// ---- the futures raced in `run`; each is cancel-safe and pends forever when disabled ----

async fn readable(socket: Option<&UnixStream>) {
    match socket {
        Some(s) => {
            let _ = s.readable().await;
        }
        None => std::future::pending().await,
    }
}

async fn writable(socket: Option<&UnixStream>) {
    match socket {
        Some(s) => {
            let _ = s.writable().await;
        }
        None => std::future::pending().await,
    }
}

async fn pipe_readable(rx: Option<&pipe::Receiver>) {
    match rx {
        Some(rx) => {
            let _ = rx.readable().await;
        }
        None => std::future::pending().await,
    }
}

async fn exited(child: Option<&mut Child>) -> std::io::Result<ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

async fn consumer_ready(tx: Option<&mpsc::Sender<Event>>) {
    match tx {
        // The permit is dropped at once: it only tells that the channel has room again.
        Some(tx) => {
            let _ = tx.reserve().await;
        }
        None => std::future::pending().await,
    }
}

async fn deadline(at: Option<Instant>) {
    match at {
        // not polling: one timer for the earliest deadline the session has.
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self) {
        loop {
            if self.finished() {
                break;
            }
            let wake = self.wait().await;
            match wake {
                Wake::Command(Some(cmd)) => self.on_command(cmd),
                Wake::OwnerShutdown => self.begin_shutdown(),
                Wake::Command(None) => {
                    // Every handle is gone: nobody can use the session any more.
                    self.commands_open = false;
                    self.begin_shutdown();
                }
                Wake::SocketReadable(i) => self.on_socket_readable(i),
                Wake::SocketWritable(i) => {
                    if let Some(w) = &mut self.worker {
                        w.channels[i].flush();
                    }
                }
                Wake::Pipe(i) => self.on_pipe_readable(i),
                Wake::Exited(status) => self.on_exit(status),
                Wake::ConsumerReady => {
                    if let Some(run) = &mut self.current {
                        run.sink.flush();
                    }
                }
                Wake::Deadline => self.on_deadline(),
            }
        }
        // The worker was reaped, but a child it started may still be dying from the group
        // kill: "closed" means no process of the session is left.
        if let Some(pgid) = self.last_pid {
            if !worker::kill_group_and_wait(pgid, GROUP_EXIT_DEADLINE).await {
                tracing::warn!(session = %self.id, pgid, "processes of the session's group survived SIGKILL");
            }
        }
        self.state.send_replace(SessionState::Closed);
        for waiter in self.shutdown_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    fn finished(&self) -> bool {
        self.closing && self.worker.is_none()
    }

    async fn wait(&mut self) -> Wake {
        let next_deadline = self.next_deadline();
        let backlog_bytes = self.current.as_ref().map_or(0, |r| r.sink.backlog_bytes);
        let output_paused = self.output_paused_until;
        let consumer = self
            .current
            .as_ref()
            .filter(|r| !r.sink.backlog.is_empty() && !r.sink.gone)
            .map(|r| &r.sink.tx);
        let commands = &mut self.commands;
        let owner_shutdown = &self.shutdown_token;
        let closing = self.closing;
        let commands_open = self.commands_open;
        let (exec_r, control_r, exec_w, control_w, pipe0, pipe1, child) = match self.worker.as_mut()
        {
            Some(w) => {
                let reading_allowed = backlog_bytes < BACKLOG_LIMIT && output_paused.is_none();
                fn pipe_rx(p: &OutputPipe, reading_allowed: bool) -> Option<&pipe::Receiver> {
                    (reading_allowed && !p.eof && p.stray_bytes < STRAY_LIMIT).then_some(&p.rx)
                }
                let [p0, p1] = &w.pipes;
                let [ex, ctl] = &w.channels;
                (
                    ex.open.then_some(&ex.sock),
                    ctl.open.then_some(&ctl.sock),
                    (!ex.outbox.is_empty()).then_some(&ex.sock),
                    (!ctl.outbox.is_empty()).then_some(&ctl.sock),
                    pipe_rx(p0, reading_allowed),
                    pipe_rx(p1, reading_allowed),
                    Some(&mut w.child),
                )
            }
            None => (None, None, None, None, None, None, None),
        };
        tokio::select! {
            cmd = commands.recv(), if commands_open => Wake::Command(cmd),
            _ = owner_shutdown.cancelled(), if !closing => Wake::OwnerShutdown,
            _ = pipe_readable(pipe0) => Wake::Pipe(0),
            _ = pipe_readable(pipe1) => Wake::Pipe(1),
            _ = readable(exec_r) => Wake::SocketReadable(EXEC),
            _ = readable(control_r) => Wake::SocketReadable(CONTROL),
            _ = writable(exec_w) => Wake::SocketWritable(EXEC),
            _ = writable(control_w) => Wake::SocketWritable(CONTROL),
            status = exited(child) => Wake::Exited(status),
            _ = consumer_ready(consumer) => Wake::ConsumerReady,
            _ = deadline(next_deadline) => Wake::Deadline,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
        };
        consider(self.output_paused_until);
        if let Some(w) = &self.worker {
            consider((!w.ready && w.exit_cause.is_none()).then_some(w.start_deadline));
            consider(w.kill_deadline);
        }
        if let Some(run) = &self.current {
            match &run.cancel {
                Some(c) => consider(Some(c.deadline)),
                None => consider(run.deadline),
            }
        }
        earliest
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
        let spec = WorkerSpec {
            interpreter: self.interpreter.clone(),
            env: self.config.env.clone(),
            cwd: self.cwd.clone(),
            session_id: self.id.clone(),
            marker_token: uuid::Uuid::new_v4().simple().to_string(),
        };
        match worker::spawn(&spec) {
            Ok(spawned) => {
                let SpawnedWorker {
                    child,
                    pid,
                    exec,
                    control,
                    signal_target,
                    stdout,
                    stderr,
                } = spawned;
                self.worker = Some(Worker {
                    child,
                    pid,
                    channels: [
                        Channel::new(exec, self.config.max_frame_len),
                        Channel::new(control, self.config.max_frame_len),
                    ],
                    signal_target,
                    last_seq: 0,
                    pipes: [
                        OutputPipe::new(StreamName::Stdout, stdout, &spec.marker_token),
                        OutputPipe::new(StreamName::Stderr, stderr, &spec.marker_token),
                    ],
                    ready: false,
                    // not polling: a deadline, raced in the one sleep_until of `wait`.
                    start_deadline: crate::time::deadline(
                        Instant::now(),
                        self.config.start_timeout,
                    ),
                    markers_expected: 0,
                    held: VecDeque::new(),
                    exit_cause: None,
                    kill_deadline: None,
                    heartbeats: HashMap::new(),
                    is_complete_waiters: HashMap::new(),
                });
            }
            Err(e) => self.start_failed(e),
        }
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
        for queued in self.queue.drain(..) {
            let mut sink = queued.sink;
            sink.push(Event::error(
                "SessionDead",
                format!("the session's worker is dead ({reason}); the code did not run"),
            ));
            sink.close();
        }
        if !self.closing {
            self.set_state(SessionState::Dead);
        }
    }

    /// Kills the worker's process group; what follows is decided by `cause` once the exit is
    /// observed in `on_exit`.
    fn kill_worker(&mut self, cause: ExitCause) {
        if let Some(w) = &mut self.worker {
            if w.exit_cause.is_none() {
                w.exit_cause = Some(cause);
            }
            worker::kill_group(w.pid, libc::SIGKILL);
        }
    }

    fn on_exit(&mut self, status: std::io::Result<ExitStatus>) {
        let Some(w) = self.worker.as_mut() else {
            return;
        };
        // Sweep the group: children of user code do not outlive the worker.
        worker::kill_group(w.pid, libc::SIGKILL);
        self.last_pid = Some(w.pid);
        let cause = w.exit_cause.get_or_insert(ExitCause::Unexpected).clone();
        let was_ready = w.ready;
        let status_text = match status {
            Ok(status) => worker::describe_exit(status),
            Err(e) => format!("could not be waited for: {e}"),
        };

        // What the worker wrote is complete now: take all of it, and release any ordered
        // message that was only waiting for its markers.
        for i in 0..2 {
            let mut items = Vec::new();
            if let Some(w) = self.worker.as_mut() {
                w.pipes[i].drain_now(&mut self.read_buf, &mut items);
            }
            self.route_items(i, items);
        }
        self.read_channels_now();
        if let Some(w) = self.worker.as_mut() {
            for pipe in &mut w.pipes {
                pipe.eof = true;
            }
        }
        self.release_held();
        let Some(mut w) = self.worker.take() else {
            return;
        };
        // Output that never found its owner goes to the execution that is ending, or, when
        // the worker never got ready, explains why.
        let mut leftover = [Vec::new(), Vec::new()];
        for (i, pipe) in w.pipes.iter_mut().enumerate() {
            leftover[i] = pipe.take_all_stray();
        }
        drop(w);
        if !was_ready {
            let error = match cause {
                ExitCause::StartTimeout => Error::StartTimeout(self.config.start_timeout),
                _ => {
                    let text = leftover.concat().concat();
                    Error::StartFailed {
                        status: status_text,
                        stderr: worker::stderr_excerpt(text.as_bytes()),
                    }
                }
            };
            self.on_start_failure(error);
            return;
        }

        let (restart, event) = exit_consequence(&cause, &status_text, self.config.timeout_grace);
        if let Some(mut run) = self.current.take() {
            for (texts, stream) in leftover
                .into_iter()
                .zip([StreamName::Stdout, StreamName::Stderr])
            {
                for text in texts {
                    run.sink.push(Event::Output { stream, data: text });
                }
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
            self.last_used_at = unix_now();
            run.sink.push(event);
            run.sink.close();
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
                _ => format!("worker {status_text}"),
            };
            self.mark_dead(reason);
        }
    }

    fn on_start_failure(&mut self, error: Error) {
        if self.closing {
            // Shut down while starting: not a failure anyone waits for.
            if let Some(first) = self.first_start.take() {
                let _ = first.send(Err(Error::SessionClosed));
            }
            return;
        }
        self.start_failed(error);
    }

    fn on_ready(&mut self, ready: protocol::Ready) {
        let Some(w) = &mut self.worker else { return };
        if w.ready {
            return;
        }
        w.ready = true;
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
        self.pump();
    }

    fn begin_shutdown(&mut self) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.set_state(SessionState::ShuttingDown);
        for queued in self.queue.drain(..) {
            let mut sink = queued.sink;
            sink.push(Event::error(
                "SessionShutdown",
                "the session was shut down before this code ran",
            ));
            sink.close();
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
            // not polling: a deadline, raced in the one sleep_until of `wait`.
            w.kill_deadline = Some(crate::time::deadline(Instant::now(), grace));
        }
        self.send(Message::Shutdown(protocol::Shutdown {
            id: new_id(),
            reason: "session shutdown".into(),
            checkpoint: false,
        }));
    }

    // ---- commands ----

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Execute {
                id,
                code,
                timeout,
                events,
            } => {
                let mut sink = Sink::new(events);
                if self.closing {
                    sink.push(Event::error("SessionClosed", "the session is shut down"));
                    return;
                }
                if let Some(reason) = &self.dead_reason {
                    if self.worker.is_none() {
                        sink.push(Event::error(
                            "SessionDead",
                            format!(
                                "the session's worker is dead ({reason}); restart the session first"
                            ),
                        ));
                        return;
                    }
                }
                self.queue.push_back(Queued {
                    id,
                    code,
                    timeout: timeout.or(self.config.default_timeout),
                    sink,
                });
                self.pump();
            }
            Command::InputResponse {
                input_id,
                data,
                reply,
            } => {
                let known = self
                    .current
                    .as_mut()
                    .is_some_and(|run| run.pending_inputs.remove(&input_id));
                if known {
                    self.send(Message::InputResponse(protocol::InputResponse {
                        id: new_id(),
                        input_id,
                        data,
                    }));
                    let _ = reply.send(Ok(()));
                } else {
                    let _ = reply.send(Err(Error::UnknownInput(input_id)));
                }
            }
            Command::Cancel {
                execution_id,
                grace,
                reply,
            } => self.cancel(execution_id, grace, reply),
            Command::CancelAll { grace, reply } => {
                let queued: Vec<String> = self.queue.iter().map(|q| q.id.clone()).collect();
                for id in queued {
                    self.remove_queued(&id);
                }
                match self.current.as_ref().map(|r| r.id.clone()) {
                    Some(id) => self.cancel(id, grace, reply),
                    None => {
                        let _ = reply.send(CancelOutcome::NotRunning);
                    }
                }
            }
            Command::Interrupt {
                execution_id,
                force_restart,
                reply,
            } => {
                let outcome = self.interrupt(&execution_id, force_restart);
                let _ = reply.send(Ok(outcome));
            }
            Command::Restart { reply } => {
                if self.closing {
                    let _ = reply.send(Err(Error::SessionClosed));
                    return;
                }
                self.restart_waiters.push(reply);
                match &self.worker {
                    Some(w) if w.exit_cause.is_some() => {} // already going; on_exit restarts or fails
                    Some(_) => self.kill_worker(ExitCause::Restart),
                    None => {
                        self.restarts += 1;
                        self.set_state(SessionState::Restarting);
                        self.start_worker();
                    }
                }
            }
            Command::Shutdown { reply } => {
                self.shutdown_waiters.push(reply);
                self.begin_shutdown();
            }
            Command::Info { reply } => {
                let _ = reply.send(self.info());
            }
            Command::Heartbeat { reply } => {
                let id = new_id();
                let ready = self.worker.as_ref().is_some_and(|w| w.ready);
                if ready {
                    if let Some(w) = &mut self.worker {
                        w.heartbeats.retain(|_, waiter| !waiter.is_closed());
                        w.heartbeats.insert(id.clone(), reply);
                    }
                    self.send(Message::Heartbeat(Heartbeat {
                        id,
                        ..Heartbeat::default()
                    }));
                }
            }
            Command::IsComplete { code, reply } => {
                // Not ready: the reply is dropped, which the handle reports.
                let Some(w) = self.worker.as_mut().filter(|w| w.ready) else {
                    return;
                };
                let id = new_id();
                w.is_complete_waiters
                    .retain(|_, waiter| !waiter.is_closed());
                w.is_complete_waiters.insert(id.clone(), reply);
                self.send(Message::IsComplete(protocol::IsComplete { id, code }));
            }
        }
    }

    fn cancel(
        &mut self,
        execution_id: String,
        grace: Duration,
        reply: oneshot::Sender<CancelOutcome>,
    ) {
        if self.remove_queued(&execution_id) {
            let _ = reply.send(CancelOutcome::Cancelled);
            return;
        }
        let Some(run) = self.current.as_mut().filter(|r| r.id == execution_id) else {
            let _ = reply.send(CancelOutcome::NotRunning);
            return;
        };
        // not polling: a deadline, raced in the one sleep_until of `wait`.
        let deadline = crate::time::deadline(Instant::now(), grace);
        match &mut run.cancel {
            Some(cancel) => {
                cancel.replies.push(reply);
                cancel.deadline = cancel.deadline.min(deadline);
            }
            None => {
                run.cancel = Some(CancelState {
                    deadline,
                    timed_out: false,
                    replies: vec![reply],
                });
                self.interrupt_worker();
            }
        }
    }

    fn interrupt(&mut self, execution_id: &str, force_restart: bool) -> InterruptOutcome {
        if self.remove_queued(execution_id) {
            return InterruptOutcome::Interrupted;
        }
        if self.current.as_ref().is_none_or(|r| r.id != execution_id) {
            return InterruptOutcome::NotRunning;
        }
        if force_restart {
            self.kill_worker(ExitCause::ForcedInterrupt);
            return InterruptOutcome::Restarted;
        }
        self.interrupt_worker();
        InterruptOutcome::Interrupted
    }

    /// Removes a queued (not yet started) execution, ending it with an error event.
    fn remove_queued(&mut self, execution_id: &str) -> bool {
        let Some(pos) = self.queue.iter().position(|q| q.id == execution_id) else {
            return false;
        };
        if let Some(queued) = self.queue.remove(pos) {
            let mut sink = queued.sink;
            sink.push(Event::error(
                "ExecutionCancelled",
                "cancelled before it started; it did not run",
            ));
            sink.close();
        }
        true
    }

    fn info(&self) -> SessionInfo {
        SessionInfo {
            id: self.id.clone(),
            state: *self.state.borrow(),
            pid: self.worker.as_ref().map(|w| w.pid),
            python_version: self.python_version.clone(),
            cwd: self.cwd.clone(),
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            execution_count: self.execution_count,
            error_count: self.error_count,
            queued: self.queue.len(),
            restarts: self.restarts,
            rss_bytes: None,
            cpu_time_secs: None,
            namespace_size: None,
            timer_wakeups: self.timer_wakeups,
            late_messages_dropped: self.late_messages_dropped,
            dead_reason: self.dead_reason.clone(),
        }
    }

    /// Starts the next queued execution if the worker is free.
    fn pump(&mut self) {
        if self.current.is_some() || self.closing {
            return;
        }
        let Some(w) = &mut self.worker else { return };
        if !w.ready || w.exit_cause.is_some() {
            return;
        }
        let Some(queued) = self.queue.pop_front() else {
            return;
        };
        // Every marked message is delivered by now, so both pipes are at this marker count.
        let segment = w.markers_expected;
        w.last_seq += 1;
        let seq = w.last_seq;
        let mut run = Running {
            id: queued.id.clone(),
            sink: queued.sink,
            timeout: queued.timeout,
            // not polling: a deadline, raced in the one sleep_until of `wait`.
            deadline: queued
                .timeout
                .map(|t| crate::time::deadline(Instant::now(), t)),
            cancel: None,
            pending_inputs: HashSet::new(),
            owned_segment: segment,
            seq,
        };
        // Output written between executions (background threads, children) comes first.
        for pipe in &mut w.pipes {
            let stream = pipe.stream;
            for text in pipe.take_stray_through(segment) {
                run.sink.push(Event::Output { stream, data: text });
            }
        }
        self.current = Some(run);
        self.set_state(SessionState::Busy);
        self.send(Message::Execute(protocol::Execute {
            id: queued.id,
            code: queued.code,
            seq,
            transaction_id: None,
            transaction_policy: protocol::TransactionPolicy::CommitAlways,
            capture_source: false,
        }));
    }

    // ---- deadlines ----

    fn on_deadline(&mut self) {
        self.timer_wakeups += 1;
        let now = Instant::now();
        if self.output_paused_until.is_some_and(|at| at <= now) {
            self.output_paused_until = None;
        }
        let mut kill: Option<ExitCause> = None;
        if let Some(w) = &mut self.worker {
            if !w.ready && w.exit_cause.is_none() && w.start_deadline <= now {
                kill = Some(ExitCause::StartTimeout);
            }
            if w.kill_deadline.is_some_and(|at| at <= now) {
                w.kill_deadline = None;
                worker::kill_group(w.pid, libc::SIGKILL);
            }
        }
        let grace = self.config.timeout_grace;
        let mut send_cancel = false;
        if let Some(run) = &mut self.current {
            match &run.cancel {
                Some(cancel) if cancel.deadline <= now => {
                    kill = Some(ExitCause::CancelGraceExpired {
                        timed_out: cancel.timed_out,
                    });
                }
                Some(_) => {}
                None if run.deadline.is_some_and(|at| at <= now) => {
                    run.cancel = Some(CancelState {
                        // not polling: a deadline, raced in the one sleep_until of `wait`.
                        deadline: crate::time::deadline(now, grace),
                        timed_out: true,
                        replies: Vec::new(),
                    });
                    send_cancel = true;
                }
                None => {}
            }
        }
        if send_cancel {
            self.interrupt_worker();
        }
        if let Some(cause) = kill {
            self.kill_worker(cause);
        }
    }

    // ---- the protocol channels ----

    /// KeyboardInterrupt for the running code: SIGINT straight to the worker's main thread.
    /// Sent only while the host's current execution runs; one that lands after the code
    /// returned is absorbed by the agent (protocol.md).
    fn interrupt_worker(&mut self) {
        if let (Some(w), Some(run)) = (&self.worker, &self.current) {
            worker::interrupt_main_thread(w.pid, &w.signal_target, run.seq);
        }
    }

    fn send(&mut self, msg: Message) {
        let Some(w) = &mut self.worker else { return };
        let channel = match msg {
            Message::Execute(_) => &mut w.channels[EXEC],
            _ => &mut w.channels[CONTROL],
        };
        if let Err(e) = msg.encode_into(&mut channel.outbox) {
            tracing::error!(session = %self.id, error = %e, "could not encode a message for the worker");
            return;
        }
        channel.flush();
    }

    fn on_socket_readable(&mut self, i: usize) {
        let Some(w) = self.worker.as_mut() else {
            return;
        };
        if w.channels[i].read_available() {
            self.decode_frames(i);
        }
    }

    /// Reads whatever is left on the channels of an exited worker.
    fn read_channels_now(&mut self) {
        for i in [EXEC, CONTROL] {
            while let Some(w) = self.worker.as_mut().filter(|w| w.channels[i].open) {
                if w.channels[i].read_available() {
                    self.decode_frames(i);
                } else {
                    w.channels[i].open = false;
                }
            }
        }
    }

    fn decode_frames(&mut self, i: usize) {
        loop {
            let Some(w) = self.worker.as_mut() else {
                return;
            };
            match w.channels[i].decoder.next_message() {
                Ok(Some(msg)) => self.on_frame(msg),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(session = %self.id, error = %e, "protocol error from the worker");
                    for channel in &mut w.channels {
                        channel.open = false;
                    }
                    if w.exit_cause.is_none() {
                        w.exit_cause = Some(ExitCause::Protocol(e.to_string()));
                    }
                    worker::kill_group(w.pid, libc::SIGKILL);
                    return;
                }
            }
        }
    }

    fn on_frame(&mut self, msg: Message) {
        let Some(w) = self.worker.as_mut() else {
            return;
        };
        match msg {
            Message::Ready(ready) => self.on_ready(ready),
            Message::Input(_) | Message::Result(_) | Message::Error(_) => {
                if is_marked(&msg) {
                    w.markers_expected += 1;
                }
                let seq = w.markers_expected;
                if let Some(run) = &mut self.current {
                    // The code stopped: a cancel in progress has succeeded, whenever the
                    // terminal message gets delivered.
                    if terminal_execution_id(&msg) == Some(run.id.as_str()) {
                        if let Some(cancel) = &mut run.cancel {
                            for reply in cancel.replies.drain(..) {
                                let _ = reply.send(CancelOutcome::Cancelled);
                            }
                        }
                    }
                }
                w.held.push_back((seq, msg));
                self.release_held();
            }
            Message::Heartbeat(beat) => {
                if let Some(waiter) = beat
                    .in_reply_to
                    .as_ref()
                    .and_then(|id| w.heartbeats.remove(id))
                {
                    let _ = waiter.send(beat);
                }
            }
            Message::IsCompleteReply(answer) => {
                if let Some(waiter) = w.is_complete_waiters.remove(&answer.in_reply_to) {
                    let _ = waiter.send(answer);
                }
            }
            other => {
                tracing::warn!(session = %self.id, kind = other.type_name(), "unexpected message from the worker, ignored");
            }
        }
    }

    // ---- output routing ----

    fn on_pipe_readable(&mut self, i: usize) {
        let Some(w) = self.worker.as_mut() else {
            return;
        };
        let mut items = Vec::new();
        let limit = self
            .output_limiter
            .as_ref()
            .map_or(READ_CHUNK, |l| (l.burst() as usize).clamp(1, READ_CHUNK));
        let before = w.pipes[i].bytes_read;
        w.pipes[i].read_available(&mut self.read_buf[..limit], &mut items);
        let read = w.pipes[i].bytes_read - before;
        if let Some(limiter) = &self.output_limiter {
            // Over the rate: stop reading both pipes until the debt is paid. The pipes fill
            // and the worker blocks in write(): it is slowed down, nothing is dropped.
            if let Ok(Some(due)) = limiter.reserve(read as u32) {
                self.output_paused_until = Some(due);
            }
        }
        self.route_items(i, items);
    }

    /// Sends each piece of text to the execution that owns its segment, or keeps it as stray.
    fn route_items(&mut self, i: usize, items: Vec<PipeItem>) {
        let Some(w) = self.worker.as_mut() else {
            return;
        };
        let pipe = &mut w.pipes[i];
        let stream = pipe.stream;
        let mut passed_marker = false;
        for item in items {
            match item {
                PipeItem::Text { segment, text } => match &mut self.current {
                    Some(run) if run.owned_segment == segment => {
                        run.sink.push(Event::Output { stream, data: text });
                    }
                    _ => pipe.push_stray(segment, text),
                },
                PipeItem::Marker => passed_marker = true,
            }
        }
        if passed_marker {
            self.release_held();
        }
    }

    /// Delivers held ordered messages whose markers both pipes have passed.
    fn release_held(&mut self) {
        loop {
            let Some(w) = self.worker.as_mut() else {
                return;
            };
            let Some((seq, _)) = w.held.front() else {
                return;
            };
            let seq = *seq;
            if !w.pipes.iter().all(|p| p.eof || p.markers >= seq) {
                return;
            }
            let Some((_, msg)) = w.held.pop_front() else {
                return;
            };
            if !is_marked(&msg) {
                // No marker follows the text read so far, so a trailing fragment held as a
                // possible marker start is plain text: route it before this message.
                for i in 0..2 {
                    let mut items = Vec::new();
                    if let Some(w) = self.worker.as_mut() {
                        w.pipes[i].release_held(&mut items);
                    }
                    self.route_items(i, items);
                }
            }
            self.deliver_ordered(seq, msg);
        }
    }

    fn deliver_ordered(&mut self, seq: u64, msg: Message) {
        let belongs = |run: &Running| terminal_or_input_execution(&msg) == Some(run.id.as_str());
        let (Some(run), Some(w)) = (
            self.current.as_mut().filter(|r| belongs(r)),
            self.worker.as_mut(),
        ) else {
            self.late_messages_dropped += 1;
            tracing::debug!(session = %self.id, kind = msg.type_name(), "message for an execution that already ended, dropped");
            return;
        };
        match msg {
            Message::Input(req) => {
                // The code continues after the answer: text after this marker is its own.
                run.owned_segment = seq;
                for pipe in &mut w.pipes {
                    let stream = pipe.stream;
                    for text in pipe.take_stray_through(seq) {
                        run.sink.push(Event::Output { stream, data: text });
                    }
                }
                run.pending_inputs.insert(req.id.clone());
                run.sink.push(Event::Input {
                    input_id: req.id,
                    prompt: req.prompt,
                    password: req.password,
                });
            }
            Message::Result(r) => {
                let event = match &run.cancel {
                    Some(cancel) if cancel.timed_out => timeout_event(run.timeout, None),
                    _ => Event::Result {
                        value: r.value,
                        repr: r.repr,
                        execution_time: crate::time::clamped_duration(r.execution_time),
                    },
                };
                self.finish_current(event);
            }
            Message::Error(e) => {
                let event = match &run.cancel {
                    Some(cancel) if cancel.timed_out => {
                        timeout_event(run.timeout, Some(e.traceback))
                    }
                    _ => Event::Error {
                        exception_type: e.exception_type,
                        exception_message: e.exception_message,
                        traceback: e.traceback,
                    },
                };
                self.finish_current(event);
            }
            _ => {}
        }
    }

    fn count_execution(&mut self, failed: bool) {
        self.execution_count += 1;
        self.executions
            .store(self.execution_count, Ordering::Relaxed);
        if failed {
            self.error_count += 1;
        }
    }

    fn finish_current(&mut self, event: Event) {
        let Some(mut run) = self.current.take() else {
            return;
        };
        self.count_execution(matches!(event, Event::Error { .. }));
        self.last_used_at = unix_now();
        run.sink.push(event);
        run.sink.close();
        if !self.closing {
            self.set_state(SessionState::Idle);
        }
        self.pump();
    }
}

/// After the worker exited for `cause`: whether a fresh worker replaces it, and the error
/// that ends the execution that was running.
fn exit_consequence(cause: &ExitCause, status: &str, timeout_grace: Duration) -> (bool, Event) {
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
        ExitCause::Restart => (
            true,
            Event::error(
                "SessionRestarted",
                "the session was restarted while this code ran; the namespace is lost",
            ),
        ),
        ExitCause::StartTimeout | ExitCause::Shutdown => (
            false,
            Event::error("SessionShutdown", "the session was shut down while this code ran"),
        ),
    }
}

fn timeout_event(timeout: Option<Duration>, traceback: Option<String>) -> Event {
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
    }
}

fn terminal_execution_id(msg: &Message) -> Option<&str> {
    match msg {
        Message::Result(r) => Some(&r.execution_id),
        Message::Error(e) => e.execution_id.as_deref(),
        _ => None,
    }
}

fn terminal_or_input_execution(msg: &Message) -> Option<&str> {
    match msg {
        Message::Input(i) => Some(&i.execution_id),
        other => terminal_execution_id(other),
    }
}

/// Whether an ordered message was preceded by markers (older agents always marked).
fn is_marked(msg: &Message) -> bool {
    match msg {
        Message::Input(m) => m.marked,
        Message::Result(m) => m.marked,
        Message::Error(m) => m.marked,
        _ => true,
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
