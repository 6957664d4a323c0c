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
    /// Periodic work that stops at once on shutdown.
    background: Vec<JoinHandle<()>>,
    /// The offline-notification task (stopped after its last flush).
    notifications: JoinHandle<()>,
    grace: Duration,
    backends: crate::cluster::Backends,
    /// Delivers the outbox to webhooks (bus backend `outbox` only).
    dispatcher: Option<switchboard_hooks::Dispatcher>,
}

impl Server {
    /// Opens the store, binds the listeners and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let gate_config = config
            .gate_config()
            .context("invalid gate.ws_allowed_origins")?;
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

        let notifications = tokio::spawn(logic.clone().run_notifications());
        let mut background = Vec::new();
        if config.presence.backend != "memory" {
            // Shared presence: this node announces the devices of nodes that
            // died without logging them out (user.offline, reason node_lost).
            let every = Duration::from_secs(config.presence.heartbeat_secs.max(1));
            background.push(tokio::spawn(announce_departed(logic.clone(), every)));
        }
        let shutdown = CancellationToken::new();
        let gate = Gate::new(logic, hub, gate_config, shutdown.clone());
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
        if config.apps.is_empty() {
            // The console may mint tokens of the embedded demo app only.
            api_config.console_token_secret = Some(demo_secret(&config.data_dir)?);
        }
        let router = switchboard_api::router_with(gate.clone(), api_config);
        listeners.push(tokio::spawn(switchboard_api::serve(
            http,
            router,
            gate.clone(),
            tls,
        )));
        info!(%tcp_addr, %http_addr, node = %config.node, "switchboard serving");
        Ok(Server {
            tcp_addr,
            http_addr,
            gate,
            store,
            shutdown,
            listeners,
            background,
            notifications,
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
        for b in &self.background {
            b.abort();
        }
        self.gate.drain(self.grace).await;
        for l in self.listeners {
            let _ = tokio::time::timeout(self.grace, l).await;
        }
        // Open notification windows go to the bus while it is still open
        // (a crash loses them: they are hints, the messages are durable).
        self.gate.logic.flush_notifications(self.grace).await;
        self.notifications.abort();
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

/// The demo app's JWT secret in the data dir (kept from older installs).
pub const DEMO_SECRET_FILE: &str = "demo.secret";
/// The demo app's API key in the data dir.
const DEMO_API_KEY_FILE: &str = "demo.api_key";
/// The operator (admin) key of demo mode in the data dir.
const DEMO_ADMIN_KEY_FILE: &str = "admin.key";

/// The built-in `demo` app: its JWT secret and its API key are each
/// generated once by `serve` ([`ensure_demo_secret`]), independently, and
/// kept in files of the data dir.
pub fn demo_app(data_dir: &Path) -> anyhow::Result<AppConfig> {
    Ok(AppConfig {
        name: "demo".into(),
        jwt_secret: Some(demo_secret(data_dir)?),
        api_key: Some(format!("demo-{}", demo_file(data_dir, DEMO_API_KEY_FILE)?)),
        ..AppConfig::default()
    })
}

/// The operator key of demo mode (no `[[apps]]` and no `api.admin_key`),
/// generated once, independently of the demo app's secret and API key.
pub fn demo_admin_key(data_dir: &Path) -> anyhow::Result<String> {
    Ok(format!(
        "admin-{}",
        demo_file(data_dir, DEMO_ADMIN_KEY_FILE)?
    ))
}

/// Reads the demo app's token secret. Never creates it: only `serve`
/// does ([`ensure_demo_secret`]); a command run against the wrong directory
/// that made a new secret would sign tokens the node refuses.
pub fn demo_secret(data_dir: &Path) -> anyhow::Result<String> {
    demo_file(data_dir, DEMO_SECRET_FILE)
}

/// Reads one of the demo files (never creating it).
fn demo_file(data_dir: &Path, name: &str) -> anyhow::Result<String> {
    let path = data_dir.join(name);
    read_secret(&path)?.with_context(|| {
        format!(
            "cannot read {} (it is created by `switchboard serve` in its data dir)",
            path.display()
        )
    })
}

/// Creates the demo app's token secret, its API key and the demo operator
/// key unless the data dir has them (`serve` in demo mode, before anything
/// reads them): each from the OS's randomness (128 bits, hex), in a file
/// only its owner may read.
///
/// Before the keys were independent, only `demo.secret` existed (and the
/// keys were derived from it): such a secret is kept, so tokens already
/// issued stay valid, and the key files are generated next to it. A file
/// that others may read (an older install wrote 0644) is narrowed to 0600.
pub fn ensure_demo_secret(data_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    for name in [DEMO_SECRET_FILE, DEMO_API_KEY_FILE, DEMO_ADMIN_KEY_FILE] {
        ensure_demo_file(data_dir, name)?;
    }
    Ok(())
}

fn ensure_demo_file(data_dir: &Path, name: &str) -> anyhow::Result<String> {
    let path = data_dir.join(name);
    if let Some(secret) = read_secret(&path)? {
        return Ok(secret);
    }
    let mut bytes = [0u8; 16];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness from the OS for {name}: {e}"))?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_new_secret(&path, &secret)?;
    // Another process (a second node starting on this data dir) may have
    // won the race: what is in the file is the secret.
    read_secret(&path)?.with_context(|| format!("{} is empty after writing it", path.display()))
}

/// The secret in a file, `None` when the file is missing or holds less
/// than 16 characters (an interrupted write of an old version).
fn read_secret(path: &Path) -> anyhow::Result<Option<String>> {
    use std::os::unix::fs::PermissionsExt;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let secret = text.trim();
    if secret.len() < 16 {
        return Ok(None);
    }
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the permissions of {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(file = %path.display(), "secret file was readable by others; narrowing it to 0600");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private (0600)", path.display()))?;
    }
    Ok(Some(secret.to_owned()))
}

/// Writes a new secret file with mode 0600 from its creation on (never
/// readable by others, not even for a moment), and atomically: it is
/// written in full under a temporary name and then linked to its name, which
/// fails rather than replaces a file another process created meanwhile.
fn write_new_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // A short file left by an old version: replace it.
                if read_secret(path).ok().flatten().is_none() {
                    std::fs::rename(&tmp, path)?;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    let result = write();
    let _ = std::fs::remove_file(&tmp);
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Every `every`: `user.offline` for the devices of nodes that stopped
/// without logging them out ([`Logic::announce_departed`]).
async fn announce_departed(logic: Arc<Logic>, every: Duration) {
    let mut healthy = true;
    loop {
        tokio::time::sleep(every).await;
        match logic.announce_departed().await {
            Ok(_) => healthy = true,
            Err(e) => {
                // Logged on the transition: presence's own outage is logged too.
                if healthy {
                    tracing::warn!(error = %e, "cannot look for the devices of dead nodes; retrying");
                }
                healthy = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Whether `a` and `b` share a run of `n` characters.
    fn share_run(a: &str, b: &str, n: usize) -> Option<String> {
        (0..=a.len().saturating_sub(n))
            .map(|i| &a[i..i + n])
            .find(|run| b.contains(run))
            .map(str::to_owned)
    }

    fn hex_part(s: &str) -> &str {
        s.rsplit('-').next().unwrap_or(s)
    }

    #[test]
    fn demo_secrets_are_independent_and_private() {
        let dir = tempfile::tempdir().unwrap();
        assert!(demo_secret(dir.path()).is_err(), "reading never creates");
        ensure_demo_secret(dir.path()).unwrap();
        let app = demo_app(dir.path()).unwrap();
        let secret = app.jwt_secret.clone().unwrap();
        let api_key = app.api_key.clone().unwrap();
        let admin = demo_admin_key(dir.path()).unwrap();
        let all = [secret.as_str(), hex_part(&api_key), hex_part(&admin)];
        for (i, a) in all.iter().enumerate() {
            assert_eq!(a.len(), 32, "128 bits in hex: {a}");
            for b in &all[i + 1..] {
                // 8 hex digits: the derived keys shared 16 with the secret,
                // and two independent 128-bit values share a run of 8 by
                // chance about once in 10^7 (a run of 4: once in 25 runs).
                assert_eq!(share_run(a, b, 8), None, "{a} and {b} share a run");
            }
        }
        for name in [DEMO_SECRET_FILE, DEMO_API_KEY_FILE, DEMO_ADMIN_KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        // Read back, not generated again.
        ensure_demo_secret(dir.path()).unwrap();
        assert_eq!(demo_app(dir.path()).unwrap(), app);
        assert_eq!(demo_admin_key(dir.path()).unwrap(), admin);
        assert_eq!(demo_secret(dir.path()).unwrap(), secret);
        // Two installs have nothing in common.
        let other = tempfile::tempdir().unwrap();
        ensure_demo_secret(other.path()).unwrap();
        assert_ne!(demo_secret(other.path()).unwrap(), secret);
    }

    #[test]
    fn an_old_install_keeps_its_secret_and_gets_new_keys() {
        let dir = tempfile::tempdir().unwrap();
        let old = "0123456789abcdef0123456789abcdef";
        let path = dir.path().join(DEMO_SECRET_FILE);
        std::fs::write(&path, old).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        ensure_demo_secret(dir.path()).unwrap();
        let app = demo_app(dir.path()).unwrap();
        assert_eq!(app.jwt_secret.as_deref(), Some(old));
        let api_key = app.api_key.unwrap();
        let admin = demo_admin_key(dir.path()).unwrap();
        assert_eq!(share_run(old, hex_part(&api_key), 8), None);
        assert_eq!(share_run(old, hex_part(&admin), 8), None);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "an old secret is narrowed to 0600");
    }
}
