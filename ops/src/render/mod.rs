//! `etcd-broker-ops render`: the BOSH director's part of the configuration flow, offline.
//!
//! manifest -> ops files (`patch`) -> variables (`vars`) -> instance group and job -> job
//! properties resolved against the job's spec, links, instance spec (`director`) -> the
//! `properties.json` the job's ERB template writes -> the broker's TOML, rendered with the very
//! template and helpers the broker uses at start (`etcd_broker::render`) -> validated like
//! `etcd-broker check-config`. Local runs, CI and `make bosh_scp` thus use exactly the config a
//! deployment gets. See docs/rendering.md.
//!
//! - `yaml.rs`: YAML files as JSON values.
//! - `patch.rs`: ops files (go-patch paths and operations).
//! - `vars.rs`: `((variables))` and the `-v`/`--var-file`/`-l` flags.
//! - `director.rs`: instance group, job, property resolution, links, spec, the ERB's output.

mod director;
mod patch;
mod vars;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use director::{Instance, JobSpec};
use vars::Vars;

/// The job whose ERB template `properties_json` mirrors and whose config the TOML template makes.
const BROKER_JOB: &str = "etcd-broker";
/// The tenant proxy's job: the same ERB dump, its own TOML template (built into the proxy).
const PROXY_JOB: &str = "etcd-broker-proxy";

/// Which program's config a rendered TOML is, and so how it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Broker,
    Proxy,
}

impl Program {
    /// The config file's name in --output-dir.
    pub fn file_name(self) -> &'static str {
        match self {
            Program::Broker => "etcd-broker.toml",
            Program::Proxy => "etcd-broker-proxy.toml",
        }
    }

    /// "broker" or "proxy", for messages.
    pub fn name(self) -> &'static str {
        match self {
            Program::Broker => "broker",
            Program::Proxy => "proxy",
        }
    }

    /// Checks `toml` as the program would at start; the error never quotes a value.
    pub fn check(self, toml: &str) -> Result<(), String> {
        match self {
            Program::Broker => {
                etcd_broker::config::Config::from_toml(toml).map(|_| ()).map_err(|e| e.to_string())
            }
            Program::Proxy => etcd_broker_proxy::config::Args::config_from_toml(toml, "the rendered config")
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }
}

/// Flags of `etcd-broker-ops render` (the BOSH CLI's spelling where BOSH has one).
#[derive(Debug, Clone, clap::Args)]
pub struct RenderArgs {
    /// The deployment manifest (YAML), e.g. manifests/etcd-broker.yml.
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,
    /// An ops file applied to the manifest, in the order given (like `bosh -o`).
    #[arg(short = 'o', long = "ops-file", value_name = "FILE")]
    pub ops_files: Vec<PathBuf>,
    /// A variable: name=value, the value read as YAML (like `bosh -v`); wins over the others.
    #[arg(short = 'v', long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// A variable set to a file's contents: name=path (like `bosh --var-file`), e.g. a PEM.
    #[arg(long = "var-file", value_name = "NAME=PATH")]
    pub var_files: Vec<String>,
    /// A YAML file of variables (like `bosh -l`); later files win.
    #[arg(short = 'l', long = "vars-file", value_name = "FILE")]
    pub vars_files: Vec<PathBuf>,
    /// The instance group to render.
    #[arg(long, default_value = "etcd-broker")]
    pub instance_group: String,
    /// The job of that instance group to render; its spec is read from the release.
    #[arg(long, default_value = BROKER_JOB)]
    pub job: String,
    /// The release tree holding jobs/<job>/spec [default: the enclosing checkout of this
    /// repository, found from the current directory].
    #[arg(long, value_name = "DIR")]
    pub release_dir: Option<PathBuf>,
    /// The data of a consumed link: name=FILE, YAML {instances: [{address: ...}], properties:
    /// {...}}; for links the manifest wires with `from:` (offline there is no provider).
    #[arg(long = "link", value_name = "NAME=FILE")]
    pub links: Vec<String>,
    /// The index of the instance to pretend to be (spec.index, spec.bootstrap, spec.az).
    #[arg(long, default_value_t = 0)]
    pub index: u64,
    /// spec.address of that instance [default: <instance-group>-<index>.example.internal].
    #[arg(long)]
    pub address: Option<String>,
    /// A handlebars template instead of the built-in templates/etcd-broker.toml.hbs (or, for
    /// the etcd-broker-proxy job, templates/etcd-broker-proxy.toml.hbs).
    #[arg(long, value_name = "FILE")]
    pub template: Option<PathBuf>,
    /// Write properties.json, etcd-broker.toml (or etcd-broker-proxy.toml) and context.json (what BOSH hands the templates)
    /// here (mode 0600) instead of printing the TOML to stdout.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
}

