//! Offline notifications: a `notification` event on the bus when stored
//! messages find none of a receiver's devices online, for the business to
//! hand to its push provider (APNs, FCM: Switchboard holds no push
//! credentials).
//!
//! The delivery path reports what each stored entry reached
//! (`Logic::notify_offline`): a user's entry that reached no device, or a
//! group entry (whose offline members are looked up in presence, for groups
//! up to the app's `group_max_members`). One task per node
//! ([`Logic::run_notifications`]) collects them per receiver: the first
//! message opens a window (the app's `window_ms`, default 3 s), and when it
//! ends one event stands for every message in it, with the receiver's total
//! unread count as the badge. A receiver who came online in the meantime
//! gets none: their devices have the messages.
//!
//! Notifications are a hint, not the message: the message is durable and
//! every device syncs it. So they are collected in memory, and a node that
//! crashes loses the windows it had open (a graceful stop publishes them,
//! [`Logic::flush_notifications`]); in a cluster each node collects the
//! messages it stored, so messages to one receiver from senders on two
//! nodes make one notification per node and window.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::auth::NotificationConfig;
use crate::events::{self, NotificationData, UserRef};
use crate::group::{GroupKey, member_key};
use crate::logic::Logic;
use crate::model::{Message, UserKey};
use crate::route::{Delivery, Reach, Target};

/// Most characters of a body in a notification's preview.
pub const PREVIEW_CHARS: usize = 100;

/// Observations waiting for the notification task; past it new ones are
/// dropped (and counted): a node that cannot keep up sheds hints, never
/// messages.
const QUEUE: usize = 65_536;

/// Group member lookups running at once.
const GROUP_LOOKUPS: usize = 4;

/// Notifications being made (presence, badge, publish) at once.
const FLUSHES: usize = 32;

/// Members read per store call when looking for a group's offline members.
const MEMBER_PAGE: usize = 1000;

/// Distinct conversations counted per notification, at most.
const MAX_CONVERSATIONS: usize = 1000;

/// What the delivery path reports to the notification task.
enum Observed {
    /// A stored message reached none of `receiver`'s devices.
    Offline {
        receiver: UserKey,
        message: Arc<Message>,
    },
    /// A stored group message: its offline members are to be found.
    Group {
        group: GroupKey,
        message: Arc<Message>,
        max_members: u64,
    },
    /// Publish every open window now (a graceful stop).
    Flush(oneshot::Sender<()>),
}

/// The node's side of the notification task: where the delivery path
/// reports, and the receiving end until the task takes it.
pub(crate) struct Notifier {
    tx: mpsc::Sender<Observed>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Observed>>>,
}

