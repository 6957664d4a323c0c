//! A real Switchboard node in-process, on ephemeral ports, with its own data
//! directory, for integration tests.

use std::net::SocketAddr;
use std::path::PathBuf;

use switchboard::{Config, Server};
use switchboard_core::AppConfig;

/// HS256 secret of the test apps.
pub const SECRET: &str = "test-secret-0123456789abcdef";
/// The second test app's secret.
pub const OTHER_SECRET: &str = "other-secret-0123456789abcdef";

/// A node under test. Dropping it leaves the data dir; call [`TestServer::stop`].
pub struct TestServer {
    pub server: Option<Server>,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    pub config: Config,
    _dir: Option<tempfile::TempDir>,
}

/// A config for tests: ports 0, a temporary data dir set by the caller, apps
/// `demo` and `shop` (which may talk to each other) and `other` (which may not).
pub fn test_config(data_dir: PathBuf) -> Config {
    let mut c = Config {
        data_dir,
        ..Config::default()
    };
    c.listen.http = "127.0.0.1:0".parse().unwrap_or(c.listen.http);
    c.listen.tcp = "127.0.0.1:0".parse().unwrap_or(c.listen.tcp);
    c.apps = vec![
        AppConfig {
            name: "demo".into(),
            jwt_secret: Some(SECRET.into()),
            api_key: Some("demo-api-key".into()),
            cross_app: vec!["shop".into()],
            ..Default::default()
        },
        AppConfig {
            name: "shop".into(),
            jwt_secret: Some(SECRET.into()),
            ..Default::default()
        },
        AppConfig {
            name: "other".into(),
            jwt_secret: Some(OTHER_SECRET.into()),
            ..Default::default()
        },
    ];
    c.shutdown_grace_secs = 2;
    c.store.cursor_flush_ms = 50;
    c
}

impl TestServer {
    /// Starts a node with [`test_config`] in a fresh temporary directory.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a node after `tweak` adjusted the test config.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path().to_path_buf());
        tweak(&mut config);
        let server = Server::start(config.clone()).await.expect("server starts");
        TestServer {
            tcp: server.tcp_addr,
            http: server.http_addr,
            server: Some(server),
            config,
            _dir: Some(dir),
        }
    }

    /// `tcp://…` URL of the TCP listener.
    pub fn tcp_url(&self) -> String {
        format!("tcp://{}", self.tcp)
    }

    /// `ws://…/ws` URL of the WebSocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// A login token for `uid` of app `demo`.
    pub fn token(&self, uid: &str) -> String {
        token("demo", uid)
    }

    /// Stops the node gracefully and starts it again on the same ports with
    /// the same data directory (a planned restart).
    pub async fn restart(mut self) -> TestServer {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
        let mut config = self.config.clone();
        config.listen.tcp = self.tcp;
        config.listen.http = self.http;
        let server = Server::start(config.clone())
            .await
            .expect("server restarts");
        TestServer {
            tcp: server.tcp_addr,
            http: server.http_addr,
            server: Some(server),
            config,
            _dir: self._dir.take(),
        }
    }

    /// Stops the node gracefully.
    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }
}

/// A login token for `app`/`uid`, signed with the test secret of that app.
pub fn token(app: &str, uid: &str) -> String {
    let secret = if app == "other" { OTHER_SECRET } else { SECRET };
    switchboard_core::auth::issue_token(secret, app, uid, 3600).expect("token")
}
