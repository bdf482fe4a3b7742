//! `/mcp`: the Model Context Protocol tools (`crate::mcp`) over streamable HTTP (`rmcp`'s
//! `StreamableHttpService`). Every request is authenticated first, with the REST API's
//! bearer tokens: a missing or wrong token is answered `401` before any MCP traffic, and the
//! caller rides in the request's extensions to the tools, which act as that tenant through
//! the service. This module owns that gate and the bounds on what MCP over HTTP holds: open
//! MCP sessions (transports), their idle deadline, request bodies.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, SessionConfig};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::http::{ApiError, Auth};
use crate::mcp::{CallerSource, PythonTools};
use crate::service::Service;

/// MCP sessions (one per client that initialized, each with its names of sessions) open at
/// once over HTTP; an `initialize` beyond it is answered `503`.
pub const MAX_MCP_SESSIONS: usize = 256;
/// An MCP session unused this long is closed (its Python sessions stay: they are the
/// tenant's, culled by the tenant's idle timeout).
pub const MCP_SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Messages waiting to be sent on one MCP session's stream.
const CHANNEL_CAPACITY: usize = 64;

/// The gate's state: the service (to authenticate) and the MCP sessions (to count).
#[derive(Clone)]
struct Gate {
    service: Service,
    sessions: Arc<LocalSessionManager>,
}

/// The `/mcp` route. `stop` ends every MCP session (at shutdown); `max_body` bounds a
/// request's body as for the REST API.
pub(crate) fn routes(service: Service, stop: CancellationToken, max_body: usize) -> Router {
    let mut session_config = SessionConfig::default();
    session_config.channel_capacity = CHANNEL_CAPACITY;
    // not polling: rmcp's one deadline per MCP session, reset by its use; it bounds how long
    // an abandoned MCP session is held.
    session_config.keep_alive = Some(MCP_SESSION_IDLE);
    let mut sessions = LocalSessionManager::default();
    sessions.session_config = session_config;
    let sessions = Arc::new(sessions);
    let config = StreamableHttpServerConfig::default()
        // No keep-alive comments on idle streams: they would be a timer per open stream
        // (as for the REST API's server-sent events).
        .with_sse_keep_alive(None)
        .with_cancellation_token(stop)
        .with_max_request_body_bytes(max_body)
        // Every request carries a tenant's bearer token (checked before this service sees
        // it), which a DNS-rebinding page cannot know: the Host is not checked, so that the
        // server answers under whatever name it is deployed.
        .disable_allowed_hosts();
    let mcp = StreamableHttpService::new(
        {
            let service = service.clone();
            move || Ok(PythonTools::new(service.clone(), CallerSource::PerRequest))
        },
        sessions.clone(),
        config,
    );
    let gate = Gate { service, sessions };
    Router::new()
        .route_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state(gate, authenticate))
}

/// The caller of the request's bearer token, put in the request's extensions (the tools
/// read it); `401` without a valid token, `503` for a new MCP session beyond
/// [`MAX_MCP_SESSIONS`].
async fn authenticate(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let caller = match Auth::from_headers(request.headers(), &gate.service) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    // For the access log: the tenant's name, never its token.
    tracing::Span::current().record("tenant", caller.tenant_name());
    let opens_session = request.method() == axum::http::Method::POST
        && !request.headers().contains_key("mcp-session-id");
    if opens_session && gate.sessions.sessions.read().await.len() >= MAX_MCP_SESSIONS {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mcp_session_limit",
            format!(
                "{MAX_MCP_SESSIONS} MCP sessions are open: close one (DELETE /mcp) or retry later"
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}
