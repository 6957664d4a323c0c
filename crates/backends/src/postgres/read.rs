//! The one-statement operations of [`PgStore`](super::PgStore): timeline
//! pages and heads, cursors, the outbox, the purge, plus the row decoding
//! shared with the writer. Each runs as ONE statement (autocommit), so it
//! sees one snapshot and needs no transaction.

use std::sync::Arc;

use bytes::Bytes;
use deadpool_postgres::Object;
use switchboard_core::store::OutboxReceipt;
use switchboard_core::{BusEvent, Entry, Message, Page, StoreError, UserKey};
use tokio_postgres::Row;

use super::{CursorKey, corrupt, unavailable};

/// Most cursors upserted by one statement.
pub const CURSOR_CHUNK: usize = 1_000;

/// The ten `message` columns, in the order [`message_from_row`] reads them.
pub const MESSAGE_COLUMNS: &str = "m.msg_id, m.app, m.from_uid, m.to_app, m.to_uid, m.kind, m.body, m.client_msg_id, m.server_time_ms, m.group_gid";

/// A page of `user`'s timeline after `since`, and the head, in ONE statement
/// (one snapshot), so `head >= every entry's seq`.
pub async fn entries_after(
    conn: &Object,
    user: &UserKey,
    since: u64,
    limit: usize,
) -> Result<Page, StoreError> {
    let sql = format!(
        "SELECT h.head, e.* FROM
           (SELECT COALESCE((SELECT head FROM timeline_heads WHERE app = $1 AND uid = $2), 0) AS head) h
         LEFT JOIN LATERAL (
           SELECT t.seq, {MESSAGE_COLUMNS}
           FROM timeline t JOIN message m ON m.msg_id = t.msg_id
           WHERE t.app = $1 AND t.uid = $2 AND t.seq > $3
           ORDER BY t.seq LIMIT $4
         ) e ON true
         ORDER BY e.seq"
    );
    let stmt = conn.prepare_cached(&sql).await.map_err(unavailable)?;
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn
        .query(&stmt, &[&user.app, &user.uid, &since, &limit])
        .await
        .map_err(unavailable)?;
    let mut head = 0;
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        head = to_u64(row.try_get(0).map_err(corrupt)?, "timeline_heads.head")?;
        let seq: Option<i64> = row.try_get(1).map_err(corrupt)?;
        if let Some(seq) = seq {
            entries.push(Entry {
                seq: to_u64(seq, "timeline.seq")?,
                message: Arc::new(message_from_row(row, 2)?),
            });
        }
    }
    Ok(Page { entries, head })
}

/// The messages between `a` and `b` either way, newest first, with an id
/// below `before` when given, at most `limit`: two ranges of the
/// `message_conversation` index merged by id, in one statement.
pub async fn conversation(
    conn: &Object,
    a: &UserKey,
    b: &UserKey,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<Arc<Message>>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let one_way = |from: (&str, &str), to: (&str, &str)| {
        format!(
            "(SELECT {MESSAGE_COLUMNS} FROM message m
              WHERE m.app = {} AND m.from_uid = {} AND m.to_app = {} AND m.to_uid = {}
                AND m.msg_id < $5
              ORDER BY m.msg_id DESC LIMIT $6)",
            from.0, from.1, to.0, to.1
        )
    };
    // With a == b the second range is the first again: skip it.
    let sql = format!(
        "SELECT * FROM ({} UNION ALL {}) x ORDER BY x.msg_id DESC LIMIT $6",
        one_way(("$1", "$2"), ("$3", "$4")),
        one_way(("$3", "$4"), ("$1", "$2")).replace(
            "AND m.msg_id < $5",
            "AND m.msg_id < $5 AND NOT ($1::text = $3::text AND $2::text = $4::text)"
        ),
    );
    let stmt = conn.prepare_cached(&sql).await.map_err(unavailable)?;
    // Ids are stored as their i64 bit pattern and stay below 2^63.
    let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn
        .query(&stmt, &[&a.app, &a.uid, &b.app, &b.uid, &before, &limit])
        .await
        .map_err(unavailable)?;
    rows.iter()
        .map(|row| message_from_row(row, 0).map(Arc::new))
        .collect()
}

/// The highest seq on `user`'s timeline, 0 when empty.
pub async fn head(conn: &Object, user: &UserKey) -> Result<u64, StoreError> {
    let sql = "SELECT head FROM timeline_heads WHERE app = $1 AND uid = $2";
    Ok(user_u64(conn, sql, user, "timeline_heads.head")
        .await?
        .unwrap_or(0))
}

