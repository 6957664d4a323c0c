//! Groups on PostgreSQL (migration `0003_groups.sql`): every write is one
//! transaction that first locks the group's `grp` row, so membership
//! changes, deletes and appends of one group are serialized on every node,
//! while other groups proceed in parallel. A group message is one
//! `message` row and one `group_timeline` row, whatever the member count.
//! Reads are one statement each; `group_states` is one query over the
//! user's `user_group` rows with joins, however many groups the user has.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use deadpool_postgres::Object;
use switchboard_core::group::{
    Group, GroupKey, GroupRefusal, GroupSpec, GroupState, Member, MembersChanged, NewGroupMessage,
    PostPolicy, Role,
};
use switchboard_core::model::RECALLED_KIND;
use switchboard_core::{Appended, Entry, Page, StoreError, UserKey, now_ms};
use tokio_postgres::Row;

use super::read::{MESSAGE_COLUMNS, message_from_row, to_u64};
use super::writer::check_text;
use super::{corrupt, unavailable};

/// The columns [`group_from_row`] reads, from column 0.
const GROUP_COLUMNS: &str =
    "g.id, g.name, g.meta, g.post_policy, g.history_visible, g.created_ms, g.head, g.members";

fn group_from_row(key: &GroupKey, row: &Row) -> Result<(i64, Group), StoreError> {
    let policy: String = row.try_get(3).map_err(corrupt)?;
    let post_policy = PostPolicy::parse(&policy)
        .ok_or_else(|| StoreError::Corrupt(format!("grp.post_policy {policy:?}")))?;
    Ok((
        row.try_get(0).map_err(corrupt)?,
        Group {
            spec: GroupSpec {
                key: key.clone(),
                name: row.try_get(1).map_err(corrupt)?,
                meta: Bytes::from(row.try_get::<_, Vec<u8>>(2).map_err(corrupt)?),
                post_policy,
                history_visible: row.try_get(4).map_err(corrupt)?,
            },
            created_ms: row.try_get(5).map_err(corrupt)?,
            head: to_u64(row.try_get(6).map_err(corrupt)?, "grp.head")?,
            members: to_u64(row.try_get(7).map_err(corrupt)?, "grp.members")?,
        },
    ))
}

/// `uid, role, joined_seq, joined_ms`.
fn member_from_row(row: &Row) -> Result<Member, StoreError> {
    let role: String = row.try_get(1).map_err(corrupt)?;
    Ok(Member {
        uid: row.try_get(0).map_err(corrupt)?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("group_member.role {role:?}")))?,
        joined_seq: to_u64(row.try_get(2).map_err(corrupt)?, "group_member.joined_seq")?,
        joined_ms: row.try_get(3).map_err(corrupt)?,
    })
}

fn check_key(key: &GroupKey) -> Result<(), StoreError> {
    check_text("group app", &key.app)?;
    check_text("gid", &key.gid)
}

/// Text PostgreSQL cannot hold is refused before any statement.
pub fn check_spec(spec: &GroupSpec) -> Result<(), StoreError> {
    check_key(&spec.key)?;
    check_text("group name", &spec.name)
}

pub async fn put_group(conn: &Object, spec: &GroupSpec) -> Result<(Group, bool), StoreError> {
    check_spec(spec)?;
    // xmax = 0 on the returned row: it was inserted, not updated.
    let sql = format!(
        "INSERT INTO grp AS g (app, gid, name, meta, post_policy, history_visible, created_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (app, gid) DO UPDATE
           SET name = excluded.name, meta = excluded.meta, post_policy = excluded.post_policy,
               history_visible = excluded.history_visible
         RETURNING {GROUP_COLUMNS}, (g.xmax = 0) AS created"
    );
    let stmt = conn.prepare_cached(&sql).await.map_err(unavailable)?;
    let k = &spec.key;
    let row = conn
        .query_one(
            &stmt,
            &[
                &k.app,
                &k.gid,
                &spec.name,
                &spec.meta.as_ref(),
                &spec.post_policy.as_str(),
                &spec.history_visible,
                &now_ms(),
            ],
        )
        .await
        .map_err(unavailable)?;
    let (_, group) = group_from_row(k, &row)?;
    Ok((group, row.try_get(8).map_err(corrupt)?))
}

