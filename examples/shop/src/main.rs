//! `shop serve`: the shop's business server. `shop client`: a terminal app
//! for a customer, an agent or a courier (what the shop's mobile apps do,
//! on the Rust SDK), to try the scenario by hand. README.md walks through it.

mod client;

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shop::ShopConfig;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "shop",
    about = "Example business server on Switchboard: support chat, order notices, courier offers."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the shop server.
    Serve(ServeArgs),
    /// Be a customer, an agent or a courier in a terminal.
    Client(client::ClientArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Where the shop listens (its webhook, orders and deliveries endpoints).
    #[arg(long, env = "SHOP_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    #[command(flatten)]
    shop: ShopConfig,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default = match cli.command {
        Command::Serve(_) => "info",
        Command::Client(_) => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SHOP_LOG").unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Client(args) => runtime.block_on(client::run(args)),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!(
        "shop: listening on http://{} (webhook: /webhook)",
        listener.local_addr()?
    );
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate() => {}
        }
        stop.cancel();
    });
    shop::run(listener, args.shop, shutdown).await?;
    Ok(())
}

/// SIGTERM (what systemd and container runtimes send), like Ctrl-C.
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
