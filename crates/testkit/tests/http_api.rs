//! The HTTP API against a real node, with real SDK clients on the receiving
//! end: every endpoint's happy path (push stored and online-only, send as a
//! user, presence, history, timeline, stats, kick, /metrics, /openapi.json)
//! and bad input (unknown app, missing or wrong key, malformed JSON,
//! oversized body, too many targets, empty uids), each with its status and
//! code, and nothing half-done.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_sdk::{Client, Event, Events, code};
use switchboard_testkit::http::Http;
use switchboard_testkit::sdk::{self, bodies, connect, messages, no_more_messages};
use switchboard_testkit::server::{TestServer, token};

const T: Duration = Duration::from_secs(20);
const KEY: &str = "demo-api-key";
const ADMIN: &str = "operator-key-0123";

/// Asserts an error answer: status and stable code.
#[track_caller]
fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "status of {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "code of {}", got.1);
    assert_eq!(got.1["error"]["status"], status, "{}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "a message for people: {}",
        got.1
    );
}

async fn start() -> TestServer {
    TestServer::start_with(|c| c.api.admin_key = Some(ADMIN.into())).await
}

/// Connects `uid` of app demo with a platform of its own.
async fn connect_on(url: &str, uid: &str, device: &str, platform: &str) -> (Client, Events) {
    let config = sdk::config(url, &token("demo", uid), device).with_platform(platform);
    Client::connect(config).await.expect("client connects")
}

/// The next online-only message (other events skipped).
async fn online_message(events: &mut Events) -> switchboard_sdk::Message {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Online { message })) => return message,
            Ok(Some(Event::Closed)) | Ok(None) => panic!("client closed before the online push"),
            Ok(Some(_)) => {}
            Err(_) => panic!("no online-only push within {T:?}"),
        }
    }
}

/// The kick that ends a client's session.
async fn kicked(events: &mut Events) -> u32 {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Kicked { code, .. })) => return code,
            Ok(Some(Event::Closed)) | Ok(None) => panic!("client closed without a kick"),
            Ok(Some(_)) => {}
            Err(_) => panic!("no kick within {T:?}"),
        }
    }
}

