//! Three Switchboard nodes on one machine — three `switchboard serve`
//! processes (the real binary, so one can be `kill -9`ed) sharing PostgreSQL,
//! Redis and NATS JetStream, each test in its own namespace: a fresh
//! PostgreSQL schema, a Redis key prefix, a NATS subject prefix and stream.
//!
//! A "load balancer" in front of each node (an in-test TCP proxy that sends a
//! connection to its node while it is up, else to the next live one) plays
//! the part of the production load balancer, so clients of a killed node
//! reconnect to the others with the single URL they were given.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use switchboard_testkit::sdk::{
    assert_numbered, bodies, connect, demo, group_messages, messages, no_more_entries,
    no_more_messages, spawn_numbered_sender,
};
use switchboard_testkit::server::SECRET;
use switchboard_testkit::services::{self, nats_url, redis_url, unique_prefix};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(60);
const API_KEY: &str = "demo-api-key";
/// Presence TTL of the nodes (short, so the test sees a dead node clear).
const TTL_SECS: u64 = 3;

fn pg_url() -> String {
    switchboard_testkit::pg::shared_url()
}

/// A test's namespace in the shared services, dropped (best effort) at the end.
struct Namespace {
    prefix: String,
    stream: String,
}

impl Namespace {
    fn new() -> Namespace {
        services::require("PostgreSQL", &pg_url());
        services::require("Redis", &redis_url());
        services::require("NATS", &nats_url());
        let prefix = unique_prefix();
        Namespace {
            stream: format!("SB_{}", prefix.to_uppercase()),
            prefix,
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Heartbeat keys expire with their TTL; the killed nodes' device
        // entries, the stream and the schema are removed here.
        let scan = Command::new("redis-cli")
            .args(["-u", &redis_url(), "--scan", "--pattern"])
            .arg(format!("{}:*", self.prefix))
            .output();
        if let Ok(out) = scan {
            let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            if !keys.is_empty() {
                let _ = Command::new("redis-cli")
                    .args(["-u", &redis_url(), "DEL"])
                    .args(&keys)
                    .stdout(Stdio::null())
                    .status();
            }
        }
        let _ = Command::new("psql")
            .arg(pg_url())
            .args(["-q", "-c"])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.prefix))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let (url, stream) = (nats_url(), self.stream.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let c = async_nats::connect(url).await.ok()?;
                async_nats::jetstream::new(c)
                    .delete_stream(stream)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

struct Node {
    name: String,
    child: Child,
    tcp: SocketAddr,
    http: SocketAddr,
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], services::free_port()))
}

impl Node {
    fn start(ns: &Namespace, dir: &Path, i: usize) -> Node {
        let name = format!("n{i}");
        let (tcp, http) = (free_addr(), free_addr());
        let data: PathBuf = dir.join(&name);
        let config = dir.join(format!("{name}.toml"));
        let text = format!(
            r#"data_dir = {data:?}
node = "{name}"
node_id = {i}
shutdown_grace_secs = 1

[listen]
tcp = "{tcp}"
http = "{http}"

[store]
backend = "postgres"
url = "{pg}"
schema = "{prefix}"
cursor_flush_ms = 50

[presence]
backend = "redis"
urls = ["{redis}"]
prefix = "{prefix}"
ttl_secs = {TTL_SECS}
heartbeat_secs = 1

[route]
backend = "nats"
url = "{nats}"
prefix = "{prefix}"

[bus]
backend = "jetstream"
url = "{nats}"
stream = "{stream}"
prefix = "{prefix}"

[[apps]]
name = "demo"
jwt_secret = "{SECRET}"
api_key = "{API_KEY}"
notifications = {{ window_ms = 500, preview = true }}
"#,
            pg = pg_url(),
            prefix = ns.prefix,
            redis = redis_url(),
            nats = nats_url(),
            stream = ns.stream,
        );
        std::fs::write(&config, text).expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("SWITCHBOARD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn switchboard");
        Node {
            name,
            child,
            tcp,
            http,
        }
    }

