//! The read side of [`SqliteStore`](super::SqliteStore): a few reader
//! threads, each with its own read-only connection, and the queries they run
//! (timeline pages, heads, cursors, pending outbox events), plus the row
//! decoding shared with the writer. WAL lets these reads proceed while the
//! writer commits.
//!
//! The threads are a [`ReadPool`](crate::read_pool::ReadPool); a reader
//! runs each batch of reads in one read transaction.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use switchboard_core::group::{Group, GroupKey, GroupSpec, GroupState, Member, PostPolicy, Role};
use switchboard_core::{BusEvent, Entry, Message, Page, StoreError, UserKey};

use super::{corrupt_or_unavailable, schema, unavailable};

/// Most reads one reader runs in one transaction.
/// Opens `size` read connections for the reader threads.
pub fn connections(path: &Path, size: usize) -> Result<Vec<Connection>, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    (0..size.max(1))
        .map(|_| {
            let conn = Connection::open_with_flags(path, flags).map_err(unavailable)?;
            schema::configure_reader(&conn)?;
            Ok(conn)
        })
        .collect()
}

const ENTRIES_AFTER_SQL: &str =
    "SELECT t.seq, m.msg_id, m.app, m.from_uid, m.to_app, m.to_uid, m.kind, m.body,
            m.client_msg_id, m.server_time_ms, m.group_gid
     FROM timeline t JOIN message m ON m.msg_id = t.msg_id
     WHERE t.app = ?1 AND t.uid = ?2 AND t.seq > ?3
     ORDER BY t.seq LIMIT ?4";
const HEAD_SQL: &str =
    "SELECT seq FROM timeline WHERE app = ?1 AND uid = ?2 ORDER BY seq DESC LIMIT 1";
const CURSOR_SQL: &str = "SELECT seq FROM cursor WHERE app = ?1 AND uid = ?2 AND device_id = ?3";

/// A page of `user`'s timeline after `since`. The head is read after the
/// entries (heads only grow), so `head >= every entry's seq` whether or not
/// the two reads share a snapshot.
pub fn entries_after(
    conn: &mut Connection,
    user: &UserKey,
    since: u64,
    limit: usize,
) -> Result<Page, StoreError> {
    let mut entries = Vec::new();
    if limit > 0 {
        let mut stmt = conn
            .prepare_cached(ENTRIES_AFTER_SQL)
            .map_err(unavailable)?;
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = stmt
            .query(params![user.app, user.uid, since, limit])
            .map_err(unavailable)?;
        while let Some(row) = rows.next().map_err(unavailable)? {
            let seq = to_u64(row.get(0).map_err(corrupt_or_unavailable)?, "timeline.seq")?;
            let message = message_from_row(row, 1)?;
            entries.push(Entry {
                seq,
                message: Arc::new(message),
            });
        }
    }
    let head = head(conn, user)?;
    Ok(Page { entries, head })
}

/// The messages between `a` and `b` either way, newest first, with an id
/// below `before` when given, at most `limit`: the two directions are two
/// ranges of the `message_conversation` index, merged by id.
pub fn conversation(
    conn: &Connection,
    a: &UserKey,
    b: &UserKey,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<Arc<Message>>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // Ids are stored as their i64 bit pattern and stay below 2^63.
    let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    const COLUMNS: &str = "msg_id, app, from_uid, to_app, to_uid, kind, body, client_msg_id, server_time_ms, group_gid";
    let one_way = |from: &UserKey, to: &UserKey| -> Result<Vec<Message>, StoreError> {
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM message
                 WHERE app = ?1 AND from_uid = ?2 AND to_app = ?3 AND to_uid = ?4 AND msg_id < ?5
                 ORDER BY msg_id DESC LIMIT ?6"
            ))
            .map_err(unavailable)?;
        let mut rows = stmt
            .query(params![from.app, from.uid, to.app, to.uid, before, limit])
            .map_err(unavailable)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(unavailable)? {
            out.push(message_from_row(row, 0)?);
        }
        Ok(out)
    };
    let mut messages = one_way(a, b)?;
    if a != b {
        messages.extend(one_way(b, a)?);
        messages.sort_unstable_by_key(|m| std::cmp::Reverse(m.id));
        messages.truncate(limit as usize);
    }
    Ok(messages.into_iter().map(Arc::new).collect())
}

/// The highest seq on `user`'s timeline, 0 when empty.
pub fn head(conn: &Connection, user: &UserKey) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(HEAD_SQL).map_err(unavailable)?;
    let seq: Option<i64> = stmt
        .query_row(params![user.app, user.uid], |r| r.get(0))
        .optional()
        .map_err(corrupt_or_unavailable)?;
    seq.map_or(Ok(0), |s| to_u64(s, "timeline.seq"))
}

