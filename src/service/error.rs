//! [`ServiceError`]: every failure a caller of the service can see, one variant each, with
//! the context to act on it. Transports map it: HTTP to a status, an error code and this
//! message; the WebSocket to a `BadRequest` error frame.

use std::time::Duration;

use crate::error::Error;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No token, or one no tenant has.
    #[error("missing or invalid token")]
    Unauthorized,
    /// A WebSocket ticket that is unknown, spent, expired or for another session.
    #[error(
        "invalid WebSocket ticket: unknown, already used, expired, or for another session \
         (ask for a new one with POST /v1/sessions/{{id}}/ws-ticket)"
    )]
    TicketRefused,
    /// The tenant's request rate is exceeded; a request can succeed after `retry_in`.
    #[error("request rate limit exceeded; retry in {:.3} s", retry_in.as_secs_f64())]
    RateLimited { tenant: String, retry_in: Duration },
    /// Shutdown has begun: no new work is taken.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// No such session, or another tenant's (whose existence is not disclosed).
    #[error("no such session")]
    SessionNotFound { session_id: String },
    /// The session keeps no execution with this id (never was, or forgotten).
    #[error("no such execution")]
    ExecutionNotFound {
        session_id: String,
        execution_id: String,
    },
    /// The tenant already holds (or is being given) `limit` sessions.
    #[error("tenant {tenant:?} already holds {limit} sessions (its limit)")]
    SessionLimit { tenant: String, limit: usize },
    #[error("code is {bytes} bytes; the limit is {limit}")]
    CodeTooLarge { bytes: usize, limit: usize },
    /// A timeout that is not a positive number of seconds up to `time::MAX_SECS`.
    #[error(
        "timeout must be a positive number of seconds up to {}, not {secs}",
        crate::time::MAX_SECS
    )]
    InvalidTimeout { secs: f64 },
    /// The session has `limit` executions queued behind the running one already.
    #[error("session {session_id} has {limit} executions queued already (its limit); retry when one has run")]
    QueueFull { session_id: String, limit: usize },
    /// The execution ended and its events were dropped (over the retention budget, or
    /// beyond the executions a session keeps).
    #[error("execution {execution_id:?} has expired: its events were dropped to stay within the retention budget")]
    ExecutionExpired {
        session_id: String,
        execution_id: String,
    },
    /// The session still keeps an execution with this id.
    #[error("execution {execution_id:?} exists already")]
    DuplicateExecutionId { execution_id: String },
    /// The input request named is not pending (unknown, or already answered).
    #[error("{source}")]
    UnknownInput { session_id: String, source: Error },
    /// The session's worker cannot take the request: the session is closed, or dead and
    /// could not be restarted.
    #[error("{source}")]
    SessionUnavailable {
        operation: &'static str,
        session_id: Option<String>,
        source: Error,
    },
    /// The worker did not answer a request in time (its reader thread is stuck, e.g. in a
    /// user object's `repr` that does not return).
    #[error("{source}")]
    WorkerNoAnswer {
        operation: &'static str,
        session_id: Option<String>,
        source: Error,
    },
    /// No checkpoint of the caller's tenant has this id.
    #[error("no checkpoint {checkpoint_id:?}")]
    CheckpointNotFound { checkpoint_id: String },
    /// A checkpoint could not be made or restored, for the worker's reason (a corrupt or
    /// foreign checkpoint, one over the size limit, a timeout).
    #[error("{reason}")]
    CheckpointFailed { reason: String },
    /// A checkpoint file larger than any a worker makes.
    #[error("the checkpoint is {bytes} bytes; at most {limit} are accepted")]
    CheckpointTooLarge { bytes: usize, limit: usize },
    /// The tenant's checkpoints would exceed its byte limit.
    #[error("tenant {tenant:?} holds {held} bytes of checkpoints; {size} more would pass its limit of {limit}")]
    CheckpointLimit {
        tenant: String,
        held: u64,
        size: u64,
        limit: u64,
    },
    /// This service has no durable store.
    #[error("this server has no store for checkpoints")]
    StoreUnavailable,
    /// The store failed.
    #[error("{0}")]
    Store(String),
    /// A session environment (`env`, `cwd`) that is refused: a bad or reserved name, a
    /// value or size out of bounds, a `cwd` outside the session's directory.
    #[error("{reason}")]
    InvalidEnvironment { reason: String },
    /// The pool had no session to give in time, or is closed.
    #[error("{source}")]
    NoSessionAvailable { source: Error },
    /// A file operation in the session's directory was refused or failed (docs/api.md,
    /// "Files"): the path, the size limits, the kind of entry.
    #[error("{source}")]
    Files {
        session_id: String,
        source: crate::session::FilesError,
    },
    /// Anything else (e.g. a worker that could not be started).
    #[error("{source}")]
    Internal {
        operation: &'static str,
        session_id: Option<String>,
        source: Error,
    },
}

impl ServiceError {
    /// Classifies a failure of the session or the pool during `operation` (on `session_id`,
    /// when one is known). One rule for every operation, so that the same failure always
    /// reaches clients the same way.
    pub(crate) fn from_session(
        operation: &'static str,
        session_id: Option<&str>,
        source: Error,
    ) -> Self {
        let session_id = session_id.map(str::to_string);
        match source {
            Error::UnknownInput(_) => ServiceError::UnknownInput {
                session_id: session_id.unwrap_or_default(),
                source,
            },
            Error::SessionClosed | Error::SessionDead(_) => ServiceError::SessionUnavailable {
                operation,
                session_id,
                source,
            },
            Error::ReplyTimeout { .. } | Error::HeartbeatTimeout(_) => {
                ServiceError::WorkerNoAnswer {
                    operation,
                    session_id,
                    source,
                }
            }
            Error::InvalidEnvironment(reason) => ServiceError::InvalidEnvironment { reason },
            Error::AcquireTimeout(_) | Error::PoolClosed => {
                ServiceError::NoSessionAvailable { source }
            }
            source => ServiceError::Internal {
                operation,
                session_id,
                source,
            },
        }
    }
}
