//! `etcd-broker-ops names`: what an instance (and binding) id maps to in etcd.

use std::fmt::Write;

use anyhow::Result;
use etcd_broker::broker::names::Names;
use etcd_broker::osb::{BindingId, InstanceId};

/// The report, as `label: value` lines or as a JSON object.
pub fn report(names: &Names, instance: &str, binding: Option<&str>, json: bool) -> Result<String> {
    let instance = InstanceId::parse(instance)?;
    let mut rows = vec![
        ("instance_id", instance.to_string()),
        ("tenant_prefix", names.tenant_prefix(&instance)),
        ("instance_record", names.instance_key(&instance)),
        ("binding_records_prefix", names.bindings_prefix(&instance)),
    ];
    if let Some(binding) = binding {
        let binding = BindingId::parse(binding)?;
        rows.push(("binding_id", binding.to_string()));
        rows.push(("binding_record", names.binding_key(&instance, &binding)));
        rows.push(("etcd_user", names.user(&instance, &binding)));
        rows.push(("etcd_role", names.role(&instance, &binding)));
    }
    if json {
        let map: serde_json::Map<String, serde_json::Value> =
            rows.into_iter().map(|(k, v)| (k.to_owned(), v.into())).collect();
        return Ok(serde_json::to_string_pretty(&map)? + "\n");
    }
    let mut out = String::new();
    for (label, value) in rows {
        writeln!(out, "{:<24}{value}", format!("{label}:"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_name_of_a_binding() {
        let text = report(&Names::default(), "abc", Some("b1"), false).unwrap();
        assert!(text.contains("tenant_prefix:          /service_instances/abc/\n"), "{text}");
        assert!(text.contains("etcd_user:              etcd-broker.abc.b1\n"), "{text}");
        assert!(text.contains("binding_record:         /etcd-broker/bindings/abc/b1\n"), "{text}");
    }

    #[test]
    fn json_output_and_custom_prefixes() {
        let text = report(&Names::new("/t/", "/s/"), "abc", None, true).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["tenant_prefix"], "/t/abc/");
        assert_eq!(value["instance_record"], "/s/instances/abc");
        assert!(value.get("etcd_user").is_none());
    }

    #[test]
    fn invalid_ids_are_refused_with_the_rule() {
        let err = report(&Names::default(), "a/b", None, false).unwrap_err();
        assert!(err.to_string().contains("invalid instance id"), "{err}");
        let err = report(&Names::default(), "abc", Some(""), false).unwrap_err();
        assert!(err.to_string().contains("invalid binding id"), "{err}");
    }
}
