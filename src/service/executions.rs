//! Executions of a session: execute with its rules (code size, timeout, duplicate id, the
//! cap on queued executions, the tenant's time limit), the pump that moves the session's events into the execution's log
//! (recording the metrics of its end), input, cancel, interrupt, the list of a session's
//! executions, and [`Reader`]s that replay and follow a log from `since=seq`, optionally
//! answering end of file to the `input()` calls the execution's own `stdin` did not answer.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::event::ClientEvent;
use super::execlog::{Claim, ExecLog, LoggedEvent, ReaderGuard};
use super::sessions::{Hosted, SessionHandle};
use super::{Inner, ServiceError};
use crate::session::{CancelOutcome, Event, ExecuteOptions, InterruptOutcome, Session};
use crate::sync::lock_unpoisoned as lock;

/// How long cancelled code may take to stop before its worker is killed, unless the caller
/// says otherwise.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_millis(500);

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ExecuteRequest {
    pub code: String,
    /// Seconds: a positive number up to `time::MAX_SECS`, capped by the tenant's execution
    /// time limit. `None`: only that limit applies.
    pub timeout: Option<f64>,
    /// The execution's id; `None`: a UUID. Refused while the session keeps one with this id.
    pub execution_id: Option<String>,
    /// See [`ExecuteOptions::transaction_policy`].
    pub transaction_policy: crate::protocol::TransactionPolicy,
    /// Answers of the first `input()` calls, given by the session itself (see
    /// [`ExecuteOptions::stdin`]), so that they hold whoever reads, and at shutdown too.
    pub stdin: Vec<String>,
}

/// One execution of a session, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutionSummary {
    pub execution_id: String,
    /// Whether its terminal event is in the log.
    pub done: bool,
}

/// One execution's log, with what readers need to answer its input requests, to cancel it
/// when the last of them is gone for longer than the reconnect grace, and to apply the
/// retention budget once they have been given its end.
#[derive(Clone)]
pub struct ExecutionHandle {
    log: Arc<ExecLog>,
    inner: Arc<Inner>,
    hosted: Arc<Hosted>,
    /// While a handle lives, a reader may still attach: retention does not expire the log.
    _claim: Arc<Claim>,
}

