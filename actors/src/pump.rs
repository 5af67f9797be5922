//! The shape shared by actors that drain a durable queue in batches (the outbox relay,
//! the mailer): one batch at a time, woken by a [`Nudge`] when work is added and by a
//! timer for work that comes due, and straight on to the next batch while more waits.

use std::time::Duration;

use actix::prelude::*;
use futures_util::future::BoxFuture;

use crate::health::{ActorStats, ActorStatus};
use crate::messages::Nudge;

/// Whether a batch is running, and whether another was asked for meanwhile.
#[derive(Debug, Default)]
pub struct Pump {
    busy: bool,
    again: bool,
}

/// An actor that drains a queue with [`start`] and [`drain`].
pub trait BatchDrainer: Actor<Context = Context<Self>> + Handler<Nudge> {
    /// The actor's pump state.
    fn pump(&mut self) -> &mut Pump;
    /// The actor's health stats.
    fn stats(&self) -> &ActorStats;
    /// How often to look for work without a nudge.
    fn poll_interval(&self) -> Duration;
    /// Runs one batch; resolves to whether more work may be waiting.
    fn batch(&self) -> BoxFuture<'static, bool>;
}

/// Call from `started`: after the supervisor's restart delay (none on the first
/// start), marks the actor running, starts heartbeat and polling, and drains once.
pub fn start<A: BatchDrainer>(actor: &mut A, ctx: &mut Context<A>) {
    *actor.pump() = Pump::default();
    let delay = actor.stats().restart_delay();
    if delay.is_zero() {
        resume(actor, ctx);
    } else {
        // Nudges arriving meanwhile are remembered, not run.
        actor.pump().busy = true;
        ctx.run_later(delay, |act, ctx| {
            act.pump().busy = false;
            resume(act, ctx);
        });
    }
}

fn resume<A: BatchDrainer>(actor: &mut A, ctx: &mut Context<A>) {
    actor.stats().set_status(ActorStatus::Running);
    actor.stats().heartbeat();
    ctx.run_interval(actor.poll_interval(), |act, ctx| {
        act.stats().heartbeat();
        drain(act, ctx);
    });
    drain(actor, ctx);
}

/// Runs a batch unless one is running (then one more follows it).
pub fn drain<A: BatchDrainer>(actor: &mut A, ctx: &mut Context<A>) {
    let pump = actor.pump();
    if pump.busy {
        pump.again = true;
        return;
    }
    pump.busy = true;
    pump.again = false;
    ctx.spawn(actor.batch().into_actor(actor).map(|more, act, ctx| {
        let pump = act.pump();
        pump.busy = false;
        if more || pump.again {
            ctx.notify(Nudge);
        }
    }));
}
