//! Conversations: the list a chat screen shows (each 1:1 pair and each
//! group with its last entry and the user's unread count), and the read
//! positions behind it.
//!
//! The list is a *view*: derived state, folded from what is already
//! durable, and stored per user so each request only folds what is new.
//! - The user's own timeline gives the 1:1 conversations (every c2c and
//!   s2c is an entry there) and every read position, because "mark read"
//!   is itself an entry on the reader's timeline (a read receipt,
//!   [`crate::model::READ_RECEIPT_KIND`]). The view remembers the sequence
//!   it has folded through.
//! - Each group's timeline gives the group conversations: the view
//!   remembers, per group, the sequence it has looked at, and reads only
//!   the entries after it (at most [`GROUP_SCAN`] per request).
//!
//! Since the view is a pure function of durable entries, it needs no
//! atomic step with the appends (a c2c costs what it cost before) and no
//! care on a crash: a lost or stale view is folded again from where it
//! was. Two nodes folding the same user at once write the same result.

use std::cmp::Reverse;
use std::collections::HashMap;

use prost::Message as _;

use crate::model::{Entry, Message, UserKey};

/// Unread entries tracked one by one per conversation; beyond it the
/// oldest are only counted (a read position below them then leaves the
/// count as it was).
pub const MAX_TRACKED_UNREAD: usize = 1000;

/// Group entries read per group per request when a group moved; older new
/// entries are counted as unread without being read.
pub const GROUP_SCAN: usize = 200;

/// One conversation in the stored view.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConvState {
    #[prost(string, tag = "1")]
    pub peer_app: String,
    #[prost(string, tag = "2")]
    pub peer_uid: String,
    /// The group's id; empty for a 1:1 conversation.
    #[prost(string, tag = "3")]
    pub group: String,
    /// The last app entry: a sequence on the user's timeline (1:1) or on
    /// the group's (group); 0 when there is none yet.
    #[prost(uint64, tag = "4")]
    pub last_seq: u64,
    #[prost(int64, tag = "5")]
    pub last_time_ms: i64,
    /// The user's read position (same scale as `last_seq`).
    #[prost(uint64, tag = "6")]
    pub read_seq: u64,
    /// Others' entries after `read_seq`, oldest first, at most
    /// [`MAX_TRACKED_UNREAD`].
    #[prost(uint64, repeated, tag = "7")]
    pub unread_seqs: Vec<u64>,
    /// Unread entries older than every tracked one.
    #[prost(uint64, tag = "8")]
    pub unread_untracked: u64,
    /// 1:1: the peer read up to this message.
    #[prost(uint64, tag = "9")]
    pub peer_read_msg_id: u64,
    /// Group: its entries were looked at through this sequence.
    #[prost(uint64, tag = "10")]
    pub group_seen: u64,
    /// When the view last folded this conversation's last entry, on the
    /// view's own clock ([`ViewState::clock`]): orders conversations whose
    /// last entries share a millisecond by the order they were folded in,
    /// which for 1:1 conversations is the user's timeline order.
    #[prost(uint64, tag = "11")]
    pub activity: u64,
}

impl ConvState {
    fn key(&self) -> ConvKey {
        if self.group.is_empty() {
            ConvKey::Peer(UserKey::new(self.peer_app.clone(), self.peer_uid.clone()))
        } else {
            ConvKey::Group(self.group.clone())
        }
    }

    fn new(key: &ConvKey) -> ConvState {
        let mut c = ConvState::default();
        match key {
            ConvKey::Peer(u) => {
                c.peer_app = u.app.clone();
                c.peer_uid = u.uid.clone();
            }
            ConvKey::Group(g) => c.group = g.clone(),
        }
        c
    }

    /// Entries from others after the read position.
    pub fn unread(&self) -> u64 {
        self.unread_seqs.len() as u64 + self.unread_untracked
    }

    /// The user read up to `seq` (never moves back).
    fn read_to(&mut self, seq: u64) {
        if seq <= self.read_seq {
            return;
        }
        self.read_seq = seq;
        // The untracked ones are older than every tracked one: all read
        // when the position reaches the oldest tracked (or there is none).
        if self.unread_seqs.first().is_none_or(|&s| s <= seq) {
            self.unread_untracked = 0;
        }
        self.unread_seqs.retain(|&s| s > seq);
    }

