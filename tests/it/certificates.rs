//! Acceptance: certificate bindings on a real etcd (3.4 or 3.5, `ETCD_VERSION`) started with
//! client-certificate auth on an https listener (`--client-cert-auth --trusted-ca-file`) beside
//! its http one. The broker dials http with its root password; a certificate binding's user has
//! no password, its certificate opens exactly the instance's prefix, and after unbind etcd
//! refuses the certificate, on a fresh connection and on one opened before.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use etcd_broker::etcd::Observer;
use etcd_broker::pki::ClientCa;
use etcd_broker::store::Store;
use etcd_client::{Client, ConnectOptions, OpenSslClientConfig};
use local_etcd::{ClientCertAuth, EtcdVersion, LocalEtcd, Options};
use reqwest::StatusCode;
use serde_json::{json, Value};

const CERT_PLAN: &str = "3a5b6c7d-8e9f-4a0b-9c1d-3e4f5a6b7c8d";
const DAY: Duration = Duration::from_secs(86_400);

/// A CA, etcd with an https listener trusting it, and the CA's files in `dir`.
async fn etcd_with_client_cert_auth(dir: &Path) -> (LocalEtcd, ClientCa) {
    let ca = ClientCa::generate("etcd-broker test CA", DAY).unwrap();
    let server = ca.mint_server("127.0.0.1", DAY).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let files = ClientCertAuth {
        cert_file: write("server.pem", &server.certificate),
        key_file: write("server.key", &server.private_key),
        trusted_ca_file: write("ca.pem", ca.certificate_pem()),
    };
    write("ca.key", &ca.private_key_pem().unwrap());
    let version = EtcdVersion::from_env().expect("ETCD_VERSION");
    let options =
        Options { version, bcrypt_cost: Some(4), client_cert_auth: Some(files), ..Options::default() };
    (LocalEtcd::start(options).await.expect("etcd starts"), ca)
}

/// An etcd client that authenticates with the certificate of `credentials` only.
async fn certificate_client(credentials: &Value) -> Result<Client, etcd_client::Error> {
    let endpoints: Vec<String> = serde_json::from_value(credentials["endpoints"].clone()).unwrap();
    let text = |field: &str| credentials[field].as_str().unwrap().as_bytes().to_vec();
    let tls = OpenSslClientConfig::default()
        .ca_cert_pem(&text("ca_certificate"))
        .client_cert_pem_and_key(&text("cert"), &text("key"));
    let options = ConnectOptions::new()
        .with_openssl_tls(tls)
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(5));
    Client::connect(endpoints, Some(options)).await
}

/// The etcd-client error of `result` as text ("permission denied", ...).
fn refusal<T>(result: Result<T, etcd_client::Error>) -> String {
    match result {
        Ok(_) => panic!("etcd did not refuse"),
        Err(e) => e.to_string(),
    }
}

/// etcd 3.4.23 and 3.5 honour `no_password`: the user has no password at all, so even the
/// password the broker sent (for servers that predate the option) does not log in, and etcd
/// says why. (A user with a password would answer "invalid user ID or password".)
#[tokio::test]
async fn a_certificate_user_has_no_password_at_all() {
    let etcd = start_etcd().await;
    let store = store_on(&etcd, Observer::default());
    store.ensure_role("r1", &etcd_broker::store::Permission::read_write_prefix("/t/")).await.unwrap();
    store.ensure_certificate_user("u1", "sent-but-unused", "r1").await.unwrap();
    // Idempotent, as every store call.
    store.ensure_certificate_user("u1", "another", "r1").await.unwrap();
    assert_eq!(store.user_roles("u1").await.unwrap(), Some(vec!["r1".to_owned()]));
    let login = |password: &'static str| {
        let options = ConnectOptions::new().with_user("u1", password).with_timeout(Duration::from_secs(5));
        Client::connect([etcd.endpoint()], Some(options))
    };
    let refused = refusal(login("sent-but-unused").await);
    assert!(refused.contains("password was given for no password user"), "{refused}");
    etcd.stop().await;
}

