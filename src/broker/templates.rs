//! Per-plan credential templates: a handlebars template that shapes the credentials JSON of a
//! plan's bindings (a `uri` of another form, an application's own key layout, values from the
//! instance's provision parameters), instead of the default shape of `credentials.rs`.
//!
//! What a template can do is bounded: strict mode (a missing value is an error, never an empty
//! string), no helper that runs code or reads files (the built-in `log` is removed, so a
//! template cannot print a password into the log; partials are not loaded from anywhere), and
//! every `{{value}}` escaped for a JSON string. `{{json value}}` writes a value as JSON (lists,
//! objects, numbers). The result must be a JSON object.
//!
//! Each template is compiled and rendered against a sample binding when the config loads, so a
//! template that does not render, or renders something that is not a JSON object, stops the
//! broker with an error naming the plan.

use std::collections::BTreeMap;
use std::fmt;

use handlebars::{Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason};
use serde_json::{json, Value};

use super::records::{BindingRecord, InstanceRecord};

/// The compiled templates of every plan that has one.
pub struct CredentialTemplates {
    registry: Handlebars<'static>,
}

impl fmt::Debug for CredentialTemplates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialTemplates").field("plans", &self.registry.get_templates().keys()).finish()
    }
}

impl Default for CredentialTemplates {
    fn default() -> Self {
        CredentialTemplates { registry: registry() }
    }
}

/// What a plan's sample binding looks like, for the check at start-up.
#[derive(Debug, Clone, Copy, Default)]
pub struct SampleShape {
    /// The bindings get a password.
    pub password: bool,
    /// The bindings get a client certificate.
    pub certificate: bool,
    /// Answered by reference: no secret fields.
    pub by_reference: bool,
}

/// `{{json value}}`: the value as JSON, unescaped.
fn json_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let value = h.param(0).ok_or(RenderErrorReason::ParamNotFoundForIndex("json", 0))?;
    out.write(&serde_json::to_string(value.value()).unwrap_or_default())?;
    Ok(())
}

/// The registry: strict, JSON-string escaping, `json` added and `log` removed.
fn registry() -> Handlebars<'static> {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    registry.register_escape_fn(|text| {
        let quoted = serde_json::to_string(text).unwrap_or_default();
        quoted[1..quoted.len() - 1].to_owned()
    });
    registry.unregister_helper("log");
    registry.register_helper("json", Box::new(json_helper));
    registry
}

impl CredentialTemplates {
    /// Compiles `templates` (plan id -> template text) and renders each against a sample
    /// binding of its plan's `shapes`; the first failure, as (plan id, why).
    pub fn new(
        templates: &BTreeMap<String, String>,
        shapes: &BTreeMap<String, SampleShape>,
    ) -> Result<CredentialTemplates, (String, String)> {
        let mut compiled = CredentialTemplates::default();
        for (plan, text) in templates {
            compiled
                .registry
                .register_template_string(plan, text)
                .map_err(|e| (plan.clone(), format!("is not a handlebars template: {e}")))?;
            let shape = shapes.get(plan).copied().unwrap_or_default();
            compiled
                .render(plan, &sample_context(shape))
                .map_err(|why| (plan.clone(), format!("fails on a sample binding: {why}")))?;
        }
        Ok(compiled)
    }

    /// Whether plan `plan` has a template.
    pub fn has(&self, plan: &str) -> bool {
        self.registry.has_template(plan)
    }

    /// The credentials plan `plan`'s template makes of `context`; why not (naming no value).
    pub fn render(&self, plan: &str, context: &Value) -> Result<Value, String> {
        let text = self.registry.render(plan, context).map_err(|e| format!("it does not render: {e}"))?;
        match serde_json::from_str::<Value>(&text) {
            Ok(value @ Value::Object(_)) => Ok(value),
            Ok(_) => Err("it renders JSON that is not an object".into()),
            Err(e) => Err(format!("it renders invalid JSON ({e})")),
        }
    }
}

/// What a template sees: the default credentials' fields at the top (`{{username}}`,
/// `{{json endpoints}}`), the same as `credentials`, and `instance`, `binding` and `cluster`.
pub fn context(credentials: &Value, record: &BindingRecord, instance: &InstanceRecord) -> Value {
    let mut context = credentials.clone();
    context["credentials"] = credentials.clone();
    context["instance"] = json!({
        "id": instance.instance_id,
        "plan_id": instance.plan_id,
        "organization_guid": instance.organization_guid,
        "space_guid": instance.space_guid,
        "parameters": instance.parameters,
        "context": instance.context,
    });
    context["binding"] = json!({
        "id": record.binding_id,
        "plan_id": record.plan_id,
        "app_guid": record.app_guid,
        "parameters": record.parameters,
        "context": record.context,
    });
    context["cluster"] = json!({ "name": record.cluster });
    context
}

