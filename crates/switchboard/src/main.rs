//! `switchboard`: serve (the server), token (sign a login token for the
//! embedded demo app), chat (a terminal client on the SDK), config (check a
//! file, print the example).

mod chat;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchboard::node_file::{self, NodeFile};
use switchboard::{Config, Server, config_doc, server};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Real-time messaging for marketplaces: one binary."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. With no configuration: embedded mode, data under ./switchboard-data.
    Serve(ServeArgs),
    /// Print a login token for a user of the embedded `demo` app.
    Token(TokenArgs),
    /// Chat as a user: interactive, or line-oriented from stdin with --json.
    Chat(chat::ChatArgs),
    /// Print the embedded demo app's HTTP API key (or, with --admin, the demo operator key).
    ApiKey(ApiKeyArgs),
    /// Load-generate against a node (and Mosquitto): see docs/benchmarks.md.
    Bench(switchboard_bench::BenchArgs),
    /// Check a configuration file, or print an example of every setting.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a TOML configuration file: an unknown key or a bad value is
    /// reported with the file and line. Exits non-zero when it is invalid.
    Check {
        /// The file `serve --config` would read.
        file: PathBuf,
    },
    /// Print a commented TOML file of every setting with its default.
    Example,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (settings are also read from SWITCHBOARD_* variables).
    #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (embedded store, demo secret).
    #[arg(long, env = "SWITCHBOARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP listen address (API, /ws, /healthz).
    #[arg(long, env = "SWITCHBOARD_HTTP")]
    http: Option<std::net::SocketAddr>,
    /// TCP listen address (binary frames).
    #[arg(long, env = "SWITCHBOARD_TCP")]
    tcp: Option<std::net::SocketAddr>,
}

#[derive(clap::Args)]
struct ApiKeyArgs {
    /// Print the operator key of demo mode (for /v1/admin/*) instead.
    #[arg(long)]
    admin: bool,
    /// Data directory of the running node (where `serve` keeps the demo
    /// secret); default ./switchboard-data. Never created by this command.
    #[arg(long, env = "SWITCHBOARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The app (only the embedded `demo` app's secret is known to this command).
    #[arg(long, default_value = "demo")]
    app: String,
    /// The user id.
    #[arg(long)]
    uid: String,
    /// Validity in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    ttl: u64,
    /// Data directory of the running node (where `serve` keeps the demo
    /// secret); default ./switchboard-data. Never created by this command.
    #[arg(long, env = "SWITCHBOARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Sign with this HS256 secret instead of the demo app's.
    #[arg(long, env = "SWITCHBOARD_TOKEN_SECRET")]
    secret: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.command);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Token(args) => token(args),
        Command::ApiKey(args) => api_key(args),
        Command::Chat(args) => {
            let result = runtime.block_on(chat::run(args));
            // Tokio reads stdin on a blocking thread that may wait for a
            // line forever (a kick ends the chat mid-read): don't wait for it.
            runtime.shutdown_background();
            result
        }
        Command::Bench(args) => runtime
            .block_on(switchboard_bench::run(args))
            .map(drop)
            .map_err(Into::into),
        Command::Config(ConfigCommand::Check { file }) => {
            config_doc::check_file(&file)?;
            println!("{}: valid", file.display());
            Ok(())
        }
        Command::Config(ConfigCommand::Example) => {
            print!("{}", config_doc::example());
            Ok(())
        }
    }
}

/// Logs go to stderr, filtered by `SWITCHBOARD_LOG` when set. Defaults:
/// `serve` at info, without the storage engine's own start-up chatter
/// (fjall and lsm-tree log every recovered table at info); the JSON chat and
/// the load generator at warn; the interactive chat not at all, since a log
/// line (an SDK reconnect warning) would land in the middle of the chat
/// screen, which shows connection changes as status lines of its own.
fn init_logging(command: &Command) {
    let default = match command {
        Command::Chat(args) if !args.json() => "off",
        Command::Chat(_) | Command::Bench(_) => "warn",
        _ => "info,fjall=warn,lsm_tree=warn",
    };
    let filter =
        EnvFilter::try_from_env("SWITCHBOARD_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config =
        Config::load(args.config.as_deref()).context("cannot read the configuration")?;
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(a) = args.http {
        config.listen.http = a;
    }
    if let Some(a) = args.tcp {
        config.listen.tcp = a;
    }
    let demo = config.apps.is_empty();
    let data_dir = config.data_dir.clone();
    let tls = config.tls.is_some();
    let server = Server::start(config).await?;
    // Tells `token`, `api-key` and `chat` pointed at this data dir where the
    // node listens; removed at a clean stop.
    NodeFile {
        pid: std::process::id(),
        tcp: server.tcp_addr,
        http: server.http_addr,
        tls,
    }
    .write(&data_dir)?;
    println!(
        "switchboard: TCP on {}, HTTP and WebSocket on http://{}/ws",
        server.tcp_addr, server.http_addr
    );
    if demo {
        let dd = data_dir.display();
        println!("embedded demo app \"demo\"; get a token and chat:");
        println!("  switchboard token --uid alice --data-dir {dd}");
        println!(
            "  switchboard chat --uid alice --to bob --data-dir {dd} --url tcp://{}",
            server.tcp_addr
        );
        println!("HTTP API (docs/http-api.md): the demo app's key and the operator key:");
        println!("  switchboard api-key --data-dir {dd}           # Authorization: Bearer <key>");
        println!("  switchboard api-key --admin --data-dir {dd}   # for /v1/admin/*");
    }
    let token = server.shutdown_token();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate() => {}
        _ = token.cancelled() => {}
    }
    tracing::info!("shutting down");
    server.stop().await;
    NodeFile::remove(&data_dir);
    Ok(())
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending().await
}

fn api_key(args: ApiKeyArgs) -> anyhow::Result<()> {
    let data_dir = node_file::find_data_dir(args.data_dir.as_deref())?;
    let key = if args.admin {
        server::demo_admin_key(&data_dir)?
    } else {
        server::demo_app(&data_dir)?
            .api_key
            .context("the demo app has no API key")?
    };
    println!("{key}");
    Ok(())
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let secret = match args.secret {
        Some(s) => s,
        None if args.app == "demo" => {
            server::demo_secret(&node_file::find_data_dir(args.data_dir.as_deref())?)?
        }
        None => anyhow::bail!(
            "only the demo app's secret is known here; pass --secret for app {}",
            args.app
        ),
    };
    let t = switchboard_core::auth::issue_token(&secret, &args.app, &args.uid, args.ttl)?;
    println!("{t}");
    Ok(())
}
