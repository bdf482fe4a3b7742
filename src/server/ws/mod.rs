//! `GET /v1/sessions/{id}/ws`: one WebSocket connection to a session, and the translation
//! between its frames and the service. JSON text frames: the client sends `execute`,
//! `input_response`, `cancel`, `interrupt`, `checkpoint`, `restore`, `list_checkpoints`; the
//! server sends each execution's `output`/`input`/`result`/`error` events (with `seq`),
//! executions in the order submitted, the replies to the others, and a `BadRequest` error frame for a message the
//! service refused (`RateLimited` and `QueueFull` by name). `?execution_id=X&since=N`
//! resumes after a disconnect: X's events after N, then every later execution that has not
//! ended.
//!
//! Each connection's memory is bounded: one message (and frame) is at most the server's
//! `max_body_bytes` (beyond it: closed with 1009); every message counts against the tenant's
//! rate limit; what waits to be written sits in a bounded queue, and a client that leaves it
//! full for the pong timeout is not reading and is closed (1008); a peer silent past the ping
//! interval is pinged and dropped when nothing comes back within the pong timeout of the
//! ping's write (one deadline per connection; a write that had to wait for the client and
//! went through counts as a sign of life). See `docs/api.md`, "Bounds".
//!
//! Every task of a connection (the connection itself, which axum spawns; its writer; the
//! tasks answering `cancel`/`interrupt`) is in the server's shutdown [`TaskTracker`] and is
//! dropped at the drain deadline, like any connection (see [`Tasks`]).

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use super::http::{ApiError, Auth, ErrorBody};
use crate::service::{Caller, ExecutionHandle, Reader, Service, SessionHandle};

mod client;
mod liveness;
mod writer;

use client::{handle, is_too_big, message_id, refused, Full, Outbox};
use liveness::{Liveness, Progress};
use writer::{write_loop, Writer};

/// Close code and reason for a client that let its send queue fill (1008: policy violation).
const NOT_READING: (u16, &str) = (1008, "client is not reading");
/// Close code for a message (or frame) over `max_body_bytes` (1009: message too big).
const TOO_BIG: u16 = 1009;

/// What every WebSocket connection shares with the server (a request extension, see
/// `server::start`): the shutdown's task tracker, which the server waits for after its
/// connections (so no task of a WebSocket outlives `ServerHandle::shutdown`), its drain
/// deadline, and the size bound of one message.
#[derive(Clone)]
pub(crate) struct Tasks {
    pub tracker: TaskTracker,
    /// Cancelled at the drain deadline: every task of every WebSocket is dropped.
    pub drop_all: CancellationToken,
    /// One message (and one frame) at most, in bytes: `max_body_bytes`.
    pub max_message_bytes: usize,
}

impl Tasks {
    /// Runs `task` in the tracker until it ends or the drain deadline passes.
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let drop_all = self.drop_all.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = task => {}
                _ = drop_all.cancelled() => {}
            }
        });
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ResumeQuery {
    /// Resume after a disconnect: this execution's events after `since`, then every later
    /// execution that has not ended.
    execution_id: Option<String>,
    #[serde(default)]
    #[param(minimum = 0)]
    since: u64,
    /// A WebSocket ticket (`POST .../ws-ticket`), for a browser, which cannot send the
    /// `Authorization` header on a WebSocket.
    ticket: Option<String>,
}

/// The session's WebSocket (docs/api.md, "The WebSocket"): JSON text frames both ways. The
/// token comes in the `Authorization` header as on every route, or, from a browser, as a
/// `ticket` (`POST .../ws-ticket`).
#[utoipa::path(get, path = "/v1/sessions/{id}/ws", tag = "websocket",
    params(crate::server::sessions::SessionPath, ResumeQuery,
        ("Upgrade" = String, Header, description = "`websocket`"),
        ("Connection" = String, Header, description = "`Upgrade`"),
        ("Sec-WebSocket-Version" = String, Header, description = "`13`"),
        ("Sec-WebSocket-Key" = String, Header, description = "The handshake's nonce (RFC 6455)."),
    ),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol."),
        (status = 400, description = "Not a WebSocket upgrade request, or a bad query. Codes: `bad_request`.", body = ErrorBody),
        (status = 404, description = "No such session, or `execution_id` unknown or expired. Codes: `not_found`, `execution_expired`.", body = ErrorBody),
        (status = 409, description = "Codes: `session_unavailable`.", body = ErrorBody),
    ))]