    /// An entry from someone else at `seq`.
    fn add_unread(&mut self, seq: u64) {
        if seq <= self.read_seq || self.unread_seqs.last().is_some_and(|&s| s >= seq) {
            return;
        }
        self.unread_seqs.push(seq);
        if self.unread_seqs.len() > MAX_TRACKED_UNREAD {
            self.unread_seqs.remove(0);
            self.unread_untracked += 1;
        }
    }

    /// The conversation's last app entry is `seq`, stored at `time_ms`,
    /// folded at `clock`.
    fn touch(&mut self, seq: u64, time_ms: i64, clock: &mut u64) {
        if seq > self.last_seq {
            self.last_seq = seq;
            self.last_time_ms = time_ms;
            *clock += 1;
            self.activity = *clock;
        }
    }
}

/// The stored view of one user's conversations.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ViewState {
    /// The user's timeline is folded through this sequence.
    #[prost(uint64, tag = "1")]
    pub through_seq: u64,
    #[prost(message, repeated, tag = "2")]
    pub conversations: Vec<ConvState>,
    /// Counts the last entries folded (see [`ConvState::activity`]).
    #[prost(uint64, tag = "3")]
    pub clock: u64,
}

/// A conversation's identity within one user's view.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConvKey {
    /// The 1:1 conversation with this user.
    Peer(UserKey),
    /// The group with this id (in the user's app).
    Group(String),
}

/// The view while it is folded: conversations by key.
#[derive(Debug, Default)]
pub struct View {
    pub through_seq: u64,
    pub clock: u64,
    pub conversations: HashMap<ConvKey, ConvState>,
}

impl View {
    /// Decodes a stored view; a view that does not decode is folded again
    /// from the start (it is derived state).
    pub fn decode(bytes: &[u8]) -> View {
        let Ok(state) = ViewState::decode(bytes) else {
            tracing::warn!("a stored conversation view did not decode; it is rebuilt");
            return View::default();
        };
        View {
            through_seq: state.through_seq,
            clock: state.clock,
            conversations: state
                .conversations
                .into_iter()
                .map(|c| (c.key(), c))
                .collect(),
        }
    }

    pub fn encode(&self) -> bytes::Bytes {
        let mut conversations: Vec<ConvState> = self.conversations.values().cloned().collect();
        // A stable order, so an unchanged view encodes the same.
        conversations.sort_by_key(|c| c.key());
        ViewState {
            through_seq: self.through_seq,
            conversations,
            clock: self.clock,
        }
        .encode_to_vec()
        .into()
    }

    fn conv(&mut self, key: ConvKey) -> &mut ConvState {
        self.conversations
            .entry(key)
            .or_insert_with_key(ConvState::new)
    }

    /// Folds entry `seq` of `user`'s own timeline.
    pub fn fold_own(&mut self, user: &UserKey, seq: u64, m: &Message) {
        if seq > self.through_seq {
            self.through_seq = seq;
        }
        if !m.group.is_empty() {
            // Group messages live on group timelines, not here.
            return;
        }
        if let Some(r) = m.read_receipt() {
            if m.from == *user {
                // This user read something (on this device or another).
                let key = if r.group.is_empty() {
                    match &r.peer {
                        Some(p) => ConvKey::Peer(UserKey::from_pb(p)),
                        None => return,
                    }
                } else {
                    ConvKey::Group(r.group)
                };
                self.conv(key).read_to(r.seq);
            } else {
                // The peer read this user's messages.
                let c = self.conv(ConvKey::Peer(m.from.clone()));
                c.peer_read_msg_id = r.msg_id;
            }
            return;
        }
        if !m.is_app_message() {
            // An amend notice: the message it amends keeps its place (the
            // list reads it as it is now).
            return;
        }
        let mine = m.from == *user;
        let peer = if mine { m.to.clone() } else { m.from.clone() };
        let clock = &mut self.clock;
        let c = self
            .conversations
            .entry(ConvKey::Peer(peer))
            .or_insert_with_key(ConvState::new);
        c.touch(seq, m.server_time_ms, clock);
        if mine {
            // Sending in a conversation reads it.
            c.read_to(seq);
        } else {
            c.add_unread(seq);
        }
    }

