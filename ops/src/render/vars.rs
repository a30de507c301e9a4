//! BOSH variables: `((name))` and `((name.key))` in the manifest, filled from `-v`, `--var-file`
//! and `-l`, with the BOSH CLI's rules, so offline rendering sees the values `bosh deploy` would.
//!
//! - A string that is exactly one `((name))` takes the variable's value with its type (a list, a
//!   map, a number); inside a longer string only strings and integers may be spliced in.
//! - `((name.key.0))` looks inside the value (a certificate's `ca`, `certificate`,
//!   `private_key`); `((!name))` is the old spelling of `((name))`.
//! - Precedence: `-l` files in order (later wins), then `--var-file`, then `-v`.
//! - Every missing variable is collected and reported in one error. Values never appear in
//!   messages.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Map, Value};

use super::{patch, yaml};

/// The variables given on the command line.
#[derive(Debug, Default)]
pub struct Vars {
    values: BTreeMap<String, Value>,
}

impl Vars {
    /// Collects `-l` files, `--var-file name=path` and `-v name=value` flags.
    pub fn from_flags(
        vars_files: &[impl AsRef<Path>],
        var_files: &[String],
        var_kvs: &[String],
    ) -> Result<Vars, String> {
        let mut values = BTreeMap::new();
        for file in vars_files {
            let file = file.as_ref();
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read vars file {}: {e}", file.display()))?;
            match yaml::parse(&text, &format!("vars file {}", file.display()))? {
                Value::Null => {}
                Value::Object(map) => values.extend(map),
                _ => {
                    return Err(format!(
                        "vars file {} is not a map of variable names to values",
                        file.display()
                    ))
                }
            }
        }
        for flag in var_files {
            let (name, path) = split_flag(flag, "--var-file", "path")?;
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--var-file {name}: cannot read {path}: {e}"))?;
            values.insert(name.to_owned(), Value::String(text));
        }
        for flag in var_kvs {
            let (name, raw) = split_flag(flag, "--var", "value")?;
            values.insert(name.to_owned(), flag_value(name, raw)?);
        }
        Ok(Vars { values })
    }

    /// Whether a variable of this name was given (the whole variable, not a key of it).
    pub fn supplies(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// Variables from a map, for tests.
    #[cfg(test)]
    pub fn from_map(values: BTreeMap<String, Value>) -> Vars {
        Vars { values }
    }

    fn get(&self, name: &str) -> Result<Option<Value>, String> {
        let mut parts = name.split('.');
        let base = parts.next().unwrap_or_default();
        let Some(value) = self.values.get(base) else { return Ok(None) };
        let keys: Vec<&str> = parts.collect();
        if keys.is_empty() {
            return Ok(Some(value.clone()));
        }
        patch::find_in_variable(value, &keys).map(Some).map_err(|e| format!("Finding variable '{name}': {e}"))
    }
}

fn split_flag<'a>(flag: &'a str, option: &str, what: &str) -> Result<(&'a str, &'a str), String> {
    let Some((name, value)) = flag.split_once('=') else {
        return Err(format!("{option} '{}' must look like name={what}", flag_name(flag)));
    };
    if name.is_empty() {
        return Err(format!("{option} '={what}' needs a non-empty name"));
    }
    if value.is_empty() {
        return Err(format!("{option} '{name}' needs a non-empty {what}"));
    }
    Ok((name, value))
}

/// The part of a flag that is safe to print (never the value).
fn flag_name(flag: &str) -> &str {
    flag.split_once('=').map_or(flag, |(name, _)| name)
}

/// `-v` values are YAML (`-v port=8080` is a number, `-v 'urls=[a, b]'` a list); a plain
/// string is taken as written, less one pair of wrapping quotes.
fn flag_value(name: &str, raw: &str) -> Result<Value, String> {
    let parsed = yaml::parse(raw, &format!("--var {name}"))
        .map_err(|_| format!("--var {name}: the value is not valid YAML"))?;
    Ok(match parsed {
        Value::String(_) => {
            let quoted = raw.len() >= 2
                && ((raw.starts_with('"') && raw.ends_with('"'))
                    || (raw.starts_with('\'') && raw.ends_with('\'')));
            Value::String(if quoted { raw[1..raw.len() - 1].to_owned() } else { raw.to_owned() })
        }
        other => other,
    })
}

/// One `((...))` in a string: its byte span and the variable name (without `!`).
struct Reference {
    start: usize,
    end: usize,
    name: String,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/' | '.') || c.is_alphabetic()
}

/// Finds `(( ?!?[-/.\w\pL]+ ?))` like the BOSH CLI's regular expression, left to right.
fn references(text: &str) -> Vec<Reference> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find("((") {
        let start = from + offset;
        match reference_at(text, start) {
            Some(reference) => {
                from = reference.end;
                found.push(reference);
            }
            None => from = start + 1,
        }
    }
    found
}

fn reference_at(text: &str, start: usize) -> Option<Reference> {
    let mut rest = &text[start + 2..];
    rest = rest.strip_prefix(' ').unwrap_or(rest);
    rest = rest.strip_prefix('!').unwrap_or(rest);
    let name_len: usize = rest.chars().take_while(|&c| is_name_char(c)).map(char::len_utf8).sum();
    if name_len == 0 {
        return None;
    }
    let name = rest[..name_len].to_owned();
    let mut after = &rest[name_len..];
    after = after.strip_prefix(' ').unwrap_or(after);
    let after = after.strip_prefix("))")?;
    Some(Reference { start, end: text.len() - after.len(), name })
}

