//! The connection task: the one owner of the socket.
//!
//! It logs in, keeps the connection alive (pings), sends the requests of
//! every [`crate::Client`] handle and routes each answer to the request's
//! oneshot by header seq, turns pushes and sync pages into in-order
//! [`Event`]s through one [`Timeline`] per timeline (a [`Line`]: the user's
//! own and one per group), acknowledges pushes once they were handed to the
//! [`crate::Events`] channel, and reconnects with backoff, syncing each
//! timeline from its last delivered sequence and resending unanswered
//! requests with their original `client_msg_id`.
//!
//! Every timeline goes through the same code: a push, a sync page or an own
//! message's ack names its timeline by key (the wire's `group`, empty for
//! the user's own), and the key picks the [`Line`]. Only login differs: the
//! user's timeline is always synced, a group only when the `LoginAck` lists
//! it as having entries past this device's cursor.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchboard_proto::{Compression, Frame, Packet, code, pb};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::client::{Event, Shared};
use crate::error::{is_auth_failure, is_retryable_code, is_terminal_kick};
use crate::timeline::{Entry, Offer, Timeline};
use crate::transport::{Conn, Endpoint};
use crate::{ClientConfig, SdkError};

/// How long an own message's sequence may sit past a hole before a sync
/// fills it: the pushes before it are usually already on their way.
const GAP_GRACE: Duration = Duration::from_millis(500);
/// Longest wait before resending a request the server answered with a
/// retryable error (UNAVAILABLE, INTERNAL, RATE_LIMITED).
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Pings missed (in keepalive intervals of silence) before the connection is
/// taken for dead, as the server does.
const MISSED_PINGS: u32 = 3;
/// Most sync requests in flight at once. A login may list many groups; with
/// all their syncs written at once the server would stop reading at its
/// in-flight limit while its pages pile up unread in our socket. The rest
/// wait in `Session::sync_queue`.
const MAX_SYNCS: usize = 8;

/// Which timeline: `""` is the user's own, anything else a group id (the
/// wire's convention: an empty `group` field means the user's timeline).
type Key = String;
/// The key of the user's own timeline.
const USER: &str = "";

/// One timeline as the task follows it: the user's own or one group's.
struct Line {
    timeline: Timeline,
    /// Highest sequence handed to the application (or reached as our own).
    delivered: u64,
    /// What this connection knows of the line; reset at every login.
    conn: LineConn,
}

impl Line {
    fn new(last: u64, max_pending: usize) -> Line {
        Line {
            timeline: Timeline::new(last, max_pending),
            delivered: last,
            conn: LineConn::default(),
        }
    }
}

/// A line's per-connection state.
#[derive(Default)]
struct LineConn {
    /// Highest sequence the server has as this device's cursor: the last
    /// PushAck sent on this connection, or the cursor the login reported.
    acked: u64,
    /// A duplicate arrived: acknowledge again so the server stops resending.
    reack: bool,
    /// `Some(since)` while a sync page is outstanding.
    syncing: Option<u64>,
    /// Another sync round is wanted after the current one.
    sync_again: bool,
    /// Waiting in `Session::sync_queue` for a free sync slot.
    queued: bool,
    /// An own message's sequence sits past a hole: look again at
    /// `Session::gap_check_at`.
    gap_check: bool,
}

type Reply<T> = oneshot::Sender<Result<T, SdkError>>;

/// Codes that mean this user no longer reads the group: the SDK stops
/// following its timeline ([`Event::GroupLeft`]).
fn is_group_gone(c: u32) -> bool {
    matches!(c, code::NOT_GROUP_MEMBER | code::GROUP_NOT_FOUND)
}

