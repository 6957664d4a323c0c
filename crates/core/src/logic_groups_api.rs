//! What the HTTP API does with groups: business servers own membership
//! (create, update, delete a group; add and remove members in batches; list
//! members and a user's groups, paged) and post to a group as a user or as
//! the system. Every membership change is an event on the bus
//! (`group.*`, see [`crate::events`]). Written against the [`Store`]
//! trait's group methods; the API crate only maps HTTP to these calls.
//!
//! [`Store`]: crate::store::Store

use bytes::Bytes;
use switchboard_proto::limits::check_id;

use crate::error::LogicError;
use crate::events::{self, GroupData};
use crate::group::{Group, GroupKey, GroupRefusal, GroupSpec, Member, Role};
use crate::logic::Logic;
use crate::model::{Message, UserKey};
use crate::store::StoreError;

/// Most members one add or remove call may name: a batch is one atomic
/// store write, so it is bounded like every other request.
pub const MAX_MEMBER_BATCH: usize = 1_000;
/// Longest group name, in bytes.
pub const MAX_GROUP_NAME_BYTES: usize = 256;
/// Largest group metadata, in bytes (as stored: JSON text by convention).
pub const MAX_GROUP_META_BYTES: usize = 4 * 1024;
/// A page of members or of a user's groups when the caller gives no limit.
pub const DEFAULT_GROUP_PAGE: usize = 100;
/// The largest page of members or of a user's groups.
pub const MAX_GROUP_PAGE: usize = 1_000;

/// A post to a group through the HTTP API.
#[derive(Debug, Clone)]
pub struct GroupPost {
    /// The posting member; `None` posts as the app's system sender, which
    /// needs no membership and ignores the post policy.
    pub from: Option<String>,
    /// The poster's id for this message: a resend with the same id stores
    /// nothing and answers the first result.
    pub client_msg_id: String,
    pub kind: String,
    pub body: Bytes,
}

/// The stored group message.
#[derive(Debug, Clone)]
pub struct GroupPosted {
    pub msg_id: u64,
    /// Its sequence on the group's timeline.
    pub seq: u64,
    pub server_time_ms: i64,
    /// Already stored under this `client_msg_id` (the first result).
    pub duplicate: bool,
}

/// A page of a group's members.
#[derive(Debug, Clone)]
pub struct MembersPage {
    pub members: Vec<Member>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next_after: Option<String>,
}

/// A page of a user's groups (their ids).
#[derive(Debug, Clone)]
pub struct UserGroupsPage {
    pub gids: Vec<String>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next_after: Option<String>,
}

fn not_found() -> LogicError {
    LogicError::Store(StoreError::Group(GroupRefusal::NotFound))
}

/// The page size a caller asked for: 0 is the default, above the maximum
/// is the maximum.
fn page_limit(limit: usize) -> usize {
    match limit {
        0 => DEFAULT_GROUP_PAGE,
        n => n.min(MAX_GROUP_PAGE),
    }
}

fn check_batch(n: usize) -> Result<(), LogicError> {
    if n == 0 {
        return Err(LogicError::InvalidArgument(
            "name at least one member".into(),
        ));
    }
    if n > MAX_MEMBER_BATCH {
        return Err(LogicError::InvalidArgument(format!(
            "{n} members; at most {MAX_MEMBER_BATCH} per call"
        )));
    }
    Ok(())
}

impl Logic {
    fn check_group_key(&self, key: &GroupKey) -> Result<(), LogicError> {
        if self.apps().get(&key.app).is_none() {
            return Err(LogicError::UnknownApp(key.app.clone()));
        }
        Ok(check_id("gid", &key.gid)?)
    }

    /// Publishes a `group.*` event, keyed by the app's system user.
    async fn publish_group_event(
        &self,
        topic: &str,
        key: &GroupKey,
        uids: &[String],
        members: u64,
    ) {
        let data = GroupData {
            gid: key.gid.clone(),
            uids: uids.to_vec(),
            members,
        };
        let system = Logic::system_sender(&key.app);
        self.publish_event(topic, &system, "", &data, "").await;
    }

