//! Operator endpoints: liveness, readiness and the actor health board.

use actix_web::{web, HttpResponse};
use serde_json::json;

use herald_actors::metrics::{GetQps, RenderPrometheus};
use herald_actors::ports::StoreError;

use crate::backends::analytics::mau_days;

use super::problem::{ApiError, PROBLEM_JSON};
use super::AppState;

/// A critical actor whose heartbeat is older than this makes the node unready.
pub const STALE_HEARTBEAT_MS: u64 = 5_000;

/// Mounts the operator routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // Probes answer HEAD too: some load balancers check with it.
    cfg.service(web::resource("/livez").get(livez).head(livez))
        .service(web::resource("/readyz").get(readyz).head(readyz))
        .service(web::resource("/api/health/actors").get(actors))
        .service(web::resource("/metrics").get(metrics))
        .service(web::resource("/api/analytics").get(analytics));
}

/// 200 while the process serves requests; never checks dependencies.
async fn livez() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// 200 only when the store answers and every critical actor runs.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let mut reasons = state.board.unready_reasons(STALE_HEARTBEAT_MS);
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        reasons.insert(0, "draining: the node is shutting down".to_owned());
    }
    // Every configured backend, checked concurrently, reported by name.
    let (store, kafka, redis) = tokio::join!(
        state.store.ping(),
        async {
            match &state.kafka {
                Some(kafka) => Some(kafka.ping().await.map_err(|e| e.to_string())),
                None => None,
            }
        },
        async {
            match &state.redis {
                Some(redis) => Some(redis.ping().await.map_err(|e| e.to_string())),
                None => None,
            }
        },
    );
    let mut backends = serde_json::Map::new();
    let checks = [
        ("store", Some(store.map_err(|e| e.to_string()))),
        ("kafka", kafka),
        ("redis", redis),
    ];
    for (name, check) in checks {
        match check {
            Some(Ok(())) => {
                backends.insert(name.into(), "ok".into());
            }
            Some(Err(err)) => {
                backends.insert(name.into(), "unreachable".into());
                reasons.push(format!("{name}: {err}"));
            }
            None => {}
        }
    }
    if reasons.is_empty() {
        HttpResponse::Ok().json(json!({ "status": "ready", "backends": backends }))
    } else {
        // A problem document like every other error, with the reasons as an extension.
        let body = json!({
            "type": "urn:herald:problem:not_ready",
            "title": "Not ready",
            "status": 503,
            "detail": reasons.join("; "),
            "code": "not_ready",
            "reasons": reasons,
            "backends": backends,
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

/// Prometheus text exposition format 0.0.4.
async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let text = state
        .metrics
        .send(RenderPrometheus)
        .await
        .map_err(|e| ApiError::Unavailable(format!("metrics: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

/// Request rates, distinct active users and open connections. DAU is today (UTC);
/// MAU the last 30 days, today included.
async fn analytics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let today = chrono::Utc::now().date_naive();
    let (day, month) = ([today], mau_days(today));
    let (qps, dau, mau) = tokio::join!(
        state.metrics.send(GetQps),
        state.activity.distinct(&day),
        state.activity.distinct(&month),
    );
    let qps = qps.map_err(|e| ApiError::Unavailable(format!("metrics: {e}")))?;
    let unavailable = |e: StoreError| ApiError::Unavailable(format!("activity counters: {e}"));
    Ok(HttpResponse::Ok().json(json!({
        "qps": qps,
        "dau": dau.map_err(unavailable)?,
        "mau": mau.map_err(unavailable)?,
        "connections": state.counters.connections(),
    })))
}
