//! `Janitor`: periodic housekeeping of the store, so tables that only grow (idempotency
//! keys) stay bounded. Keys are kept at least the retention period (DESIGN: 24 h).

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
    stats: Arc<ActorStats>,
}

impl Janitor {
    /// A janitor running every `interval`, keeping idempotency keys for
    /// `idempotency_retention`.
    pub fn new(
        store: Arc<dyn Store>,
        interval: Duration,
        idempotency_retention: chrono::Duration,
        stats: Arc<ActorStats>,
    ) -> Self {
        Self {
            store,
            interval,
            idempotency_retention,
            stats,
        }
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.store);
        let stats = Arc::clone(&self.stats);
        let cutoff = Utc::now() - self.idempotency_retention;
        ctx.spawn(
            async move {
                match store.prune_idempotency_keys(cutoff).await {
                    Ok(n) => {
                        stats.processed(n);
                        stats.set_status(ActorStatus::Running);
                        if n > 0 {
                            info!(pruned = n, "expired idempotency keys pruned");
                        }
                    }
                    Err(err) => {
                        stats.failed(1);
                        stats.set_status(ActorStatus::Degraded);
                        warn!(error = %err, "idempotency keys not pruned");
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
        self.stats.set_status(ActorStatus::Running);
        self.stats.heartbeat();
        ctx.run_interval(Duration::from_secs(1), |act, _| act.stats.heartbeat());
        ctx.run_interval(self.interval, Self::sweep);
        self.sweep(ctx);
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
