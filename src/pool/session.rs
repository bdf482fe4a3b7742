//! The real sessions behind a pool: [`WorkerFactory`] starts Python worker sessions (running
//! the warmup code), and [`crate::Session`] implements [`PoolSession`].

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{PoolSession, SessionFactory};
use crate::error::Error;
use crate::session::{Event, Scope, Session, SessionConfig, SessionState};

/// Starts Python worker sessions for a pool.
#[derive(Debug, Clone)]
pub struct WorkerFactory {
    config: SessionConfig,
    warmup_code: Option<String>,
}

impl WorkerFactory {
    pub fn new(config: SessionConfig, warmup_code: Option<String>) -> Self {
        WorkerFactory {
            config,
            warmup_code,
        }
    }
}

impl SessionFactory for WorkerFactory {
    type Session = Session;

    fn create(&self, scope: Scope) -> BoxFuture<'static, Result<Session, Error>> {
        let config = self.config.clone();
        let warmup = self.warmup_code.clone();
        async move {
            let session = Session::start_in(config, scope).await?;
            if let Some(code) = warmup {
                // Outside the session's history: a tenant's `In` does not show it.
                if let Event::Error {
                    exception_type,
                    exception_message,
                    ..
                } = session.warm_up(&code).await
                {
                    let _ = session.shutdown().await;
                    return Err(Error::Warmup {
                        exception_type,
                        exception_message,
                    });
                }
            }
            Ok(session)
        }
        .boxed()
    }
}

impl PoolSession for Session {
    fn is_usable(&self) -> bool {
        self.state() == SessionState::Idle
    }

    fn is_busy(&self) -> bool {
        self.state() == SessionState::Busy
    }

    fn execution_count(&self) -> u64 {
        Session::execution_count(self)
    }

    fn died(&self) -> BoxFuture<'static, ()> {
        let session = self.clone();
        async move { session.died().await }.boxed()
    }

    fn settled(&self) -> BoxFuture<'static, ()> {
        let mut states = self.state_changes();
        async move {
            let _ = states
                .wait_for(|s| !matches!(s, SessionState::Busy | SessionState::Restarting))
                .await;
        }
        .boxed()
    }

    fn validate(&self, deadline: Duration) -> BoxFuture<'static, Result<(), Error>> {
        let session = self.clone();
        async move { session.ping(deadline).await.map(|_| ()) }.boxed()
    }

    fn cancel_all(&self, grace: Duration) -> BoxFuture<'static, bool> {
        let session = self.clone();
        async move {
            matches!(
                session.cancel_all(grace).await,
                Ok(crate::session::CancelOutcome::Killed)
            )
        }
        .boxed()
    }

    fn restart(&self) -> BoxFuture<'static, Result<(), Error>> {
        let session = self.clone();
        async move { session.restart().await }.boxed()
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let session = self.clone();
        async move {
            let _ = session.shutdown().await;
        }
        .boxed()
    }
}
