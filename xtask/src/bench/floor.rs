//! The etcd floor: what an operation costs when etcd does exactly the work the broker asks of it,
//! with no broker in between.
//!
//! Which calls an operation makes is not written down here (it would drift from the broker):
//! the bench reads the broker's own counter `etcd_broker_etcd_request_duration_seconds_count`
//! per `call` kind from /metrics before and after a phase, divides by the operations done, and
//! the floor replays that many calls of each kind, with the broker's credentials (etcd's root
//! user), on one shared client, at the same concurrency. Each store call kind maps to the etcd
//! requests `src/etcd/` makes for it:
//!
//! | kind | etcd requests |
//! | --- | --- |
//! | get, list, count, next | one Range (key, prefix, prefix count, first key after another) |
//! | get_local | one serializable Range (a bind's first look: one Txn of such Ranges) |
//! | txn | one Txn: compare a mod revision, put the record and an index key |
//! | delete_prefix | one DeleteRange over a prefix |
//! | ensure_role | RoleAdd + RoleGrantPermission (read-write on a prefix) |
//! | ensure_user | UserAdd (etcd hashes the password: bcrypt) + UserGrantRole |
//! | ensure_certificate_user | UserAdd without a password (no bcrypt) + UserGrantRole |
//! | ensure_binding_user | ensure_role's requests, then ensure_user's |
//! | ensure_binding_certificate_user | ensure_role's requests, then ensure_certificate_user's |
//! | delete_user, delete_role | UserDelete, RoleDelete |
//!
//! The floor sends each call as its own request. The broker does not always: gets and txns that
//! arrive while another is in flight on its connection share one batched request (a Txn of
//! Ranges, a Txn of nested Txns), and a bind sends its role's and user's adds together, then
//! their grants together. Those savings are the broker's, so the floor does not copy them.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use etcd_broker::etcd::resend_on_auth_change;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, Permission, Txn, TxnOp, UserAddOptions,
};

/// Store call kinds in the order the floor replays them (reads, writes, auth, deletes).
pub const KINDS: &[&str] = &[
    "get",
    "get_local",
    "list",
    "next",
    "count",
    "txn",
    "ensure_role",
    "ensure_user",
    "ensure_certificate_user",
    "ensure_binding_user",
    "ensure_binding_certificate_user",
    "delete_prefix",
    "delete_user",
    "delete_role",
];

/// Calls per operation by kind, from two scrapes of the broker's /metrics.
pub type CallMix = BTreeMap<String, u64>;

/// Sum of `etcd_broker_etcd_request_duration_seconds_count` per `call` label (all clusters).
pub fn parse_call_counts(metrics: &str) -> BTreeMap<String, f64> {
    let mut counts = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("etcd_broker_etcd_request_duration_seconds_count{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else { continue };
        let Some(call) =
            labels.split(',').find_map(|l| l.strip_prefix("call=\"")).and_then(|c| c.strip_suffix('"'))
        else {
            continue;
        };
        if let Ok(value) = value.trim().parse::<f64>() {
            *counts.entry(call.to_owned()).or_insert(0.0) += value;
        }
    }
    counts
}

/// The whole-number mix of calls per operation between two scrapes.
pub fn call_mix(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, operations: u64) -> CallMix {
    let mut mix = CallMix::new();
    if operations == 0 {
        return mix;
    }
    for (call, total) in after {
        let delta = total - before.get(call).copied().unwrap_or(0.0);
        let per_op = (delta / operations as f64).round() as u64;
        if per_op > 0 {
            mix.insert(call.clone(), per_op);
        }
    }
    mix
}

