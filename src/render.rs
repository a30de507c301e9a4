//! BOSH-style rendering of the broker's TOML config from job properties.
//!
//! BOSH resolves the job's properties (spec defaults + manifest); the job's only ERB template
//! dumps them, the links and the instance spec as JSON (`properties.json`); the broker renders
//! `templates/etcd-broker.toml.hbs` from that JSON with handlebars helpers that mirror BOSH's
//! ERB API, so every value is written as valid TOML and a missing property fails the way BOSH
//! does (`Can't find property 'a.b'`). See `docs/rendering.md`.
//!
//! Helpers (values are written as TOML when used on their own, and are plain JSON inside
//! sub-expressions):
//! - `p "a.b" [default]`: a property by dotted path;
//! - `if_p "a.b" ...` (block, with `else`): runs when every named property is present, even `false`;
//! - `spec "address"`: a field of the instance spec;
//! - `link "etcd" "properties.port"`, `if_link "etcd"` (block), `link_urls "etcd" "https"`
//!   (`https://<address>:<properties.port>` for each instance of the link);
//! - `default_endpoints clusters "main" urls`: `clusters` with `main.endpoints` set to `urls`
//!   where it has none;
//! - `concat "https://" (spec "address") ":" (p "port")`: one string of strings and numbers
//!   (a URL or an address made of several properties);
//! - `toml_section "name" value`: `value` as TOML tables under `[name]`.

use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext, RenderError,
    RenderErrorReason, Renderable, ScopedJson,
};
use serde_json::{Map, Value};

/// The broker's config template, built into the binary.
pub const CONFIG_TEMPLATE: &str = include_str!("../templates/etcd-broker.toml.hbs");

/// Why rendering failed; the message names the template line and the missing property.
#[derive(Debug, thiserror::Error)]
#[error("cannot render the broker config: {0}")]
pub struct RenderFailure(String);

/// Renders `template` with the properties JSON written by the job's ERB template.
pub fn render_config(template: &str, properties_json: &str) -> Result<String, RenderFailure> {
    let data: Value = serde_json::from_str(properties_json)
        .map_err(|e| RenderFailure(format!("the properties file is not JSON: {e}")))?;
    if !data.get("properties").is_some_and(Value::is_object) {
        return Err(RenderFailure("the properties file has no \"properties\" object".into()));
    }
    let mut registry = Handlebars::new();
    registry.register_escape_fn(handlebars::no_escape);
    registry.set_strict_mode(true);
    registry.register_helper("p", Box::new(ValueHelper(property)));
    registry.register_helper("spec", Box::new(ValueHelper(spec)));
    registry.register_helper("link", Box::new(ValueHelper(link)));
    registry.register_helper("link_urls", Box::new(ValueHelper(link_urls)));
    registry.register_helper("default_endpoints", Box::new(ValueHelper(default_endpoints)));
    registry.register_helper("concat", Box::new(ValueHelper(concat)));
    registry.register_helper("if_p", Box::new(if_p));
    registry.register_helper("if_link", Box::new(if_link));
    registry.register_helper("toml_section", Box::new(toml_section));
    registry
        .register_template_string("etcd-broker.toml", template)
        .map_err(|e| RenderFailure(format!("the template is invalid: {e}")))?;
    registry.render("etcd-broker.toml", &data).map_err(|e| RenderFailure(describe(&e)))
}

/// "line 3: Can't find property 'a.b'" rather than handlebars' longer wording.
fn describe(e: &RenderError) -> String {
    match e.line_no {
        Some(line) => format!("template line {line}: {}", e.reason()),
        None => e.reason().to_string(),
    }
}

fn fail(message: String) -> RenderError {
    RenderErrorReason::Other(message).into()
}

/// A helper computing a JSON value: written as TOML on its own, passed as JSON in sub-expressions.
struct ValueHelper(fn(&Helper<'_>, &Value) -> Result<Value, RenderError>);

impl HelperDef for ValueHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        Ok(ScopedJson::Derived((self.0)(h, ctx.data())?))
    }

    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let value = (self.0)(h, ctx.data())?;
        out.write(&toml_value(h, &value)?)?;
        Ok(())
    }
}

/// A JSON value as an inline TOML value (strings quoted and escaped by the toml crate). The
/// error leaves the value out: it may hold a password.
fn toml_value(h: &Helper<'_>, value: &Value) -> Result<String, RenderError> {
    let converted = toml::Value::try_from(value).map_err(|e| {
        let what = h.param(0).and_then(|p| p.value().as_str()).unwrap_or_default();
        fail(format!("'{}' value {what} cannot be written as TOML: {e}", h.name()))
    })?;
    Ok(converted.to_string())
}

fn string_param<'a>(h: &'a Helper<'_>, index: usize, what: &str) -> Result<&'a str, RenderError> {
    h.param(index)
        .and_then(|p| p.value().as_str())
        .ok_or_else(|| fail(format!("helper '{}' needs {what} as argument {}", h.name(), index + 1)))
}

/// Walks a dotted path; `null` counts as absent, as in BOSH.
fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |v, key| v.get(key)).filter(|v| !v.is_null())
}

