//! Node counters behind the operator stats (`GET /v1/admin/stats`) and the
//! Prometheus metrics.
//!
//! Totals the stats endpoint turns into rates live in plain atomics here (the
//! `metrics` facade cannot be read back); every count is also recorded
//! through the `metrics` facade, which is a no-op until the binary installs a
//! recorder, so the core never depends on an exporter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Histogram: seconds from the store's commit (or, for an online-only push,
/// from the request) to the push handed to the connection's queue.
pub const DELIVERY_SECONDS: &str = "switchboard_delivery_seconds";
/// Counter: messages stored (c2c and stored s2c; duplicates not counted).
pub const MESSAGES_STORED: &str = "switchboard_messages_stored_total";
/// Counter: online-only messages built (one per s2c request, whatever the fan-out).
pub const ONLINE_MESSAGES: &str = "switchboard_online_messages_total";
/// Counter: push frames handed to connection queues, label `mode` = `stored` | `online`.
pub const PUSHES: &str = "switchboard_pushes_total";
/// Counter: connections closed by the server, label `code` (`KICK_ADMIN`, ...).
pub const KICKS: &str = "switchboard_kicks_total";
/// Gauge: logged-in connections on this node.
pub const CONNECTIONS: &str = "switchboard_connections";
/// Counter: webhook requests, label `outcome` = `delivered` (2xx) | `failed`
/// (connection error, timeout or non-2xx; retried with backoff).
pub const WEBHOOK_REQUESTS: &str = "switchboard_webhook_requests_total";
/// Counter: outbox events the webhook dispatcher finished, label `outcome` =
/// `completed` (every destination accepted it) | `dropped` (no webhook wants it).
pub const WEBHOOK_EVENTS: &str = "switchboard_webhook_events_total";
/// Gauge: outbox events the webhook dispatcher holds, not yet accepted by
/// every destination (grows while a receiver is down).
pub const WEBHOOK_IN_FLIGHT: &str = "switchboard_webhook_events_in_flight";

/// Histogram: seconds one group commit of the store took, label `store` =
/// `fjall` | `sqlite` (the writer thread's group: first write to the
/// fsync'd commit) | `postgres` (one batch transaction, retries included): what every
/// append in the group waited for once it was taken from the queue.
pub const STORE_GROUP_SECONDS: &str = "switchboard_store_group_seconds";
/// Histogram: seconds of the commit alone, label `store` (fjall: the
/// journal write and fsync, and any write stall; SQLite: the WAL write and
/// fsync).
pub const STORE_COMMIT_SECONDS: &str = "switchboard_store_commit_seconds";
/// Histogram: seconds of one SQLite checkpoint (WAL frames copied into the
/// database file), label `by` = `thread` (the checkpointer, beside the
/// writer) | `writer` (between two groups, so the WAL can start over).
pub const STORE_CHECKPOINT_SECONDS: &str = "switchboard_store_checkpoint_seconds";
/// Histogram: commands (appends; in the embedded stores also outbox events, ...) in one
/// group commit, label `store`. (Was `switchboard_store_group_commands`: the
/// unit, commands, now ends the name like every other.)
pub const STORE_GROUP_COMMANDS: &str = "switchboard_store_group_size_commands";
/// Counter: offline notifications, label `outcome` = `published` (one
/// `notification` event) | `online` (the receiver came back within the
/// window: none) | `dropped` (the notification task was behind: shed).
pub const NOTIFICATIONS: &str = "switchboard_notifications_total";
/// Counter: successful logins (the login ack was sent).
pub const LOGINS: &str = "switchboard_logins_total";
/// Counter: logins refused, label `code` (`TOKEN_INVALID`, `LOGIN_TIMEOUT`, ...).
pub const LOGIN_FAILURES: &str = "switchboard_login_failures_total";
/// Counter: error frames sent to clients, label `code`.
pub const ERRORS_SENT: &str = "switchboard_errors_sent_total";
/// Counter: requests refused for a connection's rate limit.
pub const RATE_LIMITED: &str = "switchboard_rate_limited_requests_total";
/// Counter: c2s reports the bus accepted (duplicates not counted).
pub const C2S: &str = "switchboard_c2s_messages_total";
/// Gauge: open connections (logged in or not), label `transport` = `tcp` | `ws`.
pub const OPEN_CONNECTIONS: &str = "switchboard_open_connections";
/// Counter: connections accepted, label `transport` = `tcp` | `ws`.
pub const CONNECTIONS_ACCEPTED: &str = "switchboard_connections_accepted_total";

/// Totals of one node's logic, since start.
#[derive(Debug, Default)]
pub struct NodeStats {
    messages_stored: AtomicU64,
    online_messages: AtomicU64,
}

impl NodeStats {
    /// `n` new messages were stored.
    pub fn record_stored(&self, n: u64) {
        self.messages_stored.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(MESSAGES_STORED).increment(n);
    }

    /// One online-only message was built (whatever its fan-out).
    pub fn record_online_message(&self) {
        self.online_messages.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(ONLINE_MESSAGES).increment(1);
    }

    /// A push reached the connection queues `since` was taken at the commit.
    pub fn record_delivery(&self, since: Instant) {
        metrics::histogram!(DELIVERY_SECONDS).record(since.elapsed().as_secs_f64());
    }

    /// Messages stored since start.
    pub fn messages_stored(&self) -> u64 {
        self.messages_stored.load(Ordering::Relaxed)
    }

    /// Online-only messages built since start.
    pub fn online_messages(&self) -> u64 {
        self.online_messages.load(Ordering::Relaxed)
    }
}

/// Records a kick by its code (the gate calls it when it closes a connection).
pub fn record_kick(code: u32) {
    metrics::counter!(KICKS, "code" => switchboard_proto::code::name(code)).increment(1);
}

/// A login was accepted.
pub fn record_login() {
    metrics::counter!(LOGINS).increment(1);
}

/// A login was refused with `code`.
pub fn record_login_failure(code: u32) {
    metrics::counter!(LOGIN_FAILURES, "code" => switchboard_proto::code::name(code)).increment(1);
}

/// An error frame with `code` was sent to a client.
pub fn record_error_sent(code: u32) {
    metrics::counter!(ERRORS_SENT, "code" => switchboard_proto::code::name(code)).increment(1);
}

/// A request was refused for the connection's rate limit.
pub fn record_rate_limited() {
    metrics::counter!(RATE_LIMITED).increment(1);
}

/// Counts a connection open on `transport` while it lives (the gauge goes
/// down when this is dropped, whichever way the connection ends).
#[derive(Debug)]
pub struct OpenConnection(&'static str);

impl OpenConnection {
    pub fn new(transport: &'static str) -> OpenConnection {
        metrics::counter!(CONNECTIONS_ACCEPTED, "transport" => transport).increment(1);
        metrics::gauge!(OPEN_CONNECTIONS, "transport" => transport).increment(1.0);
        OpenConnection(transport)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(OPEN_CONNECTIONS, "transport" => self.0).decrement(1.0);
    }
}