/// One non-negative number kept per user (`sql` selects it by `$1` app and
/// `$2` uid), `None` when the user has no row.
async fn user_u64(
    conn: &Object,
    sql: &str,
    user: &UserKey,
    what: &str,
) -> Result<Option<u64>, StoreError> {
    let stmt = conn.prepare_cached(sql).await.map_err(unavailable)?;
    let row = conn
        .query_opt(&stmt, &[&user.app, &user.uid])
        .await
        .map_err(unavailable)?;
    row.map(|r| to_u64(r.try_get(0).map_err(corrupt)?, what))
        .transpose()
}

/// The timeline head and the persisted cursor of a device (each 0 when
/// absent) in one statement: one round trip for a login.
pub async fn head_and_cursor(
    conn: &Object,
    user: &UserKey,
    device_id: &str,
) -> Result<(u64, u64), StoreError> {
    let stmt = conn
        .prepare_cached(
            "SELECT (SELECT head FROM timeline_heads WHERE app = $1 AND uid = $2),
                    (SELECT seq FROM cursor WHERE app = $1 AND uid = $2 AND device_id = $3)",
        )
        .await
        .map_err(unavailable)?;
    let row = conn
        .query_one(&stmt, &[&user.app, &user.uid, &device_id])
        .await
        .map_err(unavailable)?;
    let head: Option<i64> = row.try_get(0).map_err(corrupt)?;
    let cursor: Option<i64> = row.try_get(1).map_err(corrupt)?;
    Ok((
        head.map_or(Ok(0), |h| to_u64(h, "timeline_heads.head"))?,
        cursor.map_or(Ok(0), |c| to_u64(c, "cursor.seq"))?,
    ))
}

/// The persisted cursor of a device, 0 when none.
pub async fn cursor(conn: &Object, user: &UserKey, device_id: &str) -> Result<u64, StoreError> {
    let stmt = conn
        .prepare_cached("SELECT seq FROM cursor WHERE app = $1 AND uid = $2 AND device_id = $3")
        .await
        .map_err(unavailable)?;
    let row = conn
        .query_opt(&stmt, &[&user.app, &user.uid, &device_id])
        .await
        .map_err(unavailable)?;
    match row {
        Some(row) => to_u64(row.try_get(0).map_err(corrupt)?, "cursor.seq"),
        None => Ok(0),
    }
}

/// Raises the user's revocation time (never lowers it); returns the one in force.
pub async fn revoke_tokens(
    conn: &Object,
    user: &UserKey,
    issued_before: u64,
) -> Result<u64, StoreError> {
    let before = i64::try_from(issued_before).map_err(|_| {
        StoreError::Invalid(format!("revocation time {issued_before} out of range"))
    })?;
    let stmt = conn
        .prepare_cached(
            "INSERT INTO token_revocation (app, uid, issued_before) VALUES ($1, $2, $3)
             ON CONFLICT (app, uid) DO UPDATE
               SET issued_before = GREATEST(token_revocation.issued_before, EXCLUDED.issued_before)
             RETURNING issued_before",
        )
        .await
        .map_err(unavailable)?;
    let row = conn
        .query_one(&stmt, &[&user.app, &user.uid, &before])
        .await
        .map_err(unavailable)?;
    to_u64(
        row.try_get(0).map_err(corrupt)?,
        "token_revocation.issued_before",
    )
}

/// The user's conversation view, `None` when none was stored.
/// A stored message by id, `None` when absent.
pub async fn message(conn: &Object, msg_id: u64) -> Result<Option<Message>, StoreError> {
    let sql = format!("SELECT {MESSAGE_COLUMNS} FROM message m WHERE m.msg_id = $1");
    let stmt = conn.prepare_cached(&sql).await.map_err(unavailable)?;
    let row = conn
        .query_opt(&stmt, &[&(msg_id as i64)])
        .await
        .map_err(unavailable)?;
    row.map(|r| message_from_row(&r, 0)).transpose()
}

pub async fn conversation_view(
    conn: &Object,
    user: &UserKey,
) -> Result<Option<bytes::Bytes>, StoreError> {
    let stmt = conn
        .prepare_cached("SELECT view FROM conversation_view WHERE app = $1 AND uid = $2")
        .await
        .map_err(unavailable)?;
    let row = conn
        .query_opt(&stmt, &[&user.app, &user.uid])
        .await
        .map_err(unavailable)?;
    row.map(|r| r.try_get::<_, Vec<u8>>(0).map(bytes::Bytes::from))
        .transpose()
        .map_err(corrupt)
}

