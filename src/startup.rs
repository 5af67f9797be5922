//! Wiring: opens the backends, starts the supervised actors, and binds the HTTP server.
//! `Application::build` binds its own listener, so tests can ask for port 0 and read
//! the real port back.

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Addr, Supervisor};
use actix_web::dev::Server;
use actix_web::middleware::{from_fn, ErrorHandlers};
use actix_web::{web, App, HttpServer};
use anyhow::{bail, Context};
use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};
use tracing::{info, warn};

use herald_actors::activity::ActivityTracker;
use herald_actors::analytics::ActivityHandler;
use herald_actors::backoff::Backoff;
use herald_actors::consumer::{Consumer, ConsumerConfig, TopicHandler};
use herald_actors::delivery::DeliveryHandler;
use herald_actors::domain::Topic;
use herald_actors::health::HealthBoard;
use herald_actors::janitor::Janitor;
use herald_actors::mailer::Mailer;
use herald_actors::messages::{CountSessions, Drain, Flush, Nudge, StopConsuming};
use herald_actors::metrics::{ActiveUsersSource, HotCounters, Metrics};
use herald_actors::outbox_relay::OutboxRelay;
use herald_actors::ports::{ActivityStore, Bus, MailTransport, RegistryMirror, Store};
use herald_actors::registry::{Mirroring, Registry};
use herald_actors::welcome::UserCreatedHandler;
use herald_actors::writer::NotificationWriter;

use crate::auth::jwt::{self, TokenService};
use crate::backends::analytics::mau_days;
use crate::backends::analytics::redis::RedisActivity;
use crate::backends::analytics::sqlite::SqliteActivity;
use crate::backends::bus::kafka::{KafkaBus, KafkaSettings};
use crate::backends::bus::sqlite::SqliteBus;
use crate::backends::mail::file::FileMailTransport;
use crate::backends::mail::smtp::{SmtpMailTransport, SmtpSettings};
use crate::backends::registry::redis::RedisMirror;
use crate::backends::store::postgres::{self, PostgresStore};
use crate::backends::store::sqlite::{SqliteDb, SqliteStore};
use crate::config::{Mode, Settings};
use crate::http::problem::{normalize_error, ApiError};
use crate::http::{self, idempotency, AppState};

/// Database file inside the data directory.
pub const DATABASE_FILE: &str = "herald.db";
/// Mail directory inside the data directory.
pub const MAIL_DIR: &str = "outbox";
/// Consumer group that handles `user.created` (welcome notification and email).
pub const WELCOME_GROUP: &str = "welcome";
/// Consumer group that pushes `notifications` to this node's sessions. It starts at
/// the end of the topic the first time: older notifications reach clients through
/// history, not as a flood of stale pushes.
pub const DELIVERY_GROUP: &str = "delivery";

/// Consumer group that counts `user.activity` into DAU/MAU.
pub const ACTIVITY_GROUP: &str = "analytics-activity";
/// Consumer group that counts `api.hit` into DAU/MAU: its own group, so each group's
/// members subscribe to one topic (simpler rebalances, and tansu assigns them reliably).
pub const API_HIT_GROUP: &str = "analytics-api-hit";

/// How often expired idempotency keys are pruned.
pub const JANITOR_INTERVAL: Duration = Duration::from_secs(3600);

/// Wraps a topic's handler: see [`Hooks::wrap_handler`].
pub type HandlerWrapper =
    Arc<dyn Fn(Topic, Arc<dyn TopicHandler>) -> Arc<dyn TopicHandler> + Send + Sync>;

/// Ways to alter a node for fault-injection tests and for embedding Herald in another
/// program. The default changes nothing.
#[derive(Default, Clone)]
pub struct Hooks {
    /// Wraps each topic's handler, e.g. to make it fail or panic on chosen messages.
    pub wrap_handler: Option<HandlerWrapper>,
}

/// A running node.
pub struct Application {
    port: u16,
    server: Server,
    board: HealthBoard,
    bus: Arc<dyn Bus>,
    drain: Drainer,
}

/// What a graceful shutdown needs to reach.
struct Drainer {
    draining: Arc<AtomicBool>,
    registry: Addr<Registry>,
    relay: Option<Addr<OutboxRelay>>,
    consumers: Vec<Addr<herald_actors::consumer::Consumer>>,
    /// Answered publishes whose notifications may still be on their way to the bus.
    writer: Addr<NotificationWriter>,
    store: Arc<dyn Store>,
    window: Duration,
    timeout: Duration,
}

