//! Phone notifications: what the shop does with Switchboard's
//! `notification` events (docs/bus.md, "Offline notifications").
//!
//! Switchboard says *who* should be notified and *what about* (already
//! collapsed: one event for a burst of messages), with the badge. The shop
//! owns the rest: the devices' push tokens (its apps register them with the
//! shop, not with Switchboard), the wording, and the credentials of its
//! push provider. This example has no provider account, so [`Phones::send`]
//! is where APNs (`POST https://api.push.apple.com/3/device/<token>`, JWT
//! auth) or FCM (`POST https://fcm.googleapis.com/v1/projects/<p>/messages:send`,
//! OAuth) would be called; it logs the payload it would send and keeps the
//! last ones for `GET /notifications`.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Notifications kept for `GET /notifications`.
const KEEP: usize = 100;

/// A `notification` event's `data`. Unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Notification {
    pub to: UserRef,
    pub from: UserRef,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub preview: Option<String>,
    #[serde(default)]
    pub badge: Option<u64>,
    pub messages: u64,
    pub conversations: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UserRef {
    pub app: String,
    pub uid: String,
}

/// One notification as it would go to a phone.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    /// The shop's user whose devices are notified.
    pub uid: String,
    /// The provider's payload (APNs shape; FCM's `notification` and
    /// `apns` blocks carry the same).
    pub payload: Value,
}

/// The push provider's side of the shop.
#[derive(Debug, Default)]
pub struct Phones {
    sent: Mutex<VecDeque<Sent>>,
}

impl Phones {
    /// What the user's phone shows for `n`: the shop's own words, the
    /// preview only when Switchboard sent one (the app allows it), and the
    /// badge.
    pub fn payload(n: &Notification) -> Value {
        let who = if n.from.uid.is_empty() {
            "The shop".to_string()
        } else {
            n.from.uid.clone()
        };
        let title = match (n.messages, n.conversations) {
            (1, _) => format!("New message from {who}"),
            (m, 1) => format!("{m} new messages from {who}"),
            (m, c) => format!("{m} new messages in {c} chats"),
        };
        let body = match (&n.preview, n.kind.as_str()) {
            (Some(p), _) if n.messages == 1 => p.clone(),
            (_, crate::service::kinds::ORDER_STATUS) => "Your order has news".into(),
            _ => "Open the app to read it".into(),
        };
        let mut aps = json!({"alert": {"title": title, "body": body}, "sound": "default"});
        if let Some(badge) = n.badge {
            aps["badge"] = json!(badge);
        }
        // Notifications of one conversation stack together on the phone.
        let thread = match &n.group {
            Some(g) => format!("group:{g}"),
            None => format!("user:{}", n.from.uid),
        };
        aps["thread-id"] = json!(thread);
        json!({"aps": aps})
    }

    /// Sends `n` to the receiver's phones. A real shop looks up the
    /// receiver's push tokens here and calls its provider for each (an
    /// error to retry makes the webhook answer non-2xx, and the bus
    /// delivers the event again).
    pub fn send(&self, n: &Notification) {
        let sent = Sent {
            uid: n.to.uid.clone(),
            payload: Self::payload(n),
        };
        tracing::info!(uid = %sent.uid, payload = %sent.payload, "a push provider would be called here (APNs/FCM)");
        let mut all = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        all.push_back(sent);
        while all.len() > KEEP {
            all.pop_front();
        }
    }

    /// The last notifications sent, oldest first.
    pub fn recent(&self) -> Vec<Sent> {
        let all = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(messages: u64, conversations: u64, preview: Option<&str>) -> Notification {
        Notification {
            to: UserRef {
                app: "shop".into(),
                uid: "cust-1".into(),
            },
            from: UserRef {
                app: "shop".into(),
                uid: "agent-2".into(),
            },
            group: None,
            kind: "shop.chat.text".into(),
            preview: preview.map(str::to_string),
            badge: Some(4),
            messages,
            conversations,
        }
    }

    #[test]
    fn the_payload_says_how_many_and_shows_a_preview_only_when_sent() {
        let one = Phones::payload(&notification(1, 1, Some("hello")));
        assert_eq!(one["aps"]["alert"]["title"], "New message from agent-2");
        assert_eq!(one["aps"]["alert"]["body"], "hello");
        assert_eq!(one["aps"]["badge"], 4);
        assert_eq!(one["aps"]["thread-id"], "user:agent-2");
        let many = Phones::payload(&notification(5, 2, None));
        assert_eq!(many["aps"]["alert"]["title"], "5 new messages in 2 chats");
        assert_eq!(many["aps"]["alert"]["body"], "Open the app to read it");
    }
}
