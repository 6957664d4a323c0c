//! The append path of [`PgStore`](super::PgStore): writer tasks that store
//! queued appends in batches, one transaction per batch (group commit).
//!
//! A batch, in one READ COMMITTED transaction:
//! 1. **claim** the de-dup keys: `INSERT INTO dedupe .. ON CONFLICT DO
//!    NOTHING RETURNING` (seqs still empty). A key held by another node's
//!    open transaction makes this wait for it; if that one commits, the key
//!    is not returned and the append is a duplicate;
//! 2. **read back** the first result of every duplicate (a new statement: it
//!    sees what the winner committed) and answer it with `duplicate = true`;
//! 3. insert the **messages** (a reused msg_id rejects that append alone and
//!    releases its claim);
//! 4. bump **`timeline_heads`** by the number of entries each user gets:
//!    `INSERT .. ON CONFLICT DO UPDATE SET head = head + n RETURNING head`.
//!    The row lock serializes the writers of one user on every node until
//!    COMMIT; other users proceed in parallel. The new head minus n gives
//!    the batch's seqs, gap-free, in queue order;
//! 5. insert the **timeline** rows and fill the claimed de-dup rows' seqs;
//! 6. COMMIT (`synchronous_commit = on`), then answer everyone.
//!
//! Deadlocks: claims are taken in key order and heads in user order (ORDER
//! BY in the statements), so two batches never wait on each other in a
//! cycle; should PostgreSQL still report a deadlock or a serialization
//! failure, the whole batch (rolled back) is retried a few times. Any other
//! failure answers every append of the batch `Unavailable`: nothing was
//! acknowledged, and a client resend is de-duplicated.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use switchboard_core::model::RECALLED_KIND;
use switchboard_core::stats;
use switchboard_core::{Appended, NewMessage, StoreError, UserKey, now_ms};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;

use super::read::{MESSAGE_COLUMNS, message_from_row, to_u64};
use super::{Inner, corrupt, unavailable};

