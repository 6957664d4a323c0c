//! One connection's task: login, then a `select!` over the next request, the
//! answers of requests in flight, the outbound queue, the kill and shutdown
//! signals, and one timer that serves the keepalive deadline and the
//! retransmit of the oldest unacked push.
//!
//! Requests are pipelined (`Pipeline`): c2c, c2s and sync of one connection
//! run concurrently, at most `max_in_flight` at a time, and are answered in
//! request order. A c2c's durability wait (one group commit) no longer
//! bounds a connection to one message per commit.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use switchboard_core::hub::{Closed, OutboundRx, outbound_queue};
use switchboard_core::logic::{C2cRequest, LoginState};
use switchboard_core::logic_amend::{AmendAction, AmendRequest, Amender};
use switchboard_core::logic_group::GroupPost;
use switchboard_core::{
    C2cOrder, ConnHandle, LogicError, Outbound, ReadTarget, TransientRequest, UserKey,
};
use switchboard_proto::limits::{MAX_ID_LEN, MAX_PLATFORM_LEN};
use switchboard_proto::{Compression, Packet, code, pb};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::{Instant, sleep_until};
use tracing::{Instrument, debug, info};

use crate::Gate;
use crate::rate::TokenBucket;
use crate::transport::{Incoming, Transport, TransportError};

/// How a session ended, for logs.
#[derive(Debug)]
enum End {
    PeerClosed,
    Kicked(u32),
    Fatal(u32),
    Logout,
    Io(String),
}

/// What woke a logged-in connection. Small on purpose: it sits in the
/// task's future beside the wait, so a frame read (a `Packet` is ~200 B)
/// travels boxed and an answer already encoded.
enum Event {
    Out(Result<Outbound, Closed>),
    Answer(Bytes),
    Read(Box<Result<Option<Incoming>, TransportError>>),
    Timer,
}

/// A sent push waiting for its ack: its timeline (`None`: the user's own,
/// else the group's id), its sequence there, and its frame for a resend.
type UnackedPush = (Option<Arc<str>>, u64, Bytes);

/// Pushes sent and waiting for their ack, oldest first.
struct Unacked {
    frames: VecDeque<UnackedPush>,
    /// When the oldest unacked push is resent (one timer per connection).
    deadline: Option<Instant>,
    resends: u32,
}

/// Serves one accepted connection until it ends. `permit` is the
/// connection's admission slot, released when this returns; the login must
/// be done by `login_deadline` (the login deadline, counted from accept).
///
/// Not an `async fn`: the arguments are captured once by the `async move`
/// block and used in place. (An `async fn` moves a `mut` argument from its
/// capture into a local, and both stay in the future: the transport, or a
/// `mut self` session, would be held twice by every connection's task.)
pub fn serve<T: Transport>(
    gate: Arc<Gate>,
    transport: T,
    conn_id: u64,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    login_deadline: Instant,
) -> impl Future<Output = ()> + Send {
    let span = tracing::info_span!("conn", conn_id, %peer, user = tracing::field::Empty);
    let mut transport = transport;
    async move {
        let _open = switchboard_core::stats::OpenConnection::new(T::KIND);
        // Login, request handling, closing and every handler are boxed
        // where they are awaited: an async fn is as large as its largest
        // state, and inline these sized every connection's task for its
        // whole life (7.6 KB at first), though an idle connection is never
        // in them. `future_sizes` in lib.rs keeps an eye on it.
        let end = match Box::pin(login(&gate, &mut transport, conn_id, login_deadline)).await {
            Ok(Some(session)) => {
                switchboard_core::stats::record_login();
                session.run(&mut transport).await
            }
            Ok(None) => End::PeerClosed,
            Err(end) => {
                if let End::Fatal(code) = end {
                    switchboard_core::stats::record_login_failure(code);
                }
                end
            }
        };
        let close_code = match end {
            End::Fatal(code) | End::Kicked(code) => Some(code),
            _ => None,
        };
        match end {
            End::Fatal(code) => info!(
                code = code::name(code),
                "connection closed after a fatal error"
            ),
            End::Kicked(code) => debug!(code = code::name(code), "connection closed by the server"),
            End::Io(e) => debug!(error = %e, "connection closed on an i/o error"),
            End::PeerClosed | End::Logout => debug!(?end, "connection closed"),
        }
        let _ = Box::pin(tokio::time::timeout(
            FAREWELL_TIMEOUT,
            transport.close(close_code),
        ))
        .await;
        drop(permit);
    }
    .instrument(span)
}

