//! What the BOSH director does before it runs a job's templates, offline: pick the instance
//! group and job, resolve the job's properties against its spec, wire its links and describe
//! the instance; then what the job's one ERB template does with that (`properties.json`).
//!
//! Property resolution follows bosh-template's `copy_property`: every property the spec
//! declares gets the manifest's value, or the spec default when the manifest has none or an
//! explicit `null`, or `null`; properties the spec does not declare are dropped. The manifest
//! values are the job's `properties`, or, when a job has none, the deprecated top-level
//! `properties` merged with the instance group's.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::yaml;

/// A job's `spec` file, as far as rendering needs it.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Declared property names (dotted) and their defaults.
    pub properties: BTreeMap<String, Option<Value>>,
    /// Consumed links: name and whether it is optional.
    pub consumes: Vec<(String, bool)>,
}

impl JobSpec {
    /// Reads `<release_dir>/jobs/<job>/spec`.
    pub fn load(release_dir: &Path, job: &str) -> Result<JobSpec, String> {
        let path = release_dir.join("jobs").join(job).join("spec");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read the spec of job '{job}' at {}: {e}", path.display()))?;
        Self::parse(&text, &format!("job spec {}", path.display()))
    }

    /// Parses spec text; `what` names it in errors.
    pub fn parse(text: &str, what: &str) -> Result<JobSpec, String> {
        let doc = yaml::parse(text, what)?;
        let mut properties = BTreeMap::new();
        match doc.get("properties") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (name, definition) in map {
                    let default = definition.get("default").filter(|v| !v.is_null()).cloned();
                    properties.insert(name.clone(), default);
                }
            }
            Some(_) => return Err(format!("{what}: 'properties' is not a map")),
        }
        let mut consumes = Vec::new();
        for link in doc.get("consumes").and_then(Value::as_array).into_iter().flatten() {
            let name = link
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{what}: a consumed link has no name"))?;
            consumes.push((name.to_owned(), link.get("optional").and_then(Value::as_bool).unwrap_or(false)));
        }
        Ok(JobSpec { properties, consumes })
    }
}

fn names_of(items: &[Value]) -> String {
    let names: Vec<&str> = items.iter().filter_map(|i| i.get("name").and_then(Value::as_str)).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// The instance group called `name` (exactly one).
pub fn instance_group<'a>(manifest: &'a Value, name: &str) -> Result<&'a Value, String> {
    let groups = manifest.get("instance_groups").and_then(Value::as_array).ok_or(
        "the manifest has no instance_groups list (only BOSH v2 manifests with instance_groups are supported)",
    )?;
    let found: Vec<&Value> =
        groups.iter().filter(|g| g.get("name").and_then(Value::as_str) == Some(name)).collect();
    match found.as_slice() {
        [group] => Ok(group),
        [] => Err(format!(
            "instance group '{name}' is not in the manifest (instance groups: {})",
            names_of(groups)
        )),
        _ => Err(format!("instance group '{name}' appears {} times in the manifest", found.len())),
    }
}

/// The job called `name` in `group` (exactly one).
pub fn job<'a>(group: &'a Value, group_name: &str, name: &str) -> Result<&'a Value, String> {
    let jobs = group.get("jobs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let found: Vec<&Value> =
        jobs.iter().filter(|j| j.get("name").and_then(Value::as_str) == Some(name)).collect();
    match found.as_slice() {
        [job] => Ok(job),
        [] => Err(format!("job '{name}' is not in instance group '{group_name}' (jobs: {})", names_of(jobs))),
        _ => Err(format!("job '{name}' appears {} times in instance group '{group_name}'", found.len())),
    }
}

/// The property values the manifest gives the job (see the module doc).
pub fn manifest_properties(manifest: &Value, group: &Value, job: &Value) -> Value {
    match job.get("properties") {
        Some(properties) if !properties.is_null() => properties.clone(),
        _ => {
            let mut merged =
                manifest.get("properties").filter(|p| p.is_object()).cloned().unwrap_or(json!({}));
            if let Some(group_properties) = group.get("properties").filter(|p| p.is_object()) {
                deep_merge(&mut merged, group_properties);
            }
            merged
        }
    }
}

