//! The session and execution routes (docs/api.md, "Endpoints"): take, list, read, delete and
//! restart a session, read its namespace; run code (a JSON answer or server-sent events),
//! follow an execution, answer its `input()`, cancel or interrupt it. Each handler's types
//! (its body, its parameters, its answer) are what the OpenAPI document says of it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::collect::ExecuteAnswer;
use super::http::{json_of, ApiError, Auth, Body, ErrorBody};
use crate::protocol::{NamespaceEntry, TransactionPolicy};
use crate::service::{ClientEvent, ExecuteRequest, Reader, Service, SessionSummary};
use crate::session::{CancelOutcome, InterruptOutcome, RestoreReport, SessionInfo};

pub(crate) fn routes() -> OpenApiRouter<Service> {
    OpenApiRouter::new()
        .routes(routes!(create_session, list_sessions))
        .routes(routes!(get_session, delete_session))
        .routes(routes!(get_namespace))
        .routes(routes!(restart))
        .routes(routes!(execute))
        .routes(routes!(get_execution))
        .routes(routes!(input))
        .routes(routes!(cancel))
        .routes(routes!(interrupt))
}

/// A session's path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct SessionPath {
    /// The session's id (from `POST /v1/sessions`); another tenant's session is "not found".
    pub id: String,
}

/// An execution's path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct ExecutionPath {
    /// The session's id.
    id: String,
    /// The execution's id (from its events, or the `execution_id` it was given).
    execution_id: String,
}

/// The optional body of `POST /v1/sessions`.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// A checkpoint of the caller's to start from (its namespace, replacing the new one's).
    from_checkpoint: Option<String>,
    /// The session's own environment variables (docs/api.md, "Per-session environment").
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Its working directory, relative to the session's directory; made if missing.
    #[schema(value_type = Option<String>)]
    cwd: Option<std::path::PathBuf>,
}

/// Rules of the request bodies that the derive cannot say, as JSON Schema, from the
/// constants the service checks them with: `(schema, field, rules)`, added to the field's
/// schema by `openapi::finish`. `env` and `cwd` as `SessionEnvironment::validate` takes them
/// (lengths in characters there, bytes here: the same for ASCII; the bound on the
/// environment's total size is only in the description); the largest `timeout` and
/// `grace_timeout_ms`.
pub(super) fn body_rules() -> Vec<(&'static str, &'static str, Value)> {
    use crate::session::environment::{
        MAX_CWD_BYTES, MAX_NAME_BYTES, MAX_VALUE_BYTES, MAX_VARS, REFUSED_NAMES, RESERVED_PREFIX,
    };
    let env = serde_json::json!({
        "type": "object",
        "maxProperties": MAX_VARS,
        "propertyNames": {
            "pattern": format!("^[A-Za-z_][A-Za-z0-9_]{{0,{}}}$", MAX_NAME_BYTES - 1),
            "not": {"anyOf": [
                {"pattern": format!("^{RESERVED_PREFIX}")},
                {"enum": REFUSED_NAMES},
            ]},
        },
        "additionalProperties": {
            "type": "string",
            "maxLength": MAX_VALUE_BYTES,
            "pattern": "^[^\\u0000]*$",
        },
    });
    let cwd = serde_json::json!({
        "type": ["string", "null"],
        "maxLength": MAX_CWD_BYTES,
        // Relative, without a `..` component, without NUL.
        "pattern": "^(?!/)(?!(.*/)?\\.\\.(/|$))[^\\u0000]*$",
    });
    vec![
        ("CreateBody", "env", env),
        ("CreateBody", "cwd", cwd),
        (
            "ExecuteBody",
            "timeout",
            serde_json::json!({"maximum": crate::time::MAX_SECS}),
        ),
        (
            "CancelBody",
            "grace_timeout_ms",
            serde_json::json!({"maximum": MAX_GRACE_MS}),
        ),
    ]
}