/// Sends one packet; errors end the session anyway, so they are only logged.
async fn send<T: Transport>(t: &mut T, seq: u32, p: Packet) -> Result<(), End> {
    if let Packet::Error(e) = &p {
        switchboard_core::stats::record_error_sent(e.code);
    }
    t.send(&[p.encode(seq)])
        .await
        .map_err(|e| End::Io(e.to_string()))
}

async fn fatal<T: Transport>(t: &mut T, seq: u32, code: u32, message: String) -> End {
    let _ = tokio::time::timeout(
        FAREWELL_TIMEOUT,
        send(t, seq, Packet::error(code, message, true)),
    )
    .await;
    End::Fatal(code)
}

async fn transport_error<T: Transport>(t: &mut T, e: TransportError) -> End {
    match e {
        TransportError::Io(e) => End::Io(e.to_string()),
        TransportError::Proto(e) => fatal(t, 0, e.code(), e.to_string()).await,
    }
}

/// The login phase: only Login and Ping are served, within the login deadline.
async fn login<T: Transport>(
    gate: &Arc<Gate>,
    t: &mut T,
    conn_id: u64,
    deadline: Instant,
) -> Result<Option<Box<Session>>, End> {
    loop {
        let incoming = tokio::select! {
            _ = gate.shutdown.cancelled() => return Err(End::Kicked(code::KICK_SHUTDOWN)),
            _ = sleep_until(deadline) => {
                return Err(fatal(t, 0, code::LOGIN_TIMEOUT, "no login within the login deadline".into()).await);
            }
            r = t.recv() => r,
        };
        let (seq, packet) = match incoming {
            Ok(None) => return Ok(None),
            Err(e) => return Err(transport_error(t, e).await),
            // Every error answering a login is fatal (protocol.md §6).
            Ok(Some(Incoming::BadLogin(seq, code, msg))) => {
                return Err(fatal(t, seq, code, msg).await);
            }
            Ok(Some(Incoming::Bad(seq, code, msg))) => {
                send(t, seq, Packet::error(code, msg, false)).await?;
                continue;
            }
            Ok(Some(Incoming::Packet(seq, p))) => (seq, p),
        };
        match packet {
            Packet::Ping(_) => send(t, seq, pong()).await?,
            Packet::Login(login) => {
                return accept_login(gate, t, conn_id, seq, login).await.map(Some);
            }
            other => {
                let msg = format!(
                    "{} before login; only login and ping are allowed",
                    other.command().json_name()
                );
                send(t, seq, Packet::error(code::NOT_LOGGED_IN, msg, false)).await?;
            }
        }
    }
}

fn pong() -> Packet {
    Packet::Pong(pb::Pong {
        server_time_ms: switchboard_core::now_ms() as u64,
    })
}

