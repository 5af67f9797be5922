//! `Registry`: which sessions on this node belong to which user. Consumers hand it
//! pushes; it forwards them to the sessions' mailboxes without waiting on any of them.
//! Broadcasts go through the [`Fanout`](crate::fanout::Fanout) of each HTTP worker
//! arbiter, which reaches the sessions on its own thread: one message per arbiter
//! instead of a cross-thread wake-up per session, and the workers fan out in parallel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::warn;

use crate::domain::UserId;
use crate::health::{ActorStats, ActorStatus};
use crate::messages::{
    AddFanout, Broadcast, CloseSession, Connect, CountSessions, Deliver, Disconnect, Drain, FanOut,
    Push, SessionId,
};
use crate::ports::RegistryMirror;

/// How often the registry reports its heartbeat and session count.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// How long a broadcast waits for every worker's fan-out to queue it before its
/// consumer moves on. The wait keeps a broadcast ahead of later pushes; a worker stuck
/// longer than this must not stall delivery for the whole node.
pub const FANOUT_WAIT: Duration = Duration::from_secs(2);

/// How often handles of vanished sessions are swept out.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Close code for a session whose outbound queue is full: the client is not reading.
pub const CLOSE_SLOW_CONSUMER: u16 = 1013;
/// Close code for every session when the node shuts down (Service Restart): reconnect,
/// preferably elsewhere, and resume from the last id.
pub const CLOSE_SERVICE_RESTART: u16 = 1012;
/// Close code for every session when the registry restarts (Internal Error): the
/// sessions it forgot must reconnect to be found again.
pub const CLOSE_REGISTRY_RESTARTED: u16 = 1011;
/// Close code for a user's oldest session when they open more than the per-user limit.
pub const CLOSE_TOO_MANY_SESSIONS: u16 = 4008;

/// What the registry and the fan-outs hold of one session.
pub(crate) struct SessionHandle {
    pub(crate) id: SessionId,
    pub(crate) push: Recipient<Push>,
    pub(crate) close: Recipient<CloseSession>,
}

/// Where the registry mirrors its sessions for the rest of the cluster.
pub struct Mirroring {
    /// The mirror (Redis in production).
    pub mirror: Arc<dyn RegistryMirror>,
    /// This node's id, the prefix of its socket ids.
    pub node: String,
    /// How often entries are refreshed; a third of their TTL.
    pub refresh_interval: Duration,
}

/// The user → sessions map of this node.
pub struct Registry {
    users: HashMap<UserId, Vec<SessionHandle>>,
    sessions: usize,
    /// One fan-out per HTTP worker arbiter: every session is in one, and broadcasts
    /// reach the sessions only through them.
    fanouts: Vec<Recipient<FanOut>>,
    stats: Arc<ActorStats>,
    mirroring: Option<Mirroring>,
    mirror_queue: Option<tokio::sync::mpsc::Sender<MirrorUpdate>>,
    /// Sessions one user may hold on this node; past it the oldest is closed.
    max_sessions_per_user: usize,
}

/// A change to apply to the mirror.
enum MirrorUpdate {
    Add(UserId, SessionId),
    Remove(UserId, SessionId),
    Refresh(Vec<(UserId, String)>),
}

/// Mirror updates that may wait for Redis before new ones are dropped.
const MIRROR_QUEUE: usize = 65_536;

impl Registry {
    /// An empty registry reporting to `stats`, local only.
    pub fn new(stats: Arc<ActorStats>) -> Self {
        Self::mirrored(stats, None)
    }

    /// An empty registry that also keeps `mirroring`'s mirror up to date.
    pub fn mirrored(stats: Arc<ActorStats>, mirroring: Option<Mirroring>) -> Self {
        Self {
            users: HashMap::new(),
            sessions: 0,
            fanouts: Vec::new(),
            stats,
            mirroring,
            mirror_queue: None,
            max_sessions_per_user: usize::MAX,
        }
    }

    /// Caps the sessions one user may hold on this node: opening one more closes their
    /// oldest with [`CLOSE_TOO_MANY_SESSIONS`].
    pub fn with_session_limit(mut self, max_per_user: usize) -> Self {
        self.max_sessions_per_user = max_per_user.max(1);
        self
    }

    /// The cluster-wide id of a session of this node.
    fn socket_id(node: &str, session: SessionId) -> String {
        format!("{node}-{session}")
    }

    /// Queues one mirror update. Updates are applied in order by one background task
    /// (an add must never overtake the remove that follows it) and never hold up local
    /// delivery; when Redis falls behind, updates are dropped and the next refresh or
    /// the TTL repairs the mirror.
    fn mirror(&mut self, update: MirrorUpdate) {
        if let Some(queue) = &self.mirror_queue {
            if queue.try_send(update).is_err() {
                warn!("registry mirror queue full; update dropped");
                self.stats.set_status(ActorStatus::Degraded);
            }
        }
    }

