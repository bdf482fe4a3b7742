//! Cross-origin requests from browsers: the allow-list of origins (`cors_origins` in the
//! config) turned into tower-http's CORS layer, which answers preflights (`OPTIONS` with
//! `Access-Control-Request-Method`) itself and adds the `Access-Control-*` headers to the
//! answers of allowed origins. An empty list (the default) adds no layer: browsers then
//! keep pages of other origins out, as before.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::Error;

/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Checks the configured origins: `*`, or each a `scheme://host[:port]` with nothing after.
pub(crate) fn check_origins(origins: &[String]) -> Result<(), Error> {
    for origin in origins {
        if origin == "*" {
            if origins.len() > 1 {
                return Err(Error::InvalidConfig(
                    "cors_origins: \"*\" allows every origin; list nothing else with it".into(),
                ));
            }
            continue;
        }
        let well_formed = ["http://", "https://"].iter().any(|scheme| {
            origin.strip_prefix(scheme).is_some_and(|rest| {
                !rest.is_empty() && !rest.contains('/') && !rest.contains(char::is_whitespace)
            })
        });
        if !well_formed || HeaderValue::from_str(origin).is_err() {
            return Err(Error::InvalidConfig(format!(
                "cors_origins: {origin:?} is not an origin (scheme://host[:port], no path), \
                 nor \"*\""
            )));
        }
    }
    Ok(())
}

/// The layer for `origins` (checked by [`check_origins`]), or `None` for an empty list.
pub(crate) fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                header::CONTENT_LENGTH,
                header::CONTENT_DISPOSITION,
                HeaderName::from_static("x-request-id"),
            ])
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        let ok =
            |list: &[&str]| check_origins(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(ok(&[]).is_ok());
        assert!(ok(&["*"]).is_ok());
        assert!(ok(&["https://app.example", "http://localhost:5173"]).is_ok());
        for bad in [
            "app.example",
            "https://app.example/",
            "https://",
            "ftp://x",
            "*x",
        ] {
            assert!(ok(&[bad]).is_err(), "{bad}");
        }
        assert!(ok(&["*", "https://a.example"]).is_err());
    }
}
