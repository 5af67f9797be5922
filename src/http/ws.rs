//! `GET /ws`: authenticates the upgrade and hands the socket to a `WsSession`. A bad
//! token still gets an upgrade, closed at once with 4001/4002, because browsers cannot
//! read the status of a failed handshake.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use herald_actors::domain::NotificationId;
use herald_actors::session::{
    self, Admission, WsSession, CLOSE_INVALID_TOKEN, CLOSE_MISSING_TOKEN,
};

use super::{bearer_token, AppState};

/// Close code for an upgrade request whose query string is unusable.
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;

/// Mounts the WebSocket route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // A resource, so other methods get 405 rather than 404.
    cfg.service(web::resource("/ws").get(connect));
}

#[derive(Deserialize, Default)]
struct WsQuery {
    token: Option<String>,
    after: Option<NotificationId>,
}

fn admit(req: &HttpRequest, query: &WsQuery, state: &AppState) -> Admission {
    let header = bearer_token(req);
    let token = match (query.token.as_deref(), header) {
        (Some(t), _) if !t.is_empty() => Some(t),
        (_, Ok(Some(t))) => Some(t),
        (_, Err(_)) => {
            return Admission::Rejected {
                code: CLOSE_INVALID_TOKEN,
                reason: "malformed Authorization header".into(),
            }
        }
        _ => None,
    };
    let Some(token) = token else {
        return Admission::Rejected {
            code: CLOSE_MISSING_TOKEN,
            reason: "missing token: pass ?token= or Authorization: Bearer".into(),
        };
    };
    match state.tokens.verify(token) {
        Ok(claims) => Admission::Accepted {
            user_id: claims.sub,
            expires_at: claims.expires_at(),
        },
        Err(_) => Admission::Rejected {
            code: CLOSE_INVALID_TOKEN,
            reason: "invalid or expired token".into(),
        },
    }
}

async fn connect(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(super::problem::ApiError::Draining.into());
    }
    let query = serde_urlencoded::from_str::<WsQuery>(req.query_string());
    let (admission, after) = match query {
        Ok(q) if q.after.is_some_and(|a| a < 0) => (
            Admission::Rejected {
                code: CLOSE_POLICY_VIOLATION,
                reason: "invalid query: `after` must be a notification id (0 or more)".into(),
            },
            None,
        ),
        Ok(q) => (admit(&req, &q, &state), q.after),
        Err(err) => (
            Admission::Rejected {
                code: CLOSE_POLICY_VIOLATION,
                reason: format!("invalid query: {err}"),
            },
            None,
        ),
    };
    let session = WsSession::new(
        admission,
        state.registry.clone(),
        Arc::clone(&state.store),
        state.session.clone(),
        Arc::clone(&state.counters),
        state.activity_tracker.clone().recipient(),
        after,
    );
    session::start(session, &req, stream)
}
