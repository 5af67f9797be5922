//! Request observation: every request's route, status and duration go to the metrics
//! actor. The route is the matched pattern (`/api/users/me`), never the raw path, so
//! ids never become label values.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;

use herald_actors::metrics::ObserveRequest;

use super::AppState;

/// Middleware (use with `from_fn`) reporting each request to the metrics actor.
///
/// # Errors
/// Only what the inner service returns.
pub async fn observe_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.metrics.clone());
    let response = next.call(req).await?;
    if let Some(metrics) = metrics {
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        // Dropping one observation beats slowing the request when metrics lag behind.
        let _ = metrics.try_send(ObserveRequest {
            route,
            status: response.status().as_u16(),
            duration: started.elapsed(),
        });
    }
    Ok(response)
}