    /// Creates the group or updates its settings; true when created.
    /// `group.created` is published for a creation only.
    pub async fn put_group(&self, spec: GroupSpec) -> Result<(Group, bool), LogicError> {
        self.check_group_key(&spec.key)?;
        if spec.name.len() > MAX_GROUP_NAME_BYTES {
            return Err(LogicError::InvalidArgument(format!(
                "name is over {MAX_GROUP_NAME_BYTES} bytes"
            )));
        }
        if spec.meta.len() > MAX_GROUP_META_BYTES {
            return Err(LogicError::InvalidArgument(format!(
                "meta is over {MAX_GROUP_META_BYTES} bytes"
            )));
        }
        let (group, created) = self.store().put_group(&spec).await?;
        if created {
            self.publish_group_event(events::GROUP_CREATED, &spec.key, &[], group.members)
                .await;
        }
        Ok((group, created))
    }

    /// The group; `GROUP_NOT_FOUND` when there is none (in this app).
    pub async fn get_group(&self, key: &GroupKey) -> Result<Group, LogicError> {
        self.check_group_key(key)?;
        self.store().group(key).await?.ok_or_else(not_found)
    }

    /// Tells every node's hub; a failure is logged, not returned: the
    /// membership is stored, and the store refuses a removed member's reads
    /// and posts whatever its hub still holds.
    async fn leave_or_join(&self, key: &GroupKey, uids: &[String], joined: bool) {
        if let Err(e) = self.membership(key, uids, joined).await {
            tracing::warn!(error = %e, group = %key, joined, "could not tell the nodes of a membership change");
        }
    }

    /// Deletes the group, its members and its timeline; `GROUP_NOT_FOUND`
    /// when there is none.
    pub async fn delete_group(&self, key: &GroupKey) -> Result<(), LogicError> {
        self.check_group_key(key)?;
        if !self.store().delete_group(key).await? {
            return Err(not_found());
        }
        // Every connection leaves it, so a group created again with this
        // id reaches only its new members.
        self.leave_or_join(key, &[], false).await;
        self.publish_group_event(events::GROUP_DELETED, key, &[], 0)
            .await;
        Ok(())
    }

    /// Adds members (or changes their role), atomically; idempotent: the
    /// answer lists only the members this call changed. A uid named twice
    /// counts once, with its first role. `GROUP_FULL` (nothing added) when
    /// the group would have more than `logic.max_group_members`.
    pub async fn add_group_members(
        &self,
        key: &GroupKey,
        members: &[(String, Role)],
    ) -> Result<crate::group::MembersChanged, LogicError> {
        self.check_group_key(key)?;
        check_batch(members.len())?;
        let mut seen = std::collections::HashSet::with_capacity(members.len());
        let mut unique = Vec::with_capacity(members.len());
        for (uid, role) in members {
            check_id("members[].uid", uid)?;
            if seen.insert(uid.as_str()) {
                unique.push((uid.clone(), *role));
            }
        }
        let changed = self
            .store()
            .add_members(key, &unique, self.config().max_group_members)
            .await?;
        if !changed.changed.is_empty() {
            // Online devices of the new members get the group's pushes now.
            self.leave_or_join(key, &changed.changed, true).await;
            self.publish_group_event(
                events::GROUP_MEMBERS_ADDED,
                key,
                &changed.changed,
                changed.members,
            )
            .await;
        }
        Ok(changed)
    }

