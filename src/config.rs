//! Typed configuration. Layers, lowest first: built-in defaults, `config.toml` (or
//! `--config PATH`), environment variables `HERALD__SECTION__KEY`, command-line flags.
//! Unknown keys are errors, so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use herald_actors::backoff::Backoff;
use herald_actors::breaker::BreakerConfig;
use herald_actors::mailer::MailerConfig;
use herald_actors::session::SessionConfig;
use herald_actors::supervisor::RestartPolicy;

use crate::http::rate_limit::{Limiter, Network, Quota, RateLimits};

/// Errors while loading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, the environment or a flag did not fit the schema.
    #[error("invalid configuration")]
    Invalid(#[from] config::ConfigError),
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Value(String),
}

/// Which backends run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(try_from = "String")]
pub enum Mode {
    /// SQLite, in-process bus, local registry, `.eml` files: no external service.
    #[default]
    Embedded,
    /// PostgreSQL, Kafka, Redis and SMTP.
    Production,
}

/// The choice in `choices` named `value`; otherwise an error naming every valid one
/// (the configuration library's own message does not).
///
/// # Errors
/// When `value` names none of `choices`.
pub fn choose<T: Copy>(what: &str, value: &str, choices: &[(&str, T)]) -> Result<T, String> {
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, choice)| *choice)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("`{n}`")).collect();
            format!("unknown {what} `{value}`: expected {}", names.join(" or "))
        })
}

impl TryFrom<String> for Mode {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        choose(
            "mode",
            &value,
            &[
                ("embedded", Self::Embedded),
                ("production", Self::Production),
            ],
        )
    }
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        choose(
            "log format",
            &value,
            &[
                ("auto", Self::Auto),
                ("text", Self::Text),
                ("json", Self::Json),
            ],
        )
    }
}

/// All settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Embedded or production backends.
    pub mode: Mode,
    /// HTTP listener and data directory.
    pub server: ServerSettings,
    /// Tokens.
    pub auth: AuthSettings,
    /// WebSocket sessions.
    pub websocket: WebSocketSettings,
    /// Transactional outbox relay.
    pub outbox: OutboxSettings,
    /// Outgoing mail.
    pub mail: MailSettings,
    /// Logging.
    pub log: LogSettings,
    /// Redis, for the cluster-wide registry mirror.
    pub redis: RedisSettings,
    /// PostgreSQL store (production).
    pub postgres: PostgresSettings,
    /// Kafka bus (production).
    pub kafka: KafkaSettings,
    /// SMTP relay (production).
    pub smtp: SmtpSettings,
    /// Notification history.
    pub history: HistorySettings,
    /// Actor restarts.
    pub supervisor: SupervisorSettings,
    /// Per-client-IP request limits.
    pub rate_limit: RateLimitSettings,
    /// Graceful shutdown on SIGTERM / SIGINT.
    pub shutdown: ShutdownSettings,
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    /// Sessions are closed with 1012 at random moments within this window, so their
    /// clients do not reconnect in one storm, seconds.
    pub drain_window_secs: u64,
    /// The process exits within this many seconds of the signal, drained or not.
    pub timeout_secs: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_window_secs: 10,
            timeout_secs: 30,
        }
    }
}

/// `[rate_limit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// Turns every limit off (e.g. behind a gateway that limits already).
    pub enabled: bool,
    /// Requests a minute per client IP to any API route (probes and `/metrics` are not
    /// limited); a client may burst up to the whole quota.
    pub api_per_minute: u32,
    /// Signups a minute per client IP.
    pub signup_per_minute: u32,
    /// Login attempts a minute per client IP.
    pub login_per_minute: u32,
    /// New WebSocket connections a minute per client IP.
    pub ws_connects_per_minute: u32,
    /// Client IPs remembered per policy; memory stays bounded under a flood of
    /// distinct addresses.
    pub max_tracked_ips: usize,
    /// Proxies (addresses or CIDR networks) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            api_per_minute: 100,
            signup_per_minute: 10,
            login_per_minute: 20,
            ws_connects_per_minute: 60,
            max_tracked_ips: 100_000,
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[supervisor]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorSettings {
    /// Restarts an actor may have within `window_secs` before it counts as failed
    /// (`/readyz` then answers 503).
    pub max_restarts: usize,
    /// The sliding window of the restart budget, seconds.
    pub window_secs: u64,
    /// First restart delay, milliseconds; it doubles per restart within the window
    /// (with full jitter) up to `max_delay_ms`.
    pub base_delay_ms: u64,
    /// Longest restart delay, milliseconds.
    pub max_delay_ms: u64,
    /// How long a failed actor waits before it is tried again, seconds.
    pub cooldown_secs: u64,
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        let policy = RestartPolicy::default();
        Self {
            max_restarts: policy.max_restarts,
            window_secs: policy.window.as_secs(),
            base_delay_ms: policy.backoff.base.as_millis() as u64,
            max_delay_ms: policy.backoff.cap.as_millis() as u64,
            cooldown_secs: policy.cooldown.as_secs(),
        }
    }
}