    /// Waits (bounded) until `/readyz` answers 200: every backend is reachable.
    async fn wait_ready(&mut self) {
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("node {} exited during start: {status}", self.name);
            }
            if let Ok((200, _)) = http(self.http, "GET", "/readyz", None).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node {} not ready within 30 s", self.name);
    }

    fn url(&self) -> String {
        format!("tcp://{}", self.tcp)
    }

    fn kill9(&mut self) {
        // Child::kill is SIGKILL on Unix: no shutdown code runs.
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_cluster(ns: &Namespace, dir: &Path) -> Vec<Node> {
    let mut nodes = Vec::new();
    // One after the other: the first applies the schema migrations.
    for i in 1..=3 {
        let mut n = Node::start(ns, dir, i);
        n.wait_ready().await;
        nodes.push(n);
    }
    nodes
}

/// A load balancer for one node: connections go to `backends[0]` while it
/// accepts them, else to the next one that does.
async fn balancer(backends: Vec<SocketAddr>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let backends = Arc::new(backends);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let backends = backends.clone();
            tokio::spawn(async move {
                for b in backends.iter() {
                    let up = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(b));
                    if let Ok(Ok(mut server)) = up.await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                }
            });
        }
    });
    format!("tcp://{addr}")
}

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&Value>,
) -> std::io::Result<(u16, String)> {
    let body = json.map(|v| v.to_string());
    services::http(addr, method, path, Some(API_KEY), body.as_deref()).await
}

async fn api(node: &Node, path: &str, body: Value) -> Value {
    let (status, text) = http(node.http, "POST", path, Some(&body))
        .await
        .expect("HTTP API request");
    assert!(status == 200, "{path} on {}: {status} {text}", node.name);
    serde_json::from_str(&text).expect("JSON answer")
}

