//! The before-send hook and the sensitive-word filter, with a real node, a
//! real hook server and real SDK clients: allow, reject (REJECTED with the
//! reason), replace, a hook that times out or is down under both policies,
//! masking and rejecting words, and a word list edited while the node runs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use base64::Engine;
use switchboard_core::hooks::{BeforeSendConfig, FilterAction, OnError, WordFilterConfig};
use switchboard_sdk::{SdkError, User, code};
use switchboard_testkit::sdk::{bodies, config, connect, demo, messages, no_more_messages};
use switchboard_testkit::server::{TestServer, token};

const T: Duration = Duration::from_secs(20);

fn shop(uid: &str) -> User {
    User {
        app: "shop".into(),
        uid: uid.into(),
    }
}

async fn connect_shop(url: &str, uid: &str) -> (switchboard_sdk::Client, switchboard_sdk::Events) {
    switchboard_sdk::Client::connect(config(url, &token("shop", uid), uid))
        .await
        .expect("shop client connects")
}

fn server_code(r: Result<switchboard_sdk::SendReceipt, SdkError>) -> (u32, String) {
    match r {
        Err(SdkError::Server { code, message }) => (code, message),
        other => panic!("expected a server error, got {other:?}"),
    }
}

type Seen = Arc<Mutex<Vec<serde_json::Value>>>;

/// The business's hook: decides by the message text.
async fn hook(State(seen): State<Seen>, Json(req): Json<serde_json::Value>) -> String {
    seen.lock().unwrap().push(req.clone());
    let text = req["body_text"].as_str().unwrap_or_default();
    match text {
        t if t.starts_with("reject") => r#"{"action":"reject","reason":"no thanks"}"#.into(),
        "replace me" => r#"{"action":"replace","body":"replaced!"}"#.into(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            r#"{"action":"allow"}"#.into()
        }
        "garbage" => "not json".into(),
        _ => r#"{"action":"allow"}"#.into(),
    }
}

async fn start_hook() -> (SocketAddr, Seen, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/check", post(hook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen, task)
}

fn hook_config(url: String, on_error: OnError) -> Option<BeforeSendConfig> {
    Some(BeforeSendConfig {
        url,
        timeout_ms: 300,
        on_error,
        secret: None,
    })
}

#[tokio::test]
async fn before_send_hook_allows_rejects_replaces_and_times_out() {
    let (addr, seen, hook_task) = start_hook().await;
    // demo fails open, shop fails closed.
    let s = TestServer::start_with(|c| {
        c.apps[0].before_send = hook_config(format!("http://{addr}/check"), OnError::Allow);
        c.apps[1].before_send = hook_config(format!("http://{addr}/check"), OnError::Reject);
    })
    .await;
    let url = s.tcp_url();
    let (alice, _ea) = connect(&url, "alice", "a1").await;
    let (_bob, mut bob) = connect(&url, "bob", "b1").await;
    let (seller, _es) = connect_shop(&url, "seller").await;
    let (_buyer, mut buyer) = connect_shop(&url, "buyer").await;

    // allow: stored as sent; the hook saw the message.
    alice
        .send(demo("bob"), "text", "hello")
        .await
        .expect("allowed");
    assert_eq!(bodies(&messages(&mut bob, 1, T).await), ["hello"]);
    let req = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(req["from"]["uid"], "alice");
    assert_eq!(req["to"]["uid"], "bob");
    assert_eq!(req["type"], "text");
    assert_eq!(
        req["body_base64"],
        base64::engine::general_purpose::STANDARD.encode("hello")
    );

    // reject: REJECTED with the hook's reason; nothing stored.
    let (c, m) = server_code(alice.send(demo("bob"), "text", "reject this").await);
    assert_eq!(c, code::REJECTED);
    assert!(m.contains("no thanks"), "{m}");

    // replace: the hook's body is stored and delivered.
    alice
        .send(demo("bob"), "text", "replace me")
        .await
        .expect("replaced");
    assert_eq!(bodies(&messages(&mut bob, 1, T).await), ["replaced!"]);

    // timeout, fail open: stored as sent.
    alice
        .send(demo("bob"), "text", "slow")
        .await
        .expect("fail open");
    assert_eq!(bodies(&messages(&mut bob, 1, T).await), ["slow"]);
    // a nonsense answer, fail open: stored as sent.
    alice
        .send(demo("bob"), "text", "garbage")
        .await
        .expect("fail open");
    assert_eq!(bodies(&messages(&mut bob, 1, T).await), ["garbage"]);
    no_more_messages(&mut bob, Duration::from_millis(200)).await;

    // timeout and nonsense, fail closed: HOOK_UNAVAILABLE, nothing stored.
    for text in ["slow", "garbage"] {
        let (c, _) = server_code(seller.send(shop("buyer"), "text", text).await);
        assert_eq!(c, code::HOOK_UNAVAILABLE, "{text}");
    }
    let (c, _) = server_code(seller.send(shop("buyer"), "text", "reject me").await);
    assert_eq!(c, code::REJECTED);
    seller
        .send(shop("buyer"), "text", "ok")
        .await
        .expect("allowed");
    assert_eq!(bodies(&messages(&mut buyer, 1, T).await), ["ok"]);
    no_more_messages(&mut buyer, Duration::from_millis(200)).await;

    s.stop().await;
    hook_task.abort();
}

