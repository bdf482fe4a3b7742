//! Sessions: the public handle ([`Session`]) and the value types of its API. Each session is
//! served by one actor task that the handle only sends commands to:
//!
//! - `actor/`: the task; owns the I/O (process, channels, pipes) and its `select!` loop
//!   (`actor/processes.rs`: the processes' limits, and which process runs the session);
//! - `core/`: the state machine without I/O (queue, running execution, cancel escalation,
//!   exit policy, pending worker requests), fed by the actor;
//! - `ordering.rs`: output-before-result bookkeeping (markers, stray text, held messages);
//! - `output.rs`: decoding of pipe bytes (markers, UTF-8);
//! - `sink.rs`: one execution's bounded way to its consumer;
//! - `requests.rs`: the commands and the worker-request table;
//! - `execution.rs`: [`Event`], [`Execution`] and [`ExecutionOutcome`];
//! - `exit.rs`: what a worker's exit means for the running execution;
//! - `files/`: [`SessionFiles`] (`Session::files`), the session's directory from the host.
//! - `environment.rs`: a session's own variables and cwd (validated, applied, kept by the
//!   core for every worker that replaces one) and its package directory's variable.

mod actor;
mod checkpoint;
mod core;
mod display;
pub(crate) mod environment;
mod execution;
mod exit;
pub mod files;
mod live_worker;
mod ordering;
mod output;
mod requests;
mod sink;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::Error;
pub use crate::protocol::CodeMode;
use crate::protocol::{self, CompletenessStatus, Heartbeat};
pub use crate::protocol::{TransactionOutcome, TransactionPolicy};
use requests::{Command, WorkerRequest};

/// The UTF-8 decoding of pipe output, public for the micro-benchmarks in `benches/`.
#[doc(hidden)]
pub use checkpoint::{
    Checkpoint, NotSaved, RestoreReport, DEFAULT_CHECKPOINT_TIMEOUT, MAX_CHECKPOINT_BYTES,
};
pub use display::{Bundle, Display, MimeBundle, DEFAULT_MAX_DISPLAY_BYTES};
pub use environment::{
    SessionEnvironment, MAX_CWD_BYTES, MAX_NAME_BYTES, MAX_TOTAL_BYTES, MAX_VALUE_BYTES, MAX_VARS,
    PACKAGES_SUBDIR, REFUSED_NAMES,
};
pub use execution::{Event, Execution, ExecutionOutcome};
pub use files::{FileLimits, FilesError, Listing, SessionFiles};
pub use output::decode_utf8;
pub use sink::EVENT_CHANNEL_CAPACITY;

/// How to start and run a session's worker.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Python interpreter; resolved once to the real binary behind it (`sys.executable`).
    pub python: PathBuf,
    /// Extra environment variables for the worker (on top of the host's own, or of the
    /// minimal set when `inherit_env` is false).
    pub env: Vec<(String, String)>,
    /// Whether the worker starts with the host's environment. `false` (what `serve` does):
    /// only `PATH` (the interpreter's directory, then the system's), `HOME` (the working
    /// directory), `LANG=C.UTF-8` and `env`: never a variable of the host, such as a token.
    pub inherit_env: bool,
    /// Resource limits of the worker (rlimits; none by default). See
    /// [`Session::set_limits`] to change them on a live session.
    pub limits: crate::worker::ResourceLimits,
    /// Working directory; `None` gives each session a fresh directory in the host's run
    /// directory (`src/rundir.rs`), removed when the session ends.
    pub cwd: Option<PathBuf>,
    /// How long the worker may take to report `ready`, at start and at every restart.
    pub start_timeout: Duration,
    /// Timeout applied to executions that do not set their own; `None`: no limit.
    pub default_timeout: Option<Duration>,
    /// After an execution's timeout: how long the interrupted code may take to stop before
    /// the worker is killed and restarted.
    pub timeout_grace: Duration,
    /// How long `shutdown()` waits for the worker to exit before killing its process group.
    pub shutdown_grace: Duration,
    /// Largest protocol frame accepted from the worker.
    pub max_frame_len: usize,
    /// Largest rich output (a display, a result's MIME bundle) passed on, in bytes of its
    /// content; a larger display is replaced by a note saying so, a larger result bundle is
    /// left out (the repr stays). The worker's own ceiling is a frame (16 MiB).
    pub max_display_bytes: usize,
    /// Session id; `None` generates one.
    pub session_id: Option<String>,
    /// Limits how fast the worker's output is read; a worker that writes faster is slowed
    /// down (its writes block), never dropped. `None`: unlimited.
    pub output_rate: Option<OutputRate>,
    /// The sandbox every worker of the session runs in (`src/worker/sandbox.rs`); `None`
    /// (the library's default, and `exec`/`repl` without `--sandbox`): the host's user and
    /// namespaces.
    pub sandbox: Option<crate::worker::SandboxConfig>,
}

