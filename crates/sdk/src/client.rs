//! The public handle ([`Client`]) and the event stream ([`Events`]).
//!
//! `Client` is a cheap clone over a bounded sender to the one task that owns
//! the socket (see `task.rs`); every request carries a oneshot for its answer
//! and waits for it at most [`ClientConfig::request_timeout`], reconnects
//! included.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use switchboard_proto::{Packet, pb};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout_at};
use tracing::Instrument;

use crate::task::{Actor, Command, establish};
use crate::transport::Endpoint;
use crate::{ClientConfig, SdkError};

/// A user: app (account domain) and uid.
pub type User = pb::User;
/// A message as the receiver sees it.
pub type Message = pb::Message;
/// The server's answer to a `c2s` report.
pub type C2sAck = pb::C2sAck;
/// What a read-receipt entry says ([`Message::read`]).
pub type ReadReceipt = pb::ReadReceipt;
/// One conversation of the user's list.
pub type Conversation = pb::Conversation;
/// A page of the user's conversation list.
pub type ConversationList = pb::ConversationList;
/// The server's answer to [`Client::mark_read`]: the receipt is stored.
pub type MarkReadAck = pb::MarkReadAck;
/// A stored recall or edit ([`Client::recall`], [`Client::edit`]).
pub type AmendAck = pb::AmendAck;

/// What a transient message reached ([`Client::send_transient`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransientReceipt {
    /// The server's id of the message (it is stored nowhere).
    pub msg_id: u64,
    /// Devices it was handed to, online at the moment it was sent.
    pub devices_reached: u32,
}

/// The server's acknowledgement of a sent message: it is stored durably.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    /// The id the message was sent with (resending it is idempotent).
    pub client_msg_id: String,
    /// The server's id of the message.
    pub msg_id: u64,
    /// The entry's sequence on the sender's own timeline (for
    /// [`Client::send_group`]: on the group's timeline).
    pub seq: u64,
    /// When the server stored it, milliseconds since the Unix epoch.
    pub server_time_ms: i64,
    /// True when the server had already stored this `client_msg_id`.
    pub duplicate: bool,
}

impl From<pb::C2cAck> for SendReceipt {
    fn from(a: pb::C2cAck) -> Self {
        SendReceipt {
            client_msg_id: a.client_msg_id,
            msg_id: a.msg_id,
            seq: a.seq,
            server_time_ms: a.server_time_ms,
            duplicate: a.duplicate,
        }
    }
}

/// What the connection task reports to the application, in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// Logged in (first connect and every reconnect).
    Connected {
        user: User,
        /// The highest sequence on the user's timeline at login.
        timeline_head: u64,
    },
    /// One timeline entry: every entry exactly once, in sequence order, with
    /// no gaps (this device's own sent messages are skipped; their sequence
    /// is in [`SendReceipt::seq`]). Persist `seq` to pass it as
    /// [`ClientConfig::since`] next time.
    Message { seq: u64, message: Message },
    /// One entry of a group's timeline: every entry of each group exactly
    /// once, in the group's order, with no gaps (this device's own posts
    /// are skipped; their sequence is in [`SendReceipt::seq`]). Persist
    /// `seq` per group to pass it in [`ClientConfig::group_since`] next time.
    /// A group first seen while online (joined now) starts where this
    /// member's view of it starts.
    GroupMessage {
        group: String,
        seq: u64,
        message: Message,
    },
    /// The server refused this user the group's timeline: `code` is
    /// `NOT_GROUP_MEMBER` (removed) or `GROUP_NOT_FOUND` (deleted). The SDK
    /// stops following it and forgets its position; entries of it received
    /// before came first. A later push of the group (added again) starts it
    /// over.
    GroupLeft { group: String, code: u32 },
    /// An online-only message (not stored, no sequence).
    Online { message: Message },
    /// The connection was lost; the client reconnects with backoff.
    Disconnected { reason: SdkError },
    /// The server kicked this connection. Terminal (followed by `Closed`) for
    /// `KICK_REPLACED`, `KICK_TOO_MANY_DEVICES`, `KICK_ADMIN`,
    /// `KICK_TOKEN_REVOKED` and for a
    /// login refused on reconnect (token codes, with the login error's code);
    /// otherwise followed by `Disconnected` and a reconnect.
    Kicked { code: u32, reason: String },
    /// The client stopped (close, logout, terminal kick). The last event.
    Closed,
}

