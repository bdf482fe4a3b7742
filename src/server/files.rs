//! The files routes (docs/api.md, "Files"): upload (`PUT`, the body streamed to the
//! session's directory, never held whole), download (`GET`, streamed), list (`GET
//! .../files?path=`) and delete, each a call of the service's file operations
//! (`src/service/files.rs`) with its errors mapped to statuses and codes.

use std::io;

use axum::body::Body as RawBody;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio_util::io::{ReaderStream, StreamReader};

use super::http::{json_of, ApiError, Auth};
use crate::service::Service;
use crate::session::FilesError;

/// Bytes read from a file per chunk of a download.
const DOWNLOAD_CHUNK: usize = 64 * 1024;

pub(crate) fn routes() -> Router<Service> {
    Router::new()
        .route("/v1/sessions/{id}/files", get(list))
        .route(
            "/v1/sessions/{id}/files/{*path}",
            get(download)
                .delete(delete)
                // An upload's size is bounded by `[files]`, not by `max_body_bytes`: it is
                // streamed to disk, never held.
                .put(upload)
                .layer(DefaultBodyLimit::disable()),
        )
}

/// The status and stable code of a refused file operation (docs/api.md, "Errors").
pub(crate) fn status_and_code(e: &FilesError) -> (StatusCode, &'static str) {
    use FilesError as E;
    match e {
        E::BadPath { .. } => (StatusCode::BAD_REQUEST, "bad_path"),
        E::NotFound { .. } => (StatusCode::NOT_FOUND, "file_not_found"),
        E::IsADirectory { .. } => (StatusCode::BAD_REQUEST, "is_a_directory"),
        E::NotADirectory { .. } => (StatusCode::BAD_REQUEST, "not_a_directory"),
        E::NotAFile { .. } => (StatusCode::BAD_REQUEST, "not_a_file"),
        E::DirectoryNotEmpty { .. } => (StatusCode::CONFLICT, "directory_not_empty"),
        E::PermissionDenied { .. } => (StatusCode::FORBIDDEN, "permission_denied"),
        E::FileTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "file_too_large"),
        E::SessionFull { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "session_files_limit"),
        E::SourceFailed { .. } => (StatusCode::BAD_REQUEST, "upload_incomplete"),
        E::Gone => (StatusCode::CONFLICT, "session_unavailable"),
        E::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// `PUT .../files/{path}`: `201 {"path", "size"}` for a new file, `200` when it replaced one.
async fn upload(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path((id, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response, ApiError> {
    let session = service.session(&caller, &id)?;
    let size_hint = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let source = StreamReader::new(body.into_data_stream().map_err(io::Error::other));
    let written = session.put_file(&path, size_hint, source).await?;
    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"path": written.path, "size": written.size})),
    )
        .into_response())
}

/// `GET .../files/{path}`: the file's bytes, streamed, with its size when opened as
/// `Content-Length` (a file that grows meanwhile is sent up to that size).
async fn download(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let opened = service.session(&caller, &id)?.open_file(&path).await?;
    let stream = ReaderStream::with_capacity(opened.file.take(opened.size), DOWNLOAD_CHUNK);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, opened.size.to_string()),
        ],
        RawBody::from_stream(stream),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// The directory to list; absent or empty: the top.
    #[serde(default)]
    path: String,
}

/// `GET .../files?path=dir`: `{"path", "entries": [{name, type, size, mtime}], "truncated"}`.
async fn list(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let listing = service
        .session(&caller, &id)?
        .list_files(&query.path)
        .await?;
    Ok(json_of(&listing))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    #[serde(default)]
    recursive: bool,
}

/// `DELETE .../files/{path}[?recursive=true]`: `204`.
async fn delete(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path((id, path)): Path<(String, String)>,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    service
        .session(&caller, &id)?
        .delete_file(&path, query.recursive)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
