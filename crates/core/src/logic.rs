//! The logic: `c2c`, `c2s`, `sync`, cursors and logins, written once against
//! the backend traits. Stateless besides its backends, so any node can serve
//! any request.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use switchboard_proto::code;
use switchboard_proto::limits::{check_id, check_type};
use tokio::sync::oneshot;

use crate::auth::Apps;
use crate::bus::{Bus, BusEvent, BusReceipt};
use crate::error::LogicError;
use crate::events::{self, MessageStoredData, PresenceData};
use crate::group::GroupKey;
use crate::hooks::{Screen, Verdict};
use crate::id::IdGenerator;
use crate::model::{Entry, Message, NewMessage, UserKey};
use crate::presence::{DeviceSession, Presence};
use crate::route::{Delivery, Reach, Route, RouteError, Target};
use crate::store::{Appended, PendingAppend, Store};

/// Limits and identity of the logic on this node.
#[derive(Debug, Clone)]
pub struct LogicConfig {
    /// This node's name (where presence says a device is).
    pub node: String,
    /// This node's number in message ids (0..1024).
    pub node_id: u16,
    /// Largest message body accepted.
    pub max_body_bytes: usize,
    /// Devices one user may have online at once; the oldest is kicked beyond it.
    pub max_devices_per_user: usize,
    /// Largest sync page.
    pub max_sync_page: usize,
    /// Most members one group may have (adding beyond it is `GROUP_FULL`).
    pub max_group_members: u64,
}

impl Default for LogicConfig {
    fn default() -> Self {
        LogicConfig {
            node: "local".into(),
            node_id: 0,
            max_body_bytes: 60 * 1024,
            max_devices_per_user: 10,
            max_sync_page: 200,
            max_group_members: 100_000,
        }
    }
}

pub use crate::store::LoginState;

/// A c2c request, as the sender made it.
#[derive(Debug, Clone)]
pub struct C2cRequest {
    pub client_msg_id: String,
    /// The receiver; an empty app means the sender's app.
    pub to: UserKey,
    pub kind: String,
    pub body: Bytes,
}

/// The stored c2c: the message and its entry on the sender's timeline.
#[derive(Debug, Clone)]
pub struct C2cResult {
    pub message: Arc<Message>,
    pub sender_seq: u64,
    pub duplicate: bool,
}

/// One sender's c2c order, owned by whatever sends for it (a connection):
/// pass it to every [`Logic::c2c_in_order`] of that sender, in the order
/// the sender made the requests.
///
/// The rule it keeps: c2c N+1 of a sender submits its append only once c2c
/// N has its place in the store's queue (so N gets the lower sequences on
/// every timeline the two share), and pushes only once N was pushed (so
/// each receiver's devices get the sender's messages in sequence order).
/// The durability waits in between overlap, which is what lets one
/// connection have many c2c in flight.
#[derive(Debug, Default)]
pub struct C2cOrder {
    /// Resolves once the previous c2c is queued in the store (or failed before).
    queued: Option<oneshot::Receiver<()>>,
    /// Resolves once the previous c2c was pushed (or failed).
    pushed: Option<oneshot::Receiver<()>>,
}

/// One c2c's links in its sender's chain: what it waits for, and what it
/// releases for the next one. A dropped sender (a failed or dropped
/// request) releases the wait too.
#[derive(Default)]
pub(crate) struct C2cLinks {
    pub(crate) prev_queued: Option<oneshot::Receiver<()>>,
    pub(crate) prev_pushed: Option<oneshot::Receiver<()>>,
    pub(crate) queued: Option<oneshot::Sender<()>>,
    pub(crate) pushed: Option<oneshot::Sender<()>>,
}

impl C2cOrder {
    pub(crate) fn next(&mut self) -> C2cLinks {
        let (queued_tx, queued_rx) = oneshot::channel();
        let (pushed_tx, pushed_rx) = oneshot::channel();
        C2cLinks {
            prev_queued: self.queued.replace(queued_rx),
            prev_pushed: self.pushed.replace(pushed_rx),
            queued: Some(queued_tx),
            pushed: Some(pushed_tx),
        }
    }
}

pub(crate) async fn after(prev: Option<oneshot::Receiver<()>>) {
    if let Some(rx) = prev {
        let _ = rx.await;
    }
}

/// A c2c whose append is queued in the store.
#[derive(Debug)]
struct C2cSubmitted {
    pending: PendingAppend,
    timelines: Vec<UserKey>,
    from: UserKey,
    origin_conn: Option<u64>,
}