/// `[history]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySettings {
    /// Days a notification stays in history (and can be replayed by `resume`).
    pub retention_days: u32,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self { retention_days: 7 }
    }
}

/// `[postgres]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    /// `postgres://user:password@host:port/database`.
    pub url: Option<SecretString>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Apply pending migrations when the node starts (else run `herald migrate`).
    pub migrate_on_start: bool,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 16,
            migrate_on_start: true,
        }
    }
}

/// Default `kafka.fetch_wait_max_ms`: low, because a push engine is judged by its
/// latency and the broker this project tests on holds each fetch for the full wait
/// (500 ms, librdkafka's default, gave 2 s at p99 there).
pub const DEFAULT_FETCH_WAIT_MAX_MS: u32 = 10;

/// `[kafka]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]`.
    pub brokers: Option<String>,
    /// Create missing topics at start-up.
    pub create_topics: bool,
    /// Partitions of topics created at start-up.
    pub partitions: i32,
    /// Replication factor of topics created at start-up.
    pub replication_factor: i32,
    /// Producer batching delay (`linger.ms`).
    pub linger_ms: u32,
    /// Longest a consumer's fetch may wait at the broker (`fetch.wait.max.ms`).
    /// Apache Kafka answers as soon as data arrives, so there it only paces idle
    /// consumers; brokers that hold every fetch for the full wait (tansu) add up to
    /// this much to each push.
    pub fetch_wait_max_ms: u32,
    /// Prepended to every topic name and consumer group id (several deployments on
    /// one cluster).
    pub topic_prefix: String,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: None,
            create_topics: true,
            partitions: 6,
            replication_factor: 1,
            linger_ms: 1,
            fetch_wait_max_ms: DEFAULT_FETCH_WAIT_MAX_MS,
            topic_prefix: String::new(),
        }
    }
}

/// `[smtp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSettings {
    /// Relay host.
    pub host: Option<String>,
    /// Relay port.
    pub port: u16,
    /// `none`, `starttls` or `tls`.
    pub tls: crate::backends::mail::smtp::TlsMode,
    /// Login, when the relay needs one.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<SecretString>,
    /// Deadline of one send (connecting through the end of `DATA`), seconds.
    pub timeout_secs: u64,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        Self {
            host: None,
            port: 587,
            tls: crate::backends::mail::smtp::TlsMode::Starttls,
            username: None,
            password: None,
            timeout_secs: 10,
        }
    }
}

/// `[redis]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://host:port/db`. When set, every session is mirrored there (any mode);
    /// production mode requires it.
    pub url: Option<String>,
    /// Seconds a node's keys outlive it without heartbeats (refreshed every third).
    pub ttl_secs: u64,
    /// Prefix of the shared DAU/MAU keys (`{prefix}:dau:{yyyy-mm-dd}`): deployments
    /// sharing one Redis count apart when their prefixes differ.
    pub counter_prefix: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            ttl_secs: 30,
            counter_prefix: "herald".to_owned(),
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on; port 0 picks a free one.
    pub bind: String,
    /// Where embedded mode keeps its database, secret and mail.
    pub data_dir: PathBuf,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers), bytes; over it a request gets
    /// 431. actix itself refuses heads over 128 KiB.
    pub max_header_bytes: usize,
    /// Seconds a request body may take to arrive before the request gets 408.
    pub body_timeout_secs: u64,
    /// HTTP worker threads (0: one per core).
    pub workers: usize,
    /// This node's name in the cluster (Redis keys, consumer groups). Unset: a fresh
    /// random id at every start.
    pub node_id: Option<String>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("data"),
            max_body_bytes: 256 * 1024,
            max_header_bytes: 16 * 1024,
            body_timeout_secs: 30,
            workers: 0,
            node_id: None,
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// HMAC secret for tokens (at least 32 bytes). Embedded mode generates one under
    /// the data directory when unset; production mode requires it.
    pub jwt_secret: Option<SecretString>,
    /// Lifetime of login tokens.
    pub token_ttl_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            token_ttl_secs: 3600,
        }
    }
}