/// Everything one render produced.
#[derive(Debug)]
pub struct Rendered {
    /// What the director hands the job's templates.
    pub context: Value,
    /// What the job's ERB template writes (etcd-broker and etcd-broker-proxy jobs only).
    pub properties_json: Option<Value>,
    /// The program's config (etcd-broker and etcd-broker-proxy jobs only) and which it is.
    pub toml: Option<(Program, String)>,
    /// Notes for the operator (undeclared properties, unwired links); never values.
    pub warnings: Vec<String>,
}

/// Runs `etcd-broker-ops render`: renders, reports, writes or prints; fails when the broker
/// would refuse the config.
pub fn run(args: &RenderArgs) -> Result<()> {
    let rendered = render(args)?;
    for warning in &rendered.warnings {
        eprintln!("warning: {warning}");
    }
    match &args.output_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            crate::private_file::write_private(&dir.join("context.json"), &pretty(&rendered.context))?;
            if let (Some(json), Some((program, toml))) = (&rendered.properties_json, &rendered.toml) {
                crate::private_file::write_private(&dir.join("properties.json"), &pretty(json))?;
                crate::private_file::write_private(&dir.join(program.file_name()), toml)?;
                eprintln!(
                    "wrote properties.json, {} and context.json to {}",
                    program.file_name(),
                    dir.display()
                );
            } else {
                eprintln!("wrote context.json to {}", dir.display());
            }
        }
        None => match &rendered.toml {
            Some((_, toml)) => print!("{toml}"),
            None => print!("{}", pretty(&rendered.context)),
        },
    }
    if let Some((program, toml)) = &rendered.toml {
        program
            .check(toml)
            .map_err(|e| anyhow!("the rendered config would be refused by the {}: {e}", program.name()))?;
    }
    Ok(())
}

