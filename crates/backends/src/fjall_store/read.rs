//! Reads of [`FjallStore`](super::FjallStore). Each runs on a reader thread
//! and reads one snapshot, so a page and its head agree.

use std::sync::Arc;

use fjall::{Keyspace, Readable, Snapshot};
use switchboard_core::group::{Group, GroupKey, GroupSpec, GroupState, Member};
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

/// The user's conversation view, `None` when none was stored.
pub fn conversation_view(
    ks: &Keyspaces,
    user: &UserKey,
) -> Result<Option<bytes::Bytes>, StoreError> {
    Ok(ks
        .conversation_views
        .get(keys::user(user)?)
        .map_err(fjall_error)?
        .map(|v| bytes::Bytes::copy_from_slice(&v)))
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

/// The stored record of a group, `None` when there is none.
pub fn group_record<R: Readable>(
    r: &R,
    ks: &Keyspaces,
    group_key: &[u8],
) -> Result<Option<keys::GroupRecord>, StoreError> {
    match r.get(&ks.groups, group_key).map_err(fjall_error)? {
        Some(v) => keys::decode_group(&v).map(Some),
        None => Ok(None),
    }
}

/// The highest seq on a group's timeline, 0 when empty.
pub fn group_head<R: Readable>(r: &R, ks: &Keyspaces, group_key: &[u8]) -> Result<u64, StoreError> {
    match r.prefix(&ks.group_timelines, group_key).next_back() {
        None => Ok(0),
        Some(kv) => keys::seq_of_timeline(&kv.key().map_err(fjall_error)?),
    }
}

/// A [`Group`] from its key, record and head.
pub fn to_group(key: &GroupKey, rec: keys::GroupRecord, head: u64) -> Group {
    Group {
        spec: GroupSpec {
            key: key.clone(),
            name: rec.name,
            meta: rec.meta,
            post_policy: rec.post_policy,
            history_visible: rec.history_visible,
        },
        created_ms: rec.created_ms,
        head,
        members: rec.members,
    }
}

pub fn group(ks: &Keyspaces, key: &GroupKey) -> Result<Option<Group>, StoreError> {
    let snap = ks.db.snapshot();
    let gk = keys::group(key)?;
    let Some(rec) = group_record(&snap, ks, &gk)? else {
        return Ok(None);
    };
    let head = group_head(&snap, ks, &gk)?;
    Ok(Some(to_group(key, rec, head)))
}

pub fn member_at<R: Readable>(
    r: &R,
    ks: &Keyspaces,
    group_key: &[u8],
    uid: &str,
) -> Result<Option<Member>, StoreError> {
    match r
        .get(&ks.group_members, keys::raw_after(group_key, uid))
        .map_err(fjall_error)?
    {
        Some(v) => keys::decode_member(uid.to_owned(), &v).map(Some),
        None => Ok(None),
    }
}

pub fn member(ks: &Keyspaces, key: &GroupKey, uid: &str) -> Result<Option<Member>, StoreError> {
    member_at(&ks.db.snapshot(), ks, &keys::group(key)?, uid)
}

/// The keys after `prefix ++ after` (all of them without `after`) that
/// start with `prefix`, in order: a page of a raw-suffixed index.
fn page_after<'a>(
    snap: &'a Snapshot,
    ks: &'a Keyspace,
    prefix: &'a [u8],
    after: Option<&str>,
) -> impl Iterator<Item = Result<(fjall::Slice, fjall::Slice), StoreError>> + 'a {
    // The first key after `prefix ++ after` is `prefix ++ after ++ 0x00`.
    let mut start = prefix.to_vec();
    if let Some(a) = after {
        start.extend_from_slice(a.as_bytes());
        start.push(0);
    }
    snap.range(ks, start..)
        .map(|kv| kv.into_inner().map_err(fjall_error))
        .take_while(move |kv| kv.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
}

