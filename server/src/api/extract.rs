//! Extractors that turn a request into a service call. Their rejection is [`ServiceError`], so
//! a malformed request gets the same JSON refusal as any other, and handlers stay a few lines.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use bytes::BytesMut;
use http_body_util::BodyExt;
use webfl_shared::protocol::{CheckInRequest, header as h};

use crate::service::{CheckInCall, SecAggCall, Service, ServiceError, UploadCall, UploadRoom};

/// Check-in bodies are tiny; anything larger is refused.
pub const CHECKIN_LIMIT_BYTES: usize = 64 * 1024;

/// The bearer token of `Authorization: Bearer <token>`, if the request has one.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

/// The peer's address, when the server recorded one (`webfl serve` does; in-process tests don't).
fn peer(parts_extensions: &axum::http::Extensions) -> Option<IpAddr> {
    parts_extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip())
}

/// Reads a body of at most `limit` bytes within the body deadline, frame by frame. An upload's
/// body holds room in the upload buffer (see [`UploadRoom`]): its declared length before it is
/// read, or, sent without one, the bytes received so far; waiting for room past the deadline is
/// `503 overloaded`.
async fn read_body(
    req: Request,
    limit: usize,
    service: &Service,
    mut room: Option<&mut UploadRoom>,
) -> Result<Bytes, ServiceError> {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ServiceError::TooLarge(limit));
    }
    let timeout = service.body_timeout();
    let deadline = tokio::time::Instant::now() + timeout;
    if let (Some(room), Some(declared)) = (room.as_deref_mut(), declared) {
        // All of a declared body's room at once, before any of it is read: were room taken
        // chunk by chunk, thousands of uploads could each hold a part of the buffer and all wait
        // for more, none finishing until the body timeout.
        room.hold(declared as usize, deadline).await?;
    }
    let mut body = req.into_body();
    let mut received = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ServiceError::BodyTimeout(timeout.as_secs_f64())),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ServiceError::bad_request("bad_body", format!("the body could not be read: {e}")));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        let total = received.len() + data.len();
        if total > limit {
            return Err(ServiceError::TooLarge(limit));
        }
        if let Some(room) = room.as_deref_mut() {
            room.hold(total, deadline).await?;
        }
        if received.is_empty() {
            // The declared length, once the first bytes are in: one allocation for honest bodies.
            received.reserve(declared.map_or(total, |n| n as usize).max(total));
        }
        received.extend_from_slice(&data);
    }
    Ok(received.freeze())
}

/// Whether the body is declared `application/json` (parameters such as `charset` aside).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")))
}

fn parse_u64(what: &str, text: &str) -> Result<u64, ServiceError> {
    text.trim().parse().map_err(|_| {
        ServiceError::bad_request("bad_request", format!("{what} must be an unsigned integer, got {text:?}"))
    })
}

fn required_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, ServiceError> {
    let value = headers
        .get(name)
        .ok_or_else(|| ServiceError::bad_request("missing_header", format!("missing header {name}")))?;
    value.to_str().map_err(|_| ServiceError::bad_request("bad_header", format!("header {name} is not text")))
}

/// A path parameter that must be an unsigned integer (`{version}`, `{round}`).
pub struct Number(pub u64);

impl<S: Send + Sync> FromRequestParts<S> for Number {
    type Rejection = ServiceError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ServiceError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ServiceError::bad_request("bad_request", e.body_text()))?;
        parse_u64("the path parameter", &text).map(Number)
    }
}

/// `POST /api/v1/checkin`: a JSON object (`{}` for a first check-in) sent as
/// `application/json` — which a page on another origin cannot send without the server's CORS
/// consent, unlike an empty or `text/plain` POST.
pub struct CheckIn(pub CheckInCall);

impl FromRequest<Service> for CheckIn {
    type Rejection = ServiceError;