async fn accept_login<T: Transport>(
    gate: &Arc<Gate>,
    t: &mut T,
    conn_id: u64,
    seq: u32,
    login: pb::Login,
) -> Result<Box<Session>, End> {
    let user = match gate.logic.authenticate(&login.token).await {
        Ok(u) => u,
        Err(e) => return Err(fatal(t, seq, e.code(), e.to_string()).await),
    };
    if login.platform.len() > MAX_PLATFORM_LEN || login.device_id.len() > MAX_ID_LEN {
        return Err(fatal(
            t,
            seq,
            code::INVALID_ARGUMENT,
            format!("platform is at most {MAX_PLATFORM_LEN} bytes, device_id at most {MAX_ID_LEN}"),
        )
        .await);
    }
    let device_id = if login.device_id.is_empty() {
        format!("conn-{conn_id}")
    } else {
        login.device_id
    };
    let platform = if login.platform.is_empty() {
        "unknown".to_string()
    } else {
        login.platform
    };
    tracing::Span::current().record("user", tracing::field::display(&user));

    let (tx, rx) = outbound_queue(gate.config.outbound_queue);
    let handle = Arc::new(ConnHandle::new(
        conn_id,
        user.clone(),
        device_id,
        platform,
        tx,
    ));
    let device = handle.device_session(&gate.logic.config().node);
    // Registered before presence says "online", so no push routed here is missed.
    gate.hub.register(handle.clone());
    // A shutdown kicks the connections in the hub; one registered just
    // after that sweep sees the flag here (the sweep runs after it is set).
    if gate.shutdown.is_cancelled() {
        handle.kick(code::KICK_SHUTDOWN);
    }
    let state = match gate.logic.login(&device).await {
        Ok(s) => s,
        Err(e) => {
            gate.hub.unregister(&user, conn_id);
            gate.logic.logout(&device).await;
            return Err(fatal(t, seq, e.code(), e.to_string()).await);
        }
    };
    // The user's groups: the device learns which have entries past its
    // cursors in this one answer, and syncs only those.
    let groups = match gate
        .logic
        .login_groups(conn_id, &user, &handle.device_id)
        .await
    {
        Ok(groups) => groups,
        Err(e) => {
            gate.hub.unregister(&user, conn_id);
            gate.logic.logout(&device).await;
            return Err(fatal(t, seq, e.code(), e.to_string()).await);
        }
    };
    let compression = if t.can_compress() {
        Compression::negotiate(&login.compression, gate.config.compression_threshold)
    } else {
        Compression::None
    };
    let LoginState {
        timeline_head,
        cursor,
    } = state;
    let ack = pb::LoginAck {
        user: Some(user.to_pb()),
        timeline_head,
        cursor,
        compression: compression.name().into(),
        keepalive_secs: gate.config.keepalive.as_secs() as u32,
        max_frame_bytes: gate.config.max_frame_bytes as u32,
        server_time_ms: switchboard_core::now_ms() as u64,
        node: gate.logic.config().node.clone(),
        groups: groups
            .iter()
            .filter(|g| g.has_unread())
            .map(|g| pb::GroupState {
                group: g.gid.clone(),
                head: g.head,
                cursor: g.read_from(),
            })
            .collect(),
    };
    let mut session = Box::new(Session {
        gate: gate.clone(),
        handle,
        rx,
        unacked: Unacked {
            frames: VecDeque::new(),
            deadline: None,
            resends: 0,
        },
        last_seen: Instant::now(),
        rate: TokenBucket::new(gate.config.rate_per_sec, gate.config.rate_burst),
        transient_rate: TokenBucket::new(
            gate.config.transient_rate_per_sec,
            gate.config.transient_rate_burst,
        ),
        pipeline: Pipeline::default(),
    });
    if let Err(end) = send(t, seq, Packet::LoginAck(ack)).await {
        session.cleanup().await;
        return Err(end);
    }
    t.set_compression(compression);
    info!(device = %session.handle.device_id, platform = %session.handle.platform, "logged in");
    Ok(session)
}

/// A logged-in connection.
struct Session {
    gate: Arc<Gate>,
    /// Who is connected (shared with the hub; the session keeps no copy of
    /// the user and device strings).
    handle: Arc<ConnHandle>,
    /// Pushes, and the kick (which comes first), from the hub.
    rx: OutboundRx,
    unacked: Unacked,
    last_seen: Instant,
    rate: TokenBucket,
    /// Transient messages' own budget.
    transient_rate: TokenBucket,
    /// Requests read and not answered yet.
    pipeline: Pipeline,
}

/// The answer of one request: its header seq and the reply packet.
type Answer = Pin<Box<dyn Future<Output = (u32, Packet)> + Send>>;

/// Requests of one connection in flight, answered in request order.
///
/// Order is explicit, not left to how futures happen to be polled: the
/// c2c of the connection keep the sender's order through core's
/// [`C2cOrder`] (the rule is the domain's, see `Logic::c2c_in_order`), and
/// c2s and transient messages are each chained among themselves here (a
/// courier's live positions must not overtake one another). `FuturesOrdered` runs them all
/// concurrently and yields answers in the order they were pushed, which is
/// request order.
#[derive(Default)]
struct Pipeline {
    /// Created with the first request and dropped once every answer is out:
    /// an idle connection holds no allocation for it (`FuturesOrdered::new`
    /// allocates).
    answers: Option<FuturesOrdered<Answer>>,
    /// This connection's c2c order (one sender).
    c2c: C2cOrder,
    /// Resolves once the previous c2s is durable on the bus (or failed).
    c2s_done: Option<oneshot::Receiver<()>>,
    /// Resolves once the previous transient message was pushed (or failed).
    transient_done: Option<oneshot::Receiver<()>>,
}

/// Waits for the previous link of a chain; a dropped sender (the previous
/// request failed or was dropped) releases the wait too.
async fn after(prev: Option<oneshot::Receiver<()>>) {
    if let Some(rx) = prev {
        let _ = rx.await;
    }
}

