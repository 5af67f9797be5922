//! `GET /ws`: authenticates the upgrade and hands the socket to a `WsSession`. A bad
//! token still gets an upgrade, closed at once with 4001/4002, because browsers cannot
//! read the status of a failed handshake.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use actix::{Addr, Supervisor};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use herald_actors::domain::NotificationId;
use herald_actors::fanout::Fanout;
use herald_actors::health::HealthBoard;
use herald_actors::messages::AddFanout;
use herald_actors::registry::Registry;
use herald_actors::session::{
    self, Admission, Routing, WsSession, CLOSE_INVALID_TOKEN, CLOSE_MISSING_TOKEN,
};

use super::{bearer_token, AppState};

/// Close code for an upgrade request whose query string is unusable.
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;

/// The fan-out of the HTTP worker a request runs on: per-worker app data, so a
/// session joins the fan-out of its own thread.
pub struct WorkerFanout(Addr<Fanout>);

/// Starts one [`Fanout`] per HTTP worker, from the app factory (which actix runs on
/// each worker's thread, and again on the same thread when it restarts a service).
pub struct FanoutSpawner {
    /// Tells this spawner's fan-outs apart from another server's in the same process.
    id: u64,
    registry: Addr<Registry>,
    board: HealthBoard,
    started: AtomicUsize,
}

/// Spawner ids.
static NEXT_SPAWNER: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The fan-out this thread already runs, and the spawner that started it.
    static THIS_THREADS_FANOUT: RefCell<Option<(u64, Addr<Fanout>)>> =
        const { RefCell::new(None) };
}

impl FanoutSpawner {
    /// A spawner announcing its fan-outs to `registry` and their health on `board`.
    pub fn new(registry: Addr<Registry>, board: HealthBoard) -> Self {
        Self {
            id: NEXT_SPAWNER.fetch_add(1, Ordering::Relaxed),
            registry,
            board,
            started: AtomicUsize::new(0),
        }
    }

    /// The fan-out of the current arbiter: the one this thread already runs, or a new
    /// one, announced to the registry.
    pub fn start_here(&self) -> web::Data<WorkerFanout> {
        let running = THIS_THREADS_FANOUT.with_borrow(|slot| match slot {
            Some((id, fanout)) if *id == self.id && fanout.connected() => Some(fanout.clone()),
            _ => None,
        });
        if let Some(fanout) = running {
            return web::Data::new(WorkerFanout(fanout));
        }
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        let stats = self.board.register(format!("fanout:{n}"), "Fanout", false);
        let fanout = Supervisor::start(move |_| Fanout::new(stats));
        self.registry.do_send(AddFanout {
            fanout: fanout.clone().recipient(),
        });
        THIS_THREADS_FANOUT.with_borrow_mut(|slot| *slot = Some((self.id, fanout.clone())));
        web::Data::new(WorkerFanout(fanout))
    }
}

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
    let Some(fanout) = req.app_data::<web::Data<WorkerFanout>>() else {
        return Err(super::problem::ApiError::Unexpected(anyhow::anyhow!(
            "this HTTP worker has no fan-out (the app factory adds one)"
        ))
        .into());
    };
    let routing = Routing {
        registry: state.registry.clone(),
        fanout: fanout.0.clone(),
    };
    let session = WsSession::new(
        admission,
        routing,
        Arc::clone(&state.store),
        state.session.clone(),
        Arc::clone(&state.counters),
        state.activity_tracker.clone().recipient(),
        after,
    );
    session::start(session, &req, stream)
}
