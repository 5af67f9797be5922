//! Typed messages between actors. Data-path messages ([`Push`], [`Deliver`]) are sent
//! with bounded `send`/`try_send`; `do_send` is kept for small control messages.

use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

use crate::domain::{NewNotification, Notification, NotificationId, UserId};
use crate::ports::{IdempotentResponse, StoreError};

/// Identifies one WebSocket connection within a node.
pub type SessionId = u64;

/// One encoded notification frame for a session. The frame text is shared (`ByteString`
/// is reference counted), so fan-out copies a pointer, not the JSON.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct Push {
    /// Notification id, for ordering and deduplication in the session.
    pub id: NotificationId,
    /// `true` for a user's own notification (part of their ordered history); `false`
    /// for a broadcast, which is delivered as it comes.
    pub targeted: bool,
    /// The text frame.
    pub frame: ByteString,
    /// When the notification was committed (µs since the epoch), for push latency.
    pub committed_at_micros: i64,
}

impl Push {
    /// Builds the push for a stored notification.
    pub fn of(notification: &Notification) -> Self {
        Self {
            id: notification.id,
            targeted: notification.user_id.is_some(),
            frame: notification.to_frame(),
            committed_at_micros: notification.created_at.timestamp_micros(),
        }
    }
}

/// Tells a session to close with a code and reason (slow consumer, shutdown, …).
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct CloseSession {
    /// WebSocket close code.
    pub code: u16,
    /// Human-readable reason sent in the close frame.
    pub reason: &'static str,
}

/// Shutdown: the registry closes every session with 1012, each at a random moment
/// within `window`, so clients do not all reconnect to the other nodes at once.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "usize")]
pub struct Drain {
    /// The window the closes are spread over.
    pub window: std::time::Duration,
}

/// Shutdown: a consumer stops reading and drops its subscription, which commits what
/// it handled and leaves its consumer group at once (rather than when its session
/// times out), so the partitions move to the remaining nodes without delay.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct StopConsuming;

/// A session registers with the registry.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connect {
    /// The authenticated user.
    pub user_id: UserId,
    /// The session's id.
    pub session_id: SessionId,
    /// Where pushes go.
    pub push: Recipient<Push>,
    /// Where close orders go.
    pub close: Recipient<CloseSession>,
}

/// A session joins the fan-out of the arbiter (thread) it runs on, which delivers
/// broadcasts to it without crossing threads.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    /// The session's id.
    pub session_id: SessionId,
    /// Where pushes go.
    pub push: Recipient<Push>,
    /// Where close orders go (slow consumers).
    pub close: Recipient<CloseSession>,
}

/// A session leaves its arbiter's fan-out.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct Leave {
    /// The session.
    pub session_id: SessionId,
}

/// A fan-out announces itself to the registry, which then hands it every broadcast.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddFanout {
    /// The fan-out.
    pub fanout: Recipient<FanOut>,
}

/// One broadcast for every session of one fan-out; answered with how many sessions
/// took it.
#[derive(Message, Clone)]
#[rtype(result = "usize")]
pub struct FanOut {
    /// What to send.
    pub push: Push,
}

/// A session leaves the registry.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    /// The user.
    pub user_id: UserId,
    /// The session.
    pub session_id: SessionId,
}

/// Deliver a push to every session of one user on this node.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Deliver {
    /// Recipient.
    pub user_id: UserId,
    /// What to send.
    pub push: Push,
}

/// Deliver a push to every session on this node.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Broadcast {
    /// What to send.
    pub push: Push,
}

/// Asks the registry how many sessions it holds.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountSessions;

/// Store a notification and put it on the bus, in one writer so ids are published in
/// commit order.
#[derive(Message)]
#[rtype(result = "Result<(Arc<Notification>, bool), StoreError>")]
pub struct Publish {
    /// The notification.
    pub notification: NewNotification,
    /// An idempotent response to store in the same transaction.
    pub response: Option<IdempotentResponse>,
}

/// Answered once everything the notification writer accepted so far is stored and
/// on the bus (graceful shutdown waits for it).
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct Flush;

/// Wakes an actor that polls a queue (outbox relay, mailer) because work was added.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct Nudge;
