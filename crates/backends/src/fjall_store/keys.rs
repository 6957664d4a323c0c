//! The keys and values of [`FjallStore`](super::FjallStore), byte for byte.
//!
//! Every string in a key is length-prefixed (u16, big-endian), so a user's
//! key is never a prefix of another user's and a prefix scan reads exactly
//! one user's range. Integers are big-endian, so keys sort by them.
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `messages` | msg_id | [`encode_message`] |
//! | `timelines` | user ++ seq | msg_id |
//! | `conversations` | from user ++ to user ++ msg_id | (empty) |
//! | `dedupe` | from user ++ client_msg_id | msg_id ++ created_ms ++ seq… |
//! | `dedupe_by_time` | created_ms ++ dedupe key | (empty) |
//! | `cursors` | user ++ device_id | seq |
//! | `outbox` | event id | [`encode_event`] |
//! | `outbox_pending` | event id | (empty) |
//! | `outbox_dedupe` | user ++ dedupe_id | event id |
//! | `outbox_delivered` | delivered_ms ++ event id | (empty) |
//! | `revocations` | user | issued_before (seconds; tokens with an earlier `iat` are refused) |
//! | `conversation_views` | user | the user's conversation view (`switchboard_core::conversation`), derived state |
//! | `groups` | group | [`encode_group`]; the key `[]` holds the last generation handed out |
//! | `group_members` | group ++ uid (raw, so members sort by uid) | [`encode_member`] |
//! | `user_groups` | user ++ gid (raw) | (empty): a user's groups, by id |
//! | `group_timelines` | group ++ seq | msg_id |
//! | `group_cursors` | user ++ device_id ++ gid ++ generation | seq |
//!
//! A group is `len(app) app len(gid) gid`. Its generation is a number the
//! writer hands out at creation, never twice: a cursor or a de-dup key of
//! a deleted group holds the old generation and never matches the group
//! created again with the same id. A group message's de-dup key is the
//! c2c one (`from ++ client_msg_id`) followed by `group ++ generation`.
//!
//! A user is `len(app) app len(uid) uid`. Values start with a format byte
//! where they may change ([`FORMAT`]).

use bytes::Bytes;
use switchboard_core::group::{GroupKey, Member, PostPolicy, Role};
use switchboard_core::{BusEvent, Message, StoreError, UserKey};

/// The first byte of an encoded message or event.
pub const FORMAT: u8 = 1;

/// The first byte of an encoded message to a group: [`FORMAT`]'s layout
/// with the group's id after `client_msg_id` (a c2c message keeps format 1).
pub const GROUP_MESSAGE_FORMAT: u8 = 2;

/// Appends a u16-length-prefixed string; `Invalid` past 65,535 bytes.
fn push_str(out: &mut Vec<u8>, s: &str) -> Result<(), StoreError> {
    let len = u16::try_from(s.len())
        .map_err(|_| StoreError::Invalid(format!("a key part of {} bytes is too long", s.len())))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// `len(app) app len(uid) uid`: the prefix of all of a user's keys.
pub fn user(u: &UserKey) -> Result<Vec<u8>, StoreError> {
    let mut k = Vec::with_capacity(u.app.len() + u.uid.len() + 12);
    push_str(&mut k, &u.app)?;
    push_str(&mut k, &u.uid)?;
    Ok(k)
}

pub fn timeline(user_key: &[u8], seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(user_key.len() + 8);
    k.extend_from_slice(user_key);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The seq at the end of a timeline key.
pub fn seq_of_timeline(key: &[u8]) -> Result<u64, StoreError> {
    let tail = key
        .len()
        .checked_sub(8)
        .map(|at| &key[at..])
        .ok_or_else(|| corrupt("timeline key"))?;
    u64_at(tail, 0)
}

/// A user, a string: a de-dup key, a cursor key, an outbox de-dup key.
pub fn user_and(user_key: &[u8], s: &str) -> Result<Vec<u8>, StoreError> {
    let mut k = Vec::with_capacity(user_key.len() + s.len() + 2);
    k.extend_from_slice(user_key);
    push_str(&mut k, s)?;
    Ok(k)
}

/// A device's cursor key: user ++ device_id.
pub fn cursor(app: &str, uid: &str, device_id: &str) -> Result<Vec<u8>, StoreError> {
    let mut k = Vec::with_capacity(app.len() + uid.len() + device_id.len() + 6);
    push_str(&mut k, app)?;
    push_str(&mut k, uid)?;
    push_str(&mut k, device_id)?;
    Ok(k)
}

/// `from ++ to`: the prefix of one direction of a conversation.
pub fn direction(from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(from.len() + to.len() + 8);
    k.extend_from_slice(from);
    k.extend_from_slice(to);
    k
}

/// A key that ends with a u64 (a msg_id, an event id) after `prefix`.
pub fn with_u64(prefix: &[u8], n: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// A time-ordered index key: `time ++ rest`.
pub fn by_time(time_ms: i64, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(rest.len() + 8);
    k.extend_from_slice(&time_key(time_ms));
    k.extend_from_slice(rest);
    k
}

/// A time as a key prefix: non-negative times sort as numbers, earlier
/// ones (never written) as 0.
pub fn time_key(time_ms: i64) -> [u8; 8] {
    u64::try_from(time_ms).unwrap_or(0).to_be_bytes()
}

pub fn u64_at(b: &[u8], at: usize) -> Result<u64, StoreError> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("integer"))
}

pub fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "fjall: a stored {what} is not what this build writes"
    ))
}

