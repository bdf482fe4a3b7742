//! The session actor: one task per session that owns the I/O of the session — the worker
//! process, its two protocol channels (framed by `MessageCodec`), its output pipes, the output
//! rate limit and the handles' command channel — and feeds what happens to the [`Core`],
//! then carries out the core's effects. It waits in a single `select!` on: commands, the
//! owner's shutdown, both pipes, both channels (read, and write while frames are pending), the
//! worker's exit (pidfd), the consumer's channel (when it is behind), and one `sleep_until`
//! for the earliest deadline. Nothing here wakes up unless one of those happened.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use tokio::net::unix::{pipe, OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::core::{Core, Effect, Input};
use super::requests::Command;
use super::{Event, Scope, SessionConfig, SessionState};
use crate::error::Error;
use crate::protocol::{Message, MessageCodec, ProtocolError};
use crate::ratelimit::RateLimiter;
use crate::rundir::SessionDir;
use crate::worker::{self, Stragglers, WorkerProcess, WorkerSpec};

use super::live_worker::{ChannelRead, LiveWorker, CONTROL, EXEC};

mod processes;

const READ_CHUNK: usize = 64 * 1024;
/// How long the processes left in a closed session's group may take to die after SIGKILL.
const GROUP_EXIT_DEADLINE: Duration = Duration::from_secs(2);

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
        std::path::PathBuf,
    ),
    Error,
> {
    let interpreter = worker::prepare_interpreter(&config.python, config.start_timeout).await?;
    let (workdir, cwd) = match &config.cwd {
        Some(dir) => (None, dir.clone()),
        None => {
            let dir = SessionDir::create().await?;
            let path = dir.path().to_path_buf();
            (Some(dir), path)
        }
    };
    // As root, every session runs as a uid of its own, which owns its working directory.
    let uid_lease = match &config.sandbox {
        Some(sandbox) if worker::host_is_root() => Some(worker::UidLease::take(sandbox.uid_range)?),
        _ => None,
    };
    if let (Some(lease), Some(dir)) = (&uid_lease, &workdir) {
        std::os::unix::fs::chown(dir.path(), Some(lease.uid()), Some(lease.uid())).map_err(
            Error::io("giving the session's directory to its sandbox uid"),
        )?;
    }
    let sandbox = config.sandbox.clone().map(|config| worker::WorkerSandbox {
        config,
        uid: uid_lease.as_ref().map(worker::UidLease::uid),
    });
    let id = config
        .session_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(SessionState::Starting);
    let (ready_tx, ready_rx) = oneshot::channel();
    let executions = Arc::new(AtomicU64::new(0));
    let output_limiter = config
        .output_rate
        .map(|rate| RateLimiter::new(rate.bytes_per_second, rate.burst_bytes.max(1)));
    // Every process of the session goes into its cgroup, where the host can make one.
    let cgroup = match worker::SessionCgroup::create(&id).await {
        Ok(cgroup) => {
            let set = cgroup
                .set_max_processes(config.limits.processes)
                .and_then(|()| cgroup.set_max_memory(config.limits.session_memory_bytes));
            match set {
                Ok(()) => Some(cgroup),
                Err(e) => {
                    tracing::debug!(session = %id, error = %e, "no cgroup limits for the session");
                    cgroup.remove().await;
                    None
                }
            }
        }
        Err(e) => {
            tracing::debug!(session = %id, error = %e, "no cgroup for the session");
            None
        }
    };
    // What info reports is what is in force: no cgroup, no process limit.
    let mut config = config;
    config.limits.processes = cgroup.as_ref().and_then(|c| c.max_processes());
    config.limits.session_memory_bytes = cgroup.as_ref().and_then(|c| c.max_memory());
    let mut env = config.env.clone();
    // A session with a directory of its own gets a package prefix in it (docs/api.md,
    // "Packages per session"); one working in a directory of the caller's (`exec`) does not.
    if workdir.is_some() {
        let packages = cwd.join(super::environment::PACKAGES_SUBDIR);
        let packages = packages.to_string_lossy().into_owned();
        env.push((super::environment::PACKAGES_VAR.to_string(), packages));
    }
    let spec = WorkerSpec {
        cgroup_procs: cgroup
            .as_ref()
            .map(worker::SessionCgroup::procs_fds)
            .unwrap_or_default(),
        interpreter,
        env,
        inherit_env: config.inherit_env,
        limits: config.limits,
        cwd: cwd.clone(),
        sandbox: sandbox.clone(),
        session_id: id.clone(),
        marker_token: String::new(),
    };
    let max_frame_len = config.max_frame_len;
    let directory = cwd.clone();
    let core = Core::new(
        id.clone(),
        config,
        cwd,
        state_tx,
        executions.clone(),
        ready_tx,
    );
    let mut core = core;
    let processes = match cgroup.as_ref().map(worker::SessionCgroup::version) {
        Some("v2") => "cgroup v2",
        Some(_) => "cgroup v1",
        None => "process group",
    };
    core.set_containment(match &sandbox {
        Some(sandbox) => format!("{}, {processes}", worker::describe_sandbox(sandbox)),
        None => processes.to_string(),
    });
    let mut actor = Actor {
        core,
        id,
        spec,
        max_frame_len,
        commands,
        commands_open: true,
        shutdown_token: scope.token,
        worker: None,
        stragglers: Stragglers::default(),
        output_limiter,
        output_paused_until: None,
        read_buf: vec![0; READ_CHUNK],
        workdir,
        cgroup,
        _uid_lease: uid_lease,
        oom_kills_seen: 0,
    };
    // The first worker starts now, so that a spawn error is the caller's error.
    actor.apply_effects().await;
    scope.tracker.spawn(actor.run());
    Ok((commands_tx, state_rx, executions, ready_rx, directory))
}

