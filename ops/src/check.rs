//! `etcd-broker-ops check release`: the mistakes `bosh create-release` or a deploy would find
//! late (or never), found in seconds on the release tree.
//!
//! - config/final.yml names the release with `name` alone and declares a blobstore the bosh
//!   CLI can use (s3/gcs with a bucket, or a local folder inside the release); config/private.yml,
//!   if present, holds only credentials;
//! - every job: `spec` name equals its folder, every template and package it names exists,
//!   every property has a description, a `monit` file exists, and ERB logic lives only in
//!   `properties.json.erb` (the release's one ERB template shape; see docs/rendering.md);
//! - every package: `spec` name equals its folder, `packaging` exists, every dependency exists
//!   (or is vendored by `make release`), every `files` glob matches something under src/ or blobs/;
//!   a vendored package's `spec.lock` is listed in .final_builds/ (and its blob is in a local
//!   blobstore);
//! - manifests/check.yml lists every ops file; the base manifest renders alone, with each ops
//!   file and with all of them, for every job of this release in every instance group, and the
//!   broker's config it yields is one the broker accepts.
//!
//! Every problem is reported (not only the first), as `path: what is wrong`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::render::{self, RenderArgs};

/// Packages that `make release` vendors with `bosh vendor-package` (scripts/release.sh): a
/// dependency on them is satisfied before they are vendored.
const VENDORED_BY_MAKE_RELEASE: &[&str] = &["rust-1-linux"];

/// The manifest checks file, relative to manifests/.
const CHECKS_FILE: &str = "check.yml";

/// One problem found, with the file it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (relative to the release root) the problem is in.
    pub path: String,
    /// What is wrong, in a sentence.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// What a check of the release tree found.
#[derive(Debug, Default)]
pub struct Report {
    /// Everything wrong; empty when the release is fine.
    pub problems: Vec<Problem>,
    /// Things worth knowing that are not wrong (e.g. a package `make release` will vendor).
    pub notes: Vec<String>,
    /// Counts for the summary line.
    pub jobs: usize,
    pub packages: usize,
    pub renders: usize,
}

impl Report {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), message: message.into() });
    }
}

/// Runs `check release` on `dir` and prints the report; fails when anything is wrong.
pub fn run_release(dir: &Path) -> Result<()> {
    let report = check_release(dir)?;
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    for problem in &report.problems {
        eprintln!("{problem}");
    }
    if !report.problems.is_empty() {
        bail!("release check failed: {} problem(s) in {}", report.problems.len(), dir.display());
    }
    println!(
        "release OK: {} jobs, {} packages, {} manifest renders checked",
        report.jobs, report.packages, report.renders
    );
    Ok(())
}

/// Checks the release tree at `dir`; errors only when the tree cannot be read at all.
pub fn check_release(dir: &Path) -> Result<Report> {
    if !dir.join("jobs").is_dir() {
        bail!("{} is not a release tree (no jobs/ folder)", dir.display());
    }
    let mut report = Report::default();
    let config = check_final_yml(dir, &mut report);
    let packages = check_packages(dir, &config, &mut report)?;
    check_jobs(dir, &packages, &mut report)?;
    check_manifests(dir, config.name.as_deref().unwrap_or("etcd-broker"), &mut report)?;
    Ok(report)
}

/// What config/final.yml (and config/private.yml) tell about the release.
#[derive(Debug, Default)]
struct FinalConfig {
    /// The release name (`name`), when final.yml gives exactly one.
    name: Option<String>,
    /// The folder of a `local` blobstore, where `bosh vendor-package` and final releases put
    /// blobs (relative paths are relative to the release, as the CLI resolves them).
    local_blobstore: Option<PathBuf>,
}

/// Options of a blobstore that are credentials, the only ones config/private.yml should hold
/// (the bosh CLI merges private.yml's options over final.yml's, so anything else there would
/// silently change the blobstore of whoever has the file).
const CREDENTIAL_OPTIONS: &[&str] = &[
    "access_key_id",
    "secret_access_key",
    "credentials_source",
    "json_key",
    "assume_role_arn",
    "encryption_key",
];

