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
    /// The one deadline of a new connection, measured from accept (default
    /// 10 s): on the TCP port the TLS handshake and the login; on the HTTP
    /// port the TLS handshake and the first request's headers, and for a
    /// WebSocket the upgrade and the login too.
    pub login_timeout: Duration,
    /// An HTTP keep-alive connection with no request for this long is closed
    /// (default 60 s); a later request's headers must also arrive within it.
    pub http_idle_timeout: Duration,
    /// Browser origins allowed to open a WebSocket (default: same origin).
    pub ws_origins: WsOrigins,
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
    /// Requests (c2c, c2s, sync, mark_read, list_conversations) per second
    /// per connection, sustained (default 50).
    pub rate_per_sec: u32,
    /// Requests allowed in a burst above the rate (default 100).
    pub rate_burst: u32,
    /// Transient messages per second per connection, sustained (default
    /// 20): a budget of their own, so a chatty typing indicator never
    /// takes the budget of real messages.
    pub transient_rate_per_sec: u32,
    /// Transient messages allowed in a burst above their rate (default 40).
    pub transient_rate_burst: u32,
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
            http_idle_timeout: Duration::from_secs(60),
            ws_origins: WsOrigins::SameOrigin,
            keepalive: Duration::from_secs(30),
            idle_keepalives: 3,
            ack_timeout: Duration::from_secs(18),
            max_resends: 3,
            max_unacked: 1024,
            outbound_queue: 256,
            rate_per_sec: 50,
            rate_burst: 100,
            transient_rate_per_sec: 20,
            transient_rate_burst: 40,
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

/// Which browser origins may open a WebSocket on `/ws`, checked at the
/// upgrade. A request without an `Origin` header is not from a browser
/// (browsers always send one on a WebSocket upgrade): SDKs, the CLI and
/// native apps send none and are let through, since the check exists to keep
/// other sites' pages from using a visitor's browser as a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsOrigins {
    /// Every origin (the default in demo mode).
    Any,
    /// Only pages served from the host the upgrade is addressed to: the
    /// origin's host and port equal the request's `Host`.
    SameOrigin,
    /// Exactly these origins (`scheme://host[:port]`, lower case).
    List(Vec<String>),
}

/// Why a configured origin was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not an origin: write scheme://host[:port] (no path, e.g. \"https://app.example.com\"), \"null\" or \"*\""
)]
pub struct BadOrigin(String);

impl WsOrigins {
    /// The policy of a configured list: `*` anywhere allows every origin.
    pub fn from_list(list: &[String]) -> Result<WsOrigins, BadOrigin> {
        if list.iter().any(|o| o.trim() == "*") {
            return Ok(WsOrigins::Any);
        }
        let origins = list
            .iter()
            .map(|o| {
                let n = normalize(o);
                // "null" is what sandboxed frames and file:// pages send.
                if n == "null" || split_origin(&n).is_some() {
                    Ok(n)
                } else {
                    Err(BadOrigin(o.clone()))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WsOrigins::List(origins))
    }

    /// Whether an upgrade with this `Origin` (None: no header) addressed to
    /// `host` (the `Host` header) may proceed.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let origin = normalize(origin);
        match self {
            WsOrigins::Any => true,
            WsOrigins::List(list) => list.contains(&origin),
            WsOrigins::SameOrigin => {
                let (Some((scheme, authority)), Some(host)) = (split_origin(&origin), host) else {
                    return false;
                };
                strip_default_port(scheme, authority)
                    == strip_default_port(scheme, &host.trim().to_ascii_lowercase())
            }
        }
    }
}

fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// `scheme://authority` of a normalized origin, or None when it is not one.
fn split_origin(origin: &str) -> Option<(&str, &str)> {
    let (scheme, authority) = origin.split_once("://")?;
    let valid = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@', ' ']);
    valid.then_some((scheme, authority))
}

/// Browsers leave the scheme's default port out of `Origin`; clients may
/// still write it in `Host`.
fn strip_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    let default = match scheme {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => return authority,
    };
    authority.strip_suffix(default).unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let same = WsOrigins::SameOrigin;
        assert!(same.allows(None, Some("chat.example.com")));
        assert!(same.allows(Some("https://chat.example.com"), Some("chat.example.com")));
        assert!(same.allows(
            Some("https://Chat.example.com"),
            Some("chat.example.com:443")
        ));
        assert!(same.allows(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")));
        assert!(!same.allows(Some("http://127.0.0.1:8081"), Some("127.0.0.1:8080")));
        assert!(!same.allows(Some("https://evil.example"), Some("chat.example.com")));
        assert!(!same.allows(Some("null"), Some("chat.example.com")));
        assert!(!same.allows(Some("https://chat.example.com"), None));

        let list =
            WsOrigins::from_list(&["https://app.example.com/".into(), "null".into()]).unwrap();
        assert!(list.allows(Some("https://APP.example.com"), Some("api.example.com")));
        assert!(list.allows(Some("null"), None));
        assert!(!list.allows(Some("https://other.example.com"), Some("app.example.com")));
        assert!(list.allows(None, None));

        let any = WsOrigins::from_list(&["https://a.example".into(), "*".into()]).unwrap();
        assert_eq!(any, WsOrigins::Any);
        assert!(any.allows(Some("https://anything.example"), None));

        for bad in ["app.example.com", "https://a.example/path", "https://", ""] {
            assert!(WsOrigins::from_list(&[bad.into()]).is_err(), "{bad:?}");
        }
    }
}
