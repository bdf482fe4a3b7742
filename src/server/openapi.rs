//! The API's OpenAPI document and its docs page. The document is derived from the code: each
//! route is added to the router together with its handler's `#[utoipa::path]` description
//! (`http::api_routes`), whose bodies, parameters and answers are the handler's own types
//! (`ToSchema`, `IntoParams`). This module owns what is common to every route (the document's
//! head, the bearer scheme, the tags, the errors every authenticated route can answer), the
//! finished document as served at `GET /openapi.json`, and `GET /docs`: Swagger UI, whose
//! files are built into the binary (nothing is fetched from another host).
//!
//! Not in the document: `/docs` itself (a page, not the API).

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::http::ErrorBody;
use crate::service::Service;

/// The document's head: what the derived routes are added to.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "pyrepl3",
        description = "Python sessions in isolated worker processes, over HTTP, server-sent \
            events and a WebSocket (docs/api.md). Every route but `/healthz` and \
            `/openapi.json` needs `Authorization: Bearer <token>`.",
        license(name = "MIT", identifier = "MIT"),
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "service", description = "Health, metrics, the pool, this document."),
        (name = "sessions", description = "Take, inspect, restart and end sessions."),
        (name = "executions", description = "Run code, follow it, answer `input()`, stop it."),
        (name = "checkpoints", description = "Save, download, upload and restore namespaces."),
        (name = "files", description = "A session's working directory."),
        (name = "websocket", description = "The session's WebSocket, and tickets for browsers."),
    ),
)]
pub(crate) struct ApiDoc;

/// The scheme every authenticated route names.
const BEARER: &str = "bearer";

/// The keys of a path item that are operations (the others are its parameters, summary...).
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The served document, serialized once.
#[derive(Clone)]
pub(crate) struct Document(Bytes);

/// The API's routes with `GET /docs` (its files under `/docs/`) and what `GET /openapi.json`
/// serves: `document`. Neither needs a token.
pub(crate) fn with_docs(api: Router<Service>, document: &Value) -> Router<Service> {
    let json = Bytes::from(serde_json::to_vec_pretty(document).unwrap_or_default());
    let docs: Router<Service> = SwaggerUi::new("/docs")
        .config(
            Config::new(["/openapi.json"])
                // Swagger UI's default validator is a web service of its makers: the page
                // would send the document there and show its badge.
                .validator_url("none")
                .try_it_out_enabled(true)
                .persist_authorization(false),
        )
        .into();
    // The page takes a token (Authorize): no other site may frame it, nor may a browser
    // guess a type other than the one it is served with.
    let docs = docs
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ));
    api.merge(docs).layer(Extension(Document(json)))
}

/// This document (OpenAPI 3.1).
#[utoipa::path(get, path = "/openapi.json", tag = "service", security(()),
    responses((status = 200, description = "The OpenAPI document.", content_type = "application/json",
        body = Object)))]
pub(crate) async fn openapi_json(Extension(Document(json)): Extension<Document>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// Finishes the derived document: the bearer scheme and who needs it, the bodies' rules the
/// derive cannot say, the errors every route can answer, and the router's path syntax made
/// OpenAPI's.
pub(crate) fn finish(document: &utoipa::openapi::OpenApi) -> Value {
    let mut document = serde_json::to_value(document).unwrap_or(Value::Null);
    document["components"]["securitySchemes"] = json!({
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "A tenant's token (`--token`, or `[[tenants]] token` in the config file).",
        }
    });
    document["security"] = json!([{ BEARER: [] }]);
    for (schema, field, rules) in super::sessions::body_rules() {
        let property = document["components"]["schemas"][schema]["properties"]
            .get_mut(field)
            .and_then(Value::as_object_mut);
        if let (Some(property), Value::Object(rules)) = (property, rules) {
            property.extend(rules);
        }
    }
    unsigned_bounds(&mut document);
    let Some(paths) = document["paths"].as_object_mut() else {
        return document;
    };
    let paths = std::mem::take(paths);
    let mut finished = Map::new();
    for (path, mut item) in paths {
        // The router's `{*path}` (the rest of the URL) is OpenAPI's `{path}`.
        let path = path.replace("{*", "{");
        if let Some(item) = item.as_object_mut() {
            let operations = item
                .iter_mut()
                .filter(|(key, _)| METHODS.contains(&key.as_str()));
            for (_, operation) in operations {
                finish_operation(&path, operation);
            }
        }
        finished.insert(path, item);
    }
    document["paths"] = Value::Object(finished);
    document
}