/// A request from a handle to the task.
pub(crate) enum Command {
    C2c {
        packet: pb::C2c,
        reply: Reply<pb::C2cAck>,
    },
    C2s {
        packet: pb::C2s,
        reply: Reply<pb::C2sAck>,
    },
    /// Any other request (mark_read, list_conversations): answered by
    /// the packet that answers it.
    Other {
        packet: Box<Packet>,
        reply: Reply<Packet>,
    },
    Sync {
        reply: Reply<()>,
    },
    Logout {
        reply: Reply<()>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// A c2c or c2s waiting for its ack, kept across reconnects.
struct Request {
    kind: RequestKind,
    /// Header seq on the current connection, once sent.
    wire: Option<u32>,
    /// Resend time after a retryable error.
    retry_at: Option<Instant>,
    retries: Backoff,
}

enum RequestKind {
    C2c {
        packet: pb::C2c,
        reply: Reply<pb::C2cAck>,
    },
    C2s {
        packet: pb::C2s,
        reply: Reply<pb::C2sAck>,
    },
    Other {
        packet: Box<Packet>,
        reply: Reply<Packet>,
    },
}

impl Request {
    fn packet(&self) -> Packet {
        match &self.kind {
            RequestKind::C2c { packet, .. } => Packet::C2c(packet.clone()),
            RequestKind::C2s { packet, .. } => Packet::C2s(packet.clone()),
            RequestKind::Other { packet, .. } => (**packet).clone(),
        }
    }

    /// The caller stopped waiting (its timeout expired or it was dropped).
    fn abandoned(&self) -> bool {
        match &self.kind {
            RequestKind::C2c { reply, .. } => reply.is_closed(),
            RequestKind::C2s { reply, .. } => reply.is_closed(),
            RequestKind::Other { reply, .. } => reply.is_closed(),
        }
    }

    /// The group a c2c is posted to (`USER` for a message to a user, and
    /// for every other request).
    fn group(&self) -> &str {
        match &self.kind {
            RequestKind::C2c { packet, .. } if !packet.transient => &packet.group,
            _ => USER,
        }
    }

    fn is_c2c(&self, client_msg_id: &str) -> bool {
        matches!(&self.kind, RequestKind::C2c { packet, .. } if packet.client_msg_id == client_msg_id)
    }

    fn fail(self, err: SdkError) {
        // The caller may be gone; nothing to do then.
        match self.kind {
            RequestKind::C2c { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            RequestKind::C2s { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            RequestKind::Other { reply, .. } => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// What a header seq on the current connection was used for.
#[derive(Debug, Clone)]
enum Wire {
    Request(u64),
    /// A sync page of this timeline.
    Sync(Key),
    Logout,
}

/// An item on its way to the Events channel. `seq > 0` marks an entry of
/// timeline `key`: once handed over (or, with no event, reached: an own
/// message, or a start moved up by a sync) it is delivered and may be
/// acknowledged.
struct Outgoing {
    event: Option<Event>,
    key: Key,
    seq: u64,
}

/// What woke the task's `select!` (handled after it, so the handlers may
/// borrow the task mutably).
enum Wake {
    Frame(Result<Option<Frame>, SdkError>),
    Command(Option<Command>),
    Room,
    Ping,
    Retry,
    GapCheck,
    Abandoned,
}

/// Why the task stops.
enum Stop {
    Closed(Option<oneshot::Sender<()>>),
    LoggedOut(Option<Reply<()>>),
    Kicked {
        code: u32,
        reason: String,
    },
    /// Every handle and the Events were dropped.
    Abandoned,
}

/// How a connection ended.
enum End {
    Reconnect(SdkError),
    Stop(Stop),
}

impl From<SdkError> for End {
    fn from(e: SdkError) -> End {
        End::Reconnect(e)
    }
}

/// Per-connection state.
struct Session {
    conn: Conn,
    compression: Compression,
    /// The server's frame limit (0: not announced).
    max_out: usize,
    keepalive: Duration,
    next_seq: u32,
    wire: HashMap<u32, Wire>,
    /// Sync requests in flight (at most `MAX_SYNCS`).
    syncs: usize,
    /// Lines waiting for a sync slot, in order of asking.
    sync_queue: VecDeque<Key>,
    last_recv: Instant,
    next_ping: Instant,
    /// When to look again at the lines marked `gap_check`.
    gap_check_at: Option<Instant>,
    logout: Option<Reply<()>>,
    write_timeout: Duration,
}

impl Session {
    fn next_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        // 0 is reserved for server-initiated frames.
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        seq
    }

    /// Encodes (compressing when negotiated) a packet under a fresh seq.
    fn encode(&mut self, packet: &Packet) -> (u32, bytes::Bytes) {
        let seq = self.next_seq();
        let frame = self.compression.deflate(packet.to_frame(seq));
        (seq, frame.encode())
    }

    async fn send(&mut self, packet: &Packet, wire: Option<Wire>) -> Result<u32, SdkError> {
        let (seq, bytes) = self.encode(packet);
        self.conn.send(bytes, self.write_timeout).await?;
        if let Some(w) = wire {
            self.wire.insert(seq, w);
        }
        Ok(seq)
    }
}

/// Opens a connection and logs in; returns the connection and the LoginAck.
pub(crate) async fn establish(
    endpoint: Endpoint,
    cfg: Arc<ClientConfig>,
    token: String,
) -> Result<(Conn, pb::LoginAck), SdkError> {
    let attempt = async {
        let mut conn = endpoint.open(cfg.max_frame_bytes).await?;
        let login = Packet::Login(pb::Login {
            token,
            platform: cfg.platform.clone(),
            device_id: cfg.device_id.clone(),
            compression: if cfg.compression {
                vec![Compression::Deflate { threshold: 0 }.name().to_string()]
            } else {
                Vec::new()
            },
            client_version: cfg.client_version.clone(),
        });
        conn.send(login.encode(1), cfg.connect_timeout).await?;
        loop {
            let Some(frame) = conn.recv().await? else {
                return Err(SdkError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the login was answered",
                )));
            };
            // Nothing is compressed before the LoginAck negotiated it.
            let frame = Compression::None.inflate(frame, cfg.max_frame_bytes)?;
            match Packet::from_frame(&frame) {
                Ok(Packet::LoginAck(ack)) => return Ok((conn, ack)),
                Ok(Packet::Error(e)) => {
                    return Err(SdkError::Server {
                        code: e.code,
                        message: e.message,
                    });
                }
                Ok(Packet::Kick(k)) => {
                    return Err(SdkError::Kicked {
                        code: k.code,
                        reason: k.reason,
                    });
                }
                Ok(other) => debug!(cmd = ?other.command(), "ignoring frame before login ack"),
                Err(e) if !e.is_fatal() => debug!(error = %e, "ignoring frame before login ack"),
                Err(e) => return Err(e.into()),
            }
        }
    };
    tokio::time::timeout(cfg.connect_timeout, attempt)
        .await
        .map_err(|_| SdkError::Timeout)?
}

/// The connection task's state across connections.
pub(crate) struct Actor {
    cfg: Arc<ClientConfig>,
    endpoint: Endpoint,
    shared: Arc<Shared>,
    cmd_rx: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    /// Events not yet handed over, in order. Bounded in effect: the socket is
    /// not read while it holds `event_capacity` items (plus one sync page).
    outbox: VecDeque<Outgoing>,
    /// Every timeline followed, by key; the user's own (`USER`) is always there.
    lines: HashMap<Key, Line>,
    /// Lines whose PushAck may be due (delivered moved, or a duplicate came).
    unacked: BTreeSet<Key>,
    /// Bound on the early entries each line buffers past a hole.
    max_pending: usize,
    user: pb::User,
    /// Unanswered c2c/c2s by submission order; kept across reconnects.
    requests: BTreeMap<u64, Request>,
    next_request: u64,
    sync_waiters: Vec<Reply<()>>,
    backoff: Backoff,
    /// Every `Client` handle was dropped.
    handles_gone: bool,
}

impl Actor {
    pub(crate) fn new(
        cfg: Arc<ClientConfig>,
        endpoint: Endpoint,
        shared: Arc<Shared>,
        cmd_rx: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        since: u64,
    ) -> Actor {
        let backoff = Backoff::new(cfg.reconnect_min, cfg.reconnect_max);
        // Early entries held past a hole: a few sync pages' worth.
        let max_pending = cfg.event_capacity.max(cfg.sync_page as usize).max(64) * 4;
        let mut lines = HashMap::new();
        lines.insert(USER.to_owned(), Line::new(since, max_pending));
        for (group, &seq) in &cfg.group_since {
            if !group.is_empty() {
                lines.insert(group.clone(), Line::new(seq, max_pending));
            }
        }
        Actor {
            lines,
            unacked: BTreeSet::new(),
            max_pending,
            user: pb::User::default(),
            outbox: VecDeque::new(),
            requests: BTreeMap::new(),
            next_request: 0,
            sync_waiters: Vec::new(),
            handles_gone: false,
            backoff,
            cfg,
            endpoint,
            shared,
            cmd_rx,
            events,
        }
    }

    /// Runs until a stop: the first connection is already logged in.
    pub(crate) async fn run(mut self, conn: Conn, ack: pb::LoginAck) {
        let mut next = Some((conn, ack));
        let stop = loop {
            let (conn, ack) = match next.take() {
                Some(c) => c,
                None => match self.reconnect().await {
                    Ok(c) => c,
                    Err(stop) => break stop,
                },
            };
            match self.session(conn, ack).await {
                End::Stop(stop) => break stop,
                End::Reconnect(reason) => {
                    info!(%reason, "disconnected");
                    self.shared.connected.store(false, Ordering::Release);
                    self.push_event(Event::Disconnected { reason });
                }
            }
        };
        self.finish(stop).await;
    }

    // ---- between connections ----

    /// Waits (with backoff) and reconnects until logged in or stopped.
    async fn reconnect(&mut self) -> Result<(Conn, pb::LoginAck), Stop> {
        loop {
            let delay = self.backoff.next_delay();
            debug!(?delay, "reconnecting after delay");
            self.offline(sleep_until(Instant::now() + delay)).await?;
            let token = match self.cfg.token_provider.clone() {
                Some(provider) => match self.offline(provider()).await? {
                    Ok(t) => t,
                    Err(e) => {
                        warn!(error = %e, "token provider failed");
                        continue;
                    }
                },
                None => self.cfg.token.clone(),
            };
            let attempt = establish(self.endpoint.clone(), self.cfg.clone(), token);
            match self.offline(attempt).await? {
                Ok(c) => return Ok(c),
                Err(SdkError::Server { code, message }) if is_auth_failure(code) => {
                    warn!(code, %message, "login refused on reconnect");
                    return Err(Stop::Kicked {
                        code,
                        reason: message,
                    });
                }
                Err(SdkError::Kicked { code, reason }) if is_terminal_kick(code) => {
                    return Err(Stop::Kicked { code, reason });
                }
                Err(e) => warn!(error = %e, "reconnect failed"),
            }
        }
    }

    /// Drives `fut` while serving handles and the Events channel (offline).
    async fn offline<F: std::future::Future>(&mut self, fut: F) -> Result<F::Output, Stop> {
        tokio::pin!(fut);
        loop {
            self.pump();
            let accepting = self.accepting();
            let wake = tokio::select! {
                out = &mut fut => return Ok(out),
                cmd = self.cmd_rx.recv(), if accepting => Wake::Command(cmd),
                _ = self.events.reserve(), if !self.outbox.is_empty() => Wake::Room,
                _ = self.events.closed(), if self.handles_gone => return Err(Stop::Abandoned),
            };
            if let Wake::Command(cmd) = wake
                && let Some(stop) = self.offline_command(cmd)
            {
                return Err(stop);
            }
        }
    }

    fn offline_command(&mut self, cmd: Option<Command>) -> Option<Stop> {
        match cmd? {
            Command::C2c { packet, reply } => {
                self.queue_request(RequestKind::C2c { packet, reply });
            }
            Command::C2s { packet, reply } => {
                self.queue_request(RequestKind::C2s { packet, reply });
            }
            Command::Other { packet, reply } => {
                self.queue_request(RequestKind::Other { packet, reply });
            }
            // Every line is synced at the next login anyway.
            Command::Sync { reply } => self.sync_waiters.push(reply),
            // Nothing to log out of while disconnected: just stop.
            Command::Logout { reply } => return Some(Stop::LoggedOut(Some(reply))),
            Command::Close { reply } => return Some(Stop::Closed(Some(reply))),
        }
        None
    }

    /// Whether to take new commands: handles exist and the in-flight bound has room.
    fn accepting(&mut self) -> bool {
        !self.handles_gone && self.requests.len() < self.cfg.outbound_capacity.max(1)
    }

    fn queue_request(&mut self, kind: RequestKind) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        self.requests.insert(
            id,
            Request {
                kind,
                wire: None,
                retry_at: None,
                retries: Backoff::new(self.cfg.reconnect_min, RETRY_MAX),
            },
        );
        id
    }

    // ---- events ----

    fn push_event(&mut self, event: Event) {
        self.outbox.push_back(Outgoing {
            event: Some(event),
            key: Key::new(),
            seq: 0,
        });
    }

    /// Hands over as much of the outbox as the Events channel takes without waiting.
    fn pump(&mut self) {
        while let Some(item) = self.outbox.pop_front() {
            if let Some(event) = item.event {
                match self.events.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(event)) => {
                        self.outbox.push_front(Outgoing {
                            event: Some(event),
                            key: item.key,
                            seq: item.seq,
                        });
                        break;
                    }
                    // The application dropped its Events: it declined delivery.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            if item.seq > 0 {
                self.reached(&item.key, item.seq);
            }
        }
    }

    /// Entry `seq` of line `key` was handed over (or reached): it is
    /// delivered, readable by the handles, and due for acknowledgement.
    fn reached(&mut self, key: &str, seq: u64) {
        // A group forgotten since (GroupLeft) keeps no position.
        let Some(line) = self.lines.get_mut(key) else {
            return;
        };
        if seq <= line.delivered {
            return;
        }
        line.delivered = seq;
        if key == USER {
            self.shared.last_seq.store(seq, Ordering::Release);
        } else {
            self.shared.set_group(key, seq);
        }
        if !self.unacked.contains(key) {
            self.unacked.insert(key.to_owned());
        }
    }

    /// The line of `key`, created at 0 when unknown: a group joined while
    /// online (or never persisted). Its first entry past 1 is then a gap, and
    /// the sync's `since` moves the start to where this member's view begins.
    fn line(&mut self, key: &str) -> &mut Line {
        if !self.lines.contains_key(key) {
            debug!(group = key, "new group timeline");
            self.shared.set_group(key, 0);
            self.lines
                .insert(key.to_owned(), Line::new(0, self.max_pending));
        }
        self.lines
            .get_mut(key)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Offers an entry of line `key` and queues whatever became contiguous.
    fn accept(&mut self, key: &str, seq: u64, entry: Entry) -> Offer {
        let offer = self.line(key).timeline.offer(seq, entry);
        self.release(key);
        offer
    }

    /// Moves line `key`'s start up to a sync reply's `since`.
    fn advance(&mut self, key: &str, since: u64) {
        if self.line(key).timeline.advance_to(since) {
            debug!(group = key, since, "timeline starts later");
            // Reached in order with the entries before it, so the position
            // (and the ack) never passes an entry not yet handed over.
            self.outbox.push_back(Outgoing {
                event: None,
                key: key.to_owned(),
                seq: since,
            });
        }
        self.release(key);
    }

    /// Queues line `key`'s contiguous entries as events.
    fn release(&mut self, key: &str) {
        let Some(line) = self.lines.get_mut(key) else {
            return;
        };
        while let Some((seq, entry)) = line.timeline.pop() {
            let event = match entry {
                Entry::Message(message) if key == USER => Some(Event::Message { seq, message }),
                Entry::Message(message) => Some(Event::GroupMessage {
                    group: key.to_owned(),
                    seq,
                    message,
                }),
                Entry::Own => None,
            };
            self.outbox.push_back(Outgoing {
                event,
                key: key.to_owned(),
                seq,
            });
        }
    }

    /// Stops following group `key`: the server said this user is no longer
    /// a member (or the group is gone). Entries already queued are still
    /// handed over, then [`Event::GroupLeft`].
    fn forget(&mut self, key: &str, code: u32) {
        if key == USER || self.lines.remove(key).is_none() {
            return;
        }
        info!(group = key, code, name = code::name(code), "left group");
        self.unacked.remove(key);
        self.shared.forget_group(key);
        self.push_event(Event::GroupLeft {
            group: key.to_owned(),
            code,
        });
    }

    /// Our own message (sent from this device, still awaiting its ack) is
    /// not shown back to us, whichever way its entry arrives first.
    fn entry_for(&self, message: Option<pb::Message>) -> Entry {
        let message = message.unwrap_or_default();
        let ours = message.from.as_ref() == Some(&self.user)
            && !message.client_msg_id.is_empty()
            && self
                .requests
                .values()
                .any(|r| r.is_c2c(&message.client_msg_id));
        if ours {
            Entry::Own
        } else {
            Entry::Message(message)
        }
    }

    // ---- one connection ----

    async fn session(&mut self, conn: Conn, ack: pb::LoginAck) -> End {
        let now = Instant::now();
        let keepalive = match ack.keepalive_secs {
            0 => Duration::from_secs(30),
            n => Duration::from_secs(u64::from(n)),
        };
        let compression = if self.cfg.compression && ack.compression == "deflate" {
            Compression::Deflate {
                threshold: self.cfg.compression_threshold,
            }
        } else {
            Compression::None
        };
        let mut s = Session {
            conn,
            compression,
            max_out: ack.max_frame_bytes as usize,
            keepalive,
            // Seq 1 was the login.
            next_seq: 2,
            wire: HashMap::new(),
            syncs: 0,
            sync_queue: VecDeque::new(),
            last_recv: now,
            next_ping: now + keepalive,
            gap_check_at: None,
            logout: None,
            write_timeout: self.cfg.request_timeout,
        };
        let user = ack.user.clone().unwrap_or_default();
        info!(
            user = %format_args!("{}/{}", user.app, user.uid),
            head = ack.timeline_head,
            cursor = ack.cursor,
            node = %ack.node,
            "logged in"
        );
        self.user = user.clone();
        self.shared.set_user(user.clone());
        self.shared.connected.store(true, Ordering::Release);
        self.backoff.reset();
        self.push_event(Event::Connected {
            user,
            timeline_head: ack.timeline_head,
        });

        let end = match self.start(&mut s, ack.cursor, ack.groups).await {
            Ok(()) => self.serve(&mut s).await,
            Err(end) => end,
        };
        if let End::Stop(Stop::Closed(_) | Stop::Abandoned) = &end {
            s.conn.close().await;
        }
        end
    }

    /// After login: catch the server's cursors up, sync the user's timeline
    /// and the groups the login listed (only those), resend what is
    /// unanswered.
    async fn start(
        &mut self,
        s: &mut Session,
        cursor: u64,
        groups: Vec<pb::GroupState>,
    ) -> Result<(), End> {
        self.pump();
        // A group the login does not list has nothing past the server's
        // cursor, so the server is at least where this device is.
        for line in self.lines.values_mut() {
            line.conn = LineConn {
                acked: line.delivered,
                ..LineConn::default()
            };
        }
        let mut catch_up = vec![(USER.to_owned(), cursor)];
        let mut to_sync = vec![USER.to_owned()];
        for g in groups {
            if g.group.is_empty() {
                continue;
            }
            // Unknown here (not persisted by the app): start at the server's
            // cursor, as `since: None` does for the user's timeline.
            if !self.lines.contains_key(&g.group) {
                self.shared.set_group(&g.group, g.cursor);
                self.lines
                    .insert(g.group.clone(), Line::new(g.cursor, self.max_pending));
            }
            if g.head > self.line(&g.group).timeline.last() {
                to_sync.push(g.group.clone());
            }
            catch_up.push((g.group, g.cursor));
        }
        for (key, cursor) in catch_up {
            let line = self.line(&key);
            line.conn.acked = cursor;
            if line.delivered > cursor {
                let seq = line.delivered;
                line.conn.acked = seq;
                s.send(&Packet::PushAck(pb::PushAck { seq, group: key }), None)
                    .await?;
            }
        }
        debug!(groups = to_sync.len() - 1, "syncing at login");
        for key in to_sync {
            self.want_sync(s, &key).await?;
        }
        self.requests.retain(|_, r| !r.abandoned());
        let ids: Vec<u64> = self.requests.keys().copied().collect();
        for id in ids {
            if let Some(r) = self.requests.get_mut(&id) {
                r.wire = None;
                r.retry_at = None;
            }
            self.send_request(s, id).await?;
        }
        Ok(())
    }

    async fn serve(&mut self, s: &mut Session) -> End {
        let event_cap = self.cfg.event_capacity.max(1);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            self.pump();
            if let Err(e) = self.flush_ack(s).await {
                return e.into();
            }
            let reading = self.outbox.len() < event_cap;
            let accepting = self.accepting();
            let retry_at = self.requests.values().filter_map(|r| r.retry_at).min();
            let wake = tokio::select! {
                frame = s.conn.recv(), if reading => Wake::Frame(frame),
                cmd = self.cmd_rx.recv(), if accepting => Wake::Command(cmd),
                _ = self.events.reserve(), if !self.outbox.is_empty() => Wake::Room,
                _ = sleep_until(s.next_ping) => Wake::Ping,
                _ = sleep_until(retry_at.unwrap_or(far)), if retry_at.is_some() => Wake::Retry,
                _ = sleep_until(s.gap_check_at.unwrap_or(far)), if s.gap_check_at.is_some() => {
                    Wake::GapCheck
                }
                _ = self.events.closed(), if self.handles_gone => Wake::Abandoned,
            };
            let step = match wake {
                Wake::Frame(Ok(Some(frame))) => {
                    s.last_recv = Instant::now();
                    self.on_frame(s, frame).await
                }
                Wake::Frame(Ok(None)) => Err(match s.logout.take() {
                    Some(reply) => End::Stop(Stop::LoggedOut(Some(reply))),
                    None => End::Reconnect(SdkError::Io(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "connection closed by the server",
                    ))),
                }),
                Wake::Frame(Err(e)) => Err(e.into()),
                Wake::Command(cmd) => self.on_command(s, cmd).await,
                Wake::Room => Ok(()),
                Wake::Ping => self.on_ping_timer(s, reading).await,
                Wake::Retry => self.resend_due(s).await,
                Wake::GapCheck => self.gap_check(s).await.map_err(End::from),
                Wake::Abandoned => Err(End::Stop(Stop::Abandoned)),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Acknowledges, per line, what was handed to the application since
    /// its last ack.
    async fn flush_ack(&mut self, s: &mut Session) -> Result<(), SdkError> {
        while let Some(key) = self.unacked.pop_first() {
            let Some(line) = self.lines.get_mut(&key) else {
                continue;
            };
            let seq = line.delivered;
            if seq > 0 && (seq > line.conn.acked || line.conn.reack) {
                line.conn.reack = false;
                line.conn.acked = seq;
                s.send(&Packet::PushAck(pb::PushAck { seq, group: key }), None)
                    .await?;
            }
        }
        Ok(())
    }

    /// The grace after an own message landed past a hole is over: sync the
    /// lines whose hole is still there.
    async fn gap_check(&mut self, s: &mut Session) -> Result<(), SdkError> {
        s.gap_check_at = None;
        let mut holed = Vec::new();
        for (key, line) in &mut self.lines {
            if std::mem::take(&mut line.conn.gap_check) && line.timeline.has_gap() {
                debug!(group = %key, last = line.timeline.last(), "gap persists; syncing");
                holed.push(key.clone());
            }
        }
        for key in holed {
            self.want_sync(s, &key).await?;
        }
        Ok(())
    }

    async fn on_ping_timer(&mut self, s: &mut Session, reading: bool) -> Result<(), End> {
        let now = Instant::now();
        if !reading {
            // Not reading by choice (the application is behind): silence means nothing.
            s.last_recv = now;
        }
        if now.duration_since(s.last_recv) > s.keepalive * MISSED_PINGS {
            return Err(End::Reconnect(SdkError::Timeout));
        }
        s.next_ping = now + s.keepalive;
        s.send(&Packet::Ping(pb::Ping {}), None).await?;
        Ok(())
    }

    async fn on_command(&mut self, s: &mut Session, cmd: Option<Command>) -> Result<(), End> {
        let Some(cmd) = cmd else {
            debug!("every client handle dropped");
            self.handles_gone = true;
            if self.events.is_closed() {
                return Err(End::Stop(Stop::Abandoned));
            }
            return Ok(());
        };
        match cmd {
            Command::C2c { packet, reply } => {
                let id = self.queue_request(RequestKind::C2c { packet, reply });
                self.send_request(s, id).await?;
            }
            Command::C2s { packet, reply } => {
                let id = self.queue_request(RequestKind::C2s { packet, reply });
                self.send_request(s, id).await?;
            }
            Command::Other { packet, reply } => {
                let id = self.queue_request(RequestKind::Other { packet, reply });
                self.send_request(s, id).await?;
            }
            Command::Sync { reply } => {
                self.sync_waiters.push(reply);
                let keys: Vec<Key> = self.lines.keys().cloned().collect();
                for key in keys {
                    self.want_sync(s, &key).await?;
                }
            }
            Command::Logout { reply } => {
                if s.logout.is_none() {
                    s.send(&Packet::Logout(pb::Logout {}), Some(Wire::Logout))
                        .await?;
                }
                s.logout = Some(reply);
            }
            Command::Close { reply } => return Err(End::Stop(Stop::Closed(Some(reply)))),
        }
        Ok(())
    }

    /// Sends (or resends) request `id` on this connection.
    async fn send_request(&mut self, s: &mut Session, id: u64) -> Result<(), SdkError> {
        let Some(req) = self.requests.get(&id) else {
            return Ok(());
        };
        let (seq, bytes) = s.encode(&req.packet());
        if s.max_out > 0 && bytes.len() > s.max_out {
            if let Some(req) = self.requests.remove(&id) {
                req.fail(SdkError::TooLarge {
                    len: bytes.len(),
                    max: s.max_out,
                });
            }
            return Ok(());
        }
        s.conn.send(bytes, s.write_timeout).await?;
        s.wire.insert(seq, Wire::Request(id));
        if let Some(req) = self.requests.get_mut(&id) {
            req.wire = Some(seq);
            req.retry_at = None;
        }
        Ok(())
    }

    async fn resend_due(&mut self, s: &mut Session) -> Result<(), End> {
        let now = Instant::now();
        let due: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.retry_at.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if self.requests.get(&id).is_some_and(Request::abandoned) {
                self.requests.remove(&id);
                continue;
            }
            self.send_request(s, id).await?;
        }
        Ok(())
    }

    /// Asks for a sync of line `key`: now, after its current page (which
    /// may already hold what is wanted, but may not), or when a slot frees.
    async fn want_sync(&mut self, s: &mut Session, key: &str) -> Result<(), SdkError> {
        let Some(line) = self.lines.get_mut(key) else {
            return Ok(());
        };
        if line.conn.syncing.is_some() {
            line.conn.sync_again = true;
            return Ok(());
        }
        if line.conn.queued {
            return Ok(());
        }
        if s.syncs >= MAX_SYNCS {
            line.conn.queued = true;
            s.sync_queue.push_back(key.to_owned());
            return Ok(());
        }
        self.send_sync(s, key).await
    }

    /// Sends a sync page request for line `key`, from its last contiguous entry.
    async fn send_sync(&mut self, s: &mut Session, key: &str) -> Result<(), SdkError> {
        let Some(line) = self.lines.get_mut(key) else {
            return Ok(());
        };
        let since = line.timeline.last();
        line.conn.syncing = Some(since);
        line.conn.sync_again = false;
        line.conn.queued = false;
        s.syncs += 1;
        debug!(group = key, since, "sync");
        s.send(
            &Packet::Sync(pb::Sync {
                group: key.to_owned(),
                since,
                limit: self.cfg.sync_page,
            }),
            Some(Wire::Sync(key.to_owned())),
        )
        .await?;
        Ok(())
    }

    /// A line's sync round ended: start the queued ones, and answer
    /// `sync_now` once no sync is left.
    async fn sync_done(&mut self, s: &mut Session) -> Result<(), SdkError> {
        while s.syncs < MAX_SYNCS {
            let Some(key) = s.sync_queue.pop_front() else {
                break;
            };
            // Forgotten (GroupLeft) while it waited: skip it.
            if self.lines.get(&key).is_some_and(|l| l.conn.queued) {
                self.send_sync(s, &key).await?;
            }
        }
        if s.syncs == 0 {
            for waiter in self.sync_waiters.drain(..) {
                let _ = waiter.send(Ok(()));
            }
        }
        Ok(())
    }

    async fn on_frame(&mut self, s: &mut Session, frame: Frame) -> Result<(), End> {
        let frame = s
            .compression
            .inflate(frame, self.cfg.max_frame_bytes)
            .map_err(SdkError::from)?;
        let header_seq = frame.seq;
        let packet = match Packet::from_frame(&frame) {
            Ok(p) => p,
            // A newer server's command or field: skip it, the framing is intact.
            Err(e) if !e.is_fatal() => {
                warn!(error = %e, "skipping undecodable frame");
                return Ok(());
            }
            Err(e) => return Err(SdkError::from(e).into()),
        };
        let wire = s.wire.remove(&header_seq);
        match packet {
            Packet::Push(push) => {
                if push.seq == 0 {
                    if let Some(message) = push.message {
                        self.push_event(Event::Online { message });
                    }
                    return Ok(());
                }
                let key = push
                    .message
                    .as_ref()
                    .map(|m| m.group.clone())
                    .unwrap_or_default();
                let entry = self.entry_for(push.message);
                match self.accept(&key, push.seq, entry) {
                    Offer::Gap => {
                        debug!(group = %key, seq = push.seq, "gap; syncing");
                        self.want_sync(s, &key).await?;
                    }
                    Offer::Duplicate => {
                        // A resend (our ack was lost or late): acknowledge
                        // again so the server's retransmit timer stops.
                        let line = self.line(&key);
                        if push.seq <= line.delivered {
                            line.conn.reack = true;
                            self.unacked.insert(key);
                        }
                    }
                    Offer::Ready => {}
                }
            }
            Packet::SyncReply(reply) => match wire {
                Some(Wire::Sync(key)) => self.on_sync_reply(s, key, reply).await?,
                _ => debug!(header_seq, "sync reply for no sync"),
            },
            Packet::C2cAck(ack) => {
                let Some(Wire::Request(id)) = wire else {
                    debug!(header_seq, "c2c ack for no request");
                    return Ok(());
                };
                let Some(req) = self.requests.remove(&id) else {
                    return Ok(());
                };
                let key = req.group().to_owned();
                if ack.seq > 0 && self.accept(&key, ack.seq, Entry::Own) == Offer::Gap {
                    self.line(&key).conn.gap_check = true;
                    s.gap_check_at
                        .get_or_insert_with(|| Instant::now() + GAP_GRACE);
                }
                match req.kind {
                    RequestKind::C2c { reply, .. } => {
                        let _ = reply.send(Ok(ack));
                    }
                    other => Request { kind: other, ..req }
                        .fail(SdkError::Protocol("c2c ack for another request".into())),
                }
            }
            Packet::C2sAck(ack) => {
                let Some(Wire::Request(id)) = wire else {
                    debug!(header_seq, "c2s ack for no request");
                    return Ok(());
                };
                let Some(req) = self.requests.remove(&id) else {
                    return Ok(());
                };
                match req.kind {
                    RequestKind::C2s { reply, .. } => {
                        let _ = reply.send(Ok(ack));
                    }
                    other => Request { kind: other, ..req }
                        .fail(SdkError::Protocol("c2s ack for another request".into())),
                }
            }
            answer @ (Packet::MarkReadAck(_)
            | Packet::AmendAck(_)
            | Packet::ConversationList(_)) => {
                let Some(Wire::Request(id)) = wire else {
                    debug!(header_seq, "an answer for no request");
                    return Ok(());
                };
                let Some(req) = self.requests.remove(&id) else {
                    return Ok(());
                };
                // A read receipt is an entry on this user's timeline, like
                // an own message: held as delivered, not shown back.
                // So is a recall or edit notice (on the group's timeline
                // for a group message).
                let own = match &answer {
                    Packet::MarkReadAck(ack) => Some((USER, ack.seq)),
                    Packet::AmendAck(ack) => Some((ack.group.as_str(), ack.seq)),
                    _ => None,
                };
                if let Some((key, seq)) = own
                    && seq > 0
                    && self.accept(key, seq, Entry::Own) == Offer::Gap
                {
                    self.line(key).conn.gap_check = true;
                    s.gap_check_at
                        .get_or_insert_with(|| Instant::now() + GAP_GRACE);
                }
                match req.kind {
                    RequestKind::Other { reply, .. } => {
                        let _ = reply.send(Ok(answer));
                    }
                    other => Request { kind: other, ..req }
                        .fail(SdkError::Protocol("an answer of another request".into())),
                }
            }
            Packet::Error(err) => self.on_error(s, wire, err).await?,
            Packet::Kick(kick) => {
                info!(code = kick.code, name = code::name(kick.code), reason = %kick.reason, "kicked");
                if is_terminal_kick(kick.code) {
                    return Err(End::Stop(Stop::Kicked {
                        code: kick.code,
                        reason: kick.reason,
                    }));
                }
                self.push_event(Event::Kicked {
                    code: kick.code,
                    reason: kick.reason.clone(),
                });
                return Err(End::Reconnect(SdkError::Kicked {
                    code: kick.code,
                    reason: kick.reason,
                }));
            }
            Packet::LogoutAck(_) => {
                return Err(End::Stop(Stop::LoggedOut(s.logout.take())));
            }
            Packet::Ping(_) => {
                let pong = Packet::Pong(pb::Pong::default()).encode(header_seq);
                s.conn.send(pong, s.write_timeout).await?;
            }
            Packet::Pong(_) => {}
            other => debug!(cmd = ?other.command(), "ignoring unexpected frame"),
        }
        Ok(())
    }

    async fn on_sync_reply(
        &mut self,
        s: &mut Session,
        key: Key,
        reply: pb::SyncReply,
    ) -> Result<(), SdkError> {
        s.syncs = s.syncs.saturating_sub(1);
        // Forgotten (GroupLeft) while the page was on its way.
        let Some(line) = self.lines.get_mut(&key) else {
            return self.sync_done(s).await;
        };
        let since = line.conn.syncing.take().unwrap_or(0);
        // The page may start later than asked (a group member sees only what
        // came after its joining): move up first, then take the entries.
        self.advance(&key, reply.since);
        let got = reply.entries.len();
        for push in reply.entries {
            if push.seq == 0 {
                continue;
            }
            let entry = self.entry_for(push.message);
            self.accept(&key, push.seq, entry);
        }
        let line = self.line(&key);
        let (last, has_gap) = (line.timeline.last(), line.timeline.has_gap());
        let progressed = last > since;
        debug!(group = %key, since, got, last, has_more = reply.has_more, "sync page");
        let more = reply.has_more && progressed;
        if more || line.conn.sync_again || (progressed && has_gap) {
            return self.send_sync(s, &key).await;
        }
        if reply.has_more || has_gap {
            warn!(
                group = %key,
                since,
                last,
                "sync made no progress; waiting for pushes or the next sync"
            );
        }
        self.sync_done(s).await
    }

    async fn on_error(
        &mut self,
        s: &mut Session,
        wire: Option<Wire>,
        err: pb::Error,
    ) -> Result<(), End> {
        let server = || SdkError::Server {
            code: err.code,
            message: err.message.clone(),
        };
        match wire {
            Some(Wire::Request(id)) => {
                let retry = is_retryable_code(err.code) && !err.fatal;
                match self.requests.get_mut(&id) {
                    Some(req) if retry && !req.abandoned() => {
                        let delay = req.retries.next_delay();
                        debug!(code = err.code, ?delay, "request will be retried");
                        req.wire = None;
                        req.retry_at = Some(Instant::now() + delay);
                    }
                    Some(_) => {
                        if let Some(req) = self.requests.remove(&id) {
                            let group = req.group().to_owned();
                            req.fail(server());
                            // Posting told us we are out of the group.
                            if is_group_gone(err.code) {
                                self.forget(&group, err.code);
                            }
                        }
                    }
                    None => {}
                }
            }
            Some(Wire::Sync(key)) if key != USER && is_group_gone(err.code) => {
                s.syncs = s.syncs.saturating_sub(1);
                self.forget(&key, err.code);
                self.sync_done(s).await?;
            }
            Some(Wire::Sync(_)) => {
                // Without a sync the timeline can't be trusted: start over.
                return Err(End::Reconnect(server()));
            }
            Some(Wire::Logout) => {
                if let Some(reply) = s.logout.take() {
                    let _ = reply.send(Err(server()));
                }
            }
            None => {
                warn!(code = err.code, name = code::name(err.code), message = %err.message, fatal = err.fatal, "server error")
            }
        }
        if err.fatal {
            return Err(End::Reconnect(server()));
        }
        Ok(())
    }

    // ---- the end ----

    async fn finish(mut self, stop: Stop) {
        self.shared.connected.store(false, Ordering::Release);
        let err = || match &stop {
            Stop::Kicked { code, reason } => SdkError::Kicked {
                code: *code,
                reason: reason.clone(),
            },
            _ => SdkError::Closed,
        };
        for (_, req) in std::mem::take(&mut self.requests) {
            req.fail(err());
        }
        for waiter in self.sync_waiters.drain(..) {
            let _ = waiter.send(Err(err()));
        }
        let kicked = match &stop {
            Stop::Kicked { code, reason } => Some((*code, reason.clone())),
            _ => None,
        };
        match stop {
            Stop::Closed(Some(reply)) => {
                let _ = reply.send(());
            }
            Stop::LoggedOut(Some(reply)) => {
                let _ = reply.send(Ok(()));
            }
            _ => {}
        }
        if let Some((code, reason)) = kicked {
            self.push_event(Event::Kicked { code, reason });
        }
        self.push_event(Event::Closed);
        info!("client stopped");
        // Deliver what is left; the application decides how long by reading.
        self.pump();
        while let Some(item) = self.outbox.pop_front() {
            if let Some(event) = item.event
                && self.events.send(event).await.is_err()
            {
                break;
            }
            if item.seq > 0 {
                self.reached(&item.key, item.seq);
            }
        }
        // Reject requests sent while draining.
        self.cmd_rx.close();
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            match cmd {
                Command::C2c { reply, .. } => drop(reply.send(Err(SdkError::Closed))),
                Command::C2s { reply, .. } => drop(reply.send(Err(SdkError::Closed))),
                Command::Other { reply, .. } => drop(reply.send(Err(SdkError::Closed))),
                Command::Sync { reply } | Command::Logout { reply } => {
                    drop(reply.send(Err(SdkError::Closed)))
                }
                Command::Close { reply } => drop(reply.send(())),
            }
        }
    }
}
