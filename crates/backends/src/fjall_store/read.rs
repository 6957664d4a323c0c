//! Reads of [`FjallStore`](super::FjallStore). Each runs on a reader thread
//! and reads one snapshot, so a page and its head agree.

use std::sync::Arc;

use fjall::{Keyspace, Readable, Snapshot};
use switchboard_core::{BusEvent, Entry, Message, Page, StoreError, UserKey};

use super::{Keyspaces, fjall_error, keys};

/// The highest seq on the timeline whose user key is `user`, 0 when empty.
pub fn head(timelines: &Keyspace, user: &[u8]) -> Result<u64, StoreError> {
    match timelines.prefix(user).next_back() {
        None => Ok(0),
        Some(kv) => keys::seq_of_timeline(&kv.key().map_err(fjall_error)?),
    }
}

fn head_at(snap: &Snapshot, ks: &Keyspaces, user: &[u8]) -> Result<u64, StoreError> {
    match snap.prefix(&ks.timelines, user).next_back() {
        None => Ok(0),
        Some(kv) => keys::seq_of_timeline(&kv.key().map_err(fjall_error)?),
    }
}

fn message_at(snap: &Snapshot, ks: &Keyspaces, msg_id: u64) -> Result<Message, StoreError> {
    let v = snap
        .get(&ks.messages, msg_id.to_be_bytes())
        .map_err(fjall_error)?
        .ok_or_else(|| StoreError::Corrupt(format!("fjall: message {msg_id} is missing")))?;
    keys::decode_message(&v)
}

pub fn entries_after(
    ks: &Keyspaces,
    user: &UserKey,
    since: u64,
    limit: usize,
) -> Result<Page, StoreError> {
    let snap = ks.db.snapshot();
    let prefix = keys::user(user)?;
    let mut entries = Vec::new();
    if limit > 0 && since < u64::MAX {
        let start = keys::timeline(&prefix, since + 1);
        let end = keys::timeline(&prefix, u64::MAX);
        for kv in snap.range(&ks.timelines, start..=end).take(limit) {
            let (k, v) = kv.into_inner().map_err(fjall_error)?;
            let seq = keys::seq_of_timeline(&k)?;
            let msg_id = keys::u64_at(&v, 0)?;
            entries.push(Entry {
                seq,
                message: Arc::new(message_at(&snap, ks, msg_id)?),
            });
        }
    }
    let head = head_at(&snap, ks, &prefix)?;
    Ok(Page { entries, head })
}

pub fn conversation(
    ks: &Keyspaces,
    a: &UserKey,
    b: &UserKey,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<Arc<Message>>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let snap = ks.db.snapshot();
    let (ka, kb) = (keys::user(a)?, keys::user(b)?);
    let one_way = |from: &[u8], to: &[u8]| -> Result<Vec<u64>, StoreError> {
        let prefix = keys::direction(from, to);
        let start = keys::with_u64(&prefix, 0);
        let end = keys::with_u64(&prefix, before.unwrap_or(u64::MAX));
        snap.range(&ks.conversations, start..end)
            .rev()
            .take(limit)
            .map(|kv| {
                let k = kv.key().map_err(fjall_error)?;
                keys::u64_at(&k, k.len().saturating_sub(8))
            })
            .collect()
    };
    let mut ids = one_way(&ka, &kb)?;
    if a != b {
        ids.extend(one_way(&kb, &ka)?);
        ids.sort_unstable_by(|x, y| y.cmp(x));
        ids.truncate(limit);
    }
    ids.into_iter()
        .map(|id| message_at(&snap, ks, id).map(Arc::new))
        .collect()
}

pub fn timeline_head(ks: &Keyspaces, user: &UserKey) -> Result<u64, StoreError> {
    head(&ks.timelines, &keys::user(user)?)
}

/// The written cursor of a device, 0 when none.
pub fn cursor(ks: &Keyspaces, user: &UserKey, device_id: &str) -> Result<u64, StoreError> {
    let key = keys::cursor(&user.app, &user.uid, device_id)?;
    match ks.cursors.get(key).map_err(fjall_error)? {
        Some(v) => keys::u64_at(&v, 0),
        None => Ok(0),
    }
}

/// The user's token revocation time, `None` when never revoked.
pub fn tokens_revoked_before(ks: &Keyspaces, user: &UserKey) -> Result<Option<u64>, StoreError> {
    match ks.revocations.get(keys::user(user)?).map_err(fjall_error)? {
        Some(v) => keys::u64_at(&v, 0).map(Some),
        None => Ok(None),
    }
}

/// Up to `limit` undelivered outbox events with an id above `after`,
/// lowest id first.
pub fn outbox_pending(
    ks: &Keyspaces,
    after: u64,
    limit: usize,
) -> Result<Vec<BusEvent>, StoreError> {
    if after == u64::MAX {
        return Ok(Vec::new());
    }
    let snap = ks.db.snapshot();
    let mut out = Vec::new();
    for kv in snap
        .range(&ks.outbox_pending, (after + 1).to_be_bytes()..)
        .take(limit)
    {
        let id = keys::u64_at(&kv.key().map_err(fjall_error)?, 0)?;
        let v = snap
            .get(&ks.outbox, id.to_be_bytes())
            .map_err(fjall_error)?
            .ok_or_else(|| StoreError::Corrupt(format!("fjall: outbox event {id} is missing")))?;
        out.push(keys::decode_event(&v)?.0);
    }
    Ok(out)
}
