//! The health board: every actor registers an [`ActorStats`] and updates it with
//! atomics (no lock on the per-message path). `/api/health/actors` and `/readyz` read
//! it.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};
use tracing::error;

use crate::supervisor::{RestartDecision, RestartHistory, RestartPolicy};

/// An actor's lifecycle state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorStatus {
    /// Working normally.
    Running,
    /// Stopped after a failure; the supervisor is starting it again.
    Restarting,
    /// Running, but a dependency it needs is failing.
    Degraded,
    /// Not running.
    Stopped,
    /// Restarted more often than its budget allows; waiting out a cool-down.
    Failed,
}

impl ActorStatus {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Running,
            1 => Self::Restarting,
            2 => Self::Degraded,
            4 => Self::Failed,
            _ => Self::Stopped,
        }
    }
    fn as_u8(self) -> u8 {
        match self {
            Self::Running => 0,
            Self::Restarting => 1,
            Self::Degraded => 2,
            Self::Stopped => 3,
            Self::Failed => 4,
        }
    }
}

/// Live counters of one actor.
#[derive(Debug)]
pub struct ActorStats {
    name: String,
    kind: &'static str,
    critical: bool,
    status: AtomicU8,
    restarts: AtomicU64,
    processed: AtomicU64,
    failed: AtomicU64,
    last_heartbeat_ms: AtomicI64,
    details: Mutex<Map<String, Value>>,
    policy: RestartPolicy,
    history: Mutex<RestartHistory>,
    /// What the last restart decided to wait before resuming work.
    restart_delay_ms: AtomicU64,
    /// While failed: until when (unix ms) the status stays `failed`.
    failed_until_ms: AtomicI64,
}

