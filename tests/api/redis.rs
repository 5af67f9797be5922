//! The Redis registry mirror, against the Redis server CI runs on this machine
//! (`HERALD_TEST_REDIS_URL`, default `redis://127.0.0.1:6379/0`).

use std::time::Duration;

use deadpool_redis::redis::{self, AsyncCommands};

use herald::backends::registry::redis::{node_key, socket_key, user_key, RedisMirror};
use herald_actors::domain::UserId;
use herald_actors::ports::RegistryMirror;

use crate::helpers::{herald_command, redis_url, spawn_app_with, Node, TestApp};

async fn redis() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} is required for these tests: {e}"))
}

fn node_name() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

#[actix_web::test]
async fn the_mirror_adds_finds_and_removes_sockets_under_the_documented_keys() {
    let node = node_name();
    let mirror = RedisMirror::new(&redis_url(), node.clone(), Duration::from_secs(30)).unwrap();
    let mut conn = redis().await;
    let user = UserId::new();

    mirror.add(user, "s1").await.unwrap();
    let owner: String = conn.hget(user_key(user), "s1").await.unwrap();
    assert_eq!(owner, node);
    let stored_user: String = conn.get(socket_key("s1")).await.unwrap();
    assert_eq!(stored_user, user.to_string());
    let ttl: i64 = conn.ttl(socket_key("s1")).await.unwrap();
    assert!((1..=30).contains(&ttl), "socket key has a TTL, got {ttl}");
    assert!(conn.exists::<_, bool>(node_key(&node)).await.unwrap());
    assert_eq!(mirror.nodes_of(user).await.unwrap(), vec![node.clone()]);

    mirror.remove(user, "s1").await.unwrap();
    assert!(!conn.exists::<_, bool>(user_key(user)).await.unwrap());
    assert!(!conn.exists::<_, bool>(socket_key("s1")).await.unwrap());
    assert!(mirror.nodes_of(user).await.unwrap().is_empty());
}

#[actix_web::test]
async fn entries_that_are_not_refreshed_expire() {
    let mirror = RedisMirror::new(&redis_url(), node_name(), Duration::from_secs(1)).unwrap();
    let mut conn = redis().await;
    let user = UserId::new();
    let socket = format!("s-{}", uuid::Uuid::new_v4().simple());
    mirror.add(user, &socket).await.unwrap();
    let app = TestApp::external(0, std::path::Path::new("."));
    app.eventually("the socket key to expire", || async {
        let mut conn = redis().await;
        (!conn.exists::<_, bool>(socket_key(&socket)).await.unwrap()).then_some(())
    })
    .await;
    assert!(mirror.nodes_of(user).await.unwrap().is_empty());
    assert!(!conn.exists::<_, bool>(user_key(user)).await.unwrap());
}

async fn sockets_of(user: UserId) -> Vec<(String, String)> {
    redis().await.hgetall(user_key(user)).await.unwrap()
}

#[actix_web::test]
async fn a_connected_session_is_visible_in_redis_and_gone_after_disconnect() {
    let node = node_name();
    let app = spawn_app_with(|s| {
        s.redis.url = Some(redis_url());
        s.server.node_id = Some(node.clone());
    })
    .await;
    let user = UserId::new();
    let token = app.tokens.issue(user, "", 3600).unwrap();
    let ws = app.connect(&format!("token={token}")).await;
    let sockets = app
        .eventually("the socket in redis", || async {
            let sockets = sockets_of(user).await;
            (!sockets.is_empty()).then_some(sockets)
        })
        .await;
    assert_eq!(sockets.len(), 1);
    assert_eq!(sockets[0].1, node);
    assert!(sockets[0].0.starts_with(&node));
    let owner: String = redis().await.get(socket_key(&sockets[0].0)).await.unwrap();
    assert_eq!(owner, user.to_string());

    drop(ws);
    app.eventually("the socket to leave redis", || async {
        sockets_of(user).await.is_empty().then_some(())
    })
    .await;
    let health = app.get("/readyz", None).await;
    assert_eq!(health.status, 200);
}

#[actix_web::test]
async fn the_keys_of_a_killed_node_expire_within_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let node_id = node_name();
    let mut command = herald_command(dir.path());
    command
        .env("HERALD__AUTH__JWT_SECRET", crate::helpers::TEST_SECRET)
        .env("HERALD__REDIS__URL", redis_url())
        .env("HERALD__REDIS__TTL_SECS", "3")
        .env("HERALD__SERVER__NODE_ID", &node_id);
    let node = Node::spawn(command, dir.path());
    let user = UserId::new();
    let token = node.app.tokens.issue(user, "", 3600).unwrap();
    let _ws = node.app.connect(&format!("token={token}")).await;
    node.app
        .eventually("the socket in redis", || async {
            (!sockets_of(user).await.is_empty()).then_some(())
        })
        .await;
    let app = TestApp::external(node.app.port, dir.path());
    node.kill();
    app.eventually("the dead node's keys to expire", || async {
        let mut conn = redis().await;
        let node_alive: bool = conn.exists(node_key(&node_id)).await.unwrap();
        let user_alive: bool = conn.exists(user_key(user)).await.unwrap();
        (!node_alive && !user_alive).then_some(())
    })
    .await;
}

/// A private `redis-server` on a free port, to stop and start at will.
struct PrivateRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs");
        Self {
            port,
            child: Some(child),
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn registry_status(app: &TestApp) -> String {
    let health = app.get("/api/health/actors", None).await;
    health.body["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "registry")
        .map(|a| a["status"].as_str().unwrap().to_owned())
        .unwrap()
}

#[actix_web::test]
async fn losing_redis_shows_in_readiness_and_health_and_heals_when_it_returns() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis_server = PrivateRedis::start(port);
    let url = redis_server.url();
    let app = spawn_app_with(|s| {
        s.redis.url = Some(url.clone());
        s.redis.ttl_secs = 3;
    })
    .await;
    app.eventually("readiness with redis up", || async {
        (app.get("/readyz", None).await.status == 200).then_some(())
    })
    .await;
    let user = UserId::new();
    let token = app.tokens.issue(user, "", 3600).unwrap();
    let _ws = app.connect(&format!("token={token}")).await;

    redis_server.stop();
    let reasons = app
        .eventually("readiness to fail without redis", || async {
            let ready = app.get("/readyz", None).await;
            (ready.status == 503).then_some(ready.body["reasons"].to_string())
        })
        .await;
    assert!(reasons.contains("redis"), "{reasons}");
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.body["backends"]["redis"], "unreachable");
    assert_eq!(ready.body["backends"]["store"], "ok");
    app.eventually("the registry to report the failing mirror", || async {
        (registry_status(&app).await == "degraded").then_some(())
    })
    .await;
    // Pushes keep flowing without Redis.
    let reply = app
        .publish(
            &app.publisher_token(),
            &serde_json::json!({ "user_id": user, "event": "e", "payload": {} }),
            None,
        )
        .await;
    assert_eq!(reply.status, 202);

    let _redis_again = PrivateRedis::start(port);
    app.eventually("readiness to return", || async {
        (app.get("/readyz", None).await.status == 200).then_some(())
    })
    .await;
    app.eventually("the registry to recover", || async {
        (registry_status(&app).await == "running").then_some(())
    })
    .await;
    // The heartbeat re-created the session's keys in the fresh Redis.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    app.eventually("the session back in redis", || async {
        let sockets: Vec<(String, String)> = conn.clone().hgetall(user_key(user)).await.unwrap();
        (!sockets.is_empty()).then_some(())
    })
    .await;
    let _ = conn.ping::<String>().await;
}
