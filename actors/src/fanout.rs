//! `Fanout`: one per HTTP worker arbiter, holding the sessions that run on that
//! arbiter's thread. The registry hands it each broadcast once; it queues the push for
//! its sessions on its own thread, so a broadcast costs one cross-thread message per
//! arbiter rather than a cross-thread wake-up per session, and every worker fans out
//! in parallel. Targeted pushes do not pass through here: they go from the registry
//! straight to the user's sessions.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use crate::health::{ActorStats, ActorStatus};
use crate::messages::{FanOut, Join, Leave, SessionId};
use crate::registry::{Registry, SessionHandle, HEARTBEAT_INTERVAL};

/// The sessions of one arbiter, for broadcasts.
pub struct Fanout {
    sessions: Vec<SessionHandle>,
    /// Where each session sits in `sessions`, so leaving is O(1).
    positions: HashMap<SessionId, usize>,
    stats: Arc<ActorStats>,
}

impl Fanout {
    /// An empty fan-out reporting to `stats`. Start it on the arbiter whose sessions
    /// it serves, then announce it to the registry with
    /// [`AddFanout`](crate::messages::AddFanout).
    pub fn new(stats: Arc<ActorStats>) -> Self {
        Self {
            sessions: Vec::new(),
            positions: HashMap::new(),
            stats,
        }
    }

    fn remove(&mut self, id: SessionId) {
        if let Some(at) = self.positions.remove(&id) {
            self.sessions.swap_remove(at);
            if let Some(moved) = self.sessions.get(at) {
                self.positions.insert(moved.id, at);
            }
        }
    }
}

impl Actor for Fanout {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.stats.set_status(ActorStatus::Running);
        self.stats.heartbeat();
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, _| {
            act.stats.heartbeat();
            act.stats.set_detail("sessions", act.sessions.len());
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stats.set_status(ActorStatus::Stopped);
    }
}

impl Supervised for Fanout {
    /// Nothing here fails on input, but a restart keeps the session handles: they stay
    /// valid, and dropping them would cost those sessions their broadcasts.
    fn restarting(&mut self, _: &mut Self::Context) {
        self.stats.restarted();
    }
}

impl Handler<Join> for Fanout {
    type Result = ();

    fn handle(&mut self, msg: Join, _: &mut Self::Context) {
        self.remove(msg.session_id);
        self.positions.insert(msg.session_id, self.sessions.len());
        self.sessions.push(SessionHandle {
            id: msg.session_id,
            push: msg.push,
            close: msg.close,
        });
    }
}

impl Handler<Leave> for Fanout {
    type Result = ();

    fn handle(&mut self, msg: Leave, _: &mut Self::Context) {
        self.remove(msg.session_id);
    }
}

impl Handler<FanOut> for Fanout {
    type Result = usize;

