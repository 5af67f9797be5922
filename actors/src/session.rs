//! `WsSession`: one actor per WebSocket connection. It registers with the registry,
//! writes pushes to the socket in order, replays history on `resume` without gaps or
//! duplicates across the switch to live, answers pings, and closes idle, expired,
//! misbehaving or slow connections with a code that tells the client why.
//!
//! This is the only file that touches `actix-web-actors` (deprecated upstream): a
//! replacement only has to change it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws::{self, CloseCode, CloseReason, ProtocolError};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use tracing::{debug, warn};

use crate::activity::RecordActivity;
use crate::domain::{ActivitySource, Notification, NotificationId, UserId};
use crate::fanout::Fanout;
use crate::frame_guard::FrameGuard;
use crate::messages::{CloseSession, Connect, Disconnect, Join, Leave, Push, SessionId};
use crate::metrics::HotCounters;
use crate::ports::Store;
use crate::registry::Registry;

/// Where a session registers: the node's registry (targeted pushes, limits, drain)
/// and the fan-out of the HTTP worker it runs on (broadcasts).
#[derive(Clone)]
pub struct Routing {
    /// The node's registry.
    pub registry: Addr<Registry>,
    /// The fan-out of the arbiter the session runs on.
    pub fanout: Addr<Fanout>,
}

/// Close code: the connection carried no token.
pub const CLOSE_MISSING_TOKEN: u16 = 4001;
/// Close code: the token was invalid or already expired.
pub const CLOSE_INVALID_TOKEN: u16 = 4002;
/// Close code: the token expired while connected; reconnect with a fresh one.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4003;
/// Close code: the outbound queue overflowed because the client is not reading.
pub const CLOSE_SLOW_CONSUMER: u16 = crate::registry::CLOSE_SLOW_CONSUMER;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Session tuning, from the `[websocket]` configuration section.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// How often the server pings.
    pub heartbeat_interval: Duration,
    /// A client silent for this long is disconnected.
    pub client_timeout: Duration,
    /// Largest client frame accepted; bigger ones close with 1009.
    pub max_frame_bytes: usize,
    /// Pushes that may wait for the socket before the client counts as slow.
    pub outbound_queue: usize,
    /// History rows fetched per query while resuming.
    pub replay_page: u32,
}

/// The outcome of authenticating the upgrade request.
#[derive(Debug, Clone)]
pub enum Admission {
    /// A valid token for `user_id`, good until `expires_at`.
    Accepted {
        /// The user.
        user_id: UserId,
        /// Token expiry; the session closes with 4003 then.
        expires_at: DateTime<Utc>,
    },
    /// The connection is upgraded only to be closed with `code`, so that browser
    /// clients (which cannot read an HTTP error on upgrade) learn why.
    Rejected {
        /// 4001 or 4002.
        code: u16,
        /// Reason in the close frame.
        reason: String,
    },
}

/// Frames a client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    Ping,
    Resume { after: NotificationId },
}

/// Whether pushes go straight to the socket or wait for a replay to finish.
enum Delivery {
    Live,
    /// `buffer` holds what arrived meanwhile. When it fills up, its targeted pushes
    /// are dropped and `overflowed` is set: they are all in the user's history, so the
    /// replay goes on from where it got to instead of switching to live (broadcasts,
    /// which history does not hold, stay buffered).
    Replaying {
        buffer: Vec<Push>,
        overflowed: bool,
    },
}

/// One WebSocket connection.
pub struct WsSession {
    id: SessionId,
    admission: Admission,
    routing: Routing,
    store: Arc<dyn Store>,
    config: SessionConfig,
    counters: Arc<HotCounters>,
    last_seen: Instant,
    delivery: Delivery,
    /// Highest targeted id written to the socket since the last resume: anything at or
    /// below it was sent (or, right after a resume, not wanted).
    last_sent: Option<NotificationId>,
    /// A fragmented text message being reassembled.
    fragments: Option<Vec<u8>>,
    /// `?after=` on the upgrade: replay from there before going live.
    initial_after: Option<NotificationId>,
    registered: bool,
    /// Where activity is reported (DAU/MAU).
    activity: Recipient<RecordActivity>,
    /// The UTC day activity was last reported for: at most one report a day.
    activity_day: Option<NaiveDate>,
    /// Raised by the [`FrameGuard`] when the client announced a frame over the limit.
    oversized: Arc<AtomicBool>,
}

