//! Per-plan credential templates with a real broker process and etcd: a bind shaped by the
//! plan's template gives credentials the tenant's etcd takes, and a template that fails on the
//! sample binding stops the broker before it serves, naming the plan.

use reqwest::StatusCode;

use crate::common::*;
use crate::sealing::config_with;

const SECRETS: &str = "\n[secrets]\nsealing = \"off\"\n";

/// The test config with `template` as plan SHARED's credentials template.
fn with_template(port: u16, metrics: u16, etcd: &local_etcd::LocalEtcd, template: &str) -> String {
    let shared = format!("[plan_configs.\"{SHARED}\"]\ncluster = \"main\"\n");
    let config = config_with(port, metrics, etcd, SECRETS);
    assert!(config.contains(&shared));
    let line = format!("credentials_template = {}\n", toml::Value::String(template.into()));
    config.replace(&shared, &format!("{shared}{line}"))
}

#[tokio::test]
async fn a_plans_template_shapes_the_credentials_that_the_tenants_etcd_takes() {
    let etcd = start_etcd().await;
    let template = r#"{"etcd": {"endpoints": {{json endpoints}}, "user": "{{username}}", "pass": "{{password}}",
        "root": "{{prefix}}"}, "organization": "{{instance.organization_guid}}"}"#;
    let broker =
        BrokerProcess::start_with_config(|port, metrics| with_template(port, metrics, &etcd, template), &[])
            .await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    let bound = osb.bind("i1", "b1").await;
    assert_eq!(bound.status, StatusCode::CREATED, "{:?}", bound.body);
    let shaped = &bound.body["credentials"];
    assert_eq!(shaped["organization"], "org-1");
    assert_eq!(shaped["etcd"]["root"], "/service_instances/i1/");
    assert_eq!(osb.get_binding("i1", "b1").await.body["credentials"], *shaped);
    // The shape is the plan's; the values are the binding's: etcd takes them.
    let credentials = serde_json::json!({
        "endpoints": shaped["etcd"]["endpoints"],
        "username": shaped["etcd"]["user"],
        "password": shaped["etcd"]["pass"],
    });
    let mut tenant = tenant_client(&credentials).await.unwrap();
    tenant.put("/service_instances/i1/k", "v", None).await.unwrap();
    assert_eq!(osb.unbind("i1", "b1").await.status, StatusCode::OK);
    broker.stop().await;
}

#[tokio::test]
async fn a_template_that_fails_on_the_sample_binding_stops_the_broker_naming_the_plan() {
    let etcd = start_etcd().await;
    for (template, why) in [
        (r#"{"user": "{{no_such_value}}"}"#, "does not render"),
        (r#"{"user": {{username}}}"#, "invalid JSON"),
    ] {
        let (status, output) =
            serve_until_exit(|port, metrics| with_template(port, metrics, &etcd, template)).await;
        assert!(!status.success(), "{output}");
        let named = format!("plan_configs.\"{SHARED}\".credentials_template: plan '{SHARED}': the template");
        assert!(output.contains(&named) && output.contains(why), "{output}");
    }
}
