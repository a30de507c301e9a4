//! `etcd-broker-ops register` / `deregister`: the broker in Cloud Foundry's marketplace, through
//! the CF v3 API (no cf CLI needed): create or update the service broker, make its plans visible
//! (to everybody or to named organizations), or remove it. Both are idempotent, so the errands
//! (jobs/broker-registrar, jobs/broker-deregistrar) can run after every deploy. See
//! docs/registration.md.
//!
//! - `mod.rs`: flags, settings (flags or the errand's properties.json), the two commands;
//! - `cf.rs`: the CF API calls.

mod cf;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use cf::{CfClient, Login};

/// Where CF is and how to log in; shared by both commands.
#[derive(Debug, Clone, clap::Args)]
pub struct CfArgs {
    /// CF API URL, e.g. https://api.sys.example.com.
    #[arg(long, env = "CF_API")]
    pub cf_api: Option<String>,
    /// An admin user (password grant with the `cf` client)...
    #[arg(long, env = "CF_USERNAME", conflicts_with = "cf_client_id")]
    pub cf_username: Option<String>,
    /// ...and its password (prefer the environment variable).
    #[arg(long, env = "CF_PASSWORD", hide_env_values = true)]
    pub cf_password: Option<String>,
    /// Or a UAA client with cloud_controller.admin (client-credentials grant)...
    #[arg(long, env = "CF_CLIENT_ID")]
    pub cf_client_id: Option<String>,
    /// ...and its secret (prefer the environment variable).
    #[arg(long, env = "CF_CLIENT_SECRET", hide_env_values = true)]
    pub cf_client_secret: Option<String>,
    /// Accept any TLS certificate from the CF API and UAA.
    #[arg(long)]
    pub cf_skip_ssl_validation: bool,
    /// PEM CA certificate for the CF API and UAA (besides the system's).
    #[arg(long, value_name = "FILE")]
    pub cf_ca_file: Option<PathBuf>,
    /// Name of the service broker in CF.
    #[arg(long, default_value = "etcd-broker")]
    pub broker_name: String,
    /// Read the settings from the errand's rendered properties.json (cf.*, broker_name, ...,
    /// and the servicebroker link); flags given as well win.
    #[arg(long, value_name = "FILE")]
    pub bosh_properties: Option<PathBuf>,
}

/// Flags of `register`.
#[derive(Debug, Clone, clap::Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub cf: CfArgs,
    /// The URL CF calls the broker at.
    #[arg(long, env = "BROKER_URL")]
    pub broker_url: Option<String>,
    /// The broker's basic-auth user.
    #[arg(long, env = "BROKER_USERNAME")]
    pub broker_username: Option<String>,
    /// The broker's basic-auth password (prefer the environment variable).
    #[arg(long, env = "BROKER_PASSWORD", hide_env_values = true)]
    pub broker_password: Option<String>,
    /// Register a space-scoped broker in this space (no admin needed; plans visible there only).
    #[arg(long)]
    pub space_guid: Option<String>,
    /// Make the plans visible to this organization only (repeatable) instead of to everybody.
    #[arg(long = "org")]
    pub orgs: Vec<String>,
    /// Leave plan visibility alone.
    #[arg(long)]
    pub no_enable_access: bool,
}

/// What `register` does, resolved.
struct Registration {
    name: String,
    url: String,
    username: String,
    password: String,
    space_guid: Option<String>,
    orgs: Vec<String>,
    enable_access: bool,
}

/// CF connection settings, resolved.
struct CfSettings {
    api: String,
    login: Login,
    skip_tls_verification: bool,
    ca_pem: Option<String>,
}

/// The errand's properties.json: `{properties: {cf: ..., broker_name, ...}, links: {servicebroker}}`.
#[derive(Default)]
struct Errand {
    doc: Value,
}

impl Errand {
    fn load(path: Option<&Path>) -> Result<Errand> {
        let Some(path) = path else { return Ok(Errand::default()) };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let doc = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("{} is not JSON (line {}, column {})", path.display(), e.line(), e.column())
        })?;
        Ok(Errand { doc })
    }

    fn property(&self, name: &str) -> Option<&Value> {
        name.split('.').try_fold(&self.doc["properties"], |v, k| v.get(k)).filter(|v| !v.is_null())
    }

    fn text(&self, name: &str) -> Option<String> {
        self.property(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
    }

    fn link_property(&self, name: &str) -> Option<&Value> {
        let link = &self.doc["links"]["servicebroker"]["properties"];
        name.split('.').try_fold(link, |v, k| v.get(k)).filter(|v| !v.is_null())
    }

    /// The broker URL the link publishes: external_url, else the first instance and listen.port.
    fn broker_url(&self) -> Option<String> {
        if let Some(url) = self.text("broker_url") {
            return Some(url);
        }
        if let Some(url) = self.link_property("external_url").and_then(Value::as_str) {
            return Some(url.to_owned());
        }
        let address = self.doc["links"]["servicebroker"]["instances"][0]["address"].as_str()?;
        let port = self.link_property("listen.port").and_then(Value::as_u64).unwrap_or(8080);
        Some(format!("http://{address}:{port}"))
    }
}