/// `get 2, commit 1` for tables.
pub fn describe(mix: &CallMix) -> String {
    if mix.is_empty() {
        return "-".into();
    }
    KINDS
        .iter()
        .filter_map(|kind| mix.get(*kind).map(|n| format!("{kind} {n}")))
        .chain(mix.iter().filter(|(k, _)| !KINDS.contains(&k.as_str())).map(|(k, n)| format!("{k} {n}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A record-sized value, so the floor's writes weigh what the broker's do.
const RECORD: &str = r#"{"state":"ready","service_id":"6e2ab6a8-3b0c-4c52-9a6c-5f3f2c1d9e01","plan_id":"0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b","cluster":"main","prefix":"/service_instances/bench/","organization_guid":"org","space_guid":"space","created_at":"2026-01-01T00:00:00Z"}"#;

/// The floor's objects for item `i`: its own keys, user and role, apart from the broker's.
pub struct FloorObjects {
    pub prefix: String,
    pub key: String,
    pub index_key: String,
    pub user: String,
    pub role: String,
}

impl FloorObjects {
    pub fn new(run: &str, i: u64) -> Self {
        FloorObjects {
            prefix: format!("/etcd-broker-bench-floor/{run}/{i}/"),
            key: format!("/etcd-broker-bench-floor/{run}/records/{i}"),
            index_key: format!("/etcd-broker-bench-floor/{run}/index/{i}"),
            user: format!("bench-floor.{run}.{i}"),
            role: format!("bench-floor.{run}.{i}"),
        }
    }
}

/// One operation's worth of etcd calls for item `i`.
pub async fn replay(client: &Client, mix: &CallMix, run: &str, i: u64) -> Result<()> {
    let o = FloorObjects::new(run, i);
    for kind in KINDS {
        for _ in 0..mix.get(*kind).copied().unwrap_or(0) {
            call(client, kind, &o).await.with_context(|| format!("floor {kind}"))?;
        }
    }
    Ok(())
}

/// The etcd requests of one store call of `kind` (see the table above).
async fn call(client: &Client, kind: &str, o: &FloorObjects) -> Result<(), etcd_client::Error> {
    let prefix = || Some(GetOptions::new().with_prefix());
    match kind {
        "get" => request(client, |mut c| async move { c.get(o.key.as_str(), None).await }).await,
        "get_local" => {
            let serializable = || Some(GetOptions::new().with_serializable());
            request(client, |mut c| async move { c.get(o.key.as_str(), serializable()).await }).await
        }
        "list" => request(client, |mut c| async move { c.get(o.prefix.as_str(), prefix()).await }).await,
        "next" => {
            let first = || Some(GetOptions::new().with_prefix().with_limit(1));
            request(client, |mut c| async move { c.get(o.prefix.as_str(), first()).await }).await
        }
        "count" => {
            let count = || Some(GetOptions::new().with_prefix().with_count_only());
            request(client, |mut c| async move { c.get(o.prefix.as_str(), count()).await }).await
        }
        "txn" => {
            request(client, |mut c| async move {
                let puts =
                    [TxnOp::put(o.key.as_str(), RECORD, None), TxnOp::put(o.index_key.as_str(), "", None)];
                let txn = Txn::new()
                    .when([Compare::mod_revision(o.key.as_str(), CompareOp::Equal, 0)])
                    .and_then(puts.clone())
                    .or_else(puts);
                c.txn(txn).await
            })
            .await
        }
        "ensure_role" => ensure_role(client, o).await,
        "ensure_user" => ensure_user(client, o, false).await,
        "ensure_certificate_user" => ensure_user(client, o, true).await,
        "ensure_binding_user" | "ensure_binding_certificate_user" => {
            ensure_role(client, o).await?;
            ensure_user(client, o, kind == "ensure_binding_certificate_user").await
        }
        "delete_prefix" => {
            let options = || Some(DeleteOptions::new().with_prefix());
            request(client, |mut c| async move { c.delete(o.prefix.as_str(), options()).await }).await
        }
        "delete_user" => request(client, |mut c| async move { c.user_delete(o.user.as_str()).await }).await,
        "delete_role" => request(client, |mut c| async move { c.role_delete(o.role.as_str()).await }).await,
        _ => Ok(()),
    }
}

/// RoleAdd + RoleGrantPermission (read-write on the prefix).
async fn ensure_role(client: &Client, o: &FloorObjects) -> Result<(), etcd_client::Error> {
    request(client, |mut c| async move { c.role_add(o.role.as_str()).await }).await?;
    request(client, |mut c| async move {
        let permission = Permission::read_write(o.prefix.as_str()).with_prefix();
        c.role_grant_permission(o.role.as_str(), permission).await
    })
    .await
}

/// UserAdd (with a password, which etcd hashes, or without one) + UserGrantRole.
async fn ensure_user(client: &Client, o: &FloorObjects, no_password: bool) -> Result<(), etcd_client::Error> {
    let options = || no_password.then(|| UserAddOptions::new().with_no_pwd());
    request(client, |mut c| async move { c.user_add(o.user.as_str(), FLOOR_PASSWORD, options()).await })
        .await?;
    request(client, |mut c| async move { c.user_grant_role(o.user.as_str(), o.role.as_str()).await }).await
}

/// The password of the floor's users: as long as the broker's.
const FLOOR_PASSWORD: &str = "0123456789abcdef0123456789abcdef01234567";

/// One etcd request, handled as the broker handles it: sent again when auth changed while it
/// was in flight; "already exists" / "not found" cost their round trip but are not failures
/// (the broker tolerates them too).
async fn request<T, F, Fut>(client: &Client, op: F) -> Result<(), etcd_client::Error>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    match resend(client, op).await {
        Err(e) if e.to_string().contains("already exists") || e.to_string().contains("not found") => Ok(()),
        result => result.map(drop),
    }
}

/// Sends a request again while etcd refuses it because auth changed meanwhile (routine while a
/// broker binds and unbinds; the broker does the same).
pub async fn resend<T, F, Fut>(client: &Client, op: F) -> Result<T, etcd_client::Error>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    resend_on_auth_change(|| op(client.clone())).await
}

/// Removes the keys and users the floor of `run` made for items `0..count`, and their roles
/// unless `keep_roles`. Users and roles are deleted by name: etcd lists them only all at once,
/// and with a large preload the list exceeds gRPC's 4 MB answer. Roles can be kept because
/// each RoleDelete costs O(users) in etcd (0.6 s at 100,000): with a kept preload, deleting a
/// thousand of them would take ten minutes.
pub async fn clean_up(client: &Client, run: &str, count: u64, keep_roles: bool) -> Result<()> {
    let prefix = format!("/etcd-broker-bench-floor/{run}/");
    resend(client, |mut c| {
        let prefix = prefix.clone();
        async move { c.delete(prefix, Some(DeleteOptions::new().with_prefix())).await }
    })
    .await?;
    for i in 0..count {
        let o = FloorObjects::new(run, i);
        let (user, role) = (o.user.as_str(), o.role.as_str());
        request(client, |mut c| async move { c.user_delete(user).await }).await?;
        if !keep_roles {
            request(client, |mut c| async move { c.role_delete(role).await }).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_counts_come_from_the_broker_metrics() {
        let before = parse_call_counts(
            "# HELP x\netcd_broker_etcd_request_duration_seconds_count{call=\"get\",cluster=\"main\"} 10\n\
             etcd_broker_etcd_request_duration_seconds_count{call=\"txn\",cluster=\"main\"} 4\n\
             etcd_broker_etcd_request_duration_seconds_sum{call=\"get\",cluster=\"main\"} 0.5\n",
        );
        let after = parse_call_counts(
            "etcd_broker_etcd_request_duration_seconds_count{call=\"get\",cluster=\"main\"} 30\n\
             etcd_broker_etcd_request_duration_seconds_count{call=\"get\",cluster=\"far\"} 10\n\
             etcd_broker_etcd_request_duration_seconds_count{call=\"txn\",cluster=\"main\"} 24\n\
             etcd_broker_etcd_request_duration_seconds_count{call=\"ensure_user\",cluster=\"main\"} 1\n",
        );
        let mix = call_mix(&before, &after, 10);
        assert_eq!(mix, CallMix::from([("get".into(), 3), ("txn".into(), 2)]));
        assert_eq!(describe(&mix), "get 3, txn 2");
        assert!(call_mix(&before, &after, 0).is_empty());
    }

    /// A bind's first look (`get_local`) was left out of the floor, which then replayed one
    /// request fewer than the bind makes.
    #[test]
    fn a_binds_first_look_is_replayed_in_its_place() {
        let mix =
            CallMix::from([("txn".into(), 2), ("get_local".into(), 1), ("ensure_binding_user".into(), 1)]);
        assert_eq!(describe(&mix), "get_local 1, txn 2, ensure_binding_user 1");
    }
}