    /// Group `gid` is one of the user's groups: its head is `head` and the
    /// user sees the entries after `visible_after`. Returns from which
    /// sequence the group's new entries must be read ([`View::fold_group`]
    /// each, then [`View::group_seen`]), `None` when nothing is new.
    pub fn group_needs(&mut self, gid: &str, head: u64, visible_after: u64) -> Option<u64> {
        let c = self.conv(ConvKey::Group(gid.to_owned()));
        if head < c.group_seen {
            // Deleted and created again under the same id: a new group.
            *c = ConvState::new(&ConvKey::Group(gid.to_owned()));
        }
        if c.group_seen < visible_after {
            c.group_seen = visible_after;
        }
        if c.read_seq < visible_after {
            c.read_to(visible_after);
        }
        if head <= c.group_seen {
            return None;
        }
        let from = c.group_seen.max(head.saturating_sub(GROUP_SCAN as u64));
        // Entries that will not be read: counted as unread, when after the
        // read position.
        let skipped = from.saturating_sub(c.group_seen.max(c.read_seq));
        c.unread_untracked += skipped;
        Some(from)
    }

    /// Folds entry `seq` of group `gid`'s timeline.
    pub fn fold_group(&mut self, user: &UserKey, gid: &str, entry: &Entry) {
        let clock = &mut self.clock;
        let c = self
            .conversations
            .entry(ConvKey::Group(gid.to_owned()))
            .or_insert_with_key(ConvState::new);
        let m = &entry.message;
        c.group_seen = c.group_seen.max(entry.seq);
        if !m.is_app_message() {
            return;
        }
        c.touch(entry.seq, m.server_time_ms, clock);
        if m.from == *user {
            c.read_to(entry.seq);
        } else {
            c.add_unread(entry.seq);
        }
    }

    /// Group `gid`'s entries were looked at through `head`.
    pub fn group_seen(&mut self, gid: &str, head: u64) {
        let c = self.conv(ConvKey::Group(gid.to_owned()));
        c.group_seen = c.group_seen.max(head);
    }

    /// Drops the groups the user is no longer in.
    pub fn keep_groups(&mut self, gids: &std::collections::HashSet<&str>) {
        self.conversations.retain(|k, _| match k {
            ConvKey::Group(g) => gids.contains(g.as_str()),
            ConvKey::Peer(_) => true,
        });
    }

    /// Unread entries over every conversation.
    pub fn total_unread(&self) -> u64 {
        self.conversations.values().map(ConvState::unread).sum()
    }

    /// Conversations in list order (last activity first), those after the
    /// page cursor `after` when given, at most `limit`; and the cursor of
    /// the next page when there is one.
    pub fn page(
        &self,
        after: Option<&PageCursor>,
        limit: usize,
    ) -> (Vec<&ConvState>, Option<PageCursor>) {
        let mut all: Vec<(SortKey, &ConvState)> = self
            .conversations
            .iter()
            // A group with nothing visible yet is listed too (a new order's
            // conversation); a 1:1 pair exists only through an entry.
            .map(|(k, c)| {
                let key = (Reverse(c.last_time_ms), Reverse(c.activity), k.clone());
                (key, c)
            })
            .filter(|(k, _)| after.is_none_or(|a| *k > a.sort_key()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let more = all.len() > limit;
        all.truncate(limit);
        let next = more
            .then(|| all.last())
            .flatten()
            .map(|((Reverse(t), Reverse(a), k), _)| PageCursor {
                time_ms: *t,
                activity: *a,
                key: k.clone(),
            });
        (all.into_iter().map(|(_, c)| c).collect(), next)
    }
}

/// Last activity first: the time of the last entry, then the order the
/// view folded it in, then the conversation's key (for those with no
/// entry yet).
type SortKey = (Reverse<i64>, Reverse<u64>, ConvKey);

/// Where a page of the list ended: opaque to clients. Its text is
/// `{time_ms}.{activity}.{u|g}.{hex app}.{hex id}`; every text of that shape is a
/// position in the list's order (the page after it), so a cursor a client
/// mangled within that shape answers a page, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    pub time_ms: i64,
    pub activity: u64,
    pub key: ConvKey,
}

impl PageCursor {
    fn sort_key(&self) -> SortKey {
        (
            Reverse(self.time_ms),
            Reverse(self.activity),
            self.key.clone(),
        )
    }