/// Ruby's `recursive_merge`: maps merge key by key, anything else is replaced.
fn deep_merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                match into.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        deep_merge(existing, value)
                    }
                    _ => {
                        into.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (into, from) => *into = from.clone(),
    }
}

/// Every declared property with its resolved value (`null` when neither the manifest nor the
/// spec gives one), nested by the dots in its name.
pub fn resolve_properties(spec: &JobSpec, source: &Value) -> Result<Value, String> {
    let mut resolved = Map::new();
    for (name, default) in &spec.properties {
        let mut value = Some(source);
        for key in name.split('.') {
            match value {
                Some(Value::Object(map)) => value = map.get(key).filter(|v| !v.is_null()),
                Some(other) => {
                    return Err(format!(
                        "Property '{name}' expects a hash, but received {}",
                        super::kind_of(other)
                    ))
                }
                None => break,
            }
        }
        let value = value.cloned().or_else(|| default.clone()).unwrap_or(Value::Null);
        set_path(&mut resolved, name, value);
    }
    Ok(Value::Object(resolved))
}

fn set_path(root: &mut Map<String, Value>, name: &str, value: Value) {
    let mut keys: Vec<&str> = name.split('.').collect();
    let leaf = keys.pop().unwrap_or_default();
    let mut map = root;
    for key in keys {
        let entry = map.entry(key.to_owned()).or_insert_with(|| json!({}));
        if !entry.is_object() {
            *entry = json!({});
        }
        map = entry.as_object_mut().expect("just made a map");
    }
    map.insert(leaf.to_owned(), value);
}

/// Dotted names the manifest sets that the spec does not declare (BOSH silently drops them;
/// usually a typo).
pub fn undeclared_properties(spec: &JobSpec, source: &Value) -> Vec<String> {
    let mut found = Vec::new();
    walk_undeclared(spec, source, "", &mut found);
    found
}

fn walk_undeclared(spec: &JobSpec, node: &Value, path: &str, found: &mut Vec<String>) {
    let Value::Object(map) = node else { return };
    for (key, value) in map {
        let name = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        if spec.properties.contains_key(&name) {
            continue;
        }
        let prefix = format!("{name}.");
        if spec.properties.keys().any(|declared| declared.starts_with(&prefix)) && value.is_object() {
            walk_undeclared(spec, value, &name, found);
        } else {
            found.push(name);
        }
    }
}

/// The links the job gets, by name: `{instances: [...], properties: {...}}` each.
///
/// Offline there is no director to find providers, so a link comes from `overrides`
/// (`--link name=FILE`) or from a manual link in the manifest (`consumes: {name: {instances:
/// [...], properties: {...}}}`); `consumes: {name: nil}` blocks it; a link wired with `from:`
/// needs an override. An optional link that is not wired is absent.
pub fn resolve_links(
    spec: &JobSpec,
    job: &Value,
    job_name: &str,
    overrides: &BTreeMap<String, Value>,
) -> Result<Map<String, Value>, String> {
    for name in overrides.keys() {
        if !spec.consumes.iter().any(|(consumed, _)| consumed == name) {
            return Err(format!("--link {name}: job '{job_name}' consumes no link called '{name}'"));
        }
    }
    let mut links = Map::new();
    for (name, optional) in &spec.consumes {
        let wiring = job.get("consumes").and_then(|c| c.get(name));
        let data = match (overrides.get(name), wiring) {
            (Some(data), _) => Some(link_data(data, name)?),
            (None, Some(Value::Null)) => None,
            (None, Some(Value::String(s))) if s == "nil" => None,
            (None, Some(w)) if w.get("instances").is_some() || w.get("properties").is_some() => Some(link_data(w, name)?),
            (None, Some(w)) => {
                let from = w.get("from").and_then(Value::as_str).unwrap_or("another deployment");
                return Err(format!(
                    "link '{name}' of job '{job_name}' comes from '{from}', which offline rendering cannot follow; \
                     give its data with --link {name}=FILE (YAML: instances: [{{address: ...}}], properties: {{...}})"
                ));
            }
            (None, None) if *optional => None,
            (None, None) => {
                return Err(format!(
                    "job '{job_name}' needs link '{name}', which is not wired in the manifest; give it with --link {name}=FILE"
                ))
            }
        };
        if let Some(data) = data {
            links.insert(name.clone(), data);
        }
    }
    Ok(links)
}