/// A new session: its summary, and the restore's report when it started from a checkpoint.
#[derive(Serialize, ToSchema)]
struct CreatedSession {
    #[serde(flatten)]
    summary: SessionSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    restored: Option<RestoreReport>,
}

/// Takes a warm session from the pool for the caller's tenant.
///
/// No body (or `{}`) is needed. With `from_checkpoint` the session starts from that
/// checkpoint: a session it cannot be restored into is deleted again (`422`).
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions",
    request_body(content = Option<CreateBody>, content_type = "application/json",
        description = "Optional: no body, `{}` and `null` take the defaults."),
    responses(
        (status = 201, description = "The session.", body = CreatedSession),
        (status = 400, description = "A body that is not a `CreateBody`, or an invalid `env` or `cwd`. Codes: `bad_request`.", body = ErrorBody),
        (status = 404, description = "`from_checkpoint` is not one of the caller's. Codes: `not_found`.", body = ErrorBody),
        (status = 422, description = "The checkpoint could not be restored. Codes: `checkpoint_failed`.", body = ErrorBody),
        (status = 429, description = "Rate limited, or the tenant holds `max_sessions` sessions. Codes: `rate_limited`, `session_limit`.", body = ErrorBody),
        (status = 500, description = "A worker could not be started. Codes: `internal`.", body = ErrorBody),
        (status = 503, description = "No session within 10 s, or shutting down. Codes: `no_session_available`, `shutting_down`, `store_unavailable`.", body = ErrorBody),
    ))]
async fn create_session(
    State(service): State<Service>,
    Auth(caller): Auth,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // No body (or `{}`, or `null`): the defaults; else a JSON object of `CreateBody`.
    let body: CreateBody = if body.iter().all(u8::is_ascii_whitespace) {
        CreateBody::default()
    } else {
        serde_json::from_slice::<Option<CreateBody>>(&body)
            .map(Option::unwrap_or_default)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    super::http::ErrorCode::BadRequest,
                    format!("the body: {e}"),
                )
            })?
    };
    let environment = crate::session::SessionEnvironment {
        vars: body.env.into_iter().collect(),
        cwd: body.cwd,
    };
    let created = match body.from_checkpoint {
        None => CreatedSession {
            summary: service.create_session_with(&caller, environment).await?,
            restored: None,
        },
        Some(cid) => {
            let (summary, report) = service
                .create_session_from_checkpoint(&caller, &cid, environment)
                .await?;
            CreatedSession {
                summary,
                restored: Some(report),
            }
        }
    };
    Ok((StatusCode::CREATED, json_of(&created)).into_response())
}

#[derive(Serialize, ToSchema)]
struct SessionList {
    /// Oldest first.
    sessions: Vec<SessionSummary>,
}

/// The caller's sessions.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions",
    responses((status = 200, description = "Oldest first.", body = SessionList)))]
async fn list_sessions(State(service): State<Service>, Auth(caller): Auth) -> Json<Value> {
    json_of(&SessionList {
        sessions: service.list_sessions(&caller),
    })
}

/// A session's details: counters, memory and CPU, limits, containment.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions", params(SessionPath),
    responses(
        (status = 200, description = "The session's details.", body = SessionInfo),
        (status = 409, description = "Codes: `session_unavailable`.", body = ErrorBody),
    ))]
async fn get_session(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(SessionPath { id }): Path<SessionPath>,
) -> Result<Json<Value>, ApiError> {
    let info = service.session(&caller, &id)?.info().await?;
    Ok(json_of(&info))
}

/// The session's user globals, sorted by name.
#[derive(Serialize, ToSchema)]
struct Namespace {
    entries: Vec<NamespaceEntry>,
    /// Entries were left out: at most 10 000 entries and 4 MiB of them are sent.
    truncated: bool,
}

