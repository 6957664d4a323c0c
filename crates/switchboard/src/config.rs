//! Configuration: one TOML file, overridden by `SWITCHBOARD_*` environment
//! variables (`SWITCHBOARD_GATE__ACK_TIMEOUT_MS=5000`), overridden by flags.
//! Every setting has a default; docs/configuration.md lists them all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_core::{AppConfig, LogicConfig};
use switchboard_gate::{GateConfig, WsOrigins};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the embedded store and the demo app's secret live.
    pub data_dir: PathBuf,
    /// This node's name (presence records it for each device).
    pub node: String,
    /// This node's number in message ids, 0 to 1023 (unique per cluster node).
    pub node_id: u16,
    pub listen: Listen,
    pub tls: Option<Tls>,
    pub gate: Gate,
    pub logic: Logic,
    pub store: Store,
    pub presence: Presence,
    pub route: Route,
    pub bus: Bus,
    /// The webhook dispatcher of the `outbox` bus (docs/bus.md).
    pub webhook: Webhook,
    /// The HTTP API (docs/http-api.md).
    pub api: Api,
    /// Apps. When empty, a `demo` app is created with a secret kept in the data dir.
    pub apps: Vec<AppConfig>,
    /// Seconds connections get to close on shutdown.
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    /// HTTP API, `/ws`, `/healthz`, `/readyz`.
    pub http: SocketAddr,
    /// Binary frames over TCP.
    pub tcp: SocketAddr,
}

/// TLS on both listeners: PEM certificate chain and private key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Gate limits (see `switchboard_gate::GateConfig` for the meaning of each).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gate {
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub login_timeout_ms: u64,
    pub keepalive_secs: u64,
    pub idle_keepalives: u32,
    pub ack_timeout_ms: u64,
    pub max_resends: u32,
    pub max_unacked: usize,
    pub outbound_queue: usize,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub transient_rate_per_sec: u32,
    pub transient_rate_burst: u32,
    pub compression_threshold: usize,
    pub write_timeout_ms: u64,
    pub max_in_flight: usize,
    /// An HTTP keep-alive connection idle this long is closed.
    pub http_idle_timeout_ms: u64,
    /// Browser origins (`scheme://host[:port]`, `null` or `*`) allowed to
    /// open a WebSocket. Unset: any origin in demo mode (no `[[apps]]`),
    /// else only the origin of the host the upgrade is addressed to.
    pub ws_allowed_origins: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Logic {
    pub max_body_bytes: usize,
    pub max_devices_per_user: usize,
    pub max_sync_page: usize,
    /// Most members one group may have.
    pub max_group_members: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Store {
    /// `fjall` (embedded, an LSM store, the default), `sqlite` (embedded,
    /// one SQLite file) or `postgres` (shared by a cluster).
    pub backend: String,
    /// How long a client_msg_id is remembered for de-duplication.
    pub dedupe_retention_secs: u64,
    /// How often lazily moved device cursors are written.
    pub cursor_flush_ms: u64,
    /// `postgres`: the connection URL (`postgres://user@host:port/db`).
    pub url: String,
    /// `postgres`: the schema of the tables, created if missing; empty = the
    /// connection's `search_path` (usually `public`).
    pub schema: String,
    /// `postgres`: connections per node.
    pub pool_size: usize,
    /// `postgres`: opening a connection.
    pub connect_timeout_ms: u64,
    /// `postgres`: server-side `statement_timeout`.
    pub statement_timeout_ms: u64,
    /// `postgres`: longest any store call waits (pool included) before
    /// answering "unavailable".
    pub op_timeout_ms: u64,
}

/// Where presence is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Presence {
    /// `memory` (single node, the default) or `redis`.
    pub backend: String,
    /// Redis URLs: one standalone server, or several Redis Cluster seed nodes.
    pub urls: Vec<String>,
    /// Use the Redis Cluster client even with one URL.
    pub cluster: bool,
    /// Key prefix (several deployments may share one Redis).
    pub prefix: String,
    /// A dead node's devices drop out of presence after this long.
    pub ttl_secs: u64,
    /// How often the node refreshes its presence heartbeat.
    pub heartbeat_secs: u64,
}

/// How deliveries reach the node holding a device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Route {
    /// `local` (single node, the default) or `nats`.
    pub backend: String,
    pub url: String,
    /// Subject prefix: a node listens on `<prefix>.node.<node>`.
    pub prefix: String,
}