/// A byte rate for [`SessionConfig::output_rate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutputRate {
    pub bytes_per_second: f64,
    /// Bytes that may be read at once before the rate applies (also the largest read).
    pub burst_bytes: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            python: PathBuf::from("python3"),
            env: Vec::new(),
            inherit_env: true,
            limits: crate::worker::ResourceLimits::default(),
            cwd: None,
            start_timeout: Duration::from_secs(10),
            default_timeout: None,
            timeout_grace: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(2),
            max_frame_len: protocol::DEFAULT_MAX_FRAME_LEN,
            max_display_bytes: DEFAULT_MAX_DISPLAY_BYTES,
            session_id: None,
            output_rate: None,
            sandbox: None,
        }
    }
}

/// Per-execution options.
#[derive(Debug, Clone, Default)]
pub struct ExecuteOptions {
    /// Ends the execution with an `ExecutionTimeout` error when it runs longer (counted from
    /// when it starts running, not from when it was queued).
    pub timeout: Option<Duration>,
    /// The execution id; `None` generates a UUID.
    pub execution_id: Option<String>,
    /// Whether the session's state is put back afterwards (docs/transactions.md): a rollback
    /// policy takes a copy-on-write snapshot of the worker before the code runs.
    pub transaction_policy: TransactionPolicy,
    /// How the code is run: as a cell (the default), as the Python REPL runs a statement
    /// (`CodeMode::Interactive`: the value of every expression statement, as in
    /// `for i in range(3): i` or `1; 2`, is shown as output when it is computed, and the
    /// `Result` carries no value), or as `python -c` does (`CodeMode::Script`).
    pub mode: CodeMode,
    /// Answers of the first `input()` calls, in order (each without its newline), as a
    /// pipe into `python` would give them; later calls wait for [`Session::input_response`].
    /// Their `Input` events are sent all the same, as a record of what was asked.
    pub stdin: Vec<String>,
}

/// How a [`Session::cancel`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// The code stopped (KeyboardInterrupt) within the grace period, or was removed from the
    /// queue before it started; the namespace is kept.
    Cancelled,
    /// The code did not stop in time: the worker was killed and restarted, the namespace lost.
    Killed,
    /// The code did not stop in time but ran in a transaction: the worker process was killed
    /// and its snapshot took over, so the session is at its state before the execution.
    RolledBack,
    /// No such execution is running or queued.
    NotRunning,
}

/// How a [`Session::interrupt`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum InterruptOutcome {
    /// KeyboardInterrupt was delivered (or a queued execution removed).
    Interrupted,
    /// `force_restart`: the worker was killed and a fresh one started.
    Restarted,
    NotRunning,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Starting,
    Idle,
    Busy,
    Restarting,
    /// The worker died or broke the protocol; `restart()` brings a fresh one.
    Dead,
    ShuttingDown,
    Closed,
}

/// Whether some source is a complete statement, from [`Session::is_complete`]: what the
/// interactive interpreter (`code.InteractiveConsole`) would do with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Completeness {
    /// Run it.
    Complete,
    /// Ask for another line: an open block (a compound statement ends with a blank line), an
    /// open bracket or string, a trailing backslash. `indent` is a suggested indentation for
    /// that line (the worker sends `""` for now).
    Incomplete { indent: String },
    /// A syntax error: run it anyway, so the error and its caret are shown.
    Invalid,
}