impl WsSession {
    /// A session for an authenticated (or rejected) upgrade.
    pub fn new(
        admission: Admission,
        routing: Routing,
        store: Arc<dyn Store>,
        config: SessionConfig,
        counters: Arc<HotCounters>,
        activity: Recipient<RecordActivity>,
        initial_after: Option<NotificationId>,
    ) -> Self {
        Self {
            id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
            admission,
            routing,
            store,
            config,
            counters,
            last_seen: Instant::now(),
            delivery: Delivery::Live,
            last_sent: None,
            fragments: None,
            oversized: Arc::default(),
            initial_after,
            activity,
            activity_day: None,
            registered: false,
        }
    }

    /// Tells the registry this session is gone (once).
    fn leave_registry(&mut self) {
        if let (true, Some(user_id)) = (std::mem::take(&mut self.registered), self.user_id()) {
            self.counters
                .connections_closed
                .fetch_add(1, Ordering::Relaxed);
            self.routing.fanout.do_send(Leave {
                session_id: self.id,
            });
            self.routing.registry.do_send(Disconnect {
                user_id,
                session_id: self.id,
            });
        }
    }

    fn user_id(&self) -> Option<UserId> {
        match self.admission {
            Admission::Accepted { user_id, .. } => Some(user_id),
            Admission::Rejected { .. } => None,
        }
    }

    fn close(ctx: &mut ws::WebsocketContext<Self>, code: u16, reason: &str) {
        ctx.close(Some(CloseReason {
            code: CloseCode::from(code),
            description: Some(reason.to_owned()),
        }));
        ctx.stop();
    }

    fn send_error(ctx: &mut ws::WebsocketContext<Self>, code: &str, detail: &str) {
        let frame = serde_json::json!({ "type": "error", "code": code, "detail": detail });
        ctx.text(frame.to_string());
    }

    /// Writes a push that arrived live.
    fn deliver_live(&mut self, push: Push, ctx: &mut ws::WebsocketContext<Self>) {
        if push.targeted {
            if self.last_sent.is_some_and(|last| push.id <= last) {
                // Already written by a replay that read it from history.
                return;
            }
            self.last_sent = Some(push.id);
        }
        self.counters.pushes.fetch_add(1, Ordering::Relaxed);
        let latency_micros = Utc::now().timestamp_micros() - push.committed_at_micros;
        self.counters
            .push_latency
            .observe(Duration::from_micros(latency_micros.max(0) as u64));
        ctx.text(push.frame);
    }

    fn deliver_replayed(
        &mut self,
        notification: &Notification,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        if self.last_sent.is_some_and(|last| notification.id <= last) {
            return;
        }
        self.last_sent = Some(notification.id);
        ctx.text(notification.to_frame());
    }

    fn start_replay(&mut self, after: NotificationId, ctx: &mut ws::WebsocketContext<Self>) {
        if matches!(self.delivery, Delivery::Replaying { .. }) {
            Self::send_error(ctx, "resume_in_progress", "a resume is already running");
            return;
        }
        // The stream restarts after `after`: everything newer comes again, in order,
        // even what this connection already received (the client asked for it).
        self.delivery = Delivery::Replaying {
            buffer: Vec::new(),
            overflowed: false,
        };
        self.last_sent = Some(after);
        self.replay_page(after, ctx);
    }

