//! `reconcile` on a real etcd (3.5, and 3.4 in make test) behind a real broker: a healthy
//! deployment with live bindings reports nothing (grants compared as etcd stores them), each
//! inconsistency made by hand with root credentials is found, `--repair` fixes exactly the safe
//! ones and leaves tenant data alone without `--delete-orphan-data`, and a second run finds
//! nothing. (The binary's exit codes, JSON on stdout and the errand: ops/tests/it/reconcile.rs.)

use std::collections::BTreeMap;

use etcd_broker::broker::records::{encode, BindingRecord, RecordState, RoleDeletion};
use etcd_broker::config::Config;
use etcd_broker::reconcile::{reconcile, Kind, Repair, Repaired, Report, Settings};
use etcd_client::{GetOptions, Permission};
use reqwest::StatusCode;

use crate::common::*;

const CHECK: Settings = Settings { stuck_after: 600, grants: true };

async fn run(config: &Config, repair: Repair) -> Report {
    reconcile(config, &CHECK, repair).await.unwrap()
}

/// (kind, subject) of every finding, in the report's order.
fn found(report: &Report) -> Vec<(&'static str, String)> {
    report.findings.iter().map(|f| (f.kind.name(), f.subject.clone())).collect()
}

#[tokio::test]
async fn a_broken_deployment_is_found_repaired_and_then_clean() {
    let etcd = start_etcd().await;
    let mut toml = String::new();
    let broker = BrokerProcess::start_with_config(
        |port, metrics_port| {
            toml = config_toml(port, metrics_port, &etcd, None);
            toml.clone()
        },
        &[],
    )
    .await;
    let config = Config::from_toml(&toml).unwrap();
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    let mut credentials = BTreeMap::new();
    for b in ["b1", "b2", "b3"] {
        let bound = osb.bind("i1", b).await;
        assert_eq!(bound.status, StatusCode::CREATED);
        credentials.insert(b, bound.body["credentials"].clone());
    }
    let mut tenant = tenant_client(&credentials["b1"]).await.unwrap();
    tenant.put("/service_instances/i1/app-key", "app-value", None).await.unwrap();

    let healthy = run(&config, Repair::Nothing).await;
    assert!(healthy.findings.is_empty(), "{healthy:#?}");
    assert_eq!((healthy.checked.bindings, healthy.checked.users, healthy.checked.tenant_prefixes), (3, 3, 1));

    // Made by hand as root: every kind reconcile can find on a real etcd.
    let mut root = etcd.root_client().await.unwrap();
    root.role_add("etcd-broker.i9.b9").await.unwrap();
    root.user_add("etcd-broker.i9.b9", "left-over", None).await.unwrap();
    root.user_delete("etcd-broker.i1.b1").await.unwrap();
    root.role_grant_permission("etcd-broker.i1.b2", Permission::read("/").with_all_keys()).await.unwrap();
    root.user_grant_role("etcd-broker.i1.b3", "root").await.unwrap();
    root.put("/service_instances/gone/k", "tenant data", None).await.unwrap();
    let stuck = BindingRecord {
        instance_id: "i1".into(),
        binding_id: "stuck".into(),
        service_id: SERVICE_ID.into(),
        plan_id: SHARED.into(),
        cluster: "main".into(),
        username: "etcd-broker.i1.stuck".into(),
        role: "etcd-broker.i1.stuck".into(),
        password: Some("not-handed-out".into()),
        prefix: "/service_instances/i1/".into(),
        state: RecordState::Creating,
        created_at: 1,
        updated_at: 1,
        ..Default::default()
    };
    root.put("/etcd-broker/bindings/i1/stuck", encode(&stuck), None).await.unwrap();
    let entry = RoleDeletion {
        role: "etcd-broker.i1.old".into(),
        user: None,
        cluster: "main".into(),
        secret_location: None,
        queued_at: 1,
    };
    root.role_add("etcd-broker.i1.old").await.unwrap();
    root.put("/etcd-broker/role-deletions/etcd-broker.i1.old", encode(&entry), None).await.unwrap();

    let before = root.get("", Some(GetOptions::new().with_all_keys())).await.unwrap().kvs().len();
    let report = run(&config, Repair::Nothing).await;
    let after = root.get("", Some(GetOptions::new().with_all_keys())).await.unwrap().kvs().len();
    assert_eq!(before, after, "a read-only run wrote");
    let expected = [
        ("orphan_user", "etcd-broker.i9.b9"),
        ("orphan_role", "etcd-broker.i9.b9"),
        ("missing_user", "/etcd-broker/bindings/i1/b1"),
        ("wrong_grants", "/etcd-broker/bindings/i1/b2"),
        ("wrong_grants", "/etcd-broker/bindings/i1/b3"),
        ("orphan_data", "/service_instances/gone/"),
        ("stuck_creating", "/etcd-broker/bindings/i1/stuck"),
        ("stale_role_deletion", "/etcd-broker/role-deletions/etcd-broker.i1.old"),
    ];
    let expected: Vec<(&str, String)> = expected.iter().map(|(k, s)| (*k, s.to_string())).collect();
    assert_eq!(found(&report), expected, "{report:#?}");
    let role = &report.findings[3].detail;
    assert!(role.starts_with("role etcd-broker.i1.b2 permits [read range"), "{role}");
    assert!(role.ends_with("the record says [readwrite prefix /service_instances/i1/]"), "{role}");
    let user = &report.findings[4].detail;
    assert_eq!(
        user,
        "user etcd-broker.i1.b3 holds roles [etcd-broker.i1.b3, root], the record says [etcd-broker.i1.b3]"
    );

    let repaired = run(&config, Repair::Safe).await;
    for finding in &repaired.findings {
        let want = match finding.kind {
            Kind::StuckCreating => None,
            Kind::OrphanData => Some("skipped"),
            _ => Some("repaired"),
        };
        if let Some(Repaired::Failed(why)) = &finding.repair {
            panic!("{finding:?}: {why}");
        }
        let got = finding.repair.as_ref().map(Repaired::name);
        assert_eq!(got, want, "{finding:?}");
    }
    // What the repairs did, seen as root and as the tenants.
    let mut root = etcd.root_client().await.unwrap();
    let users = root.user_list().await.unwrap().users().to_vec();
    assert!(!users.contains(&"etcd-broker.i9.b9".to_owned()), "{users:?}");
    let roles = root.role_list().await.unwrap().roles().to_vec();
    assert!(
        !roles.contains(&"etcd-broker.i9.b9".to_owned()) && !roles.contains(&"etcd-broker.i1.old".to_owned())
    );
    assert_eq!(root.user_get("etcd-broker.i1.b3").await.unwrap().roles(), ["etcd-broker.i1.b3"]);
    assert_eq!(root.role_get("etcd-broker.i1.b2").await.unwrap().permissions().len(), 1);
    assert_eq!(root.get("/service_instances/gone/k", None).await.unwrap().count(), 1, "tenant data deleted");
    let mut b1 = tenant_client(&credentials["b1"]).await.expect("b1's credentials work again");
    let value = b1.get("/service_instances/i1/app-key", None).await.unwrap();
    assert_eq!(value.kvs()[0].value(), b"app-value");
    let mut b3 = tenant_client(&credentials["b3"]).await.unwrap();
    assert!(b3.get("/etcd-broker/instances/i1", None).await.is_err(), "b3 still reads the broker's records");

    let again = run(&config, Repair::Safe).await;
    let left = [
        ("orphan_data", "/service_instances/gone/".to_owned()),
        ("stuck_creating", "/etcd-broker/bindings/i1/stuck".to_owned()),
    ];
    assert_eq!(found(&again), left, "{again:#?}");
    let data = run(&config, Repair::SafeAndOrphanData).await;
    assert_eq!(data.findings[0].repair, Some(Repaired::Repaired));
    let mut root = etcd.root_client().await.unwrap();
    assert_eq!(
        root.get("/service_instances/gone/", Some(GetOptions::new().with_prefix())).await.unwrap().count(),
        0
    );
    assert_eq!(root.get("/etcd-broker/instances/gone", None).await.unwrap().count(), 0, "the claim is left");
    assert_eq!(
        root.get("/service_instances/i1/app-key", None).await.unwrap().count(),
        1,
        "an instance's data went"
    );

    // The platform finishes the stuck bind by unbinding it; then nothing is left to find.
    assert_eq!(osb.unbind("i1", "stuck").await.status, StatusCode::OK);
    let clean = run(&config, Repair::Nothing).await;
    assert!(clean.findings.is_empty(), "{clean:#?}");
    broker.stop().await;
}