/// State the task shares with every handle, read without a round trip.
#[derive(Debug)]
pub(crate) struct Shared {
    // std Mutex: held for a clone, never across an await.
    pub(crate) user: Mutex<User>,
    pub(crate) last_seq: AtomicU64,
    /// The delivered position of every group followed. std Mutex: held for
    /// an insert or a lookup, never across an await.
    pub(crate) groups: Mutex<HashMap<String, u64>>,
    pub(crate) connected: AtomicBool,
}

impl Shared {
    pub(crate) fn set_user(&self, user: User) {
        *self.user.lock().unwrap_or_else(|e| e.into_inner()) = user;
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_group(&self, group: &str, seq: u64) {
        let mut groups = self.groups();
        match groups.get_mut(group) {
            Some(at) => *at = seq,
            None => {
                groups.insert(group.to_owned(), seq);
            }
        }
    }

    pub(crate) fn forget_group(&self, group: &str) {
        self.groups().remove(group);
    }
}

/// A handle to one connection. Clone it freely: every clone talks to the
/// same task. The task stops on [`Client::close`], [`Client::logout`], a
/// terminal kick, or when every handle and the [`Events`] are dropped.
#[derive(Debug, Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    request_timeout: Duration,
}

impl Client {
    /// Connects and logs in. A first login that fails is returned as an
    /// error (e.g. `SdkError::Server { code: TOKEN_INVALID, .. }`); later
    /// connection losses are retried inside the task.
    pub async fn connect(config: ClientConfig) -> Result<(Client, Events), SdkError> {
        let endpoint = Endpoint::from_config(&config)?;
        let config = Arc::new(config);
        let (conn, ack) = establish(endpoint.clone(), config.clone(), config.token.clone()).await?;
        let user = ack.user.clone().unwrap_or_default();
        let since = config.since.unwrap_or(ack.cursor);
        let shared = Arc::new(Shared {
            user: Mutex::new(user.clone()),
            last_seq: AtomicU64::new(since),
            groups: Mutex::new(
                config
                    .group_since
                    .iter()
                    .filter(|(g, _)| !g.is_empty())
                    .map(|(g, &seq)| (g.clone(), seq))
                    .collect(),
            ),
            connected: AtomicBool::new(true),
        });
        let (tx, cmd_rx) = mpsc::channel(config.outbound_capacity.max(1));
        let (events_tx, events_rx) = mpsc::channel(config.event_capacity.max(1));
        let span = tracing::info_span!(
            "switchboard_sdk",
            device = %config.device_id,
            user = %format_args!("{}/{}", user.app, user.uid),
        );
        let client = Client {
            tx,
            shared: shared.clone(),
            request_timeout: config.request_timeout,
        };
        let actor = Actor::new(config, endpoint, shared, cmd_rx, events_tx, since);
        tokio::spawn(actor.run(conn, ack).instrument(span));
        Ok((client, Events { rx: events_rx }))
    }

