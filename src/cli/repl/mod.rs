//! `pyrepl3 repl`: an interactive Python prompt whose code runs in an isolated worker
//! session. The front end (`console.rs`: the loop, `terminal.rs`: line editing, history and
//! output) reaches the session only through the [`ReplBackend`] trait (`backend.rs`), so a
//! session that lives elsewhere (a server) can replace the local one without changing it.

mod backend;
mod console;
mod terminal;

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use super::ReplArgs;
use crate::SessionConfig;
pub use backend::{LocalBackend, ReplBackend, Running};

pub(crate) const EXIT_OK: i32 = 0;
/// The terminal could not be read, or the code exited with a message or `True`.
pub(crate) const EXIT_FAILURE: i32 = 1;
/// The worker (or the terminal) could not be set up.
const EXIT_USAGE: i32 = 2;

pub async fn run(args: ReplArgs) -> i32 {
    let mut config = SessionConfig {
        python: args.python.clone(),
        env: args.env.clone(),
        // Images go to local files: any the worker can send (its frame) is kept.
        max_display_bytes: crate::protocol::DEFAULT_MAX_FRAME_LEN,
        ..SessionConfig::default()
    };
    args.sandbox.apply(&mut config);
    let backend: Arc<dyn ReplBackend> = match LocalBackend::start(config).await {
        Ok(backend) => Arc::new(backend),
        Err(e) => {
            eprintln!("pyrepl3: {e}");
            return EXIT_USAGE;
        }
    };
    // Installed once the worker runs (Ctrl-C during start-up still ends the process; the
    // worker follows when its socket closes) and kept for good: while the line editor reads,
    // the terminal is in raw mode and Ctrl-C arrives as a key, not as a signal.
    let interrupts = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pyrepl3: could not install the Ctrl-C handler: {e}");
            let _ = backend.shutdown().await;
            return EXIT_USAGE;
        }
    };
    // Tab asks the session, from the editor's thread (outside the runtime: it may block).
    let runtime = tokio::runtime::Handle::current();
    let asked = backend.clone();
    let complete: terminal::CompleteFn =
        Box::new(move |text: &str| runtime.block_on(asked.complete(text.to_string())).ok());
    let term = match terminal::Terminal::start(terminal::history_path(), complete) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("pyrepl3: {e}");
            let _ = backend.shutdown().await;
            return EXIT_USAGE;
        }
    };
    let displays = crate::cli::displays::DisplayFiles::new(args.display_dir.clone());
    console::Console::new(backend, term, interrupts, displays)
        .run()
        .await
}