    /// Removes members, atomically; idempotent: the answer lists only the
    /// members this call removed.
    pub async fn remove_group_members(
        &self,
        key: &GroupKey,
        uids: &[String],
    ) -> Result<crate::group::MembersChanged, LogicError> {
        self.check_group_key(key)?;
        check_batch(uids.len())?;
        let mut seen = std::collections::HashSet::with_capacity(uids.len());
        let mut unique = Vec::with_capacity(uids.len());
        for uid in uids {
            check_id("uids[]", uid)?;
            if seen.insert(uid.as_str()) {
                unique.push(uid.clone());
            }
        }
        let changed = self.store().remove_members(key, &unique).await?;
        if !changed.changed.is_empty() {
            // Removed members' devices get no more pushes of the group.
            self.leave_or_join(key, &changed.changed, false).await;
            self.publish_group_event(
                events::GROUP_MEMBERS_REMOVED,
                key,
                &changed.changed,
                changed.members,
            )
            .await;
        }
        Ok(changed)
    }

    /// A page of the group's members in uid order, after `after`.
    pub async fn group_members(
        &self,
        key: &GroupKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, LogicError> {
        self.check_group_key(key)?;
        // An empty page must say whether the group exists at all.
        if self.store().group(key).await?.is_none() {
            return Err(not_found());
        }
        let limit = page_limit(limit);
        let members = self.store().members(key, after, limit).await?;
        let next_after = (members.len() == limit)
            .then(|| members.last().map(|m| m.uid.clone()))
            .flatten();
        Ok(MembersPage {
            members,
            next_after,
        })
    }

    /// A page of the user's group ids in order, after `after`.
    pub async fn user_groups(
        &self,
        user: &UserKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<UserGroupsPage, LogicError> {
        if self.apps().get(&user.app).is_none() {
            return Err(LogicError::UnknownApp(user.app.clone()));
        }
        check_id("uid", &user.uid)?;
        let limit = page_limit(limit);
        let gids = self.store().user_groups(user, after, limit).await?;
        let next_after = (gids.len() == limit)
            .then(|| gids.last().cloned())
            .flatten();
        Ok(UserGroupsPage { gids, next_after })
    }

    /// Posts to a group as a member (who must be allowed to post:
    /// `NOT_GROUP_MEMBER`, `GROUP_ADMINS_ONLY`) or as the system. Stored
    /// durably (de-duplicated on the poster's `client_msg_id`) before it is
    /// answered, then pushed to the members' online devices; a duplicate is
    /// pushed again, like a c2c (devices drop what they have by sequence).
    pub async fn post_to_group(
        &self,
        key: &GroupKey,
        post: GroupPost,
    ) -> Result<GroupPosted, LogicError> {
        self.check_group_key(key)?;
        if let Some(uid) = &post.from {
            check_id("from", uid)?;
        }
        self.check_content(&post.client_msg_id, &post.kind, &post.body)?;
        let check_sender = post.from.is_some();
        let from = match post.from {
            Some(uid) => UserKey::new(key.app.as_str(), uid),
            None => Logic::system_sender(&key.app),
        };
        let message = Message {
            id: self.next_id(),
            from,
            to: UserKey::new(key.app.as_str(), ""),
            kind: post.kind,
            body: post.body,
            client_msg_id: post.client_msg_id,
            server_time_ms: crate::now_ms(),
            group: key.gid.clone(),
        };
        // Screened like a member's post over the protocol, then stored,
        // pushed and published as `message.stored`.
        let posted = self
            .group_store_and_deliver(key.clone(), message, check_sender, None)
            .await?;
        let posted = GroupPosted {
            msg_id: posted.message.id,
            seq: posted.seq,
            server_time_ms: posted.message.server_time_ms,
            duplicate: posted.duplicate,
        };
        Ok(posted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_batches_are_bounded() {
        assert_eq!(page_limit(0), DEFAULT_GROUP_PAGE);
        assert_eq!(page_limit(7), 7);
        assert_eq!(page_limit(usize::MAX), MAX_GROUP_PAGE);
        assert!(check_batch(0).is_err());
        assert!(check_batch(1).is_ok());
        assert!(check_batch(MAX_MEMBER_BATCH).is_ok());
        assert!(check_batch(MAX_MEMBER_BATCH + 1).is_err());
    }
}
