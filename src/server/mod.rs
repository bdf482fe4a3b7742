//! `pyrepl3 serve`: the service (`crate::service`) over HTTP and WebSocket. This module owns
//! the server's life — bind, serve, and the shutdown sequence with its deadlines — and its
//! public handle. Routes, extractors and the translation between HTTP and the service are in
//! `http.rs`; the WebSocket loop and its frames in `ws/`; the accept loop, socket options
//! and connection limits in `listener.rs`; the access log and request ids in
//! `access_log.rs`; the session and execution routes in `sessions.rs`, the checkpoint routes
//! in `checkpoints.rs`, the files routes in `files.rs`; the OpenAPI document and the `/docs`
//! page in `openapi.rs`; the playground page at `/` in `playground.rs`; the MCP endpoint
//! `/mcp` in `mcp.rs`.

mod access_log;
mod checkpoints;
mod collect;
pub mod config;
mod cors;
mod files;
mod http;
mod listener;
mod mcp;
mod openapi;
mod playground;
mod sessions;
mod ws;

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::Error;
use crate::service::Service;
pub use config::{Overrides, ServerConfig, TenantConfig};
pub use listener::raise_open_file_limit;

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    tokens: Vec<(String, String)>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// (tenant name, token) pairs, e.g. to print a generated token.
    pub fn tokens(&self) -> &[(String, String)] {
        &self.tokens
    }

    /// Shuts down (see [`start`]) and waits until it is done.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.stop.cancel();
        self.wait().await
    }

    /// Waits until the server has stopped (after `shutdown`, or a fatal error).
    pub async fn wait(self) -> Result<(), Error> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(Error::Io {
                context: "running the server",
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// A token that cancels to shut the server down.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// Binds, starts the service (its pool filled) and serves until the handle's stop token is
/// cancelled. Shutdown: running executions get the shutdown grace to end (requests meanwhile
/// are answered `503 shutting_down`), then end with `ServerShutdown`; then no connection is
/// accepted, open ones close after their current answer, and those still open after the
/// drain deadline (e.g. a client that stopped reading its stream) are dropped, WebSockets
/// and their tasks included (every task of a connection is in one tracker); every session
/// is shut down; returns when no worker is left and no task of the server is.
pub async fn start(config: ServerConfig) -> Result<ServerHandle, Error> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Io {
            context: "binding the listen address",
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(Error::io("reading the bound address"))?;
    let service = Service::start(config.service_config()).await?;
    let tokens = config
        .tenants
        .iter()
        .map(|t| (t.name.clone(), t.token.clone()))
        .collect();
    let stop = CancellationToken::new();
    let shutdown = listener::Shutdown {
        stop: CancellationToken::new(),
        drop_all: CancellationToken::new(),
        tracker: TaskTracker::new(),
    };
    // WebSocket connections outlive their HTTP connection's task (axum spawns them): they
    // join the same tracker and drain deadline.
    let ws_tasks = ws::Tasks {
        tracker: shutdown.tracker.clone(),
        drop_all: shutdown.drop_all.clone(),
        max_message_bytes: config.max_body_bytes,
    };
    let routes = http::router(service.clone(), config.max_body_bytes).merge(mcp::routes(
        service.clone(),
        shutdown.stop.clone(),
        config.max_body_bytes,
    ));
    let mut router = access_log::layer(routes).layer(axum::Extension(ws_tasks));
    if let Some(cors) = cors::layer(&config.cors_origins) {
        router = router.layer(cors); // outermost: preflights are answered before auth
    }
    let limits = listener::Limits {
        max_connections: listener::connection_cap(config.max_connections, config.pool.max_sessions),
        header_read_timeout: config.header_read_timeout(),
    };
    let drain = config.shutdown_drain();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let stopping = async {
                stop.cancelled().await;
                // Still accepting meanwhile: requests are answered `503 shutting_down`.
                // Executions end and WebSocket loops close; then their connections can.
                service.shut_down().await;
                tracing::info!("shutdown: executions ended; closing the connections");
                // No new connection; each open one ends after its current answer.
                shutdown.stop.cancel();
            };
            let accepting =
                listener::accept_loop(listener, router, service.clone(), limits, shutdown.clone());
            tokio::join!(accepting, stopping);
            shutdown.tracker.close();
            // not polling: one deadline for the connections still writing their answers
            if tokio::time::timeout(drain, shutdown.tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    open = shutdown.tracker.len(),
                    "connections still open after the drain deadline: dropped"
                );
                shutdown.drop_all.cancel();
                shutdown.tracker.wait().await;
            }
            tracing::info!("shutdown: connections closed; shutting the sessions down");
            // No session outlives the server.
            service.close().await
        }
    });
    Ok(ServerHandle {
        addr,
        tokens,
        stop,
        task,
    })
}
