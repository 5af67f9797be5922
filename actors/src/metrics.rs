//! `Metrics`: the aggregator behind `/metrics` (Prometheus text format 0.0.4) and
//! `/api/analytics`. Per-request observations arrive as typed messages; per-push and
//! per-connection paths only touch atomics in [`HotCounters`] — no lock, no message.
//! Everything the health board knows (restarts, processed/failed, consumer lag, mail)
//! is rendered from it, so log, health and metric cannot drift apart.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use crate::health::{ActorStats, ActorStatus, HealthBoard};
use crate::ports::ActivityStore;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Observations that may wait in the actor's mailbox.
pub const MAILBOX: usize = 65_536;

/// A latency histogram updated with atomics only.
#[derive(Debug, Default)]
pub struct AtomicHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|le| secs <= *le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            value.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    fn snapshot(&self) -> Histogram {
        let mut histogram = Histogram::default();
        for (i, bucket) in self.buckets.iter().enumerate() {
            histogram.buckets[i] = bucket.load(Ordering::Relaxed);
        }
        histogram.count = self.count.load(Ordering::Relaxed);
        histogram.sum_secs = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        histogram
    }
}

/// A plain histogram, owned by the actor.
#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Non-cumulative counts per bucket; cumulated when rendered.
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum_secs: f64,
}

impl Histogram {
    fn observe(&mut self, value: Duration) {
        let secs = value.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|le| secs <= *le) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_secs += secs;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (le, count) in LATENCY_BUCKETS.iter().zip(self.buckets) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_secs);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Counters the hot paths update directly.
#[derive(Debug, Default)]
pub struct HotCounters {
    /// WebSocket sessions opened.
    pub connections_opened: AtomicU64,
    /// WebSocket sessions closed.
    pub connections_closed: AtomicU64,
    /// Notification frames written live to sessions.
    pub pushes: AtomicU64,
    /// Commit of a notification → its frame written to a session.
    pub push_latency: AtomicHistogram,
}

impl HotCounters {
    /// Sessions open right now.
    pub fn connections(&self) -> u64 {
        let opened = self.connections_opened.load(Ordering::Relaxed);
        opened.saturating_sub(self.connections_closed.load(Ordering::Relaxed))
    }
}

/// One HTTP request, observed by the middleware.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ObserveRequest {
    /// The matched route pattern (never the raw path: ids must not become labels).
    pub route: String,
    /// Response status.
    pub status: u16,
    /// Time to the response head.
    pub duration: Duration,
}

/// Asks for the Prometheus exposition.
#[derive(Message)]
#[rtype(result = "String")]
pub struct RenderPrometheus;

/// Asks for request rates.
#[derive(Message)]
#[rtype(result = "Qps")]
pub struct GetQps;

/// Requests per second.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Qps {
    /// During the last complete second.
    pub last_1s: f64,
    /// Averaged over the last 60 complete seconds.
    pub last_1m: f64,
}

/// Per-second request counts for the last minute, in a ring.
#[derive(Debug)]
struct SlidingWindow {
    /// (unix second, count) per slot; a slot is reused when its second is a minute old.
    slots: [(i64, u64); 61],
}

impl Default for SlidingWindow {
    fn default() -> Self {
        Self {
            slots: [(i64::MIN, 0); 61],
        }
    }
}

impl SlidingWindow {
    fn add(&mut self, second: i64) {
        let slot = &mut self.slots[second.rem_euclid(61) as usize];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += 1;
    }

    fn count(&self, second: i64) -> u64 {
        let slot = self.slots[second.rem_euclid(61) as usize];
        if slot.0 == second {
            slot.1
        } else {
            0
        }
    }

    fn qps(&self, now: i64) -> Qps {
        let last_1m: u64 = (1..=60).map(|ago| self.count(now - ago)).sum();
        Qps {
            last_1s: self.count(now - 1) as f64,
            last_1m: last_1m as f64 / 60.0,
        }
    }
}

/// How often the DAU/MAU gauges are re-read from the counters.
pub const ACTIVE_USERS_REFRESH: Duration = Duration::from_secs(5);

/// Where the DAU and MAU gauges come from: the counter store and the days each covers.
pub struct ActiveUsersSource {
    /// The counters.
    pub store: Arc<dyn ActivityStore>,
    /// The days of the current month window, today first (computed on each refresh).
    pub mau_days: fn(chrono::NaiveDate) -> Vec<chrono::NaiveDate>,
}

/// The metrics aggregator.
pub struct Metrics {
    hot: Arc<HotCounters>,
    board: HealthBoard,
    stats: Arc<ActorStats>,
    requests: HashMap<(String, u16), u64>,
    latency: HashMap<String, Histogram>,
    window: SlidingWindow,
    active_users: Option<Arc<ActiveUsersSource>>,
    /// Last DAU and MAU read, for the exposition.
    dau: Option<u64>,
    mau: Option<u64>,
}

