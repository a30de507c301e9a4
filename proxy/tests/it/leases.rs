//! Lease ownership lives in etcd, not in a proxy's memory: it survives a restart of the proxy
//! and holds across several proxies in front of one cluster; only the proxy's own user can
//! read the records.

use etcd_broker_proxy::pb::etcdserverpb::{
    LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, RangeRequest,
};
use tonic::Code;

use crate::common::*;

async fn time_to_live(conn: &Conn, id: i64) -> Result<i64, tonic::Status> {
    let answer =
        conn.lease().lease_time_to_live(conn.req(LeaseTimeToLiveRequest { id, keys: false })).await?;
    Ok(answer.into_inner().ttl)
}

#[tokio::test]
async fn owners_survive_a_restart_and_hold_across_proxies() {
    let etcd = start_etcd().await;
    let mut first = ProxyProcess::start(&etcd).await;
    let second = ProxyProcess::start(&etcd).await;
    let lease = grant(&Conn::login(&first.url, "alice").await).await;

    first.restart().await;
    // Tokens are forgotten with the process: alice logs in again, her lease is still hers.
    let alice = Conn::login(&first.url, "alice").await;
    assert!(time_to_live(&alice, lease).await.unwrap() > 0);
    let bob = Conn::login(&first.url, "bob").await;
    refused(time_to_live(&bob, lease).await, Code::PermissionDenied);

    // The other proxy reads the same records.
    let alice_there = Conn::login(&second.url, "alice").await;
    assert!(time_to_live(&alice_there, lease).await.unwrap() > 0);
    let bob_there = Conn::login(&second.url, "bob").await;
    refused(time_to_live(&bob_there, lease).await, Code::PermissionDenied);
    let listed = bob_there.lease().lease_leases(bob_there.req(LeaseLeasesRequest {})).await.unwrap();
    assert!(listed.into_inner().leases.is_empty());

    // Revoked through one proxy, the record is gone for all.
    alice_there.lease().lease_revoke(alice_there.req(LeaseRevokeRequest { id: lease })).await.unwrap();
    let root = etcd.root_client().await.unwrap();
    let records = root
        .kv_client()
        .get("/etcd-broker/proxy/leases/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(records.count(), 0, "the record of a revoked lease is deleted");
    refused(time_to_live(&alice, lease).await, Code::PermissionDenied);
}

#[tokio::test]
async fn records_are_named_by_the_lease_and_hidden_from_tenants() {
    let etcd = start_etcd().await;
    let proxy = ProxyProcess::start(&etcd).await;
    let alice = Conn::login(&proxy.url, "alice").await;
    let lease = grant(&alice).await;
    let mut root = etcd.root_client().await.unwrap();
    let key = format!("/etcd-broker/proxy/leases/{:016x}", lease as u64);
    let record = root.get(key.as_str(), None).await.unwrap();
    assert_eq!(record.kvs()[0].value_str().unwrap(), r#"{"owner":"alice"}"#);
    let read =
        alice.kv().range(alice.req(RangeRequest { key: key.into_bytes(), ..Default::default() })).await;
    refused(read, Code::PermissionDenied);
}

/// The records of leases that end without the proxy seeing it (expired, revoked directly on
/// etcd) are swept; a live lease's record stays.
#[tokio::test]
async fn records_of_leases_that_ended_unseen_are_swept() {
    use etcd_broker_proxy::pb::etcdserverpb::LeaseGrantRequest;
    let etcd = start_etcd().await;
    let proxy = ProxyProcess::start_with(&etcd, &["--lease-sweep-seconds", "1"]).await;
    let alice = Conn::login(&proxy.url, "alice").await;
    let short = alice.lease().lease_grant(alice.req(LeaseGrantRequest { ttl: 2, id: 0 })).await.unwrap();
    let short = short.into_inner().id;
    let (revoked, live) = (grant(&alice).await, grant(&alice).await);
    let record = |lease: i64| format!("/etcd-broker/proxy/leases/{:016x}", lease as u64);
    let mut root = etcd.root_client().await.unwrap();
    for lease in [short, revoked, live] {
        assert_eq!(root.get(record(lease), None).await.unwrap().count(), 1, "recorded");
    }
    root.lease_revoke(revoked).await.unwrap();
    let since = std::time::Instant::now();
    let mut left = vec![short, revoked];
    while !left.is_empty() {
        assert!(since.elapsed() < std::time::Duration::from_secs(15), "records left: {left:x?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut still = Vec::new();
        for lease in left {
            if root.get(record(lease), None).await.unwrap().count() == 1 {
                still.push(lease);
            }
        }
        left = still;
    }
    eprintln!("records swept after {:?}", since.elapsed());
    assert_eq!(root.get(record(live), None).await.unwrap().count(), 1, "a live lease keeps its record");
    assert!(time_to_live(&alice, live).await.unwrap() > 0);
}
