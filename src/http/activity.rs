//! `POST /api/analytics/hits`: how services without a Kafka client (and every service
//! in embedded mode, whose bus is in-process) report `api.hit` events. The hits are
//! appended to the `api.hit` topic as one event and counted into DAU/MAU by its
//! consumer, exactly like events produced to Kafka directly.

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use tracing::instrument;
use uuid::Uuid;

use herald_actors::domain::{ActivityEvent, ActivitySource, Topic};

use super::json::{parse, read_body};
use super::problem::{ApiError, FieldError};
use super::{authorize, AppState};
use crate::auth::jwt::SCOPE_PUBLISH;

/// Mounts the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/analytics/hits").post(report_hits));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HitsRequest {
    user_ids: Option<Vec<String>>,
    at: Option<DateTime<Utc>>,
}

#[instrument(skip_all, fields(hits))]
async fn report_hits(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state, SCOPE_PUBLISH)?;
    let body = read_body(&req, payload, state.max_body_bytes, state.body_timeout).await?;
    let request = parse::<HitsRequest>(&req, &body)?;
    let event = ActivityEvent {
        event_id: Some(Uuid::new_v4()),
        user_id: None,
        user_ids: request.user_ids.unwrap_or_default(),
        at: request.at,
        source: Some(ActivitySource::ApiHit),
    };
    let count = event
        .users()
        .map_err(|reason| ApiError::Validation(vec![FieldError::new("user_ids", reason)]))?
        .len();
    tracing::Span::current().record("hits", count);
    let key = event.user_ids.first().cloned().unwrap_or_default();
    let body = serde_json::to_vec(&event).map_err(|e| ApiError::Unexpected(e.into()))?;
    state
        .bus
        .publish(Topic::ApiHit, &key, Bytes::from(body))
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(HttpResponse::Accepted().json(json!({ "accepted": count })))
}
