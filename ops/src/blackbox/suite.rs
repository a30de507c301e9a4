//! The blackbox steps: the lifecycle of two instances whose ids are prefixes of one another, with
//! the apps' view (etcd calls with the handed-out credentials) checked at every stage.
//!
//! A failed step that later steps depend on stops the run (one SKIP line says so); a failed
//! check that nothing depends on does not. Whatever was created is removed at the end, also
//! after a failure or Ctrl-C.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use etcd_client::{Client, ConnectOptions, GetOptions, Permission};
use reqwest::StatusCode;
use serde_json::Value;

use super::report::{Outcome, Report, StepResult};
use super::Settings;
use crate::osb::{Incomplete, Offering, OsbClient};
use etcd_broker::broker::names::{Names, DEFAULT_DATA_PREFIX};
use etcd_broker::etcd::resend_on_auth_change;
use etcd_broker::tls::{ClientTls, Identity};

/// Runs the suite; `on_step` sees each result as it is made (the terminal lines).
pub async fn run(settings: &Settings, on_step: &mut dyn FnMut(&StepResult)) -> Result<Report> {
    let osb = OsbClient::new(settings.broker.clone(), settings.step_timeout)?;
    let a = format!("blackbox-{}", etcd_broker::secrets::random_password().get(..12).unwrap_or("run"));
    let run = Run {
        settings,
        osb,
        suite: Suite { report: Report::default(), on_step, timeout: settings.step_timeout, blocked: None },
        offering: None,
        b: format!("{a}x"),
        a,
        live_instances: Vec::new(),
    };
    let mut run = run;
    tokio::select! {
        () = run.steps() => {}
        _ = tokio::signal::ctrl_c() => {
            run.suite.blocked = Some("interrupted".into());
            run.suite.record("interrupted (Ctrl-C)", Outcome::Fail, Duration::ZERO, Some("cleaning up".into()));
        }
    }
    run.clean_up().await;
    Ok(run.suite.report)
}

struct Suite<'a> {
    report: Report,
    on_step: &'a mut dyn FnMut(&StepResult),
    timeout: Duration,
    /// The required step that failed; every later step is skipped.
    blocked: Option<String>,
}

impl Suite<'_> {
    fn record(&mut self, name: &str, outcome: Outcome, duration: Duration, detail: Option<String>) {
        let result = StepResult { name: name.to_owned(), outcome, duration, detail };
        (self.on_step)(&result);
        self.report.steps.push(result);
    }

    /// Runs a check within the step time limit; a failure is reported, later steps still run.
    async fn step<T>(&mut self, name: &str, check: impl Future<Output = Result<T>>) -> Option<T> {
        if self.blocked.is_some() {
            return None;
        }
        let start = Instant::now();
        let result = match tokio::time::timeout(self.timeout, check).await {
            Ok(result) => result,
            Err(_) => Err(anyhow!("no answer within {:?}", self.timeout)),
        };
        match result {
            Ok(value) => {
                self.record(name, Outcome::Pass, start.elapsed(), None);
                Some(value)
            }
            Err(e) => {
                self.record(name, Outcome::Fail, start.elapsed(), Some(format!("{e:#}")));
                None
            }
        }
    }

    /// Like `step`, but later steps need its result: a failure stops the run.
    async fn required<T>(&mut self, name: &str, check: impl Future<Output = Result<T>>) -> Option<T> {
        let result = self.step(name, check).await;
        if result.is_none() && self.blocked.is_none() {
            self.blocked = Some(name.to_owned());
            self.record(
                "remaining steps",
                Outcome::Skip,
                Duration::ZERO,
                Some(format!("not run: '{name}' failed")),
            );
        }
        result
    }
}

struct Run<'a> {
    settings: &'a Settings,
    osb: OsbClient,
    suite: Suite<'a>,
    offering: Option<Offering>,
    a: String,
    b: String,
    /// Instances created and not yet deprovisioned, for the clean-up.
    live_instances: Vec<String>,
}

/// What a bind handed out: a password, a client certificate (certificate bindings), or both.
#[derive(Clone)]
struct Credentials {
    username: String,
    password: Option<String>,
    /// The client certificate and its key (PEM), when the plan hands them out.
    certificate: Option<(String, String)>,
    prefix: String,
    endpoints: Vec<String>,
    ca: Option<String>,
}

