//! The OpenAPI 3.1 document of protocol v1 and the operator endpoints, served at
//! `/api/openapi.json`.
//!
//! Every operation is described by a `#[utoipa::path]` attribute on its handler in
//! [`super::handlers`], and the router and the document are assembled together (utoipa-axum), so
//! a route cannot exist without its operation. The message types come from
//! [`webfl_shared::protocol`] (built with its `openapi` feature). The tests below check the
//! document against the error table of `docs/protocol.md`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use webfl_shared::protocol::{
    self as proto, ClientRecord, ClientsPage, PrivacyStatus, RoundOutcome, RoundRecord, Status, WaitReason,
};
use webfl_shared::train::TrainPlan;

/// An update in the pipeline's encoding: a version byte, the codec's tag and its payload
/// (format in `shared/src/codec/mod.rs`).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary, content_media_type = "application/x-webfl-update")]
#[allow(dead_code)] // only its schema is used
pub(crate) struct UpdateBody(Vec<u8>);

/// A model or an update as safetensors bytes: F32 tensors with PyTorch `state_dict` names.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary, content_media_type = "application/octet-stream")]
#[allow(dead_code)] // only its schema is used
pub(crate) struct Safetensors(Vec<u8>);

/// The `bearer` security scheme: the token a check-in issues.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "The 128-bit hex `token` a first check-in returns with its `client_id`; \
                 the server keeps only its SHA-256 hash.",
            ))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
        let operator = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "The operator token (`[server] operator_token` or `WEBFL_OPERATOR_TOKEN`); a server without one \
                 answers operator requests from its own machine only.",
            ))
            .build();
        components.add_security_scheme("operator", SecurityScheme::Http(operator));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "webfl",
        version = env!("CARGO_PKG_VERSION"),
        description = "Federated learning with browser clients: protocol v1 (`/api/v1`) and the operator \
                       endpoints. Every refusal is `ErrorBody` JSON and changes nothing; see docs/protocol.md."
    ),
    components(schemas(
        proto::TaskInfo,
        proto::DatasetInfo,
        TrainPlan,
        proto::CheckInRequest,
        proto::Capabilities,
        proto::CheckInResponse,
        proto::AssignmentTerms,
        WaitReason,
        proto::UploadResponse,
        proto::SecAggTerms,
        proto::SecAggRequest,
        proto::SecAggAnswer,
        proto::SecAggDone,
        proto::ErrorBody,
        Safetensors,
        UpdateBody,
        Status,
        PrivacyStatus,
        RoundRecord,
        RoundOutcome,
        ClientRecord,
        ClientsPage,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "protocol", description = "What clients say to the server (protocol v1)."),
        (name = "operator", description = "Status, history, client health and metrics for people and dashboards."),
    )
)]
pub(super) struct ApiDoc;

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;
    use webfl_shared::coordinator::RoundPolicy;
    use webfl_shared::data::Dataset;
    use webfl_shared::model::ModelSpec;
    use webfl_shared::protocol::DatasetInfo;
    use webfl_shared::strategy::{StrategyConfig, StrategyKind};

    use super::*;
    use crate::api::{app, document};
    use crate::service::{Service, TaskSetup};
    use webfl_shared::privacy::PrivacyBudget;

    fn json() -> Value {
        serde_json::from_str(&document().to_json().expect("the document serialises")).unwrap()
    }

    /// Every `(method, path)` the document describes.
    fn operations(doc: &Value) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                ops.insert((method.clone(), path.clone()));
            }
        }
        ops
    }

    #[test]
    fn the_document_serialises_to_openapi_3_1_json() {
        let doc = json();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "{}", doc["openapi"]);
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(doc["info"]["title"], "webfl");
        let bearer = &doc["components"]["securitySchemes"]["bearer"];
        assert_eq!((bearer["type"].as_str(), bearer["scheme"].as_str()), (Some("http"), Some("bearer")), "{bearer}");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in ["TaskInfo", "CheckInRequest", "CheckInResponse", "UploadResponse", "ErrorBody", "Status"] {
            assert!(schemas.contains_key(name), "no schema {name}");
        }
        let status: BTreeSet<&str> =
            schemas["Status"]["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        let want = [
            "protocol_version",
            "task",
            "model_version",
            "updates_accepted",
            "rounds_completed",
            "test_accuracy",
            "clients_connected",
            "open_round",
            "bytes_up_total",
            "bytes_down_total",
            "compression",
            "privacy",
            "store_bytes",
        ];
        assert_eq!(status, want.into_iter().collect());

        // Every reference points at a schema that exists.
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        out.push(r);
                    }
                    map.values().for_each(|v| refs(v, out));
                }
                Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 10);
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("odd reference {r}"));
            assert!(schemas.contains_key(name), "dangling reference {r}");
        }
    }

    /// The pages' types are generated from the document, so a field the server always sends must
    /// be required there (or TypeScript would make it optional).
    #[test]
    fn the_operator_records_require_every_field_they_serialise() {
        let doc = json();
        let required = |name: &str| -> BTreeSet<String> {
            let schema = &doc["components"]["schemas"][name];
            schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
        };
        let keys = |v: Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
        let round = RoundRecord {
            round: 1,
            outcome: RoundOutcome::Abandoned,
            version: None,
            selected: 2,
            reports: 0,
            opened_at_ms: 0,
            closed_at_ms: 1,
            test_loss: None,
            test_accuracy: None,
            bytes_up: 0,
            bytes_down: 0,
            clipped: 0,
            update_norm: None,
            secagg: None,
        };
        assert_eq!(keys(serde_json::to_value(round).unwrap()), required("RoundRecord"));
        let client = ClientRecord {
            client_id: "c".into(),
            first_seen_ms: 0,
            last_seen_ms: 0,
            rounds_completed: 0,
            failures: 0,
            last_round_trip_ms: None,
            bytes_up: 0,
        };
        assert_eq!(keys(serde_json::to_value(client).unwrap()), required("ClientRecord"));
    }

    #[test]
    fn the_document_has_the_ten_operations() {
        assert_eq!(operations(&json()).len(), 10, "{:?}", operations(&json()));
    }

    /// The statuses each operation can answer, from `docs/protocol.md`'s error table and
    /// `AppError::status`.
    #[test]
    fn every_operation_has_its_documented_responses() {
        let want: BTreeMap<(&str, &str), &[&str]> = BTreeMap::from([
            (("get", "/api/v1/task"), &["200"][..]),
            (("post", "/api/v1/checkin"), &["200", "400", "401", "403", "408", "413", "429", "500"][..]),
            (("get", "/api/v1/models/{version}"), &["200", "400", "404", "500"][..]),
            (
                ("post", "/api/v1/rounds/{round}/update"),
                &["202", "400", "401", "403", "408", "409", "413", "422", "429", "503"][..],
            ),
            (
                ("post", "/api/v1/rounds/{round}/secagg"),
                &["200", "400", "401", "403", "408", "409", "413", "422", "503"][..],
            ),
            (("get", "/api/status"), &["200"][..]),
            (("get", "/api/rounds"), &["200"][..]),
            (("get", "/api/clients"), &["200", "400", "401", "403", "500"][..]),
            (("get", "/metrics"), &["200", "401", "403"][..]),
            (("get", "/api/openapi.json"), &["200"][..]),
        ]);
        let doc = json();
        let ops: BTreeSet<(String, String)> = want.keys().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        assert_eq!(operations(&doc), ops);
        for ((method, path), statuses) in &want {
            let op = &doc["paths"][path][method];
            let responses = op["responses"].as_object().unwrap();
            let got: Vec<&str> = responses.keys().map(String::as_str).collect();
            assert_eq!(&got, statuses, "{method} {path}");
            for (status, response) in responses {
                assert!(!response["description"].as_str().unwrap().is_empty(), "{method} {path} {status}");
                let content = response["content"].as_object();
                if status.starts_with('2') {
                    assert!(content.is_some_and(|c| !c.is_empty()), "{method} {path} {status} has no content");
                } else {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {status}");
                }
            }
            assert!(!op["operationId"].as_str().unwrap().is_empty());
            assert!(!op["summary"].as_str().unwrap_or_default().is_empty(), "{method} {path} has no summary");
        }

        // The specifics a client relies on.
        let upload = &doc["paths"]["/api/v1/rounds/{round}/update"]["post"];
        assert_eq!(upload["security"], serde_json::json!([{"bearer": []}]));
        let body = &upload["requestBody"];
        assert_eq!(body["required"], true);
        assert!(body["content"]["application/octet-stream"].is_object(), "{body}");
        let params: BTreeSet<(&str, &str)> = upload["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["in"].as_str().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        let want = [
            ("path", "round"),
            ("header", "X-Webfl-Client"),
            ("header", "X-Webfl-Model-Version"),
            ("header", "X-Webfl-Examples"),
        ];
        assert_eq!(params, want.into_iter().collect());
        assert_eq!(
            upload["responses"]["202"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/UploadResponse"
        );
        assert!(upload["responses"]["401"]["headers"]["WWW-Authenticate"].is_object());
        // A secure-aggregation step: bearer token, the client's id in a header, a JSON body.
        let secagg = &doc["paths"]["/api/v1/rounds/{round}/secagg"]["post"];
        assert_eq!(secagg["security"], serde_json::json!([{"bearer": []}]));
        let schema = &secagg["requestBody"]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(schema, "#/components/schemas/SecAggRequest");
        assert_eq!(
            secagg["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/SecAggAnswer"
        );
        assert!(secagg["responses"]["401"]["headers"]["WWW-Authenticate"].is_object());
        // Check-in works with or without a token, always with a JSON body (`{}` at first).
        let checkin = &doc["paths"]["/api/v1/checkin"]["post"];
        assert_eq!(checkin["security"], serde_json::json!([{}, {"bearer": []}]));
        assert_eq!(checkin["requestBody"]["required"], true, "{checkin}");
        let schema = &checkin["requestBody"]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(schema, "#/components/schemas/CheckInRequest");
        let model = &doc["paths"]["/api/v1/models/{version}"]["get"]["responses"]["200"];
        assert!(model["content"]["application/octet-stream"].is_object(), "{model}");
        assert!(model["headers"]["Cache-Control"].is_object(), "{model}");
        let metrics = &doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
        assert!(metrics["text/plain; version=0.0.4"].is_object(), "{metrics}");
    }

    fn state() -> Service {
        Service::new(setup()).unwrap()
    }

    fn setup() -> TaskSetup {
        let spec = ModelSpec::builtin("2nn", &[4], 2).unwrap();
        let initial = spec.init_params(&mut webfl_shared::rng::derive(0, &[1])).unwrap();
        let test = Dataset {
            sample_shape: vec![4],
            classes: 2,
            class_names: vec!["a".into(), "b".into()],
            features: vec![1.0, 0.5, 0.0, -1.0, -1.0, -0.5, 0.0, 1.0],
            labels: vec![1, 0],
        };
        TaskSetup {
            name: "openapi".into(),
            spec,
            plan: TrainPlan::default(),
            policy: RoundPolicy {
                target_reports: 2,
                over_selection: 1.0,
                min_reports: 2,
                deadline_ms: 60_000,
                retry_after_ms: 100,
                max_examples: 1000,
            },
            strategy: StrategyConfig::new(StrategyKind::FedAvg),
            test,
            initial,
            upload_limit_bytes: None,
            dataset: DatasetInfo { name: "synthetic".into(), sample_shape: vec![4], classes: 2, demo_data_url: None },
            demo_data: None,
            update: Default::default(),
            privacy: None,
            server: Default::default(),
            secure_aggregation: None,
        }
    }

    /// The pages' types are generated from the schema, so the status answer must have exactly its
    /// fields, all of them always present.
    #[tokio::test]
    async fn the_status_answer_has_exactly_the_documented_fields() {
        let privacy = PrivacyBudget {
            mode: "central".into(),
            noise_multiplier: 1.1,
            sampling_rate: 0.1,
            delta: 1e-5,
            target_epsilon: Some(8.0),
        };
        let doc = json();
        let fields = |name: &str| -> (BTreeSet<String>, BTreeSet<String>) {
            let schema = &doc["components"]["schemas"][name];
            let props = schema["properties"].as_object().unwrap().keys().cloned().collect();
            let required = schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
            (props, required)
        };
        let keys = |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
        for privacy in [None, Some(privacy)] {
            let private = privacy.is_some();
            let app = app(Service::new(TaskSetup { privacy, ..setup() }).unwrap());
            let resp = app.oneshot(Request::get("/api/status").body(Body::empty()).unwrap()).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let status: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
            let (props, required) = fields("Status");
            assert_eq!(keys(&status), props, "{status}");
            assert_eq!(keys(&status), required, "{status}");
            if private {
                let (props, required) = fields("PrivacyStatus");
                assert_eq!(keys(&status["privacy"]), props, "{status}");
                assert_eq!(keys(&status["privacy"]), required, "{status}");
            } else {
                assert!(status["privacy"].is_null(), "{status}");
            }
        }
    }

    #[tokio::test]
    async fn the_server_serves_the_document_and_every_operation_in_it() {
        let app = app(state());
        let resp = app.clone().oneshot(Request::get("/api/openapi.json").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let served: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(served, json());

        // Each documented operation reaches a handler, not the JSON 404 fallback or a 405.
        for (method, path) in operations(&served) {
            let uri = path.replace("{version}", "0").replace("{round}", "1");
            let req = Request::builder().method(method.to_uppercase().as_str()).uri(&uri).body(Body::empty()).unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            assert!(
                !String::from_utf8_lossy(&body).contains("no such endpoint"),
                "{method} {uri} is not routed: {status}"
            );
            let documented = &served["paths"][&path][&method]["responses"][status.as_str()];
            assert!(documented.is_object(), "{method} {uri} answered an undocumented {status}");
        }
    }
}