/// The persisted cursor of a device, 0 when none.
pub fn cursor(conn: &Connection, user: &UserKey, device_id: &str) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(CURSOR_SQL).map_err(unavailable)?;
    let seq: Option<i64> = stmt
        .query_row(params![user.app, user.uid, device_id], |r| r.get(0))
        .optional()
        .map_err(corrupt_or_unavailable)?;
    seq.map_or(Ok(0), |s| to_u64(s, "cursor.seq"))
}

/// The user's conversation view, `None` when none was stored.
pub fn conversation_view(
    conn: &Connection,
    user: &UserKey,
) -> Result<Option<bytes::Bytes>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT view FROM conversation_view WHERE app = ?1 AND uid = ?2")
        .map_err(unavailable)?;
    let v: Option<Vec<u8>> = stmt
        .query_row(params![user.app, user.uid], |r| r.get(0))
        .optional()
        .map_err(corrupt_or_unavailable)?;
    Ok(v.map(bytes::Bytes::from))
}

/// The user's token revocation time, `None` when never revoked.
pub fn tokens_revoked_before(conn: &Connection, user: &UserKey) -> Result<Option<u64>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT issued_before FROM token_revocation WHERE app = ?1 AND uid = ?2")
        .map_err(unavailable)?;
    let t: Option<i64> = stmt
        .query_row(params![user.app, user.uid], |r| r.get(0))
        .optional()
        .map_err(corrupt_or_unavailable)?;
    t.map(|t| to_u64(t, "token_revocation.issued_before"))
        .transpose()
}

/// Up to `limit` undelivered outbox events with an id above `after`, oldest id first.
pub fn outbox_pending(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<BusEvent>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, topic, app, uid, kind, body, time_ms FROM outbox
             WHERE delivered_ms IS NULL AND id > ?2 ORDER BY id LIMIT ?1",
        )
        .map_err(unavailable)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // Ids are stored as i64; one above i64::MAX cannot exist.
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let mut rows = stmt.query(params![limit, after]).map_err(unavailable)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(unavailable)? {
        out.push(event_from_row(row).map_err(corrupt_or_unavailable)?);
    }
    Ok(out)
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<BusEvent> {
    Ok(BusEvent {
        id: row.get::<_, i64>(0)? as u64,
        topic: row.get(1)?,
        user: UserKey {
            app: row.get(2)?,
            uid: row.get(3)?,
        },
        kind: row.get(4)?,
        body: Bytes::from(row.get::<_, Vec<u8>>(5)?),
        time_ms: row.get(6)?,
    })
}

/// Decodes the ten `message` columns starting at `first` (msg_id, app,
/// from_uid, to_app, to_uid, kind, body, client_msg_id, server_time_ms,
/// group_gid).
pub fn message_from_row(row: &Row<'_>, first: usize) -> Result<Message, StoreError> {
    let m = || -> rusqlite::Result<Message> {
        let app: String = row.get(first + 1)?;
        Ok(Message {
            id: row.get::<_, i64>(first)? as u64,
            from: UserKey {
                app,
                uid: row.get(first + 2)?,
            },
            to: UserKey {
                app: row.get(first + 3)?,
                uid: row.get(first + 4)?,
            },
            kind: row.get(first + 5)?,
            body: Bytes::from(row.get::<_, Vec<u8>>(first + 6)?),
            client_msg_id: row.get(first + 7)?,
            server_time_ms: row.get(first + 8)?,
            group: row.get(first + 9)?,
        })
    };
    m().map_err(corrupt_or_unavailable)
}

/// Loads one message by id (`None` when absent).
pub fn message_by_id(conn: &Connection, msg_id: u64) -> Result<Option<Message>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT msg_id, app, from_uid, to_app, to_uid, kind, body, client_msg_id, server_time_ms,
                    group_gid
             FROM message WHERE msg_id = ?1",
        )
        .map_err(unavailable)?;
    let mut rows = stmt.query(params![msg_id as i64]).map_err(unavailable)?;
    match rows.next().map_err(unavailable)? {
        Some(row) => message_from_row(row, 0).map(Some),
        None => Ok(None),
    }
}

/// A seq read from disk; negative means the file is not ours to trust.
pub fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}: {v}")))
}

/// Encodes a dedupe row's seqs: 8 bytes big-endian each.
pub fn encode_seqs(seqs: &[u64]) -> Vec<u8> {
    seqs.iter().flat_map(|s| s.to_be_bytes()).collect()
}

/// Decodes [`encode_seqs`]; any other length is corruption.
pub fn decode_seqs(blob: &[u8]) -> Result<Vec<u64>, StoreError> {
    if !blob.len().is_multiple_of(8) {
        return Err(StoreError::Corrupt(format!(
            "dedupe.seqs has {} bytes, not a multiple of 8",
            blob.len()
        )));
    }
    Ok(blob
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_be_bytes(b)
        })
        .collect())
}

