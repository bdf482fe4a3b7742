//! The checkpoint routes (docs/api.md, "Checkpoints"): made from a session, listed, read,
//! downloaded and uploaded as files, deleted, and restored into a session.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{json_of, ApiError, Auth, Body};
use crate::service::{Service, MAX_CHECKPOINT_BYTES};

pub(crate) fn routes() -> Router<Service> {
    Router::new()
        .route("/v1/sessions/{id}/checkpoints", post(create).get(list))
        .route("/v1/sessions/{id}/restore", post(restore))
        .route(
            "/v1/checkpoints",
            // An upload is a checkpoint file: larger than other bodies may be.
            post(upload)
                .layer(DefaultBodyLimit::max(MAX_CHECKPOINT_BYTES))
                .get(list_all),
        )
        .route("/v1/checkpoints/{cid}", get(read).delete(delete))
        .route("/v1/checkpoints/{cid}/data", get(download))
}

async fn create(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let record = service.create_checkpoint(&caller, &id).await?;
    Ok((StatusCode::CREATED, json_of(&record)))
}

async fn list(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let records = service.list_checkpoints(&caller, &id).await?;
    Ok(Json(json!({ "checkpoints": records })))
}

async fn list_all(
    State(service): State<Service>,
    Auth(caller): Auth,
) -> Result<Json<Value>, ApiError> {
    let records = service.list_tenant_checkpoints(&caller).await?;
    Ok(Json(json!({ "checkpoints": records })))
}

async fn read(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(cid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (record, _) = service.checkpoint(&caller, &cid).await?;
    Ok(json_of(&record))
}

async fn download(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(cid): Path<String>,
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

async fn upload(
    State(service): State<Service>,
    Auth(caller): Auth,
    data: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let record = service.upload_checkpoint(&caller, Vec::from(data)).await?;
    Ok((StatusCode::CREATED, json_of(&record)))
}

async fn delete(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(cid): Path<String>,
) -> Result<StatusCode, ApiError> {
    service.delete_checkpoint(&caller, &cid).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    checkpoint_id: String,
    #[serde(default)]
    clear_existing: bool,
}

async fn restore(
    State(service): State<Service>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Body(body): Body<RestoreBody>,
) -> Result<Json<Value>, ApiError> {
    let report = service
        .restore_checkpoint(&caller, &id, &body.checkpoint_id, body.clear_existing)
        .await?;
    Ok(json_of(&report))
}