impl Default for Notifier {
    fn default() -> Notifier {
        let (tx, rx) = mpsc::channel(QUEUE);
        Notifier {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

impl Notifier {
    fn observe(&self, o: Observed) {
        if self.tx.try_send(o).is_err() {
            metrics::counter!(crate::stats::NOTIFICATIONS, "outcome" => "dropped").increment(1);
        }
    }
}

/// One receiver's open window.
struct Window {
    messages: u64,
    conversations: HashSet<Conversation>,
    first_time_ms: i64,
    last: Arc<Message>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Conversation {
    Peer(UserKey),
    Group(String),
}

/// The conversation `message` is in, seen by `receiver`.
fn conversation(receiver: &UserKey, message: &Message) -> Conversation {
    if !message.group.is_empty() {
        Conversation::Group(message.group.clone())
    } else if message.from == *receiver {
        Conversation::Peer(message.to.clone())
    } else {
        Conversation::Peer(message.from.clone())
    }
}

/// The start of a UTF-8 body, at most [`PREVIEW_CHARS`] characters.
fn preview(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    Some(text.chars().take(PREVIEW_CHARS).collect())
}

impl Logic {
    /// The app's notification settings, when `user`'s app makes
    /// notifications of messages of type `kind` (configured, and the bus
    /// takes the topic).
    fn notifications_for(&self, user: &UserKey, kind: &str) -> Option<&NotificationConfig> {
        let app = self.apps().get(&user.app)?;
        let config = app.notifications.as_ref()?;
        self.wants_kind(events::NOTIFICATION, user, kind)
            .then_some(config)
    }

    /// Reports a delivery of newly stored entries and what each reached:
    /// a user's app message that reached none of the user's devices (the
    /// sender's own entry aside), and every group app message, become
    /// notifications. Cheap and never blocking: the work is the
    /// notification task's.
    pub(crate) fn notify_offline(&self, d: &Delivery, reach: &[Reach]) {
        for ((target, entry), reach) in d.entries.iter().zip(reach) {
            let m = &entry.message;
            if entry.seq == 0 || !m.is_app_message() {
                continue;
            }
            match target {
                Target::User(user) => {
                    // A failed route says nothing of where the devices are.
                    if reach.devices > 0 || reach.error.is_some() || *user == m.from {
                        continue;
                    }
                    if self.notifications_for(user, &m.kind).is_some() {
                        self.notifier.observe(Observed::Offline {
                            receiver: user.clone(),
                            message: m.clone(),
                        });
                    }
                }
                Target::Group(group) => {
                    let member = member_key(group, "");
                    if let Some(config) = self.notifications_for(&member, &m.kind) {
                        self.notifier.observe(Observed::Group {
                            group: group.clone(),
                            message: m.clone(),
                            max_members: config.group_max_members(),
                        });
                    }
                }
            }
        }
    }

    /// Publishes every open notification window now, and returns once
    /// they are on the bus (or `within` passed): for a graceful stop, after
    /// the last connection closed.
    pub async fn flush_notifications(&self, within: Duration) {
        let (done, wait) = oneshot::channel();
        if self.notifier.tx.try_send(Observed::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(within, wait).await;
        }
    }

    /// The notification task: collects what `Logic::notify_offline`
    /// reports, per receiver, and publishes one `notification` per window.
    /// Runs until the node stops; a second call returns at once (the
    /// reports have one reader).
    pub async fn run_notifications(self: Arc<Self>) {
        let Some(mut rx) = self
            .notifier
            .rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let mut open: HashMap<UserKey, Window> = HashMap::new();
        let mut due: BinaryHeap<Reverse<(Instant, UserKey)>> = BinaryHeap::new();
        let lookups = Arc::new(Semaphore::new(GROUP_LOOKUPS));
        let flushes = Arc::new(Semaphore::new(FLUSHES));
        loop {
            let next = due.peek().map(|Reverse((at, _))| *at);
            let observed = tokio::select! {
                o = rx.recv() => match o {
                    Some(o) => Some(o),
                    None => return,
                },
                _ = sleep_until(next) => None,
            };
            match observed {
                Some(Observed::Offline { receiver, message }) => {
                    let Some(config) = self.notifications_for(&receiver, &message.kind) else {
                        continue;
                    };
                    let conv = conversation(&receiver, &message);
                    match open.get_mut(&receiver) {
                        Some(w) => {
                            w.messages += 1;
                            if w.conversations.len() < MAX_CONVERSATIONS {
                                w.conversations.insert(conv);
                            }
                            w.last = message;
                        }
                        None => {
                            let at = Instant::now() + config.window();
                            due.push(Reverse((at, receiver.clone())));
                            open.insert(
                                receiver,
                                Window {
                                    messages: 1,
                                    conversations: HashSet::from([conv]),
                                    first_time_ms: message.server_time_ms,
                                    last: message,
                                },
                            );
                        }
                    }
                }
                Some(Observed::Group {
                    group,
                    message,
                    max_members,
                }) => {
                    let Ok(permit) = lookups.clone().acquire_owned().await else {
                        return;
                    };
                    let this = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = this.group_offline(&group, &message, max_members).await {
                            tracing::warn!(error = %e, %group, "could not look for a group's offline members; no notifications for this post");
                        }
                        drop(permit);
                    });
                }
                Some(Observed::Flush(done)) => {
                    due.clear();
                    let all: Vec<_> = open
                        .drain()
                        .map(|(receiver, w)| self.notify(receiver, w))
                        .collect();
                    futures::future::join_all(all).await;
                    let _ = done.send(());
                }
                None => {
                    // One heap entry per open window (a stop's flush empties
                    // both), so a due entry always names an open window.
                    let now = Instant::now();
                    while due.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                        let Some(Reverse((_, receiver))) = due.pop() else {
                            break;
                        };
                        let Some(w) = open.remove(&receiver) else {
                            continue;
                        };
                        let Ok(permit) = flushes.clone().acquire_owned().await else {
                            return;
                        };
                        let this = self.clone();
                        tokio::spawn(async move {
                            this.notify(receiver, w).await;
                            drop(permit);
                        });
                    }
                }
            }
        }
    }

    /// Looks up which members of `group` have no device online (the sender
    /// aside) and reports each as offline for `message`.
    async fn group_offline(
        &self,
        group: &GroupKey,
        message: &Arc<Message>,
        max_members: u64,
    ) -> Result<(), crate::LogicError> {
        let store = self.store();
        let Some(g) = store.group(group).await? else {
            return Ok(());
        };
        if g.members > max_members {
            return Ok(());
        }
        let mut after: Option<String> = None;
        loop {
            let page = store.members(group, after.as_deref(), MEMBER_PAGE).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.uid.clone());
            let users: Vec<UserKey> = page
                .iter()
                .map(|m| member_key(group, &m.uid))
                .filter(|u| *u != message.from)
                .collect();
            let devices = self.presence().devices_many(&users).await?;
            for (user, devices) in users.into_iter().zip(devices) {
                if devices.is_empty() {
                    self.notifier.observe(Observed::Offline {
                        receiver: user,
                        message: message.clone(),
                    });
                }
            }
            if page.len() < MEMBER_PAGE {
                break;
            }
        }
        Ok(())
    }

