//! The tenant proxy's deployment: its BOSH job rendered (manifest + operators/
//! etcd-broker-proxy.yml -> its ERB's properties.json -> the config the proxy starts with), the
//! broker handing out the proxy's URL, and `proxy-user` making the proxy's etcd user on a real
//! etcd with exactly the access docs/proxy.md names.

use std::process::Command;

use clap::Parser as _;
use etcd_broker::config::Config;
use etcd_client::{Client, ConnectOptions, GetOptions};
use local_etcd::{EtcdVersion, LocalEtcd, Options};

use crate::common::{errand_properties, repo, OPS};

const OPS_FILE: &str = "manifests/operators/etcd-broker-proxy.yml";

#[test]
fn the_proxy_job_renders_a_config_the_proxy_starts_with() {
    let dir = tempfile::tempdir().unwrap();
    let file = errand_properties(dir.path(), "etcd-broker-proxy", "etcd-broker-proxy", OPS_FILE, &[]);
    let args = etcd_broker_proxy::config::Args::try_parse_from([
        "etcd-broker-proxy",
        "--bosh-properties",
        file.to_str().unwrap(),
    ])
    .unwrap();
    let config = args.into_config(None).expect("the proxy accepts its job's config");
    let urls = |urls: &[url::Url]| urls.iter().map(|u| u.as_str().to_owned()).collect::<Vec<_>>();
    assert_eq!(
        urls(&config.endpoints),
        ["https://10.0.1.10:2379/", "https://10.0.1.11:2379/", "https://10.0.1.12:2379/"]
    );
    assert_eq!(urls(&config.advertise_client_urls), ["https://etcd-proxy.example.com:2391/"]);
    assert_eq!(config.listen.to_string(), "0.0.0.0:2391");
    assert_eq!(config.monitoring_listen.map(|a| a.to_string()).as_deref(), Some("0.0.0.0:9181"));
    assert!(config.tls.is_some(), "the proxy serves TLS");
    assert_eq!(config.user, "etcd-broker-proxy");
    assert_eq!(config.password.expose(), "example-proxy-password");
    assert_eq!(config.keychain.expect("the broker's keys").active().name(), "k1");
    assert_eq!(config.workers, 1, "the job's default: one thread");
    // The job's ERB writes what the offline render writes (director::properties_json).
    let offline = tempfile::tempdir().unwrap();
    let job = ["--instance-group", "etcd-broker-proxy", "--job", "etcd-broker-proxy", "--output-dir"];
    let out = render_example(&[job.map(Into::into).as_slice(), &[offline.path().into()]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(offline.path().join("etcd-broker-proxy.toml").is_file());
    let json = |path: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    assert_eq!(json(&file), json(&offline.path().join("properties.json")), "ERB and render disagree");
    // Nothing of the broker's etcd credentials reaches the proxy's VM.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("example-root-password"), "the root password is in the proxy's properties");

    // The broker, with the same ops file, hands the proxy's URL to encrypting plans' bindings.
    let out = render_example(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let broker = Config::from_toml(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(urls(&broker.clusters["main"].proxy_endpoints), ["https://etcd-proxy.example.com:2391/"]);
}

/// The job's `workers` reaches the proxy's `--workers`; a value the proxy refuses fails the
/// offline render (as it would the proxy's start), naming the property's key.
#[test]
fn the_proxy_jobs_workers_reach_the_proxy_and_bad_ones_fail_the_render() {
    let dir = tempfile::tempdir().unwrap();
    let workers = |value: &str| {
        let ops = dir.path().join(format!("workers-{value}.yml"));
        let patch = "- type: replace\n  path: /instance_groups/name=etcd-broker-proxy/jobs/name=etcd-broker-proxy/properties/workers?\n";
        std::fs::write(&ops, format!("{patch}  value: {value}\n")).unwrap();
        ["-o".into(), ops.into_os_string()]
    };
    let out = dir.path().join("rendered");
    std::fs::create_dir(&out).unwrap();
    let extra = workers("4").map(|a| a.to_string_lossy().into_owned());
    let file = errand_properties(&out, "etcd-broker-proxy", "etcd-broker-proxy", OPS_FILE, &extra);
    let args = etcd_broker_proxy::config::Args::try_parse_from([
        "etcd-broker-proxy",
        "--bosh-properties",
        file.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(args.into_config(None).expect("the proxy accepts its job's config").workers, 4);

    let job = ["--instance-group", "etcd-broker-proxy", "--job", "etcd-broker-proxy"];
    let refused = render_example(&[workers("0").as_slice(), &job.map(std::ffi::OsString::from)].concat());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "workers: 0 rendered");
    assert!(stderr.contains("workers") && stderr.contains("must be 1 to 256"), "{stderr}");
}

/// `proxy-user` twice (idempotent; the second sets a new password) with the broker's config,
/// then the user as etcd sees it: its records read-write, the broker's bindings and instances
/// and the tenants' data (quotas) read-only, the rest of the broker's state out of reach.
#[tokio::test]
async fn proxy_user_grants_the_proxy_exactly_its_records_and_the_brokers_to_read() {
    let version = EtcdVersion::from_env().expect("ETCD_VERSION");
    let etcd =
        LocalEtcd::start(Options { version, bcrypt_cost: Some(4), ..Options::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k1.key");
    let out = Command::new(OPS).args(["keys", "generate", "k1", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success());
    let config = crate::common::example_config(dir.path(), "k1", &[("k1", &key)], |toml| {
        toml.replace("\"http://127.0.0.1:2379\"", &format!("{:?}", etcd.endpoint()))
            .replace("\"change-me-too\"", &format!("{:?}", etcd.root_password()))
    });
    let password_file = dir.path().join("proxy-password");
    for password in ["first-proxy-password", "second-proxy-password"] {
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        let out = Command::new(OPS)
            .args(["proxy-user", "--config"])
            .arg(&config)
            .arg("--password-file")
            .arg(&password_file)
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{stderr}");
        assert!(stdout.contains("user 'etcd-broker-proxy': read-write /etcd-broker/proxy/"), "{stdout}");
        assert!(!stdout.contains(password) && !stderr.contains(password));
    }
    let options = ConnectOptions::new().with_user("etcd-broker-proxy", "second-proxy-password");
    let mut proxy =
        Client::connect([etcd.endpoint()], Some(options)).await.expect("the new password logs in");
    proxy.put("/etcd-broker/proxy/leases/1", "{}", None).await.expect("its records: read-write");
    for readable in ["/etcd-broker/bindings/", "/etcd-broker/instances/", "/service_instances/"] {
        proxy.get(readable, Some(GetOptions::new().with_prefix())).await.expect("the broker's records: read");
        assert!(proxy.put(format!("{readable}x"), "x", None).await.is_err(), "{readable} is writable");
    }
    for hidden in ["/etcd-broker/", "/etcd-broker/limits/"] {
        let denied = proxy.get(hidden, Some(GetOptions::new().with_prefix())).await.unwrap_err();
        assert!(denied.to_string().contains("permission denied"), "{hidden}: {denied}");
    }

    // Root, or no password, is refused before etcd is asked.
    let out = Command::new(OPS)
        .args(["proxy-user", "--user", "root", "--config"])
        .arg(&config)
        .arg("--password-file")
        .arg(&password_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must not be root"));
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let out = Command::new(OPS)
        .args(["proxy-user", "--config"])
        .arg(&config)
        .arg("--password-file")
        .arg(&empty)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--password-file: the password is empty"));
}

/// The proxy's half of a sealing-key rotation (manifests/operators/add-sealing-key-proxy.yml):
/// with it, the proxy job renders the broker's keychain (k1 and k2, k2 active in the example
/// vars), and the proxy's own unsealing opens a data key the broker's rendered config sealed,
/// as the broker does, with k2. Without it the proxy lacks k2 and refuses that data key.
#[tokio::test]
async fn a_proxy_rendered_with_the_rotation_unseals_data_keys_the_new_key_sealed() {
    let with = |files: &[&str]| -> Vec<String> {
        files.iter().flat_map(|f| ["-o".to_owned(), repo().join(f).display().to_string()]).collect()
    };
    let rotation =
        ["manifests/operators/add-sealing-key.yml", "manifests/operators/add-sealing-key-proxy.yml"];
    let proxy_keychain = |extra: Vec<String>| {
        let dir = tempfile::tempdir().unwrap();
        let file = errand_properties(dir.path(), "etcd-broker-proxy", "etcd-broker-proxy", OPS_FILE, &extra);
        let args = etcd_broker_proxy::config::Args::try_parse_from([
            "etcd-broker-proxy",
            "--bosh-properties",
            file.to_str().unwrap(),
        ])
        .unwrap();
        args.into_config(None).expect("the proxy accepts its job's config").keychain.expect("keys")
    };
    let rotated = proxy_keychain(with(&rotation));
    assert_eq!(rotated.active().name(), "k2");
    assert_eq!(rotated.keys().map(|k| k.name()).collect::<Vec<_>>(), ["k1", "k2"]);

    // The broker of the same deployment, rendered by `etcd-broker-ops render`.
    let out = render_example(&with(&rotation).into_iter().map(Into::into).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let broker = Config::from_toml(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let etcd_broker::config::Sealing::On(broker_keys) = &broker.sealing else {
        panic!("{:?}", broker.sealing)
    };
    assert_eq!(broker_keys.active().name(), "k2");

    // A data key sealed as the broker seals one for an instance record (sealed.rs).
    let record_key = "/etcd-broker/instances/rotated-1";
    let data_key = [7u8; 32];
    let name = etcd_broker::broker::records::data_key_name(record_key, 1);
    let sealed = etcd_broker::sealing::seal_async(broker_keys, &name, &data_key).await.unwrap();
    assert_eq!(etcd_broker::sealing::sealed_with(&sealed), Some("k2"));
    let sealed = etcd_broker::broker::records::DataKey { version: 1, sealed };
    let unsealed = etcd_broker_proxy::encryption::unseal_data_key(&rotated, record_key, &sealed)
        .await
        .expect("k2 unseals");
    assert_eq!(*unsealed, data_key);

    // Without the proxy's half, the proxy has k1 only, and that data key is refused.
    let broker_only = proxy_keychain(with(&rotation[..1]));
    assert_eq!(broker_only.keys().map(|k| k.name()).collect::<Vec<_>>(), ["k1"]);
    let refused =
        etcd_broker_proxy::encryption::unseal_data_key(&broker_only, record_key, &sealed).await.unwrap_err();
    assert!(refused.message().contains("the instance's data key"), "{}", refused.message());
}

/// The release makes the proxy's etcd user itself: operators/etcd-broker-proxy.yml colocates
/// jobs/etcd-broker-proxy-user with the broker, and its post-start (the script itself, its
/// /var/vcap paths pointed at files rendered as BOSH renders them) makes the user on a real
/// etcd with the broker's rendered root credentials, again on the next deploy; the user and
/// password it makes are the ones the proxy job renders, and they reach no further than
/// docs/proxy.md says.
#[tokio::test]
async fn the_brokers_post_start_makes_the_proxys_etcd_user_on_every_deploy() {
    let version = EtcdVersion::from_env().expect("ETCD_VERSION");
    let etcd =
        LocalEtcd::start(Options { version, bcrypt_cost: Some(4), ..Options::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rendered = |name: &str, job: &str, group: &str, extra: &[String]| {
        let out = dir.path().join(name);
        std::fs::create_dir(&out).unwrap();
        errand_properties(&out, group, job, OPS_FILE, extra)
    };
    let at_etcd = [
        "-v".to_owned(),
        format!("etcd_endpoints=[{}]", etcd.endpoint()),
        "-v".to_owned(),
        format!("etcd_root_password={}", etcd.root_password()),
    ];
    let broker = rendered("broker", "etcd-broker", "etcd-broker", &at_etcd);
    let job = rendered("job", "etcd-broker-proxy-user", "etcd-broker", &[]);
    let proxy = rendered("proxy", "etcd-broker-proxy", "etcd-broker-proxy", &[]);

    let script = std::fs::read_to_string(repo().join("jobs/etcd-broker-proxy-user/templates/post-start"))
        .unwrap()
        .replace("/var/vcap/packages/etcd-broker/bin/etcd-broker-ops", OPS)
        .replace("/var/vcap/jobs/etcd-broker/config/properties.json", broker.to_str().unwrap())
        .replace("/var/vcap/jobs/etcd-broker-proxy-user/config/properties.json", job.to_str().unwrap());
    assert!(!script.contains("/var/vcap"), "every path of the script is known here:\n{script}");
    let proxy_config = etcd_broker_proxy::config::Args::try_parse_from([
        "etcd-broker-proxy",
        "--bosh-properties",
        proxy.to_str().unwrap(),
    ])
    .unwrap()
    .into_config(None)
    .unwrap();
    let password = proxy_config.password.expose().to_owned();
    for deploy in ["first", "second"] {
        let out = Command::new("bash").arg("-c").arg(&script).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{deploy} deploy's post-start: {stderr}");
        assert!(stdout.contains("user 'etcd-broker-proxy': read-write /etcd-broker/proxy/"), "{stdout}");
        assert!(!stdout.contains(&password) && !stderr.contains(&password), "the password is printed");
    }

    let options = ConnectOptions::new().with_user(proxy_config.user.as_str(), password.as_str());
    let mut client =
        Client::connect([etcd.endpoint()], Some(options)).await.expect("the proxy's user logs in");
    client.put("/etcd-broker/proxy/leases/1", "{}", None).await.expect("its records: read-write");
    client.get("/etcd-broker/instances/", Some(GetOptions::new().with_prefix())).await.expect("read");
    assert!(
        client.put("/etcd-broker/instances/x", "x", None).await.is_err(),
        "the broker's records are writable"
    );
    assert!(client.get("/etcd-broker/", Some(GetOptions::new().with_prefix())).await.is_err());

    // A job without its password says so, and names no secret.
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, r#"{"properties": {"user": "etcd-broker-proxy"}, "spec": {}}"#).unwrap();
    let out = Command::new(OPS)
        .args(["proxy-user", "--bosh-properties"])
        .arg(&broker)
        .arg("--job-properties")
        .arg(&empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the job's `password` is not set"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(etcd.root_password()));
}

/// `etcd-broker-ops render` of the example deployment with the proxy's ops file, then `extra`
/// (more `-o` ops files after it, a job to render, an output folder).
fn render_example(extra: &[std::ffi::OsString]) -> std::process::Output {
    Command::new(OPS)
        .args(["render", "--manifest"])
        .arg(repo().join("manifests/etcd-broker.yml"))
        .arg("-o")
        .arg(repo().join(OPS_FILE))
        .arg("-l")
        .arg(repo().join("manifests/examples/vars.yml"))
        .args(extra)
        .output()
        .unwrap()
}
