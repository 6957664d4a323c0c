//! Recall and edit: a message's sender (or the business, over HTTP) takes
//! a message back or changes its body.
//!
//! The message keeps its id and its place on every timeline; its stored
//! content is replaced (a recall keeps only the app's type, so the body is
//! gone from storage). Every party learns it from an *amend notice*: a new
//! entry ([`AMEND_KIND`]) on each timeline that holds the message, stored
//! in the same atomic step as the replacement, pushed and synced like any
//! entry, so devices apply it in timeline order, online or offline. The
//! notice stores no content of its own: whenever it is read, it carries the
//! message as it is then ([`Logic::resolve_amends`]), so a later recall
//! also takes back what an earlier edit's notice showed.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use switchboard_proto::limits::check_id;

use crate::error::LogicError;
use crate::events::{self, AmendedData};
use crate::group::{GroupKey, NewGroupMessage};
use crate::logic::Logic;
use crate::model::{AMEND_KIND, Amendment, Content, Entry, Message, NewMessage, UserKey};
use crate::route::{Delivery, Target};

/// What to do to the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmendAction {
    /// Take it back: its body is removed.
    Recall,
    /// Replace its body (the type stays).
    Edit(Bytes),
}

/// Who amends: a user (only their own messages, within the app's
/// windows) or the business of an app (any message of the app, recall
/// only, at any time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Amender {
    User(UserKey),
    App(String),
}

/// A recall or edit request.
#[derive(Debug, Clone)]
pub struct AmendRequest {
    /// Idempotency: a resend with the same id answers the first result.
    pub client_msg_id: String,
    pub msg_id: u64,
    pub action: AmendAction,
}

/// A stored recall or edit.
#[derive(Debug, Clone)]
pub struct Amended {
    /// The notice's message id.
    pub msg_id: u64,
    /// The notice's sequence: on the amender's own timeline for a 1:1
    /// message (on the receiver's when the business amends), on the
    /// group's timeline for a group message.
    pub seq: u64,
    pub duplicate: bool,
    /// The message as it is now.
    pub message: Arc<Message>,
}