pub(crate) async fn upgrade(
    State(service): State<Service>,
    Extension(tasks): Extension<Tasks>,
    Path(crate::server::sessions::SessionPath { id }): Path<crate::server::sessions::SessionPath>,
    Query(resume): Query<ResumeQuery>,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // The token's header, as on every route; else a ticket for this session.
    let caller = match (
        &resume.ticket,
        headers.contains_key(axum::http::header::AUTHORIZATION),
    ) {
        (Some(ticket), false) => service.authenticate_ticket(ticket, &id)?,
        _ => Auth::from_headers(&headers, &service)?,
    };
    tracing::Span::current().record("tenant", caller.tenant_name());
    let session = service.session(&caller, &id)?;
    let follow = match &resume.execution_id {
        Some(execution_id) => session.resume(execution_id, resume.since)?,
        None => Vec::new(),
    };
    // axum runs the connection in a task of its own, spawned now (it waits for the upgrade):
    // this token keeps the tracker from being done for as long as that task can run (it is
    // dropped with the callback if the upgrade fails).
    let tracked = tasks.tracker.token();
    let ws = ws
        .max_message_size(tasks.max_message_bytes)
        .max_frame_size(tasks.max_message_bytes);
    Ok(ws.on_upgrade(move |socket| async move {
        let _tracked = tracked;
        let drop_all = tasks.drop_all.clone();
        tokio::select! {
            _ = connection(service, caller, session, socket, follow, tasks) => {}
            // The drain deadline: dropped like any connection (its writer with it).
            _ = drop_all.cancelled() => {}
        }
    }))
}

/// What the writer sends next: events of followed executions, a reply to the client, or a
/// ping. Each execution is followed by an attached reader from the moment it is accepted,
/// so that it gets the reconnect grace if the client goes away before it is sent.
enum Outgoing {
    Follow(Reader),
    Reply(Value),
    Ping,
}

/// Why the reading side ends the connection.
enum End {
    /// The client closed, the socket failed, or the peer is dead: nothing more to send.
    Gone,
    /// The client lets its send queue fill: close with a reason, then drop it.
    NotReading,
    /// The client sent a message over the size bound: close with a reason, then drop it.
    TooBig,
    /// The service stopped: the writer sends what the logs hold, then closes.
    Shutdown,
}