#[tokio::test]
async fn a_certificate_binding_opens_its_prefix_until_it_is_unbound() {
    let dir = tempfile::tempdir().unwrap();
    let (etcd, ca) = etcd_with_client_cert_auth(dir.path()).await;
    let tls_endpoint = etcd.tls_endpoint().unwrap();
    let config = |port, metrics_port| {
        config_toml(port, metrics_port, &etcd, None).replace(
            "[clusters.main]\n",
            &format!("[clusters.main]\ncertificate_endpoints = [{tls_endpoint:?}]\n"),
        ) + &format!(
            r#"
[[catalog.services.plans]]
id = "{CERT_PLAN}"
name = "certificate"
description = "client certificates"
[plan_configs."{CERT_PLAN}"]
cluster = "main"
credentials = "certificate"
[certificates]
ca_file = {ca:?}
key_file = {key:?}
validity_days = 2
"#,
            ca = dir.path().join("ca.pem").display().to_string(),
            key = dir.path().join("ca.key").display().to_string(),
        )
    };
    let broker = BrokerProcess::start_with_config(config, &[]).await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("i1", CERT_PLAN).await.status, StatusCode::CREATED);
    assert_eq!(osb.provision("i2", SHARED).await.status, StatusCode::CREATED);
    let body =
        json!({ "service_id": SERVICE_ID, "plan_id": CERT_PLAN, "bind_resource": { "app_guid": "app-1" } });
    let bound = osb
        .put_binding("i1", "b1", &body, etcd_broker_ops::osb::Incomplete::Refused)
        .await
        .expect("broker answers");
    assert_eq!(bound.status, StatusCode::CREATED, "{:?}", bound.body);
    let creds = bound.body["credentials"].clone();
    assert_eq!(creds["endpoints"], json!([tls_endpoint]));
    assert_eq!(creds["ca_certificate"], ca.certificate_pem());
    assert!(creds.get("password").is_none(), "{creds}");
    assert_eq!(
        etcd_broker::pki::certificate_common_name(creds["cert"].as_str().unwrap()).unwrap(),
        "etcd-broker.i1.b1"
    );
    assert_eq!(osb.get_binding("i1", "b1").await.body["credentials"], creds);

    // The certificate alone opens the instance's prefix, and nothing else.
    let mut tenant = certificate_client(&creds).await.unwrap();
    tenant.put("/service_instances/i1/k", "v", None).await.unwrap();
    let got = tenant.get("/service_instances/i1/k", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v");
    assert!(refusal(tenant.put("/service_instances/i2/k", "v", None).await).contains("permission denied"));
    assert!(refusal(tenant.get("/etcd-broker/", None).await).contains("permission denied"));

    // A certificate this CA did not sign is not even let in.
    let other =
        ClientCa::generate("someone else", DAY).unwrap().mint_client("etcd-broker.i1.b1", DAY).unwrap();
    let mut forged = creds.clone();
    forged["cert"] = json!(other.certificate);
    forged["key"] = json!(*other.private_key);
    let forged_use =
        async { certificate_client(&forged).await?.put("/service_instances/i1/k", "x", None).await };
    assert!(forged_use.await.is_err(), "etcd accepted a certificate of another CA");

    // Sealing is on: no line of the private key is in etcd's state prefix in clear (as no
    // password handed out is: sealing.rs), nor in the log or the metrics.
    let key_lines: Vec<&str> =
        creds["key"].as_str().unwrap().lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!key_lines.is_empty());
    let dump = crate::sealing::state_dump(&etcd).await;
    assert!(dump.iter().any(|(k, _)| k == "/etcd-broker/bindings/i1/b1"), "{dump:?}");
    for (key, value) in &dump {
        assert!(key_lines.iter().all(|line| !value.contains(line)), "{key} holds the private key in clear");
    }
    let metrics = scrape(&broker).await;
    assert!(key_lines.iter().all(|line| !metrics.contains(line) && !broker.log_text().contains(line)));

    // Unbind: from now on etcd refuses the certificate, on the open connection and a new one.
    assert_eq!(osb.unbind("i1", "b1").await.status, StatusCode::OK);
    assert!(refusal(tenant.put("/service_instances/i1/k", "w", None).await).contains("permission denied"));
    let mut fresh = certificate_client(&creds).await.unwrap();
    assert!(refusal(fresh.get("/service_instances/i1/k", None).await).contains("permission denied"));
    let (_, users, _) = broker_made_things(&etcd).await;
    assert!(users.is_empty(), "{users:?}");
    broker.stop().await;
    etcd.stop().await;
}
