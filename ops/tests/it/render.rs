//! `etcd-broker-ops render` as a binary: the golden config of the base manifest, the ERB
//! template agreeing with the offline render, clear failures, and the whole flow (manifest ->
//! properties.json -> `serve --bosh-properties`'s loading -> a broker that provisions and binds
//! on a real etcd).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use etcd_broker::config::Config;
use etcd_broker_ops::osb::{BrokerTarget, Offering, OsbClient};
use serde_json::{json, Value};

use crate::common::repo;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/render").join(name)
}

fn manifest() -> PathBuf {
    repo().join("manifests/etcd-broker.yml")
}

/// The password in tests/fixtures/render/vars.yml.
const TRICKY_PASSWORD: &str = "pa\"ss'w\\ord\nÜñï";

fn render<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_etcd-broker-ops"))
        .arg("render")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("etcd-broker-ops runs")
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Renders the base manifest with the test vars (and `extra` flags) into a fresh directory.
fn render_to_dir(extra: &[String]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut args =
        vec!["--manifest".to_owned(), path(&manifest()), "-l".to_owned(), path(&fixture("vars.yml"))];
    args.extend_from_slice(extra);
    args.extend(["--output-dir".to_owned(), path(dir.path())]);
    let out = render(&args);
    assert!(out.status.success(), "render failed: {}", stderr(&out));
    dir
}