impl Credentials {
    fn parse(value: &Value, instance: &str) -> Result<Credentials> {
        let text = |key: &str| {
            value[key].as_str().map(str::to_owned).with_context(|| format!("the credentials have no '{key}'"))
        };
        let certificate = match (value.get("cert"), value.get("key")) {
            (None, None) => None,
            _ => Some((text("cert")?, text("key")?)),
        };
        // A certificate binding with a password too ("both") lists the certificate's https
        // endpoints apart; the suite uses the certificate then.
        let endpoints = if certificate.is_some() && value.get("certificate_endpoints").is_some() {
            &value["certificate_endpoints"]
        } else {
            &value["endpoints"]
        };
        let credentials = Credentials {
            username: text("username")?,
            password: if certificate.is_some() { None } else { Some(text("password")?) },
            certificate,
            prefix: text("prefix")?,
            endpoints: serde_json::from_value(endpoints.clone())
                .context("the credentials' 'endpoints' is not a list of URLs")?,
            ca: value["ca_certificate"]
                .as_str()
                .or(value["tls"]["ca_certificate"].as_str())
                .map(str::to_owned),
        };
        ensure!(
            credentials.prefix.ends_with(&format!("/{instance}/")),
            "the prefix does not end with '/{instance}/'"
        );
        ensure!(!credentials.endpoints.is_empty(), "the credentials list no endpoints");
        if let Some(password) = &credentials.password {
            ensure!(password.len() >= 16, "the password is shorter than 16 characters");
        }
        if let Some((cert, key)) = &credentials.certificate {
            ensure!(cert.contains("-----BEGIN CERTIFICATE-----"), "'cert' is not a PEM certificate");
            ensure!(key.contains("PRIVATE KEY-----"), "'key' is not a PEM private key");
            ensure!(credentials.ca.is_some(), "a certificate binding without 'ca_certificate'");
            ensure!(
                credentials.endpoints.iter().all(|e| e.starts_with("https://")),
                "a certificate binding lists endpoints that are not https"
            );
        }
        Ok(credentials)
    }
}

