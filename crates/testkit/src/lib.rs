//! Test support shared by every crate's integration tests.
//!
//! - [`server`]: a real node in-process on ephemeral ports.
//! - [`sdk`]: helpers around real SDK clients.
//! - [`raw`]: a bare-frames client for misbehaving on purpose.
//! - [`store_conformance`]: the properties every `Store` implementation must
//!   keep, run against each backend.

pub mod raw;
pub mod sdk;
pub mod server;
pub mod store_conformance;
