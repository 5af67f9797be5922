//! Hard limits on the request head, checked before routing so no handler (and no
//! rate-limiter key) works on an oversized request. actix refuses heads over 128 KiB
//! itself (431 without a body); this brings the limit down to a configurable size and
//! answers with problem+json like every other error.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;

use super::problem::ApiError;
use super::AppState;

/// Bytes a header line costs beyond its name and value (`": "` and CRLF).
const HEADER_LINE_OVERHEAD: usize = 4;

/// The size of the request line and headers as sent on the wire, near enough.
fn head_bytes(req: &ServiceRequest) -> usize {
    let line = req.method().as_str().len() + req.uri().to_string().len() + 12;
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + HEADER_LINE_OVERHEAD)
        .sum::<usize>()
        + line
}

/// Middleware (use with `from_fn`) refusing requests whose head is over
/// `server.max_header_bytes` with 431 `headers_too_large`.
///
/// # Errors
/// [`ApiError::HeadersTooLarge`], or what the inner service returns.
pub async fn limit_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let limit = req
        .app_data::<web::Data<AppState>>()
        .map_or(usize::MAX, |state| state.max_header_bytes);
    if head_bytes(&req) > limit {
        return Err(ApiError::HeadersTooLarge(limit).into());
    }
    next.call(req).await
}