/// Where c2s reports and events for business servers go.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bus {
    /// `outbox` (the store's outbox, the default) or `jetstream`.
    pub backend: String,
    pub url: String,
    /// The JetStream stream's name.
    pub stream: String,
    /// Subject prefix: events go to `<prefix>.events.<app>.<topic>.<type>`.
    pub prefix: String,
    /// How long a resent c2s is recognised as a duplicate.
    pub dedupe_window_secs: u64,
    /// How long events are kept in the stream.
    pub max_age_secs: u64,
    /// Stream replicas (3 on a three-server NATS cluster).
    pub replicas: usize,
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            backend: "memory".into(),
            urls: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            prefix: "sb".into(),
            ttl_secs: 15,
            heartbeat_secs: 5,
        }
    }
}

impl Default for Route {
    fn default() -> Self {
        Route {
            backend: "local".into(),
            url: "nats://127.0.0.1:4222".into(),
            prefix: "sb".into(),
        }
    }
}

/// The HTTP API: operator key and request limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Api {
    /// The operator's key for `/v1/admin/*` and every app's endpoints.
    /// Unset: operator endpoints are off, except in demo mode (no `[[apps]]`),
    /// where a key is derived from the demo secret (`switchboard api-key --admin`).
    pub admin_key: Option<String>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most users in one push or presence request.
    pub max_targets: usize,
}

impl Default for Api {
    fn default() -> Self {
        let a = switchboard_api::ApiConfig::default();
        Api {
            admin_key: a.admin_key,
            max_body_bytes: a.max_body_bytes,
            max_targets: a.max_targets,
        }
    }
}

/// The webhook dispatcher (bus backend `outbox`): how it drains the outbox.
/// Destinations are per app: `[[apps]] webhooks = [...]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Webhook {
    /// How often the outbox is read for new events.
    pub poll_ms: u64,
    /// How often the whole outbox is read again (events committed out of id order).
    pub rescan_secs: u64,
    /// Events read per query.
    pub batch: usize,
    /// Events held in memory; past that the outbox waits on disk.
    pub max_in_flight: usize,
    /// Requests in flight at once, over all destinations.
    pub concurrency: usize,
    /// Per request, connect to last byte.
    pub timeout_ms: u64,
    /// First retry delay; doubles per failure, with jitter.
    pub retry_initial_ms: u64,
    /// Longest retry delay.
    pub retry_max_ms: u64,
}

impl Default for Webhook {
    fn default() -> Self {
        let d = switchboard_hooks::DispatcherConfig::default();
        Webhook {
            poll_ms: d.poll_interval.as_millis() as u64,
            rescan_secs: d.rescan_interval.as_secs(),
            batch: d.batch,
            max_in_flight: d.max_in_flight,
            concurrency: d.concurrency,
            timeout_ms: d.timeout.as_millis() as u64,
            retry_initial_ms: d.retry_initial.as_millis() as u64,
            retry_max_ms: d.retry_max.as_millis() as u64,
        }
    }
}

impl Webhook {
    pub fn dispatcher_config(&self) -> switchboard_hooks::DispatcherConfig {
        switchboard_hooks::DispatcherConfig {
            poll_interval: Duration::from_millis(self.poll_ms.max(1)),
            rescan_interval: Duration::from_secs(self.rescan_secs.max(1)),
            batch: self.batch.max(1),
            max_in_flight: self.max_in_flight.max(1),
            concurrency: self.concurrency.max(1),
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            retry_initial: Duration::from_millis(self.retry_initial_ms.max(1)),
            retry_max: Duration::from_millis(self.retry_max_ms.max(1)),
        }
    }
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            backend: "outbox".into(),
            url: "nats://127.0.0.1:4222".into(),
            stream: "SWITCHBOARD".into(),
            prefix: "sb".into(),
            dedupe_window_secs: 120,
            max_age_secs: 7 * 24 * 3600,
            replicas: 1,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./switchboard-data"),
            node: "local".into(),
            node_id: 0,
            listen: Listen::default(),
            tls: None,
            gate: Gate::default(),
            logic: Logic::default(),
            store: Store::default(),
            presence: Presence::default(),
            route: Route::default(),
            bus: Bus::default(),
            webhook: Webhook::default(),
            api: Api::default(),
            apps: Vec::new(),
            shutdown_grace_secs: 5,
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tcp: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        let g = GateConfig::default();
        Gate {
            max_frame_bytes: g.max_frame_bytes,
            max_connections: g.max_connections,
            login_timeout_ms: g.login_timeout.as_millis() as u64,
            keepalive_secs: g.keepalive.as_secs(),
            idle_keepalives: g.idle_keepalives,
            ack_timeout_ms: g.ack_timeout.as_millis() as u64,
            max_resends: g.max_resends,
            max_unacked: g.max_unacked,
            outbound_queue: g.outbound_queue,
            rate_per_sec: g.rate_per_sec,
            rate_burst: g.rate_burst,
            transient_rate_per_sec: g.transient_rate_per_sec,
            transient_rate_burst: g.transient_rate_burst,
            compression_threshold: g.compression_threshold,
            write_timeout_ms: g.write_timeout.as_millis() as u64,
            max_in_flight: g.max_in_flight,
            http_idle_timeout_ms: g.http_idle_timeout.as_millis() as u64,
            ws_allowed_origins: None,
        }
    }
}