/// Set UPDATE_GOLDEN=1 to rewrite the fixture after an intended change; review the diff.
#[test]
fn the_base_manifest_renders_to_the_golden_config() {
    let dir = render_to_dir(&[]);
    let rendered = std::fs::read_to_string(dir.path().join("etcd-broker.toml")).unwrap();
    let golden = fixture("etcd-broker.toml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &rendered).unwrap();
    }
    assert_eq!(
        rendered,
        std::fs::read_to_string(&golden).unwrap(),
        "rendered config differs from {}",
        golden.display()
    );

    // The password's quote, apostrophe, backslash, newline and unicode survive into the config.
    let config = Config::from_toml(&rendered).unwrap();
    assert_eq!(config.auth.password.expose(), TRICKY_PASSWORD);
    let texts = |urls: &[url::Url]| urls.iter().map(url::Url::to_string).collect::<Vec<_>>();
    assert_eq!(
        texts(&config.clusters["main"].endpoints),
        ["https://10.0.1.10:2379/", "https://10.0.1.11:2379/"]
    );
    // Printing to stdout gives the same TOML; the files are private.
    let out =
        render(&["--manifest".to_owned(), path(&manifest()), "-l".to_owned(), path(&fixture("vars.yml"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), rendered);
    for file in ["properties.json", "etcd-broker.toml", "context.json"] {
        let meta = std::fs::metadata(dir.path().join(file)).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077, 0, "{file}");
    }
}

/// Flags adding the manually wired etcd link and inline TLS material.
fn with_etcd_link() -> Vec<String> {
    vec!["-o".into(), path(&fixture("etcd-link.yml")), "-l".into(), path(&fixture("tls-vars.yml"))]
}

#[test]
fn links_tls_and_ops_files_reach_the_config() {
    let dir = render_to_dir(&with_etcd_link());
    let config =
        Config::from_toml(&std::fs::read_to_string(dir.path().join("etcd-broker.toml")).unwrap()).unwrap();
    let main = &config.clusters["main"];
    let texts = |urls: &[url::Url]| urls.iter().map(url::Url::to_string).collect::<Vec<_>>();
    assert_eq!(
        texts(&main.endpoints),
        ["https://etcd-0.etcd.internal:4001/", "https://etcd-1.etcd.internal:4001/"]
    );
    let tls = main.tls.as_ref().unwrap();
    assert!(String::from_utf8_lossy(tls.ca.as_deref().unwrap()).contains("MIIBca"));
    assert!(tls.identity.is_some());
    assert!(!config.metrics.enabled);
}

/// The shipped rotation ops file adds `k2` and makes `etcd_broker_sealing_active` active (k2
/// in the fixture's vars), keeping `k1` to unseal; with `k1` active (a rolling rotation's
/// first deploy) it only adds `k2`. The `[secrets]` tables it renders are ones the broker
/// takes. Without the passphrase, the missing variable is named as one CredHub generates.
#[test]
fn the_sealing_key_ops_file_adds_an_active_key_and_keeps_the_old_one() {
    let base = render_to_dir(&[]);
    let base =
        Config::from_toml(&std::fs::read_to_string(base.path().join("etcd-broker.toml")).unwrap()).unwrap();
    let etcd_broker::config::Sealing::On(chain) = &base.sealing else { panic!("{:?}", base.sealing) };
    assert_eq!((chain.active().name(), chain.keys().count()), ("k1", 1));

    let ops_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/operators/add-sealing-key.yml");
    let rotated = render_to_dir(&["-o".into(), path(&ops_file)]);
    let toml = std::fs::read_to_string(rotated.path().join("etcd-broker.toml")).unwrap();
    let config = Config::from_toml(&toml).unwrap();
    let etcd_broker::config::Sealing::On(chain) = &config.sealing else { panic!("{:?}", config.sealing) };
    assert_eq!(chain.active().name(), "k2");
    assert_eq!(chain.keys().map(|k| k.name()).collect::<Vec<_>>(), ["k1", "k2"]);
    assert!(toml.contains("[secrets.keys.k2]\npassphrase = \"fixture-only-k2-"), "{toml}");

    let dir = tempfile::tempdir().unwrap();
    let vars = std::fs::read_to_string(fixture("vars.yml")).unwrap();
    let first_deploy = dir.path().join("vars.yml");
    std::fs::write(
        &first_deploy,
        vars.replace("etcd_broker_sealing_active: k2", "etcd_broker_sealing_active: k1"),
    )
    .unwrap();
    let out = dir.path().join("out");
    let args = ["--manifest", &path(&manifest()), "-l", &path(&first_deploy), "-o", &path(&ops_file)];
    let rendered = render(&[&args[..], &["--output-dir", &path(&out)]].concat());
    assert!(rendered.status.success(), "render failed: {}", stderr(&rendered));
    let config = Config::from_toml(&std::fs::read_to_string(out.join("etcd-broker.toml")).unwrap()).unwrap();
    let etcd_broker::config::Sealing::On(chain) = &config.sealing else { panic!("{:?}", config.sealing) };
    assert_eq!(chain.active().name(), "k1", "the first deploy of a rotation only adds k2");
    assert_eq!(chain.keys().map(|k| k.name()).collect::<Vec<_>>(), ["k1", "k2"]);

    let out = render(&[
        "--manifest".to_owned(),
        path(&manifest()),
        "-o".to_owned(),
        path(&ops_file),
        "-v".to_owned(),
        "etcd_broker_password=x".to_owned(),
        "-v".to_owned(),
        "etcd_root_password=x".to_owned(),
        "-v".to_owned(),
        "etcd_endpoints=[https://10.0.1.10:2379]".to_owned(),
        "-v".to_owned(),
        "etcd_broker_sealing_k1=fixture-only-k1-Qx7Rv2Lm9Tz4Wp8Hs3Jd6Fg5Kb0Nc1Yh2Ue7Ia3Oz".to_owned(),
        "-v".to_owned(),
        "etcd_broker_sealing_active=k2".to_owned(),
    ]);
    assert!(!out.status.success());
    let error = stderr(&out);
    assert!(error.contains("missing variables: etcd_broker_sealing_k2 "), "{error}");
    assert!(error.contains("etcd_broker_sealing_k2 declared under the manifest's variables"), "{error}");
    assert!(!error.contains("Qx7Rv2"), "{error}");
}

/// manifests/operators/openbao.yml: the transit key `bao` active beside k1, the AppRole's
/// secret_id from a variable, plan `shared` keeping its secrets in OpenBao KV; the broker takes
/// the config (it contacts OpenBao only when serving).
#[test]
fn the_openbao_ops_file_adds_a_transit_key_approle_and_the_kv_store() {
    let ops_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/operators/openbao.yml");
    let dir = render_to_dir(&["-o".into(), path(&ops_file)]);
    let toml = std::fs::read_to_string(dir.path().join("etcd-broker.toml")).unwrap();
    for expected in [
        "[secrets.keys.bao]\ntransit = \"etcd-broker\"",
        "[secrets.openbao]\naddress = \"https://bao.example.com:8200\"",
        "secret_id = \"fixture-only-secret-id-3Jd6Fg5Kb0\"",
        "credential_store = \"openbao\"",
    ] {
        assert!(toml.contains(expected), "{expected:?} not in {toml}");
    }
    let config = Config::from_toml(&toml).unwrap();
    let etcd_broker::config::Sealing::On(chain) = &config.sealing else { panic!("{:?}", config.sealing) };
    assert_eq!(chain.active().name(), "bao");
    assert_eq!(chain.keys().map(|k| k.name()).collect::<Vec<_>>(), ["bao", "k1"]);
    let store = config.credential_store.as_ref().expect("plan shared keeps its secrets in OpenBao");
    assert_eq!(store.describe(), "OpenBao KV 'secret' at https://bao.example.com:8200");
    assert!(!format!("{config:?}").contains("fixture-only-secret-id"));
}

/// ops/tests/erb/render_erb.rb evaluates jobs/etcd-broker/templates/properties.json.erb with
/// BOSH's template helpers on the context the offline render resolved; the JSON must be the
/// properties.json that `render` writes, with and without the etcd link.
#[test]
fn the_erb_template_writes_what_render_writes() {
    let ruby = Command::new("ruby").arg("--version").output();
    assert!(
        ruby.is_ok_and(|o| o.status.success()),
        "ruby is missing: run scripts/install-tools.sh (it installs Debian's ruby)"
    );
    for extra in [vec![], with_etcd_link()] {
        let dir = render_to_dir(&extra);
        let out = Command::new("ruby")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/erb/render_erb.rb"))
            .arg(repo().join("jobs/etcd-broker/templates/properties.json.erb"))
            .arg(dir.path().join("context.json"))
            .output()
            .unwrap();
        assert!(out.status.success(), "the ERB failed: {}", stderr(&out));
        let from_erb: Value = serde_json::from_slice(&out.stdout).expect("the ERB writes JSON");
        let from_render: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("properties.json")).unwrap())
                .unwrap();
        assert_eq!(from_erb, from_render, "ERB and render disagree (ops: {extra:?})");
        assert_eq!(from_erb["properties"]["auth"]["password"], TRICKY_PASSWORD);
    }
}

