//! Shared helpers for the black-box tests: real python3 workers, real processes, waits that
//! end on events (with a generous guard so a bug shows as a failure, never as a hung suite).
//!
//! - `session`: start sessions, run code, read events.
//! - `process`: what /proc and pidfds say about processes (no `pyrepl3::worker` internals).
//! - `child`: a child process whose output and exit are awaited with a deadline.
//! - `pty`: an interactive command on a pseudo-terminal.
//! - `server`: `pyrepl3 serve`, in process or as its own process, and its clients.
//! - `npm`: `npm ci` and `node` for the TypeScript client's and the playground's tests.

// Each test binary uses its own subset of these helpers (and of their re-exports).
#![allow(dead_code, unused_imports)]

use std::time::Duration;

mod child;
pub mod npm;
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

/// The Python of the rich-output tests' virtualenv (matplotlib, pandas), made by
/// `scripts/test-venv` in the target's temporary directory the first time a test asks (once
/// per process; the script's lock makes concurrent test processes wait for one maker).
pub fn rich_python() -> std::path::PathBuf {
    static PYTHON: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("rich-venv");
            let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-venv");
            let out = std::process::Command::new(script)
                .arg(&dir)
                .output()
                .expect("scripts/test-venv runs");
            assert!(
                out.status.success(),
                "scripts/test-venv could not make the virtualenv with matplotlib and pandas \
                 (it needs PyPI): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        })
        .clone()
}

/// Upper bound for anything a test waits on; reaching it is a failure, not a pass.
pub const GUARD: Duration = Duration::from_secs(60);
