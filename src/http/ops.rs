//! Operator endpoints: liveness, readiness and the actor health board.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::problem::PROBLEM_JSON;
use super::AppState;

/// A critical actor whose heartbeat is older than this makes the node unready.
pub const STALE_HEARTBEAT_MS: u64 = 5_000;

/// Mounts the operator routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // Probes answer HEAD too: some load balancers check with it.
    cfg.service(web::resource("/livez").get(livez).head(livez))
        .service(web::resource("/readyz").get(readyz).head(readyz))
        .service(web::resource("/api/health/actors").get(actors));
}

/// 200 while the process serves requests; never checks dependencies.
async fn livez() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// 200 only when the store answers and every critical actor runs.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let mut reasons = state.board.unready_reasons(STALE_HEARTBEAT_MS);
    if let Err(err) = state.store.ping().await {
        reasons.push(format!("store: {err}"));
    }
    if let Some(kafka) = &state.kafka {
        if let Err(err) = kafka.ping().await {
            reasons.push(format!("kafka: {err}"));
        }
    }
    if let Some(redis) = &state.redis {
        if let Err(err) = redis.ping().await {
            reasons.push(format!("redis: {err}"));
        }
    }
    if reasons.is_empty() {
        HttpResponse::Ok().json(json!({ "status": "ready" }))
    } else {
        // A problem document like every other error, with the reasons as an extension.
        let body = json!({
            "type": "urn:herald:problem:not_ready",
            "title": "Not ready",
            "status": 503,
            "detail": reasons.join("; "),
            "code": "not_ready",
            "reasons": reasons,
        });
        HttpResponse::ServiceUnavailable()
            .content_type(PROBLEM_JSON)
            .body(body.to_string())
    }
}

/// Every actor's status, restarts, heartbeat age, counts and details.
async fn actors(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "actors": state.board.snapshot() }))
}