impl Drainer {
    /// Fails readiness and refuses new sessions, closes every session with 1012 over
    /// the jittered window, publishes what the outbox still holds, then stops the
    /// consumers (they commit and leave their groups). Mail needs nothing: its queue is
    /// durable and the next node sends it.
    async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let closing = self
            .registry
            .send(Drain {
                window: self.window,
            })
            .await
            .unwrap_or(0);
        info!(
            sessions = closing,
            window_secs = self.window.as_secs(),
            "draining: closing sessions with 1012"
        );
        let until = Instant::now() + self.window + Duration::from_secs(1);
        while Instant::now() < until {
            match self.registry.send(CountSessions).await {
                Ok(0) | Err(_) => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        if let Some(relay) = &self.relay {
            relay.do_send(Nudge);
            loop {
                match self.store.pending_outbox(1).await {
                    Ok(pending) if pending.is_empty() => break,
                    Ok(_) => {
                        relay.do_send(Nudge);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(err) => {
                        warn!(error = %err, "outbox not flushed; it stays durable for the next start");
                        break;
                    }
                }
            }
        }
        // Last: the outbox flush above may still have fed them. Each commits what it
        // handled and leaves its group, so other nodes take over at once.
        for consumer in &self.consumers {
            let _ = consumer.send(StopConsuming).await;
        }
        info!("drained");
    }
}

/// Makes the kernel abort a connection whose peer has not taken data for `limit`
/// (`TCP_USER_TIMEOUT`, which also bounds zero-window probing). A WebSocket client that
/// stops reading fills its socket; actix then stops driving the session, so neither its
/// close (1013) nor its idle timer can run — the kernel is what still can end it.
fn abort_unacknowledged_after(conn: &dyn std::any::Any, limit: Duration) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Err(err) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(limit)) {
            warn!(error = %err, "TCP_USER_TIMEOUT not set");
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
    let _ = (conn, limit);
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Opens the embedded database under `data_dir`, creating the directory and applying
/// migrations.
///
/// # Errors
/// When the directory or the database cannot be opened.
pub fn open_embedded_db(data_dir: &Path) -> anyhow::Result<SqliteDb> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("while creating data dir {}", data_dir.display()))?;
    SqliteDb::open(&data_dir.join(DATABASE_FILE))
        .with_context(|| format!("while opening {}", data_dir.join(DATABASE_FILE).display()))
}

/// The token secret: configured, or (embedded mode only) generated under the data dir.
///
/// # Errors
/// In production mode without `auth.jwt_secret`, or when the secret file fails.
pub fn token_secret(settings: &Settings) -> anyhow::Result<SecretString> {
    match (&settings.auth.jwt_secret, settings.mode) {
        (Some(secret), _) => Ok(secret.clone()),
        (None, Mode::Embedded) => {
            std::fs::create_dir_all(&settings.server.data_dir).with_context(|| {
                format!(
                    "while creating data dir {}",
                    settings.server.data_dir.display()
                )
            })?;
            Ok(jwt::load_or_create_secret(&settings.server.data_dir)?)
        }
        (None, Mode::Production) => bail!(
            "auth.jwt_secret is required in production mode: set it in the config file or \
             HERALD__AUTH__JWT_SECRET (at least {} bytes), identical on every node",
            jwt::MIN_SECRET_LEN
        ),
    }
}

/// The adapters a node runs on, chosen by `mode`.
struct Backends {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    transport: Arc<dyn MailTransport>,
    /// The consumer group that pushes notifications to this node's sessions.
    delivery_group: String,
    /// The Kafka bus, for readiness checks (production only).
    kafka: Option<Arc<KafkaBus>>,
    /// The embedded database (embedded only), home of the DAU/MAU sketches without Redis.
    embedded_db: Option<Arc<SqliteDb>>,
}

