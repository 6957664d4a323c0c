//! Switchboard's domain, independent of sockets and databases.
//!
//! - [`model`]: users, messages, timeline entries.
//! - [`id`]: time-ordered 64-bit message ids.
//! - the backend traits — [`Store`], [`Presence`], [`Route`], [`Bus`] — each
//!   with an embedded implementation here or in `switchboard-backends`, and
//!   clustered ones picked by configuration;
//! - [`hub`]: this node's registry of open connections (where a push lands);
//! - [`auth`]: app configuration and login tokens;
//! - [`events`]: bus topics and the JSON of platform events;
//! - [`hooks`]: webhook, before-send and word-filter settings, and the
//!   [`Screen`] every c2c passes before it is stored;
//! - [`logic`]: c2c, c2s, s2c, sync and cursors, written once against the traits;
//!   [`logic_api`]: what the HTTP API adds (s2c push, presence, history, kick);
//!   [`logic_groups_api`]: groups for the HTTP API (membership, posting);
//!   [`logic_conv`]: the conversation list, read receipts, transient messages
//!   (over the [`conversation`] view);
//! - [`notify`]: offline notifications (collapsed per receiver) for the
//!   business's push provider;
//! - [`stats`]: node counters and metric names.

pub mod auth;
pub mod bus;
pub mod conversation;
pub mod error;
pub mod events;
pub mod group;
pub mod hooks;
pub mod hub;
pub mod id;
pub mod logic;
pub mod logic_amend;
pub mod logic_api;
pub mod logic_conv;
pub mod logic_group;
pub mod logic_groups_api;
pub mod model;
pub mod notify;
pub mod presence;
pub mod route;
pub mod stats;
pub mod store;

pub use auth::{AppConfig, Apps};
pub use bus::{Bus, BusError, BusEvent, BusReceipt, OutboxBus};
pub use error::LogicError;
pub use group::{
    Group, GroupKey, GroupRefusal, GroupSpec, GroupState, Member, MembersChanged, NewGroupMessage,
    PostPolicy, Role,
};
pub use hooks::{Screen, ScreenError, Verdict};
pub use hub::{ConnHandle, Hub, Outbound};
pub use logic::{C2cOrder, Logic, LogicConfig};
pub use logic_api::{ConversationPage, S2cMode, S2cOutcome, SYSTEM_UID};
pub use logic_conv::{
    ConversationItem, ConversationList, MarkedRead, ReadTarget, TransientRequest, TransientSent,
};
pub use model::{Entry, Message, NewMessage, UserKey};
pub use presence::{DeviceSession, HubPresence, Placement, Presence, PresenceError};
pub use route::{Delivery, LocalRoute, Reach, Route, RouteError, Target};
pub use store::{Appended, Page, Store, StoreError};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
