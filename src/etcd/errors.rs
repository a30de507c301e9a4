//! What etcd's errors mean: the message tables and the [`StoreError`] each error becomes.
//!
//! etcd reports most refusals as a gRPC status whose message is the only thing that tells
//! them apart (a missing user and a missing role are both `FailedPrecondition`), and 3.4 and
//! 3.5 word some of them differently. Every message the broker matches is in this file, and
//! the tests provoke each one on a real etcd of both versions.

use crate::store::StoreError;

/// etcd's answers to a request checked against an auth revision older than the newest auth
/// change: the token's revision (JWTs) or the request's (simple tokens) is behind.
pub(super) const OLD_AUTH_REVISION: [&str; 2] =
    ["revision in header is old", "revision of auth store is old"];
/// A user or role that was to be added exists.
const ALREADY_EXISTS: &str = "already exists";
/// A user, role or lease ("requested lease not found") that was to be changed or deleted does
/// not exist.
const NOT_FOUND: &str = "not found";
/// A role to be taken from a user, or a permission from a role, was never granted.
const NOT_GRANTED: &str = "not granted";
/// A login with a wrong name or password.
const AUTHENTICATION_FAILED: &str = "authentication failed";
/// A write refused because etcd's backend reached its quota (`--quota-backend-bytes`): etcd
/// raised its NOSPACE alarm and takes only reads and deletes until an operator frees space and
/// disarms the alarm.
const NO_SPACE: &str = "database space exceeded";
/// A login on an etcd whose auth is off: the broker's isolation would not hold.
const AUTH_NOT_ENABLED: &str = "authentication is not enabled";
/// etcd's refusals of a whole Txn, checked before it applies anything: too many operations
/// (`--max-txn-ops`), too large (`--max-request-bytes`, etcd's own check and gRPC's receive
/// limit), a key written twice.
const REFUSED_BEFORE_APPLYING: [&str; 4] = [
    "too many operations in txn request",
    "request is too large",
    "larger than max",
    "duplicate key given in txn request",
];

/// Whether etcd's message for `e` contains `what`.
fn says(e: &etcd_client::Error, what: &str) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains(what))
}

/// Whether etcd refused a request because auth changed while it was in flight.
pub(crate) fn is_old_auth_revision(e: &etcd_client::Error) -> bool {
    OLD_AUTH_REVISION.iter().any(|m| says(e, m))
}

/// Whether etcd said the user or role exists already.
pub(crate) fn already_exists(e: &etcd_client::Error) -> bool {
    says(e, ALREADY_EXISTS)
}

/// Whether etcd said the user, role or lease does not exist.
pub(crate) fn not_found(e: &etcd_client::Error) -> bool {
    says(e, NOT_FOUND)
}

/// Whether etcd said the role or permission to revoke is not granted (or its user or role
/// does not exist): nothing to revoke.
pub(crate) fn nothing_to_revoke(e: &etcd_client::Error) -> bool {
    says(e, NOT_GRANTED) || not_found(e)
}

/// Whether etcd refused a Txn without applying any of it (see [`REFUSED_BEFORE_APPLYING`]).
pub(crate) fn refused_before_applying(e: &etcd_client::Error) -> bool {
    REFUSED_BEFORE_APPLYING.iter().any(|m| says(e, m))
}

/// Whether the request failed before reaching any etcd (connection refused or not established).
pub(crate) fn never_reached(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable && s.message().contains("connect")
        }
        _ => false,
    }
}

/// Turns an etcd-client error into a [`StoreError`]; etcd's messages carry no secrets.
pub(crate) fn classify(e: etcd_client::Error) -> StoreError {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message().to_owned();
            match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                    StoreError::Unavailable(message)
                }
                Code::Unknown if lost_connection(&status) => StoreError::Unavailable(message),
                Code::Unauthenticated | Code::PermissionDenied => StoreError::Unauthorized(message),
                _ if message.contains(AUTHENTICATION_FAILED) => StoreError::Unauthorized(message),
                _ if OLD_AUTH_REVISION.iter().any(|m| message.contains(m)) => StoreError::Unavailable(
                    format!("{message} (auth kept changing under concurrent binds; retry)"),
                ),
                _ if message.contains(NO_SPACE) => StoreError::Unavailable(format!(
                    "{message}: etcd's NOSPACE alarm is raised and it refuses writes until an operator \
                     frees space (compact, defragment) and disarms the alarm (docs/reliability.md)"
                )),
                _ if message.contains(AUTH_NOT_ENABLED) => StoreError::Unauthorized(format!(
                    "{message}; the broker needs etcd with auth enabled and a user with the root role"
                )),
                _ => StoreError::Failed(message),
            }
        }
        etcd_client::Error::TransportError(e) => StoreError::Unavailable(e.to_string()),
        etcd_client::Error::IoError(e) => StoreError::Unavailable(e.to_string()),
        other => StoreError::Failed(other.to_string()),
    }
}

