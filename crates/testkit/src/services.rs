//! The shared Redis and NATS servers tests run against, and private ones a
//! test starts, stops and restarts itself.
//!
//! Shared servers come from `SWITCHBOARD_TEST_REDIS` (default
//! `redis://127.0.0.1:6379`) and `SWITCHBOARD_TEST_NATS` (default
//! `nats://127.0.0.1:4222`); [`require`] fails the test naming the server
//! when it is not reachable. Tests namespace what they create with
//! [`unique_prefix`] so runs never see each other's keys, subjects or streams.
//! [`PrivateRedis`] and [`PrivateNats`] run `redis-server` / `nats-server` on
//! a free local port in a temporary directory, killed on drop.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared Redis for tests.
pub fn redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The shared NATS (with JetStream) for tests.
pub fn nats_url() -> String {
    std::env::var("SWITCHBOARD_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// `host:port` of a `scheme://host:port[/…]` URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// Panics, naming `name` and `url`, unless something accepts TCP connections there.
pub fn require(name: &str, url: &str) {
    let hp = host_port(url);
    let addrs: Vec<SocketAddr> = match hp.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => panic!("{name} at {url}: cannot resolve {hp}: {e}"),
    };
    let reachable = addrs
        .iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "{name} is not reachable at {url}: start it (bash .ci/services) or point the test elsewhere"
    );
}

/// A prefix no other test run uses: `t<16 hex digits>`.
pub fn unique_prefix() -> String {
    format!("t{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // std's RandomState is seeded randomly per process and per instance.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Waits (bounded) until 127.0.0.1:`port` accepts connections.
pub fn wait_port(what: &str, port: u16, within: Duration) {
    let start = Instant::now();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < within,
            "{what} did not start listening on {addr} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Spawns a server binary, panicking with its name when it is missing.
pub(crate) fn spawn(program: &str, args: &[String], log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("server log file");
    let err = out.try_clone().expect("server log file");
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program} (is it installed?): {e}"))
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A private `redis-server` on a free port, for tests that stop and restart it.
pub struct PrivateRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = PrivateRedis {
            port: free_port(),
            dir,
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (nothing persists: it comes back empty).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([self.dir.path().display().to_string()])
        .collect();
        self.child = Some(spawn(
            "redis-server",
            &args,
            &self.dir.path().join("redis.log"),
        ));
        wait_port("redis-server", self.port, Duration::from_secs(10));
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private `nats-server` with JetStream on a free port, its store in a
/// temporary directory kept across restarts.
pub struct PrivateNats {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateNats {
    pub fn start() -> PrivateNats {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut n = PrivateNats {
            port: free_port(),
            dir,
            child: None,
        };
        n.restart();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same port and store directory.
    pub fn restart(&mut self) {
        self.stop();
        let store: PathBuf = self.dir.path().join("js");
        let args = vec![
            "-a".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-js".into(),
            "-sd".into(),
            store.display().to_string(),
        ];
        self.child = Some(spawn(
            "nats-server",
            &args,
            &self.dir.path().join("nats.log"),
        ));
        wait_port("nats-server", self.port, Duration::from_secs(10));
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP/1.1 request to a node (`Connection: close`), with an optional
/// bearer token and JSON body; returns the status and the body. Plain HTTP
/// only, which is all a test node on 127.0.0.1 speaks.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    json: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = json.unwrap_or_default();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("HTTP answer timed out"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}