/// The session's variables, functions, classes and modules (answered while code runs).
#[utoipa::path(get, path = "/v1/sessions/{id}/namespace", tag = "sessions", params(SessionPath),
    responses(
        (status = 200, description = "The namespace.", body = Namespace),
        (status = 409, description = "Codes: `session_unavailable`.", body = ErrorBody),
        (status = 504, description = "The worker did not answer within 10 s. Codes: `worker_no_answer`.", body = ErrorBody),
    ))]
async fn get_namespace(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(SessionPath { id }): Path<SessionPath>,
) -> Result<Json<Value>, ApiError> {
    let reply = service.session(&caller, &id)?.namespace().await?;
    Ok(json_of(&Namespace {
        entries: reply.entries,
        truncated: reply.truncated,
    }))
}

/// Ends a session: its worker is shut down, a running execution ends with `SessionShutdown`.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions", params(SessionPath),
    responses((status = 204, description = "Deleted.")))]
async fn delete_session(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(SessionPath { id }): Path<SessionPath>,
) -> Result<StatusCode, ApiError> {
    service.delete_session(&caller, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces the worker with a fresh one (an empty namespace); also how a `dead` session
/// comes back. Answers once the new worker is ready.
#[utoipa::path(post, path = "/v1/sessions/{id}/restart", tag = "sessions", params(SessionPath),
    responses(
        (status = 200, description = "The session, restarted.", body = SessionSummary),
        (status = 409, description = "The new worker could not start. Codes: `session_unavailable`.", body = ErrorBody),
    ))]
async fn restart(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(SessionPath { id }): Path<SessionPath>,
) -> Result<Json<Value>, ApiError> {
    let summary = service.session(&caller, &id)?.restart().await?;
    Ok(json_of(&summary))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ExecuteBody {
    /// Python source; the value of a trailing expression is the result. At most
    /// `max_code_bytes`.
    code: String,
    /// Seconds, > 0: then the code gets KeyboardInterrupt and the execution ends with
    /// `ExecutionTimeout`. The tenant's `execution_time_limit_secs` caps it.
    #[schema(exclusive_minimum = 0.0)]
    timeout: Option<f64>,
    /// Answers to the code's `input()` calls, in order, without the newline.
    #[serde(default)]
    stdin: Vec<String>,
    /// The execution's id (default: a UUID); not one the session still keeps.
    execution_id: Option<String>,
    /// `null` or absent: the default (`commit_always`).
    #[serde(default)]
    transaction_policy: Option<TransactionPolicy>,
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// The description of an answer that is JSON, or an SSE stream, in the document.
const JSON_OR_SSE: &str = "JSON; or, with `Accept: text/event-stream`, server-sent events, \
    one per execution event: `event:` is its type (`output`, `input`, `display`, `result`, \
    `error`), `id:` its `seq`, `data:` the event as one line of JSON (`SequencedEvent`). The \
    stream ends after the terminal `result` or `error` event.";

/// Runs code.
///
/// With `Accept: text/event-stream` its events as they come (`stdin` answers the first
/// `input()` calls, later ones wait for `POST .../input`), else the JSON answer at the end
/// (`stdin`, then end of file, answers every `input()`). Errors *in the code* are no HTTP
/// errors: they are the answer's `error`.
#[utoipa::path(post, path = "/v1/sessions/{id}/execute", tag = "executions", params(SessionPath),
    request_body = ExecuteBody,
    responses(
        (status = 200, description = JSON_OR_SSE,
            content(
                (ExecuteAnswer = "application/json"),
                (String = "text/event-stream", item_schema = SequencedEvent),
            )),
        (status = 400, description = "A bad body, or a `timeout` that is not a positive number. Codes: `bad_request`.", body = ErrorBody),
        (status = 409, description = "`execution_id` is one the session still keeps, or the session has ended. Codes: `duplicate_execution_id`, `session_unavailable`.", body = ErrorBody),
        (status = 413, description = "Codes: `too_large`, `code_too_large`.", body = ErrorBody),
        (status = 429, description = "Rate limited, or `max_queued_executions` queued. Codes: `rate_limited`, `queue_full`.", body = ErrorBody),
    ))]
