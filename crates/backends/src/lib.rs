//! Implementations of the core backend traits.
//!
//! - [`sqlite`]: [`SqliteStore`], the embedded [`Store`](switchboard_core::Store)
//!   on one SQLite file with a group-committing writer thread.
//! - [`fjall_store`]: [`FjallStore`], the embedded `Store` on fjall (an LSM
//!   key-value store), the default.
//! - [`embedded`]: [`Embedded`], the one `Store` of both embedded engines
//!   (`SqliteStore` and `FjallStore` are `Embedded` over their reads), with
//!   the writer's queue and group machinery in `single_writer` and the
//!   reader threads in `read_pool`.
//! - [`postgres`]: [`PgStore`], the clustered `Store` on PostgreSQL, shared by
//!   every node.
//! - [`redis_presence`]: [`RedisPresence`], presence in Redis or Redis Cluster.
//! - [`nats_route`]: [`NatsRoute`], deliveries and kicks between nodes over NATS.
//! - [`jetstream_bus`]: [`JetStreamBus`], events to business servers on JetStream.
//!
//! The clustered backends (PostgreSQL, Redis, NATS) live here too, each in its
//! own module, and every `Store` passes `switchboard_testkit::store_conformance`.

pub mod embedded;
pub mod fjall_store;
pub mod jetstream_bus;
pub mod nats_route;
pub mod postgres;
mod read_pool;
pub mod redis_presence;
mod single_writer;
pub mod sqlite;

pub use embedded::Embedded;
pub use fjall_store::{FjallOptions, FjallStore};
pub use jetstream_bus::{JetStreamBus, JetStreamConfig};
pub use nats_route::NatsRoute;
pub use postgres::{PgOptions, PgStore};
pub use redis_presence::{RedisPresence, RedisPresenceConfig};
pub use sqlite::{SqliteOptions, SqliteStore};