impl Run<'_> {
    async fn steps(&mut self) {
        let settings = self.settings;
        let (osb, a, b) = (self.osb.clone(), self.a.clone(), self.b.clone());
        let apps = Apps { settings, a: &a, b: &b };
        let Some(offering) = self
            .suite
            .required(
                "catalog offers a bindable plan",
                osb.offering(settings.service.as_deref(), settings.plan.as_deref()),
            )
            .await
        else {
            return;
        };
        self.offering = Some(offering.clone());
        let o = &offering;
        let deadline = settings.step_timeout;

        let provisioned = self.suite.required("provision A", osb.provision(o, &a, deadline)).await;
        if provisioned.is_none() {
            self.live_instances.push(a.clone()); // may exist half-made
            return;
        }
        self.live_instances.push(a.clone());
        self.live_instances.push(b.clone());
        if self
            .suite
            .required("provision B (A's id is a prefix of B's)", osb.provision(o, &b, deadline))
            .await
            .is_none()
        {
            return;
        }
        let step = "provision A again (same request) answers 200";
        self.suite
            .step(step, async {
                let status = osb.provision(o, &a, deadline).await?;
                ensure!(status == StatusCode::OK, "answered {status}");
                Ok(())
            })
            .await;

        let Some(a1) = self.suite.required("bind A", bind(&osb, o, &a, "a1")).await else { return };
        let Some(client_a1) =
            self.suite.required("A connects to etcd with its credentials", apps.connect(&a1)).await
        else {
            return;
        };
        let key = format!("{}blackbox-key", a1.prefix);
        self.suite
            .required(
                "A writes, reads, lists and deletes in its prefix",
                use_prefix(client_a1.clone(), &a1.prefix),
            )
            .await;
        self.suite
            .step(
                "A is denied the whole key space",
                denied(client_a1.clone(), |mut c| async move {
                    c.get("", Some(GetOptions::new().with_all_keys())).await
                }),
            )
            .await;
        self.suite
            .step(
                "A is denied a key outside any instance",
                denied(client_a1.clone(), |mut c| async move { c.put("/blackbox-outside", "x", None).await }),
            )
            .await;
        let bare = a1.prefix.trim_end_matches('/').to_owned();
        self.suite
            .step(
                "A is denied its prefix without the trailing slash",
                denied(client_a1.clone(), |mut c| async move { c.put(bare, "x", None).await }),
            )
            .await;
        self.suite
            .step("A cannot manage users and roles", no_admin(client_a1.clone(), a1.username.clone()))
            .await;

        let Some(b1) = self.suite.required("bind B", bind(&osb, o, &b, "b1")).await else { return };
        let step = "B's and A's prefixes are mutually invisible";
        self.suite.step(step, apps.isolated(&a1, &b1)).await;
        let step = "GET binding returns the same credentials";
        self.suite
            .step(step, async {
                let fetched = Credentials::parse(&osb.fetch_binding(&a, "a1").await?, &a)?;
                ensure!(
                    fetched.username == a1.username
                        && fetched.password == a1.password
                        && fetched.certificate == a1.certificate,
                    "the fetched credentials differ from the bind's"
                );
                Ok(())
            })
            .await;

        self.read_only_binding(&a, &a1).await;
        self.rotated_binding(&a, &a1).await;

        // Data for the rebind check.
        let mut writer = client_a1.clone();
        if self
            .suite
            .step("A stores a key for later", async { Ok(writer.put(key.clone(), "kept", None).await?) })
            .await
            .is_none()
        {
            return;
        }
        let Some(a2) = self
            .suite
            .required("rebind A gives a new user and password (or certificate)", async {
                let a2 = bind(&osb, o, &a, "a2").await?;
                ensure!(a2.username != a1.username, "the new binding has the old username");
                ensure!(
                    a2.password.is_none() || a2.password != a1.password,
                    "the new binding has the old password"
                );
                ensure!(
                    a2.certificate.is_none() || a2.certificate != a1.certificate,
                    "the new binding has the old certificate"
                );
                Ok(a2)
            })
            .await
        else {
            return;
        };
        if self.suite.required("unbind A's first binding", unbind_ok(&osb, o, &a, "a1")).await.is_none() {
            return;
        }
        self.suite.step("unbound credentials are rejected", apps.rejected(&a1, Some(client_a1))).await;
        self.suite
            .step("A's new binding reads the data of before", async {
                let mut client = apps.connect(&a2).await?;
                let got = client.get(key.clone(), None).await?;
                ensure!(
                    got.kvs().first().map(|kv| kv.value()) == Some(&b"kept"[..]),
                    "the key written before is gone"
                );
                Ok(())
            })
            .await;
        self.suite.step("unbind again answers 410", gone(osb.unbind(o, &a, "a1"))).await;

        for (name, instance) in [("deprovision A (with a binding left)", &a), ("deprovision B", &b)] {
            if self.suite.required(name, deprovision_ok(&osb, o, instance)).await.is_none() {
                return;
            }
            self.live_instances.retain(|i| i != instance);
        }
        self.suite
            .step("deprovisioned instances' credentials are rejected", async {
                apps.rejected(&a2, None).await?;
                apps.rejected(&b1, None).await
            })
            .await;
        self.suite.step("deprovision again answers 410", gone(osb.deprovision(o, &a))).await;
        match &settings.root {
            Some(_) => {
                self.suite
                    .step(
                        "nothing is left in etcd (keys, users, roles)",
                        apps.nothing_left(&[&a1.prefix, &b1.prefix]),
                    )
                    .await;
            }
            None => self.suite.record(
                "nothing is left in etcd (keys, users, roles)",
                Outcome::Skip,
                Duration::ZERO,
                Some("needs --etcd-root-password".into()),
            ),
        }
    }

    /// A read-only binding of A (plans whose catalog schema lists `access` only): it reads
    /// A's data but cannot put, delete or attach a lease to a key; then it is unbound.
    /// On a plan whose catalog entry says `binding_rotatable`: a rotation of A's binding is a
    /// new binding with other credentials, the predecessor keeps working, and an expiring
    /// binding's metadata is well-formed.
    async fn rotated_binding(&mut self, a: &str, a1: &Credentials) {
        let step = "rotating A's binding gives new credentials; the old ones keep working";
        let Some(o) = self.offering.clone().filter(|o| o.rotatable) else {
            let why =
                "the catalog does not say binding_rotatable for the plan (plan_configs binding_rotatable)";
            self.suite.record(step, Outcome::Skip, Duration::ZERO, Some(why.into()));
            return;
        };
        let (osb, settings) = (self.osb.clone(), self.settings);
        let apps = Apps { settings, a, b: &self.b };
        self.suite
            .step(step, async {
                let mut body = o.plan_body();
                body["predecessor_binding_id"] = "a1".into();
                let answer = osb.put_binding(a, "a-rot", &body, Incomplete::Refused).await?;
                ensure!(answer.status == StatusCode::CREATED, "the rotation answered {}", answer.reason());
                check_expiry_metadata(&answer.body)?;
                let rotated = Credentials::parse(&answer.body["credentials"], a)?;
                ensure!(rotated.username != a1.username, "the rotation has the predecessor's username");
                apps.connect(&rotated).await.context("the new credentials")?;
                apps.connect(a1).await.context("the predecessor's credentials")?;
                unbind_ok(&osb, &o, a, "a-rot").await.context("unbind")
            })
            .await;
    }

    async fn read_only_binding(&mut self, a: &str, a1: &Credentials) {
        let step = "a read-only binding reads, cannot put/delete/lease";
        let Some(o) = self.offering.clone().filter(|o| o.bind_parameters.iter().any(|p| p == "access"))
        else {
            let why = "the plan takes no bind parameters (plan_configs binding_parameters)";
            self.suite.record(step, Outcome::Skip, Duration::ZERO, Some(why.into()));
            return;
        };
        let (osb, settings) = (self.osb.clone(), self.settings);
        let apps = Apps { settings, a, b: &self.b };
        let key = format!("{}blackbox/read-only", a1.prefix);
        self.suite
            .step(step, async {
                let mut writer = apps.connect(a1).await?;
                writer.put(key.clone(), "visible", None).await.context("A's put")?;
                let (status, value) =
                    osb.bind_with(&o, a, "a-ro", Some(serde_json::json!({"access": "read"}))).await?;
                ensure!(status == StatusCode::CREATED, "a new binding answered {status}, not 201");
                let reader = apps.connect(&Credentials::parse(&value, a)?).await?;
                let got = reader.clone().get(key.clone(), None).await.context("read")?;
                ensure!(got.kvs().first().map(|kv| kv.value()) == Some(&b"visible"[..]), "it cannot read");
                let k = key.clone();
                denied(reader.clone(), |mut c| async move { c.put(k, "x", None).await })
                    .await
                    .context("put")?;
                let k = key.clone();
                denied(reader.clone(), |mut c| async move { c.delete(k, None).await })
                    .await
                    .context("delete")?;
                let lease = reader.clone().lease_grant(30, None).await.context("lease grant")?.id();
                let k = key.clone();
                denied(reader, |mut c| async move {
                    c.put(k, "x", Some(etcd_client::PutOptions::new().with_lease(lease))).await
                })
                .await
                .context("put with a lease")?;
                writer.delete(key.clone(), None).await.context("A's delete")?;
                unbind_ok(&osb, &o, a, "a-ro").await.context("unbind")
            })
            .await;
    }

    /// Best effort: deprovision whatever is still there (bindings go with their instance).
    async fn clean_up(&mut self) {
        let Some(offering) = self.offering.clone() else { return };
        for instance in std::mem::take(&mut self.live_instances) {
            let start = Instant::now();
            let outcome = self.osb.deprovision(&offering, &instance).await;
            let (result, detail) = match outcome {
                Ok(_) => (Outcome::Pass, None),
                Err(e) => (Outcome::Fail, Some(format!("{e:#}; remove it by hand"))),
            };
            self.suite.record(&format!("clean up instance {instance}"), result, start.elapsed(), detail);
        }
    }
}