/// An append waiting for a writer.
pub struct Job {
    pub msg: NewMessage,
    pub reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// Times a batch is retried after a deadlock or serialization failure.
const RETRIES: usize = 3;

/// A writer task: takes up to `max_batch` queued appends, stores them, and
/// repeats until the queue is closed and empty.
pub async fn run(inner: Arc<Inner>, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>) {
    let max_batch = inner.opts.max_batch.max(1);
    loop {
        let mut jobs = Vec::new();
        // Only one writer gathers at a time; it releases the queue before
        // running its batch, so the next writer gathers meanwhile.
        let got = rx.lock().await.recv_many(&mut jobs, max_batch).await;
        if got == 0 {
            break;
        }
        // A caller that gave up (timed out, dropped) was never acknowledged:
        // storing its append is not needed.
        jobs.retain(|j| !j.reply.is_closed());
        if !jobs.is_empty() {
            run_batch(&inner, jobs).await;
        }
    }
    tracing::debug!("postgresql writer stopped");
}

/// Checks what PostgreSQL would refuse for the whole batch (a NUL in text)
/// and what the contract forbids, before the append is queued.
pub fn validate(msg: &NewMessage) -> Result<(), StoreError> {
    let m = &msg.message;
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
    for (i, t) in msg.timelines.iter().enumerate() {
        check_text("timeline app", &t.app)?;
        check_text("timeline uid", &t.uid)?;
        if msg.timelines[..i].contains(t) {
            return Err(StoreError::Invalid(format!("timeline {t} listed twice")));
        }
    }
    Ok(())
}

/// PostgreSQL text cannot hold NUL.
pub fn check_text(what: &str, s: &str) -> Result<(), StoreError> {
    if s.contains('\0') {
        return Err(StoreError::Invalid(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

/// What a batch does with each of its appends.
enum Plan {
    /// Store it (or find it is a duplicate of a committed one).
    Store,
    /// Same `(from, client_msg_id)` as an earlier append of this batch.
    SameAs(usize),
    /// Refused before touching the database.
    Reject(StoreError),
}

/// Why a batch attempt failed.
enum BatchError {
    Pg(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for BatchError {
    fn from(e: tokio_postgres::Error) -> BatchError {
        BatchError::Pg(e)
    }
}

impl From<StoreError> for BatchError {
    fn from(e: StoreError) -> BatchError {
        BatchError::Store(e)
    }
}

impl BatchError {
    fn retryable(&self) -> bool {
        matches!(self, BatchError::Pg(e)
            if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
                || e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE))
    }

    fn into_store_error(self) -> StoreError {
        match self {
            BatchError::Pg(e) => unavailable(e),
            BatchError::Store(e) => e,
        }
    }
}

async fn run_batch(inner: &Inner, jobs: Vec<Job>) {
    let started = std::time::Instant::now();
    metrics::histogram!(stats::STORE_GROUP_COMMANDS, "store" => "postgres")
        .record(jobs.len() as f64);
    let (msgs, replies): (Vec<NewMessage>, Vec<_>) =
        jobs.into_iter().map(|j| (j.msg, j.reply)).unzip();
    let plan = plan(&msgs);
    let mut attempt = 0;
    let outcome = loop {
        let r = tokio::time::timeout(inner.opts.op_timeout, store_batch(inner, &msgs, &plan))
            .await
            .unwrap_or_else(|_| {
                Err(BatchError::Store(StoreError::Unavailable(format!(
                    "postgresql did not commit within {:?}",
                    inner.opts.op_timeout
                ))))
            });
        match r {
            Err(e) if e.retryable() && attempt < RETRIES => {
                attempt += 1;
                tracing::debug!(attempt, "postgresql append batch rolled back; retrying");
            }
            r => break r.map_err(BatchError::into_store_error),
        }
    };
    metrics::histogram!(stats::STORE_GROUP_SECONDS, "store" => "postgres")
        .record(started.elapsed().as_secs_f64());
    match outcome {
        Ok(results) => {
            for (reply, r) in replies.into_iter().zip(results) {
                // A waiter that gave up is not an error.
                let _ = reply.send(r);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, appends = msgs.len(), "postgresql append batch failed");
            for reply in replies {
                let _ = reply.send(Err(copy_error(&e)));
            }
        }
    }
}

/// The id of the message an amend notice amends.
fn amended_id(msg: &NewMessage) -> i64 {
    msg.amends.as_ref().map_or(0, |a| a.message.id as i64)
}

/// Gives back the de-dup keys that appends `which` claimed (they are
/// refused, nothing of them is stored).
async fn release_claims(
    tx: &deadpool_postgres::Transaction<'_>,
    msgs: &[NewMessage],
    claimed: &HashSet<usize>,
    which: &[usize],
) -> Result<(), BatchError> {
    let release: Vec<usize> = which
        .iter()
        .copied()
        .filter(|i| claimed.contains(i))
        .collect();
    if !release.is_empty() {
        let stmt = tx
            .prepare_cached(
                "DELETE FROM dedupe d
                 USING unnest($1::text[], $2::text[], $3::text[]) AS t(a, u, c)
                 WHERE d.app = t.a AND d.uid = t.u AND d.client_msg_id = t.c",
            )
            .await?;
        let (apps, uids, cmids, _) = key_columns(msgs, &release);
        tx.execute(&stmt, &[&apps, &uids, &cmids]).await?;
    }
    Ok(())
}

/// Rejects a msg_id used twice in the batch and an amendment of a message
/// an earlier append of the batch recalls, and links resends inside it.
fn plan(msgs: &[NewMessage]) -> Vec<Plan> {
    let mut keys: HashMap<(&UserKey, &str), usize> = HashMap::new();
    let mut ids: HashSet<u64> = HashSet::new();
    let mut recalled: HashSet<u64> = HashSet::new();
    msgs.iter()
        .enumerate()
        .map(|(i, msg)| {
            if let Some(key) = msg.dedupe_key() {
                if let Some(&first) = keys.get(&key) {
                    return Plan::SameAs(first);
                }
                keys.insert(key, i);
            }
            if !ids.insert(msg.message.id) {
                return Plan::Reject(StoreError::Invalid(format!(
                    "message id {} is already stored",
                    msg.message.id
                )));
            }
            if let Some(a) = &msg.amends {
                if recalled.contains(&a.message.id) {
                    return Plan::Reject(StoreError::Recalled);
                }
                if a.message.is_recalled() {
                    recalled.insert(a.message.id);
                }
            }
            Plan::Store
        })
        .collect()
}

/// One attempt at the batch, in one transaction; the result of every append
/// in order, valid only once this returned `Ok` (COMMIT done).
async fn store_batch(
    inner: &Inner,
    msgs: &[NewMessage],
    plan: &[Plan],
) -> Result<Vec<Result<Appended, StoreError>>, BatchError> {
    let mut conn = inner.conn().await?;
    let tx = conn.transaction().await?;
    let mut results: Vec<Option<Result<Appended, StoreError>>> =
        msgs.iter().map(|_| None).collect();
    for (i, p) in plan.iter().enumerate() {
        if let Plan::Reject(e) = p {
            results[i] = Some(Err(copy_error(e)));
        }
    }
    let candidates: Vec<usize> = (0..msgs.len())
        .filter(|&i| matches!(plan[i], Plan::Store))
        .collect();

    // 1. Claim the de-dup keys.
    let keyed: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|&i| msgs[i].dedupe_key().is_some())
        .collect();
    let mut claimed: HashSet<usize> = HashSet::new();
    if !keyed.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO dedupe (app, uid, client_msg_id, msg_id, seqs, created_ms)
                 SELECT a, u, c, m, '{}', $5
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS t(a, u, c, m)
                 ORDER BY a, u, c
                 ON CONFLICT DO NOTHING
                 RETURNING msg_id",
            )
            .await?;
        let (apps, uids, cmids, ids) = key_columns(msgs, &keyed);
        let rows = tx
            .query(&stmt, &[&apps, &uids, &cmids, &ids, &now_ms()])
            .await?;
        let mut won: HashSet<i64> = HashSet::with_capacity(rows.len());
        for row in rows {
            won.insert(row.try_get(0).map_err(corrupt)?);
        }
        // msg_ids are unique within the batch (plan), so they name the append.
        claimed.extend(
            keyed
                .iter()
                .copied()
                .filter(|&i| won.contains(&(msgs[i].message.id as i64))),
        );
    }

    // 2. Duplicates of committed appends: answer their first result.
    let dups: Vec<usize> = keyed
        .iter()
        .copied()
        .filter(|i| !claimed.contains(i))
        .collect();
    if !dups.is_empty() {
        let stmt = tx
            .prepare_cached(&format!(
                "SELECT t.i, d.seqs, m.msg_id IS NOT NULL, {MESSAGE_COLUMNS}
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]) AS t(a, u, c, i)
                 JOIN dedupe d ON d.app = t.a AND d.uid = t.u AND d.client_msg_id = t.c
                 LEFT JOIN message m ON m.msg_id = d.msg_id"
            ))
            .await?;
        let (apps, uids, cmids, _) = key_columns(msgs, &dups);
        let idx: Vec<i32> = dups.iter().map(|&i| i as i32).collect();
        for row in tx.query(&stmt, &[&apps, &uids, &cmids, &idx]).await? {
            let i: i32 = row.try_get(0).map_err(corrupt)?;
            let i = usize::try_from(i)
                .ok()
                .filter(|&i| i < msgs.len())
                .ok_or_else(|| StoreError::Corrupt(format!("row for unknown append {i}")))?;
            results[i] = Some(first_result(&row));
        }
        for &i in &dups {
            // The conflicting row was purged between the two statements.
            results[i].get_or_insert_with(|| {
                Err(StoreError::Unavailable(
                    "de-dup row changed concurrently; resend".into(),
                ))
            });
        }
    }

    // 3. The messages.
    let dup_set: HashSet<usize> = dups.iter().copied().collect();
    let mut to_store: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|i| !dup_set.contains(i))
        .collect();

