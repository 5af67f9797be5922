//! Operator endpoints behind the `admin` scope: the dead letters of the mail queue
//! (mail that used up its attempts) and their redrive.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, instrument};

use herald_actors::messages::Nudge;

use super::problem::{ApiError, FieldError};
use super::{authorize, AppState};
use crate::auth::jwt::SCOPE_ADMIN;

/// Default and largest page of dead letters.
pub const MAX_DEAD_LETTERS: u32 = 500;

/// Mounts the admin routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/admin/dead-letters").get(list))
        .service(web::resource("/api/admin/dead-letters/{id}/redrive").post(redrive));
}

fn require_admin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    authorize(req, state, SCOPE_ADMIN).map(|_| ())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<String>,
}

/// Dead letters, most recent first: `?limit=` up to 500.
#[instrument(skip_all)]
async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let query: ListQuery = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::InvalidJson(format!("invalid query: {e}")))?;
    let limit = match query.limit.as_deref() {
        None => MAX_DEAD_LETTERS,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_DEAD_LETTERS).contains(n))
            .ok_or_else(|| {
                ApiError::Validation(vec![FieldError::new(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_DEAD_LETTERS}"),
                )])
            })?,
    };
    let dead = state
        .store
        .dead_mail(limit)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let letters: Vec<_> = dead
        .into_iter()
        .map(|m| {
            json!({
                "id": m.id,
                "kind": "email",
                "to": m.to,
                "subject": m.subject,
                "attempts": m.attempts,
                "error": m.error,
                "failed_at": m.failed_at,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "dead_letters": letters })))
}

/// Queues a dead letter again with a fresh attempt budget.
#[instrument(skip_all, fields(dead_letter = %path.as_str()))]
async fn redrive(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let id = path.into_inner();
    let queued = state
        .store
        .redrive_mail(&id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if !queued {
        return Err(ApiError::NotFound(format!("no dead letter {id:?}")));
    }
    info!("dead letter redriven");
    state.mailer.do_send(Nudge);
    Ok(HttpResponse::Accepted().json(json!({ "id": id, "status": "queued" })))
}
