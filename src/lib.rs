//! Herald: an actor-based real-time notification engine.
//!
//! Users sign up and log in over HTTP, hold a WebSocket open and receive targeted
//! pushes and broadcasts the moment something happens; each new user gets exactly one
//! welcome email. One binary runs with zero infrastructure (embedded mode).
//!
//! # Layout
//! - `main.rs`: thin — parses the command line and calls [`run`].
//! - [`cli`]: subcommands and flags. [`config`]: layered typed settings.
//! - [`startup`]: `Application::build` wires backends, actors and the HTTP server.
//! - [`telemetry`] sets up logging.
//! - [`auth`]: tokens (`jwt`) and password hashing (`password`).
//! - [`http`]: one file per resource (`users`, `notifications`, `ws`, `ops`), plus
//!   `problem` (every error → problem+json), `idempotency` and `json` body parsing.
//! - [`backends`]: adapters for the ports of `herald-actors` — `store/sqlite.rs`,
//!   `bus/sqlite.rs`, `mail/file.rs`.
//! - The actors, domain types, messages and ports live in the `herald-actors` crate
//!   (`actors/`).

pub mod auth;
pub mod backends;
pub mod cli;
pub mod config;
pub mod http;
pub mod startup;
pub mod telemetry;

use anyhow::Context;

use cli::{Cli, Command};
use config::{Overrides, Settings};

/// Runs the command the user asked for.
///
/// # Errors
/// Anything that stops the command, with context for the operator.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let top_level = cli.serve;
    let command = match cli.command {
        None => Command::Serve(top_level),
        Some(Command::Serve(args)) => Command::Serve(cli::ServeArgs {
            bind: args.bind.or(top_level.bind),
            data_dir: args.data_dir.or(top_level.data_dir),
        }),
        Some(_) if top_level.bind.is_some() || top_level.data_dir.is_some() => {
            anyhow::bail!("--bind and --data-dir before a command only apply to `serve`; put them after the command")
        }
        Some(other) => other,
    };
    let overrides = match &command {
        Command::Serve(args) => Overrides {
            bind: args.bind.clone(),
            data_dir: args.data_dir.clone(),
        },
        Command::Migrate(args) => Overrides {
            data_dir: args.data_dir.clone(),
            ..Overrides::default()
        },
        Command::Token(args) => Overrides {
            data_dir: args.data_dir.clone(),
            ..Overrides::default()
        },
    };
    let settings = Settings::load(cli.config.as_deref(), &overrides)?;
    telemetry::init(&settings.log, settings.mode);
    match command {
        Command::Serve(_) => {
            let app = startup::Application::build(settings).await?;
            app.run_until_stopped().await.context("while serving")
        }
        Command::Migrate(_) => {
            let (applied, place) = match settings.mode {
                config::Mode::Embedded => {
                    let db = startup::open_embedded_db(&settings.server.data_dir)?;
                    let place = settings.server.data_dir.join(startup::DATABASE_FILE);
                    (db.migrations_applied(), place.display().to_string())
                }
                config::Mode::Production => {
                    let applied = startup::migrate_postgres(&settings).await?;
                    (applied, "postgres".to_owned())
                }
            };
            if applied == 0 {
                println!("{place}: schema up to date, nothing to apply");
            } else {
                println!("{place}: applied {applied} migration(s), schema up to date");
            }
            Ok(())
        }
        Command::Token(args) => {
            let secret_file = settings.server.data_dir.join(auth::jwt::SECRET_FILE);
            if settings.auth.jwt_secret.is_none() && !secret_file.exists() {
                anyhow::bail!(
                    "no token secret at {}: start the node once with this data directory \
                     (or pass --data-dir DIR of a node that ran), or configure auth.jwt_secret",
                    secret_file.display()
                );
            }
            let tokens = auth::jwt::TokenService::new(&startup::token_secret(&settings)?)?;
            println!("{}", tokens.issue(args.user, args.scope.claim(), args.ttl)?);
            Ok(())
        }
    }
}
