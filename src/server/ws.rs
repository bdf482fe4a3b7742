//! `GET /v1/sessions/{id}/ws`: one WebSocket connection to a session, and the translation
//! between its frames and the service. JSON text frames: the client sends `execute`,
//! `input_response`, `cancel`, `interrupt`; the server sends each execution's
//! `output`/`input`/`result`/`error` events (with `seq`), executions in the order submitted,
//! the replies to `cancel`/`interrupt`, and a `BadRequest` error frame for a message the
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

use std::collections::VecDeque;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use super::http::{ApiError, Auth};
use crate::service::{
    Caller, ExecuteRequest, ExecutionHandle, LoggedEvent, Reader, Service, ServiceError,
    SessionHandle,
};

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

#[derive(Deserialize)]
pub(crate) struct ResumeQuery {
    execution_id: Option<String>,
    #[serde(default)]
    since: u64,
}

pub(crate) async fn upgrade(
    State(service): State<Service>,
    Extension(tasks): Extension<Tasks>,
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

/// When the peer was last heard from, and whether a ping is out: one deadline per
/// connection, the next ping or the pong due.
///
/// A ping reaches the client only after what was written before it, and a slow client on a
/// busy connection may take longer than the pong timeout to read that far while reading all
/// along. So the pong is due `pong_timeout` after the ping was *written* (not queued), and a
/// write that had to wait for the client and went through shows the client reading: it
/// counts like a frame from it. A frozen client is still caught: a ping written to a quiet
/// connection gets no answer, and on a busy one the socket's buffers fill and no write goes
/// through any more (the pong deadline from the ping's queuing then passes).
struct Liveness {
    ping_interval: Duration,
    pong_timeout: Duration,
    /// A ping is out and nothing was heard since it was queued: the deadline is the pong's.
    pinged: bool,
    /// A ping waits for the writer: no second one is queued.
    ping_queued: bool,
    deadline: Instant,
}

impl Liveness {
    fn new(ping_interval: Duration, pong_timeout: Duration) -> Self {
        Liveness {
            ping_interval,
            pong_timeout,
            pinged: false,
            ping_queued: false,
            deadline: crate::time::deadline(Instant::now(), ping_interval),
        }
    }

    /// A frame from the peer (or a write it took) shows it alive: the next ping is due after
    /// a silence.
    fn heard(&mut self) {
        self.pinged = false;
        self.deadline = crate::time::deadline(Instant::now(), self.ping_interval);
    }

    /// A ping is queued (unless one still waits for the writer): the pong is due within the
    /// pong timeout, also if the writer never gets the ping out (the client is not reading).
    fn pinged(&mut self) {
        self.pinged = true;
        self.ping_queued = true;
        self.deadline = crate::time::deadline(Instant::now(), self.pong_timeout);
    }

    /// The writer has written the ping: the pong is due within the pong timeout from now,
    /// unless the peer was heard from since the ping was queued.
    fn ping_written(&mut self) {
        self.ping_queued = false;
        if self.pinged {
            self.deadline = crate::time::deadline(Instant::now(), self.pong_timeout);
        }
    }
}

/// What the writer tells the reading side about its progress (counters: the reading side
/// acts on their changes).
#[derive(Clone, Copy, Default, PartialEq)]
struct Progress {
    /// Pings written to the socket.
    pings_written: u64,
    /// Writes that had to wait for the socket (the client's receive window was full) and
    /// then went through: the client read.
    waited_writes: u64,
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
            Ok(()) => match handle(&session, text.as_str(), &outbox, &tasks).await {
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

/// The writer's queue stayed full for the whole patience: the client is not reading.
struct Full;

/// The reading side's end of the writer's bounded queue. While it is full the reading side
/// waits (and reads no more frames: the client is held back) for at most `patience`, the
/// time a live client may take to take a frame (the pong timeout); then the client counts as
/// not reading.
struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    patience: Duration,
}

impl Outbox {
    async fn reserve(&self) -> Result<mpsc::Permit<'_, Outgoing>, Full> {
        // not polling: one deadline for a queue that stays full.
        match tokio::time::timeout(self.patience, self.tx.reserve()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Full),
        }
    }

    /// A place for a reply that a task sends later.
    async fn reserve_owned(&self) -> Result<mpsc::OwnedPermit<Outgoing>, Full> {
        let reserve = self.tx.clone().reserve_owned();
        // not polling: one deadline for a queue that stays full.
        match tokio::time::timeout(self.patience, reserve).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Full),
        }
    }

    async fn send(&self, item: Outgoing) -> Result<(), Full> {
        self.reserve().await?.send(item);
        Ok(())
    }
}

