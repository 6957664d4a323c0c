//! Test support shared by every crate's integration tests.
//!
//! - [`server`]: a real node in-process on ephemeral ports.
//! - [`sdk`]: helpers around real SDK clients; [`http`]: the HTTP API's client.
//! - [`pg`]: a private PostgreSQL server a test can stop and restart.
//! - [`raw`]: a bare-frames client for misbehaving on purpose.
//! - [`presence_conformance`]: the properties every `Presence` keeps.
//! - [`services`]: the shared Redis/NATS of tests, and private servers a
//!   test stops and restarts; [`redis_cluster`]: a private Redis Cluster.
//! - [`store_conformance`]: the properties every `Store` implementation must
//!   keep, run against each backend.

pub mod http;
pub mod pg;
pub mod presence_conformance;
pub mod raw;
pub mod redis_cluster;
pub mod sdk;
pub mod server;
pub mod services;
pub mod store_conformance;
pub mod store_crash;
