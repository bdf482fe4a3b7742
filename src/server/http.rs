//! The HTTP API: routes, the extractors (bearer token → the service's caller; JSON bodies
//! whose problems are answered in this API's error format), and the translation between
//! HTTP and the service: each handler parses its request, calls the service, and maps the
//! result or the [`ServiceError`] to a status and JSON (or server-sent events). See
//! `docs/api.md`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::service::{
    AfterStdin, Caller, ExecuteRequest, Reader, Service, ServiceError, SessionSummary,
};

/// An error answer: `{"error": {"code": ..., "message": ...}}` with its status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut response = (self.status, body).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// The HTTP status and the stable error code (`docs/api.md`, "Errors") of a refusal; the
/// WebSocket's error frames carry the same code.
pub(crate) fn status_and_code(e: &ServiceError) -> (StatusCode, &'static str) {
    use ServiceError as E;
    match e {
        E::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
        E::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        E::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        E::SessionNotFound { .. } | E::ExecutionNotFound { .. } => {
            (StatusCode::NOT_FOUND, "not_found")
        }
        E::SessionLimit { .. } => (StatusCode::TOO_MANY_REQUESTS, "session_limit"),
        E::CodeTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "code_too_large"),
        E::InvalidTimeout { .. } | E::InvalidEnvironment { .. } => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        E::DuplicateExecutionId { .. } => (StatusCode::CONFLICT, "duplicate_execution_id"),
        E::QueueFull { .. } => (StatusCode::TOO_MANY_REQUESTS, "queue_full"),
        E::ExecutionExpired { .. } => (StatusCode::NOT_FOUND, "execution_expired"),
        E::UnknownInput { .. } => (StatusCode::NOT_FOUND, "unknown_input"),
        E::SessionUnavailable { .. } => (StatusCode::CONFLICT, "session_unavailable"),
        E::WorkerNoAnswer { .. } => (StatusCode::GATEWAY_TIMEOUT, "worker_no_answer"),
        E::CheckpointNotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        E::CheckpointFailed { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "checkpoint_failed"),
        E::CheckpointTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        E::CheckpointLimit { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "checkpoint_limit"),
        E::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        E::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
        E::NoSessionAvailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_session_available"),
        E::Files { source, .. } => super::files::status_and_code(source),
        E::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        use ServiceError as E;
        let (status, code) = status_and_code(&e);
        // HTTP's own words where they have always differed from the service's (the WebSocket
        // keeps its own too); every other message is the service's.
        let message = match &e {
            E::Unauthorized => {
                "missing or invalid bearer token (Authorization: Bearer <token>)".to_string()
            }
            E::InvalidTimeout { secs } => {
                format!("timeout must be a positive number of seconds, not {secs}")
            }
            _ => e.to_string(),
        };
        let mut error = ApiError::new(status, code, message);
        if let E::RateLimited { retry_in, .. } = &e {
            error.retry_after = Some(retry_in.as_secs_f64().ceil().max(1.0) as u64);
        }
        error
    }
}

/// The caller, from `Authorization: Bearer <token>`, after its tenant's rate limit and the
/// shutdown check (`Service::authenticate`).
pub(crate) struct Auth(pub Caller);

impl FromRequestParts<Service> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, service: &Service) -> Result<Self, ApiError> {
        let caller = Auth::from_headers(&parts.headers, service)?;
        // For the access log (`access_log.rs`): the tenant's name, never its token.
        tracing::Span::current().record("tenant", caller.tenant_name());
        Ok(Auth(caller))
    }
}

impl Auth {
    /// The caller of `Authorization: Bearer <token>` in `headers`.
    pub(crate) fn from_headers(headers: &HeaderMap, service: &Service) -> Result<Caller, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        Ok(service.authenticate(token)?)
    }
}

/// A JSON body whose problems are answered in this API's error format (malformed: 400, too
/// large: 413, not JSON: 415).
pub(crate) struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => {
                let (status, code) = match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
                    }
                    _ => (StatusCode::BAD_REQUEST, "bad_request"),
                };
                Err(ApiError::new(status, code, rejection.body_text()))
            }
        }
    }
}

