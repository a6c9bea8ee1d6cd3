//! The handlers: each turns a request (through an extractor) into one service call. Their
//! `utoipa::path` attributes are the OpenAPI document's operations.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use webfl_shared::protocol::{
    CheckInRequest, CheckInResponse, ClientsPage, ErrorBody, RoundRecord, SAFETENSORS_CONTENT_TYPE, SecAggAnswer,
    SecAggRequest, Status, TaskInfo, UploadResponse,
};

use super::extract::{CheckIn, Number, Operator, SecAggStep, UpdateUpload};
use crate::service::{Service, ServiceError};

/// The task: what a client needs before it checks in.
///
/// The model, training plan, data shape (and where to fetch public demo data) and the upload
/// limit, so a client can pick and shape its data before it asks to join a round.
#[utoipa::path(
    get,
    path = "/api/v1/task",
    tag = "protocol",
    responses((status = 200, description = "The task.", body = TaskInfo))
)]
pub async fn task_info(State(service): State<Service>) -> Json<TaskInfo> {
    Json(service.task_info())
}

/// This OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operator",
    responses((status = 200, description = "The OpenAPI 3.1 document of every endpoint.", body = Object))
)]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(super::document())
}

/// Check in: get an assignment for the open round, or when to come back.
///
/// A first check-in sends `{}` (no `client_id`) and receives a fresh `client_id` and `token`;
/// later ones send `client_id` with `Authorization: Bearer <token>`.
/// Checking in again while selected returns the same assignment.
#[utoipa::path(
    post,
    path = "/api/v1/checkin",
    tag = "protocol",
    request_body(
        content = CheckInRequest,
        content_type = "application/json",
        description = "A JSON object: `{}` for a first check-in; later ones send `client_id`. At most 64 KiB."
    ),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "`assigned` (train and upload before the deadline) or `retry` (come back after \
                                      `retry_after_ms`); both carry the client's `client_id` and `token`.",
         body = CheckInResponse),
        (status = 400, description = "`bad_json`: the body is not a check-in request (a JSON object); \
                                      `bad_content_type`: not `application/json`; `bad_body`: the body could not \
                                      be read.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: a `client_id` without a bearer token, or an unknown \
                                      `client_id` (check in anew without one).", body = ErrorBody,
         headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: the token is not this client's.", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the body did not arrive in time.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body exceeds 64 KiB.", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many registrations from this address, or check-ins \
                                      from this client or address; come back after `Retry-After` seconds.",
         body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 500, description = "`internal`: the server could not record the client.", body = ErrorBody),
    )
)]
pub async fn checkin(
    State(service): State<Service>,
    CheckIn(call): CheckIn,
) -> Result<Json<CheckInResponse>, ServiceError> {
    service.check_in(call).await.map(Json)
}

/// Download a committed model version as safetensors.
///
/// F32 tensors with PyTorch `state_dict` names. A committed version never changes.
#[utoipa::path(
    get,
    path = "/api/v1/models/{version}",
    tag = "protocol",
    params(("version" = u64, Path, description = "A committed model version (an assignment's `model_version`).")),
    responses(
        (status = 200, description = "The model as safetensors.", body = super::openapi::Safetensors,
         content_type = "application/octet-stream",
         headers(("Cache-Control" = String, description = "`public, max-age=31536000, immutable`"))),
        (status = 400, description = "`bad_request`: the version is not an unsigned integer.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such version (yet), or one the store no longer keeps.",
         body = ErrorBody),
        (status = 500, description = "`internal`: the server could not read its store.", body = ErrorBody),
    )
)]
pub async fn model(State(service): State<Service>, Number(version): Number) -> Result<Response, ServiceError> {
    let bytes = service.model(version).await?;
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(SAFETENSORS_CONTENT_TYPE)),
        // A committed version never changes.
        (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable")),
    ];
    Ok((headers, Bytes::from((*bytes).clone())).into_response())
}