/// Whether `status` is tonic's wrapping of a failed connection (its message is just "transport
/// error"): the member went away with the request in flight, as when it is killed. etcd may
/// have applied the request or not, so it is not sent again; the caller answers 503, repeat
/// the request (chaos found these answered 500 when a cluster's leader was killed).
fn lost_connection(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() || e.is::<hyper::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// A user or role vanished between two steps: someone else is deleting it.
pub(crate) fn raced(e: etcd_client::Error) -> StoreError {
    if not_found(&e) {
        StoreError::Conflict(e.to_string())
    } else {
        classify(e)
    }
}

/// What a 503 says when etcd let a deadline pass.
pub(crate) fn no_answer_within(timeout: std::time::Duration) -> String {
    format!("etcd did not answer within {} s", timeout.as_secs())
}

#[cfg(test)]
mod tests {
    //! Each message of the tables above, provoked on a real etcd 3.4 and 3.5 (auth on).

    use etcd_client::{Client, ConnectOptions, Permission, Txn, TxnOp};
    use local_etcd::{EtcdVersion, LocalEtcd, Options};

    use super::*;

    async fn start(version: EtcdVersion, signed_tokens: bool) -> LocalEtcd {
        let options = Options {
            version,
            bcrypt_cost: Some(4),
            signed_tokens,
            max_txn_ops: Some(4),
            ..Options::default()
        };
        LocalEtcd::start(options).await.unwrap_or_else(|e| panic!("etcd {version:?} starts: {e}"))
    }

    async fn login(etcd: &LocalEtcd, user: &str, password: &str) -> Result<Client, etcd_client::Error> {
        let options = ConnectOptions::new().with_user(user, password);
        Client::connect([etcd.endpoint()], Some(options)).await
    }

    /// The error of `result`, which must have failed.
    fn error<T>(result: Result<T, etcd_client::Error>, what: &str) -> etcd_client::Error {
        match result {
            Ok(_) => panic!("{what}: etcd accepted it"),
            Err(e) => e,
        }
    }

    /// The refusals of users, roles, logins and Txns, as etcd `version` words them.
    async fn refusals_are_recognised(version: EtcdVersion) {
        let etcd = start(version, false).await;
        let mut root = etcd.root_client().await.unwrap();
        root.role_add("r").await.unwrap();
        root.user_add("u", "pw", None).await.unwrap();

        let e = error(root.role_add("r").await, "a role added twice");
        assert!(already_exists(&e), "{version:?}: {e}");
        let e = error(root.user_add("u", "pw", None).await, "a user added twice");
        assert!(already_exists(&e), "{version:?}: {e}");
        let e = error(root.user_delete("nobody").await, "a missing user deleted");
        assert!(not_found(&e) && matches!(raced(e), StoreError::Conflict(_)), "{version:?}");
        let e = error(root.role_delete("none").await, "a missing role deleted");
        assert!(not_found(&e), "{version:?}: {e}");
        let e = error(root.user_grant_role("u", "none").await, "a missing role granted");
        assert!(not_found(&e), "{version:?}: {e}");
        let permission = Permission::read_write("/x/").with_prefix();
        let e = error(root.role_grant_permission("none", permission).await, "a missing role's grant");
        assert!(not_found(&e), "{version:?}: {e}");

        let e = error(root.user_revoke_role("u", "r").await, "a role revoked that was never granted");
        assert!(nothing_to_revoke(&e), "{version:?}: {e}");
        let e = error(root.user_revoke_role("nobody", "r").await, "a role revoked from a missing user");
        assert!(nothing_to_revoke(&e), "{version:?}: {e}");
        let e = error(root.role_revoke_permission("r", "/x/", None).await, "a permission never granted");
        assert!(nothing_to_revoke(&e), "{version:?}: {e}");
        let e = error(root.role_revoke_permission("none", "/x/", None).await, "a missing role's permission");
        assert!(nothing_to_revoke(&e), "{version:?}: {e}");
        let e = error(root.lease_revoke(0x7eed).await, "a lease that does not exist revoked");
        assert!(not_found(&e), "{version:?}: {e}");

        let e = error(login(&etcd, "u", "wrong").await, "a wrong password");
        assert!(matches!(classify(e), StoreError::Unauthorized(_)), "{version:?}");

        let too_many: Vec<TxnOp> = (0..5).map(|i| TxnOp::put(format!("/k{i}"), "v", None)).collect();
        let e = error(root.txn(Txn::new().and_then(too_many)).await, "more ops than --max-txn-ops");
        assert!(refused_before_applying(&e), "{version:?}: {e}");
        let twice = vec![TxnOp::put("/k", "1", None), TxnOp::put("/k", "2", None)];
        let e = error(root.txn(Txn::new().and_then(twice)).await, "a key written twice");
        assert!(refused_before_applying(&e), "{version:?}: {e}");
        // etcd's own limit (--max-request-bytes, 1.5 MiB), then gRPC's, which is higher.
        for size in [1_600_000, 3_000_000] {
            let e = error(root.put("/big", vec![b'x'; size], None).await, "a value over the limit");
            assert!(refused_before_applying(&e), "{version:?}, {size} bytes: {e}");
        }
        assert_eq!(root.get("/k", None).await.unwrap().count(), 0, "{version:?}: a refused Txn applied");

        root.auth_disable().await.unwrap();
        let e =
            error(root.auth_client().authenticate("root".into(), "x".into()).await, "a login without auth");
        match classify(e) {
            StoreError::Unauthorized(message) => assert!(message.contains("auth enabled"), "{message}"),
            other => panic!("{version:?}: {other:?}"),
        }
        etcd.stop().await;
    }

    /// A request with a JWT issued before an auth change.
    async fn an_old_token_is_recognised(version: EtcdVersion) {
        let etcd = start(version, true).await;
        let mut root = etcd.root_client().await.unwrap();
        let mut stale = login(&etcd, etcd.root_username(), etcd.root_password()).await.unwrap();
        root.user_add("someone", "pw", None).await.unwrap();
        let e = error(stale.put("/k", "v", None).await, "a request with a token from before a user change");
        assert!(is_old_auth_revision(&e), "{version:?}: {e}");
        assert!(matches!(classify(e), StoreError::Unavailable(_)), "{version:?}");
        etcd.stop().await;
    }

    #[tokio::test]
    async fn etcd_3_5_refusals_are_recognised() {
        refusals_are_recognised(EtcdVersion::V3_5).await;
        an_old_token_is_recognised(EtcdVersion::V3_5).await;
    }

    #[tokio::test]
    async fn etcd_3_4_refusals_are_recognised() {
        refusals_are_recognised(EtcdVersion::V3_4).await;
        an_old_token_is_recognised(EtcdVersion::V3_4).await;
    }

    /// An endpoint that takes the connection and drops it once a request arrives, as a
    /// member killed with the request in flight does: the request fails as unavailable (the
    /// broker's 503, repeat the request), not as a failure of etcd's (500).
    #[tokio::test]
    async fn a_connection_lost_with_the_request_in_flight_is_unavailable() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let dropper = tokio::spawn(async move {
            loop {
                let (mut connection, _) = listener.accept().await.unwrap();
                let mut preface = [0u8; 64];
                let _ = connection.read(&mut preface).await;
            }
        });
        let mut client = Client::connect([endpoint], None).await.unwrap();
        let e = error(client.get("/k", None).await, "a get whose connection is dropped");
        dropper.abort();
        // tonic's answer: code Unknown, message "transport error", the cause as its source.
        assert!(matches!(&e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::Unknown), "{e:?}");
        assert!(matches!(classify(e), StoreError::Unavailable(_)));
    }

    #[test]
    fn an_unreachable_endpoint_is_never_reached() {
        let refused = etcd_client::Error::GRpcStatus(tonic::Status::unavailable("tcp connect error"));
        assert!(never_reached(&refused));
        let busy = etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: leader changed"));
        assert!(!never_reached(&busy));
    }
}
