//! The service's settings: the tenants (token → name and limits) and the limits and graces
//! that apply to every caller. `server::ServerConfig` reads them from its file, environment
//! and flags and builds a [`ServiceConfig`].

use std::time::Duration;

use serde::Deserialize;

use crate::pool::PoolConfig;

/// One client identity: its token and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    pub token: String,
    /// Sessions this tenant may hold at once (then `SessionLimit`).
    pub max_sessions: usize,
    /// Request rate (token bucket) per second, and its burst (then `RateLimited`).
    pub rate_per_second: f64,
    pub burst: u32,
    /// Sessions unused this long after their last execution ended are culled.
    pub idle_timeout_secs: f64,
    /// Default time limit of an execution (a request may set a shorter one).
    pub execution_time_limit_secs: Option<f64>,
    /// Resource limits of this tenant's workers (rlimits, set when a pooled session is
    /// handed to the tenant; 0: no limit). Address space (virtual memory), then
    /// `MemoryError`.
    pub memory_limit_bytes: u64,
    /// CPU time of a worker, then `CpuLimitExceeded` (the worker is restarted).
    pub cpu_time_limit_secs: u64,
    /// Open files of a worker, then `OSError` EMFILE.
    pub open_files_limit: u64,
    /// Size of one file a worker writes, then `OSError` EFBIG.
    pub file_size_limit_bytes: u64,
    /// Processes and threads of one session in all (a `pids` cgroup, where the host can make
    /// one), then `OSError` EAGAIN on fork: a fork bomb is contained.
    pub max_processes: u64,
    /// Resident memory of one session's processes in all (a `memory` cgroup, where the host
    /// can make one), then the kernel ends the worker: `MemoryLimitExceeded`.
    pub session_memory_limit_bytes: u64,
    /// Bytes of checkpoints this tenant may keep in the store, in all (then
    /// `CheckpointLimit`).
    pub checkpoint_bytes_limit: u64,
    /// Save each session's namespace after every successful execution, so that it comes
    /// back even after the server is killed (`persistence.rs`). A graceful shutdown saves
    /// every session anyway.
    pub autosave: bool,
    /// The sandbox network of this tenant's sessions (`none`, `host` or `outbound`);
    /// unset: the server's (`[sandbox] network`). A tenant whose network differs from the
    /// server's gets warm sessions from a pool of its network.
    pub network: Option<crate::worker::Network>,
}

impl Default for TenantConfig {
    fn default() -> Self {
        TenantConfig {
            name: "default".into(),
            token: String::new(),
            max_sessions: 10,
            rate_per_second: 50.0,
            burst: 100,
            idle_timeout_secs: 600.0,
            execution_time_limit_secs: None,
            // Off by default: an address-space limit counts virtual memory, which thread
            // stacks, malloc arenas and BLAS or JIT runtimes reserve far beyond what they use;
            // a file-size limit ends a child process (SIGXFSZ) rather than failing its write.
            memory_limit_bytes: 0,
            cpu_time_limit_secs: 0,
            open_files_limit: 1024,
            file_size_limit_bytes: 0,
            max_processes: 512,
            session_memory_limit_bytes: 0,
            checkpoint_bytes_limit: 1 << 30,
            autosave: false,
            network: None,
        }
    }
}

impl TenantConfig {
    /// The idle timeout (validated by `ServerConfig::load`; out of range counts as zero).
    pub fn idle_timeout(&self) -> Duration {
        crate::time::duration_from_secs(self.idle_timeout_secs).unwrap_or(Duration::ZERO)
    }

    /// The resource limits of this tenant's workers (zeros are no limit).
    pub fn limits(&self) -> crate::worker::ResourceLimits {
        let some = |v: u64| (v > 0).then_some(v);
        crate::worker::ResourceLimits {
            memory_bytes: some(self.memory_limit_bytes),
            cpu_time_secs: some(self.cpu_time_limit_secs),
            open_files: some(self.open_files_limit),
            file_size_bytes: some(self.file_size_limit_bytes),
            processes: some(self.max_processes),
            session_memory_bytes: some(self.session_memory_limit_bytes),
        }
    }

    /// The cap on every execution's run time, if the tenant has one (zero means none).
    pub fn execution_time_limit(&self) -> Option<Duration> {
        self.execution_time_limit_secs
            .filter(|s| *s > 0.0)
            .and_then(crate::time::duration_from_secs)
    }
}

/// Everything a [`super::Service`] needs to run.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Tenant names and tokens must each be unique (`ServerConfig::load` checks it).
    pub tenants: Vec<TenantConfig>,
    /// The pool the sessions come from (started pre-warmed by `Service::start`).
    pub pool: PoolConfig,
    /// Largest `code` accepted by execute (then `CodeTooLarge`).
    pub max_code_bytes: usize,
    /// How long a running execution whose last reader went away waits for a reader to come
    /// back before it is cancelled.
    pub reconnect_grace: Duration,
    /// At shutdown: how long running executions may still take before they end with
    /// `ServerShutdown`.
    pub shutdown_grace: Duration,
    /// Memory bounds (see [`Bounds`]).
    pub bounds: Bounds,
    /// The durable store's SQLite file (`:memory:` for one that lasts as long as the
    /// service); `None`: no store (checkpoint routes answer `store_unavailable`).
    pub store: Option<std::path::PathBuf>,
}

/// The bounds on what one client can make the service hold (`docs/api.md`, "Bounds").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Executions of one session queued behind the running one (then `QueueFull`).
    pub max_queued_executions: usize,
    /// Output bytes a collected (non-streaming) execute answer keeps; the rest is counted,
    /// not kept, and the answer says it was truncated.
    pub max_output_bytes: usize,
    /// Bytes of finished execution logs one session keeps; beyond it the oldest are dropped.
    pub retained_log_bytes_per_session: usize,
    /// Bytes of finished execution logs the whole service keeps; beyond it the oldest (of
    /// any session) are dropped.
    pub retained_log_bytes_total: usize,
    /// Messages waiting to be written to one WebSocket (replies and executions to follow);
    /// a client that lets it fill is not reading and is disconnected.
    pub ws_send_queue: usize,
    /// A WebSocket silent this long gets a ping ...
    pub ws_ping_interval: Duration,
    /// ... and is disconnected (a dead peer) if no pong (or any frame) comes this soon.
    pub ws_pong_timeout: Duration,
    /// The size of files uploaded to a session, and of a listing of its files.
    pub files: crate::session::FileLimits,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_queued_executions: 64,
            max_output_bytes: 4 * 1024 * 1024,
            retained_log_bytes_per_session: 32 * 1024 * 1024,
            retained_log_bytes_total: 256 * 1024 * 1024,
            ws_send_queue: 256,
            ws_ping_interval: Duration::from_secs(15),
            ws_pong_timeout: Duration::from_secs(10),
            files: crate::session::FileLimits::default(),
        }
    }
}
