//! Fuzz target: config parsing. `Config::from_toml` reads what an operator (or a template)
//! wrote: every text must give a config or an error naming what is wrong, never a panic, and
//! an error never quotes the broker's password.

use proptest::prelude::*;

use super::{Config, ConfigError};

const EXAMPLE: &str = include_str!("../../docs/etcd-broker.example.toml");
/// Set as `auth.password` in every generated config; no error may quote it.
const PASSWORD: &str = "fuzz-secret-Zq81";

/// A TOML value of any type, a little nested.
fn value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(toml::Value::Integer),
        prop_oneof![Just(0i64), Just(-1), Just(1), Just(65536), Just(i64::MAX)]
            .prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
        ".{0,20}".prop_map(toml::Value::String),
        "(https?|unix|ftp)://[a-z0-9.:\\[\\]@%/-]{0,30}".prop_map(toml::Value::String),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

/// The example config with the password set, then 1 to 4 of its fields (at any depth, in any
/// table or array) replaced by another value or removed, or a new field added.
fn mutated_example() -> impl Strategy<Value = String> {
    let edit = (any::<prop::sample::Index>(), prop::option::of(value()), "[a-z_]{1,12}");
    prop::collection::vec(edit, 1..5).prop_map(|edits| {
        let mut table: toml::Table = toml::from_str(EXAMPLE).unwrap();
        table["auth"]["password"] = toml::Value::String(PASSWORD.into());
        for (at, with, new_key) in edits {
            let mut paths = Vec::new();
            collect_paths(&toml::Value::Table(table.clone()), &mut Vec::new(), &mut paths);
            let path = at.get(&paths).clone();
            edit_at(&mut table, &path, with, &new_key);
        }
        toml::to_string(&table).unwrap_or_default()
    })
}

/// Every path to a value (keys of tables, indexes of arrays as their decimal text).
fn collect_paths(value: &toml::Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(at.clone());
    let children: Vec<(String, &toml::Value)> = match value {
        toml::Value::Table(t) => t.iter().map(|(k, v)| (k.clone(), v)).collect(),
        toml::Value::Array(a) => a.iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
        _ => return,
    };
    for (key, child) in children {
        at.push(key);
        collect_paths(child, at, out);
        at.pop();
    }
}

/// Replaces (or, with `None`, removes) the value at `path`; at a table, adds `new_key` instead.
fn edit_at(table: &mut toml::Table, path: &[String], with: Option<toml::Value>, new_key: &str) {
    let Some((last, parents)) = path.split_last() else {
        if let Some(value) = with {
            table.insert(new_key.to_owned(), value);
        }
        return;
    };
    let mut current = &mut *table;
    for key in parents {
        let next = match current.get_mut(key) {
            Some(toml::Value::Table(t)) => t,
            // Paths through arrays: edit the array's element as a whole.
            Some(toml::Value::Array(a)) => {
                if let (Ok(i), Some(value)) = (last.parse::<usize>(), with) {
                    if i < a.len() {
                        a[i] = value;
                    }
                }
                return;
            }
            _ => return,
        };
        current = next;
    }
    match with {
        Some(value) => {
            current.insert(last.clone(), value);
        }
        None => {
            current.remove(last);
        }
    }
}

fn check(text: &str) -> Result<(), TestCaseError> {
    match Config::from_toml(text) {
        Ok(_) => {}
        Err(e) => {
            let message = e.to_string();
            prop_assert!(!message.contains(PASSWORD), "the password is quoted: {message}");
            if let ConfigError::Invalid { field, .. } = &e {
                prop_assert!(!field.is_empty(), "no field named: {message}");
            }
        }
    }
    Ok(())
}

#[test]
fn a_mutated_example_config_loads_or_names_its_error() {
    let mut runner = proptest::test_runner::TestRunner::new(crate::fuzz_config(1500));
    runner.run(&mutated_example(), |text| check(&text)).unwrap();
}

#[test]
fn any_text_loads_or_names_its_error() {
    let mut runner = proptest::test_runner::TestRunner::new(crate::fuzz_config(1500));
    let texts = prop_oneof![any::<String>(), "([a-z_.\\[\\]]{0,12} ?= ?[\"0-9a-z\\[\\]{}.,]{0,12}\n){0,6}"];
    runner.run(&texts, |text| check(&text)).unwrap();
}
