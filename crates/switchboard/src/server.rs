//! Wiring: builds the backends picked by the configuration, the logic, the
//! gate and the listeners, and stops them in order.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use switchboard_backends::postgres::{PgOptions, PgStore, redact_url};
use switchboard_backends::sqlite::{SqliteOptions, SqliteStore};
use switchboard_backends::{FjallOptions, FjallStore};
use switchboard_core::{AppConfig, Apps, Hub, Logic, Store};
use switchboard_gate::Gate;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;

/// The SQLite store's file in the data dir (`store.backend = "sqlite"`).
const SQLITE_FILE: &str = "switchboard.sqlite3";

/// A running node.
pub struct Server {
    pub tcp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub gate: Arc<Gate>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    listeners: Vec<JoinHandle<()>>,
    grace: Duration,
    backends: crate::cluster::Backends,
    /// Delivers the outbox to webhooks (bus backend `outbox` only).
    dispatcher: Option<switchboard_hooks::Dispatcher>,
}

impl Server {
    /// Opens the store, binds the listeners and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
        let apps = if config.apps.is_empty() {
            ensure_demo_secret(&config.data_dir)?;
            vec![demo_app(&config.data_dir)?]
        } else {
            config.apps.clone()
        };
        let apps = Apps::new(apps).context("invalid app configuration")?;

        let store: Arc<dyn Store> = match config.store.backend.as_str() {
            "sqlite" => {
                let options = SqliteOptions {
                    dedupe_window: Duration::from_secs(config.store.dedupe_retention_secs),
                    cursor_flush_interval: Duration::from_millis(
                        config.store.cursor_flush_ms.max(1),
                    ),
                    ..SqliteOptions::default()
                };
                let path = config.data_dir.join(SQLITE_FILE);
                SqliteStore::open(&path, options)
                    .with_context(|| format!("cannot open the store at {}", path.display()))?
            }
            "fjall" => {
                let sqlite = config.data_dir.join(SQLITE_FILE);
                let path = config.data_dir.join("fjall");
                if sqlite.exists() && !path.exists() {
                    bail!(
                        "{} holds a SQLite store and store.backend is \"fjall\" (the default since \
                         it replaced \"sqlite\"); set store.backend = \"sqlite\" to keep serving \
                         that data",
                        config.data_dir.display()
                    );
                }
                let options = FjallOptions {
                    dedupe_window: Duration::from_secs(config.store.dedupe_retention_secs),
                    cursor_flush_interval: Duration::from_millis(
                        config.store.cursor_flush_ms.max(1),
                    ),
                    ..FjallOptions::default()
                };
                FjallStore::open(&path, options)
                    .with_context(|| format!("cannot open the store at {}", path.display()))?
            }
            "postgres" => {
                let c = &config.store;
                let options = PgOptions {
                    schema: (!c.schema.is_empty()).then(|| c.schema.clone()),
                    pool_size: c.pool_size,
                    connect_timeout: Duration::from_millis(c.connect_timeout_ms.max(1)),
                    statement_timeout: Duration::from_millis(c.statement_timeout_ms.max(1)),
                    op_timeout: Duration::from_millis(c.op_timeout_ms.max(1)),
                    dedupe_window: Duration::from_secs(c.dedupe_retention_secs),
                    cursor_flush_interval: Duration::from_millis(c.cursor_flush_ms.max(1)),
                    ..PgOptions::default()
                };
                PgStore::connect(&c.url, options).await.with_context(|| {
                    format!("cannot open the PostgreSQL store at {}", redact_url(&c.url))
                })?
            }
            other => bail!("unknown store backend {other:?} (known: sqlite, fjall, postgres)"),
        };
        let hub = Arc::new(Hub::new());
        let backends = crate::cluster::Backends::build(&config, hub.clone(), store.clone()).await?;
        let (presence, route, bus) = (
            backends.presence.clone(),
            backends.route.clone(),
            backends.bus.clone(),
        );
        // Before-send hooks and word filters screen c2c; the webhook
        // dispatcher drains the outbox bus (switchboard-hooks).
        switchboard_hooks::install_crypto_provider();
        let app_configs: Vec<AppConfig> =
            apps.names().filter_map(|n| apps.get(n)).cloned().collect();
        let screens = switchboard_hooks::AppScreens::new(&app_configs)
            .context("invalid before_send or word_filter configuration")?;
        let dispatcher = if config.bus.backend == "outbox" {
            Some(
                switchboard_hooks::Dispatcher::start(
                    store.clone(),
                    &app_configs,
                    config.webhook.dispatcher_config(),
                )
                .context("invalid webhook configuration")?,
            )
        } else {
            if app_configs.iter().any(|a| !a.webhooks.is_empty()) {
                tracing::warn!(bus = %config.bus.backend, "webhooks are configured but only the outbox bus delivers them");
            }
            None
        };
        let logic = Logic::new(
            config.logic_config(),
            apps,
            store.clone(),
            presence,
            route,
            bus,
        );
        let logic = Arc::new(match screens {
            Some(s) => logic.with_screen(Arc::new(s)),
            None => logic,
        });