/// The `id` of a client message, if it is JSON with one (for `in_reply_to`).
fn message_id(text: &str) -> Option<String> {
    let msg: Value = serde_json::from_str(text).ok()?;
    msg.get("id").and_then(Value::as_str).map(str::to_string)
}

/// The error frame for a message the service refused: `RateLimited` (with `retry_after`,
/// seconds) and `QueueFull` by name, every other refusal as `BadRequest`.
fn refused(in_reply_to: Option<&str>, e: &ServiceError, timeout: Option<&Value>) -> Value {
    let mut frame = bad_request_to(in_reply_to, execute_refused(e, timeout));
    match e {
        ServiceError::RateLimited { retry_in, .. } => {
            frame["exception_type"] = json!("RateLimited");
            frame["retry_after"] = json!(retry_in.as_secs_f64());
        }
        ServiceError::QueueFull { .. } => frame["exception_type"] = json!("QueueFull"),
        _ => {}
    }
    frame
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

/// A read failed because the message (or a frame) is over `max_message_size` /
/// `max_frame_size`.
fn is_too_big(e: &axum::Error) -> bool {
    let inner = std::error::Error::source(e);
    matches!(
        inner.and_then(|e| e.downcast_ref::<tungstenite::Error>()),
        Some(tungstenite::Error::Capacity(
            tungstenite::error::CapacityError::MessageTooLong { .. }
        ))
    )
}

/// One client message; returns a reply for the client, if any (`Full`: the writer's queue
/// is full, the client is not reading).
async fn handle(
    session: &SessionHandle,
    text: &str,
    out: &Outbox,
    tasks: &Tasks,
) -> Result<Option<Value>, Full> {
    let msg: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Ok(Some(bad_request_to(None, format!("not JSON: {e}")))),
    };
    let field = |name: &str| msg.get(name).and_then(Value::as_str).map(str::to_string);
    let client_id = field("id");
    let bad_request = |message: String| Ok(Some(bad_request_to(client_id.as_deref(), message)));
    match msg.get("type").and_then(Value::as_str) {
        Some("execute") => {
            let Some(code) = field("code") else {
                return bad_request("execute needs a string `code`".into());
            };
            let sent_timeout = msg.get("timeout").filter(|t| !t.is_null());
            let timeout = match sent_timeout {
                None => None,
                Some(t) => match t.as_f64() {
                    Some(secs) => Some(secs),
                    None => return bad_request(invalid_timeout(t)),
                },
            };
            let request = ExecuteRequest {
                code,
                timeout,
                execution_id: client_id.clone(),
            };
            // Room in the writer's queue first: an execution is never accepted without the
            // reader that follows it.
            let permit = out.reserve().await?;
            match session.execute(request) {
                Ok(execution) => {
                    permit.send(Outgoing::Follow(execution.follow(0)));
                    Ok(None)
                }
                Err(e) => Ok(Some(refused(client_id.as_deref(), &e, sent_timeout))),
            }
        }
        Some("input_response") => {
            let Some(input_id) = field("input_id") else {
                return bad_request("input_response needs `input_id`".into());
            };
            let data = match msg.get("data") {
                Some(Value::String(data)) => Some(data.clone()),
                Some(Value::Null) | None => None,
                Some(_) => return bad_request("`data` must be a string or null".into()),
            };
            let answered = session.input(&input_id, data).await;
            match answered {
                Ok(()) => Ok(None),
                Err(e) => bad_request(e.to_string()),
            }
        }
        Some(kind @ ("cancel" | "interrupt")) => {
            let Some(execution_id) = field("execution_id") else {
                return bad_request(format!("{kind} needs `execution_id`"));
            };
            // The reply's place in the queue is taken now: a client that is not reading
            // cannot make these tasks pile up.
            let permit = out.reserve_owned().await?;
            let session = session.clone();
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
            // A cancel waits up to its grace: off the reading loop, so frames keep flowing. It
            // goes on if the client leaves (its reply is then dropped), within shutdown.
            tasks.spawn(async move {
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
                permit.send(Outgoing::Reply(reply));
            });
            Ok(None)
        }
        Some(other) => bad_request(format!("unknown message type {other:?}")),
        None => bad_request("a message needs a string `type`".into()),
    }
}

/// What stopped the writer in the middle of a send.
enum Stop {
    /// The socket failed.
    Gone,
    /// The reading side asks to close with this frame (the client is not reading).
    Close(CloseFrame),
}