    // 3a. Amendments (recall, edit): the message must be stored and not
    // recalled; its row is locked until COMMIT, so a concurrent recall on
    // another node is seen (READ COMMITTED re-checks a locked row).
    let amending: Vec<usize> = to_store
        .iter()
        .copied()
        .filter(|&i| msgs[i].amends.is_some())
        .collect();
    if !amending.is_empty() {
        let stmt = tx
            .prepare_cached(&format!(
                "SELECT msg_id FROM message WHERE msg_id = ANY($1) AND kind <> '{RECALLED_KIND}'
                 ORDER BY msg_id FOR UPDATE"
            ))
            .await?;
        let ids: Vec<i64> = amending.iter().map(|&i| amended_id(&msgs[i])).collect();
        let mut open: HashSet<i64> = HashSet::new();
        for row in tx.query(&stmt, &[&ids]).await? {
            open.insert(row.try_get(0).map_err(corrupt)?);
        }
        let refused: Vec<usize> = amending
            .iter()
            .copied()
            .filter(|&i| !open.contains(&amended_id(&msgs[i])))
            .collect();
        if !refused.is_empty() {
            release_claims(&tx, msgs, &claimed, &refused).await?;
            for &i in &refused {
                results[i] = Some(Err(StoreError::Recalled));
            }
            to_store.retain(|i| !refused.contains(i));
        }
    }

