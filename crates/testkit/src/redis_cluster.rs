//! A private three-master Redis Cluster on free local ports, for tests.
//!
//! [`RedisCluster::start`] runs three `redis-server --cluster-enabled yes`
//! in a temporary directory, joins them with `redis-cli --cluster create
//! … --cluster-replicas 0`, and waits until every node reports
//! `cluster_state:ok`. The servers are killed when it is dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::services::{spawn, wait_port};

/// A running Redis Cluster of three masters.
pub struct RedisCluster {
    /// The client ports of the masters.
    pub ports: Vec<u16>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

/// A port P with P and P + 10000 (the cluster bus port) free.
fn cluster_port() -> u16 {
    for _ in 0..200 {
        let p = crate::services::free_port();
        if p < 55535 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair (P, P+10000) for a Redis Cluster node");
}

fn redis_cli(args: &[String]) -> std::process::Output {
    Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli (is it installed?): {e}"))
}

impl RedisCluster {
    /// Starts the cluster; panics (naming the step) if it does not come up.
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let p = cluster_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let mut cluster = RedisCluster {
            ports: ports.clone(),
            children: Vec::new(),
            _dir: dir,
        };
        let dir = cluster._dir.path().to_path_buf();
        for &p in &ports {
            let node_dir = dir.join(p.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let args: Vec<String> = vec![
                "--port".into(),
                p.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                node_dir.join("nodes.conf").display().to_string(),
                "--dir".into(),
                node_dir.display().to_string(),
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "no".into(),
                "--daemonize".into(),
                "no".into(),
            ];
            cluster
                .children
                .push(spawn("redis-server", &args, &node_dir.join("redis.log")));
        }
        for &p in &ports {
            wait_port("redis-server (cluster node)", p, Duration::from_secs(10));
        }
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let out = redis_cli(&create);
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// Waits (bounded) until every node says `cluster_state:ok`.
    fn wait_ok(&self, within: Duration) {
        let start = Instant::now();
        for &p in &self.ports {
            loop {
                let out = redis_cli(&["-p".into(), p.to_string(), "cluster".into(), "info".into()]);
                if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    start.elapsed() < within,
                    "redis cluster node {p} not in cluster_state:ok within {within:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// `redis://127.0.0.1:P` of each master (seed URLs for a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// How many keys each master holds (to check keys spread over slots).
    pub fn key_counts(&self) -> Vec<u64> {
        self.ports
            .iter()
            .map(|p| {
                let out = redis_cli(&["-p".into(), p.to_string(), "dbsize".into()]);
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0)
            })
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
