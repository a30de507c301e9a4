//! `etcd-broker-ops blackbox` end to end: every step passes against a real local stack (etcd with
//! auth + the broker, run by `xtask dev --run`), and the suite fails, naming the step,
//! against a broker that gets isolation wrong or with a wrong broker password. Secrets never
//! appear in its output.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use actix_web::{web, App, HttpResponse, HttpServer};
use local_etcd::{EtcdVersion, LocalEtcd, Options};
use serde_json::{json, Value};

use common::{errand_properties, repo, xtask, OPS};

fn blackbox(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(OPS);
    command.arg("blackbox").args(args);
    for key in
        ["BROKER_URL", "BROKER_USERNAME", "BROKER_PASSWORD", "ETCD_ROOT_USERNAME", "ETCD_ROOT_PASSWORD"]
    {
        command.env_remove(key);
    }
    command.envs(envs.iter().copied()).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn report(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `xtask dev --run -- sh -c SCRIPT etcd-broker-ops` with the stack's files in `dir`: the script
/// runs the blackbox (`$0`) with the stack's variables in its environment, which the suite's
/// flags read. Returns the output and the passwords the stack made (from its broker.toml).
fn on_a_dev_stack(dir: &Path, script: &str) -> (Output, [String; 2]) {
    let out = Command::new(xtask())
        .args(["dev", "--bcrypt-cost", "4", "--dir"])
        .arg(dir)
        .args(["--run", "--", "sh", "-c", script, OPS])
        .output()
        .unwrap();
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join("broker.toml")).unwrap()).unwrap();
    let password = |v: &toml::Value| v["password"].as_str().unwrap().to_owned();
    (out, [password(&config["auth"]), password(&config["clusters"]["main"])])
}

#[test]
fn every_step_passes_against_a_real_stack_and_a_wrong_password_fails_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let json_file = dir.path().join("report.json");
    // Plan `scoped` takes bind parameters, so the read-only binding's step runs too.
    let script = format!(
        r#"exec "$0" blackbox --etcd "$ETCD_ENDPOINTS" --plan scoped --json '{}'"#,
        json_file.display()
    );
    let (out, passwords) = on_a_dev_stack(&dir.path().join("stack"), &script);
    let output = text(&out);
    assert!(out.status.success(), "{output}");
    let report = report(&json_file);
    assert_eq!(report["passed"], true);
    let steps = report["steps"].as_array().unwrap();
    assert!(steps.len() >= 20, "{output}");
    // Plan `scoped` is not rotatable: the rotation's step is skipped (ci/blackbox runs it on
    // plan `rotating`); every other step passes.
    let rotation =
        |s: &&serde_json::Value| s["name"].as_str().is_some_and(|n| n.starts_with("rotating A's binding"));
    assert!(steps.iter().filter(|s| !rotation(s)).all(|s| s["outcome"] == "pass"), "{output}");
    assert!(steps.iter().filter(rotation).all(|s| s["outcome"] == "skip"), "{output}");
    for name in [
        "A is denied the whole key space",
        "B's and A's prefixes are mutually invisible",
        "unbound credentials are rejected",
        "a read-only binding reads, cannot put/delete/lease",
        "nothing is left in etcd (keys, users, roles)",
    ] {
        assert!(steps.iter().any(|s| s["name"] == name), "no step '{name}'");
    }
    assert!(output.lines().any(|l| l.starts_with("blackbox: ") && l.contains(" 0 failed")), "{output}");
    for secret in &passwords {
        assert!(!output.contains(secret.as_str()), "a password in the output");
    }

    let wrong = "wrong-password-1234";
    let script = format!(
        r#"BROKER_PASSWORD={wrong} exec "$0" blackbox --broker-url "$BROKER_URL" --broker-username "$BROKER_USERNAME""#
    );
    let (out, _) = on_a_dev_stack(&dir.path().join("stack-2"), &script);
    let output = text(&out);
    assert_eq!(out.status.code(), Some(1), "{output}");
    let line = output.lines().find(|l| l.starts_with("FAIL  catalog")).expect(&output);
    assert!(line.contains("401"), "{line}");
    assert!(output.contains("SKIP  remaining steps"), "{output}");
    assert!(!output.contains(wrong), "the password in the output");
}