impl SessionHandle {
    /// Queues `request.code` on the session and returns its log, which a task fills with its
    /// events. Refused while shutting down, for code over `max_code_bytes`, an invalid
    /// timeout, or an execution id the session still keeps (checked in that order).
    pub fn execute(&self, request: ExecuteRequest) -> Result<ExecutionHandle, ServiceError> {
        if self.inner.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ServiceError::ShuttingDown);
        }
        let limit = self.inner.config.max_code_bytes;
        if request.code.len() > limit {
            return Err(ServiceError::CodeTooLarge {
                bytes: request.code.len(),
                limit,
            });
        }
        let timeout = match request.timeout {
            None => None,
            Some(secs) => Some(
                Some(secs)
                    .filter(|s| *s > 0.0)
                    .and_then(crate::time::duration_from_secs)
                    .ok_or(ServiceError::InvalidTimeout { secs })?,
            ),
        };
        let timeout = match (timeout, self.hosted.tenant.config.execution_time_limit()) {
            (Some(asked), Some(limit)) => Some(asked.min(limit)),
            (asked, limit) => asked.or(limit),
        };
        let (log, execution) = {
            // The duplicate check, the queue cap and the insertion under one lock: two
            // requests cannot both pass.
            let mut list = lock(&self.hosted.executions);
            if let Some(id) = &request.execution_id {
                if list.iter().any(|e| e.execution_id == *id) {
                    return Err(ServiceError::DuplicateExecutionId {
                        execution_id: id.clone(),
                    });
                }
            }
            let mut activity = lock(&self.hosted.activity);
            // `running` counts the executions not ended: the running one and those queued.
            let limit = self.inner.config.bounds.max_queued_executions;
            if activity.running > limit {
                return Err(ServiceError::QueueFull {
                    session_id: self.id().to_string(),
                    limit,
                });
            }
            activity.running += 1;
            drop(activity);
            let execution = self.hosted.session.execute(
                request.code,
                ExecuteOptions {
                    timeout,
                    execution_id: request.execution_id,
                    transaction_policy: request.transaction_policy,
                    stdin: request.stdin,
                    ..ExecuteOptions::default()
                },
            );
            let log = ExecLog::new(execution.id(), self.inner.finished.clone());
            list.push_back(log.clone());
            (log, execution)
        };
        self.inner.enforce_retention(&self.hosted);
        self.inner.deadlines_changed.notify_one();
        self.spawn_pump(log.clone(), execution);
        Ok(self.handle(log))
    }

    /// A task moves the execution's events into its log; when it ends, the session's idle
    /// deadline starts and shutdown hears of it.
    fn spawn_pump(&self, log: Arc<ExecLog>, execution: crate::session::Execution) {
        let inner = self.inner.clone();
        let hosted = self.hosted.clone();
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            let mut succeeded = false;
            log.clone()
                .pump(execution, |event: &Event| {
                    if event.is_terminal() {
                        inner.metrics.record(event, started.elapsed().as_secs_f64());
                        succeeded = matches!(event, Event::Result { .. });
                    }
                })
                .await;
            if succeeded {
                super::persistence::autosave(&inner, &hosted);
            }
            inner.enforce_retention(&hosted);
            {
                let mut activity = lock(&hosted.activity);
                activity.running = activity.running.saturating_sub(1);
                activity.last_end = Instant::now();
            }
            inner.deadlines_changed.notify_one();
            inner.execution_ended.notify_waiters();
        });
    }

    fn handle(&self, log: Arc<ExecLog>) -> ExecutionHandle {
        ExecutionHandle {
            _claim: Arc::new(Claim::new(&log)),
            log,
            inner: self.inner.clone(),
            hosted: self.hosted.clone(),
        }
    }

    /// Answers the pending `input()` request `input_id` with a line, or end of file (`None`).
    pub async fn input(&self, input_id: &str, data: Option<String>) -> Result<(), ServiceError> {
        self.hosted
            .session
            .answer_input(input_id, data)
            .await
            .map_err(|e| ServiceError::from_session("input", Some(self.id()), e))
    }

    /// Stops an execution: KeyboardInterrupt, then (after `grace`, default
    /// `DEFAULT_CANCEL_GRACE`, 500 ms) the worker is killed and restarted. Answers with the outcome.
    pub async fn cancel(
        &self,
        execution_id: &str,
        grace: Option<Duration>,
    ) -> Result<CancelOutcome, ServiceError> {
        self.hosted
            .session
            .cancel(execution_id, grace.unwrap_or(DEFAULT_CANCEL_GRACE))
            .await
            .map_err(|e| ServiceError::from_session("cancel", Some(self.id()), e))
    }

    /// Delivers KeyboardInterrupt without waiting for the code to stop; `force_restart`
    /// kills and restarts the worker at once instead.
    pub async fn interrupt(
        &self,
        execution_id: &str,
        force_restart: bool,
    ) -> Result<InterruptOutcome, ServiceError> {
        self.hosted
            .session
            .interrupt(execution_id, force_restart)
            .await
            .map_err(|e| ServiceError::from_session("interrupt", Some(self.id()), e))
    }

    /// The executions the session keeps, in submission order.
    pub fn executions(&self) -> Vec<ExecutionSummary> {
        lock(&self.hosted.executions)
            .iter()
            .map(|log| ExecutionSummary {
                execution_id: log.execution_id.clone(),
                done: log.is_done(),
            })
            .collect()
    }

    /// The execution `execution_id`, if the session still keeps it.
    pub fn execution(&self, execution_id: &str) -> Result<ExecutionHandle, ServiceError> {
        self.hosted
            .execution(execution_id)
            .map(|log| self.handle(log))
            .ok_or_else(|| {
                let session_id = self.id().to_string();
                let execution_id = execution_id.to_string();
                if self.hosted.is_expired(&execution_id) {
                    ServiceError::ExecutionExpired {
                        session_id,
                        execution_id,
                    }
                } else {
                    ServiceError::ExecutionNotFound {
                        session_id,
                        execution_id,
                    }
                }
            })
    }

    /// What a client that was following `execution_id` up to `since` follows on resuming:
    /// that execution from `since`, then every later one that has not ended, each from its
    /// start, in submission order.
    pub fn resume(
        &self,
        execution_id: &str,
        since: u64,
    ) -> Result<Vec<(ExecutionHandle, u64)>, ServiceError> {
        let first = self.execution(execution_id)?;
        let list = lock(&self.hosted.executions);
        let after = list
            .iter()
            .position(|e| e.execution_id == execution_id)
            .map_or(list.len(), |p| p + 1);
        let later = list
            .iter()
            .skip(after)
            .filter(|e| !e.is_done())
            .map(|log| (self.handle(log.clone()), 0));
        Ok(std::iter::once((first, since)).chain(later).collect())
    }
}