/// A link's data as the director hands it to templates: every instance with its six fields
/// (`null` where unknown) and the link's properties.
fn link_data(source: &Value, name: &str) -> Result<Value, String> {
    let instances = match source.get("instances") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Err(format!("link '{name}': instances must be a list")),
    };
    let instances: Vec<Value> = instances
        .iter()
        .map(|i| {
            let field = |k: &str| i.get(k).cloned().unwrap_or(Value::Null);
            json!({
                "name": field("name"), "index": field("index"), "id": field("id"), "az": field("az"),
                "address": field("address"), "bootstrap": field("bootstrap"),
            })
        })
        .collect();
    let properties = match source.get("properties") {
        None | Some(Value::Null) => json!({}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err(format!("link '{name}': properties must be a map")),
    };
    Ok(json!({ "instances": instances, "properties": properties }))
}

/// The instance the offline render pretends to be (BOSH's `spec`).
pub struct Instance<'a> {
    pub index: u64,
    pub address: Option<&'a str>,
}

/// BOSH's `spec` for that instance: address, index, id, az, deployment, name, bootstrap.
pub fn instance_spec(
    manifest: &Value,
    group: &Value,
    group_name: &str,
    instance: &Instance<'_>,
) -> Result<Value, String> {
    let deployment = manifest
        .get("name")
        .and_then(Value::as_str)
        .ok_or("the manifest has no deployment name (top-level 'name')")?;
    if let Some(count) = group.get("instances").and_then(Value::as_u64) {
        if instance.index >= count {
            return Err(format!(
                "--index {} is out of range: instance group '{group_name}' has {count} instance(s)",
                instance.index
            ));
        }
    }
    let azs = group.get("azs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let az = if azs.is_empty() { Value::Null } else { azs[(instance.index as usize) % azs.len()].clone() };
    let address = match instance.address {
        Some(address) => address.to_owned(),
        None => format!("{group_name}-{}.example.internal", instance.index),
    };
    Ok(json!({
        "address": address,
        "index": instance.index,
        "id": format!("00000000-0000-4000-8000-{:012}", instance.index),
        "az": az,
        "deployment": deployment,
        "name": group_name,
        "bootstrap": instance.index == 0,
    }))
}

/// What the director hands the job's templates: resolved properties (with `null`s), links,
/// spec. The ERB test harness (`ops/tests/erb/render_erb.rb`) evaluates the ERB on this.
pub fn template_context(properties: Value, links: Map<String, Value>, spec: Value) -> Value {
    json!({ "properties": properties, "links": links, "spec": spec })
}

/// What `jobs/etcd-broker/templates/properties.json.erb` writes for `context`: every declared
/// property that is not `null`, the `etcd` link's instances and port (2379 by default), and
/// the instance spec. The ERB test checks that the two agree.
pub fn properties_json(spec: &JobSpec, context: &Value) -> Value {
    let mut properties = Map::new();
    for name in spec.properties.keys() {
        let value =
            name.split('.').try_fold(&context["properties"], |v, key| v.get(key)).filter(|v| !v.is_null());
        if let Some(value) = value {
            set_path(&mut properties, name, value.clone());
        }
    }
    let mut links = Map::new();
    if let Some(etcd) = context["links"].get("etcd") {
        let port = etcd["properties"].get("port").filter(|p| !p.is_null()).cloned().unwrap_or(json!(2379));
        let instances: Vec<Value> = etcd["instances"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|i| {
                json!({
                    "address": i["address"], "index": i["index"], "az": i["az"], "id": i["id"],
                    "name": i["name"], "bootstrap": i["bootstrap"],
                })
            })
            .collect();
        links.insert("etcd".into(), json!({ "instances": instances, "properties": { "port": port } }));
    }
    let s = &context["spec"];
    json!({
        "properties": properties,
        "links": links,
        "spec": {
            "address": s["address"], "index": s["index"], "id": s["id"], "az": s["az"],
            "deployment": s["deployment"], "name": s["name"], "bootstrap": s["bootstrap"],
        },
    })
}

#[cfg(test)]
mod tests;
