//! The `pyrepl3` binary: logging set-up, the runtime, and the exit status of the subcommand.

use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PYREPL3_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = pyrepl3::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
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
