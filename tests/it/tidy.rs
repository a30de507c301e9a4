//! The dependency rules of ARCHITECTURE.md, checked by reading the source tree: which modules of
//! the broker crate each module may use, which outside crates only one module may use, and
//! what the shipped operators' crate may take from the broker crate.
//!
//! Paths are found as text (`crate::x`, `etcd_client::`), outside comments and test code (a
//! `tests.rs` or `fuzz.rs` file, or what follows `#[cfg(test)]` in a file), so a rule is broken by code that
//! compiles into the product, not by a doc link or a test helper.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The workspace root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, with its product code (see the module doc).
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // A folder with a Cargo.toml is another crate (make release stages the whole
                // workspace under src/etcd-broker-workspace/): not this crate's source.
                if !path.join("Cargo.toml").exists() {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs")
                && !["tests.rs", "fuzz.rs"].contains(&path.file_name().unwrap().to_str().unwrap())
            {
                let text = std::fs::read_to_string(&path).unwrap();
                let product = text.split("#[cfg(test)]").next().unwrap_or_default();
                let code: Vec<&str> = product.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
                let name = path.strip_prefix(root()).unwrap_or(&path).display().to_string();
                files.push((name, code.join("\n")));
            }
        }
    }
    files.sort();
    files
}

/// The names that follow `prefix` in `code` (`crate::` -> the crate's modules it uses), also
/// inside a group (`use crate::{osb, store::Guard}` -> `osb`, `store`).
fn used_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let first_segment = |path: &str| -> String {
        path.trim_start()
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices(prefix) {
        if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        match rest.strip_prefix('{') {
            // The group's top-level entries, each up to a comma outside nested braces.
            Some(group) => {
                let (mut depth, mut start) = (0usize, 0);
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            names.insert(first_segment(&group[start..i]));
                            break;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            names.insert(first_segment(&group[start..i]));
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
            }
            None => {
                names.insert(first_segment(rest));
            }
        }
    }
    names.retain(|name| !name.is_empty());
    names
}

/// The module of the broker crate a file belongs to: `src/etcd/call.rs` -> `etcd`.
fn module_of(file: &str) -> &str {
    let inner = file.strip_prefix("src/").unwrap_or(file);
    let first = inner.split('/').next().unwrap_or(inner);
    first.strip_suffix(".rs").unwrap_or(first)
}

/// Which of the crate's modules each module may use; a module not listed may use any.
const MAY_USE: &[(&str, &[&str])] = &[
    ("osb", &[]),
    ("broker", &["osb", "store", "clock", "secrets", "activity", "sealing", "pki", "credential_store"]),
    ("store", &["metrics"]),
    ("etcd", &["config", "store", "tls"]),
    ("http", &["osb", "metrics", "activity", "inventory", "broker"]),
    ("config", &["osb", "tls", "render", "broker", "sealing", "pki", "openbao", "credential_store"]),
    ("openbao", &["sealing", "credential_store"]),
    ("credential_store", &[]),
    ("inventory", &["broker", "metrics"]),
    ("tls", &[]),
    ("render", &[]),
    ("metrics", &[]),
    ("activity", &[]),
    ("clock", &[]),
    ("secrets", &[]),
    ("sealing", &[]),
    ("pki", &[]),
    ("logging", &["config"]),
    ("main", &[]),
];

/// Outside crates only these modules may use (the etcd transport's, actix-web, Prometheus).
const ONLY_IN: &[(&str, &[&str])] = &[
    ("etcd_client", &["etcd"]),
    ("tonic", &["etcd"]),
    ("tonic_health", &["etcd"]),
    ("hyper", &["etcd"]),
    ("hyper_util", &["etcd"]),
    ("hyper_openssl", &["etcd"]),
    ("tower", &["etcd"]),
    ("tokio_stream", &["etcd"]),
    ("actix_web", &["http", "server"]),
    ("prometheus", &["metrics", "inventory"]),
    ("reqwest", &["openbao"]),
];