impl Backends {
    async fn open(settings: &Settings, node_id: &str) -> anyhow::Result<Self> {
        let from: Mailbox = settings
            .mail
            .from
            .parse()
            .context("while parsing mail.from")?;
        match settings.mode {
            Mode::Embedded => {
                let data_dir = &settings.server.data_dir;
                let db = Arc::new(open_embedded_db(data_dir)?);
                Ok(Self {
                    store: Arc::new(SqliteStore::new(Arc::clone(&db))),
                    // Notifications are durable in the store before they are
                    // published; their topic needs no second log.
                    bus: Arc::new(
                        SqliteBus::new(Arc::clone(&db), &[DELIVERY_GROUP])
                            .keep_in_memory(&[Topic::Notifications]),
                    ),
                    embedded_db: Some(db),
                    // A configured relay is used in embedded mode too.
                    transport: if settings.smtp.host.is_some() {
                        smtp_transport(settings, from)?
                    } else {
                        Arc::new(
                            FileMailTransport::new(&data_dir.join(MAIL_DIR), from)
                                .context("while creating the mail directory")?,
                        )
                    },
                    delivery_group: DELIVERY_GROUP.to_owned(),
                    kafka: None,
                })
            }
            Mode::Production => {
                let store = open_postgres(settings).await?;
                // Every node pushes to its own sessions, so every node needs every
                // notification: one delivery group per node.
                let delivery_group = format!("{DELIVERY_GROUP}-{node_id}");
                let kafka = Arc::new(
                    KafkaBus::new(
                        KafkaSettings {
                            brokers: settings.kafka.brokers.clone().unwrap_or_default(),
                            partitions: settings.kafka.partitions,
                            replication_factor: settings.kafka.replication_factor,
                            linger_ms: settings.kafka.linger_ms,
                            fetch_wait_max_ms: settings.kafka.fetch_wait_max_ms,
                            topic_prefix: settings.kafka.topic_prefix.clone(),
                        },
                        &[delivery_group.as_str()],
                    )
                    .context("while configuring kafka")?,
                );
                if settings.kafka.create_topics {
                    kafka
                        .create_topics()
                        .await
                        .context("while creating kafka topics")?;
                }
                Ok(Self {
                    store: Arc::new(store),
                    bus: Arc::clone(&kafka) as Arc<dyn Bus>,
                    transport: smtp_transport(settings, from)?,
                    delivery_group,
                    kafka: Some(kafka),
                    embedded_db: None,
                })
            }
        }
    }
}

/// The SMTP transport of `[smtp]`.
fn smtp_transport(settings: &Settings, from: Mailbox) -> anyhow::Result<Arc<dyn MailTransport>> {
    let smtp = &settings.smtp;
    let transport = SmtpMailTransport::new(
        &SmtpSettings {
            host: smtp.host.clone().unwrap_or_default(),
            port: smtp.port,
            tls: smtp.tls,
            username: smtp.username.clone(),
            password: smtp.password.clone(),
            timeout: Duration::from_secs(smtp.timeout_secs),
        },
        from,
    )
    .context("while configuring smtp")?;
    Ok(Arc::new(transport))
}

/// Applies PostgreSQL migrations not yet applied (`herald migrate`); returns how many.
///
/// # Errors
/// When PostgreSQL is unreachable or a migration fails.
pub async fn migrate_postgres(settings: &Settings) -> anyhow::Result<usize> {
    let url = settings
        .postgres
        .url
        .as_ref()
        .context("postgres.url is not set")?;
    let pool = postgres::pool(url.expose_secret(), 1)?;
    postgres::migrate(&pool)
        .await
        .context("while migrating postgres")
}

/// Opens the PostgreSQL store, migrating it when configured to.
///
/// # Errors
/// When PostgreSQL is unreachable or a migration fails.
pub async fn open_postgres(settings: &Settings) -> anyhow::Result<PostgresStore> {
    let url = settings
        .postgres
        .url
        .as_ref()
        .context("postgres.url is not set")?;
    let pool = postgres::pool(url.expose_secret(), settings.postgres.pool_size)?;
    if settings.postgres.migrate_on_start {
        let applied = postgres::migrate(&pool)
            .await
            .context("while migrating postgres")?;
        if applied > 0 {
            info!(applied, "postgres migrations applied");
        }
    }
    Ok(PostgresStore::new(pool))
}