/// A stored group and its generation (the `grp.id` rowid, never reused).
pub fn group_row(conn: &Connection, key: &GroupKey) -> Result<Option<(i64, Group)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, name, meta, post_policy, history_visible, created_ms, head, members
             FROM grp WHERE app = ?1 AND gid = ?2",
        )
        .map_err(unavailable)?;
    let row = stmt
        .query_row(params![key.app, key.gid], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })
        .optional()
        .map_err(corrupt_or_unavailable)?;
    let Some((id, name, meta, policy, history_visible, created_ms, head, members)) = row else {
        return Ok(None);
    };
    let post_policy = PostPolicy::parse(&policy)
        .ok_or_else(|| StoreError::Corrupt(format!("grp.post_policy {policy:?}")))?;
    Ok(Some((
        id,
        Group {
            spec: GroupSpec {
                key: key.clone(),
                name,
                meta: Bytes::from(meta),
                post_policy,
                history_visible,
            },
            created_ms,
            head: to_u64(head, "grp.head")?,
            members: to_u64(members, "grp.members")?,
        },
    )))
}

fn member_from_row(row: &Row<'_>) -> Result<Member, StoreError> {
    let role: String = row.get(1).map_err(corrupt_or_unavailable)?;
    Ok(Member {
        uid: row.get(0).map_err(corrupt_or_unavailable)?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("group_member.role {role:?}")))?,
        joined_seq: to_u64(
            row.get(2).map_err(corrupt_or_unavailable)?,
            "group_member.joined_seq",
        )?,
        joined_ms: row.get(3).map_err(corrupt_or_unavailable)?,
    })
}

/// One member of the group with generation `group_id`.
pub fn member_by_id(
    conn: &Connection,
    group_id: i64,
    uid: &str,
) -> Result<Option<Member>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT uid, role, joined_seq, joined_ms FROM group_member
             WHERE group_id = ?1 AND uid = ?2",
        )
        .map_err(unavailable)?;
    let mut rows = stmt.query(params![group_id, uid]).map_err(unavailable)?;
    match rows.next().map_err(unavailable)? {
        Some(row) => member_from_row(row).map(Some),
        None => Ok(None),
    }
}

pub fn member(conn: &Connection, key: &GroupKey, uid: &str) -> Result<Option<Member>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT m.uid, m.role, m.joined_seq, m.joined_ms
             FROM grp g JOIN group_member m ON m.group_id = g.id
             WHERE g.app = ?1 AND g.gid = ?2 AND m.uid = ?3",
        )
        .map_err(unavailable)?;
    let mut rows = stmt
        .query(params![key.app, key.gid, uid])
        .map_err(unavailable)?;
    match rows.next().map_err(unavailable)? {
        Some(row) => member_from_row(row).map(Some),
        None => Ok(None),
    }
}

/// `after` as a lower bound: `''` sorts before every uid (and uids are
/// never empty), so one statement serves the first page too.
pub fn members(
    conn: &Connection,
    key: &GroupKey,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Member>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT m.uid, m.role, m.joined_seq, m.joined_ms
             FROM grp g JOIN group_member m ON m.group_id = g.id
             WHERE g.app = ?1 AND g.gid = ?2 AND m.uid > ?3
             ORDER BY m.uid LIMIT ?4",
        )
        .map_err(unavailable)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = stmt
        .query(params![key.app, key.gid, after.unwrap_or(""), limit])
        .map_err(unavailable)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(unavailable)? {
        out.push(member_from_row(row)?);
    }
    Ok(out)
}

pub fn user_groups(
    conn: &Connection,
    user: &UserKey,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT gid FROM user_group WHERE app = ?1 AND uid = ?2 AND gid > ?3
             ORDER BY gid LIMIT ?4",
        )
        .map_err(unavailable)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = stmt
        .query(params![user.app, user.uid, after.unwrap_or(""), limit])
        .map_err(unavailable)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(unavailable)? {
        out.push(row.get(0).map_err(corrupt_or_unavailable)?);
    }
    Ok(out)
}

