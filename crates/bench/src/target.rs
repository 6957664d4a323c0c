//! The systems under test: a Switchboard node (started here as a child
//! `switchboard serve` with a temporary data dir and raised limits, or one
//! already running at `--url`, or the nodes of a cluster at several
//! `--url`s), the Mosquitto peer at `--mqtt` and the RabbitMQ peer at
//! `--amqp`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::cpu::{CpuMeter, pid_listening_on};
use crate::{BenchError, Common};

/// HS256 secret of the app a spawned node is configured with.
const BENCH_SECRET: &str = "bench-secret-0123456789abcdef";

/// A Switchboard node under test.
pub struct Target {
    /// The first node's TCP address: senders and logins of one-node scenarios.
    pub tcp: SocketAddr,
    /// Every node's TCP address (one unless several `--url`s were given).
    pub tcps: Vec<SocketAddr>,
    pub http: SocketAddr,
    pub app: String,
    secret: String,
    pub api_key: String,
    /// The server process, for its RSS (`/proc/<pid>/status`): the first
    /// of `pids`.
    pub pid: Option<u32>,
    /// Every node process, for CPU and RSS summed over the cluster.
    pub pids: Vec<u32>,
    pub ws: bool,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    /// Starts a node, or describes the one at `--url`.
    pub async fn start(c: &Common) -> Result<Target, BenchError> {
        match &c.url {
            Some(urls) => {
                let tcps = parse_urls(urls)?;
                Ok(Target {
                    tcp: tcps[0],
                    tcps,
                    http: c
                        .http
                        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
                    app: c.app.clone(),
                    secret: c.secret.clone().ok_or_else(|| {
                        BenchError::Usage("--url needs --secret (the app's HS256 secret)".into())
                    })?,
                    api_key: c.api_key.clone().unwrap_or_default(),
                    pid: c.server_pid.first().copied(),
                    pids: c.server_pid.clone(),
                    ws: c.ws,
                    child: None,
                    _dir: None,
                })
            }
            None => Target::spawn(c).await,
        }
    }

    async fn spawn(c: &Common) -> Result<Target, BenchError> {
        let dir = tempfile::Builder::new().prefix("sb-bench-").tempdir()?;
        let config = dir.path().join("bench.toml");
        let data = dir.path().join("data");
        // Limits raised so the generator, not a per-connection rate limit,
        // decides the load; everything else is the shipped default.
        let toml = format!(
            r#"data_dir = "{data}"
node = "bench"
shutdown_grace_secs = 2

[listen]
http = "127.0.0.1:0"
tcp = "127.0.0.1:0"

[gate]
rate_per_sec = 1000000
rate_burst = 1000000
transient_rate_per_sec = 1000000
transient_rate_burst = 1000000
outbound_queue = {queue}
max_unacked = 100000

[store]
backend = "{store}"

[[apps]]
name = "bench"
jwt_secret = "{BENCH_SECRET}"
api_key = "bench-api-key"
"#,
            data = data.display(),
            queue = c.outbound_queue,
            store = c.store,
        );
        std::fs::write(&config, toml)?;
        let bin = match &c.server_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?,
        };
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let mut child = Command::new(&bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("SWITCHBOARD_LOG", &c.server_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Server(format!("cannot start {}: {e}", bin.display())))?;
        let pid = child.id();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Server("no stdout from the server".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        // "switchboard: TCP on A, HTTP and WebSocket on http://B/ws"
        let line = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.starts_with("switchboard: TCP on") {
                    return Some(l);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| {
            BenchError::Server(format!(
                "the server did not say where it listens; see {}",
                dir.path().join("server.log").display()
            ))
        })?;
        let (tcp, http) = parse_listen_line(&line).ok_or_else(|| {
            BenchError::Server(format!("unexpected line from the server: {line}"))
        })?;
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Target {
            tcp,
            tcps: vec![tcp],
            http,
            app: "bench".into(),
            secret: BENCH_SECRET.into(),
            api_key: "bench-api-key".into(),
            pid,
            pids: pid.into_iter().collect(),
            ws: c.ws,
            child: Some(child),
            _dir: Some(dir),
        })
    }

    /// The SDK URL of this node.
    pub fn url(&self) -> String {
        if self.ws {
            format!("ws://{}/ws", self.http)
        } else {
            format!("tcp://{}", self.tcp)
        }
    }

    /// The TCP address receiver `i` connects to: with one node, that node;
    /// with several, the nodes after the first in turn (senders are on the
    /// first), so each message is routed from one node to another.
    pub fn receiver_tcp(&self, i: usize) -> SocketAddr {
        match self.tcps.len() {
            0 | 1 => self.tcp,
            n => self.tcps[1 + i % (n - 1)],
        }
    }

