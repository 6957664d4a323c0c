//! The groups HTTP API against a real embedded node: every endpoint (create,
//! update, read, delete a group; add, remove, list members; a user's groups;
//! post as a member and as the system), every error code (GROUP_NOT_FOUND,
//! NOT_GROUP_MEMBER, GROUP_ADMINS_ONLY, GROUP_FULL, BATCH_TOO_LARGE,
//! INVALID_ARGUMENT), idempotence, paging, another app's group being
//! invisible, and the `group.*` events reaching a webhook through the bus.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_core::hooks::WebhookConfig;
use switchboard_testkit::http::{Http, received, webhook_receiver};
use switchboard_testkit::server::TestServer;

const T: Duration = Duration::from_secs(20);
const SHOP_KEY: &str = "shop-api-key-0123";

/// Asserts an error answer: status and stable code.
#[track_caller]
fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "status of {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "code of {}", got.1);
    assert_eq!(got.1["error"]["status"], status, "{}", got.1);
}

/// A node whose `demo` app sends the `group.*` events to `hook`, whose
/// `shop` app has an API key too, and whose groups hold at most 3 members.
async fn start(hook: Option<String>) -> TestServer {
    TestServer::start_with(|c| {
        if let Some(url) = hook {
            c.apps[0].webhooks = vec![WebhookConfig {
                url,
                topics: vec![
                    "group.created".into(),
                    "group.deleted".into(),
                    "group.members_added".into(),
                    "group.members_removed".into(),
                ],
                types: vec![],
                secret: None,
            }];
        }
        c.apps[1].api_key = Some(SHOP_KEY.into());
        c.logic.max_group_members = 3;
        c.webhook.poll_ms = 20;
        c.webhook.retry_initial_ms = 20;
        c.webhook.retry_max_ms = 200;
    })
    .await
}

