//! What the HTTP API adds to the logic: `s2c` pushes from business servers
//! (stored or online-only), presence of many users, conversation history,
//! kicking a user's devices, and the node's counters. Written against the
//! backend traits like the rest of [`Logic`]; the API crate only maps HTTP
//! to these calls. (Sending as a user is [`Logic::c2c`] with no origin
//! connection; a user's timeline is [`Logic::sync`].)

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;

use switchboard_proto::code;

use crate::error::LogicError;
use crate::logic::Logic;
use crate::model::{Entry, Message, NewMessage, UserKey};
use crate::presence::DeviceSession;
use crate::route::{Delivery, Target};
use crate::stats::NodeStats;
use switchboard_proto::limits::{check_id, check_type};

/// The uid of an app's system sender: the `from` of every s2c message is
/// `{app, uid: ""}`, which no logged-in user can be (a token's `sub` is 1 to
/// 128 bytes). An online-only message's `to` carries the same empty uid: it
/// is one message shared by every receiver.
pub const SYSTEM_UID: &str = "";

/// Stored s2c appends in flight at once for one request: enough to fill the
/// store's group commits, bounded so one big push can't monopolise the writer.
const S2C_STORE_CONCURRENCY: usize = 256;

/// How an s2c push is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S2cMode {
    /// Stored on each receiver's timeline (acknowledged, synced, retried),
    /// then pushed to the devices online now.
    Stored,
    /// Pushed with seq 0 to the devices online now; nothing is stored, a
    /// device offline now never gets it.
    OnlineOnly,
}

/// One receiver's outcome of an s2c push.
#[derive(Debug)]
pub struct S2cOutcome {
    pub user: UserKey,
    /// The entry's sequence on the receiver's timeline (stored mode, success).
    pub seq: Option<u64>,
    /// The message id (online-only: the same id for every receiver).
    pub msg_id: u64,
    /// Devices the push was handed to: exact for devices on this node; for
    /// devices on other nodes, those presence listed there when the route
    /// accepted the delivery.
    pub devices_reached: usize,
    /// Stored mode: this `client_msg_id` was already stored for this user;
    /// `seq` and `msg_id` are the first push's.
    pub duplicate: bool,
    /// Why this receiver's push failed (the store or route was unavailable).
    /// Nothing is stored for this receiver; resending with the same
    /// `client_msg_id` is safe.
    pub error: Option<LogicError>,
}

/// A page of a conversation, newest first.
#[derive(Debug, Clone)]
pub struct ConversationPage {
    pub messages: Vec<Arc<Message>>,
    /// Pass as `before_msg_id` for the next (older) page; `None` at the start.
    pub next_before: Option<u64>,
}

impl Logic {
    /// The node's counters (messages stored, online-only messages).
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// The system sender of `app` (see [`SYSTEM_UID`]).
    pub fn system_sender(app: &str) -> UserKey {
        UserKey::new(app, SYSTEM_UID)
    }

