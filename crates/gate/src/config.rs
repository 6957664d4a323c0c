//! The gate's limits and timers, each with its default.

use std::time::Duration;

/// Limits and timers of the gate. Every field has a documented default
/// (docs/configuration.md).
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// Largest frame accepted, header included (default 65,536 bytes).
    pub max_frame_bytes: usize,
    /// Connections open at once, logged in or not (default 100,000). The
    /// process's open-file limit may bind first; the listener says so.
    pub max_connections: usize,
    /// Time from connect to a successful login, TLS handshake included (default 10 s).
    pub login_timeout: Duration,
    /// Interval at which clients are asked to ping (default 30 s).
    pub keepalive: Duration,
    /// Missed keepalives before the connection is closed (default 3).
    pub idle_keepalives: u32,
    /// Time a push waits for its ack before it is resent (default 18 s).
    pub ack_timeout: Duration,
    /// Resends of an unacknowledged push before the connection is closed (default 3).
    pub max_resends: u32,
    /// Pushes that may wait for their ack on one connection (default 1,024);
    /// past it the client is a slow consumer and is closed.
    pub max_unacked: usize,
    /// Outbound queue of one connection (default 256 frames); full means a
    /// slow consumer, which is closed and syncs when it comes back.
    pub outbound_queue: usize,
    /// Requests (c2c, c2s, sync) per second per connection, sustained (default 50).
    pub rate_per_sec: u32,
    /// Requests allowed in a burst above the rate (default 100).
    pub rate_burst: u32,
    /// Bodies at least this large are compressed when the client negotiated it (default 1,024 bytes).
    pub compression_threshold: usize,
    /// Time allowed to write one batch of frames to a socket (default 10 s).
    pub write_timeout: Duration,
    /// Requests (c2c, c2s, sync) of one connection processed at once
    /// (default 64). A c2c waits about one group commit for durability, so
    /// this is what lets one connection send more than one message per
    /// commit; at the limit the connection's next frames stay unread
    /// (backpressure) until an answer goes out. 1 serves requests one by one.
    pub max_in_flight: usize,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            max_frame_bytes: 64 * 1024,
            max_connections: 100_000,
            login_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(30),
            idle_keepalives: 3,
            ack_timeout: Duration::from_secs(18),
            max_resends: 3,
            max_unacked: 1024,
            outbound_queue: 256,
            rate_per_sec: 50,
            rate_burst: 100,
            compression_threshold: 1024,
            write_timeout: Duration::from_secs(10),
            max_in_flight: 64,
        }
    }
}

impl GateConfig {
    /// Silence after which a connection is closed.
    pub fn idle_timeout(&self) -> Duration {
        self.keepalive * self.idle_keepalives.max(1)
    }
}
