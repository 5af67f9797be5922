//! The command line: `herald [serve|migrate|token]`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use herald_actors::domain::UserId;

/// Herald: real-time notifications over WebSocket, with signup, login, history and
/// welcome email. With no subcommand it runs `serve`.
#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about,
    long_about = None,
    after_help = "Run `herald <COMMAND> --help` for the flags of each command."
)]
pub struct Cli {
    /// Configuration file (default: ./config.toml when present). Environment variables
    /// HERALD__SECTION__KEY override it; flags override both.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// `serve` flags, accepted without the word `serve` too.
    #[command(flatten)]
    pub serve: ServeArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: HTTP API, WebSocket sessions and all actors (the default).
    Serve(ServeArgs),
    /// Apply the database schema and exit (re-running is a no-op).
    Migrate(DataDirArgs),
    /// Print a signed bearer token, for scripts, services and tests.
    Token(TokenArgs),
}

/// Flags of `serve`.
#[derive(Debug, Args, Default, Clone)]
pub struct ServeArgs {
    /// Listen address [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// Data directory for embedded mode [default: ./data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Flags of commands that only need the data directory.
#[derive(Debug, Args)]
pub struct DataDirArgs {
    /// Data directory for embedded mode [default: ./data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// What a minted token may do.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Scope {
    /// A plain user token: connect, read history, `me`.
    User,
    /// May publish notifications.
    Publish,
    /// May use admin endpoints (and publish).
    Admin,
}

impl Scope {
    /// The `scope` claim for this choice.
    pub fn claim(self) -> &'static str {
        match self {
            Scope::User => "",
            Scope::Publish => "publish",
            Scope::Admin => "admin publish",
        }
    }
}

/// Flags of `token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id the token speaks for, a UUID. For a service that only publishes,
    /// any UUID that names the service.
    #[arg(long, value_name = "ID")]
    pub user: UserId,
    /// What the token may do.
    #[arg(long, value_enum, default_value_t = Scope::User)]
    pub scope: Scope,
    /// Lifetime in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl: u64,
    /// Data directory of the node whose secret signs the token [default: ./data].
    /// The node must have started there once (or `auth.jwt_secret` be configured).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}
