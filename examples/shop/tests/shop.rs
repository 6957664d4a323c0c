//! The shop end to end: a real Switchboard node (webhooks pointing at the
//! shop, the word filter in mask mode), the shop server on its own port,
//! and real SDK clients — customers, agents, couriers — over TCP. Every
//! check is something a person in the scenario would notice: who they are
//! told serves them, what they read, what reaches them after a reconnect
//! and what never does.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use shop::service::kinds;
use shop::{Roster, ShopConfig};
use switchboard_core::auth::NotificationConfig;
use switchboard_core::hooks::{FilterAction, WebhookConfig, WordFilterConfig};
use switchboard_sdk::{Client, Event, Events, Message};
use switchboard_testkit::sdk;
use switchboard_testkit::server::{TestServer, token};
use tokio_util::sync::CancellationToken;

/// How long any one thing may take to happen (generous: a loaded 2-core
/// machine runs these tests alongside others).
const T: Duration = Duration::from_secs(30);
const API_KEY: &str = "shop-api-key-for-tests";
const SECRET: &str = "shop-webhook-secret";

/// Switchboard, the shop server and an HTTP client for both.
struct World {
    sb: TestServer,
    shop: String,
    http: reqwest::Client,
    stop: CancellationToken,
    serving: tokio::task::JoinHandle<Result<(), shop::ShopError>>,
    _words: tempfile::TempDir,
}

impl World {
    /// Shops `acme` (agents 1 to 3) and `globex` (agent 9), couriers 1 and 2.
    async fn start() -> World {
        World::start_with(false).await
    }

    /// [`World::start`], with phone notifications on when `notify`.
    async fn start_with(notify: bool) -> World {
        // The shop's port first: Switchboard's config names it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("shop port");
        let shop_addr: SocketAddr = listener.local_addr().expect("shop addr");
        let words = tempfile::tempdir().expect("temp dir");
        let words_file = words.path().join("words.txt");
        std::fs::write(&words_file, "# the shop's list\ndarn\n").expect("word list");
        let sb = TestServer::start_with(|c| {
            let app = c
                .apps
                .iter_mut()
                .find(|a| a.name == "shop")
                .expect("the test config has a shop app");
            app.api_key = Some(API_KEY.into());
            // One destination for the reports and the agents' comings and
            // goings: the bus keeps order per user and destination, so an
            // agent's last reply is handled before their going offline.
            let mut topics = vec!["c2s".into(), "user.online".into(), "user.offline".into()];
            if notify {
                topics.push("notification".into());
                app.notifications = Some(NotificationConfig {
                    window_ms: Some(300),
                    ..Default::default()
                });
            }
            app.webhooks = vec![WebhookConfig {
                url: format!("http://{shop_addr}/webhook"),
                topics,
                types: vec![],
                secret: Some(SECRET.into()),
            }];
            app.word_filter = Some(WordFilterConfig {
                words_file: words_file.clone(),
                action: FilterAction::Mask,
                reload_secs: None,
            });
            c.webhook.poll_ms = 20;
            c.webhook.retry_initial_ms = 50;
            c.webhook.retry_max_ms = 500;
        })
        .await;
        let config = ShopConfig {
            switchboard_url: format!("http://{}", sb.http),
            app: "shop".into(),
            api_key: API_KEY.into(),
            webhook_secret: SECRET.into(),
            shops: vec![
                roster("acme=agent-1,agent-2,agent-3"),
                roster("globex=agent-9"),
            ],
            couriers: vec!["courier-1".into(), "courier-2".into()],
        };
        let stop = CancellationToken::new();
        let serving = tokio::spawn(shop::run(listener, config, stop.clone()));
        World {
            sb,
            shop: format!("http://{shop_addr}"),
            http: reqwest::Client::new(),
            stop,
            serving,
            _words: words,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(T, self.serving).await;
        self.sb.stop().await;
    }

    /// A user of app `shop` on one device.
    async fn connect(&self, uid: &str, device: &str) -> (Client, Events) {
        Client::connect(sdk::config(&self.sb.tcp_url(), &token("shop", uid), device))
            .await
            .unwrap_or_else(|e| panic!("{uid} connects: {e}"))
    }

    /// POSTs JSON to the shop; status and JSON answer.
    async fn post_shop(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.shop))
            .json(&body)
            .send()
            .await
            .expect("shop answers");
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }

    async fn get_shop(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.shop))
            .send()
            .await
            .expect("shop answers")
            .json()
            .await
            .expect("JSON")
    }

    /// GET on Switchboard's API with the app's key.
    async fn get_switchboard(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("http://{}{path}", self.sb.http))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("switchboard answers");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.expect("JSON")
    }

    /// Whether Switchboard's presence has `uid` online.
    async fn online(&self, uid: &str) -> bool {
        let resp: Value = self
            .http
            .post(format!("http://{}/v1/apps/shop/presence", self.sb.http))
            .bearer_auth(API_KEY)
            .json(&json!({"users": [uid]}))
            .send()
            .await
            .expect("switchboard answers")
            .json()
            .await
            .expect("JSON");
        resp["users"][0]["online"] == true
    }

    /// Closes a client and waits until presence no longer lists it.
    async fn go_offline(&self, client: Client, uid: &str) {
        client.close().await;
        eventually(&format!("{uid} offline"), || async {
            !self.online(uid).await
        })
        .await;
    }

    /// A user's timeline entries of one message type.
    async fn timeline_of(&self, uid: &str, kind: &str) -> Vec<Value> {
        let page = self
            .get_switchboard(&format!("/v1/apps/shop/users/{uid}/timeline?since=0"))
            .await;
        page["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["message"]["type"] == kind)
            .cloned()
            .collect()
    }
}