impl Application {
    /// Builds and starts a node; the HTTP server runs once [`Self::run_until_stopped`]
    /// is awaited. Must be called inside an actix system.
    ///
    /// # Errors
    /// Bad configuration, an unreachable backend, or a port that cannot be bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with(settings, Hooks::default()).await
    }

    /// [`Self::build`] with `hooks` applied.
    ///
    /// # Errors
    /// As [`Self::build`].
    pub async fn build_with(settings: Settings, hooks: Hooks) -> anyhow::Result<Self> {
        // Bind first: a port in use is reported before any data is touched or any
        // actor started.
        let listener = TcpListener::bind(&settings.server.bind)
            .with_context(|| format!("while binding {}", settings.server.bind))?;
        let port = listener.local_addr()?.port();
        let tokens = TokenService::new(&token_secret(&settings)?)?;
        let data_dir = settings.server.data_dir.clone();
        let node_id = settings
            .server
            .node_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let redis = match &settings.redis.url {
            Some(url) => Some(Arc::new(
                RedisMirror::new(
                    url,
                    node_id.clone(),
                    Duration::from_secs(settings.redis.ttl_secs),
                )
                .context("while configuring redis")?,
            )),
            None => None,
        };

        let backends = Backends::open(&settings, &node_id).await?;
        let (store, bus, transport) = (
            Arc::clone(&backends.store),
            Arc::clone(&backends.bus),
            Arc::clone(&backends.transport),
        );
        let delivery_group = backends.delivery_group.clone();
        let activity: Arc<dyn ActivityStore> = match (&redis, &backends.embedded_db) {
            (Some(redis), _) => Arc::new(RedisActivity::new(
                redis.pool(),
                settings.redis.counter_prefix.clone(),
            )),
            (None, Some(db)) => Arc::new(SqliteActivity::new(Arc::clone(db))),
            (None, None) => bail!("production mode needs redis.url for the DAU/MAU counters"),
        };

        let board = HealthBoard::with_policy(settings.restart_policy());
        let counters = Arc::new(HotCounters::default());
        let metrics = {
            let stats = board.register("metrics", "Metrics", false);
            let (counters, board) = (Arc::clone(&counters), board.clone());
            let source = ActiveUsersSource {
                store: Arc::clone(&activity),
                mau_days,
            };
            Supervisor::start(move |_| {
                Metrics::new(counters, board, stats).with_active_users(source)
            })
        };
        let activity_tracker = {
            let stats = board.register("activity_tracker", "ActivityTracker", false);
            let bus = Arc::clone(&bus);
            Supervisor::start(move |_| ActivityTracker::new(bus, stats))
        };
        let registry = {
            let stats = board.register("registry", "Registry", true);
            let mirroring = redis.as_ref().map(|mirror| Mirroring {
                mirror: Arc::clone(mirror) as Arc<dyn RegistryMirror>,
                node: node_id.clone(),
                refresh_interval: Duration::from_secs(settings.redis.ttl_secs / 3),
            });
            let max_per_user = settings.websocket.max_sessions_per_user;
            Supervisor::start(move |_| {
                Registry::mirrored(stats, mirroring).with_session_limit(max_per_user)
            })
        };
        let writer = {
            let stats = board.register("notification_writer", "NotificationWriter", true);
            let (store, bus) = (Arc::clone(&store), Arc::clone(&bus));
            Supervisor::start(move |_| NotificationWriter::new(store, bus, stats))
        };
        let mailer = {
            let stats = board.register("mailer", "Mailer", false);
            let (store, transport, config) =
                (Arc::clone(&store), transport, settings.mailer_config());
            Supervisor::start(move |_| Mailer::new(store, transport, config, stats))
        };
        let relay: Option<Addr<OutboxRelay>> = settings.outbox.relay.then(|| {
            let stats = board.register("outbox_relay", "OutboxRelay", true);
            let (store, bus) = (Arc::clone(&store), Arc::clone(&bus));
            let interval = Duration::from_millis(settings.outbox.poll_interval_ms.max(10));
            Supervisor::start(move |_| OutboxRelay::new(store, bus, interval, stats))
        });
        let janitor = {
            let stats = board.register("janitor", "Janitor", false);
            let store = Arc::clone(&store);
            let keys = chrono::Duration::hours(idempotency::RETENTION_HOURS);
            let history = chrono::Duration::days(i64::from(settings.history.retention_days));
            Supervisor::start(move |_| Janitor::new(store, JANITOR_INTERVAL, keys, history, stats))
        };
        let consumer_backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(30),
        };
        let consumers = [
            (
                Topic::UserCreated,
                WELCOME_GROUP,
                Arc::new(UserCreatedHandler::new(
                    writer.clone(),
                    Arc::clone(&store),
                    mailer.clone(),
                )) as Arc<dyn TopicHandler>,
            ),
            (
                Topic::Notifications,
                delivery_group.as_str(),
                Arc::new(DeliveryHandler::new(registry.clone())),
            ),
            (
                Topic::UserActivity,
                ACTIVITY_GROUP,
                Arc::new(ActivityHandler::new(Arc::clone(&activity))),
            ),
            (
                Topic::ApiHit,
                API_HIT_GROUP,
                Arc::new(ActivityHandler::new(Arc::clone(&activity))),
            ),
        ];
        let mut consumer_addrs = Vec::with_capacity(consumers.len());
        for (topic, group, handler) in consumers {
            let handler = match &hooks.wrap_handler {
                Some(wrap) => wrap(topic, handler),
                None => handler,
            };
            // Counting users is not worth taking the node out of a load balancer.
            let critical = matches!(topic, Topic::UserCreated | Topic::Notifications);
            let stats = board.register(format!("consumer:{topic}"), "Consumer", critical);
            let config = ConsumerConfig {
                topic,
                group: group.to_owned(),
                max_attempts: 5,
                backoff: consumer_backoff,
            };
            let bus = Arc::clone(&bus);
            consumer_addrs.push(Supervisor::start(move |_| {
                Consumer::new(bus, handler, config, stats)
            }));
        }

        let draining = Arc::new(AtomicBool::new(false));
        let drain = Drainer {
            draining: Arc::clone(&draining),
            registry: registry.clone(),
            relay: relay.clone(),
            consumers: consumer_addrs.clone(),
            writer: writer.clone(),
            store: Arc::clone(&store),
            window: Duration::from_secs(settings.shutdown.drain_window_secs),
            timeout: Duration::from_secs(settings.shutdown.timeout_secs.max(1)),
        };
        let state = web::Data::new(AppState {
            draining,
            bus: Arc::clone(&bus),
            rate_limits: settings.rate_limits()?,
            mailer: mailer.clone(),
            daemons: http::Daemons {
                consumers: consumer_addrs,
                janitor,
            },
            activity,
            activity_tracker,
            store,
            tokens,
            writer,
            relay,
            registry,
            board: board.clone(),
            session: settings.session_config(),
            token_ttl_secs: settings.auth.token_ttl_secs,
            max_body_bytes: settings.server.max_body_bytes,
            max_header_bytes: settings.server.max_header_bytes,
            body_timeout: Duration::from_secs(settings.server.body_timeout_secs),
            redis,
            kafka: backends.kafka,
            counters,
            metrics: metrics.clone(),
        });

        let unacknowledged_limit = Duration::from_secs(settings.websocket.client_timeout_secs);
        let fanouts = Arc::new(http::ws::FanoutSpawner::new(
            state.registry.clone(),
            board.clone(),
        ));
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(fanouts.start_here())
                .wrap(ErrorHandlers::new().default_handler(normalize_error))
                .wrap(from_fn(http::rate_limit::limit_requests))
                .wrap(from_fn(http::limits::limit_headers))
                .wrap(from_fn(http::observe::observe_requests))
                .configure(http::configure)
                .default_service(web::to(|| async {
                    Err::<actix_web::HttpResponse, _>(ApiError::NotFound("no such route".into()))
                }))
        })
        .on_connect(move |conn, _| abort_unacknowledged_after(conn, unacknowledged_limit))
        // Signals are handled in `run_until_stopped`, which drains before stopping.
        .disable_signals()
        .shutdown_timeout(5)
        .listen(listener)?;
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        info!(addr = %settings.server.bind, port, node_id, data_dir = %data_dir.display(), "herald listening");
        Ok(Self {
            port,
            server: server.run(),
            board,
            bus: Arc::clone(&bus),
            drain,
        })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The actor health board (for embedding and tests).
    pub fn board(&self) -> &HealthBoard {
        &self.board
    }

    /// The node's bus, for a program that embeds Herald and publishes onto its topics
    /// in-process (in embedded mode no other process can reach them). What it
    /// publishes on `notifications` is delivered, not stored: storing is the writer's
    /// job, before it publishes.
    pub fn bus(&self) -> Arc<dyn Bus> {
        Arc::clone(&self.bus)
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully: readiness fails
    /// first, sessions are closed with 1012 over a jittered window, the outbox is
    /// flushed, in-flight requests finish; all within `shutdown.timeout_secs`.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// [`Self::run_until_stopped`] with the shutdown signal of an embedding program:
    /// serves until `stop` resolves, then shuts down the same graceful way.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let Self { server, drain, .. } = self;
        let handle = server.handle();
        let mut server = std::pin::pin!(server);
        tokio::select! {
            result = &mut server => return result,
            () = stop => {}
        }
        info!(
            timeout_secs = drain.timeout.as_secs(),
            "shutdown signal: draining"
        );
        let stopped = tokio::time::timeout(drain.timeout, async {
            drain.drain().await;
            // The server future must keep being polled for the stop to complete.
            let ((), result) = tokio::join!(handle.stop(true), server);
            // In-flight publishes are answered; their notifications are stored, and
            // now also reach the bus (other nodes' sessions wait for them).
            let _ = drain.writer.send(Flush).await;
            result
        })
        .await;
        match stopped {
            Ok(result) => result,
            Err(_) => {
                warn!("shutdown timeout reached; exiting undrained");
                Ok(())
            }
        }
    }
}