    /// Sends a message to `to` with a fresh `client_msg_id`, and waits until
    /// the server stored it. Survives reconnects: the request is resent with
    /// the same id until acknowledged or the request timeout expires.
    pub async fn send(
        &self,
        to: User,
        kind: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Result<SendReceipt, SdkError> {
        self.send_with_id(new_client_msg_id(), to, kind, body).await
    }

    /// Like [`Client::send`] with the caller's `client_msg_id` (for example
    /// one persisted before a crash, to resend idempotently).
    pub async fn send_with_id(
        &self,
        client_msg_id: impl Into<String>,
        to: User,
        kind: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Result<SendReceipt, SdkError> {
        let packet = pb::C2c {
            group: Default::default(),
            client_msg_id: client_msg_id.into(),
            to: Some(to),
            r#type: kind.into(),
            body: body.into(),
            transient: false,
        };
        self.request(|reply| Command::C2c { packet, reply })
            .await
            .map(SendReceipt::from)
    }

    /// Posts a message to `group` (of this user's app) with a fresh
    /// `client_msg_id`, and waits until the server stored it on the group's
    /// timeline ([`SendReceipt::seq`] is on that timeline). Resent with the
    /// same id across reconnects, like [`Client::send`]. The server refuses
    /// with `GROUP_NOT_FOUND`, `NOT_GROUP_MEMBER` or `GROUP_ADMINS_ONLY`
    /// ([`SdkError::Server`]; not retried). Every member device gets it,
    /// this user's other devices too (as [`Event::GroupMessage`]), but not
    /// this one.
    pub async fn send_group(
        &self,
        group: impl Into<String>,
        kind: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Result<SendReceipt, SdkError> {
        self.send_group_with_id(new_client_msg_id(), group, kind, body)
            .await
    }

    /// Like [`Client::send_group`] with the caller's `client_msg_id` (one
    /// persisted before a crash, to resend idempotently: the server answers
    /// the first result again, with `duplicate` set).
    pub async fn send_group_with_id(
        &self,
        client_msg_id: impl Into<String>,
        group: impl Into<String>,
        kind: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Result<SendReceipt, SdkError> {
        let group = group.into();
        if group.is_empty() {
            return Err(SdkError::Server {
                code: switchboard_proto::code::INVALID_ARGUMENT,
                message: "empty group id".into(),
            });
        }
        let packet = pb::C2c {
            group,
            client_msg_id: client_msg_id.into(),
            to: None,
            r#type: kind.into(),
            body: body.into(),
            transient: false,
        };
        self.request(|reply| Command::C2c { packet, reply })
            .await
            .map(SendReceipt::from)
    }

    /// Sends a transient message to `to`: pushed to the receiver's devices
    /// online now (they get [`Event::Online`]) and nothing else. Not
    /// stored, never resent by the server, absent from sync: for typing
    /// indicators, live positions. Transient messages have their own rate
    /// budget on the server (`RATE_LIMITED` past it).
    ///
    /// ```no_run
    /// # async fn typing(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::SdkError> {
    /// use switchboard_sdk::User;
    /// let peer = User { app: String::new(), uid: "merchant-7".into() };
    /// let reached = client.send_transient(peer, "typing", "{}").await?;
    /// println!("typing shown on {} devices", reached.devices_reached);
    /// # Ok(()) }
    /// ```
    pub async fn send_transient(
        &self,
        to: User,
        kind: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Result<TransientReceipt, SdkError> {
        self.transient(Some(to), String::new(), kind.into(), body.into())
            .await
    }

    /// [`Client::send_transient`] to every member device of `group` online
    /// now (this connection excepted; this user's other devices get it too).
    pub async fn send_group_transient(
        &self,
        group: impl Into<String>,
        kind: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Result<TransientReceipt, SdkError> {
        self.transient(None, group.into(), kind.into(), body.into())
            .await
    }

    async fn transient(
        &self,
        to: Option<User>,
        group: String,
        kind: String,
        body: Bytes,
    ) -> Result<TransientReceipt, SdkError> {
        let packet = pb::C2c {
            client_msg_id: new_client_msg_id(),
            to,
            r#type: kind,
            body,
            group,
            transient: true,
        };
        let ack = self.request(|reply| Command::C2c { packet, reply }).await?;
        Ok(TransientReceipt {
            msg_id: ack.msg_id,
            devices_reached: ack.devices_reached,
        })
    }

    /// Marks the 1:1 conversation with `peer` read up to entry `seq` of this
    /// user's timeline (the `seq` of an [`Event::Message`] of that
    /// conversation, or of a [`SendReceipt`]). The server stores a read
    /// receipt: this user's other devices get it (their unread count for
    /// the conversation drops) and so do the peer's (the "read" mark: an
    /// [`Event::Message`] whose `message.read` is set, `from` this user).
    ///
    /// ```no_run
    /// # async fn read(client: switchboard_sdk::Client, mut events: switchboard_sdk::Events) -> Result<(), switchboard_sdk::SdkError> {
    /// use switchboard_sdk::Event;
    /// while let Some(event) = events.recv().await {
    ///     if let Event::Message { seq, message } = event {
    ///         if message.read.is_none() {
    ///             // Shown on screen: mark it read.
    ///             client.mark_read(message.from.clone().unwrap_or_default(), seq).await?;
    ///         }
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn mark_read(&self, peer: User, seq: u64) -> Result<MarkReadAck, SdkError> {
        self.mark(Some(peer), String::new(), seq).await
    }

    /// Marks `group` read up to `seq` of the group's timeline. Only this
    /// user's other devices are told (a group's read state is not pushed
    /// to every member).
    pub async fn mark_group_read(
        &self,
        group: impl Into<String>,
        seq: u64,
    ) -> Result<MarkReadAck, SdkError> {
        self.mark(None, group.into(), seq).await
    }

    async fn mark(
        &self,
        peer: Option<User>,
        group: String,
        seq: u64,
    ) -> Result<MarkReadAck, SdkError> {
        let packet = Packet::MarkRead(pb::MarkRead { peer, group, seq });
        match self.other(packet).await? {
            Packet::MarkReadAck(ack) => Ok(ack),
            other => Err(unexpected(&other)),
        }
    }

    /// Recalls a message this user sent (to a user or a group), within
    /// the app's recall window (2 minutes by default). Its body is removed
    /// from the server; every device of every party gets an entry whose
    /// [`Message::amended`] is the message as it is now (`recalled` set),
    /// by push or in sync, in timeline order. This device does not get that
    /// entry pushed: the answer's `seq` is its place on this user's
    /// timeline (the group's, for a group message).
    ///
    /// Errors ([`SdkError::Server`] codes): `MESSAGE_NOT_FOUND`,
    /// `NOT_MESSAGE_SENDER`, `AMEND_WINDOW_CLOSED`, `MESSAGE_RECALLED`.
    ///
    /// ```no_run
    /// # async fn undo(client: switchboard_sdk::Client, mut events: switchboard_sdk::Events) -> Result<(), switchboard_sdk::SdkError> {
    /// use switchboard_sdk::{Event, User};
    /// let sent = client.send(User { app: String::new(), uid: "bob".into() }, "text", "oops").await?;
    /// client.recall(sent.msg_id).await?;
    /// // On bob's devices (and alice's others):
    /// while let Some(event) = events.recv().await {
    ///     if let Event::Message { message, .. } = event {
    ///         if let Some(now) = message.amended {
    ///             // Replace the message with id `now.msg_id` by `now`.
    ///             assert!(now.recalled);
    ///         }
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recall(&self, msg_id: u64) -> Result<AmendAck, SdkError> {
        self.amend(msg_id, true, Bytes::new()).await
    }

    /// Edits a message this user sent: its body becomes `body` (its type
    /// stays), within the app's edit window (24 hours by default). Every
    /// party learns it as for [`Client::recall`] (`edited_at_ms` set). A
    /// recalled message cannot be edited (`MESSAGE_RECALLED`).
    pub async fn edit(&self, msg_id: u64, body: impl Into<Bytes>) -> Result<AmendAck, SdkError> {
        self.amend(msg_id, false, body.into()).await
    }

    async fn amend(&self, msg_id: u64, recall: bool, body: Bytes) -> Result<AmendAck, SdkError> {
        let packet = Packet::Amend(pb::Amend {
            client_msg_id: new_client_msg_id(),
            msg_id,
            recall,
            body,
        });
        match self.other(packet).await? {
            Packet::AmendAck(ack) => Ok(ack),
            other => Err(unexpected(&other)),
        }
    }

    /// A page of this user's conversations (1:1 and groups), most recent
    /// first, each with its last entry and unread count. `after` is the
    /// previous page's `next` (empty for the first page); `limit` 0 means
    /// the server's default (50).
    ///
    /// ```no_run
    /// # async fn list(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::SdkError> {
    /// let page = client.conversations("", 20).await?;
    /// for c in &page.conversations {
    ///     let who = c.peer.as_ref().map_or(c.group.clone(), |p| p.uid.clone());
    ///     println!("{who}: {} unread", c.unread);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn conversations(
        &self,
        after: impl Into<String>,
        limit: u32,
    ) -> Result<ConversationList, SdkError> {
        let packet = Packet::ListConversations(pb::ListConversations {
            after: after.into(),
            limit,
        });
        match self.other(packet).await? {
            Packet::ConversationList(list) => Ok(list),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends a report to the business servers (through the bus) with a fresh
    /// `client_msg_id`, and waits until it is durable.
    pub async fn c2s(
        &self,
        kind: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Result<C2sAck, SdkError> {
        self.c2s_with_id(new_client_msg_id(), kind, body).await
    }

    /// Like [`Client::c2s`] with the caller's `client_msg_id`.
    pub async fn c2s_with_id(
        &self,
        client_msg_id: impl Into<String>,
        kind: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Result<C2sAck, SdkError> {
        let packet = pb::C2s {
            client_msg_id: client_msg_id.into(),
            r#type: kind.into(),
            body: body.into(),
        };
        self.request(|reply| Command::C2s { packet, reply }).await
    }

    /// Syncs now (the user's timeline and every group followed) and returns
    /// once every entry up to each timeline's head was handed to [`Events`]
    /// (or queued for it).
    pub async fn sync_now(&self) -> Result<(), SdkError> {
        self.request(|reply| Command::Sync { reply }).await
    }

    /// Logs out (the server closes the connection) and stops the client.
    pub async fn logout(&self) -> Result<(), SdkError> {
        self.request(|reply| Command::Logout { reply }).await
    }

    /// Closes the connection and stops the client. Events already received
    /// are still delivered, then [`Event::Closed`].
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Close { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The logged-in user.
    pub fn user(&self) -> User {
        self.shared
            .user
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The highest timeline sequence handed to [`Events`] (or seen as this
    /// device's own message), in order with no gaps.
    pub fn last_seq(&self) -> u64 {
        self.shared.last_seq.load(Ordering::Acquire)
    }

    /// The highest sequence of `group` handed to [`Events`] (or seen as this
    /// device's own post), in order with no gaps; `None` for a group the
    /// client does not follow (never seen, or left).
    pub fn group_position(&self, group: &str) -> Option<u64> {
        self.shared.groups().get(group).copied()
    }

    /// [`Client::group_position`] of every group followed: what to persist
    /// and pass as [`ClientConfig::group_since`] next time.
    pub fn group_positions(&self) -> HashMap<String, u64> {
        self.shared.groups().clone()
    }

    /// Whether the task is logged in right now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, SdkError>>) -> Command,
    ) -> Result<T, SdkError> {
        let deadline = Instant::now() + self.request_timeout;
        let (reply, rx) = oneshot::channel();
        match timeout_at(deadline, self.tx.send(make(reply))).await {
            Err(_) => return Err(SdkError::Timeout),
            Ok(Err(_)) => return Err(SdkError::Closed),
            Ok(Ok(())) => {}
        }
        match timeout_at(deadline, rx).await {
            Err(_) => Err(SdkError::Timeout),
            Ok(Err(_)) => Err(SdkError::Closed),
            Ok(Ok(result)) => result,
        }
    }
}

impl Client {
    /// A request answered by one packet (mark_read, list_conversations).
    async fn other(&self, packet: Packet) -> Result<Packet, SdkError> {
        self.request(|reply| Command::Other {
            packet: Box::new(packet),
            reply,
        })
        .await
    }
}

fn unexpected(p: &Packet) -> SdkError {
    SdkError::Protocol(format!("unexpected answer {}", p.command().json_name()))
}

/// A fresh, practically unique message id: 128 random bits in hex.
pub fn new_client_msg_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The stream of [`Event`]s of one client, in order. Also a
/// [`futures::Stream`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` after [`Event::Closed`] once the task ended.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl futures::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
