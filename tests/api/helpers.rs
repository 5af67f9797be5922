//! `spawn_app()` and one helper per API call.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use actix_web::http::header::HeaderMap;
use awc::ws;
use futures_util::{SinkExt, StreamExt};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};

use herald::auth::jwt::TokenService;
use herald::config::Settings;
use herald::startup::{Application, Hooks};
use herald_actors::domain::UserId;

/// The token secret every test app uses, so tests can mint tokens.
pub const TEST_SECRET: &str = "test-secret-test-secret-test-secret-0123";
/// How long any single wait in a test may take before it fails. Production mode gets
/// longer: after a node is killed, Kafka hands its partitions to the new node only when
/// the dead consumer's session times out, and a loaded CI machine slows rebalances.
pub fn deadline() -> Duration {
    if production() {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(10)
    }
}

/// A running app on a random port with its own data directory.
pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub data_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
    pub tokens: TokenService,
    /// The services a production-mode node runs on (`None` in embedded mode).
    pub backdrop: Option<std::sync::Arc<Backdrop>>,
}

/// An HTTP reply, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Vec<u8>,
}

/// Settings for a test node in `data_dir`.
pub fn test_settings(data_dir: &Path) -> Settings {
    let mut settings = Settings::default();
    settings.server.bind = "127.0.0.1:0".into();
    settings.server.data_dir = data_dir.to_owned();
    settings.server.workers = 2;
    settings.auth.jwt_secret = Some(SecretString::from(TEST_SECRET.to_owned()));
    settings.mail.poll_interval_ms = 100;
    settings.outbox.poll_interval_ms = 100;
    // The suite sends thousands of requests from one address; the limiter's own tests
    // turn it back on.
    settings.rate_limit.enabled = false;
    settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a node in the mode the suite runs in (`HERALD_TEST_MODE`, see
/// [`production`]), after `tweak` adjusted its settings.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with_hooks(tweak, Hooks::default()).await
}

/// [`spawn_app_with`], with `hooks` (fault injection) applied to the node.
pub async fn spawn_app_with_hooks(tweak: impl FnOnce(&mut Settings), hooks: Hooks) -> TestApp {
    if production() {
        spawn_production_app_with_hooks(tweak, hooks).await
    } else {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = test_settings(dir.path());
        tweak(&mut settings);
        let mut app = start_with(settings, hooks).await;
        app._dir = Some(dir);
        app
    }
}

/// Starts a production-mode node (PostgreSQL, Kafka, Redis, SMTP) whatever the suite's
/// mode, and waits until pushes flow.
pub async fn spawn_production_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_production_app_with_hooks(tweak, Hooks::default()).await
}

async fn spawn_production_app_with_hooks(
    tweak: impl FnOnce(&mut Settings),
    hooks: Hooks,
) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let backdrop = std::sync::Arc::new(Backdrop::create().await);
    let mut settings = test_settings(dir.path());
    backdrop.apply(&mut settings);
    tweak(&mut settings);
    let mut app = start_with(settings, hooks).await;
    app._dir = Some(dir);
    app.backdrop = Some(backdrop);
    app.wait_for_delivery().await;
    app
}

/// Whether the suite runs against the production backends: `HERALD_TEST_MODE=production`.
pub fn production() -> bool {
    std::env::var("HERALD_TEST_MODE").is_ok_and(|m| m == "production")
}

/// Starts a node with exactly these settings and `hooks` (the caller owns the data
/// dir).
pub async fn start_with(settings: Settings, hooks: Hooks) -> TestApp {
    let data_dir = settings.server.data_dir.clone();
    let app = Application::build_with(settings, hooks)
        .await
        .expect("app builds");
    let port = app.port();
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        data_dir,
        _dir: None,
        tokens: test_tokens(),
        backdrop: None,
    }
}

pub fn test_tokens() -> TokenService {
    TokenService::new(&SecretString::from(TEST_SECRET.to_owned())).expect("token service")
}

pub fn client() -> awc::Client {
    awc::Client::builder().timeout(deadline()).finish()
}