fn property(h: &Helper<'_>, data: &Value) -> Result<Value, RenderError> {
    let name = string_param(h, 0, "a property name")?;
    match (lookup(&data["properties"], name), h.param(1)) {
        (Some(value), _) => Ok(value.clone()),
        (None, Some(default)) => Ok(default.value().clone()),
        (None, None) => Err(fail(format!("Can't find property '{name}'"))),
    }
}

fn spec(h: &Helper<'_>, data: &Value) -> Result<Value, RenderError> {
    let name = string_param(h, 0, "a spec field")?;
    lookup(&data["spec"], name).cloned().ok_or_else(|| fail(format!("Can't find spec '{name}'")))
}

fn link(h: &Helper<'_>, data: &Value) -> Result<Value, RenderError> {
    let name = string_param(h, 0, "a link name")?;
    let link = lookup(&data["links"], name).ok_or_else(|| fail(format!("Can't find link '{name}'")))?;
    match h.param(1).and_then(|p| p.value().as_str()) {
        None => Ok(link.clone()),
        Some(path) => lookup(link, path)
            .cloned()
            .ok_or_else(|| fail(format!("Can't find link property '{name}.{path}'"))),
    }
}

fn link_urls(h: &Helper<'_>, data: &Value) -> Result<Value, RenderError> {
    let name = string_param(h, 0, "a link name")?;
    let scheme = string_param(h, 1, "a URL scheme")?;
    let link = lookup(&data["links"], name).ok_or_else(|| fail(format!("Can't find link '{name}'")))?;
    let port = lookup(link, "properties.port").ok_or_else(|| fail(format!("link '{name}' has no port")))?;
    let instances = link.get("instances").and_then(Value::as_array).cloned().unwrap_or_default();
    let urls = instances
        .iter()
        .filter_map(|i| i.get("address").and_then(Value::as_str))
        .map(|address| Value::String(format!("{scheme}://{address}:{port}")))
        .collect();
    Ok(Value::Array(urls))
}

fn default_endpoints(h: &Helper<'_>, _: &Value) -> Result<Value, RenderError> {
    let mut clusters = h.param(0).map(|p| p.value().clone()).unwrap_or(Value::Object(Map::new()));
    let name = string_param(h, 1, "a cluster name")?;
    let urls = h.param(2).map(|p| p.value().clone()).unwrap_or(Value::Array(vec![]));
    if let Some(cluster) = clusters.get_mut(name).and_then(Value::as_object_mut) {
        if cluster.get("endpoints").map_or(true, Value::is_null) {
            cluster.insert("endpoints".into(), urls);
        }
    }
    Ok(clusters)
}

fn concat(h: &Helper<'_>, _: &Value) -> Result<Value, RenderError> {
    let mut text = String::new();
    for (index, param) in h.params().iter().enumerate() {
        match param.value() {
            Value::String(s) => text.push_str(s),
            Value::Number(n) => text.push_str(&n.to_string()),
            _ => {
                return Err(fail(format!(
                    "helper 'concat' takes strings and numbers (argument {})",
                    index + 1
                )))
            }
        }
    }
    Ok(Value::String(text))
}

fn if_p<'reg, 'rc>(
    h: &Helper<'rc>,
    r: &'reg Handlebars<'reg>,
    ctx: &'rc Context,
    rc: &mut RenderContext<'reg, 'rc>,
    out: &mut dyn Output,
) -> HelperResult {
    let properties = &ctx.data()["properties"];
    let present = !h.params().is_empty()
        && h.params().iter().all(|p| p.value().as_str().is_some_and(|n| lookup(properties, n).is_some()));
    render_branch(present, h, r, ctx, rc, out)
}

fn if_link<'reg, 'rc>(
    h: &Helper<'rc>,
    r: &'reg Handlebars<'reg>,
    ctx: &'rc Context,
    rc: &mut RenderContext<'reg, 'rc>,
    out: &mut dyn Output,
) -> HelperResult {
    let name = string_param(h, 0, "a link name")?;
    let present = lookup(&ctx.data()["links"], name).is_some();
    render_branch(present, h, r, ctx, rc, out)
}

/// The block of a conditional helper when `condition` holds, else its `{{else}}` part.
fn render_branch<'reg, 'rc>(
    condition: bool,
    h: &Helper<'rc>,
    r: &'reg Handlebars<'reg>,
    ctx: &'rc Context,
    rc: &mut RenderContext<'reg, 'rc>,
    out: &mut dyn Output,
) -> HelperResult {
    match if condition { h.template() } else { h.inverse() } {
        Some(t) => t.render(r, ctx, rc, out),
        None => Ok(()),
    }
}

fn toml_section<'reg, 'rc>(
    h: &Helper<'rc>,
    _: &'reg Handlebars<'reg>,
    _: &'rc Context,
    _: &mut RenderContext<'reg, 'rc>,
    out: &mut dyn Output,
) -> HelperResult {
    let name = string_param(h, 0, "a section name")?;
    let value = h.param(1).map(|p| p.value().clone()).unwrap_or(Value::Null);
    if value.is_null() {
        return Ok(());
    }
    let mut table = Map::new();
    table.insert(name.to_owned(), value);
    let text = toml::to_string(&Value::Object(table))
        .map_err(|e| fail(format!("'{name}' cannot be written as TOML: {e}")))?;
    out.write(&text)?;
    Ok(())
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
