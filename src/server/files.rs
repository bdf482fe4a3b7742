//! The files routes (docs/api.md, "Files"): upload (`PUT`, the body streamed to the
//! session's directory, never held whole), download (`GET`, streamed), list (`GET
//! .../files?path=`) and delete, each a call of the service's file operations
//! (`src/service/files.rs`) with its errors mapped to statuses and codes.

use std::io;

use axum::body::Body as RawBody;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio_util::io::{ReaderStream, StreamReader};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::http::{json_of, ApiError, Auth, ErrorBody, ErrorCode};
use super::sessions::SessionPath;
use crate::service::Service;
use crate::session::{FilesError, Listing};

/// Bytes read from a file per chunk of a download.
const DOWNLOAD_CHUNK: usize = 64 * 1024;

pub(crate) fn routes() -> OpenApiRouter<Service> {
    // An upload's size is bounded by `[files]`, not by `max_body_bytes`: it is streamed to
    // disk, never held.
    let (schemas, paths, file) = routes!(download, delete, upload);
    let file = file.layer(DefaultBodyLimit::disable());
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes((schemas, paths, file))
}

/// A file's path. The router matches the rest of the URL (`{*path}`); the document names it
/// `{path}`, slashes included.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct FilePath {
    /// The session's id.
    id: String,
    /// Relative to the session's directory, `/`-separated; no `..`, not absolute, not the
    /// top itself.
    #[param(pattern = r"^(?!/)(?!(.*/)?\.\.(/|$))(?!(\.?/)*\.?$)[^\u0000]*$")]
    path: String,
}

/// What an upload wrote.
#[derive(Serialize, ToSchema)]
struct FileWritten {
    /// The path written, normalised (`a/./b//c` → `a/b/c`).
    path: String,
    /// Bytes written.
    size: u64,
}

/// The errors of a file path.
const PATH_ERRORS: &str = "A bad path (`..`, absolute, NUL, or leading outside through a \
    symlink), or the wrong kind of file. Codes: `bad_path`, `is_a_directory`, \
    `not_a_directory`, `not_a_file`, `upload_incomplete`.";
/// The status and stable code of a refused file operation (docs/api.md, "Errors").
pub(crate) fn status_and_code(e: &FilesError) -> (StatusCode, ErrorCode) {
    use FilesError as E;
    match e {
        E::BadPath { .. } => (StatusCode::BAD_REQUEST, ErrorCode::BadPath),
        E::NotFound { .. } => (StatusCode::NOT_FOUND, ErrorCode::FileNotFound),
        E::IsADirectory { .. } => (StatusCode::BAD_REQUEST, ErrorCode::IsADirectory),
        E::NotADirectory { .. } => (StatusCode::BAD_REQUEST, ErrorCode::NotADirectory),
        E::NotAFile { .. } => (StatusCode::BAD_REQUEST, ErrorCode::NotAFile),
        E::DirectoryNotEmpty { .. } => (StatusCode::CONFLICT, ErrorCode::DirectoryNotEmpty),
        E::PermissionDenied { .. } => (StatusCode::FORBIDDEN, ErrorCode::PermissionDenied),
        E::FileTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::FileTooLarge),
        E::SessionFull { .. } => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::SessionFilesLimit),
        E::SourceFailed { .. } => (StatusCode::BAD_REQUEST, ErrorCode::UploadIncomplete),
        E::Gone => (StatusCode::CONFLICT, ErrorCode::SessionUnavailable),
        E::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
    }
}

/// Uploads a file into the session's directory (streamed to a temporary file, renamed over
/// the target at the end; parent directories made): `201` for a new file, `200` when it
/// replaced one.
#[utoipa::path(put, path = "/v1/sessions/{id}/files/{*path}", tag = "files", params(FilePath),
    request_body(content = [u8], content_type = "application/octet-stream",
        description = "The file's bytes (any content type)."),
    responses(
        (status = 200, description = "Replaced an existing file.", body = FileWritten),
        (status = 201, description = "A new file.", body = FileWritten),
        (status = 400, description = PATH_ERRORS, body = ErrorBody),
        (status = 403, description = "Codes: `permission_denied`.", body = ErrorBody),
        (status = 409, description = "The session has ended. Codes: `session_unavailable`.", body = ErrorBody),
        (status = 413, description = "Codes: `file_too_large`, `session_files_limit`.", body = ErrorBody),
    ))]
async fn upload(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(FilePath { id, path }): Path<FilePath>,
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
    let written = FileWritten {
        path: written.path,
        size: written.size,
    };
    Ok((status, Json(written)).into_response())
}

/// Downloads a file: its bytes, streamed, with its size when opened as `Content-Length` (a
/// file that grows meanwhile is sent up to that size).
#[utoipa::path(get, path = "/v1/sessions/{id}/files/{*path}", tag = "files", params(FilePath),
    responses(
        (status = 200, description = "The file.", body = [u8],
            content_type = "application/octet-stream"),
        (status = 400, description = PATH_ERRORS, body = ErrorBody),
        (status = 403, description = "Codes: `permission_denied`.", body = ErrorBody),
        (status = 404, description = "No such session or file. Codes: `not_found`, `file_not_found`.", body = ErrorBody),
    ))]
async fn download(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(FilePath { id, path }): Path<FilePath>,
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// The directory to list; absent or empty: the top. No `..`, not absolute.
    #[serde(default)]
    #[param(pattern = r"^(?!/)(?!(.*/)?\.\.(/|$))[^\u0000]*$")]
    path: String,
}

/// Lists a directory of the session's: its entries sorted by name, at most
/// `[files] max_list_entries`.
#[utoipa::path(get, path = "/v1/sessions/{id}/files", tag = "files",
    params(SessionPath, ListQuery),
    responses(
        (status = 200, description = "The listing.", body = Listing),
        (status = 400, description = PATH_ERRORS, body = ErrorBody),
        (status = 403, description = "Codes: `permission_denied`.", body = ErrorBody),
        (status = 404, description = "No such session or directory. Codes: `not_found`, `file_not_found`.", body = ErrorBody),
    ))]
async fn list(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(SessionPath { id }): Path<SessionPath>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let listing = service
        .session(&caller, &id)?
        .list_files(&query.path)
        .await?;
    Ok(json_of(&listing))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    /// Remove a directory and everything in it.
    #[serde(default)]
    recursive: bool,
}

/// Deletes a file, a symlink (never what it points to) or an empty directory; with
/// `recursive=true` a directory and everything in it.
#[utoipa::path(delete, path = "/v1/sessions/{id}/files/{*path}", tag = "files",
    params(FilePath, DeleteQuery),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = PATH_ERRORS, body = ErrorBody),
        (status = 403, description = "Codes: `permission_denied`.", body = ErrorBody),
        (status = 404, description = "No such session or file. Codes: `not_found`, `file_not_found`.", body = ErrorBody),
        (status = 409, description = "A directory that is not empty, without `recursive=true`. Codes: `directory_not_empty`.", body = ErrorBody),
    ))]
async fn delete(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(FilePath { id, path }): Path<FilePath>,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    service
        .session(&caller, &id)?
        .delete_file(&path, query.recursive)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