pub(crate) fn router(service: Service, max_body: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/v1/pool", get(pool_info))
        .route("/v1/sessions", post(create_session).get(list_sessions))
        .route("/v1/sessions/{id}", get(get_session).delete(delete_session))
        .route("/v1/sessions/{id}/namespace", get(get_namespace))
        .route("/v1/sessions/{id}/execute", post(execute))
        .route("/v1/sessions/{id}/input", post(input))
        .route("/v1/sessions/{id}/cancel", post(cancel))
        .route("/v1/sessions/{id}/interrupt", post(interrupt))
        .route("/v1/sessions/{id}/restart", post(restart))
        .route(
            "/v1/sessions/{id}/executions/{execution_id}",
            get(get_execution),
        )
        .route("/v1/sessions/{id}/ws", get(super::ws::upgrade))
        .route("/v1/sessions/{id}/ws-ticket", post(ws_ticket))
        .merge(super::checkpoints::routes())
        .merge(super::files::routes())
        .merge(super::playground::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        })
        .layer(axum::middleware::map_response_with_state(
            service.clone(),
            count_errors,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(service)
}

/// A single-use ticket that opens the session's WebSocket from a browser (`?ticket=`).
async fn ws_ticket(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ticket = service.issue_ws_ticket(&caller, &id)?;
    Ok((StatusCode::CREATED, Json(ticket)).into_response())
}

/// Counts error answers, and gives the few that the framework writes itself (a query
/// string that does not parse, a plain GET on the WebSocket route) this API's JSON error
/// shape instead of plain text.
async fn count_errors(State(service): State<Service>, response: Response) -> Response {
    let status = response.status();
    if status.as_u16() < 400 {
        return response;
    }
    service.record_http_error(status.as_u16());
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    // Framework rejections are short texts; anything longer is cut, not buffered.
    let text = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    ApiError::new(status, code, message).into_response()
}

/// Also says how sessions are contained on this host, so that an operator sees at a glance
/// whether workers are sandboxed (docs/security.md).
async fn healthz(State(service): State<Service>) -> Json<Value> {
    let sandbox = match service.sandbox() {
        Some(config) => json!({
            "mechanism": "bubblewrap",
            "network": config.network.as_str(),
            "uids": if crate::worker::host_is_root() { "one per session" } else { "user namespace" },
        }),
        None => json!("off"),
    };
    let mut body = json!({
        "status": "ok",
        "sandbox": sandbox,
        "containment": {
            "cgroups": crate::worker::cgroups_in_use(),
            "rlimits": true,
        },
    });
    if service.sandbox().is_none() {
        body["warning"] = json!(
            "workers are not sandboxed (--sandbox off): they run as the server's user, in its namespaces"
        );
    }
    Json(body)
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../docs/openapi.json"),
    )
        .into_response()
}

async fn metrics(State(service): State<Service>, _auth: Auth) -> Response {
    let text = service.metrics_text();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn pool_info(State(service): State<Service>, _auth: Auth) -> Json<Value> {
    json_of(&service.pool_info())
}

/// A service value as the JSON body (keys sorted, as every answer of this API has them).
pub(crate) fn json_of<T: Serialize>(value: &T) -> Json<Value> {
    Json(serde_json::to_value(value).unwrap_or(Value::Null))
}

/// The optional body of `POST /v1/sessions`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// A checkpoint of the caller's to start from (its namespace, replacing the new one's).
    from_checkpoint: Option<String>,
    /// The session's own environment variables (docs/api.md, "Per-session environment").
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    /// Its working directory, relative to the session's directory.
    cwd: Option<std::path::PathBuf>,
}

async fn create_session(
    State(service): State<Service>,
    Auth(caller): Auth,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // No body, or `{}`, as before; else a JSON object of `CreateBody`.
    let body: CreateBody = if body.iter().all(u8::is_ascii_whitespace) {
        CreateBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the body: {e}"),
            )
        })?
    };
    let environment = crate::session::SessionEnvironment {
        vars: body.env.into_iter().collect(),
        cwd: body.cwd,
    };
    match body.from_checkpoint {
        None => {
            let summary = service.create_session_with(&caller, environment).await?;
            Ok((StatusCode::CREATED, json_of(&summary)).into_response())
        }
        Some(cid) => {
            let (summary, report) = service
                .create_session_from_checkpoint(&caller, &cid, environment)
                .await?;
            let mut answer = serde_json::to_value(&summary).unwrap_or(Value::Null);
            answer["restored"] = serde_json::to_value(&report).unwrap_or(Value::Null);
            Ok((StatusCode::CREATED, Json(answer)).into_response())
        }
    }
}