/// The sending half, and the reading side's request to close it.
struct Writer {
    sink: SplitSink<WebSocket, WsMessage>,
    close: oneshot::Receiver<CloseFrame>,
    /// How long the last frames (the close frame; at shutdown, also what the logs still
    /// hold) may take to get out to a client that is slow to read: the pong timeout.
    patience: Duration,
    /// Pings written, and writes the client took after a wait (see [`Liveness`]).
    progress: watch::Sender<Progress>,
}

impl Writer {
    /// Sends one message, unless a close is asked for meanwhile (a send to a client that
    /// does not read never completes). A send that had to wait for the socket and went
    /// through is counted as progress (the client read).
    async fn send(&mut self, message: WsMessage) -> Result<(), Stop> {
        let is_ping = matches!(message, WsMessage::Ping(_));
        let mut waited = false;
        let sent = {
            let mut send = std::pin::pin!(self.sink.send(message));
            let send = std::future::poll_fn(|cx| {
                let poll = std::future::Future::poll(send.as_mut(), cx);
                // Pending with budget left: the socket (or the other half's lock) made it
                // wait, not the runtime's cooperative budget.
                waited |= poll.is_pending() && tokio::task::coop::has_budget_remaining();
                poll
            });
            tokio::select! {
                sent = send => sent.map_err(|_| Stop::Gone),
                frame = &mut self.close => Err(frame.map_or(Stop::Gone, Stop::Close)),
            }
        };
        if sent.is_ok() && (is_ping || waited) {
            self.progress.send_modify(|p| {
                if is_ping {
                    p.pings_written += 1;
                } else {
                    p.waited_writes += 1;
                }
            });
        }
        sent
    }

    async fn send_events(&mut self, events: Vec<LoggedEvent>) -> Result<(), Stop> {
        for LoggedEvent { text, .. } in events {
            self.send(WsMessage::Text((*text).into())).await?;
        }
        Ok(())
    }

    /// The last frame, within the patience.
    async fn close_with(mut self, frame: Option<CloseFrame>) {
        let close = self.sink.send(WsMessage::Close(frame));
        // not polling: one deadline for a client that is slow to take its close frame.
        let _ = tokio::time::timeout(self.patience, close).await;
    }
}

/// Owns the sending half: followed executions' events in submission order, replies and
/// pings. A slow client makes `send` wait, which leaves events undelivered in the log,
/// which holds the worker back (see `service::execlog`); meanwhile what the reading side
/// queues waits in the bounded channel.
async fn write_loop(
    mut writer: Writer,
    mut out: mpsc::Receiver<Outgoing>,
    resumed: VecDeque<Reader>,
    service: Service,
) {
    let mut queue = resumed;
    let mut out_open = true;
    let stopped = loop {
        let step = tokio::select! {
            item = out.recv(), if out_open => match item {
                Some(Outgoing::Follow(reader)) => {
                    queue.push_back(reader);
                    Ok(())
                }
                Some(Outgoing::Reply(reply)) => {
                    writer.send(WsMessage::Text(reply.to_string().into())).await
                }
                Some(Outgoing::Ping) => writer.send(WsMessage::Ping(Default::default())).await,
                None if queue.is_empty() => return,
                None => {
                    out_open = false;
                    Ok(())
                }
            },
            batch = next_batch(queue.front_mut()) => match batch {
                Some(events) => writer.send_events(events).await,
                None => {
                    queue.pop_front();
                    if queue.is_empty() && !out_open {
                        return;
                    }
                    Ok(())
                }
            },
            frame = &mut writer.close => Err(frame.map_or(Stop::Gone, Stop::Close)),
            _ = service.stopped() => break None,
        };
        if let Err(stop) = step {
            break Some(stop);
        }
    };
    match stopped {
        Some(Stop::Gone) => {}
        Some(Stop::Close(frame)) => {
            // What this connection holds is released before the close frame waits.
            drop(queue);
            drop(out);
            writer.close_with(Some(frame)).await;
        }
        None => {
            // Shutdown: send what the logs still hold (they end at shutdown), then close,
            // all within the deadline.
            // not polling: one deadline for the last frames to a client that may not read.
            let _ = tokio::time::timeout(writer.patience, async {
                while let Some(mut reader) = queue.pop_front() {
                    if writer.send_events(reader.rest()).await.is_err() {
                        return;
                    }
                }
                let _ = writer.sink.send(WsMessage::Close(None)).await;
            })
            .await;
        }
    }
}

async fn next_batch(reader: Option<&mut Reader>) -> Option<Vec<LoggedEvent>> {
    match reader {
        Some(reader) => reader.next_batch().await,
        None => std::future::pending().await,
    }
}