/// A snapshot of a session, from [`Session::info`].
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct SessionInfo {
    pub id: String,
    pub state: SessionState,
    pub pid: Option<u32>,
    pub python_version: String,
    #[cfg_attr(feature = "server", schema(value_type = String))]
    pub cwd: PathBuf,
    /// Unix time, seconds.
    pub created_at: f64,
    /// Unix time, seconds: when the last execution ended (or the session was created).
    pub last_used_at: f64,
    pub execution_count: u64,
    pub error_count: u64,
    pub queued: usize,
    pub restarts: u64,
    /// Resident memory of the worker, read from /proc when asked.
    pub rss_bytes: Option<u64>,
    /// CPU time (user + system) of the worker, read from /proc when asked.
    pub cpu_time_secs: Option<f64>,
    /// User globals in the namespace, from a heartbeat round trip (`None` if unanswered).
    pub namespace_size: Option<u64>,
    /// Times the actor woke up on a timer (execution deadlines, grace periods).
    pub timer_wakeups: u64,
    /// Worker messages for an execution that had already ended, dropped.
    pub late_messages_dropped: u64,
    pub dead_reason: Option<String>,
    /// The resource limits in force on the worker.
    pub limits: crate::worker::ResourceLimits,
    /// How the session's processes are contained: its sandbox if it has one (`"sandbox
    /// (bubblewrap; uid 900000; network none)"`), then `"cgroup v1"`, `"cgroup v2"` (limits
    /// of the session in all, and every process ended with it), or `"process group"`
    /// (rlimits per process and the group kill only), joined by `", "` (docs/security.md).
    pub containment: String,
    /// Brought back after a server restart: the Unix time of the state it was restored from
    /// (a graceful shutdown's save, or the last autosave); `None` otherwise.
    pub restored_from: Option<f64>,
    /// What of that state could not be restored, with the reasons.
    pub restore_failed: Vec<NotSaved>,
    /// When the service last saved its namespace in its store (autosave, shutdown); `None`
    /// if never.
    pub saved_at: Option<f64>,
}

/// A live Python session. Cloning gives another handle to the same session; when the last
/// handle is dropped the session shuts down.
#[derive(Debug, Clone)]
pub struct Session {
    inner: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    id: String,
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<SessionState>,
    executions: Arc<AtomicU64>,
    files: SessionFiles,
    /// The session's own directory: its configured `cwd`, or the one made for it.
    directory: PathBuf,
}

/// Where a session lives in the shutdown tree: cancelling `token` makes the session shut down
/// (gracefully, then by kill after its grace), and its actor task is spawned on `tracker`, so
/// the owner can wait until every task (and so every worker process) is gone.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub token: CancellationToken,
    pub tracker: TaskTracker,
}

/// How long `info()` waits for the worker's heartbeat answer.
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(1);
/// How long `is_complete()` waits for the worker's answer. Its reader thread answers, but it
/// needs the GIL, which busy user code (a C call) can hold for a while.
const IS_COMPLETE_DEADLINE: Duration = Duration::from_secs(5);

impl Session {
    /// Starts a worker and waits until it is ready (or `start_timeout` passes).
    pub async fn start(config: SessionConfig) -> Result<Session, Error> {
        Session::start_in(config, Scope::default()).await
    }

    /// Like [`Session::start`], inside an owner's shutdown tree (see [`Scope`]).
    pub async fn start_in(config: SessionConfig, scope: Scope) -> Result<Session, Error> {
        environment::check_config_env(&config.env)?;
        let (commands, state, executions, ready, directory) = actor::spawn(config, scope).await?;
        let id = ready.await.map_err(|_| Error::SessionClosed)??;
        Ok(Session {
            inner: Arc::new(Handle {
                id,
                commands,
                state,
                executions,
                files: SessionFiles::new(directory.clone()),
                directory,
            }),
        })
    }

    /// Executions that have ended so far (a cheap read, no round trip).
    pub fn execution_count(&self) -> u64 {
        self.inner.executions.load(Ordering::Relaxed)
    }

    /// Resolves when the session can no longer run code without a restart: its worker died,
    /// or the session was shut down.
    pub async fn died(&self) {
        let mut states = self.inner.state.clone();
        let _ = states
            .wait_for(|s| {
                matches!(
                    s,
                    SessionState::Dead | SessionState::ShuttingDown | SessionState::Closed
                )
            })
            .await;
    }

