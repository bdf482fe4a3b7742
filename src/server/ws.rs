//! `GET /v1/sessions/{id}/ws`: one WebSocket connection to a session, and the translation
//! between its frames and the service. JSON text frames: the client sends `execute`,
//! `input_response`, `cancel`, `interrupt`; the server sends each execution's
//! `output`/`input`/`result`/`error` events (with `seq`), executions in the order submitted,
//! the replies to `cancel`/`interrupt`, and a `BadRequest` error frame for a message the
//! service refused. `?execution_id=X&since=N` resumes after a disconnect: X's events after N,
//! then every later execution that has not ended.

use std::collections::VecDeque;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::http::{ApiError, Auth};
use crate::service::{
    ExecuteRequest, ExecutionHandle, LoggedEvent, Reader, Service, ServiceError, SessionHandle,
};

#[derive(Deserialize)]
pub(crate) struct ResumeQuery {
    execution_id: Option<String>,
    #[serde(default)]
    since: u64,
}

pub(crate) async fn upgrade(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Query(resume): Query<ResumeQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let session = service.session(&caller, &id)?;
    let follow = match &resume.execution_id {
        Some(execution_id) => session.resume(execution_id, resume.since)?,
        None => Vec::new(),
    };
    Ok(ws.on_upgrade(move |socket| connection(service, session, socket, follow)))
}

/// What the writer sends next: events of followed executions, or a reply to the client.
enum Outgoing {
    Follow(ExecutionHandle, u64),
    Reply(Value),
}

async fn connection(
    service: Service,
    session: SessionHandle,
    socket: WebSocket,
    follow: Vec<(ExecutionHandle, u64)>,
) {
    let (sink, mut incoming) = socket.split();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    for (execution, since) in follow {
        let _ = out_tx.send(Outgoing::Follow(execution, since));
    }
    let writer = tokio::spawn(write_loop(sink, out_rx, service.clone()));
    loop {
        let frame = tokio::select! {
            frame = incoming.next() => frame,
            _ = service.stopped() => break,
        };
        let text = match frame {
            Some(Ok(WsMessage::Text(text))) => text,
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue, // ping/pong/binary: nothing to do
        };
        if let Some(reply) = handle(&session, text.as_str(), &out_tx).await {
            let _ = out_tx.send(Outgoing::Reply(reply));
        }
    }
    drop(out_tx);
    // The writer ends when the socket fails or the server shuts down; the client is gone,
    // so stop it now: its readers drop and start the reconnect grace.
    writer.abort();
}

/// An error frame about a client message (`in_reply_to`: that message's `id`, if it had one).
fn bad_request_to(in_reply_to: Option<&str>, message: impl Into<String>) -> Value {
    json!({
        "type": "error",
        "id": uuid::Uuid::new_v4().to_string(),
        "in_reply_to": in_reply_to,
        "execution_id": null,
        "exception_type": "BadRequest",
        "exception_message": message.into(),
        "traceback": "",
    })
}

/// This transport's words for a timeout it cannot use, quoting the JSON value as sent.
fn invalid_timeout(sent: &Value) -> String {
    format!(
        "timeout must be a positive number of seconds up to {}, not {sent}",
        crate::time::MAX_SECS
    )
}

/// The message of the error frame for a refused `execute`.
fn execute_refused(e: &ServiceError, timeout: Option<&Value>) -> String {
    match (e, timeout) {
        (ServiceError::InvalidTimeout { .. }, Some(sent)) => invalid_timeout(sent),
        (ServiceError::DuplicateExecutionId { .. }, _) => {
            "an execution with this id exists already".to_string()
        }
        _ => e.to_string(),
    }
}