    /// Pushes a message from `app`'s system sender to each of `targets`
    /// (users of `app`; duplicates are pushed once).
    ///
    /// Every argument is checked before anything is stored or pushed: a bad
    /// target, type or body fails the whole request with nothing done.
    /// After that each receiver has its own [`S2cOutcome`], in the order of
    /// the (de-duplicated) targets: a backend failure affects only the
    /// receivers it hit.
    ///
    /// Stored mode de-duplicates on `client_msg_id` per receiver: the
    /// receiver's message carries `client_msg_id` as
    /// `"{len}:{client_msg_id}:{uid}"` (the sender is shared by every push of
    /// the app, so the id is made unique per receiver), and a resend of the
    /// same request returns the first outcome with `duplicate = true`.
    pub async fn s2c(
        &self,
        app: &str,
        targets: &[UserKey],
        kind: String,
        body: Bytes,
        mode: S2cMode,
        client_msg_id: Option<String>,
    ) -> Result<Vec<S2cOutcome>, LogicError> {
        if self.apps().get(app).is_none() {
            return Err(LogicError::UnknownApp(app.into()));
        }
        if targets.is_empty() {
            return Err(LogicError::InvalidArgument(
                "to must name at least one user".into(),
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(targets.len());
        let mut duplicates = false;
        for t in targets {
            if t.app != app {
                return Err(LogicError::InvalidArgument(format!(
                    "target {t} is not a user of app {app}"
                )));
            }
            check_id("to[].uid", &t.uid)?;
            duplicates |= !seen.insert(t);
        }
        check_type(&kind)?;
        self.check_body(&body)?;
        if let Some(id) = &client_msg_id {
            check_id("client_msg_id", id)?;
        }
        // Copied only when there is something to drop (the usual list has no
        // duplicates, and a fan-out may name many thousands of users).
        let targets: std::borrow::Cow<'_, [UserKey]> = if duplicates {
            let mut seen = std::collections::HashSet::with_capacity(targets.len());
            let unique: Vec<UserKey> = targets
                .iter()
                .filter(|t| seen.insert(*t))
                .cloned()
                .collect();
            unique.into()
        } else {
            targets.into()
        };
        match mode {
            S2cMode::Stored => Ok(self
                .s2c_stored(app, targets.into_owned(), kind, body, client_msg_id)
                .await),
            S2cMode::OnlineOnly => {
                self.s2c_online(app, targets.into_owned(), kind, body, client_msg_id)
                    .await
            }
        }
    }

    async fn s2c_stored(
        &self,
        app: &str,
        targets: Vec<UserKey>,
        kind: String,
        body: Bytes,
        client_msg_id: Option<String>,
    ) -> Vec<S2cOutcome> {
        let from = Logic::system_sender(app);
        let pushes = targets.into_iter().map(|user| {
            let client_msg_id = client_msg_id
                .as_deref()
                .map(|id| format!("{}:{id}:{}", id.len(), user.uid))
                .unwrap_or_default();
            let message = Message {
                id: self.next_id(),
                from: from.clone(),
                to: user.clone(),
                kind: kind.clone(),
                body: body.clone(),
                client_msg_id,
                server_time_ms: crate::now_ms(),
                group: String::new(),
            };
            self.s2c_store_one(user, message)
        });
        // `buffered` keeps the outcomes in the order of the targets.
        futures::stream::iter(pushes)
            .buffered(S2C_STORE_CONCURRENCY)
            .collect()
            .await
    }

    async fn s2c_store_one(&self, user: UserKey, message: Message) -> S2cOutcome {
        let msg_id = message.id;
        let new = NewMessage {
            message,
            timelines: vec![user.clone()],
            amends: None,
        };
        let appended = match self.store().append(new).await {
            Ok(a) => a,
            Err(e) => {
                return S2cOutcome {
                    user,
                    seq: None,
                    msg_id,
                    devices_reached: 0,
                    duplicate: false,
                    error: Some(e.into()),
                };
            }
        };
        let stored_at = Instant::now();
        if !appended.duplicate {
            self.stats.record_stored(1);
        }
        let seq = appended.seqs.first().copied().unwrap_or(0);
        let entry = Entry {
            seq,
            message: appended.message.clone(),
        };
        // Pushed again for a duplicate, like c2c: it closes the gap if the
        // first attempt stored but did not push; devices drop what they have.
        let delivery = Delivery {
            entries: vec![(Target::User(user.clone()), entry)],
            skip_conn: None,
        };
        let reach = self.deliver_stored(&delivery, appended.duplicate).await;
        let devices_reached = reach.first().map_or(0, |r| r.devices);
        if devices_reached > 0 {
            self.stats.record_delivery(stored_at);
        }
        S2cOutcome {
            user,
            seq: Some(seq),
            msg_id: appended.message.id,
            devices_reached,
            duplicate: appended.duplicate,
            error: None,
        }
    }

    /// One message, seq 0, pushed to the devices online now: one delivery
    /// of the same entry to every target, so its frame is encoded once.
    async fn s2c_online(
        &self,
        app: &str,
        targets: Vec<UserKey>,
        kind: String,
        body: Bytes,
        client_msg_id: Option<String>,
    ) -> Result<Vec<S2cOutcome>, LogicError> {
        let message = Arc::new(Message {
            id: self.next_id(),
            from: Logic::system_sender(app),
            to: UserKey::new(app, SYSTEM_UID),
            kind,
            body,
            client_msg_id: client_msg_id.unwrap_or_default(),
            server_time_ms: crate::now_ms(),
            group: String::new(),
        });
        let msg_id = message.id;
        let entry = Entry { seq: 0, message };
        let delivery = Delivery {
            entries: targets
                .into_iter()
                .map(|u| (Target::User(u), entry.clone()))
                .collect(),
            skip_conn: None,
        };
        // Nothing was pushed yet when the route fails as a whole (presence
        // unavailable): the request fails.
        let reach = self.try_deliver(&delivery).await?;
        self.stats.record_online_message();
        Ok(delivery
            .entries
            .into_iter()
            .zip(reach)
            .filter_map(|((target, _), reach)| match target {
                Target::User(user) => Some(S2cOutcome {
                    user,
                    seq: None,
                    msg_id,
                    devices_reached: reach.devices,
                    duplicate: false,
                    // A user reached on one node but not on another still got it.
                    error: reach
                        .error
                        .filter(|_| reach.devices == 0)
                        .map(LogicError::Route),
                }),
                Target::Group(_) => None,
            })
            .collect())
    }

    /// The online devices of each user, aligned with `users`. A user the
    /// platform has never seen is simply offline (no devices).
    pub async fn presence_of(
        &self,
        users: &[UserKey],
    ) -> Result<Vec<Vec<DeviceSession>>, LogicError> {
        for u in users {
            if self.apps().get(&u.app).is_none() {
                return Err(LogicError::UnknownApp(u.app.clone()));
            }
            check_id("users[]", &u.uid)?;
        }
        Ok(self.presence().devices_many(users).await?)
    }

    /// A page of the messages between `a` and `b` (either direction),
    /// newest first, older than `before_msg_id` when given. `limit` 0 or
    /// above the node's `max_sync_page` is the maximum.
    pub async fn conversation(
        &self,
        a: &UserKey,
        b: &UserKey,
        before_msg_id: Option<u64>,
        limit: usize,
    ) -> Result<ConversationPage, LogicError> {
        for u in [a, b] {
            if self.apps().get(&u.app).is_none() {
                return Err(LogicError::UnknownApp(u.app.clone()));
            }
            check_id("uid", &u.uid)?;
        }
        let max = self.config().max_sync_page.max(1);
        let limit = if limit == 0 { max } else { limit.min(max) };
        // One more than asked tells whether an older page exists. Read
        // receipts share the pair's index but are not history: skipped,
        // reading on until the page is full or the history ends.
        let mut messages = Vec::with_capacity(limit + 1);
        let mut before = before_msg_id;
        loop {
            let batch = self.store().conversation(a, b, before, limit + 1).await?;
            let exhausted = batch.len() <= limit;
            before = batch.last().map(|m| m.id);
            messages.extend(batch.into_iter().filter(|m| m.is_app_message()));
            if exhausted || messages.len() > limit {
                break;
            }
        }
        let more = messages.len() > limit;
        messages.truncate(limit);
        let next_before = more.then(|| messages.last().map(|m| m.id)).flatten();
        Ok(ConversationPage {
            messages,
            next_before,
        })
    }

    /// Refuses the user's login tokens issued before `issued_before`
    /// (seconds since the epoch; tokens with a later or equal `iat` still
    /// log in), durably and for every node, then kicks every device of the
    /// user with `KICK_TOKEN_REVOKED`. Returns the revocation time in force
    /// (a later earlier revocation keeps it) and how many devices were told.
    pub async fn revoke_tokens(
        &self,
        user: &UserKey,
        issued_before: u64,
    ) -> Result<(u64, usize), LogicError> {
        if self.apps().get(&user.app).is_none() {
            return Err(LogicError::UnknownApp(user.app.clone()));
        }
        check_id("uid", &user.uid)?;
        // Stored before the kick: a kicked device that reconnects at once
        // with its old token finds the revocation.
        let in_force = self.store().revoke_tokens(user, issued_before).await?;
        let kicked = self.kick_user(user, code::KICK_TOKEN_REVOKED).await?;
        Ok((in_force, kicked))
    }

    /// Kicks every online device of `user`, on any node, with `code` (the
    /// SDK reports `Kicked{code}`); returns how many devices were told.
    pub async fn kick_user(&self, user: &UserKey, code: u32) -> Result<usize, LogicError> {
        if self.apps().get(&user.app).is_none() {
            return Err(LogicError::UnknownApp(user.app.clone()));
        }
        check_id("uid", &user.uid)?;
        let devices = self.presence().devices(user).await?;
        let mut kicked = 0;
        for d in &devices {
            if self.route().kick(&d.node, user, d.conn_id, code).await? {
                kicked += 1;
            }
        }
        Ok(kicked)
    }

    pub(crate) fn check_body(&self, body: &Bytes) -> Result<(), LogicError> {
        let max = self.config().max_body_bytes;
        if body.len() > max {
            return Err(LogicError::InvalidArgument(format!(
                "body is over {max} bytes"
            )));
        }
        Ok(())
    }
}

/// Refuses a verified token that the user's revocation covers: issued
/// (`iat`) before the revocation time, or without `iat` at all once the
/// user has one (its age cannot be told).
pub(crate) async fn check_revocation(
    store: &dyn crate::store::Store,
    token: &crate::auth::VerifiedToken,
) -> Result<(), LogicError> {
    let Some(before) = store.tokens_revoked_before(&token.user).await? else {
        return Ok(());
    };
    match token.issued_at {
        None => Err(LogicError::TokenInvalid(format!(
            "the tokens of this user issued before {before} were revoked, and this \
             token has no iat claim"
        ))),
        Some(iat) if iat < before as f64 => Err(LogicError::TokenInvalid(format!(
            "revoked: issued at {iat}, before {before} (the user's tokens were revoked)"
        ))),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AppConfig, Apps};
    use crate::bus::OutboxBus;
    use crate::hub::{ConnHandle, Hub, OutboundRx, outbound_queue};
    use crate::logic::LogicConfig;
    use crate::presence::HubPresence;
    use crate::route::LocalRoute;

    /// A store that only refuses: online-only pushes must never touch it.
    struct NoStore;

    #[async_trait::async_trait]
    impl crate::store::Store for NoStore {
        async fn append(
            &self,
            _: NewMessage,
        ) -> Result<crate::store::Appended, crate::store::StoreError> {
            Err(crate::store::StoreError::Unavailable("no store".into()))
        }
        async fn entries_after(
            &self,
            _: &UserKey,
            _: u64,
            _: usize,
        ) -> Result<crate::store::Page, crate::store::StoreError> {
            Err(crate::store::StoreError::Unavailable("no store".into()))
        }
        async fn conversation(
            &self,
            _: &UserKey,
            _: &UserKey,
            _: Option<u64>,
            _: usize,
        ) -> Result<Vec<Arc<Message>>, crate::store::StoreError> {
            Err(crate::store::StoreError::Unavailable("no store".into()))
        }
        async fn timeline_head(&self, _: &UserKey) -> Result<u64, crate::store::StoreError> {
            Ok(0)
        }
        async fn revoke_tokens(
            &self,
            _: &UserKey,
            _: u64,
        ) -> Result<u64, crate::store::StoreError> {
            Err(crate::store::StoreError::Unavailable("no store".into()))
        }
        async fn tokens_revoked_before(
            &self,
            _: &UserKey,
        ) -> Result<Option<u64>, crate::store::StoreError> {
            Ok(None)
        }
        async fn message(&self, _: u64) -> Result<Option<Message>, crate::store::StoreError> {
            Ok(None)
        }
        async fn conversation_view(
            &self,
            _: &UserKey,
        ) -> Result<Option<Bytes>, crate::store::StoreError> {
            Ok(None)
        }
        async fn put_conversation_view(
            &self,
            _: &UserKey,
            _: Bytes,
        ) -> Result<(), crate::store::StoreError> {
            Ok(())
        }
        async fn cursor(&self, _: &UserKey, _: &str) -> Result<u64, crate::store::StoreError> {
            Ok(0)
        }
        async fn advance_cursor(
            &self,
            _: &UserKey,
            _: &str,
            _: u64,
        ) -> Result<(), crate::store::StoreError> {
            Ok(())
        }
        async fn outbox_append(
            &self,
            _: &crate::bus::BusEvent,
            _: &str,
        ) -> Result<crate::store::OutboxReceipt, crate::store::StoreError> {
            Err(crate::store::StoreError::Unavailable("no store".into()))
        }
        // Groups: this store keeps none (every group is unknown).
        async fn put_group(
            &self,
            _: &crate::group::GroupSpec,
        ) -> Result<(crate::group::Group, bool), crate::store::StoreError> {
            Err(crate::store::StoreError::Unavailable("no store".into()))
        }
        async fn group(
            &self,
            _: &crate::group::GroupKey,
        ) -> Result<Option<crate::group::Group>, crate::store::StoreError> {
            Ok(None)
        }
        async fn delete_group(
            &self,
            _: &crate::group::GroupKey,
        ) -> Result<bool, crate::store::StoreError> {
            Ok(false)
        }
        async fn add_members(
            &self,
            _: &crate::group::GroupKey,
            _: &[(String, crate::group::Role)],
            _: u64,
        ) -> Result<crate::group::MembersChanged, crate::store::StoreError> {
            Err(crate::group::GroupRefusal::NotFound.into())
        }
        async fn remove_members(
            &self,
            _: &crate::group::GroupKey,
            _: &[String],
        ) -> Result<crate::group::MembersChanged, crate::store::StoreError> {
            Err(crate::group::GroupRefusal::NotFound.into())
        }
        async fn member(
            &self,
            _: &crate::group::GroupKey,
            _: &str,
        ) -> Result<Option<crate::group::Member>, crate::store::StoreError> {
            Ok(None)
        }
        async fn members(
            &self,
            _: &crate::group::GroupKey,
            _: Option<&str>,
            _: usize,
        ) -> Result<Vec<crate::group::Member>, crate::store::StoreError> {
            Ok(Vec::new())
        }
        async fn user_groups(
            &self,
            _: &UserKey,
            _: Option<&str>,
            _: usize,
        ) -> Result<Vec<String>, crate::store::StoreError> {
            Ok(Vec::new())
        }
        async fn group_states(
            &self,
            _: &UserKey,
            _: &str,
        ) -> Result<Vec<crate::group::GroupState>, crate::store::StoreError> {
            Ok(Vec::new())
        }
        async fn group_append(
            &self,
            _: crate::group::NewGroupMessage,
        ) -> Result<crate::store::Appended, crate::store::StoreError> {
            Err(crate::group::GroupRefusal::NotFound.into())
        }
        async fn group_entries_after(
            &self,
            _: &crate::group::GroupKey,
            _: u64,
            _: usize,
        ) -> Result<crate::store::Page, crate::store::StoreError> {
            Ok(crate::store::Page::default())
        }
        async fn advance_group_cursor(
            &self,
            _: &UserKey,
            _: &str,
            _: &crate::group::GroupKey,
            _: u64,
        ) -> Result<(), crate::store::StoreError> {
            Ok(())
        }
        async fn ping(&self) -> Result<(), crate::store::StoreError> {
            Ok(())
        }
        async fn close(&self) -> Result<(), crate::store::StoreError> {
            Ok(())
        }
    }

    /// A logic on one node: the hub is the whole of presence.
    fn logic() -> (Logic, Arc<Hub>) {
        let apps = Apps::new([AppConfig {
            name: "demo".into(),
            jwt_secret: Some("0123456789abcdef0123".into()),
            ..Default::default()
        }])
        .expect("apps");
        let hub = Arc::new(Hub::new());
        let store: Arc<dyn crate::store::Store> = Arc::new(NoStore);
        let logic = Logic::new(
            LogicConfig::default(),
            apps,
            store.clone(),
            Arc::new(HubPresence::new(hub.clone(), "local")),
            Arc::new(LocalRoute::new(hub.clone())),
            Arc::new(OutboxBus::new(store)),
        );
        (logic, hub)
    }

    fn online(hub: &Hub, uid: &str, conn_id: u64) -> OutboundRx {
        let (tx, rx) = outbound_queue(8);
        let user = UserKey::new("demo", uid);
        let handle = ConnHandle::new(conn_id, user, format!("d{conn_id}"), "test".into(), tx);
        hub.register(Arc::new(handle));
        rx
    }

    #[tokio::test]
    async fn online_only_shares_one_frame_and_counts_devices() {
        let (logic, hub) = logic();
        let mut a1 = online(&hub, "a", 1);
        let mut a2 = online(&hub, "a", 2);
        let mut b = online(&hub, "b", 3);
        let users = [
            UserKey::new("demo", "a"),
            UserKey::new("demo", "b"),
            UserKey::new("demo", "offline"),
            UserKey::new("demo", "a"),
        ];
        let out = logic
            .s2c(
                "demo",
                &users,
                "offer".into(),
                Bytes::from_static(b"{}"),
                S2cMode::OnlineOnly,
                None,
            )
            .await
            .expect("push");
        let reached: Vec<_> = out
            .iter()
            .map(|o| (o.user.uid.as_str(), o.devices_reached))
            .collect();
        assert_eq!(reached, [("a", 2), ("b", 1), ("offline", 0)]);
        assert!(out.iter().all(|o| o.error.is_none() && o.seq.is_none()));
        let crate::hub::Outbound::Push { seq, frame, group } = a1.try_recv().expect("a1");
        assert_eq!((seq, group), (0, None));
        for rx in [&mut a2, &mut b] {
            let crate::hub::Outbound::Push { frame: f, .. } = rx.try_recv().expect("push");
            // The same bytes, not a copy: one encoding for the whole fan-out.
            assert_eq!(f.as_ptr(), frame.as_ptr());
        }
        assert_eq!(hub.push_count(), 3);
    }

    /// The cost of the logic and hub side of an online-only fan-out to
    /// 19,000 users (no sockets): `cargo test --release -p switchboard-core
    /// --lib fan_out_rate -- --ignored --nocapture`. A figure, not a check.
    #[tokio::test]
    #[ignore = "measurement; run in release"]
    async fn fan_out_rate() {
        const USERS: usize = 19_000;
        let (logic, hub) = logic();
        let mut rxs = Vec::with_capacity(USERS);
        let mut users = Vec::with_capacity(USERS);
        for i in 0..USERS {
            let uid = format!("courier-{i}");
            rxs.push(online(&hub, &uid, i as u64 + 1));
            users.push(UserKey::new("demo", uid));
        }
        let rounds = 5;
        let start = Instant::now();
        let mut in_push = std::time::Duration::ZERO;
        for _ in 0..rounds {
            let t = Instant::now();
            let out = logic
                .s2c(
                    "demo",
                    &users,
                    "offer".into(),
                    Bytes::from_static(b"{\"order\":42}"),
                    S2cMode::OnlineOnly,
                    None,
                )
                .await
                .expect("push");
            in_push += t.elapsed();
            assert!(out.iter().all(|o| o.devices_reached == 1));
            for rx in rxs.iter_mut() {
                while rx.try_recv().is_ok() {}
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "online-only fan-out: {} deliveries in {secs:.3} s = {:.0} deliveries/s (queue drain included); \
             the push alone: {:.0} deliveries/s",
            USERS * rounds,
            (USERS * rounds) as f64 / secs,
            (USERS * rounds) as f64 / in_push.as_secs_f64()
        );
    }

    #[tokio::test]
    async fn bad_input_does_nothing() {
        let (logic, hub) = logic();
        let mut a = online(&hub, "a", 1);
        let bad = [UserKey::new("demo", "a"), UserKey::new("demo", "")];
        let r = logic
            .s2c(
                "demo",
                &bad,
                "t".into(),
                Bytes::new(),
                S2cMode::OnlineOnly,
                None,
            )
            .await;
        assert!(matches!(r, Err(LogicError::InvalidArgument(_))), "{r:?}");
        let r = logic
            .s2c(
                "nope",
                &[UserKey::new("nope", "a")],
                "t".into(),
                Bytes::new(),
                S2cMode::Stored,
                None,
            )
            .await;
        assert!(matches!(r, Err(LogicError::UnknownApp(_))), "{r:?}");
        assert!(a.try_recv().is_err(), "nothing was pushed");
    }

    #[tokio::test]
    async fn a_store_failure_is_a_per_user_outcome() {
        let (logic, _hub) = logic();
        let out = logic
            .s2c(
                "demo",
                &[UserKey::new("demo", "a"), UserKey::new("demo", "b")],
                "t".into(),
                Bytes::new(),
                S2cMode::Stored,
                Some("req-1".into()),
            )
            .await
            .expect("validated");
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .all(|o| matches!(o.error, Some(LogicError::Store(_))) && o.seq.is_none())
        );
    }
}
