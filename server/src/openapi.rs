//! The OpenAPI document of protocol v1, served at `/api/openapi.json`.

use utoipa::OpenApi;
use webfl_shared::proto;

#[derive(OpenApi)]
#[openapi(
    info(title = "webfl", description = "Federated learning with browser clients: protocol v1."),
    components(schemas(
        proto::CheckInRequest,
        proto::Capabilities,
        proto::CheckInResponse,
        proto::UploadResponse,
        proto::ErrorBody,
        proto::TaskInfo,
        proto::DatasetInfo
    ))
)]
struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
