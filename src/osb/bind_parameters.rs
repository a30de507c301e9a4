//! Bind parameters (`{"access": "read" | "readwrite", "key_prefix": "config/"}`): the JSON
//! schema a plan that takes them publishes in the catalog, and the check of a bind request
//! against that same document.
//!
//! One schema document is both what platforms see (`schemas.service_binding.create.parameters`)
//! and what the broker enforces (with the `jsonschema` crate): a hand-written second check
//! would drift from what the catalog promises. The typed [`BindParameters`] are read from the
//! parameters only after they passed the schema.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::BrokerError;
use super::model::JsonObject;

/// What a binding's role may do on its prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindAccess {
    /// Range and watch only: no put, delete, or lease attached to a key (a put).
    Read,
    /// Everything etcd's RBAC permits on the prefix (today's bindings).
    #[default]
    ReadWrite,
}

impl BindAccess {
    /// The spelling of the parameter and the records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::ReadWrite => "readwrite",
        }
    }
}

/// Bind parameters after the schema accepted them; the defaults are today's binding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct BindParameters {
    #[serde(default)]
    pub access: BindAccess,
    /// Relative to the instance's prefix; ends with '/' (the schema's pattern). `None`: the
    /// whole instance.
    #[serde(default)]
    pub key_prefix: Option<String>,
}

impl BindParameters {
    /// The keys the binding may reach: `instance_prefix` (which ends with '/'), followed by
    /// `key_prefix` when there is one.
    pub fn prefix_in(&self, instance_prefix: &str) -> String {
        format!("{instance_prefix}{}", self.key_prefix.as_deref().unwrap_or_default())
    }

    /// The role's permission in words, as `etcd-broker-ops names` and the docs spell it
    /// (`read prefix /service_instances/i1/config/`).
    pub fn describe_permission(&self, instance_prefix: &str) -> String {
        format!("{} prefix {}", self.access.as_str(), self.prefix_in(instance_prefix))
    }
}

/// The rule for `key_prefix`, as the schema's pattern: one or more segments, each ending with
/// '/', made of letters, digits, '.', '_', '-' and not starting with '.' (so no "." or ".."
/// segment, no empty segment, no leading '/'). The trailing '/' is the instance prefix's rule:
/// `config/` must not also cover `config-secrets/`.
const KEY_PREFIX_PATTERN: &str = "^([A-Za-z0-9_-][A-Za-z0-9._-]*/)+$";

/// The longest `key_prefix`: keeps the granted prefix well inside etcd's key size.
const KEY_PREFIX_MAX: u64 = 256;

/// The schema document of the bind parameters (JSON schema draft 4, as OSB asks).
pub static SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    json!({
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "access": {
                "description": "read: the binding may only read and watch; readwrite (default): it may also put, delete and attach leases",
                "type": "string",
                "enum": ["read", "readwrite"],
                "default": "readwrite"
            },
            "key_prefix": {
                "description": "limit the binding to the keys under this prefix of the instance: segments of letters, digits, '.', '_' and '-', each ending with '/' and not starting with '.', e.g. \"config/\" or \"app/config/\"",
                "type": "string",
                "pattern": KEY_PREFIX_PATTERN,
                "maxLength": KEY_PREFIX_MAX
            }
        }
    })
});

static VALIDATOR: LazyLock<jsonschema::Validator> =
    LazyLock::new(|| jsonschema::draft4::new(&SCHEMA).expect("the bind parameters schema compiles"));

/// The catalog's `schemas` object of a plan that takes bind parameters.
pub fn plan_schemas() -> Value {
    json!({ "service_binding": { "create": { "parameters": &*SCHEMA } } })
}

/// Checks `parameters` against [`SCHEMA`]; a 400 naming the first offending field.
pub fn parse(parameters: &JsonObject) -> Result<BindParameters, BrokerError> {
    let instance = Value::Object(parameters.clone());
    if let Some(error) = VALIDATOR.iter_errors(&instance).next() {
        return Err(BrokerError::BadRequest(describe(&error)));
    }
    serde_json::from_value(instance)
        .map_err(|e| BrokerError::BadRequest(format!("invalid bind parameters: {e}")))
}

/// A schema violation in words: the field, what is wrong, and the schema's description of it.
fn describe(error: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind;
    if let ValidationErrorKind::AdditionalProperties { unexpected } = &error.kind {
        let known: Vec<&String> =
            SCHEMA["properties"].as_object().map(|p| p.keys().collect()).unwrap_or_default();
        let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
        return format!(
            "unknown bind parameter '{}' (this plan takes: {})",
            unexpected.join("', '"),
            known.join(", ")
        );
    }
    let path = error.instance_path.as_str();
    let field = path.trim_start_matches('/');
    if field.is_empty() {
        return format!("invalid bind parameters: {error}");
    }
    let hint = SCHEMA["properties"][field]["description"].as_str().unwrap_or_default();
    format!("invalid bind parameter '{field}': {error}; {hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(value: Value) -> JsonObject {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn defaults_are_todays_binding() {
        assert_eq!(parse(&JsonObject::new()), Ok(BindParameters::default()));
        assert_eq!(BindParameters::default().access, BindAccess::ReadWrite);
    }

    #[test]
    fn accepted_parameters_are_typed() {
        let parsed = parse(&params(json!({"access": "read", "key_prefix": "app/config/"}))).unwrap();
        assert_eq!(parsed.access, BindAccess::Read);
        assert_eq!(parsed.key_prefix.as_deref(), Some("app/config/"));
        for ok in ["config/", "a/", "_x/", "v1.2/x-y/", "-/"] {
            assert!(parse(&params(json!({"key_prefix": ok}))).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (json!({"access": "write"}), "'access'"),
            (json!({"access": 1}), "'access'"),
            (json!({"key_prefix": 7}), "'key_prefix'"),
            (json!({"colour": "red"}), "unknown bind parameter 'colour'"),
        ];
        for (value, needle) in cases {
            let BrokerError::BadRequest(message) = parse(&params(value.clone())).unwrap_err() else {
                panic!("not a 400: {value}")
            };
            assert!(message.contains(needle), "{value}: {message}");
        }
    }

    #[test]
    fn key_prefix_follows_the_trailing_slash_rule() {
        let long = format!("{}/", "a".repeat(KEY_PREFIX_MAX as usize));
        for bad in
            ["", "config", "/config/", "config//", "./", "../", "a/../", ".hidden/", "a b/", "ä/", &long]
        {
            let refused = parse(&params(json!({"key_prefix": bad})));
            match refused {
                Err(BrokerError::BadRequest(message)) => {
                    assert!(message.starts_with("invalid bind parameter 'key_prefix'"), "{bad}: {message}")
                }
                other => panic!("{bad:?} accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn the_catalog_publishes_the_schema_the_broker_checks() {
        let schemas = plan_schemas();
        assert_eq!(schemas["service_binding"]["create"]["parameters"], *SCHEMA);
        assert_eq!(SCHEMA["$schema"], "http://json-schema.org/draft-04/schema#");
    }
}
