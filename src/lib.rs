//! pyrepl3: a subprocess-isolated Python execution service.
//!
//! A [`Session`] is one Python worker process whose namespace persists across executions.
//! Code runs there, output streams back live as [`Event`]s, `input()` becomes an
//! [`Event::Input`] answered with [`Session::input_response`], and a running execution can be
//! cancelled without losing the session. Nothing in this crate wakes up on a timer to look
//! for work: see `docs/event-driven.md`.

// Nothing a user, a worker or the OS can influence may panic the service; tests may.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "cli")]
pub mod cli;
pub mod error;
pub mod pool;
pub mod protocol;
pub mod ratelimit;
#[cfg(feature = "server")]
pub mod server;
pub mod service;
pub mod session;
pub(crate) mod sync;
pub(crate) mod time;
pub(crate) mod worker;

pub use error::Error;
pub use pool::{PoolConfig, PoolInfo, PooledSession, SessionPool};
pub use session::{
    CancelOutcome, Completeness, Event, ExecuteOptions, Execution, ExecutionOutcome, Session,
    SessionConfig, SessionInfo, SessionState,
};
