//! `disk`: the latency of one durable append on the disk that holds the data
//! directory: write a block at the end of a file, then `fdatasync`. A
//! durable ack (c2c-ack, c2s-ack, a stored s2c) waits for at least one of
//! these — the store's commit ends with one — so its p50 is the floor under
//! any acked message's latency on that disk, whatever the server does.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use crate::BenchError;
use crate::stats::{self, LossCheck, RunResult};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Directory on the disk to measure (a temporary file is made there).
    /// Default: the current directory, where `switchboard serve` keeps
    /// `./switchboard-data`.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Appends to time.
    #[arg(long, default_value_t = 500)]
    pub count: u64,
    /// Bytes per append (SQLite's WAL writes whole 4 KiB pages).
    #[arg(long, default_value_t = 4096)]
    pub bytes: usize,
    /// Append the results (a JSON array) to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub async fn run(a: &Args) -> Result<Vec<RunResult>, BenchError> {
    let a = a.clone();
    let r = tokio::task::spawn_blocking(move || measure(&a))
        .await
        .map_err(|e| BenchError::Usage(format!("disk measurement failed: {e}")))??;
    Ok(vec![r])
}

fn measure(a: &Args) -> Result<RunResult, BenchError> {
    if a.count == 0 || a.bytes == 0 {
        return Err(BenchError::Usage(
            "--count and --bytes must be above 0".into(),
        ));
    }
    let file = tempfile::Builder::new()
        .prefix(".sb-disk-bench-")
        .tempfile_in(&a.dir)
        .map_err(|e| BenchError::Usage(format!("--dir {}: {e}", a.dir.display())))?;
    let mut f = file.as_file();
    let block = vec![0x5a_u8; a.bytes];
    let mut hist = stats::histogram();
    let started = Instant::now();
    let mut done = 0;
    for _ in 0..a.count {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        stats::record_us(&mut hist, t.elapsed().as_micros() as u64);
        done += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let mut r = RunResult::new("disk", "switchboard", "disk");
    r.param("bytes", a.bytes as u64);
    r.param("count", a.count);
    r.param("dir", a.dir.display().to_string());
    r.metric("fsyncs_per_sec", done as f64 / secs.max(1e-9));
    r.set_latency(&hist);
    r.loss = LossCheck {
        rule: "every append written and synced".into(),
        expected: a.count,
        received: done,
        ok: done == a.count,
        ..LossCheck::default()
    };
    r.notes.push(
        "latency: write of one block at the end of a file + fdatasync; a durable ack waits for at least one".into(),
    );
    Ok(r)
}
