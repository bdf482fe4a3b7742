//! The `pyrepl3` binary: logging set-up, the runtime, and the exit status of the subcommand.
//!
//! `serve` runs on the multi-thread runtime: its sessions, connections and the service's
//! tasks proceed in parallel, and one slow task (or a blocking call that slipped in) does
//! not pause every session. `exec` and `repl` drive one session for one user: a
//! current-thread runtime is all they need, and it starts faster.

use clap::Parser;

fn main() {
    // An empty PYREPL3_* variable counts as unset (as it always has): clap's `env` would
    // take it as a value. Still one thread here, so changing the environment is sound.
    for (name, value) in std::env::vars_os() {
        if value.is_empty() && name.to_string_lossy().starts_with("PYREPL3_") {
            std::env::remove_var(name);
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PYREPL3_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = pyrepl3::cli::Cli::parse();
    let runtime = match cli.command {
        #[cfg(feature = "server")]
        pyrepl3::cli::Command::Serve(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pyrepl3: could not start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    let status = runtime.block_on(pyrepl3::cli::run(cli));
    // Dropping the runtime ends any task still holding a worker; the worker group is killed
    // by its owner's Drop.
    drop(runtime);
    std::process::exit(status);
}