    /// One heartbeat round trip, answered by the worker's reader thread (so a busy worker
    /// answers too). Fails if no answer comes within `deadline`.
    pub async fn ping(&self, deadline: Duration) -> Result<Heartbeat, Error> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Ask(WorkerRequest::Heartbeat { reply }))
            .map_err(|_| Error::SessionClosed)?;
        // not polling: one deadline for one heartbeat answer.
        match tokio::time::timeout(deadline, answer).await {
            Ok(Ok(beat)) => Ok(beat),
            Ok(Err(_)) => Err(Error::SessionDead(
                "no heartbeat: the worker is not ready".into(),
            )),
            Err(_) => Err(Error::HeartbeatTimeout(deadline)),
        }
    }

    /// Whether `code` is a complete statement, decided by the worker's own `codeop` as the
    /// interactive interpreter decides it (a compound statement is complete only after a
    /// blank line). Answered by the worker's reader thread, so it does not wait for a running
    /// execution.
    pub async fn is_complete(&self, code: &str) -> Result<Completeness, Error> {
        let code = code.to_string();
        let answer = self
            .ask_reader("is_complete", |reply| WorkerRequest::IsComplete {
                code,
                reply,
            })
            .await?;
        Ok(match answer.status {
            CompletenessStatus::Complete => Completeness::Complete,
            CompletenessStatus::Incomplete => Completeness::Incomplete {
                indent: answer.indent,
            },
            CompletenessStatus::Invalid => Completeness::Invalid,
        })
    }

    /// How the text before a cursor could go on, from the live namespace (Tab in the REPL):
    /// names, attributes (as `rlcompleter` finds them) and string keys of mappings. Returns the
    /// end of `code` the matches replace, and the matches (at most 200, sorted). Answered by
    /// the worker's reader thread.
    pub async fn complete(&self, code: &str) -> Result<(String, Vec<String>), Error> {
        let code = code.to_string();
        let answer = self
            .ask_reader("complete", |reply| WorkerRequest::Complete { code, reply })
            .await?;
        Ok((answer.token, answer.matches))
    }

    /// One question answered by the worker's reader thread (`is_complete`, `complete`),
    /// within IS_COMPLETE_DEADLINE.
    async fn ask_reader<T>(
        &self,
        request: &'static str,
        make: impl FnOnce(oneshot::Sender<T>) -> WorkerRequest,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Ask(make(reply)))
            .map_err(|_| Error::SessionClosed)?;
        // not polling: one deadline for one answer.
        match tokio::time::timeout(IS_COMPLETE_DEADLINE, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(Error::SessionDead(format!(
                "no answer to {request}: the worker is not ready"
            ))),
            Err(_) => Err(Error::ReplyTimeout {
                request,
                deadline: IS_COMPLETE_DEADLINE,
            }),
        }
    }

    /// Cancels whatever runs (with `grace`, as [`Session::cancel`]) and removes everything
    /// queued.
    pub async fn cancel_all(&self, grace: Duration) -> Result<CancelOutcome, Error> {
        self.request(|reply| Command::CancelAll { grace, reply })
            .await
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The session's own directory: its configured `cwd`, or the one made for it (removed
    /// with the session). A `cwd` given to [`Session::set_environment`] is inside it.
    pub fn directory(&self) -> &std::path::Path {
        &self.inner.directory
    }

    pub fn state(&self) -> SessionState {
        *self.inner.state.borrow()
    }

    /// A receiver that sees every state change (e.g. to learn at once that the worker died).
    pub fn state_changes(&self) -> watch::Receiver<SessionState> {
        self.inner.state.clone()
    }

    /// Queues `code`; executions of one session run one at a time, in call order.
    pub fn execute(&self, code: impl Into<String>, options: ExecuteOptions) -> Execution {
        self.submit(code.into(), options, None)
    }

    /// Queues a script, run as `python FILE ARGS` runs it (the `pyrepl3 run` command):
    /// `sys.argv` is `argv` (the path as given, then the arguments), `__file__` is `path`, the
    /// script's directory is first on `sys.path`, and its code is compiled from `source` as a
    /// file is (a coding declaration is honoured; no top-level await; the last expression's
    /// value is not reported). Not part of the session's history.
    pub fn run_script(
        &self,
        path: &str,
        source: &[u8],
        argv: &[String],
        options: ExecuteOptions,
    ) -> Execution {
        use base64::Engine as _;
        let call = serde_json::json!({
            "call": "script",
            "path": path,
            "source": base64::engine::general_purpose::STANDARD.encode(source),
            "argv": argv,
        });
        self.submit(String::new(), options, Some(call))
    }

    pub(crate) fn submit(
        &self,
        code: String,
        options: ExecuteOptions,
        internal: Option<serde_json::Value>,
    ) -> Execution {
        let id = options
            .execution_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let (events_tx, events) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let command = Command::Execute {
            id: id.clone(),
            code,
            timeout: options.timeout,
            events: events_tx,
            internal,
            policy: options.transaction_policy,
            mode: options.mode,
            stdin: options.stdin,
        };
        if let Err(mpsc::error::SendError(Command::Execute { events, .. })) =
            self.inner.commands.send(command)
        {
            // The channel is new and empty, so this cannot be full.
            let _ = events.try_send(Event::error("SessionClosed", "the session is closed"));
        }
        Execution { id, events }
    }

    /// Answers the pending `input()` request `input_id`.
    pub async fn input_response(
        &self,
        input_id: &str,
        data: impl Into<String>,
    ) -> Result<(), Error> {
        self.answer_input(input_id, Some(data.into())).await
    }

    /// Answers the pending `input()` request `input_id` with end-of-file (`EOFError`).
    pub async fn input_eof(&self, input_id: &str) -> Result<(), Error> {
        self.answer_input(input_id, None).await
    }

    /// Answers the pending `input()` request `input_id` with a line, or with end-of-file
    /// (`None`).
    pub async fn answer_input(&self, input_id: &str, data: Option<String>) -> Result<(), Error> {
        self.request(|reply| Command::InputResponse {
            input_id: input_id.to_string(),
            data,
            reply,
        })
        .await?
    }

    /// From now on every `input()` of the session's code gets end-of-file at once, the one
    /// waiting now included (its `except EOFError` runs): for when no one will answer, as
    /// while a server shuts down. It lasts for the session's life.
    pub async fn end_input(&self) -> Result<(), Error> {
        self.request(|reply| Command::EndInput { reply }).await
    }

    /// Stops `execution_id`: KeyboardInterrupt first; if the code has not stopped after
    /// `grace`, the worker is killed and restarted (namespace lost). A queued execution is
    /// removed with an error event.
    pub async fn cancel(
        &self,
        execution_id: &str,
        grace: Duration,
    ) -> Result<CancelOutcome, Error> {
        self.request(|reply| Command::Cancel {
            execution_id: execution_id.to_string(),
            grace,
            reply,
        })
        .await
    }

    /// Delivers KeyboardInterrupt to `execution_id` without waiting for it to stop; with
    /// `force_restart` the worker is killed and restarted at once instead.
    pub async fn interrupt(
        &self,
        execution_id: &str,
        force_restart: bool,
    ) -> Result<InterruptOutcome, Error> {
        self.request(|reply| Command::Interrupt {
            execution_id: execution_id.to_string(),
            force_restart,
            reply,
        })
        .await?
    }

    /// Replaces the worker with a fresh one (empty namespace). A running execution ends with
    /// a `SessionRestarted` error; queued ones run on the new worker.
    pub async fn restart(&self) -> Result<(), Error> {
        self.request(|reply| Command::Restart { reply }).await?
    }

    /// Ends the session: asks the worker to exit, kills its process group after the
    /// shutdown grace, fails running and queued executions, removes the temporary directory.
    /// Returns when no process of the session is left.
    pub async fn shutdown(&self) -> Result<(), Error> {
        match self.request(|reply| Command::Shutdown { reply }).await {
            Ok(()) | Err(Error::SessionClosed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets the worker's resource limits: on the live worker at once (its children started
    /// later inherit them), and on every worker started after (a restart).
    pub async fn set_limits(&self, limits: crate::worker::ResourceLimits) -> Result<(), Error> {
        self.request(|reply| Command::SetLimits { limits, reply })
            .await?
    }

    /// A snapshot: counters from the actor, memory and CPU from /proc, and the namespace size
    /// from one heartbeat round trip answered by the worker's reader thread.
    pub async fn info(&self) -> Result<SessionInfo, Error> {
        let mut info = self.request(|reply| Command::Info { reply }).await?;
        if let Some(pid) = info.pid {
            if let Some(stats) = crate::worker::proc_stats(pid) {
                info.rss_bytes = Some(stats.rss_bytes);
                info.cpu_time_secs = Some(stats.cpu_time_secs);
            }
            if let Ok(beat) = self.ping(HEARTBEAT_DEADLINE).await {
                info.namespace_size = beat.namespace_size;
            }
        }
        Ok(info)
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send(make(reply))
            .map_err(|_| Error::SessionClosed)?;
        answer.await.map_err(|_| Error::SessionClosed)
    }
}
