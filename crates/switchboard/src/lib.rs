//! The `switchboard` binary's library side: configuration and wiring, so
//! tests and the benchmark start a real node in-process.

pub mod cluster;
pub mod config;
pub mod config_doc;
pub mod node_file;
pub mod server;

pub use config::Config;
pub use server::Server;
