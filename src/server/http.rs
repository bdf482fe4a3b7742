//! The HTTP API: routing, authentication (bearer token → tenant, per-tenant rate limit),
//! JSON errors with the right status for every client mistake, and the handlers. See
//! `docs/api.md`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};

use super::execlog::ExecLog;
use super::{AppState, Hosted, Tenant};
use crate::error::Error;
use crate::session::{CancelOutcome, Event, InterruptOutcome, Session};

type AppStateRef = Arc<AppState>;

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

    fn not_found(what: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
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

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code) = match &e {
            Error::UnknownInput(_) => (StatusCode::NOT_FOUND, "unknown_input"),
            Error::SessionClosed | Error::SessionDead(_) => {
                (StatusCode::CONFLICT, "session_unavailable")
            }
            Error::AcquireTimeout(_) | Error::PoolClosed => {
                (StatusCode::SERVICE_UNAVAILABLE, "no_session_available")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// The caller's tenant, from `Authorization: Bearer <token>`, after its rate limit.
pub(crate) struct Auth(pub Arc<Tenant>);

impl FromRequestParts<AppStateRef> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppStateRef) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(tenant) = token.and_then(|t| state.tenants.get(t)) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid bearer token (Authorization: Bearer <token>)",
            ));
        };
        if !tenant.limiter.try_acquire() {
            let wait = tenant.limiter.time_until_available();
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "request rate limit exceeded; retry in {:.3} s",
                    wait.as_secs_f64()
                ),
            );
            err.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
            return Err(err);
        }
        if state.closing.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ));
        }
        Ok(Auth(tenant.clone()))
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

pub(crate) fn router(state: AppStateRef) -> Router {
    let max_body = state.config.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/v1/pool", get(pool_info))
        .route("/v1/sessions", post(create_session).get(list_sessions))
        .route("/v1/sessions/{id}", get(get_session).delete(delete_session))
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
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        })
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            count_errors,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Counts error answers, and gives the few that the framework writes itself (a query
/// string that does not parse, a plain GET on the WebSocket route) this API's JSON error
/// shape instead of plain text.
async fn count_errors(State(state): State<AppStateRef>, response: Response) -> Response {
    let status = response.status();
    if status.as_u16() < 400 {
        return response;
    }
    state.metrics.record_http_error(status.as_u16());
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

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../docs/openapi.json"),
    )
        .into_response()
}

async fn metrics(State(state): State<AppStateRef>, _auth: Auth) -> Response {
    let sessions = crate::sync::lock_unpoisoned(&state.sessions).len();
    let tenants: Vec<_> = state
        .tenants
        .values()
        .map(|t| (t.config.name.clone(), t.limiter.metrics()))
        .collect();
    let text = state.metrics.render(sessions, &state.pool.info(), &tenants);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn pool_info(State(state): State<AppStateRef>, _auth: Auth) -> Json<Value> {
    Json(serde_json::to_value(state.pool.info()).unwrap_or(Value::Null))
}

fn summary(h: &Hosted) -> Value {
    json!({"id": h.id, "state": h.session.state(), "created_at": h.created_at})
}

fn hosted(state: &AppState, auth: &Auth, id: &str) -> Result<Arc<Hosted>, ApiError> {
    state
        .hosted(&auth.0.config.name, id)
        .ok_or_else(|| ApiError::not_found("session"))
}

async fn create_session(
    State(state): State<AppStateRef>,
    auth: Auth,
) -> Result<Response, ApiError> {
    let tenant = &auth.0.config;
    // Reserved before waiting for the pool, so concurrent requests cannot all pass the check.
    let Some(_reservation) = state.reserve_session(&tenant.name, tenant.max_sessions) else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "session_limit",
            format!(
                "tenant {:?} already holds {} sessions (its limit)",
                tenant.name, tenant.max_sessions
            ),
        ));
    };
    let guard = state.pool.acquire().await?;
    let hosted = state.add_session(&tenant.name, guard);
    Ok((StatusCode::CREATED, Json(summary(&hosted))).into_response())
}

async fn list_sessions(State(state): State<AppStateRef>, auth: Auth) -> Json<Value> {
    let sessions = crate::sync::lock_unpoisoned(&state.sessions);
    let mut mine: Vec<&Arc<Hosted>> = sessions
        .values()
        .filter(|h| h.tenant == auth.0.config.name)
        .collect();
    mine.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
    Json(json!({"sessions": mine.into_iter().map(|h| summary(h)).collect::<Vec<_>>()}))
}

async fn get_session(
    State(state): State<AppStateRef>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let h = hosted(&state, &auth, &id)?;
    let info = h.session.info().await?;
    let mut value = serde_json::to_value(info).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("created_at".into(), json!(h.created_at));
    }
    Ok(Json(value))
}

async fn delete_session(
    State(state): State<AppStateRef>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    hosted(&state, &auth, &id)?;
    state.remove_session(&id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteRequest {
    code: String,
    /// Seconds.
    timeout: Option<f64>,
    #[serde(default)]
    stdin: Vec<String>,
    execution_id: Option<String>,
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

async fn execute(
    State(state): State<AppStateRef>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(request): Body<ExecuteRequest>,
) -> Result<Response, ApiError> {
    let h = hosted(&state, &auth, &id)?;
    if request.code.len() > state.config.max_code_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "code_too_large",
            format!(
                "code is {} bytes; the limit is {}",
                request.code.len(),
                state.config.max_code_bytes
            ),
        ));
    }
    let timeout = match request.timeout {
        None => None,
        Some(t) if t > 0.0 && crate::time::duration_from_secs(t).is_some() => {
            crate::time::duration_from_secs(t)
        }
        Some(t) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("timeout must be a positive number of seconds, not {t}"),
            ))
        }
    };
    if let Some(eid) = &request.execution_id {
        if h.execution(eid).is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "duplicate_execution_id",
                format!("execution {eid:?} exists already"),
            ));
        }
    }
    let log = state.start_execution(&h, request.code, request.execution_id, timeout);
    let stdin: VecDeque<String> = request.stdin.into();
    if wants_sse(&headers) {
        return Ok(sse(state, h.session.clone(), log, 0, stdin).into_response());
    }
    Ok(Json(collect(&state, &h.session, &log, stdin).await).into_response())
}