/// The apps' side: etcd connections with handed-out credentials (or root's, for the last check).
#[derive(Clone, Copy)]
struct Apps<'s> {
    settings: &'s Settings,
    a: &'s str,
    b: &'s str,
}

impl Apps<'_> {
    fn endpoints(&self, credentials: &Credentials) -> Vec<String> {
        // A certificate works only on etcd's https URLs with client-certificate auth: the ones
        // in the credentials, never the suite's --etcd (which the root check uses).
        if self.settings.etcd_endpoints.is_empty() || credentials.certificate.is_some() {
            credentials.endpoints.clone()
        } else {
            self.settings.etcd_endpoints.clone()
        }
    }

    fn options(&self) -> ConnectOptions {
        let timeout = self.settings.step_timeout.min(Duration::from_secs(10));
        ConnectOptions::new().with_connect_timeout(timeout).with_timeout(timeout)
    }

    /// TLS for https endpoints: the settings' CA, else the one in the credentials.
    fn tls(&self, ca: Option<&str>) -> ClientTls {
        let tls = &self.settings.etcd_tls;
        ClientTls {
            ca: tls.ca.clone().or_else(|| ca.map(|ca| ca.as_bytes().to_vec())),
            identity: tls.identity.clone(),
        }
    }

    async fn connect(&self, credentials: &Credentials) -> Result<Client> {
        let endpoints = self.endpoints(credentials);
        let (options, tls) = match (&credentials.certificate, &credentials.password) {
            // No user name: etcd takes the user from the certificate's CN.
            (Some((certificate, key)), _) => {
                let identity = Identity {
                    certificate: certificate.clone().into_bytes(),
                    private_key: key.clone().into_bytes(),
                };
                let ca = credentials.ca.as_ref().map(|ca| ca.clone().into_bytes());
                (self.options(), ClientTls { ca, identity: Some(identity) })
            }
            (None, Some(password)) => (
                self.options().with_user(&credentials.username, password),
                self.tls(credentials.ca.as_deref()),
            ),
            (None, None) => bail!("the credentials hold neither a password nor a certificate"),
        };
        etcd_broker::etcd::connect(&endpoints, options, &tls)
            .await
            .map_err(|e| anyhow!("cannot connect to {endpoints:?}: {e}"))
    }

    /// Each side writes a key in its own prefix and cannot read, list or write the other's.
    async fn isolated(&self, a: &Credentials, b: &Credentials) -> Result<()> {
        let mut client_a = self.connect(a).await?;
        let mut client_b = self.connect(b).await?;
        client_a.put(format!("{}mine", a.prefix), "a", None).await?;
        client_b.put(format!("{}mine", b.prefix), "b", None).await?;
        for (client, other, who) in [(&client_a, b, "A"), (&client_b, a, "B")] {
            let prefix = other.prefix.clone();
            denied(client.clone(), |mut c| async move {
                c.get(prefix, Some(GetOptions::new().with_prefix())).await
            })
            .await
            .with_context(|| format!("{who} listing the other's prefix"))?;
            let key = format!("{}mine", other.prefix);
            denied(client.clone(), |mut c| async move { c.put(key, "x", None).await })
                .await
                .with_context(|| format!("{who} writing into the other's prefix"))?;
        }
        Ok(())
    }

    /// A new connection with these credentials fails, and so does a request on `open` (a
    /// connection that logged in before). etcd may take a moment: retried until the time limit.
    async fn rejected(&self, credentials: &Credentials, open: Option<Client>) -> Result<()> {
        let deadline = Instant::now() + self.settings.step_timeout.saturating_sub(Duration::from_secs(1));
        loop {
            let mut still_works = Vec::new();
            if let Ok(mut client) = self.connect(credentials).await {
                if client.get(credentials.prefix.clone(), None).await.is_ok() {
                    still_works.push("a new connection");
                }
            }
            if let Some(mut client) = open.clone() {
                if client.get(credentials.prefix.clone(), None).await.is_ok() {
                    still_works.push("an open connection");
                }
            }
            if still_works.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} still reads with the credentials", still_works.join(" and "));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn nothing_left(&self, prefixes: &[&str]) -> Result<()> {
        let (user, password) = self.settings.root.as_ref().context("no root credentials")?;
        let endpoints = self.settings.etcd_endpoints.clone();
        ensure!(!endpoints.is_empty(), "the root check needs --etcd endpoints");
        let options = self.options().with_user(user, password.expose());
        let mut root = etcd_broker::etcd::connect(&endpoints, options, &self.tls(None))
            .await
            .map_err(|e| anyhow!("root cannot connect: {e}"))?;
        for prefix in prefixes {
            let left =
                root.get(*prefix, Some(GetOptions::new().with_prefix().with_count_only())).await?.count();
            ensure!(left == 0, "{left} key(s) left under {prefix}");
        }
        let ours = |name: &&String| {
            name.contains(&format!(".{}.", self.a)) || name.contains(&format!(".{}.", self.b))
        };
        let users = resend_on_auth_change(|| {
            let mut c = root.clone();
            async move { c.user_list().await }
        })
        .await?;
        let users: Vec<String> = users.users().iter().filter(ours).cloned().collect();
        ensure!(users.is_empty(), "users left: {users:?}");
        // Roles go in the background (the broker's role reaper): wait for them while the step
        // lasts, then accept those still in the reaper's queue.
        let names = Names::new(DEFAULT_DATA_PREFIX, &self.settings.state_prefix);
        let deadline = Instant::now() + self.settings.step_timeout.saturating_sub(Duration::from_secs(1));
        loop {
            let roles = resend_on_auth_change(|| {
                let mut c = root.clone();
                async move { c.role_list().await }
            })
            .await?;
            let roles: Vec<String> = roles.roles().iter().filter(ours).cloned().collect();
            if roles.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let mut unqueued = Vec::new();
                for role in roles {
                    let entry = names.role_deletion_key(&role);
                    let queued = resend_on_auth_change(|| {
                        let (mut c, entry) = (root.clone(), entry.clone());
                        async move { c.get(entry, None).await }
                    })
                    .await?
                    .count()
                        > 0;
                    // The reaper may have deleted both the role and its entry meanwhile.
                    if !queued
                        && resend_on_auth_change(|| {
                            let (mut c, role) = (root.clone(), role.clone());
                            async move { c.role_get(role).await }
                        })
                        .await
                        .is_ok()
                    {
                        unqueued.push(role);
                    }
                }
                ensure!(unqueued.is_empty(), "roles left, not queued for deletion: {unqueued:?}");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn bind(osb: &OsbClient, offering: &Offering, instance: &str, binding: &str) -> Result<Credentials> {
    let (status, credentials) = osb.bind(offering, instance, binding).await?;
    ensure!(status == StatusCode::CREATED, "a new binding answered {status}, not 201");
    Credentials::parse(&credentials, instance)
}

/// An expiring binding's `metadata`: both timestamps in OSB's form, `renew_before` not after
/// `expires_at`; nothing to check for a binding without it.
fn check_expiry_metadata(answer: &serde_json::Value) -> Result<()> {
    let Some(metadata) = answer.get("metadata") else { return Ok(()) };
    let stamp = |field: &str| -> Result<String> {
        let text = metadata[field].as_str().with_context(|| format!("metadata.{field} is missing"))?;
        // yyyy-mm-ddThh:mm:ss.sZ: fixed width, so text order is time order.
        let well_formed = text.len() == 22 && text.as_bytes()[10] == b'T' && text.ends_with('Z');
        ensure!(well_formed, "metadata.{field} '{text}' is not yyyy-mm-ddThh:mm:ss.sZ");
        Ok(text.to_owned())
    };
    let (expires_at, renew_before) = (stamp("expires_at")?, stamp("renew_before")?);
    ensure!(renew_before <= expires_at, "renew_before {renew_before} is after expires_at {expires_at}");
    Ok(())
}

async fn unbind_ok(osb: &OsbClient, offering: &Offering, instance: &str, binding: &str) -> Result<()> {
    let status = osb.unbind(offering, instance, binding).await?;
    ensure!(status == StatusCode::OK, "answered {status}, not 200");
    Ok(())
}

async fn deprovision_ok(osb: &OsbClient, offering: &Offering, instance: &str) -> Result<()> {
    let status = osb.deprovision(offering, instance).await?;
    ensure!(status == StatusCode::OK, "answered {status}, not 200");
    Ok(())
}

async fn gone(delete: impl Future<Output = Result<StatusCode>>) -> Result<()> {
    let status = delete.await?;
    ensure!(status == StatusCode::GONE, "answered {status}, not 410");
    Ok(())
}

async fn use_prefix(mut client: Client, prefix: &str) -> Result<()> {
    let key = format!("{prefix}blackbox/probe");
    client.put(key.clone(), "value", None).await.context("put")?;
    let got = client.get(key.clone(), None).await.context("get")?;
    ensure!(got.kvs().first().map(|kv| kv.value()) == Some(&b"value"[..]), "get returned another value");
    let listed =
        client.get(prefix, Some(GetOptions::new().with_prefix().with_keys_only())).await.context("list")?;
    ensure!(listed.kvs().iter().any(|kv| kv.key() == key.as_bytes()), "listing the prefix misses the key");
    let deleted = client.delete(key, None).await.context("delete")?;
    ensure!(deleted.deleted() == 1, "delete removed {} keys", deleted.deleted());
    Ok(())
}

/// The call must fail with etcd's "permission denied"; success or another error fails the step.
async fn denied<T, F, Fut>(client: Client, call: F) -> Result<()>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    match call(client).await {
        Ok(_) => bail!("was allowed"),
        Err(e) if e.to_string().contains("permission denied") => Ok(()),
        Err(e) => bail!("failed, but not with 'permission denied': {e}"),
    }
}

async fn no_admin(client: Client, username: String) -> Result<()> {
    denied(client.clone(), |mut c| async move { c.user_list().await }).await.context("listing users")?;
    denied(client.clone(), |mut c| async move { c.role_list().await }).await.context("listing roles")?;
    denied(client.clone(), |mut c| async move { c.user_grant_role(username, "root").await })
        .await
        .context("granting itself the root role")?;
    denied(client, |mut c| async move {
        c.role_grant_permission("root", Permission::read_write("/").with_prefix()).await
    })
    .await
    .context("changing a role's permissions")
}