    /// The SDK URL of receiver `i` (see [`Target::receiver_tcp`]).
    pub fn receiver_url(&self, i: usize) -> String {
        if self.ws {
            self.url()
        } else {
            format!("tcp://{}", self.receiver_tcp(i))
        }
    }

    /// Nodes under test (1 unless the bench drives a cluster).
    pub fn nodes(&self) -> usize {
        self.tcps.len().max(1)
    }

    pub fn transport(&self) -> &'static str {
        if self.ws { "ws" } else { "tcp" }
    }

    /// A login token for `uid`.
    pub fn token(&self, uid: &str) -> Result<String, BenchError> {
        switchboard_core::auth::issue_token(&self.secret, &self.app, uid, 24 * 3600)
            .map_err(|e| BenchError::Server(e.to_string()))
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The server's resident memory now, in bytes.
    pub fn rss(&self) -> Option<u64> {
        self.pid.and_then(rss_of)
    }

    /// Starts measuring the CPU of every node and of the generator.
    pub fn cpu_meter(&self) -> CpuMeter {
        CpuMeter::start(&self.pids)
    }

    /// Where the spawned server's log is.
    pub fn log_path(&self) -> Option<PathBuf> {
        self._dir.as_ref().map(|d| d.path().join("server.log"))
    }

    /// Stops a spawned node (SIGTERM, then SIGKILL after 5 s).
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await;
            }
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

/// `tcp://host:port[,tcp://host:port...]`: at least one address.
fn parse_urls(urls: &str) -> Result<Vec<SocketAddr>, BenchError> {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            url.strip_prefix("tcp://")
                .ok_or_else(|| BenchError::Usage(format!("--url {url}: expected tcp://host:port")))?
                .parse()
                .map_err(|_| BenchError::Usage(format!("--url {url}: not host:port")))
        })
        .collect()
}

fn parse_listen_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.strip_prefix("switchboard: TCP on ")?;
    let (tcp, rest) = rest.split_once(',')?;
    let http = rest.split("http://").nth(1)?.trim_end_matches("/ws").trim();
    Some((tcp.trim().parse().ok()?, http.parse().ok()?))
}

/// `VmRSS` of a process, in bytes.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The Mosquitto peer.
#[derive(Debug, Clone)]
pub struct Mqtt {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
}

impl Mqtt {
    pub fn from(c: &Common) -> Option<Mqtt> {
        c.mqtt.map(|addr| Mqtt {
            addr,
            pid: c.mqtt_pid.or_else(|| pid_listening_on(addr.port())),
        })
    }

    pub fn rss(&self) -> Option<u64> {
        self.pid.and_then(rss_of)
    }

    /// Starts measuring the broker's CPU and the generator's.
    pub fn cpu_meter(&self) -> CpuMeter {
        CpuMeter::start(&self.pid.into_iter().collect::<Vec<_>>())
    }
}

/// The RabbitMQ peer (the durable one): an AMQP URL and the broker's pid.
#[derive(Debug, Clone)]
pub struct Amqp {
    pub url: String,
    pub pid: Option<u32>,
}

impl Amqp {
    pub fn from(c: &Common) -> Option<Amqp> {
        c.amqp.as_ref().map(|url| Amqp {
            url: url.clone(),
            pid: c
                .amqp_pid
                .or_else(|| amqp_port(url).and_then(pid_listening_on)),
        })
    }

    /// Starts measuring the broker's CPU and the generator's.
    pub fn cpu_meter(&self) -> CpuMeter {
        CpuMeter::start(&self.pid.into_iter().collect::<Vec<_>>())
    }
}

/// The port of an `amqp://[user:pass@]host[:port][/vhost]` URL (5672 when absent).
pub fn amqp_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("amqp://")?;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    match host_port.rsplit_once(':') {
        Some((_, port)) => port.parse().ok(),
        None => Some(5672),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_line() {
        let (t, h) = parse_listen_line(
            "switchboard: TCP on 127.0.0.1:4000, HTTP and WebSocket on http://127.0.0.1:4001/ws",
        )
        .unwrap();
        assert_eq!(t.port(), 4000);
        assert_eq!(h.port(), 4001);
    }

    #[test]
    fn several_urls_are_a_cluster() {
        let v = parse_urls("tcp://127.0.0.1:1,tcp://127.0.0.1:2, tcp://127.0.0.1:3").unwrap();
        assert_eq!(v.iter().map(|a| a.port()).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(parse_urls("tcp://127.0.0.1:1,http://x").is_err());
        assert!(parse_urls("").is_err());
    }

    #[test]
    fn amqp_url_port() {
        assert_eq!(
            amqp_port("amqp://guest:guest@127.0.0.1:5673/%2f"),
            Some(5673)
        );
        assert_eq!(amqp_port("amqp://127.0.0.1"), Some(5672));
        assert_eq!(amqp_port("http://x"), None);
    }
}
