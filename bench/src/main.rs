//! The `herald-bench` command line: one subcommand per scenario. Each spawns a node
//! (the release binary by default), runs, prints a table and one JSON line, and stops
//! the node.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use herald_bench::node::{Node, NodeSpec, Production};
use herald_bench::publish::Load;
use herald_bench::report::Report;
use herald_bench::scenarios::{
    self, FanoutSpec, PushSpec, SessionSpec, SignupSpec, ThroughputSpec,
};
use herald_bench::target::Via;

/// Load harness for Herald. Spawns a node, runs one scenario against it, prints a
/// table and a JSON line.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Debug)]
struct NodeArgs {
    /// The herald binary to run.
    #[arg(long, global = true, default_value = "target/release/herald")]
    node_bin: PathBuf,
    /// HTTP worker threads of the node (default: one per core).
    #[arg(long, global = true)]
    node_workers: Option<usize>,
    /// Log level of the node.
    #[arg(long, global = true, default_value = "warn")]
    node_log: String,
    /// Run the node in production mode (PostgreSQL, Kafka, Redis).
    #[arg(long, global = true)]
    production: bool,
    /// PostgreSQL for production mode; the harness creates and drops its own schema.
    #[arg(
        long,
        global = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// Kafka brokers for production mode.
    #[arg(long, global = true, default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// Redis for production mode.
    #[arg(long, global = true, default_value = "redis://127.0.0.1:6379/0")]
    redis_url: String,
    /// Keep the node's per-IP rate limits on (they are turned off by default: the
    /// harness publishes thousands of requests a second from one address).
    #[arg(long, global = true)]
    keep_rate_limits: bool,
    /// Handshakes in flight while sessions open.
    #[arg(long, global = true, default_value_t = 256)]
    connect_concurrency: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ViaArg {
    /// `POST /api/notifications`.
    Http,
    /// Straight onto the node's `notifications` topic: on Kafka in production mode; in
    /// embedded mode the node then runs inside the harness's process, whose in-process
    /// topic only that process can reach.
    Bus,
}

#[derive(Args, Debug, Clone, Copy)]
struct PushArgs {
    /// Sessions (one user each).
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Targeted pushes per second, over all sessions.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Payload object size, bytes.
    #[arg(long, default_value_t = 500)]
    payload: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 64)]
    publishers: usize,
    /// Publish path.
    #[arg(long, value_enum, default_value_t = ViaArg::Http)]
    via: ViaArg,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// The seed scenario: 10,000 sessions, 1 push per session per second, 500 B, 60 s.
    Seed(PushArgs),
    /// Targeted pushes with any parameters (same flags as `seed`).
    Push(PushArgs),
    /// As many idle sessions as the open-file limit allows; memory per session.
    Idle {
        /// Sessions to open.
        #[arg(long, default_value_t = 19_900)]
        sessions: usize,
        /// Seconds to hold them open (spans a heartbeat at 15 s).
        #[arg(long, default_value_t = 20)]
        hold: u64,
    },
    /// The highest targeted push rate with p99 within the limit.
    Throughput {
        /// Sessions.
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// First rate tried.
        #[arg(long, default_value_t = 2_000.0)]
        start_rate: f64,
        /// Highest rate tried.
        #[arg(long, default_value_t = 256_000.0)]
        max_rate: f64,
        /// Seconds per step.
        #[arg(long, default_value_t = 10)]
        step: u64,
        /// Bisection steps after the first failure.
        #[arg(long, default_value_t = 3)]
        refine: u32,
        /// Concurrent publishers.
        #[arg(long, default_value_t = 128)]
        publishers: usize,
        /// Payload bytes.
        #[arg(long, default_value_t = 500)]
        payload: usize,
        /// p99 bound, ms.
        #[arg(long, default_value_t = 50.0)]
        p99_ms: f64,
        /// Publish path.
        #[arg(long, value_enum, default_value_t = ViaArg::Http)]
        via: ViaArg,
    },
    /// Broadcasts as fast as they are delivered to every session.
    Fanout {
        /// Sessions.
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Most broadcasts.
        #[arg(long, default_value_t = 2_000)]
        count: u64,
        /// Longest broadcasting time, seconds.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Broadcasts not yet delivered everywhere, at most.
        #[arg(long, default_value_t = 16)]
        window: u64,
        /// Payload bytes.
        #[arg(long, default_value_t = 500)]
        payload: usize,
        /// Publish path.
        #[arg(long, value_enum, default_value_t = ViaArg::Http)]
        via: ViaArg,
    },
    /// Concurrent signups (argon2id dominates).
    Signup {
        /// Signups.
        #[arg(long, default_value_t = 200)]
        count: usize,
        /// In flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// The seed scenario in production mode, first over HTTP (PostgreSQL + Kafka), then
    /// straight onto Kafka.
    Kafka(PushArgs),
}

/// Deliveries may trail the last publish by this much before they count as lost.
const DRAIN: Duration = Duration::from_secs(15);
/// The delivery path must come alive within this (a Kafka group join).
const WARMUP: Duration = Duration::from_secs(60);

fn push_spec(args: PushArgs, connect_concurrency: usize) -> PushSpec {
    PushSpec {
        sessions: SessionSpec {
            count: args.sessions,
            concurrency: connect_concurrency,
        },
        load: Load {
            rate: args.rate,
            duration: Duration::from_secs(args.duration),
            workers: args.publishers,
            payload_bytes: args.payload,
        },
        drain: DRAIN,
        warmup: WARMUP,
    }
}

