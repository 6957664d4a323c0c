//! The systems under test: a Switchboard node (started here as a child
//! `switchboard serve` with a temporary data dir and raised limits, or one
//! already running at `--url`), and the Mosquitto peer at `--mqtt`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{BenchError, Common};

/// HS256 secret of the app a spawned node is configured with.
const BENCH_SECRET: &str = "bench-secret-0123456789abcdef";

/// A Switchboard node under test.
pub struct Target {
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    pub app: String,
    secret: String,
    pub api_key: String,
    /// The server process, for its RSS (`/proc/<pid>/status`).
    pub pid: Option<u32>,
    pub ws: bool,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    /// Starts a node, or describes the one at `--url`.
    pub async fn start(c: &Common) -> Result<Target, BenchError> {
        match &c.url {
            Some(url) => {
                let tcp = url
                    .strip_prefix("tcp://")
                    .ok_or_else(|| {
                        BenchError::Usage(format!("--url {url}: expected tcp://host:port"))
                    })?
                    .parse()
                    .map_err(|_| BenchError::Usage(format!("--url {url}: not host:port")))?;
                Ok(Target {
                    tcp,
                    http: c
                        .http
                        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
                    app: c.app.clone(),
                    secret: c.secret.clone().ok_or_else(|| {
                        BenchError::Usage("--url needs --secret (the app's HS256 secret)".into())
                    })?,
                    api_key: c.api_key.clone().unwrap_or_default(),
                    pid: c.server_pid,
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
            http,
            app: "bench".into(),
            secret: BENCH_SECRET.into(),
            api_key: "bench-api-key".into(),
            pid,
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
            pid: c.mqtt_pid,
        })
    }

    pub fn rss(&self) -> Option<u64> {
        self.pid.and_then(rss_of)
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
}