impl C2cSubmitted {
    /// Waits until the message and all its timeline entries are durable.
    async fn durable(self) -> Result<C2cStored, LogicError> {
        let appended = self.pending.await?;
        Ok(C2cStored {
            appended,
            timelines: self.timelines,
            from: self.from,
            origin_conn: self.origin_conn,
        })
    }
}

/// A durable c2c, not pushed yet.
#[derive(Debug)]
struct C2cStored {
    appended: Appended,
    timelines: Vec<UserKey>,
    from: UserKey,
    origin_conn: Option<u64>,
}

/// A page of a timeline for `sync`.
#[derive(Debug, Clone)]
pub struct SyncPage {
    pub entries: Vec<Entry>,
    pub timeline_head: u64,
    pub has_more: bool,
}

impl SyncPage {
    /// A store page read after `since`.
    pub(crate) fn from_page(page: crate::store::Page, since: u64) -> SyncPage {
        let last = page.entries.last().map(|e| e.seq).unwrap_or(since);
        SyncPage {
            has_more: last < page.head,
            timeline_head: page.head,
            entries: page.entries,
        }
    }
}

pub struct Logic {
    apps: Apps,
    store: Arc<dyn Store>,
    presence: Arc<dyn Presence>,
    route: Arc<dyn Route>,
    bus: Arc<dyn Bus>,
    ids: IdGenerator,
    config: LogicConfig,
    /// Checks every c2c before it is stored (before-send hook, word filter).
    screen: Option<Arc<dyn Screen>>,
    /// Events (online, offline, stored) that could not be published; the
    /// request that caused them succeeded anyway.
    event_failures: AtomicU64,
    /// Deliveries (or parts of them) the route could not carry; the
    /// entries were durable, and the devices sync them.
    route_failures: AtomicU64,
    /// Messages stored and delivery latency, for operator stats and metrics.
    pub(crate) stats: crate::stats::NodeStats,
    /// Where deliveries report receivers they found offline.
    pub(crate) notifier: crate::notify::Notifier,
}

impl Logic {
    pub fn new(
        config: LogicConfig,
        apps: Apps,
        store: Arc<dyn Store>,
        presence: Arc<dyn Presence>,
        route: Arc<dyn Route>,
        bus: Arc<dyn Bus>,
    ) -> Logic {
        Logic {
            ids: IdGenerator::new(config.node_id),
            apps,
            store,
            presence,
            route,
            bus,
            config,
            screen: None,
            event_failures: AtomicU64::new(0),
            route_failures: AtomicU64::new(0),
            stats: crate::stats::NodeStats::default(),
            notifier: crate::notify::Notifier::default(),
        }
    }

    /// Screens every c2c with `screen` before it is stored.
    pub fn with_screen(mut self, screen: Arc<dyn Screen>) -> Logic {
        self.screen = Some(screen);
        self
    }

    /// Events (online, offline, stored) the bus refused since start.
    pub fn event_publish_failures(&self) -> u64 {
        self.event_failures.load(Ordering::Relaxed)
    }