impl Pipeline {
    fn len(&self) -> usize {
        self.answers.as_ref().map_or(0, |a| a.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, answer: Answer) {
        self.answers
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(answer);
    }

    /// The next answer in request order (`None` when nothing is in flight).
    async fn next(&mut self) -> Option<(u32, Packet)> {
        match &mut self.answers {
            Some(a) => a.next().await,
            None => None,
        }
    }

    /// Frees the queue and the chain links once nothing is in flight (every
    /// request finished, so no link is still awaited).
    fn release_if_idle(&mut self) {
        if self.answers.is_some() && self.is_empty() {
            *self = Pipeline::default();
        }
    }

    /// An answer that is known now; it still waits for the ones before it.
    fn ready(&mut self, seq: u32, reply: Packet) {
        if let Packet::Error(e) = &reply {
            switchboard_core::stats::record_error_sent(e.code);
        }
        self.push(Box::pin(std::future::ready((seq, reply))));
    }

    fn c2c(&mut self, gate: &Arc<Gate>, from: UserKey, conn_id: u64, seq: u32, req: pb::C2c) {
        if !req.group.is_empty() {
            return self.group_post(gate, from, conn_id, seq, req);
        }
        let client_msg_id = req.client_msg_id.clone();
        let to = req
            .to
            .map(|u| UserKey::from_pb(&u))
            .unwrap_or_else(|| UserKey::new("", ""));
        let request = C2cRequest {
            client_msg_id: req.client_msg_id,
            to,
            kind: req.r#type,
            body: req.body,
        };
        let sent = gate
            .logic
            .c2c_in_order(&mut self.c2c, from, Some(conn_id), request);
        self.push(Box::pin(async move {
            let reply = match sent.await {
                Ok(r) => Packet::C2cAck(pb::C2cAck {
                    client_msg_id,
                    msg_id: r.message.id,
                    seq: r.sender_seq,
                    server_time_ms: r.message.server_time_ms,
                    duplicate: r.duplicate,
                    devices_reached: 0,
                }),
                Err(e) => error_packet(e),
            };
            (seq, reply)
        }));
    }

    /// A message to a group, in this connection's order with its other
    /// messages, answered like a c2c.
    fn group_post(
        &mut self,
        gate: &Arc<Gate>,
        from: UserKey,
        conn_id: u64,
        seq: u32,
        req: pb::C2c,
    ) {
        if names_group_and_receiver(&req) {
            return self.ready(seq, group_and_receiver());
        }
        let client_msg_id = req.client_msg_id.clone();
        let post = GroupPost {
            client_msg_id: req.client_msg_id,
            gid: req.group,
            kind: req.r#type,
            body: req.body,
        };
        let sent = gate
            .logic
            .group_post_in_order(&mut self.c2c, from, Some(conn_id), post);
        self.push(Box::pin(async move {
            let reply = match sent.await {
                Ok(r) => Packet::C2cAck(pb::C2cAck {
                    client_msg_id,
                    msg_id: r.message.id,
                    seq: r.seq,
                    server_time_ms: r.message.server_time_ms,
                    duplicate: r.duplicate,
                    devices_reached: 0,
                }),
                Err(e) => error_packet(e),
            };
            (seq, reply)
        }));
    }

    fn c2s(&mut self, gate: Arc<Gate>, from: UserKey, seq: u32, req: pb::C2s) {
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let prev = self.c2s_done.replace(done_rx);
        self.push(Box::pin(async move {
            after(prev).await;
            let r = gate
                .logic
                .c2s(&from, &req.client_msg_id, req.r#type, req.body)
                .await;
            drop(done_tx);
            let reply = match r {
                Ok(r) => Packet::C2sAck(pb::C2sAck {
                    client_msg_id: req.client_msg_id,
                    msg_id: r.id,
                    duplicate: r.duplicate,
                }),
                Err(e) => error_packet(e),
            };
            (seq, reply)
        }));
    }

    /// A transient message: pushed to the devices online now, answered
    /// with how many it reached. It takes no place in the c2c order (it is
    /// not stored, so it waits for no fsync), but the connection's
    /// transient messages are pushed in the order they were sent.
    fn transient(&mut self, gate: Arc<Gate>, from: UserKey, conn_id: u64, seq: u32, req: pb::C2c) {
        if names_group_and_receiver(&req) {
            return self.ready(seq, group_and_receiver());
        }
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let prev = self.transient_done.replace(done_rx);
        self.push(Box::pin(async move {
            after(prev).await;
            let request = TransientRequest {
                client_msg_id: req.client_msg_id.clone(),
                to: req
                    .to
                    .map(|u| UserKey::from_pb(&u))
                    .unwrap_or_else(|| UserKey::new("", "")),
                group: req.group,
                kind: req.r#type,
                body: req.body,
            };
            let r = gate.logic.transient(&from, Some(conn_id), request).await;
            drop(done_tx);
            let reply = match r {
                Ok(r) => Packet::C2cAck(pb::C2cAck {
                    client_msg_id: req.client_msg_id,
                    msg_id: r.msg_id,
                    seq: 0,
                    server_time_ms: r.server_time_ms,
                    duplicate: false,
                    devices_reached: u32::try_from(r.devices).unwrap_or(u32::MAX),
                }),
                Err(e) => error_packet(e),
            };
            (seq, reply)
        }));
    }

    /// Marks a conversation read: stores the receipt, answers with it.
    fn mark_read(
        &mut self,
        gate: Arc<Gate>,
        user: UserKey,
        conn_id: u64,
        seq: u32,
        req: pb::MarkRead,
    ) {
        let target = match (req.peer, req.group.is_empty()) {
            // An empty uid is the app's system sender (its pushes).
            (Some(peer), true) => ReadTarget::Peer(UserKey::from_pb(&peer)),
            (None, false) => ReadTarget::Group(req.group),
            (Some(peer), false) if peer.uid.is_empty() && peer.app.is_empty() => {
                ReadTarget::Group(req.group)
            }
            _ => {
                return self.ready(
                    seq,
                    Packet::error(
                        code::INVALID_ARGUMENT,
                        "mark_read names exactly one conversation: a peer or a group",
                        false,
                    ),
                );
            }
        };
        self.push(Box::pin(async move {
            let reply = match gate
                .logic
                .mark_read(&user, Some(conn_id), target, req.seq)
                .await
            {
                Ok(r) => Packet::MarkReadAck(pb::MarkReadAck {
                    seq: r.seq,
                    msg_id: r.msg_id,
                }),
                Err(e) => error_packet(e),
            };
            (seq, reply)
        }));
    }

    /// Recalls or edits one of the user's messages.
    fn amend(&mut self, gate: Arc<Gate>, user: UserKey, conn_id: u64, seq: u32, req: pb::Amend) {
        let action = if req.recall {
            AmendAction::Recall
        } else {
            AmendAction::Edit(req.body)
        };
        let request = AmendRequest {
            client_msg_id: req.client_msg_id.clone(),
            msg_id: req.msg_id,
            action,
        };
        self.push(Box::pin(async move {
            let reply = match gate
                .logic
                .amend(&Amender::User(user), Some(conn_id), request)
                .await
            {
                Ok(r) => Packet::AmendAck(pb::AmendAck {
                    client_msg_id: req.client_msg_id,
                    msg_id: r.msg_id,
                    seq: r.seq,
                    duplicate: r.duplicate,
                    group: r.message.group.clone(),
                }),
                Err(e) => error_packet(e),
            };
            (seq, reply)
        }));
    }

    /// A page of the user's conversation list.
    fn conversations(
        &mut self,
        gate: Arc<Gate>,
        user: UserKey,
        seq: u32,
        req: pb::ListConversations,
    ) {
        self.push(Box::pin(async move {
            let reply = match gate
                .logic
                .conversations(&user, Some(&req.after), req.limit)
                .await
            {
                Ok(list) => Packet::ConversationList(pb::ConversationList {
                    conversations: list.conversations.iter().map(|c| c.to_pb()).collect(),
                    next: list.next.unwrap_or_default(),
                    total_unread: list.total_unread,
                }),
                Err(e) => error_packet(e),
            };
            (seq, reply)
        }));
    }

    /// A sync reads without waiting for the c2c before it: a client that
    /// wants its own messages in the page waits for their acks first.
    fn sync(&mut self, gate: Arc<Gate>, user: UserKey, seq: u32, req: pb::Sync) {
        self.push(Box::pin(async move {
            let page = if req.group.is_empty() {
                gate.logic
                    .sync(&user, req.since, req.limit)
                    .await
                    // The user's own timeline starts at 1 for every device:
                    // `since` stays 0 (omitted), as before groups.
                    .map(|page| (page, 0))
            } else {
                gate.logic
                    .group_sync(&user, &req.group, req.since, req.limit)
                    .await
                    .map(|g| (g.page, g.since))
            };
            let reply = match page {
                Ok((page, since)) => Packet::SyncReply(pb::SyncReply {
                    entries: page.entries.iter().map(|e| e.to_pb()).collect(),
                    timeline_head: page.timeline_head,
                    has_more: page.has_more,
                    since,
                }),
                Err(e) => error_packet(e),
            };
            (seq, reply)
        }));
    }

    /// The next answer in request order, without waiting.
    async fn try_next(&mut self) -> Option<(u32, Packet)> {
        let Some(answers) = &mut self.answers else {
            return None;
        };
        poll_fn(|cx| match answers.poll_next_unpin(cx) {
            Poll::Ready(Some(a)) => Poll::Ready(Some(a)),
            _ => Poll::Ready(None),
        })
        .await
    }
}

/// Time allowed for the last frame and the close handshake of a connection
/// that is going away; a peer that does not read must not keep its task alive.
const FAREWELL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Most frames written in one batch.
const MAX_BATCH: usize = 64;

impl Session {
    fn user(&self) -> &UserKey {
        &self.handle.user
    }

    fn max_in_flight(&self) -> usize {
        self.gate.config.max_in_flight.max(1)
    }

    /// Writes an answer and every other one that is ready, in request order,
    /// as one batch.
    async fn write_answers<T: Transport>(&mut self, t: &mut T, first: Bytes) -> Result<(), End> {
        // A fresh Vec per batch, not one kept in the session: a connection
        // that once wrote 64 frames at once would hold 2 KB while idle.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match self.pipeline.try_next().await {
                Some((seq, reply)) => batch.push(reply.encode(seq)),
                None => break,
            }
        }
        self.pipeline.release_if_idle();
        self.write(t, &batch).await
    }