/// Replaces every `((...))` in `node` (keys included) from `vars`; names that no variable
/// supplies are added to `missing` and left in place.
pub fn interpolate(node: &mut Value, vars: &Vars, missing: &mut BTreeSet<String>) -> Result<(), String> {
    match node {
        Value::Array(items) => items.iter_mut().try_for_each(|item| interpolate(item, vars, missing)),
        Value::Object(map) => {
            let old = std::mem::take(map);
            let mut new = Map::new();
            for (key, mut value) in old {
                interpolate(&mut value, vars, missing)?;
                let key = match interpolate_string(&key, vars, missing)? {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    _ => return Err(format!("a map key '{key}' must interpolate to a string or a number")),
                };
                new.insert(key, value);
            }
            *map = new;
            Ok(())
        }
        Value::String(text) => {
            *node = interpolate_string(text, vars, missing)?;
            Ok(())
        }
        _ => Ok(()),
    }
}

fn interpolate_string(text: &str, vars: &Vars, missing: &mut BTreeSet<String>) -> Result<Value, String> {
    let refs = references(text);
    if refs.is_empty() {
        return Ok(Value::String(text.to_owned()));
    }
    // A whole-string reference keeps the value's type.
    if refs.len() == 1 && refs[0].start == 0 && refs[0].end == text.len() {
        return match vars.get(&refs[0].name)? {
            Some(value) => Ok(value),
            None => {
                missing.insert(base_name(&refs[0].name));
                Ok(Value::String(text.to_owned()))
            }
        };
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for reference in &refs {
        out += &text[at..reference.start];
        at = reference.end;
        match vars.get(&reference.name)? {
            Some(Value::String(s)) => out += &s,
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => out += &n.to_string(),
            Some(_) => {
                return Err(format!(
                "variable '{}' is used inside a string, where only strings and integers can be interpolated",
                reference.name
            ))
            }
            None => {
                missing.insert(base_name(&reference.name));
                out += &text[reference.start..reference.end];
            }
        }
    }
    out += &text[at..];
    Ok(Value::String(out))
}

fn base_name(name: &str) -> String {
    name.split('.').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> Vars {
        Vars::from_map(
            [
                ("password".to_owned(), json!("s3cret")),
                ("port".to_owned(), json!(2379)),
                ("urls".to_owned(), json!(["https://a:1", "https://b:1"])),
                ("tls".to_owned(), json!({ "ca": "CA", "certificate": "CERT" })),
                ("ratio".to_owned(), json!(0.5)),
            ]
            .into_iter()
            .collect(),
        )
    }

    fn run(mut doc: Value) -> (Result<Value, String>, BTreeSet<String>) {
        let mut missing = BTreeSet::new();
        let result = interpolate(&mut doc, &vars(), &mut missing).map(|()| doc);
        (result, missing)
    }

    #[test]
    fn whole_values_keep_their_type_and_parts_are_spliced() {
        let (doc, missing) = run(json!({
            "a": "((password))", "b": "(( port ))", "c": "((urls))", "d": "((tls.ca))",
            "e": "https://host:((port))/((password))", "f": "((!password))", "g": ["((tls.certificate))"],
            "((password))": "key too", "h": "(((password)))", "i": "no ((x y)) or (()) here"
        }));
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(
            doc.unwrap(),
            json!({
                "a": "s3cret", "b": 2379, "c": ["https://a:1", "https://b:1"], "d": "CA",
                "e": "https://host:2379/s3cret", "f": "s3cret", "g": ["CERT"], "s3cret": "key too",
                "h": "(s3cret)", "i": "no ((x y)) or (()) here"
            })
        );
    }

    #[test]
    fn every_missing_variable_is_collected() {
        let (doc, missing) = run(json!({ "a": "((nope))", "b": "x((other.key))y", "c": "((password))" }));
        assert_eq!(missing.into_iter().collect::<Vec<_>>(), ["nope", "other"]);
        assert_eq!(doc.unwrap()["a"], "((nope))");
    }

    #[test]
    fn bad_uses_are_errors_without_values() {
        let (doc, _) = run(json!({ "a": "x((urls))" }));
        let err = doc.unwrap_err();
        assert!(err.contains("'urls'") && !err.contains("https"), "{err}");
        let (doc, _) = run(json!({ "a": "x((ratio))" }));
        assert!(doc.is_err());
        let (doc, _) = run(json!({ "a": "((tls.private_key))" }));
        let err = doc.unwrap_err();
        assert!(err.contains("Finding variable 'tls.private_key'") && !err.contains("CERT"), "{err}");
    }

    #[test]
    fn flags_follow_the_bosh_cli() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vars.yml");
        std::fs::write(&file, "a: from-file\nb: from-file\nc: from-file\n").unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, "-----BEGIN-----\n").unwrap();
        let vars = Vars::from_flags(
            &[&file],
            &[format!("b={}", pem.display())],
            &["c=8080".into(), "d='quoted'".into(), "e=[x, y]".into(), "f=a=b".into()],
        )
        .unwrap();
        assert_eq!(vars.get("a").unwrap(), Some(json!("from-file")));
        assert_eq!(vars.get("b").unwrap(), Some(json!("-----BEGIN-----\n")));
        assert_eq!(vars.get("c").unwrap(), Some(json!(8080)));
        assert_eq!(vars.get("d").unwrap(), Some(json!("quoted")));
        assert_eq!(vars.get("e").unwrap(), Some(json!(["x", "y"])));
        assert_eq!(vars.get("f").unwrap(), Some(json!("a=b")));
        let none: &[&Path] = &[];
        for (flag, expected) in [("x", "name=value"), ("=v", "non-empty name"), ("x=", "non-empty value")] {
            let err = Vars::from_flags(none, &[], &[flag.to_owned()]).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        let err = Vars::from_flags(none, &[], &["secret=[unclosed".to_owned()]).unwrap_err();
        assert!(!err.contains("unclosed"), "{err}");
    }
}