    fn replay_page(&mut self, after: NotificationId, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(user_id) = self.user_id() else {
            return;
        };
        let store = Arc::clone(&self.store);
        let page = self.config.replay_page;
        ctx.spawn(
            async move { store.history(user_id, after, None, page).await }
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(rows) => {
                        for row in &rows {
                            act.deliver_replayed(row, ctx);
                        }
                        match rows.last() {
                            Some(last) if rows.len() == page as usize => {
                                act.replay_page(last.id, ctx)
                            }
                            _ => act.finish_replay(ctx),
                        }
                    }
                    Err(err) => {
                        warn!(error = %err, "history unavailable for resume");
                        Self::send_error(
                            ctx,
                            "history_unavailable",
                            "history could not be read; resume again",
                        );
                        act.finish_replay(ctx);
                    }
                }),
        );
    }

    /// Switches to live: flushes what arrived during the replay, skipping what the
    /// replay already sent.
    fn finish_replay(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if let Delivery::Replaying { overflowed, .. } = &mut self.delivery {
            if std::mem::take(overflowed) {
                // Targeted pushes were dropped while replaying; history has them.
                let after = self.last_sent.unwrap_or_default();
                return self.replay_page(after, ctx);
            }
        }
        if let Delivery::Replaying { buffer, .. } =
            std::mem::replace(&mut self.delivery, Delivery::Live)
        {
            for push in buffer {
                self.deliver_live(push, ctx);
            }
        }
    }

    /// Reassembles a fragmented text message (RFC 6455 §5.4), bounded by the same
    /// size limit as a single frame.
    fn on_fragment(&mut self, item: Item, ctx: &mut ws::WebsocketContext<Self>) {
        let (chunk, last) = match item {
            Item::FirstText(chunk) => {
                self.fragments = Some(Vec::with_capacity(chunk.len()));
                (chunk, false)
            }
            Item::FirstBinary(_) => {
                return Self::close(
                    ctx,
                    1003,
                    "binary messages are not supported; send JSON text",
                );
            }
            Item::Continue(chunk) => (chunk, false),
            Item::Last(chunk) => (chunk, true),
        };
        let Some(buffer) = self.fragments.as_mut() else {
            return Self::close(ctx, 1002, "continuation frame without a first frame");
        };
        if buffer.len() + chunk.len() > self.config.max_frame_bytes {
            return Self::close(ctx, 1009, "message too large");
        }
        buffer.extend_from_slice(&chunk);
        if last {
            let message = self.fragments.take().unwrap_or_default();
            match std::str::from_utf8(&message) {
                Ok(text) => self.on_text(text, ctx),
                Err(_) => Self::close(ctx, 1007, "text message is not valid UTF-8"),
            }
        }
    }

    /// Reports the user active, once per UTC day per session.
    fn report_activity(&mut self, source: ActivitySource) {
        let Admission::Accepted { user_id, .. } = &self.admission else {
            return;
        };
        let today = Utc::now().date_naive();
        if self.activity_day != Some(today) {
            self.activity_day = Some(today);
            // Counting is best effort: a full tracker mailbox must not slow the socket.
            let _ = self.activity.try_send(RecordActivity {
                user: *user_id,
                source,
            });
        }
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        self.report_activity(ActivitySource::Message);
        match serde_json::from_str::<ClientFrame>(text) {
            Ok(ClientFrame::Ping) => ctx.text(r#"{"type":"pong"}"#),
            Ok(ClientFrame::Resume { after }) if after < 0 => Self::send_error(
                ctx,
                "invalid_frame",
                "`after` must be a notification id (0 or more)",
            ),
            Ok(ClientFrame::Resume { after }) => self.start_replay(after, ctx),
            Err(err) => Self::send_error(
                ctx,
                "invalid_frame",
                &format!(
                    "expected {{\"type\":\"ping\"}} or {{\"type\":\"resume\",\"after\":ID}}: {err}"
                ),
            ),
        }
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (user_id, expires_at) = match &self.admission {
            Admission::Rejected { code, reason } => {
                let (code, reason) = (*code, reason.clone());
                Self::close(ctx, code, &reason);
                return;
            }
            Admission::Accepted {
                user_id,
                expires_at,
            } => (*user_id, *expires_at),
        };
        ctx.set_mailbox_capacity(self.config.outbound_queue);

        ctx.run_interval(self.config.heartbeat_interval, |act, ctx| {
            if act.last_seen.elapsed() > act.config.client_timeout {
                debug!(session_id = act.id, "client timed out");
                Self::close(ctx, 1001, "idle timeout");
            } else {
                ctx.ping(b"");
            }
        });

        let remaining = (expires_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        ctx.run_later(remaining, |_, ctx| {
            Self::close(ctx, CLOSE_TOKEN_EXPIRED, "token expired");
        });

        let connect = Connect {
            user_id,
            session_id: self.id,
            push: ctx.address().recipient(),
            close: ctx.address().recipient(),
        };
        // Register before reading any client frame, so a resume can never miss a push.
        // From here on the session counts as registered: if it is dropped before the
        // answer arrives, its `Disconnect` still follows the `Connect` in the
        // registry's mailbox.
        self.registered = true;
        self.counters
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        self.report_activity(ActivitySource::Connect);
        // Same thread, small control message: queued at once, before any broadcast the
        // registry could hand the fan-out for this session.
        self.routing.fanout.do_send(Join {
            session_id: self.id,
            push: ctx.address().recipient(),
            close: ctx.address().recipient(),
        });
        self.routing
            .registry
            .send(connect)
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok(()) => {
                    if let Some(after) = act.initial_after {
                        act.start_replay(after, ctx);
                    }
                }
                Err(_) => Self::close(ctx, 1011, "registry unavailable"),
            })
            .wait(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.leave_registry();
    }
}

