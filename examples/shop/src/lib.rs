//! A shop's business server on Switchboard: the e-commerce scenario of
//! DESIGN.md, with all of the business logic here and none in the platform.
//!
//! - A customer opens a chat with a shop (a `c2s` report); the bus brings it
//!   here as a signed webhook; the shop asks Switchboard who of the shop's
//!   agents is online, picks the least busy one, keeps the pairing in its
//!   own table ([`desk::Desk`]) and relays the chat both ways (send as a
//!   user), where the app's word filter masks what must not be said.
//! - An agent going offline (`user.offline`) hands their customers to
//!   another online agent, with the recent conversation, and tells them.
//! - The order system asks for an order-status notice (a stored push: an
//!   offline customer gets it on sync) and dispatch for a delivery offer
//!   (online-only: only the couriers online now see it).
//! - A user none of whose devices is online gets a phone notification
//!   (Switchboard's `notification` event, collapsed per burst, with the
//!   badge): [`phones`] is where the push provider would be called.
//!
//! Modules: [`config`] (flags), [`bus`] (signature, events, de-duplication),
//! [`switchboard`] (the HTTP API client), [`desk`] (the assignment table),
//! [`service`] (what happens on each event), [`phones`] (phone
//! notifications), [`http`] (the shop's routes).
//! README.md says how to run it.

pub mod bus;
pub mod config;
pub mod desk;
pub mod http;
pub mod phones;
pub mod service;
pub mod switchboard;

use std::sync::Arc;

pub use config::{Roster, ShopConfig};
pub use service::Shop;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Serves the shop on `listener` until `shutdown` is cancelled; requests in
/// progress finish first.
pub async fn run(
    listener: TcpListener,
    config: ShopConfig,
    shutdown: CancellationToken,
) -> Result<(), ShopError> {
    let shop = Arc::new(Shop::new(&config).map_err(ShopError::Config)?);
    tracing::info!(addr = %listener.local_addr()?, switchboard = %config.switchboard_url, app = %config.app, "shop server listening");
    axum::serve(listener, http::router(shop))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}
