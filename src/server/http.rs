//! The HTTP API: routes, the extractors (bearer token → the service's caller; JSON bodies
//! whose problems are answered in this API's error format), and the translation between
//! HTTP and the service: each handler parses its request, calls the service, and maps the
//! result or the [`ServiceError`] to a status and JSON; the assembly of the API's routes
//! (each with its OpenAPI description) and the service's own routes (health, metrics, pool,
//! WebSocket tickets). The session and execution routes are in `sessions.rs`. See
//! `docs/api.md`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::pool::PoolInfo;
use crate::service::{Caller, Service, ServiceError, WsTicket};

/// The stable code of an error answer (docs/api.md, "Errors"): meant for programs, unlike
/// the message. The WebSocket's error frames carry the same codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorCode {
    BadRequest,
    Unauthorized,
    NotFound,
    UnknownInput,
    ExecutionExpired,
    MethodNotAllowed,
    DuplicateExecutionId,
    SessionUnavailable,
    TooLarge,
    CodeTooLarge,
    UnsupportedMediaType,
    RateLimited,
    SessionLimit,
    QueueFull,
    WorkerNoAnswer,
    CheckpointLimit,
    CheckpointFailed,
    StoreUnavailable,
    StoreError,
    NoSessionAvailable,
    ShuttingDown,
    TooManyConnections,
    BadPath,
    IsADirectory,
    NotADirectory,
    NotAFile,
    UploadIncomplete,
    PermissionDenied,
    FileNotFound,
    DirectoryNotEmpty,
    FileTooLarge,
    SessionFilesLimit,
    /// `/mcp`: too many open MCP sessions (of the tenant: 429; in all: 503).
    McpSessionLimit,
    Internal,
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": {"code": "not_found", "message": "no such session"}}))]
pub(crate) struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorDetail {
    pub code: ErrorCode,
    /// For people; may change.
    pub message: String,
}

/// An error answer: `{"error": {"code": ..., "message": ...}}` with its status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
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
        let body = Json(ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        });
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
pub(crate) fn status_and_code(e: &ServiceError) -> (StatusCode, ErrorCode) {
    use ErrorCode as C;
    use ServiceError as E;
    match e {
        E::Unauthorized | E::TicketRefused => (StatusCode::UNAUTHORIZED, C::Unauthorized),
        E::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, C::RateLimited),
        E::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, C::ShuttingDown),
        E::SessionNotFound { .. } | E::ExecutionNotFound { .. } => {
            (StatusCode::NOT_FOUND, C::NotFound)
        }
        E::SessionLimit { .. } => (StatusCode::TOO_MANY_REQUESTS, C::SessionLimit),
        E::CodeTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, C::CodeTooLarge),
        E::InvalidTimeout { .. } | E::InvalidEnvironment { .. } => {
            (StatusCode::BAD_REQUEST, C::BadRequest)
        }
        E::DuplicateExecutionId { .. } => (StatusCode::CONFLICT, C::DuplicateExecutionId),
        E::QueueFull { .. } => (StatusCode::TOO_MANY_REQUESTS, C::QueueFull),
        E::ExecutionExpired { .. } => (StatusCode::NOT_FOUND, C::ExecutionExpired),
        E::UnknownInput { .. } => (StatusCode::NOT_FOUND, C::UnknownInput),
        E::SessionUnavailable { .. } => (StatusCode::CONFLICT, C::SessionUnavailable),
        E::WorkerNoAnswer { .. } => (StatusCode::GATEWAY_TIMEOUT, C::WorkerNoAnswer),
        E::CheckpointNotFound { .. } => (StatusCode::NOT_FOUND, C::NotFound),
        E::CheckpointFailed { .. } => (StatusCode::UNPROCESSABLE_ENTITY, C::CheckpointFailed),
        E::CheckpointTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, C::TooLarge),
        E::CheckpointLimit { .. } => (StatusCode::PAYLOAD_TOO_LARGE, C::CheckpointLimit),
        E::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, C::StoreUnavailable),
        E::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, C::StoreError),
        E::NoSessionAvailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, C::NoSessionAvailable),
        E::Files { source, .. } => super::files::status_and_code(source),
        E::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, C::Internal),
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
        Ok(service.authenticate(bearer_token(headers))?)
    }

    /// [`Auth::from_headers`] for a request that carries on work under way: let through
    /// during the shutdown grace ([`Service::authenticate_continuing`]).
    pub(crate) fn continuing_from_headers(
        headers: &HeaderMap,
        service: &Service,
    ) -> Result<Caller, ApiError> {
        Ok(service.authenticate_continuing(bearer_token(headers))?)
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
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
                    StatusCode::PAYLOAD_TOO_LARGE => {
                        (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge)
                    }
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        ErrorCode::UnsupportedMediaType,
                    ),
                    _ => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
                };
                Err(ApiError::new(status, code, rejection.body_text()))
            }
        }
    }
}

