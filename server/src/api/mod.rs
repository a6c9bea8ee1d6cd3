//! The HTTP face of `webfl serve`: protocol v1 for clients, the operator endpoints, the OpenAPI
//! document, and the built pages. Thin: extractors parse and bound requests (rejecting with the
//! service's errors), handlers make one service call each, and the router and the OpenAPI
//! document are built together from the handlers' attributes.
//!
//! Endpoints:
//! - `GET  /api/v1/task` — the task: model, plan, data shape, upload limit.
//! - `POST /api/v1/checkin` — assignment or retry (long poll with `wait_ms`).
//! - `GET  /api/v1/models/{version}` — a committed model as safetensors bytes.
//! - `POST /api/v1/rounds/{round}/update` — a client's update Δ (bounded size).
//! - `GET  /api/status`, `/api/rounds`, `/api/clients`, `/metrics` — for operators.
//! - `GET  /api/openapi.json` — the OpenAPI document of all of the above.

mod error;
mod extract;
mod handlers;
mod openapi;

use std::path::Path;

use axum::Router;
use axum::routing::any;
use tower_http::services::{ServeDir, ServeFile};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::service::{Service, ServiceError};

/// Every route with its operation.
fn routes() -> OpenApiRouter<Service> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(handlers::task_info))
        .routes(routes!(handlers::checkin))
        .routes(routes!(handlers::model))
        .routes(routes!(handlers::upload))
        .routes(routes!(handlers::status))
        .routes(routes!(handlers::rounds))
        .routes(routes!(handlers::clients))
        .routes(routes!(handlers::metrics))
        .routes(routes!(handlers::openapi))
}

/// The OpenAPI 3.1 document, served at `/api/openapi.json` and printed by `webfl openapi`.
pub fn document() -> utoipa::openapi::OpenApi {
    use utoipa::Modify;
    let mut doc = routes().into_openapi();
    openapi::OptionalCheckInBody.modify(&mut doc);
    doc
}

/// The whole HTTP API (no pages); unknown paths get a JSON 404.
pub fn app(service: Service) -> Router {
    api(service).fallback(not_found)
}

/// The API plus the built pages in `www` (`www/dist` after `scripts/build-web`): `/` is the
/// contribute page, `/dashboard` the dashboard, other files are served as they are.
pub fn app_with_pages(service: Service, www: &Path) -> Router {
    api(service)
        .route_service("/", ServeFile::new(www.join("index.html")))
        .route_service("/dashboard", ServeFile::new(www.join("dashboard.html")))
        // Unknown API paths stay JSON errors rather than falling through to the files.
        .route("/api/{*rest}", any(not_found))
        .fallback_service(ServeDir::new(www))
}

fn api(service: Service) -> Router {
    let (mut router, _) = routes().split_for_parts();
    if let Some((url, file)) = service.demo_data() {
        router = router.route_service(&url, ServeFile::new(file));
    }
    router.with_state(service)
}

async fn not_found() -> ServiceError {
    ServiceError::NotFound("no such endpoint".into())
}
