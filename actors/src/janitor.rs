//! `Janitor`: periodic housekeeping of the store, so tables that only grow stay
//! bounded: idempotency keys (kept at least 24 h, DESIGN §4) and notification history
//! (kept for the configured retention, 7 days by default).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use tracing::{info, warn};

use crate::health::{ActorStats, ActorStatus};
use crate::ports::Store;

/// Prunes expired rows on a timer.
pub struct Janitor {
    store: Arc<dyn Store>,
    interval: Duration,
    idempotency_retention: chrono::Duration,
    history_retention: chrono::Duration,
    stats: Arc<ActorStats>,
}

impl Janitor {
    /// A janitor running every `interval`, keeping idempotency keys for
    /// `idempotency_retention` and notifications for `history_retention`.
    pub fn new(
        store: Arc<dyn Store>,
        interval: Duration,
        idempotency_retention: chrono::Duration,
        history_retention: chrono::Duration,
        stats: Arc<ActorStats>,
    ) -> Self {
        Self {
            store,
            interval,
            idempotency_retention,
            history_retention,
            stats,
        }
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.store);
        let stats = Arc::clone(&self.stats);
        let now = Utc::now();
        let (keys_cutoff, history_cutoff) = (
            now - self.idempotency_retention,
            now - self.history_retention,
        );
        ctx.spawn(
            async move {
                let keys = store.prune_idempotency_keys(keys_cutoff).await;
                let history = store.prune_notifications(history_cutoff).await;
                match (keys, history) {
                    (Ok(keys), Ok(notifications)) => {
                        stats.processed(keys + notifications);
                        stats.set_status(ActorStatus::Running);
                        if keys + notifications > 0 {
                            info!(keys, notifications, "expired rows pruned");
                        }
                    }
                    (Err(err), _) | (_, Err(err)) => {
                        stats.failed(1);
                        stats.set_status(ActorStatus::Degraded);
                        warn!(error = %err, "expired rows not pruned");
                    }
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for Janitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_later(self.stats.restart_delay(), |act, ctx| {
            act.stats.set_status(ActorStatus::Running);
            act.stats.heartbeat();
            ctx.run_interval(Duration::from_secs(1), |act, _| act.stats.heartbeat());
            ctx.run_interval(act.interval, Self::sweep);
            act.sweep(ctx);
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stats.set_status(ActorStatus::Stopped);
    }
}

impl Supervised for Janitor {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.stats.restarted();
    }
}