    /// Waits for every request in flight and writes their answers.
    async fn flush_answers<T: Transport>(&mut self, t: &mut T) -> Result<(), End> {
        while let Some((seq, reply)) = self.pipeline.next().await {
            self.write_answers(t, reply.encode(seq)).await?;
        }
        Ok(())
    }

    /// Boxed, not by value: an `async fn` taking `mut self` holds the
    /// session twice (see [`serve`](fn@serve)).
    async fn run<T: Transport>(self: Box<Self>, t: &mut T) -> End {
        let mut this = self;
        let end = this.serve(t).await;
        Box::pin(this.close(t, end)).await
    }

    /// Ends the session: lets requests in flight finish, says why it was
    /// kicked, and leaves the hub and presence.
    async fn close<T: Transport>(&mut self, t: &mut T, end: End) -> End {
        // Requests in flight finish (their messages are pushed) but are not
        // answered: the connection is going away, and an unanswered c2c is
        // resent by its client and de-duplicated. Bounded, like the farewell.
        if !self.pipeline.is_empty() {
            let pipeline = &mut self.pipeline;
            let drained = async { while pipeline.next().await.is_some() {} };
            if tokio::time::timeout(FAREWELL_TIMEOUT, drained)
                .await
                .is_err()
            {
                debug!(
                    left = self.pipeline.len(),
                    "requests still in flight at close are dropped unanswered"
                );
            }
        }
        if let End::Kicked(code) = end {
            switchboard_core::stats::record_kick(code);
            let reason = code::name(code).to_string();
            // Bounded: a slow consumer's socket may be full, and its task
            // must end anyway.
            let kick = send(t, 0, Packet::Kick(pb::Kick { code, reason }));
            let _ = tokio::time::timeout(FAREWELL_TIMEOUT, kick).await;
        }
        self.cleanup().await;
        end
    }

