//! The command line: argument parsing and dispatch to one module per subcommand. Each
//! subcommand returns the process exit status; nothing here outlives `main`.

mod exec;
pub mod repl;

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
    /// Run CODE (or standard input with `-`) in a fresh session and exit.
    ///
    /// Exit status: 0 success, 1 Python exception, 124 timeout, 130 interrupted (Ctrl-C),
    /// 2 bad usage or the worker could not be started.
    Exec(ExecArgs),
    /// An interactive Python prompt whose code runs in an isolated worker session.
    ///
    /// Exit status: 0 on Ctrl-D (or the status passed to exit()), 2 if the worker could not
    /// be started.
    Repl(ReplArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Stop the code after this many seconds (exit status 124).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Print every event as one JSON object per line (the protocol's message schema).
    #[arg(long)]
    pub json: bool,
    /// Python interpreter to run the worker with.
    #[arg(long, value_name = "PATH", default_value = "python3")]
    pub python: PathBuf,
    /// The code to run; `-` (the default) reads it from standard input.
    #[arg(value_name = "CODE", default_value = "-")]
    pub code: String,
}

#[derive(Debug, clap::Args)]
pub struct ReplArgs {
    /// Python interpreter to run the worker with.
    #[arg(long, value_name = "PATH", default_value = "python3")]
    pub python: PathBuf,
}

/// Runs the parsed command line and returns the exit status.
pub async fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Exec(args) => exec::run(args).await,
        Command::Repl(args) => repl::run(args).await,
    }
}
