//! Login tokens against a real node with real SDK clients: the RFC 7519
//! rules and the per-app `exp`/`iss`/`aud` settings at login, the
//! revocation endpoint (every device kicked with `KICK_TOKEN_REVOKED`, old
//! tokens refused, also after a restart, new ones accepted), and the start-up
//! refusal of JWT configurations that could only fail every login.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use switchboard_core::AppConfig;
use switchboard_sdk::{Client, Event, Events, code};
use switchboard_testkit::sdk::{bodies, config, connect, messages};
use switchboard_testkit::server::{SECRET, TestServer, test_config};

const T: Duration = Duration::from_secs(20);
const KEY: &str = "demo-api-key";
const ADMIN: &str = "operator-key-0123";

fn now() -> f64 {
    jsonwebtoken::get_current_timestamp() as f64
}

/// An HS256 token of app `app` (secret [`SECRET`]) with these claims.
fn token_with(app: &str, uid: &str, extra: Value) -> String {
    let mut claims = json!({"app": app, "sub": uid});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

/// The code a login with `token` gets, `None` when it logs in.
async fn login_code(url: &str, token: &str) -> Option<u32> {
    match Client::connect(config(url, token, "probe")).await {
        Ok((c, _)) => {
            c.close().await;
            None
        }
        Err(e) => Some(e.code().unwrap_or_else(|| panic!("no code in {e}"))),
    }
}

/// The next kick code, then `Closed`: the SDK does not reconnect.
async fn kicked_for_good(events: &mut Events) -> u32 {
    let deadline = tokio::time::Instant::now() + T;
    let mut kick = None;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Kicked { code, .. })) if kick.is_none() => kick = Some(code),
            Ok(Some(Event::Closed)) | Ok(None) => {
                return kick.unwrap_or_else(|| panic!("closed without a kick"));
            }
            Ok(Some(Event::Connected { .. })) if kick.is_some() => {
                panic!("the SDK reconnected after the kick")
            }
            Ok(Some(_)) => {}
            Err(_) => panic!("no kick and close within {T:?} (kick so far: {kick:?})"),
        }
    }
}

async fn post(s: &TestServer, path: &str, key: &str, body: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}{path}", s.http))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("HTTP request");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn token_rules_apply_at_login() {
    let s = TestServer::start_with(|c| {
        c.apps.push(AppConfig {
            name: "loose".into(),
            jwt_secret: Some(SECRET.into()),
            jwt_exp_optional: true,
            ..Default::default()
        });
        c.apps.push(AppConfig {
            name: "strict".into(),
            jwt_secret: Some(SECRET.into()),
            jwt_issuer: Some("https://shop.example".into()),
            jwt_audience: Some("switchboard".into()),
            ..Default::default()
        });
    })
    .await;
    let url = s.tcp_url();
    let exp = now() + 600.0;
    // A NumericDate with a fraction is valid.
    let t = token_with(
        "demo",
        "frac",
        json!({"exp": exp + 0.5, "iat": now() - 0.5}),
    );
    assert_eq!(login_code(&url, &t).await, None);
    // A future nbf is refused; a past one is fine.
    let t = token_with("demo", "nbf", json!({"exp": exp, "nbf": now() + 300.0}));
    assert_eq!(login_code(&url, &t).await, Some(code::TOKEN_INVALID));
    let t = token_with("demo", "nbf", json!({"exp": exp, "nbf": now() - 300.0}));
    assert_eq!(login_code(&url, &t).await, None);
    // exp is required by default; app "loose" opted out.
    let t = token_with("demo", "noexp", json!({}));
    assert_eq!(login_code(&url, &t).await, Some(code::TOKEN_INVALID));
    let t = token_with("loose", "noexp", json!({}));
    assert_eq!(login_code(&url, &t).await, None);
    // iss and aud where the app configures them.
    let good = json!({"exp": exp, "iss": "https://shop.example", "aud": "switchboard"});
    assert_eq!(
        login_code(&url, &token_with("strict", "u", good)).await,
        None
    );
    for bad in [
        json!({"exp": exp, "iss": "https://evil.example", "aud": "switchboard"}),
        json!({"exp": exp, "iss": "https://shop.example", "aud": "elsewhere"}),
        json!({"exp": exp, "aud": "switchboard"}),
    ] {
        let t = token_with("strict", "u", bad.clone());
        assert_eq!(
            login_code(&url, &t).await,
            Some(code::TOKEN_INVALID),
            "{bad}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn revoke_kicks_every_device_and_refuses_old_tokens_across_a_restart() {
    let s = TestServer::start_with(|c| c.api.admin_key = Some(ADMIN.into())).await;
    let old = s.token("dave");
    let (_tcp, mut tcp_events) = connect(&s.tcp_url(), "dave", "d-tcp").await;
    let (_ws, mut ws_events) = connect(&s.ws_url(), "dave", "d-ws").await;
    let (_erin, mut erin_events) = connect(&s.tcp_url(), "erin", "e1").await;

    let (status, body) = post(&s, "/v1/apps/demo/users/dave/revoke", KEY, "{}").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kicked"], 2, "{body}");
    let issued_before = body["issued_before"].as_u64().expect("issued_before");
    assert!(issued_before as f64 >= now() - 1.0, "{body}");
    // Every device, on TCP and WebSocket, with the kick code of its own.
    assert_eq!(
        kicked_for_good(&mut tcp_events).await,
        code::KICK_TOKEN_REVOKED
    );
    assert_eq!(
        kicked_for_good(&mut ws_events).await,
        code::KICK_TOKEN_REVOKED
    );

    let fresh = token_with(
        "demo",
        "dave",
        json!({"exp": now() + 600.0, "iat": issued_before}),
    );
    let no_iat = token_with("demo", "dave", json!({"exp": now() + 600.0}));
    let check = |s: &TestServer| {
        let url = s.tcp_url();
        let (old, fresh, no_iat) = (old.clone(), fresh.clone(), no_iat.clone());
        async move {
            assert_eq!(
                login_code(&url, &old).await,
                Some(code::TOKEN_INVALID),
                "old token"
            );
            assert_eq!(
                login_code(&url, &no_iat).await,
                Some(code::TOKEN_INVALID),
                "a token without iat once the user has a revocation"
            );
            assert_eq!(
                login_code(&url, &fresh).await,
                None,
                "a token issued at the revocation"
            );
        }
    };
    check(&s).await;
    // Other users are untouched.
    let (status, body) = post(
        &s,
        "/v1/apps/demo/users/dave/messages",
        KEY,
        r#"{"to": "erin", "type": "text", "body": "still here?", "client_msg_id": "r1"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        bodies(&messages(&mut erin_events, 1, T).await),
        ["still here?"]
    );

    // An earlier time does not lower the revocation.
    let (status, body) = post(
        &s,
        "/v1/apps/demo/users/dave/revoke",
        KEY,
        r#"{"issued_before": 1000}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_before"], issued_before, "{body}");
    assert_eq!(body["kicked"], 0, "nobody was online");
    // A JSON Schema integer may be written 1000.0 (schemathesis found it refused).
    let (status, body) = post(
        &s,
        "/v1/apps/demo/users/dave/revoke",
        KEY,
        r#"{"issued_before": 1000.0}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_before"], issued_before, "{body}");

    // Bad input, and the key rules of every app endpoint.
    let (status, body) = post(
        &s,
        "/v1/apps/demo/users/dave/revoke",
        KEY,
        r#"{"issued_before": -1}"#,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("BAD_JSON")),
        "{body}"
    );
    let (status, body) = post(
        &s,
        "/v1/apps/demo/users/dave/revoke",
        KEY,
        r#"{"issued_before": 1000.5}"#,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("BAD_JSON")),
        "{body}"
    );
    let (status, body) = post(&s, "/v1/apps/demo/users/dave/revoke", KEY, "[]").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("BAD_JSON")),
        "an array is not the request object: {body}"
    );
    let wrong = post(&s, "/v1/apps/demo/users/dave/revoke", "wrong", "{}").await;
    assert_eq!(wrong.0, 401, "{}", wrong.1);
    assert_eq!(
        post(&s, "/v1/apps/nope/users/dave/revoke", KEY, "{}").await,
        wrong
    );
    let (status, body) = post(&s, "/v1/apps/nope/users/dave/revoke", ADMIN, "{}").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("UNKNOWN_APP")),
        "{body}"
    );

    // The revocation is in the store: it holds after a restart.
    let s = s.restart().await;
    check(&s).await;
    s.stop().await;
}