async fn execute(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(SessionPath { id }): Path<SessionPath>,
    headers: HeaderMap,
    Body(body): Body<ExecuteBody>,
) -> Result<Response, ApiError> {
    let execution = service.session(&caller, &id)?.execute(ExecuteRequest {
        code: body.code,
        timeout: body.timeout,
        execution_id: body.execution_id,
        transaction_policy: body.transaction_policy.unwrap_or_default(),
        stdin: body.stdin,
    })?;
    if wants_sse(&headers) {
        return Ok(sse(execution.follow(0)).into_response());
    }
    let reader = execution.follow_answering_eof(0);
    let limit = service.bounds().max_output_bytes;
    Ok(json_of(&super::collect::collect(reader, limit).await).into_response())
}

/// The reader's events as server-sent events, live, until the terminal one.
fn sse(reader: Reader) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = futures::stream::unfold(reader, |mut reader| async move {
        let batch = reader.next_batch().await?;
        let events: Vec<Result<SseEvent, Infallible>> = batch
            .into_iter()
            .map(|logged| {
                Ok(SseEvent::default()
                    .event(logged.kind)
                    .id(logged.seq.to_string())
                    .data(&*logged.text))
            })
            .collect();
        Some((futures::stream::iter(events), reader))
    });
    use futures::StreamExt;
    // No keep-alive comments: they would be a timer per open stream. A client whose stream
    // was cut (by a proxy) resumes with GET .../executions/{id}?since=<last id>.
    Sse::new(stream.flatten())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SinceQuery {
    /// Only the events with a `seq` above this one.
    #[serde(default)]
    #[param(minimum = 0)]
    since: u64,
}

/// An execution event as clients get it (in SSE `data:`, in a snapshot, on the WebSocket):
/// the event and its position in its execution.
#[derive(ToSchema)]
#[allow(dead_code)] // only described: the events are sent as the service logged them
struct SequencedEvent {
    /// The event's position in its execution: 1, 2, 3, ... without gaps.
    seq: u64,
    #[schema(inline)]
    #[serde(flatten)]
    event: ClientEvent,
}

/// What an execution has produced so far.
#[derive(Serialize, ToSchema)]
struct ExecutionSnapshot {
    execution_id: String,
    /// The execution has ended: `events` is all of it.
    done: bool,
    #[schema(value_type = Vec<SequencedEvent>)]
    events: Vec<Value>,
}

/// An execution's events after `since`: as server-sent events (replay, then live) with
/// `Accept: text/event-stream`, else a snapshot of what is there now.
#[utoipa::path(get, path = "/v1/sessions/{id}/executions/{execution_id}", tag = "executions",
    params(ExecutionPath, SinceQuery),
    responses(
        (status = 200, description = JSON_OR_SSE,
            content(
                (ExecutionSnapshot = "application/json"),
                (String = "text/event-stream", item_schema = SequencedEvent),
            )),
        (status = 400, description = "`since` is not a non-negative integer. Codes: `bad_request`.", body = ErrorBody),
        (status = 404, description = "No such session or execution, or the execution's events were dropped by the retention budget. Codes: `not_found`, `execution_expired`.", body = ErrorBody),
    ))]
