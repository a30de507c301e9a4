//! `etcd-broker-ops blackbox`: the end-to-end suite, run from outside against any deployment.
//!
//! It plays a platform (OSB calls) and the apps (etcd calls with the credentials handed out):
//! the whole lifecycle plus isolation checks, each step timed and reported PASS / FAIL / SKIP.
//! One implementation, three uses: CI against a local stack (`ci/blackbox`), the errand
//! against a deployment (`jobs/etcd-broker-blackbox`), and operators by hand. See
//! docs/blackbox.md.
//!
//! - `mod.rs`: flags, settings (from flags or the errand's properties.json), the run;
//! - `suite.rs`: the steps;
//! - `report.rs`: step results, the terminal table and the JSON report.

mod report;
mod suite;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use etcd_broker::config::Secret;
use etcd_broker::tls::{ClientTls, Identity};

use crate::osb::BrokerTarget;
pub use report::{Outcome, StepResult};

/// Flags of `etcd-broker-ops blackbox`.
#[derive(Debug, Clone, clap::Args)]
pub struct BlackboxArgs {
    /// The broker's base URL, e.g. http://10.0.0.5:8080.
    #[arg(long, env = "BROKER_URL", required_unless_present = "bosh_properties")]
    pub broker_url: Option<String>,
    /// Basic-auth user of the broker.
    #[arg(long, env = "BROKER_USERNAME", default_value = "broker")]
    pub broker_username: String,
    /// Basic-auth password of the broker (prefer the environment variable).
    #[arg(long, env = "BROKER_PASSWORD", hide_env_values = true)]
    pub broker_password: Option<String>,
    /// Accept any TLS certificate from the broker (self-signed test deployments).
    #[arg(long)]
    pub skip_broker_tls_verification: bool,
    /// Catalog service to test [default: the first bindable one].
    #[arg(long)]
    pub service: Option<String>,
    /// Plan of that service [default: its first plan].
    #[arg(long)]
    pub plan: Option<String>,
    /// etcd client URLs to use instead of the endpoints in the credentials (comma-separated),
    /// when this machine reaches etcd differently from the apps.
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// PEM CA verifying etcd's certificate [default: the credentials' tls.ca_certificate].
    #[arg(long, value_name = "FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM client certificate for etcd (when etcd demands client certificates).
    #[arg(long, value_name = "FILE", requires = "etcd_key_file")]
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, value_name = "FILE", requires = "etcd_cert_file")]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd root user, for the final "nothing left behind" check.
    #[arg(long, env = "ETCD_ROOT_USERNAME", default_value = "root")]
    pub etcd_root_username: String,
    /// Its password; without it the final check is skipped (prefer the environment variable).
    #[arg(long, env = "ETCD_ROOT_PASSWORD", hide_env_values = true)]
    pub etcd_root_password: Option<String>,
    /// The broker's prefixes.state: roles its role reaper has yet to delete are queued there and
    /// do not count as left behind.
    #[arg(long, default_value = etcd_broker::broker::names::DEFAULT_STATE_PREFIX)]
    pub state_prefix: String,
    /// Time limit of each step, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Read the settings from the errand's rendered properties.json (its servicebroker and
    /// etcd links and properties); flags given as well win.
    #[arg(long, value_name = "FILE")]
    pub bosh_properties: Option<PathBuf>,
}

/// Everything a run needs, resolved from flags and/or the errand's properties.
#[derive(Debug, Clone)]
pub struct Settings {
    pub broker: BrokerTarget,
    pub service: Option<String>,
    pub plan: Option<String>,
    pub etcd_endpoints: Vec<String>,
    /// TLS towards etcd; without a CA here, the one in the credentials is used.
    pub etcd_tls: ClientTls,
    /// The etcd root user and password, for the final check.
    pub root: Option<(String, Secret)>,
    /// The broker's prefixes.state (where its queue of roles to delete lives).
    pub state_prefix: String,
    pub step_timeout: Duration,
}

