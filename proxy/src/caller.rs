//! Who is calling. etcd's tokens are opaque to the proxy (a simple token is random; a JWT's
//! claims could be forged, and the proxy never checks signatures), so the proxy learns which
//! user a token belongs to from the Authenticate call it forwarded itself: etcd answered that
//! user's name and password with that token. A token the proxy never saw (issued by etcd
//! directly, by another proxy, or before a restart) is a tenant of unknown identity: it gets
//! the tenant rules and owns no lease.
//!
//! A user can also be revoked ([`Tokens::revoke`]: its binding was unbound or has expired,
//! [`crate::revocation`]): every token learnt for it until then is refused from then on, and
//! while its binding is being deleted no new token is learnt for it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use tonic::metadata::MetadataMap;

use crate::policy;

/// The metadata keys etcd reads a token from: clients send `token`; etcd's gRPC gateway and a
/// few clients send `authorization`.
pub const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// etcd's message for a token it does not know (simple tokens expire after 5 minutes): etcd's
/// clients (Go's clientv3 by this exact text) log in again and retry on it.
pub const INVALID_TOKEN: &str = "etcdserver: invalid auth token";

/// Who a request comes from, as far as the firewall needs to know.
#[derive(Clone, PartialEq, Eq)]
pub enum Caller {
    /// One of the configured operators (e.g. root): nothing is refused by the proxy.
    Admin(String),
    /// Anyone else: the tenant rules. `None`: a token the proxy did not see issued.
    Tenant(Option<String>),
}

impl Caller {
    /// The user's name, if known; for messages that do not identify a token.
    pub fn user(&self) -> Option<&str> {
        match self {
            Caller::Admin(user) | Caller::Tenant(Some(user)) => Some(user),
            Caller::Tenant(None) => None,
        }
    }
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Admin(user) => write!(f, "admin {user}"),
            Caller::Tenant(Some(user)) => write!(f, "tenant {user}"),
            Caller::Tenant(None) => f.write_str("tenant of unknown identity"),
        }
    }
}

/// The token a request carries, if any (never logged).
pub fn token(metadata: &MetadataMap) -> Option<&str> {
    TOKEN_KEYS.iter().find_map(|key| metadata.get(*key)?.to_str().ok()).filter(|t| !t.is_empty())
}

/// The tokens the proxy saw etcd issue, and to whom; bounded in size.
pub struct Tokens {
    admins: HashSet<String>,
    issued: Mutex<Issued>,
    /// Users revoked (`etcd_broker_proxy_revocations_total`), registered by the server.
    revocations: prometheus::IntCounter,
}

/// Token -> (user, when learned, as a sequence number: the oldest are forgotten first), and
/// the users revoked since.
#[derive(Default)]
struct Issued {
    next: u64,
    users: HashMap<String, (String, u64)>,
    revoked: HashMap<String, Revocation>,
}

/// A user's revocation: tokens learnt before `seq` are refused; while `current` (its
/// binding is being deleted or has expired), no token is learnt for it.
#[derive(Debug, Clone, Copy)]
struct Revocation {
    seq: u64,
    current: bool,
}

/// A token whose user's binding was unbound or has expired, or an Authenticate of such a
/// user: refused by the proxy (etcd may not have deleted the user yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub user: String,
}

impl Revoked {
    /// UNAUTHENTICATED, naming the user (never the token); clients must not log in again
    /// with the same credentials, so the message is not etcd's "invalid auth token".
    pub fn status(&self) -> tonic::Status {
        tonic::Status::unauthenticated(format!(
            "{}: the credentials of user {} are revoked: its binding was unbound or has expired",
            crate::firewall::PREFIX,
            self.user
        ))
    }
}

impl fmt::Debug for Tokens {
    /// Counts only: the map's keys are tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens").field("admins", &self.admins).field("known", &self.len()).finish()
    }
}

impl Tokens {
    /// An empty map; `admins` are the users the firewall treats as operators.
    pub fn new(admins: impl IntoIterator<Item = String>) -> Self {
        let revocations = prometheus::IntCounter::new(
            "etcd_broker_proxy_revocations_total",
            "Users revoked because their binding was unbound or expired (each revocation once).",
        )
        .expect("valid metric");
        Tokens { admins: admins.into_iter().collect(), issued: Mutex::default(), revocations }
    }