/// What woke the actor.
enum Wake {
    Command(Option<Command>),
    OwnerShutdown,
    Frame(usize, Option<Result<Message, ProtocolError>>),
    Flushed(usize, Result<(), ProtocolError>),
    Pipe(usize),
    Exited,
    ConsumerReady,
    Deadline,
}

struct Actor {
    core: Core,
    id: String,
    /// How to start a worker (the marker token is the core's, per worker).
    spec: WorkerSpec,
    max_frame_len: usize,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    /// Cancelled by the owner of the session (a pool shutting down): shut down gracefully.
    shutdown_token: CancellationToken,
    worker: Option<LiveWorker>,
    /// Processes of exited workers' groups that were killed and may still be dying.
    stragglers: Stragglers,
    /// `SessionConfig::output_rate`: bytes per second read from the worker's pipes.
    output_limiter: Option<RateLimiter>,
    /// The output rate was exceeded: the pipes are not read until then.
    output_paused_until: Option<Instant>,
    read_buf: Vec<u8>,
    /// The session's own working directory (none with a configured `cwd`), removed on the
    /// blocking pool once the session has ended.
    workdir: Option<SessionDir>,
    /// The session's cgroups (every process of it); emptied and removed at the end.
    cgroup: Option<worker::SessionCgroup>,
    /// As root, the sandbox uid every worker of the session runs as; released last (after
    /// the session's processes and directory are gone).
    _uid_lease: Option<worker::UidLease>,
    /// OOM kills in the session's memory cgroup already accounted for.
    oom_kills_seen: u64,
}

// ---- the futures raced in `wait`; each is cancel-safe and pends forever when disabled ----

async fn next_frame(
    reader: Option<&mut FramedRead<OwnedReadHalf, MessageCodec>>,
) -> Option<Result<Message, ProtocolError>> {
    match reader {
        // Cancel-safe: a partial frame stays in the FramedRead's buffer.
        Some(r) => r.next().await,
        None => std::future::pending().await,
    }
}

