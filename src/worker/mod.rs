//! Worker processes: the only place that starts, watches, signals and reaps them.
//!
//! - `interpreter.rs`: the real interpreter binary and the agent's bytecode cache;
//! - `spawn.rs`: starting the agent with its file descriptors, group and environment;
//! - `process.rs`: [`WorkerProcess`], one live worker (pidfd, group kill, interrupt, reap);
//! - `spawner.rs`: the one long-lived thread that forks every child (see why there), and
//!   the keeper of each worker's group;
//! - `procfs.rs`: /proc readings and exit-status text.
//!
//! - `sandbox.rs`: the sandbox a worker runs in (namespaces, file system, seccomp, uid);
//! - `limits.rs`, `cgroup.rs`: rlimits and the session's cgroups.

mod cgroup;
mod interpreter;
mod limits;
mod process;
mod procfs;
mod sandbox;
mod spawn;
mod spawner;

use std::path::PathBuf;

#[cfg(feature = "server")]
pub use cgroup::cgroups_in_use;
pub use cgroup::{retry_pending_removals as retry_pending_cgroup_removals, SessionCgroup};
pub use interpreter::{prepare_interpreter, Interpreter};
pub use limits::ResourceLimits;
pub use process::{Stragglers, WorkerProcess};
pub use procfs::{describe_exit, main_thread_reading, proc_stats, stderr_excerpt};
pub use sandbox::{
    check_available as check_sandbox_available, describe as describe_sandbox, host_is_root,
    Network, SandboxConfig, UidLease, WorkerSandbox,
};
pub use spawn::{spawn, SpawnedWorker};
#[cfg_attr(not(feature = "cli"), allow(unused_imports))]
pub(crate) use spawner::keep_open_file_limit_for_workers;

/// The Python side, embedded so the binary is self-contained.
pub const AGENT_SOURCE: &str = concat!(
    include_str!("../../worker/agent.py"),
    include_str!("../../worker/cells.py"),
    include_str!("../../worker/streams.py"),
    include_str!("../../worker/state.py"),
    include_str!("../../worker/transaction.py"),
    include_str!("../../worker/display.py"),
    include_str!("../../worker/magics.py"),
    include_str!("../../worker/main.py"),
);

/// The fd number of the exec channel in the worker (`execute` in, `ready`/`input`/`result`/
/// `error` out; read by the worker's main thread).
pub const EXEC_FD: i32 = 3;
/// The fd number of the control channel in the worker (everything else; read by the
/// worker's reader thread).
pub const CONTROL_FD: i32 = 4;
/// The fd number of the signal-target file in the worker: 8 bytes, the `seq` of the
/// execution the next SIGINT is meant for (see [`WorkerProcess::interrupt_main_thread`]).
pub const SIGNAL_FD: i32 = 5;
/// The fd number of the agent's bytecode in a starting worker (a sealed memfd, run as
/// `/proc/self/fd/6`); the agent closes it at start.
pub const AGENT_FD: i32 = 6;

/// What to start.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub interpreter: Interpreter,
    pub env: Vec<(String, String)>,
    /// See `SessionConfig::inherit_env`.
    pub inherit_env: bool,
    /// Set in the child before it starts.
    pub limits: ResourceLimits,
    /// The session's cgroups (their `cgroup.procs`, open in the host), joined by the child
    /// before it starts.
    pub cgroup_procs: Vec<std::os::fd::RawFd>,
    pub cwd: PathBuf,
    /// The sandbox the worker runs in (`sandbox.rs`); `None`: as the host's user, in the
    /// host's namespaces.
    pub sandbox: Option<WorkerSandbox>,
    pub session_id: String,
    pub marker_token: String,
}