    /// Publishes a window's notification, unless the receiver came online
    /// since (their devices have the messages).
    async fn notify(&self, receiver: UserKey, w: Window) {
        let m = &w.last;
        let Some(config) = self.notifications_for(&receiver, &m.kind) else {
            return;
        };
        match self.presence().devices(&receiver).await {
            Ok(d) if !d.is_empty() => {
                metrics::counter!(crate::stats::NOTIFICATIONS, "outcome" => "online").increment(1);
                return;
            }
            Ok(_) => {}
            // Presence down: better a notification too many than none.
            Err(e) => tracing::debug!(error = %e, "presence unavailable; notifying anyway"),
        }
        let badge = match self.conversation_view(&receiver).await {
            Ok(view) => Some(view.total_unread()),
            Err(e) => {
                tracing::warn!(error = %e, %receiver, "could not count unread messages for a notification's badge");
                None
            }
        };
        let (peer, group) = match conversation(&receiver, m) {
            Conversation::Peer(p) => (Some(UserRef::from(&p)), None),
            Conversation::Group(g) => (None, Some(g)),
        };
        let data = NotificationData {
            to: (&receiver).into(),
            from: (&m.from).into(),
            peer,
            group,
            kind: m.kind.clone(),
            msg_id: m.id.to_string(),
            server_time_ms: m.server_time_ms,
            preview: config.preview.then(|| preview(&m.body)).flatten(),
            badge,
            messages: w.messages,
            conversations: w.conversations.len() as u64,
            first_time_ms: w.first_time_ms,
        };
        self.publish_event(events::NOTIFICATION, &receiver, &m.kind, &data, "")
            .await;
        metrics::counter!(crate::stats::NOTIFICATIONS, "outcome" => "published").increment(1);
    }
}

/// Sleeps until `at`, or forever when there is nothing due.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_is_utf8_text_cut_at_a_character() {
        assert_eq!(preview(b"hello").as_deref(), Some("hello"));
        assert_eq!(preview(&[0xff, 0x00]), None);
        let long = "é".repeat(PREVIEW_CHARS + 5);
        let p = preview(long.as_bytes()).unwrap();
        assert_eq!(p.chars().count(), PREVIEW_CHARS);
    }

    #[test]
    fn a_conversation_is_the_group_or_the_other_party() {
        let alice = UserKey::new("demo", "alice");
        let bob = UserKey::new("demo", "bob");
        let mut m = Message {
            id: 1,
            from: alice.clone(),
            to: bob.clone(),
            kind: "text".into(),
            body: bytes::Bytes::new(),
            client_msg_id: "c".into(),
            server_time_ms: 0,
            group: String::new(),
        };
        assert!(conversation(&bob, &m) == Conversation::Peer(alice.clone()));
        assert!(conversation(&alice, &m) == Conversation::Peer(bob.clone()));
        m.group = "g1".into();
        assert!(conversation(&bob, &m) == Conversation::Group("g1".into()));
    }
}