impl Settings {
    /// Resolves flags over the errand's properties.json (if any).
    pub fn resolve(args: &BlackboxArgs) -> Result<Settings> {
        let errand = match &args.bosh_properties {
            Some(path) => Some(ErrandProperties::load(path)?),
            None => None,
        };
        let errand = errand.unwrap_or_default();
        let url =
            args.broker_url.clone().or(errand.broker_url).context("no broker URL: give --broker-url")?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--broker-url must start with http:// or https://");
        }
        let username = errand.broker_username.unwrap_or_else(|| args.broker_username.clone());
        let password = args
            .broker_password
            .clone()
            .or(errand.broker_password)
            .context("no broker password: set BROKER_PASSWORD or give --broker-password")?;
        let read = |path: &Option<PathBuf>| -> Result<Option<Vec<u8>>> {
            path.as_ref()
                .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
                .transpose()
        };
        let ca = read(&args.etcd_ca_file)?.or(errand.etcd_ca.map(String::into_bytes));
        let identity = match (read(&args.etcd_cert_file)?, read(&args.etcd_key_file)?) {
            (Some(certificate), Some(private_key)) => Some(Identity { certificate, private_key }),
            _ => errand.etcd_client.map(|(certificate, key)| Identity {
                certificate: certificate.into_bytes(),
                private_key: key.into_bytes(),
            }),
        };
        let endpoints = if args.etcd.is_empty() { errand.etcd_endpoints } else { args.etcd.clone() };
        for endpoint in &endpoints {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                bail!("etcd endpoint '{endpoint}' must start with http:// or https://");
            }
        }
        let root_password = args.etcd_root_password.clone().or(errand.etcd_root_password);
        let root_username = errand.etcd_root_username.unwrap_or_else(|| args.etcd_root_username.clone());
        Ok(Settings {
            broker: BrokerTarget {
                url,
                username,
                password,
                skip_tls_verification: args.skip_broker_tls_verification
                    || errand.skip_broker_tls_verification,
            },
            service: args.service.clone().or(errand.service),
            plan: args.plan.clone().or(errand.plan),
            etcd_endpoints: endpoints,
            etcd_tls: ClientTls { ca, identity },
            root: root_password.map(|p| (root_username, Secret::new(p))),
            state_prefix: args.state_prefix.clone(),
            step_timeout: Duration::from_secs(errand.timeout.unwrap_or(args.timeout)),
        })
    }
}

/// What the errand's properties.json (jobs/etcd-broker-blackbox) contributes.
#[derive(Debug, Default)]
struct ErrandProperties {
    broker_url: Option<String>,
    broker_username: Option<String>,
    broker_password: Option<String>,
    skip_broker_tls_verification: bool,
    service: Option<String>,
    plan: Option<String>,
    etcd_endpoints: Vec<String>,
    etcd_ca: Option<String>,
    etcd_client: Option<(String, String)>,
    etcd_root_username: Option<String>,
    etcd_root_password: Option<String>,
    timeout: Option<u64>,
}

impl ErrandProperties {
    fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("{} is not JSON (line {}, column {})", path.display(), e.line(), e.column())
        })?;
        Self::from_json(&doc).with_context(|| format!("in {}", path.display()))
    }

    /// `{properties: {...}, links: {servicebroker: ..., etcd: ...}}` as the errand's ERB writes it.
    fn from_json(doc: &Value) -> Result<Self> {
        let p = &doc["properties"];
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let lookup = |path: &str| path.split('.').try_fold(p, |v, k| v.get(k)).filter(|v| !v.is_null());
        let mut errand = ErrandProperties {
            service: lookup("service").and_then(text),
            plan: lookup("plan").and_then(text),
            skip_broker_tls_verification: lookup("skip_broker_tls_verification")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            etcd_root_username: lookup("etcd.root_username").and_then(text),
            etcd_root_password: lookup("etcd.root_password").and_then(text),
            etcd_ca: lookup("etcd.ca").and_then(text),
            timeout: lookup("timeout").and_then(Value::as_u64),
            ..Default::default()
        };
        if let (Some(cert), Some(key)) =
            (lookup("etcd.certificate").and_then(text), lookup("etcd.private_key").and_then(text))
        {
            errand.etcd_client = Some((cert, key));
        }
        if let Some(endpoints) = lookup("etcd.endpoints").and_then(Value::as_array) {
            errand.etcd_endpoints = endpoints.iter().filter_map(text).collect();
        }
        let broker = &doc["links"]["servicebroker"];
        if !broker.is_null() {
            let lp = |path: &str| {
                path.split('.').try_fold(&broker["properties"], |v, k| v.get(k)).filter(|v| !v.is_null())
            };
            errand.broker_username = lp("auth.username").and_then(text);
            errand.broker_password = lp("auth.password").and_then(text);
            errand.broker_url = match lp("external_url").and_then(text) {
                Some(url) => Some(url),
                None => {
                    let address = broker["instances"][0]["address"]
                        .as_str()
                        .context("the servicebroker link has no instance and no external_url")?;
                    let port = lp("listen.port").and_then(Value::as_u64).unwrap_or(8080);
                    Some(format!("http://{address}:{port}"))
                }
            };
        }
        if let Some(url) = lookup("broker_url").and_then(text) {
            errand.broker_url = Some(url);
        }
        let etcd = &doc["links"]["etcd"];
        if errand.etcd_endpoints.is_empty() && !etcd.is_null() {
            let port = etcd["properties"]["port"].as_u64().unwrap_or(2379);
            let scheme = if errand.etcd_ca.is_some() { "https" } else { "http" };
            errand.etcd_endpoints = etcd["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["address"].as_str())
                .map(|address| format!("{scheme}://{address}:{port}"))
                .collect();
        }
        Ok(errand)
    }
}

