//! The accept loop: every TCP connection the server takes, from `accept` to its close. It
//! owns the socket options (TCP_NODELAY, keepalive), the connection cap (beyond it a `503`
//! answer, never silence), the request-header deadline (which also ends idle keep-alive
//! connections), the open-file limit, and the connections' part of shutdown: stop
//! accepting, let the connections finish, and drop whatever is left at the drain deadline.
//! Every task spawned here is in one [`TaskTracker`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::service::Service;

/// TCP keepalive on every accepted socket: the first probe after this much silence...
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// ...then one probe per interval...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ...and the kernel resets the connection after this many unanswered probes (a peer gone
/// without a FIN is noticed within 30 + 3 × 10 = 60 s of silence).
pub const KEEPALIVE_PROBES: u32 = 3;
/// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged before the kernel resets the
/// connection (keepalive probes are not sent while data is in flight, so without it a peer
/// that vanished mid-stream would be retransmitted to for ~15 minutes).
pub const USER_TIMEOUT: Duration = Duration::from_secs(60);

/// Over-cap connections being answered `503` at once; beyond this they are closed without
/// an answer (each answer holds a file descriptor for up to [`REFUSAL_LINGER`]).
pub const MAX_REFUSALS: usize = 256;
/// How long a refused connection is kept open after its `503`, for the client to read it
/// (closing with its request unread would reset the connection and lose the answer).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// After `accept` fails for want of file descriptors (or memory): how long the loop waits for a
/// connection to close (which frees one) before it tries again anyway.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A connection's read buffer at most, so the largest request head accepted (then `431`);
/// it also caps what the connection buffers for writing. hyper's default, ~400 KiB, would
/// let 1000 connections sending large heads slowly hold ~400 MiB.
pub const MAX_BUF_BYTES: usize = 64 * 1024;

/// The connection limits (see `docs/api.md`, "Connections").
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// The accept loop's view of shutdown: `stop` ends accepting and asks every connection to
/// finish its current request; `drop_all` (at the drain deadline) drops what is left.
#[derive(Clone)]
pub struct Shutdown {
    pub stop: CancellationToken,
    pub drop_all: CancellationToken,
    pub tracker: TaskTracker,
}

/// Accepts until `shutdown.stop`, serving each connection with `router` in a task of
/// `shutdown.tracker`. Returns once the listener is closed; the connections go on. Refusals
/// count in `service`'s metrics as HTTP errors (status 503).
pub async fn accept_loop(
    listener: TcpListener,
    router: Router,
    service: Service,
    limits: Limits,
    shutdown: Shutdown,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let closed = Arc::new(Notify::new());
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // One deadline for the request head, from the connection's start or the end of the
        // previous answer: a client that sends part of a request and stops, and a keep-alive
        // connection left idle, are both closed when it passes. Not polling: one timer per
        // waiting connection, reset per request.
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF_BYTES)
        .keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) if is_out_of_resources(&e) => {
                tracing::warn!("accepting a connection: {e}; waiting for a connection to close");
                tokio::select! {
                    _ = shutdown.stop.cancelled() => break,
                    // A closing connection frees a descriptor.
                    _ = closed.notified() => {}
                    // not polling: one deadline, in case the descriptors are held elsewhere
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
                continue;
            }
            // Per-connection failures (the peer reset before accept, ...): that one only.
            Err(e) => {
                tracing::debug!("accepting a connection: {e}");
                continue;
            }
        };
        set_socket_options(&stream);
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let stream = Counted {
                    stream,
                    _permit: permit,
                    closed: closed.clone(),
                };
                shutdown.tracker.spawn(serve_connection(
                    stream,
                    router.clone(),
                    builder.clone(),
                    shutdown.clone(),
                ));
            }
            Err(_) => match refusals.clone().try_acquire_owned() {
                Ok(permit) => {
                    service.record_http_error(503);
                    tracing::info!(
                        target: "pyrepl3::access",
                        status = 503,
                        max_connections = limits.max_connections,
                        "connection refused: too many connections"
                    );
                    let drop_all = shutdown.drop_all.clone();
                    shutdown.tracker.spawn(async move {
                        tokio::select! {
                            _ = refuse(stream, limits.max_connections) => {}
                            _ = drop_all.cancelled() => {}
                        }
                        drop(permit);
                    });
                }
                // Flooded: closing at once is all that is affordable.
                Err(_) => drop(stream),
            },
        }
    }
}