async fn connection(
    service: Service,
    caller: Caller,
    session: SessionHandle,
    socket: WebSocket,
    follow: Vec<(ExecutionHandle, u64)>,
    tasks: Tasks,
) {
    let bounds = service.bounds();
    let (sink, mut incoming) = socket.split();
    // Bounded: a client that does not read makes it fill, and is then disconnected.
    let (out_tx, out_rx) = mpsc::channel(bounds.ws_send_queue);
    let outbox = Outbox {
        tx: out_tx,
        patience: bounds.ws_pong_timeout,
    };
    let (close_tx, close_rx) = oneshot::channel();
    let resumed = follow
        .into_iter()
        .map(|(e, since)| e.follow(since))
        .collect();
    let (progress_tx, mut progress) = watch::channel(Progress::default());
    let writer = Writer {
        sink,
        close: close_rx,
        patience: bounds.ws_pong_timeout,
        progress: progress_tx,
    };
    // In the shutdown's tracker; aborted when this connection is dropped (drain deadline).
    let mut writer = AbortOnDropHandle::new(tasks.tracker.spawn(write_loop(
        writer,
        out_rx,
        resumed,
        service.clone(),
    )));
    let mut liveness = Liveness::new(bounds.ws_ping_interval, bounds.ws_pong_timeout);
    let mut seen = Progress::default();
    let context = client::Context {
        service: &service,
        caller: &caller,
        session: &session,
    };
    let end = loop {
        let frame = tokio::select! {
            frame = incoming.next() => frame,
            _ = service.stopped() => break End::Shutdown,
            _ = &mut writer => break End::Gone,
            changed = progress.changed() => {
                if changed.is_err() {
                    break End::Gone; // the writer ended
                }
                let now = *progress.borrow_and_update();
                if now.pings_written != seen.pings_written {
                    liveness.ping_written();
                }
                if now.waited_writes != seen.waited_writes {
                    liveness.heard();
                }
                seen = now;
                continue;
            }
            // not polling: the connection's one liveness deadline (next ping, or pong due).
            _ = tokio::time::sleep_until(liveness.deadline) => {
                if liveness.pinged {
                    tracing::info!(session = %session.id(), "WebSocket peer did not answer a ping in time: dropped");
                    break End::Gone;
                }
                if !liveness.ping_queued && outbox.send(Outgoing::Ping).await.is_err() {
                    break End::NotReading;
                }
                liveness.pinged();
                continue;
            }
        };
        liveness.heard();
        let text = match frame {
            Some(Ok(WsMessage::Text(text))) => text,
            Some(Ok(WsMessage::Binary(_))) => {
                // Ignored, but it is a message: it counts against the rate limit.
                match service.rate_limit(&caller) {
                    Ok(()) => continue,
                    Err(e) => {
                        let reply = Outgoing::Reply(refused(None, &e, None));
                        if outbox.send(reply).await.is_err() {
                            break End::NotReading;
                        }
                        continue;
                    }
                }
            }
            Some(Err(e)) if is_too_big(&e) => break End::TooBig,
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break End::Gone,
            Some(Ok(_)) => continue, // ping/pong: the peer is alive, nothing else to do
        };
        let reply = match service.rate_limit(&caller) {
            // Over the limit: refused, not acted on.
            Err(e) => Some(refused(message_id(text.as_str()).as_deref(), &e, None)),
            Ok(()) => match handle(&context, text.as_str(), &outbox, &tasks).await {
                Ok(reply) => reply,
                Err(Full) => break End::NotReading,
            },
        };
        if let Some(reply) = reply {
            if outbox.send(Outgoing::Reply(reply)).await.is_err() {
                break End::NotReading;
            }
        }
    };
    drop(outbox);
    match end {
        // The client is gone: stop the writer now; its readers drop and start the
        // reconnect grace.
        End::Gone => writer.abort(),
        End::NotReading | End::TooBig => {
            let (code, reason) = if matches!(end, End::TooBig) {
                tracing::info!(session = %session.id(), "WebSocket message over max_body_bytes: disconnected");
                let reason = format!(
                    "message over max_body_bytes ({} bytes)",
                    tasks.max_message_bytes
                );
                (TOO_BIG, reason)
            } else {
                tracing::info!(session = %session.id(), "WebSocket client is not reading: disconnected");
                (NOT_READING.0, NOT_READING.1.to_string())
            };
            let _ = close_tx.send(CloseFrame {
                code,
                reason: reason.into(),
            });
            // Frames still coming are read and dropped (not acted on) until the close frame
            // is out or its deadline passed, and then for up to one pong timeout more, until
            // the client answers the close or stops: closing with its frames unread would
            // make the kernel reset the connection, and the client could lose the close
            // frame with its reason. Not after a message too big: reading on would buffer the
            // rest of it.
            if matches!(end, End::NotReading) {
                let mut linger_until = None;
                loop {
                    tokio::select! {
                        frame = incoming.next() => if !matches!(frame, Some(Ok(_))) { break },
                        _ = &mut writer, if linger_until.is_none() => {
                            // not polling: one deadline for the client to take the close.
                            linger_until = Some(crate::time::deadline(
                                tokio::time::Instant::now(),
                                bounds.ws_pong_timeout,
                            ));
                        }
                        _ = crate::time::sleep_until_opt(linger_until) => break,
                    }
                }
                if linger_until.is_some() {
                    return;
                }
            }
            // The peer's side is closed; the writer ends by its own deadline.
            let _ = writer.await;
        }
        End::Shutdown => {
            // The writer sends the rest and closes within the patience, once a send to a
            // slow client that was under way when shutdown came is through: both bounded.
            let last_frames = 2 * bounds.ws_pong_timeout;
            // not polling: one deadline for the last frames of a client that may not read.
            if tokio::time::timeout(last_frames, &mut writer)
                .await
                .is_err()
            {
                writer.abort();
            }
        }
    }
}
