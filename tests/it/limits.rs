//! Plan and organization limits on a real etcd, with two brokers racing: however the requests
//! interleave, no limit is exceeded, the refusals are 422 naming the limit, and the metrics
//! report limits and refusals.

use reqwest::StatusCode;
use serde_json::json;

use etcd_broker_ops::osb::Incomplete;

use crate::common::*;

/// The test config with limits: plan LARGE takes 4 instances and 3 bindings per instance,
/// each organization 5 instances over all plans.
fn limited_config(port: u16, metrics_port: u16, etcd: &local_etcd::LocalEtcd) -> String {
    let config = config_toml(port, metrics_port, etcd, None);
    let large = "binding_parameters = true\n";
    assert!(config.contains(large), "the test catalog changed");
    config.replace(large, "binding_parameters = true\nmax_instances = 4\nmax_bindings_per_instance = 3\n")
        + "\n[limits]\nmax_instances_per_organization = 5\n"
}

async fn two_brokers(etcd: &local_etcd::LocalEtcd) -> [BrokerProcess; 2] {
    let start = || BrokerProcess::start_with_config(|port, metrics| limited_config(port, metrics, etcd), &[]);
    [start().await, start().await]
}

fn provision_in(org: &str, plan: &str) -> serde_json::Value {
    let mut body = provision_body(plan);
    body["organization_guid"] = json!(org);
    body
}

/// `count` requests at once, alternating between the brokers; their statuses and descriptions.
async fn racing<F, Fut>(brokers: &[BrokerProcess; 2], count: usize, request: F) -> Vec<(StatusCode, String)>
where
    F: Fn(Osb, usize) -> Fut,
    Fut: std::future::Future<Output = Reply> + Send + 'static,
{
    let tasks: Vec<_> = (0..count).map(|i| tokio::spawn(request(Osb::new(&brokers[i % 2].url), i))).collect();
    let mut answers = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        answers.push((reply.status, reply.reason()));
    }
    answers
}

fn tally(answers: &[(StatusCode, String)], needle: &str) -> (usize, usize) {
    let created = answers.iter().filter(|(s, _)| *s == StatusCode::CREATED).count();
    let refused = answers
        .iter()
        .filter(|(s, why)| *s == StatusCode::UNPROCESSABLE_ENTITY && why.contains(needle))
        .count();
    assert_eq!(created + refused, answers.len(), "other answers: {answers:?}");
    (created, refused)
}

#[tokio::test]
async fn two_racing_brokers_never_exceed_a_limit() {
    let etcd = start_etcd().await;
    let brokers = two_brokers(&etcd).await;

    // Instances of plan LARGE: 12 provisions at once (each in its own organization), 4 places.
    let answers = racing(&brokers, 12, |osb, i| async move {
        let body = provision_in(&format!("org-{i}"), LARGE);
        osb.put_instance(&format!("p{i}"), &body, Incomplete::Refused).await.unwrap()
    })
    .await;
    assert_eq!(tally(&answers, "plan 'large' has reached its limit of 4 service instances"), (4, 8));
    let created: Vec<usize> = (0..12).filter(|i| answers[*i].0 == StatusCode::CREATED).collect();

    // Bindings of one of them: 10 binds at once, 3 places.
    let instance = format!("p{}", created[0]);
    let answers = racing(&brokers, 10, |osb, i| {
        let instance = instance.clone();
        async move {
            let body = json!({ "service_id": SERVICE_ID, "plan_id": LARGE });
            osb.put_binding(&instance, &format!("b{i}"), &body, Incomplete::Refused).await.unwrap()
        }
    })
    .await;
    assert_eq!(
        tally(&answers, "has reached its limit of 3 service bindings (max_bindings_per_instance)"),
        (3, 7)
    );

    // One organization's instances over two plans: 10 provisions at once, 5 places (SHARED has
    // no limit of its own; LARGE is full already, so use SHARED).
    let answers = racing(&brokers, 10, |osb, i| async move {
        osb.put_instance(&format!("o{i}"), &provision_in("org-x", SHARED), Incomplete::Refused).await.unwrap()
    })
    .await;
    assert_eq!(tally(&answers, "organization 'org-x' has reached its limit of 5 service instances"), (5, 5));

    // A repeated provision of an existing instance is 200 at the limit; a delete frees a place.
    let osb = Osb::new(&brokers[0].url);
    let body = provision_in(&format!("org-{}", created[0]), LARGE);
    assert_eq!(osb.put_instance(&instance, &body, Incomplete::Refused).await.unwrap().status, StatusCode::OK);
    let last = format!("p{}", created[3]);
    assert_eq!(osb.deprovision(&last).await.status, StatusCode::OK);
    let again =
        osb.put_instance("p-new", &provision_in("org-new", LARGE), Incomplete::Refused).await.unwrap();
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.reason());

    // Each broker reports the limits and its own refusals; together they refused 8 + 7 + 5.
    let mut refused = 0.0;
    for broker in &brokers {
        let text = scrape(broker).await;
        let limit = "etcd_broker_plan_limit{limit=\"max_instances\",plan=\"large\",service=\"etcd\"}";
        assert_eq!(sample(&text, limit), 4.0);
        assert_eq!(sample(&text, "etcd_broker_organization_instances_limit"), 5.0);
        for limit in ["max_instances", "max_bindings_per_instance", "max_instances_per_organization"] {
            refused += sample(&text, &format!("etcd_broker_limit_refusals_total{{limit=\"{limit}\"}}"));
        }
    }
    assert_eq!(refused, 20.0);
    for broker in brokers {
        broker.stop().await;
    }
}
