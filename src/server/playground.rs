//! The playground: a small page at `/` to run code from a browser (an editor, Run and
//! Cancel, live output, `input()` answered in the page, images and HTML displays, the
//! session's variables). It is static: the page, its stylesheet, its script and the built
//! TypeScript client (`clients/typescript/dist`, embedded at compile time so that building
//! the server needs no npm). The page and its assets need no token; the API calls it makes
//! do, with the token the user types in (same origin, so no CORS). See docs/api.md,
//! "Playground".

use axum::extract::Path;
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::http::ApiError;
use crate::service::Service;

const PAGE: &str = include_str!("playground/index.html");
const STYLESHEET: &str = include_str!("playground/playground.css");
const SCRIPT: &str = include_str!("playground/playground.js");

/// One module of the built client, by file name.
macro_rules! client_module {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!("../../clients/typescript/dist/", $name)),
        )
    };
}

/// The built client's modules, served under `/ui/client/` (the page script imports
/// `index.js`, which imports the others by relative path; tests/playground.rs checks that
/// each of its imports is served).
const CLIENT_MODULES: &[(&str, &str)] = &[
    client_module!("index.js"),
    client_module!("client.js"),
    client_module!("errors.js"),
    client_module!("events.js"),
    client_module!("socket.js"),
    client_module!("sse.js"),
];

/// The page runs only its own scripts: no inline script, nothing from elsewhere. HTML that
/// the session's code displays goes into sandboxed `srcdoc` frames, which inherit this
/// policy (so no script runs in them either); inline styles are allowed for them (a pandas
/// table carries its `<style>`), images may be `data:` URLs (plots arrive as base64).
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     frame-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

pub(crate) fn routes() -> Router<Service> {
    Router::new()
        .route("/", get(page))
        .route(
            "/ui/playground.css",
            get(|| async { asset("text/css; charset=utf-8", STYLESHEET) }),
        )
        .route(
            "/ui/playground.js",
            get(|| async { asset(JAVASCRIPT, SCRIPT) }),
        )
        .route("/ui/client/{module}", get(client_module))
}

async fn page() -> Response {
    let mut response = asset("text/html; charset=utf-8", PAGE);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    // `frame-ancestors 'none'` says it to browsers that read CSP; this header to older ones.
    headers.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn client_module(Path(module): Path<String>) -> Response {
    match CLIENT_MODULES.iter().find(|(name, _)| *name == module) {
        Some((_, text)) => asset(JAVASCRIPT, text),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            super::http::ErrorCode::NotFound,
            "no such module",
        )
        .into_response(),
    }
}

/// A static text with its type. `no-cache`: a browser revalidates, so a new server's
/// assets are never mixed with an old page.
fn asset(content_type: &'static str, text: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
        ],
        text,
    )
        .into_response()
}