    /// Leaves presence, then the hub: the logout must still find this
    /// connection in presence to publish `user.offline` (on one node the
    /// hub is the presence), and a push routed here meanwhile only lands in
    /// a queue nobody reads any more.
    async fn cleanup(&mut self) {
        let device = self.handle.device_session(&self.gate.logic.config().node);
        self.gate.logic.logout(&device).await;
        self.gate.hub.unregister(self.user(), self.handle.conn_id);
    }

    fn next_timer(&self) -> Instant {
        let idle = self.last_seen + self.gate.config.idle_timeout();
        match self.unacked.deadline {
            Some(d) if d < idle => d,
            _ => idle,
        }
    }

    async fn serve<T: Transport>(&mut self, t: &mut T) -> End {
        loop {
            // The wait and the handling are apart: the select's futures are
            // gone once it returns, and every handler is boxed, so an idle
            // connection's task holds only the wait (see `future_sizes`).
            let event = self.next_event(t).await;
            let handled = match event {
                Event::Out(Ok(out)) => Box::pin(self.write_pushes(t, out)).await,
                // A kick (admin, replaced device, slow consumer, shutdown)
                // comes through the outbound queue, ahead of queued pushes.
                Event::Out(Err(Closed::Kicked(code))) => Err(End::Kicked(code)),
                Event::Out(Err(Closed::Disconnected)) => Err(End::Kicked(code::KICK_ADMIN)),
                Event::Answer(answer) => Box::pin(self.write_answers(t, answer)).await,
                Event::Read(r) => Box::pin(self.on_read(t, *r)).await,
                Event::Timer => Box::pin(self.on_timer(t)).await,
            };
            if let Err(end) = handled {
                return end;
            }
        }
    }

