//! Who is calling. etcd's tokens are opaque to the proxy (a simple token is random; a JWT's
//! claims could be forged, and the proxy never checks signatures), so the proxy learns which
//! user a token belongs to from the Authenticate call it forwarded itself: etcd answered that
//! user's name and password with that token. A token the proxy never saw (issued by etcd
//! directly, by another proxy, or before a restart) is a tenant of unknown identity: it gets
//! the tenant rules and owns no lease.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use tonic::metadata::MetadataMap;

use crate::policy;

/// The metadata keys etcd reads a token from: clients send `token`; etcd's gRPC gateway and a
/// few clients send `authorization`.
pub const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

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
}

/// Token -> (user, when learned, as a sequence number: the oldest are forgotten first).
#[derive(Default)]
struct Issued {
    next: u64,
    users: HashMap<String, (String, u64)>,
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
        Tokens { admins: admins.into_iter().collect(), issued: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Issued> {
        // A panic elsewhere while holding the lock leaves a map that is still consistent.
        self.issued.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers that etcd issued `token` to `user`. When the map is full, the oldest tenth
    /// is forgotten: their holders become tenants of unknown identity until they
    /// authenticate again (clients do when etcd says their token expired).
    pub fn learn(&self, token: &str, user: &str) {
        let mut issued = self.lock();
        if issued.users.len() >= policy::MAX_TOKENS && !issued.users.contains_key(token) {
            let mut ages: Vec<u64> = issued.users.values().map(|(_, seq)| *seq).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 10];
            issued.users.retain(|_, (_, seq)| *seq > cutoff);
        }
        let seq = issued.next;
        issued.next += 1;
        issued.users.insert(token.to_owned(), (user.to_owned(), seq));
    }

    /// Who a request with `metadata` comes from.
    pub fn caller(&self, metadata: &MetadataMap) -> Caller {
        let user =
            token(metadata).and_then(|token| self.lock().users.get(token).map(|(user, _)| user.clone()));
        match user {
            Some(user) if self.admins.contains(&user) => Caller::Admin(user),
            user => Caller::Tenant(user),
        }
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
        tokens.learn("t1", "alice");
        tokens.learn("t2", "root");
        assert_eq!(tokens.caller(&with_token("token", "t1")), Caller::Tenant(Some("alice".into())));
        assert_eq!(tokens.caller(&with_token("authorization", "t2")), Caller::Admin("root".into()));
        assert_eq!(tokens.caller(&with_token("token", "forged")), Caller::Tenant(None));
        assert_eq!(tokens.caller(&MetadataMap::new()), Caller::Tenant(None));
    }

    #[test]
    fn a_full_map_forgets_the_oldest_and_never_prints_tokens() {
        let tokens = Tokens::new([]);
        for i in 0..policy::MAX_TOKENS {
            tokens.learn(&format!("token-{i}"), "u");
        }
        tokens.learn("newest", "bob");
        assert!(tokens.len() < policy::MAX_TOKENS, "{}", tokens.len());
        assert_eq!(tokens.caller(&with_token("token", "newest")), Caller::Tenant(Some("bob".into())));
        assert_eq!(tokens.caller(&with_token("token", "token-0")), Caller::Tenant(None));
        assert!(!format!("{tokens:?}").contains("newest"));
    }
}