fn cf_settings(args: &CfArgs, errand: &Errand) -> Result<CfSettings> {
    let api = args.cf_api.clone().or(errand.text("cf.api_url")).context("no CF API: give --cf-api")?;
    if !api.starts_with("https://") && !api.starts_with("http://") {
        bail!("--cf-api must be an http(s) URL");
    }
    let client_id = args.cf_client_id.clone().or(errand.text("cf.client_id"));
    let login =
        match client_id {
            Some(id) => Login::Client {
                secret: args
                    .cf_client_secret
                    .clone()
                    .or(errand.text("cf.client_secret"))
                    .context("--cf-client-id needs --cf-client-secret (or CF_CLIENT_SECRET)")?,
                id,
            },
            None => Login::User {
                username: args.cf_username.clone().or(errand.text("cf.username")).context(
                    "no CF login: give --cf-username/CF_PASSWORD or --cf-client-id/CF_CLIENT_SECRET",
                )?,
                password: args
                    .cf_password
                    .clone()
                    .or(errand.text("cf.password"))
                    .context("--cf-username needs --cf-password (or CF_PASSWORD)")?,
            },
        };
    let ca_pem = match &args.cf_ca_file {
        Some(path) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?)
        }
        None => errand.text("cf.ca_cert"),
    };
    let skip = args.cf_skip_ssl_validation
        || errand.property("cf.skip_ssl_validation").and_then(Value::as_bool).unwrap_or(false);
    Ok(CfSettings { api, login, skip_tls_verification: skip, ca_pem })
}

fn broker_name(args: &CfArgs, errand: &Errand) -> String {
    // The flag's default loses to the errand's property; an explicit flag value is the same.
    errand
        .text("broker_name")
        .filter(|_| args.broker_name == "etcd-broker")
        .unwrap_or_else(|| args.broker_name.clone())
}

async fn login(settings: &CfSettings) -> Result<CfClient> {
    let client = CfClient::login(
        &settings.api,
        &settings.login,
        settings.skip_tls_verification,
        settings.ca_pem.as_deref(),
        Duration::from_secs(60),
    )
    .await?;
    println!("logged in to {}", settings.api);
    Ok(client)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `register`: create or update the broker, then enable access to its plans.
pub fn register(args: &RegisterArgs) -> Result<()> {
    let errand = Errand::load(args.cf.bosh_properties.as_deref())?;
    let cf = cf_settings(&args.cf, &errand)?;
    let url = args.broker_url.clone().or(errand.broker_url()).context("no broker URL: give --broker-url")?;
    if !url.starts_with("https://") && !url.starts_with("http://") {
        bail!("--broker-url must be an http(s) URL");
    }
    let registration = Registration {
        name: broker_name(&args.cf, &errand),
        url,
        username: args
            .broker_username
            .clone()
            .or(errand.link_property("auth.username").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| "broker".into()),
        password: args
            .broker_password
            .clone()
            .or(errand.link_property("auth.password").and_then(Value::as_str).map(str::to_owned))
            .context("no broker password: set BROKER_PASSWORD or give --broker-password")?,
        space_guid: args.space_guid.clone().or(errand.text("space_guid")),
        orgs: if args.orgs.is_empty() {
            errand
                .property("orgs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        } else {
            args.orgs.clone()
        },
        enable_access: !args.no_enable_access
            && errand.property("enable_service_access").and_then(Value::as_bool).unwrap_or(true),
    };
    runtime()?.block_on(async {
        let client = login(&cf).await?;
        register_with(&client, &registration).await
    })
}

async fn register_with(client: &CfClient, r: &Registration) -> Result<()> {
    match client.find_broker(&r.name).await? {
        Some(broker) => {
            client.update_broker(&broker, &r.url, &r.username, &r.password).await?;
            println!("updated service broker '{}' at {}", r.name, r.url);
        }
        None => {
            client.create_broker(&r.name, &r.url, &r.username, &r.password, r.space_guid.as_deref()).await?;
            let scope =
                r.space_guid.as_ref().map(|s| format!(" (space-scoped, space {s})")).unwrap_or_default();
            println!("created service broker '{}' at {}{scope}", r.name, r.url);
        }
    }
    if !r.enable_access {
        println!("plan access left as it is (--no-enable-access)");
        return Ok(());
    }
    if r.space_guid.is_some() {
        println!("plans of a space-scoped broker are visible in its space only");
        return Ok(());
    }
    let plans = client.plans(&r.name).await?;
    if plans.is_empty() {
        bail!("CF lists no plans of broker '{}': is its catalog empty?", r.name);
    }
    let orgs = if r.orgs.is_empty() { Vec::new() } else { client.org_guids(&r.orgs).await? };
    for plan in &plans {
        if orgs.is_empty() {
            client.make_public(plan).await?;
            println!("service '{}' plan '{}': public", plan.offering, plan.name);
        } else {
            client.add_orgs(plan, &orgs).await?;
            println!("service '{}' plan '{}': visible to {}", plan.offering, plan.name, r.orgs.join(", "));
        }
    }
    Ok(())
}

/// `deregister`: remove the broker (nothing to do when CF does not know it).
pub fn deregister(args: &CfArgs) -> Result<()> {
    let errand = Errand::load(args.bosh_properties.as_deref())?;
    let cf = cf_settings(args, &errand)?;
    let name = broker_name(args, &errand);
    runtime()?.block_on(async {
        let client = login(&cf).await?;
        match client.find_broker(&name).await? {
            None => println!("service broker '{name}' is not registered: nothing to do"),
            Some(broker) => {
                client
                    .delete_broker(&broker)
                    .await
                    .with_context(|| format!("cannot remove service broker '{name}'"))?;
                println!("removed service broker '{name}'");
            }
        }
        Ok(())
    })
}
