//! [`NatsRoute`]: carries deliveries and kicks between nodes over NATS.
//!
//! Each node subscribes to `<prefix>.node.<name>`. A delivery to a device on
//! another node is published there as a small protobuf [`Envelope`] holding
//! the already encoded `Push` frame, so the receiving node hands the same
//! bytes to its connections without decoding the message. A delivery to this
//! node goes straight to the local [`Hub`].
//!
//! Publishing is fire-and-forget (core NATS, at most once): a push lost on
//! the way is recovered by the device's ack timer and `sync`, as with any
//! push. When NATS is unreachable, `deliver` fails at once instead of
//! queueing, and the client library reconnects (and re-subscribes) by itself.

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, RequestErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message as _;
use switchboard_core::{Delivery, Hub, Route, RouteError, UserKey};
use switchboard_proto::Packet;
use tokio::task::JoinHandle;

/// How long a ping waits for the server's answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors building the NATS client or the route.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("invalid NATS configuration: {0}")]
    Config(String),
    #[error("NATS at {url}: {message}")]
    Connect { url: String, message: String },
}

/// Connects a NATS client for this node. It does not wait for the server:
/// the connection (and every reconnect) is made in the background, so a node
/// starts and serves what it can while NATS is down.
pub async fn connect(url: &str, node: &str) -> Result<Client, NatsError> {
    let client = ConnectOptions::new()
        .name(format!("switchboard-{node}"))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        // Reconnect forever, but quickly enough that service resumes within
        // a couple of seconds of the server's return.
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| Duration::from_millis((100 * attempt as u64).min(2000)))
        // A comma-separated list names the servers of a NATS cluster.
        .connect(url.split(',').map(str::trim).collect::<Vec<&str>>())
        .await
        .map_err(|e| NatsError::Connect {
            url: url.to_string(),
            message: e.to_string(),
        })?;
    // Give a reachable server a moment, so a node is connected when it
    // starts serving; an unreachable one is left to the background.
    for _ in 0..40 {
        if client.connection_state() == State::Connected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if client.connection_state() != State::Connected {
        tracing::warn!(%url, "NATS not reachable yet; connecting in the background");
    }
    Ok(client)
}

/// Checks that `token` can be one token of a NATS subject.
pub fn check_subject_token(what: &str, token: &str) -> Result<(), NatsError> {
    if token.is_empty()
        || token
            .chars()
            .any(|c| c.is_whitespace() || c == '.' || c == '*' || c == '>')
    {
        return Err(NatsError::Config(format!(
            "{what} {token:?} must be non-empty without spaces, '.', '*' or '>'"
        )));
    }
    Ok(())
}

/// Checks a subject prefix (tokens separated by dots).
pub fn check_subject_prefix(prefix: &str) -> Result<(), NatsError> {
    prefix
        .split('.')
        .try_for_each(|t| check_subject_token("subject prefix token", t))
}

/// What travels on a node's subject: a delivery (frame set) or a kick.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    #[prost(string, tag = "1")]
    pub app: String,
    #[prost(string, tag = "2")]
    pub uid: String,
    /// The timeline sequence of the push (0 for online-only).
    #[prost(uint64, tag = "3")]
    pub seq: u64,
    /// The connection that gets no push (the sender's own).
    #[prost(uint64, optional, tag = "4")]
    pub skip_conn: Option<u64>,
    /// The encoded `Push` frame; empty for a kick.
    #[prost(bytes = "bytes", tag = "5")]
    pub frame: Bytes,
    #[prost(uint64, tag = "6")]
    pub kick_conn: u64,
    #[prost(uint32, tag = "7")]
    pub kick_code: u32,
}

/// The route of a clustered node.
pub struct NatsRoute {
    client: Client,
    node: String,
    prefix: String,
    hub: Arc<Hub>,
    listener: JoinHandle<()>,
}

