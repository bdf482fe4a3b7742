//! Shared helpers for the black-box tests: real python3 workers, real processes, waits that
//! end on events (with a generous guard so a bug shows as a failure, never as a hung suite).
//!
//! - `session`: start sessions, run code, read events.
//! - `process`: what /proc and pidfds say about processes (no `pyrepl3::worker` internals).
//! - `child`: a child process whose output and exit are awaited with a deadline.
//! - `pty`: an interactive command on a pseudo-terminal.
//! - `server`: `pyrepl3 serve`, in process or as its own process, and its clients.

// Each test binary uses its own subset of these helpers (and of their re-exports).
#![allow(dead_code, unused_imports)]

use std::time::Duration;

mod child;
mod process;
mod pty;
pub mod server;
mod session;

pub use child::Watched;
pub use process::{
    group_alive, group_gone_within, group_members, pgid_of, process_exists, processes_running,
    rss_bytes, wait_child_until, wait_pid_exit, RemovalWatch,
};
pub use pty::Pty;
pub use session::{error_type, eval, guard, run, start, start_with, terminal, wait_for_stdout};

/// Upper bound for anything a test waits on; reaching it is a failure, not a pass.
pub const GUARD: Duration = Duration::from_secs(60);
