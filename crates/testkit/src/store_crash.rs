//! `kill -9` in the middle of a stream of appends, for the embedded stores:
//! every message the killed process acknowledged must be on both timelines
//! after reopening, and the timelines must have no gaps.
//!
//! The child is the test binary itself, running an `#[ignore]`d test that
//! calls [`child_appends`]; the parent test calls [`kill_9_and_check`]:
//!
//! ```ignore
//! #[test]
//! #[ignore = "child process of kill_9_keeps_every_acknowledged_message"]
//! fn crash_child() {
//!     let Some(path) = store_crash::child_path() else { return };
//!     store_crash::child_appends(|| open(&path));
//! }
//!
//! #[test]
//! fn kill_9_keeps_every_acknowledged_message() {
//!     let path = std::env::temp_dir().join("crash-store");
//!     store_crash::kill_9_and_check("crash_child", &path, || open(&path));
//! }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_core::{Store, UserKey};

use crate::store_conformance::{APP, c2c};

/// Where the parent tells the child its store is.
const CHILD_STORE: &str = "SWITCHBOARD_CRASH_CHILD_STORE";
const RECEIVER: &str = "crash-receiver";
const SENDERS: u64 = 8;
/// Acknowledgements the parent waits for before the kill.
const ACKS_BEFORE_KILL: usize = 1_500;

/// In the child: the store path the parent gave, `None` when this test was
/// run any other way (then it does nothing).
pub fn child_path() -> Option<PathBuf> {
    std::env::var_os(CHILD_STORE).map(PathBuf::from)
}

fn sender(t: u64) -> UserKey {
    UserKey::new(APP, format!("crash-sender-{t}"))
}

/// In the child: appends from 8 tasks and prints `ACK t msg_id seq_r seq_s`
/// per acknowledged message until it is killed (or 60 s pass).
pub fn child_appends<F, Fut>(open: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let store = open().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..SENDERS {
            let store = store.clone();
            tasks.spawn(async move {
                let receiver = UserKey::new(APP, RECEIVER);
                let sender = sender(t);
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let a = store
                        .append(c2c(&sender, &receiver, &format!("c{i}"), vec![7u8; 200]))
                        .await
                        .expect("append");
                    println!("ACK {t} {} {} {}", a.message.id, a.seqs[0], a.seqs[1]);
                    i += 1;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
}

/// In the parent: runs the test `child_test` of this test binary as a child
/// on the store at `path`, SIGKILLs it after 1,500 acknowledgements, opens
/// the store again with `open` and checks every acknowledged message and
/// the timelines; then appends once more (the heads reload from disk).
pub fn kill_9_and_check<F, Fut>(child_test: &str, path: &Path, open: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            child_test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_STORE, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acks = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    while acks.len() < ACKS_BEFORE_KILL {
        let Some(line) = lines.next() else { break };
        if let Some(ack) = parse_ack(&line.expect("read child")) {
            acks.push(ack);
        }
    }
    child.kill().expect("kill -9 the child");
    // Lines already in the pipe were acknowledged before the kill too.
    acks.extend(lines.map_while(Result::ok).filter_map(|l| parse_ack(&l)));
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "the child should have died by the signal"
    );
    assert!(
        acks.len() >= ACKS_BEFORE_KILL,
        "the child acknowledged only {} messages before exiting",
        acks.len()
    );

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = open().await;
        let receiver = UserKey::new(APP, RECEIVER);
        let (head, by_seq) = gap_free(store.as_ref(), &receiver, "receiver").await;
        let mut senders = HashMap::new();
        for t in 0..SENDERS {
            senders.insert(t, gap_free(store.as_ref(), &sender(t), "sender").await.1);
        }
        for (t, msg_id, seq_r, seq_s) in &acks {
            assert_eq!(
                by_seq.get(seq_r),
                Some(msg_id),
                "acknowledged message {msg_id} lost on the receiver"
            );
            assert_eq!(
                senders[t].get(seq_s),
                Some(msg_id),
                "acknowledged message {msg_id} lost on the sender"
            );
        }
        let a = store
            .append(c2c(&sender(0), &receiver, "after-crash", "x"))
            .await
            .expect("append");
        assert_eq!(a.seqs[0], head + 1);
        store.close().await.expect("close");
    });
}

/// The user's whole timeline, checked gap-free from 1: its head and
/// seq → msg_id.
async fn gap_free(store: &dyn Store, user: &UserKey, who: &str) -> (u64, HashMap<u64, u64>) {
    let page = store.entries_after(user, 0, 1_000_000).await.expect("page");
    for (i, e) in page.entries.iter().enumerate() {
        assert_eq!(
            e.seq,
            i as u64 + 1,
            "the {who}'s timeline has a gap after the crash"
        );
    }
    let by_seq = page.entries.iter().map(|e| (e.seq, e.message.id)).collect();
    (page.head, by_seq)
}

fn parse_ack(line: &str) -> Option<(u64, u64, u64, u64)> {
    let mut it = line
        .strip_prefix("ACK ")?
        .split(' ')
        .map(|w| w.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next()??, it.next()??))
}