#[test]
fn the_erb_harness_fails_like_bosh_on_a_missing_property() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("t.erb");
    std::fs::write(&template, "<%= p('a.b') %>").unwrap();
    let context = dir.path().join("context.json");
    std::fs::write(&context, json!({ "properties": { "a": { "b": null } }, "spec": {} }).to_string())
        .unwrap();
    let out = Command::new("ruby")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/erb/render_erb.rb"))
        .args([&template, &context])
        .output()
        .expect("ruby runs (scripts/install-tools.sh installs it)");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Can't find property 'a.b'"), "{}", stderr(&out));
}

/// Writes a file; returns its path as a flag value.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    path(&file)
}

#[test]
fn failures_are_clear_and_never_show_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (m, v) = (path(&manifest()), path(&fixture("vars.yml")));
    let (absent, empty_release) = (path(&dir.path().join("absent.yml")), path(dir.path()));
    let no_password = write(
        dir.path(),
        "no-password.yml",
        "- type: remove\n  path: /instance_groups/name=etcd-broker/jobs/name=etcd-broker/properties/auth/password\n",
    );
    let bad_path = write(
        dir.path(),
        "bad-path.yml",
        "- type: replace\n  path: /instance_groups/name=nope/jobs/-\n  value: {}\n",
    );
    let bad_yaml = write(dir.path(), "bad.yml", "name: [unclosed\ninstance_groups: {\n");
    let not_ops = write(dir.path(), "not-ops.yml", "type: replace\n");
    let bad_value = write(
        dir.path(),
        "bad-value.yml",
        "- type: replace\n  path: /instance_groups/name=etcd-broker/jobs/name=etcd-broker/properties/listen?/port\n  value: eighty\n",
    );
    let no_toml = write(
        dir.path(),
        "no-toml.yml",
        "- type: replace\n  path: /instance_groups/name=etcd-broker/jobs/name=etcd-broker/properties/clusters/main/endpoints\n  value: [~]\n",
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--manifest", &m, "-l", &v, "-o", &no_password], "Can't find property 'auth.password'"),
        (
            vec!["--manifest", &m],
            "missing variables: etcd_broker_password, etcd_broker_sealing_k1, etcd_endpoints, etcd_root_password (give them with -v",
        ),
        (
            vec!["--manifest", &m],
            "etcd_broker_password, etcd_broker_sealing_k1 declared under the manifest's variables",
        ),
        (
            vec!["--manifest", &m, "-l", &v, "--instance-group", "nope"],
            "instance group 'nope' is not in the manifest (instance groups: etcd-broker)",
        ),
        (vec!["--manifest", &m, "-l", &v, "--job", "nope"], "job 'nope' is not in instance group 'etcd-broker' (jobs: bpm, etcd-broker)"),
        (
            vec!["--manifest", &m, "-l", &v, "-o", &bad_path],
            "operation [0] failed: replace /instance_groups/name=nope/jobs/-: Expected to find exactly one matching array item for path '/instance_groups/name=nope' but found 0",
        ),
        (vec!["--manifest", &bad_yaml], "is not valid YAML"),
        (vec!["--manifest", &m, "-o", &not_ops], "is not a list of operations"),
        (vec!["--manifest", &absent], "cannot read manifest"),
        (vec!["--manifest", &m, "-l", &v, "-v", "etcd_endpoints=not-a-list"], "the rendered config would be refused"),
        (vec!["--manifest", &m, "-l", &v, "-o", &bad_value], "refused by the broker: cannot load configuration: line 7: invalid type: string"),
        (vec!["--manifest", &m, "-l", &v, "-o", &no_toml], "cannot render the broker config: template line"),
        (vec!["--manifest", &m, "-l", &v, "--release-dir", &empty_release], "cannot read the spec of job 'etcd-broker'"),
    ];
    for (args, expected) in cases {
        let out = render(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: expected {expected:?} in {err}");
        assert!(
            !err.contains("root-secret") && !err.contains("w\\ord") && !err.contains("Qx7Rv2"),
            "a secret leaked: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // Bad usage is exit code 2.
    assert_eq!(render::<&str>(&[]).status.code(), Some(2));
}

#[test]
fn undeclared_properties_are_reported_not_rendered() {
    let dir = tempfile::tempdir().unwrap();
    let typo = write(
        dir.path(),
        "typo.yml",
        "- type: replace\n  path: /instance_groups/name=etcd-broker/jobs/name=etcd-broker/properties/auth/pasword?\n  value: x\n",
    );
    let out = render(&[
        "--manifest".to_owned(),
        path(&manifest()),
        "-l".to_owned(),
        path(&fixture("vars.yml")),
        "-o".to_owned(),
        typo,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning: property 'auth.pasword' is set in the manifest but jobs/etcd-broker/spec does not declare it"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("pasword"));
}

/// The whole configuration flow on a real etcd: the base manifest with local values, rendered
/// offline, loaded the way `serve --bosh-properties` loads it (the `config` crate, environment
/// overrides), serving provision and bind behind the password with quotes, backslash, newline
/// and unicode.
#[tokio::test]
async fn a_rendered_manifest_runs_a_working_broker() {
    let version = local_etcd::EtcdVersion::from_env().expect("ETCD_VERSION");
    let etcd = local_etcd::LocalEtcd::start(local_etcd::Options {
        version,
        bcrypt_cost: Some(4),
        ..Default::default()
    })
    .await
    .expect("etcd starts");
    let dir = tempfile::tempdir().unwrap();
    let out = render(&[
        "--manifest".to_owned(),
        path(&manifest()),
        "-o".to_owned(),
        path(&fixture("local-ports.yml")),
        "-l".to_owned(),
        path(&fixture("vars.yml")),
        "-v".to_owned(),
        format!("etcd_endpoints=[{}]", etcd.endpoint()),
        "-v".to_owned(),
        format!("etcd_root_password={}", etcd.root_password()),
        "-v".to_owned(),
        "broker_port=0".to_owned(),
        "-v".to_owned(),
        "metrics_port=0".to_owned(),
        "--output-dir".to_owned(),
        path(dir.path()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let mut config = Config::from_bosh_properties(&dir.path().join("properties.json"), None).unwrap();
    config.listen.host = "127.0.0.1".into();
    config.metrics.host = "127.0.0.1".into();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let running = etcd_broker::server::start(&config).unwrap();
            tx.send((running.addr, running.handles())).unwrap();
            running.serve().await
        })
    });
    let (addr, handles) = rx.recv_timeout(Duration::from_secs(20)).expect("the broker starts");

    let osb = OsbClient::new(
        BrokerTarget {
            url: format!("http://{addr}"),
            username: "broker".to_owned(),
            password: TRICKY_PASSWORD.to_owned(),
            skip_tls_verification: false,
        },
        Duration::from_secs(30),
    )
    .unwrap();
    let offering = Offering {
        service_id: "6e2ab6a8-3b0c-4c52-9a6c-5f3f2c1d9e01".to_owned(),
        plan_id: "0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b".to_owned(),
        bind_parameters: vec![],
        rotatable: false,
    };
    let provisioned = osb.provision(&offering, "r1", Duration::from_secs(30)).await.unwrap();
    assert_eq!(provisioned, 201);
    let (bound, credentials) = osb.bind(&offering, "r1", "b1").await.unwrap();
    assert_eq!(bound, 201);
    let options = etcd_client::ConnectOptions::new()
        .with_user(credentials["username"].as_str().unwrap(), credentials["password"].as_str().unwrap());
    let endpoints: Vec<String> = serde_json::from_value(credentials["endpoints"].clone()).unwrap();
    let mut tenant = etcd_client::Client::connect(endpoints, Some(options)).await.unwrap();
    tenant.put("/service_instances/r1/k", "v", None).await.unwrap();
    assert!(tenant.put("/elsewhere", "v", None).await.is_err(), "the binding reaches beyond its prefix");

    for handle in handles {
        handle.stop(true).await;
    }
    server.join().unwrap().unwrap();
    etcd.stop().await;
}
