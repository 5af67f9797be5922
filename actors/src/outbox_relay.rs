//! `OutboxRelay`: moves events that were written in the same transaction as their data
//! (the transactional outbox) onto the bus. An event is marked published only after the
//! bus accepted it, so a crash at any point means "published again", never "lost";
//! consumers deduplicate.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::BoxFuture;
use tracing::{instrument, warn};

use crate::health::{ActorStats, ActorStatus};
use crate::messages::Nudge;
use crate::ports::{Bus, Store};
use crate::pump::{self, BatchDrainer, Pump};

/// How many events one pass takes.
pub const BATCH: u32 = 200;

/// Publishes pending outbox events.
pub struct OutboxRelay {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    poll_interval: Duration,
    stats: Arc<ActorStats>,
    pump: Pump,
}

impl OutboxRelay {
    /// A relay from `store`'s outbox to `bus`, polling every `poll_interval` besides the
    /// nudges it gets when events are written.
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        poll_interval: Duration,
        stats: Arc<ActorStats>,
    ) -> Self {
        Self {
            store,
            bus,
            poll_interval,
            stats,
            pump: Pump::default(),
        }
    }
}

impl BatchDrainer for OutboxRelay {
    fn pump(&mut self) -> &mut Pump {
        &mut self.pump
    }

    fn stats(&self) -> &ActorStats {
        &self.stats
    }

    fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    fn batch(&self) -> BoxFuture<'static, bool> {
        let store = Arc::clone(&self.store);
        let bus = Arc::clone(&self.bus);
        let stats = Arc::clone(&self.stats);
        Box::pin(async move { relay_batch(&*store, &*bus, &stats).await })
    }
}

/// Publishes one batch; returns whether more may be waiting.
#[instrument(skip_all)]
async fn relay_batch(store: &dyn Store, bus: &dyn Bus, stats: &ActorStats) -> bool {
    let events = match store.pending_outbox(BATCH).await {
        Ok(events) => events,
        Err(err) => {
            warn!(error = %err, "outbox unreadable");
            stats.set_status(ActorStatus::Degraded);
            return false;
        }
    };
    let full = events.len() == BATCH as usize;
    let mut published = Vec::with_capacity(events.len());
    let mut healthy = true;
    for event in &events {
        match bus
            .publish(event.topic, &event.key, event.payload.clone())
            .await
        {
            Ok(()) => published.push(event.id),
            Err(err) => {
                warn!(error = %err, outbox_id = event.id, "bus refused outbox event; will retry");
                stats.failed(1);
                healthy = false;
                break;
            }
        }
    }
    if !published.is_empty() {
        if let Err(err) = store.mark_outbox_published(&published).await {
            // They will be published again: consumers deduplicate by event id.
            warn!(error = %err, "published outbox events not marked");
            healthy = false;
        } else {
            stats.processed(published.len() as u64);
        }
    }
    stats.set_status(if healthy {
        ActorStatus::Running
    } else {
        ActorStatus::Degraded
    });
    full && healthy
}

impl Actor for OutboxRelay {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        pump::start(self, ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stats.set_status(ActorStatus::Stopped);
    }
}

impl Supervised for OutboxRelay {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.stats.restarted();
    }
}

impl Handler<Nudge> for OutboxRelay {
    type Result = ();

    fn handle(&mut self, _: Nudge, ctx: &mut Self::Context) {
        pump::drain(self, ctx);
    }
}
