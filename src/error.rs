//! The crate's error type: every failure a caller of the library can see, with the context
//! needed to act on it.

use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::ProtocolError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not start the Python worker `{python}`: {source}")]
    Spawn {
        python: PathBuf,
        source: std::io::Error,
    },
    #[error("the Python worker did not become ready within {0:?}")]
    StartTimeout(Duration),
    #[error(
        "the Python interpreter `{}` did not answer its start-up probe within {deadline:?} \
         (the session start timeout); it was killed",
        python.display()
    )]
    ProbeTimeout { python: PathBuf, deadline: Duration },
    #[error("the Python worker exited during start-up ({status}){stderr}")]
    StartFailed { status: String, stderr: String },
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the session is closed")]
    SessionClosed,
    #[error("the session's worker is dead ({0}); call restart() to get a fresh one")]
    SessionDead(String),
    #[error("the worker did not answer a heartbeat within {0:?}")]
    HeartbeatTimeout(Duration),
    #[error("the worker did not answer an {request} request within {deadline:?}")]
    ReplyTimeout {
        request: &'static str,
        deadline: Duration,
    },
    #[error("no pending input request with id {0:?} (unknown, or already answered)")]
    UnknownInput(String),
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A session environment that is refused (`Session::set_environment`): a bad or reserved
    /// name, a value or size out of bounds, a `cwd` outside the session's directory.
    #[error("{0}")]
    InvalidEnvironment(String),
    /// The sandbox cannot be built (see `src/worker/sandbox.rs`).
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// A checkpoint could not be made or restored (see `Session::checkpoint`): the reason,
    /// as the worker gave it (e.g. `CheckpointError: not a pyrepl3 checkpoint`).
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The durable store could not be opened or used (`src/store/`).
    #[error("{0}")]
    Store(String),
    #[error("the pool is shut down")]
    PoolClosed,
    #[error("no session could be acquired within {0:?}")]
    AcquireTimeout(Duration),
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
    #[error("the warmup code failed with {exception_type}: {exception_message}")]
    Warmup {
        exception_type: String,
        exception_message: String,
    },
    #[error("I/O error while {context}: {source}")]
    Io {
        context: &'static str,
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io { context, source }
    }
}
