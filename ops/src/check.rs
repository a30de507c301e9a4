//! `etcd-broker-ops check release`: the mistakes `bosh create-release` or a deploy would find
//! late (or never), found in seconds on the release tree.
//!
//! - config/final.yml names the release;
//! - every job: `spec` name equals its folder, every template and package it names exists,
//!   every property has a description, a `monit` file exists, and ERB logic lives only in
//!   `properties.json.erb` (the release's one ERB template shape; see docs/rendering.md);
//! - every package: `spec` name equals its folder, `packaging` exists, every dependency exists
//!   (or is vendored by `make release`), every `files` glob matches something under src/ or blobs/;
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
    let release_name = check_final_yml(dir, &mut report);
    let packages = check_packages(dir, &mut report)?;
    check_jobs(dir, &packages, &mut report)?;
    check_manifests(dir, release_name.as_deref().unwrap_or("etcd-broker"), &mut report)?;
    Ok(report)
}

fn check_final_yml(dir: &Path, report: &mut Report) -> Option<String> {
    let path = "config/final.yml";
    match yaml(dir, path) {
        Ok(doc) => match doc.get("final_name").or(doc.get("name")).and_then(Value::as_str) {
            Some(name) => Some(name.to_owned()),
            None => {
                report.problem(path, "has no `name` (the release name)");
                None
            }
        },
        Err(e) => {
            report.problem(path, format!("{e:#}"));
            None
        }
    }
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
fn check_packages(dir: &Path, report: &mut Report) -> Result<Vec<String>> {
    let names = folders(dir, "packages")?;
    report.packages = names.len();
    for name in &names {
        let base = format!("packages/{name}");
        if dir.join(&base).join("spec.lock").is_file() {
            continue; // a vendored package: bosh vendor-package wrote it
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

    let ops: Vec<(&String, &OpsCheck)> =
        checks.ops_files.iter().filter(|(file, _)| manifests.join(file).is_file()).collect();
    let mut combinations: Vec<Vec<(&String, &OpsCheck)>> = vec![Vec::new()];
    combinations.extend(ops.iter().map(|op| vec![*op]));
    if ops.len() > 1 {
        combinations.push(ops.clone());
    }
    for combination in combinations {
        render_combination(dir, release, &checks, &combination, report);
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
                    if let Some(toml) = rendered.toml {
                        if let Err(e) = etcd_broker::config::Config::from_toml(&toml) {
                            report.problem(what, format!("renders a config the broker refuses: {e}"));
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