impl Metrics {
    /// An aggregator over `hot` counters and the `board`.
    pub fn new(hot: Arc<HotCounters>, board: HealthBoard, stats: Arc<ActorStats>) -> Self {
        Self {
            hot,
            board,
            stats,
            requests: HashMap::new(),
            latency: HashMap::new(),
            window: SlidingWindow::default(),
            active_users: None,
            dau: None,
            mau: None,
        }
    }

    /// Also exposes DAU and MAU read from `source`.
    pub fn with_active_users(mut self, source: ActiveUsersSource) -> Self {
        self.active_users = Some(Arc::new(source));
        self
    }

    fn refresh_active_users(&mut self, ctx: &mut Context<Self>) {
        let Some(source) = self.active_users.clone() else {
            return;
        };
        ctx.spawn(
            async move {
                let today = chrono::Utc::now().date_naive();
                let dau = source.store.distinct(&[today]).await.ok();
                let mau = source.store.distinct(&(source.mau_days)(today)).await.ok();
                (dau, mau)
            }
            .into_actor(self)
            .map(|(dau, mau), act, _| {
                // Keep the last good value when the counters are briefly unreachable.
                act.dau = dau.or(act.dau);
                act.mau = mau.or(act.mau);
            }),
        );
    }

    fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let mut routes: Vec<_> = self.requests.iter().collect();
        routes.sort();
        header(
            &mut out,
            "herald_http_requests_total",
            "counter",
            "HTTP requests by route and status.",
        );
        for ((route, status), count) in routes {
            let _ = writeln!(
                out,
                "herald_http_requests_total{{route=\"{}\",status=\"{status}\"}} {count}",
                escape(route)
            );
        }
        header(
            &mut out,
            "herald_http_request_duration_seconds",
            "histogram",
            "Time from request to response head, by route.",
        );
        let mut latencies: Vec<_> = self.latency.iter().collect();
        latencies.sort_by(|a, b| a.0.cmp(b.0));
        for (route, histogram) in latencies {
            histogram.render(
                &mut out,
                "herald_http_request_duration_seconds",
                &format!("route=\"{}\"", escape(route)),
            );
        }

        header(
            &mut out,
            "herald_connections",
            "gauge",
            "Open WebSocket sessions.",
        );
        let _ = writeln!(out, "herald_connections {}", self.hot.connections());
        header(
            &mut out,
            "herald_connections_opened_total",
            "counter",
            "WebSocket sessions opened.",
        );
        let _ = writeln!(
            out,
            "herald_connections_opened_total {}",
            self.hot.connections_opened.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "herald_pushes_total",
            "counter",
            "Notification frames written live to sessions.",
        );
        let _ = writeln!(
            out,
            "herald_pushes_total {}",
            self.hot.pushes.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "herald_push_latency_seconds",
            "histogram",
            "From a notification's commit to its frame written to a session.",
        );
        self.hot
            .push_latency
            .snapshot()
            .render(&mut out, "herald_push_latency_seconds", "");

