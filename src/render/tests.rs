use super::*;
use crate::config::Config;

const PROPERTIES: &str = include_str!("../../tests/fixtures/bosh/properties.json");
const GOLDEN: &str = "tests/fixtures/bosh/etcd-broker.toml";

fn with(edit: impl FnOnce(&mut Value)) -> String {
    let mut data: Value = serde_json::from_str(PROPERTIES).unwrap();
    edit(&mut data);
    data.to_string()
}

/// Set UPDATE_GOLDEN=1 to rewrite the golden file after an intended template change.
#[test]
fn the_fixture_renders_to_the_golden_toml_and_a_valid_config() {
    let rendered = render_config(CONFIG_TEMPLATE, PROPERTIES).unwrap();
    let golden_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden_path, &rendered).unwrap();
    }
    assert_eq!(rendered, std::fs::read_to_string(&golden_path).unwrap());

    let config = Config::from_toml(&rendered).unwrap();
    // Quotes, backslashes, newlines and unicode survive into the config.
    assert_eq!(config.auth.password.expose(), "pa\"ss\\word\nü 'x");
    // The etcd link supplies main's endpoints; TLS material arrives inline.
    let main = &config.clusters["main"];
    let texts = |urls: &[url::Url]| urls.iter().map(url::Url::to_string).collect::<Vec<_>>();
    assert_eq!(texts(&main.endpoints), ["https://10.0.1.10:2379/", "https://10.0.1.11:2379/"]);
    let tls = main.tls.as_ref().unwrap();
    assert!(tls.ca.as_deref().unwrap().starts_with(b"-----BEGIN CERTIFICATE-----\nMIIB"));
    assert!(tls.identity.is_some());
    assert_eq!(config.catalog.services[0].plans[0].name, "shared");
    assert_eq!(config.log_format, crate::config::LogFormat::Json);
}

#[test]
fn a_missing_required_property_fails_like_bosh() {
    let properties = with(|d| {
        d["properties"]["auth"].as_object_mut().unwrap().remove("password");
    });
    let err = render_config(CONFIG_TEMPLATE, &properties).unwrap_err().to_string();
    assert!(err.contains("Can't find property 'auth.password'"), "{err}");
    assert!(err.contains("template line"), "{err}");
    // An explicit null counts as missing, as in BOSH.
    let properties = with(|d| d["properties"]["auth"]["password"] = Value::Null);
    let err = render_config(CONFIG_TEMPLATE, &properties).unwrap_err().to_string();
    assert!(err.contains("Can't find property 'auth.password'"), "{err}");
}

#[test]
fn if_p_runs_for_present_values_even_false() {
    let template = r#"{{#if_p "a.b"}}yes {{p "a.b"}}{{else}}no{{/if_p}}"#;
    let render = |properties: Value| {
        render_config(template, &serde_json::json!({ "properties": properties }).to_string()).unwrap()
    };
    assert_eq!(render(serde_json::json!({ "a": { "b": false } })), "yes false");
    assert_eq!(render(serde_json::json!({ "a": { "b": "x" } })), "yes \"x\"");
    assert_eq!(render(serde_json::json!({ "a": {} })), "no");
    assert_eq!(render(serde_json::json!({ "a": { "b": null } })), "no");
}

#[test]
fn p_defaults_spec_and_links() {
    let data = serde_json::json!({
        "properties": {},
        "spec": { "address": "10.0.0.1" },
        "links": { "etcd": { "properties": { "port": 2379 }, "instances": [] } }
    })
    .to_string();
    assert_eq!(
        render_config(r#"{{p "x" 7}} {{spec "address"}} {{link "etcd" "properties.port"}}"#, &data).unwrap(),
        r#"7 "10.0.0.1" 2379"#
    );
    let err = render_config(r#"{{link "nats" "port"}}"#, &data).unwrap_err().to_string();
    assert!(err.contains("Can't find link 'nats'"), "{err}");
    assert_eq!(render_config(r#"{{#if_link "nats"}}a{{else}}b{{/if_link}}"#, &data).unwrap(), "b");
}

#[test]
fn concat_joins_strings_and_numbers_into_one_string() {
    let data =
        serde_json::json!({ "properties": { "port": 2391 }, "spec": { "address": "10.0.0.1" } }).to_string();
    let template = r#"{{concat "https://" (spec "address") ":" (p "port")}}"#;
    assert_eq!(render_config(template, &data).unwrap(), r#""https://10.0.0.1:2391""#);
    let err = render_config(r#"{{concat "a" (p "missing" false)}}"#, &data).unwrap_err().to_string();
    assert!(err.contains("'concat' takes strings and numbers (argument 2)"), "{err}");
}

#[test]
fn without_the_link_clusters_are_taken_as_given() {
    let properties = with(|d| {
        d.as_object_mut().unwrap().remove("links");
        d["properties"]["clusters"]["main"]["endpoints"] = serde_json::json!(["https://etcd.internal:2379"]);
    });
    let config = Config::from_toml(&render_config(CONFIG_TEMPLATE, &properties).unwrap()).unwrap();
    assert_eq!(config.clusters["main"].endpoints[0].as_str(), "https://etcd.internal:2379/");
}

#[test]
fn bad_input_is_a_clear_error() {
    assert!(render_config(CONFIG_TEMPLATE, "not json").unwrap_err().to_string().contains("not JSON"));
    assert!(render_config(CONFIG_TEMPLATE, "{}").unwrap_err().to_string().contains("\"properties\""));
    assert!(render_config("{{#if_p}}", "{\"properties\":{}}").unwrap_err().to_string().contains("template"));
}

/// Regression: a value with no TOML form (a null inside a list) was echoed in the error, with any
/// password next to it.
#[test]
fn values_without_a_toml_form_are_not_echoed() {
    let properties = with(|d| d["properties"]["auth"]["tokens"] = serde_json::json!([null]));
    let err = render_config(r#"auth = {{p "auth"}}"#, &properties).unwrap_err().to_string();
    assert!(err.contains("'p' value auth cannot be written as TOML"), "{err}");
    assert!(!err.contains("pa\\\"ss") && !err.contains("word"), "{err}");
}
