//! HTTP and WebSocket routes, one file per resource, attached with `configure`.

use std::sync::Arc;

use actix::Addr;
use actix_web::http::header;
use actix_web::{web, HttpRequest};

use herald_actors::activity::ActivityTracker;
use herald_actors::health::HealthBoard;
use herald_actors::outbox_relay::OutboxRelay;
use herald_actors::ports::{ActivityStore, Bus, Store};
use herald_actors::registry::Registry;
use herald_actors::session::SessionConfig;
use herald_actors::writer::NotificationWriter;

use crate::auth::jwt::{Claims, TokenService};

pub mod activity;
pub mod admin;
pub mod idempotency;
pub mod json;
pub mod limits;
pub mod notifications;
pub mod observe;
pub mod ops;
pub mod problem;
pub mod rate_limit;
pub mod users;
pub mod ws;

use problem::ApiError;

/// Actors no handler talks to. Their addresses are kept here because actix restarts a
/// supervised actor only while some address to it is alive.
pub struct Daemons {
    /// One consumer per topic.
    pub consumers: Vec<Addr<herald_actors::consumer::Consumer>>,
    /// Store housekeeping.
    pub janitor: Addr<herald_actors::janitor::Janitor>,
}

/// What handlers share: ports, actor addresses and settings they need per request.
pub struct AppState {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Token signing and checking.
    pub tokens: TokenService,
    /// The notification writer.
    pub writer: Addr<NotificationWriter>,
    /// The outbox relay, nudged after writes (absent when this node does not relay).
    pub relay: Option<Addr<OutboxRelay>>,
    /// The session registry.
    pub registry: Addr<Registry>,
    /// Actor health.
    pub board: HealthBoard,
    /// Session tuning.
    pub session: SessionConfig,
    /// Lifetime of login tokens.
    pub token_ttl_secs: u64,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// How long a request body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// The Redis registry mirror, when configured (checked by `/readyz`).
    pub redis: Option<Arc<crate::backends::registry::redis::RedisMirror>>,
    /// Counters the sessions update directly.
    pub counters: Arc<herald_actors::metrics::HotCounters>,
    /// The metrics aggregator.
    pub metrics: Addr<herald_actors::metrics::Metrics>,
    /// Set once shutdown began: readiness fails and new sessions are refused.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// The mailer, nudged when mail is redriven.
    pub mailer: Addr<herald_actors::mailer::Mailer>,
    /// Per-client-IP limits (`None` when off).
    pub rate_limits: Option<rate_limit::RateLimits>,
    /// Background actors, kept restartable.
    pub daemons: Daemons,
    /// The bus, for events the API publishes directly (`api.hit`).
    pub bus: Arc<dyn Bus>,
    /// DAU/MAU counters.
    pub activity: Arc<dyn ActivityStore>,
    /// Where logins and sessions report activity.
    pub activity_tracker: Addr<ActivityTracker>,
    /// The Kafka bus in production mode (checked by `/readyz`).
    pub kafka: Option<Arc<crate::backends::bus::kafka::KafkaBus>>,
}

/// Mounts every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(users::configure)
        .configure(activity::configure)
        .configure(admin::configure)
        .configure(notifications::configure)
        .configure(ws::configure)
        .configure(ops::configure);
}

/// The token from `Authorization: Bearer …`, if the header is present.
///
/// # Errors
/// 401 for a header that is not a bearer token.
pub fn bearer_token(req: &HttpRequest) -> Result<Option<&str>, ApiError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed Authorization header"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::Unauthorized(
            "Authorization must be `Bearer <token>`",
        )),
    }
}

/// Verifies the request's bearer token.
///
/// # Errors
/// 401 when it is missing, malformed, forged or expired.
pub fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Claims, ApiError> {
    let token = bearer_token(req)?.ok_or(ApiError::Unauthorized("a bearer token is required"))?;
    state
        .tokens
        .verify(token)
        .map_err(|_| ApiError::Unauthorized("the token is invalid or expired"))
}

/// Verifies the bearer token and that it carries `scope`.
///
/// # Errors
/// 401 as [`authenticate`]; 403 `insufficient_scope` without the scope.
pub fn authorize(
    req: &HttpRequest,
    state: &AppState,
    scope: &'static str,
) -> Result<Claims, ApiError> {
    let claims = authenticate(req, state)?;
    if claims.has_scope(scope) {
        Ok(claims)
    } else {
        Err(ApiError::InsufficientScope(scope))
    }
}