/// config/final.yml as the bosh CLI reads it (releasedir/fs_config.go and the blobstore
/// clients of bosh-cli 7): exactly one of `name` and `final_name`; a blobstore the CLI can
/// build; for `local`, a folder inside the release (final blobs in /tmp reach nobody else).
/// config/private.yml, when present: credentials only, and no provider (the CLI ignores it).
fn check_final_yml(dir: &Path, report: &mut Report) -> FinalConfig {
    let path = "config/final.yml";
    let mut config = FinalConfig::default();
    let doc = match yaml(dir, path) {
        Ok(doc) => doc,
        Err(e) => {
            report.problem(path, format!("{e:#}"));
            return config;
        }
    };
    let non_empty = |key: &str| doc.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    match (non_empty("name"), non_empty("final_name")) {
        (Some(_), Some(_)) => report.problem(
            path,
            "has both `name` and `final_name`; bosh create-release refuses it (Expected 'name' or \
             'final_name' but not both): keep `name`",
        ),
        (None, None) => report.problem(path, "has no `name` (the release name)"),
        (name, final_name) => config.name = name.or(final_name).map(str::to_owned),
    }

    let private_path = "config/private.yml";
    let private = if dir.join(private_path).is_file() {
        match yaml(dir, private_path) {
            Ok(doc) => doc,
            Err(e) => {
                report.problem(private_path, format!("{e:#}"));
                Value::Null
            }
        }
    } else {
        Value::Null
    };
    if private.pointer("/blobstore/provider").is_some() {
        report.problem(
            private_path,
            "sets `blobstore.provider`, which the bosh CLI ignores: the provider comes from config/final.yml",
        );
    }
    let private_options = private.pointer("/blobstore/options").and_then(Value::as_object);
    for key in private_options.into_iter().flat_map(|o| o.keys()) {
        if !CREDENTIAL_OPTIONS.contains(&key.as_str()) {
            report.problem(
                private_path,
                format!(
                    "sets blobstore option `{key}`, which is no credential: it belongs in config/final.yml"
                ),
            );
        }
    }

    let mut options =
        doc.pointer("/blobstore/options").and_then(Value::as_object).cloned().unwrap_or_default();
    options.extend(private_options.into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
    let option = |key: &str| options.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    match doc.pointer("/blobstore/provider").and_then(Value::as_str) {
        Some("s3" | "gcs") if option("bucket_name").is_none() => {
            report.problem(path, "blobstore has no `bucket_name` (bosh: bucket_name must be set)")
        }
        Some("s3") if option("access_key_id").is_some() != option("secret_access_key").is_some() => report
            .problem(
                private_path,
                "gives only one of access_key_id and secret_access_key (bosh: access_key_id and \
                 secret_access_key must be provided)",
            ),
        Some("s3" | "gcs") => {}
        Some("local") => match option("blobstore_path").map(Path::new) {
            None => report.problem(path, "local blobstore has no `blobstore_path`"),
            Some(folder) if folder.is_absolute() && !folder.starts_with(std::fs::canonicalize(dir).unwrap_or(dir.to_owned())) => report.problem(
                path,
                format!(
                    "local blobstore {} is outside the release: final blobs written there reach \
                     nobody else; use an s3 or gcs blobstore (docs/bosh.md)",
                    folder.display()
                ),
            ),
            Some(folder) => config.local_blobstore = Some(dir.join(folder)),
        },
        Some(other) => report.problem(
            path,
            format!("blobstore provider '{other}' is not one of s3, gcs, local (bosh: Expected release blobstore to be configured)"),
        ),
        None => report.problem(
            path,
            "has no `blobstore.provider` (bosh: Expected non-empty 'blobstore.provider'); vendored packages, \
             bosh vendor-package and final releases need one (s3, gcs or local)",
        ),
    }
    config
}

/// Sub-folders of `dir/<kind>`, sorted.
fn folders(dir: &Path, kind: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let path = dir.join(kind);
    if !path.is_dir() {
        return Ok(names);
    }
    for entry in std::fs::read_dir(&path).with_context(|| format!("cannot read {}", path.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn yaml(dir: &Path, relative: &str) -> Result<Value> {
    render::read_yaml(&dir.join(relative), relative)
}

/// A job's or package's spec, with its name checked against its folder; `None` (reported) when
/// it cannot be read.
fn load_spec(dir: &Path, spec_path: &str, folder: &str, report: &mut Report) -> Option<Value> {
    match yaml(dir, spec_path) {
        Ok(spec) => {
            check_name(report, spec_path, &spec, folder);
            Some(spec)
        }
        Err(e) => {
            report.problem(spec_path, format!("{e:#}"));
            None
        }
    }
}

fn check_name(report: &mut Report, spec_path: &str, spec: &Value, folder: &str) {
    match spec.get("name").and_then(Value::as_str) {
        Some(name) if name == folder => {}
        Some(name) => report.problem(spec_path, format!("name '{name}' differs from its folder '{folder}'")),
        None => report.problem(spec_path, "has no name"),
    }
}

/// Checks packages/*; returns the names of the packages that exist.
fn check_packages(dir: &Path, config: &FinalConfig, report: &mut Report) -> Result<Vec<String>> {
    let names = folders(dir, "packages")?;
    report.packages = names.len();
    for name in &names {
        let base = format!("packages/{name}");
        if dir.join(&base).join("spec.lock").is_file() {
            check_vendored(dir, name, config, report);
            continue;
        }
        let spec_path = format!("{base}/spec");
        let Some(spec) = load_spec(dir, &spec_path, name, report) else { continue };
        if !dir.join(&base).join("packaging").is_file() {
            report.problem(&base, "has no packaging script");
        }
        for dependency in strings(&spec, "dependencies", &spec_path, report) {
            let present = dir.join("packages").join(&dependency).is_dir();
            if present {
                continue;
            }
            if VENDORED_BY_MAKE_RELEASE.contains(&dependency.as_str()) {
                report.notes.push(format!(
                    "{spec_path}: dependency '{dependency}' is not vendored yet; `make release` vendors it"
                ));
            } else {
                report
                    .problem(&spec_path, format!("depends on package '{dependency}', which does not exist"));
            }
        }
        for pattern in strings(&spec, "files", &spec_path, report) {
            if !glob_matches(dir, &pattern)? {
                let hint = if pattern.starts_with("etcd-broker-workspace/") {
                    " (src/etcd-broker-workspace/ is staged by `make release`: run it first)"
                } else {
                    ""
                };
                report.problem(
                    &spec_path,
                    format!("files pattern '{pattern}' matches nothing under src/ or blobs/{hint}"),
                );
            }
        }
    }
    Ok(names)
}

/// A package `bosh vendor-package` wrote: its `spec.lock` pins a fingerprint, which `bosh
/// create-release` looks up in .final_builds/packages/<name>/index.yml and then fetches from
/// the blobstore. A clone with the lock but without the index fails (Expected to find
/// '<name>/<fingerprint>'), and so does one whose local blobstore lacks the blob.
fn check_vendored(dir: &Path, name: &str, config: &FinalConfig, report: &mut Report) {
    let lock_path = format!("packages/{name}/spec.lock");
    let Some(lock) = load_spec(dir, &lock_path, name, report) else { return };
    let Some(fingerprint) = lock.get("fingerprint").and_then(Value::as_str) else {
        report.problem(&lock_path, "has no fingerprint");
        return;
    };
    let index_path = format!(".final_builds/packages/{name}/index.yml");
    let missing = || {
        format!(
            "pins '{name}/{fingerprint}', which {index_path} does not list: bosh create-release fails \
             (Expected to find '{name}/{fingerprint}'); commit {index_path} with the lock (bosh vendor-package writes both)"
        )
    };
    if !dir.join(&index_path).is_file() {
        report.problem(&lock_path, missing());
        return;
    }
    let index = match yaml(dir, &index_path) {
        Ok(index) => index,
        Err(e) => return report.problem(&index_path, format!("{e:#}")),
    };
    let Some(build) = index.get("builds").and_then(|b| b.get(fingerprint)) else {
        return report.problem(&lock_path, missing());
    };
    let (Some(blobstore), Some(blob)) =
        (&config.local_blobstore, build.get("blobstore_id").and_then(Value::as_str))
    else {
        return; // a remote blobstore cannot be checked offline
    };
    if !blobstore.join(blob).is_file() {
        report.problem(
            &index_path,
            format!(
                "names blob {blob} for '{name}/{fingerprint}', which the local blobstore {} lacks: bosh \
                 create-release fails reading it",
                blobstore.display()
            ),
        );
    }
}

/// A list of strings under `key` (absent = empty); anything else is reported.
fn strings(doc: &Value, key: &str, path: &str, report: &mut Report) -> Vec<String> {
    match doc.get(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| match item.as_str() {
                Some(s) => Some(s.to_owned()),
                None => {
                    report.problem(path, format!("`{key}` must hold strings only"));
                    None
                }
            })
            .collect(),
        Some(_) => {
            report.problem(path, format!("`{key}` must be a list"));
            Vec::new()
        }
    }
}

/// Whether a package `files` glob matches a file under src/ or blobs/, as `bosh create-release`
/// resolves it (directories alone do not count).
fn glob_matches(dir: &Path, pattern: &str) -> Result<bool> {
    for base in ["src", "blobs"] {
        let full = dir.join(base).join(pattern);
        let full = full.to_str().with_context(|| format!("{} is not UTF-8", full.display()))?;
        let paths = glob::glob(full).with_context(|| format!("bad files pattern '{pattern}'"))?;
        if paths.filter_map(Result::ok).any(|p| p.is_file()) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn check_jobs(dir: &Path, packages: &[String], report: &mut Report) -> Result<()> {
    let names = folders(dir, "jobs")?;
    report.jobs = names.len();
    for name in &names {
        let base = format!("jobs/{name}");
        let spec_path = format!("{base}/spec");
        let Some(spec) = load_spec(dir, &spec_path, name, report) else { continue };
        if !dir.join(&base).join("monit").is_file() {
            report.problem(&base, "has no monit file (errands need an empty one)");
        }
        match spec.get("templates") {
            None | Some(Value::Null) => {}
            Some(Value::Object(templates)) => {
                for source in templates.keys() {
                    let path = format!("{base}/templates/{source}");
                    match std::fs::read_to_string(dir.join(&path)) {
                        Err(_) => report.problem(&spec_path, format!("template '{source}' does not exist in {base}/templates/")),
                        Ok(text) if text.contains("<%") && !source.ends_with("properties.json.erb") => report.problem(
                            &path,
                            "has ERB tags; the release keeps ERB logic in properties.json.erb only (docs/rendering.md)",
                        ),
                        Ok(_) => {}
                    }
                }
            }
            Some(_) => {
                report.problem(&spec_path, "`templates` must map template files to their destinations")
            }
        }
        for package in strings(&spec, "packages", &spec_path, report) {
            if !packages.contains(&package) {
                report.problem(&spec_path, format!("uses package '{package}', which does not exist"));
            }
        }
        match spec.get("properties") {
            None | Some(Value::Null) => {}
            Some(Value::Object(properties)) => {
                for (property, definition) in properties {
                    let described = definition
                        .get("description")
                        .and_then(Value::as_str)
                        .is_some_and(|d| !d.trim().is_empty());
                    if !described {
                        report.problem(&spec_path, format!("property '{property}' has no description"));
                    }
                }
            }
            Some(_) => report.problem(&spec_path, "`properties` must be a map"),
        }
        for kind in ["provides", "consumes"] {
            for link in spec.get(kind).and_then(Value::as_array).into_iter().flatten() {
                if link.get("name").and_then(Value::as_str).is_none()
                    || link.get("type").and_then(Value::as_str).is_none()
                {
                    report.problem(&spec_path, format!("every link under `{kind}` needs a name and a type"));
                }
            }
        }
    }
    Ok(())
}

/// manifests/check.yml: what to render.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Checks {
    manifest: String,
    #[serde(default)]
    vars_files: Vec<String>,
    #[serde(default)]
    ops_files: BTreeMap<String, OpsCheck>,
    #[serde(default)]
    other_deployments: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OpsCheck {
    /// Link data files by link name, for links the ops file wires with `from:`.
    #[serde(default)]
    links: BTreeMap<String, String>,
    /// Ops files this one patches on top of, in order (e.g. the proxy's half of a key
    /// rotation needs the proxy's instance group and the broker's new key): "alone" renders
    /// them first, and "all together" puts them before it.
    #[serde(default)]
    requires: Vec<String>,
}

/// The ops-file combinations manifests/check.yml asks for, each in the order the files are
/// applied: none, each alone (after what it requires), all together (every file after what it
/// requires, else in the file's order). A requirement that is not listed under `ops_files`,
/// or a cycle, is an error.
fn combinations(ops_files: &BTreeMap<String, OpsCheck>) -> Result<Vec<Vec<&String>>> {
    fn place<'a>(
        file: &'a String,
        ops_files: &'a BTreeMap<String, OpsCheck>,
        placed: &mut Vec<&'a String>,
        visiting: &mut Vec<&'a String>,
    ) -> Result<()> {
        if placed.contains(&file) {
            return Ok(());
        }
        if visiting.contains(&file) {
            bail!("'{file}' requires itself (through {visiting:?})");
        }
        visiting.push(file);
        for required in &ops_files[file].requires {
            let Some((required, _)) = ops_files.get_key_value(required) else {
                bail!("'{file}' requires '{required}', which is not listed under ops_files");
            };
            place(required, ops_files, placed, visiting)?;
        }
        visiting.pop();
        placed.push(file);
        Ok(())
    }
    let mut combinations = vec![Vec::new()];
    for file in ops_files.keys() {
        let mut alone = Vec::new();
        place(file, ops_files, &mut alone, &mut Vec::new())?;
        combinations.push(alone);
    }
    if ops_files.len() > 1 {
        let mut all = Vec::new();
        for file in ops_files.keys() {
            place(file, ops_files, &mut all, &mut Vec::new())?;
        }
        combinations.push(all);
    }
    Ok(combinations)
}

/// The ops-file combinations `check release` renders for the release at `dir`
/// (manifests/check.yml), as paths in the order they are applied: for tests that compare
/// them with the real bosh CLI.
pub fn ops_combinations(dir: &Path) -> Result<Vec<Vec<PathBuf>>> {
    let checks: Checks = serde_json::from_value(yaml(dir, &format!("manifests/{CHECKS_FILE}"))?)?;
    let manifests = dir.join("manifests");
    Ok(combinations(&checks.ops_files)?
        .into_iter()
        .map(|files| files.into_iter().map(|file| manifests.join(file)).collect())
        .collect())
}

fn check_manifests(dir: &Path, release: &str, report: &mut Report) -> Result<()> {
    let manifests = dir.join("manifests");
    let checks_path = format!("manifests/{CHECKS_FILE}");
    if !manifests.join(CHECKS_FILE).is_file() {
        report.problem(&checks_path, "is missing: it lists what to render (docs/bosh.md)");
        return Ok(());
    }
    let checks: Checks = match yaml(dir, &checks_path).and_then(|v| Ok(serde_json::from_value(v)?)) {
        Ok(checks) => checks,
        Err(e) => {
            report.problem(&checks_path, format!("{e:#}"));
            return Ok(());
        }
    };

    // Every ops file is either rendered here or declared to be for another deployment.
    let operators = manifests.join("operators");
    let mut listed: Vec<String> =
        checks.ops_files.keys().chain(checks.other_deployments.keys()).cloned().collect();
    listed.sort();
    if operators.is_dir() {
        let mut found: Vec<String> = std::fs::read_dir(&operators)?
            .filter_map(Result::ok)
            .map(|e| format!("operators/{}", e.file_name().to_string_lossy()))
            .filter(|name| name.ends_with(".yml") || name.ends_with(".yaml"))
            .collect();
        found.sort();
        for file in found.iter().filter(|f| !listed.contains(f)) {
            report.problem(
                format!("manifests/{file}"),
                format!("is not listed in {checks_path} (ops_files or other_deployments)"),
            );
        }
    }
    for file in listed.iter().filter(|f| !manifests.join(f).is_file()) {
        report.problem(&checks_path, format!("lists '{file}', which does not exist"));
    }
    for file in checks.other_deployments.keys().filter(|f| manifests.join(f).is_file()) {
        if let Err(e) = render::check_ops_file(&manifests.join(file)) {
            report.problem(format!("manifests/{file}"), format!("{e:#}"));
        }
    }

    let present: BTreeMap<String, OpsCheck> = checks
        .ops_files
        .iter()
        .filter(|(file, _)| manifests.join(file).is_file())
        .map(|(file, check)| (file.clone(), check.clone()))
        .collect();
    let combinations = match combinations(&present) {
        Ok(combinations) => combinations,
        Err(e) => {
            report.problem(&checks_path, format!("{e:#}"));
            return Ok(());
        }
    };
    for combination in combinations {
        let ops: Vec<(&String, &OpsCheck)> =
            combination.into_iter().map(|file| (file, &present[file])).collect();
        render_combination(dir, release, &checks, &ops, report);
    }
    Ok(())
}

/// Renders every job of `release` in every instance group of the manifest with these ops files.
fn render_combination(
    dir: &Path,
    release: &str,
    checks: &Checks,
    ops: &[(&String, &OpsCheck)],
    report: &mut Report,
) {
    let manifests = dir.join("manifests");
    let manifest_path = manifests.join(&checks.manifest);
    let ops_files: Vec<PathBuf> = ops.iter().map(|(file, _)| manifests.join(file)).collect();
    let label = {
        let mut label = format!("manifests/{}", checks.manifest);
        for (file, _) in ops {
            label += &format!(" -o {file}");
        }
        label
    };
    let manifest = match render::patched_manifest(&manifest_path, &ops_files) {
        Ok(manifest) => manifest,
        Err(e) => {
            report.problem(label, format!("{e:#}"));
            return;
        }
    };
    let links: BTreeMap<&String, &String> = ops.iter().flat_map(|(_, check)| check.links.iter()).collect();
    for group in manifest["instance_groups"].as_array().into_iter().flatten() {
        let Some(group_name) = group["name"].as_str() else { continue };
        for job in group["jobs"].as_array().into_iter().flatten() {
            let (Some(job_name), Some(job_release)) = (job["name"].as_str(), job["release"].as_str()) else {
                continue;
            };
            if job_release != release {
                continue;
            }
            let consumed = consumed_links(dir, job_name);
            let args = RenderArgs {
                manifest: manifest_path.clone(),
                ops_files: ops_files.clone(),
                vars: Vec::new(),
                var_files: Vec::new(),
                vars_files: checks.vars_files.iter().map(|f| manifests.join(f)).collect(),
                instance_group: group_name.to_owned(),
                job: job_name.to_owned(),
                release_dir: Some(dir.to_owned()),
                links: links
                    .iter()
                    .filter(|(name, _)| consumed.contains(name))
                    .map(|(name, file)| format!("{name}={}", manifests.join(file).display()))
                    .collect(),
                index: 0,
                address: None,
                template: None,
                output_dir: None,
            };
            report.renders += 1;
            let what = format!("{label} (instance group {group_name}, job {job_name})");
            match render::render(&args) {
                Err(e) => report.problem(what, format!("does not render: {e:#}")),
                Ok(rendered) => {
                    if let Some((program, toml)) = rendered.toml {
                        if let Err(e) = program.check(&toml) {
                            report.problem(
                                what,
                                format!("renders a config the {} refuses: {e}", program.name()),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Names of the links a job's spec consumes (empty when the spec cannot be read: reported
/// by the job checks).
fn consumed_links(dir: &Path, job: &str) -> Vec<String> {
    let spec = yaml(dir, &format!("jobs/{job}/spec")).unwrap_or(Value::Null);
    spec.get("consumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|link| link.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(entries: &[(&str, &[&str])]) -> BTreeMap<String, OpsCheck> {
        entries
            .iter()
            .map(|(file, requires)| {
                let requires = requires.iter().map(|r| r.to_string()).collect();
                (file.to_string(), OpsCheck { requires, ..OpsCheck::default() })
            })
            .collect()
    }

    fn names(combinations: Vec<Vec<&String>>) -> Vec<Vec<&str>> {
        combinations.into_iter().map(|c| c.into_iter().map(String::as_str).collect()).collect()
    }

    #[test]
    fn a_required_ops_file_is_applied_first_alone_and_all_together() {
        let ops = checks(&[
            ("a-half.yml", &["z-group.yml", "b-key.yml"]),
            ("b-key.yml", &[]),
            ("z-group.yml", &[]),
        ]);
        let expected: Vec<Vec<&str>> = vec![
            vec![],
            vec!["z-group.yml", "b-key.yml", "a-half.yml"],
            vec!["b-key.yml"],
            vec!["z-group.yml"],
            vec!["z-group.yml", "b-key.yml", "a-half.yml"],
        ];
        assert_eq!(names(combinations(&ops).unwrap()), expected);
        let plain = checks(&[("a.yml", &[]), ("b.yml", &[])]);
        assert_eq!(
            names(combinations(&plain).unwrap()),
            vec![vec![], vec!["a.yml"], vec!["b.yml"], vec!["a.yml", "b.yml"]]
        );
    }

    #[test]
    fn an_unlisted_requirement_or_a_cycle_is_an_error() {
        let missing = checks(&[("a.yml", &["gone.yml"])]);
        let error = combinations(&missing).unwrap_err().to_string();
        assert!(
            error.contains("'a.yml' requires 'gone.yml', which is not listed under ops_files"),
            "{error}"
        );
        let cycle = checks(&[("a.yml", &["b.yml"]), ("b.yml", &["a.yml"])]);
        assert!(combinations(&cycle).unwrap_err().to_string().contains("requires itself"));
    }
}