/// `[websocket]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketSettings {
    /// Seconds between server pings.
    pub heartbeat_interval_secs: u64,
    /// Seconds of client silence before the session is closed.
    pub client_timeout_secs: u64,
    /// Largest client frame; larger closes with 1009.
    pub max_frame_bytes: usize,
    /// Pushes queued per session before it counts as a slow consumer (close 1013).
    pub outbound_queue: usize,
    /// History rows read per query while a session resumes.
    pub replay_page: u32,
    /// Sessions one user may hold on a node; opening one more closes their oldest
    /// with 4008.
    pub max_sessions_per_user: usize,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval_secs: 15,
            client_timeout_secs: 45,
            max_frame_bytes: 64 * 1024,
            outbound_queue: 1024,
            replay_page: 500,
            max_sessions_per_user: 16,
        }
    }
}

/// `[outbox]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxSettings {
    /// Whether this node runs the relay. Nodes that only serve the API may leave
    /// publishing to others.
    pub relay: bool,
    /// How often the relay looks for events besides being woken by writes.
    pub poll_interval_ms: u64,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            relay: true,
            poll_interval_ms: 1000,
        }
    }
}

/// `[mail]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailSettings {
    /// Sender address.
    pub from: String,
    /// How often the queue is checked for retries that came due.
    pub poll_interval_ms: u64,
    /// Attempts before a mail is dead-lettered.
    pub max_attempts: u32,
    /// Backoff base.
    pub backoff_base_ms: u64,
    /// Backoff cap.
    pub backoff_cap_ms: u64,
    /// The circuit breaker around the transport.
    pub breaker: BreakerSettings,
}

/// `[mail.breaker]`: resilience4j-style circuit breaker semantics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Calls in the count-based sliding window.
    pub window: usize,
    /// Calls recorded before a failure or slow-call rate is computed.
    pub min_calls: usize,
    /// Failure rate that opens the breaker, percent.
    pub failure_rate_percent: u8,
    /// Slow-call rate that opens the breaker, percent.
    pub slow_rate_percent: u8,
    /// A send slower than this counts as slow, milliseconds.
    pub slow_call_ms: u64,
    /// How long the breaker stays open, seconds.
    pub open_secs: u64,
    /// Trial sends while half-open: all succeed → closed, any fails → open.
    pub half_open_calls: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        let d = BreakerConfig::default();
        Self {
            window: d.window,
            min_calls: d.min_calls,
            failure_rate_percent: (d.failure_rate * 100.0) as u8,
            slow_rate_percent: (d.slow_rate * 100.0) as u8,
            slow_call_ms: d.slow_call.as_millis() as u64,
            open_secs: d.open_for.as_secs(),
            half_open_calls: d.half_open_calls,
        }
    }
}

impl Default for MailSettings {
    fn default() -> Self {
        Self {
            from: "Herald <herald@localhost>".into(),
            poll_interval_ms: 1000,
            max_attempts: 8,
            backoff_base_ms: 1000,
            backoff_cap_ms: 300_000,
            breaker: BreakerSettings::default(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(try_from = "String")]
pub enum LogFormat {
    /// JSON in production mode, text in embedded mode.
    #[default]
    Auto,
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `tracing` filter, e.g. `info` or `herald=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

/// Flag values that override file and environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--bind`.
    pub bind: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
}

impl Settings {
    /// Loads settings from `path` (required when given; `config.toml` in the working
    /// directory is used if present otherwise), the environment and `overrides`.
    ///
    /// # Errors
    /// A missing explicit file, malformed TOML, unknown keys or bad values.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let file = match path {
            Some(p) => config::File::from(p).required(true),
            None => config::File::with_name("config.toml").required(false),
        };
        let mut builder = config::Config::builder().add_source(file).add_source(
            config::Environment::with_prefix("HERALD")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        if let Some(bind) = &overrides.bind {
            builder = builder.set_override("server.bind", bind.as_str())?;
        }
        if let Some(dir) = &overrides.data_dir {
            builder = builder.set_override("server.data_dir", dir.to_string_lossy().as_ref())?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Value(m.to_owned()));
        if self.websocket.client_timeout_secs <= self.websocket.heartbeat_interval_secs {
            return bad(
                "websocket.client_timeout_secs must exceed websocket.heartbeat_interval_secs",
            );
        }
        if self.websocket.outbound_queue == 0 || self.websocket.max_frame_bytes < 128 {
            return bad("websocket.outbound_queue must be positive and websocket.max_frame_bytes at least 128");
        }
        if self.mode == Mode::Production {
            let missing: Vec<&str> = [
                ("auth.jwt_secret", self.auth.jwt_secret.is_none()),
                ("postgres.url", self.postgres.url.is_none()),
                ("kafka.brokers", self.kafka.brokers.is_none()),
                ("redis.url", self.redis.url.is_none()),
                ("smtp.host", self.smtp.host.is_none()),
            ]
            .into_iter()
            .filter_map(|(key, absent)| absent.then_some(key))
            .collect();
            if !missing.is_empty() {
                return Err(ConfigError::Value(format!(
                    "production mode needs {} (set them in the config file or as HERALD__SECTION__KEY)",
                    missing.join(", ")
                )));
            }
        }
        if self.history.retention_days == 0 {
            return bad("history.retention_days must be at least 1");
        }
        if self.redis.ttl_secs < 3 {
            return bad("redis.ttl_secs must be at least 3");
        }
        if self.server.node_id.as_deref().is_some_and(|id| {
            id.is_empty()
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }) {
            return bad("server.node_id may contain only letters, digits, - and _");
        }
        if self.server.body_timeout_secs == 0 {
            return bad("server.body_timeout_secs must be positive");
        }
        if self.auth.token_ttl_secs == 0 {
            return bad("auth.token_ttl_secs must be positive");
        }
        if self.mail.max_attempts == 0 {
            return bad("mail.max_attempts must be positive");
        }
        if self.mail.from.parse::<lettre::message::Mailbox>().is_err() {
            return bad("mail.from must be an address like `Herald <herald@example.com>`");
        }
        Ok(())
    }

    /// Session tuning for the actors.
    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            heartbeat_interval: Duration::from_secs(self.websocket.heartbeat_interval_secs),
            client_timeout: Duration::from_secs(self.websocket.client_timeout_secs),
            max_frame_bytes: self.websocket.max_frame_bytes,
            outbound_queue: self.websocket.outbound_queue,
            replay_page: self.websocket.replay_page.clamp(1, 10_000),
        }
    }

