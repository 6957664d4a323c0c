//! Routing through a Redis Cluster: two nodes (in-process) whose presence is
//! a private three-master Redis Cluster, sharing PostgreSQL (a fresh schema)
//! and NATS (a fresh subject prefix). Users spread over the masters' slots
//! still find each other's devices on the other node. (The presence
//! conformance suite on the Redis Cluster runs in
//! crates/backends/tests/presence_conformance.rs.)

use std::process::{Command, Stdio};
use std::time::Duration;

use switchboard_testkit::redis_cluster::RedisCluster;
use switchboard_testkit::sdk::{bodies, connect, demo, messages};
use switchboard_testkit::server::TestServer;
use switchboard_testkit::services::{self, nats_url, unique_prefix};

const T: Duration = Duration::from_secs(30);

/// Drops the test's PostgreSQL schema at the end, pass or fail.
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(switchboard_testkit::pg::shared_url())
            .args(["-q", "-c"])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

async fn node(name: &str, id: u16, cluster: &RedisCluster, prefix: &str) -> TestServer {
    let (name, urls, prefix) = (name.to_string(), cluster.urls(), prefix.to_string());
    TestServer::start_with(move |c| {
        c.node = name;
        c.node_id = id;
        c.store.backend = "postgres".into();
        c.store.url = switchboard_testkit::pg::shared_url();
        c.store.schema = prefix.clone();
        c.presence.backend = "redis".into();
        c.presence.urls = urls;
        c.presence.prefix = prefix.clone();
        c.route.backend = "nats".into();
        c.route.url = nats_url();
        c.route.prefix = prefix;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_route_through_a_redis_cluster() {
    services::require("PostgreSQL", &switchboard_testkit::pg::shared_url());
    services::require("NATS", &nats_url());
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("redis cluster");
    let prefix = unique_prefix();
    let _schema = Schema(prefix.clone());
    let n1 = node("n1", 1, &cluster, &prefix).await;
    let n2 = node("n2", 2, &cluster, &prefix).await;

    // Ten receivers on n2 (their keys land on different masters), each with
    // a second device on n1; one sender on n1.
    let (alice, _ae) = connect(&n1.tcp_url(), "alice", "a1").await;
    let mut receivers = Vec::new();
    for i in 0..10 {
        let uid = format!("user{i}");
        let on_n2 = connect(&n2.tcp_url(), &uid, "phone").await;
        let on_n1 = connect(&n1.tcp_url(), &uid, "laptop").await;
        receivers.push((uid, on_n2, on_n1));
    }
    let counts = cluster.key_counts();
    assert!(
        counts.iter().filter(|&&c| c > 0).count() >= 2,
        "presence keys spread over the masters: {counts:?}"
    );
    for (uid, _, _) in &receivers {
        alice
            .send(demo(uid), "text", format!("hi {uid}"))
            .await
            .expect("ack");
    }
    for (uid, (_c2, ev2), (_c1, ev1)) in &mut receivers {
        let want = [format!("hi {uid}")];
        assert_eq!(bodies(&messages(ev2, 1, T).await), want, "{uid} on n2");
        assert_eq!(bodies(&messages(ev1, 1, T).await), want, "{uid} on n1");
    }
    for (_, (c2, _), (c1, _)) in &receivers {
        c2.close().await;
        c1.close().await;
    }
    alice.close().await;
    n1.stop().await;
    n2.stop().await;
}
