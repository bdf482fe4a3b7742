//! What a session's handles ask of its actor ([`Command`]), and the questions the host asks
//! the worker by id ([`WorkerRequest`]) with the one table that correlates their answers
//! ([`PendingRequests`]). A new kind of worker request is one `WorkerRequest` variant: how to
//! ask, and how to complete its reply.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{CancelOutcome, Event, InterruptOutcome, SessionInfo};
use crate::error::Error;
use crate::protocol::{self, Heartbeat, IsCompleteReply, Message};

/// Answers awaited from one worker at most. Requests whose callers gave up waiting are pruned
/// at every insert; a request that still finds the table full is refused (its caller gets no
/// answer, as when the worker is not ready).
pub(crate) const MAX_PENDING_REQUESTS: usize = 1024;

pub(crate) enum Command {
    Execute {
        id: String,
        code: String,
        timeout: Option<Duration>,
        events: mpsc::Sender<Event>,
        /// An operation of the agent's own in place of `code` (see `protocol::Execute`).
        internal: Option<serde_json::Value>,
        policy: crate::protocol::TransactionPolicy,
        mode: crate::protocol::CodeMode,
        /// Answers of the first `input()` calls (see `ExecuteOptions::stdin`).
        stdin: Vec<String>,
    },
    InputResponse {
        input_id: String,
        data: Option<String>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Cancel {
        execution_id: String,
        grace: Duration,
        reply: oneshot::Sender<CancelOutcome>,
    },
    Interrupt {
        execution_id: String,
        force_restart: bool,
        reply: oneshot::Sender<Result<InterruptOutcome, Error>>,
    },
    /// Cancels the running execution and removes every queued one.
    CancelAll {
        grace: Duration,
        reply: oneshot::Sender<CancelOutcome>,
    },
    Restart {
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// From now on every `input()` gets end-of-file at once, the waiting ones included.
    EndInput {
        reply: oneshot::Sender<()>,
    },
    Info {
        reply: oneshot::Sender<SessionInfo>,
    },
    /// A question for the worker, answered by its reader thread.
    Ask(WorkerRequest),
    /// New resource limits: for the live worker at once, and for every worker started after.
    SetLimits {
        limits: crate::worker::ResourceLimits,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// The session's own variables and cwd, kept by the core for every worker started after
    /// (`environment.rs`; the live worker gets them by an internal call).
    SetEnvironment {
        kept: super::environment::Kept,
        reply: oneshot::Sender<()>,
    },
}

/// A question for the worker whose answer comes back with `in_reply_to` = its id. When the
/// worker is not ready, or exits before answering, the reply sender is dropped, which the
/// asking handle reports as an error.
pub(crate) enum WorkerRequest {
    Heartbeat {
        reply: oneshot::Sender<Heartbeat>,
    },
    /// Whether `code` is a complete statement.
    IsComplete {
        code: String,
        reply: oneshot::Sender<IsCompleteReply>,
    },
    /// What the namespace holds.
    Namespace {
        reply: oneshot::Sender<protocol::NamespaceReply>,
    },
    /// How the text before a cursor could go on.
    Complete {
        code: String,
        reply: oneshot::Sender<protocol::CompleteReply>,
    },
}

impl WorkerRequest {
    /// The message that asks it.
    pub fn message(&self, id: String) -> Message {
        match self {
            WorkerRequest::Heartbeat { .. } => Message::Heartbeat(Heartbeat {
                id,
                ..Heartbeat::default()
            }),
            WorkerRequest::IsComplete { code, .. } => Message::IsComplete(protocol::IsComplete {
                id,
                code: code.clone(),
            }),
            WorkerRequest::Namespace { .. } => {
                Message::Namespace(protocol::NamespaceRequest { id })
            }
            WorkerRequest::Complete { code, .. } => Message::Complete(protocol::CompleteRequest {
                id,
                code: code.clone(),
            }),
        }
    }

    /// The asking handle stopped waiting (its deadline passed).
    fn abandoned(&self) -> bool {
        match self {
            WorkerRequest::Heartbeat { reply } => reply.is_closed(),
            WorkerRequest::IsComplete { reply, .. } => reply.is_closed(),
            WorkerRequest::Namespace { reply } => reply.is_closed(),
            WorkerRequest::Complete { reply, .. } => reply.is_closed(),
        }
    }

    /// Completes the request with `answer`; an answer of the wrong kind is dropped (logged),
    /// and so is the request.
    fn complete(self, answer: Message) {
        match (self, answer) {
            (WorkerRequest::Heartbeat { reply }, Message::Heartbeat(beat)) => {
                let _ = reply.send(beat);
            }
            (WorkerRequest::IsComplete { reply, .. }, Message::IsCompleteReply(answer)) => {
                let _ = reply.send(answer);
            }
            (WorkerRequest::Namespace { reply }, Message::NamespaceReply(answer)) => {
                let _ = reply.send(answer);
            }
            (WorkerRequest::Complete { reply, .. }, Message::CompleteReply(answer)) => {
                let _ = reply.send(answer);
            }
            (_, answer) => {
                tracing::warn!(
                    kind = answer.type_name(),
                    "the worker answered a request with the wrong kind of message, ignored"
                );
            }
        }
    }
}

/// The requests sent to the current worker and not answered yet, by id.
#[derive(Default)]
pub(crate) struct PendingRequests {
    by_id: HashMap<String, WorkerRequest>,
}

impl PendingRequests {
    /// Registers a request under `id`; `false` (and the request dropped) when the table is
    /// full of callers that are still waiting.
    pub fn insert(&mut self, id: String, request: WorkerRequest) -> bool {
        self.by_id.retain(|_, r| !r.abandoned());
        if self.by_id.len() >= MAX_PENDING_REQUESTS {
            return false;
        }
        self.by_id.insert(id, request);
        true
    }

    /// Routes a reply to its request. `false` if it answers nothing pending.
    pub fn answer(&mut self, msg: Message) -> bool {
        match msg.in_reply_to().and_then(|id| self.by_id.remove(id)) {
            Some(request) => {
                request.complete(msg);
                true
            }
            None => false,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_completes_the_request_it_names() {
        let mut pending = PendingRequests::default();
        let (reply, mut answer) = oneshot::channel();
        assert!(pending.insert("h1".into(), WorkerRequest::Heartbeat { reply }));
        let beat = Heartbeat {
            id: "w1".into(),
            in_reply_to: Some("h1".into()),
            namespace_size: Some(3),
            ..Heartbeat::default()
        };
        assert!(pending.answer(Message::Heartbeat(beat)));
        assert_eq!(
            answer.try_recv().ok().and_then(|b| b.namespace_size),
            Some(3)
        );
        assert_eq!(pending.len(), 0);

        let stray = Message::Heartbeat(Heartbeat {
            id: "w2".into(),
            in_reply_to: Some("nobody".into()),
            ..Heartbeat::default()
        });
        assert!(!pending.answer(stray));
    }

    #[test]
    fn the_table_is_bounded_and_prunes_callers_that_gave_up() {
        let mut pending = PendingRequests::default();
        let mut waiting = Vec::new();
        for i in 0..MAX_PENDING_REQUESTS {
            let (reply, answer) = oneshot::channel();
            waiting.push(answer);
            assert!(pending.insert(i.to_string(), WorkerRequest::Heartbeat { reply }));
        }
        let (reply, _answer) = oneshot::channel();
        assert!(!pending.insert("one more".into(), WorkerRequest::Heartbeat { reply }));
        waiting.truncate(10); // the rest stopped waiting
        let (reply, _answer) = oneshot::channel();
        assert!(pending.insert("room now".into(), WorkerRequest::Heartbeat { reply }));
        assert_eq!(pending.len(), 11);
    }
}
