//! The presence conformance suite against the stored presences:
//! `RedisPresence` on the shared Redis
//! (`SWITCHBOARD_TEST_REDIS`), and `RedisPresence` on a private three-master
//! Redis Cluster. Keys live under a random prefix per test; the properties
//! remove what they add, and heartbeat keys are removed or expire. (The
//! embedded presence is a view of the hub, with nothing of its own to
//! record: core's unit tests cover it.)

use std::sync::Arc;
use std::time::Duration;

use switchboard_backends::redis_presence::{RedisPresence, RedisPresenceConfig};
use switchboard_core::Presence;
use switchboard_testkit::presence_conformance as pc;
use switchboard_testkit::redis_cluster::RedisCluster;
use switchboard_testkit::services::{self, redis_url, unique_prefix};

const TTL: Duration = Duration::from_secs(2);

fn redis(urls: Vec<String>, prefix: &str, node: &str) -> RedisPresence {
    RedisPresence::connect(RedisPresenceConfig {
        urls,
        node: node.into(),
        prefix: prefix.into(),
        ttl: TTL,
        heartbeat: Duration::from_millis(500),
        ..RedisPresenceConfig::default()
    })
    .expect("redis presence")
}

fn shared(prefix: &str, node: &str) -> RedisPresence {
    services::require("Redis", &redis_url());
    redis(vec![redis_url()], prefix, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_presence_conforms() {
    let prefix = unique_prefix();
    let p = Arc::new(shared(&prefix, "n1"));
    pc::run_all(p.clone(), "n1").await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_presence_drops_a_dead_nodes_devices_within_its_ttl() {
    let prefix = unique_prefix();
    let observer = shared(&prefix, "n1");
    let dying = Box::new(shared(&prefix, "n2"));
    let took = pc::dead_node_entries_expire(&observer, "n1", dying, "n2", TTL).await;
    eprintln!("dead node's device dropped out after {took:?} (ttl {TTL:?})");
    observer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_presence_ignores_a_restarted_nodes_earlier_life() {
    let prefix = unique_prefix();
    let observer = shared(&prefix, "n1");
    let old = Box::new(shared(&prefix, "n2"));
    let p2 = prefix.clone();
    let new = async move { Box::new(shared(&p2, "n2")) as Box<dyn Presence> };
    pc::restarted_node_does_not_revive_old_entries(&observer, old, new, "n2").await;
    observer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_presence_comes_back_after_redis_restarts() {
    let mut server = services::PrivateRedis::start();
    let p = redis(vec![server.url()], &unique_prefix(), "n1");
    let u = pc::session(
        &switchboard_testkit::store_conformance::fresh_user("outage"),
        "phone",
        "n1",
        1,
    );
    p.online(&u).await.expect("online");
    server.stop();
    let e = p.devices(&u.user).await.expect_err("redis is down");
    assert!(
        e.to_string().contains("redis"),
        "the error names redis: {e}"
    );
    assert!(p.ping().await.is_err());
    // The server comes back EMPTY: the heartbeat notices its key is gone and
    // re-registers this node's devices by itself.
    server.restart();
    pc::wait_devices(&p, &u.user, &["phone"], Duration::from_secs(15)).await;
    p.ping().await.expect("ping after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_presence_conforms_and_expires() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster start");
    let prefix = unique_prefix();
    let cfg = |node: &str| RedisPresenceConfig {
        urls: cluster.urls(),
        node: node.into(),
        prefix: prefix.clone(),
        ttl: TTL,
        heartbeat: Duration::from_millis(500),
        ..RedisPresenceConfig::default()
    };
    let p = Arc::new(RedisPresence::connect(cfg("n1")).expect("cluster presence"));
    pc::run_all(p.clone(), "n1").await;

    // Users land on different masters: keep 30 online and look.
    let users: Vec<_> = (0..30)
        .map(|_| switchboard_testkit::store_conformance::fresh_user("spread"))
        .collect();
    for u in &users {
        p.online(&pc::session(u, "d", "n1", 1))
            .await
            .expect("online");
    }
    let counts = cluster.key_counts();
    assert!(
        counts.iter().filter(|&&c| c > 0).count() >= 2,
        "keys spread over the masters: {counts:?}"
    );
    for u in &users {
        p.offline(u, "d", 1).await.expect("offline");
    }

    let dying = Box::new(RedisPresence::connect(cfg("n2")).expect("cluster presence"));
    let took = pc::dead_node_entries_expire(p.as_ref(), "n1", dying, "n2", TTL).await;
    eprintln!("cluster: dead node's device dropped out after {took:?} (ttl {TTL:?})");

    let p3 = RedisPresence::connect(cfg("n3")).expect("cluster presence");
    let dying = Box::new(RedisPresence::connect(cfg("n4")).expect("cluster presence"));
    pc::dead_nodes_devices_depart_once([p.as_ref(), &p3], dying, "n4", TTL).await;
    p3.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_presence_hands_out_a_dead_nodes_devices_once() {
    let prefix = unique_prefix();
    let (n1, n3) = (shared(&prefix, "n1"), shared(&prefix, "n3"));
    let dying = Box::new(shared(&prefix, "n2"));
    let took = pc::dead_nodes_devices_depart_once([&n1, &n3], dying, "n2", TTL).await;
    eprintln!("dead node's device handed out {took:?} after its death (ttl {TTL:?})");
    n1.shutdown().await;
    n3.shutdown().await;
}