async fn read(
    mut res: awc::ClientResponse<
        impl futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
    >,
) -> Reply {
    let raw = res
        .body()
        .limit(8 * 1024 * 1024)
        .await
        .expect("body")
        .to_vec();
    Reply {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
        raw,
    }
}

/// A signed-up user with a login token.
pub struct TestUser {
    pub id: UserId,
    pub email: String,
    pub password: String,
    pub token: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// POSTs raw bytes with a content type and optional extra headers.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = client()
            .post(self.url(path))
            .insert_header(("Content-Type", content_type));
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        read(req.send_body(body).await.expect("request sent")).await
    }

    /// GET with extra headers.
    pub async fn get_with_headers(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = client().get(self.url(path));
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        read(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut req = client().get(self.url(path));
        if let Some(t) = token {
            req = req.insert_header(("Authorization", format!("Bearer {t}")));
        }
        read(req.send().await.expect("request sent")).await
    }

    pub async fn signup(&self, body: &Value, key: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
        self.post_raw(
            "/api/users/signup",
            "application/json",
            body.to_string().into_bytes(),
            &headers,
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Reply {
        let body = json!({ "email": email, "password": password });
        self.post_raw(
            "/api/users/login",
            "application/json",
            body.to_string().into_bytes(),
            &[],
        )
        .await
    }

    pub async fn me(&self, token: Option<&str>) -> Reply {
        self.get("/api/users/me", token).await
    }

    /// Signs up `name` with a unique email and logs in.
    pub async fn create_user(&self, name: &str) -> TestUser {
        let email = format!(
            "{}-{}@example.com",
            name.to_lowercase(),
            uuid::Uuid::new_v4().simple()
        );
        let password = "correct horse battery".to_owned();
        let reply = self
            .signup(
                &json!({ "email": email, "name": name, "password": password }),
                Some(&uuid::Uuid::new_v4().to_string()),
            )
            .await;
        assert_eq!(reply.status, 201, "signup failed: {:?}", reply.body);
        let id: UserId = reply.body["user"]["id"]
            .as_str()
            .expect("id")
            .parse()
            .expect("uuid");
        let login = self.login(&email, &password).await;
        assert_eq!(login.status, 200, "login failed: {:?}", login.body);
        TestUser {
            id,
            email,

            password,
            token: login.body["token"].as_str().expect("token").to_owned(),
        }
    }

    /// A token with the `publish` scope.
    pub fn publisher_token(&self) -> String {
        self.tokens
            .issue(UserId::new(), "publish", 3600)
            .expect("token")
    }

    pub async fn publish(&self, token: &str, body: &Value, key: Option<&str>) -> Reply {
        let auth = format!("Bearer {token}");
        let mut headers = vec![("Authorization", auth.as_str())];
        if let Some(k) = key {
            headers.push(("Idempotency-Key", k));
        }
        self.post_raw(
            "/api/notifications",
            "application/json",
            body.to_string().into_bytes(),
            &headers,
        )
        .await
    }

    /// Publishes a raw JSON body (for payloads `serde_json::Value` cannot hold).
    pub async fn publish_raw(&self, token: &str, body: String) -> Reply {
        let auth = format!("Bearer {token}");
        self.post_raw(
            "/api/notifications",
            "application/json",
            body.into_bytes(),
            &[("Authorization", &auth)],
        )
        .await
    }

    /// Publishes event `e` with payload `{"n": n}` to `user`; returns the id.
    pub async fn publish_to(&self, token: &str, user: UserId, n: usize) -> i64 {
        let reply = self
            .publish(
                token,
                &json!({ "user_id": user, "event": "e", "payload": { "n": n } }),
                None,
            )
            .await;
        assert_eq!(reply.status, 202, "{:?}", reply.body);
        reply.body["id"].as_i64().expect("id")
    }

    pub async fn history(&self, token: &str, after: i64, limit: u32) -> Reply {
        self.get(
            &format!("/api/notifications?after={after}&limit={limit}"),
            Some(token),
        )
        .await
    }

    /// Opens a WebSocket with this query string (e.g. `token=…&after=0`).
    pub async fn connect(&self, query: &str) -> WsClient {
        self.connect_with(query, None).await
    }

    pub async fn connect_with(&self, query: &str, bearer: Option<&str>) -> WsClient {
        let mut req = client()
            .ws(format!("ws://127.0.0.1:{}/ws?{query}", self.port))
            .max_frame_size(1024 * 1024);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let (_, framed) = req.connect().await.expect("websocket upgrade");
        WsClient { framed }
    }

    /// Polls `check` until it returns `Some`, or fails after [`deadline`].
    pub async fn eventually<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        // Kafka rebalances take longer than anything in embedded mode.
        let wait = if self.backdrop.is_some() {
            Duration::from_secs(60)
        } else {
            deadline()
        };
        let until = Instant::now() + wait;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(Instant::now() < until, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `.eml` files under the data dir's mail folder.
    /// The full text of every email the node sent: `.eml` files in embedded mode,
    /// what the SMTP listener accepted in production mode.
    pub fn mails(&self) -> Vec<String> {
        match &self.backdrop {
            Some(backdrop) => backdrop
                .sink
                .messages()
                .into_iter()
                .map(|m| m.data)
                .collect(),
            None => mail_files(&self.data_dir)
                .iter()
                .map(|p| std::fs::read_to_string(p).expect("mail file"))
                .collect(),
        }
    }

    /// The node's store, opened beside it (to act as a concurrent request would).
    pub async fn store(&self) -> std::sync::Arc<dyn herald_actors::ports::Store> {
        match &self.backdrop {
            Some(backdrop) => backdrop.db.store().await,
            None => {
                let db = herald::backends::store::sqlite::SqliteDb::open(
                    &self.data_dir.join("herald.db"),
                )
                .expect("db");
                std::sync::Arc::new(herald::backends::store::sqlite::SqliteStore::new(
                    std::sync::Arc::new(db),
                ))
            }
        }
    }

    /// Kafka assigns partitions a moment after a consumer joins, and a node's delivery
    /// group starts at the end of the topic: publish until a push gets through.
    pub async fn wait_for_delivery(&self) {
        let publisher = self.publisher_token();
        let user = UserId::new();
        let token = self.tokens.issue(user, "", 3600).expect("token");
        let mut ws = self.connect(&format!("token={token}")).await;
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let reply = self
                .publish(
                    &publisher,
                    &json!({ "user_id": user, "event": "warmup", "payload": {} }),
                    None,
                )
                .await;
            assert_eq!(reply.status, 202, "{:?}", reply.body);
            if timeout(Duration::from_millis(1500), ws.next_json())
                .await
                .is_ok()
            {
                return;
            }
            assert!(Instant::now() < until, "pushes never started flowing");
        }
    }
}

/// The bus of a node with `data_dir` (embedded) or `backdrop` (production).
pub fn bus_for(
    data_dir: &Path,
    backdrop: Option<&Backdrop>,
) -> std::sync::Arc<dyn herald_actors::ports::Bus> {
    match backdrop {
        Some(backdrop) => std::sync::Arc::new(backdrop.bus()),
        None => {
            let db = herald::backends::store::sqlite::SqliteDb::open(&data_dir.join("herald.db"))
                .expect("db");
            std::sync::Arc::new(herald::backends::bus::sqlite::SqliteBus::new(
                std::sync::Arc::new(db),
                &[],
            ))
        }
    }
}

/// Where the test Kafka broker listens (`HERALD_TEST_KAFKA_BROKERS`).
pub fn kafka_brokers() -> String {
    std::env::var("HERALD_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Where the test Redis listens (`HERALD_TEST_REDIS_URL`).
pub fn redis_url() -> String {
    std::env::var("HERALD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// The services one production-mode test runs on: its own PostgreSQL schema, SMTP
/// listener and Kafka topic prefix (the broker and Redis are shared; keys and topics
/// are unique per test).
pub struct Backdrop {
    pub db: PgTestDb,
    pub sink: crate::smtp_sink::SmtpSink,
    pub topic_prefix: String,
    /// Prefix of this test's DAU/MAU keys in the shared Redis.
    pub counter_prefix: String,
}

impl Backdrop {
    pub async fn create() -> Self {
        Self {
            db: PgTestDb::create().await,
            sink: crate::smtp_sink::SmtpSink::start().await,
            topic_prefix: format!("t{}.", uuid::Uuid::new_v4().simple()),
            counter_prefix: format!("herald-test-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// Points `settings` at these services.
    pub fn apply(&self, settings: &mut Settings) {
        settings.mode = herald::config::Mode::Production;
        settings.postgres.url = Some(self.db.url.clone().into());
        settings.kafka.brokers = Some(kafka_brokers());
        settings.kafka.topic_prefix = self.topic_prefix.clone();
        settings.kafka.partitions = 2;
        settings.redis.url = Some(redis_url());
        settings.redis.counter_prefix = self.counter_prefix.clone();
        settings.smtp.host = Some("127.0.0.1".into());
        settings.smtp.port = self.sink.port;
        settings.smtp.tls = herald::backends::mail::smtp::TlsMode::None;
        settings.mail.from = "Herald <herald@example.com>".into();
    }

    /// The same, as environment variables for the binary.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("HERALD__MODE", "production".to_owned()),
            ("HERALD__POSTGRES__URL", self.db.url.clone()),
            ("HERALD__KAFKA__BROKERS", kafka_brokers()),
            ("HERALD__KAFKA__TOPIC_PREFIX", self.topic_prefix.clone()),
            ("HERALD__KAFKA__PARTITIONS", "2".to_owned()),
            ("HERALD__REDIS__URL", redis_url()),
            ("HERALD__REDIS__COUNTER_PREFIX", self.counter_prefix.clone()),
            ("HERALD__SMTP__HOST", "127.0.0.1".to_owned()),
            ("HERALD__SMTP__PORT", self.sink.port.to_string()),
            ("HERALD__SMTP__TLS", "none".to_owned()),
            (
                "HERALD__MAIL__FROM",
                "Herald <herald@example.com>".to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// A Kafka bus on this test's topics.
    pub fn bus(&self) -> herald::backends::bus::kafka::KafkaBus {
        herald::backends::bus::kafka::KafkaBus::new(
            herald::backends::bus::kafka::KafkaSettings {
                brokers: kafka_brokers(),
                partitions: 2,
                replication_factor: 1,
                linger_ms: 0,
                fetch_wait_max_ms: herald::config::DEFAULT_FETCH_WAIT_MAX_MS,
                topic_prefix: self.topic_prefix.clone(),
            },
            &[],
        )
        .expect("kafka bus")
    }
}

pub fn mail_files(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("outbox"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .collect()
        })
        .unwrap_or_default()
}

/// A WebSocket client.
pub struct WsClient {
    pub framed: actix_codec::Framed<awc::BoxedSocket, ws::Codec>,
}

/// What the server sent, with pings answered and skipped.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    Close(Option<ws::CloseReason>),
    Ended,
}

impl WsClient {
    pub async fn send_text(&mut self, text: &str) {
        self.framed
            .send(ws::Message::Text(text.to_owned().into()))
            .await
            .expect("send text");
    }

    pub async fn send_binary(&mut self, bytes: &'static [u8]) {
        self.framed
            .send(ws::Message::Binary(bytes::Bytes::from_static(bytes)))
            .await
            .expect("send binary");
    }

    /// The next text frame, close frame or end of stream, within [`deadline`].
    pub async fn next(&mut self) -> Incoming {
        let until = Instant::now() + deadline();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let frame = timeout(left, self.framed.next())
                .await
                .expect("timed out waiting for a frame");
            match frame {
                Some(Ok(ws::Frame::Text(bytes))) => {
                    return Incoming::Json(
                        serde_json::from_slice(&bytes).expect("server frames are JSON"),
                    )
                }
                Some(Ok(ws::Frame::Ping(p))) => {
                    let _ = self.framed.send(ws::Message::Pong(p)).await;
                }
                Some(Ok(ws::Frame::Close(reason))) => return Incoming::Close(reason),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Incoming::Ended,
            }
        }
    }

    /// The next JSON frame; fails on close.
    pub async fn next_json(&mut self) -> Value {
        match self.next().await {
            Incoming::Json(v) => v,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// The next frame that answers the client (`pong`, `error`), skipping live
    /// notifications: the `user.joined` broadcast of a signup may arrive at any moment,
    /// and with a fast bus it often arrives while a test waits for a reply.
    pub async fn next_reply(&mut self) -> Value {
        loop {
            let frame = self.next_json().await;
            if frame["type"] != "notification" {
                return frame;
            }
        }
    }

    /// The next JSON frame whose `event` is `event`, skipping others.
    pub async fn next_event(&mut self, event: &str) -> Value {
        loop {
            let frame = self.next_json().await;
            if frame["event"] == event {
                return frame;
            }
        }
    }

    /// The close code the server sends next (skipping data frames).
    pub async fn close_code(&mut self) -> u16 {
        loop {
            match self.next().await {
                Incoming::Json(_) => continue,
                Incoming::Close(reason) => {
                    return reason.map(|r| u16::from(r.code)).unwrap_or(1005)
                }
                Incoming::Ended => panic!("connection ended without a close frame"),
            }
        }
    }
}

impl TestApp {
    /// A handle on a node started elsewhere (e.g. the real binary).
    pub fn external(port: u16, data_dir: &Path) -> Self {
        Self {
            address: format!("http://127.0.0.1:{port}"),
            port,
            data_dir: data_dir.to_owned(),
            _dir: None,
            tokens: test_tokens(),
            backdrop: None,
        }
    }
}

/// A correctly signed token that expired a minute ago.
pub fn expired_token(user: UserId) -> String {
    let now = chrono::Utc::now().timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": user, "iat": now - 120, "exp": now - 60, "scope": "" }),
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()).expect("key"),
    )
    .expect("token")
}

/// The real `herald` binary, run in `dir` with fast polling and without any
/// `HERALD__` variable inherited from the environment.
pub fn herald_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD__") {
            command.env_remove(key);
        }
    }
    command
        .current_dir(dir)
        .env("HERALD__OUTBOX__POLL_INTERVAL_MS", "100")
        .env("HERALD__MAIL__POLL_INTERVAL_MS", "100")
        // Tests poll the API far faster than any client should.
        .env("HERALD__RATE_LIMIT__ENABLED", "false")
        .env("RUST_LOG", "info");
    command
}

/// A `herald serve` process.
pub struct Node {
    child: Child,
    pub app: TestApp,
    /// Every line the node wrote to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Node {
    /// Starts `herald serve` with the test secret, on `backdrop`'s services when given
    /// (production mode), in embedded mode otherwise.
    pub fn start_on(
        data_dir: &Path,
        backdrop: Option<std::sync::Arc<Backdrop>>,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = herald_command(data_dir);
        command.env("HERALD__AUTH__JWT_SECRET", TEST_SECRET);
        if let Some(backdrop) = &backdrop {
            command.envs(backdrop.env());
        }
        command.envs(env.iter().copied());
        let mut node = Self::spawn(command, data_dir);
        node.app.backdrop = backdrop;
        node
    }

    /// Starts `herald serve` as `command` describes (see [`herald_command`]).
    pub fn spawn(command: Command, data_dir: &Path) -> Self {
        Self::spawn_with_args(command, data_dir, &["serve"])
    }

    /// Starts the binary with `args` before the bind and data-dir flags.
    pub fn spawn_with_args(mut command: Command, data_dir: &Path, args: &[&str]) -> Self {
        let mut child = command
            .args(args)
            .args(["--bind", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("herald binary starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("herald listening") {
                    // Text (`port=N`) or JSON (`"port":N`) log lines.
                    let port = match serde_json::from_str::<Value>(&line) {
                        Ok(json) => json["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
                        Err(_) => line
                            .split_whitespace()
                            .find_map(|w| w.strip_prefix("port="))
                            .and_then(|p| p.parse::<u16>().ok()),
                    };
                    let _ = tx.send(port);
                }
                lines.lock().expect("log lines").push(line);
            }
        });
        let port = rx
            .recv_timeout(deadline())
            .expect("node reports its port")
            .expect("port parses");
        Self {
            child,
            app: TestApp::external(port, data_dir),
            log,
        }
    }

    /// SIGTERM: the node shuts down gracefully.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "SIGTERM delivered");
    }

    /// Waits up to `within` for the process to exit; `None` if it is still running.
    pub async fn exited_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where PostgreSQL tests connect (overridable with `HERALD_TEST_POSTGRES_URL`). CI
/// runs PostgreSQL on this machine; when it is unreachable the tests fail, they do not
/// skip.
pub fn postgres_url() -> String {
    std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A throw-away schema in the test PostgreSQL database: each test gets its own tables.
pub struct PgTestDb {
    /// URL whose connections use the schema.
    pub url: String,
    schema: String,
}

impl PgTestDb {
    /// Creates a fresh schema (and drops ones that earlier, crashed runs left behind).
    pub async fn create() -> Self {
        let base = postgres_url();
        let (admin, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {base} is required for these tests: {e}"));
        actix_web::rt::spawn(connection);
        let now = chrono::Utc::now().timestamp();
        let stale = admin
            .query(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'herald_test_%'",
                &[],
            )
            .await
            .expect("list schemas");
        for row in stale {
            let name: String = row.get(0);
            let born = name
                .split('_')
                .nth(2)
                .and_then(|t| t.parse::<i64>().ok())
                .unwrap_or(now);
            if now - born > 3600 {
                let _ = admin.batch_execute(&drop_schema_sql(&name)).await;
            }
        }
        let schema = format!("herald_test_{now}_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .expect("create schema");
        let separator = if base.contains('?') { '&' } else { '?' };
        // The schema's name doubles as the connections' application_name, so the
        // clean-up can find and end them.
        let url =
            format!("{base}{separator}options=-csearch_path%3D{schema}&application_name={schema}");
        Self { url, schema }
    }

    /// A migrated store over the schema.
    pub async fn store(&self) -> std::sync::Arc<dyn herald_actors::ports::Store> {
        use herald::backends::store::postgres;
        let pool = postgres::pool(&self.url, 4).expect("pool");
        postgres::migrate(&pool).await.expect("migrations apply");
        std::sync::Arc::new(postgres::PostgresStore::new(pool))
    }
}

/// SQL that drops a test schema without ever waiting long: it ends the connections
/// still using it first (a node of the finished test may sit on this very thread, frozen
/// inside a transaction while the drop waits for its locks), and gives up after a few
/// seconds rather than hang the suite.
fn drop_schema_sql(schema: &str) -> String {
    format!(
        "SET lock_timeout = '5s'; SET statement_timeout = '20s';
         SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
          WHERE application_name = '{schema}' AND pid <> pg_backend_pid();
         DROP SCHEMA IF EXISTS {schema} CASCADE"
    )
}

/// Drops the schema when the test is done, passed or failed. Drop cannot await, so
/// it runs on a thread with a runtime of its own.
impl Drop for PgTestDb {
    fn drop(&mut self) {
        let (base, schema) = (postgres_url(), self.schema.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(connection);
                client.batch_execute(&drop_schema_sql(&schema)).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!(
                "note: test schema {} left behind; a later run drops it",
                self.schema
            );
        }
    }
}

/// Waits out the consumer session of a node just killed. tansu 0.6 (the broker of the
/// test runs) drops a dead member only when another member next contacts the group, and
/// does not reassign the partitions the dead member was given in a rebalance that
/// completes meanwhile: a node that joins while the dead member's session is still
/// alive can be left without the partition it needs for good. Apache Kafka evicts the
/// member and rebalances when the session expires, so production needs no such wait.
pub async fn wait_out_consumer_session(killed_at: std::time::Instant) {
    let expired =
        killed_at + herald::backends::bus::kafka::CONSUMER_SESSION_TIMEOUT + Duration::from_secs(1);
    tokio::time::sleep_until(expired.into()).await;
}
