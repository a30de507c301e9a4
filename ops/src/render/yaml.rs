//! YAML files (manifests, ops files, vars files, job specs) as JSON values.
//!
//! BOSH works on YAML maps with scalar keys; everything downstream here (ops, interpolation,
//! property resolution, the template data) is JSON, so the tree is converted once, at the
//! edge. Parsing is serde_norway's (a maintained fork of serde_yaml), which follows YAML 1.2:
//! `yes`/`no`/`on`/`off` stay strings, where the BOSH CLI (YAML 1.1) would read booleans.

use serde_json::{Map, Number, Value};

/// Parses YAML text; `what` names the file in errors ("manifest m.yml"). Merge keys (`<<`) are
/// applied, tags are dropped, scalar keys become strings; an empty document is `null`.
pub fn parse(text: &str, what: &str) -> Result<Value, String> {
    let mut yaml: serde_norway::Value =
        serde_norway::from_str(text).map_err(|e| format!("{what} is not valid YAML: {e}"))?;
    yaml.apply_merge().map_err(|e| format!("{what} is not valid YAML: {e}"))?;
    to_json(yaml).map_err(|e| format!("{what}: {e}"))
}

fn to_json(yaml: serde_norway::Value) -> Result<Value, String> {
    use serde_norway::Value as Y;
    Ok(match yaml {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => Value::Number(number(&n)?),
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?),
        Y::Mapping(mapping) => {
            let mut map = Map::new();
            for (key, value) in mapping {
                map.insert(key_string(key)?, to_json(value)?);
            }
            Value::Object(map)
        }
        Y::Tagged(tagged) => to_json(tagged.value)?,
    })
}

fn number(n: &serde_norway::Number) -> Result<Number, String> {
    if let Some(i) = n.as_i64() {
        return Ok(i.into());
    }
    if let Some(u) = n.as_u64() {
        return Ok(u.into());
    }
    n.as_f64()
        .and_then(Number::from_f64)
        .ok_or_else(|| format!("the number {n} (infinite or not a number) has no JSON form"))
}

/// Ruby's `to_json` writes every key as a string; so does this.
fn key_string(key: serde_norway::Value) -> Result<String, String> {
    use serde_norway::Value as Y;
    match key {
        Y::String(s) => Ok(s),
        Y::Number(n) => Ok(n.to_string()),
        Y::Bool(b) => Ok(b.to_string()),
        Y::Null => Ok(String::new()),
        Y::Tagged(tagged) => key_string(tagged.value),
        Y::Sequence(_) | Y::Mapping(_) => Err("a map key is a list or a map; BOSH needs scalar keys".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn converts_scalars_keys_merges_and_tags() {
        let value = parse(
            "base: &b {x: 1}\nm:\n  <<: *b\n  y: 2.5\n1: one\ntrue: t\nt: !custom [a, ~]\nempty:\n",
            "test",
        )
        .unwrap();
        assert_eq!(
            value,
            json!({"base": {"x": 1}, "m": {"x": 1, "y": 2.5}, "1": "one", "true": "t", "t": ["a", null], "empty": null})
        );
        assert_eq!(parse("", "empty").unwrap(), Value::Null);
        assert_eq!(parse("enabled: yes", "yaml 1.2").unwrap(), json!({"enabled": "yes"}));
    }

    #[test]
    fn bad_yaml_names_the_file_and_the_place() {
        let err = parse("a: [1, 2\nb: c", "manifest m.yml").unwrap_err();
        assert!(err.starts_with("manifest m.yml is not valid YAML: "), "{err}");
        assert!(err.contains("line"), "{err}");
        assert!(parse("? [a]\n: b", "m").unwrap_err().contains("scalar keys"));
        assert!(parse("x: .inf", "m").unwrap_err().contains("no JSON form"));
        assert!(parse("a: 1\na: 2", "m").unwrap_err().contains("not valid YAML"));
    }
}