    if !to_store.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO message
                 (msg_id, app, from_uid, to_app, to_uid, kind, body, client_msg_id, server_time_ms)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                                      $6::text[], $7::bytea[], $8::text[], $9::bigint[])
                     AS t(id, a, f, ta, tu, k, b, c, s)
                 ORDER BY id
                 ON CONFLICT (msg_id) DO NOTHING
                 RETURNING msg_id",
            )
            .await?;
        let ms = || to_store.iter().map(|&i| &msgs[i].message);
        let ids: Vec<i64> = ms().map(|m| m.id as i64).collect();
        let apps: Vec<&str> = ms().map(|m| m.from.app.as_str()).collect();
        let froms: Vec<&str> = ms().map(|m| m.from.uid.as_str()).collect();
        let to_apps: Vec<&str> = ms().map(|m| m.to.app.as_str()).collect();
        let tos: Vec<&str> = ms().map(|m| m.to.uid.as_str()).collect();
        let kinds: Vec<&str> = ms().map(|m| m.kind.as_str()).collect();
        let bodies: Vec<&[u8]> = ms().map(|m| m.body.as_ref()).collect();
        let cmids: Vec<&str> = ms().map(|m| m.client_msg_id.as_str()).collect();
        let times: Vec<i64> = ms().map(|m| m.server_time_ms).collect();
        let rows = tx
            .query(
                &stmt,
                &[
                    &ids, &apps, &froms, &to_apps, &tos, &kinds, &bodies, &cmids, &times,
                ],
            )
            .await?;
        let mut inserted: HashSet<i64> = HashSet::with_capacity(rows.len());
        for row in rows {
            inserted.insert(row.try_get(0).map_err(corrupt)?);
        }
        let reused: Vec<usize> = to_store
            .iter()
            .copied()
            .filter(|&i| !inserted.contains(&(msgs[i].message.id as i64)))
            .collect();
        if !reused.is_empty() {
            // A reused message id is the caller's bug: reject that append
            // alone and give its de-dup key back.
            release_claims(&tx, msgs, &claimed, &reused).await?;
            for &i in &reused {
                results[i] = Some(Err(StoreError::Invalid(format!(
                    "message id {} is already stored",
                    msgs[i].message.id
                ))));
            }
            to_store.retain(|i| !reused.contains(i));
        }
    }

    // 3b. The amended messages' new content, in batch order.
    for &i in &to_store {
        if let Some(a) = &msgs[i].amends {
            let stmt = tx
                .prepare_cached("UPDATE message SET kind = $2, body = $3 WHERE msg_id = $1")
                .await?;
            let id = a.message.id as i64;
            tx.execute(&stmt, &[&id, &a.message.kind, &a.message.body.as_ref()])
                .await?;
        }
    }

    // 4. Bump the heads: one row per user, locked in user order.
    let mut counts: HashMap<&UserKey, i64> = HashMap::new();
    for &i in &to_store {
        for t in &msgs[i].timelines {
            *counts.entry(t).or_insert(0) += 1;
        }
    }
    // The next seq to hand out, per user.
    let mut next: HashMap<UserKey, u64> = HashMap::with_capacity(counts.len());
    if !counts.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO timeline_heads (app, uid, head)
                 SELECT a, u, n FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(a, u, n)
                 ORDER BY a, u
                 ON CONFLICT (app, uid) DO UPDATE SET head = timeline_heads.head + excluded.head
                 RETURNING app, uid, head",
            )
            .await?;
        let apps: Vec<&str> = counts.keys().map(|u| u.app.as_str()).collect();
        let uids: Vec<&str> = counts.keys().map(|u| u.uid.as_str()).collect();
        let ns: Vec<i64> = counts.values().copied().collect();
        for row in tx.query(&stmt, &[&apps, &uids, &ns]).await? {
            let user = UserKey {
                app: row.try_get(0).map_err(corrupt)?,
                uid: row.try_get(1).map_err(corrupt)?,
            };
            let head = to_u64(row.try_get(2).map_err(corrupt)?, "timeline_heads.head")?;
            let n = counts.get(&user).copied().ok_or_else(|| {
                StoreError::Corrupt(format!("postgresql returned a head for {user}"))
            })?;
            let first = head
                .checked_sub(n as u64)
                .ok_or_else(|| StoreError::Corrupt(format!("timeline head {head} of {user}")))?;
            next.insert(user, first + 1);
        }
    }

    // 5. Timeline rows, and the seqs of the claimed de-dup rows.
    let mut t_apps: Vec<&str> = Vec::new();
    let mut t_uids: Vec<&str> = Vec::new();
    let mut t_seqs: Vec<i64> = Vec::new();
    let mut t_ids: Vec<i64> = Vec::new();
    let mut d_rows: Vec<usize> = Vec::new();
    let mut d_seqs: Vec<String> = Vec::new();
    for &i in &to_store {
        let msg = &msgs[i];
        let mut seqs = Vec::with_capacity(msg.timelines.len());
        for t in &msg.timelines {
            let seq = next.get_mut(t).ok_or_else(|| {
                StoreError::Corrupt(format!("postgresql returned no head for {t}"))
            })?;
            seqs.push(*seq);
            t_apps.push(&t.app);
            t_uids.push(&t.uid);
            t_seqs.push(*seq as i64);
            t_ids.push(msg.message.id as i64);
            *seq += 1;
        }
        if claimed.contains(&i) {
            d_rows.push(i);
            d_seqs.push(seq_array_literal(&seqs));
        }
        results[i] = Some(Ok(Appended {
            message: Arc::new(msg.message.clone()),
            seqs,
            duplicate: false,
        }));
    }
    if !t_ids.is_empty() || !d_rows.is_empty() {
        let stmt = tx
            .prepare_cached(
                "WITH t AS (
                     INSERT INTO timeline (app, uid, seq, msg_id)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
                 )
                 UPDATE dedupe d SET seqs = x.s::bigint[]
                 FROM unnest($5::text[], $6::text[], $7::text[], $8::text[]) AS x(a, u, c, s)
                 WHERE d.app = x.a AND d.uid = x.u AND d.client_msg_id = x.c",
            )
            .await?;
        let (d_apps, d_uids, d_cmids, _) = key_columns(msgs, &d_rows);
        tx.execute(
            &stmt,
            &[
                &t_apps, &t_uids, &t_seqs, &t_ids, &d_apps, &d_uids, &d_cmids, &d_seqs,
            ],
        )
        .await?;
    }

    // 6. Durable, then answer.
    let commit = std::time::Instant::now();
    tx.commit().await?;
    metrics::histogram!(stats::STORE_COMMIT_SECONDS, "store" => "postgres")
        .record(commit.elapsed().as_secs_f64());

    let mut out: Vec<Result<Appended, StoreError>> = Vec::with_capacity(msgs.len());
    for (i, p) in plan.iter().enumerate() {
        let r = match p {
            Plan::SameAs(first) => match out.get(*first) {
                Some(Ok(a)) => Ok(Appended {
                    message: a.message.clone(),
                    seqs: a.seqs.clone(),
                    duplicate: true,
                }),
                Some(Err(e)) => Err(copy_error(e)),
                None => Err(StoreError::Unavailable("resend ahead of its first".into())),
            },
            _ => results[i]
                .take()
                .unwrap_or_else(|| Err(StoreError::Unavailable("append left unanswered".into()))),
        };
        out.push(r);
    }
    Ok(out)
}

