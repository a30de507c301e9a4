//! Fuzz target: template rendering. The properties JSON comes from a BOSH manifest (an
//! operator's values, CredHub's generated secrets): rendering it must give a TOML file or an
//! error, never a panic, and what it gives must be TOML that says what the properties said:
//! a string with quotes, backslashes or newlines in it must not break out of its TOML string.

use proptest::prelude::*;
use serde_json::Value;

use super::{render_config, CONFIG_TEMPLATE};

const FIXTURE: &str = include_str!("../../tests/fixtures/bosh/properties.json");

/// A JSON value of any type, a little nested; strings favour TOML's and JSON's special
/// characters.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[\"'\\\\\n\r\t{}\\[\\]=#. a-z]{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The JSON pointers of every value in `value`.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(m) => m.iter().for_each(|(k, v)| pointers(v, format!("{at}/{k}"), out)),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| pointers(v, format!("{at}/{i}"), out)),
        _ => {}
    }
    out.push(at);
}

/// The fixture's properties with 1 to 4 values replaced by any other (at any depth, whole
/// tables included), or set to null.
fn mutated_properties() -> impl Strategy<Value = String> {
    prop::collection::vec((any::<prop::sample::Index>(), value()), 1..5).prop_map(|edits| {
        let mut doc: Value = serde_json::from_str(FIXTURE).unwrap();
        for (at, with) in edits {
            let mut all = Vec::new();
            pointers(&doc, String::new(), &mut all);
            let pointer = at.get(&all).clone();
            if let Some(slot) = doc.pointer_mut(&pointer) {
                *slot = with;
            }
        }
        doc.to_string()
    })
}

#[test]
fn mutated_properties_render_to_toml_or_an_error() {
    let mut runner = proptest::test_runner::TestRunner::new(crate::fuzz_config(600));
    runner
        .run(&mutated_properties(), |json| {
            if let Ok(text) = render_config(CONFIG_TEMPLATE, &json) {
                let parsed = toml::from_str::<toml::Table>(&text);
                prop_assert!(parsed.is_ok(), "rendered TOML does not parse: {:?}\n{text}", parsed.err());
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn any_text_as_properties_is_refused_without_a_panic() {
    let mut runner = proptest::test_runner::TestRunner::new(crate::fuzz_config(600));
    runner
        .run(
            &prop_oneof![
                any::<String>(),
                value().prop_map(|v| serde_json::json!({"properties": v}).to_string())
            ],
            |json| {
                let _ = render_config(CONFIG_TEMPLATE, &json);
                Ok(())
            },
        )
        .unwrap();
}