    /// Waits for the next thing to do.
    async fn next_event<T: Transport>(&mut self, t: &mut T) -> Event {
        let timer = self.next_timer();
        let reading = self.pipeline.len() < self.max_in_flight();
        tokio::select! {
            biased;
            out = self.rx.recv() => Event::Out(out),
            Some((seq, reply)) = self.pipeline.next(), if !self.pipeline.is_empty() => {
                Event::Answer(reply.encode(seq))
            }
            // Backpressure: with `max_in_flight` requests unanswered the
            // session reads no more frames; TCP pushes back on the client.
            r = t.recv(), if reading => Event::Read(Box::new(r)),
            _ = sleep_until(timer) => Event::Timer,
        }
    }

    /// A frame read (or the stream's end).
    async fn on_read<T: Transport>(
        &mut self,
        t: &mut T,
        r: Result<Option<Incoming>, TransportError>,
    ) -> Result<(), End> {
        self.last_seen = Instant::now();
        match r {
            Ok(None) => Err(End::PeerClosed),
            Err(e) => Err(transport_error(t, e).await),
            Ok(Some(Incoming::Bad(seq, code, msg) | Incoming::BadLogin(seq, code, msg))) => {
                self.pipeline.ready(seq, Packet::error(code, msg, false));
                Ok(())
            }
            Ok(Some(Incoming::Packet(seq, packet))) => self.handle_request(t, seq, packet).await,
        }
    }

    /// Writes a push and whatever else is already queued, as one batch.
    async fn write_pushes<T: Transport>(&mut self, t: &mut T, first: Outbound) -> Result<(), End> {
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(Outbound::Push { seq, frame, group }) = next {
            if seq > 0 {
                if self.unacked.frames.len() >= self.gate.config.max_unacked {
                    return Err(End::Kicked(code::KICK_SLOW_CONSUMER));
                }
                if self.unacked.frames.is_empty() {
                    self.unacked.deadline = Some(Instant::now() + self.gate.config.ack_timeout);
                    self.unacked.resends = 0;
                }
                self.unacked.frames.push_back((group, seq, frame.clone()));
            }
            batch.push(frame);
            next = if batch.len() < MAX_BATCH {
                self.rx.try_recv().ok()
            } else {
                None
            };
        }
        self.write(t, &batch).await
    }

