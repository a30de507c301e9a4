use super::*;
use serde_json::json;

fn apply(doc: Value, ops: Value) -> Result<Value, String> {
    let mut doc = doc;
    for op in parse_ops(&ops, "ops.yml")? {
        op.apply(&mut doc)?;
    }
    Ok(doc)
}

fn manifest() -> Value {
    json!({
        "name": "d",
        "instance_groups": [
            { "name": "etcd-broker", "jobs": [ { "name": "bpm" }, { "name": "etcd-broker", "properties": { "a": 1 } } ] },
            { "name": "other", "jobs": [] }
        ]
    })
}

#[test]
fn pointers_parse_and_print_like_go_patch() {
    for path in ["", "/a/b", "/a/0/-", "/a/name=x?/b/c", "/a/-1", "/k~0~1~7"] {
        assert_eq!(Pointer::parse(path).unwrap().to_string(), path);
    }
    // `?` makes every later segment optional; it is printed once.
    assert_eq!(Pointer::parse("/a?/b/c").unwrap().to_string(), "/a?/b/c");
    assert_eq!(Pointer::parse("a").unwrap_err(), "Expected to start with '/'");
}

#[test]
fn replace_walks_selectors_indexes_and_creates_optional_segments() {
    let doc = apply(
        manifest(),
        json!([
            { "type": "replace", "path": "/instance_groups/name=etcd-broker/jobs/name=etcd-broker/properties/x?/y", "value": "new" },
            { "type": "replace", "path": "/instance_groups/name=etcd-broker/jobs/name=etcd-broker/properties/a", "value": 2 },
            { "type": "replace", "path": "/instance_groups/name=etcd-broker/jobs/-", "value": { "name": "extra" } },
            { "type": "replace", "path": "/instance_groups/1/jobs/name=fresh?/release", "value": "r" },
            { "type": "replace", "path": "/instance_groups/0/jobs/0", "value": { "name": "first" } },
            { "type": "replace", "path": "/instance_groups/-1/name", "value": "renamed" },
            { "type": "replace", "path": "/releases?/-", "value": { "name": "bpm" } }
        ]),
    )
    .unwrap();
    let jobs = &doc["instance_groups"][0]["jobs"];
    assert_eq!(jobs[0], json!({ "name": "first" }));
    assert_eq!(jobs[1]["properties"], json!({ "a": 2, "x": { "y": "new" } }));
    assert_eq!(jobs[2], json!({ "name": "extra" }));
    assert_eq!(
        doc["instance_groups"][1],
        json!({ "name": "renamed", "jobs": [ { "name": "fresh", "release": "r" } ] })
    );
    assert_eq!(doc["releases"], json!([ { "name": "bpm" } ]));
}

#[test]
fn remove_and_optional_remove() {
    let doc = apply(
        manifest(),
        json!([
            { "type": "remove", "path": "/instance_groups/name=other" },
            { "type": "remove", "path": "/instance_groups/0/jobs/name=bpm" },
            { "type": "remove", "path": "/instance_groups/name=absent?" },
            { "type": "remove", "path": "/nothing?/here" }
        ]),
    )
    .unwrap();
    assert_eq!(
        doc["instance_groups"],
        json!([ { "name": "etcd-broker", "jobs": [ { "name": "etcd-broker", "properties": { "a": 1 } } ] } ])
    );
}

/// What go-patch has and this implementation leaves out is refused when the file is read,
/// naming the feature, rather than applied differently from `bosh int`.
#[test]
fn unsupported_go_patch_features_are_refused_by_name() {
    let cases = [
        (json!([{ "type": "test", "path": "/name", "value": "d" }]), "'test' operations are not supported"),
        (json!([{ "type": "replace", "path": "/x", "value": 1, "error": "custom" }]), "the 'error' field"),
        (json!([{ "type": "replace", "path": "/a/0:before", "value": 1 }]), "modifiers like ':before'"),
        (json!([{ "type": "remove", "path": "/a/name=x:prev" }]), "modifiers like ':prev'"),
    ];
    for (ops, expected) in cases {
        let err = parse_ops(&ops, "ops.yml").unwrap_err();
        assert!(err.starts_with("ops.yml: operation [0]: "), "{err}");
        assert!(err.contains(expected) && err.contains("not supported by etcd-broker-ops"), "{err}");
    }
}

#[test]
fn failures_say_which_operation_and_where() {
    let err = apply(
        manifest(),
        json!([{ "type": "replace", "path": "/instance_groups/name=nope/jobs", "value": 1 }]),
    )
    .unwrap_err();
    assert_eq!(
        err,
        "replace /instance_groups/name=nope/jobs: Expected to find exactly one matching array item for path '/instance_groups/name=nope' but found 0"
    );
    let err = apply(manifest(), json!([{ "type": "replace", "path": "/nme/x", "value": 1 }])).unwrap_err();
    assert_eq!(err, "replace /nme/x: Expected to find a map key 'nme' for path '/nme' (found map keys: 'instance_groups', 'name')");
    let err = apply(manifest(), json!([{ "type": "remove", "path": "/instance_groups/5" }])).unwrap_err();
    assert!(err.contains("Expected to find array index '5' but found array of length '2'"), "{err}");
    let err = apply(manifest(), json!([{ "type": "replace", "path": "/name/x", "value": 1 }])).unwrap_err();
    assert!(err.contains("Expected to find a map at path '/name/x' but found a string"), "{err}");
}

#[test]
fn malformed_ops_files_are_refused() {
    let cases = [
        (json!({ "type": "replace" }), "is not a list"),
        (json!([{ "type": "replace", "path": "/a" }]), "operation [0]: Replace operation: Missing value"),
        (json!([{ "type": "replace", "path": "/a", "value": null }]), "Missing value"),
        (json!([{ "type": "remove", "path": "/a", "value": 1 }]), "Cannot specify value"),
        (json!([{ "type": "remove" }]), "Missing path"),
        (json!([{ "type": "move", "path": "/a" }]), "Unknown operation with type 'move'"),
        (
            json!([{ "type": "replace", "path": "a", "value": 1 }]),
            "Invalid path 'a': Expected to start with '/'",
        ),
        (json!(["replace"]), "is not a map"),
    ];
    for (ops, expected) in cases {
        let err = parse_ops(&ops, "ops.yml").unwrap_err();
        assert!(err.starts_with("ops.yml"), "{err}");
        assert!(err.contains(expected), "{err} should contain {expected}");
    }
    assert!(parse_ops(&Value::Null, "empty.yml").unwrap().is_empty());
}

#[test]
fn variable_keys_are_found_by_path_or_as_map_keys() {
    let cert = json!({ "ca": "CA", "list": ["a", "b"], "0": "zero" });
    assert_eq!(find_in_variable(&cert, &["ca"]).unwrap(), json!("CA"));
    assert_eq!(find_in_variable(&cert, &["list", "1"]).unwrap(), json!("b"));
    assert!(find_in_variable(&cert, &["missing"]).unwrap_err().contains("'missing'"));
    let numbered = json!({ "0": "zero" });
    assert_eq!(find_in_variable(&numbered, &["0"]).unwrap(), json!("zero"));
}