/// Resolves and renders without writing or validating anything, for callers that check many
/// manifest and ops-file combinations.
pub fn render(args: &RenderArgs) -> Result<Rendered> {
    let manifest = patched_manifest(&args.manifest, &args.ops_files)?;
    let vars = Vars::from_flags(&args.vars_files, &args.var_files, &args.vars).map_err(|e| anyhow!(e))?;

    // Like the director, resolve only what this instance group uses.
    let mut group =
        director::instance_group(&manifest, &args.instance_group).map_err(|e| anyhow!(e))?.clone();
    let mut global = manifest.get("properties").cloned().unwrap_or(Value::Null);
    let mut missing = BTreeSet::new();
    vars::interpolate(&mut group, &vars, &mut missing).map_err(|e| anyhow!(e))?;
    vars::interpolate(&mut global, &vars, &mut missing).map_err(|e| anyhow!(e))?;
    if !missing.is_empty() {
        bail!("{}", missing_variables(&manifest, &missing));
    }
    let job = director::job(&group, &args.instance_group, &args.job).map_err(|e| anyhow!(e))?;

    let release_dir = match &args.release_dir {
        Some(dir) => dir.clone(),
        None => default_release_dir(&args.job)?,
    };
    let spec = JobSpec::load(&release_dir, &args.job).map_err(|e| anyhow!(e))?;
    let mut with_global = manifest.clone();
    with_global["properties"] = global;
    let source = director::manifest_properties(&with_global, &group, job);
    let properties = director::resolve_properties(&spec, &source).map_err(|e| anyhow!(e))?;
    let mut warnings: Vec<String> = director::undeclared_properties(&spec, &source)
        .into_iter()
        .map(|name| format!("property '{name}' is set in the manifest but jobs/{}/spec does not declare it; BOSH ignores it", args.job))
        .collect();

    let overrides = link_overrides(&args.links)?;
    let links = director::resolve_links(&spec, job, &args.job, &overrides).map_err(|e| anyhow!(e))?;
    let other_jobs = manifest["instance_groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["jobs"].as_array().into_iter().flatten())
        .filter_map(|j| j["name"].as_str())
        .any(|name| name != args.job && name != "bpm");
    for (name, _) in &spec.consumes {
        let wired = job.get("consumes").and_then(|c| c.get(name)).is_some();
        if other_jobs && !links.contains_key(name) && !wired {
            warnings.push(format!(
                "link '{name}' is not wired in the manifest: rendering without it; BOSH could still find a provider \
                 in the deployment (give --link {name}=FILE to render with one)"
            ));
        }
    }
    let instance = Instance { index: args.index, address: args.address.as_deref() };
    let instance_spec = director::instance_spec(&manifest, &group, &args.instance_group, &instance)
        .map_err(|e| anyhow!(e))?;
    let context = director::template_context(properties, links, instance_spec);

    let (program, built_in) = match args.job.as_str() {
        BROKER_JOB => (Program::Broker, etcd_broker::render::CONFIG_TEMPLATE),
        PROXY_JOB => (Program::Proxy, etcd_broker_proxy::config::BOSH_TEMPLATE),
        _ => return Ok(Rendered { context, properties_json: None, toml: None, warnings }),
    };
    let properties_json = director::properties_json(&spec, &context);
    let template = match &args.template {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read template {}", path.display()))?,
        None => built_in.to_owned(),
    };
    let toml = etcd_broker::render::render_config(&template, &properties_json.to_string())?;
    Ok(Rendered { context, properties_json: Some(properties_json), toml: Some((program, toml)), warnings })
}

/// The manifest with the ops files applied in order (variables not yet interpolated), the way
/// `bosh deploy -o` builds it.
pub fn patched_manifest(manifest_path: &Path, ops_files: &[PathBuf]) -> Result<Value> {
    let mut manifest = read_yaml(manifest_path, "manifest")?;
    if !manifest.is_object() {
        bail!("manifest {} is not a map", manifest_path.display());
    }
    for file in ops_files {
        let what = format!("ops file {}", file.display());
        let ops = patch::parse_ops(&read_yaml(file, "ops file")?, &what).map_err(|e| anyhow!(e))?;
        for (i, op) in ops.iter().enumerate() {
            op.apply(&mut manifest).map_err(|e| anyhow!("{what}: operation [{i}] failed: {e}"))?;
        }
    }
    Ok(manifest)
}

/// What `bosh int MANIFEST -o OPS... -l VARS...` prints, as a value: the ops files applied,
/// then every `((variable))` the vars files supply interpolated; the others stay in place, as
/// `bosh int` leaves them without `--var-errs`, and so do the `variables:` definitions of
/// those (`bosh int` drops a definition whose value is given). The offline model of the director's first
/// step, compared with the real CLI in ops/tests/it/render_bosh_int.rs.
pub fn interpolated_manifest(
    manifest_path: &Path,
    ops_files: &[PathBuf],
    vars_files: &[PathBuf],
) -> Result<Value> {
    let mut manifest = patched_manifest(manifest_path, ops_files)?;
    let vars = Vars::from_flags(vars_files, &[], &[]).map_err(|e| anyhow!(e))?;
    vars::interpolate(&mut manifest, &vars, &mut BTreeSet::new()).map_err(|e| anyhow!(e))?;
    if let Some(Value::Array(definitions)) = manifest.get_mut("variables") {
        definitions
            .retain(|d| !d.get("name").and_then(Value::as_str).is_some_and(|name| vars.supplies(name)));
    }
    Ok(manifest)
}

/// Checks an ops file's shape (type, path, value of each operation) without applying it, for
/// ops files of other deployments; returns how many operations it has.
pub fn check_ops_file(file: &Path) -> Result<usize> {
    let what = format!("ops file {}", file.display());
    Ok(patch::parse_ops(&read_yaml(file, "ops file")?, &what).map_err(|e| anyhow!(e))?.len())
}

/// A YAML file as a JSON value; `what` names it in errors ("manifest", "ops file", ...).
pub fn read_yaml(path: &Path, what: &str) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    yaml::parse(&text, &format!("{what} {}", path.display())).map_err(|e| anyhow!(e))
}

