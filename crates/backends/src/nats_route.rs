//! [`NatsRoute`]: carries deliveries, membership changes and kicks between
//! nodes over NATS.
//!
//! Each node subscribes to `<prefix>.node.<name>` (what is for it alone)
//! and to `<prefix>.groups` (what every node gets). A delivery asks
//! presence once where the user targets' devices are, hands this node's
//! share to the local [`Hub`], and publishes the rest as one protobuf
//! [`Envelope`] per node holding the already encoded `Push` frames (each
//! distinct frame once), so the receiving node hands the same bytes to its
//! connections without decoding the messages. Group entries and membership
//! changes are broadcast once on the groups subject: every node's hub knows
//! which of its connections belong to which group, and the sending node
//! skips its own broadcasts (it applied them already).
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
use switchboard_core::route::push_frames;
use switchboard_core::{
    Delivery, GroupKey, Hub, Presence, Reach, Route, RouteError, Target, UserKey,
};
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

/// What travels on a node's subject (pushes of user entries, or a kick)
/// and on the groups subject (pushes of group entries, or a membership
/// change). Tags 3 and 5 carried a single delivery before batches; they
/// stay unused.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// The kicked user's app.
    #[prost(string, tag = "1")]
    pub app: String,
    /// The kicked user's uid.
    #[prost(string, tag = "2")]
    pub uid: String,
    /// The connection that gets no push (the sender's own), on `skip_node`.
    #[prost(uint64, optional, tag = "4")]
    pub skip_conn: Option<u64>,
    #[prost(uint64, tag = "6")]
    pub kick_conn: u64,
    /// Non-zero for a kick.
    #[prost(uint32, tag = "7")]
    pub kick_code: u32,
    #[prost(message, repeated, tag = "8")]
    pub pushes: Vec<PushItem>,
    /// The distinct encoded `Push` frames the pushes point into.
    #[prost(bytes = "bytes", repeated, tag = "9")]
    pub frames: Vec<Bytes>,
    /// The node that published it (a node skips its own broadcasts).
    #[prost(string, tag = "10")]
    pub origin: String,
    /// The node of `skip_conn`.
    #[prost(string, tag = "11")]
    pub skip_node: String,
    #[prost(message, optional, tag = "12")]
    pub membership: Option<MembershipChange>,
}

/// One push of an envelope: a user's entry, or a group's (`gid` set).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushItem {
    #[prost(string, tag = "1")]
    pub app: String,
    #[prost(string, tag = "2")]
    pub uid: String,
    #[prost(string, tag = "3")]
    pub gid: String,
    #[prost(uint64, tag = "4")]
    pub seq: u64,
    /// Index into the envelope's frames.
    #[prost(uint32, tag = "5")]
    pub frame: u32,
}

/// Users joined or left a group.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MembershipChange {
    #[prost(string, tag = "1")]
    pub app: String,
    #[prost(string, tag = "2")]
    pub gid: String,
    #[prost(string, repeated, tag = "3")]
    pub uids: Vec<String>,
    #[prost(bool, tag = "4")]
    pub joined: bool,
}

/// Builds envelopes, adding each distinct frame once.
#[derive(Default)]
struct EnvelopeBuilder {
    env: Envelope,
    /// The batch frame index of each of the envelope's frames (a batch's
    /// equal entries share one `Bytes`, so equal indexes mean equal frames).
    from: Vec<usize>,
}

impl EnvelopeBuilder {
    fn push(&mut self, target: &Target, seq: u64, frame_index: usize, frames: &[Bytes]) {
        let frame = match self.from.last() {
            Some(&last) if frames[last].as_ptr() == frames[frame_index].as_ptr() => {
                self.from.len() - 1
            }
            _ => {
                self.from.push(frame_index);
                self.env.frames.push(frames[frame_index].clone());
                self.from.len() - 1
            }
        };
        let (app, uid, gid) = match target {
            Target::User(u) => (u.app.clone(), u.uid.clone(), String::new()),
            Target::Group(g) => (g.app.clone(), String::new(), g.gid.clone()),
        };
        self.env.pushes.push(PushItem {
            app,
            uid,
            gid,
            seq,
            frame: frame as u32,
        });
    }
}

/// The route of a clustered node.
pub struct NatsRoute {
    client: Client,
    node: String,
    prefix: String,
    hub: Arc<Hub>,
    presence: Arc<dyn Presence>,
    listener: JoinHandle<()>,
}