/// Runs the suite, prints the table, writes the JSON; fails (exit 1) unless every step passed.
pub fn run(args: &BlackboxArgs) -> Result<()> {
    let settings = Settings::resolve(args)?;
    let etcd = match settings.etcd_endpoints.as_slice() {
        [] => "as in the credentials".to_owned(),
        endpoints => endpoints.join(","),
    };
    println!("blackbox: broker {}, etcd {etcd}", settings.broker.url);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(suite::run(&settings, &mut |step: &StepResult| {
        println!("{}", step.line());
    }))?;
    println!("{}", report.summary());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.to_json()).expect("a report serializes");
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    if !report.passed() {
        bail!("{} of {} steps failed", report.count(Outcome::Fail), report.steps.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errand_properties_give_the_broker_url_credentials_and_etcd_endpoints() {
        let doc = json!({
            "properties": { "plan": "shared", "etcd": { "root_password": "r00t", "ca": "PEM" }, "timeout": 9 },
            "links": {
                "servicebroker": {
                    "instances": [{ "address": "10.0.0.5" }],
                    "properties": { "auth": { "username": "b", "password": "pw" }, "listen": { "port": 8443 } },
                },
                "etcd": { "instances": [{ "address": "e0" }, { "address": "e1" }], "properties": { "port": 4001 } },
            },
        });
        let errand = ErrandProperties::from_json(&doc).unwrap();
        assert_eq!(errand.broker_url.as_deref(), Some("http://10.0.0.5:8443"));
        assert_eq!(
            (errand.broker_username.as_deref(), errand.broker_password.as_deref()),
            (Some("b"), Some("pw"))
        );
        assert_eq!(errand.etcd_endpoints, ["https://e0:4001", "https://e1:4001"]);
        assert_eq!((errand.plan.as_deref(), errand.timeout), (Some("shared"), Some(9)));
        assert_eq!(errand.etcd_root_password.as_deref(), Some("r00t"));

        let mut with_url = doc.clone();
        with_url["links"]["servicebroker"]["properties"]["external_url"] =
            json!("https://broker.example.com");
        let errand = ErrandProperties::from_json(&with_url).unwrap();
        assert_eq!(errand.broker_url.as_deref(), Some("https://broker.example.com"));

        let mut no_instance = doc;
        no_instance["links"]["servicebroker"]["instances"] = json!([]);
        assert!(ErrandProperties::from_json(&no_instance).is_err());
    }

    #[test]
    fn flags_win_over_the_errand_and_bad_urls_are_refused() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: BlackboxArgs,
        }
        let parse = |extra: &[&str]| {
            let mut argv = vec!["blackbox", "--broker-url", "http://b:1", "--broker-password", "pw"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|c| c.args)
        };
        let args = parse(&["--etcd", "http://a:1,http://b:2", "--timeout", "5"]).unwrap();
        let settings = Settings::resolve(&args).unwrap();
        assert_eq!(settings.etcd_endpoints, ["http://a:1", "http://b:2"]);
        assert_eq!(settings.step_timeout, Duration::from_secs(5));
        assert!(settings.root.is_none() || std::env::var("ETCD_ROOT_PASSWORD").is_ok());

        let args = parse(&["--etcd", "a:1"]).unwrap();
        assert!(Settings::resolve(&args).unwrap_err().to_string().contains("must start with http"));
        assert!(parse(&["--timeout", "0"]).is_err());
        assert!(parse(&["--etcd-cert-file", "c.pem"]).is_err(), "a certificate needs its key");
        let args = parse(&["--etcd-root-password", "r00t-pw"]).unwrap();
        let debug = format!("{:?}", Settings::resolve(&args).unwrap());
        assert!(!debug.contains("r00t-pw"), "settings' Debug shows no password: {debug}");
        assert!(!debug.contains("pw"), "settings' Debug shows no password: {debug}");
    }
}