/// A broker that gets isolation wrong: every binding is handed etcd's root user.
async fn leaky_broker(etcd: &LocalEtcd) -> (String, actix_web::dev::ServerHandle) {
    let credentials = json!({
        "endpoints": [etcd.endpoint()],
        "username": "root",
        "password": etcd.root_password(),
        "tls": { "enabled": false },
    });
    let server = HttpServer::new(move || {
        let credentials = credentials.clone();
        App::new()
            .route(
                "/v2/catalog",
                web::get().to(|| async {
                    HttpResponse::Ok().json(json!({ "services": [{
                        "id": "s", "name": "etcd", "description": "d", "bindable": true,
                        "plans": [{ "id": "p", "name": "shared", "description": "d" }],
                    }]}))
                }),
            )
            .route(
                "/v2/service_instances/{i}",
                web::put().to(|| async { HttpResponse::Created().json(json!({})) }),
            )
            .route(
                "/v2/service_instances/{i}",
                web::delete().to(|| async { HttpResponse::Ok().json(json!({})) }),
            )
            .route(
                "/v2/service_instances/{i}/service_bindings/{b}",
                web::put().to(move |path: web::Path<(String, String)>| {
                    let mut credentials = credentials.clone();
                    credentials["prefix"] = json!(format!("/service_instances/{}/", path.0));
                    async move { HttpResponse::Created().json(json!({ "credentials": credentials })) }
                }),
            )
            .route(
                "/v2/service_instances/{i}/service_bindings/{b}",
                web::delete().to(|| async { HttpResponse::Ok().json(json!({})) }),
            )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (url, handle)
}

#[actix_web::test]
async fn a_broker_handing_out_root_credentials_fails_the_isolation_steps() {
    let etcd =
        LocalEtcd::start(Options { version: EtcdVersion::V3_5, bcrypt_cost: Some(4), ..Options::default() })
            .await
            .unwrap();
    let (url, server) = leaky_broker(&etcd).await;
    let json_file = tempfile::NamedTempFile::new().unwrap();
    let json_path = json_file.path().to_str().unwrap().to_owned();
    let root_password = etcd.root_password().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        blackbox(&["--broker-url", &url, "--json", &json_path], &[("BROKER_PASSWORD", "any")])
    })
    .await
    .unwrap();
    server.stop(true).await;
    let output = text(&out);
    assert_eq!(out.status.code(), Some(1), "{output}");
    let report = report(json_file.path());
    let failed: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["outcome"] == "fail")
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for step in [
        "A is denied the whole key space",
        "A is denied a key outside any instance",
        "A cannot manage users and roles",
    ] {
        assert!(failed.contains(&step), "'{step}' should fail: {output}");
    }
    assert!(output.contains("was allowed"), "{output}");
    assert!(!output.contains(&root_password), "the root password in the output");
    etcd.stop().await;
}

/// The errand's chain: the offline render of manifests/etcd-broker.yml + operators/blackbox.yml,
/// the errand's ERB evaluated on it by the Ruby harness (BOSH's template helpers), and
/// `blackbox --bosh-properties` reading the result: broker URL and password from the
/// servicebroker link, endpoints from the etcd link.
#[test]
fn the_errand_reads_the_properties_its_erb_template_writes() {
    let repo = repo();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(); // closed once dropped
    let link = dir.path().join("servicebroker.yml");
    std::fs::write(
        &link,
        format!(
            "instances: [{{address: 127.0.0.1, index: 0, az: z1, id: b0, name: etcd-broker, bootstrap: true}}]\n\
             properties: {{auth: {{username: broker, password: link-secret-pw}}, listen: {{port: {port}}}}}\n"
        ),
    )
    .unwrap();
    let file = errand_properties(
        dir.path(),
        "etcd-broker-blackbox",
        "etcd-broker-blackbox",
        "manifests/operators/blackbox.yml",
        &[
            format!("--link=servicebroker={}", link.display()),
            format!("--link=etcd={}", repo.join("manifests/examples/etcd-link.yml").display()),
        ],
    );
    let properties: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(properties["properties"]["etcd"]["root_password"], "example-root-password");
    assert_eq!(properties["properties"]["timeout"], 30);

    let out = blackbox(&["--bosh-properties", file.to_str().unwrap(), "--timeout", "5"], &[]);
    let output = text(&out);
    assert_eq!(out.status.code(), Some(1), "nothing listens there: {output}");
    let header = format!(
        "blackbox: broker http://127.0.0.1:{port}, etcd http://10.0.1.10:2379,http://10.0.1.11:2379,http://10.0.1.12:2379"
    );
    assert!(output.starts_with(&header), "{output}");
    assert!(output.contains("FAIL  catalog offers a bindable plan"), "{output}");
    assert!(!output.contains("link-secret-pw") && !output.contains("example-root-password"), "{output}");
}