impl NatsRoute {
    /// Subscribes this node to its subject and to the groups subject, and
    /// starts handing what arrives to `hub`; `presence` says where users'
    /// devices are.
    pub async fn start(
        client: Client,
        prefix: &str,
        node: &str,
        hub: Arc<Hub>,
        presence: Arc<dyn Presence>,
    ) -> Result<NatsRoute, NatsError> {
        check_subject_prefix(prefix)?;
        check_subject_token("node name", node)?;
        let subject = format!("{prefix}.node.{node}");
        let subscribe = |subject: String| {
            let client = client.clone();
            async move {
                client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|e| NatsError::Connect {
                        url: subject,
                        message: format!("cannot subscribe: {e}"),
                    })
            }
        };
        let own = subscribe(subject.clone()).await?;
        let groups = subscribe(groups_subject(prefix)).await?;
        let listener = {
            let hub = hub.clone();
            let node = node.to_string();
            // One task for both subjects: each subject keeps its publisher's
            // order (a membership change before the group push after it).
            let mut incoming = futures::stream::select(own, groups);
            tokio::spawn(async move {
                while let Some(msg) = incoming.next().await {
                    match Envelope::decode(msg.payload) {
                        Ok(env) => handle(&hub, &node, env),
                        Err(e) => tracing::warn!(error = %e, "undecodable route message dropped"),
                    }
                }
                tracing::warn!(%subject, "route subscriptions ended");
            })
        };
        // When NATS is reachable, return with the subscriptions live on the
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
            presence,
            listener,
        })
    }

    async fn publish(&self, subject: String, env: Envelope) -> Result<(), RouteError> {
        // While disconnected the client would buffer: fail now instead, the
        // device syncs anyway, and the caller is not held up.
        if self.client.connection_state() != State::Connected {
            return Err(RouteError::Unavailable(format!(
                "NATS is not connected (route to {subject})"
            )));
        }
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

    fn node_subject(&self, node: &str) -> String {
        format!("{}.node.{node}", self.prefix)
    }
}

/// The subject every node subscribes to.
fn groups_subject(prefix: &str) -> String {
    format!("{prefix}.groups")
}