impl NatsRoute {
    /// Subscribes this node to its subject and starts handing what arrives
    /// to `hub`.
    pub async fn start(
        client: Client,
        prefix: &str,
        node: &str,
        hub: Arc<Hub>,
    ) -> Result<NatsRoute, NatsError> {
        check_subject_prefix(prefix)?;
        check_subject_token("node name", node)?;
        let subject = format!("{prefix}.node.{node}");
        let mut sub = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| NatsError::Connect {
                url: subject.clone(),
                message: format!("cannot subscribe: {e}"),
            })?;
        let listener = {
            let hub = hub.clone();
            tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    match Envelope::decode(msg.payload) {
                        Ok(env) => handle(&hub, env),
                        Err(e) => tracing::warn!(error = %e, "undecodable route message dropped"),
                    }
                }
                tracing::warn!(%subject, "route subscription ended");
            })
        };
        // When NATS is reachable, return with the subscription live on the
        // server, so a delivery published right after start is not missed;
        // otherwise the client subscribes when it connects.
        if let Err(e) = ping(&client).await {
            tracing::warn!(error = %e, node, "route subscription not confirmed yet");
        }
        Ok(NatsRoute {
            client,
            node: node.to_string(),
            prefix: prefix.to_string(),
            hub,
            listener,
        })
    }

    async fn publish(&self, node: &str, env: Envelope) -> Result<(), RouteError> {
        // While disconnected the client would buffer: fail now instead, the
        // device syncs anyway, and the caller is not held up.
        if self.client.connection_state() != State::Connected {
            return Err(RouteError::Unavailable(format!(
                "NATS is not connected (route to node {node})"
            )));
        }
        let subject = format!("{}.node.{node}", self.prefix);
        match tokio::time::timeout(
            Duration::from_secs(2),
            self.client.publish(subject, env.encode_to_vec().into()),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RouteError::Unavailable(format!("NATS publish: {e}"))),
            Err(_) => Err(RouteError::Unavailable("NATS publish timed out".into())),
        }
    }
}

impl Drop for NatsRoute {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn handle(hub: &Hub, env: Envelope) {
    let user = UserKey::new(env.app, env.uid);
    if env.frame.is_empty() {
        hub.kick_conn(&user, env.kick_conn, env.kick_code);
    } else {
        let conns = hub.connections_of(&user);
        hub.deliver_frame(&conns, env.seq, &env.frame, env.skip_conn);
    }
}

#[async_trait]
impl Route for NatsRoute {
    async fn deliver(&self, node: &str, d: Delivery) -> Result<usize, RouteError> {
        if node == self.node {
            return Ok(self.hub.deliver(&d.user, &d.entry, d.skip_conn));
        }
        let frame = Packet::Push(d.entry.to_pb()).encode(0);
        let env = Envelope {
            app: d.user.app,
            uid: d.user.uid,
            seq: d.entry.seq,
            skip_conn: d.skip_conn,
            frame,
            kick_conn: 0,
            kick_code: 0,
        };
        self.publish(node, env).await.map(|()| 0)
    }

    async fn kick(
        &self,
        node: &str,
        user: &UserKey,
        conn_id: u64,
        code: u32,
    ) -> Result<bool, RouteError> {
        if node == self.node {
            return Ok(self.hub.kick_conn(user, conn_id, code));
        }
        let env = Envelope {
            app: user.app.clone(),
            uid: user.uid.clone(),
            kick_conn: conn_id,
            kick_code: code,
            ..Envelope::default()
        };
        self.publish(node, env).await.map(|()| true)
    }

    async fn ping(&self) -> Result<(), RouteError> {
        ping(&self.client).await.map_err(RouteError::Unavailable)
    }
}

/// A round trip to the NATS server: a request to a subject nobody serves,
/// answered by the server itself with "no responders". Unlike
/// `Client::flush`, which only writes the client's buffer to the socket, the
/// answer proves the server has processed everything this client sent
/// before it, subscriptions included.
pub(crate) async fn ping(client: &Client) -> Result<(), String> {
    if client.connection_state() != State::Connected {
        return Err("NATS is not connected".into());
    }
    // A fresh inbox subject: nobody subscribes to it.
    let subject = client.new_inbox();
    let request = async_nats::Request::new()
        .payload(Bytes::new())
        .timeout(Some(PING_TIMEOUT));
    match client.send_request(subject, request).await {
        Err(e) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("NATS ping failed: {e}")),
    }
}