/// The raw suffix of a key after `prefix`, as a string.
fn suffix(key: &[u8], prefix_len: usize) -> Result<String, StoreError> {
    String::from_utf8(key[prefix_len..].to_vec()).map_err(|_| keys::corrupt("key suffix"))
}

pub fn members(
    ks: &Keyspaces,
    key: &GroupKey,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Member>, StoreError> {
    let snap = ks.db.snapshot();
    let gk = keys::group(key)?;
    page_after(&snap, &ks.group_members, &gk, after)
        .take(limit)
        .map(|kv| {
            let (k, v) = kv?;
            keys::decode_member(suffix(&k, gk.len())?, &v)
        })
        .collect()
}

pub fn user_groups(
    ks: &Keyspaces,
    user: &UserKey,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let snap = ks.db.snapshot();
    let uk = keys::user(user)?;
    page_after(&snap, &ks.user_groups, &uk, after)
        .take(limit)
        .map(|kv| suffix(&kv?.0, uk.len()))
        .collect()
}

/// One prefix scan of the user's groups, then per group point reads (its
/// record, the membership, the written cursor) and its head (the last key
/// of its timeline), all in one snapshot.
pub fn group_states(
    ks: &Keyspaces,
    user: &UserKey,
    device_id: &str,
) -> Result<Vec<GroupState>, StoreError> {
    let snap = ks.db.snapshot();
    let uk = keys::user(user)?;
    let mut out = Vec::new();
    for kv in page_after(&snap, &ks.user_groups, &uk, None) {
        let gid = suffix(&kv?.0, uk.len())?;
        let key = GroupKey::new(user.app.clone(), gid);
        let gk = keys::group(&key)?;
        // An index row without its group or membership is not served.
        let Some(rec) = group_record(&snap, ks, &gk)? else {
            continue;
        };
        let Some(m) = member_at(&snap, ks, &gk, &user.uid)? else {
            continue;
        };
        let head = group_head(&snap, ks, &gk)?;
        let ck = keys::group_cursor(&uk, device_id, &key.gid, rec.generation)?;
        let cursor = match snap.get(&ks.group_cursors, ck).map_err(fjall_error)? {
            Some(v) => keys::u64_at(&v, 0)?,
            None => 0,
        };
        let visible_after = if rec.history_visible { 0 } else { m.joined_seq };
        out.push(GroupState {
            gid: key.gid,
            head,
            cursor: cursor.min(head),
            visible_after,
        });
    }
    Ok(out)
}

pub fn group_entries_after(
    ks: &Keyspaces,
    key: &GroupKey,
    since: u64,
    limit: usize,
) -> Result<Page, StoreError> {
    let snap = ks.db.snapshot();
    let gk = keys::group(key)?;
    let mut entries = Vec::new();
    if limit > 0 && since < u64::MAX {
        let start = keys::timeline(&gk, since + 1);
        let end = keys::timeline(&gk, u64::MAX);
        for kv in snap.range(&ks.group_timelines, start..=end).take(limit) {
            let (k, v) = kv.into_inner().map_err(fjall_error)?;
            entries.push(Entry {
                seq: keys::seq_of_timeline(&k)?,
                message: Arc::new(message_at(&snap, ks, keys::u64_at(&v, 0)?)?),
            });
        }
    }
    let head = group_head(&snap, ks, &gk)?;
    Ok(Page { entries, head })
}

/// A stored message by id, `None` when absent.
pub fn message_if_any(ks: &Keyspaces, msg_id: u64) -> Result<Option<Message>, StoreError> {
    ks.messages
        .get(msg_id.to_be_bytes())
        .map_err(fjall_error)?
        .map(|v| keys::decode_message(&v))
        .transpose()
}

/// A stored message (the writer's read of a de-duplicated first message).
pub fn message(ks: &Keyspaces, msg_id: u64) -> Result<Message, StoreError> {
    message_at(&ks.db.snapshot(), ks, msg_id)
}
