//! Starts the node under test: as its own process (a fresh data directory, a
//! generated token secret so the harness can mint tokens, a free loopback port, and —
//! in production mode — a fresh PostgreSQL schema and Kafka topic prefix), or, for the
//! in-process bus of embedded mode, inside the harness's own process on threads of its
//! own.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herald::auth::jwt::TokenService;
use herald::backends::bus::kafka::{KafkaBus, KafkaSettings};
use herald::config::Settings;
use herald::startup::Application;
use herald_actors::ports::Bus;
use rand::RngCore;
use secrecy::SecretString;
use tokio::process::{Child, Command};

use crate::http::Connection;
use crate::target::{NodeProcess, Target, Via, NODE_THREAD};

/// Partitions of the Kafka topics the node creates (its own default).
const KAFKA_PARTITIONS: i32 = 6;

/// Production-mode services.
#[derive(Debug, Clone)]
pub struct Production {
    /// PostgreSQL URL the harness creates its schema under (trust auth).
    pub postgres_url: String,
    /// Kafka bootstrap servers.
    pub kafka_brokers: String,
    /// Redis URL.
    pub redis_url: String,
}

/// How to start the node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The `herald` binary.
    pub binary: PathBuf,
    /// HTTP worker threads (`None`: the node's default, one per core).
    pub workers: Option<usize>,
    /// `None`: embedded mode.
    pub production: Option<Production>,
    /// Log filter for the node (`HERALD__LOG__LEVEL`).
    pub log_level: String,
    /// Keep the node's per-IP rate limits on. Off by default: the harness is one
    /// trusted publisher sending thousands of requests a second from one address, which
    /// the default API quota (100 a minute per IP) would refuse, and a benchmark
    /// measures the engine, not the limiter.
    pub rate_limits: bool,
}

/// A running node.
pub struct Node {
    running: Running,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    tokens: TokenService,
    production: Option<(Production, String, String)>,
}

/// How the node runs.
enum Running {
    /// Its own process.
    Process { child: Child, pid: u32 },
    /// Inside this process, on [`NODE_THREAD`] and the threads actix starts from it.
    InProcess {
        /// Resolves the node's shutdown signal.
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
        /// The node's own bus.
        bus: Arc<dyn Bus>,
    },
}

/// Why a node started in-process did not come up.
type StartResult = anyhow::Result<(u16, Arc<dyn Bus>)>;

