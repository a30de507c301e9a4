//! Revocation with a real broker: a watch opened with a binding's credentials through the
//! proxy ends within a second of the unbind (or of the broker's revocation of an expired
//! binding), and the binding's token is refused; the same watch opened directly on etcd keeps
//! receiving events, the next tenant's writes included, which is why the proxy exists.

use std::time::{Duration, Instant};

use etcd_broker_proxy::pb::etcdserverpb::{AuthenticateRequest, RangeRequest, WatchResponse};
use serde_json::Value;
use tonic::{Code, Streaming};

use crate::broker::{BrokerProcess, EXPIRING, PLAN};
use crate::common::*;

/// The binding's user name, password and prefix.
fn credentials(credentials: &Value) -> (String, String, String) {
    let text = |field: &str| credentials[field].as_str().unwrap_or_else(|| panic!("{field}")).to_owned();
    (text("username"), text("password"), text("prefix"))
}

/// The next message of a watch that must deliver an event of `key` within 5 s.
async fn event_of(watch: &mut Streaming<WatchResponse>, key: &str) {
    let answer = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("an event within 5 s")
        .expect("the watch is open")
        .expect("the watch did not end");
    let keys: Vec<String> = answer
        .events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.kv.as_ref().unwrap().key).into_owned())
        .collect();
    assert_eq!(keys, [key], "{answer:?}");
}

/// Waits at most `within` for the proxied watch to end with the revocation.
async fn ended_by_revocation(watch: &mut Streaming<WatchResponse>, within: Duration) {
    let answer =
        tokio::time::timeout(within, watch.message()).await.expect("the proxied watch ended in time");
    let message = refused(answer, Code::Unauthenticated);
    assert!(message.contains("revoked"), "{message}");
}

#[tokio::test]
async fn an_unbound_bindings_watch_ends_within_a_second_through_the_proxy_but_not_directly() {
    let etcd = start_etcd().await;
    let broker = BrokerProcess::start(&etcd).await;
    let proxy = ProxyProcess::start(&etcd).await;
    let plan = BrokerProcess::offering(PLAN);
    broker.osb.provision(&plan, "tenant-1", Duration::from_secs(30)).await.unwrap();
    let (_, bound) = broker.osb.bind(&plan, "tenant-1", "binding-1").await.unwrap();
    let (user, password, prefix) = credentials(&bound);
    let through = Conn::login_as(&proxy.url, &user, &password).await;
    let direct = Conn::login_as(&etcd.endpoint(), &user, &password).await;
    let (_open, mut proxied) = through.watch_prefix(&prefix).await.unwrap();
    let (_open_too, mut straight) = direct.watch_prefix(&prefix).await.unwrap();
    let mut root = etcd.root_client().await.unwrap();
    let key = |name: &str| format!("{prefix}{name}");
    root.put(key("before"), "v", None).await.unwrap();
    event_of(&mut proxied, &key("before")).await;
    event_of(&mut straight, &key("before")).await;

    let unbinding = Instant::now();
    assert_eq!(broker.osb.unbind(&plan, "tenant-1", "binding-1").await.unwrap(), 200);
    ended_by_revocation(&mut proxied, Duration::from_secs(1).saturating_sub(unbinding.elapsed())).await;
    let took = unbinding.elapsed();
    assert!(took < Duration::from_secs(1), "{took:?}");

    // The token is refused by the proxy; a new login fails (etcd deleted the user).
    let read = RangeRequest { key: key("before").into(), ..Default::default() };
    let read = through.kv().range(through.req(read)).await;
    assert!(refused(read, Code::Unauthenticated).contains("revoked"));
    let login = Conn::anonymous(&proxy.url).await;
    let again = AuthenticateRequest { name: user.clone(), password: password.clone() };
    assert!(login.auth().authenticate(again).await.is_err());

    // Directly on etcd, the watch outlives the unbind and the deprovision, and sees what the
    // next tenant of the same instance id writes.
    assert_eq!(broker.osb.deprovision(&plan, "tenant-1").await.unwrap(), 200);
    broker.osb.provision(&plan, "tenant-1", Duration::from_secs(30)).await.unwrap();
    let (_, next) = broker.osb.bind(&plan, "tenant-1", "binding-2").await.unwrap();
    let (next_user, next_password, _) = credentials(&next);
    let mut next_tenant = etcd_client::Client::connect(
        [etcd.endpoint()],
        Some(etcd_client::ConnectOptions::new().with_user(next_user, next_password)),
    )
    .await
    .unwrap();
    next_tenant.put(key("secret"), "the next tenant's", None).await.unwrap();
    // (Deprovision deleted the first tenant's keys: those events come first.)
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer =
            tokio::time::timeout_at(deadline.into(), straight.message()).await.unwrap().unwrap().unwrap();
        if answer.events.iter().any(|e| e.kv.as_ref().unwrap().key == key("secret").as_bytes()) {
            break;
        }
    }
}