impl Logic {
    /// Recalls or edits message `req.msg_id`: checks who may and when,
    /// stores the amended message with its notice, and pushes the notice to
    /// every device of every party but `origin_conn`.
    pub async fn amend(
        &self,
        by: &Amender,
        origin_conn: Option<u64>,
        req: AmendRequest,
    ) -> Result<Amended, LogicError> {
        if !req.client_msg_id.is_empty() {
            check_id("client_msg_id", &req.client_msg_id)?;
        }
        if let AmendAction::Edit(body) = &req.action {
            self.check_body(body)?;
        }
        let app = match by {
            Amender::User(u) => &u.app,
            Amender::App(app) => app,
        };
        let original = self
            .store()
            .message(req.msg_id)
            .await?
            .filter(|m| m.is_app_message() && (m.from.app == *app || m.to.app == *app))
            .ok_or(LogicError::MessageNotFound(req.msg_id))?;
        let now = crate::now_ms();
        let amender = match by {
            Amender::User(user) => {
                if original.from != *user {
                    return Err(LogicError::NotMessageSender);
                }
                let config = self.apps().get(app).cloned().unwrap_or_default();
                let (window, what) = match req.action {
                    AmendAction::Recall => (config.recall_window(), "recall"),
                    AmendAction::Edit(_) => (config.edit_window(), "edit"),
                };
                let age = now.saturating_sub(original.server_time_ms);
                if window.is_zero() {
                    return Err(LogicError::AmendWindowClosed(format!(
                        "users of app {app} may not {what} their messages"
                    )));
                }
                if u128::try_from(age).unwrap_or(0) > window.as_millis() {
                    return Err(LogicError::AmendWindowClosed(format!(
                        "the {what} window of this message ({} s) has passed",
                        window.as_secs()
                    )));
                }
                user.clone()
            }
            Amender::App(app) => {
                if !matches!(req.action, AmendAction::Recall) {
                    return Err(LogicError::InvalidArgument(
                        "the business may recall a message, not edit it".into(),
                    ));
                }
                Logic::system_sender(app)
            }
        };
        // A recall is final: the store refuses to amend a recalled message
        // (atomically with the append, so two nodes cannot race), after
        // answering a resend of this very request.
        let current = original.content();
        let content = match req.action {
            AmendAction::Recall => Content {
                kind: current.kind,
                body: Bytes::new(),
                recalled: true,
                edited_at_ms: current.edited_at_ms,
            },
            AmendAction::Edit(body) => Content {
                kind: current.kind,
                body,
                recalled: false,
                edited_at_ms: now,
            },
        };
        let replacement = original.with_content(content);
        // The notice stores the message without its content; readers get
        // the content from the message itself.
        let mut stored_view = replacement.to_pb();
        stored_view.body = Bytes::new();
        let notice = Message {
            id: self.next_id(),
            from: amender.clone(),
            to: original.to.clone(),
            kind: AMEND_KIND.into(),
            body: stored_view.encode_to_vec().into(),
            client_msg_id: req.client_msg_id,
            server_time_ms: now,
            group: original.group.clone(),
        };
        let amends = Some(Box::new(Amendment {
            message: replacement.clone(),
        }));
        // Where the notice goes: one target per entry the store returns.
        let (appended, targets, own) = if original.group.is_empty() {
            // Every timeline that holds the message: the receiver's and the
            // sender's (the system sender has none).
            let mut timelines = vec![original.to.clone()];
            if original.from != original.to && !original.from.uid.is_empty() {
                timelines.push(original.from.clone());
            }
            let own = timelines.iter().position(|u| *u == amender).unwrap_or(0);
            let appended = self
                .store()
                .append(NewMessage {
                    message: notice,
                    timelines: timelines.clone(),
                    amends,
                })
                .await?;
            (
                appended,
                timelines.into_iter().map(Target::User).collect(),
                own,
            )
        } else {
            let key = GroupKey::new(original.to.app.clone(), original.group.clone());
            let appended = self
                .store()
                .group_append(NewGroupMessage {
                    message: notice,
                    group: key.clone(),
                    check_sender: false,
                    amends,
                })
                .await?;
            (appended, vec![Target::Group(key)], 0)
        };
        if appended.duplicate && appended.message.amends_msg_id() != Some(req.msg_id) {
            return Err(LogicError::ClientMsgIdReused(
                appended.message.client_msg_id.clone(),
            ));
        }
        // What devices get: the notice with the message as it is now (for a
        // resend, as the store has it: a later amendment may have followed).
        let now_stored = if appended.duplicate {
            self.store()
                .message(req.msg_id)
                .await?
                .unwrap_or(replacement)
        } else {
            replacement
        };
        let resolved = Arc::new(appended.message.resolved(&now_stored));
        let delivery = Delivery {
            entries: targets
                .into_iter()
                .zip(&appended.seqs)
                .map(|(target, &seq)| {
                    let entry = Entry {
                        seq,
                        message: resolved.clone(),
                    };
                    (target, entry)
                })
                .collect(),
            skip_conn: origin_conn.map(|c| (self.config().node.clone(), c)),
        };
        // A resend is pushed again, as a c2c is: devices drop what they
        // already hold by sequence.
        self.deliver(delivery).await;
        if !appended.duplicate {
            self.publish_amended(&amender, &appended.message, &now_stored)
                .await;
        }
        Ok(Amended {
            msg_id: appended.message.id,
            seq: appended.seqs.get(own).copied().unwrap_or(0),
            duplicate: appended.duplicate,
            message: Arc::new(now_stored),
        })
    }

    /// `message.recalled` or `message.edited`, keyed by who amended (so it
    /// follows their `message.stored` events in order).
    async fn publish_amended(&self, by: &UserKey, notice: &Message, message: &Message) {
        let content = message.content();
        let topic = if content.recalled {
            events::MESSAGE_RECALLED
        } else {
            events::MESSAGE_EDITED
        };
        let data = AmendedData {
            msg_id: message.id.to_string(),
            by: by.into(),
            from: (&message.from).into(),
            to: (&message.to).into(),
            group: (!message.group.is_empty()).then(|| message.group.clone()),
            kind: content.kind.clone(),
            notice_msg_id: notice.id.to_string(),
            time_ms: notice.server_time_ms,
            body_bytes: content.body.len(),
        };
        self.publish_event(topic, by, &content.kind, &data, "")
            .await;
    }

    /// Fills every amend notice among `entries` with the amended message as
    /// it is now (one store read per distinct message). Every path that
    /// hands stored entries to a client runs them through this.
    pub async fn resolve_amends(&self, entries: &mut [Entry]) -> Result<(), LogicError> {
        let mut current: HashMap<u64, Option<Message>> = HashMap::new();
        for e in entries.iter_mut() {
            let Some(id) = e.message.amends_msg_id() else {
                continue;
            };
            let amended = match current.get(&id) {
                Some(m) => m.clone(),
                None => {
                    let m = self.store().message(id).await?;
                    current.insert(id, m.clone());
                    m
                }
            };
            if let Some(amended) = amended {
                e.message = Arc::new(e.message.resolved(&amended));
            }
        }
        Ok(())
    }
}
