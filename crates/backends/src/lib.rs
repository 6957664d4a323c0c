//! Implementations of the core backend traits.
//!
//! - [`sqlite`]: [`SqliteStore`], the embedded [`Store`](switchboard_core::Store)
//!   on one SQLite file with a group-committing writer thread.
//!
//! The clustered backends (PostgreSQL, Redis, NATS) live here too, each in its
//! own module, and every `Store` passes `switchboard_testkit::store_conformance`.

pub mod sqlite;

pub use sqlite::{SqliteOptions, SqliteStore};