/// Serves one connection: HTTP/1.1 with upgrades (the WebSocket route). On `stop` it ends
/// after its current answer; on `drop_all` it is dropped wherever it is (e.g. writing an SSE
/// stream to a client that stopped reading).
async fn serve_connection(
    stream: Counted,
    router: Router,
    builder: Arc<http1::Builder>,
    shutdown: Shutdown,
) {
    let service = TowerToHyperService::new(router);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let finished = tokio::select! {
        result = conn.as_mut() => Some(result),
        _ = shutdown.stop.cancelled() => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn.as_mut() => result,
                _ = shutdown.drop_all.cancelled() => return,
            }
        }
    };
    if let Err(e) = result {
        // A client going away, a header deadline passing: the connection's own business.
        tracing::debug!("connection: {e}");
    }
}

/// TCP_NODELAY: an answer (or a WebSocket frame) is sent when written, not held back by
/// Nagle's algorithm waiting for the client's delayed ACK (~40 ms per small write).
/// Keepalive: a peer whose machine vanished is noticed by the kernel (see the constants).
fn set_socket_options(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("setting TCP_NODELAY: {e}");
    }
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!("setting TCP keepalive: {e}");
    }
    // Keepalive probes are only sent while nothing is in flight: a peer that vanished while
    // the server was sending (an SSE stream, a WebSocket) would be retransmitted to for
    // ~15 minutes. This bounds how long sent data may stay unacknowledged.
    if let Err(e) = SockRef::from(stream).set_tcp_user_timeout(Some(USER_TIMEOUT)) {
        tracing::debug!("setting TCP_USER_TIMEOUT: {e}");
    }
}

/// `accept` failed for want of a resource that a closing connection gives back (each such
/// error would recur at once on the next `accept`).
fn is_out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Answers a connection over the cap: `503` with the reason, then closes. The request is
/// not read first (the answer does not depend on it); what the client sends is drained
/// until it closes or [`REFUSAL_LINGER`] passes, so the close does not reset the answer away.
async fn refuse(mut stream: TcpStream, max_connections: usize) {
    let body = serde_json::to_string(&super::http::ErrorBody {
        error: super::http::ErrorDetail {
            code: super::http::ErrorCode::TooManyConnections,
            message: format!(
                "the server has {max_connections} connections open, its limit (max_connections); try again later"
            ),
        },
    })
    .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let linger = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    };
    // not polling: one deadline for the whole answer and the client's close
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}

/// A connection's socket with its place under the cap: the permit is returned when the
/// socket closes, also when a WebSocket took the socket over (hyper hands this same object
/// to the upgraded connection).
struct Counted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Wakes an accept loop waiting for a free descriptor.
    closed: Arc<Notify>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.closed.notify_waiters();
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Descriptors kept for everything but connections and sessions (the listener, the
/// runtime, stdio, log and config files).
const BASE_FDS: u64 = 64;
/// Descriptors kept per pool session: a worker's pipes and pidfd (7 measured), twice over
/// for a restart's overlap.
const FDS_PER_SESSION: u64 = 16;

/// The connection cap in force: `max_connections`, lowered (with a warning) when the
/// open-file limit could not hold that many sockets beside the `503` answers in flight and
/// the sessions' descriptors, so that the cap answers before `accept` runs out of
/// descriptors (which would leave new connections unanswered).
pub fn connection_cap(max_connections: usize, max_sessions: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return max_connections;
    }
    let reserved = FDS_PER_SESSION
        .saturating_mul(max_sessions as u64)
        .saturating_add(BASE_FDS + MAX_REFUSALS as u64);
    let room = usize::try_from(limit.rlim_cur.saturating_sub(reserved)).unwrap_or(usize::MAX);
    if room >= max_connections {
        return max_connections;
    }
    let cap = room.max(1);
    tracing::warn!(
        open_file_limit = limit.rlim_cur,
        max_connections,
        cap,
        "the open-file limit leaves room for fewer connections than max_connections: the cap is lowered"
    );
    cap
}

/// Raises this process's soft open-file limit to its hard limit, so the connection cap (and
/// the workers' pipes) fit; returns the limit now in force.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_get_nodelay_keepalive_and_a_user_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        set_socket_options(&accepted);
        let sock = SockRef::from(&accepted);
        assert!(accepted.nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
    }
}