        let shutdown = CancellationToken::new();
        let gate = Gate::new(logic, hub, config.gate_config(), shutdown.clone());
        let tls = match &config.tls {
            Some(t) => Some(
                switchboard_gate::tls::acceptor_from_pem_files(&t.cert, &t.key)
                    .context("cannot load TLS")?,
            ),
            None => None,
        };

        let tcp = TcpListener::bind(config.listen.tcp)
            .await
            .with_context(|| format!("cannot listen on {} (tcp)", config.listen.tcp))?;
        let http = TcpListener::bind(config.listen.http)
            .await
            .with_context(|| format!("cannot listen on {} (http)", config.listen.http))?;
        let tcp_addr = tcp.local_addr()?;
        let http_addr = http.local_addr()?;

        let mut listeners = Vec::new();
        listeners.push(tokio::spawn(switchboard_gate::run_tcp(
            gate.clone(),
            tcp,
            tls.clone(),
        )));
        let mut api_config = config.api_config();
        if config.apps.is_empty() && api_config.admin_key.is_none() {
            api_config.admin_key = Some(demo_admin_key(&config.data_dir)?);
        }
        let router = switchboard_api::router_with(gate.clone(), api_config);
        let sd = shutdown.clone();
        listeners.push(tokio::spawn(async move {
            if let Err(e) = switchboard_api::serve(http, router, tls, sd).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }));
        info!(%tcp_addr, %http_addr, node = %config.node, "switchboard serving");
        Ok(Server {
            tcp_addr,
            http_addr,
            gate,
            store,
            shutdown,
            listeners,
            grace: Duration::from_secs(config.shutdown_grace_secs),
            backends,
            dispatcher,
        })
    }

    /// A token that, once cancelled, stops the server (see [`Server::stop`]).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, kicks every connection (KICK_SHUTDOWN), waits for
    /// them within the grace period, then flushes and closes the store.
    pub async fn stop(self) {
        self.gate.drain(self.grace).await;
        for l in self.listeners {
            let _ = tokio::time::timeout(self.grace, l).await;
        }
        // Before the store closes: it marks what was accepted so far.
        if let Some(d) = self.dispatcher {
            d.stop().await;
        }
        self.backends.close().await;
        if let Err(e) = self.store.close().await {
            tracing::warn!(error = %e, "store did not close cleanly");
        }
        info!("switchboard stopped");
    }
}

/// The built-in `demo` app, its secret generated once and kept in the data dir.
pub fn demo_app(data_dir: &Path) -> anyhow::Result<AppConfig> {
    Ok(AppConfig {
        name: "demo".into(),
        jwt_secret: Some(demo_secret(data_dir)?),
        api_key: Some(format!("demo-{}", &demo_secret(data_dir)?[..16])),
        ..AppConfig::default()
    })
}

/// The operator key of demo mode (no `[[apps]]` and no `api.admin_key`):
/// derived from the demo secret, like the demo app's API key.
pub fn demo_admin_key(data_dir: &Path) -> anyhow::Result<String> {
    let secret = demo_secret(data_dir)?;
    // The secret's other end than the app key's, so one does not give the other.
    let tail: String = secret.chars().rev().take(16).collect();
    Ok(format!("admin-{tail}"))
}

/// The file holding the demo app's token secret, in the data dir.
pub const DEMO_SECRET_FILE: &str = "demo.secret";

/// Reads the demo app's token secret. Never creates it: only `serve`
/// does ([`ensure_demo_secret`]); a command run against the wrong directory
/// that made a new secret would sign tokens the node refuses.
pub fn demo_secret(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(DEMO_SECRET_FILE);
    let s = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the demo secret {} (it is created by `switchboard serve` in its data dir)",
            path.display()
        )
    })?;
    let s = s.trim().to_string();
    if s.len() < 16 {
        bail!("{} is too short to be a demo secret", path.display());
    }
    Ok(s)
}

/// Creates the demo app's token secret unless the data dir has one
/// (`serve` in demo mode, before anything reads it).
pub fn ensure_demo_secret(data_dir: &Path) -> anyhow::Result<()> {
    if demo_secret(data_dir).is_ok() {
        return Ok(());
    }
    let path = data_dir.join(DEMO_SECRET_FILE);
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let secret: String = (0..32)
        .map(|_| format!("{:x}", rand::random::<u8>() % 16))
        .collect();
    std::fs::write(&path, &secret).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