pub async fn group(conn: &Object, key: &GroupKey) -> Result<Option<Group>, StoreError> {
    check_key(key)?;
    let sql = format!("SELECT {GROUP_COLUMNS} FROM grp g WHERE g.app = $1 AND g.gid = $2");
    let stmt = conn.prepare_cached(&sql).await.map_err(unavailable)?;
    let row = conn
        .query_opt(&stmt, &[&key.app, &key.gid])
        .await
        .map_err(unavailable)?;
    row.map(|r| group_from_row(key, &r).map(|(_, g)| g))
        .transpose()
}

/// Locks the group's row for the transaction: `(id, group)`, `None` when
/// there is no such group.
async fn lock_group(
    tx: &deadpool_postgres::Transaction<'_>,
    key: &GroupKey,
) -> Result<Option<(i64, Group)>, StoreError> {
    let sql =
        format!("SELECT {GROUP_COLUMNS} FROM grp g WHERE g.app = $1 AND g.gid = $2 FOR UPDATE");
    let stmt = tx.prepare_cached(&sql).await.map_err(unavailable)?;
    let row = tx
        .query_opt(&stmt, &[&key.app, &key.gid])
        .await
        .map_err(unavailable)?;
    row.map(|r| group_from_row(key, &r)).transpose()
}

pub async fn delete_group(conn: &mut Object, key: &GroupKey) -> Result<bool, StoreError> {
    check_key(key)?;
    let tx = conn.transaction().await.map_err(unavailable)?;
    let Some((id, _)) = lock_group(&tx, key).await? else {
        return Ok(false);
    };
    tx.execute(
        "DELETE FROM user_group WHERE app = $1 AND gid = $2
           AND uid IN (SELECT uid FROM group_member WHERE group_id = $3)",
        &[&key.app, &key.gid, &id],
    )
    .await
    .map_err(unavailable)?;
    tx.execute(
        "DELETE FROM message WHERE msg_id IN (SELECT msg_id FROM group_timeline WHERE group_id = $1)",
        &[&id],
    )
    .await
    .map_err(unavailable)?;
    for sql in [
        "DELETE FROM group_timeline WHERE group_id = $1",
        "DELETE FROM group_member WHERE group_id = $1",
        "DELETE FROM group_dedupe WHERE group_id = $1",
        "DELETE FROM group_cursor WHERE group_id = $1",
        "DELETE FROM grp WHERE id = $1",
    ] {
        tx.execute(sql, &[&id]).await.map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(true)
}

pub async fn add_members(
    conn: &mut Object,
    key: &GroupKey,
    members: &[(String, Role)],
    max_members: u64,
) -> Result<MembersChanged, StoreError> {
    check_key(key)?;
    for (uid, _) in members {
        check_text("uid", uid)?;
    }
    let tx = conn.transaction().await.map_err(unavailable)?;
    let Some((id, group)) = lock_group(&tx, key).await? else {
        return Err(GroupRefusal::NotFound.into());
    };
    let uids: Vec<&str> = members.iter().map(|(u, _)| u.as_str()).collect();
    let rows = tx
        .query(
            "SELECT uid, role FROM group_member WHERE group_id = $1 AND uid = ANY($2)",
            &[&id, &uids],
        )
        .await
        .map_err(unavailable)?;
    let mut current: HashMap<String, Role> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let role: String = row.try_get(1).map_err(corrupt)?;
        let role = Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("group_member.role {role:?}")))?;
        current.insert(row.try_get(0).map_err(corrupt)?, role);
    }
    // The call's effect (a uid given twice: its last role), in order.
    let mut wanted: Vec<(&str, Role, bool)> = Vec::new();
    for (uid, role) in members {
        if let Some(w) = wanted.iter_mut().find(|w| w.0 == uid) {
            w.1 = *role;
            continue;
        }
        wanted.push((uid, *role, !current.contains_key(uid)));
    }
    wanted.retain(|(uid, role, new)| *new || current.get(*uid) != Some(role));
    let added = wanted.iter().filter(|w| w.2).count() as u64;
    let count = group.members + added;
    if count > max_members {
        return Err(GroupRefusal::Full.into());
    }
    if !wanted.is_empty() {
        let w_uids: Vec<&str> = wanted.iter().map(|w| w.0).collect();
        let roles: Vec<&str> = wanted.iter().map(|w| w.1.as_str()).collect();
        let head = i64::try_from(group.head).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO group_member (group_id, uid, role, joined_seq, joined_ms)
             SELECT $1::bigint, u, r, $4::bigint, $5::bigint FROM unnest($2::text[], $3::text[]) AS t(u, r)
             ORDER BY u
             ON CONFLICT (group_id, uid) DO UPDATE SET role = excluded.role",
            &[&id, &w_uids, &roles, &head, &now_ms()],
        )
        .await
        .map_err(unavailable)?;
        let new_uids: Vec<&str> = wanted.iter().filter(|w| w.2).map(|w| w.0).collect();
        tx.execute(
            "INSERT INTO user_group (app, uid, gid, group_id)
             SELECT $1::text, u, $3::text, $4::bigint FROM unnest($2::text[]) AS t(u)
             ORDER BY u
             ON CONFLICT (app, uid, gid) DO UPDATE SET group_id = excluded.group_id",
            &[&key.app, &new_uids, &key.gid, &id],
        )
        .await
        .map_err(unavailable)?;
        tx.execute(
            "UPDATE grp SET members = $2 WHERE id = $1",
            &[&id, &(count as i64)],
        )
        .await
        .map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(MembersChanged {
        changed: wanted.iter().map(|w| w.0.to_owned()).collect(),
        members: count,
    })
}

