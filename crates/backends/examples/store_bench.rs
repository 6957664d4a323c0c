//! Durable c2c appends through `SqliteStore`: N messages (one message row,
//! two timeline entries, one de-dup row, a 200-byte body) from C concurrent
//! tokio tasks; prints appends/s and the p50/p99 latency of `append`.
//!
//! ```text
//! cargo run --release -p switchboard-backends --example store_bench -- [N] [C] [DIR]
//! ```
//!
//! `examples/fjall_bench.rs` runs the same workload on fjall; the figures and
//! the choice are in `docs/store-choice.md`.

use std::path::PathBuf;

use switchboard_backends::{SqliteOptions, SqliteStore};
use switchboard_core::Store;

mod common;
use common::{report, run};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let c: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(16)
        .max(1);
    let dir = args.next().map(PathBuf::from);
    let tmp =
        tempfile::tempdir_in(dir.unwrap_or_else(|| PathBuf::from("target"))).expect("bench dir");
    let path = tmp.path().join("bench.db");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = SqliteStore::open(&path, SqliteOptions::default()).expect("open");
        let (elapsed, mut lat) = run(store.clone(), n, c).await;
        store.close().await.expect("close");
        report("sqlite", n, c, elapsed, &mut lat);
    });
}
