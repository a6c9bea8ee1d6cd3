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
//! - `POST /api/v1/rounds/{round}/secagg` — a step of a secure-aggregation round (SecAgg+).
//! - `GET  /api/status`, `/api/rounds`, `/api/clients`, `/metrics` — for operators.
//! - `GET  /api/openapi.json` — the OpenAPI document of all of the above.

mod error;
mod extract;
mod handlers;
mod openapi;

use std::path::Path;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::any;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::ServerConfig;
use crate::service::{Service, ServiceError};

/// The pages' content security policy: scripts and workers from this server only (the wasm
/// module is compiled from a same-origin fetch), no plugins, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
    worker-src 'self' blob:; connect-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; \
    object-src 'none'; base-uri 'self'; frame-ancestors 'none'";

/// Every route with its operation.
fn routes() -> OpenApiRouter<Service> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(handlers::task_info))
        .routes(routes!(handlers::checkin))
        .routes(routes!(handlers::model))
        .routes(routes!(handlers::upload))
        .routes(routes!(handlers::secagg))
        .routes(routes!(handlers::status))
        .routes(routes!(handlers::rounds))
        .routes(routes!(handlers::clients))
        .routes(routes!(handlers::metrics))
        .routes(routes!(handlers::openapi))
}

/// The OpenAPI 3.1 document, served at `/api/openapi.json` and printed by `webfl openapi`.
pub fn document() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// The whole HTTP API (no pages); unknown paths get a JSON 404.
pub fn app(service: Service) -> Router {
    let server = service.server_config().clone();
    guarded(api(service).fallback(not_found), &server)
}

/// The API plus the built pages in `www` (`www/dist` after `scripts/build-web`): `/` is the
/// contribute page, `/dashboard` the dashboard, other files are served as they are.
pub fn app_with_pages(service: Service, www: &Path) -> Router {
    let server = service.server_config().clone();
    let pages = api(service)
        .route_service("/", ServeFile::new(www.join("index.html")))
        .route_service("/dashboard", ServeFile::new(www.join("dashboard.html")))
        // Unknown API paths stay JSON errors rather than falling through to the files.
        .route("/api/{*rest}", any(not_found))
        // Folders are not served: no redirect to `<path>/`, which for `//host` would send the
        // browser to another host.
        .fallback_service(ServeDir::new(www).append_index_html_on_directories(false));
    guarded(pages, &server)
}

/// The headers every answer carries, and the CORS policy: the server's own pages, plus the
/// origins in `[server] cors_origins` for the client protocol.
fn guarded(router: Router, server: &ServerConfig) -> Router {
    let origins: Vec<HeaderValue> =
        server.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()).collect();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static(webfl_shared::protocol::header::CLIENT),
            HeaderName::from_static(webfl_shared::protocol::header::MODEL_VERSION),
            HeaderName::from_static(webfl_shared::protocol::header::EXAMPLES),
        ])
        .expose_headers([header::RETRY_AFTER]);
    let set = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
    };
    router
        .layer(cors)
        .layer(set(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(set(header::REFERRER_POLICY, "no-referrer"))
        .layer(set(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
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
