//! The checkpoint routes (docs/api.md, "Checkpoints"): made from a session, listed, read,
//! downloaded and uploaded as files, deleted, and restored into a session.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::http::{json_of, ApiError, Auth, Body, ErrorBody};
use super::sessions::SessionPath;
use crate::service::{Service, MAX_CHECKPOINT_BYTES};
use crate::session::RestoreReport;
use crate::store::CheckpointRecord;

pub(crate) fn routes() -> OpenApiRouter<Service> {
    // An upload is a checkpoint file: larger than other bodies may be.
    let (schemas, paths, uploads) = routes!(upload, list_all);
    let uploads = uploads.layer(DefaultBodyLimit::max(MAX_CHECKPOINT_BYTES));
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(restore))
        .routes((schemas, paths, uploads))
        .routes(routes!(read, delete))
        .routes(routes!(download))
}

/// A checkpoint's path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct CheckpointPath {
    /// The checkpoint's id (`ckpt-...`); another tenant's is "not found".
    cid: String,
}

/// A checkpoint file's bytes, in the document: not empty (an empty body is `422`, not a
/// checkpoint). The handler takes the body's bytes.
struct CheckpointFile;

impl utoipa::PartialSchema for CheckpointFile {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .min_length(Some(1))
            .into()
    }
}

impl ToSchema for CheckpointFile {}

#[derive(Serialize, ToSchema)]
struct CheckpointList {
    /// Oldest first.
    checkpoints: Vec<CheckpointRecord>,
}

/// Saves the session's namespace as a checkpoint (run as an execution of the session).
#[utoipa::path(post, path = "/v1/sessions/{id}/checkpoints", tag = "checkpoints",
    params(SessionPath),
    responses(
        (status = 201, description = "The checkpoint's record.", body = CheckpointRecord),
        (status = 409, description = "Codes: `session_unavailable`.", body = ErrorBody),
        (status = 413, description = "The tenant's checkpoints would pass its limit. Codes: `checkpoint_limit`.", body = ErrorBody),
        (status = 422, description = "Codes: `checkpoint_failed`.", body = ErrorBody),
        (status = 503, description = "Codes: `store_unavailable`, `shutting_down`.", body = ErrorBody),
    ))]
async fn create(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(SessionPath { id }): Path<SessionPath>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let record = service.create_checkpoint(&caller, &id).await?;
    Ok((StatusCode::CREATED, json_of(&record)))
}

/// The session's checkpoints.
#[utoipa::path(get, path = "/v1/sessions/{id}/checkpoints", tag = "checkpoints",
    params(SessionPath),
    responses(
        (status = 200, description = "Oldest first.", body = CheckpointList),
        (status = 503, description = "Codes: `store_unavailable`, `shutting_down`.", body = ErrorBody),
    ))]
async fn list(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(SessionPath { id }): Path<SessionPath>,
) -> Result<Json<Value>, ApiError> {
    let checkpoints = service.list_checkpoints(&caller, &id).await?;
    Ok(json_of(&CheckpointList { checkpoints }))
}

/// Every checkpoint of the caller's tenant (also of sessions that are gone, and uploads).
#[utoipa::path(get, path = "/v1/checkpoints", tag = "checkpoints",
    responses(
        (status = 200, description = "Oldest first.", body = CheckpointList),
        (status = 503, description = "Codes: `store_unavailable`, `shutting_down`.", body = ErrorBody),
    ))]
async fn list_all(
    State(service): State<Service>,
    Auth(caller): Auth,
) -> Result<Json<Value>, ApiError> {
    let checkpoints = service.list_tenant_checkpoints(&caller).await?;
    Ok(json_of(&CheckpointList { checkpoints }))
}

/// A checkpoint's record.
#[utoipa::path(get, path = "/v1/checkpoints/{cid}", tag = "checkpoints",
    params(CheckpointPath),
    responses(
        (status = 200, description = "The record.", body = CheckpointRecord),
        (status = 503, description = "Codes: `store_unavailable`, `shutting_down`.", body = ErrorBody),
    ))]