/// The nodes presence (asked through `via`'s API) says `uid`'s devices are on.
async fn devices_of(via: &Node, uid: &str) -> Vec<(String, String)> {
    let v = api(via, "/v1/apps/demo/presence", json!({ "users": [uid] })).await;
    v["users"][0]["devices"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .map(|d| {
                    (
                        d["device_id"].as_str().unwrap_or_default().to_string(),
                        d["node"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_chat_fan_out_and_push_across_nodes() {
    let ns = Namespace::new();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(&ns, dir.path()).await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);

    // Users on different nodes chat.
    let (alice, mut alice_ev) = connect(&n1.url(), "alice", "a1").await;
    let (bob, mut bob_ev) = connect(&n2.url(), "bob", "b1").await;
    alice
        .send(demo("bob"), "text", "hi bob, from n1")
        .await
        .expect("ack");
    assert_eq!(
        bodies(&messages(&mut bob_ev, 1, T).await),
        ["hi bob, from n1"]
    );
    bob.send(demo("alice"), "text", "hi alice, from n2")
        .await
        .expect("ack");
    assert_eq!(
        bodies(&messages(&mut alice_ev, 1, T).await),
        ["hi alice, from n2"]
    );

    // One user's devices on three nodes all receive, and a device's own send
    // reaches the user's other devices.
    let (carol1, mut c1) = connect(&n1.url(), "carol", "c1").await;
    let (_carol2, mut c2) = connect(&n2.url(), "carol", "c2").await;
    let (_carol3, mut c3) = connect(&n3.url(), "carol", "c3").await;
    let mut carol_nodes: Vec<String> = devices_of(n2, "carol")
        .await
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    carol_nodes.sort();
    assert_eq!(
        carol_nodes,
        ["n1", "n2", "n3"],
        "presence sees each device on its node"
    );
    alice
        .send(demo("carol"), "text", "to every device")
        .await
        .expect("ack");
    for ev in [&mut c1, &mut c2, &mut c3] {
        assert_eq!(bodies(&messages(ev, 1, T).await), ["to every device"]);
    }
    carol1
        .send(demo("bob"), "text", "carol from c1")
        .await
        .expect("ack");
    assert_eq!(
        bodies(&messages(&mut bob_ev, 1, T).await),
        ["carol from c1"]
    );
    for ev in [&mut c2, &mut c3] {
        assert_eq!(
            bodies(&messages(ev, 1, T).await),
            ["carol from c1"],
            "sender's other devices"
        );
    }

    // s2c through the HTTP API of one node reaches users on every node.
    let r = api(
        n3,
        "/v1/apps/demo/push",
        json!({ "to": ["alice", "bob", "carol"], "type": "notice", "body": "from the API of n3" }),
    )
    .await;
    assert_eq!(r["summary"]["failed"], 0, "{r}");
    for ev in [&mut alice_ev, &mut bob_ev, &mut c1, &mut c2, &mut c3] {
        assert_eq!(bodies(&messages(ev, 1, T).await), ["from the API of n3"]);
    }

    // c2s lands once on the JetStream stream, where a business server's
    // durable consumer reads it.
    let first = alice
        .c2s_with_id("r1", "order.placed", "{\"order\":1}")
        .await
        .expect("c2s ack");
    let again = alice
        .c2s_with_id("r1", "order.placed", "{\"order\":1}")
        .await
        .expect("c2s ack");
    assert!(
        !first.duplicate && again.duplicate,
        "resend recognised: {first:?} {again:?}"
    );
    assert_eq!(first.msg_id, again.msg_id);
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.expect("nats"));
    let stream = js.get_stream(&ns.stream).await.expect("stream exists");
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("shop-backend".into()),
            filter_subject: format!("{}.events.demo.c2s.>", ns.prefix),
            ..Default::default()
        })
        .await
        .expect("durable consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    let mut got = Vec::new();
    while let Some(m) = batch.next().await {
        let m = m.expect("message");
        got.push((
            m.subject.to_string(),
            String::from_utf8_lossy(&m.payload).into_owned(),
        ));
        m.ack().await.expect("ack");
    }
    assert_eq!(
        got,
        [(
            format!("{}.events.demo.c2s.order_placed", ns.prefix),
            "{\"order\":1}".to_string()
        )]
    );

    for ev in [&mut alice_ev, &mut bob_ev, &mut c1, &mut c2, &mut c3] {
        no_more_messages(ev, Duration::from_millis(300)).await;
    }
}

/// An event as a business server reads it from the stream.
struct StreamEvent {
    /// The subject's topic token (`user_offline`, …).
    topic: String,
    uid: String,
    body: Value,
}

/// Reads the demo app's events from the namespace's stream with a durable
/// consumer, as a business server would, until `enough` says so (bounded by
/// `T`), then once more to see anything extra.
async fn read_events(
    ns: &Namespace,
    durable: &str,
    enough: impl Fn(&[StreamEvent]) -> bool,
) -> Vec<StreamEvent> {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.expect("nats"));
    let stream = js.get_stream(&ns.stream).await.expect("stream exists");
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(durable.into()),
            filter_subject: format!("{}.events.demo.>", ns.prefix),
            ..Default::default()
        })
        .await
        .expect("durable consumer");
    let deadline = tokio::time::Instant::now() + T;
    let mut got: Vec<StreamEvent> = Vec::new();
    let mut last_round = false;
    while !last_round {
        last_round = enough(&got) || tokio::time::Instant::now() >= deadline;
        let mut batch = consumer
            .fetch()
            .max_messages(50)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("fetch");
        while let Some(m) = batch.next().await {
            let m = m.expect("message");
            let topic = m.subject.split('.').nth(3).unwrap_or_default().to_string();
            let uid = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Sb-Uid"))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            let body = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            got.push(StreamEvent { topic, uid, body });
            m.ack().await.expect("ack");
        }
    }
    got
}