impl Default for Logic {
    fn default() -> Self {
        let l = LogicConfig::default();
        Logic {
            max_body_bytes: l.max_body_bytes,
            max_devices_per_user: l.max_devices_per_user,
            max_sync_page: l.max_sync_page,
            max_group_members: l.max_group_members,
        }
    }
}

impl Default for Store {
    fn default() -> Self {
        Store {
            backend: "fjall".into(),
            dedupe_retention_secs: 7 * 24 * 3600,
            cursor_flush_ms: 1000,
            url: "postgres://postgres@127.0.0.1:5432/switchboard".into(),
            schema: String::new(),
            pool_size: 16,
            connect_timeout_ms: 3000,
            statement_timeout_ms: 5000,
            op_timeout_ms: 10_000,
        }
    }
}

/// `SWITCHBOARD_*` variables read by the command line itself.
const CLI_ONLY_ENV: &[&str] = &[
    "SWITCHBOARD_CONFIG",
    "SWITCHBOARD_LOG",
    "SWITCHBOARD_HTTP",
    "SWITCHBOARD_TCP",
    "SWITCHBOARD_URL",
    "SWITCHBOARD_TOKEN",
    "SWITCHBOARD_TOKEN_SECRET",
];

impl Config {
    /// Reads the file (if given), then `SWITCHBOARD_*` variables over it.
    pub fn load(file: Option<&Path>) -> Result<Config, config::ConfigError> {
        let mut b = config::Config::builder();
        if let Some(f) = file {
            b = b.add_source(
                config::File::from(f)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        // Variables that belong to the command line, not to this file's
        // settings, are left out (they would be unknown fields).
        let env: config::Map<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("SWITCHBOARD_") && !CLI_ONLY_ENV.contains(&k.as_str()))
            .collect();
        b = b.add_source(
            config::Environment::with_prefix("SWITCHBOARD")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        b.build()?.try_deserialize()
    }

    /// The gate's settings; a malformed `gate.ws_allowed_origins` entry is
    /// an error.
    pub fn gate_config(&self) -> Result<GateConfig, switchboard_gate::BadOrigin> {
        let g = &self.gate;
        let ws_origins = match &g.ws_allowed_origins {
            Some(list) => WsOrigins::from_list(list)?,
            // Demo mode is tried from pages served anywhere (a file, a dev
            // server on another port); a configured deployment knows its
            // origins.
            None if self.apps.is_empty() => WsOrigins::Any,
            None => WsOrigins::SameOrigin,
        };
        Ok(GateConfig {
            max_frame_bytes: g.max_frame_bytes,
            max_connections: g.max_connections,
            login_timeout: Duration::from_millis(g.login_timeout_ms),
            keepalive: Duration::from_secs(g.keepalive_secs.max(1)),
            idle_keepalives: g.idle_keepalives,
            ack_timeout: Duration::from_millis(g.ack_timeout_ms),
            max_resends: g.max_resends,
            max_unacked: g.max_unacked,
            outbound_queue: g.outbound_queue.max(1),
            rate_per_sec: g.rate_per_sec,
            rate_burst: g.rate_burst,
            transient_rate_per_sec: g.transient_rate_per_sec,
            transient_rate_burst: g.transient_rate_burst,
            compression_threshold: g.compression_threshold,
            write_timeout: Duration::from_millis(g.write_timeout_ms),
            max_in_flight: g.max_in_flight.max(1),
            http_idle_timeout: Duration::from_millis(g.http_idle_timeout_ms.max(1)),
            ws_origins,
        })
    }

    pub fn api_config(&self) -> switchboard_api::ApiConfig {
        switchboard_api::ApiConfig {
            admin_key: self.api.admin_key.clone().filter(|k| !k.is_empty()),
            max_body_bytes: self.api.max_body_bytes.max(1),
            max_targets: self.api.max_targets.max(1),
            console_token_secret: None,
        }
    }

    pub fn logic_config(&self) -> LogicConfig {
        LogicConfig {
            node: self.node.clone(),
            node_id: self.node_id,
            max_body_bytes: self.logic.max_body_bytes,
            max_devices_per_user: self.logic.max_devices_per_user,
            max_sync_page: self.logic.max_sync_page,
            max_group_members: self.logic.max_group_members,
        }
    }
}