/// One operation: `security(())` (public) becomes an empty list, and the errors that do not
/// depend on the route are added where the route did not describe them itself
/// (docs/api.md, "Endpoints").
fn finish_operation(path: &str, operation: &mut Value) {
    // Bytes as bytes (the derived schema of `[u8]` is an array of integers): a file's body.
    if let Some(body) = operation.get_mut("requestBody") {
        binary_bodies(body);
    }
    if let Some(responses) = operation["responses"].as_object_mut() {
        responses.values_mut().for_each(binary_bodies);
    }
    let public = operation["security"] == json!([{}]);
    if public {
        operation["security"] = json!([]);
    }
    let json_body = operation["requestBody"]["content"]
        .get("application/json")
        .is_some();
    let any_body = operation.get("requestBody").is_some();
    let Some(responses) = operation["responses"].as_object_mut() else {
        return;
    };
    let mut add = |status: &str, description: &str| {
        responses.entry(status.to_string()).or_insert_with(|| {
            json!({
                "description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
            })
        });
    };
    if public {
        return;
    }
    add(
        "401",
        "A missing or unknown bearer token. Codes: `unauthorized`.",
    );
    add(
        "429",
        "The tenant's request rate is exceeded (see `Retry-After`). Codes: `rate_limited`.",
    );
    add(
        "503",
        "The server is shutting down. Codes: `shutting_down`.",
    );
    if path.contains("{id}") || path.contains("{cid}") {
        add(
            "404",
            "No such session or checkpoint (or another tenant's). Codes: `not_found`.",
        );
    }
    if json_body {
        add(
            "400",
            "The body is not valid JSON, or a field is missing, unknown or of the wrong type. \
             Codes: `bad_request`.",
        );
        add(
            "415",
            "The body is not sent as `Content-Type: application/json`. Codes: \
             `unsupported_media_type`.",
        );
    }
    if any_body {
        add(
            "413",
            "The request body exceeds `max_body_bytes`. Codes: `too_large`.",
        );
    }
}

/// An `application/octet-stream` body's schema as OpenAPI 3.1 says bytes: a string of that
/// media type (with the bounds the derived schema has, if any). Without a lower bound, no
/// body at all is bytes too (an empty file).
fn binary_bodies(body: &mut Value) {
    let content = body
        .get_mut("content")
        .and_then(|c| c.get_mut("application/octet-stream"));
    let Some(content) = content else {
        return;
    };
    let mut schema = json!({"type": "string", "contentMediaType": "application/octet-stream"});
    let min = content["schema"].get("minLength").cloned();
    if let Some(min) = &min {
        schema["minLength"] = min.clone();
    }
    content["schema"] = schema;
    if min.is_none() && body.get("required").is_some() {
        body["required"] = json!(false);
    }
}

/// Gives every unsigned integer's schema its largest value (a JSON Schema integer has no
/// bound of its own, and a value past the Rust type's is refused), and its format the usual
/// name (`uint64`: utoipa writes `u-int64`).
fn unsigned_bounds(value: &mut Value) {
    match value {
        Value::Object(object) => {
            let format = object.get("format").and_then(Value::as_str);
            let unsigned = match format.map(|f| f.replace('-', "")).as_deref() {
                Some("uint8") => Some(("uint8", json!(u8::MAX))),
                Some("uint16") => Some(("uint16", json!(u16::MAX))),
                Some("uint32") => Some(("uint32", json!(u32::MAX))),
                Some("uint64") => Some(("uint64", json!(u64::MAX))),
                _ => None,
            };
            if let Some((format, largest)) = unsigned {
                object.insert("format".into(), json!(format));
                object.entry("maximum").or_insert(largest);
            }
            object.values_mut().for_each(unsigned_bounds);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_bounds),
        _ => {}
    }
}
