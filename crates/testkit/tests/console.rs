//! The web console at `/console`: its embedded files, and the demo-mode
//! token endpoint (tokens of the embedded demo app only; 404 with real apps).

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_sdk::Client;
use switchboard_testkit::sdk::{self, bodies, demo, messages};
use switchboard_testkit::server::TestServer;

const T: Duration = Duration::from_secs(20);

/// A node in demo mode: no `[[apps]]`, so it runs the embedded demo app.
async fn start_demo() -> TestServer {
    TestServer::start_with(|c| c.apps.clear()).await
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url} failed: {e}"))
}

async fn post_token(base: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/console/token"))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /console/token failed: {e}"));
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn the_console_page_and_its_assets_are_served_with_types_and_caching() {
    let s = TestServer::start().await;
    let base = format!("http://{}", s.http);

    for path in ["/console", "/console/", "/console/index.html"] {
        let page = get(&format!("{base}{path}")).await;
        assert_eq!(page.status(), 200, "{path}");
        assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
        assert_eq!(header(&page, "cache-control"), "no-cache", "{path}");
    }
    let html = get(&format!("{base}/console"))
        .await
        .text()
        .await
        .expect("html");
    // Every script the page names is served, as JavaScript, cached for good
    // (Vite puts a content hash in the names under assets/).
    let scripts: Vec<&str> = html
        .split("src=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .filter(|s| s.ends_with(".js"))
        .collect();
    assert!(!scripts.is_empty(), "the page loads a script: {html}");
    for src in scripts {
        assert!(src.starts_with("/console/assets/"), "{src}");
        let js = get(&format!("{base}{src}")).await;
        assert_eq!(js.status(), 200, "{src}");
        assert_eq!(
            header(&js, "content-type"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            header(&js, "cache-control"),
            "public, max-age=31536000, immutable"
        );
        assert!(!js.bytes().await.expect("js").is_empty());
    }

    let missing = get(&format!("{base}/console/assets/nope.js")).await;
    assert_eq!(missing.status(), 404);
    let escape = get(&format!("{base}/console/..%2F..%2FCargo.toml")).await;
    assert_eq!(escape.status(), 404);
    s.stop().await;
}

#[tokio::test]
async fn demo_mode_mints_demo_tokens_that_log_in() {
    let s = start_demo().await;
    let base = format!("http://{}", s.http);

    let (status, body) = post_token(&base, json!({ "uid": "carol" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["app"], "demo");
    assert_eq!(body["uid"], "carol");
    let carol_token = body["token"].as_str().expect("token").to_string();
    let (_, body) = post_token(&base, json!({ "uid": "dave" })).await;
    let dave_token = body["token"].as_str().expect("token").to_string();

    // The tokens are the demo app's: they log in, and carol reaches dave.
    let (carol, _carol_events) = Client::connect(sdk::config(&s.ws_url(), &carol_token, "web-1"))
        .await
        .expect("carol logs in with a console token");
    assert_eq!(carol.user(), demo("carol"));
    let (_dave, mut dave_events) = Client::connect(sdk::config(&s.ws_url(), &dave_token, "web-1"))
        .await
        .expect("dave logs in with a console token");
    carol
        .send(demo("dave"), "text", "hi dave")
        .await
        .expect("stored");
    let got = messages(&mut dave_events, 1, T).await;
    assert_eq!(bodies(&got), ["hi dave"]);

    // Bad input gets a clear code.
    for bad in [
        json!({ "uid": "" }),
        json!({ "uid": "x".repeat(129) }),
        json!({}),
    ] {
        let (status, body) = post_token(&base, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            ["INVALID_ARGUMENT", "BAD_JSON"]
                .contains(&body["error"]["code"].as_str().unwrap_or("")),
            "{body}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn with_real_apps_there_is_no_token_endpoint() {
    // test_config configures [[apps]] (among them one named "demo"): the
    // console is served, but it cannot mint tokens for any of them.
    let s = TestServer::start().await;
    let base = format!("http://{}", s.http);
    let (status, body) = post_token(&base, json!({ "uid": "carol" })).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    assert!(body.get("token").is_none());
    assert_eq!(get(&format!("{base}/console")).await.status(), 200);
    s.stop().await;
}
