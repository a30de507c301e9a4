use super::*;

const SPEC: &str = r#"
name: j
consumes:
  - { name: etcd, type: etcd, optional: true }
properties:
  log_level: { description: x, default: info }
  listen.port: { description: x, default: 8080 }
  auth.username: { description: x, default: broker }
  auth.password: { description: x }
  flag: { description: x, default: true }
  clusters: { description: x }
"#;

fn spec() -> JobSpec {
    JobSpec::parse(SPEC, "spec").unwrap()
}

#[test]
fn defaults_apply_explicit_null_falls_back_and_undeclared_is_dropped() {
    let source = json!({
        "listen": { "port": null },
        "auth": { "password": "pw" },
        "flag": false,
        "clusters": { "main": { "endpoints": null } },
        "typo": 1,
        "auth_extra": { "x": 1 }
    });
    let resolved = resolve_properties(&spec(), &source).unwrap();
    assert_eq!(
        resolved,
        json!({
            "log_level": "info",
            "listen": { "port": 8080 },
            "auth": { "username": "broker", "password": "pw" },
            "flag": false,
            "clusters": { "main": { "endpoints": null } }
        })
    );
    let unset = resolve_properties(&spec(), &json!({})).unwrap();
    assert_eq!(unset["auth"]["password"], Value::Null);
    assert_eq!(unset["clusters"], Value::Null);
    let mut undeclared =
        undeclared_properties(&spec(), &json!({ "typo": 1, "auth": { "pasword": "x", "username": "u" } }));
    undeclared.sort();
    assert_eq!(undeclared, ["auth.pasword", "typo"]);
    let err = resolve_properties(&spec(), &json!({ "listen": 5 })).unwrap_err();
    assert_eq!(err, "Property 'listen.port' expects a hash, but received a number");
}

#[test]
fn job_properties_win_over_deprecated_global_and_group_properties() {
    let manifest = json!({ "properties": { "a": { "x": 1, "y": 1 } } });
    let group = json!({ "properties": { "a": { "y": 2 } } });
    assert_eq!(manifest_properties(&manifest, &group, &json!({})), json!({ "a": { "x": 1, "y": 2 } }));
    assert_eq!(
        manifest_properties(&manifest, &group, &json!({ "properties": { "b": 1 } })),
        json!({ "b": 1 })
    );
    assert_eq!(manifest_properties(&json!({}), &json!({}), &json!({ "properties": null })), json!({}));
}

#[test]
fn groups_and_jobs_are_found_or_named_in_the_error() {
    let manifest = json!({ "instance_groups": [ { "name": "a", "jobs": [ { "name": "bpm" }, { "name": "j" } ] }, { "name": "b" } ] });
    let group = instance_group(&manifest, "a").unwrap();
    assert_eq!(job(group, "a", "j").unwrap(), &json!({ "name": "j" }));
    assert_eq!(
        instance_group(&manifest, "c").unwrap_err(),
        "instance group 'c' is not in the manifest (instance groups: a, b)"
    );
    assert_eq!(job(group, "a", "k").unwrap_err(), "job 'k' is not in instance group 'a' (jobs: bpm, j)");
    assert!(instance_group(&json!({ "jobs": [] }), "a").unwrap_err().contains("no instance_groups"));
}

#[test]
fn links_come_from_manual_wiring_or_overrides() {
    let none = BTreeMap::new();
    assert!(resolve_links(&spec(), &json!({}), "j", &none).unwrap().is_empty());
    assert!(resolve_links(&spec(), &json!({ "consumes": { "etcd": null } }), "j", &none).unwrap().is_empty());
    let manual = json!({ "consumes": { "etcd": { "instances": [ { "address": "10.0.0.1" } ], "properties": { "port": 4001 } } } });
    let links = resolve_links(&spec(), &manual, "j", &none).unwrap();
    assert_eq!(
        links["etcd"],
        json!({
            "instances": [ { "name": null, "index": null, "id": null, "az": null, "address": "10.0.0.1", "bootstrap": null } ],
            "properties": { "port": 4001 }
        })
    );
    let from = json!({ "consumes": { "etcd": { "from": "etcd-server" } } });
    let err = resolve_links(&spec(), &from, "j", &none).unwrap_err();
    assert!(err.contains("'etcd-server'") && err.contains("--link etcd=FILE"), "{err}");
    let overrides =
        [("etcd".to_owned(), json!({ "instances": [ { "address": "e" } ] }))].into_iter().collect();
    let links = resolve_links(&spec(), &from, "j", &overrides).unwrap();
    assert_eq!(links["etcd"]["properties"], json!({}));
    let unknown = [("nats".to_owned(), json!({}))].into_iter().collect();
    assert!(resolve_links(&spec(), &json!({}), "j", &unknown)
        .unwrap_err()
        .contains("consumes no link called 'nats'"));
}

#[test]
fn the_instance_spec_is_a_plausible_first_instance() {
    let manifest = json!({ "name": "dep" });
    let group = json!({ "instances": 2, "azs": ["z1", "z2"] });
    let spec = instance_spec(&manifest, &group, "g", &Instance { index: 1, address: None }).unwrap();
    assert_eq!(
        spec,
        json!({
            "address": "g-1.example.internal", "index": 1, "id": "00000000-0000-4000-8000-000000000001",
            "az": "z2", "deployment": "dep", "name": "g", "bootstrap": false
        })
    );
    assert!(instance_spec(&manifest, &group, "g", &Instance { index: 2, address: None })
        .unwrap_err()
        .contains("out of range"));
    assert!(instance_spec(&json!({}), &group, "g", &Instance { index: 0, address: None }).is_err());
}

#[test]
fn properties_json_keeps_present_values_and_the_etcd_port() {
    let context = template_context(
        json!({ "log_level": "info", "listen": { "port": 8080 }, "auth": { "username": "b", "password": null }, "flag": false, "clusters": null }),
        [("etcd".to_owned(), json!({ "instances": [ { "address": "a", "index": 0, "id": "i", "az": null, "name": "etcd", "bootstrap": true } ], "properties": {} }))]
            .into_iter()
            .collect(),
        json!({ "address": "x", "index": 0, "id": "i", "az": null, "deployment": "d", "name": "g", "bootstrap": true }),
    );
    let json = properties_json(&spec(), &context);
    assert_eq!(
        json["properties"],
        json!({ "log_level": "info", "listen": { "port": 8080 }, "auth": { "username": "b" }, "flag": false })
    );
    assert_eq!(json["links"]["etcd"]["properties"], json!({ "port": 2379 }));
}