    async fn write<T: Transport>(&mut self, t: &mut T, frames: &[Bytes]) -> Result<(), End> {
        match tokio::time::timeout(self.gate.config.write_timeout, t.send(frames)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Io(e.to_string())),
            Err(_) => Err(End::Kicked(code::KICK_SLOW_CONSUMER)),
        }
    }

    async fn on_timer<T: Transport>(&mut self, t: &mut T) -> Result<(), End> {
        let now = Instant::now();
        if now >= self.last_seen + self.gate.config.idle_timeout() {
            if self.pipeline.len() >= self.max_in_flight() {
                // Not reading is our doing (the pipeline is full), not the
                // client's silence: start the idle clock again.
                self.last_seen = now;
                return Ok(());
            }
            return Err(End::Kicked(code::KICK_IDLE_TIMEOUT));
        }
        let Some(deadline) = self.unacked.deadline else {
            return Ok(());
        };
        if now < deadline {
            return Ok(());
        }
        if self.unacked.resends >= self.gate.config.max_resends {
            info!(
                unacked = self.unacked.frames.len(),
                "pushes unacknowledged after every resend"
            );
            return Err(End::Kicked(code::KICK_ACK_TIMEOUT));
        }
        self.unacked.resends += 1;
        self.unacked.deadline = Some(now + self.gate.config.ack_timeout);
        debug!(
            resend = self.unacked.resends,
            unacked = self.unacked.frames.len(),
            "resending unacknowledged pushes"
        );
        let frames: Vec<Bytes> = self
            .unacked
            .frames
            .iter()
            .map(|(_, _, f)| f.clone())
            .collect();
        for chunk in frames.chunks(MAX_BATCH) {
            self.write(t, chunk).await?;
        }
        Ok(())
    }

    /// Serves a request: a ping and a push-ack at once, the rest through
    /// the pipeline, whose answers go out in request order.
    async fn handle_request<T: Transport>(
        &mut self,
        t: &mut T,
        seq: u32,
        packet: Packet,
    ) -> Result<(), End> {
        let gate = &self.gate;
        match packet {
            // Keepalive is answered as soon as it is read, ahead of answers
            // still in flight: it measures the connection, not the store.
            Packet::Ping(_) => return self.write(t, &[pong().encode(seq)]).await,
            Packet::PushAck(ack) => self.on_push_ack(ack.group, ack.seq).await,
            Packet::Logout(_) => {
                self.flush_answers(t).await?;
                send(t, seq, Packet::LogoutAck(pb::LogoutAck {})).await?;
                return Err(End::Logout);
            }
            Packet::Login(_) => self.pipeline.ready(
                seq,
                Packet::error(
                    code::ALREADY_LOGGED_IN,
                    "this connection is already logged in",
                    false,
                ),
            ),
            Packet::C2c(req) if req.transient => {
                if self.transient_rate.try_take() {
                    self.pipeline.transient(
                        gate.clone(),
                        self.handle.user.clone(),
                        self.handle.conn_id,
                        seq,
                        req,
                    )
                } else {
                    switchboard_core::stats::record_rate_limited();
                    self.pipeline.ready(
                        seq,
                        Packet::error(
                            code::RATE_LIMITED,
                            "transient message rate over the connection's limit; slow down",
                            false,
                        ),
                    )
                }
            }
            Packet::C2c(_)
            | Packet::C2s(_)
            | Packet::Sync(_)
            | Packet::MarkRead(_)
            | Packet::Amend(_)
            | Packet::ListConversations(_)
                if !self.rate.try_take() =>
            {
                switchboard_core::stats::record_rate_limited();
                self.pipeline.ready(
                    seq,
                    Packet::error(
                        code::RATE_LIMITED,
                        "request rate over the connection's limit; slow down",
                        false,
                    ),
                )
            }
            Packet::C2c(req) => self.pipeline.c2c(
                gate,
                self.handle.user.clone(),
                self.handle.conn_id,
                seq,
                req,
            ),
            Packet::C2s(req) => self
                .pipeline
                .c2s(gate.clone(), self.handle.user.clone(), seq, req),
            Packet::Sync(req) => {
                self.pipeline
                    .sync(gate.clone(), self.handle.user.clone(), seq, req)
            }
            Packet::MarkRead(req) => self.pipeline.mark_read(
                gate.clone(),
                self.handle.user.clone(),
                self.handle.conn_id,
                seq,
                req,
            ),
            Packet::Amend(req) => self.pipeline.amend(
                gate.clone(),
                self.handle.user.clone(),
                self.handle.conn_id,
                seq,
                req,
            ),
            Packet::ListConversations(req) => {
                self.pipeline
                    .conversations(gate.clone(), self.handle.user.clone(), seq, req)
            }
            other => self.pipeline.ready(
                seq,
                Packet::error(
                    code::UNKNOWN_COMMAND,
                    format!("{} is not a client command", other.command().json_name()),
                    false,
                ),
            ),
        }
        Ok(())
    }

    /// An ack of everything up to `seq` on one timeline: the user's own
    /// when `group` is empty, else that group's.
    async fn on_push_ack(&mut self, group: String, seq: u64) {
        let before = self.unacked.frames.len();
        self.unacked.frames.retain(|(g, s, _)| {
            let same_timeline = match g {
                None => group.is_empty(),
                Some(g) => **g == *group,
            };
            !same_timeline || *s > seq
        });
        if self.unacked.frames.is_empty() {
            // Idle again: let go of the buffer, not only of the frames.
            self.unacked.frames = VecDeque::new();
        }
        if self.unacked.frames.len() < before {
            self.unacked.resends = 0;
            self.unacked.deadline = (!self.unacked.frames.is_empty())
                .then(|| Instant::now() + self.gate.config.ack_timeout);
        }
        // The cursor is the device's own: it may only be moved by this user's
        // connection, and the store keeps it monotonic.
        let (logic, user, device) = (&self.gate.logic, &self.handle.user, &self.handle.device_id);
        let moved = if group.is_empty() {
            logic.ack(user, device, seq).await
        } else {
            logic
                .ack_group_from(Some(self.handle.conn_id), user, device, &group, seq)
                .await
        };
        if let Err(e) = moved {
            tracing::warn!(error = %e, "could not move the cursor; the device may get entries again");
        }
    }
}

/// A `c2c` naming both a group and a receiver (`to` with a uid).
fn names_group_and_receiver(req: &pb::C2c) -> bool {
    !req.group.is_empty() && req.to.as_ref().is_some_and(|u| !u.uid.is_empty())
}

/// The answer to a `c2c` that names both a group and a receiver.
fn group_and_receiver() -> Packet {
    Packet::error(
        code::INVALID_ARGUMENT,
        "a message has either a group or a receiver (to), not both",
        false,
    )
}

fn error_packet(e: LogicError) -> Packet {
    if e.code() == code::UNAVAILABLE || e.code() == code::INTERNAL {
        tracing::warn!(error = %e, "request failed");
    }
    switchboard_core::stats::record_error_sent(e.code());
    Packet::error(e.code(), e.to_string(), false)
}
