//! Publishers: open-loop targeted pushes at a fixed rate, flow-controlled broadcasts,
//! and warm-up pushes — over HTTP or straight onto the bus.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use herald::auth::jwt::SCOPE_PUBLISH;
use herald_actors::domain::{EventName, Notification, NotificationStored, Topic, UserId};
use serde_json::value::RawValue;
use tokio::task::JoinSet;

use crate::http::Connection;
use crate::stats::{payload, Tally, EVENT_BROADCAST, EVENT_PUSH, EVENT_WARMUP};
use crate::target::{Target, Via};

/// First notification id the harness uses for messages it puts on the bus itself;
/// far above anything the node's store hands out in a run, so each session's ids keep
/// growing.
const BUS_ID_BASE: i64 = 1 << 40;
/// Lifetime of the publisher token.
const PUBLISHER_TTL_SECS: u64 = 6 * 3600;
/// How long the broadcaster waits for an earlier broadcast to reach every session
/// before it goes on regardless (the run then reports the loss).
const WINDOW_WAIT: Duration = Duration::from_secs(10);

/// Publishes for the harness; cheap to share, each worker opens its own connection.
pub struct Publisher {
    target: Target,
    via: Via,
    authorization: Arc<str>,
    next_bus_id: AtomicI64,
}

/// One publishing worker with its own HTTP connection.
pub struct Worker<'a> {
    publisher: &'a Publisher,
    conn: Connection,
}

/// How a drive went, from the publishers' side.
#[derive(Debug, Clone, Copy, Default)]
pub struct DriveStats {
    /// Messages the schedule called for.
    pub scheduled: u64,
    /// From the first due time to the last publish answered.
    pub elapsed: Duration,
    /// Largest delay between a message's due time and the moment it was sent: how far
    /// the publishers fell behind the schedule.
    pub max_lag: Duration,
}

/// A fixed-rate load of targeted pushes.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Pushes per second, over all sessions.
    pub rate: f64,
    /// How long to publish.
    pub duration: Duration,
    /// Concurrent publishers (each with its own connection).
    pub workers: usize,
    /// Size of each payload object, bytes.
    pub payload_bytes: usize,
}

impl Publisher {
    /// A publisher to `target` over `via`, with a freshly minted `publish` token.
    ///
    /// # Errors
    /// When the token cannot be minted.
    pub fn new(target: &Target, via: Via) -> anyhow::Result<Self> {
        let token = target
            .tokens
            .issue(UserId::new(), SCOPE_PUBLISH, PUBLISHER_TTL_SECS)
            .context("while minting the publisher token")?;
        Ok(Self {
            target: target.clone(),
            via,
            authorization: format!("Bearer {token}").into(),
            next_bus_id: AtomicI64::new(BUS_ID_BASE),
        })
    }

    /// The path publishes take.
    pub fn via(&self) -> &Via {
        &self.via
    }

    /// A worker with its own connection.
    pub fn worker(&self) -> Worker<'_> {
        Worker {
            publisher: self,
            conn: Connection::new(self.target.addr),
        }
    }

    /// Reserves `count` consecutive notification ids for bus publishes.
    fn reserve_ids(&self, count: u64) -> i64 {
        self.next_bus_id.fetch_add(
            i64::try_from(count).unwrap_or(i64::MAX / 4),
            Ordering::Relaxed,
        )
    }
}

impl Worker<'_> {
    /// Publishes one notification to `user` (or to everyone when `None`); `bus_id` is
    /// its id when it goes straight onto the bus.
    ///
    /// # Errors
    /// A non-202 answer, a transport failure or a bus error.
    pub async fn publish(
        &mut self,
        user: Option<UserId>,
        event: &str,
        payload: String,
        bus_id: i64,
    ) -> anyhow::Result<()> {
        match &self.publisher.via {
            Via::Http => {
                let body = match user {
                    Some(user) => format!(
                        "{{\"user_id\":\"{user}\",\"event\":\"{event}\",\"payload\":{payload}}}"
                    ),
                    None => format!(
                        "{{\"broadcast\":true,\"event\":\"{event}\",\"payload\":{payload}}}"
                    ),
                };
                let response = self
                    .conn
                    .request(
                        "POST",
                        "/api/notifications",
                        &[("authorization", &self.publisher.authorization)],
                        Bytes::from(body),
                    )
                    .await?;
                if response.status != 202 {
                    bail!(
                        "publish answered {}: {}",
                        response.status,
                        String::from_utf8_lossy(&response.body)
                    );
                }
                Ok(())
            }
            Via::Bus { bus, .. } => {
                let event = NotificationStored {
                    event_id: uuid::Uuid::new_v4(),
                    notification: Notification {
                        id: bus_id,
                        user_id: user,
                        event: EventName::parse(event).map_err(|e| anyhow!(e.0))?,
                        payload: RawValue::from_string(payload)?,
                        created_at: chrono::Utc::now(),
                    },
                };
                let key = user.map(|u| u.to_string()).unwrap_or_default();
                bus.publish(
                    Topic::Notifications,
                    &key,
                    Bytes::from(serde_json::to_vec(&event)?),
                )
                .await?;
                Ok(())
            }
        }
    }
}

