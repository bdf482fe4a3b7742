//! Where the REPL's session lives, behind one small trait: the console talks only to
//! [`ReplBackend`], so a session reached over the network can replace the local one without
//! touching the front end. [`LocalBackend`] is the in-process implementation over a
//! [`Session`] (a worker process owned by this process).

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::FutureExt;

use crate::error::Error;
use crate::session::{
    CancelOutcome, CodeMode, Completeness, Event, ExecuteOptions, InterruptOutcome, Session,
    SessionConfig, SessionInfo, SessionState,
};

/// One submitted statement: its id (for cancel and interrupt) and its events, which end after
/// the terminal `Result` or `Error`.
pub struct Running {
    pub execution_id: String,
    pub events: BoxStream<'static, Event>,
}

/// What the REPL needs from a session. Futures are boxed so the trait stays object-safe
/// (`Arc<dyn ReplBackend>`) and a remote implementation can do network round trips.
pub trait ReplBackend: Send + Sync {
    /// Submits `code`; executions run one at a time, in submission order.
    fn execute(&self, code: String) -> BoxFuture<'_, Result<Running, Error>>;
    /// Answers a pending `input()`: a line, or `None` for end-of-file (`EOFError`).
    fn input_response(
        &self,
        input_id: String,
        data: Option<String>,
    ) -> BoxFuture<'_, Result<(), Error>>;
    /// KeyboardInterrupt; if the code has not stopped after `grace`, the worker is restarted.
    fn cancel(
        &self,
        execution_id: String,
        grace: Duration,
    ) -> BoxFuture<'_, Result<CancelOutcome, Error>>;
    /// KeyboardInterrupt now, or with `force_restart` a fresh worker at once.
    fn interrupt(
        &self,
        execution_id: String,
        force_restart: bool,
    ) -> BoxFuture<'_, Result<InterruptOutcome, Error>>;
    /// A fresh worker with an empty namespace; also how a dead session comes back.
    fn restart(&self) -> BoxFuture<'_, Result<(), Error>>;
    /// Whether `code` is a complete statement, as the interactive interpreter decides it.
    fn is_complete(&self, code: String) -> BoxFuture<'_, Result<Completeness, Error>>;
    fn info(&self) -> BoxFuture<'_, Result<SessionInfo, Error>>;
    /// How the text before the cursor could go on: the end of it the matches replace, and
    /// the matches (names, attributes, mapping keys from the live namespace).
    fn complete(&self, text: String) -> BoxFuture<'_, Result<(String, Vec<String>), Error>>;
    /// `Some(why)` when the worker is dead and must be restarted before it can run code.
    fn dead_reason(&self) -> BoxFuture<'_, Option<String>>;
    /// Ends the session; returns when nothing of it is left.
    fn shutdown(&self) -> BoxFuture<'_, Result<(), Error>>;
}

/// A session whose worker is a child of this process.
pub struct LocalBackend {
    session: Session,
}

impl LocalBackend {
    /// Starts the worker and waits until it is ready.
    pub async fn start(config: SessionConfig) -> Result<LocalBackend, Error> {
        Ok(LocalBackend {
            session: Session::start(config).await?,
        })
    }
}

impl ReplBackend for LocalBackend {
    fn execute(&self, code: String) -> BoxFuture<'_, Result<Running, Error>> {
        let options = ExecuteOptions {
            mode: CodeMode::Interactive, // every expression statement shows its value
            ..ExecuteOptions::default()
        };
        let execution = self.session.execute(code, options);
        let running = Running {
            execution_id: execution.id().to_string(),
            events: Box::pin(execution),
        };
        futures::future::ready(Ok(running)).boxed()
    }

    fn input_response(
        &self,
        input_id: String,
        data: Option<String>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        async move { self.session.answer_input(&input_id, data).await }.boxed()
    }

    fn cancel(
        &self,
        execution_id: String,
        grace: Duration,
    ) -> BoxFuture<'_, Result<CancelOutcome, Error>> {
        async move { self.session.cancel(&execution_id, grace).await }.boxed()
    }

    fn interrupt(
        &self,
        execution_id: String,
        force_restart: bool,
    ) -> BoxFuture<'_, Result<InterruptOutcome, Error>> {
        async move { self.session.interrupt(&execution_id, force_restart).await }.boxed()
    }

    fn restart(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.session.restart().boxed()
    }

    fn is_complete(&self, code: String) -> BoxFuture<'_, Result<Completeness, Error>> {
        async move { self.session.is_complete(&code).await }.boxed()
    }

    fn info(&self) -> BoxFuture<'_, Result<SessionInfo, Error>> {
        self.session.info().boxed()
    }

    fn complete(&self, text: String) -> BoxFuture<'_, Result<(String, Vec<String>), Error>> {
        async move { self.session.complete(&text).await }.boxed()
    }

    fn dead_reason(&self) -> BoxFuture<'_, Option<String>> {
        async move {
            if self.session.state() != SessionState::Dead {
                return None;
            }
            let reason = match self.session.info().await {
                Ok(info) => info.dead_reason,
                Err(_) => None,
            };
            Some(reason.unwrap_or_else(|| "reason unknown".to_string()))
        }
        .boxed()
    }

    fn shutdown(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.session.shutdown().boxed()
    }
}
