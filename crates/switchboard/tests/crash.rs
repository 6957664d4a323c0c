//! `kill -9` of the server process: nothing acknowledged is lost, in 1:1
//! chat and in groups. The node runs as a child process (the real binary),
//! is killed with SIGKILL right after acknowledging or mid-stream, and is
//! restarted on the same data directory.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use switchboard_testkit::http::{DEMO_KEY, Http};
use switchboard_testkit::sdk::{
    assert_numbered, bodies, connect, demo, group_messages, messages, no_more_entries,
    no_more_messages, spawn_numbered_sender,
};
use switchboard_testkit::server::SECRET;

const T: Duration = Duration::from_secs(30);

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

struct Node {
    child: Child,
    tcp: SocketAddr,
    http: SocketAddr,
}

impl Node {
    fn start(dir: &Path, tcp: SocketAddr, http: SocketAddr) -> Node {
        let config = dir.join("switchboard.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[listen]\ntcp = \"{tcp}\"\nhttp = \"{http}\"\n[[apps]]\nname = \"demo\"\njwt_secret = \"{SECRET}\"\napi_key = \"{DEMO_KEY}\"\n",
                dir.join("data")
            ),
        )
        .expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("SWITCHBOARD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn switchboard");
        let node = Node { child, tcp, http };
        node.wait_ready();
        node
    }

    fn wait_ready(&self) {
        for _ in 0..200 {
            if std::net::TcpStream::connect(self.tcp).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("switchboard did not start listening on {}", self.tcp);
    }

    fn kill9(mut self) {
        // Child::kill sends SIGKILL on Unix: no shutdown code runs.
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    fn url(&self) -> String {
        format!("tcp://{}", self.tcp)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_message_survives_kill_9_before_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let (tcp, http) = (free_port(), free_port());
    let node = Node::start(dir.path(), tcp, http);
    let (alice, _ae) = connect(&node.url(), "alice", "a1").await;
    // Bob is offline: the message is acknowledged but not delivered yet.
    let receipt = alice
        .send(demo("bob"), "text", "survives")
        .await
        .expect("acknowledged");
    node.kill9();

    let node = Node::start(dir.path(), tcp, http);
    let (_bob, mut bob_events) = connect(&node.url(), "bob", "b1").await;
    let got = messages(&mut bob_events, 1, T).await;
    assert_eq!(bodies(&got), ["survives"]);
    assert_eq!(got[0].1.msg_id, receipt.msg_id);
    no_more_messages(&mut bob_events, Duration::from_millis(300)).await;
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_traffic_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (tcp, http) = (free_port(), free_port());
    let node = Node::start(dir.path(), tcp, http);
    let url = node.url();
    let (_bob, mut bob_events) = connect(&url, "bob", "b1").await;
    const N: usize = 60;
    let sender = spawn_numbered_sender(
        url.clone(),
        "alice",
        "a1",
        "bob",
        N,
        Duration::from_millis(10),
    );
    // Let some traffic flow, then kill the node mid-stream and bring it back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.kill9();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _node = Node::start(dir.path(), tcp, http);

    let acked = sender.await.unwrap();
    let got = messages(&mut bob_events, N, T).await;
    assert_numbered(&got, &acked, N, "bob");
    no_more_messages(&mut bob_events, Duration::from_millis(300)).await;
}

/// Every acknowledged group post reaches every member device once, in the
/// group's order, when the node is killed with -9 mid-stream: members online
/// throughout (their SDKs reconnect and sync), and a device that logs in only
/// after the restart (from `login_ack.groups`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_group_traffic_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (tcp, http_addr) = (free_port(), free_port());
    let node = Node::start(dir.path(), tcp, http_addr);
    let url = node.url();
    let http = Http::at(node.http);
    let g = "/v1/apps/demo/groups/order-7";
    let created = http.put(g, json!({"name": "Order 7"})).await;
    assert_eq!(created.0, 201, "{}", created.1);
    let added = http
        .post(
            &format!("{g}/members"),
            json!({"members": [{"uid": "alice"}, {"uid": "bob"}, {"uid": "carol"}]}),
        )
        .await;
    assert_eq!(added.0, 200, "{}", added.1);

    let (_bob, mut bob_events) = connect(&url, "bob", "b1").await;
    let (_carol, mut carol_events) = connect(&url, "carol", "c1").await;
    const N: usize = 60;
    let sender = {
        let url = url.clone();
        tokio::spawn(async move {
            let (alice, _events) = connect(&url, "alice", "a1").await;
            let mut acked = Vec::with_capacity(N);
            for i in 0..N {
                let r = alice
                    .send_group_with_id(format!("g{i}"), "order-7", "text", format!("{i}"))
                    .await;
                acked.push(r.expect("every post is eventually acknowledged"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            alice.close().await;
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.kill9();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let node = Node::start(dir.path(), tcp, http_addr);

    let acked = sender.await.unwrap();
    let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    let seqs: Vec<u64> = (1..=N as u64).collect();
    assert_eq!(
        acked.iter().map(|r| r.seq).collect::<Vec<_>>(),
        seqs,
        "one group entry per post, in the order acknowledged"
    );
    for (who, events) in [("bob b1", &mut bob_events), ("carol c1", &mut carol_events)] {
        let got = group_messages(events, "order-7", N, T).await;
        assert_eq!(bodies(&got), want, "{who}: every post once, in order");
        assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), seqs);
        no_more_entries(events, Duration::from_millis(300)).await;
    }
    // Bob's second device was offline throughout: it learns at login that
    // the group has unread entries and syncs them, once, in order.
    let (_bob2, mut bob2_events) = connect(&node.url(), "bob", "b2").await;
    let got = group_messages(&mut bob2_events, "order-7", N, T).await;
    assert_eq!(bodies(&got), want, "bob b2: every post once, in order");
    no_more_entries(&mut bob2_events, Duration::from_millis(300)).await;
}