    /// Same policy as the registry's: a session whose queue is full is closed as a slow
    /// consumer (1013) and dropped here; its own `Disconnect` then removes it from the
    /// registry.
    fn handle(&mut self, msg: FanOut, _: &mut Self::Context) -> usize {
        self.stats.processed(1);
        let mut gone = Vec::new();
        for session in &self.sessions {
            if !Registry::offer(session, msg.push.clone()) {
                gone.push(session.id);
            }
        }
        for id in &gone {
            self.remove(*id);
        }
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use bytestring::ByteString;

    use super::*;
    use crate::domain::UserId;
    use crate::health::HealthBoard;
    use crate::messages::{AddFanout, Broadcast, CloseSession, Connect, Disconnect, Push};

    /// Stands in for a `WsSession`: records the ids it was pushed.
    struct Probe {
        seen: Arc<Mutex<Vec<i64>>>,
    }

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    impl Handler<Push> for Probe {
        type Result = ();
        fn handle(&mut self, push: Push, _: &mut Self::Context) {
            self.seen.lock().unwrap().push(push.id);
        }
    }

    impl Handler<CloseSession> for Probe {
        type Result = ();
        fn handle(&mut self, _: CloseSession, ctx: &mut Self::Context) {
            ctx.stop();
        }
    }

    /// A fan-out whose worker is stuck: it takes each broadcast and answers much later.
    struct StuckFanout {
        taken: Arc<Mutex<Vec<i64>>>,
    }

    impl Actor for StuckFanout {
        type Context = Context<Self>;
    }

    impl Handler<FanOut> for StuckFanout {
        type Result = ResponseFuture<usize>;
        fn handle(&mut self, msg: FanOut, _: &mut Self::Context) -> Self::Result {
            self.taken.lock().unwrap().push(msg.push.id);
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                1
            })
        }
    }

    fn push(id: i64) -> Push {
        Push {
            id,
            targeted: false,
            frame: ByteString::from_static("{}"),
            committed_at_micros: 0,
        }
    }

    async fn until(seen: &Arc<Mutex<Vec<i64>>>, want: &[i64]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen.lock().unwrap().as_slice() != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "saw {:?}, wanted {want:?}",
                seen.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[actix_rt::test]
    async fn a_broadcast_reaches_every_session_of_every_fan_out_exactly_once() {
        let board = HealthBoard::new();
        let registry = Registry::new(board.register("registry", "Registry", true)).start();
        let workers: Vec<Addr<Fanout>> = (0..2)
            .map(|n| Fanout::new(board.register(format!("fanout:{n}"), "Fanout", false)).start())
            .collect();
        for fanout in &workers {
            registry
                .send(AddFanout {
                    fanout: fanout.clone().recipient(),
                })
                .await
                .unwrap();
        }

        // Two sessions on the first worker, one on the second.
        let mut probes = Vec::new();
        for (session_id, worker) in [(1, 0), (2, 0), (3, 1)] {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let probe = Probe {
                seen: Arc::clone(&seen),
            }
            .start();
            workers[worker]
                .send(Join {
                    session_id,
                    push: probe.clone().recipient(),
                    close: probe.clone().recipient(),
                })
                .await
                .unwrap();
            let user_id = UserId::new();
            registry
                .send(Connect {
                    user_id,
                    session_id,
                    push: probe.clone().recipient(),
                    close: probe.clone().recipient(),
                })
                .await
                .unwrap();
            probes.push((session_id, worker, user_id, seen));
        }

        let reached = registry.send(Broadcast { push: push(7) }).await.unwrap();
        assert_eq!(reached, 3);
        for (_, _, _, seen) in &probes {
            until(seen, &[7]).await;
        }

        // A session that left its fan-out (and the registry) gets nothing more.
        let (gone, worker, gone_user, gone_seen) = &probes[0];
        workers[*worker]
            .send(Leave { session_id: *gone })
            .await
            .unwrap();
        registry
            .send(Disconnect {
                user_id: *gone_user,
                session_id: *gone,
            })
            .await
            .unwrap();
        let reached = registry.send(Broadcast { push: push(8) }).await.unwrap();
        assert_eq!(reached, 2);
        for (_, _, _, seen) in &probes[1..] {
            until(seen, &[7, 8]).await;
        }
        assert_eq!(gone_seen.lock().unwrap().as_slice(), &[7]);
    }

    #[actix_rt::test]
    async fn a_stuck_fan_out_does_not_hold_up_the_broadcasts_behind_it() {
        let board = HealthBoard::new();
        let registry = Registry::new(board.register("registry", "Registry", true)).start();
        let taken = Arc::new(Mutex::new(Vec::new()));
        let stuck = StuckFanout {
            taken: Arc::clone(&taken),
        }
        .start();
        registry
            .send(AddFanout {
                fanout: stuck.recipient(),
            })
            .await
            .unwrap();

        // Each broadcast is answered once the wait runs out, and still reaches the
        // stuck fan-out, in order.
        for id in [1, 2] {
            let started = tokio::time::Instant::now();
            let reached = registry.send(Broadcast { push: push(id) }).await.unwrap();
            assert_eq!(reached, 0);
            assert!(started.elapsed() >= crate::registry::FANOUT_WAIT);
            assert!(started.elapsed() < Duration::from_secs(60));
        }
        assert_eq!(taken.lock().unwrap().as_slice(), &[1, 2]);
    }
}