/// The de-dup value: `msg_id created_ms seq…`.
pub fn dedupe_value(msg_id: u64, created_ms: i64, seqs: &[u64]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + 8 * seqs.len());
    v.extend_from_slice(&msg_id.to_be_bytes());
    v.extend_from_slice(&created_ms.to_be_bytes());
    for s in seqs {
        v.extend_from_slice(&s.to_be_bytes());
    }
    v
}

/// `(msg_id, seqs)` of a de-dup value.
pub fn decode_dedupe(v: &[u8]) -> Result<(u64, Vec<u64>), StoreError> {
    if v.len() < 16 || !v.len().is_multiple_of(8) {
        return Err(corrupt("de-dup entry"));
    }
    let seqs = v[16..]
        .chunks_exact(8)
        .map(|c| u64_at(c, 0))
        .collect::<Result<_, _>>()?;
    Ok((u64_at(v, 0)?, seqs))
}

/// A cursor for a value reader.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.b.len() < n {
            return Err(corrupt("value"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, StoreError> {
        Ok(u64_at(self.bytes(8)?, 0)? as i64)
    }

    fn string(&mut self) -> Result<String, StoreError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.bytes(n)?.to_vec()).map_err(|_| corrupt("string"))
    }
}

fn put_string(v: &mut Vec<u8>, s: &str) {
    // Bodies and labels are limited far below 4 GiB by the gate and the API.
    v.extend_from_slice(&(s.len() as u32).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
}

/// `FORMAT id from.app from.uid to.app to.uid kind client_msg_id
/// server_time_ms body…` (strings u32-length-prefixed).
pub fn encode_message(m: &Message) -> Vec<u8> {
    let strings = [
        &m.from.app,
        &m.from.uid,
        &m.to.app,
        &m.to.uid,
        &m.kind,
        &m.client_msg_id,
    ];
    let len: usize = strings.iter().map(|s| s.len() + 4).sum();
    let mut v = Vec::with_capacity(1 + 16 + len + m.group.len() + 4 + m.body.len());
    v.push(if m.group.is_empty() {
        FORMAT
    } else {
        GROUP_MESSAGE_FORMAT
    });
    v.extend_from_slice(&m.id.to_be_bytes());
    for s in strings {
        put_string(&mut v, s);
    }
    if !m.group.is_empty() {
        put_string(&mut v, &m.group);
    }
    v.extend_from_slice(&m.server_time_ms.to_be_bytes());
    v.extend_from_slice(&m.body);
    v
}

pub fn decode_message(v: &[u8]) -> Result<Message, StoreError> {
    let mut r = Reader { b: v };
    let format = r.bytes(1)?[0];
    if format != FORMAT && format != GROUP_MESSAGE_FORMAT {
        return Err(corrupt("message"));
    }
    let id = r.i64()? as u64;
    let from = UserKey {
        app: r.string()?,
        uid: r.string()?,
    };
    let to = UserKey {
        app: r.string()?,
        uid: r.string()?,
    };
    let kind = r.string()?;
    let client_msg_id = r.string()?;
    let group = if format == GROUP_MESSAGE_FORMAT {
        r.string()?
    } else {
        String::new()
    };
    let server_time_ms = r.i64()?;
    Ok(Message {
        id,
        from,
        to,
        kind,
        body: Bytes::copy_from_slice(r.b),
        client_msg_id,
        server_time_ms,
        group,
    })
}

/// `len(app) app len(gid) gid`: the prefix of all of a group's keys.
pub fn group(g: &GroupKey) -> Result<Vec<u8>, StoreError> {
    let mut k = Vec::with_capacity(g.app.len() + g.gid.len() + 4);
    push_str(&mut k, &g.app)?;
    push_str(&mut k, &g.gid)?;
    Ok(k)
}

/// `prefix ++ raw`: a member (group ++ uid), a user's group (user ++ gid).
pub fn raw_after(prefix: &[u8], raw: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + raw.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(raw.as_bytes());
    k
}

/// A device's cursor on a group: user ++ device_id ++ gid ++ generation.
pub fn group_cursor(
    user_key: &[u8],
    device_id: &str,
    gid: &str,
    generation: u64,
) -> Result<Vec<u8>, StoreError> {
    let mut k = user_and(user_key, device_id)?;
    push_str(&mut k, gid)?;
    k.extend_from_slice(&generation.to_be_bytes());
    Ok(k)
}

/// A group message's de-dup key: from ++ client_msg_id ++ group ++ generation.
pub fn group_dedupe(
    from: &[u8],
    client_msg_id: &str,
    group_key: &[u8],
    generation: u64,
) -> Result<Vec<u8>, StoreError> {
    let mut k = user_and(from, client_msg_id)?;
    k.extend_from_slice(group_key);
    k.extend_from_slice(&generation.to_be_bytes());
    Ok(k)
}

/// A stored group's record: everything but its head (the last key of its
/// timeline) and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub generation: u64,
    pub created_ms: i64,
    pub members: u64,
    pub post_policy: PostPolicy,
    pub history_visible: bool,
    pub name: String,
    pub meta: Bytes,
}

