//! The scenarios of issue 6, each returning a [`Report`]: targeted pushes at a rate
//! (`seed`, `kafka`), idle sessions, a throughput search, broadcast fan-out and
//! concurrent signups. They run against any [`Target`]; `main` spawns the node.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;

use crate::http::Connection;
use crate::procfs::{self, Sample};
use crate::publish::{self, Load, Publisher};
use crate::report::{DeliveryReport, Report, ServerReport, SessionsReport};
use crate::sessions::Fleet;
use crate::stats::{histogram, Clock, Percentiles, Tally};
use crate::target::{Target, Via};

/// Settles after the drain, so late duplicates are still counted.
const GRACE: Duration = Duration::from_millis(300);
/// Memory target per idle session (DESIGN §8), bytes.
pub const IDLE_TARGET_BYTES: u64 = 16 * 1024;
/// Sessions the idle projection is made for.
pub const PROJECTED_SESSIONS: u64 = 100_000;

/// Sessions and how they are opened.
#[derive(Debug, Clone, Copy)]
pub struct SessionSpec {
    /// Sessions to open.
    pub count: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
}

/// Targeted pushes at a fixed rate.
#[derive(Debug, Clone, Copy)]
pub struct PushSpec {
    /// The sessions.
    pub sessions: SessionSpec,
    /// The load.
    pub load: Load,
    /// How long deliveries may trail the last publish before they count as lost.
    pub drain: Duration,
    /// How long the delivery path may take to come alive (Kafka group join).
    pub warmup: Duration,
}

fn kib(bytes: u64) -> u64 {
    bytes / 1024
}

fn cores(a: Option<&Sample>, b: Option<&Sample>, hz: u64) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => procfs::cores_between(a, b, hz),
        _ => 0.0,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The node's count of open WebSocket connections (`/api/analytics`).
async fn connections(conn: &mut Connection) -> Option<u64> {
    let r = conn.get("/api/analytics").await.ok()?;
    let body: Value = serde_json::from_slice(&r.body).ok()?;
    body.get("connections").and_then(Value::as_u64)
}