impl ActorStats {
    /// Marks the actor alive now.
    pub fn heartbeat(&self) {
        self.last_heartbeat_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Sets the status. A `failed` actor stays failed until its cool-down is over.
    pub fn set_status(&self, status: ActorStatus) {
        if self.status() == ActorStatus::Failed
            && status != ActorStatus::Failed
            && chrono::Utc::now().timestamp_millis() < self.failed_until_ms.load(Ordering::Relaxed)
        {
            return;
        }
        self.status.store(status.as_u8(), Ordering::Relaxed);
    }

    /// The current status.
    pub fn status(&self) -> ActorStatus {
        ActorStatus::from_u8(self.status.load(Ordering::Relaxed))
    }

    /// Counts a supervisor restart (call from `Supervised::restarting`) and decides,
    /// by the restart policy, how long the actor waits before resuming work: see
    /// [`Self::restart_delay`].
    pub fn restarted(&self) -> RestartDecision {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        let decision = match self.history.lock() {
            Ok(mut history) => {
                history.record(&self.policy, Instant::now(), &mut rand::thread_rng())
            }
            Err(_) => RestartDecision::Restart(self.policy.backoff.cap),
        };
        let delay = match decision {
            RestartDecision::Restart(delay) => {
                self.set_status(ActorStatus::Restarting);
                delay
            }
            RestartDecision::Failed(cooldown) => {
                let until = chrono::Utc::now().timestamp_millis()
                    + i64::try_from(cooldown.as_millis()).unwrap_or(i64::MAX / 2);
                self.failed_until_ms.store(until, Ordering::Relaxed);
                self.status
                    .store(ActorStatus::Failed.as_u8(), Ordering::Relaxed);
                error!(
                    actor = %self.name,
                    max_restarts = self.policy.max_restarts,
                    window_secs = self.policy.window.as_secs(),
                    cooldown_secs = cooldown.as_secs(),
                    "actor over its restart budget: failed until the cool-down ends"
                );
                cooldown
            }
        };
        self.restart_delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        decision
    }

    /// How long to wait before resuming work after the last restart (zero on the
    /// first start). Actors with a work loop wait this long in `started`.
    pub fn restart_delay(&self) -> Duration {
        Duration::from_millis(self.restart_delay_ms.load(Ordering::Relaxed))
    }

    /// Counts handled items.
    pub fn processed(&self, n: u64) {
        self.processed.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts failed items.
    pub fn failed(&self, n: u64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets a kind-specific detail (breaker state, lag, sessions). Call from
    /// heartbeats, not per message.
    pub fn set_detail(&self, key: &str, value: impl Into<Value>) {
        if let Ok(mut details) = self.details.lock() {
            details.insert(key.to_owned(), value.into());
        }
    }

    /// Adds one to a numeric detail (for rare events such as dead letters).
    pub fn count_detail(&self, key: &str) {
        if let Ok(mut details) = self.details.lock() {
            let next = details.get(key).and_then(Value::as_u64).unwrap_or(0) + 1;
            details.insert(key.to_owned(), next.into());
        }
    }

    /// The actor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A point-in-time copy for the API.
    pub fn snapshot(&self) -> ActorSnapshot {
        let last = self.last_heartbeat_ms.load(Ordering::Relaxed);
        let age_ms = if last == 0 {
            None
        } else {
            Some((chrono::Utc::now().timestamp_millis() - last).max(0) as u64)
        };
        ActorSnapshot {
            name: self.name.clone(),
            kind: self.kind,
            critical: self.critical,
            status: self.status(),
            restarts: self.restarts.load(Ordering::Relaxed),
            last_heartbeat_age_ms: age_ms,
            processed: self.processed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            details: self.details.lock().map(|d| d.clone()).unwrap_or_default(),
        }
    }
}

/// What `/api/health/actors` shows for one actor.
#[derive(Debug, Clone, Serialize)]
pub struct ActorSnapshot {
    /// Unique name, e.g. `consumer:user.created`.
    pub name: String,
    /// Actor type.
    pub kind: &'static str,
    /// Whether `/readyz` depends on it.
    pub critical: bool,
    /// Lifecycle state.
    pub status: ActorStatus,
    /// Supervisor restarts since start.
    pub restarts: u64,
    /// Milliseconds since its last heartbeat (`null` before the first).
    pub last_heartbeat_age_ms: Option<u64>,
    /// Items handled.
    pub processed: u64,
    /// Items that failed.
    pub failed: u64,
    /// Kind-specific details.
    pub details: Map<String, Value>,
}

/// Every actor's stats, in registration order.
#[derive(Debug, Default, Clone)]
pub struct HealthBoard {
    actors: Arc<RwLock<Vec<Arc<ActorStats>>>>,
    policy: RestartPolicy,
}

impl HealthBoard {
    /// An empty board with the default restart policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty board whose actors restart by `policy`.
    pub fn with_policy(policy: RestartPolicy) -> Self {
        Self {
            actors: Arc::default(),
            policy,
        }
    }

    /// Registers an actor (once, at wiring time) and returns its stats handle.
    pub fn register(
        &self,
        name: impl Into<String>,
        kind: &'static str,
        critical: bool,
    ) -> Arc<ActorStats> {
        let stats = Arc::new(ActorStats {
            name: name.into(),
            kind,
            critical,
            status: AtomicU8::new(ActorStatus::Stopped.as_u8()),
            restarts: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_heartbeat_ms: AtomicI64::new(0),
            details: Mutex::new(Map::new()),
            policy: self.policy,
            history: Mutex::new(RestartHistory::default()),
            restart_delay_ms: AtomicU64::new(0),
            failed_until_ms: AtomicI64::new(0),
        });
        if let Ok(mut actors) = self.actors.write() {
            actors.push(Arc::clone(&stats));
        }
        stats
    }

    /// Snapshots of every actor.
    pub fn snapshot(&self) -> Vec<ActorSnapshot> {
        self.actors
            .read()
            .map(|a| a.iter().map(|s| s.snapshot()).collect())
            .unwrap_or_default()
    }

    /// Why the node is not ready, if it is not: any actor over its restart budget, and
    /// critical actors that are not running or whose heartbeat is older than
    /// `stale_after_ms`.
    pub fn unready_reasons(&self, stale_after_ms: u64) -> Vec<String> {
        self.snapshot()
            .into_iter()
            .filter(|a| a.critical || a.status == ActorStatus::Failed)
            .filter_map(|a| match (a.status, a.last_heartbeat_age_ms) {
                (ActorStatus::Failed, _) => Some(format!(
                    "actor {} failed: restarted more than {} times in {} s",
                    a.name,
                    self.policy.max_restarts,
                    self.policy.window.as_secs()
                )),
                (ActorStatus::Running | ActorStatus::Degraded, Some(age))
                    if age <= stale_after_ms =>
                {
                    None
                }
                (ActorStatus::Running | ActorStatus::Degraded, age) => Some(format!(
                    "actor {} has no recent heartbeat ({})",
                    a.name,
                    age.map_or("never".to_owned(), |ms| format!("{ms} ms ago"))
                )),
                (status, _) => Some(format!("actor {} is {:?}", a.name, status).to_lowercase()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_critical_actor_that_never_started_makes_the_node_unready() {
        let board = HealthBoard::new();
        let relay = board.register("outbox_relay", "OutboxRelay", true);
        let _optional = board.register("x", "X", false);
        assert_eq!(board.unready_reasons(5_000).len(), 1);
        relay.set_status(ActorStatus::Running);
        relay.heartbeat();
        assert!(board.unready_reasons(5_000).is_empty());
        relay.restarted();
        assert_eq!(board.snapshot()[0].restarts, 1);
        assert_eq!(board.unready_reasons(5_000).len(), 1);
    }
}