impl ExecutionHandle {
    pub fn id(&self) -> &str {
        &self.log.execution_id
    }

    /// Whether the terminal event is in the log.
    pub fn is_done(&self) -> bool {
        self.log.is_done()
    }

    /// The events after `since` that are there now, without waiting and without attaching
    /// (a snapshot does not keep an abandoned execution alive). Acknowledges `since`.
    pub fn snapshot(&self, since: u64) -> Vec<LoggedEvent> {
        self.log.snapshot_after(since)
    }

    /// An attached reader of the events after `since` (replay, then live); `input()`
    /// requests wait for someone to answer them.
    pub fn follow(&self, since: u64) -> Reader {
        self.attach(since, false)
    }

    /// Like [`ExecutionHandle::follow`], answering end of file (`EOFError`) to each
    /// `input()` request the code's `stdin` did not answer: for a caller who cannot answer.
    pub fn follow_answering_eof(&self, since: u64) -> Reader {
        self.attach(since, true)
    }

    fn attach(&self, since: u64, answer_eof: bool) -> Reader {
        let session = self.hosted.session.clone();
        Reader {
            guard: self
                .log
                .attach(Some((session.clone(), self.inner.config.reconnect_grace))),
            log: self.log.clone(),
            session,
            inner: self.inner.clone(),
            hosted: self.hosted.clone(),
            since,
            answered_upto: since,
            answer_eof,
        }
    }
}

/// A reader attached to an execution's log: while one is attached, the execution is not
/// abandoned; when the last one is dropped before the end, the reconnect grace starts.
pub struct Reader {
    log: Arc<ExecLog>,
    session: Session,
    /// Last seq returned; asking for what follows acknowledges it.
    since: u64,
    /// Last input request answered (so that none is answered twice).
    answered_upto: u64,
    /// Answers end of file to input requests.
    answer_eof: bool,
    /// Registers the reader with the log while it lives.
    guard: ReaderGuard,
    /// For the retention pass once this reader has the end.
    inner: Arc<Inner>,
    hosted: Arc<Hosted>,
}

impl Reader {
    pub fn id(&self) -> &str {
        &self.log.execution_id
    }

    /// The next events, waiting for at least one (answering input requests among them
    /// with end of file if so made); `None` after the terminal event. Cancel-safe: dropped
    /// before it returns, the next call returns the same events again and answers no input
    /// twice.
    pub async fn next_batch(&mut self) -> Option<Vec<LoggedEvent>> {
        let Some(batch) = self.log.next_after(self.since).await else {
            self.received_end();
            return None;
        };
        for logged in &batch {
            if self.answer_eof && logged.kind == "input" && logged.seq > self.answered_upto {
                // Marked first: the answer is sent on the first poll, so it goes out once.
                self.answered_upto = logged.seq;
                if let Some(ClientEvent::Input { id, .. }) = logged.event() {
                    // An input the code's stdin answered, or that meanwhile ended
                    // (cancelled), is refused: nothing to do.
                    let _ = self.session.answer_input(&id, None).await;
                }
            }
        }
        if let Some(last) = batch.last() {
            self.since = last.seq;
            if last.is_terminal() {
                self.received_end();
            }
        }
        Some(batch)
    }

    /// This reader has the end: retention may now drop the log, and does if it was only
    /// kept for this reader (a log is never expired while a reader is behind).
    fn received_end(&mut self) {
        if self.guard.received_end() {
            self.inner.enforce_retention(&self.hosted);
        }
    }

    /// The events after the last one returned that are there now, without waiting.
    pub fn rest(&mut self) -> Vec<LoggedEvent> {
        let rest = self.log.snapshot_after(self.since);
        if let Some(last) = rest.last() {
            self.since = last.seq;
            if last.is_terminal() {
                self.received_end();
            }
        }
        rest
    }
}
