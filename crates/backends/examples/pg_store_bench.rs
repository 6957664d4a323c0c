//! Durable c2c appends through `PgStore`: the workload of `store_bench.rs`
//! (one message row, two timeline entries, one de-dup row, a 200-byte body,
//! N messages from C concurrent tokio tasks between 1,000 users), in a
//! schema of its own that is dropped afterwards. Prints appends/s and the
//! p50/p99 latency of `append`.
//!
//! ```text
//! cargo run --release -p switchboard-backends --example pg_store_bench -- \
//!     [N] [C] [URL] [--max-batch B] [--writers W] [--pool P]
//! ```
//!
//! URL defaults to `SWITCHBOARD_TEST_POSTGRES`, then
//! `postgres://postgres@127.0.0.1:5432/test`. `--max-batch 1` stores each
//! append in its own transaction (no group commit by the store; PostgreSQL
//! still shares WAL flushes between concurrent commits).

use switchboard_backends::{PgOptions, PgStore};
use switchboard_core::Store;

mod common;
use common::{report, run};

fn main() {
    let mut positional = Vec::new();
    let mut options = PgOptions {
        schema: Some(format!("bench_{}", std::process::id())),
        ..PgOptions::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{what} needs a number"))
        };
        match a.as_str() {
            "--max-batch" => options.max_batch = num("--max-batch"),
            "--writers" => options.writers = num("--writers"),
            "--pool" => options.pool_size = num("--pool"),
            _ => positional.push(a),
        }
    }
    let mut positional = positional.into_iter();
    let n: u64 = positional
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(50_000);
    let c: u64 = positional
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(16)
        .max(1);
    let url = positional.next().unwrap_or_else(|| {
        std::env::var("SWITCHBOARD_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let schema = options.schema.clone().unwrap_or_default();
        let label = format!(
            "postgres batch={} writers={} pool={}",
            options.max_batch, options.writers, options.pool_size
        );
        let store = PgStore::connect(&url, options)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e}"));
        let (elapsed, mut lat) = run(store.clone(), n, c).await;
        store.close().await.expect("close");
        report(&label, n, c, elapsed, &mut lat);
        drop_schema(&url, &schema).await;
    });
}

async fn drop_schema(url: &str, schema: &str) {
    let Ok((client, conn)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else {
        eprintln!("could not drop schema {schema}");
        return;
    };
    tokio::spawn(conn);
    if let Err(e) = client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
    {
        eprintln!("could not drop schema {schema}: {e}");
    }
}