/// Every platform event reaches JetStream, though the app has no webhook
/// (issue 15: only c2s used to): logins, a stored message and a logout, from
/// whichever node saw them, each once; and a burst to a user offline on every
/// node is one notification (issue 13). Read back as a business server would,
/// with a durable consumer on the app's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_events_reach_jetstream_without_a_webhook() {
    let ns = Namespace::new();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(&ns, dir.path()).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);

    let (alice, _alice_ev) = connect(&n1.url(), "alice", "a1").await;
    let (bob, mut bob_ev) = connect(&n2.url(), "bob", "b1").await;
    alice
        .send(demo("bob"), "text", "hi bob")
        .await
        .expect("ack");
    assert_eq!(bodies(&messages(&mut bob_ev, 1, T).await), ["hi bob"]);
    bob.logout().await.expect("logout");
    for _ in 0..200 {
        if devices_of(n1, "bob").await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(devices_of(n1, "bob").await.is_empty(), "bob logged out");
    // Bob is offline everywhere: a burst to him from n1 is one
    // notification, published by n1 (issue 13), with bob's unread badge.
    for text in ["one", "two", "three"] {
        alice.send(demo("bob"), "text", text).await.expect("ack");
    }

    let want = [
        "message_stored alice",
        "message_stored alice",
        "message_stored alice",
        "message_stored alice",
        "notification bob",
        "user_offline bob",
        "user_online alice",
        "user_online bob",
    ];
    let events = read_events(&ns, "crm", |got| got.len() >= want.len()).await;
    let mut got: Vec<String> = events
        .iter()
        .map(|e| format!("{} {}", e.topic, e.uid))
        .collect();
    got.sort();
    assert_eq!(got, want);
    let n = &events
        .iter()
        .find(|e| e.topic == "notification")
        .expect("a notification")
        .body;
    assert_eq!(n["messages"], 3, "{n}");
    assert_eq!(n["badge"], 4, "\"hi bob\" and the three, none read: {n}");
    assert_eq!(n["preview"], "three", "{n}");
    assert_eq!(n["peer"]["uid"], "alice", "{n}");
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_under_traffic_loses_and_duplicates_nothing() {
    let ns = Namespace::new();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(&ns, dir.path()).await;
    let tcp: Vec<SocketAddr> = nodes.iter().map(|n| n.tcp).collect();
    // The balancer in front of n3 fails over to n1, then n2.
    let lb3 = balancer(vec![tcp[2], tcp[0], tcp[1]]).await;

    // Alice (sender) and one of bob's devices are on n3, through its balancer;
    // bob's other device is on n2; dave is on n3 directly and stays down with it.
    let (_bob2, mut bob2_ev) = connect(&nodes[1].url(), "bob", "b2").await;
    let (_bob3, mut bob3_ev) = connect(&lb3, "bob", "b3").await;
    let (_dave, _dave_ev) = connect(&nodes[2].url(), "dave", "d1").await;
    let mut placement = devices_of(&nodes[0], "bob").await;
    placement.sort();
    assert_eq!(
        placement,
        [("b2".into(), "n2".into()), ("b3".into(), "n3".into())]
    );

    const N: usize = 60;
    // Across the crash the SDK resends with the same client_msg_id.
    let sender = spawn_numbered_sender(
        lb3.clone(),
        "alice",
        "a1",
        "bob",
        N,
        Duration::from_millis(15),
    );
    // Let traffic flow, then kill n3 mid-stream.
    let first = messages(&mut bob2_ev, 10, T).await;
    nodes[2].kill9();
    let killed_at = tokio::time::Instant::now();

    let acked = sender.await.expect("sender");
    let mut got2 = first;
    got2.extend(messages(&mut bob2_ev, N - 10, T).await);
    let got3 = messages(&mut bob3_ev, N, T).await;
    assert_numbered(&got2, &acked, N, "b2");
    assert_numbered(&got3, &acked, N, "b3");
    no_more_messages(&mut bob2_ev, Duration::from_millis(300)).await;
    no_more_messages(&mut bob3_ev, Duration::from_millis(300)).await;

    // Bob's device moved off n3; dave, who had nowhere else to go, drops out
    // of presence once n3's heartbeat expires.
    let moved = devices_of(&nodes[0], "bob").await;
    assert!(
        moved.iter().all(|(_, n)| n != "n3"),
        "bob's devices left n3: {moved:?}"
    );
    let mut cleared = false;
    for _ in 0..((TTL_SECS + 10) * 10) {
        if devices_of(&nodes[1], "dave").await.is_empty() {
            cleared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cleared,
        "dave (on the dead n3) still online {TTL_SECS}+10 s after the kill"
    );
    eprintln!(
        "dead node's presence cleared {:?} after kill -9 (ttl {TTL_SECS} s)",
        killed_at.elapsed()
    );

    // Business servers learn it too (issue 15): a surviving node announces
    // the dead node's devices with user.offline, reason node_lost, once.
    let is_daves_loss = |e: &StreamEvent| {
        e.topic == "user_offline" && e.uid == "dave" && e.body["reason"] == "node_lost"
    };
    let events = read_events(&ns, "crm", |got| got.iter().any(is_daves_loss)).await;
    let losses: Vec<&StreamEvent> = events.iter().filter(|e| is_daves_loss(e)).collect();
    assert_eq!(losses.len(), 1, "one user.offline for dave after n3 died");
    assert_eq!(losses[0].body["device_id"], "d1");
    assert_eq!(losses[0].body["node"], "n3");
    assert_eq!(losses[0].body["online_devices"], 0);
    eprintln!(
        "user.offline for the dead node's users {:?} after kill -9",
        killed_at.elapsed()
    );
}

/// Groups in the cluster: members spread over the three nodes, the sender's
/// node killed with -9 mid-stream. Every acknowledged post reaches every
/// member device once, in the group's order (the sender's other device too),
/// and a device that logs in afterwards on another node syncs them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_under_group_traffic_loses_and_duplicates_nothing() {
    let ns = Namespace::new();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(&ns, dir.path()).await;
    let tcp: Vec<SocketAddr> = nodes.iter().map(|n| n.tcp).collect();
    let lb3 = balancer(vec![tcp[2], tcp[0], tcp[1]]).await;

    let g = "/v1/apps/demo/groups/city-1";
    let (status, text) = http(nodes[1].http, "PUT", g, Some(&json!({"name": "City 1"})))
        .await
        .expect("create group");
    assert_eq!(status, 201, "{text}");
    let members = json!({"members": [{"uid": "alice"}, {"uid": "bob"}, {"uid": "carol"}]});
    api(&nodes[0], &format!("{g}/members"), members).await;

    // Alice posts from n3 (through its balancer); her second device is on
    // n1; bob is on n2 and n3 (balanced); carol on n1.
    let (_alice1, mut alice1_ev) = connect(&nodes[0].url(), "alice", "a2").await;
    let (_bob2, mut bob2_ev) = connect(&nodes[1].url(), "bob", "b2").await;
    let (_bob3, mut bob3_ev) = connect(&lb3, "bob", "b3").await;
    let (_carol, mut carol_ev) = connect(&nodes[0].url(), "carol", "c1").await;

    const N: usize = 60;
    let sender = {
        let lb3 = lb3.clone();
        tokio::spawn(async move {
            let (alice, _events) = connect(&lb3, "alice", "a1").await;
            let mut acked = Vec::with_capacity(N);
            for i in 0..N {
                let r = alice
                    .send_group_with_id(format!("g{i}"), "city-1", "text", format!("{i}"))
                    .await;
                acked.push(r.expect("every post is eventually acknowledged"));
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            alice.close().await;
            acked
        })
    };
    let first = group_messages(&mut bob2_ev, "city-1", 10, T).await;
    nodes[2].kill9();

    let acked = sender.await.expect("sender");
    let seqs: Vec<u64> = (1..=N as u64).collect();
    let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(acked.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs);
    let mut got_b2 = first;
    got_b2.extend(group_messages(&mut bob2_ev, "city-1", N - 10, T).await);
    let got = [
        ("bob b2", got_b2),
        ("bob b3", group_messages(&mut bob3_ev, "city-1", N, T).await),
        (
            "carol c1",
            group_messages(&mut carol_ev, "city-1", N, T).await,
        ),
        (
            "alice a2",
            group_messages(&mut alice1_ev, "city-1", N, T).await,
        ),
    ];
    for (who, got) in got {
        assert_eq!(bodies(&got), want, "{who}: every post once, in order");
        assert_eq!(
            got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            seqs,
            "{who}"
        );
    }
    for ev in [&mut bob2_ev, &mut bob3_ev, &mut carol_ev, &mut alice1_ev] {
        no_more_entries(ev, Duration::from_millis(300)).await;
    }
    // Carol's second device, offline throughout, logs in on n2 and syncs.
    let (_carol2, mut carol2_ev) = connect(&nodes[1].url(), "carol", "c2").await;
    let got = group_messages(&mut carol2_ev, "city-1", N, T).await;
    assert_eq!(bodies(&got), want, "carol c2: every post once, in order");
}

/// A revocation through one node's API kicks the user's devices on every
/// node with `KICK_TOKEN_REVOKED`, and every node refuses the old token
/// (the revocation is in PostgreSQL) while a token issued after it logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revocation_holds_on_every_node() {
    let ns = Namespace::new();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(&ns, dir.path()).await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let old = switchboard_testkit::server::token("demo", "dave");
    let (_d1, mut d1) = connect(&n1.url(), "dave", "d1").await;
    let (_d2, mut d2) = connect(&n2.url(), "dave", "d2").await;

    let r = api(n3, "/v1/apps/demo/users/dave/revoke", json!({})).await;
    assert_eq!(r["kicked"], 2, "{r}");
    let issued_before = r["issued_before"].as_u64().expect("issued_before");
    for ev in [&mut d1, &mut d2] {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            match tokio::time::timeout_at(deadline, ev.recv()).await {
                Ok(Some(switchboard_sdk::Event::Kicked { code, .. })) => {
                    assert_eq!(code, switchboard_sdk::code::KICK_TOKEN_REVOKED);
                    break;
                }
                Ok(Some(switchboard_sdk::Event::Closed)) | Ok(None) => {
                    panic!("closed without a kick")
                }
                Ok(Some(_)) => {}
                Err(_) => panic!("no kick within {T:?}"),
            }
        }
    }
    // A token issued at or after the revocation time logs in: wait for
    // the clock to reach it (under a second: the time is rounded up).
    while switchboard_core::now_ms() < issued_before as i64 * 1000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = switchboard_core::auth::issue_token(SECRET, "demo", "dave", 600).expect("token");
    for n in &nodes {
        let cfg = |t: &str| switchboard_testkit::sdk::config(&n.url(), t, "probe");
        let refused = switchboard_sdk::Client::connect(cfg(&old)).await;
        assert_eq!(
            refused.err().and_then(|e| e.code()),
            Some(switchboard_sdk::code::TOKEN_INVALID),
            "old token on {}",
            n.name
        );
        let (c, _) = switchboard_sdk::Client::connect(cfg(&fresh))
            .await
            .unwrap_or_else(|e| panic!("a fresh token on {}: {e}", n.name));
        c.close().await;
    }
    let _ = (n1, n2);
}