pub async fn remove_members(
    conn: &mut Object,
    key: &GroupKey,
    uids: &[String],
) -> Result<MembersChanged, StoreError> {
    check_key(key)?;
    for uid in uids {
        check_text("uid", uid)?;
    }
    let tx = conn.transaction().await.map_err(unavailable)?;
    let Some((id, group)) = lock_group(&tx, key).await? else {
        return Err(GroupRefusal::NotFound.into());
    };
    let rows = tx
        .query(
            "DELETE FROM group_member WHERE group_id = $1 AND uid = ANY($2) RETURNING uid",
            &[&id, &uids],
        )
        .await
        .map_err(unavailable)?;
    let mut gone = std::collections::HashSet::with_capacity(rows.len());
    for row in &rows {
        gone.insert(row.try_get::<_, String>(0).map_err(corrupt)?);
    }
    // In the order given, once each.
    let mut changed: Vec<String> = Vec::with_capacity(gone.len());
    for uid in uids {
        if gone.remove(uid) {
            changed.push(uid.clone());
        }
    }
    let count = group.members.saturating_sub(changed.len() as u64);
    if !changed.is_empty() {
        tx.execute(
            "DELETE FROM user_group WHERE app = $1 AND gid = $3 AND uid = ANY($2)",
            &[&key.app, &changed, &key.gid],
        )
        .await
        .map_err(unavailable)?;
        tx.execute(
            "UPDATE grp SET members = $2 WHERE id = $1",
            &[&id, &(count as i64)],
        )
        .await
        .map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(MembersChanged {
        changed,
        members: count,
    })
}

pub async fn member(
    conn: &Object,
    key: &GroupKey,
    uid: &str,
) -> Result<Option<Member>, StoreError> {
    check_key(key)?;
    check_text("uid", uid)?;
    let stmt = conn
        .prepare_cached(
            "SELECT m.uid, m.role, m.joined_seq, m.joined_ms
             FROM grp g JOIN group_member m ON m.group_id = g.id
             WHERE g.app = $1 AND g.gid = $2 AND m.uid = $3",
        )
        .await
        .map_err(unavailable)?;
    let row = conn
        .query_opt(&stmt, &[&key.app, &key.gid, &uid])
        .await
        .map_err(unavailable)?;
    row.map(|r| member_from_row(&r)).transpose()
}

/// `after` as a lower bound: `''` sorts before every uid.
pub async fn members(
    conn: &Object,
    key: &GroupKey,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Member>, StoreError> {
    check_key(key)?;
    let after = after.unwrap_or("");
    check_text("after", after)?;
    let stmt = conn
        .prepare_cached(
            "SELECT m.uid, m.role, m.joined_seq, m.joined_ms
             FROM grp g JOIN group_member m ON m.group_id = g.id
             WHERE g.app = $1 AND g.gid = $2 AND m.uid > $3
             ORDER BY m.uid LIMIT $4",
        )
        .await
        .map_err(unavailable)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn
        .query(&stmt, &[&key.app, &key.gid, &after, &limit])
        .await
        .map_err(unavailable)?;
    rows.iter().map(member_from_row).collect()
}

pub async fn user_groups(
    conn: &Object,
    user: &UserKey,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    check_text("app", &user.app)?;
    check_text("uid", &user.uid)?;
    let after = after.unwrap_or("");
    check_text("after", after)?;
    let stmt = conn
        .prepare_cached(
            "SELECT gid FROM user_group WHERE app = $1 AND uid = $2 AND gid > $3
             ORDER BY gid LIMIT $4",
        )
        .await
        .map_err(unavailable)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn
        .query(&stmt, &[&user.app, &user.uid, &after, &limit])
        .await
        .map_err(unavailable)?;
    rows.iter().map(|r| r.try_get(0).map_err(corrupt)).collect()
}

/// One statement for all of the user's groups (the written cursors).
pub async fn group_states(
    conn: &Object,
    user: &UserKey,
    device_id: &str,
) -> Result<Vec<GroupState>, StoreError> {
    check_text("app", &user.app)?;
    check_text("uid", &user.uid)?;
    check_text("device_id", device_id)?;
    let stmt = conn
        .prepare_cached(
            "SELECT u.gid, g.head, COALESCE(c.seq, 0),
                    CASE WHEN g.history_visible THEN 0 ELSE m.joined_seq END
             FROM user_group u
             JOIN grp g ON g.id = u.group_id
             JOIN group_member m ON m.group_id = g.id AND m.uid = u.uid
             LEFT JOIN group_cursor c
               ON c.app = u.app AND c.uid = u.uid AND c.device_id = $3 AND c.group_id = g.id
             WHERE u.app = $1 AND u.uid = $2
             ORDER BY u.gid",
        )
        .await
        .map_err(unavailable)?;
    let rows = conn
        .query(&stmt, &[&user.app, &user.uid, &device_id])
        .await
        .map_err(unavailable)?;
    rows.iter()
        .map(|r| {
            let head = to_u64(r.try_get(1).map_err(corrupt)?, "grp.head")?;
            Ok(GroupState {
                gid: r.try_get(0).map_err(corrupt)?,
                head,
                cursor: to_u64(r.try_get(2).map_err(corrupt)?, "group_cursor.seq")?.min(head),
                visible_after: to_u64(r.try_get(3).map_err(corrupt)?, "group_member.joined_seq")?,
            })
        })
        .collect()
}

/// A page and the head in ONE statement (one snapshot).
pub async fn group_entries_after(
    conn: &Object,
    key: &GroupKey,
    since: u64,
    limit: usize,
) -> Result<Page, StoreError> {
    check_key(key)?;
    let sql = format!(
        "SELECT h.head, e.* FROM (SELECT id, head FROM grp WHERE app = $1 AND gid = $2) h
         LEFT JOIN LATERAL (
           SELECT t.seq, {MESSAGE_COLUMNS}
           FROM group_timeline t JOIN message m ON m.msg_id = t.msg_id
           WHERE t.group_id = h.id AND t.seq > $3
           ORDER BY t.seq LIMIT $4
         ) e ON true
         ORDER BY e.seq"
    );
    let stmt = conn.prepare_cached(&sql).await.map_err(unavailable)?;
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn
        .query(&stmt, &[&key.app, &key.gid, &since, &limit])
        .await
        .map_err(unavailable)?;
    let mut head = 0;
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        head = to_u64(row.try_get(0).map_err(corrupt)?, "grp.head")?;
        let seq: Option<i64> = row.try_get(1).map_err(corrupt)?;
        if let Some(seq) = seq {
            entries.push(Entry {
                seq: to_u64(seq, "group_timeline.seq")?,
                message: Arc::new(message_from_row(row, 2)?),
            });
        }
    }
    Ok(Page { entries, head })
}

/// One transaction: lock the group's row (which serializes the group's
/// appends on every node and hands out the next seq), answer a resend
/// from the de-dup row, check the sender, then the message, the timeline
/// row and the de-dup row.
pub async fn group_append(conn: &mut Object, msg: NewGroupMessage) -> Result<Appended, StoreError> {
    let m = &msg.message;
    check_key(&msg.group)?;
    for (what, s) in [
        ("from.app", &m.from.app),
        ("from.uid", &m.from.uid),
        ("to.app", &m.to.app),
        ("to.uid", &m.to.uid),
        ("kind", &m.kind),
        ("client_msg_id", &m.client_msg_id),
    ] {
        check_text(what, s)?;
    }
    if m.group != msg.group.gid {
        return Err(StoreError::Invalid(format!(
            "message.group {:?} is not the group {}",
            m.group, msg.group
        )));
    }
    let tx = conn.transaction().await.map_err(unavailable)?;
    let Some((id, group)) = lock_group(&tx, &msg.group).await? else {
        return Err(GroupRefusal::NotFound.into());
    };
    if !m.client_msg_id.is_empty() {
        let sql = format!(
            "SELECT d.seq, {MESSAGE_COLUMNS} FROM group_dedupe d
             JOIN message m ON m.msg_id = d.msg_id
             WHERE d.group_id = $1 AND d.app = $2 AND d.uid = $3 AND d.client_msg_id = $4"
        );
        let stmt = tx.prepare_cached(&sql).await.map_err(unavailable)?;
        let hit = tx
            .query_opt(&stmt, &[&id, &m.from.app, &m.from.uid, &m.client_msg_id])
            .await
            .map_err(unavailable)?;
        if let Some(row) = hit {
            return Ok(Appended {
                seqs: vec![to_u64(
                    row.try_get(0).map_err(corrupt)?,
                    "group_dedupe.seq",
                )?],
                message: Arc::new(message_from_row(&row, 1)?),
                duplicate: true,
            });
        }
    }
    if msg.check_sender {
        let role: Option<String> = if m.from.app == msg.group.app {
            tx.query_opt(
                "SELECT role FROM group_member WHERE group_id = $1 AND uid = $2",
                &[&id, &m.from.uid],
            )
            .await
            .map_err(unavailable)?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(corrupt)?
        } else {
            None
        };
        match role.as_deref().map(Role::parse) {
            None => return Err(GroupRefusal::NotMember.into()),
            Some(None) => return Err(StoreError::Corrupt(format!("group_member.role {role:?}"))),
            Some(Some(r)) if group.spec.post_policy == PostPolicy::Admins && r != Role::Admin => {
                return Err(GroupRefusal::AdminsOnly.into());
            }
            Some(Some(_)) => {}
        }
    }
    if let Some(a) = &msg.amends {
        // Locked until COMMIT: a concurrent recall is seen.
        let open = tx
            .query_opt(
                &format!(
                    "SELECT 1 FROM message WHERE msg_id = $1 AND kind <> '{RECALLED_KIND}'
                     FOR UPDATE"
                ),
                &[&(a.message.id as i64)],
            )
            .await
            .map_err(unavailable)?;
        if open.is_none() {
            return Err(StoreError::Recalled);
        }
    }
    let inserted = tx
        .execute(
            "INSERT INTO message
             (msg_id, app, from_uid, to_app, to_uid, kind, body, client_msg_id, server_time_ms,
              group_gid)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (msg_id) DO NOTHING",
            &[
                &(m.id as i64),
                &m.from.app,
                &m.from.uid,
                &m.to.app,
                &m.to.uid,
                &m.kind,
                &m.body.as_ref(),
                &m.client_msg_id,
                &m.server_time_ms,
                &m.group,
            ],
        )
        .await
        .map_err(unavailable)?;
    if inserted == 0 {
        return Err(StoreError::Invalid(format!(
            "message id {} is already stored",
            m.id
        )));
    }
    if let Some(a) = &msg.amends {
        tx.execute(
            "UPDATE message SET kind = $2, body = $3 WHERE msg_id = $1",
            &[
                &(a.message.id as i64),
                &a.message.kind,
                &a.message.body.as_ref(),
            ],
        )
        .await
        .map_err(unavailable)?;
    }
    let seq: i64 = tx
        .query_one(
            "UPDATE grp SET head = head + 1 WHERE id = $1 RETURNING head",
            &[&id],
        )
        .await
        .map_err(unavailable)?
        .try_get(0)
        .map_err(corrupt)?;
    tx.execute(
        "INSERT INTO group_timeline (group_id, seq, msg_id) VALUES ($1, $2, $3)",
        &[&id, &seq, &(m.id as i64)],
    )
    .await
    .map_err(unavailable)?;
    if !m.client_msg_id.is_empty() {
        tx.execute(
            "INSERT INTO group_dedupe (group_id, app, uid, client_msg_id, msg_id, seq, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &id,
                &m.from.app,
                &m.from.uid,
                &m.client_msg_id,
                &(m.id as i64),
                &seq,
                &now_ms(),
            ],
        )
        .await
        .map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(Appended {
        message: Arc::new(msg.message),
        seqs: vec![to_u64(seq, "grp.head")?],
        duplicate: false,
    })
}
