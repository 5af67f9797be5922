//! Request observation: every request gets a request id (the client's `X-Request-Id`
//! when it is a sane token, else a fresh one), echoed in the response and carried by a
//! `tracing` span so every log line of the request names it. Its route, status and
//! duration go to the metrics actor. The route is the matched pattern
//! (`/api/users/me`), never the raw path, so ids never become label values.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web;
use tracing::Instrument;

use herald_actors::metrics::ObserveRequest;

use super::AppState;

/// The request id header, in requests and responses.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client-supplied request id kept; longer ones are replaced.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// The client's request id when it is short and plain, so it cannot forge log lines.
fn client_request_id(req: &ServiceRequest) -> Option<String> {
    let value = req.headers().get(&REQUEST_ID)?.to_str().ok()?;
    let sane = !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    sane.then(|| value.to_owned())
}

/// Middleware (use with `from_fn`) giving each request an id and a span, and reporting
/// it to the metrics actor.
///
/// # Errors
/// Only what the inner service returns.
pub async fn observe_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id =
        client_request_id(&req).unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let span = tracing::info_span!(
        "http",
        request_id = %request_id,
        method = %req.method(),
        path = %req.path(),
    );
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.metrics.clone());
    let mut response = next.call(req).instrument(span.clone()).await?;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status();
    if status.is_server_error() {
        span.in_scope(|| tracing::warn!(status = status.as_u16(), "request failed"));
    }
    if let Some(metrics) = metrics {
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        // Dropping one observation beats slowing the request when metrics lag behind.
        let _ = metrics.try_send(ObserveRequest {
            route,
            status: status.as_u16(),
            duration: started.elapsed(),
        });
    }
    Ok(response)
}