/// The gauge `etcd_broker_reconcile_findings{kind}` of the broker's periodic check: 0 for every
/// kind while binds and unbinds run through several checks (operations in flight are not
/// findings), then an orphan user made by hand counts once two checks in a row found it.
#[tokio::test]
async fn the_periodic_check_exports_findings_and_not_operations_in_flight() {
    let etcd = start_etcd().await;
    let broker = BrokerProcess::start_with_config(
        |port, metrics_port| {
            config_toml(port, metrics_port, &etcd, None) + "\n[reconcile]\ninterval_seconds = 1\n"
        },
        &[],
    )
    .await;
    let gauge =
        |text: &str, kind: &str| sample(text, &format!("etcd_broker_reconcile_findings{{kind=\"{kind}\"}}"));
    let text = scrape(&broker).await;
    for kind in Kind::ALL {
        assert!(
            text.contains(&format!("etcd_broker_reconcile_findings{{kind=\"{}\"}} 0", kind.name())),
            "{text}"
        );
    }
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    let started = std::time::Instant::now();
    let mut round = 0;
    while started.elapsed() < std::time::Duration::from_secs(4) {
        let ids: Vec<String> = (0..4).map(|n| format!("r{round}b{n}")).collect();
        let binds = ids.iter().map(|b| osb.bind("i1", b));
        for reply in futures_util::future::join_all(binds).await {
            assert_eq!(reply.status, StatusCode::CREATED);
        }
        let unbinds = ids.iter().map(|b| osb.unbind("i1", b));
        futures_util::future::join_all(unbinds).await;
        round += 1;
    }
    let text = scrape(&broker).await;
    for kind in Kind::ALL {
        assert_eq!(gauge(&text, kind.name()), 0.0, "{} after {round} rounds", kind.name());
    }

    let mut root = etcd.root_client().await.unwrap();
    root.user_add("etcd-broker.i1.gone", "left-over", None).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let text = scrape(&broker).await;
        if gauge(&text, "orphan_user") == 1.0 {
            assert_eq!(gauge(&text, "orphan_role"), 0.0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the orphan user was never counted: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(!broker.log_text().contains("left-over"));
    broker.stop().await;
}

/// Instances made before the per-organization index existed (their entries deleted by hand)
/// are not counted against the organization's limit: reconcile reports each missing entry,
/// `--repair` adds it (compare-and-swap, twice is harmless), and the limit then counts them.
#[tokio::test]
async fn missing_index_entries_are_found_and_added_so_that_the_limit_counts_them() {
    let etcd = start_etcd().await;
    let mut toml = String::new();
    let broker = BrokerProcess::start_with_config(
        |port, metrics_port| {
            toml = config_toml(port, metrics_port, &etcd, None)
                + "\n[limits]\nmax_instances_per_organization = 2\n";
            toml.clone()
        },
        &[],
    )
    .await;
    let config = Config::from_toml(&toml).unwrap();
    let osb = Osb::new(&broker.url);
    for id in ["old-1", "old-2"] {
        assert_eq!(osb.provision(id, SHARED).await.status, StatusCode::CREATED);
    }
    assert!(run(&config, Repair::Nothing).await.findings.is_empty());

    // As before the index existed: no organization entries.
    let mut root = etcd.root_client().await.unwrap();
    let index = "/etcd-broker/index/organizations/org-1/";
    let deleted = root.delete(index, Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
    assert_eq!(deleted.deleted(), 2);

    let report = run(&config, Repair::Nothing).await;
    let expected: Vec<(&str, String)> = ["old-1", "old-2"]
        .iter()
        .map(|id| ("missing_index_entry", format!("/etcd-broker/instances/{id}")))
        .collect();
    assert_eq!(found(&report), expected, "{report:#?}");
    assert!(report.findings[0].detail.contains(&format!("{index}old-1")), "{}", report.findings[0].detail);
    assert_eq!(report.findings[0].repair, None, "a read-only run repairs nothing");
    assert_eq!(root.get(index, Some(GetOptions::new().with_prefix())).await.unwrap().kvs().len(), 0);

    let repaired = run(&config, Repair::Safe).await;
    assert!(repaired.findings.iter().all(|f| f.repair == Some(Repaired::Repaired)), "{repaired:#?}");
    let entries = root.get(index, Some(GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
    let keys: Vec<&str> = entries.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
    assert_eq!(keys, [format!("{index}old-1"), format!("{index}old-2")]);
    assert!(run(&config, Repair::Safe).await.findings.is_empty(), "a second repair finds nothing");

    // The organization's limit now counts them: a third instance is refused.
    let third = osb.provision("new-3", SHARED).await;
    assert_eq!(third.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", third.body);
    assert!(third.reason().contains("max_instances_per_organization"), "{}", third.reason());
}