/// Upload an update Δ = w_local − w_global for a round.
///
/// Before the round's deadline, from a client selected for it, once per round. Every refusal
/// leaves the round, the model and the counters unchanged.
#[utoipa::path(
    post,
    path = "/api/v1/rounds/{round}/update",
    tag = "protocol",
    params(
        ("round" = u64, Path, description = "The assigned round."),
        ("X-Webfl-Client" = String, Header, description = "The uploading client's `client_id`."),
        ("X-Webfl-Model-Version" = u64, Header, description = "The model version the update was trained from."),
        ("X-Webfl-Examples" = u64, Header, minimum = 1,
         description = "Local examples trained on: the update's FedAvg weight (at most the task's `max_examples`)."),
    ),
    request_body(
        content(
            (super::openapi::UpdateBody = "application/x-webfl-update"),
            (super::openapi::Safetensors = "application/octet-stream"),
        ),
        description = "Δ in the update pipeline's encoding (`application/x-webfl-update`, the task's codec only; \
                       what browsers send), or — for tasks without compression — as safetensors with exactly the \
                       model's tensor names and shapes, F32. Finite values; at most the task's `upload_limit_bytes`."
    ),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted into the round; `round_closed` when it closed the round (its new \
                                      version is then stored and announced in the background).", body = UploadResponse),
        (status = 400, description = "`missing_header`: an `X-Webfl-*` header is missing; `bad_header`: one is not \
                                      text; `bad_request`: the round, `X-Webfl-Model-Version` or `X-Webfl-Examples` \
                                      is not an unsigned integer; `bad_body`: the body could not be read.",
         body = ErrorBody),
        (status = 401, description = "`unauthorized`: no bearer token, or an unknown client (check in anew).",
         body = ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: the token is not this client's; `not_selected`: the client is not \
                                      selected for this round.", body = ErrorBody),
        (status = 409, description = "`wrong_round`: another round is open; `wrong_model_version`: not trained from \
                                      the current version; `already_reported`: this client's update for the round \
                                      is in; `no_open_round`: no round is taking updates; `deadline_passed`: the \
                                      round's deadline has passed.", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the body did not arrive in time.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body exceeds `upload_limit_bytes`.",
         body = ErrorBody),
        (status = 422, description = "`bad_update`: not this model's tensor names, shapes or dtype, not safetensors, \
                                      non-finite values, or not within the task's codec or clip bound; \
                                      `no_examples`: `X-Webfl-Examples` is 0; `too_many_examples`: more than the \
                                      task's `max_examples`; `out_of_range`: values that would take the model out \
                                      of the f32 range.",
         body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many uploads from this client or address; come back \
                                      after `Retry-After` seconds.",
         body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "`overloaded`: the server holds as many upload bodies as it may; send \
                                      this one again after `Retry-After` seconds.",
         body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
pub async fn upload(
    State(service): State<Service>,
    call: Result<UpdateUpload, ServiceError>,
) -> Result<(StatusCode, Json<UploadResponse>), ServiceError> {
    // Malformed uploads count among the refused ones too.
    let UpdateUpload(call) = call.map_err(|e| service.refused_upload(e))?;
    service.upload(call).await.map(|accepted| (StatusCode::ACCEPTED, Json(accepted)))
}

/// One step of a secure-aggregation round (SecAgg+).
///
/// In a round whose assignment carries `secure_aggregation`, a selected client sends no upload:
/// it polls this endpoint (`message` absent) until the cohort is fixed (`setup`), then sends each
/// stage's SecAgg+ message — advertised keys, sealed key shares, its masked input, its unmask
/// shares — and gets the next stage's message in return, until `done`. The server adds masked
/// inputs into one running sum and unmasks only the sum. See docs/protocol.md for the order.
#[utoipa::path(
    post,
    path = "/api/v1/rounds/{round}/secagg",
    tag = "protocol",
    params(
        ("round" = u64, Path, description = "The round the client is selected for."),
        ("X-Webfl-Client" = String, Header, description = "The client's id."),
    ),
    request_body(
        content = SecAggRequest,
        content_type = "application/json",
        description = "The client's message for the current stage, or none to ask what comes next; `wait_ms` \
                       holds the call while the answer would be `wait` (at most 20 s)."
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`wait`, `setup` (the cohort is fixed: make the SecAgg+ client), `message` \
                                      (the server's message of the current stage) or `done`.", body = SecAggAnswer),
        (status = 400, description = "`bad_json`: not a secure-aggregation request; `bad_content_type`: not \
                                      `application/json`; `missing_header`: no `X-Webfl-Client`; `bad_request`: \
                                      the round is not an unsigned integer, or the body's `client_id` is another \
                                      client's; `bad_body`: the body could not be read.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no bearer token, or an unknown client.", body = ErrorBody,
         headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: the token is not this client's; `not_selected`: the client is not \
                                      in this round.", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the body did not arrive in time.", body = ErrorBody),
        (status = 409, description = "`wrong_round`, `no_open_round`: not the open round; `not_secure_round`: the \
                                      round takes uploads; `cohort_not_fixed`: a message before `setup`; \
                                      `out_of_stage`: a message for another stage; `already_received`: this \
                                      stage's message is in.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body exceeds the masked input's size.",
         body = ErrorBody),
        (status = 422, description = "`bad_secagg_message`: a message SecAgg+ refuses (wrong round, a key that is \
                                      not X25519, shares for clients that are not neighbours, a masked input of \
                                      the wrong length, an unmask answer that does not match its request).",
         body = ErrorBody),
        (status = 503, description = "`overloaded`: the server holds as many bodies as it may; send this one again \
                                      after `Retry-After` seconds.",
         body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
pub async fn secagg(
    State(service): State<Service>,
    SecAggStep(call): SecAggStep,
) -> Result<Json<SecAggAnswer>, ServiceError> {
    service.secagg(call).await.map(Json)
}

/// A summary for people and dashboards.
#[utoipa::path(
    get,
    path = "/api/status",
    tag = "operator",
    responses((status = 200, description = "The server's state.", body = Status))
)]
pub async fn status(State(service): State<Service>) -> Json<Status> {
    Json(service.status())
}

/// Every settled round, oldest first: the dashboard's accuracy curve and round timeline.
#[utoipa::path(
    get,
    path = "/api/rounds",
    tag = "operator",
    responses((status = 200, description = "Settled rounds, oldest first.", body = Vec<RoundRecord>))
)]
pub async fn rounds(State(service): State<Service>) -> Json<Vec<RoundRecord>> {
    Json(service.history())
}

/// Where a page of clients starts and how long it is.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClientsQuery {
    /// `next_after` of the previous page; absent for the first page.
    after: Option<String>,
    /// Clients per page, 1 to 1000 [default: 100].
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Health of the known clients, a page at a time: last seen, rounds completed, failures, last
/// round trip. Operator only.
#[utoipa::path(
    get,
    path = "/api/clients",
    tag = "operator",
    params(ClientsQuery),
    security(("operator" = [])),
    responses(
        (status = 200, description = "A page of clients, most recently seen first.", body = ClientsPage),
        (status = 400, description = "`bad_request`: `after` is not a cursor, or `limit` not a number.",
         body = ErrorBody),
        (status = 401, description = "`unauthorized`: the server has an operator token and the request none.",
         body = ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: a wrong operator token, or (without one on the server) a \
                                      request from another machine.", body = ErrorBody),
        (status = 500, description = "`internal`: the server could not read its store.", body = ErrorBody),
    )
)]
pub async fn clients(
    State(service): State<Service>,
    _: Operator,
    query: Result<Query<ClientsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ClientsPage>, ServiceError> {
    let Query(q) = query.map_err(|e| ServiceError::bad_request("bad_request", e.body_text()))?;
    service.clients(q.after, q.limit).await.map(Json)
}

/// Prometheus metrics.
///
/// `webfl_model_version`, `webfl_rounds_completed_total`, `webfl_rounds_abandoned_total`,
/// `webfl_updates_accepted_total`, `webfl_updates_rejected_total{reason}` (by error code) and
/// `webfl_test_accuracy`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operator",
    security(("operator" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition format.", body = String,
         content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "`unauthorized`: the server has an operator token and the request none.",
         body = ErrorBody, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: a wrong operator token, or (without one on the server) a \
                                      request from another machine.", body = ErrorBody),
    )
)]
pub async fn metrics(State(service): State<Service>, _: Operator) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], service.metrics_text())
        .into_response()
}