fn uids(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_group_lives_and_its_membership_changes_are_events() {
    let (hook, got) = webhook_receiver().await;
    let s = start(Some(hook)).await;
    let http = Http::new(&s);
    let g = "/v1/apps/demo/groups/order-42";

    // Create (201), then update in place (200).
    let created = http
        .put(
            g,
            json!({"name": "Order 42", "meta": {"order": 42}, "post_policy": "members"}),
        )
        .await;
    assert_eq!(created.0, 201, "{}", created.1);
    assert_eq!(created.1["gid"], "order-42");
    assert_eq!(created.1["name"], "Order 42");
    assert_eq!(created.1["meta"], json!({"order": 42}));
    assert_eq!(created.1["post_policy"], "members");
    assert_eq!(created.1["history_visible"], false);
    assert_eq!(created.1["head"], 0);
    assert_eq!(created.1["members"], 0);
    let updated = http
        .put(
            g,
            json!({"name": "Order 42 (late)", "post_policy": "admins", "history_visible": true}),
        )
        .await;
    assert_eq!(updated.0, 200, "{}", updated.1);
    assert_eq!(updated.1["created_ms"], created.1["created_ms"]);
    let read = http.get(g).await;
    assert_eq!(read.0, 200, "{}", read.1);
    assert_eq!(read.1["name"], "Order 42 (late)");
    assert_eq!(read.1["meta"], Value::Null, "PUT replaces every setting");
    assert_eq!(read.1["post_policy"], "admins");
    assert_eq!(read.1["history_visible"], true);

    // Add members: idempotent, the answer says what changed.
    let members = format!("{g}/members");
    let add = json!({"members": [{"uid": "alice", "role": "admin"}, {"uid": "bob"}]});
    let first = http.post(&members, add.clone()).await;
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(uids(&first.1["changed"]), ["alice", "bob"]);
    assert_eq!(first.1["members"], 2);
    let again = http.post(&members, add).await;
    assert_eq!(again.0, 200, "{}", again.1);
    assert!(uids(&again.1["changed"]).is_empty(), "{}", again.1);
    assert_eq!(again.1["members"], 2);

    // Paged member list, in uid order.
    let p1 = http.get(&format!("{members}?limit=1")).await;
    assert_eq!(p1.0, 200, "{}", p1.1);
    assert_eq!(p1.1["members"][0]["uid"], "alice");
    assert_eq!(p1.1["members"][0]["role"], "admin");
    assert_eq!(p1.1["members"][0]["joined_seq"], 0);
    assert_eq!(p1.1["next_after"], "alice");
    let p2 = http.get(&format!("{members}?limit=1&after=alice")).await;
    assert_eq!(p2.1["members"][0]["uid"], "bob");
    assert_eq!(p2.1["members"][0]["role"], "member");
    let rest = http.get(&format!("{members}?after=bob")).await;
    assert_eq!(rest.0, 200, "{}", rest.1);
    assert_eq!(rest.1["members"], json!([]));
    assert_eq!(rest.1["next_after"], Value::Null);
    let all = http.get(&members).await;
    assert_eq!(all.1["members"].as_array().map(Vec::len), Some(2));
    assert_eq!(all.1["next_after"], Value::Null);

    // A user's groups, paged.
    for gid in ["a-first", "z-last"] {
        assert_eq!(
            http.put(&format!("/v1/apps/demo/groups/{gid}"), json!({}))
                .await
                .0,
            201
        );
        let r = http
            .post(
                &format!("/v1/apps/demo/groups/{gid}/members"),
                json!({"members": [{"uid": "alice"}]}),
            )
            .await;
        assert_eq!(r.0, 200, "{}", r.1);
    }
    let mine = http.get("/v1/apps/demo/users/alice/groups?limit=2").await;
    assert_eq!(mine.0, 200, "{}", mine.1);
    assert_eq!(uids(&mine.1["gids"]), ["a-first", "order-42"]);
    assert_eq!(mine.1["next_after"], "order-42");
    let more = http
        .get("/v1/apps/demo/users/alice/groups?limit=2&after=order-42")
        .await;
    assert_eq!(uids(&more.1["gids"]), ["z-last"]);
    assert_eq!(more.1["next_after"], Value::Null);
    let none = http.get("/v1/apps/demo/users/nobody/groups").await;
    assert_eq!(none.0, 200, "{}", none.1);
    assert_eq!(none.1["gids"], json!([]));

    // Remove: idempotent too.
    let remove = format!("{g}/members/remove");
    let r1 = http.post(&remove, json!({"uids": ["bob", "carol"]})).await;
    assert_eq!(r1.0, 200, "{}", r1.1);
    assert_eq!(uids(&r1.1["changed"]), ["bob"]);
    assert_eq!(r1.1["members"], 1);
    let r2 = http.post(&remove, json!({"uids": ["bob"]})).await;
    assert!(uids(&r2.1["changed"]).is_empty(), "{}", r2.1);
    assert_eq!(http.get(&members).await.1["members"][0]["uid"], "alice");

    // Delete: gone for every call, and a second delete is a 404.
    let del = http.delete(g).await;
    assert_eq!(del.0, 204, "{}", del.1);
    assert_error(&http.get(g).await, 404, "GROUP_NOT_FOUND");
    assert_error(&http.delete(g).await, 404, "GROUP_NOT_FOUND");
    assert_error(&http.get(&members).await, 404, "GROUP_NOT_FOUND");
    assert_error(
        &http
            .post(&members, json!({"members": [{"uid": "bob"}]}))
            .await,
        404,
        "GROUP_NOT_FOUND",
    );
    assert_error(
        &http.post(&remove, json!({"uids": ["alice"]})).await,
        404,
        "GROUP_NOT_FOUND",
    );
    let mine = http.get("/v1/apps/demo/users/alice/groups").await;
    assert_eq!(uids(&mine.1["gids"]), ["a-first", "z-last"]);
    // Created again, it starts empty.
    let reborn = http.put(g, json!({"name": "again"})).await;
    assert_eq!(reborn.0, 201, "{}", reborn.1);
    assert_eq!(
        (reborn.1["members"].clone(), reborn.1["head"].clone()),
        (json!(0), json!(0))
    );

    // The bus: each change once, in order (idempotent resends publish
    // nothing), keyed by the app's system user.
    let want = [
        "group.created order-42 []",
        "group.members_added order-42 [\"alice\", \"bob\"]",
        "group.created a-first []",
        "group.members_added a-first [\"alice\"]",
        "group.created z-last []",
        "group.members_added z-last [\"alice\"]",
        "group.members_removed order-42 [\"bob\"]",
        "group.deleted order-42 []",
        "group.created order-42 []",
    ];
    let deadline = tokio::time::Instant::now() + T;
    let seen = loop {
        let seen: Vec<String> = received(&got)
            .iter()
            .map(|e| {
                format!(
                    "{} {} {:?}",
                    e["topic"].as_str().unwrap_or_default(),
                    e["data"]["gid"].as_str().unwrap_or_default(),
                    uids(&e["data"]["uids"])
                )
            })
            .collect();
        if seen.len() >= want.len() || tokio::time::Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(seen, want);
    for e in received(&got).iter() {
        assert_eq!(
            (e["app"].as_str(), e["uid"].as_str()),
            (Some("demo"), Some(""))
        );
    }
    let removed = received(&got)
        .iter()
        .find(|e| e["topic"] == "group.members_removed")
        .cloned()
        .unwrap_or_default();
    assert_eq!(removed["data"]["members"], 1);
    s.stop().await;
}

#[tokio::test]
async fn posting_as_a_member_or_the_system() {
    let s = start(None).await;
    let http = Http::new(&s);
    let g = "/v1/apps/demo/groups/team";
    assert_eq!(http.put(g, json!({"name": "team"})).await.0, 201);
    let r = http
        .post(
            &format!("{g}/members"),
            json!({"members": [{"uid": "alice", "role": "admin"}, {"uid": "bob"}]}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    let messages = format!("{g}/messages");

    let first = http
        .post(
            &messages,
            json!({"from": "bob", "client_msg_id": "b-1", "type": "text", "body": "hi"}),
        )
        .await;
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(first.1["seq"], 1);
    assert_eq!(first.1["duplicate"], false);
    assert!(
        first.1["msg_id"]
            .as_str()
            .is_some_and(|id| id.parse::<u64>().is_ok())
    );
    // A resend stores nothing and answers the first result.
    let resend = http
        .post(
            &messages,
            json!({"from": "bob", "client_msg_id": "b-1", "type": "text", "body": "hi"}),
        )
        .await;
    assert_eq!(resend.0, 200, "{}", resend.1);
    assert_eq!(resend.1["duplicate"], true);
    assert_eq!(resend.1["seq"], 1);
    assert_eq!(resend.1["msg_id"], first.1["msg_id"]);
    // The system posts without being a member.
    let system = http
        .post(
            &messages,
            json!({"client_msg_id": "sys-1", "type": "notice", "body": {"closed": false}}),
        )
        .await;
    assert_eq!(system.0, 200, "{}", system.1);
    assert_eq!(system.1["seq"], 2);

    // Not a member; then a broadcast group where only admins post.
    assert_error(
        &http
            .post(
                &messages,
                json!({"from": "mallory", "client_msg_id": "m-1", "type": "text", "body": "x"}),
            )
            .await,
        403,
        "NOT_GROUP_MEMBER",
    );
    assert_eq!(
        http.put(g, json!({"name": "team", "post_policy": "admins"}))
            .await
            .0,
        200
    );
    assert_error(
        &http
            .post(
                &messages,
                json!({"from": "bob", "client_msg_id": "b-2", "type": "text", "body": "x"}),
            )
            .await,
        403,
        "GROUP_ADMINS_ONLY",
    );
    let admin = http
        .post(
            &messages,
            json!({"from": "alice", "client_msg_id": "a-1", "type": "text", "body_base64": "AP8="}),
        )
        .await;
    assert_eq!(admin.0, 200, "{}", admin.1);
    assert_eq!(admin.1["seq"], 3);
    // A removed member posts no more.
    http.post(&format!("{g}/members/remove"), json!({"uids": ["alice"]}))
        .await;
    assert_error(
        &http
            .post(
                &messages,
                json!({"from": "alice", "client_msg_id": "a-2", "type": "text", "body": "x"}),
            )
            .await,
        403,
        "NOT_GROUP_MEMBER",
    );
    // Refusals stored nothing: the head is the three accepted posts.
    assert_eq!(http.get(g).await.1["head"], 3);

    // Unknown group; bad posts.
    assert_error(
        &http
            .post(
                "/v1/apps/demo/groups/nope/messages",
                json!({"client_msg_id": "s", "type": "t", "body": "x"}),
            )
            .await,
        404,
        "GROUP_NOT_FOUND",
    );
    assert_error(
        &http
            .post(&messages, json!({"client_msg_id": "", "type": "t"}))
            .await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &http
            .post(
                &messages,
                json!({"from": "", "client_msg_id": "x", "type": "t"}),
            )
            .await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &http
            .post(
                &messages,
                json!({"client_msg_id": "x", "type": "t", "body": "a", "body_base64": "YQ=="}),
            )
            .await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &http.post(&messages, json!({"type": "t"})).await,
        400,
        "BAD_JSON",
    );
    assert_eq!(http.get(g).await.1["head"], 3);
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_its_own_code_and_changes_nothing() {
    let s = start(None).await;
    let http = Http::new(&s);
    let g = "/v1/apps/demo/groups/g";
    assert_eq!(http.put(g, json!({})).await.0, 201);

    // Ids, name, meta.
    let long = "x".repeat(129);
    assert_error(
        &http
            .put(&format!("/v1/apps/demo/groups/{long}"), json!({}))
            .await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &http.get(&format!("/v1/apps/demo/groups/{long}")).await,
        400,
        "INVALID_ARGUMENT",
    );
    // A page can't start after an id no id can be (found by schemathesis).
    for path in [
        format!("{g}/members?after={long}"),
        format!("/v1/apps/demo/users/alice/groups?after={long}"),
    ] {
        assert_error(&http.get(&path).await, 400, "INVALID_ARGUMENT");
    }
    assert_error(
        &http.put(g, json!({"name": "n".repeat(257)})).await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_eq!(http.put(g, json!({"name": "n".repeat(256)})).await.0, 200);
    assert_error(
        &http.put(g, json!({"meta": "m".repeat(4097)})).await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &http.put(g, json!({"post_policy": "everyone"})).await,
        400,
        "BAD_JSON",
    );
    assert_error(
        &http.put(g, json!({"colour": "red"})).await,
        400,
        "BAD_JSON",
    );
    assert_eq!(http.get(g).await.1["name"], "n".repeat(256));

    // Batches: empty, bad uid, bad role, over 1,000.
    let members = format!("{g}/members");
    let remove = format!("{g}/members/remove");
    assert_error(
        &http.post(&members, json!({"members": []})).await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &http
            .post(&members, json!({"members": [{"uid": "ok"}, {"uid": ""}]}))
            .await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &http
            .post(&members, json!({"members": [{"uid": long}]}))
            .await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &http
            .post(
                &members,
                json!({"members": [{"uid": "ok", "role": "owner"}]}),
            )
            .await,
        400,
        "BAD_JSON",
    );
    let many: Vec<Value> = (0..1001).map(|i| json!({"uid": format!("u{i}")})).collect();
    assert_error(
        &http.post(&members, json!({"members": many})).await,
        400,
        "BATCH_TOO_LARGE",
    );
    let many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    assert_error(
        &http.post(&remove, json!({"uids": many})).await,
        400,
        "BATCH_TOO_LARGE",
    );
    assert_error(
        &http.post(&remove, json!({"uids": []})).await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_eq!(http.get(g).await.1["members"], 0, "nothing was added");

    // Full (at most 3 here): nothing of the refused batch is added; members
    // already there count as there, not as new.
    let r = http
        .post(
            &members,
            json!({"members": [{"uid": "a"}, {"uid": "b"}, {"uid": "c"}]}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_error(
        &http
            .post(&members, json!({"members": [{"uid": "a"}, {"uid": "d"}]}))
            .await,
        409,
        "GROUP_FULL",
    );
    let again = http
        .post(
            &members,
            json!({"members": [{"uid": "a", "role": "admin"}]}),
        )
        .await;
    assert_eq!(again.0, 200, "a role change in a full group: {}", again.1);
    assert_eq!(uids(&again.1["changed"]), ["a"]);
    let list = http.get(&members).await;
    let listed: Vec<&str> = list.1["members"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["uid"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(listed, ["a", "b", "c"]);

    // Paging queries.
    assert_error(
        &http.get(&format!("{members}?limit=-1")).await,
        400,
        "BAD_QUERY",
    );
    assert_error(
        &http.get("/v1/apps/demo/users/alice/groups?limit=x").await,
        400,
        "BAD_QUERY",
    );
    assert_error(
        &http
            .get(&format!("/v1/apps/demo/users/{long}/groups"))
            .await,
        400,
        "INVALID_ARGUMENT",
    );

    // Keys and apps.
    assert_error(
        &http.call_json(reqwest::Method::GET, g, None, None).await,
        401,
        "UNAUTHORIZED",
    );
    assert_error(
        &http
            .call_json(reqwest::Method::DELETE, g, Some("wrong"), None)
            .await,
        401,
        "INVALID_API_KEY",
    );
    assert_eq!(http.get(g).await.0, 200, "still there");
    s.stop().await;
}

#[tokio::test]
async fn another_apps_group_is_not_there() {
    let s = start(None).await;
    let http = Http::new(&s);
    let demo_g = "/v1/apps/demo/groups/shared-id";
    let shop_g = "/v1/apps/shop/groups/shared-id";
    assert_eq!(http.put(demo_g, json!({"name": "demo's"})).await.0, 201);
    http.post(
        &format!("{demo_g}/members"),
        json!({"members": [{"uid": "alice"}]}),
    )
    .await;

    let shop = |m: reqwest::Method, path: String, body: Option<Value>| {
        let http = &http;
        async move { http.call_json(m, &path, Some(SHOP_KEY), body).await }
    };
    // The same gid in the shop app: no such group, whatever the call.
    assert_error(
        &shop(reqwest::Method::GET, shop_g.into(), None).await,
        404,
        "GROUP_NOT_FOUND",
    );
    assert_error(
        &shop(reqwest::Method::DELETE, shop_g.into(), None).await,
        404,
        "GROUP_NOT_FOUND",
    );
    assert_error(
        &shop(
            reqwest::Method::POST,
            format!("{shop_g}/members"),
            Some(json!({"members": [{"uid": "mallory"}]})),
        )
        .await,
        404,
        "GROUP_NOT_FOUND",
    );
    assert_error(
        &shop(reqwest::Method::GET, format!("{shop_g}/members"), None).await,
        404,
        "GROUP_NOT_FOUND",
    );
    assert_error(
        &shop(
            reqwest::Method::POST,
            format!("{shop_g}/messages"),
            Some(json!({"client_msg_id": "x", "type": "t", "body": "x"})),
        )
        .await,
        404,
        "GROUP_NOT_FOUND",
    );
    let theirs = shop(
        reqwest::Method::GET,
        "/v1/apps/shop/users/alice/groups".into(),
        None,
    )
    .await;
    assert_eq!(theirs.1["gids"], json!([]), "{}", theirs.1);
    // The shop key does not open the demo app's path.
    assert_error(
        &shop(reqwest::Method::GET, demo_g.into(), None).await,
        401,
        "INVALID_API_KEY",
    );
    // The shop app's own group of that id is another group.
    let own = shop(
        reqwest::Method::PUT,
        shop_g.into(),
        Some(json!({"name": "shop's"})),
    )
    .await;
    assert_eq!(own.0, 201, "{}", own.1);
    assert_eq!(own.1["members"], 0);
    let demo = http.get(demo_g).await;
    assert_eq!(
        (demo.1["name"].as_str(), demo.1["members"].as_u64()),
        (Some("demo's"), Some(1))
    );
    s.stop().await;
}

#[tokio::test]
async fn the_openapi_document_has_the_group_endpoints() {
    let s = start(None).await;
    let http = Http::new(&s);
    let (status, doc) = http
        .call_json(reqwest::Method::GET, "/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    let paths = &doc["paths"];
    for (path, method) in [
        ("/v1/apps/{app}/groups/{gid}", "put"),
        ("/v1/apps/{app}/groups/{gid}", "get"),
        ("/v1/apps/{app}/groups/{gid}", "delete"),
        ("/v1/apps/{app}/groups/{gid}/members", "post"),
        ("/v1/apps/{app}/groups/{gid}/members", "get"),
        ("/v1/apps/{app}/groups/{gid}/members/remove", "post"),
        ("/v1/apps/{app}/groups/{gid}/messages", "post"),
        ("/v1/apps/{app}/users/{uid}/groups", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    assert!(paths["/v1/apps/{app}/groups/{gid}/members"]["post"]["responses"]["409"].is_object());
    s.stop().await;
}