    pub fn encode(&self) -> String {
        let (kind, a, b) = match &self.key {
            ConvKey::Peer(u) => ("u", u.app.as_str(), u.uid.as_str()),
            ConvKey::Group(g) => ("g", "", g.as_str()),
        };
        format!(
            "{}.{}.{kind}.{}.{}",
            self.time_ms.max(0),
            self.activity,
            hex(a),
            hex(b)
        )
    }

    /// `None` for text not of the cursor's shape.
    pub fn decode(text: &str) -> Option<PageCursor> {
        let mut parts = text.split('.');
        let mut next = || parts.next();
        let (t, n, kind, a, b) = (next()?, next()?, next()?, next()?, next()?);
        if next().is_some() || !digits(t, 18) || !digits(n, 19) {
            return None;
        }
        let time_ms: i64 = t.parse().ok()?;
        let activity: u64 = n.parse().ok()?;
        let (a, b) = (unhex(a)?, unhex(b)?);
        let key = match kind {
            "u" => ConvKey::Peer(UserKey::new(a, b)),
            "g" => ConvKey::Group(b),
            _ => return None,
        };
        Some(PageCursor {
            time_ms,
            activity,
            key,
        })
    }
}

/// 1 to `max` ASCII digits.
fn digits(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|c| c.is_ascii_digit())
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex to text (bytes that are not UTF-8 become U+FFFD: still a
/// position in the order).
fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) || s.len() > 2 * 256 {
        return None;
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| {
            let pair = s.get(i..i + 2)?;
            pair.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
                .then(|| u8::from_str_radix(pair, 16).ok())
                .flatten()
        })
        .collect::<Option<Vec<u8>>>()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use switchboard_proto::pb;

    use super::*;
    use crate::model::READ_RECEIPT_KIND;

    fn u(uid: &str) -> UserKey {
        UserKey::new("demo", uid)
    }

    fn msg(from: &str, to: &str, time: i64) -> Message {
        Message {
            id: time as u64,
            from: u(from),
            to: u(to),
            kind: "text".into(),
            body: Bytes::from_static(b"hi"),
            client_msg_id: String::new(),
            server_time_ms: time,
            group: String::new(),
        }
    }

    fn receipt(from: &str, peer: Option<&str>, group: &str, seq: u64) -> Message {
        let r = pb::ReadReceipt {
            peer: peer.map(|p| u(p).to_pb()),
            group: group.into(),
            seq,
            msg_id: 77,
        };
        Message {
            kind: READ_RECEIPT_KIND.into(),
            body: r.encode_to_vec().into(),
            ..msg(from, peer.unwrap_or(from), 0)
        }
    }

    #[test]
    fn unread_counts_follow_messages_sends_and_reads() {
        let me = u("me");
        let mut v = View::default();
        v.fold_own(&me, 1, &msg("bob", "me", 10));
        v.fold_own(&me, 2, &msg("bob", "me", 11));
        v.fold_own(&me, 3, &msg("carol", "me", 12));
        let bob = ConvKey::Peer(u("bob"));
        assert_eq!(v.conversations[&bob].unread(), 2);
        assert_eq!(v.total_unread(), 3);
        // Read up to the first of bob's: one left.
        v.fold_own(&me, 4, &receipt("me", Some("bob"), "", 1));
        assert_eq!(v.conversations[&bob].unread(), 1);
        assert_eq!(v.conversations[&bob].last_seq, 2);
        // A reply reads the conversation.
        v.fold_own(&me, 5, &msg("me", "bob", 13));
        assert_eq!(v.conversations[&bob].unread(), 0);
        assert_eq!(v.conversations[&bob].last_seq, 5);
        // A read position never moves back.
        v.fold_own(&me, 6, &receipt("me", Some("bob"), "", 1));
        assert_eq!(v.conversations[&bob].read_seq, 5);
        // Bob's receipt marks the peer's read position.
        v.fold_own(&me, 7, &receipt("bob", Some("me"), "", 3));
        assert_eq!(v.conversations[&bob].peer_read_msg_id, 77);
        assert_eq!(v.through_seq, 7);
        // Order: last activity first.
        let (page, next) = v.page(None, 1);
        assert_eq!(page[0].peer_uid, "bob");
        let next = PageCursor::decode(&next.unwrap().encode()).unwrap();
        let (page, next) = v.page(Some(&next), 10);
        assert_eq!(page[0].peer_uid, "carol");
        assert!(next.is_none());
        // The view survives encoding.
        let again = View::decode(&v.encode());
        assert_eq!(again.conversations, v.conversations);
        assert_eq!(again.encode(), v.encode());
    }