async fn flushed(
    writer: Option<&mut FramedWrite<OwnedWriteHalf, MessageCodec>>,
) -> Result<(), ProtocolError> {
    match writer {
        // Cancel-safe: unwritten bytes stay in the FramedWrite's buffer.
        Some(w) => w.flush().await,
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

async fn exited(process: Option<&WorkerProcess>) {
    match process {
        Some(p) => p.exited().await,
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

impl Actor {
    async fn run(mut self) {
        while !self.core.finished() {
            let wake = self.wait().await;
            let now = Instant::now();
            match wake {
                Wake::Command(Some(Command::SetLimits { limits, reply })) => {
                    let _ = reply.send(self.set_limits(limits));
                }
                Wake::Command(Some(cmd)) => self.core.handle(Input::Command(cmd), now),
                Wake::OwnerShutdown => self.core.handle(Input::Shutdown, now),
                Wake::Command(None) => {
                    // Every handle is gone: nobody can use the session any more.
                    self.commands_open = false;
                    self.core.handle(Input::Shutdown, now);
                }
                Wake::Frame(i, frame) => self.on_frame(i, frame, now),
                Wake::Flushed(i, result) => {
                    if let (Err(_), Some(w)) = (result, &mut self.worker) {
                        // The worker is gone; its exit is reported through the pidfd.
                        w.writers[i].write_buffer_mut().clear();
                    }
                }
                Wake::Pipe(i) => self.on_pipe_readable(i, now),
                Wake::Exited => self.on_exit().await,
                Wake::ConsumerReady => self.core.handle(Input::ConsumerReady, now),
                Wake::Deadline => {
                    if self.output_paused_until.is_some_and(|at| at <= now) {
                        self.output_paused_until = None;
                    }
                    self.core.handle(Input::Deadline, now);
                }
            }
            self.apply_effects().await;
        }
        // The workers were reaped, but a child one started may still be dying from the group
        // kill: "closed" means no process of the session is left.
        let stragglers = std::mem::take(&mut self.stragglers);
        if !stragglers.wait_gone(GROUP_EXIT_DEADLINE).await {
            tracing::warn!(session = %self.id, "processes of the session's group survived SIGKILL");
        }
        // Processes that left the worker's group (`setsid`) are still in the cgroup.
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove().await;
        }
        // Possibly a large tree: removed on the blocking pool while this task waits, so no
        // other session stalls; "closed" still means nothing of the session is left.
        if let Some(dir) = self.workdir.take() {
            dir.remove().await;
        }
        self.core.set_closed();
        for waiter in self.core.take_shutdown_waiters() {
            let _ = waiter.send(());
        }
    }

    async fn wait(&mut self) -> Wake {
        let deadline = [self.core.next_deadline(), self.output_paused_until]
            .into_iter()
            .flatten()
            .min();
        let reading_allowed = self.output_paused_until.is_none();
        let core = &self.core;
        let consumer = core.consumer_behind();
        let commands = &mut self.commands;
        let owner_shutdown = &self.shutdown_token;
        let closing = core.closing();
        let commands_open = self.commands_open;
        let (exec_r, control_r, exec_w, control_w, pipe0, pipe1, process) =
            match self.worker.as_mut() {
                Some(w) => {
                    fn pipe(p: &Option<pipe::Receiver>, readable: bool) -> Option<&pipe::Receiver> {
                        p.as_ref().filter(|_| readable)
                    }
                    let [p0, p1] = &w.pipes;
                    let [er, cr] = &mut w.readers;
                    let [ew, cw] = &mut w.writers;
                    (
                        er.as_mut(),
                        cr.as_mut(),
                        (!ew.write_buffer().is_empty()).then_some(ew),
                        (!cw.write_buffer().is_empty()).then_some(cw),
                        pipe(p0, reading_allowed && core.wants_output(0)),
                        pipe(p1, reading_allowed && core.wants_output(1)),
                        Some(&w.process),
                    )
                }
                None => (None, None, None, None, None, None, None),
            };
        tokio::select! {
            cmd = commands.recv(), if commands_open => Wake::Command(cmd),
            _ = owner_shutdown.cancelled(), if !closing => Wake::OwnerShutdown,
            _ = pipe_readable(pipe0) => Wake::Pipe(0),
            _ = pipe_readable(pipe1) => Wake::Pipe(1),
            frame = next_frame(exec_r) => Wake::Frame(EXEC, frame),
            frame = next_frame(control_r) => Wake::Frame(CONTROL, frame),
            result = flushed(exec_w) => Wake::Flushed(EXEC, result),
            result = flushed(control_w) => Wake::Flushed(CONTROL, result),
            _ = exited(process) => Wake::Exited,
            _ = consumer_ready(consumer) => Wake::ConsumerReady,
            _ = crate::time::sleep_until_opt(deadline) => Wake::Deadline,
        }
    }

    /// Carries out what the core decided, including what follows from carrying it out.
    async fn apply_effects(&mut self) {
        loop {
            let effects = self.core.take_effects();
            if effects.is_empty() {
                return;
            }
            for effect in effects {
                match effect {
                    Effect::SpawnWorker { marker_token } => self.spawn_worker(marker_token).await,
                    Effect::Send(msg) => self.send(msg),
                    Effect::Interrupt { seq } => {
                        if let Some(w) = &self.worker {
                            w.process.interrupt_main_thread(&w.signal_target, seq);
                        }
                    }
                    Effect::KillGroup => {
                        if let Some(w) = &self.worker {
                            w.process.kill_group();
                        }
                    }
                    Effect::KillWorkerProcess => {
                        // If it is gone already, the snapshot is taking over or the group's
                        // exit follows; the cancel's second deadline covers the rest.
                        if let Some(w) = &self.worker {
                            w.process.kill_python();
                        }
                    }
                    Effect::DrainSink(sink) => {
                        tokio::spawn(sink.drain());
                    }
                    Effect::ProbeIdle => {
                        let probe = self.worker.as_ref().map(LiveWorker::probe_idle);
                        self.core
                            .handle(Input::IdleProbe(probe.unwrap_or_default()), Instant::now());
                    }
                }
            }
        }
    }

    /// Waits for the fork (on the spawner thread, not this one): only this session waits.
    async fn spawn_worker(&mut self, marker_token: String) {
        // A replaced worker may have left processes in the session's cgroups (setsid
        // children, a fork bomb at the process limit, a memory hog): the fresh worker starts
        // without them, and their OOM kills are not its own.
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_all().await;
            self.oom_kills_seen = cgroup.oom_kills();
        }
        let mut spec = WorkerSpec {
            marker_token,
            ..self.spec.clone()
        };
        // The session's own variables and cwd, as the core keeps them (environment.rs).
        spec.env.extend(self.core.environment().worker_env());
        let spawned = worker::spawn(&spec).await;
        // The start deadline counts from here, once the process exists.
        let now = Instant::now();
        match spawned {
            Ok(spawned) => {
                let pid = spawned.process.pid();
                self.worker = Some(LiveWorker::new(spawned, self.max_frame_len));
                self.core.handle(Input::Spawned { pid }, now);
            }
            Err(e) => self.core.handle(Input::SpawnFailed(e), now),
        }
    }

    fn send(&mut self, msg: Message) {
        let Some(w) = &mut self.worker else { return };
        let writer = match msg {
            Message::Execute(_) => &mut w.writers[EXEC],
            _ => &mut w.writers[CONTROL],
        };
        // With no back-pressure boundary, `feed` only encodes into the buffer: it is ready
        // at once. Then whatever the socket takes now is written; the rest when it is
        // writable again (the `flushed` arm of `wait`).
        match writer.feed(msg).now_or_never() {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::error!(session = %self.id, error = %e, "could not encode a message for the worker");
            }
            None => {}
        }
        if let Some(Err(_)) = writer.flush().now_or_never() {
            writer.write_buffer_mut().clear();
        }
    }

    fn on_frame(&mut self, i: usize, frame: Option<Result<Message, ProtocolError>>, now: Instant) {
        match ChannelRead::from(frame) {
            ChannelRead::Frame(mut msg) => {
                let budget_spent = self.on_worker_pid(&mut msg);
                // The session's CPU time is spent: the snapshot's word is not passed on (its
                // state does not stay); the worker is replaced and the execution ends with
                // CpuLimitExceeded, as the limit does without a transaction.
                match budget_spent {
                    Some(secs) => self.core.handle(Input::CpuBudgetSpent(secs), now),
                    None => self.core.handle(Input::Frame(msg), now),
                }
            }
            ChannelRead::End => {
                if let Some(w) = &mut self.worker {
                    w.readers[i] = None;
                }
            }
            ChannelRead::Broken(e) => {
                // The stream cannot be trusted after an error: nothing more is read from it.
                if let Some(w) = &mut self.worker {
                    w.readers = [None, None];
                }
                self.core.handle(Input::ProtocolError(e), now);
            }
        }
    }

    fn on_pipe_readable(&mut self, i: usize, now: Instant) {
        let Some(rx) = self.worker.as_mut().and_then(|w| w.pipes[i].as_ref()) else {
            return;
        };
        let limit = self
            .output_limiter
            .as_ref()
            .map_or(READ_CHUNK, |l| (l.burst() as usize).clamp(1, READ_CHUNK));
        match rx.try_read(&mut self.read_buf[..limit]) {
            Ok(0) => self.pipe_ended(i, now),
            Ok(n) => {
                if let Some(limiter) = &self.output_limiter {
                    // Over the rate: stop reading both pipes until the debt is paid. The
                    // pipes fill and the worker blocks in write(): slowed down, never dropped.
                    if let Ok(Some(due)) = limiter.reserve(n as u32) {
                        self.output_paused_until = Some(due);
                    }
                }
                let bytes = &self.read_buf[..n];
                self.core.handle(Input::Output { pipe: i, bytes }, now);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => self.pipe_ended(i, now),
        }
    }

    fn pipe_ended(&mut self, i: usize, now: Instant) {
        if let Some(w) = &mut self.worker {
            w.pipes[i] = None;
        }
        self.core.handle(Input::OutputEnd { pipe: i }, now);
    }

    /// The worker exited: sweep its group and reap it, then hand the core everything it
    /// wrote (complete now), then how it ended.
    async fn on_exit(&mut self) {
        let Some(w) = self.worker.take() else { return };
        self.core.handle(Input::Exited, Instant::now());
        let LiveWorker {
            process,
            mut readers,
            pipes,
            ..
        } = w;
        let (status, stragglers) = process.reap().await;
        self.stragglers.merge(stragglers);
        let now = Instant::now();
        for (i, rx) in pipes.iter().enumerate() {
            if let Some(rx) = rx {
                // Everything in the pipe now, without waiting (a child that escaped the group
                // kill could hold it open).
                while let Ok(n) = rx.try_read(&mut self.read_buf) {
                    if n == 0 {
                        break;
                    }
                    let bytes = &self.read_buf[..n];
                    self.core.handle(Input::Output { pipe: i, bytes }, now);
                }
            }
            self.core.handle(Input::OutputEnd { pipe: i }, now);
        }
        'channels: for reader in readers.iter_mut().flatten() {
            while let Some(frame) = reader.next().now_or_never() {
                match ChannelRead::from(frame) {
                    ChannelRead::Frame(msg) => self.core.handle(Input::Frame(msg), now),
                    ChannelRead::End => break,
                    ChannelRead::Broken(e) => {
                        self.core.handle(Input::ProtocolError(e), now);
                        break 'channels;
                    }
                }
            }
        }
        let status = match status {
            Ok(status) => worker::describe_exit(status),
            Err(e) => format!("could not be waited for: {e}"),
        };
        // The kernel's OOM killer counts its kills in the session's memory cgroup: one since
        // this worker started, and the worker itself SIGKILLed, is the worker's.
        let oom_kills = self.cgroup.as_ref().map_or(0, |c| c.oom_kills());
        let oom_killed = oom_kills > self.oom_kills_seen && status.contains("(SIGKILL)");
        self.oom_kills_seen = oom_kills;
        self.core.handle(Input::Reaped { status, oom_killed }, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_error_ends_one_channel_but_bad_bytes_break_the_protocol() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(matches!(
            ChannelRead::from(Some(Err(ProtocolError::Io(reset)))),
            ChannelRead::End
        ));
        assert!(matches!(ChannelRead::from(None), ChannelRead::End));
        let too_large = ProtocolError::FrameTooLarge { len: 99, max: 1 };
        assert!(matches!(
            ChannelRead::from(Some(Err(too_large))),
            ChannelRead::Broken(e) if e.contains("exceeds the limit")
        ));
    }
}
