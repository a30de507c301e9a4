//! Revocation: when a binding is unbound or expires, its user's tokens are refused and its
//! open streams ended at once, instead of never (etcd does not re-check an open watch; the
//! broker's deletion of the user ends neither the watch nor, before the deletion, the token).
//!
//! The broker is not told anything new: the proxy watches the broker's binding records
//! (`<broker state prefix>bindings/<instance>/<binding>`, with their previous values) with
//! its own user, and reads what each change means for the record's user ([`change_of`]):
//! - unbind marks the record `deleting` before it deletes the user, and deletes the record
//!   after: both revoke the user; while the record is `deleting`, no login of the user is
//!   learnt ([`crate::caller::Tokens::learn`]), since etcd still accepts it for a moment;
//! - expiry deletes the user, then marks the record `revoked_at`: that revokes it too;
//! - a new record with the same user name (a new bind of the same binding id) lets the user
//!   log in again; tokens from before stay refused.
//!
//! The watch resumes from the last revision seen after a break. When etcd compacted that
//! revision meanwhile, the changes in between are lost, so every user with a known token or
//! an open stream is checked against its record instead ([`Bindings::check`]); a login is
//! checked the same way ([`Bindings::check`] from the Authenticate service), which also covers
//! bindings revoked before the proxy started.

use std::time::Duration;

use etcd_broker::broker::names::Names;
use etcd_broker::broker::records::RecordState;
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::caller::Tokens;
use crate::policy;
use crate::streams::OpenStreams;

/// What a change of a binding record means for its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Refuse the user's tokens, end its streams; `current`: its binding is being deleted or
    /// has expired, so new logins are refused too.
    Revoke { user: String, current: bool },
    /// A binding of that name exists (again) and is not revoked: logins are learnt again.
    Reinstate { user: String },
}

/// The fields of a binding record the proxy reads (the broker's `BindingRecord`); the rest,
/// secrets included, are not even parsed.
#[derive(Deserialize)]
struct Binding {
    username: String,
    state: RecordState,
    #[serde(default)]
    revoked_at: Option<u64>,
}

impl Binding {
    fn parse(value: &[u8]) -> Option<Binding> {
        serde_json::from_slice(value).ok()
    }

    fn revoked(&self) -> bool {
        self.state == RecordState::Deleting || self.revoked_at.is_some()
    }
}

/// What a record's change means: `value` is its new value (`None`: deleted), `previous` its
/// value before (etcd's `prev_kv`). Unreadable records change nothing.
pub fn change_of(value: Option<&[u8]>, previous: Option<&[u8]>) -> Option<Change> {
    match value {
        Some(value) => {
            let binding = Binding::parse(value)?;
            Some(if binding.revoked() {
                Change::Revoke { user: binding.username, current: true }
            } else {
                Change::Reinstate { user: binding.username }
            })
        }
        // Deleted: the broker deleted the user before; etcd refuses its logins itself.
        None => Some(Change::Revoke { user: Binding::parse(previous?)?.username, current: false }),
    }
}

/// Carries a change out: tokens refused, streams ended.
pub fn apply(change: &Change, tokens: &Tokens, streams: &OpenStreams) {
    match change {
        Change::Revoke { user, current } => {
            tokens.revoke(user, *current);
            let ended = streams.end(user);
            tracing::info!(%user, streams_ended = ended, "a binding's user is revoked");
        }
        Change::Reinstate { user } => tokens.reinstate(user),
    }
}

/// The broker's binding records, read with the proxy's own client.
#[derive(Clone)]
pub struct Bindings {
    client: Client,
    names: Names,
}

/// The records could not be read: a login is then refused (UNAVAILABLE), never let through
/// unchecked.
#[derive(Debug, thiserror::Error)]
pub enum BindingsError {
    #[error("the broker's binding records are unavailable: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the broker's binding records are unavailable: etcd did not answer within {0:?}")]
    Timeout(Duration),
}

impl Bindings {
    /// The records of the broker whose state prefix `names` holds.
    pub fn new(client: Client, names: Names) -> Self {
        Bindings { client, names }
    }

    /// Reads the records once: refuses to start a proxy whose user may not read them.
    pub async fn probe(&self) -> Result<(), BindingsError> {
        let prefix = self.names.all_bindings_prefix();
        let options = GetOptions::new().with_prefix().with_count_only();
        self.bounded(|mut c| {
            let (prefix, options) = (prefix.clone(), options.clone());
            async move { c.get(prefix, Some(options)).await.map(|_| ()) }
        })
        .await
    }