/// "missing variables: a, b ..." with a hint for those BOSH would generate.
fn missing_variables(manifest: &Value, missing: &BTreeSet<String>) -> String {
    let declared: BTreeSet<&str> = manifest
        .get("variables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .collect();
    let names: Vec<&str> = missing.iter().map(String::as_str).collect();
    let mut message = format!(
        "missing variables: {} (give them with -v name=value, --var-file name=path or -l vars.yml)",
        names.join(", ")
    );
    let generated: Vec<&str> = names.iter().copied().filter(|n| declared.contains(n)).collect();
    if !generated.is_empty() {
        message += &format!(
            "; {} declared under the manifest's variables: BOSH generates them at deploy time, offline they need a value",
            generated.join(", ")
        );
    }
    message
}

fn link_overrides(flags: &[String]) -> Result<BTreeMap<String, Value>> {
    let mut links = BTreeMap::new();
    for flag in flags {
        let Some((name, file)) = flag.split_once('=').filter(|(n, f)| !n.is_empty() && !f.is_empty()) else {
            bail!("--link '{flag}' must look like name=FILE");
        };
        let data = read_yaml(Path::new(file), &format!("--link {name} file"))?;
        if !data.is_object() {
            bail!("--link {name}: {file} is not a map with instances and properties");
        }
        links.insert(name.to_owned(), data);
    }
    Ok(links)
}

/// The checkout this command runs in (the nearest directory above the current one holding
/// jobs/<job>/spec), else the workspace this binary was built from.
fn default_release_dir(job: &str) -> Result<PathBuf> {
    let has_spec = |dir: &Path| dir.join("jobs").join(job).join("spec").is_file();
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    if let Some(dir) = cwd.ancestors().find(|d| has_spec(d)) {
        return Ok(dir.to_owned());
    }
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if has_spec(&built_from) {
        return Ok(built_from);
    }
    bail!("cannot find jobs/{job}/spec above {}; give the release tree with --release-dir", cwd.display())
}

/// "a map", "a list", ... for messages about a value of the wrong type (never the value).
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values always serialize");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        render: RenderArgs,
    }

    #[test]
    fn flags_parse_with_the_bosh_cli_spellings() {
        let cli = Cli::try_parse_from([
            "render",
            "--manifest",
            "m.yml",
            "-o",
            "a.yml",
            "--ops-file",
            "b.yml",
            "-v",
            "x=1",
            "--var",
            "y=2",
            "-l",
            "v.yml",
            "--var-file",
            "ca=ca.pem",
            "--link",
            "etcd=l.yml",
            "--index",
            "1",
            "--output-dir",
            "out",
        ])
        .unwrap();
        let args = cli.render;
        assert_eq!(args.ops_files, [PathBuf::from("a.yml"), PathBuf::from("b.yml")]);
        assert_eq!(args.vars, ["x=1", "y=2"]);
        assert_eq!((args.vars_files.len(), args.var_files.len(), args.links.len(), args.index), (1, 1, 1, 1));
        assert_eq!((args.instance_group.as_str(), args.job.as_str()), ("etcd-broker", "etcd-broker"));
        assert_eq!(args.output_dir, Some(PathBuf::from("out")));
        assert!(Cli::try_parse_from(["render"]).is_err(), "--manifest is required");
        assert!(Cli::try_parse_from(["render", "--manifest", "m", "--index", "-1"]).is_err());
    }
}