#[tokio::test]
async fn a_hook_that_is_down_follows_the_policy() {
    // Bound and released: nothing listens there.
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let s = TestServer::start_with(|c| {
        c.apps[0].before_send = hook_config(format!("http://{dead}/check"), OnError::Allow);
        c.apps[1].before_send = hook_config(format!("http://{dead}/check"), OnError::Reject);
    })
    .await;
    let url = s.tcp_url();
    let (alice, _ea) = connect(&url, "alice", "a1").await;
    let (_bob, mut bob) = connect(&url, "bob", "b1").await;
    let (seller, _es) = connect_shop(&url, "seller").await;

    alice
        .send(demo("bob"), "text", "still works")
        .await
        .expect("fail open");
    assert_eq!(bodies(&messages(&mut bob, 1, T).await), ["still works"]);
    let (c, m) = server_code(seller.send(shop("buyer"), "text", "hi").await);
    assert_eq!(c, code::HOOK_UNAVAILABLE, "{m}");
    s.stop().await;
}

/// Writes the word list and moves its modification time forward, so a
/// rewrite within the same clock tick still counts as a change.
fn write_words(path: &std::path::Path, words: &str, age: u64) {
    std::fs::write(path, words).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(age))
        .unwrap();
}

#[tokio::test]
async fn word_filter_masks_rejects_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    write_words(&words, "# blocked\ndarn\n坏蛋\n", 0);
    let s = TestServer::start_with(|c| {
        c.apps[0].word_filter = Some(WordFilterConfig {
            words_file: words.clone(),
            action: FilterAction::Mask,
            reload_secs: Some(1),
        });
        c.apps[1].word_filter = Some(WordFilterConfig {
            words_file: words.clone(),
            action: FilterAction::Reject,
            reload_secs: Some(1),
        });
    })
    .await;
    let url = s.tcp_url();
    let (alice, _ea) = connect(&url, "alice", "a1").await;
    let (_bob, mut bob) = connect(&url, "bob", "b1").await;
    let (seller, _es) = connect_shop(&url, "seller").await;

    // mask: one star per character, case-insensitive, UTF-8 safe.
    let r = alice
        .send(demo("bob"), "text", "DARN, 你是坏蛋!")
        .await
        .expect("masked, stored");
    assert!(!r.duplicate);
    assert_eq!(bodies(&messages(&mut bob, 1, T).await), ["****, 你是**!"]);
    // Binary bodies are not filtered.
    let binary: &[u8] = b"darn\xff\xfe";
    alice
        .send(demo("bob"), "blob", binary.to_vec())
        .await
        .expect("binary stored");
    let got = messages(&mut bob, 1, T).await;
    assert_eq!(&got[0].1.body[..], binary);

    // reject: REJECTED naming the word.
    let (c, m) = server_code(seller.send(shop("buyer"), "text", "oh darn").await);
    assert_eq!(c, code::REJECTED);
    assert!(m.contains("darn"), "{m}");

    // Edit the list while the node runs: "heck" joins within a few checks.
    write_words(&words, "darn\nheck\n", 10);
    let mut masked = false;
    for _ in 0..40 {
        alice
            .send(demo("bob"), "text", "heck")
            .await
            .expect("stored");
        let got = messages(&mut bob, 1, T).await;
        if bodies(&got) == ["****"] {
            masked = true;
            break;
        }
        assert_eq!(bodies(&got), ["heck"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(masked, "the edited word list was never picked up");
    // ... and 坏蛋 left it.
    alice
        .send(demo("bob"), "text", "坏蛋")
        .await
        .expect("stored");
    assert_eq!(bodies(&messages(&mut bob, 1, T).await), ["坏蛋"]);
    s.stop().await;
}