        let actors = self.board.snapshot();
        header(
            &mut out,
            "herald_actor_restarts_total",
            "counter",
            "Supervisor restarts per actor.",
        );
        for a in &actors {
            let _ = writeln!(
                out,
                "herald_actor_restarts_total{{actor=\"{}\"}} {}",
                escape(&a.name),
                a.restarts
            );
        }
        header(
            &mut out,
            "herald_actor_processed_total",
            "counter",
            "Items an actor handled.",
        );
        for a in &actors {
            let _ = writeln!(
                out,
                "herald_actor_processed_total{{actor=\"{}\"}} {}",
                escape(&a.name),
                a.processed
            );
        }
        header(
            &mut out,
            "herald_actor_failed_total",
            "counter",
            "Items an actor failed to handle.",
        );
        for a in &actors {
            let _ = writeln!(
                out,
                "herald_actor_failed_total{{actor=\"{}\"}} {}",
                escape(&a.name),
                a.failed
            );
        }
        header(
            &mut out,
            "herald_actor_up",
            "gauge",
            "1 when the actor is running or degraded.",
        );
        for a in &actors {
            let up = u8::from(matches!(
                a.status,
                ActorStatus::Running | ActorStatus::Degraded
            ));
            let _ = writeln!(out, "herald_actor_up{{actor=\"{}\"}} {up}", escape(&a.name));
        }
        header(
            &mut out,
            "herald_consumer_lag",
            "gauge",
            "Messages waiting behind each consumer.",
        );
        for a in actors.iter().filter(|a| a.kind == "Consumer") {
            if let (Some(topic), Some(lag)) = (
                a.details.get("topic").and_then(|t| t.as_str()),
                a.details.get("lag"),
            ) {
                let _ = writeln!(
                    out,
                    "herald_consumer_lag{{topic=\"{}\"}} {lag}",
                    escape(topic)
                );
            }
        }
        if let Some(dau) = self.dau {
            header(
                &mut out,
                "herald_dau",
                "gauge",
                "Distinct users active today (UTC), HyperLogLog estimate.",
            );
            let _ = writeln!(out, "herald_dau {dau}");
        }
        if let Some(mau) = self.mau {
            header(
                &mut out,
                "herald_mau",
                "gauge",
                "Distinct users active in the last 30 days, HyperLogLog estimate.",
            );
            let _ = writeln!(out, "herald_mau {mau}");
        }
        if let Some(mailer) = actors.iter().find(|a| a.kind == "Mailer") {
            header(
                &mut out,
                "herald_emails_sent_total",
                "counter",
                "Emails the transport accepted.",
            );
            let _ = writeln!(out, "herald_emails_sent_total {}", mailer.processed);
            header(
                &mut out,
                "herald_emails_failed_total",
                "counter",
                "Failed email attempts.",
            );
            let _ = writeln!(out, "herald_emails_failed_total {}", mailer.failed);
            header(
                &mut out,
                "herald_emails_dead_lettered_total",
                "counter",
                "Emails given up on.",
            );
            let dead = mailer
                .details
                .get("dead_lettered")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            let _ = writeln!(out, "herald_emails_dead_lettered_total {dead}");
            let state = mailer
                .details
                .get("breaker")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("closed");
            header(
                &mut out,
                "herald_breaker_state",
                "gauge",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
            );
            let gauge = match state {
                "open" => 1,
                "half_open" => 2,
                _ => 0,
            };
            let _ = writeln!(out, "herald_breaker_state{{breaker=\"mail\"}} {gauge}");
            header(
                &mut out,
                "herald_breaker_transitions_total",
                "counter",
                "Circuit breaker state changes, by the state entered.",
            );
            for to in ["open", "half_open", "closed"] {
                let n = mailer
                    .details
                    .get(&format!("breaker_to_{to}"))
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0);
                let _ = writeln!(
                    out,
                    "herald_breaker_transitions_total{{breaker=\"mail\",to=\"{to}\"}} {n}"
                );
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (text format 0.0.4: backslash, double quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Actor for Metrics {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Observations arrive with `try_send`; room for bursts before any is dropped.
        ctx.set_mailbox_capacity(MAILBOX);
        self.stats.set_status(ActorStatus::Running);
        self.stats.heartbeat();
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            act.stats.heartbeat();
            act.stats.set_detail("routes", act.latency.len());
        });
        self.refresh_active_users(ctx);
        ctx.run_interval(ACTIVE_USERS_REFRESH, |act, ctx| {
            act.refresh_active_users(ctx)
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stats.set_status(ActorStatus::Stopped);
    }
}

impl Supervised for Metrics {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.stats.restarted();
    }
}

impl Handler<ObserveRequest> for Metrics {
    type Result = ();

    fn handle(&mut self, msg: ObserveRequest, _: &mut Self::Context) {
        self.stats.processed(1);
        self.window.add(chrono::Utc::now().timestamp());
        self.latency
            .entry(msg.route.clone())
            .or_default()
            .observe(msg.duration);
        *self.requests.entry((msg.route, msg.status)).or_default() += 1;
    }
}

impl Handler<RenderPrometheus> for Metrics {
    type Result = String;

    fn handle(&mut self, _: RenderPrometheus, _: &mut Self::Context) -> String {
        self.render()
    }
}

impl Handler<GetQps> for Metrics {
    type Result = MessageResult<GetQps>;

    fn handle(&mut self, _: GetQps, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.window.qps(chrono::Utc::now().timestamp()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_reports_the_last_second_and_the_minute_average() {
        let mut window = SlidingWindow::default();
        for second in 1000..1060 {
            for _ in 0..3 {
                window.add(second);
            }
        }
        window.add(1060);
        let qps = window.qps(1060);
        assert_eq!(qps.last_1s, 3.0);
        assert_eq!(qps.last_1m, 3.0);
        // A minute later, the old counts are gone.
        assert_eq!(
            window.qps(1200),
            Qps {
                last_1s: 0.0,
                last_1m: 0.0
            }
        );
    }

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "route=\"/a\"");
        assert!(out.contains("x_bucket{route=\"/a\",le=\"0.0005\"} 1\n"));
        assert!(out.contains("x_bucket{route=\"/a\",le=\"0.005\"} 2\n"));
        assert!(out.contains("x_bucket{route=\"/a\",le=\"10\"} 2\n"));
        assert!(out.contains("x_bucket{route=\"/a\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count{route=\"/a\"} 3\n"));
    }
}