    /// Starts the task that applies mirror updates in order.
    fn start_mirror_task(&mut self, ctx: &mut Context<Self>) {
        let Some(mirroring) = &self.mirroring else {
            return;
        };
        let (queue, mut updates) = tokio::sync::mpsc::channel::<MirrorUpdate>(MIRROR_QUEUE);
        self.mirror_queue = Some(queue);
        let (mirror, node) = (Arc::clone(&mirroring.mirror), mirroring.node.clone());
        let stats = Arc::clone(&self.stats);
        ctx.spawn(
            async move {
                while let Some(update) = updates.recv().await {
                    let result = match update {
                        MirrorUpdate::Add(user, session) => {
                            mirror.add(user, &Self::socket_id(&node, session)).await
                        }
                        MirrorUpdate::Remove(user, session) => {
                            mirror.remove(user, &Self::socket_id(&node, session)).await
                        }
                        MirrorUpdate::Refresh(sockets) => mirror.refresh(&sockets).await,
                    };
                    match result {
                        Ok(()) if stats.status() == ActorStatus::Degraded => {
                            stats.set_status(ActorStatus::Running)
                        }
                        Ok(()) => {}
                        Err(err) => {
                            warn!(error = %err, "registry mirror update failed");
                            stats.set_status(ActorStatus::Degraded);
                        }
                    }
                }
            }
            .into_actor(self),
        );
    }

    fn refresh_mirror(&mut self, _: &mut Context<Self>) {
        let Some(node) = self.mirroring.as_ref().map(|m| m.node.clone()) else {
            return;
        };
        let sockets: Vec<(UserId, String)> = self
            .users
            .iter()
            .flat_map(|(user, list)| list.iter().map(|s| (*user, Self::socket_id(&node, s.id))))
            .collect();
        self.mirror(MirrorUpdate::Refresh(sockets));
    }

    /// Queues `push` for one session and says whether to keep its handle. A full
    /// queue means the client stopped reading: it is told to close (1013) and the
    /// caller (the registry or a fan-out) drops its handle, rather than buffering
    /// without bound. Nothing is lost — the notification is in history and the client
    /// resumes from its last id.
    pub(crate) fn offer(session: &SessionHandle, push: Push) -> bool {
        match session.push.try_send(push) {
            Ok(()) => true,
            Err(SendError::Full(_)) => {
                warn!(
                    session_id = session.id,
                    "outbound queue full; closing slow consumer"
                );
                session.close.do_send(CloseSession {
                    code: CLOSE_SLOW_CONSUMER,
                    reason: "slow consumer: outbound queue full",
                });
                false
            }
            // The session is gone without having said so.
            Err(SendError::Closed(_)) => false,
        }
    }

    /// Offers `push` to each of `sessions`, dropping the ones that cannot take it;
    /// returns (delivered, dropped).
    fn offer_all(sessions: &mut Vec<SessionHandle>, push: &Push) -> (usize, usize) {
        let before = sessions.len();
        let mut delivered = 0;
        sessions.retain(|s| {
            let kept = Self::offer(s, push.clone());
            delivered += usize::from(kept);
            kept
        });
        (delivered, before - sessions.len())
    }

    /// Drops handles of sessions that ended without a `Disconnect`, and fan-outs whose
    /// arbiter stopped.
    fn sweep(&mut self) {
        let mut dropped = 0;
        self.users.retain(|_, sessions| {
            let before = sessions.len();
            sessions.retain(|s| s.push.connected());
            dropped += before - sessions.len();
            !sessions.is_empty()
        });
        self.sessions -= dropped;
        self.fanouts.retain(Recipient::connected);
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.stats.set_status(ActorStatus::Running);
        self.stats.heartbeat();
        ctx.run_interval(SWEEP_INTERVAL, |act, _| act.sweep());
        self.start_mirror_task(ctx);
        if let Some(interval) = self.mirroring.as_ref().map(|m| m.refresh_interval) {
            self.refresh_mirror(ctx);
            ctx.run_interval(interval, Self::refresh_mirror);
        }
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, _| {
            act.stats.heartbeat();
            act.stats.set_detail("sessions", act.sessions);
            act.stats.set_detail("users", act.users.len());
            act.stats.set_detail("fanouts", act.fanouts.len());
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stats.set_status(ActorStatus::Stopped);
    }
}

impl Supervised for Registry {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.stats.restarted();
        // A session the registry forgets would miss its targeted pushes from now on
        // (its fan-out would still bring broadcasts): close every one, so clients
        // reconnect, register again and resume from their last id.
        for session in self.users.values().flatten() {
            session.close.do_send(CloseSession {
                code: CLOSE_REGISTRY_RESTARTED,
                reason: "session registry restarted: reconnect and resume",
            });
        }
        self.users.clear();
        self.sessions = 0;
        self.mirror_queue = None;
    }
}