fn via(node: &Node, arg: ViaArg) -> anyhow::Result<Via> {
    match arg {
        ViaArg::Http => Ok(Via::Http),
        ViaArg::Bus => node.bus(),
    }
}

/// Descriptors an in-process node and the harness need besides sessions (listeners,
/// the database, the runtime's own).
const RESERVED_FDS: u64 = 200;

/// Caps every session count of `scenario` at `cap`, saying so when it bites.
fn cap_sessions(scenario: &mut Scenario, cap: usize) {
    let count = match scenario {
        Scenario::Seed(a) | Scenario::Push(a) | Scenario::Kafka(a) => &mut a.sessions,
        Scenario::Throughput { sessions, .. }
        | Scenario::Fanout { sessions, .. }
        | Scenario::Idle { sessions, .. } => sessions,
        Scenario::Signup { .. } => return,
    };
    if *count > cap {
        eprintln!(
            "{count} sessions capped at {cap}: with the node in this process, each session \
             holds two descriptors (client and server) under one open-file limit"
        );
        *count = cap;
    }
}

async fn run(mut cli: Cli, open_file_limit: u64) -> anyhow::Result<Vec<Report>> {
    let production = cli.node.production || matches!(cli.scenario, Scenario::Kafka(_));
    let spec = NodeSpec {
        binary: cli.node.node_bin.clone(),
        workers: cli.node.node_workers,
        production: production.then(|| Production {
            postgres_url: cli.node.postgres_url.clone(),
            kafka_brokers: cli.node.kafka_brokers.clone(),
            redis_url: cli.node.redis_url.clone(),
        }),
        log_level: cli.node.node_log.clone(),
        rate_limits: cli.node.keep_rate_limits,
    };
    let via_bus = match &cli.scenario {
        Scenario::Seed(a) | Scenario::Push(a) => matches!(a.via, ViaArg::Bus),
        Scenario::Throughput { via, .. } | Scenario::Fanout { via, .. } => {
            matches!(via, ViaArg::Bus)
        }
        _ => false,
    };
    let node = if via_bus && !production {
        eprintln!("--via bus in embedded mode: the node runs inside this process");
        let cap = open_file_limit.saturating_sub(RESERVED_FDS) / 2;
        cap_sessions(
            &mut cli.scenario,
            usize::try_from(cap).unwrap_or(usize::MAX),
        );
        Node::start_in_process(&spec).await?
    } else {
        Node::spawn(&spec).await?
    };
    let target = node.target();
    let cc = cli.node.connect_concurrency;
    let sessions = |count| SessionSpec {
        count,
        concurrency: cc,
    };
    let result = async {
        let reports = match cli.scenario {
            Scenario::Seed(args) => {
                vec![
                    scenarios::push("seed", &target, via(&node, args.via)?, push_spec(args, cc))
                        .await?,
                ]
            }
            Scenario::Push(args) => {
                vec![
                    scenarios::push("push", &target, via(&node, args.via)?, push_spec(args, cc))
                        .await?,
                ]
            }
            Scenario::Kafka(args) => {
                let http =
                    scenarios::push("kafka", &target, Via::Http, push_spec(args, cc)).await?;
                print(&http);
                let bus =
                    scenarios::push("kafka", &target, node.bus()?, push_spec(args, cc)).await?;
                vec![http, bus]
            }
            Scenario::Idle { sessions: n, hold } => {
                vec![scenarios::idle(&target, sessions(n), Duration::from_secs(hold)).await?]
            }
            Scenario::Throughput {
                sessions: n,
                start_rate,
                max_rate,
                step,
                refine,
                publishers,
                payload,
                p99_ms,
                via: v,
            } => vec![
                scenarios::throughput(
                    &target,
                    via(&node, v)?,
                    ThroughputSpec {
                        sessions: sessions(n),
                        start_rate,
                        max_rate,
                        step: Duration::from_secs(step),
                        refine,
                        workers: publishers,
                        payload_bytes: payload,
                        p99_limit_ms: p99_ms,
                        drain: DRAIN,
                        warmup: WARMUP,
                    },
                )
                .await?,
            ],
            Scenario::Fanout {
                sessions: n,
                count,
                duration,
                window,
                payload,
                via: v,
            } => vec![
                scenarios::fanout(
                    &target,
                    via(&node, v)?,
                    FanoutSpec {
                        sessions: sessions(n),
                        count,
                        duration: Duration::from_secs(duration),
                        window,
                        payload_bytes: payload,
                        drain: DRAIN,
                        warmup: WARMUP,
                    },
                )
                .await?,
            ],
            Scenario::Signup { count, concurrency } => {
                vec![scenarios::signup(&target, SignupSpec { count, concurrency }).await?]
            }
        };
        anyhow::Ok(reports)
    }
    .await;
    if result.is_err() {
        eprintln!("node log (last lines):\n{}", node.log_tail());
    }
    node.stop().await;
    result
}

fn print(report: &Report) {
    println!("{}", report.table());
    println!("{}", report.json_line());
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let limit =
        herald_bench::raise_open_file_limit().context("while raising the open-file limit")?;
    eprintln!("open-file limit: {limit}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // On a worker, not on this thread: `block_on`'s own thread would otherwise carry
    // the scenario's future and, with it, much of the socket polling (one thread at
    // 100 % under 50,000 frames/s while the workers idled).
    let reports = runtime.block_on(async move { tokio::spawn(run(cli, limit)).await })??;
    if let Some(last) = reports.last() {
        print(last);
    }
    Ok(())
}