async fn read(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(CheckpointPath { cid }): Path<CheckpointPath>,
) -> Result<Json<Value>, ApiError> {
    let (record, _) = service.checkpoint(&caller, &cid).await?;
    Ok(json_of(&record))
}

/// Downloads a checkpoint file (to upload to another server, same Python minor version).
#[utoipa::path(get, path = "/v1/checkpoints/{cid}/data", tag = "checkpoints",
    params(CheckpointPath),
    responses(
        (status = 200, description = "The checkpoint file.", body = [u8],
            content_type = "application/octet-stream"),
        (status = 503, description = "Codes: `store_unavailable`, `shutting_down`.", body = ErrorBody),
    ))]
async fn download(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(CheckpointPath { cid }): Path<CheckpointPath>,
) -> Result<Response, ApiError> {
    let (record, data) = service.checkpoint(&caller, &cid).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.pyrepl3\"", record.id),
            ),
        ],
        data,
    )
        .into_response())
}

/// Uploads a checkpoint file (at most 11 MiB); it is checked when restored.
#[utoipa::path(post, path = "/v1/checkpoints", tag = "checkpoints",
    request_body(content = inline(CheckpointFile), content_type = "application/octet-stream",
        description = "A checkpoint file, as downloaded."),
    responses(
        (status = 201, description = "Its record (`session_id` null, `saved` and `skipped` empty).", body = CheckpointRecord),
        (status = 413, description = "Over 11 MiB, or the tenant's checkpoints would pass its limit. Codes: `too_large`, `checkpoint_limit`.", body = ErrorBody),
        (status = 422, description = "An empty file. Codes: `checkpoint_failed`.", body = ErrorBody),
        (status = 503, description = "Codes: `store_unavailable`, `shutting_down`.", body = ErrorBody),
    ))]
async fn upload(
    State(service): State<Service>,
    Auth(caller): Auth,
    data: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let record = service.upload_checkpoint(&caller, Vec::from(data)).await?;
    Ok((StatusCode::CREATED, json_of(&record)))
}

/// Deletes a checkpoint.
#[utoipa::path(delete, path = "/v1/checkpoints/{cid}", tag = "checkpoints",
    params(CheckpointPath),
    responses(
        (status = 204, description = "Deleted."),
        (status = 503, description = "Codes: `store_unavailable`, `shutting_down`.", body = ErrorBody),
    ))]
async fn delete(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(CheckpointPath { cid }): Path<CheckpointPath>,
) -> Result<StatusCode, ApiError> {
    service.delete_checkpoint(&caller, &cid).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    checkpoint_id: String,
    /// Remove every user global first (default: merge, the checkpoint's names replacing
    /// those of the same name).
    #[serde(default)]
    clear_existing: bool,
}

/// Restores a checkpoint into the session. Unpickling runs code the checkpoint names:
/// restore only checkpoints you would run as code.
#[utoipa::path(post, path = "/v1/sessions/{id}/restore", tag = "checkpoints",
    params(SessionPath), request_body = RestoreBody,
    responses(
        (status = 200, description = "What was restored.", body = RestoreReport),
        (status = 409, description = "Codes: `session_unavailable`.", body = ErrorBody),
        (status = 422, description = "Not a checkpoint, or it could not be restored; the namespace is left as it was. Codes: `checkpoint_failed`.", body = ErrorBody),
        (status = 503, description = "Codes: `store_unavailable`, `shutting_down`.", body = ErrorBody),
    ))]
async fn restore(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(SessionPath { id }): Path<SessionPath>,
    Body(body): Body<RestoreBody>,
) -> Result<Json<Value>, ApiError> {
    let report = service
        .restore_checkpoint(&caller, &id, &body.checkpoint_id, body.clear_existing)
        .await?;
    Ok(json_of(&report))
}