/// The de-dup key columns `(app, uid, client_msg_id, msg_id)` of `which`.
fn key_columns<'a>(
    msgs: &'a [NewMessage],
    which: &[usize],
) -> (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>, Vec<i64>) {
    let mut apps = Vec::with_capacity(which.len());
    let mut uids = Vec::with_capacity(which.len());
    let mut cmids = Vec::with_capacity(which.len());
    let mut ids = Vec::with_capacity(which.len());
    for &i in which {
        let m = &msgs[i].message;
        apps.push(m.from.app.as_str());
        uids.push(m.from.uid.as_str());
        cmids.push(m.client_msg_id.as_str());
        ids.push(m.id as i64);
    }
    (apps, uids, cmids, ids)
}

/// The first result of a duplicate from the read-back row
/// `(i, seqs, message found, MESSAGE_COLUMNS..)`.
fn first_result(row: &tokio_postgres::Row) -> Result<Appended, StoreError> {
    let seqs: Vec<i64> = row.try_get(1).map_err(corrupt)?;
    let found: bool = row.try_get(2).map_err(corrupt)?;
    if !found {
        return Err(StoreError::Corrupt(
            "de-dup row points at a missing message".into(),
        ));
    }
    let seqs = seqs
        .into_iter()
        .map(|s| to_u64(s, "dedupe.seqs"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Appended {
        message: Arc::new(message_from_row(row, 3)?),
        seqs,
        duplicate: true,
    })
}

/// `{1,2}`: a bigint[] literal, cast in SQL (a 2-D array can't carry rows of
/// different lengths through unnest).
fn seq_array_literal(seqs: &[u64]) -> String {
    let inner: Vec<String> = seqs.iter().map(u64::to_string).collect();
    format!("{{{}}}", inner.join(","))
}

/// `StoreError` is not `Clone`; the same kind and text for another waiter.
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
        StoreError::Invalid(s) => StoreError::Invalid(s.clone()),
        StoreError::Corrupt(s) => StoreError::Corrupt(s.clone()),
        StoreError::Group(r) => StoreError::Group(*r),
        StoreError::Recalled => StoreError::Recalled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::Message;

    fn msg(id: u64, cmid: &str) -> NewMessage {
        let a = UserKey::new("app", "a");
        let b = UserKey::new("app", "b");
        NewMessage {
            message: Message {
                id,
                from: a.clone(),
                to: b.clone(),
                kind: "text".into(),
                body: bytes::Bytes::new(),
                client_msg_id: cmid.into(),
                server_time_ms: 0,
                group: String::new(),
            },
            timelines: vec![b, a],
            amends: None,
        }
    }

    #[test]
    fn plan_links_resends_and_rejects_reused_ids() {
        let msgs = [
            msg(1, "x"),
            msg(2, "x"),
            msg(1, ""),
            msg(3, ""),
            msg(4, "y"),
        ];
        let p = plan(&msgs);
        assert!(matches!(p[0], Plan::Store));
        assert!(matches!(p[1], Plan::SameAs(0)));
        assert!(matches!(p[2], Plan::Reject(StoreError::Invalid(_))));
        assert!(matches!(p[3], Plan::Store));
        assert!(matches!(p[4], Plan::Store));
    }

    #[test]
    fn validate_refuses_nul_and_repeated_timelines() {
        assert!(validate(&msg(1, "x")).is_ok());
        assert!(matches!(
            validate(&msg(1, "x\0")),
            Err(StoreError::Invalid(_))
        ));
        let mut m = msg(1, "x");
        m.timelines.push(m.timelines[0].clone());
        assert!(matches!(validate(&m), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn seq_literals() {
        assert_eq!(seq_array_literal(&[]), "{}");
        assert_eq!(seq_array_literal(&[1, 22]), "{1,22}");
    }
}