    #[test]
    fn groups_count_others_entries_after_the_read_position() {
        let me = u("me");
        let mut v = View::default();
        let entry = |seq, from: &str| Entry {
            seq,
            message: Arc::new(Message {
                group: "g".into(),
                ..msg(from, "", seq as i64)
            }),
        };
        // Joined at 3: nothing before is unread.
        assert_eq!(v.group_needs("g", 5, 3), Some(3));
        v.fold_group(&me, "g", &entry(4, "bob"));
        v.fold_group(&me, "g", &entry(5, "bob"));
        v.group_seen("g", 5);
        let g = ConvKey::Group("g".into());
        assert_eq!(v.conversations[&g].unread(), 2);
        assert_eq!(v.group_needs("g", 5, 3), None);
        // My post reads the group.
        assert_eq!(v.group_needs("g", 6, 3), Some(5));
        v.fold_group(&me, "g", &entry(6, "me"));
        assert_eq!(v.conversations[&g].unread(), 0);
        // Far behind: the entries not read count as unread.
        let from = v.group_needs("g", 6 + GROUP_SCAN as u64 + 10, 3).unwrap();
        assert_eq!(from, 16);
        assert_eq!(v.conversations[&g].unread(), 10);
        // A read receipt for the group, folded from my timeline.
        v.fold_own(&me, 1, &receipt("me", None, "g", 16));
        assert_eq!(v.conversations[&g].unread(), 0);
        // Left the group: gone from the list.
        v.keep_groups(&Default::default());
        assert!(v.conversations.is_empty());
    }

    #[test]
    fn the_same_millisecond_lists_the_later_entry_first() {
        let me = u("me");
        let mut v = View::default();
        // "zed" wrote first, "amy" second, both in millisecond 10; the key
        // order alone would put amy first either way, so write them both ways.
        v.fold_own(&me, 1, &msg("amy", "me", 10));
        v.fold_own(&me, 2, &msg("zed", "me", 10));
        let (page, _) = v.page(None, 10);
        assert_eq!(page[0].peer_uid, "zed");
        v.fold_own(&me, 3, &msg("amy", "me", 10));
        let (page, next) = v.page(None, 1);
        assert_eq!(page[0].peer_uid, "amy");
        // Paging through the tie neither skips nor repeats.
        let next = PageCursor::decode(&next.unwrap().encode()).unwrap();
        let (page, next) = v.page(Some(&next), 1);
        assert_eq!(page[0].peer_uid, "zed");
        assert!(next.is_none());
        // The order survives the stored view.
        let again = View::decode(&v.encode());
        assert_eq!(again.page(None, 10).0[0].peer_uid, "amy");
    }

    #[test]
    fn tracked_unread_is_bounded() {
        let me = u("me");
        let mut v = View::default();
        for seq in 1..=(MAX_TRACKED_UNREAD as u64 + 5) {
            v.fold_own(&me, seq, &msg("bob", "me", seq as i64));
        }
        let bob = &v.conversations[&ConvKey::Peer(u("bob"))];
        assert_eq!(bob.unread(), MAX_TRACKED_UNREAD as u64 + 5);
        assert_eq!(bob.unread_seqs.len(), MAX_TRACKED_UNREAD);
        assert!(PageCursor::decode("not a cursor").is_none());
        assert!(PageCursor::decode("1.2.u.0.").is_none());
        assert!(PageCursor::decode("1.u.00.").is_none());
        let any = PageCursor::decode("0.0.g..ff00").unwrap();
        assert_eq!(any.key, ConvKey::Group("\u{fffd}\0".into()));
    }
}
