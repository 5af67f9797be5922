//! `/api/notifications`: publish (targeted or broadcast, optional idempotency) and the
//! user's history.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use tracing::instrument;

use herald_actors::domain::{
    Audience, EventName, NewNotification, Notification, NotificationId, UserId,
};
use herald_actors::messages::Publish;
use herald_actors::ports::StoreError;

use super::idempotency::{self, Claim, ClaimedKey};
use super::json::{parse, read_body};
use super::problem::{ApiError, FieldError};
use super::{authenticate, authorize, AppState};
use crate::auth::jwt::SCOPE_PUBLISH;

/// Largest payload object, serialized (DESIGN §4).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Default and largest page size of the history.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size of the history.
pub const MAX_LIMIT: u32 = 500;

/// Mounts the notification routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/notifications")
            .post(publish)
            .get(history),
    );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    user_id: Option<String>,
    broadcast: Option<bool>,
    event: Option<String>,
    payload: Option<Box<RawValue>>,
}

impl PublishRequest {
    fn validate(self) -> Result<NewNotification, ApiError> {
        let mut errors = Vec::new();
        let audience = match (self.user_id.as_deref(), self.broadcast) {
            (Some(id), None | Some(false)) => match id.parse::<UserId>() {
                Ok(id) => Some(Audience::User(id)),
                Err(e) => {
                    errors.push(FieldError::new("user_id", e.0));
                    None
                }
            },
            (None, Some(true)) => Some(Audience::Broadcast),
            (Some(_), Some(true)) => {
                errors.push(FieldError::new(
                    "broadcast",
                    "give either user_id or broadcast: true, not both",
                ));
                None
            }
            (None, _) => {
                errors.push(FieldError::new(
                    "user_id",
                    "is required unless broadcast is true",
                ));
                None
            }
        };
        let event = match self.event.as_deref() {
            Some(e) => EventName::parse(e)
                .map_err(|err| errors.push(FieldError::new("event", err.0)))
                .ok(),
            None => {
                errors.push(FieldError::new("event", "is required"));
                None
            }
        };
        let payload = match self.payload {
            None => {
                errors.push(FieldError::new(
                    "payload",
                    "is required and must be a JSON object",
                ));
                None
            }
            Some(p) if !p.get().starts_with('{') => {
                errors.push(FieldError::new("payload", "must be a JSON object"));
                None
            }
            Some(p) if p.get().len() > MAX_PAYLOAD_BYTES => {
                errors.push(FieldError::new(
                    "payload",
                    format!("must be at most {MAX_PAYLOAD_BYTES} bytes"),
                ));
                None
            }
            // Every client must be able to parse what it receives: no numbers out of
            // range, no nesting deeper than serde_json's limit.
            Some(p) => match serde_json::from_str::<serde_json::Value>(p.get()) {
                Ok(_) => Some(p),
                Err(e) => {
                    errors.push(FieldError::new(
                        "payload",
                        format!("is not portable JSON: {e}"),
                    ));
                    None
                }
            },
        };
        match (audience, event, payload) {
            (Some(audience), Some(event), Some(payload)) if errors.is_empty() => {
                Ok(NewNotification {
                    audience,
                    event,
                    payload,
                    dedupe_key: None,
                })
            }
            _ => Err(ApiError::Validation(errors)),
        }
    }
}

#[instrument(skip_all, fields(publisher))]
async fn publish(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let claims = authorize(&req, &state, SCOPE_PUBLISH)?;
    tracing::Span::current().record("publisher", tracing::field::display(claims.sub));
    let key = idempotency::key_from(&req)?;
    let body = read_body(&req, payload, state.max_body_bytes, state.body_timeout).await?;
    let notification = parse::<PublishRequest>(&req, &body)?.validate()?;

    let claimed: Option<ClaimedKey> = match key {
        None => None,
        Some(key) => {
            match idempotency::claim(&*state.store, format!("publish:{}", claims.sub), key, &body)
                .await?
            {
                Claim::Replay(response) => return Ok(response),
                Claim::Proceed(claimed) => Some(claimed),
            }
        }
    };
    let response = claimed
        .as_ref()
        .map(|c| c.response(StatusCode::ACCEPTED, Bytes::new()));
    let outcome = state
        .writer
        .send(Publish {
            notification,
            response,
        })
        .await;
    let result = match outcome {
        Ok(Ok((stored, _))) => Ok(HttpResponse::Accepted().json(json!({ "id": stored.id }))),
        Ok(Err(StoreError::Unavailable(reason))) => Err(ApiError::Unavailable(reason)),
        Ok(Err(other)) => Err(ApiError::Unexpected(other.into())),
        Err(mailbox) => Err(ApiError::Unavailable(format!(
            "notification writer: {mailbox}"
        ))),
    };
    if let (Err(_), Some(claimed)) = (&result, &claimed) {
        idempotency::release(&*state.store, claimed).await;
    }
    result
}

/// A page of history. Serialized directly (payloads stay raw text), never through
/// `serde_json::Value`, so payloads come back byte for byte as they were published.
#[derive(Serialize)]
struct HistoryPage<'a> {
    notifications: Vec<HistoryItem<'a>>,
    next_after: NotificationId,
}

#[derive(Serialize)]
struct HistoryItem<'a> {
    id: NotificationId,
    event: &'a str,
    payload: &'a RawValue,
    created_at: &'a chrono::DateTime<chrono::Utc>,
}

impl<'a> From<&'a Notification> for HistoryItem<'a> {
    fn from(n: &'a Notification) -> Self {
        Self {
            id: n.id,
            event: n.event.as_str(),
            payload: &n.payload,
            created_at: &n.created_at,
        }
    }
}

fn parse_query(query: &str) -> Result<(NotificationId, u32), ApiError> {
    let mut after: NotificationId = 0;
    let mut limit = DEFAULT_LIMIT;
    let mut errors = Vec::new();
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::Validation(vec![FieldError::new("query", e.to_string())]))?;
    for (name, value) in pairs {
        match name.as_str() {
            "after" => match value.parse::<NotificationId>() {
                Ok(v) if v >= 0 => after = v,
                _ => errors.push(FieldError::new(
                    "after",
                    "must be a notification id (0 or more)",
                )),
            },
            "limit" => match value.parse::<u32>() {
                Ok(v) if (1..=MAX_LIMIT).contains(&v) => limit = v,
                _ => errors.push(FieldError::new(
                    "limit",
                    format!("must be between 1 and {MAX_LIMIT}"),
                )),
            },
            other => errors.push(FieldError::new(other, "unknown query parameter")),
        }
    }
    if errors.is_empty() {
        Ok((after, limit))
    } else {
        Err(ApiError::Validation(errors))
    }
}

#[instrument(skip_all)]
async fn history(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let claims = authenticate(&req, &state)?;
    let (after, limit) = parse_query(req.query_string())?;
    let rows = state
        .store
        .history(claims.sub, after, None, limit)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let next_after = rows.last().map_or(after, |n| n.id);
    let page = HistoryPage {
        notifications: rows.iter().map(HistoryItem::from).collect(),
        next_after,
    };
    Ok(HttpResponse::Ok().json(page))
}
