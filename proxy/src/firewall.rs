//! The tenant firewall: what the proxy refuses before etcd is asked. etcd's RBAC limits keys by
//! prefix, but lets any authenticated user compact the whole cluster, disarm alarms, and keep
//! alive, inspect, revoke or attach keys to any lease it can name. A shared cluster needs
//! those closed, so for tenants (every user but the configured operators):
//! - cluster-wide operations are refused (PERMISSION_DENIED, [`cluster_wide`]);
//! - a lease is usable only by the user who granted it through the proxy ([`owns_lease`]),
//!   including as the lease of a Put, in a Txn too ([`leases_of_txn`]).
//!
//! What etcd already decides (keys, ranges, watches) is left to etcd. The messages say what
//! was refused and why, and never quote a token or a value.

use tonic::Status;

use crate::caller::Caller;
use crate::leases::LeaseOwners;
use crate::pb::etcdserverpb::{request_op, TxnRequest};

/// Every refusal starts so, to tell the proxy's answers from etcd's.
pub const PREFIX: &str = "etcd-broker-proxy";

/// The metadata key of a refusal's status that names its [`Rule`]: the request metrics
/// ([`crate::measured`]) count refusals by it, and clients may read it too (it holds no more
/// than the message says).
pub const RULE_KEY: &str = "etcd-broker-proxy-refused";

/// The firewall's rules, as the refusals metric names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A cluster-wide operation refused to a tenant.
    ClusterWide,
    /// Another user's lease, or one granted elsewhere.
    LeaseOwner,
    /// Something only a user the proxy knows may do.
    UnknownIdentity,
}

impl Rule {
    const ALL: [Rule; 3] = [Rule::ClusterWide, Rule::LeaseOwner, Rule::UnknownIdentity];

    pub fn label(self) -> &'static str {
        match self {
            Rule::ClusterWide => "cluster_wide",
            Rule::LeaseOwner => "lease_owner",
            Rule::UnknownIdentity => "unknown_identity",
        }
    }

    /// The label of a [`RULE_KEY`] value; `other` for anything else (bounded cardinality).
    pub fn label_of(value: &str) -> &'static str {
        Rule::ALL.iter().map(|r| r.label()).find(|l| *l == value).unwrap_or("other")
    }

    /// `status` marked as refused by this rule.
    pub fn mark(self, mut status: Status) -> Status {
        status.metadata_mut().insert(RULE_KEY, tonic::metadata::MetadataValue::from_static(self.label()));
        status
    }
}

/// Refuses a cluster-wide RPC to tenants; `why` completes "it would ...".
pub fn cluster_wide(caller: &Caller, rpc: &str, why: &str) -> Result<(), Status> {
    match caller {
        Caller::Admin(_) => Ok(()),
        Caller::Tenant(_) => Err(Rule::ClusterWide.mark(Status::permission_denied(format!(
            "{PREFIX}: {rpc} is refused to tenants of a shared cluster: it would {why}"
        )))),
    }
}

/// An RPC the proxy refuses to tenants and does not serve at all: PERMISSION_DENIED for
/// tenants (so that they learn it is not theirs to call), UNIMPLEMENTED for operators, who
/// use etcd directly for it.
pub fn not_served(caller: &Caller, rpc: &str, why: &str) -> Status {
    match cluster_wide(caller, rpc, why) {
        Err(refused) => refused,
        Ok(()) => unimplemented(rpc),
    }
}

/// An RPC the proxy does not serve, to anybody.
pub fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{PREFIX}: {rpc} is not served by the proxy; operators call etcd directly for it"
    ))
}

/// Refuses `lease` to a tenant who did not grant it through a proxy. etcd itself checks no
/// permission on leases, so this is the only check there is.
pub async fn owns_lease(caller: &Caller, lease: i64, owners: &LeaseOwners) -> Result<(), Status> {
    let user = match caller {
        Caller::Admin(_) => return Ok(()),
        Caller::Tenant(None) => return Err(unknown_identity("use a lease")),
        Caller::Tenant(Some(user)) => user,
    };
    let owner = owners.owner(lease).await.map_err(|e| Status::unavailable(format!("{PREFIX}: {e}")))?;
    if owner.as_deref() == Some(user.as_str()) {
        Ok(())
    } else {
        Err(Rule::LeaseOwner.mark(Status::permission_denied(format!(
            "{PREFIX}: lease {lease:x} was not granted to user {user} through the proxy: a tenant may \
             use only its own leases"
        ))))
    }
}

/// The refusal of something only a known user may do.
pub fn unknown_identity(what: &str) -> Status {
    Rule::UnknownIdentity.mark(Status::permission_denied(format!(
        "{PREFIX}: the proxy does not know whose token this is (it was not issued through this proxy), \
         so it may not {what}: authenticate through the proxy"
    )))
}

/// Every lease a Txn would attach a key to, in either branch, nested Txns included.
pub fn leases_of_txn(txn: &TxnRequest) -> Vec<i64> {
    let mut leases = Vec::new();
    collect_leases(txn, &mut leases);
    leases.sort_unstable();
    leases.dedup();
    leases
}

fn collect_leases(txn: &TxnRequest, leases: &mut Vec<i64>) {
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(request_op::Request::RequestPut(put)) if put.lease != 0 => leases.push(put.lease),
            Some(request_op::Request::RequestTxn(nested)) => collect_leases(nested, leases),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{PutRequest, RequestOp};

    fn put(lease: i64) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest { lease, ..Default::default() })),
        }
    }

    #[test]
    fn a_txn_names_the_leases_of_both_branches_and_of_nested_txns() {
        let nested = TxnRequest { failure: vec![put(7), put(0)], ..Default::default() };
        let txn = TxnRequest {
            success: vec![put(3), RequestOp { request: Some(request_op::Request::RequestTxn(nested)) }],
            failure: vec![put(3), put(5)],
            ..Default::default()
        };
        assert_eq!(leases_of_txn(&txn), [3, 5, 7]);
    }

    #[test]
    fn operators_pass_and_tenants_are_told_why() {
        assert!(cluster_wide(&Caller::Admin("root".into()), "Compact", "x").is_ok());
        let refused =
            cluster_wide(&Caller::Tenant(Some("alice".into())), "Compact", "drop history").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(refused.metadata().get(RULE_KEY).unwrap(), "cluster_wide");
        assert!(refused.message().contains("Compact is refused to tenants"), "{}", refused.message());
        assert_eq!(
            not_served(&Caller::Admin("root".into()), "Defragment", "x").code(),
            tonic::Code::Unimplemented
        );
        assert_eq!(
            not_served(&Caller::Tenant(None), "Defragment", "x").code(),
            tonic::Code::PermissionDenied
        );
    }
}