/// The node refuses to start, naming the app and the setting, on a JWT
/// configuration that would accept the start and then fail every login.
#[tokio::test]
async fn bad_jwt_configuration_is_refused_at_start() {
    let p256 = include_str!("../../core/testdata/p256-public.pem");
    let cases: [(&str, AppConfig, &[&str]); 4] = [
        (
            "both a secret and a public key",
            AppConfig {
                jwt_secret: Some(SECRET.into()),
                jwt_public_key: Some(p256.into()),
                ..Default::default()
            },
            &["jwt_secret", "jwt_public_key"],
        ),
        (
            "an EC key on P-384",
            AppConfig {
                jwt_public_key: Some(include_str!("../../core/testdata/p384-public.pem").into()),
                ..Default::default()
            },
            &["jwt_public_key", "P-256"],
        ),
        (
            "an RSA private key",
            AppConfig {
                jwt_public_key: Some(
                    include_str!("../../core/testdata/rsa-private-pkcs1.pem").into(),
                ),
                ..Default::default()
            },
            &["jwt_public_key", "PRIVATE"],
        ),
        (
            "an EC private key",
            AppConfig {
                jwt_public_key: Some(include_str!("../../core/testdata/p256-private.pem").into()),
                ..Default::default()
            },
            &["jwt_public_key", "PRIVATE"],
        ),
    ];
    for (what, app, words) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path().to_path_buf());
        config.apps.push(AppConfig {
            name: "badkeys".into(),
            ..app
        });
        let msg = match switchboard::Server::start(config).await {
            Ok(server) => {
                server.stop().await;
                panic!("{what}: the node started");
            }
            Err(e) => format!("{e:#}"),
        };
        assert!(msg.contains("app badkeys"), "{what}: {msg}");
        for w in words {
            assert!(msg.contains(w), "{what}: {msg} lacks {w}");
        }
    }
    // The right keys start.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path().to_path_buf());
    for (name, pem) in [
        ("es256", p256),
        ("rs256", include_str!("../../core/testdata/rsa-public.pem")),
    ] {
        config.apps.push(AppConfig {
            name: name.into(),
            jwt_public_key: Some(pem.into()),
            ..Default::default()
        });
    }
    let server = switchboard::Server::start(config)
        .await
        .expect("good keys start");
    server.stop().await;
}
