//! The command line: help, migrate, token, configuration layers and start-up errors.

use serde_json::json;

use crate::helpers::{herald_command, Node};
use herald_actors::domain::UserId;

fn run(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    herald_command(dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("herald runs")
}

#[test]
fn help_explains_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for word in ["serve", "migrate", "token", "--config"] {
        assert!(help.contains(word), "help lacks {word}:\n{help}");
    }
    let out = run(dir.path(), &["token", "--help"], &[]);
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("--user") && help.contains("--scope") && help.contains("publish"));
}

#[test]
fn migrate_creates_the_schema_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut said = Vec::new();
    for _ in 0..2 {
        let out = run(
            dir.path(),
            &["migrate", "--data-dir", data.to_str().unwrap()],
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        said.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    assert!(data.join("herald.db").exists());
    // The first run says what it applied, the second that there was nothing to do.
    let all = herald::backends::store::sqlite::MIGRATIONS.len();
    assert!(
        said[0].contains(&format!("applied {all} migration(s)")),
        "{}",
        said[0]
    );
    assert!(said[1].contains("nothing to apply"), "{}", said[1]);
}

#[test]
fn token_rejects_a_user_that_is_not_a_uuid() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &["token", "--user", "bob", "--scope", "publish"],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("UUID"));
}

#[test]
fn production_mode_without_a_secret_refuses_to_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &["serve", "--bind", "127.0.0.1:0"],
        &[("HERALD__MODE", "production")],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("jwt_secret") && stderr.contains("production"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_configuration_key_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, "[server]\nbnd = \"127.0.0.1:0\"\n").unwrap();
    let out = run(
        dir.path(),
        &["--config", config.to_str().unwrap(), "migrate"],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bnd"));
}

#[test]
fn an_unknown_choice_is_an_error_naming_the_valid_ones() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value, expected) in [
        (
            "HERALD__MODE",
            "prod",
            "expected `embedded` or `production`",
        ),
        (
            "HERALD__SMTP__TLS",
            "ssl",
            "expected `none` or `starttls` or `tls`",
        ),
        (
            "HERALD__LOG__FORMAT",
            "xml",
            "expected `auto` or `text` or `json`",
        ),
    ] {
        let out = run(dir.path(), &["migrate"], &[(key, value)]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{key}: {stderr}");
    }
}

#[test]
fn token_refuses_to_invent_a_secret_no_node_uses() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &["token", "--user", &UserId::new().to_string()],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token secret"));
    assert!(!dir.path().join("data").exists(), "nothing was created");
}

#[actix_web::test]
async fn a_token_minted_by_the_cli_is_accepted_by_the_node_on_that_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();

    // No configured secret: the node generates one under the data dir. A flag beats
    // the environment: the bind variable below is ignored.
    let mut command = herald_command(dir.path());
    command.env("HERALD__SERVER__BIND", "127.0.0.1:1");
    let node = Node::spawn(command, dir.path());
    assert_ne!(node.app.port, 1);
    assert!(dir.path().join("jwt_secret").exists());

    let service = UserId::new().to_string();
    let out = run(
        dir.path(),
        &[
            "token",
            "--user",
            &service,
            "--scope",
            "publish",
            "--data-dir",
            data,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let publisher = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = run(
        dir.path(),
        &["token", "--user", &service, "--data-dir", data],
        &[],
    );
    let user_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let body = json!({ "user_id": UserId::new(), "event": "hello", "payload": {} });
    assert_eq!(node.app.publish(&publisher, &body, None).await.status, 202);
    assert_eq!(node.app.publish(&user_token, &body, None).await.status, 403);
    assert_eq!(
        node.app.me(Some(&user_token)).await.status,
        401,
        "no such user, but the signature is fine"
    );
}

#[actix_web::test]
async fn serve_flags_work_without_the_word_serve() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = herald_command(dir.path());
    command.env("HERALD__AUTH__JWT_SECRET", crate::helpers::TEST_SECRET);
    let node = Node::spawn_with_args(command, dir.path(), &[]);
    assert_eq!(node.app.get("/livez", None).await.status, 200);
}

#[test]
fn a_port_in_use_is_one_clear_error_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(dir.path(), &["serve", "--bind", &addr], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("while binding") && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "no data directory is created for a node that cannot start"
    );
}

#[test]
fn a_token_that_would_be_born_expired_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let user = UserId::new().to_string();
    let out = run(dir.path(), &["token", "--user", &user, "--ttl", "0"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ttl"));
}
