//! Each attack of a hostile tenant (issue 20), with nothing but its own credentials: refused
//! through the proxy, and, in the same test, still working directly against etcd: what etcd's
//! RBAC alone lets every tenant do to the others, and why tenants of a shared cluster must only
//! reach the proxy.

use std::time::Duration;

use futures_util::StreamExt;
use tonic::Code;

use etcd_broker_proxy::pb::etcdserverpb::{
    alarm_request::AlarmAction, request_op, AlarmMember, AlarmRequest, AlarmType, CompactionRequest,
    DefragmentRequest, HashKvRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, MemberAddRequest, MemberListRequest,
    PutRequest, RangeRequest, RequestOp, SnapshotRequest, StatusRequest, TxnRequest,
};

use crate::common::*;

/// etcd, a proxy in front of it, and alice's and bob's connections to each.
struct Scene {
    etcd: local_etcd::LocalEtcd,
    proxy: ProxyProcess,
}

impl Scene {
    async fn new() -> Scene {
        let etcd = start_etcd().await;
        let proxy = ProxyProcess::start(&etcd).await;
        Scene { etcd, proxy }
    }

    async fn via_proxy(&self, user: &str) -> Conn {
        Conn::login(&self.proxy.url, user).await
    }

    async fn direct(&self, user: &str) -> Conn {
        Conn::login(&self.etcd.endpoint(), user).await
    }

    async fn root_via_proxy(&self) -> Conn {
        Conn::login_as(&self.proxy.url, "root", self.etcd.root_password()).await
    }

    async fn root_direct(&self) -> Conn {
        Conn::login_as(&self.etcd.endpoint(), "root", self.etcd.root_password()).await
    }
}

async fn put(conn: &Conn, key: &str, lease: i64) -> Result<(), tonic::Status> {
    let request = PutRequest { key: key.into(), value: b"v".to_vec(), lease, ..Default::default() };
    conn.kv().put(conn.req(request)).await.map(|_| ())
}

async fn leases(conn: &Conn) -> Vec<i64> {
    let answer = conn.lease().lease_leases(conn.req(LeaseLeasesRequest {})).await.unwrap();
    answer.into_inner().leases.iter().map(|l| l.id).collect()
}

/// One keep-alive on a stream kept open, and its answer.
async fn keep_alive(conn: &Conn, id: i64) -> Result<LeaseKeepAliveResponse, tonic::Status> {
    let requests =
        futures_util::stream::iter([LeaseKeepAliveRequest { id }]).chain(futures_util::stream::pending());
    let mut responses = conn.lease().lease_keep_alive(conn.req(requests)).await?.into_inner();
    match tokio::time::timeout(Duration::from_secs(10), responses.message()).await.expect("an answer in time")
    {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err(tonic::Status::unknown("the stream ended without an answer")),
        Err(status) => Err(status),
    }
}

#[tokio::test]
async fn a_tenant_may_not_compact_the_cluster_through_the_proxy_but_can_directly() {
    let scene = Scene::new().await;
    let bob = scene.via_proxy("bob").await;
    put(&bob, "/tenants/bob/k", 0).await.unwrap();
    put(&bob, "/tenants/bob/k", 0).await.unwrap();
    let revision = revision(&bob, "/tenants/bob/k").await;

    let message = refused(
        bob.kv().compact(bob.req(CompactionRequest { revision, physical: false })).await,
        Code::PermissionDenied,
    );
    assert!(message.contains("Compact is refused to tenants"), "{message}");

    // Directly, etcd lets any tenant discard every tenant's history.
    let bob_direct = scene.direct("bob").await;
    bob_direct.kv().compact(bob_direct.req(CompactionRequest { revision, physical: false })).await.unwrap();
    let old = RangeRequest { key: b"/tenants/bob/k".to_vec(), revision: revision - 1, ..Default::default() };
    let message = refused(bob_direct.kv().range(bob_direct.req(old)).await, Code::OutOfRange);
    assert!(message.contains("compacted"), "{message}");
}

#[tokio::test]
async fn a_tenant_may_not_disarm_an_alarm_through_the_proxy_but_can_directly() {
    let scene = Scene::new().await;
    let root = scene.root_direct().await;
    let member = root
        .maintenance()
        .status(root.req(StatusRequest {}))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .member_id;
    let alarm = |action: AlarmAction, alarm: AlarmType| AlarmRequest {
        action: action as i32,
        member_id: member,
        alarm: alarm as i32,
    };
    let active = |conn: Conn| async move {
        let answer =
            conn.maintenance().alarm(conn.req(alarm(AlarmAction::Get, AlarmType::None))).await.unwrap();
        answer.into_inner().alarms
    };
    root.maintenance().alarm(root.req(alarm(AlarmAction::Activate, AlarmType::Nospace))).await.unwrap();
    let nospace = vec![AlarmMember { member_id: member, alarm: AlarmType::Nospace as i32 }];
    assert_eq!(active(root.clone()).await, nospace);

    let bob = scene.via_proxy("bob").await;
    let disarm = alarm(AlarmAction::Deactivate, AlarmType::Nospace);
    let message = refused(bob.maintenance().alarm(bob.req(disarm)).await, Code::PermissionDenied);
    assert!(message.contains("Alarm is refused to tenants"), "{message}");
    assert_eq!(active(root.clone()).await, nospace, "the alarm is still raised");

    // Directly, a tenant clears the alarm that protects the cluster.
    let bob_direct = scene.direct("bob").await;
    bob_direct.maintenance().alarm(bob_direct.req(disarm)).await.unwrap();
    assert_eq!(active(root.clone()).await, vec![], "a tenant disarmed the NOSPACE alarm");
}