    /// Publishes a platform event. Every event goes to a bus whose readers
    /// are business servers (JetStream: they pick subjects themselves); the
    /// outbox bus, read only by the webhook dispatcher, takes only what one
    /// of the app's webhooks wants ([`Bus::only_subscribed`]). Never fails
    /// the caller: the request that caused the event already succeeded, so
    /// a bus failure is logged and counted.
    pub(crate) async fn publish_event<T: serde::Serialize>(
        &self,
        topic: &str,
        user: &UserKey,
        kind: &str,
        data: &T,
        dedupe_id: &str,
    ) {
        if !self.wants_kind(topic, user, kind) {
            return;
        }
        let body = match serde_json::to_vec(data) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                self.event_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, topic, "could not encode an event");
                return;
            }
        };
        let event = BusEvent {
            id: self.ids.next_id(),
            topic: topic.into(),
            user: user.clone(),
            kind: kind.into(),
            body,
            time_ms: crate::now_ms(),
        };
        if let Err(e) = self.bus.publish(event, dedupe_id).await {
            self.event_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, topic, %user, "could not publish an event; it is lost");
        }
    }

    /// Deliveries the route could not carry (whole or in part) since start.
    pub fn route_failures(&self) -> u64 {
        self.route_failures.load(Ordering::Relaxed)
    }

    /// The one way entries reach the devices online now, wherever they are:
    /// users' and groups' entries in one batch, the sender's connection
    /// skipped. Never fails: the entries are durable, so a failure is
    /// logged and counted, and a device that missed a push syncs.
    pub(crate) async fn deliver(&self, d: Delivery) {
        self.deliver_counted(&d).await;
    }

    /// [`Logic::deliver`], returning what each entry reached (aligned with
    /// `d.entries`; nothing reached when the route failed as a whole).
    pub(crate) async fn deliver_counted(&self, d: &Delivery) -> Vec<Reach> {
        self.try_deliver(d)
            .await
            .unwrap_or_else(|_| vec![Reach::default(); d.entries.len()])
    }

    /// [`Logic::deliver_counted`] for entries just stored: an entry that
    /// reached none of its user's devices becomes an offline notification
    /// (`Logic::notify_offline`), unless the store answered a duplicate
    /// (the first attempt counted).
    pub(crate) async fn deliver_stored(&self, d: &Delivery, duplicate: bool) -> Vec<Reach> {
        let reach = self.deliver_counted(d).await;
        if !duplicate {
            self.notify_offline(d, &reach);
        }
        reach
    }

    /// [`Logic::deliver`] for a caller that answers for the push itself:
    /// an error means nothing was pushed (where the devices are could not be
    /// learnt). Failures are logged and counted here either way.
    pub(crate) async fn try_deliver(&self, d: &Delivery) -> Result<Vec<Reach>, RouteError> {
        match self.route.deliver(d).await {
            Ok(reach) => {
                if let Some(e) = reach.iter().find_map(|r| r.error.as_ref()) {
                    self.route_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "route failed for some devices; they will sync");
                }
                Ok(reach)
            }
            Err(e) => {
                self.route_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "route failed; devices will sync");
                Err(e)
            }
        }
    }

    /// Subscribes a logged-in connection of `user` on this node to the
    /// groups `gids` (read from the store at login): it gets their pushes
    /// until it disconnects or the user leaves them.
    pub fn subscribe_groups(&self, conn_id: u64, user: &UserKey, gids: &[String]) {
        self.route.hub().subscribe_groups(conn_id, user, gids);
    }

    /// Users `uids` joined or left the group: their connections on every
    /// node start or stop getting its pushes.
    pub async fn membership(
        &self,
        group: &GroupKey,
        uids: &[String],
        joined: bool,
    ) -> Result<(), LogicError> {
        Ok(self.route.membership(group, uids, joined).await?)
    }

    fn wants(&self, topic: &str, user: &UserKey) -> bool {
        self.wants_kind(topic, user, "")
    }

    /// Whether an event goes to the bus: always, unless the bus takes only
    /// what a webhook subscribed to.
    pub(crate) fn wants_kind(&self, topic: &str, user: &UserKey, kind: &str) -> bool {
        !self.bus.only_subscribed()
            || self
                .apps
                .get(&user.app)
                .is_some_and(|a| a.wants_event(topic, kind))
    }

    pub fn config(&self) -> &LogicConfig {
        &self.config
    }

    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn presence(&self) -> &Arc<dyn Presence> {
        &self.presence
    }

    pub fn route(&self) -> &Arc<dyn Route> {
        &self.route
    }

    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// A new unique, time-ordered id.
    pub fn next_id(&self) -> u64 {
        self.ids.next_id()
    }

    /// Verifies a login token, and that it was not revoked
    /// ([`Logic::revoke_tokens`]): a token issued (`iat`) before the user's
    /// revocation time, or without `iat` once the user has one, is refused.
    pub async fn authenticate(&self, token: &str) -> Result<UserKey, LogicError> {
        let verified = self.apps.verify_token(token)?;
        crate::logic_api::check_revocation(self.store.as_ref(), &verified).await?;
        Ok(verified.user)
    }

    /// Records a logged-in device: the same device id on another connection
    /// is replaced, and past the device limit the oldest device is kicked.
    pub async fn login(&self, session: &DeviceSession) -> Result<LoginState, LogicError> {
        let mut others = self.presence.devices(&session.user).await?;
        others.retain(|d| d.conn_id != session.conn_id || d.node != session.node);
        for d in others.iter().filter(|d| d.device_id == session.device_id) {
            self.route
                .kick(&d.node, &d.user, d.conn_id, code::KICK_REPLACED)
                .await?;
            // Gone from presence before the new login is recorded: the
            // replaced session's logout finds it gone and stays silent.
            self.presence
                .offline(&d.user, &d.device_id, d.conn_id)
                .await?;
        }
        others.retain(|d| d.device_id != session.device_id);
        others.sort_by_key(|d| d.since_ms);
        let excess = (others.len() + 1).saturating_sub(self.config.max_devices_per_user.max(1));
        for (i, d) in others.iter().take(excess).enumerate() {
            tracing::info!(user = %d.user, device = %d.device_id, "device limit reached; kicking the oldest device");
            self.route
                .kick(&d.node, &d.user, d.conn_id, code::KICK_TOO_MANY_DEVICES)
                .await?;
            self.presence
                .offline(&d.user, &d.device_id, d.conn_id)
                .await?;
            // The kicked session's own logout finds it gone from presence
            // and stays silent, so its offline event is published here.
            let data = presence_data(d, others.len() - i - 1, "too_many_devices");
            self.publish_event(events::USER_OFFLINE, &d.user, "", &data, "")
                .await;
        }
        self.presence.online(session).await?;
        let online = presence_data(session, others.len() + 1 - excess.min(others.len()), "");
        self.publish_event(events::USER_ONLINE, &session.user, "", &online, "")
            .await;
        Ok(self
            .store
            .login_state(&session.user, &session.device_id)
            .await?)
    }

    /// Forgets a device that disconnected; `user.offline` is published only
    /// when presence still had this connection (not after a failed login,
    /// nor for a connection replaced by a newer login of the same device).
    pub async fn logout(&self, session: &DeviceSession) {
        let before = if self.wants(events::USER_OFFLINE, &session.user) {
            Some(self.presence.devices(&session.user).await)
        } else {
            None
        };
        if let Err(e) = self
            .presence
            .offline(&session.user, &session.device_id, session.conn_id)
            .await
        {
            tracing::warn!(error = %e, user = %session.user, "could not record device offline");
        }
        let remaining = match before {
            None => return,
            Some(Ok(devices)) => {
                let is_me = |d: &DeviceSession| {
                    d.conn_id == session.conn_id
                        && d.node == session.node
                        && d.device_id == session.device_id
                };
                if !devices.iter().any(is_me) {
                    return;
                }
                devices.iter().filter(|d| !is_me(d)).count()
            }
            // Unknown: publish anyway (a duplicate offline beats a lost one).
            Some(Err(_)) => 0,
        };
        let data = presence_data(session, remaining, "disconnect");
        self.publish_event(events::USER_OFFLINE, &session.user, "", &data, "")
            .await;
    }

    /// Publishes `user.offline` for the devices of nodes that died without
    /// a logout ([`Presence::departed`]; reason `node_lost`), so business
    /// servers learn of a crashed node's users too. Called periodically on
    /// every node of a cluster; returns how many devices it announced.
    pub async fn announce_departed(&self) -> Result<usize, LogicError> {
        let departed = self.presence.departed().await?;
        for d in &departed {
            if !self.wants(events::USER_OFFLINE, &d.user) {
                continue;
            }
            // The count after the loss: devices that re-logged in on another
            // node meanwhile are online there.
            let remaining = match self.presence.devices(&d.user).await {
                Ok(devices) => devices.len(),
                Err(_) => 0,
            };
            let data = presence_data(d, remaining, "node_lost");
            self.publish_event(events::USER_OFFLINE, &d.user, "", &data, "")
                .await;
        }
        Ok(departed.len())
    }

    /// Stores a message from `from` durably (de-duplicated on its
    /// client_msg_id), then pushes it to the receiver's devices and the
    /// sender's other devices (all but `origin_conn`, a connection on this
    /// node). A sender with several c2c in flight at once keeps their order
    /// with [`Logic::c2c_in_order`].
    pub async fn c2c(
        &self,
        from: &UserKey,
        origin_conn: Option<u64>,
        req: C2cRequest,
    ) -> Result<C2cResult, LogicError> {
        self.c2c_linked(C2cLinks::default(), from, origin_conn, req)
            .await
    }

    /// [`Logic::c2c`] for a sender that has several in flight: `order` is
    /// the sender's (see [`C2cOrder`]), and the calls are made in the order
    /// of the requests. The returned future may be run concurrently with
    /// the sender's other c2c; it waits for its place in the chain itself.
    pub fn c2c_in_order(
        self: &Arc<Self>,
        order: &mut C2cOrder,
        from: UserKey,
        origin_conn: Option<u64>,
        req: C2cRequest,
    ) -> impl Future<Output = Result<C2cResult, LogicError>> + Send + 'static {
        let links = order.next();
        let this = self.clone();
        async move { this.c2c_linked(links, &from, origin_conn, req).await }
    }

    async fn c2c_linked(
        &self,
        mut links: C2cLinks,
        from: &UserKey,
        origin_conn: Option<u64>,
        req: C2cRequest,
    ) -> Result<C2cResult, LogicError> {
        after(links.prev_queued.take()).await;
        let submitted = self.c2c_submit(from, origin_conn, req).await;
        drop(links.queued.take());
        let stored = match submitted {
            Ok(s) => s.durable().await,
            Err(e) => Err(e),
        };
        after(links.prev_pushed.take()).await;
        let result = match stored {
            Ok(stored) => Ok(self.c2c_deliver(stored).await),
            Err(e) => Err(e),
        };
        drop(links.pushed.take());
        result
    }

    /// The first phase of a c2c: checks and screens the request and
    /// queues the append. Once this returned the message has its place in
    /// the store's order: a c2c submitted afterwards gets higher sequences
    /// on every timeline the two share (with a store that queues, see
    /// [`Store::submit_append`]). Nothing is acknowledged or pushed yet.
    async fn c2c_submit(
        &self,
        from: &UserKey,
        origin_conn: Option<u64>,
        req: C2cRequest,
    ) -> Result<C2cSubmitted, LogicError> {
        self.check_content(&req.client_msg_id, &req.kind, &req.body)?;
        let to = self.checked_peer(from, req.to)?;
        let mut timelines = vec![to.clone()];
        if *from != to {
            timelines.push(from.clone());
        }
        let mut message = Message {
            id: self.ids.next_id(),
            from: from.clone(),
            to,
            kind: req.kind,
            body: req.body,
            client_msg_id: req.client_msg_id,
            server_time_ms: crate::now_ms(),
            group: String::new(),
        };
        self.screen_message(&mut message).await?;
        let new = NewMessage {
            message,
            timelines: timelines.clone(),
            amends: None,
        };
        let pending = self.store.submit_append(new).await?;
        Ok(C2cSubmitted {
            pending,
            timelines,
            from: from.clone(),
            origin_conn,
        })
    }

    /// The last phase of a c2c, once the message is durable: pushes it and
    /// publishes its event. [`C2cOrder`] runs it in submit order for one
    /// sender, so each receiver's devices get their pushes in sequence order.
    async fn c2c_deliver(&self, stored: C2cStored) -> C2cResult {
        let C2cStored {
            appended,
            timelines,
            from,
            origin_conn,
        } = stored;
        // A duplicate is pushed again: if the first attempt stored but did not
        // push (a crash in between), this closes the gap; devices drop what
        // they already have by sequence. Its event is published again too,
        // with the same de-dup id, for the same reason.
        tokio::join!(
            self.fan_out(&timelines, &appended, origin_conn),
            self.publish_stored(&timelines, &appended),
        );
        let sender_seq = timelines
            .iter()
            .position(|u| *u == from)
            .and_then(|i| appended.seqs.get(i).copied())
            .unwrap_or(0);
        C2cResult {
            message: appended.message,
            sender_seq,
            duplicate: appended.duplicate,
        }
    }

    /// Checks a message's client id, type and body against the limits.
    pub(crate) fn check_content(
        &self,
        client_msg_id: &str,
        kind: &str,
        body: &[u8],
    ) -> Result<(), LogicError> {
        check_id("client_msg_id", client_msg_id)?;
        check_type(kind)?;
        if body.len() > self.config.max_body_bytes {
            return Err(LogicError::InvalidArgument(format!(
                "body is over {} bytes",
                self.config.max_body_bytes
            )));
        }
        Ok(())
    }

    /// Passes a message through the app's screen (before-send hook, word
    /// filter), which may replace its body or refuse it.
    pub(crate) async fn screen_message(&self, message: &mut Message) -> Result<(), LogicError> {
        let Some(screen) = &self.screen else {
            return Ok(());
        };
        match screen.screen(message).await? {
            Verdict::Allow => Ok(()),
            Verdict::Replace(body) => {
                if body.len() > self.config.max_body_bytes {
                    return Err(LogicError::Internal(format!(
                        "the before-send hook's replacement body is over {} bytes",
                        self.config.max_body_bytes
                    )));
                }
                message.body = body;
                Ok(())
            }
            Verdict::Reject(reason) => Err(LogicError::Rejected(reason)),
        }
    }

    /// Publishes `message.stored`, keyed by `user`.
    pub(crate) async fn publish_stored_event(
        &self,
        user: &UserKey,
        kind: &str,
        data: &MessageStoredData,
        dedupe: &str,
    ) {
        self.publish_event(events::MESSAGE_STORED, user, kind, data, dedupe)
            .await;
    }

    /// `message.stored` for the sender's app, and for the receiver's app
    /// when it is another one (each keyed by its own user, so each app sees
    /// its users' events in order).
    async fn publish_stored(&self, timelines: &[UserKey], appended: &Appended) {
        let m = &appended.message;
        let dedupe = format!("stored:{}", m.id);
        let data = MessageStoredData::new(m, timelines, &appended.seqs);
        self.publish_event(events::MESSAGE_STORED, &m.from, &m.kind, &data, &dedupe)
            .await;
        if m.to.app != m.from.app {
            self.publish_event(events::MESSAGE_STORED, &m.to, &m.kind, &data, &dedupe)
                .await;
        }
    }

    /// Pushes a c2c's entries to their users' online devices, all but the
    /// sender's own connection.
    async fn fan_out(&self, timelines: &[UserKey], appended: &Appended, origin_conn: Option<u64>) {
        // Delivery latency runs from here: the store has committed.
        let stored_at = std::time::Instant::now();
        if !appended.duplicate {
            self.stats.record_stored(1);
        }
        let delivery = Delivery {
            entries: timelines
                .iter()
                .zip(appended.entries())
                .map(|(user, entry)| (Target::User(user.clone()), entry))
                .collect(),
            skip_conn: origin_conn.map(|c| (self.config.node.clone(), c)),
        };
        let reach = self.deliver_stored(&delivery, appended.duplicate).await;
        if reach.iter().any(|r| r.devices > 0) {
            self.stats.record_delivery(stored_at);
        }
    }

    /// Sends a report to the business through the bus; returns once durable.
    pub async fn c2s(
        &self,
        from: &UserKey,
        client_msg_id: &str,
        kind: String,
        body: Bytes,
    ) -> Result<BusReceipt, LogicError> {
        self.check_content(client_msg_id, &kind, &body)?;
        let event = BusEvent {
            id: self.ids.next_id(),
            topic: events::C2S.into(),
            user: from.clone(),
            kind,
            body,
            time_ms: crate::now_ms(),
        };
        let receipt = self.bus.publish(event, client_msg_id).await?;
        if !receipt.duplicate {
            metrics::counter!(crate::stats::C2S).increment(1);
        }
        Ok(receipt)
    }

    /// The user's timeline entries after `since`, one page.
    pub async fn sync(
        &self,
        user: &UserKey,
        since: u64,
        limit: u32,
    ) -> Result<SyncPage, LogicError> {
        let mut page = self
            .store
            .entries_after(user, since, self.sync_limit(limit))
            .await?;
        self.resolve_amends(&mut page.entries).await?;
        Ok(SyncPage::from_page(page, since))
    }

    /// A sync page's size: what the client asked, at most the node's
    /// maximum (0: the maximum).
    pub(crate) fn sync_limit(&self, limit: u32) -> usize {
        match limit as usize {
            0 => self.config.max_sync_page,
            n => n.min(self.config.max_sync_page),
        }
    }

    /// Moves a device's cursor: everything up to `seq` was received.
    ///
    /// A cursor never passes the timeline head: an ack beyond it (a buggy or
    /// hostile client) is clamped to the head, or the device would see
    /// nothing to sync and never get the entries stored next. The rule lives
    /// here, not in a store, so every store and every path obeys it. Reading
    /// the head first is race-free: the head only grows, so the head read is
    /// never above the head at the moment the cursor moves.
    pub async fn ack(&self, user: &UserKey, device_id: &str, seq: u64) -> Result<(), LogicError> {
        let head = self.store.timeline_head(user).await?;
        Ok(self
            .store
            .advance_cursor(user, device_id, seq.min(head))
            .await?)
    }
}

fn presence_data(d: &DeviceSession, online_devices: usize, reason: &str) -> PresenceData {
    PresenceData {
        device_id: d.device_id.clone(),
        platform: d.platform.clone(),
        node: d.node.clone(),
        since_ms: d.since_ms,
        online_devices,
        reason: reason.into(),
    }
}
