//! A plain-HTTP client for a node under test: JSON in, status and JSON out.

use serde_json::Value;

use crate::server::TestServer;

/// The API key of the test app `demo` ([`crate::server::test_config`]).
pub const DEMO_KEY: &str = "demo-api-key";

/// A plain-HTTP client for one node.
pub struct Http {
    client: reqwest::Client,
    base: String,
    /// The API key `get`, `post`, `put` and `delete` send.
    key: &'static str,
}

impl Http {
    pub fn new(s: &TestServer) -> Http {
        Http::at(s.http)
    }

    /// A client for the node whose HTTP API listens on `addr` (a node run as
    /// a child process, whose app `demo` has the API key [`DEMO_KEY`]).
    pub fn at(addr: std::net::SocketAddr) -> Http {
        // reqwest's rustls needs a process-wide provider; a test whose node
        // is a child process has not installed one.
        switchboard_hooks::install_crypto_provider();
        Http {
            client: reqwest::Client::new(),
            base: format!("http://{addr}"),
            key: DEMO_KEY,
        }
    }

    /// Sends a request; returns the status and the JSON body (Null when the
    /// body is not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("HTTP request to the test node failed: {e}"));
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("response body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// [`Http::call`] with a JSON body.
    pub async fn call_json(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let bytes = body.map(|b| serde_json::to_vec(&b).expect("json"));
        self.call(method, path, key, bytes).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(&body).expect("json");
        self.call(reqwest::Method::POST, path, Some(self.key), Some(bytes))
            .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(self.key), None)
            .await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(&body).expect("json");
        self.call(reqwest::Method::PUT, path, Some(self.key), Some(bytes))
            .await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, Some(self.key), None)
            .await
    }

    pub async fn text(&self, path: &str) -> (u16, String) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("HTTP request to the test node failed: {e}"));
        (resp.status().as_u16(), resp.text().await.expect("text"))
    }
}

/// Every JSON body a [`webhook_receiver`] accepted, in arrival order.
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;

/// Locks what a [`webhook_receiver`] got (a panicked holder poisons nothing
/// a test cares about).
pub fn received(r: &Received) -> std::sync::MutexGuard<'_, Vec<Value>> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// A webhook receiver on a free local port, standing in for a business
/// server: it answers 200 to every JSON body (400 otherwise) and keeps
/// them. Returns its URL (`http://127.0.0.1:<port>/events`).
pub async fn webhook_receiver() -> (String, Received) {
    async fn receive(
        axum::extract::State(got): axum::extract::State<Received>,
        body: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => {
                received(&got).push(v);
                axum::http::StatusCode::OK
            }
            Err(_) => axum::http::StatusCode::BAD_REQUEST,
        }
    }
    let got: Received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let addr = listener.local_addr().expect("receiver address");
    let app = axum::Router::new()
        .route("/events", axum::routing::post(receive))
        .with_state(got.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/events"), got)
}