/// `FORMAT generation created_ms members policy history name meta…`.
pub fn encode_group(g: &GroupRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + g.name.len() + g.meta.len());
    v.push(FORMAT);
    v.extend_from_slice(&g.generation.to_be_bytes());
    v.extend_from_slice(&g.created_ms.to_be_bytes());
    v.extend_from_slice(&g.members.to_be_bytes());
    v.push(match g.post_policy {
        PostPolicy::Members => 0,
        PostPolicy::Admins => 1,
    });
    v.push(u8::from(g.history_visible));
    put_string(&mut v, &g.name);
    v.extend_from_slice(&g.meta);
    v
}

pub fn decode_group(v: &[u8]) -> Result<GroupRecord, StoreError> {
    let mut r = Reader { b: v };
    if r.bytes(1)? != [FORMAT] {
        return Err(corrupt("group"));
    }
    let generation = r.i64()? as u64;
    let created_ms = r.i64()?;
    let members = r.i64()? as u64;
    let flags = r.bytes(2)?;
    let post_policy = match flags[0] {
        0 => PostPolicy::Members,
        1 => PostPolicy::Admins,
        _ => return Err(corrupt("group post policy")),
    };
    let history_visible = flags[1] != 0;
    let name = r.string()?;
    Ok(GroupRecord {
        generation,
        created_ms,
        members,
        post_policy,
        history_visible,
        name,
        meta: Bytes::copy_from_slice(r.b),
    })
}

/// `role joined_seq joined_ms`.
pub fn encode_member(role: Role, joined_seq: u64, joined_ms: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(17);
    v.push(match role {
        Role::Member => 0,
        Role::Admin => 1,
    });
    v.extend_from_slice(&joined_seq.to_be_bytes());
    v.extend_from_slice(&joined_ms.to_be_bytes());
    v
}