    /// The rate limiters, or `None` when limiting is off.
    ///
    /// # Errors
    /// A trusted proxy that is not an address or CIDR network.
    pub fn rate_limits(&self) -> Result<Option<RateLimits>, ConfigError> {
        let r = &self.rate_limit;
        if !r.enabled {
            return Ok(None);
        }
        let trusted_proxies = r
            .trusted_proxies
            .iter()
            .map(|p| p.parse::<Network>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::Value(format!("rate_limit.trusted_proxies: {e}")))?;
        let limiter =
            |name, per_minute| Limiter::new(name, Quota::per_minute(per_minute), r.max_tracked_ips);
        Ok(Some(RateLimits {
            api: limiter("api", r.api_per_minute),
            signup: limiter("signup", r.signup_per_minute),
            login: limiter("login", r.login_per_minute),
            ws: limiter("ws", r.ws_connects_per_minute),
            trusted_proxies,
        }))
    }

    /// The actors' restart policy.
    pub fn restart_policy(&self) -> RestartPolicy {
        let s = &self.supervisor;
        RestartPolicy {
            max_restarts: s.max_restarts,
            window: Duration::from_secs(s.window_secs),
            backoff: Backoff {
                base: Duration::from_millis(s.base_delay_ms),
                cap: Duration::from_millis(s.max_delay_ms.max(s.base_delay_ms)),
            },
            cooldown: Duration::from_secs(s.cooldown_secs),
        }
    }

    /// Mailer tuning for the actors.
    pub fn mailer_config(&self) -> MailerConfig {
        MailerConfig {
            poll_interval: Duration::from_millis(self.mail.poll_interval_ms.max(10)),
            backoff: Backoff {
                base: Duration::from_millis(self.mail.backoff_base_ms),
                cap: Duration::from_millis(self.mail.backoff_cap_ms),
            },
            max_attempts: self.mail.max_attempts,
            breaker: {
                let b = &self.mail.breaker;
                BreakerConfig {
                    window: b.window.max(1),
                    min_calls: b.min_calls.clamp(1, b.window.max(1)),
                    failure_rate: f64::from(b.failure_rate_percent.min(100)) / 100.0,
                    slow_rate: f64::from(b.slow_rate_percent.min(100)) / 100.0,
                    slow_call: Duration::from_millis(b.slow_call_ms),
                    open_for: Duration::from_secs(b.open_secs),
                    half_open_calls: b.half_open_calls.max(1),
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_loads_and_keeps_kafka_fetches_short() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let settings = Settings::load(Some(&shipped), &Overrides::default())
            .expect("the shipped config.toml loads");
        assert_eq!(settings.kafka.fetch_wait_max_ms, DEFAULT_FETCH_WAIT_MAX_MS);
        assert_eq!(Settings::default().kafka.fetch_wait_max_ms, 10);
    }
}