#[tokio::test]
async fn an_expired_bindings_watch_ends_within_a_second_of_its_revocation() {
    let etcd = start_etcd().await;
    let broker = BrokerProcess::start(&etcd).await;
    let proxy = ProxyProcess::start(&etcd).await;
    let plan = BrokerProcess::offering(EXPIRING);
    broker.osb.provision(&plan, "tenant-2", Duration::from_secs(30)).await.unwrap();
    let (_, bound) = broker.osb.bind(&plan, "tenant-2", "binding-1").await.unwrap();
    let (user, password, prefix) = credentials(&bound);
    let through = Conn::login_as(&proxy.url, &user, &password).await;
    let (_open, mut proxied) = through.watch_prefix(&prefix).await.unwrap();

    // The broker deletes the user past expiry and grace, then marks the record revoked_at.
    let root = Conn::login_as(&etcd.endpoint(), "root", etcd.root_password()).await;
    let (_open_too, mut record) =
        root.watch_prefix("/etcd-broker/bindings/tenant-2/binding-1").await.unwrap();
    let revoked = loop {
        let answer =
            tokio::time::timeout(Duration::from_secs(15), record.message()).await.unwrap().unwrap().unwrap();
        let marked = answer.events.iter().any(|e| {
            let value: Value = serde_json::from_slice(&e.kv.as_ref().unwrap().value).unwrap_or(Value::Null);
            value.get("revoked_at").is_some()
        });
        if marked {
            break Instant::now();
        }
    };
    ended_by_revocation(&mut proxied, Duration::from_secs(1)).await;
    assert!(revoked.elapsed() < Duration::from_secs(1), "{:?}", revoked.elapsed());
    let read = RangeRequest { key: prefix.into(), ..Default::default() };
    let read = through.kv().range(through.req(read)).await;
    assert!(refused(read, Code::Unauthenticated).contains("revoked"));
}

#[tokio::test]
async fn a_watch_with_a_token_the_proxy_did_not_see_issued_is_sent_to_log_in_again() {
    let etcd = start_etcd().await;
    let proxy = ProxyProcess::start(&etcd).await;
    let direct = Conn::login(&etcd.endpoint(), "alice").await;
    let through = Conn::anonymous(&proxy.url).await.with_token_of(&direct);
    let message = refused(through.watch_prefix(&prefix("alice")).await, Code::Unauthenticated);
    // etcd's own words, on which its clients log in again.
    assert_eq!(message, "etcdserver: invalid auth token");
}

#[tokio::test]
async fn a_login_is_refused_while_its_binding_is_being_deleted_even_if_etcd_accepts_it() {
    // An unbind that stopped after marking the record `deleting` and before deleting the user
    // (etcd unreachable meanwhile), made by hand: the user still logs in on etcd.
    let etcd = start_etcd().await;
    let mut root = etcd.root_client().await.unwrap();
    let user = "etcd-broker.tenant-3.binding-1";
    root.user_add(user, "pw", None).await.unwrap();
    let record = serde_json::json!({
        "instance_id": "tenant-3", "binding_id": "binding-1", "service_id": "s", "plan_id": "p",
        "cluster": "main", "username": user, "role": user, "password": "pw",
        "prefix": "/service_instances/tenant-3/", "state": "deleting", "created_at": 1, "updated_at": 1,
    });
    let key = "/etcd-broker/bindings/tenant-3/binding-1";
    root.put(key, record.to_string(), None).await.unwrap();
    let proxy = ProxyProcess::start(&etcd).await;
    Conn::login_as(&etcd.endpoint(), user, "pw").await;
    let login = Conn::anonymous(&proxy.url).await;
    let answer =
        login.auth().authenticate(AuthenticateRequest { name: user.into(), password: "pw".into() }).await;
    let message = refused(answer, Code::Unauthenticated);
    assert!(message.contains("revoked") && !message.contains("pw"), "{message}");
    // Once the record is ready (as after a new bind of the same id), the login is learnt.
    let ready = serde_json::json!({ "state": "ready", "username": user });
    root.put(key, ready.to_string(), None).await.unwrap();
    Conn::login_as(&proxy.url, user, "pw").await;
}
