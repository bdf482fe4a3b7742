//! `GET /v1/sessions/{id}/ws`: one WebSocket connection to a session. JSON text frames in the
//! protocol's message schema: the client sends `execute`, `input_response`, `cancel`,
//! `interrupt`; the server sends each execution's `output`/`input`/`result`/`error` (with
//! `seq`), executions in the order submitted. `?execution_id=X&since=N` resumes after a
//! disconnect: X's events after N, then every later execution that has not ended.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::execlog::{ExecLog, LoggedEvent, ReaderGuard};
use super::http::{ApiError, Auth};
use super::{AppState, Hosted};
use crate::session::Session;

#[derive(Deserialize)]
pub(crate) struct ResumeQuery {
    execution_id: Option<String>,
    #[serde(default)]
    since: u64,
}

pub(crate) async fn upgrade(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(id): Path<String>,
    Query(resume): Query<ResumeQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let hosted = state
        .hosted(&auth.0.config.name, &id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such session"))?;
    let mut follow = Vec::new();
    if let Some(execution_id) = &resume.execution_id {
        let log = hosted.execution(execution_id).ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such execution")
        })?;
        follow.push((log, resume.since));
        follow.extend(
            hosted
                .unfinished_after(Some(execution_id))
                .into_iter()
                .map(|l| (l, 0)),
        );
    }
    Ok(ws.on_upgrade(move |socket| connection(state, hosted, socket, follow)))
}

/// What the writer sends next: events of followed executions, or a reply to the client.
enum Outgoing {
    Follow(Arc<ExecLog>, u64),
    Reply(Value),
}

async fn connection(
    state: Arc<AppState>,
    hosted: Arc<Hosted>,
    socket: WebSocket,
    follow: Vec<(Arc<ExecLog>, u64)>,
) {
    let (sink, mut incoming) = socket.split();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    for (log, since) in follow {
        let _ = out_tx.send(Outgoing::Follow(log, since));
    }
    let writer = tokio::spawn(write_loop(
        sink,
        out_rx,
        hosted.session.clone(),
        state.config.reconnect_grace(),
        state.shutdown.clone(),
    ));
    loop {
        let frame = tokio::select! {
            frame = incoming.next() => frame,
            _ = state.shutdown.cancelled() => break,
        };
        let text = match frame {
            Some(Ok(WsMessage::Text(text))) => text,
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue, // ping/pong/binary: nothing to do
        };
        if let Some(reply) = handle(&state, &hosted, text.as_str(), &out_tx).await {
            let _ = out_tx.send(Outgoing::Reply(reply));
        }
    }
    drop(out_tx);
    // The writer ends when the socket fails or the server shuts down; the client is gone,
    // so stop it now: its reader guards drop and start the reconnect grace.
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

/// One client message; returns a reply for the client, if any.
async fn handle(
    state: &Arc<AppState>,
    hosted: &Arc<Hosted>,
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
        Some("execute") if state.closing.load(std::sync::atomic::Ordering::SeqCst) => {
            Some(bad_request("the server is shutting down".into()))
        }
        Some("execute") => {
            let Some(code) = field("code") else {
                return Some(bad_request("execute needs a string `code`".into()));
            };
            if code.len() > state.config.max_code_bytes {
                return Some(bad_request(format!(
                    "code is {} bytes; the limit is {}",
                    code.len(),
                    state.config.max_code_bytes
                )));
            }
            let id = field("id");
            if id
                .as_deref()
                .is_some_and(|id| hosted.execution(id).is_some())
            {
                return Some(bad_request(
                    "an execution with this id exists already".into(),
                ));
            }
            let timeout = match msg.get("timeout") {
                None | Some(Value::Null) => None,
                Some(t) => match t
                    .as_f64()
                    .filter(|t| *t > 0.0)
                    .and_then(crate::time::duration_from_secs)
                {
                    Some(t) => Some(t),
                    None => {
                        return Some(bad_request(format!(
                            "timeout must be a positive number of seconds up to {}, not {t}",
                            crate::time::MAX_SECS
                        )))
                    }
                },
            };
            let log = state.start_execution(hosted, code, id, timeout);
            let _ = out.send(Outgoing::Follow(log, 0));
            None
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
            let answered = hosted.session.answer_input(&input_id, data).await;
            answered.err().map(|e| bad_request(e.to_string()))
        }
        Some(kind @ ("cancel" | "interrupt")) => {
            let Some(execution_id) = field("execution_id") else {
                return Some(bad_request(format!("{kind} needs `execution_id`")));
            };
            let session = hosted.session.clone();
            let out = out.clone();
            let force = msg
                .get("force_restart")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let grace = msg
                .get("grace_timeout_ms")
                .and_then(Value::as_u64)
                .unwrap_or(500);
            let is_cancel = kind == "cancel";
            let reply_to = client_id.clone();
            // A cancel waits up to its grace: off the reading loop, so frames keep flowing.
            tokio::spawn(async move {
                let outcome = if is_cancel {
                    session
                        .cancel(&execution_id, Duration::from_millis(grace))
                        .await
                        .map(|o| json!(o))
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
/// the worker back (see `execlog`).
async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, WsMessage>,
    mut out: mpsc::UnboundedReceiver<Outgoing>,
    session: Session,
    grace: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    // Every followed execution is attached at once, so that all of them get the reconnect
    // grace if the client goes away.
    let mut queue: VecDeque<(Arc<ExecLog>, u64, ReaderGuard)> = VecDeque::new();
    loop {
        let current = queue.front().map(|(log, since, _)| (log.clone(), *since));
        tokio::select! {
            item = out.recv() => match item {
                Some(Outgoing::Follow(log, since)) => {
                    let guard = log.attach(Some((session.clone(), grace)));
                    queue.push_back((log, since, guard));
                }
                Some(Outgoing::Reply(reply)) => {
                    let sent = sink.send(WsMessage::Text(reply.to_string().into())).await;
                    if sent.is_err() {
                        return;
                    }
                }
                None if queue.is_empty() => return,
                None => {}
            },
            batch = next_batch(current) => match batch {
                Some(events) => {
                    for LoggedEvent { seq, text, .. } in events {
                        if let Some(front) = queue.front_mut() {
                            front.1 = seq;
                        }
                        if sink.send(WsMessage::Text((*text).into())).await.is_err() {
                            return;
                        }
                    }
                }
                None => {
                    queue.pop_front();
                }
            },
            _ = shutdown.cancelled() => {
                // Send what the logs still hold (they end at shutdown), then close.
                while let Some((log, since, _guard)) = queue.pop_front() {
                    for LoggedEvent { text, .. } in log.snapshot_after(since) {
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

async fn next_batch(current: Option<(Arc<ExecLog>, u64)>) -> Option<Vec<LoggedEvent>> {
    match current {
        Some((log, since)) => log.next_after(since).await,
        None => std::future::pending().await,
    }
}
