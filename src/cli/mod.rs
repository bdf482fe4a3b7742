//! The command line: argument parsing and dispatch to one module per subcommand. Each
//! subcommand returns the process exit status; nothing here outlives `main`.

mod displays;
mod exec;
mod mcp;
pub mod repl;
#[cfg(feature = "server")]
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "pyrepl3",
    version,
    about = "Run Python in isolated, persistent worker sessions"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run CODE (or standard input with `-`) in a fresh session and exit, as `python -c`
    /// would: in the current directory, with '' first on sys.path.
    ///
    /// Exit status: 0 success, 1 Python exception, 124 timeout, 130 interrupted (Ctrl-C),
    /// 2 bad usage or the worker could not be started; `sys.exit(n)`: n, as `python` exits.
    Exec(ExecArgs),
    /// Run the script FILE with ARGS in a fresh session, as `python FILE ARGS` would:
    /// sys.argv, __file__, __name__ == "__main__", the script's directory first on sys.path.
    ///
    /// Exit status: as `exec`; 2 also when FILE cannot be read.
    Run(RunArgs),
    /// An interactive Python prompt whose code runs in an isolated worker session.
    ///
    /// Exit status: 0 on Ctrl-D (or the status passed to exit()), 2 if the worker could not
    /// be started.
    Repl(ReplArgs),
    /// Serve the Model Context Protocol over stdio, for a local AI agent: tools that run
    /// Python in named sessions (made on first use; progress notified as the code prints,
    /// input() asked of the user by elicitation), create, list, reset, close and cancel them,
    /// move files, and checkpoint and restore their variables (see docs/mcp.md; `serve`
    /// serves the same tools over HTTP at /mcp).
    ///
    /// Register it with an MCP client as the command `pyrepl3 mcp`. Exit status: 0 when the
    /// client closes the connection, 2 if the sessions' service could not start.
    Mcp(McpArgs),
    #[cfg(feature = "server")]
    /// Serve sessions over HTTP and WebSocket (see docs/api.md), and the MCP tools over
    /// streamable HTTP at /mcp (see docs/mcp.md).
    ///
    /// Settings: the --config TOML file, then PYREPL3_* environment variables, then flags.
    /// Without any token configured, one is generated and printed. SIGTERM or Ctrl-C shut
    /// down gracefully: exit status 0 when every session is gone.
    Serve(ServeArgs),
}

/// `serve`'s flags. Each can also be set by its environment variable (the flag wins; an
/// empty variable counts as unset). The defaults shown are `ServerConfig::default()`'s, and
/// apply only where neither the config file, the environment nor a flag sets a value: clap
/// is given no default of its own, or it would override the config file.
#[cfg(feature = "server")]
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free one [default: 127.0.0.1:8765]
    #[arg(
        long,
        value_name = "ADDR",
        env = "PYREPL3_LISTEN",
        hide_env_values = true
    )]
    pub listen: Option<std::net::SocketAddr>,
    /// TOML settings file (tenants, pool, limits) [default: none]
    #[arg(
        long,
        value_name = "FILE",
        env = "PYREPL3_CONFIG",
        hide_env_values = true
    )]
    pub config: Option<PathBuf>,
    /// Bearer token of the default tenant [default: from the config, else generated]
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PYREPL3_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Python interpreter for the workers [default: python3]
    #[arg(
        long,
        value_name = "PATH",
        env = "PYREPL3_PYTHON",
        hide_env_values = true
    )]
    pub python: Option<PathBuf>,
    /// Warm sessions kept ready [default: 2]
    #[arg(
        long,
        value_name = "N",
        env = "PYREPL3_MIN_IDLE",
        hide_env_values = true
    )]
    pub min_idle: Option<usize>,
    /// Upper bound of sessions in the pool [default: 20]
    #[arg(
        long,
        value_name = "N",
        env = "PYREPL3_MAX_SESSIONS",
        hide_env_values = true
    )]
    pub max_sessions: Option<usize>,
    /// Open connections at most; beyond it a connection is answered 503 [default: 1000]
    #[arg(
        long,
        value_name = "N",
        env = "PYREPL3_MAX_CONNECTIONS",
        hide_env_values = true
    )]
    pub max_connections: Option<usize>,
    /// Sandbox every worker (`on`, the default) or not (`off`: only for code trusted not to
    /// attack the host; then `/healthz` and the start-up log say so) [default: on]
    #[arg(
        long,
        value_name = "on|off",
        env = "PYREPL3_SANDBOX",
        hide_env_values = true,
        value_parser = parse_on_off
    )]
    pub sandbox: Option<bool>,
    /// The durable store (checkpoints): a SQLite file, `:memory:` for one that lasts as long
    /// as the server [default: ~/.local/share/pyrepl3/store.sqlite3]
    #[arg(
        long,
        value_name = "PATH",
        env = "PYREPL3_STORE",
        hide_env_values = true
    )]
    pub store: Option<PathBuf>,
}

#[cfg(feature = "server")]
fn parse_on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected on or off, not {other:?}")),
    }
}