pub fn decode_member(uid: String, v: &[u8]) -> Result<Member, StoreError> {
    let role = match v.first() {
        Some(0) => Role::Member,
        Some(1) => Role::Admin,
        _ => return Err(corrupt("member")),
    };
    Ok(Member {
        uid,
        role,
        joined_seq: u64_at(v, 1)?,
        joined_ms: u64_at(v, 9)? as i64,
    })
}

/// `FORMAT id topic app uid kind dedupe_id time_ms body…`.
pub fn encode_event(e: &BusEvent, dedupe_id: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(64 + e.body.len());
    v.push(FORMAT);
    v.extend_from_slice(&e.id.to_be_bytes());
    for s in [&e.topic, &e.user.app, &e.user.uid, &e.kind] {
        put_string(&mut v, s);
    }
    put_string(&mut v, dedupe_id);
    v.extend_from_slice(&e.time_ms.to_be_bytes());
    v.extend_from_slice(&e.body);
    v
}

/// The event and its de-dup id.
pub fn decode_event(v: &[u8]) -> Result<(BusEvent, String), StoreError> {
    let mut r = Reader { b: v };
    if r.bytes(1)? != [FORMAT] {
        return Err(corrupt("outbox event"));
    }
    let id = r.i64()? as u64;
    let topic = r.string()?;
    let user = UserKey {
        app: r.string()?,
        uid: r.string()?,
    };
    let kind = r.string()?;
    let dedupe_id = r.string()?;
    let time_ms = r.i64()?;
    let event = BusEvent {
        id,
        topic,
        user,
        kind,
        body: Bytes::copy_from_slice(r.b),
        time_ms,
    };
    Ok((event, dedupe_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_key_is_never_a_prefix_of_another_users() {
        let a = user(&UserKey::new("app", "ab")).unwrap();
        let b = user(&UserKey::new("app", "abc")).unwrap();
        let c = user(&UserKey::new("appa", "b")).unwrap();
        assert!(!b.starts_with(&a) && !a.starts_with(&b));
        assert!(!c.starts_with(&a) && !a.starts_with(&c));
    }

    #[test]
    fn messages_and_events_round_trip() {
        let m = Message {
            id: 42,
            from: UserKey::new("a", "alice"),
            to: UserKey::new("b", "bob"),
            kind: "text".into(),
            body: Bytes::from_static(b"\0hello"),
            client_msg_id: "c-1".into(),
            server_time_ms: 1_700_000_000_000,
            group: String::new(),
        };
        let back = decode_message(&encode_message(&m)).unwrap();
        assert_eq!(back, m);
        let g = Message {
            group: "g-1".into(),
            ..m.clone()
        };
        assert_eq!(decode_message(&encode_message(&g)).unwrap(), g);
        let rec = GroupRecord {
            generation: 3,
            created_ms: 9,
            members: 2,
            post_policy: PostPolicy::Admins,
            history_visible: true,
            name: "n".into(),
            meta: Bytes::from_static(b"{}"),
        };
        assert_eq!(decode_group(&encode_group(&rec)).unwrap(), rec);
        let e = BusEvent {
            id: 7,
            topic: "c2s".into(),
            user: UserKey::new("a", "alice"),
            kind: "gps".into(),
            body: Bytes::from_static(b"{}"),
            time_ms: 5,
        };
        assert_eq!(
            decode_event(&encode_event(&e, "d")).unwrap(),
            (e, "d".into())
        );
    }

    #[test]
    fn short_or_foreign_values_are_corrupt_not_a_panic() {
        for v in [
            &b""[..],
            b"\x01",
            b"\x03abcdefghijklmnop",
            b"\x01\0\0\0\0\0\0\0\x01\xff\xff",
        ] {
            assert!(matches!(decode_message(v), Err(StoreError::Corrupt(_))));
            assert!(matches!(decode_event(v), Err(StoreError::Corrupt(_))));
        }
        assert!(decode_dedupe(b"short").is_err());
        assert!(seq_of_timeline(b"short").is_err());
    }

    #[test]
    fn over_long_key_parts_are_invalid() {
        let long = "x".repeat(70_000);
        assert!(matches!(
            user(&UserKey::new("a", long)),
            Err(StoreError::Invalid(_))
        ));
    }
}