    async fn from_request(req: Request, service: &Service) -> Result<Self, ServiceError> {
        let token = bearer(req.headers());
        let peer = peer(req.extensions());
        if !is_json(req.headers()) {
            return Err(ServiceError::bad_request(
                "bad_content_type",
                "a check-in is a JSON object sent with `Content-Type: application/json` (`{}` for a first one)",
            ));
        }
        let body = read_body(req, CHECKIN_LIMIT_BYTES, service, None).await?;
        // serde would also read a JSON array as the struct's fields in order; only an object is
        // a check-in.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ServiceError::bad_request("bad_json", "a check-in is a JSON object (`{}` for a first one)"));
        }
        let request: CheckInRequest = serde_json::from_slice(&body)
            .map_err(|e| ServiceError::bad_request("bad_json", format!("check-in body: {e}")))?;
        if request.client_id.is_some() && token.is_none() {
            return Err(ServiceError::Unauthorized("missing `Authorization: Bearer <token>`".into()));
        }
        Ok(CheckIn(CheckInCall { client_id: request.client_id, token, wait_ms: request.wait_ms.unwrap_or(0), peer }))
    }
}

/// An operator request: admitted with the operator token (or from this machine when the server
/// has none), refused otherwise.
pub struct Operator;

impl FromRequestParts<Service> for Operator {
    type Rejection = ServiceError;

    async fn from_request_parts(parts: &mut Parts, service: &Service) -> Result<Self, ServiceError> {
        service.authorize_operator(bearer(&parts.headers).as_deref(), peer(&parts.extensions))?;
        Ok(Operator)
    }
}

/// `POST /api/v1/rounds/{round}/secagg`: a selected client's JSON step of a secure round,
/// authenticated (`X-Webfl-Client` + bearer token) before its body takes room in the upload
/// buffer, bounded by [`Service::secagg_limit_bytes`].
pub struct SecAggStep(pub SecAggCall);

impl FromRequest<Service> for SecAggStep {
    type Rejection = ServiceError;

    async fn from_request(req: Request, service: &Service) -> Result<Self, ServiceError> {
        let (mut parts, body) = req.into_parts();
        let Number(round) = Number::from_request_parts(&mut parts, service)
            .await
            .map_err(|_| ServiceError::bad_request("bad_request", "the round must be an unsigned integer"))?;
        let client_id = required_header(&parts.headers, h::CLIENT)?.to_string();
        let Some(token) = bearer(&parts.headers) else {
            return Err(ServiceError::Unauthorized("missing `Authorization: Bearer <token>`".into()));
        };
        if !is_json(&parts.headers) {
            return Err(ServiceError::bad_request(
                "bad_content_type",
                "a secure-aggregation request is a JSON object sent with `Content-Type: application/json`",
            ));
        }
        service.authenticate(&client_id, Some(&token))?;
        let mut room = service.upload_room();
        let body =
            read_body(Request::from_parts(parts, body), service.secagg_limit_bytes(), service, Some(&mut room)).await?;
        Ok(SecAggStep(SecAggCall { round, client_id, body, room }))
    }
}

/// `POST /api/v1/rounds/{round}/update`: headers, path and a body bounded by the task's
/// upload limit.
pub struct UpdateUpload(pub UploadCall);

impl FromRequest<Service> for UpdateUpload {
    type Rejection = ServiceError;

    async fn from_request(req: Request, service: &Service) -> Result<Self, ServiceError> {
        let (mut parts, body) = req.into_parts();
        let peer = peer(&parts.extensions);
        let Number(round) = Number::from_request_parts(&mut parts, service)
            .await
            .map_err(|_| ServiceError::bad_request("bad_request", "the round must be an unsigned integer"))?;
        let headers = &parts.headers;
        let client_id = required_header(headers, h::CLIENT)?.to_string();
        let model_version = parse_u64("X-Webfl-Model-Version", required_header(headers, h::MODEL_VERSION)?)?;
        let examples = parse_u64("X-Webfl-Examples", required_header(headers, h::EXAMPLES)?)?;
        let token = bearer(headers);
        if token.is_none() {
            return Err(ServiceError::Unauthorized("missing `Authorization: Bearer <token>`".into()));
        }
        let content_type =
            headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        // Strangers' bodies take no room in the upload buffer.
        service.authenticate(&client_id, token.as_deref())?;
        let mut room = service.upload_room();
        let body =
            match read_body(Request::from_parts(parts, body), service.upload_limit_bytes(), service, Some(&mut room))
                .await
            {
                Err(e @ ServiceError::Overloaded { .. }) => return Err(service.refused_upload(e)),
                read => read,
            };
        Ok(UpdateUpload(UploadCall {
            round,
            client_id,
            token,
            model_version,
            examples,
            content_type,
            body,
            peer,
            room,
        }))
    }
}