/// `--sandbox` and `--network` of `exec` and `repl`.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Run the worker in a sandbox (docs/security.md): its own namespaces, a read-only
    /// system, a private /tmp, no network, and only a minimal environment.
    #[arg(long)]
    pub sandbox: bool,
    /// The sandbox's network: none, host or outbound (implies --sandbox).
    #[arg(long, value_name = "MODE")]
    pub network: Option<crate::worker::Network>,
}

impl SandboxArgs {
    /// Applies the flags to a session's settings.
    pub(crate) fn apply(&self, config: &mut crate::SessionConfig) {
        if self.sandbox || self.network.is_some() {
            config.sandbox = Some(crate::worker::SandboxConfig {
                network: self.network.unwrap_or_default(),
                ..Default::default()
            });
            config.inherit_env = false;
        }
    }
}

/// What `exec` and `run` share: how the code's session is made and how its events are shown.
#[derive(Debug, clap::Args)]
pub struct RunOptions {
    /// Stop the code after this many seconds (exit status 124).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Print every event as one JSON object per line (the protocol's message schema).
    #[arg(long)]
    pub json: bool,
    /// Python interpreter to run the worker with.
    #[arg(long, value_name = "PATH", default_value = "python3")]
    pub python: PathBuf,
    /// How long the interpreter may take to answer its probe, and then the worker to become
    /// ready (each; exit status 2 past it).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub start_timeout: f64,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Set an environment variable for the code and the processes it starts (repeatable),
    /// as `env NAME=VALUE python` would; PYREPL3_* names are refused.
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env_var)]
    pub env: Vec<(String, String)>,
    /// Run in a new temporary directory, removed at the end, instead of the current one.
    /// (With --sandbox this is always so: the sandbox keeps the code away from your files.)
    #[arg(long)]
    pub temp_dir: bool,
    /// Where images the code displays (plots: `plt.show()`, `display(img)`) are saved, each
    /// path printed after the display's text. Default: a new directory in the system's
    /// temporary directory, made at the first image and kept.
    #[arg(long, value_name = "DIR")]
    pub display_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub options: RunOptions,
    /// The code to run; `-` (the default) reads it from standard input.
    #[arg(value_name = "CODE", default_value = "-")]
    pub code: String,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub options: RunOptions,
    /// The Python script to run, then its arguments (sys.argv[1:]): everything after FILE
    /// is the script's, `--help` and `--timeout` too.
    #[arg(
        value_name = "FILE [ARGS]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub script: Vec<std::ffi::OsString>,
}

#[derive(Debug, clap::Args)]
pub struct McpArgs {
    /// Python interpreter to run the sessions' workers with.
    #[arg(long, value_name = "PATH", default_value = "python3")]
    pub python: PathBuf,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

#[derive(Debug, clap::Args)]
pub struct ReplArgs {
    /// Python interpreter to run the worker with.
    #[arg(long, value_name = "PATH", default_value = "python3")]
    pub python: PathBuf,
    /// Where displayed images (plots) are saved, each path printed (as for `exec`).
    #[arg(long, value_name = "DIR")]
    pub display_dir: Option<PathBuf>,
    /// Set an environment variable for the session (repeatable), as for `exec`.
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env_var)]
    pub env: Vec<(String, String)>,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// `NAME=VALUE` of `--env`: the name is everything before the first `=` (checked further
/// when the session starts: `SessionConfig::env`).
fn parse_env_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("expected NAME=VALUE, not {text:?}")),
    }
}

/// Writes and flushes at once, so output appears as it is produced. A closed stdout or a
/// terminal that went away (e.g. piped into `head`) is not worth failing for: the code keeps
/// running to its end.
pub(crate) fn write_flushed(stream: crate::protocol::StreamName, bytes: &[u8]) {
    let _ = write_checked(stream, bytes);
}

/// As [`write_flushed`], and says whether the reader is still there: false once it went away
/// (a broken pipe, as `pyrepl3 exec ... | head`).
pub(crate) fn write_checked(stream: crate::protocol::StreamName, bytes: &[u8]) -> bool {
    use std::io::Write;
    let written = match stream {
        crate::protocol::StreamName::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes).and_then(|_| out.flush())
        }
        crate::protocol::StreamName::Stderr => {
            let mut err = std::io::stderr().lock();
            err.write_all(bytes).and_then(|_| err.flush())
        }
    };
    !matches!(written, Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Runs the parsed command line and returns the exit status.
pub async fn run(cli: Cli) -> i32 {
    let status = match cli.command {
        Command::Exec(args) => exec::run(args).await,
        Command::Run(args) => exec::run_file(args).await,
        Command::Repl(args) => repl::run(args).await,
        Command::Mcp(args) => mcp::run(args).await,
        #[cfg(feature = "server")]
        Command::Serve(args) => serve::run(args).await,
    };
    // Every command has shut its sessions down by now: their directories are gone, and so
    // goes the process's run directory (the sandbox's prepared /etc, the lock).
    let _ = tokio::task::spawn_blocking(crate::rundir::remove_own).await;
    status
}