/// Leaving the registry happens on drop, not in `stopped`: when a client vanishes
/// (TCP reset) actix drops the session without stopping it, and a handle left behind
/// would be a zombie entry.
impl Drop for WsSession {
    fn drop(&mut self) {
        self.leave_registry();
    }
}

impl Handler<Push> for WsSession {
    type Result = ();

    fn handle(&mut self, push: Push, ctx: &mut Self::Context) {
        match &mut self.delivery {
            Delivery::Live => self.deliver_live(push, ctx),
            Delivery::Replaying { overflowed, .. } if *overflowed && push.targeted => {}
            Delivery::Replaying { buffer, .. } if buffer.len() < self.config.outbound_queue => {
                buffer.push(push)
            }
            Delivery::Replaying { buffer, overflowed } if push.targeted => {
                buffer.retain(|p| !p.targeted);
                *overflowed = true;
            }
            Delivery::Replaying { .. } => Self::close(
                ctx,
                CLOSE_SLOW_CONSUMER,
                "slow consumer: too many pushes during resume",
            ),
        }
    }
}

impl Handler<CloseSession> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        Self::close(ctx, msg.code, msg.reason);
    }
}

impl StreamHandler<Result<ws::Message, ProtocolError>> for WsSession {
    /// The client went away (TCP closed without a close frame): stop now rather than
    /// when the last address to this session is dropped.
    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }

    fn handle(&mut self, item: Result<ws::Message, ProtocolError>, ctx: &mut Self::Context) {
        self.last_seen = Instant::now();
        match item {
            Ok(ws::Message::Text(text)) => self.on_text(&text, ctx),
            Ok(ws::Message::Ping(bytes)) => ctx.pong(&bytes),
            Ok(ws::Message::Pong(_) | ws::Message::Nop) => {}
            Ok(ws::Message::Binary(_)) => {
                Self::close(ctx, 1003, "binary frames are not supported; send JSON text")
            }
            Ok(ws::Message::Continuation(item)) => self.on_fragment(item, ctx),
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(ProtocolError::Overflow) => Self::close(ctx, 1009, "frame too large"),
            Err(ProtocolError::Io(_)) if self.oversized.load(Ordering::Relaxed) => {
                Self::close(ctx, 1009, "frame too large")
            }
            // actix reports a text frame that is not UTF-8 as an I/O error; a real I/O
            // error ends the connection anyway, so the close code only reaches clients
            // that sent bad text.
            Err(ProtocolError::Io(_)) => Self::close(ctx, 1007, "text frames must be UTF-8"),
            Err(err) => {
                debug!(session_id = self.id, error = %err, "websocket protocol error");
                Self::close(ctx, 1002, "protocol error");
            }
        }
    }
}

/// Upgrades `req` to a WebSocket run by `session`.
///
/// # Errors
/// When the request is not a valid WebSocket upgrade (answered with 400 by actix).
pub fn start(
    session: WsSession,
    req: &HttpRequest,
    stream: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let frame_size = session.config.max_frame_bytes;
    let guarded = FrameGuard::new(stream, frame_size, Arc::clone(&session.oversized));
    ws::WsResponseBuilder::new(session, req, guarded)
        .frame_size(frame_size)
        .start()
}