#[tokio::test]
async fn a_tenant_lists_only_its_own_leases_through_the_proxy_but_every_lease_directly() {
    let scene = Scene::new().await;
    let (alice, bob) = (scene.via_proxy("alice").await, scene.via_proxy("bob").await);
    let alices = grant(&alice).await;
    let bobs = grant(&bob).await;
    assert_eq!(leases(&bob).await, [bobs]);
    assert_eq!(leases(&alice).await, [alices]);

    let mut all = leases(&scene.direct("bob").await).await;
    all.sort_unstable();
    let mut both = vec![alices, bobs];
    both.sort_unstable();
    assert_eq!(all, both, "directly, a tenant lists every tenant's leases");

    let mut seen_by_root = leases(&scene.root_via_proxy().await).await;
    seen_by_root.sort_unstable();
    assert_eq!(seen_by_root, both, "operators see every lease through the proxy");
}

#[tokio::test]
async fn a_tenant_may_not_keep_alive_inspect_or_revoke_another_tenants_lease_through_the_proxy() {
    let scene = Scene::new().await;
    let (alice, bob) = (scene.via_proxy("alice").await, scene.via_proxy("bob").await);
    let leased = grant(&alice).await;
    put(&alice, "/tenants/alice/secret-name", leased).await.unwrap();
    let empty = grant(&alice).await;

    let message = refused(keep_alive(&bob, leased).await, Code::PermissionDenied);
    assert!(message.contains("was not granted to user bob"), "{message}");
    let inspect = LeaseTimeToLiveRequest { id: leased, keys: true };
    refused(bob.lease().lease_time_to_live(bob.req(inspect)).await, Code::PermissionDenied);
    refused(
        bob.lease().lease_revoke(bob.req(LeaseRevokeRequest { id: empty })).await,
        Code::PermissionDenied,
    );
    // The owner still may.
    assert!(keep_alive(&alice, leased).await.unwrap().ttl > 0);
    let ttl = alice.lease().lease_time_to_live(alice.req(inspect)).await.unwrap().into_inner();
    assert_eq!(ttl.keys, [b"/tenants/alice/secret-name".to_vec()]);

    // Directly, etcd checks no permission on leases: bob keeps alice's lease alive, reads the
    // names of her keys, and revokes her empty lease.
    let bob_direct = scene.direct("bob").await;
    assert!(keep_alive(&bob_direct, leased).await.unwrap().ttl > 0);
    let ttl = bob_direct.lease().lease_time_to_live(bob_direct.req(inspect)).await.unwrap().into_inner();
    assert_eq!(ttl.keys, [b"/tenants/alice/secret-name".to_vec()], "another tenant's key names");
    bob_direct.lease().lease_revoke(bob_direct.req(LeaseRevokeRequest { id: empty })).await.unwrap();
    let gone =
        alice.lease().lease_time_to_live(alice.req(LeaseTimeToLiveRequest { id: empty, keys: false })).await;
    assert_eq!(gone.unwrap().into_inner().ttl, -1, "bob revoked alice's lease");
}

#[tokio::test]
async fn a_tenant_may_not_attach_a_key_to_another_tenants_lease_through_the_proxy() {
    let scene = Scene::new().await;
    let (alice, bob) = (scene.via_proxy("alice").await, scene.via_proxy("bob").await);
    let lease = grant(&alice).await;

    let message = refused(put(&bob, "/tenants/bob/hijack", lease).await, Code::PermissionDenied);
    assert!(message.contains("a tenant may use only its own leases"), "{message}");
    let in_txn = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b"/tenants/bob/hijack".to_vec(),
                lease,
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    refused(bob.kv().txn(bob.req(in_txn.clone())).await, Code::PermissionDenied);
    let own = grant(&bob).await;
    put(&bob, "/tenants/bob/mine", own).await.unwrap();

    // Directly, bob attaches his key to alice's lease; after that etcd refuses alice the
    // revocation of her own lease (she may not delete bob's key).
    let bob_direct = scene.direct("bob").await;
    put(&bob_direct, "/tenants/bob/hijack", lease).await.unwrap();
    let revoke = alice.lease().lease_revoke(alice.req(LeaseRevokeRequest { id: lease })).await;
    let message = refused(revoke, Code::PermissionDenied);
    assert!(message.contains("permission denied"), "etcd's own refusal: {message}");
}