/// One client message; returns a reply for the client, if any.
async fn handle(
    session: &SessionHandle,
    text: &str,
    out: &mpsc::UnboundedSender<Outgoing>,
) -> Option<Value> {
    let msg: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Some(bad_request_to(None, format!("not JSON: {e}"))),
    };
    let field = |name: &str| msg.get(name).and_then(Value::as_str).map(str::to_string);
    let client_id = field("id");
    let bad_request = |message: String| bad_request_to(client_id.as_deref(), message);
    match msg.get("type").and_then(Value::as_str) {
        Some("execute") => {
            let Some(code) = field("code") else {
                return Some(bad_request("execute needs a string `code`".into()));
            };
            let sent_timeout = msg.get("timeout").filter(|t| !t.is_null());
            let timeout = match sent_timeout {
                None => None,
                Some(t) => match t.as_f64() {
                    Some(secs) => Some(secs),
                    None => return Some(bad_request(invalid_timeout(t))),
                },
            };
            let request = ExecuteRequest {
                code,
                timeout,
                execution_id: client_id.clone(),
            };
            match session.execute(request) {
                Ok(execution) => {
                    let _ = out.send(Outgoing::Follow(execution, 0));
                    None
                }
                Err(e) => Some(bad_request(execute_refused(&e, sent_timeout))),
            }
        }
        Some("input_response") => {
            let Some(input_id) = field("input_id") else {
                return Some(bad_request("input_response needs `input_id`".into()));
            };
            let data = match msg.get("data") {
                Some(Value::String(data)) => Some(data.clone()),
                Some(Value::Null) | None => None,
                Some(_) => return Some(bad_request("`data` must be a string or null".into())),
            };
            let answered = session.input(&input_id, data).await;
            answered.err().map(|e| bad_request(e.to_string()))
        }
        Some(kind @ ("cancel" | "interrupt")) => {
            let Some(execution_id) = field("execution_id") else {
                return Some(bad_request(format!("{kind} needs `execution_id`")));
            };
            let session = session.clone();
            let out = out.clone();
            let force = msg
                .get("force_restart")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let grace = msg
                .get("grace_timeout_ms")
                .and_then(Value::as_u64)
                .map(Duration::from_millis);
            let is_cancel = kind == "cancel";
            let reply_to = client_id.clone();
            // A cancel waits up to its grace: off the reading loop, so frames keep flowing.
            tokio::spawn(async move {
                let outcome = if is_cancel {
                    session.cancel(&execution_id, grace).await.map(|o| json!(o))
                } else {
                    session
                        .interrupt(&execution_id, force)
                        .await
                        .map(|o| json!(o))
                };
                let reply = match outcome {
                    Ok(outcome) => json!({
                        "type": format!("{}_reply", if is_cancel { "cancel" } else { "interrupt" }),
                        "id": uuid::Uuid::new_v4().to_string(),
                        "execution_id": execution_id,
                        "outcome": outcome,
                    }),
                    Err(e) => bad_request_to(reply_to.as_deref(), e.to_string()),
                };
                let _ = out.send(Outgoing::Reply(reply));
            });
            None
        }
        Some(other) => Some(bad_request(format!("unknown message type {other:?}"))),
        None => Some(bad_request("a message needs a string `type`".into())),
    }
}

/// Owns the sending half: followed executions' events in submission order, and replies.
/// A slow client makes `send` wait, which leaves events undelivered in the log, which holds
/// the worker back (see `service::execlog`).
async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, WsMessage>,
    mut out: mpsc::UnboundedReceiver<Outgoing>,
    service: Service,
) {
    // Every followed execution gets its reader at once, so that all of them get the
    // reconnect grace if the client goes away.
    let mut queue: VecDeque<Reader> = VecDeque::new();
    let mut out_open = true;
    loop {
        tokio::select! {
            item = out.recv(), if out_open => match item {
                Some(Outgoing::Follow(execution, since)) => {
                    queue.push_back(execution.follow(since));
                }
                Some(Outgoing::Reply(reply)) => {
                    let sent = sink.send(WsMessage::Text(reply.to_string().into())).await;
                    if sent.is_err() {
                        return;
                    }
                }
                None if queue.is_empty() => return,
                None => out_open = false,
            },
            batch = next_batch(queue.front_mut()) => match batch {
                Some(events) => {
                    for LoggedEvent { text, .. } in events {
                        if sink.send(WsMessage::Text((*text).into())).await.is_err() {
                            return;
                        }
                    }
                }
                None => {
                    queue.pop_front();
                    if queue.is_empty() && !out_open {
                        return;
                    }
                }
            },
            _ = service.stopped() => {
                // Send what the logs still hold (they end at shutdown), then close.
                while let Some(mut reader) = queue.pop_front() {
                    for LoggedEvent { text, .. } in reader.rest() {
                        if sink.send(WsMessage::Text((*text).into())).await.is_err() {
                            return;
                        }
                    }
                }
                let _ = sink.send(WsMessage::Close(None)).await;
                return;
            }
        }
    }
}

async fn next_batch(reader: Option<&mut Reader>) -> Option<Vec<LoggedEvent>> {
    match reader {
        Some(reader) => reader.next_batch().await,
        None => std::future::pending().await,
    }
}