    /// The counter of revocations, to register.
    pub fn revocations(&self) -> prometheus::IntCounter {
        self.revocations.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Issued> {
        // A panic elsewhere while holding the lock leaves a map that is still consistent.
        self.issued.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers that etcd issued `token` to `user`. When the map is full, the oldest tenth
    /// is forgotten: their holders become tenants of unknown identity until they
    /// authenticate again (clients do when etcd says their token expired).
    ///
    /// Refused while `user` is revoked: etcd may issue a token in the moment between the
    /// broker marking the binding for deletion and deleting the user.
    pub fn learn(&self, token: &str, user: &str) -> Result<(), Revoked> {
        let mut issued = self.lock();
        if issued.revoked.get(user).is_some_and(|r| r.current) {
            return Err(Revoked { user: user.to_owned() });
        }
        if issued.users.len() >= policy::MAX_TOKENS && !issued.users.contains_key(token) {
            let mut ages: Vec<u64> = issued.users.values().map(|(_, seq)| *seq).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 10];
            issued.users.retain(|_, (_, seq)| *seq > cutoff);
            // A past revocation matters only to tokens learnt before it.
            issued.revoked.retain(|_, r| r.current || r.seq > cutoff);
        }
        let seq = issued.next;
        issued.next += 1;
        issued.users.insert(token.to_owned(), (user.to_owned(), seq));
        Ok(())
    }

    /// Who a request with `metadata` comes from; `Err` for a token of a revoked user.
    pub fn caller(&self, metadata: &MetadataMap) -> Result<Caller, Revoked> {
        let user = match token(metadata) {
            None => None,
            Some(token) => {
                let issued = self.lock();
                match issued.users.get(token) {
                    None => None,
                    Some((user, seq)) => {
                        if issued.revoked.get(user).is_some_and(|r| r.seq > *seq) {
                            return Err(Revoked { user: user.clone() });
                        }
                        Some(user.clone())
                    }
                }
            }
        };
        Ok(match user {
            Some(user) if self.admins.contains(&user) => Caller::Admin(user),
            user => Caller::Tenant(user),
        })
    }

    /// Refuses every token learnt for `user` until now; while `current`, no new one is
    /// learnt either (until [`Tokens::reinstate`]). Operators cannot be revoked.
    pub fn revoke(&self, user: &str, current: bool) {
        if self.admins.contains(user) {
            return;
        }
        let mut issued = self.lock();
        if issued.revoked.len() >= policy::MAX_REVOKED && !issued.revoked.contains_key(user) {
            // Forget the oldest tenth: their users were deleted from etcd long ago, which
            // refuses their tokens and logins itself.
            let mut ages: Vec<u64> = issued.revoked.values().map(|r| r.seq).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 10];
            issued.revoked.retain(|_, r| r.seq > cutoff);
        }
        let seq = issued.next;
        issued.next += 1;
        let before = issued.revoked.insert(user.to_owned(), Revocation { seq, current });
        // A record marked `deleting` and then deleted is one revocation, not two.
        if !before.is_some_and(|r| r.current) {
            self.revocations.inc();
        }
    }

    /// Lets `user` log in again (a new binding made with the same name): the tokens learnt
    /// before its revocation stay refused.
    pub fn reinstate(&self, user: &str) {
        if let Some(revocation) = self.lock().revoked.get_mut(user) {
            revocation.current = false;
        }
    }

    /// The users of the tokens known, each once (to check them against their bindings after
    /// the proxy lost track of the broker's records for a while).
    pub fn users(&self) -> Vec<String> {
        let issued = self.lock();
        let mut users: Vec<String> = issued.users.values().map(|(user, _)| user.clone()).collect();
        users.sort_unstable();
        users.dedup();
        users.retain(|user| !self.admins.contains(user));
        users
    }

    /// How many tokens are known (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().users.len()
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(key: &'static str, token: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert(key, token.parse().unwrap());
        metadata
    }

    #[test]
    fn a_token_is_its_users_and_admins_are_named() {
        let tokens = Tokens::new(["root".to_owned()]);
        tokens.learn("t1", "alice").unwrap();
        tokens.learn("t2", "root").unwrap();
        assert_eq!(tokens.caller(&with_token("token", "t1")), Ok(Caller::Tenant(Some("alice".into()))));
        assert_eq!(tokens.caller(&with_token("authorization", "t2")), Ok(Caller::Admin("root".into())));
        assert_eq!(tokens.caller(&with_token("token", "forged")), Ok(Caller::Tenant(None)));
        assert_eq!(tokens.caller(&MetadataMap::new()), Ok(Caller::Tenant(None)));
    }

    #[test]
    fn a_revoked_users_tokens_are_refused_and_a_new_binding_logs_in_again() {
        let tokens = Tokens::new(["root".to_owned()]);
        tokens.learn("old", "alice").unwrap();
        tokens.learn("bobs", "bob").unwrap();
        tokens.revoke("alice", true);
        let refused = tokens.caller(&with_token("token", "old")).unwrap_err();
        assert_eq!(refused, Revoked { user: "alice".into() });
        assert_eq!(refused.status().code(), tonic::Code::Unauthenticated);
        assert!(!refused.status().message().contains("old"));
        assert!(tokens.caller(&with_token("token", "bobs")).is_ok());
        // While the binding is being deleted, etcd may still issue tokens: not learnt.
        assert!(tokens.learn("during", "alice").is_err());
        assert_eq!(tokens.caller(&with_token("token", "during")), Ok(Caller::Tenant(None)));
        // A new binding of the same name: new tokens work, old ones stay refused.
        tokens.reinstate("alice");
        tokens.learn("new", "alice").unwrap();
        assert_eq!(tokens.caller(&with_token("token", "new")), Ok(Caller::Tenant(Some("alice".into()))));
        assert!(tokens.caller(&with_token("token", "old")).is_err());
        // Operators are never revoked.
        tokens.learn("roots", "root").unwrap();
        tokens.revoke("root", true);
        assert!(tokens.caller(&with_token("token", "roots")).is_ok());
        assert_eq!(tokens.users(), ["alice", "bob"]);
    }

    #[test]
    fn a_full_map_forgets_the_oldest_and_never_prints_tokens() {
        let tokens = Tokens::new([]);
        for i in 0..policy::MAX_TOKENS {
            tokens.learn(&format!("token-{i}"), "u").unwrap();
        }
        tokens.learn("newest", "bob").unwrap();
        assert!(tokens.len() < policy::MAX_TOKENS, "{}", tokens.len());
        assert_eq!(tokens.caller(&with_token("token", "newest")), Ok(Caller::Tenant(Some("bob".into()))));
        assert_eq!(tokens.caller(&with_token("token", "token-0")), Ok(Caller::Tenant(None)));
        assert!(!format!("{tokens:?}").contains("newest"));
    }
}
