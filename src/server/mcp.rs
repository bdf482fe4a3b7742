//! `/mcp`: the Model Context Protocol tools (`crate::mcp`) over streamable HTTP (`rmcp`'s
//! `StreamableHttpService`). Every request is authenticated first, with the REST API's
//! bearer tokens: a missing or wrong token is answered `401` before any MCP traffic, and the
//! caller rides in the request's extensions to the tools, which act as that tenant through
//! the service. This module owns that gate and the bounds on what MCP over HTTP holds: open
//! MCP sessions (transports) in all and per tenant, their idle deadline, request bodies.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, SessionConfig};
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::http::{ApiError, Auth};
use crate::mcp::{CallerSource, PythonTools};
use crate::service::Service;
use crate::sync::lock_unpoisoned as lock;

/// MCP sessions (one per client that initialized, each with its names of sessions) open at
/// once over HTTP, and of one tenant; an `initialize` beyond them is refused.
pub const MAX_MCP_SESSIONS: usize = 256;
pub const MAX_MCP_SESSIONS_PER_TENANT: usize = 64;
/// An MCP session unused this long is closed, and the sessions it made with it
/// (`mcp::Names`). Longer than the longest run a tool call may ask for (an hour, waits in
/// `input()` included): rmcp counts a silent run as unused.
pub const MCP_SESSION_IDLE: Duration = Duration::from_secs(65 * 60);
const _: () = assert!(MCP_SESSION_IDLE.as_secs() as f64 > crate::mcp::MAX_TIMEOUT_SECS);
/// Messages waiting to be sent on one MCP session's stream.
const CHANNEL_CAPACITY: usize = 64;

/// The gate's state: the service (to authenticate) and the MCP sessions (to count).
#[derive(Clone)]
struct Gate {
    service: Service,
    sessions: Arc<LocalSessionManager>,
    owners: Arc<Mutex<Owners>>,
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
    let gate = Gate {
        service,
        sessions,
        owners: Arc::default(),
    };
    Router::new()
        .route_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state(gate, authenticate))
        .layer(super::http::no_store())
}

/// The caller of the request's bearer token, put in the request's extensions (the tools
/// read it); `401` without a valid token. A request that opens an MCP session is counted
/// ([`Owners`]).
async fn authenticate(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    // A request of an open MCP session is let through during the shutdown grace: a client
    // may ask something more (the official one lists the tools) before it takes a tool's
    // result, and the tools themselves refuse new work then. Opening one is refused (503).
    // Only a session that is open: a made-up id is new work like any other. Looked up only
    // once shutdown has begun (before, every request passes the same check).
    let open_session = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|_| gate.service.is_shutting_down());
    let continues = match open_session {
        Some(id) => gate
            .sessions
            .has_session(&id.to_string().into())
            .await
            .unwrap_or(false),
        None => false,
    };
    let authenticated = if continues {
        Auth::continuing_from_headers(request.headers(), &gate.service)
    } else {
        Auth::from_headers(request.headers(), &gate.service)
    };
    let caller = match authenticated {
        Ok(caller) => caller,
        Err(e) => return gate.refuse(e),
    };
    // For the access log: the tenant's name, never its token.
    tracing::Span::current().record("tenant", caller.tenant_name());
    let tenant = caller.tenant_name().to_string();
    request.extensions_mut().insert(caller);
    let opens_session = request.method() == axum::http::Method::POST
        && !request.headers().contains_key(SESSION_HEADER);
    if !opens_session {
        let deletes = request.method() == axum::http::Method::DELETE;
        let response = next.run(request).await;
        if deletes && response.status() == StatusCode::ACCEPTED {
            // rmcp answers a session's DELETE `202`; the protocol leaves the status open, and
            // clients (the official Python one) take only 200 or 204 for a clean close.
            return StatusCode::NO_CONTENT.into_response();
        }
        return response;
    }
    let live: HashSet<String> = gate
        .sessions
        .sessions
        .read()
        .await
        .keys()
        .map(|id| id.to_string())
        .collect();
    let opening = match Opening::reserve(&gate.owners, &tenant, &live) {
        Ok(opening) => opening,
        Err(refusal) => return gate.refuse(refusal),
    };
    let response = next.run(request).await;
    if let Some(id) = response
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        lock(&gate.owners).by_session.insert(id.to_string(), tenant);
    }
    drop(opening);
    response
}

const SESSION_HEADER: &str = "mcp-session-id";

impl Gate {
    /// A refusal's answer, counted in `/metrics` as the REST API's errors are.
    fn refuse(&self, error: ApiError) -> Response {
        let response = error.into_response();
        self.service.record_http_error(response.status().as_u16());
        response
    }
}

/// Who opened each open MCP session, and the openings under way per tenant: what the bounds
/// count. A session rmcp closed (idle, DELETE, shutdown) is forgotten at the next opening.
#[derive(Default)]
struct Owners {
    /// MCP session id → tenant name.
    by_session: HashMap<String, String>,
    /// Tenant name → `initialize` requests under way.
    opening: HashMap<String, usize>,
}

/// An `initialize` under way, counted against the bounds until it is answered (or dropped).
struct Opening {
    owners: Arc<Mutex<Owners>>,
    tenant: String,
}

impl Opening {
    /// A place for one more MCP session of `tenant` (sessions not in `live` are gone), or
    /// the refusal: `429 mcp_session_limit` beyond [`MAX_MCP_SESSIONS_PER_TENANT`], `503
    /// mcp_session_limit` beyond [`MAX_MCP_SESSIONS`].
    fn reserve(
        owners: &Arc<Mutex<Owners>>,
        tenant: &str,
        live: &HashSet<String>,
    ) -> Result<Opening, ApiError> {
        let mut held = lock(owners);
        held.by_session.retain(|id, _| live.contains(id));
        let total = held.by_session.len() + held.opening.values().sum::<usize>();
        let mine = held.by_session.values().filter(|t| *t == tenant).count()
            + held.opening.get(tenant).copied().unwrap_or(0);
        if mine >= MAX_MCP_SESSIONS_PER_TENANT {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                super::http::ErrorCode::McpSessionLimit,
                format!("this tenant has {MAX_MCP_SESSIONS_PER_TENANT} MCP sessions open: close one (DELETE /mcp) first"),
            ));
        }
        if total >= MAX_MCP_SESSIONS {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                super::http::ErrorCode::McpSessionLimit,
                format!("{MAX_MCP_SESSIONS} MCP sessions are open: retry later"),
            ));
        }
        *held.opening.entry(tenant.to_string()).or_default() += 1;
        Ok(Opening {
            owners: owners.clone(),
            tenant: tenant.to_string(),
        })
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        let mut held = lock(&self.owners);
        if let Some(count) = held.opening.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.opening.remove(&self.tenant);
            }
        }
    }
}
