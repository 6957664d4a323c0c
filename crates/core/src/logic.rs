//! The logic: `c2c`, `c2s`, `sync`, cursors and logins, written once against
//! the backend traits. Stateless besides its backends, so any node can serve
//! any request.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use switchboard_proto::code;

use crate::auth::Apps;
use crate::bus::{Bus, BusEvent, BusReceipt};
use crate::error::LogicError;
use crate::events::{self, MessageStoredData, PresenceData};
use crate::hooks::{Screen, Verdict};
use crate::id::IdGenerator;
use crate::model::{Entry, Message, NewMessage, UserKey};
use crate::presence::{DeviceSession, Presence};
use crate::route::{Delivery, Route};
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

const MAX_ID_LEN: usize = 128;
const MAX_TYPE_LEN: usize = 64;

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

/// A c2c whose append is queued in the store ([`Logic::c2c_submit`]).
#[derive(Debug)]
pub struct C2cSubmitted {
    pending: PendingAppend,
    timelines: Vec<UserKey>,
    from: UserKey,
    origin_conn: Option<u64>,
}

impl C2cSubmitted {
    /// Waits until the message and all its timeline entries are durable.
    pub async fn durable(self) -> Result<C2cStored, LogicError> {
        let appended = self.pending.await?;
        Ok(C2cStored {
            appended,
            timelines: self.timelines,
            from: self.from,
            origin_conn: self.origin_conn,
        })
    }
}

/// A durable c2c, not pushed yet ([`Logic::c2c_deliver`] pushes it).
#[derive(Debug)]
pub struct C2cStored {
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
    /// Messages stored and delivery latency, for operator stats and metrics.
    pub(crate) stats: crate::stats::NodeStats,
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
            stats: crate::stats::NodeStats::default(),
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

    fn wants(&self, topic: &str, user: &UserKey) -> bool {
        self.wants_kind(topic, user, "")
    }

    /// Whether an event goes to the bus: always, unless the bus takes only
    /// what a webhook subscribed to.
    fn wants_kind(&self, topic: &str, user: &UserKey, kind: &str) -> bool {
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

    /// Stores a message from `from` durably (de-duplicated on its
    /// client_msg_id), then pushes it to the receiver's devices and the
    /// sender's other devices (all but `origin_conn`).
    pub async fn c2c(
        &self,
        from: &UserKey,
        origin_conn: Option<u64>,
        req: C2cRequest,
    ) -> Result<C2cResult, LogicError> {
        let submitted = self.c2c_submit(from, origin_conn, req).await?;
        let stored = submitted.durable().await?;
        Ok(self.c2c_deliver(stored).await)
    }

    /// The first phase of [`Logic::c2c`]: checks and screens the request and
    /// queues the append. Once this returned the message has its place in
    /// the store's order: a c2c submitted afterwards gets higher sequences
    /// on every timeline the two share (with a store that queues, see
    /// [`Store::submit_append`]). Nothing is acknowledged or pushed yet.
    pub async fn c2c_submit(
        &self,
        from: &UserKey,
        origin_conn: Option<u64>,
        req: C2cRequest,
    ) -> Result<C2cSubmitted, LogicError> {
        let mut to = req.to;
        if to.app.is_empty() {
            to.app = from.app.clone();
        }
        self.check_content(&req.client_msg_id, &req.kind, &req.body)?;
        check_id("to.uid", &to.uid)?;
        if self.apps.get(&to.app).is_none() {
            return Err(LogicError::InvalidArgument(format!(
                "unknown app {}",
                to.app
            )));
        }
        if !self.apps.may_message(&from.app, &to.app) {
            return Err(LogicError::CrossAppForbidden {
                from: from.app.clone(),
                to: to.app.clone(),
            });
        }
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
        };
        let pending = self.store.submit_append(new).await?;
        Ok(C2cSubmitted {
            pending,
            timelines,
            from: from.clone(),
            origin_conn,
        })
    }

    /// The last phase of [`Logic::c2c`], once the message is durable: pushes
    /// it and publishes its event. Callers that pipeline c2c of one sender
    /// call this in submit order, one after the other, so each receiver's
    /// devices get their pushes in sequence order.
    pub async fn c2c_deliver(&self, stored: C2cStored) -> C2cResult {
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
            self.fan_out(&timelines, &appended, &from, origin_conn),
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
        if kind.len() > MAX_TYPE_LEN {
            return Err(LogicError::InvalidArgument(format!(
                "type is over {MAX_TYPE_LEN} bytes"
            )));
        }
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

    /// Pushes each entry to its user's online devices, wherever they are.
    /// Failures are logged, not returned: the message is durable, and a
    /// device that missed the push gets it through `sync`.
    async fn fan_out(
        &self,
        timelines: &[UserKey],
        appended: &Appended,
        from: &UserKey,
        origin_conn: Option<u64>,
    ) {
        // Delivery latency runs from here: the store has committed.
        let stored_at = std::time::Instant::now();
        if !appended.duplicate {
            self.stats.record_stored(1);
        }
        for (user, entry) in timelines.iter().zip(appended.entries()) {
            let devices = match self.presence.devices(user).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, %user, "presence lookup failed; devices will sync");
                    continue;
                }
            };
            let nodes: BTreeSet<&str> = devices.iter().map(|d| d.node.as_str()).collect();
            for node in nodes {
                let skip_conn = if user == from && node == self.config.node {
                    origin_conn
                } else {
                    None
                };
                let delivery = Delivery {
                    user: user.clone(),
                    entry: entry.clone(),
                    skip_conn,
                };
                match self.route.deliver(node, delivery).await {
                    Ok(_) => self.stats.record_delivery(stored_at),
                    Err(e) => {
                        tracing::warn!(error = %e, %user, node, "route failed; devices will sync")
                    }
                }
            }
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
        let page = self
            .store
            .entries_after(user, since, self.sync_limit(limit))
            .await?;
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

pub(crate) fn check_id(field: &str, value: &str) -> Result<(), LogicError> {
    if value.is_empty() || value.len() > MAX_ID_LEN {
        return Err(LogicError::InvalidArgument(format!(
            "{field} must be 1 to {MAX_ID_LEN} bytes"
        )));
    }
    Ok(())
}