    /// What `user`'s binding record says now: `None` for a user the broker does not name
    /// (operators, users made by hand), else the change to apply (a missing record revokes).
    pub async fn check(&self, user: &str) -> Result<Option<Change>, BindingsError> {
        let Some((instance, binding)) = self.names.parse_name(user) else { return Ok(None) };
        let key = self.names.binding_key(&instance, &binding);
        let found = self
            .bounded(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(Some(match found.kvs().first().and_then(|kv| Binding::parse(kv.value())) {
            // No record, no access (the broker's rule): a user left over by a crash.
            None => Change::Revoke { user: user.to_owned(), current: true },
            Some(record) if record.revoked() => Change::Revoke { user: user.to_owned(), current: true },
            Some(_) => Change::Reinstate { user: user.to_owned() },
        }))
    }

    /// Follows the records forever, applying every change to `tokens` and `streams`.
    pub async fn follow(self, tokens: std::sync::Arc<Tokens>, streams: OpenStreams) {
        let mut from: Option<i64> = None;
        loop {
            let start = match from {
                Some(revision) => revision,
                None => match self.resync(&tokens, &streams).await {
                    Ok(revision) => revision + 1,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the broker's binding records; trying again");
                        tokio::time::sleep(policy::REVOCATION_RETRY).await;
                        continue;
                    }
                },
            };
            match self.watch_from(start, &tokens, &streams).await {
                Followed::Until(revision) => from = Some(revision + 1),
                Followed::Compacted => {
                    tracing::warn!("the broker's binding records were compacted while the proxy was not watching; checking every known user");
                    from = None;
                }
                Followed::Failed(e, revision) => {
                    tracing::warn!(error = %e, "the watch of the broker's binding records broke; resuming");
                    from = revision.map(|r| r + 1);
                    tokio::time::sleep(policy::REVOCATION_RETRY).await;
                }
            }
        }
    }

    /// Checks every user with a token or an open stream against its record; the revision from
    /// which changes are still to be watched.
    async fn resync(&self, tokens: &Tokens, streams: &OpenStreams) -> Result<i64, BindingsError> {
        let prefix = self.names.all_bindings_prefix();
        let options = GetOptions::new().with_prefix().with_count_only();
        let revision = self
            .bounded(|mut c| {
                let (prefix, options) = (prefix.clone(), options.clone());
                async move { c.get(prefix, Some(options)).await }
            })
            .await?
            .header()
            .map_or(0, |h| h.revision());
        let mut users = tokens.users();
        users.extend(streams.users());
        users.sort_unstable();
        users.dedup();
        for user in users {
            if let Some(change) = self.check(&user).await? {
                apply(&change, tokens, streams);
            }
        }
        Ok(revision)
    }

    /// Watches the records from `start` until the watch ends: up to which revision it saw
    /// everything.
    async fn watch_from(&self, start: i64, tokens: &Tokens, streams: &OpenStreams) -> Followed {
        let options = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(start);
        let mut client = self.client.clone();
        let mut seen: Option<i64> = Some(start - 1);
        let mut watch = match client.watch(self.names.all_bindings_prefix(), Some(options)).await {
            Ok(watch) => watch,
            Err(e) => return Followed::Failed(e.to_string(), seen),
        };
        while let Some(answer) = watch.next().await {
            let answer = match answer {
                Ok(answer) => answer,
                Err(e) => return Followed::Failed(e.to_string(), seen),
            };
            if answer.compact_revision() > 0 {
                return Followed::Compacted;
            }
            if answer.canceled() {
                return Followed::Failed(format!("etcd cancelled it: {}", answer.cancel_reason()), seen);
            }
            for event in answer.events() {
                let value = match event.event_type() {
                    EventType::Put => Some(event.kv().map_or(&[][..], |kv| kv.value())),
                    EventType::Delete => None,
                };
                if let Some(change) = change_of(value, event.prev_kv().map(|kv| kv.value())) {
                    apply(&change, tokens, streams);
                }
            }
            if let Some(header) = answer.header() {
                seen = Some(seen.unwrap_or(0).max(header.revision()));
            }
        }
        Followed::Until(seen.unwrap_or(start - 1))
    }

    /// One request of the proxy's client ([`policy::own_request`]).
    async fn bounded<T, F, Fut>(&self, op: F) -> Result<T, BindingsError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        policy::own_request(&self.client, op, BindingsError::Timeout).await
    }
}

/// How a watch of the records ended.
enum Followed {
    /// The stream ended after everything up to this revision was seen.
    Until(i64),
    /// etcd no longer holds the revision to resume from.
    Compacted,
    /// The watch failed (the message, never a value), having seen up to this revision.
    Failed(String, Option<i64>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: &str, revoked_at: Option<u64>) -> Vec<u8> {
        let mut json = serde_json::json!({
            "instance_id": "i", "binding_id": "b", "username": "etcd-broker.i.b",
            "password_sealed": "secret", "state": state,
        });
        if let Some(at) = revoked_at {
            json["revoked_at"] = at.into();
        }
        serde_json::to_vec(&json).unwrap()
    }

    #[test]
    fn unbind_and_expiry_revoke_and_a_new_binding_reinstates() {
        let user = "etcd-broker.i.b".to_owned();
        let (creating, ready, deleting) =
            (record("creating", None), record("ready", None), record("deleting", None));
        let revoke = |current| Some(Change::Revoke { user: user.clone(), current });
        assert_eq!(change_of(Some(&creating), None), Some(Change::Reinstate { user: user.clone() }));
        assert_eq!(change_of(Some(&deleting), Some(&ready)), revoke(true));
        assert_eq!(change_of(Some(&record("ready", Some(7))), Some(&ready)), revoke(true));
        assert_eq!(change_of(None, Some(&deleting)), revoke(false));
        assert_eq!(change_of(None, None), None);
        assert_eq!(change_of(Some(b"not json"), None), None);
    }
}