fn roster(s: &str) -> Roster {
    s.parse().expect("roster")
}

/// Polls `check` until it holds, for at most [`T`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + T;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {T:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The next message a client receives, stored (`Some(seq)`) or online-only
/// (`None`); connection events are skipped.
async fn next(events: &mut Events, who: &str) -> (Option<u64>, Message) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Message { seq, message })) => return (Some(seq), message),
            Ok(Some(Event::Online { message })) => return (None, message),
            Ok(Some(Event::Closed)) | Ok(None) => panic!("{who}: closed while waiting"),
            Ok(Some(_)) => {}
            Err(_) => panic!("{who}: no message within {T:?}"),
        }
    }
}

/// The next stored message, which must be of `kind`; its sender and body.
async fn expect(events: &mut Events, who: &str, kind: &str) -> (String, String) {
    let (seq, m) = next(events, who).await;
    assert!(
        seq.is_some(),
        "{who}: expected a stored {kind}, got online-only {m:?}"
    );
    assert_eq!(m.r#type, kind, "{who}: {m:?}");
    let from = m.from.map(|u| u.uid).unwrap_or_default();
    (from, String::from_utf8_lossy(&m.body).into_owned())
}

/// Like [`expect`] for a notice from the shop (the app's system sender,
/// uid ""), with a JSON body.
async fn notice(events: &mut Events, who: &str, kind: &str) -> Value {
    let (from, body) = expect(events, who, kind).await;
    assert_eq!(from, "", "{who}: a notice comes from the app itself");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{who}: {kind} body {body:?}: {e}"))
}

/// A c2s report with a JSON body, acknowledged (durable on the bus).
async fn report(client: &Client, kind: &str, body: Value) {
    client
        .c2s(kind, body.to_string())
        .await
        .unwrap_or_else(|e| panic!("c2s {kind}: {e}"));
}

#[tokio::test]
async fn a_customer_chats_with_an_online_agent_and_is_handed_over_when_the_agent_leaves() {
    let w = World::start().await;
    // agent-3 stays offline for now: it must never be picked.
    let (agent1, mut a1) = w.connect("agent-1", "a1-laptop").await;
    let (agent2, mut a2) = w.connect("agent-2", "a2-laptop").await;
    let (cust, mut c) = w.connect("cust-1", "c1-phone").await;

    // The customer opens a chat with acme; the least busy online agent
    // (agent-1, by roster order) gets it, and both are told.
    report(&cust, kinds::OPEN, json!({"shop": "acme"})).await;
    assert_eq!(
        notice(&mut c, "cust-1", kinds::ASSIGNED).await,
        json!({"shop": "acme", "agent": "agent-1"})
    );
    assert_eq!(
        notice(&mut a1, "agent-1", kinds::ASSIGNED).await,
        json!({"shop": "acme", "customer": "cust-1", "previous": null, "recent": []})
    );
    let chats = w.get_shop("/chats").await;
    assert_eq!(
        chats["shops"][0],
        json!({"shop": "acme", "chats": [{"customer": "cust-1", "agent": "agent-1"}], "waiting": []})
    );

    // The customer writes; the agent reads it with the sensitive word
    // masked by Switchboard's filter, and the customer's own devices show
    // what was actually sent.
    report(
        &cust,
        kinds::MESSAGE,
        json!({"shop": "acme", "text": "Is the DARN blender in stock?"}),
    )
    .await;
    let masked = "Is the **** blender in stock?".to_string();
    assert_eq!(
        expect(&mut a1, "agent-1", kinds::TEXT).await,
        ("cust-1".to_string(), masked.clone())
    );
    assert_eq!(
        expect(&mut c, "cust-1", kinds::TEXT).await,
        ("cust-1".to_string(), masked.clone())
    );

    // The agent answers; the customer reads it (and the agent's devices
    // show it as sent).
    report(
        &agent1,
        kinds::REPLY,
        json!({"customer": "cust-1", "text": "Yes, 3 left."}),
    )
    .await;
    let reply = ("agent-1".to_string(), "Yes, 3 left.".to_string());
    assert_eq!(expect(&mut c, "cust-1", kinds::TEXT).await, reply);
    assert_eq!(expect(&mut a1, "agent-1", kinds::TEXT).await, reply);

    // agent-1 goes offline: the chat moves to agent-2, who gets the
    // conversation so far; the customer is told who serves them now.
    agent1.close().await;
    assert_eq!(
        notice(&mut c, "cust-1", kinds::REASSIGNED).await,
        json!({"shop": "acme", "agent": "agent-2", "previous": "agent-1"})
    );
    let handed = notice(&mut a2, "agent-2", kinds::ASSIGNED).await;
    assert_eq!(handed["customer"], "cust-1");
    assert_eq!(handed["previous"], "agent-1");
    let recent: Vec<(String, String)> = handed["recent"]
        .as_array()
        .expect("recent")
        .iter()
        .map(|m| {
            (
                m["from"].as_str().unwrap_or_default().to_string(),
                m["text"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(recent, [("cust-1".to_string(), masked), reply.clone()]);

    // The conversation goes on with agent-2.
    report(
        &cust,
        kinds::MESSAGE,
        json!({"shop": "acme", "text": "Still there?"}),
    )
    .await;
    let still = ("cust-1".to_string(), "Still there?".to_string());
    assert_eq!(expect(&mut a2, "agent-2", kinds::TEXT).await, still);
    assert_eq!(expect(&mut c, "cust-1", kinds::TEXT).await, still);
    report(
        &agent2,
        kinds::REPLY,
        json!({"customer": "cust-1", "text": "I'm here."}),
    )
    .await;
    assert_eq!(
        expect(&mut c, "cust-1", kinds::TEXT).await,
        ("agent-2".to_string(), "I'm here.".to_string())
    );

    // An agent who does not serve this customer cannot write to them: the
    // shop tells the agent (online-only) and relays nothing.
    let (agent3, mut a3) = w.connect("agent-3", "a3-laptop").await;
    report(
        &agent3,
        kinds::REPLY,
        json!({"customer": "cust-1", "text": "I can help too"}),
    )
    .await;
    let (seq, note) = next(&mut a3, "agent-3").await;
    assert_eq!(seq, None, "an online-only note: {note:?}");
    assert_eq!(note.r#type, kinds::NOT_YOURS);
    assert_eq!(
        serde_json::from_slice::<Value>(&note.body).expect("JSON"),
        json!({"customer": "cust-1"})
    );
    let history = w
        .get_switchboard("/v1/apps/shop/conversations/cust-1/agent-3/messages")
        .await;
    assert_eq!(
        history["messages"],
        json!([]),
        "nothing relayed from agent-3"
    );

    let chats = w.get_shop("/chats").await;
    assert_eq!(
        chats["shops"][0]["chats"],
        json!([{"customer": "cust-1", "agent": "agent-2"}])
    );
    w.stop().await;
}

#[tokio::test]
async fn a_customer_waits_while_no_agent_is_online_and_what_they_wrote_is_kept() {
    let w = World::start().await;
    let (cust, mut c) = w.connect("cust-2", "c2-phone").await;

    // Nobody of globex is online: the customer is told to wait.
    report(&cust, kinds::OPEN, json!({"shop": "globex"})).await;
    assert_eq!(
        notice(&mut c, "cust-2", kinds::QUEUED).await,
        json!({"shop": "globex"})
    );
    report(
        &cust,
        kinds::MESSAGE,
        json!({"shop": "globex", "text": "Where is my parcel?"}),
    )
    .await;
    eventually("the message is held for the next agent", || async {
        w.get_shop("/chats").await["shops"][1]["waiting"]
            == json!([{"customer": "cust-2", "held": 1}])
    })
    .await;

    // agent-9 comes online: the chat is theirs, with what was written.
    let (_agent9, mut a9) = w.connect("agent-9", "a9-laptop").await;
    assert_eq!(
        notice(&mut a9, "agent-9", kinds::ASSIGNED).await,
        json!({"shop": "globex", "customer": "cust-2", "previous": null, "recent": []})
    );
    assert_eq!(
        notice(&mut c, "cust-2", kinds::ASSIGNED).await,
        json!({"shop": "globex", "agent": "agent-9"})
    );
    let held = ("cust-2".to_string(), "Where is my parcel?".to_string());
    assert_eq!(expect(&mut a9, "agent-9", kinds::TEXT).await, held);
    assert_eq!(expect(&mut c, "cust-2", kinds::TEXT).await, held);
    assert_eq!(
        w.get_shop("/chats").await["shops"][1],
        json!({"shop": "globex", "chats": [{"customer": "cust-2", "agent": "agent-9"}], "waiting": []})
    );
    w.stop().await;
}

#[tokio::test]
async fn an_order_status_reaches_an_offline_customer_and_an_offer_only_online_couriers() {
    let w = World::start_with(true).await;

    // The customer's phone was online once, and is offline now.
    let (cust, _) = w.connect("cust-3", "c3-phone").await;
    w.go_offline(cust, "cust-3").await;
    let (status, answer) = w
        .post_shop(
            "/orders/o-42/status",
            json!({"customer": "cust-3", "status": "shipped"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["devices_reached"], 0,
        "the customer is offline: {answer}"
    );
    assert_eq!(answer["duplicate"], false);
    // Switchboard tells the shop the customer is offline; the shop would
    // call its push provider, with the badge and its own words.
    eventually("a phone notification for cust-3", || async {
        !w.get_shop("/notifications").await["notifications"]
            .as_array()
            .is_none_or(|a| a.is_empty())
    })
    .await;
    let sent = w.get_shop("/notifications").await["notifications"].clone();
    assert_eq!(sent[0]["uid"], "cust-3", "{sent}");
    assert_eq!(
        sent[0]["payload"]["aps"]["alert"],
        json!({"title": "New message from The shop", "body": "Your order has news"})
    );
    assert_eq!(sent[0]["payload"]["aps"]["badge"], 1);
    // The order system retries: nothing new is stored.
    let (status, again) = w
        .post_shop(
            "/orders/o-42/status",
            json!({"customer": "cust-3", "status": "shipped"}),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["seq"], answer["seq"]);

    // The phone comes back and syncs: the notice is there, once.
    let (_cust, mut c) = w.connect("cust-3", "c3-phone").await;
    assert_eq!(
        notice(&mut c, "cust-3", kinds::ORDER_STATUS).await,
        json!({"order": "o-42", "status": "shipped"})
    );
    assert_eq!(w.timeline_of("cust-3", kinds::ORDER_STATUS).await.len(), 1);

    // courier-1 is online, courier-2 was and is not.
    let (_courier1, mut k1) = w.connect("courier-1", "k1-phone").await;
    let (courier2, _) = w.connect("courier-2", "k2-phone").await;
    w.go_offline(courier2, "courier-2").await;
    let details = json!({"pickup": "Warehouse 3", "fee": 4.5});
    let (status, offered) = w
        .post_shop("/deliveries/o-42/offer", json!({"details": details}))
        .await;
    assert_eq!(status, 200, "{offered}");
    assert_eq!(offered["offered_to"], json!(["courier-1"]));
    assert_eq!(offered["devices_reached"], 1);
    let (seq, offer) = next(&mut k1, "courier-1").await;
    assert_eq!(seq, None, "an offer is online-only: {offer:?}");
    assert_eq!(offer.r#type, kinds::DELIVERY_OFFER);
    assert_eq!(
        serde_json::from_slice::<Value>(&offer.body).expect("JSON"),
        json!({"order": "o-42", "details": details})
    );

    // courier-2 comes back: nothing of o-42 on its timeline or its screen.
    // The next offer reaches both, and is the first thing courier-2 sees.
    let (courier2, mut k2) = w.connect("courier-2", "k2-phone").await;
    courier2.sync_now().await.expect("sync");
    assert_eq!(
        w.get_switchboard("/v1/apps/shop/users/courier-2/timeline")
            .await["timeline_head"],
        0,
        "nothing was stored for courier-2"
    );
    let (status, offered) = w
        .post_shop(
            "/deliveries/o-43/offer",
            json!({"details": {"pickup": "Dock 1"}}),
        )
        .await;
    assert_eq!(status, 200, "{offered}");
    assert_eq!(offered["offered_to"], json!(["courier-1", "courier-2"]));
    let (seq, first) = next(&mut k2, "courier-2").await;
    assert_eq!(seq, None);
    assert_eq!(
        serde_json::from_slice::<Value>(&first.body).expect("JSON")["order"],
        "o-43",
        "courier-2 never sees the offer made while it was offline"
    );
    // The retry stored nothing and online-only offers are not stored: the
    // one notification is still the only one.
    assert_eq!(
        w.get_shop("/notifications").await["notifications"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    w.stop().await;
}

#[tokio::test]
async fn the_webhook_refuses_bad_signatures_and_handles_a_redelivered_event_once() {
    let w = World::start().await;
    // An event as the bus sends it (the id far from the node's real ones).
    let event = json!({
        "id": "77", "topic": "c2s", "app": "shop", "uid": "cust-9",
        "type": kinds::OPEN, "time_ms": 1,
        "body_base64": "eyJzaG9wIjoiZ2xvYmV4In0=", "body_text": "{\"shop\":\"globex\"}",
    });
    let body = serde_json::to_vec(&event).expect("JSON");
    let post = |signature: Option<String>, body: Vec<u8>| {
        let mut req = w
            .http
            .post(format!("{}/webhook", w.shop))
            .header("content-type", "application/json")
            .header("x-switchboard-event-id", "77")
            .body(body);
        if let Some(s) = signature {
            req = req.header("x-switchboard-signature", s);
        }
        async move {
            let resp = req.send().await.expect("shop answers");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Unsigned, signed with another secret, or signed for other bytes: 401,
    // and nothing happens.
    let forged = [
        None,
        Some(shop::bus::sign(b"not-the-secret", &body)),
        Some(shop::bus::sign(SECRET.as_bytes(), b"{}")),
        Some("sha256=zz".into()),
    ];
    for signature in forged {
        let (status, answer) = post(signature.clone(), body.clone()).await;
        assert_eq!(status, 401, "{signature:?}: {answer}");
        assert_eq!(answer["error"]["code"], "BAD_SIGNATURE");
    }
    assert_eq!(w.get_shop("/stats").await["bad_signatures"], 4);
    assert_eq!(w.get_shop("/chats").await["shops"][1]["waiting"], json!([]));

    // Signed: handled. The same event again (the bus redelivers after a
    // lost answer): acknowledged, not handled twice.
    let signature = shop::bus::sign(SECRET.as_bytes(), &body);
    let (status, answer) = post(Some(signature.clone()), body.clone()).await;
    assert_eq!((status, answer), (200, json!({"outcome": "processed"})));
    let (status, answer) = post(Some(signature), body.clone()).await;
    assert_eq!((status, answer), (200, json!({"outcome": "duplicate"})));
    let stats = w.get_shop("/stats").await;
    assert_eq!(
        (stats["processed"].as_u64(), stats["duplicates"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        w.get_shop("/chats").await["shops"][1]["waiting"],
        json!([{"customer": "cust-9", "held": 0}])
    );
    assert_eq!(w.timeline_of("cust-9", kinds::QUEUED).await.len(), 1);

    // Signed but not JSON: 400 (the bus would retry; it never sends that).
    let junk = b"not json".to_vec();
    let (status, answer) = post(Some(shop::bus::sign(SECRET.as_bytes(), &junk)), junk).await;
    assert_eq!(status, 400, "{answer}");
    // Another app's event is acknowledged and ignored.
    let mut other = event.clone();
    other["app"] = json!("demo");
    other["id"] = json!("78");
    let other = serde_json::to_vec(&other).expect("JSON");
    let (status, answer) = post(Some(shop::bus::sign(SECRET.as_bytes(), &other)), other).await;
    assert_eq!(status, 200);
    assert_eq!(answer["outcome"], "ignored");
    w.stop().await;
}