/// Conversations across nodes (PostgreSQL store, Redis presence, NATS
/// route): unread counts after offline sends, a read receipt reaching the
/// sender's two devices on two other nodes, the reader's other device
/// learning its read, and a transient message reaching only the online
/// device on another node, never stored.
#[tokio::test]
async fn conversations_receipts_and_transient_messages_across_nodes() {
    let ns = Namespace::new();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(&ns, dir.path()).await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let (alice, _a) = connect(&n1.url(), "alice", "a1").await;
    let (_alice2, mut alice2) = connect(&n2.url(), "alice", "a2").await;
    for body in ["one", "two"] {
        alice.send(demo("bob"), "text", body).await.unwrap();
    }
    let (bob, mut bob_events) = connect(&n3.url(), "bob", "b1").await;
    let got = switchboard_testkit::sdk::messages(&mut bob_events, 2, T).await;
    let list = bob.conversations("", 0).await.unwrap();
    assert_eq!(list.total_unread, 2, "{list:?}");
    // Bob reads on another node; alice's device on n2 gets the receipt.
    let (bob2, mut bob2_events) = connect(&n2.url(), "bob", "b2").await;
    switchboard_testkit::sdk::messages(&mut bob2_events, 2, T).await;
    bob2.mark_read(demo("alice"), got[1].0).await.unwrap();
    let r = receipt(&mut alice2).await;
    assert_eq!(r.read.unwrap().msg_id, got[1].1.msg_id);
    receipt(&mut bob_events).await;
    assert_eq!(bob.conversations("", 0).await.unwrap().total_unread, 0);
    // A transient message: bob2 (n2) and bob (n3) are online; nothing stored.
    bob2.close().await;
    // Presence forgets the closed device a moment after the close returns.
    let deadline = tokio::time::Instant::now() + T;
    while devices_of(n1, "bob").await.len() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "bob2 still online");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A courier's positions, many in flight at once from one connection:
    // each reaches bob's one online device, in the order sent.
    const POSITIONS: usize = 30;
    let sends =
        (0..POSITIONS).map(|i| alice.send_transient(demo("bob"), "position", i.to_string()));
    for sent in futures::future::join_all(sends).await {
        assert_eq!(sent.unwrap().devices_reached, 1);
    }
    let mut positions = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while positions.len() < POSITIONS {
        match tokio::time::timeout_at(deadline, bob_events.recv()).await {
            Ok(Some(switchboard_sdk::Event::Online { message })) => {
                assert_eq!(message.r#type, "position");
                positions.push(String::from_utf8_lossy(&message.body).into_owned());
            }
            Ok(Some(switchboard_sdk::Event::Message { seq, message })) => {
                panic!("a stored entry {seq}: {message:?}")
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("{} of {POSITIONS} transient messages", positions.len()),
        }
    }
    let sent_order: Vec<String> = (0..POSITIONS).map(|i| i.to_string()).collect();
    assert_eq!(
        positions, sent_order,
        "transient messages keep the sender's order"
    );
    let (status, text) = http(
        n1.http,
        "GET",
        "/v1/apps/demo/users/bob/conversations",
        None,
    )
    .await
    .expect("HTTP API request");
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).expect("JSON answer");
    assert_eq!(body["total_unread"], 0, "{body}");
    assert_eq!(body["conversations"][0]["last"]["message"]["body"], "two");

    // Alice (n1) recalls "two": bob's device online on n3 gets the notice;
    // his device on n2, offline now, learns it through sync on n1.
    let recalled = got[1].1.msg_id;
    alice.recall(recalled).await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, bob_events.recv()).await {
            Ok(Some(switchboard_sdk::Event::Message { message, .. })) => {
                if let Some(now) = message.amended {
                    assert!(now.msg_id == recalled && now.recalled && now.body.is_empty());
                    break;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("no recall notice"),
        }
    }
    let (_bob2, mut bob2_events) = connect(&n1.url(), "bob", "b2").await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, bob2_events.recv()).await {
            Ok(Some(switchboard_sdk::Event::Message { message, .. }))
                if message.amended.is_some() =>
            {
                assert!(message.amended.unwrap().recalled);
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("no recall notice in sync"),
        }
    }
    let (_, text) = http(
        n2.http,
        "GET",
        "/v1/apps/demo/users/bob/conversations",
        None,
    )
    .await
    .expect("HTTP API request");
    let body: Value = serde_json::from_str(&text).expect("JSON answer");
    assert_eq!(
        body["conversations"][0]["last"]["message"]["recalled"],
        true
    );
}

/// Waits for a read-receipt entry (skipping other events).
async fn receipt(events: &mut switchboard_sdk::Events) -> switchboard_sdk::Message {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(switchboard_sdk::Event::Message { message, .. })) if message.read.is_some() => {
                return message;
            }
            Ok(Some(switchboard_sdk::Event::Closed)) | Ok(None) => panic!("closed"),
            Ok(Some(_)) => {}
            Err(_) => panic!("no receipt within {T:?}"),
        }
    }
}
