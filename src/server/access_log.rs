//! The access log and request ids: one `info` line per request (target
//! `pyrepl3::access`) with the method, the matched route template (not the raw path, so no
//! session id or query string), the status, the time to the answer's head, the tenant (its
//! name, never its token) and the request id. The id is the client's `x-request-id` if it
//! sent one, else a generated UUID; the answer carries it back in `x-request-id`.

use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

/// Longest request id written to the log, in characters (a client's id is kept whole in the
/// answer's header; the log keeps this much of it).
const MAX_LOGGED_ID: usize = 128;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `router` with the request-id and access-log layers around every route (and the fallback).
pub(super) fn layer(router: Router) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_request(())
                    .on_response(log_response)
                    // Every answer is logged once by `log_response`, 5xx included.
                    .on_failure(()),
            )
            .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
    )
}

/// The request's span: everything logged while it is handled carries these fields. `tenant`
/// is filled in by the bearer-token extractor (`http::Auth`) once the token is checked.
fn request_span(request: &Request) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("(no route)", MatchedPath::as_str);
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .map(|v| match v.to_str() {
            Ok(id) => loggable_id(id),
            Err(_) => "(not text)".to_string(),
        })
        .unwrap_or_default();
    tracing::info_span!(
        target: "pyrepl3::access",
        "request",
        method = %request.method(),
        route = %route,
        request_id = %id,
        tenant = tracing::field::Empty,
    )
}

/// A request id as written in the log: as it is if it is made of the characters ids are made
/// of, else quoted and escaped (a client's id with spaces cannot pose as other fields).
fn loggable_id(id: &str) -> String {
    let id: String = id.chars().take(MAX_LOGGED_ID).collect();
    if id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:/+=".contains(c))
    {
        id
    } else {
        format!("{id:?}")
    }
}

fn log_response<B>(response: &Response<B>, latency: Duration, _span: &Span) {
    tracing::info!(
        target: "pyrepl3::access",
        status = response.status().as_u16(),
        duration_ms = format_args!("{:.3}", latency.as_secs_f64() * 1000.0),
        "answered"
    );
}