impl Drop for NatsRoute {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Applies what arrived on this node's subjects.
fn handle(hub: &Hub, node: &str, env: Envelope) {
    if env.origin == node {
        // Our own broadcast: applied before it was published.
        return;
    }
    if env.kick_code != 0 {
        let user = UserKey::new(env.app, env.uid);
        hub.kick_conn(&user, env.kick_conn, env.kick_code);
        return;
    }
    if let Some(m) = env.membership {
        hub.membership(&GroupKey::new(m.app, m.gid), &m.uids, m.joined);
    }
    let skip = env.skip_conn.filter(|_| env.skip_node == node);
    let (mut stored, mut online) = (0, 0);
    let mut gid: Option<Arc<str>> = None;
    for p in env.pushes {
        let Some(frame) = env.frames.get(p.frame as usize) else {
            tracing::warn!(frame = p.frame, "route push without its frame dropped");
            continue;
        };
        let n = if p.gid.is_empty() {
            hub.push_user(&UserKey::new(p.app, p.uid), p.seq, frame, skip)
        } else {
            // One shared id per run of pushes of the same group.
            let id = match &gid {
                Some(g) if **g == *p.gid => g.clone(),
                _ => Arc::from(p.gid.as_str()),
            };
            gid = Some(id.clone());
            hub.push_group(&GroupKey::new(p.app, p.gid), &id, p.seq, frame, skip)
        };
        if p.seq == 0 {
            online += n;
        } else {
            stored += n;
        }
    }
    hub.count_pushes(0, online);
    hub.count_pushes(1, stored);
}

#[async_trait]
impl Route for NatsRoute {
    fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    async fn deliver(&self, d: &Delivery) -> Result<Vec<Reach>, RouteError> {
        let mut reach = vec![Reach::default(); d.entries.len()];
        let frames = push_frames(&d.entries);
        // Where the user targets' devices are: one presence query per batch.
        let users: Vec<(usize, UserKey)> = d
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, (t, _))| match t {
                Target::User(u) => Some((i, u.clone())),
                Target::Group(_) => None,
            })
            .collect();
        let mut remote: Vec<(String, EnvelopeBuilder, Vec<(usize, usize)>)> = Vec::new();
        if !users.is_empty() {
            let keys: Vec<UserKey> = users.iter().map(|(_, u)| u.clone()).collect();
            let placement = self
                .presence
                .placement(&keys)
                .await
                .map_err(|e| RouteError::Unavailable(e.to_string()))?;
            let mut local = Vec::new();
            for &(u, n, devices) in &placement.entries {
                let i = users[u].0;
                let node = &placement.nodes[n];
                if *node == self.node {
                    local.push(i);
                    continue;
                }
                let k = match remote.iter().position(|(name, _, _)| name == node) {
                    Some(k) => k,
                    None => {
                        remote.push((node.clone(), EnvelopeBuilder::default(), Vec::new()));
                        remote.len() - 1
                    }
                };
                let (_, b, counts) = &mut remote[k];
                let (target, entry) = &d.entries[i];
                b.push(target, entry.seq, i, &frames);
                counts.push((i, devices));
            }
            let skip = d.skip_on(&self.node);
            let (mut stored, mut online) = (0, 0);
            for i in local {
                if let (Target::User(u), entry) = &d.entries[i] {
                    let n = self.hub.push_user(u, entry.seq, &frames[i], skip);
                    reach[i].devices += n;
                    if entry.seq == 0 {
                        online += n;
                    } else {
                        stored += n;
                    }
                }
            }
            self.hub.count_pushes(0, online);
            self.hub.count_pushes(1, stored);
        }
        // One publish per other node holding devices of the batch.
        for (node, b, counts) in remote {
            let mut env = b.env;
            env.origin = self.node.clone();
            if let Some((skip_node, conn)) = d.skip_conn.as_ref().filter(|(n, _)| *n == node) {
                env.skip_node = skip_node.clone();
                env.skip_conn = Some(*conn);
            }
            let sent = self.publish(self.node_subject(&node), env).await;
            for (i, devices) in counts {
                match &sent {
                    Ok(()) => reach[i].devices += devices,
                    Err(e) => reach[i].error = Some(e.clone()),
                }
            }
        }
        // Group entries: this node's subscribers now, every other node's
        // through one broadcast.
        let mut broadcast = EnvelopeBuilder::default();
        let mut in_groups = Vec::new();
        for (i, (target, entry)) in d.entries.iter().enumerate() {
            if let Target::Group(g) = target {
                let gid: Arc<str> = Arc::from(g.gid.as_str());
                let n = self
                    .hub
                    .push_group(g, &gid, entry.seq, &frames[i], d.skip_on(&self.node));
                self.hub.count_pushes(entry.seq, n);
                reach[i].devices += n;
                broadcast.push(target, entry.seq, i, &frames);
                in_groups.push(i);
            }
        }
        if !in_groups.is_empty() {
            let mut env = broadcast.env;
            env.origin = self.node.clone();
            if let Some((node, conn)) = &d.skip_conn {
                env.skip_node = node.clone();
                env.skip_conn = Some(*conn);
            }
            if let Err(e) = self.publish(groups_subject(&self.prefix), env).await {
                for i in in_groups {
                    reach[i].error = Some(e.clone());
                }
            }
        }
        Ok(reach)
    }

    async fn membership(
        &self,
        group: &GroupKey,
        uids: &[String],
        joined: bool,
    ) -> Result<(), RouteError> {
        self.hub.membership(group, uids, joined);
        let env = Envelope {
            origin: self.node.clone(),
            membership: Some(MembershipChange {
                app: group.app.clone(),
                gid: group.gid.clone(),
                uids: uids.to_vec(),
                joined,
            }),
            ..Envelope::default()
        };
        self.publish(groups_subject(&self.prefix), env).await
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
            origin: self.node.clone(),
            ..Envelope::default()
        };
        self.publish(self.node_subject(node), env)
            .await
            .map(|()| true)
    }

    async fn ping(&self) -> Result<(), RouteError> {
        ping(&self.client).await.map_err(RouteError::Unavailable)
    }
}

/// [`ping`] for tests: returns once the server has processed everything
/// `client` sent before (subscriptions included); panics when it cannot.
#[doc(hidden)]
pub async fn ping_for_tests(client: &Client) {
    ping(client).await.expect("NATS ping");
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
