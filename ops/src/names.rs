//! `etcd-broker-ops names`: what an instance (and binding) id maps to in etcd.

use std::fmt::Write;

use anyhow::Result;
use etcd_broker::broker::names::Names;
use etcd_broker::osb::bind_parameters;
use etcd_broker::osb::model::JsonObject;
use etcd_broker::osb::{BindingId, InstanceId};

/// The report, as `label: value` lines or as a JSON object. `parameters` are a binding's bind
/// parameters (JSON, checked as the broker checks them): its role's permission follows from
/// them.
pub fn report(
    names: &Names,
    instance: &str,
    binding: Option<&str>,
    parameters: Option<&str>,
    json: bool,
) -> Result<String> {
    let instance = InstanceId::parse(instance)?;
    let mut rows = vec![
        ("instance_id", instance.to_string()),
        ("tenant_prefix", names.tenant_prefix(&instance)),
        ("instance_record", names.instance_key(&instance)),
        ("binding_records_prefix", names.bindings_prefix(&instance)),
        ("bind_markers_prefix", names.bind_markers_prefix(&instance)),
    ];
    if let Some(binding) = binding {
        let binding = BindingId::parse(binding)?;
        rows.push(("binding_id", binding.to_string()));
        rows.push(("binding_record", names.binding_key(&instance, &binding)));
        rows.push(("bind_marker", names.bind_marker_key(instance.as_str(), binding.as_str())));
        rows.push(("etcd_user", names.user(&instance, &binding)));
        rows.push(("etcd_role", names.role(&instance, &binding)));
        let parameters: JsonObject = match parameters {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| anyhow::anyhow!("--parameters is not a JSON object: {e}"))?,
            None => JsonObject::new(),
        };
        let parameters = bind_parameters::parse(&parameters)?;
        rows.push(("role_permission", parameters.describe_permission(&names.tenant_prefix(&instance))));
    } else if parameters.is_some() {
        anyhow::bail!("--parameters describe a binding: give its binding id too");
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
        let text = report(&Names::default(), "abc", Some("b1"), None, false).unwrap();
        assert!(text.contains("tenant_prefix:          /service_instances/abc/\n"), "{text}");
        assert!(text.contains("etcd_user:              etcd-broker.abc.b1\n"), "{text}");
        assert!(text.contains("binding_record:         /etcd-broker/bindings/abc/b1\n"), "{text}");
        assert!(text.contains("bind_marker:            /etcd-broker/binds-in-flight/abc/b1\n"), "{text}");
        assert!(
            text.contains("role_permission:        readwrite prefix /service_instances/abc/\n"),
            "{text}"
        );
    }

    #[test]
    fn the_role_permission_follows_the_bind_parameters() {
        let parameters = Some(r#"{"access": "read", "key_prefix": "config/"}"#);
        let text = report(&Names::default(), "abc", Some("b1"), parameters, false).unwrap();
        assert!(
            text.contains("role_permission:        read prefix /service_instances/abc/config/\n"),
            "{text}"
        );
        let err =
            report(&Names::default(), "abc", Some("b1"), Some(r#"{"key_prefix": "x"}"#), false).unwrap_err();
        assert!(err.to_string().contains("'key_prefix'"), "{err}");
        let err = report(&Names::default(), "abc", None, parameters, false).unwrap_err();
        assert!(err.to_string().contains("binding id"), "{err}");
    }

    #[test]
    fn json_output_and_custom_prefixes() {
        let text = report(&Names::new("/t/", "/s/"), "abc", None, None, true).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["tenant_prefix"], "/t/abc/");
        assert_eq!(value["instance_record"], "/s/instances/abc");
        assert!(value.get("etcd_user").is_none());
    }

    #[test]
    fn invalid_ids_are_refused_with_the_rule() {
        let err = report(&Names::default(), "a/b", None, None, false).unwrap_err();
        assert!(err.to_string().contains("invalid instance id"), "{err}");
        let err = report(&Names::default(), "abc", Some(""), None, false).unwrap_err();
        assert!(err.to_string().contains("invalid binding id"), "{err}");
    }
}
