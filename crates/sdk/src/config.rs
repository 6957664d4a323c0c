//! What a [`crate::Client`] connects to and how it behaves.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::SdkError;

/// A future that yields a fresh login token.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, SdkError>> + Send>>;

/// Produces a fresh token for each reconnect (tokens expire; the first login
/// uses [`ClientConfig::token`]).
pub type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// Configuration of a [`crate::Client`]. Build it with [`ClientConfig::new`]
/// and the `with_*` methods, or fill the public fields directly.
#[derive(Clone)]
pub struct ClientConfig {
    /// `tcp://host:port`, `tls://host:port`, `ws://host:port/ws` or `wss://host:port/ws`.
    pub url: String,
    /// The login token (a JWT signed by the business server).
    pub token: String,
    /// Called for a fresh token before every reconnect; `None` reuses `token`.
    pub token_provider: Option<TokenProvider>,
    /// Free text such as `mobile`, `web`, `desktop` (at most 32 bytes).
    pub platform: String,
    /// Stable per installation: a second login with the same id replaces the first.
    /// [`ClientConfig::new`] picks a random one; set a persisted one in a real app.
    pub device_id: String,
    /// Offer deflate compression at login.
    pub compression: bool,
    /// Bodies of at least this many bytes are compressed (when negotiated).
    pub compression_threshold: usize,
    /// How long a request (send, c2s, sync_now, logout) may wait for its answer,
    /// reconnects included.
    pub request_timeout: Duration,
    /// How long one connection attempt (TCP, TLS, WebSocket, login) may take.
    pub connect_timeout: Duration,
    /// Shortest delay before a reconnect.
    pub reconnect_min: Duration,
    /// Longest delay before a reconnect (the exponential backoff's cap).
    pub reconnect_max: Duration,
    /// Largest frame accepted from the server (decompressed bodies included).
    pub max_frame_bytes: usize,
    /// The last timeline sequence the application has persisted; the first
    /// sync starts after it. `None` starts at the server's cursor for this device.
    pub since: Option<u64>,
    /// The last sequence of each group the application has persisted
    /// (group id → seq), like [`ClientConfig::since`] for the user's
    /// timeline. A group left out starts at this device's cursor on the
    /// server when the login lists it (it has new entries), or at 0 when it
    /// first shows up by a push (the server then moves the start up to
    /// where this member's view begins). A persisted position behind the
    /// device's server cursor is caught up by the group's next entry (a
    /// gap, synced from the position) or by [`crate::Client::sync_now`].
    pub group_since: HashMap<String, u64>,
    /// Entries per sync page asked for (the server may cap it).
    pub sync_page: u32,
    /// PEM-encoded root certificates trusted for `tls://` and `wss://`.
    pub root_certs_pem: Vec<Vec<u8>>,
    /// The name the server certificate must carry; defaults to the URL's host.
    pub tls_server_name: Option<String>,
    /// Capacity of the request queue to the connection task, and the most
    /// requests it keeps in flight; callers wait (asynchronously) when it is full.
    pub outbound_capacity: usize,
    /// Capacity of the [`crate::Events`] channel. When the application does
    /// not keep up, the task stops reading the socket (and the server may
    /// kick it as a slow consumer; it then reconnects and syncs).
    pub event_capacity: usize,
    /// Sent in the login as the client software version.
    pub client_version: String,
    /// The local address to connect from (the port is picked by the OS);
    /// `None` lets the OS choose. For hosts with several interfaces, and
    /// for load generators that spread many clients over loopback source
    /// addresses (one source address has only ~28,000 ephemeral ports).
    pub local_addr: Option<IpAddr>,
}

impl ClientConfig {
    /// A configuration with defaults for everything but the URL and the token.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> ClientConfig {
        ClientConfig {
            url: url.into(),
            token: token.into(),
            ..ClientConfig::default()
        }
    }

    /// Sets the platform label.
    pub fn with_platform(mut self, platform: impl Into<String>) -> Self {
        self.platform = platform.into();
        self
    }

    /// Sets the device id.
    pub fn with_device_id(mut self, device_id: impl Into<String>) -> Self {
        self.device_id = device_id.into();
        self
    }

    /// Turns compression on or off.
    pub fn with_compression(mut self, on: bool) -> Self {
        self.compression = on;
        self
    }

    /// Sets the request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the reconnect backoff bounds.
    pub fn with_reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// Sets the last sequence the application has persisted.
    pub fn with_since(mut self, since: Option<u64>) -> Self {
        self.since = since;
        self
    }

    /// Sets the last sequence of `group` the application has persisted.
    pub fn with_group_since(mut self, group: impl Into<String>, seq: u64) -> Self {
        self.group_since.insert(group.into(), seq);
        self
    }

    /// Adds PEM-encoded root certificates (one or more in the buffer).
    pub fn with_root_certs_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certs_pem.push(pem.into());
        self
    }

    /// Sets the name the server certificate is checked against.
    pub fn with_tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls_server_name = Some(name.into());
        self
    }

    /// Sets the largest frame accepted from the server.
    pub fn with_max_frame_bytes(mut self, max: usize) -> Self {
        self.max_frame_bytes = max;
        self
    }

    /// Sets the request queue capacity.
    pub fn with_outbound_capacity(mut self, capacity: usize) -> Self {
        self.outbound_capacity = capacity;
        self
    }

    /// Connects from `addr` (the OS picks the port).
    pub fn with_local_addr(mut self, addr: IpAddr) -> Self {
        self.local_addr = Some(addr);
        self
    }

    /// Sets the events channel capacity.
    pub fn with_event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Sets an async callback that yields a fresh token before each reconnect.
    pub fn with_token_provider<F, Fut>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, SdkError>> + Send + 'static,
    {
        self.token_provider = Some(Arc::new(move || -> TokenFuture { Box::pin(provider()) }));
        self
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            url: String::new(),
            token: String::new(),
            token_provider: None,
            platform: "rust".into(),
            device_id: format!("{:016x}", rand::random::<u64>()),
            compression: true,
            compression_threshold: 1024,
            request_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            max_frame_bytes: 4 << 20,
            since: None,
            group_since: HashMap::new(),
            sync_page: 200,
            root_certs_pem: Vec::new(),
            tls_server_name: None,
            outbound_capacity: 256,
            event_capacity: 1024,
            client_version: concat!("switchboard-sdk-rust/", env!("CARGO_PKG_VERSION")).into(),
            local_addr: None,
        }
    }
}

impl fmt::Debug for ClientConfig {
    // By hand: the token is a credential and stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("token_provider", &self.token_provider.is_some())
            .field("platform", &self.platform)
            .field("device_id", &self.device_id)
            .field("compression", &self.compression)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("since", &self.since)
            .field("group_since", &self.group_since)
            .field("root_certs", &self.root_certs_pem.len())
            .field("tls_server_name", &self.tls_server_name)
            .field("outbound_capacity", &self.outbound_capacity)
            .field("event_capacity", &self.event_capacity)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}