impl Handler<Connect> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Connect, _: &mut Self::Context) {
        let list = self.users.entry(msg.user_id).or_default();
        let mut evicted = Vec::new();
        while list.len() >= self.max_sessions_per_user {
            let oldest = list.remove(0);
            oldest.close.do_send(CloseSession {
                code: CLOSE_TOO_MANY_SESSIONS,
                reason: "too many sessions for this user: the oldest is closed",
            });
            evicted.push(oldest.id);
        }
        list.push(SessionHandle {
            id: msg.session_id,
            push: msg.push,
            close: msg.close,
        });
        self.sessions = self.sessions + 1 - evicted.len();
        for id in evicted {
            self.mirror(MirrorUpdate::Remove(msg.user_id, id));
        }
        self.mirror(MirrorUpdate::Add(msg.user_id, msg.session_id));
    }
}

impl Handler<Disconnect> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Self::Context) {
        if let Some(list) = self.users.get_mut(&msg.user_id) {
            let before = list.len();
            list.retain(|s| s.id != msg.session_id);
            self.sessions -= before - list.len();
            if list.is_empty() {
                self.users.remove(&msg.user_id);
            }
        }
        self.mirror(MirrorUpdate::Remove(msg.user_id, msg.session_id));
    }
}

impl Handler<Deliver> for Registry {
    type Result = usize;

    fn handle(&mut self, msg: Deliver, _: &mut Self::Context) -> usize {
        self.stats.processed(1);
        let Some(sessions) = self.users.get_mut(&msg.user_id) else {
            return 0;
        };
        let (delivered, dropped) = Self::offer_all(sessions, &msg.push);
        if sessions.is_empty() {
            self.users.remove(&msg.user_id);
        }
        self.sessions -= dropped;
        delivered
    }
}

impl Handler<Broadcast> for Registry {
    /// Answered once every fan-out has queued the push for its sessions, so a
    /// consumer that waits for the answer does not run ahead of the fan-outs.
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, msg: Broadcast, ctx: &mut Self::Context) -> Self::Result {
        self.stats.processed(1);
        // A fan-out whose arbiter stopped (server shutdown) has no sessions left.
        self.fanouts.retain(Recipient::connected);
        let sends: Vec<_> = self
            .fanouts
            .iter()
            .map(|f| {
                f.send(FanOut {
                    push: msg.push.clone(),
                })
            })
            .collect();
        // The sends run on the registry's context, so a fan-out whose worker is busy
        // past the deadline still gets the broadcast; only the answer stops waiting.
        let (answer, answered) = tokio::sync::oneshot::channel();
        ctx.spawn(
            async move {
                let fanned: usize = futures_util::future::join_all(sends)
                    .await
                    .into_iter()
                    .filter_map(Result::ok)
                    .sum();
                let _ = answer.send(fanned);
            }
            .into_actor(self),
        );
        Box::pin(async move {
            match tokio::time::timeout(FANOUT_WAIT, answered).await {
                Ok(Ok(fanned)) => fanned,
                _ => {
                    warn!(
                        wait_ms = FANOUT_WAIT.as_millis() as u64,
                        "a worker's fan-out is behind; the broadcast stays queued for it"
                    );
                    0
                }
            }
        })
    }
}

impl Handler<AddFanout> for Registry {
    type Result = ();

    fn handle(&mut self, msg: AddFanout, _: &mut Self::Context) {
        self.fanouts.push(msg.fanout);
    }
}

impl Handler<Drain> for Registry {
    type Result = usize;

    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) -> usize {
        use rand::Rng;
        let window_ms = u64::try_from(msg.window.as_millis()).unwrap_or(u64::MAX);
        let mut rng = rand::thread_rng();
        let mut closing = 0;
        for session in self.users.values().flatten() {
            let close = session.close.clone();
            let delay = Duration::from_millis(rng.gen_range(0..=window_ms));
            ctx.run_later(delay, move |_, _| {
                close.do_send(CloseSession {
                    code: CLOSE_SERVICE_RESTART,
                    reason: "server shutting down: reconnect and resume",
                });
            });
            closing += 1;
        }
        closing
    }
}

impl Handler<CountSessions> for Registry {
    type Result = usize;

    fn handle(&mut self, _: CountSessions, _: &mut Self::Context) -> usize {
        self.sessions
    }
}
