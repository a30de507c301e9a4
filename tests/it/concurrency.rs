//! Acceptance: two broker processes on one etcd, many clients racing on the same and different
//! ids. Every answer must be one the spec allows, and the end state must have no orphans.

use std::collections::BTreeSet;

use crate::common::*;
use local_etcd::{EtcdVersion, LocalEtcd, Options};
use reqwest::StatusCode;

const CLIENTS: usize = 16;
const ROUNDS: usize = 25;
const INSTANCES: u64 = 3;
const BINDINGS: u64 = 3;

/// A tiny deterministic generator, so a failure can be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn allowed(op: &str, status: StatusCode) -> bool {
    let s = status.as_u16();
    match op {
        "provision" => matches!(s, 200 | 201 | 422),
        "bind" => matches!(s, 200 | 201 | 404 | 422),
        "unbind" => matches!(s, 200 | 410 | 422),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_brokers_under_concurrent_load_stay_consistent() {
    let etcd = start_etcd().await;
    let brokers = [BrokerProcess::start(&etcd, None).await, BrokerProcess::start(&etcd, None).await];
    let urls: Vec<String> = brokers.iter().map(|b| b.url.clone()).collect();

    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let osb = Osb::new(&urls[client % 2]);
        tasks.push(tokio::spawn(async move {
            let mut rng = Lcg(client as u64 + 1);
            let mut seen = Vec::new();
            for _ in 0..ROUNDS {
                let instance = format!("inst-{}", rng.next(INSTANCES));
                let binding = format!("bind-{}", rng.next(BINDINGS));
                let (op, reply) = match rng.next(3) {
                    0 => ("provision", osb.provision(&instance, SHARED).await),
                    1 => ("bind", osb.bind(&instance, &binding).await),
                    _ => ("unbind", osb.unbind(&instance, &binding).await),
                };
                assert!(
                    allowed(op, reply.status),
                    "{op} {instance}/{binding}: {} {:?}",
                    reply.status,
                    reply.body
                );
                if !reply.status.is_success() {
                    assert!(
                        reply.body["description"].is_string(),
                        "{op}: no description in {:?}",
                        reply.body
                    );
                }
                if reply.status.is_success() && op == "bind" {
                    assert!(reply.body["credentials"]["password"].is_string());
                }
                seen.push((op, reply.status.as_u16()));
            }
            seen
        }));
    }
    let mut outcomes = BTreeSet::new();
    for task in tasks {
        outcomes.extend(task.await.expect("client task"));
    }
    // The storm really raced: creates and repeats both happened.
    assert!(outcomes.contains(&("bind", 201)), "{outcomes:?}");
    assert!(outcomes.contains(&("provision", 200)), "{outcomes:?}");

    // Every ready binding works, and every etcd user belongs to a binding the broker knows.
    let osb = Osb::new(&urls[0]);
    let (_, users, roles) = broker_made_things(&etcd).await;
    for user in &users {
        let parts: Vec<&str> = user.split('.').collect();
        assert_eq!(parts.len(), 3, "unexpected user {user}");
        let reply = osb.get_binding(parts[1], parts[2]).await;
        assert_eq!(reply.status, StatusCode::OK, "user {user} has no ready binding: {:?}", reply.body);
        let mut tenant = tenant_client(&reply.body["credentials"]).await.expect("binding credentials work");
        tenant.put(format!("/service_instances/{}/k", parts[1]), "v", None).await.unwrap();
    }
    assert_eq!(users, roles);

    // Tear everything down through the two brokers; nothing may remain.
    for i in 0..INSTANCES {
        for b in 0..BINDINGS {
            let reply = Osb::new(&urls[(i + b) as usize % 2])
                .unbind(&format!("inst-{i}"), &format!("bind-{b}"))
                .await;
            assert!(matches!(reply.status.as_u16(), 200 | 410), "{:?}", reply.body);
        }
        let reply = osb.deprovision(&format!("inst-{i}")).await;
        assert!(matches!(reply.status.as_u16(), 200 | 410), "{:?}", reply.body);
    }
    let (keys, users, roles) = broker_made_things(&etcd).await;
    assert!(keys.is_empty(), "keys left: {keys:?}");
    assert!(users.is_empty() && roles.is_empty(), "{users:?} {roles:?}");
    for broker in brokers {
        let log = broker.stop().await;
        assert!(!log.contains("status=500"), "{log}");
    }
}

/// With `--auth-token jwt` every user or role change makes the broker's token stale (a JWT
/// carries the auth revision it was issued at): concurrent binds and unbinds must still all
/// succeed, the broker refreshing its token instead of answering 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_binds_succeed_when_etcd_issues_jwts() {
    let version = EtcdVersion::from_env().expect("ETCD_VERSION");
    let options = Options { version, bcrypt_cost: Some(4), signed_tokens: true, ..Options::default() };
    let etcd = LocalEtcd::start(options).await.expect("etcd with JWTs starts");
    // The 32 unbinds queue 32 roles, which the end check waits for: the reaper deletes them back
    // to back (at the default busy_share of 0.1 the wait is about 6 s, two thirds of the test). It
    // still deletes only once the OSB traffic has paused, so no deletion meets the binds.
    let broker = BrokerProcess::start_with_config(
        |port, metrics_port| {
            config_toml(port, metrics_port, &etcd, None) + "[role_reaper]\nbusy_share = 1.0\n"
        },
        &[],
    )
    .await;
    let tasks: Vec<_> = (0..8)
        .map(|client| {
            let osb = Osb::new(&broker.url);
            tokio::spawn(async move {
                let instance = format!("jwt-{client}");
                let mut statuses = vec![osb.provision(&instance, SHARED).await.status.as_u16()];
                for binding in 0..4 {
                    statuses.push(osb.bind(&instance, &format!("b{binding}")).await.status.as_u16());
                }
                for binding in 0..4 {
                    statuses.push(osb.unbind(&instance, &format!("b{binding}")).await.status.as_u16());
                }
                statuses.push(osb.deprovision(&instance).await.status.as_u16());
                statuses
            })
        })
        .collect();
    for task in tasks {
        let statuses = task.await.expect("client task");
        assert_eq!(statuses, [201, 201, 201, 201, 201, 200, 200, 200, 200, 200]);
    }
    let (keys, users, roles) = broker_made_things(&etcd).await;
    assert!(keys.is_empty() && users.is_empty() && roles.is_empty(), "{keys:?} {users:?} {roles:?}");
    let log = broker.stop().await;
    assert!(!log.contains("status=503") && !log.contains("status=500"), "{log}");
}