/// The API's routes with their OpenAPI document: each route is added with the description of
/// its handler, so that the router and the document cannot differ.
pub(crate) fn api_routes() -> OpenApiRouter<Service> {
    OpenApiRouter::with_openapi(super::openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(super::openapi::openapi_json))
        .routes(routes!(metrics))
        .routes(routes!(pool_info))
        .routes(routes!(ws_ticket))
        .routes(routes!(super::ws::upgrade))
        .merge(super::sessions::routes())
        .merge(super::checkpoints::routes())
        .merge(super::files::routes())
}

pub(crate) fn router(service: Service, max_body: usize) -> Router {
    let (api, document) = api_routes().split_for_parts();
    let api = api.layer(no_store());
    super::openapi::with_docs(api, &super::openapi::finish(&document))
        // A page beside the API, not in the document.
        .merge(super::playground::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
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

/// `Cache-Control: no-store` on every answer: they hold a tenant's data (outputs, files,
/// tickets), which no cache on the way, nor the browser's, may keep (an event stream's
/// `no-cache` is replaced too).
pub(crate) fn no_store() -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

/// A single-use ticket that opens the session's WebSocket from a browser (`?ticket=`):
/// a browser's WebSocket cannot carry the `Authorization` header.
#[utoipa::path(post, path = "/v1/sessions/{id}/ws-ticket", tag = "websocket",
    params(super::sessions::SessionPath),
    responses((status = 201, description = "The ticket, usable once, for `expires_in` seconds.", body = WsTicket)))]
async fn ws_ticket(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(super::sessions::SessionPath { id }): Path<super::sessions::SessionPath>,
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
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        s if s.is_client_error() => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    ApiError::new(status, code, message).into_response()
}

/// `GET /healthz`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
    /// How workers are contained (docs/security.md).
    sandbox: SandboxReport,
    containment: Containment,
    /// Only with `--sandbox off`: workers run as the server's user, in its namespaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    warning: Option<&'static str>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
enum SandboxReport {
    /// Every worker in a sandbox of its own.
    On {
        #[schema(value_type = String, example = "bubblewrap")]
        mechanism: &'static str,
        /// `none`, `host` or `outbound`.
        #[schema(value_type = String)]
        network: &'static str,
        /// `one per session` (the server runs as root) or `user namespace`.
        #[schema(value_type = String)]
        uids: &'static str,
    },
    /// `--sandbox off`.
    Off(SandboxOff),
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum SandboxOff {
    Off,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Containment {
    /// Whether sessions get cgroups: `v1`, `v2`, `unavailable`, or `unknown` before the first
    /// session.
    #[schema(value_type = String)]
    cgroups: &'static str,
    rlimits: bool,
}

/// Liveness (no token, no rate limit); `200` while the process serves HTTP, shutdown
/// included. Also says how sessions are contained on this host, so that an operator sees at
/// a glance whether workers are sandboxed (docs/security.md).
#[utoipa::path(get, path = "/healthz", tag = "service", security(()),
    responses((status = 200, description = "Alive.", body = Health)))]
async fn healthz(State(service): State<Service>) -> Json<Value> {
    let sandbox = match service.sandbox() {
        Some(config) => SandboxReport::On {
            mechanism: "bubblewrap",
            network: config.network.as_str(),
            uids: if crate::worker::host_is_root() {
                "one per session"
            } else {
                "user namespace"
            },
        },
        None => SandboxReport::Off(SandboxOff::Off),
    };
    json_of(&Health {
        status: "ok",
        sandbox,
        containment: Containment {
            cgroups: crate::worker::cgroups_in_use(),
            rlimits: true,
        },
        warning: service.sandbox().is_none().then_some(
            "workers are not sandboxed (--sandbox off): they run as the server's user, in its namespaces",
        ),
    })
}

/// Prometheus metrics (docs/api.md, "/metrics").
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text format.",
        content_type = "text/plain; version=0.0.4", body = String)))]
async fn metrics(State(service): State<Service>, _auth: Auth) -> Response {
    let text = service.metrics_text();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The pool's state and counters.
#[utoipa::path(get, path = "/v1/pool", tag = "service",
    responses((status = 200, description = "The pool.", body = PoolInfo)))]
async fn pool_info(State(service): State<Service>, _auth: Auth) -> Json<Value> {
    json_of(&service.pool_info())
}

/// A service value as the JSON body (keys sorted, as every answer of this API has them).
pub(crate) fn json_of<T: Serialize>(value: &T) -> Json<Value> {
    Json(serde_json::to_value(value).unwrap_or(Value::Null))
}
