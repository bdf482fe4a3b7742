//! pyrepl3: a subprocess-isolated Python execution service.
//!
//! A [`Session`] is one Python worker process whose namespace persists across executions.
//! Code runs there, output streams back live as [`Event`]s, `input()` becomes an
//! [`Event::Input`] answered with [`Session::input_response`], and a running execution can be
//! cancelled without losing the session. Nothing in this crate wakes up on a timer to look
//! for work: see `docs/event-driven.md`.
//!
//! # Layout
//!
//! Data flows one way, transport → service → pool → session → worker; each module knows only
//! those below it (`docs/architecture.md` has the map, the state owners and the path of one
//! execution):
//!
//! - [`cli`] (feature `cli`): `pyrepl3 exec | repl | serve`.
//! - [`mcp`] (feature `mcp`): the Model Context Protocol tools over [`service`], for
//!   `pyrepl3 mcp` (stdio) and `/mcp` of `pyrepl3 serve` (streamable HTTP).
//! - [`server`] (feature `server`): HTTP + SSE + WebSocket, translating to and from [`service`].
//! - [`service`]: the operations clients use, transport-free — tenants, limits, sessions held
//!   by clients, executions and their event logs, culling, shutdown; [`service::ClientEvent`].
//! - [`pool`]: [`SessionPool`], warm sessions with demand-driven warmup and health.
//! - [`session`]: [`Session`], its actor (all of a session's I/O) and core (its state
//!   machine, without I/O); [`SessionFiles`] (`Session::files`): the session's working
//!   directory read, written, listed and cleaned from the host, every path resolved beneath
//!   it by the kernel.
//! - [`protocol`]: the host⇄worker messages and their framing.
//! - `worker` (private): worker processes — spawn, pidfd, signals, reaping, /proc.
//! - [`ratelimit`]: token buckets with computed wake-ups.
//! - `rundir` (private): the host's run directory (session directories; what a dead host
//!   left is removed).

// Nothing a user, a worker or the OS can influence may panic the service; tests may.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "cli")]
pub mod cli;
pub mod error;
#[cfg(feature = "mcp")]
pub mod mcp;
pub mod pool;
pub mod protocol;
pub mod ratelimit;
pub(crate) mod rundir;
#[cfg(feature = "server")]
pub mod server;
pub mod service;
pub mod session;
pub mod store;
pub(crate) mod sync;
pub(crate) mod time;
pub(crate) mod worker;

pub use error::Error;
pub use pool::{PoolConfig, PoolInfo, PooledSession, SessionPool};
pub use session::{
    Bundle, CancelOutcome, Checkpoint, CodeMode, Completeness, Display, Event, ExecuteOptions,
    Execution, ExecutionOutcome, FileLimits, FilesError, MimeBundle, NotSaved, RestoreReport,
    Session, SessionConfig, SessionEnvironment, SessionFiles, SessionInfo, SessionState,
    TransactionOutcome, TransactionPolicy,
};
pub use worker::{Network, ResourceLimits, SandboxConfig};
