//! Configuration: one TOML file, overridden by `SWITCHBOARD_*` environment
//! variables (`SWITCHBOARD_GATE__ACK_TIMEOUT_MS=5000`), overridden by flags.
//! Every setting has a default; docs/configuration.md lists them all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_core::{AppConfig, LogicConfig};
use switchboard_gate::GateConfig;

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
    pub compression_threshold: usize,
    pub write_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Logic {
    pub max_body_bytes: usize,
    pub max_devices_per_user: usize,
    pub max_sync_page: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Store {
    /// `sqlite` (embedded, the default).
    pub backend: String,
    /// How long a client_msg_id is remembered for de-duplication.
    pub dedupe_retention_secs: u64,
    /// How often lazily moved device cursors are written.
    pub cursor_flush_ms: u64,
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
            compression_threshold: g.compression_threshold,
            write_timeout_ms: g.write_timeout.as_millis() as u64,
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
        }
    }
}

impl Default for Store {
    fn default() -> Self {
        Store {
            backend: "sqlite".into(),
            dedupe_retention_secs: 7 * 24 * 3600,
            cursor_flush_ms: 1000,
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

    pub fn gate_config(&self) -> GateConfig {
        let g = &self.gate;
        GateConfig {
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
            compression_threshold: g.compression_threshold,
            write_timeout: Duration::from_millis(g.write_timeout_ms),
        }
    }

    pub fn logic_config(&self) -> LogicConfig {
        LogicConfig {
            node: self.node.clone(),
            node_id: self.node_id,
            max_body_bytes: self.logic.max_body_bytes,
            max_devices_per_user: self.logic.max_devices_per_user,
            max_sync_page: self.logic.max_sync_page,
        }
    }
}