/// Waits until the node's connection count satisfies `done`.
///
/// # Errors
/// When it does not within `deadline`.
pub async fn wait_connections(
    target: &Target,
    done: impl Fn(u64) -> bool,
    deadline: Duration,
) -> anyhow::Result<u64> {
    let until = Instant::now() + deadline;
    let mut conn = Connection::new(target.addr);
    let mut seen = None;
    while Instant::now() < until {
        seen = connections(&mut conn).await;
        if let Some(n) = seen.filter(|n| done(*n)) {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the node still counts {seen:?} connections after {deadline:?}")
}

/// Sessions opened, with the node's readings before and after.
struct Opened {
    fleet: Fleet,
    before: Option<Sample>,
    after: Option<Sample>,
    requested: usize,
    /// Connections the node counted before these opened.
    base: u64,
}

async fn open_sessions(
    target: &Target,
    spec: SessionSpec,
    tally: Arc<Tally>,
) -> anyhow::Result<Opened> {
    let before = target.sample_node();
    let base = connections(&mut Connection::new(target.addr))
        .await
        .context("the node does not report its connections (/api/analytics)")?;
    let started = Instant::now();
    let fleet = Fleet::open(target, spec.count, spec.concurrency, tally).await?;
    // Every session counts once it is registered (before any push can be routed to
    // it), so this wait means no push of the run can miss a session.
    let want = base + fleet.users.len() as u64;
    wait_connections(target, |n| n >= want, Duration::from_secs(60)).await?;
    eprintln!(
        "{} sessions open ({} failed) in {:.1} s",
        fleet.users.len(),
        fleet.failed,
        started.elapsed().as_secs_f64()
    );
    let after = target.sample_node();
    Ok(Opened {
        fleet,
        before,
        after,
        requested: spec.count,
        base,
    })
}

impl Opened {
    /// Closes the sessions and waits until the node let go of them, so the next
    /// scenario on the same node starts from its own baseline.
    async fn close(self, target: &Target) {
        let base = self.base;
        self.fleet.close().await;
        if let Err(err) = wait_connections(target, |n| n <= base, Duration::from_secs(60)).await {
            eprintln!("note: {err:#}");
        }
    }

    fn sessions_report(&self) -> SessionsReport {
        SessionsReport {
            requested: self.requested,
            open: self.fleet.users.len(),
            failed: self.fleet.failed,
            closed_by_server: self.fleet.closed_by_server.load(Ordering::Relaxed),
        }
    }

    fn server_report(&self, end: Option<&Sample>) -> ServerReport {
        let open = self.fleet.users.len().max(1) as u64;
        let (before, after) = (
            self.before.map_or(0, |s| s.rss_bytes),
            self.after.map_or(0, |s| s.rss_bytes),
        );
        ServerReport {
            rss_before_kib: kib(before),
            rss_sessions_kib: kib(after),
            rss_after_kib: end.map_or(0, |s| kib(s.rss_bytes)),
            rss_peak_kib: end.or(self.after.as_ref()).map_or(0, |s| kib(s.hwm_bytes)),
            rss_per_session_bytes: after.saturating_sub(before) / open,
            fds: self.after.map_or(0, |s| s.fds),
            ..ServerReport::default()
        }
    }
}

/// What one measured drive of targeted pushes produced.
struct Step {
    delivery: DeliveryReport,
    latency: Percentiles,
    publish_latency: Percentiles,
    server_cores: f64,
    harness_cores: f64,
    end: Option<Sample>,
}

async fn measured_drive(
    target: &Target,
    fleet: &Fleet,
    publisher: &Arc<Publisher>,
    clock: Clock,
    load: Load,
    drain: Duration,
) -> anyhow::Result<Step> {
    let hz = procfs::ticks_per_second();
    let users = fleet.live_users();
    let scheduled = (load.rate * load.duration.as_secs_f64()).round() as usize;
    let tally = Arc::new(Tally::new(clock, scheduled)?);
    fleet.count_into(Arc::clone(&tally));
    let (server0, harness0) = (target.sample_node(), target.sample_harness());
    let t0 = clock.now_us();
    let stats = publish::drive_targeted(publisher, &users, load, &tally).await;
    publish::drain(&tally, drain).await;
    tokio::time::sleep(GRACE).await;
    let (server1, harness1) = (target.sample_node(), target.sample_harness());
    let accepted = tally.accepted.load(Ordering::Relaxed);
    let delivered = tally.received.load(Ordering::Relaxed);
    let span_us = tally
        .last_frame_us
        .load(Ordering::Relaxed)
        .saturating_sub(t0);
    let delivery = DeliveryReport {
        scheduled: stats.scheduled,
        accepted,
        publish_errors: tally.publish_errors.load(Ordering::Relaxed),
        expected: tally.expected.load(Ordering::Relaxed),
        delivered,
        lost: tally.lost(),
        duplicated: tally.duplicates.load(Ordering::Relaxed),
        publish_rate: round3(accepted as f64 / stats.elapsed.as_secs_f64().max(1e-9)),
        delivered_per_sec: round3(delivered as f64 / (span_us.max(1) as f64 / 1e6)),
        max_publisher_lag_ms: round3(stats.max_lag.as_secs_f64() * 1000.0),
    };
    Ok(Step {
        delivery,
        latency: tally.latency()?,
        publish_latency: tally.publish_latency(),
        server_cores: round3(cores(server0.as_ref(), server1.as_ref(), hz)),
        harness_cores: round3(cores(harness0.as_ref(), harness1.as_ref(), hz)),
        end: server1,
    })
}

/// Opens sessions, waits until a warm-up push arrives, and returns the publisher.
async fn prepare(
    target: &Target,
    via: Via,
    sessions: SessionSpec,
    warmup: Duration,
) -> anyhow::Result<(Opened, Arc<Publisher>, Clock)> {
    let clock = Clock::new();
    let warm = Arc::new(Tally::new(clock, 0)?);
    let opened = open_sessions(target, sessions, Arc::clone(&warm)).await?;
    let first = *opened
        .fleet
        .users
        .first()
        .context("no session could be opened")?;
    let publisher = Arc::new(Publisher::new(target, via)?);
    publish::warm_up(&publisher, first, &warm, warmup).await?;
    Ok((opened, publisher, clock))
}

/// Targeted pushes at a fixed rate to every session (the `seed` and `kafka`
/// scenarios).
///
/// # Errors
/// When sessions cannot be opened or the delivery path never comes alive.
pub async fn push(name: &str, target: &Target, via: Via, spec: PushSpec) -> anyhow::Result<Report> {
    let mut report = Report::new(name, target.mode, via.name());
    report.params = params(&[
        ("sessions", json!(spec.sessions.count)),
        ("rate_per_sec", json!(spec.load.rate)),
        ("duration_secs", json!(spec.load.duration.as_secs_f64())),
        ("payload_bytes", json!(spec.load.payload_bytes)),
        ("publishers", json!(spec.load.workers)),
    ]);
    let (opened, publisher, clock) = prepare(target, via, spec.sessions, spec.warmup).await?;
    let step = measured_drive(
        target,
        &opened.fleet,
        &publisher,
        clock,
        spec.load,
        spec.drain,
    )
    .await?;
    let mut server = opened.server_report(step.end.as_ref());
    server.cpu_cores_load = step.server_cores;
    report.sessions = Some(opened.sessions_report());
    report.delivery = Some(step.delivery);
    report.latency = Some(step.latency);
    report.publish_latency = Some(step.publish_latency);
    report.server = target.process.map(|_| server);
    report.harness_cpu_cores = Some(step.harness_cores);
    opened.close(target).await;
    Ok(report)
}

/// Idle sessions: resident memory per session and the projection to
/// [`PROJECTED_SESSIONS`], and the CPU the heartbeats cost over `hold`.
///
/// # Errors
/// When the node cannot be read.
pub async fn idle(
    target: &Target,
    sessions: SessionSpec,
    hold: Duration,
) -> anyhow::Result<Report> {
    let mut report = Report::new("idle", target.mode, "");
    report.params = params(&[
        ("sessions", json!(sessions.count)),
        ("hold_secs", json!(hold.as_secs_f64())),
    ]);
    let hz = procfs::ticks_per_second();
    let tally = Arc::new(Tally::new(Clock::new(), 0)?);
    let opened = open_sessions(target, sessions, tally).await?;
    let held = target.sample_node();
    tokio::time::sleep(hold).await;
    let end = target.sample_node();
    let mut server = opened.server_report(end.as_ref());
    server.cpu_cores_idle = Some(round3(cores(held.as_ref(), end.as_ref(), hz)));
    let per_session = server.rss_per_session_bytes;
    let projected = server.rss_before_kib * 1024 + per_session * PROJECTED_SESSIONS;
    report.results = params(&[
        ("rss_per_session_bytes", json!(per_session)),
        (
            "rss_per_session_after_hold_bytes",
            json!(
                (server.rss_after_kib.saturating_sub(server.rss_before_kib) * 1024)
                    / opened.fleet.users.len().max(1) as u64
            ),
        ),
        ("target_bytes", json!(IDLE_TARGET_BYTES)),
        ("meets_target", json!(per_session <= IDLE_TARGET_BYTES)),
        ("projected_sessions", json!(PROJECTED_SESSIONS)),
        (
            "projected_rss_mib",
            json!(round3(projected as f64 / (1024.0 * 1024.0))),
        ),
        ("fds_open", json!(server.fds)),
    ]);
    report.sessions = Some(opened.sessions_report());
    report.server = target.process.map(|_| server);
    opened.close(target).await;
    Ok(report)
}

/// The throughput search.
#[derive(Debug, Clone, Copy)]
pub struct ThroughputSpec {
    /// The sessions pushes go to.
    pub sessions: SessionSpec,
    /// First rate tried.
    pub start_rate: f64,
    /// Highest rate tried.
    pub max_rate: f64,
    /// Length of each step.
    pub step: Duration,
    /// Bisection steps after the first failure.
    pub refine: u32,
    /// Publishers.
    pub workers: usize,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// The latency bound a rate must meet, ms.
    pub p99_limit_ms: f64,
    /// Drain per step.
    pub drain: Duration,
    /// Warm-up deadline.
    pub warmup: Duration,
}

/// Finds the highest targeted push rate the node sustains: doubling from
/// `start_rate` until a step fails, then bisecting. A step passes when nothing is lost
/// or duplicated, no publish fails, the publishers kept 95 % of the rate, and the p99
/// push latency is within the limit.
///
/// # Errors
/// When sessions cannot be opened.
pub async fn throughput(target: &Target, via: Via, spec: ThroughputSpec) -> anyhow::Result<Report> {
    let mut report = Report::new("throughput", target.mode, via.name());
    report.params = params(&[
        ("sessions", json!(spec.sessions.count)),
        ("step_secs", json!(spec.step.as_secs_f64())),
        ("payload_bytes", json!(spec.payload_bytes)),
        ("publishers", json!(spec.workers)),
        ("p99_limit_ms", json!(spec.p99_limit_ms)),
    ]);
    let (opened, publisher, clock) = prepare(target, via, spec.sessions, spec.warmup).await?;
    let mut steps = Vec::new();
    let (mut pass, mut fail): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = spec.start_rate;
    let mut refinements = 0;
    let mut best: Option<Step> = None;
    loop {
        let load = Load {
            rate,
            duration: spec.step,
            workers: spec.workers,
            payload_bytes: spec.payload_bytes,
        };
        let step =
            measured_drive(target, &opened.fleet, &publisher, clock, load, spec.drain).await?;
        let d = &step.delivery;
        let ok = d.lost == 0
            && d.duplicated == 0
            && d.publish_errors == 0
            && d.publish_rate >= 0.95 * rate
            && step.latency.p99_ms <= spec.p99_limit_ms;
        eprintln!(
            "rate {rate:.0}/s: published {:.0}/s delivered {:.0}/s p99 {:.2} ms lost {} dup {} server {:.2} cores → {}",
            d.publish_rate, d.delivered_per_sec, step.latency.p99_ms, d.lost, d.duplicated,
            step.server_cores, if ok { "pass" } else { "fail" }
        );
        steps.push(json!({
            "rate": rate,
            "pass": ok,
            "published_per_sec": d.publish_rate,
            "delivered_per_sec": d.delivered_per_sec,
            "p50_ms": step.latency.p50_ms,
            "p99_ms": step.latency.p99_ms,
            "max_ms": step.latency.max_ms,
            "lost": d.lost,
            "duplicated": d.duplicated,
            "publish_errors": d.publish_errors,
            "server_cores": step.server_cores,
            "harness_cores": step.harness_cores,
        }));
        if ok {
            pass = Some(pass.map_or(rate, |p: f64| p.max(rate)));
            best = Some(step);
        } else {
            fail = Some(fail.map_or(rate, |f: f64| f.min(rate)));
        }
        if opened.fleet.closed_by_server.load(Ordering::Relaxed) > 0 {
            eprintln!("the node closed sessions: stopping the search");
            break;
        }
        rate = match (pass, fail) {
            (Some(p), None) if p * 2.0 <= spec.max_rate => p * 2.0,
            (None, Some(f)) if f / 2.0 >= 100.0 && refinements < 4 => {
                refinements += 1;
                f / 2.0
            }
            (Some(p), Some(f)) if refinements < spec.refine && f - p > p * 0.05 => {
                refinements += 1;
                ((p + f) / 2.0 / 100.0).round() * 100.0
            }
            _ => break,
        };
    }
    report.results = params(&[
        ("best_rate_per_sec", json!(pass)),
        ("first_failing_rate_per_sec", json!(fail)),
        ("steps", Value::Array(steps)),
    ]);
    if let Some(best) = best {
        report.latency = Some(best.latency);
        report.publish_latency = Some(best.publish_latency);
        let mut server = opened.server_report(best.end.as_ref());
        server.cpu_cores_load = best.server_cores;
        report.server = target.process.map(|_| server);
        report.harness_cpu_cores = Some(best.harness_cores);
        report.delivery = Some(best.delivery);
    }
    report.sessions = Some(opened.sessions_report());
    opened.close(target).await;
    Ok(report)
}

/// Broadcast fan-out.
#[derive(Debug, Clone, Copy)]
pub struct FanoutSpec {
    /// The sessions every broadcast goes to.
    pub sessions: SessionSpec,
    /// Most broadcasts sent.
    pub count: u64,
    /// Longest time spent broadcasting.
    pub duration: Duration,
    /// Broadcasts not yet delivered everywhere, at most.
    pub window: u64,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Drain.
    pub drain: Duration,
    /// Warm-up deadline.
    pub warmup: Duration,
}

/// Broadcasts as fast as the node delivers them to every session; reports deliveries
/// per second.
///
/// # Errors
/// When sessions cannot be opened.
pub async fn fanout(target: &Target, via: Via, spec: FanoutSpec) -> anyhow::Result<Report> {
    let mut report = Report::new("fanout", target.mode, via.name());
    report.params = params(&[
        ("sessions", json!(spec.sessions.count)),
        ("max_broadcasts", json!(spec.count)),
        ("max_duration_secs", json!(spec.duration.as_secs_f64())),
        ("window", json!(spec.window)),
        ("payload_bytes", json!(spec.payload_bytes)),
    ]);
    let hz = procfs::ticks_per_second();
    let (opened, publisher, clock) = prepare(target, via, spec.sessions, spec.warmup).await?;
    let tally = Arc::new(Tally::new(clock, usize::try_from(spec.count).unwrap_or(0))?);
    opened.fleet.count_into(Arc::clone(&tally));
    let (server0, harness0) = (target.sample_node(), target.sample_harness());
    let t0 = clock.now_us();
    let stats = publish::drive_broadcasts(
        &publisher,
        spec.count,
        spec.duration,
        spec.window,
        spec.payload_bytes,
        &tally,
        &opened.fleet.live,
    )
    .await;
    publish::drain(&tally, spec.drain).await;
    tokio::time::sleep(GRACE).await;
    let (server1, harness1) = (target.sample_node(), target.sample_harness());
    let accepted = tally.accepted.load(Ordering::Relaxed);
    let delivered = tally.received.load(Ordering::Relaxed);
    let span = tally
        .last_frame_us
        .load(Ordering::Relaxed)
        .saturating_sub(t0)
        .max(1) as f64
        / 1e6;
    report.delivery = Some(DeliveryReport {
        scheduled: stats.scheduled,
        accepted,
        publish_errors: tally.publish_errors.load(Ordering::Relaxed),
        expected: tally.expected.load(Ordering::Relaxed),
        delivered,
        lost: tally.lost(),
        duplicated: tally.duplicates.load(Ordering::Relaxed),
        publish_rate: round3(accepted as f64 / span),
        delivered_per_sec: round3(delivered as f64 / span),
        max_publisher_lag_ms: 0.0,
    });
    report.results = params(&[
        ("broadcasts_per_sec", json!(round3(accepted as f64 / span))),
        ("deliveries_per_sec", json!(round3(delivered as f64 / span))),
        ("seconds", json!(round3(span))),
    ]);
    report.latency = Some(tally.latency()?);
    report.publish_latency = Some(tally.publish_latency());
    let mut server = opened.server_report(server1.as_ref());
    server.cpu_cores_load = round3(cores(server0.as_ref(), server1.as_ref(), hz));
    report.server = target.process.map(|_| server);
    report.harness_cpu_cores = Some(round3(cores(harness0.as_ref(), harness1.as_ref(), hz)));
    report.sessions = Some(opened.sessions_report());
    opened.close(target).await;
    Ok(report)
}

/// Concurrent signups.
#[derive(Debug, Clone, Copy)]
pub struct SignupSpec {
    /// Signups in total.
    pub count: usize,
    /// Signups in flight at once.
    pub concurrency: usize,
}

/// The password hash parameters the engine uses (`argon2::Argon2::default()`).
pub const ARGON2_PARAMS: &str = "argon2id v19, m=19456 KiB, t=2, p=1 (argon2 0.5 defaults)";

/// Signs up `count` users, `concurrency` at a time; reports latency and rate.
///
/// # Errors
/// Never for failed signups (they are counted by status); only for histogram setup.
pub async fn signup(target: &Target, spec: SignupSpec) -> anyhow::Result<Report> {
    let mut report = Report::new("signup", target.mode, "http");
    report.params = params(&[
        ("signups", json!(spec.count)),
        ("concurrency", json!(spec.concurrency)),
        ("password_hash", json!(ARGON2_PARAMS)),
    ]);
    let hz = procfs::ticks_per_second();
    let latencies = Arc::new(std::sync::Mutex::new(histogram()?));
    let statuses = Arc::new(std::sync::Mutex::new(
        std::collections::BTreeMap::<u16, u64>::new(),
    ));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server0 = target.sample_node();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..spec.concurrency.max(1) {
        let (latencies, statuses, next) = (
            Arc::clone(&latencies),
            Arc::clone(&statuses),
            Arc::clone(&next),
        );
        let (addr, count) = (target.addr, spec.count);
        tasks.spawn(async move {
            let mut conn = Connection::new(addr);
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let unique = uuid::Uuid::new_v4().simple().to_string();
                let body = json!({
                    "email": format!("bench-{unique}@example.com"),
                    "name": "Bench User",
                    "password": "correct horse battery staple",
                });
                let sent = Instant::now();
                let status = match conn
                    .request(
                        "POST",
                        "/api/users/signup",
                        &[("idempotency-key", &unique)],
                        Bytes::from(body.to_string()),
                    )
                    .await
                {
                    Ok(r) => r.status,
                    Err(_) => 0,
                };
                let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                if let Ok(mut h) = latencies.lock() {
                    h.saturating_record(us.max(1));
                }
                if let Ok(mut s) = statuses.lock() {
                    *s.entry(status).or_default() += 1;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let server1 = target.sample_node();
    let latency = latencies
        .lock()
        .map(|h| Percentiles::of(&h))
        .unwrap_or_default();
    let by_status: Map<String, Value> = statuses
        .lock()
        .map(|s| s.iter().map(|(k, v)| (k.to_string(), json!(v))).collect())
        .unwrap_or_default();
    let created = by_status.get("201").and_then(Value::as_u64).unwrap_or(0);
    report.results = params(&[
        (
            "signups_per_sec",
            json!(round3(created as f64 / elapsed.max(1e-9))),
        ),
        ("statuses", Value::Object(by_status)),
        ("seconds", json!(round3(elapsed))),
    ]);
    report.latency = Some(latency);
    report.server = target.process.map(|_| ServerReport {
        rss_before_kib: server0.map_or(0, |s| kib(s.rss_bytes)),
        rss_after_kib: server1.map_or(0, |s| kib(s.rss_bytes)),
        rss_peak_kib: server1.map_or(0, |s| kib(s.hwm_bytes)),
        cpu_cores_load: round3(cores(server0.as_ref(), server1.as_ref(), hz)),
        ..ServerReport::default()
    });
    Ok(report)
}

fn params(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}
