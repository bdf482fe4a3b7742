//! The client's side of a WebSocket connection: its messages (`execute`, `input_response`,
//! `cancel`, `interrupt`, `checkpoint`, `restore`, `list_checkpoints`) turned into service
//! calls, the error frames for refused ones, and the bounded queue the replies go through to
//! the writer.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{Outgoing, Tasks};
use crate::service::{Caller, ExecuteRequest, Service, ServiceError, SessionHandle};

/// The writer's queue stayed full for the whole patience: the client is not reading.
pub(super) struct Full;

/// The reading side's end of the writer's bounded queue. While it is full the reading side
/// waits (and reads no more frames: the client is held back) for at most `patience`, the
/// time a live client may take to take a frame (the pong timeout); then the client counts as
/// not reading.
pub(super) struct Outbox {
    pub(super) tx: mpsc::Sender<Outgoing>,
    pub(super) patience: Duration,
}

impl Outbox {
    pub(super) async fn reserve(&self) -> Result<mpsc::Permit<'_, Outgoing>, Full> {
        // not polling: one deadline for a queue that stays full.
        match tokio::time::timeout(self.patience, self.tx.reserve()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Full),
        }
    }

    /// A place for a reply that a task sends later.
    pub(super) async fn reserve_owned(&self) -> Result<mpsc::OwnedPermit<Outgoing>, Full> {
        let reserve = self.tx.clone().reserve_owned();
        // not polling: one deadline for a queue that stays full.
        match tokio::time::timeout(self.patience, reserve).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Full),
        }
    }

    pub(super) async fn send(&self, item: Outgoing) -> Result<(), Full> {
        self.reserve().await?.send(item);
        Ok(())
    }
}

/// The `id` of a client message, if it is JSON with one (for `in_reply_to`).
pub(super) fn message_id(text: &str) -> Option<String> {
    let msg: Value = serde_json::from_str(text).ok()?;
    msg.get("id").and_then(Value::as_str).map(str::to_string)
}

/// The error frame for a message the service refused: `RateLimited` (with `retry_after`,
/// seconds) and `QueueFull` by name, every other refusal as `BadRequest`.
pub(super) fn refused(
    in_reply_to: Option<&str>,
    e: &ServiceError,
    timeout: Option<&Value>,
) -> Value {
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
pub(super) fn is_too_big(e: &axum::Error) -> bool {
    let inner = std::error::Error::source(e);
    matches!(
        inner.and_then(|e| e.downcast_ref::<tungstenite::Error>()),
        Some(tungstenite::Error::Capacity(
            tungstenite::error::CapacityError::MessageTooLong { .. }
        ))
    )
}

/// The error frame for a checkpoint operation the service refused: `exception_type`
/// `CheckpointError`, with the API's error `code` (docs/api.md, "Errors").
fn service_error_to(in_reply_to: Option<&str>, e: &ServiceError) -> Value {
    let mut frame = bad_request_to(in_reply_to, e.to_string());
    frame["exception_type"] = json!("CheckpointError");
    frame["code"] = json!(crate::server::http::status_and_code(e).1);
    frame
}

/// What a message is handled with: the service, the caller and its session.
pub(super) struct Context<'a> {
    pub(super) service: &'a Service,
    pub(super) caller: &'a Caller,
    pub(super) session: &'a SessionHandle,
}

/// One client message; returns a reply for the client, if any (`Full`: the writer's queue
/// is full, the client is not reading).
pub(super) async fn handle(
    ctx: &Context<'_>,
    text: &str,
    out: &Outbox,
    tasks: &Tasks,
) -> Result<Option<Value>, Full> {
    let session = ctx.session;
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
            let transaction_policy = match msg.get("transaction_policy") {
                None | Some(Value::Null) => Default::default(),
                Some(policy) => match serde_json::from_value(policy.clone()) {
                    Ok(policy) => policy,
                    Err(_) => {
                        return bad_request(format!(
                            "transaction_policy must be \"commit_always\", \"rollback_on_failure\" or \"rollback_always\", not {policy}"
                        ))
                    }
                },
            };
            let request = ExecuteRequest {
                code,
                timeout,
                execution_id: client_id.clone(),
                transaction_policy,
                // A WebSocket client answers input() as it comes (`input_response`).
                stdin: Vec::new(),
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
                        // The request's own id, when it had one: a client with two cancels
                        // of one execution in flight tells their replies apart.
                        "in_reply_to": reply_to,
                        "execution_id": execution_id,
                        "outcome": outcome,
                    }),
                    Err(e) => bad_request_to(reply_to.as_deref(), e.to_string()),
                };
                permit.send(Outgoing::Reply(reply));
            });
            Ok(None)
        }
        Some(kind @ ("checkpoint" | "restore")) => {
            let restore = kind == "restore";
            let clear_existing = match msg.get("clear_existing") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return bad_request("`clear_existing` must be true or false".into()),
            };
            // A restore reads its checkpoint first (a store read, brief): then it is queued
            // like a checkpoint.
            let data = match (restore, field("checkpoint_id")) {
                (false, _) => None,
                (true, None) => return bad_request("restore needs `checkpoint_id`".into()),
                (true, Some(cid)) => match ctx.service.checkpoint(ctx.caller, &cid).await {
                    Ok((_, data)) => Some(data),
                    Err(e) => return Ok(Some(service_error_to(client_id.as_deref(), &e))),
                },
            };
            let permit = out.reserve_owned().await?;
            let (service, caller, id) = (
                ctx.service.clone(),
                ctx.caller.clone(),
                session.id().to_string(),
            );
            let reply_to = client_id.clone();
            let mut operation = Box::pin(async move {
                match data {
                    Some(data) => service
                        .restore_checkpoint_data(&caller, &id, &data, clear_existing)
                        .await
                        .map(|report| json!({"type": "restore_reply", "report": report})),
                    None => service
                        .create_checkpoint(&caller, &id)
                        .await
                        .map(|record| json!({"type": "checkpoint_reply", "checkpoint": record})),
                }
            });
            // Polled once here: that queues the operation on the session now, after the
            // executions this connection sent before it and before those it sends next.
            let first = futures::poll!(operation.as_mut());
            tasks.spawn(async move {
                let outcome = match first {
                    std::task::Poll::Ready(outcome) => outcome,
                    std::task::Poll::Pending => operation.await,
                };
                let reply = match outcome {
                    Ok(mut reply) => {
                        reply["id"] = json!(uuid::Uuid::new_v4().to_string());
                        reply["in_reply_to"] = json!(reply_to);
                        reply
                    }
                    Err(e) => service_error_to(reply_to.as_deref(), &e),
                };
                permit.send(Outgoing::Reply(reply));
            });
            Ok(None)
        }
        Some("list_checkpoints") => {
            match ctx.service.list_checkpoints(ctx.caller, session.id()).await {
                Ok(list) => Ok(Some(json!({
                    "type": "list_checkpoints_reply",
                    "id": uuid::Uuid::new_v4().to_string(),
                    "in_reply_to": client_id,
                    "checkpoints": list,
                }))),
                Err(e) => Ok(Some(service_error_to(client_id.as_deref(), &e))),
            }
        }
        Some(other) => bad_request(format!("unknown message type {other:?}")),
        None => bad_request("a message needs a string `type`".into()),
    }
}