/// Every group of the user with head, written cursor and view start: one
/// statement over the user's index rows joined to the groups, memberships
/// and cursors.
pub fn group_states(
    conn: &Connection,
    user: &UserKey,
    device_id: &str,
) -> Result<Vec<GroupState>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT g.gid, g.head, COALESCE(c.seq, 0),
                    CASE WHEN g.history_visible THEN 0 ELSE m.joined_seq END
             FROM user_group u
             JOIN grp g ON g.id = u.group_id
             JOIN group_member m ON m.group_id = g.id AND m.uid = u.uid
             LEFT JOIN group_cursor c
               ON c.app = u.app AND c.uid = u.uid AND c.device_id = ?3 AND c.group_id = g.id
             WHERE u.app = ?1 AND u.uid = ?2
             ORDER BY u.gid",
        )
        .map_err(unavailable)?;
    let mut rows = stmt
        .query(params![user.app, user.uid, device_id])
        .map_err(unavailable)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(unavailable)? {
        let get = |i: usize, what: &str| -> Result<u64, StoreError> {
            to_u64(row.get(i).map_err(corrupt_or_unavailable)?, what)
        };
        let head = get(1, "grp.head")?;
        out.push(GroupState {
            gid: row.get(0).map_err(corrupt_or_unavailable)?,
            head,
            cursor: get(2, "group_cursor.seq")?.min(head),
            visible_after: get(3, "group_member.joined_seq")?,
        });
    }
    Ok(out)
}

pub fn group_entries_after(
    conn: &Connection,
    key: &GroupKey,
    since: u64,
    limit: usize,
) -> Result<Page, StoreError> {
    let Some((id, group)) = group_row(conn, key)? else {
        return Ok(Page::default());
    };
    let mut entries = Vec::new();
    if limit > 0 {
        let mut stmt = conn
            .prepare_cached(
                "SELECT t.seq, m.msg_id, m.app, m.from_uid, m.to_app, m.to_uid, m.kind, m.body,
                        m.client_msg_id, m.server_time_ms, m.group_gid
                 FROM group_timeline t JOIN message m ON m.msg_id = t.msg_id
                 WHERE t.group_id = ?1 AND t.seq > ?2
                 ORDER BY t.seq LIMIT ?3",
            )
            .map_err(unavailable)?;
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = stmt.query(params![id, since, limit]).map_err(unavailable)?;
        while let Some(row) = rows.next().map_err(unavailable)? {
            let seq = to_u64(
                row.get(0).map_err(corrupt_or_unavailable)?,
                "group_timeline.seq",
            )?;
            entries.push(Entry {
                seq,
                message: Arc::new(message_from_row(row, 1)?),
            });
        }
    }
    Ok(Page {
        entries,
        head: group.head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_round_trip_and_reject_bad_lengths() {
        let seqs = [1, 2, u64::MAX];
        assert_eq!(decode_seqs(&encode_seqs(&seqs)).ok(), Some(seqs.to_vec()));
        assert!(matches!(decode_seqs(&[0; 7]), Err(StoreError::Corrupt(_))));
        assert_eq!(decode_seqs(&[]).ok(), Some(vec![]));
    }
}

#[cfg(test)]
mod reprepare_tests {
    use rusqlite::StatementStatus;

    use super::*;

    /// The read statements run thousands of times a second with new
    /// bindings; they must not be compiled again on each (SQLite re-plans a
    /// statement whose plan used a bound value, e.g. `LIMIT ?`, unless the
    /// connection has the query planner stability guarantee).
    #[test]
    fn read_statements_are_not_reprepared() {
        let dir = std::env::temp_dir().join(format!(
            "sb-reprepare-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db.sqlite");
        {
            let mut w = Connection::open(&path).unwrap();
            schema::configure_writer(&w).unwrap();
            schema::migrate(&mut w).unwrap();
            for i in 0..5i64 {
                w.execute(
                    "INSERT INTO message VALUES (?1, 'a', 'x', 'a', ?2, 'k', x'00', ?3, 0, '')",
                    params![i, format!("u{i}"), format!("c{i}")],
                )
                .unwrap();
                for seq in 1..=3i64 {
                    w.execute(
                        "INSERT INTO timeline VALUES ('a', ?1, ?2, ?3)",
                        params![format!("u{i}"), seq, i],
                    )
                    .unwrap();
                }
            }
        }
        let pool = crate::read_pool::ReadPool::start("test-reader", connections(&path, 1).unwrap())
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let counts = rt.block_on(pool.run(|c| {
            for i in 0..5u64 {
                let user = UserKey {
                    app: "a".into(),
                    uid: format!("u{i}"),
                };
                let page = entries_after(c, &user, i % 2, 10 + i as usize)?;
                assert_eq!(page.head, 3);
                assert!(!page.entries.is_empty());
                head(c, &user)?;
                cursor(c, &user, "d")?;
            }
            Ok([ENTRIES_AFTER_SQL, HEAD_SQL, CURSOR_SQL]
                .map(|sql| {
                    let s = c.prepare_cached(sql).unwrap();
                    (sql, s.get_status(StatementStatus::RePrepare))
                })
                .to_vec())
        }));
        for (sql, reprepared) in counts.unwrap() {
            assert_eq!(reprepared, 0, "{sql}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn rand_suffix() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }
}
