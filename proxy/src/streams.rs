//! The streams each user has open through the proxy (watches, lease keep-alives), so that a
//! revoked user's are ended at once. etcd never re-checks an open watch: a watch opened
//! before the user was deleted keeps receiving events through the unbind, the deprovision and
//! the next tenant's writes under a reused instance id. The proxy ends it itself
//! ([`crate::revocation`] calls [`OpenStreams::end`]).
//!
//! Only streams of known users are registered: the Watch service refuses tokens the proxy did
//! not see issued, so every open watch belongs to a user who can be revoked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use tokio::sync::oneshot;
use tonic::Status;

use crate::caller::Revoked;

/// What kind of stream, for the open-streams gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Watch,
    KeepAlive,
}

/// user -> stream id -> (kind, the sender that ends it).
type Open = HashMap<String, HashMap<u64, (Kind, oneshot::Sender<()>)>>;

/// The open streams by user; cheap to clone.
#[derive(Clone, Default)]
pub struct OpenStreams {
    next: Arc<AtomicU64>,
    open: Arc<Mutex<Open>>,
}

/// One open stream: ended when [`OpenStreams::end`] is called for its user; unregistered when
/// dropped (the stream ended on its own).
pub struct Registration {
    streams: OpenStreams,
    user: String,
    id: u64,
    ended: oneshot::Receiver<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = self.streams.lock();
        if let Some(of_user) = open.get_mut(&self.user) {
            of_user.remove(&self.id);
            if of_user.is_empty() {
                open.remove(&self.user);
            }
        }
    }
}

impl OpenStreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // A panic elsewhere while holding the lock leaves a map that is still consistent.
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a stream of `user`'s.
    pub fn open(&self, user: &str, kind: Kind) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (end, ended) = oneshot::channel();
        self.lock().entry(user.to_owned()).or_default().insert(id, (kind, end));
        Registration { streams: self.clone(), user: user.to_owned(), id, ended }
    }

    /// Ends every stream `user` has open; how many there were.
    pub fn end(&self, user: &str) -> usize {
        let ended = self.lock().remove(user).unwrap_or_default();
        let count = ended.len();
        for (_, (_, end)) in ended {
            let _ = end.send(());
        }
        count
    }

    /// The users with open streams (each once).
    pub fn users(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// How many streams of `kind` are open.
    pub fn count(&self, kind: Kind) -> usize {
        self.lock().values().flat_map(|of_user| of_user.values()).filter(|(k, _)| *k == kind).count()
    }
}

/// `responses` until the stream's user is revoked: then the revocation's status, and the end.
/// Dropping `responses` then closes the stream to etcd, which cancels etcd's side of it.
pub fn until_revoked<T, S>(
    responses: S,
    registration: Registration,
) -> std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>
where
    T: Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
{
    struct State<S> {
        responses: std::pin::Pin<Box<S>>,
        registration: Registration,
        done: bool,
    }
    let state = State { responses: Box::pin(responses), registration, done: false };
    Box::pin(futures_util::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        tokio::select! {
            biased;
            ended = &mut state.registration.ended => {
                if ended.is_err() {
                    // The sender is gone without ending us: cannot happen while registered.
                    return None;
                }
                state.done = true;
                let status = Revoked { user: state.registration.user.clone() }.status();
                Some((Err(status), state))
            }
            next = state.responses.next() => next.map(|item| (item, state)),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ending_a_users_streams_ends_only_theirs() {
        let streams = OpenStreams::default();
        let alice = streams.open("alice", Kind::Watch);
        let bob = streams.open("bob", Kind::Watch);
        let _alice_keep_alive = streams.open("alice", Kind::KeepAlive);
        assert_eq!(streams.count(Kind::Watch), 2);
        let forever = futures_util::stream::pending::<Result<u8, Status>>();
        let mut alices = until_revoked(forever, alice);
        let mut bobs = until_revoked(futures_util::stream::iter([Ok(1u8)]), bob);
        assert_eq!(streams.end("alice"), 2);
        let refused = alices.next().await.unwrap().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(alices.next().await.is_none());
        assert_eq!(bobs.next().await.unwrap().unwrap(), 1);
        assert!(bobs.next().await.is_none());
        drop(bobs);
        assert!(streams.users().is_empty(), "{:?}", streams.users());
    }
}
