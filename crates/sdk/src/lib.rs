//! The Switchboard Rust client.
//!
//! [`Client::connect`] opens one connection (`tcp://`, `tls://`, `ws://` or
//! `wss://`), logs in, and hands back a [`Client`] (a cheap, cloneable handle)
//! and the [`Events`] of that connection. One task owns the socket: it pings,
//! acknowledges pushes, syncs after every (re)connect, reconnects with
//! exponential backoff and full jitter, and resends unanswered requests with
//! their original `client_msg_id`, so the application sees each timeline
//! entry exactly once, in order ([`Event::Message`]).
//!
//! ```no_run
//! use switchboard_sdk::{Client, ClientConfig, Event, User};
//!
//! # async fn demo() -> Result<(), switchboard_sdk::SdkError> {
//! let config = ClientConfig::new("tcp://127.0.0.1:7000", "<jwt from the business server>")
//!     .with_platform("desktop")
//!     .with_device_id("laptop-1")
//!     .with_since(None); // or the last `seq` the app persisted
//! let (client, mut events) = Client::connect(config).await?;
//!
//! let bob = User { app: "shop".into(), uid: "bob".into() };
//! let receipt = client.send(bob, "text", r#"{"text":"hi"}"#).await?;
//! println!("stored as {} (seq {})", receipt.msg_id, receipt.seq);
//!
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Message { seq, message } => {
//!             // Persist `seq` and pass it as `since` on the next start.
//!             println!("#{seq} {}: {:?}", message.r#type, message.body);
//!         }
//!         Event::Kicked { code, reason } => eprintln!("kicked {code}: {reason}"),
//!         Event::Closed => break,
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

//! A complete exchange, run as a test against a real in-process node:
//!
//! ```
//! use std::time::Duration;
//! use switchboard_sdk::{Client, ClientConfig, Event, User};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), switchboard_sdk::SdkError> {
//! # let server = switchboard_testkit::server::TestServer::start().await;
//! # let (url, alice_token, bob_token) = (server.tcp_url(), server.token("alice"), server.token("bob"));
//! let (alice, _alice_events) = Client::connect(ClientConfig::new(&url, alice_token)).await?;
//! let (_bob, mut bob_events) = Client::connect(ClientConfig::new(&url, bob_token)).await?;
//!
//! let bob = User { app: "demo".into(), uid: "bob".into() };
//! let receipt = alice.send(bob, "text", "hello bob").await?;
//! assert!(!receipt.duplicate);
//!
//! loop {
//!     match tokio::time::timeout(Duration::from_secs(10), bob_events.recv()).await {
//!         Ok(Some(Event::Message { message, .. })) => {
//!             assert_eq!(&message.body[..], b"hello bob");
//!             break;
//!         }
//!         Ok(Some(_)) => continue, // Connected, ...
//!         other => panic!("no message: {other:?}"),
//!     }
//! }
//! # server.stop().await;
//! # Ok(())
//! # }
//! ```

//! Groups: post with [`Client::send_group`]; each group's entries arrive as
//! [`Event::GroupMessage`], in the group's own order, exactly once. Persist
//! each group's `seq` like the user's and hand them back at start:
//!
//! ```no_run
//! use switchboard_sdk::{Client, ClientConfig, Event, code};
//!
//! # async fn demo(saved_groups: Vec<(String, u64)>) -> Result<(), switchboard_sdk::SdkError> {
//! let mut config = ClientConfig::new("tcp://127.0.0.1:7000", "<jwt>").with_device_id("laptop-1");
//! for (group, seq) in saved_groups {
//!     config = config.with_group_since(group, seq); // where the app left each group
//! }
//! let (client, mut events) = Client::connect(config).await?;
//!
//! match client.send_group("order-1042", "text", r#"{"text":"on my way"}"#).await {
//!     Ok(receipt) => println!("entry {} of the group", receipt.seq),
//!     Err(e) if e.code() == Some(code::GROUP_ADMINS_ONLY) => eprintln!("read-only group"),
//!     Err(e) => return Err(e),
//! }
//!
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::GroupMessage { group, seq, message } => {
//!             // Persist (group, seq): it goes back in `with_group_since`.
//!             println!("[{group} #{seq}] {:?}", message.body);
//!         }
//!         Event::GroupLeft { group, code } => {
//!             // Removed (NOT_GROUP_MEMBER) or deleted (GROUP_NOT_FOUND).
//!             println!("left {group} ({})", code::name(code));
//!         }
//!         Event::Closed => break,
//!         _ => {}
//!     }
//! }
//! // Or read every position at once, e.g. before shutting down.
//! let _positions = client.group_positions();
//! # Ok(())
//! # }
//! ```

mod backoff;
mod client;
mod config;
mod error;
mod task;
mod timeline;
mod transport;

pub use client::{
    AmendAck, C2sAck, Client, Conversation, ConversationList, Event, Events, MarkReadAck, Message,
    ReadReceipt, SendReceipt, TransientReceipt, User, new_client_msg_id,
};
pub use config::{ClientConfig, TokenFuture, TokenProvider};
pub use error::SdkError;
/// The wire protocol crate (generated types in `proto::pb`).
pub use switchboard_proto as proto;
/// The stable error and kick codes (`SdkError::Server::code`, `Event::Kicked::code`).
pub use switchboard_proto::code;