impl Node {
    /// Starts an embedded node inside this process (its actix system on a thread named
    /// [`NODE_THREAD`], HTTP workers and SQLite threads of its own) and waits until
    /// `/readyz` answers 200. Sessions and HTTP still go over loopback; what this adds
    /// is the node's own bus, which only this process can reach.
    ///
    /// # Errors
    /// When the node cannot be built or does not get ready within a minute.
    pub async fn start_in_process(spec: &NodeSpec) -> anyhow::Result<Self> {
        if spec.production.is_some() {
            bail!("an in-process node runs in embedded mode only");
        }
        let (dir, secret, tokens) = fresh_node_identity()?;
        let mut settings = Settings::default();
        settings.server.bind = "127.0.0.1:0".into();
        settings.server.data_dir = dir.path().to_owned();
        settings.server.workers = spec.workers.unwrap_or(0);
        settings.auth.jwt_secret = Some(SecretString::from(secret));
        settings.rate_limit.enabled = spec.rate_limits;
        // The harness closes its sessions before it stops the node.
        settings.shutdown.drain_window_secs = 1;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<StartResult>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(NODE_THREAD.into())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let app = match Application::build(settings).await {
                        Ok(app) => app,
                        Err(err) => {
                            let _ = ready_tx.send(Err(err));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok((app.port(), app.bus())));
                    let stopped = async {
                        let _ = stop_rx.await;
                    };
                    if let Err(err) = app.run_until(stopped).await {
                        eprintln!("in-process node failed: {err}");
                    }
                });
            })
            .context("while starting the node's thread")?;
        let (port, bus) = ready_rx
            .await
            .context("the node's thread ended before the node was built")?
            .context("while building the in-process node")?;
        let mut node = Self {
            running: Running::InProcess {
                stop: Some(stop_tx),
                thread: Some(thread),
                bus,
            },
            addr: ([127, 0, 0, 1], port).into(),
            dir,
            tokens,
            production: None,
        };
        node.wait_ready(Duration::from_secs(60)).await?;
        Ok(node)
    }

    /// Starts the node and waits until `/readyz` answers 200.
    ///
    /// # Errors
    /// When the binary cannot start, a production service is unreachable, or the node
    /// does not get ready within a minute.
    pub async fn spawn(spec: &NodeSpec) -> anyhow::Result<Self> {
        let (dir, secret, tokens) = fresh_node_identity()?;
        let addr = {
            let probe = TcpListener::bind("127.0.0.1:0").context("while finding a free port")?;
            probe.local_addr()?
        };
        let log = std::fs::File::create(dir.path().join("node.log"))?;
        // The node runs in its data dir, so a relative binary path must be resolved here.
        let binary = std::fs::canonicalize(&spec.binary)
            .with_context(|| format!("no node binary at {}", spec.binary.display()))?;
        let mut command = Command::new(&binary);
        command
            .arg("serve")
            .arg("--bind")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(dir.path())
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env("HERALD__AUTH__JWT_SECRET", &secret)
            .env("HERALD__LOG__LEVEL", &spec.log_level)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if !spec.rate_limits {
            command.env("HERALD__RATE_LIMIT__ENABLED", "false");
        }
        if let Some(workers) = spec.workers {
            command.env("HERALD__SERVER__WORKERS", workers.to_string());
        }
        let production = match &spec.production {
            None => None,
            Some(p) => {
                let stamp = chrono::Utc::now().timestamp();
                let unique = uuid::Uuid::new_v4().simple().to_string();
                let schema = format!("herald_bench_{stamp}_{}", &unique[..8]);
                let prefix = format!("bench{}.", &unique[..8]);
                execute(&p.postgres_url, &format!("CREATE SCHEMA {schema}")).await?;
                let separator = if p.postgres_url.contains('?') {
                    '&'
                } else {
                    '?'
                };
                command
                    .env("HERALD__MODE", "production")
                    .env(
                        "HERALD__POSTGRES__URL",
                        format!(
                            "{}{separator}options=-csearch_path%3D{schema}",
                            p.postgres_url
                        ),
                    )
                    .env("HERALD__KAFKA__BROKERS", &p.kafka_brokers)
                    .env("HERALD__KAFKA__TOPIC_PREFIX", &prefix)
                    .env("HERALD__KAFKA__PARTITIONS", KAFKA_PARTITIONS.to_string())
                    .env("HERALD__REDIS__URL", &p.redis_url)
                    // No mail is sent in these scenarios (tokens are minted, nobody
                    // signs up), but production mode needs a relay configured.
                    .env("HERALD__SMTP__HOST", "127.0.0.1")
                    .env("HERALD__SMTP__PORT", "2525")
                    .env("HERALD__SMTP__TLS", "none");
                Some((p.clone(), schema, prefix))
            }
        };
        let child = command
            .spawn()
            .with_context(|| format!("while starting {}", binary.display()))?;
        let pid = child.id().context("the node exited at once")?;
        let mut node = Self {
            running: Running::Process { child, pid },
            addr,
            dir,
            tokens,
            production,
        };
        node.wait_ready(Duration::from_secs(60)).await?;
        Ok(node)
    }

    async fn wait_ready(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + deadline;
        let mut conn = Connection::new(self.addr);
        loop {
            if let Running::Process { child, .. } = &mut self.running {
                if let Some(status) = child.try_wait()? {
                    bail!("the node exited with {status}; log:\n{}", self.log_tail());
                }
            }
            if let Ok(r) = conn.get("/readyz").await {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > until {
                bail!(
                    "the node was not ready within {deadline:?}; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of the node's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The node as the scenarios see it.
    pub fn target(&self) -> Target {
        Target {
            addr: self.addr,
            tokens: self.tokens.clone(),
            process: Some(match &self.running {
                Running::Process { pid, .. } => NodeProcess::Own(*pid),
                Running::InProcess { .. } => NodeProcess::Shared,
            }),
            mode: match (&self.running, &self.production) {
                (_, Some(_)) => "production",
                (Running::InProcess { .. }, None) => "embedded-in-process",
                (Running::Process { .. }, None) => "embedded",
            },
        }
    }

    /// The node's own bus: its Kafka topics, opened from the harness (production
    /// mode), or its in-process topics (a node started with
    /// [`Self::start_in_process`]).
    ///
    /// # Errors
    /// When the bus cannot be opened.
    pub fn bus(&self) -> anyhow::Result<Via> {
        if let Running::InProcess { bus, .. } = &self.running {
            return Ok(Via::Bus {
                bus: Arc::clone(bus),
                name: "memory",
            });
        }
        match &self.production {
            Some((p, _, prefix)) => {
                let bus = KafkaBus::new(
                    KafkaSettings {
                        brokers: p.kafka_brokers.clone(),
                        partitions: KAFKA_PARTITIONS,
                        replication_factor: 1,
                        linger_ms: 1,
                        fetch_wait_max_ms: herald::config::DEFAULT_FETCH_WAIT_MAX_MS,
                        topic_prefix: prefix.clone(),
                    },
                    &[],
                )?;
                Ok(Via::Bus {
                    bus: Arc::new(bus) as Arc<dyn Bus>,
                    name: "kafka",
                })
            }
            None => bail!(
                "an embedded node in its own process keeps its notifications topic in its \
                 own memory, so no other process can publish onto it: start it in-process"
            ),
        }
    }

    /// Stops the node (SIGTERM, then SIGKILL after 10 s; in-process: its shutdown
    /// signal, waiting up to 10 s) and drops its schema.
    pub async fn stop(mut self) {
        match &mut self.running {
            Running::Process { child, pid } => {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
                if tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
            Running::InProcess { stop, thread, .. } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                if let Some(thread) = thread.take() {
                    let joined = tokio::task::spawn_blocking(move || thread.join());
                    if tokio::time::timeout(Duration::from_secs(10), joined)
                        .await
                        .is_err()
                    {
                        eprintln!("note: the in-process node did not stop within 10 s");
                    }
                }
            }
        }
        if let Some((p, schema, _)) = &self.production {
            if let Err(err) = execute(
                &p.postgres_url,
                &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
            )
            .await
            {
                eprintln!("note: schema {schema} left behind: {err:#}");
            }
        }
    }
}

/// A node's fresh data directory, its token secret, and the token service that signs
/// with it.
fn fresh_node_identity() -> anyhow::Result<(tempfile::TempDir, String, TokenService)> {
    let dir = tempfile::Builder::new()
        .prefix("herald-bench-")
        .tempdir()
        .context("while creating the node's data dir")?;
    let secret = random_secret();
    let tokens = TokenService::new(&SecretString::from(secret.clone()))?;
    Ok((dir, secret, tokens))
}

/// A fresh token secret: 32 random bytes, hex.
fn random_secret() -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs one statement on PostgreSQL.
async fn execute(url: &str, sql: &str) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("while connecting to PostgreSQL at {url}"))?;
    let driver = tokio::spawn(connection);
    client
        .batch_execute(sql)
        .await
        .with_context(|| format!("while running `{sql}`"))?;
    drop(client);
    let _ = driver.await;
    Ok(())
}