#[tokio::test]
async fn cluster_administration_is_refused_to_tenants_and_not_served_to_operators() {
    let scene = Scene::new().await;
    let bob = scene.via_proxy("bob").await;
    let root = scene.root_via_proxy().await;
    for conn in [&bob, &root] {
        let expected = if conn.token == bob.token { Code::PermissionDenied } else { Code::Unimplemented };
        refused(conn.maintenance().defragment(conn.req(DefragmentRequest {})).await, expected);
        refused(conn.maintenance().hash_kv(conn.req(HashKvRequest { revision: 0 })).await, expected);
        refused(conn.maintenance().snapshot(conn.req(SnapshotRequest {})).await, expected);
        let add = MemberAddRequest { peer_ur_ls: vec!["http://10.0.0.9:2380".into()], is_learner: true };
        refused(conn.cluster().member_add(conn.req(add)).await, expected);
        let user = etcd_broker_proxy::pb::etcdserverpb::AuthUserAddRequest {
            name: "mallory".into(),
            ..Default::default()
        };
        refused(conn.auth().user_add(conn.req(user)).await, expected);
    }
    // KV.RangeStream (newer than the etcd behind the proxy): UNIMPLEMENTED, for everyone.
    let stream = bob.kv().range_stream(bob.req(RangeRequest::default())).await;
    refused(stream.map(|_| ()), Code::Unimplemented);
}

#[tokio::test]
async fn status_and_member_list_show_tenants_the_proxy_and_operators_etcd() {
    let scene = Scene::new().await;
    let bob = scene.via_proxy("bob").await;
    let members =
        bob.cluster().member_list(bob.req(MemberListRequest::default())).await.unwrap().into_inner();
    let urls: Vec<&str> =
        members.members.iter().flat_map(|m| m.client_ur_ls.iter().map(String::as_str)).collect();
    assert_eq!(urls, [scene.proxy.url.as_str()]);

    let status = bob.maintenance().status(bob.req(StatusRequest {})).await.unwrap().into_inner();
    let etcds = scene.root_direct().await;
    let etcds = etcds.maintenance().status(etcds.req(StatusRequest {})).await.unwrap().into_inner();
    assert_eq!(status.version, etcds.version);
    assert_eq!(status.leader, members.members[0].id, "the proxy is the leader tenants see");
    assert_eq!((status.db_size, status.raft_index), (0, 0), "nothing of etcd's own state");

    let root = scene.root_via_proxy().await;
    let status = root.maintenance().status(root.req(StatusRequest {})).await.unwrap().into_inner();
    assert_eq!(status.leader, etcds.leader, "operators see etcd's status");
    assert!(status.db_size > 0);
}

#[tokio::test]
async fn a_token_the_proxy_did_not_see_issued_is_a_tenant_of_unknown_identity() {
    let scene = Scene::new().await;
    let alice = scene.via_proxy("alice").await;
    alice.lease().lease_grant(alice.req(LeaseGrantRequest { ttl: 60, id: 0 })).await.unwrap();
    // Root's token from etcd itself, used at the proxy: the proxy cannot know it is root's.
    let root_direct = scene.root_direct().await;
    let stranger = Conn::anonymous(&scene.proxy.url).await.with_token_of(&root_direct);
    refused(
        stranger.kv().compact(stranger.req(CompactionRequest { revision: 1, physical: false })).await,
        Code::PermissionDenied,
    );
    let message = refused(
        stranger.lease().lease_grant(stranger.req(LeaseGrantRequest { ttl: 60, id: 0 })).await,
        Code::PermissionDenied,
    );
    assert!(message.contains("authenticate through the proxy"), "{message}");
    assert_eq!(leases(&stranger).await, Vec::<i64>::new());
    // etcd still decides on keys with the token as it is.
    put(&stranger, "/anywhere", 0).await.unwrap();

    // No token at all: refused before etcd is asked.
    let anonymous = Conn::anonymous(&scene.proxy.url).await;
    let message = refused(put(&anonymous, "/tenants/alice/k", 0).await, Code::Unauthenticated);
    assert!(message.contains("no auth token"), "{message}");
    refused(
        anonymous.lease().lease_grant(anonymous.req(LeaseGrantRequest { ttl: 60, id: 0 })).await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn operators_pass_the_firewall() {
    let scene = Scene::new().await;
    let alice = scene.via_proxy("alice").await;
    let lease = grant(&alice).await;
    let root = scene.root_via_proxy().await;
    put(&root, "/operators/k", 0).await.unwrap();
    let revision = revision(&root, "/operators/k").await;
    root.kv().compact(root.req(CompactionRequest { revision, physical: false })).await.unwrap();
    assert!(keep_alive(&root, lease).await.unwrap().ttl > 0);
    root.lease().lease_revoke(root.req(LeaseRevokeRequest { id: lease })).await.unwrap();
}