async fn timeline_head(http: &Http, uid: &str) -> u64 {
    let (status, body) = http
        .get(&format!("/v1/apps/demo/users/{uid}/timeline"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["timeline_head"].as_u64().expect("timeline_head")
}

#[tokio::test]
async fn stored_push_reaches_online_devices_and_offline_users_sync() {
    let s = start().await;
    let http = Http::new(&s);
    let (_c1, mut c1_events) = connect(&s.tcp_url(), "courier-1", "c1").await;
    let push = json!({
        "to": ["courier-1", "courier-2", "courier-1"],
        "type": "order.status",
        "body": {"order": 42, "status": "shipped"},
        "client_msg_id": "order-42-shipped",
    });
    let (status, body) = http.post("/v1/apps/demo/push", push.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mode"], "stored");
    let results = body["results"].as_array().expect("results");
    assert_eq!(
        results.len(),
        2,
        "a duplicate target is pushed once: {body}"
    );
    assert_eq!(results[0]["uid"], "courier-1");
    assert_eq!(results[0]["seq"], 1);
    assert_eq!(results[0]["devices_reached"], 1);
    assert_eq!(results[1]["uid"], "courier-2");
    assert_eq!(results[1]["seq"], 1);
    assert_eq!(results[1]["devices_reached"], 0, "courier-2 is offline");
    assert!(results.iter().all(|r| r["error"].is_null()));
    assert_eq!(
        body["summary"],
        json!({"users": 2, "users_reached": 1, "devices_reached": 1, "failed": 0})
    );

    let got = messages(&mut c1_events, 1, T).await;
    assert_eq!(bodies(&got), [r#"{"order":42,"status":"shipped"}"#]);
    assert_eq!(got[0].0, 1);
    let m = &got[0].1;
    assert_eq!(m.r#type, "order.status");
    assert_eq!(
        m.msg_id.to_string(),
        results[0]["msg_id"].as_str().expect("msg_id")
    );
    assert_eq!(
        m.from.as_ref().expect("from").uid,
        "",
        "the app's system sender"
    );

    // The offline courier gets it when it connects.
    let (_c2, mut c2_events) = connect(&s.ws_url(), "courier-2", "c2").await;
    let got = messages(&mut c2_events, 1, T).await;
    assert_eq!(bodies(&got), [r#"{"order":42,"status":"shipped"}"#]);

    // A resend of the request stores nothing new.
    let (status, again) = http.post("/v1/apps/demo/push", push).await;
    assert_eq!(status, 200, "{again}");
    for (first, second) in results
        .iter()
        .zip(again["results"].as_array().expect("results"))
    {
        assert_eq!(second["duplicate"], true);
        assert_eq!(second["msg_id"], first["msg_id"]);
        assert_eq!(second["seq"], first["seq"]);
    }
    assert_eq!(timeline_head(&http, "courier-1").await, 1);
    assert_eq!(timeline_head(&http, "courier-2").await, 1);
    no_more_messages(&mut c1_events, Duration::from_millis(300)).await;

    // A string body is sent as its bytes, not as a JSON string.
    let (status, body) = http
        .post(
            "/v1/apps/demo/push",
            json!({"to": ["courier-1"], "type": "note", "body": "plain text"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        bodies(&messages(&mut c1_events, 1, T).await),
        ["plain text"]
    );
    s.stop().await;
}

#[tokio::test]
async fn online_only_push_reaches_only_devices_online_now() {
    let s = start().await;
    let http = Http::new(&s);
    let (_a, mut a_events) = connect(&s.tcp_url(), "courier-a", "a1").await;
    let (_a2, mut a2_events) = connect_on(&s.ws_url(), "courier-a", "a2", "web").await;
    let (status, body) = http
        .post(
            "/v1/apps/demo/push",
            json!({
                "to": ["courier-a", "courier-b"],
                "type": "delivery.offer",
                "body": {"offer": 7},
                "mode": "online_only",
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mode"], "online_only");
    let r = &body["results"];
    assert_eq!(
        (r[0]["uid"].as_str(), r[0]["devices_reached"].as_u64()),
        (Some("courier-a"), Some(2))
    );
    assert_eq!(
        (r[1]["uid"].as_str(), r[1]["devices_reached"].as_u64()),
        (Some("courier-b"), Some(0))
    );
    assert!(
        r[0]["seq"].is_null() && r[1]["seq"].is_null(),
        "nothing stored"
    );
    assert_eq!(r[0]["msg_id"], r[1]["msg_id"], "one message for everyone");

    for events in [&mut a_events, &mut a2_events] {
        let m = online_message(events).await;
        assert_eq!(m.r#type, "delivery.offer");
        assert_eq!(&m.body[..], br#"{"offer":7}"#);
    }
    // A summary-only answer for big fan-outs: totals, no per-user list.
    let (status, body) = http
        .post(
            "/v1/apps/demo/push",
            json!({"to": ["courier-a", "courier-b"], "type": "t", "mode": "online_only", "report": "summary"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"], json!([]));
    assert_eq!(
        body["summary"],
        json!({"users": 2, "users_reached": 1, "devices_reached": 2, "failed": 0})
    );
    online_message(&mut a_events).await;
    online_message(&mut a2_events).await;

    // Nothing on any timeline: the offline courier never sees it.
    assert_eq!(timeline_head(&http, "courier-a").await, 0);
    assert_eq!(timeline_head(&http, "courier-b").await, 0);
    let (_b, mut b_events) = connect(&s.tcp_url(), "courier-b", "b1").await;
    no_more_messages(&mut b_events, Duration::from_millis(300)).await;
    s.stop().await;
}

#[tokio::test]
async fn send_as_user_is_a_c2c_with_the_same_dedupe() {
    let s = start().await;
    let http = Http::new(&s);
    let (_bob, mut bob_events) = connect(&s.tcp_url(), "bob", "b1").await;
    let (_alice, mut alice_events) = connect(&s.tcp_url(), "alice", "a1").await;
    let send = json!({
        "to": "bob",
        "type": "text",
        "body": {"text": "hi bob"},
        "client_msg_id": "m-1",
    });
    let (status, first) = http
        .post("/v1/apps/demo/users/alice/messages", send.clone())
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["seq"].as_u64(), first["duplicate"].as_bool()),
        (Some(1), Some(false))
    );
    let got = messages(&mut bob_events, 1, T).await;
    assert_eq!(bodies(&got), [r#"{"text":"hi bob"}"#]);
    assert_eq!(got[0].1.from.as_ref().expect("from").uid, "alice");
    // Alice's own devices see what was sent in her name.
    assert_eq!(
        bodies(&messages(&mut alice_events, 1, T).await),
        [r#"{"text":"hi bob"}"#]
    );

    let (status, again) = http.post("/v1/apps/demo/users/alice/messages", send).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["msg_id"], first["msg_id"]);
    assert_eq!(again["seq"], first["seq"]);
    assert_eq!(timeline_head(&http, "bob").await, 1, "stored once");
    no_more_messages(&mut bob_events, Duration::from_millis(300)).await;

    // Binary bodies travel as base64 and come back with body = null.
    let (status, body) = http
        .post(
            "/v1/apps/demo/users/alice/messages",
            json!({"to": "bob", "type": "bin", "body_base64": "AP8=", "client_msg_id": "m-2"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = messages(&mut bob_events, 1, T).await;
    assert_eq!(&got[0].1.body[..], &[0u8, 255]);
    let (_, page) = http.get("/v1/apps/demo/users/bob/timeline?since=1").await;
    assert_eq!(page["entries"][0]["message"]["body"], Value::Null);
    assert_eq!(page["entries"][0]["message"]["body_base64"], "AP8=");
    s.stop().await;
}

#[tokio::test]
async fn presence_lists_devices_platforms_and_since() {
    let s = start().await;
    let http = Http::new(&s);
    let (_p, _pe) = connect_on(&s.tcp_url(), "agent-1", "phone", "mobile").await;
    let (_w, _we) = connect_on(&s.ws_url(), "agent-1", "browser", "web").await;
    let (status, body) = http
        .post(
            "/v1/apps/demo/presence",
            json!({"users": ["agent-1", "never-seen", "agent-1"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let users = body["users"].as_array().expect("users");
    assert_eq!(users.len(), 2, "{body}");
    let agent = &users[0];
    assert_eq!(agent["uid"], "agent-1");
    assert_eq!(agent["online"], true);
    assert_eq!(agent["platforms"], json!(["mobile", "web"]));
    let mut devices: Vec<&str> = agent["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["device_id"].as_str())
        .collect();
    devices.sort();
    assert_eq!(devices, ["browser", "phone"]);
    assert!(agent["since_ms"].as_i64().is_some_and(|t| t > 0));
    assert_eq!(
        users[1],
        json!({"uid": "never-seen", "online": false, "devices": [], "platforms": [], "since_ms": null}),
        "an unknown user is simply offline"
    );
    s.stop().await;
}

#[tokio::test]
async fn history_pages_newest_first_and_timeline_pages_after_a_seq() {
    let s = start().await;
    let http = Http::new(&s);
    let mut ids = Vec::new();
    for i in 0..5 {
        let (from, to) = if i % 2 == 0 {
            ("alice", "bob")
        } else {
            ("bob", "alice")
        };
        let (status, body) = http
            .post(
                &format!("/v1/apps/demo/users/{from}/messages"),
                json!({"to": to, "type": "text", "body": format!("m{i}"), "client_msg_id": format!("h{i}")}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["msg_id"].as_str().expect("msg_id").to_owned());
    }
    // Noise: another pair.
    http.post(
        "/v1/apps/demo/users/alice/messages",
        json!({"to": "carol", "type": "text", "body": "x", "client_msg_id": "n1"}),
    )
    .await;
    ids.reverse();

    let mut seen = Vec::new();
    let mut path = "/v1/apps/demo/conversations/bob/alice/messages?limit=2".to_owned();
    for _ in 0..5 {
        let (status, page) = http.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let msgs = page["messages"].as_array().expect("messages");
        assert!(msgs.len() <= 2);
        seen.extend(
            msgs.iter()
                .map(|m| m["msg_id"].as_str().expect("id").to_owned()),
        );
        match page["next_before"].as_str() {
            Some(next) => {
                path =
                    format!("/v1/apps/demo/conversations/bob/alice/messages?limit=2&before={next}")
            }
            None => break,
        }
    }
    assert_eq!(seen, ids, "every message once, newest first");
    let (_, newest) = http
        .get("/v1/apps/demo/conversations/alice/bob/messages?limit=1")
        .await;
    let m = &newest["messages"][0];
    assert_eq!(
        (m["body"].as_str(), m["type"].as_str()),
        (Some("m4"), Some("text"))
    );
    assert_eq!(
        (m["from"]["uid"].as_str(), m["to"]["uid"].as_str()),
        (Some("alice"), Some("bob"))
    );
    assert_eq!(m["body_base64"], "bTQ=");

    // Bob's timeline: entries 1..=5, paged after a sequence.
    let (_, page) = http
        .get("/v1/apps/demo/users/bob/timeline?since=0&limit=2")
        .await;
    assert_eq!(page["timeline_head"], 5);
    assert_eq!(page["has_more"], true);
    let seqs: Vec<u64> = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [1, 2]);
    let (_, rest) = http.get("/v1/apps/demo/users/bob/timeline?since=2").await;
    assert_eq!(rest["has_more"], false);
    assert_eq!(rest["entries"].as_array().map(Vec::len), Some(3));
    s.stop().await;
}

#[tokio::test]
async fn stats_count_connections_and_kick_closes_every_device() {
    let s = start().await;
    let http = Http::new(&s);
    let (_m, mut m_events) = connect_on(&s.tcp_url(), "mallory", "m1", "mobile").await;
    let (_w, mut w_events) = connect_on(&s.ws_url(), "mallory", "m2", "web").await;
    http.post(
        "/v1/apps/demo/users/alice/messages",
        json!({"to": "mallory", "type": "text", "body": "x", "client_msg_id": "s1"}),
    )
    .await;

    let stats = http
        .call(reqwest::Method::GET, "/v1/admin/stats", Some(ADMIN), None)
        .await;
    assert_eq!(stats.0, 200, "{}", stats.1);
    let c = &stats.1["connections"];
    assert_eq!(c["total"], 2, "{}", stats.1);
    assert_eq!(c["by_app"], json!({"demo": 2}));
    assert_eq!(c["by_platform"], json!({"mobile": 1, "web": 1}));
    assert_eq!(stats.1["messages_stored_total"], 1);
    assert!(stats.1["pushes_total"].as_u64().is_some_and(|p| p >= 2));
    assert!(stats.1["messages_per_sec"].as_f64().is_some());
    assert_eq!(stats.1["node"], "local");

    let (status, body) = http
        .call(
            reqwest::Method::POST,
            "/v1/apps/demo/users/mallory/kick",
            Some(KEY),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kicked"], 2);
    assert_eq!(kicked(&mut m_events).await, code::KICK_ADMIN);
    assert_eq!(kicked(&mut w_events).await, code::KICK_ADMIN);
    // Presence follows once the sessions have ended.
    let mut online = true;
    for _ in 0..200 {
        let (_, p) = http
            .post("/v1/apps/demo/presence", json!({"users": ["mallory"]}))
            .await;
        online = p["users"][0]["online"] == true;
        if !online {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!online, "kicked devices left presence");
    // The admin key also works for an app's endpoints.
    let kick_again = http
        .call(
            reqwest::Method::POST,
            "/v1/apps/demo/users/mallory/kick",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!((kick_again.0, &kick_again.1["kicked"]), (200, &json!(0)));
    s.stop().await;
}

/// One stored push to a connected user, received: a group commit of the
/// store and a delivery for /metrics to show.
async fn stored_push_delivered(s: &TestServer, http: &Http) {
    let (_c, mut events) = connect(&s.tcp_url(), "watcher", "w1").await;
    let (status, _) = http
        .post(
            "/v1/apps/demo/push",
            json!({"to": ["watcher"], "type": "t", "body": "x"}),
        )
        .await;
    assert_eq!(status, 200);
    messages(&mut events, 1, T).await;
}

#[tokio::test]
async fn metrics_and_openapi_are_served() {
    let s = start().await;
    let http = Http::new(&s);
    stored_push_delivered(&s, &http).await;

    let (status, text) = http.text("/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "switchboard_delivery_seconds_bucket{le=\"0.001\"}",
        "switchboard_delivery_seconds_count",
        "switchboard_http_request_seconds_bucket",
        "route=\"/v1/apps/{app}/push\"",
        "switchboard_messages_stored_total",
        "switchboard_pushes_total",
        "switchboard_connections",
        // The stored push went through one group commit of the store
        // (fjall, the default).
        "switchboard_store_group_seconds_bucket{store=\"fjall\",le=\"0.001\"}",
        "switchboard_store_commit_seconds_count{store=\"fjall\"}",
        "switchboard_store_group_size_commands_bucket{store=\"fjall\",le=\"1\"}",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }

    let (status, doc) = http
        .call(reqwest::Method::GET, "/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/v1/apps/{app}/push",
        "/v1/apps/{app}/users/{uid}/messages",
        "/v1/apps/{app}/presence",
        "/v1/apps/{app}/conversations/{a}/{b}/messages",
        "/v1/apps/{app}/users/{uid}/timeline",
        "/v1/apps/{app}/users/{uid}/kick",
        "/v1/admin/stats",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "/openapi.json lacks {p}");
    }
    assert!(doc["components"]["schemas"]["PushRequest"].is_object());
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    s.stop().await;
}

/// On the SQLite store: its group commits, and the checkpointer thread
/// copying a commit's WAL frames into the database file within its
/// interval (250 ms).
#[tokio::test]
async fn the_sqlite_store_reports_commits_and_checkpoints() {
    let s = TestServer::start_with(|c| c.store.backend = "sqlite".into()).await;
    let http = Http::new(&s);
    stored_push_delivered(&s, &http).await;
    let (_, text) = http.text("/metrics").await;
    for needle in [
        "switchboard_store_group_seconds_bucket{store=\"sqlite\",le=\"0.001\"}",
        "switchboard_store_commit_seconds_count{store=\"sqlite\"}",
        "switchboard_store_group_size_commands_bucket{store=\"sqlite\",le=\"1\"}",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
    let needle = "switchboard_store_checkpoint_seconds_count{by=\"thread\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = http.text("/metrics").await;
        if text.contains(needle) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/metrics lacks {needle} after 10 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_code_and_changes_nothing() {
    let s = TestServer::start_with(|c| {
        c.api.admin_key = Some(ADMIN.into());
        c.api.max_body_bytes = 2048;
        c.api.max_targets = 3;
    })
    .await;
    let http = Http::new(&s);
    let push = |to: Value| json!({"to": to, "type": "t", "body": "x"});
    let post = |path: &'static str, key: Option<&'static str>, body: &'static [u8]| {
        http.call(reqwest::Method::POST, path, key, Some(body.to_vec()))
    };

    // Keys and apps.
    let ok_body = br#"{"to": ["u1"], "type": "t", "body": "x"}"#;
    assert_error(
        &post("/v1/apps/demo/push", None, ok_body).await,
        401,
        "UNAUTHORIZED",
    );
    // The key is checked before the body: no key and a bad body is still 401.
    assert_error(
        &post("/v1/apps/demo/push", None, b"{").await,
        401,
        "UNAUTHORIZED",
    );
    // A wrong key is answered the same whether the app exists, exists
    // without an api_key (`shop`) or does not exist: no oracle for app names.
    let wrong_key = post("/v1/apps/demo/push", Some("wrong"), ok_body).await;
    assert_error(&wrong_key, 401, "INVALID_API_KEY");
    for (path, key) in [
        ("/v1/apps/nope/push", "wrong"),
        ("/v1/apps/nope/push", KEY),
        ("/v1/apps/shop/push", KEY),
        ("/v1/apps/shop/push", "wrong"),
    ] {
        let r = post(path, Some(key), ok_body).await;
        assert_eq!(r, wrong_key, "{path} with key {key}");
        let r = post(path, Some(key), b"{").await;
        assert_eq!(r, wrong_key, "{path} with key {key} and a bad body");
    }
    // Only the admin key learns that an app does not exist.
    assert_error(
        &post("/v1/apps/nope/push", Some(ADMIN), ok_body).await,
        404,
        "UNKNOWN_APP",
    );
    let r = http
        .call(
            reqwest::Method::POST,
            "/v1/apps/shop/push",
            Some(ADMIN),
            Some(ok_body.to_vec()),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_error(
        &http
            .call(reqwest::Method::GET, "/v1/admin/stats", Some(KEY), None)
            .await,
        401,
        "INVALID_API_KEY",
    );

    // Bodies.
    assert_error(
        &post("/v1/apps/demo/push", Some(KEY), b"{\"to\": [").await,
        400,
        "BAD_JSON",
    );
    assert_error(
        &post(
            "/v1/apps/demo/push",
            Some(KEY),
            b"{\"to\": \"u1\", \"type\": \"t\"}",
        )
        .await,
        400,
        "BAD_JSON",
    );
    assert_error(
        &post(
            "/v1/apps/demo/push",
            Some(KEY),
            b"{\"to\": [\"u1\"], \"typo\": 1}",
        )
        .await,
        400,
        "BAD_JSON",
    );
    let big = serde_json::to_vec(&json!({"to": ["u1"], "type": "t", "body": "x".repeat(4096)}))
        .expect("json");
    let r = http
        .call(
            reqwest::Method::POST,
            "/v1/apps/demo/push",
            Some(KEY),
            Some(big),
        )
        .await;
    assert_error(&r, 413, "PAYLOAD_TOO_LARGE");
    assert_error(
        &post(
            "/v1/apps/demo/users/alice/messages",
            Some(KEY),
            b"{\"to\": \"bob\", \"type\": \"t\"}",
        )
        .await,
        400,
        "BAD_JSON",
    );
    assert_error(
        &http
            .post(
                "/v1/apps/demo/users/alice/messages",
                json!({"to": "bob", "type": "t", "client_msg_id": ""}),
            )
            .await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &http
            .post(
                "/v1/apps/demo/users/alice/messages",
                json!({"to": "", "type": "t", "client_msg_id": "c1"}),
            )
            .await,
        400,
        "INVALID_ARGUMENT",
    );

    // Targets: checked whole before anything is stored.
    assert_error(
        &http
            .post("/v1/apps/demo/push", push(json!(["u1", "u2", "u3", "u4"])))
            .await,
        400,
        "TOO_MANY_TARGETS",
    );
    assert_error(
        &http
            .post("/v1/apps/demo/push", push(json!(["u1", ""])))
            .await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &http.post("/v1/apps/demo/push", push(json!([]))).await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        timeline_head(&http, "u1").await,
        0,
        "a rejected push stored nothing"
    );
    assert_error(
        &http
            .post(
                "/v1/apps/demo/presence",
                json!({"users": ["a", "b", "c", "d"]}),
            )
            .await,
        400,
        "TOO_MANY_TARGETS",
    );
    assert_error(
        &http
            .post("/v1/apps/demo/presence", json!({"users": [""]}))
            .await,
        400,
        "INVALID_ARGUMENT",
    );

    // Queries and routes.
    assert_error(
        &http
            .get("/v1/apps/demo/conversations/a/b/messages?before=abc")
            .await,
        400,
        "BAD_QUERY",
    );
    assert_error(
        &http.get("/v1/apps/demo/users/a/timeline?since=-1").await,
        400,
        "BAD_QUERY",
    );
    assert_error(&http.get("/v1/nothing-here").await, 404, "NOT_FOUND");
    assert_error(
        &http.get("/v1/apps/demo/push").await,
        405,
        "METHOD_NOT_ALLOWED",
    );
    s.stop().await;
}

#[tokio::test]
async fn operator_endpoints_are_off_without_an_admin_key() {
    let s = TestServer::start().await;
    let http = Http::new(&s);
    let r = http
        .call(
            reqwest::Method::GET,
            "/v1/admin/stats",
            Some("anything"),
            None,
        )
        .await;
    assert_error(&r, 403, "ADMIN_DISABLED");
    s.stop().await;
}

/// The schema says what the server takes, and the server takes what the
/// schema says (each case found by schemathesis, scripts/schemathesis).
#[tokio::test]
async fn the_server_accepts_exactly_what_the_schema_says() {
    let s = start().await;
    let http = Http::new(&s);

    // `body` is any JSON value: a string as its bytes, null as no bytes,
    // anything else (an array of nulls too) as its JSON text.
    let (_c, mut events) = connect(&s.tcp_url(), "reader", "r1").await;
    for body in [json!("hi"), json!(null), json!([null, null]), json!(7)] {
        let r = http
            .post(
                "/v1/apps/demo/push",
                json!({"to": ["reader"], "type": "t", "body": body}),
            )
            .await;
        assert_eq!(r.0, 200, "{body}: {}", r.1);
    }
    let got = bodies(&messages(&mut events, 4, T).await);
    assert_eq!(got, ["hi", "", "[null,null]", "7"]);

    // Optional fields may be left out, never null (the schema types them
    // as strings); both body keys, even one of them null, is refused.
    for extra in [
        json!({"client_msg_id": null}),
        json!({"body_base64": null}),
        json!({"body": null, "body_base64": "eA=="}),
    ] {
        let mut req = json!({"to": ["reader"], "type": "t"});
        for (k, v) in extra.as_object().expect("object") {
            req[k] = v.clone();
        }
        let r = http.post("/v1/apps/demo/push", req).await;
        assert_eq!(r.0, 400, "{extra}: {}", r.1);
    }
    // Base64 the decoder refuses is outside the schema's pattern too.
    assert_error(
        &http
            .post(
                "/v1/apps/demo/push",
                json!({"to": ["reader"], "type": "t", "body_base64": "eB=="}),
            )
            .await,
        400,
        "INVALID_ARGUMENT",
    );
    // An unknown `to_app` is an unknown app (404), as in the path.
    assert_error(
        &http
            .post(
                "/v1/apps/demo/users/alice/messages",
                json!({"to": "bob", "to_app": "nope", "type": "t", "client_msg_id": "c1"}),
            )
            .await,
        404,
        "UNKNOWN_APP",
    );

    // Sequences are int64: past it is a bad query, not an empty page.
    let r = http
        .get("/v1/apps/demo/users/reader/timeline?since=9223372036854775807")
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_error(
        &http
            .get("/v1/apps/demo/users/reader/timeline?since=9223372036854775808")
            .await,
        400,
        "BAD_QUERY",
    );
    // `before` is a msg_id: up to 19 digits; empty means none.
    for (before, status) in [("", 200), ("9999999999999999999", 200), ("+1", 400)] {
        let r = http
            .get(&format!(
                "/v1/apps/demo/conversations/a/b/messages?before={before}"
            ))
            .await;
        assert_eq!(r.0, status, "before={before}: {}", r.1);
    }
    assert_error(
        &http
            .get("/v1/apps/demo/conversations/a/b/messages?before=12345678901234567890")
            .await,
        400,
        "BAD_QUERY",
    );

    // The document states the limits the server enforces.
    let (_, doc) = http
        .call(reqwest::Method::GET, "/openapi.json", None, None)
        .await;
    let push = &doc["components"]["schemas"]["PushRequest"]["properties"];
    assert_eq!(push["to"]["minItems"], 1, "{push}");
    assert_eq!(push["to"]["maxItems"], 10_000, "{push}");
    assert_eq!(push["to"]["items"]["maxLength"], 128, "{push}");
    assert_eq!(push["type"]["maxLength"], 64, "{push}");
    assert!(push["body_base64"]["pattern"].is_string(), "{push}");
    let since = doc["paths"]["/v1/apps/{app}/users/{uid}/timeline"]["get"]["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "since"))
        .expect("since")
        .clone();
    assert_eq!(
        since["schema"]["maximum"],
        json!(9_223_372_036_854_775_807_u64),
        "{since}"
    );
    s.stop().await;
}

/// The value of the first sample of `family` whose labels contain every
/// one of `labels`, or None.
fn sample(text: &str, family: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// What an operator watches, from a real node after logins (one refused),
/// c2s (some over the rate limit), a kick and a refused HTTP request. The
/// recorder is the process's, shared with the other tests of this file, so
/// values are checked as at least what this test did.
#[tokio::test]
async fn metrics_an_operator_expects() {
    let s = TestServer::start_with(|c| {
        c.api.admin_key = Some(ADMIN.into());
        c.gate.rate_per_sec = 2;
        c.gate.rate_burst = 1;
    })
    .await;
    let http = Http::new(&s);

    // A login refused (a token signed with another secret) and two accepted,
    // on each transport.
    let bad = sdk::config(
        &s.tcp_url(),
        &switchboard_core::auth::issue_token("not-the-secret", "demo", "mallory", 3600)
            .expect("token"),
        "m1",
    );
    assert!(
        Client::connect(bad).await.is_err(),
        "a forged token logs in"
    );
    let (tcp, _tcp_events) = connect(&s.tcp_url(), "metered", "d1").await;
    let (_ws, mut ws_events) = connect(&s.ws_url(), "kicked-user", "d2").await;

    // Three c2s at once against a burst of 1: the server refuses some
    // (RATE_LIMITED) and the SDK resends them until they are taken.
    let (a, b, c) = tokio::join!(
        tcp.c2s("gps", "1"),
        tcp.c2s("gps", "2"),
        tcp.c2s("gps", "3")
    );
    for r in [a, b, c] {
        r.expect("c2s taken in the end");
    }

    // A kick, and a refused HTTP request.
    let r = http
        .post("/v1/apps/demo/users/kicked-user/kick", json!({}))
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(kicked(&mut ws_events).await, code::KICK_ADMIN);
    let r = http
        .call(reqwest::Method::GET, "/v1/admin/stats", Some("wrong"), None)
        .await;
    assert_eq!(r.0, 401);
    stored_push_delivered(&s, &http).await;

    let (status, text) = http.text("/metrics").await;
    assert_eq!(status, 200);
    let at_least = |family: &str, labels: &[&str], min: f64| {
        let v = sample(&text, family, labels)
            .unwrap_or_else(|| panic!("/metrics lacks {family}{labels:?}:\n{text}"));
        assert!(
            v >= min,
            "{family}{labels:?} = {v}, expected at least {min}"
        );
        v
    };
    at_least("switchboard_logins_total", &[], 2.0);
    at_least(
        "switchboard_login_failures_total",
        &["code=\"TOKEN_INVALID\""],
        1.0,
    );
    at_least(
        "switchboard_errors_sent_total",
        &["code=\"TOKEN_INVALID\""],
        1.0,
    );
    at_least(
        "switchboard_errors_sent_total",
        &["code=\"RATE_LIMITED\""],
        1.0,
    );
    at_least("switchboard_rate_limited_requests_total", &[], 1.0);
    at_least("switchboard_c2s_messages_total", &[], 3.0);
    at_least("switchboard_open_connections", &["transport=\"tcp\""], 1.0);
    at_least(
        "switchboard_connections_accepted_total",
        &["transport=\"ws\""],
        1.0,
    );
    at_least("switchboard_kicks_total", &["code=\"KICK_ADMIN\""], 1.0);
    at_least(
        "switchboard_http_errors_total",
        &["code=\"INVALID_API_KEY\""],
        1.0,
    );
    at_least(
        "switchboard_store_commit_seconds_count",
        &["store=\"fjall\""],
        1.0,
    );
    at_least(
        "switchboard_store_group_size_commands_count",
        &["store=\"fjall\""],
        1.0,
    );
    // The process: some memory, some descriptors within the limit, some CPU.
    let rss = at_least("process_resident_memory_bytes", &[], 1_000_000.0);
    assert!(rss < 64e9, "resident memory {rss}");
    let fds = at_least("process_open_fds", &[], 3.0);
    let max = at_least("process_max_fds", &[], 1.0);
    assert!(fds <= max, "{fds} open fds over the limit {max}");
    at_least("process_cpu_seconds_total", &[], 0.0);
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        sample(&text, "switchboard_build_info", &[&version]),
        Some(1.0),
        "{text}"
    );
    // The commit embedded at build time: a git hash, or "unknown" outside git.
    let commit = text
        .lines()
        .find(|l| l.starts_with("switchboard_build_info{"))
        .and_then(|l| l.split("commit=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no commit label:\n{text}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "commit {commit:?}"
    );
    s.stop().await;
}