/// Publishes `load` as targeted pushes spread evenly over `users`, on a fixed
/// schedule (open loop): message `seq` is due at `start + seq / rate` and carries that
/// due time, so a publisher that falls behind shows up as latency, not as a slower
/// schedule. Each user belongs to one worker, so one user's pushes are published in
/// order. Accepted publishes and failures are counted in `tally`.
pub async fn drive_targeted(
    publisher: &Arc<Publisher>,
    users: &[UserId],
    load: Load,
    tally: &Arc<Tally>,
) -> DriveStats {
    let workers = load.workers.clamp(1, users.len().max(1));
    let scheduled = (load.rate * load.duration.as_secs_f64()).round() as u64;
    if users.is_empty() || scheduled == 0 || load.rate <= 0.0 {
        return DriveStats::default();
    }
    let id_base = publisher.reserve_ids(scheduled);
    let start = Instant::now() + Duration::from_millis(20);
    let max_lag = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for w in 0..workers {
        let owned: Vec<UserId> = users.iter().skip(w).step_by(workers).copied().collect();
        let (publisher, tally, max_lag) = (
            Arc::clone(publisher),
            Arc::clone(tally),
            Arc::clone(&max_lag),
        );
        tasks.spawn(async move {
            let mut worker = publisher.worker();
            for j in 0u64.. {
                let seq = j * workers as u64 + w as u64;
                if seq >= scheduled {
                    break;
                }
                let due = start + Duration::from_secs_f64(seq as f64 / load.rate);
                tokio::time::sleep_until(due.into()).await;
                let sent = Instant::now();
                let lag = u64::try_from(sent.saturating_duration_since(due).as_micros())
                    .unwrap_or(u64::MAX);
                max_lag.fetch_max(lag, Ordering::Relaxed);
                let user = owned[usize::try_from(j).unwrap_or(0) % owned.len()];
                let body = payload(seq, tally.clock.us_at(due), load.payload_bytes);
                let id = id_base + i64::try_from(seq).unwrap_or(0);
                match worker.publish(Some(user), EVENT_PUSH, body, id).await {
                    Ok(()) => tally.accepted(1, sent.elapsed()),
                    Err(err) => {
                        if tally.publish_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("publish failed: {err:#}");
                        }
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    DriveStats {
        scheduled,
        elapsed: start.elapsed(),
        max_lag: Duration::from_micros(max_lag.load(Ordering::Relaxed)),
    }
}

/// Publishes up to `count` broadcasts for at most `max_duration`, as fast as the node
/// delivers them: broadcast `b` waits until broadcast `b - window` reached every live
/// session, so the sessions' outbound queues never overflow because of the harness.
pub async fn drive_broadcasts(
    publisher: &Publisher,
    count: u64,
    max_duration: Duration,
    window: u64,
    payload_bytes: usize,
    tally: &Tally,
    live: &std::sync::atomic::AtomicUsize,
) -> DriveStats {
    let id_base = publisher.reserve_ids(count);
    let start = Instant::now();
    let mut worker = publisher.worker();
    let mut scheduled = 0;
    for b in 0..count {
        if start.elapsed() >= max_duration {
            break;
        }
        if b >= window {
            let waited = Instant::now();
            let recipients = live.load(Ordering::Relaxed);
            while (tally.deliveries_of(b - window) as usize) < recipients
                && waited.elapsed() < WINDOW_WAIT
            {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        scheduled += 1;
        let recipients = live.load(Ordering::Relaxed) as u64;
        let sent = Instant::now();
        let body = payload(b, tally.clock.us_at(sent), payload_bytes);
        let id = id_base + i64::try_from(b).unwrap_or(0);
        match worker.publish(None, EVENT_BROADCAST, body, id).await {
            Ok(()) => tally.accepted(recipients, sent.elapsed()),
            Err(err) => {
                if tally.publish_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("broadcast failed: {err:#}");
                }
            }
        }
    }
    DriveStats {
        scheduled,
        elapsed: start.elapsed(),
        max_lag: Duration::ZERO,
    }
}

/// Sends warm-up pushes to `user` until one arrives (the delivery path is live: in
/// production the consumer group has its partitions), or fails after `deadline`.
///
/// # Errors
/// When no warm-up push arrives in time.
pub async fn warm_up(
    publisher: &Publisher,
    user: UserId,
    tally: &Tally,
    deadline: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    let mut worker = publisher.worker();
    while Instant::now() < until {
        let id = publisher.reserve_ids(1);
        if let Err(err) = worker
            .publish(Some(user), EVENT_WARMUP, "{}".to_owned(), id)
            .await
        {
            eprintln!("warm-up publish failed: {err:#}");
        }
        let round = Instant::now() + Duration::from_secs(1);
        while Instant::now() < round {
            if tally.warmups.load(Ordering::Relaxed) > 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    bail!("no warm-up push arrived within {deadline:?}")
}

/// Waits until every expected delivery arrived or `deadline` passed; returns how long
/// it waited.
pub async fn drain(tally: &Tally, deadline: Duration) -> Duration {
    let start = Instant::now();
    while tally.lost() > 0 && start.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}