async fn get_execution(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(ExecutionPath { id, execution_id }): Path<ExecutionPath>,
    Query(query): Query<SinceQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let execution = service.session(&caller, &id)?.execution(&execution_id)?;
    if wants_sse(&headers) {
        return Ok(sse(execution.follow(query.since)).into_response());
    }
    let events: Vec<Value> = execution
        .snapshot(query.since)
        .into_iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.text).ok())
        .collect();
    Ok(json_of(&ExecutionSnapshot {
        execution_id,
        done: execution.is_done(),
        events,
    })
    .into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct InputBody {
    /// The `id` of the `input` event.
    input_id: String,
    /// The line, without the newline; `null` or absent: end of file (`EOFError`).
    data: Option<String>,
}

/// Answers an `input()` the code is waiting in.
#[utoipa::path(post, path = "/v1/sessions/{id}/input", tag = "executions", params(SessionPath),
    request_body = InputBody,
    responses(
        (status = 204, description = "Answered."),
        (status = 404, description = "No such session, or no such input pending. Codes: `not_found`, `unknown_input`.", body = ErrorBody),
        (status = 409, description = "Codes: `session_unavailable`.", body = ErrorBody),
    ))]
async fn input(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(SessionPath { id }): Path<SessionPath>,
    Body(body): Body<InputBody>,
) -> Result<StatusCode, ApiError> {
    let session = service.session(&caller, &id)?;
    session.input(&body.input_id, body.data).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The longest `grace_timeout_ms` taken (as long as any duration the service takes: "never").
const MAX_GRACE_MS: u64 = crate::time::MAX_SECS as u64 * 1000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    execution_id: String,
    /// How long the code may take to stop after KeyboardInterrupt before the worker is
    /// killed. Default 500.
    #[serde(default, deserialize_with = "whole_millis")]
    grace_timeout_ms: Option<u64>,
}

/// A whole number of milliseconds as JSON has it: `500`, or `500.0` from a client that holds
/// its numbers as floats (JSON Schema's `integer` is both).
fn whole_millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|ms| ms.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(ms))
            .map(|ms| ms as u64)
    });
    whole.map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "{number} is not a whole, non-negative number of milliseconds"
        ))
    })
}

#[derive(Serialize, ToSchema)]
struct Cancelled {
    outcome: CancelOutcome,
}

/// Stops an execution and answers when the outcome is known: KeyboardInterrupt, then the
/// worker killed and restarted after `grace_timeout_ms`; a queued one is removed.
#[utoipa::path(post, path = "/v1/sessions/{id}/cancel", tag = "executions", params(SessionPath),
    request_body = CancelBody,
    responses(
        (status = 200, description = "The outcome.", body = Cancelled),
        (status = 409, description = "Codes: `session_unavailable`.", body = ErrorBody),
    ))]
async fn cancel(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(SessionPath { id }): Path<SessionPath>,
    Body(body): Body<CancelBody>,
) -> Result<Json<Value>, ApiError> {
    let session = service.session(&caller, &id)?;
    let grace = match body.grace_timeout_ms {
        Some(ms) if ms > MAX_GRACE_MS => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                super::http::ErrorCode::BadRequest,
                format!("grace_timeout_ms must be at most {MAX_GRACE_MS}, not {ms}"),
            ))
        }
        ms => ms.map(Duration::from_millis),
    };
    let outcome = session.cancel(&body.execution_id, grace).await?;
    Ok(json_of(&Cancelled { outcome }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct InterruptBody {
    execution_id: String,
    /// Kill the worker and start a fresh one at once (the namespace is lost).
    #[serde(default)]
    force_restart: bool,
}

#[derive(Serialize, ToSchema)]
struct Interrupted {
    outcome: InterruptOutcome,
}

/// Like cancel, but without waiting for the code to stop.
#[utoipa::path(post, path = "/v1/sessions/{id}/interrupt", tag = "executions", params(SessionPath),
    request_body = InterruptBody,
    responses(
        (status = 200, description = "The outcome.", body = Interrupted),
        (status = 409, description = "Codes: `session_unavailable`.", body = ErrorBody),
    ))]
async fn interrupt(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(SessionPath { id }): Path<SessionPath>,
    Body(body): Body<InterruptBody>,
) -> Result<Json<Value>, ApiError> {
    let session = service.session(&caller, &id)?;
    let outcome = session
        .interrupt(&body.execution_id, body.force_restart)
        .await?;
    Ok(json_of(&Interrupted { outcome }))
}
