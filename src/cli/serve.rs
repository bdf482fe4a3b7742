//! `pyrepl3 serve`: loads the settings, starts the server, prints where it listens (and a
//! generated token), and shuts down gracefully on SIGTERM or SIGINT.

use std::io::Write;

use tokio::signal::unix::{signal, SignalKind};

use super::ServeArgs;
use crate::server::{self, Overrides, ServerConfig};

const EXIT_OK: i32 = 0;
const EXIT_FAILED: i32 = 1;
const EXIT_USAGE: i32 = 2;

pub async fn run(args: ServeArgs) -> i32 {
    let overrides = Overrides {
        listen: args.listen,
        token: args.token,
        python: args.python,
        min_idle: args.min_idle,
        max_sessions: args.max_sessions,
        max_connections: args.max_connections,
        sandbox: args.sandbox,
        store: args.store,
    };
    let (config, generated) = match ServerConfig::load(args.config.as_deref(), &overrides) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("pyrepl3: {e}");
            return EXIT_USAGE;
        }
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            eprintln!("pyrepl3: could not install the signal handlers");
            return EXIT_USAGE;
        }
    };
    // Room for `max_connections` sockets plus the workers' pipes, whatever the login's soft
    // limit (often 1024). Workers start with the limit as it was (see the worker's spawn).
    if let Some(soft) = open_file_soft_limit() {
        crate::worker::keep_open_file_limit_for_workers(soft);
    }
    match server::raise_open_file_limit() {
        Ok(limit) => tracing::info!(limit, "open-file limit (RLIMIT_NOFILE)"),
        Err(e) => tracing::warn!("could not raise the open-file limit: {e}"),
    }
    if !config.sandbox.enabled {
        tracing::warn!("sandbox off (--sandbox off, or [sandbox] enabled = false): workers are not sandboxed; they run as this server's user, in its namespaces; serve only tenants trusted not to attack the host (docs/security.md)");
    }
    let handle = match server::start(config).await {
        Ok(handle) => handle,
        Err(e @ crate::Error::Sandbox(_)) => {
            eprintln!("pyrepl3: {e}");
            eprintln!("pyrepl3: serve runs every worker in a sandbox (docs/security.md, \"Running it in production\": bubblewrap, user namespaces when not root, slirp4netns for an outbound network); --sandbox off serves without one, only for code trusted not to attack this host");
            return EXIT_USAGE;
        }
        Err(e) => {
            eprintln!("pyrepl3: {e}");
            return EXIT_USAGE;
        }
    };
    let addr = handle.local_addr();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "pyrepl3 serving on http://{addr}/");
    if generated {
        if let Some((_, token)) = handle.tokens().first() {
            let _ = writeln!(out, "token: {token}");
            let _ = writeln!(
                out,
                "try: curl -H 'Authorization: Bearer {token}' -X POST http://{addr}/v1/sessions"
            );
        }
    }
    let _ = out.flush();
    drop(out);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("pyrepl3: shutting down");
    match handle.shutdown().await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("pyrepl3: shutdown: {e}");
            EXIT_FAILED
        }
    }
}

/// The current soft `RLIMIT_NOFILE`, if it can be read.
fn open_file_soft_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to an rlimit on our stack.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}