/// A binding of `shape` with placeholder values and an instance without parameters.
pub fn sample_context(shape: SampleShape) -> Value {
    let mut credentials = json!({
        "endpoints": ["https://etcd.example.com:2379"],
        "host": "etcd.example.com",
        "port": 2379,
        "username": "etcd-broker.sample-instance.sample-binding",
        "prefix": "/service_instances/sample-instance/",
        "tls": { "enabled": true, "ca_certificate": "-----BEGIN CERTIFICATE-----\n" },
    });
    if shape.password && !shape.by_reference {
        credentials["password"] = json!("sample-password");
        credentials["uri"] = json!(
            "https://etcd-broker.sample-instance.sample-binding:sample-password@etcd.example.com:2379/service_instances/sample-instance/"
        );
    }
    if shape.certificate {
        credentials["cert"] = json!("-----BEGIN CERTIFICATE-----\n");
        credentials["ca_certificate"] = json!("-----BEGIN CERTIFICATE-----\n");
        if shape.password {
            credentials["certificate_endpoints"] = json!(["https://etcd.example.com:2379"]);
        }
        if !shape.by_reference {
            credentials["key"] = json!("-----BEGIN PRIVATE KEY-----\n");
        }
    }
    if shape.by_reference {
        credentials["credentials_reference"] = json!({
            "store": "openbao",
            "address": "https://bao.example.com:8200",
            "mount": "secret",
            "path": "etcd-broker/sample-instance/sample-binding",
            "read_path": "secret/data/etcd-broker/sample-instance/sample-binding",
            "fields": ["password"],
        });
    }
    let record = BindingRecord {
        instance_id: "sample-instance".into(),
        binding_id: "sample-binding".into(),
        plan_id: "sample-plan".into(),
        cluster: "sample-cluster".into(),
        ..Default::default()
    };
    let instance = InstanceRecord {
        instance_id: "sample-instance".into(),
        service_id: "sample-service".into(),
        plan_id: "sample-plan".into(),
        cluster: "sample-cluster".into(),
        organization_guid: "sample-organization".into(),
        space_guid: "sample-space".into(),
        context: Default::default(),
        parameters: Default::default(),
        data_keys: Vec::new(),
        quotas: Default::default(),
        state: Default::default(),
        created_at: 0,
        updated_at: 0,
    };
    context(&credentials, &record, &instance)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<CredentialTemplates, (String, String)> {
        let shape = SampleShape { password: true, ..Default::default() };
        CredentialTemplates::new(&[("p1".into(), text.into())].into(), &[("p1".into(), shape)].into())
    }

    #[test]
    fn a_template_shapes_the_credentials_with_values_escaped_for_json() {
        let templates = compile(
            r#"{"url": "etcd://{{username}}:{{password}}@{{host}}:{{port}}{{prefix}}", "hosts": {{json endpoints}},
               "team": "{{#if instance.parameters.team}}{{instance.parameters.team}}{{else}}none{{/if}}"}"#,
        )
        .unwrap();
        assert!(templates.has("p1") && !templates.has("p2"));
        let mut context = sample_context(SampleShape { password: true, ..Default::default() });
        context["instance"]["parameters"] = json!({ "team": "a \"quoted\" name" });
        let rendered = templates.render("p1", &context).unwrap();
        assert_eq!(rendered["team"], "a \"quoted\" name");
        assert_eq!(rendered["hosts"], json!(["https://etcd.example.com:2379"]));
        assert_eq!(
            rendered["url"],
            "etcd://etcd-broker.sample-instance.sample-binding:sample-password@etcd.example.com:2379/service_instances/sample-instance/"
        );
    }

    #[test]
    fn templates_that_do_not_render_or_make_no_json_object_are_refused_naming_the_plan() {
        for (text, why) in [
            ("{{#if}", "is not a handlebars template"),
            (r#"{"a": "{{no_such_field}}"}"#, "does not render"),
            (r#"{"a": {{password}}}"#, "renders invalid JSON"),
            ("[1, 2]", "not an object"),
            (r#"{"a": "{{log password}}"}"#, "does not render"),
            (r#"{"a": "{{> a_file}}"}"#, "does not render"),
        ] {
            let (plan, message) = compile(text).unwrap_err();
            assert_eq!(plan, "p1");
            assert!(message.contains(why), "{text}: {message}");
            assert!(!message.contains("sample-password"), "{message}");
        }
    }
}