/// Stores (replaces) the user's conversation view.
pub async fn put_conversation_view(
    conn: &Object,
    user: &UserKey,
    view: &[u8],
) -> Result<(), StoreError> {
    let stmt = conn
        .prepare_cached(
            "INSERT INTO conversation_view (app, uid, view) VALUES ($1, $2, $3)
             ON CONFLICT (app, uid) DO UPDATE SET view = EXCLUDED.view",
        )
        .await
        .map_err(unavailable)?;
    conn.execute(&stmt, &[&user.app, &user.uid, &view])
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// The user's revocation time, `None` when never revoked.
pub async fn tokens_revoked_before(
    conn: &Object,
    user: &UserKey,
) -> Result<Option<u64>, StoreError> {
    let sql = "SELECT issued_before FROM token_revocation WHERE app = $1 AND uid = $2";
    user_u64(conn, sql, user, "token_revocation.issued_before").await
}

/// Upserts cursors (sorted by the caller); `GREATEST` keeps a stored cursor
/// from moving back when two nodes flush the same device. A group cursor
/// goes to the group of that id now, never past its head (an ack from
/// before a delete must not hide the new group's entries), and nowhere
/// when there is no such group.
pub async fn upsert_cursors(conn: &Object, cursors: &[(CursorKey, u64)]) -> Result<(), StoreError> {
    let (users, groups): (Vec<_>, Vec<_>) =
        cursors.iter().partition(|((_, _, _, g), _)| g.is_empty());
    // advance_cursor rejects seqs above i64::MAX, so this never clamps.
    let seq = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    if !users.is_empty() {
        let stmt = conn
            .prepare_cached(
                "INSERT INTO cursor (app, uid, device_id, seq)
                 SELECT a, u, d, s FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
                     AS t(a, u, d, s)
                 ORDER BY a, u, d
                 ON CONFLICT (app, uid, device_id) DO UPDATE SET seq = GREATEST(cursor.seq, excluded.seq)",
            )
            .await
            .map_err(unavailable)?;
        let apps: Vec<&str> = users.iter().map(|((a, _, _, _), _)| a.as_str()).collect();
        let uids: Vec<&str> = users.iter().map(|((_, u, _, _), _)| u.as_str()).collect();
        let devices: Vec<&str> = users.iter().map(|((_, _, d, _), _)| d.as_str()).collect();
        let seqs: Vec<i64> = users.iter().map(|(_, s)| seq(*s)).collect();
        conn.execute(&stmt, &[&apps, &uids, &devices, &seqs])
            .await
            .map_err(unavailable)?;
    }
    if !groups.is_empty() {
        let stmt = conn
            .prepare_cached(
                "INSERT INTO group_cursor (app, uid, device_id, group_id, seq)
                 SELECT t.a, t.u, t.d, g.id, LEAST(t.s, g.head)
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
                     AS t(a, u, d, gid, s)
                 JOIN grp g ON g.app = t.a AND g.gid = t.gid
                 ORDER BY 1, 2, 3, 4
                 ON CONFLICT (app, uid, device_id, group_id)
                 DO UPDATE SET seq = GREATEST(group_cursor.seq, excluded.seq)",
            )
            .await
            .map_err(unavailable)?;
        let apps: Vec<&str> = groups.iter().map(|((a, _, _, _), _)| a.as_str()).collect();
        let uids: Vec<&str> = groups.iter().map(|((_, u, _, _), _)| u.as_str()).collect();
        let devices: Vec<&str> = groups.iter().map(|((_, _, d, _), _)| d.as_str()).collect();
        let gids: Vec<&str> = groups.iter().map(|((_, _, _, g), _)| g.as_str()).collect();
        let seqs: Vec<i64> = groups.iter().map(|(_, s)| seq(*s)).collect();
        conn.execute(&stmt, &[&apps, &uids, &devices, &gids, &seqs])
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

/// Inserts an outbox event, or returns the first one with the same
/// `(user, dedupe_id)`.
pub async fn outbox_append(
    conn: &Object,
    event: &BusEvent,
    dedupe_id: &str,
    now_ms: i64,
) -> Result<OutboxReceipt, StoreError> {
    let insert = conn
        .prepare_cached(
            "INSERT INTO outbox (id, topic, app, uid, kind, body, time_ms, dedupe_id, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT DO NOTHING RETURNING id",
        )
        .await
        .map_err(unavailable)?;
    let id = event.id as i64;
    let inserted = conn
        .query_opt(
            &insert,
            &[
                &id,
                &event.topic,
                &event.user.app,
                &event.user.uid,
                &event.kind,
                &event.body.as_ref(),
                &event.time_ms,
                &dedupe_id,
                &now_ms,
            ],
        )
        .await
        .map_err(unavailable)?;
    if inserted.is_some() {
        return Ok(OutboxReceipt {
            id: event.id,
            duplicate: false,
        });
    }
    // A conflict: on the de-dup key (a resend: answer the first id; a
    // concurrent insert of it has committed, since ON CONFLICT waited for
    // it), or on the event id (the caller reused one).
    if !dedupe_id.is_empty() {
        let first = conn
            .prepare_cached("SELECT id FROM outbox WHERE app = $1 AND uid = $2 AND dedupe_id = $3")
            .await
            .map_err(unavailable)?;
        if let Some(row) = conn
            .query_opt(&first, &[&event.user.app, &event.user.uid, &dedupe_id])
            .await
            .map_err(unavailable)?
        {
            let id: i64 = row.try_get(0).map_err(corrupt)?;
            return Ok(OutboxReceipt {
                id: id as u64,
                duplicate: true,
            });
        }
    }
    Err(StoreError::Invalid(format!(
        "event id {} is already in the outbox",
        event.id
    )))
}

/// Up to `limit` undelivered outbox events with an id above `after`, lowest
/// id first.
pub async fn outbox_pending(
    conn: &Object,
    after: u64,
    limit: usize,
) -> Result<Vec<BusEvent>, StoreError> {
    let stmt = conn
        .prepare_cached(
            "SELECT id, topic, app, uid, kind, body, time_ms FROM outbox
             WHERE delivered_ms IS NULL AND id > $2 ORDER BY id LIMIT $1",
        )
        .await
        .map_err(unavailable)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // Ids are stored as i64; one above i64::MAX cannot exist.
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let rows = conn
        .query(&stmt, &[&limit, &after])
        .await
        .map_err(unavailable)?;
    rows.iter().map(event_from_row).collect()
}

/// Marks events delivered; returns how many were pending.
pub async fn mark_delivered(conn: &Object, ids: &[u64]) -> Result<usize, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let stmt = conn
        .prepare_cached(
            "UPDATE outbox SET delivered_ms = $2 WHERE id = ANY($1) AND delivered_ms IS NULL",
        )
        .await
        .map_err(unavailable)?;
    let ids: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
    let n = conn
        .execute(&stmt, &[&ids, &switchboard_core::now_ms()])
        .await
        .map_err(unavailable)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Deletes de-dup rows and delivered outbox rows older than `cutoff_ms`.
pub async fn purge(conn: &Object, cutoff_ms: i64) -> Result<usize, StoreError> {
    let stmt = conn
        .prepare_cached(
            "WITH d AS (DELETE FROM dedupe WHERE created_ms < $1 RETURNING 1),
                  g AS (DELETE FROM group_dedupe WHERE created_ms < $1 RETURNING 1),
                  o AS (DELETE FROM outbox WHERE delivered_ms IS NOT NULL AND delivered_ms < $1
                        RETURNING 1)
             SELECT (SELECT count(*) FROM d) + (SELECT count(*) FROM g)
                  + (SELECT count(*) FROM o)",
        )
        .await
        .map_err(unavailable)?;
    let row = conn
        .query_one(&stmt, &[&cutoff_ms])
        .await
        .map_err(unavailable)?;
    let n: i64 = row.try_get(0).map_err(corrupt)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

fn event_from_row(row: &Row) -> Result<BusEvent, StoreError> {
    let id: i64 = row.try_get(0).map_err(corrupt)?;
    Ok(BusEvent {
        id: id as u64,
        topic: row.try_get(1).map_err(corrupt)?,
        user: UserKey {
            app: row.try_get(2).map_err(corrupt)?,
            uid: row.try_get(3).map_err(corrupt)?,
        },
        kind: row.try_get(4).map_err(corrupt)?,
        body: Bytes::from(row.try_get::<_, Vec<u8>>(5).map_err(corrupt)?),
        time_ms: row.try_get(6).map_err(corrupt)?,
    })
}

/// Decodes the [`MESSAGE_COLUMNS`] starting at column `first`.
pub fn message_from_row(row: &Row, first: usize) -> Result<Message, StoreError> {
    let id: i64 = row.try_get(first).map_err(corrupt)?;
    Ok(Message {
        id: id as u64,
        from: UserKey {
            app: row.try_get(first + 1).map_err(corrupt)?,
            uid: row.try_get(first + 2).map_err(corrupt)?,
        },
        to: UserKey {
            app: row.try_get(first + 3).map_err(corrupt)?,
            uid: row.try_get(first + 4).map_err(corrupt)?,
        },
        kind: row.try_get(first + 5).map_err(corrupt)?,
        body: Bytes::from(row.try_get::<_, Vec<u8>>(first + 6).map_err(corrupt)?),
        client_msg_id: row.try_get(first + 7).map_err(corrupt)?,
        server_time_ms: row.try_get(first + 8).map_err(corrupt)?,
        group: row.try_get(first + 9).map_err(corrupt)?,
    })
}

/// A seq read back; negative means the data is not ours to trust.
pub fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}: {v}")))
}