#[derive(Serialize)]
struct SessionList {
    sessions: Vec<SessionSummary>,
}

async fn list_sessions(State(service): State<Service>, Auth(caller): Auth) -> Json<Value> {
    json_of(&SessionList {
        sessions: service.list_sessions(&caller),
    })
}

async fn get_session(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = service.session(&caller, &id)?.info().await?;
    Ok(json_of(&info))
}

/// The session's user globals: `{"entries": [{name, type, repr, size, source?, module?}],
/// "truncated": bool}` (docs/api.md).
async fn get_namespace(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let reply = service.session(&caller, &id)?.namespace().await?;
    Ok(Json(json!({
        "entries": reply.entries,
        "truncated": reply.truncated,
    })))
}

async fn delete_session(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    service.delete_session(&caller, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteBody {
    code: String,
    /// Seconds.
    timeout: Option<f64>,
    #[serde(default)]
    stdin: Vec<String>,
    execution_id: Option<String>,
    /// `null` or absent: the default (`commit_always`).
    #[serde(default)]
    transaction_policy: Option<crate::protocol::TransactionPolicy>,
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// Runs code: with `Accept: text/event-stream` its events as they come (`stdin` answers the
/// first `input()` calls, later ones wait for `POST .../input`), else the JSON answer at the
/// end (`stdin`, then end of file, answers every `input()`).
async fn execute(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<ExecuteBody>,
) -> Result<Response, ApiError> {
    let execution = service.session(&caller, &id)?.execute(ExecuteRequest {
        code: body.code,
        timeout: body.timeout,
        execution_id: body.execution_id,
        transaction_policy: body.transaction_policy.unwrap_or_default(),
    })?;
    let stdin: VecDeque<String> = body.stdin.into();
    if wants_sse(&headers) {
        let reader = execution.follow_answering(0, stdin, AfterStdin::Wait);
        return Ok(sse(reader).into_response());
    }
    let reader = execution.follow_answering(0, stdin, AfterStdin::Eof);
    let limit = service.bounds().max_output_bytes;
    Ok(Json(super::collect::collect(reader, limit).await).into_response())
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

#[derive(Deserialize)]
struct SinceQuery {
    #[serde(default)]
    since: u64,
}

/// What an execution produced after `since`: as server-sent events (replay, then live) with
/// `Accept: text/event-stream`, else a JSON snapshot of what is there now.
async fn get_execution(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path((id, execution_id)): Path<(String, String)>,
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
    Ok(Json(json!({
        "execution_id": execution_id,
        "done": execution.is_done(),
        "events": events,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputBody {
    input_id: String,
    /// `null`: end of file.
    data: Option<String>,
}

async fn input(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Body(body): Body<InputBody>,
) -> Result<StatusCode, ApiError> {
    let session = service.session(&caller, &id)?;
    session.input(&body.input_id, body.data).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    execution_id: String,
    grace_timeout_ms: Option<u64>,
}

async fn cancel(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Body(body): Body<CancelBody>,
) -> Result<Json<Value>, ApiError> {
    let session = service.session(&caller, &id)?;
    let grace = body.grace_timeout_ms.map(Duration::from_millis);
    let outcome = session.cancel(&body.execution_id, grace).await?;
    Ok(Json(json!({"outcome": outcome})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InterruptBody {
    execution_id: String,
    #[serde(default)]
    force_restart: bool,
}

async fn interrupt(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Body(body): Body<InterruptBody>,
) -> Result<Json<Value>, ApiError> {
    let session = service.session(&caller, &id)?;
    let outcome = session
        .interrupt(&body.execution_id, body.force_restart)
        .await?;
    Ok(Json(json!({"outcome": outcome})))
}

async fn restart(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let summary = service.session(&caller, &id)?.restart().await?;
    Ok(json_of(&summary))
}