#[test]
fn modules_use_only_what_architecture_md_allows() {
    let mut broken = Vec::new();
    for (file, code) in sources(&root().join("src")) {
        let module = module_of(&file);
        if let Some((_, allowed)) = MAY_USE.iter().find(|(m, _)| *m == module) {
            for used in used_after(&code, "crate::") {
                if used != module && !allowed.contains(&used.as_str()) {
                    broken.push(format!("{file} uses crate::{used}"));
                }
            }
        }
        for (external, owners) in ONLY_IN {
            if !owners.contains(&module) && !used_after(&code, &format!("{external}::")).is_empty() {
                broken.push(format!("{file} uses {external}"));
            }
        }
    }
    assert!(broken.is_empty(), "dependency rules broken (ARCHITECTURE.md):\n{}", broken.join("\n"));
}

/// What the operators' crate may take from the broker's library: its config, rendering, names,
/// secrets, sealing, ids, TLS material and the small etcd client API; never the server, the HTTP layer,
/// the store or the metrics (it talks to a broker over HTTP and to etcd as a client).
/// `reseal`: the library's wiring of its record walk to the state cluster, so that the
/// operators' crate rewrites records without building a store or reaching into `broker`.
/// `reconcile`: likewise, the check of records against etcd wired to the config's clusters.
/// Of `broker`, only `names` and `records` (the record formats: `data-keys` edits an instance
/// record's data keys and reads sealed values' headers).
const OPS_MAY_USE: &[&str] =
    &["config", "render", "broker", "secrets", "osb", "tls", "etcd", "sealing", "reseal", "reconcile"];

#[test]
fn the_operators_crate_uses_only_the_broker_crates_public_tools() {
    let mut broken = Vec::new();
    for (file, code) in sources(&root().join("ops/src")) {
        for used in used_after(&code, "etcd_broker::") {
            if !OPS_MAY_USE.contains(&used.as_str()) {
                broken.push(format!("{file} uses etcd_broker::{used}"));
            }
        }
        for used in used_after(&code, "etcd_broker::broker::") {
            if used != "names" && used != "records" {
                broken.push(format!("{file} uses etcd_broker::broker::{used}"));
            }
        }
    }
    assert!(broken.is_empty(), "the operators' crate reaches into the broker:\n{}", broken.join("\n"));
}

/// Crates only developers need: the shipped operators' crate (and so the BOSH package's
/// binary) must not link them.
const DEVELOPERS_ONLY: &[&str] = &["xtask", "local-etcd", "hdrhistogram", "indicatif"];

#[test]
fn the_operators_crate_links_no_developer_tools() {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("ops/Cargo.toml")).unwrap()).unwrap();
    let dependencies = manifest["dependencies"].as_table().expect("ops has dependencies");
    let linked: Vec<&&str> =
        DEVELOPERS_ONLY.iter().filter(|name| dependencies.contains_key(**name)).collect();
    assert!(linked.is_empty(), "ops/Cargo.toml [dependencies] holds developers' crates: {linked:?}");
}

/// The tidy check itself finds what it looks for.
#[test]
fn used_paths_are_found_and_comments_are_not() {
    let code = "use crate::osb::ids;\nlet x = crate::store::Guard::Absent;\nmy_crate::etcd::x();";
    assert_eq!(used_after(code, "crate::"), ["osb".to_owned(), "store".to_owned()].into());
    let grouped = "use crate::{\n    osb::{ids, BrokerError},\n    store::Guard,\n    clock,\n};";
    assert_eq!(
        used_after(grouped, "crate::"),
        ["clock".to_owned(), "osb".to_owned(), "store".to_owned()].into()
    );
    assert_eq!(module_of("src/etcd/call.rs"), "etcd");
    assert_eq!(module_of("src/server.rs"), "server");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.rs"),
        "//! [`crate::http`]\nuse crate::osb;\n#[cfg(test)]\nuse crate::etcd;",
    )
    .unwrap();
    let sources = sources(dir.path());
    assert_eq!(sources.len(), 1);
    assert_eq!(used_after(&sources[0].1, "crate::"), ["osb".to_owned()].into());
}