/// Reads an execution to its end, answering `input()` from `stdin` (then end-of-file).
async fn collect(
    state: &AppState,
    session: &Session,
    log: &Arc<ExecLog>,
    mut stdin: VecDeque<String>,
) -> Value {
    let _reader = log.attach(Some((session.clone(), state.config.reconnect_grace())));
    let mut outputs = Vec::new();
    let (mut result, mut error, mut execution_time) = (Value::Null, Value::Null, 0.0);
    let mut since = 0;
    while let Some(batch) = log.next_after(since).await {
        for logged in batch {
            since = logged.seq;
            let Some(event) = logged.event() else {
                continue;
            };
            match event {
                Event::Output { stream, data } => {
                    outputs.push(json!({"stream": stream, "data": data}))
                }
                Event::Input { input_id, .. } => answer_input(session, &input_id, &mut stdin).await,
                Event::Result {
                    value,
                    repr,
                    execution_time: t,
                } => {
                    result = json!({"value": value, "repr": repr});
                    execution_time = t.as_secs_f64();
                }
                Event::Error {
                    exception_type,
                    exception_message,
                    traceback,
                } => {
                    error = json!({
                        "exception_type": exception_type,
                        "exception_message": exception_message,
                        "traceback": traceback,
                    });
                }
            }
        }
    }
    json!({
        "execution_id": log.execution_id,
        "outputs": outputs,
        "result": result,
        "error": error,
        "execution_time": execution_time,
    })
}

async fn answer_input(session: &Session, input_id: &str, stdin: &mut VecDeque<String>) {
    // An answer for an input that meanwhile ended (cancelled) is refused: nothing to do.
    let _ = session.answer_input(input_id, stdin.pop_front()).await;
}

/// The execution's events from `since` on as server-sent events, live.
fn sse(
    state: AppStateRef,
    session: Session,
    log: Arc<ExecLog>,
    since: u64,
    stdin: VecDeque<String>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let reader = log.attach(Some((session.clone(), state.config.reconnect_grace())));
    let stream = futures::stream::unfold(
        (log, since, stdin, session, reader),
        |(log, since, mut stdin, session, reader)| async move {
            let batch = log.next_after(since).await?;
            let mut events = Vec::with_capacity(batch.len());
            let mut last = since;
            for logged in batch {
                last = logged.seq;
                if logged.kind == "input" && !stdin.is_empty() {
                    if let Some(Event::Input { input_id, .. }) = logged.event() {
                        answer_input(&session, &input_id, &mut stdin).await;
                    }
                }
                events.push(Ok(SseEvent::default()
                    .event(logged.kind)
                    .id(logged.seq.to_string())
                    .data(&*logged.text)));
            }
            Some((
                futures::stream::iter(events),
                (log, last, stdin, session, reader),
            ))
        },
    );
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
    State(state): State<AppStateRef>,
    auth: Auth,
    Path((id, execution_id)): Path<(String, String)>,
    Query(query): Query<SinceQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let h = hosted(&state, &auth, &id)?;
    let log = h
        .execution(&execution_id)
        .ok_or_else(|| ApiError::not_found("execution"))?;
    if wants_sse(&headers) {
        return Ok(sse(
            state.clone(),
            h.session.clone(),
            log,
            query.since,
            VecDeque::new(),
        )
        .into_response());
    }
    let events: Vec<Value> = log
        .snapshot_after(query.since)
        .into_iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.text).ok())
        .collect();
    Ok(Json(json!({
        "execution_id": execution_id,
        "done": log.is_done(),
        "events": events,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputRequest {
    input_id: String,
    /// `null`: end of file.
    data: Option<String>,
}

async fn input(
    State(state): State<AppStateRef>,
    auth: Auth,
    Path(id): Path<String>,
    Body(request): Body<InputRequest>,
) -> Result<StatusCode, ApiError> {
    let h = hosted(&state, &auth, &id)?;
    h.session
        .answer_input(&request.input_id, request.data)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    execution_id: String,
    grace_timeout_ms: Option<u64>,
}

async fn cancel(
    State(state): State<AppStateRef>,
    auth: Auth,
    Path(id): Path<String>,
    Body(request): Body<CancelRequest>,
) -> Result<Json<Value>, ApiError> {
    let h = hosted(&state, &auth, &id)?;
    let grace = Duration::from_millis(request.grace_timeout_ms.unwrap_or(500));
    let outcome: CancelOutcome = h.session.cancel(&request.execution_id, grace).await?;
    Ok(Json(json!({"outcome": outcome})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InterruptRequest {
    execution_id: String,
    #[serde(default)]
    force_restart: bool,
}

async fn interrupt(
    State(state): State<AppStateRef>,
    auth: Auth,
    Path(id): Path<String>,
    Body(request): Body<InterruptRequest>,
) -> Result<Json<Value>, ApiError> {
    let h = hosted(&state, &auth, &id)?;
    let outcome: InterruptOutcome = h
        .session
        .interrupt(&request.execution_id, request.force_restart)
        .await?;
    Ok(Json(json!({"outcome": outcome})))
}

async fn restart(
    State(state): State<AppStateRef>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let h = hosted(&state, &auth, &id)?;
    h.session.restart().await?;
    Ok(Json(summary(&h)))
}
