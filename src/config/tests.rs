use super::*;
use crate::osb::plan_options::InstanceQuotas;

const EXAMPLE: &str = include_str!("../../docs/etcd-broker.example.toml");

fn with(edit: impl FnOnce(&mut toml::Table)) -> Result<Config, ConfigError> {
    let mut table: toml::Table = toml::from_str(EXAMPLE).unwrap();
    edit(&mut table);
    Config::from_toml(&toml::to_string(&table).unwrap())
}

fn field_of(result: Result<Config, ConfigError>) -> String {
    match result {
        Err(ConfigError::Invalid { field, .. }) => field,
        other => panic!("expected an invalid-field error, got {other:?}"),
    }
}

#[test]
fn the_documented_example_is_valid() {
    let config = Config::from_toml(EXAMPLE).unwrap();
    assert_eq!(config.state_cluster, "main");
    assert_eq!(config.catalog.services[0].plans[0].name, "shared");
    assert_eq!(config.listen.port, 8080);
    assert_eq!(config.listen.workers, 1);
}

#[test]
fn debug_output_hides_passwords() {
    let config = Config::from_toml(EXAMPLE).unwrap();
    let printed = format!("{config:?}");
    assert!(!printed.contains("change-me"), "{printed}");
}

#[test]
fn plan_configs_must_match_the_catalog() {
    let missing = with(|t| {
        t.remove("plan_configs");
        t.insert("plan_configs".into(), toml::Value::Table(Default::default()));
    });
    assert_eq!(field_of(missing), "plan_configs.\"0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b\"");
    let extra = with(|t| {
        let configs = t["plan_configs"].as_table_mut().unwrap();
        configs.insert("ghost".into(), toml::Value::Table(toml::toml! { cluster = "main" }));
    });
    assert_eq!(field_of(extra), "plan_configs.\"ghost\"");
    let bad_cluster = with(|t| {
        let configs = t["plan_configs"].as_table_mut().unwrap();
        let first = configs.iter_mut().next().unwrap().1.as_table_mut().unwrap();
        first.insert("cluster".into(), "nowhere".into());
    });
    assert_eq!(field_of(bad_cluster), "plan_configs.\"0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b\".cluster");
}

#[test]
fn bad_values_name_their_field() {
    let overlap = with(|t| {
        t["prefixes"].as_table_mut().unwrap().insert("data".into(), "/etcd-broker/data/".into());
    });
    assert_eq!(field_of(overlap), "prefixes");
    let no_slash = with(|t| {
        t["prefixes"].as_table_mut().unwrap().insert("data".into(), "/tenants".into());
    });
    assert_eq!(field_of(no_slash), "prefixes.data");
    let endpoint = with(|t| {
        let main = t["clusters"]["main"].as_table_mut().unwrap();
        main.insert("endpoints".into(), toml::Value::Array(vec!["127.0.0.1:2379".into()]));
    });
    assert_eq!(field_of(endpoint), "clusters.main.endpoints");
    let no_port = with(|t| {
        let main = t["clusters"]["main"].as_table_mut().unwrap();
        main.insert("public_endpoints".into(), toml::Value::Array(vec!["https://etcd.example.com".into()]));
    });
    assert_eq!(field_of(no_port), "clusters.main.public_endpoints");
    let empty_password = with(|t| {
        t["auth"].as_table_mut().unwrap().insert("password".into(), "".into());
    });
    assert_eq!(field_of(empty_password), "auth.password");
    let two_clusters = with(|t| {
        let clusters = t["clusters"].as_table_mut().unwrap();
        let main = clusters["main"].clone();
        clusters.insert("second".into(), main);
    });
    assert_eq!(field_of(two_clusters), "state_cluster");
    for workers in [0, 65] {
        let threads = with(|t| {
            t["listen"].as_table_mut().unwrap().insert("workers".into(), workers.into());
        });
        assert_eq!(field_of(threads), "listen.workers");
    }
    let out_of_range = [
        ("body_timeout_seconds", 0),
        ("body_timeout_seconds", 301),
        ("max_connections", 0),
        ("header_timeout_seconds", 0),
        ("header_timeout_seconds", 61),
        ("idle_timeout_seconds", 0),
        ("idle_timeout_seconds", 3601),
        ("max_connection_rate", 0),
        ("max_connection_rate", 65_537),
        ("tls_handshake_timeout_seconds", 0),
        ("tls_handshake_timeout_seconds", 61),
    ];
    for (key, value) in out_of_range {
        let listen = with(|t| {
            t["listen"].as_table_mut().unwrap().insert(key.into(), value.into());
        });
        assert_eq!(field_of(listen), format!("listen.{key}"));
    }
    for share in [0.0, 1.5, f64::NAN] {
        let reaper = with(|t| {
            t.insert("role_reaper".into(), toml::Value::Table(toml::toml! { busy_share = share }));
        });
        assert_eq!(field_of(reaper), "role_reaper.busy_share");
    }
    let never = with(|t| {
        t.insert("role_reaper".into(), toml::Value::Table(toml::toml! { poll_seconds = 0 }));
    });
    assert_eq!(field_of(never), "role_reaper.poll_seconds");
    let forever = with(|t| {
        t.insert("role_reaper".into(), toml::Value::Table(toml::toml! { yield_seconds = 86400 }));
    });
    assert_eq!(field_of(forever), "role_reaper.yield_seconds");
    for (key, value) in [("interval_seconds", 604_801), ("stuck_after_seconds", 0)] {
        let reconcile = with(|t| {
            let mut table = toml::Table::new();
            table.insert(key.into(), toml::Value::Integer(value));
            t.insert("reconcile".into(), toml::Value::Table(table));
        });
        assert_eq!(field_of(reconcile), format!("reconcile.{key}"));
    }
}

#[test]
fn unknown_fields_and_bad_levels_are_refused() {
    let typo = with(|t| {
        t["auth"].as_table_mut().unwrap().insert("pasword".into(), "x".into());
    });
    assert!(matches!(typo, Err(ConfigError::Load(m)) if m.contains("pasword")));
    let level = with(|t| {
        t.insert("log_level".into(), "loud".into());
    });
    assert!(matches!(level, Err(ConfigError::Load(m)) if m.contains("loud")));
}

/// The only test that touches the process environment (tests run in parallel).
#[test]
fn files_load_with_environment_overrides_and_keep_plan_id_case() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.toml");
    let text = EXAMPLE.replace("0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b", "Plan-UPPER-1");
    std::fs::write(&path, text).unwrap();
    // A numeric-looking secret must survive as written.
    std::env::set_var("ETCD_BROKER__AUTH__PASSWORD", "0123");
    std::env::set_var("ETCD_BROKER__LISTEN__PORT", "9999");
    let loaded = Config::load(&path);
    std::env::remove_var("ETCD_BROKER__AUTH__PASSWORD");
    std::env::remove_var("ETCD_BROKER__LISTEN__PORT");
    let config = loaded.unwrap();
    assert_eq!(config.auth.password.expose(), "0123");
    assert_eq!(config.listen.port, 9999);
    assert_eq!(config.plan_clusters["Plan-UPPER-1"], "main");
    let missing = Config::load(&dir.path().join("nope.toml"));
    assert!(matches!(missing, Err(ConfigError::Load(_))));
}

#[test]
fn inline_pem_tls_is_checked_and_exclusive_with_files() {
    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let tls = |entries: toml::Table| {
        with(move |t| {
            t["clusters"]["main"].as_table_mut().unwrap().insert("tls".into(), toml::Value::Table(entries));
        })
    };
    let inline =
        tls(toml::toml! { ca = CA certificate = CA private_key = "-----BEGIN PRIVATE KEY-----\nk\n" })
            .unwrap();
    let tls_config = inline.clusters["main"].tls.clone().unwrap();
    assert_eq!(tls_config.ca.as_deref(), Some(CA.as_bytes()));
    assert!(!format!("{tls_config:?}").contains("PRIVATE KEY"), "the key must not be printed");
    let both = tls(toml::toml! { ca = CA ca_file = "/etc/hostname" });
    assert!(
        matches!(both, Err(ConfigError::Invalid { message, .. }) if message == "set one of ca_file and ca, not both")
    );
    let half = tls(toml::toml! { certificate = CA });
    assert_eq!(field_of(half), "clusters.main.tls");
    let path_as_pem = tls(toml::toml! { ca = "/var/vcap/jobs/etcd-broker/config/ca.pem" });
    assert_eq!(field_of(path_as_pem), "clusters.main.tls.ca");
    let secret_key = tls(toml::toml! { certificate = CA private_key = "hunter2-not-pem" });
    let err = secret_key.unwrap_err().to_string();
    assert!(err.contains("clusters.main.tls.private_key") && !err.contains("hunter2"), "{err}");
}

/// Regression: a numeric password in YAML became a TOML integer, and the type error echoed it.
#[test]
fn type_errors_never_echo_secrets() {
    let numeric = with(|t| {
        t["auth"].as_table_mut().unwrap().insert("password".into(), 9876543.into());
    });
    let err = numeric.unwrap_err().to_string();
    assert!(err.contains("a secret must be a string") && !err.contains("9876543"), "{err}");
    let port =
        Config::from_toml("log_level = \"info\"\n[listen]\nport = \"eighty\"\n").unwrap_err().to_string();
    assert!(port.contains("line 3: invalid type: string"), "{port}");
    assert!(!port.contains("port = "), "the line's text is not repeated: {port}");
}

#[test]
fn listen_tls_needs_a_certificate_and_key_and_takes_no_ca() {
    let with = |tls: &str| Config::from_toml(&format!("{EXAMPLE}\n[listen.tls]\n{tls}\n"));
    let pem = "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n";
    let key = "-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----\\n";
    let config = with(&format!("certificate = \"{pem}\"\nprivate_key = \"{key}\"")).unwrap();
    assert!(config.listen.tls.is_some());
    let refused = |tls: &str| with(tls).unwrap_err().to_string();
    assert!(refused(&format!("certificate = \"{pem}\"")).contains("listen.tls: needs certificate"));
    assert!(refused(&format!("certificate = \"{pem}\"\nprivate_key = \"{key}\"\nca = \"{pem}\""))
        .contains("listen.tls: takes a certificate and key only"));
    let error = refused(&format!("certificate = \"{pem}\"\nprivate_key = \"not-a-pem-secret\""));
    assert!(error.contains("listen.tls.private_key: is not PEM text"), "{error}");
    assert!(!error.contains("not-a-pem-secret"));
    assert!(refused("cert_file = \"/nonexistent.pem\"\nkey_file = \"/nonexistent.key\"")
        .contains("listen.tls.cert_file: /nonexistent.pem does not exist"));
}

/// A key's text form whose 32 bytes are all `byte`.
fn key_text(byte: u8) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

/// `dir/<name>.key` holding a key (all bytes 2) with `mode`.
fn key_file(dir: &std::path::Path, name: &str, mode: u32) -> std::path::PathBuf {
    let file = dir.join(format!("{name}.key"));
    std::fs::write(&file, key_text(2)).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    file
}

fn with_secrets(secrets: toml::Table) -> Result<Config, ConfigError> {
    with(move |t| {
        t.insert("secrets".into(), toml::Value::Table(secrets));
    })
}

#[test]
fn sealing_is_off_only_when_the_config_says_so() {
    let example = Config::from_toml(EXAMPLE).unwrap();
    assert!(matches!(example.sealing, Sealing::Off { keychain: None }), "{:?}", example.sealing);
    let without_table = with(|t| {
        t.remove("secrets");
    })
    .unwrap_err();
    let empty_table = with_secrets(toml::Table::new()).unwrap_err();
    for error in [without_table, empty_table] {
        assert!(
            matches!(&error, ConfigError::Invalid { field, message } if field == "secrets" && message == file::NO_KEYS),
            "{error}"
        );
        let text = error.to_string();
        for hint in ["etcd-broker-ops keys generate", "sealing = \"off\"", "[secrets.keys.NAME]"] {
            assert!(text.contains(hint), "{text}");
        }
    }
}

#[test]
fn passphrase_keys_load_and_weak_ones_name_their_field() {
    let passphrase = "Xq3vJ9mTzL2pR8wK5nB7cY4hG6dF1sA0eUoIiPlMkNjHbVgC";
    let config = with_secrets(toml::toml! { active = "k1" [keys.k1] passphrase = passphrase }).unwrap();
    let Sealing::On(keychain) = &config.sealing else { panic!("{:?}", config.sealing) };
    assert_eq!(keychain.active().name(), "k1");
    assert!(!format!("{config:?}").contains(passphrase));
    let weak = "short-and-weak";
    let error =
        with_secrets(toml::toml! { active = "k1" [keys.k1] passphrase = weak }).unwrap_err().to_string();
    assert_eq!(
        error,
        "invalid configuration: secrets.keys.k1.passphrase: key 'k1' does not hold a key: a passphrase needs \
         32 to 1024 characters; it has 14"
    );
}

#[test]
fn keys_load_from_inline_values_and_private_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = key_file(dir.path(), "k2", 0o600);
    let old = key_text(1);
    let (old, path) = (old.as_str(), file.to_str().unwrap());
    let config = with_secrets(toml::toml! {
        sealing = "on"
        active = "k2"
        [keys.k1]
        value = old
        [keys.k2]
        file = path
    })
    .unwrap();
    let Sealing::On(keychain) = &config.sealing else { panic!("{:?}", config.sealing) };
    assert_eq!(keychain.active().name(), "k2");
    assert_eq!(keychain.keys().map(|k| k.name()).collect::<Vec<_>>(), ["k1", "k2"]);
    let printed = format!("{config:?}");
    assert!(printed.contains("Keychain { active: \"k2\", keys: [\"k1\", \"k2\"] }"), "{printed}");
    assert!(!printed.contains(&key_text(1)) && !printed.contains(&key_text(2)), "{printed}");
    // Off still loads the keychain: sealed values stay readable, ops' seal/unseal use it.
    let off = with_secrets(toml::toml! { sealing = "off" active = "k1" [keys.k1] value = old }).unwrap();
    assert_eq!(off.sealing.keychain().map(|k| k.active().name()), Some("k1"));
    assert!(matches!(off.sealing, Sealing::Off { .. }));
}

/// `[secrets]` with the transit key `bao` (transit key `transit`) active and `openbao`.
fn transit_with(transit: &str, openbao: toml::Table) -> toml::Table {
    let mut secrets = toml::toml! { active = "bao" [keys.bao] transit = transit };
    secrets.insert("openbao".into(), toml::Value::Table(openbao));
    secrets
}

#[test]
fn a_transit_key_needs_openbao_and_one_way_to_log_in_and_secrets_never_print() {
    let secret_id = "secret-id-0123456789abcdef";
    let approle = toml::toml! { role_id = "role" secret_id = secret_id };
    let config = with_secrets(toml::toml! {
        active = "bao"
        [keys.bao]
        transit = "etcd-broker"
        [openbao]
        address = "https://bao.example.com:8200"
        approle = (approle.clone())
    })
    .unwrap();
    let Sealing::On(keychain) = &config.sealing else { panic!("{:?}", config.sealing) };
    let backend = keychain.active().backend().expect("a remote key");
    assert_eq!(
        backend.describe(),
        "OpenBao transit key 'transit/etcd-broker' at https://bao.example.com:8200"
    );
    let printed = format!("{config:?}");
    assert!(!printed.contains(secret_id), "{printed}");
    assert!(config.openbao.is_some());

    let refused = |secrets: toml::Table| with_secrets(secrets).unwrap_err().to_string();
    assert_eq!(
        refused(toml::toml! { active = "bao" [keys.bao] transit = "k" }),
        "invalid configuration: secrets.keys.bao.transit: needs [secrets.openbao]: where OpenBao is"
    );
    let both =
        toml::toml! { address = "http://127.0.0.1:8200" token_file = "/t" approle = (approle.clone()) };
    assert_eq!(
        refused(transit_with("k", both)),
        "invalid configuration: secrets.openbao: set one of token_file and approle, not both"
    );
    let neither = toml::toml! { address = "http://127.0.0.1:8200" };
    assert!(refused(transit_with("k", neither)).contains("needs token_file or [secrets.openbao.approle]"));
    let bad = toml::toml! { address = "ftp://x:1" approle = (approle.clone()) };
    assert!(refused(transit_with("k", bad)).contains("secrets.openbao.address"));
    let mixed = toml::toml! { transit = "k" value = "x" };
    assert!(refused(toml::toml! { active = "bao" [keys] bao = mixed }).contains("not several"));
    let slash = toml::toml! { address = "http://127.0.0.1:8200" approle = approle };
    assert!(refused(transit_with("a/b", slash)).contains("secrets.keys.bao.transit"));
}

#[test]
fn a_token_file_open_to_others_or_holding_no_token_is_refused_naming_the_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let token = "s.0123456789abcdefghij";
    for (contents, mode, message) in [
        (token, 0o604, "is open to others (mode 604)"),
        ("", 0o600, "does not hold one token"),
        ("two tokens", 0o600, "does not hold one token"),
    ] {
        std::fs::write(&file, contents).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let path = file.to_str().unwrap();
        let openbao = toml::toml! { address = "http://127.0.0.1:8200" token_file = path };
        let error = with_secrets(transit_with("k", openbao)).unwrap_err().to_string();
        assert!(error.contains(message) && error.contains(path), "{error}");
        assert!(!error.contains(token));
    }
    std::fs::write(&file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let path = file.to_str().unwrap();
    let openbao = toml::toml! { address = "http://127.0.0.1:8200" token_file = path };
    let config = with_secrets(transit_with("k", openbao)).unwrap();
    assert!(!format!("{config:?}").contains(token));
}

#[test]
fn a_key_file_open_to_others_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = key_file(dir.path(), "k1", 0o644);
    let path = file.to_str().unwrap();
    let error = with_secrets(toml::toml! { active = "k1" [keys.k1] file = path }).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "invalid configuration: secrets.keys.k1.file: key file {path} is open to group or others \
             (mode 644); it must be readable by its owner only (chmod 600)"
        )
    );
}

#[test]
fn bad_secrets_tables_name_their_field_and_never_echo_a_key() {
    let key = key_text(1);
    let key = key.as_str();
    let cases = [
        (toml::toml! { sealing = "on" }, "secrets", file::NO_KEYS),
        (toml::toml! { active = "k1" }, "secrets.active", "'k1' names no key: secrets.keys is empty"),
        (
            toml::toml! { [keys.k1] value = key },
            "secrets.active",
            "required when keys are configured: name the key that seals",
        ),
        (
            toml::toml! { active = "k2" [keys.k1] value = key },
            "secrets.active",
            "'k2' is not one of secrets.keys",
        ),
        (
            toml::toml! { active = "K1" [keys.K1] value = key },
            "secrets.keys.K1",
            "key names use 1 to 32 of a-z, 0-9, '_' and '-'",
        ),
        (
            toml::toml! { active = "k1" [keys.k1] value = key file = "/k1.key" },
            "secrets.keys.k1",
            "set one of file, value and passphrase, not several",
        ),
        (
            toml::toml! { active = "k1" [keys.k1] value = key passphrase = key },
            "secrets.keys.k1",
            "set one of file, value and passphrase, not several",
        ),
        (
            toml::toml! { active = "k1" [keys.k1] },
            "secrets.keys.k1",
            "needs file, value, passphrase or transit",
        ),
    ];
    for (secrets, field, message) in cases {
        let error = with_secrets(secrets).unwrap_err();
        assert!(
            matches!(&error, ConfigError::Invalid { field: f, message: m } if f == field && m == message),
            "{error}"
        );
    }
    let hex = "0f".repeat(32);
    let not_a_key =
        with_secrets(toml::toml! { active = "k1" [keys.k1] value = hex }).unwrap_err().to_string();
    assert_eq!(
        not_a_key,
        "invalid configuration: secrets.keys.k1.value: key 'k1' does not hold a key: expected 32 bytes as \
         base64 (44 characters); it decodes to 48 bytes"
    );
    let maybe = with_secrets(toml::toml! { sealing = "maybe" }).unwrap_err();
    assert!(
        matches!(&maybe, ConfigError::Load(m) if m.contains("secrets.sealing is 'maybe': expected \"on\" or \"off\"")),
        "{maybe}"
    );
    let boolean = with_secrets(toml::toml! { sealing = false }).unwrap_err();
    assert!(
        matches!(&boolean, ConfigError::Load(m) if m.contains("secrets.sealing is the boolean false: write \"on\" or \"off\" in quotes")),
        "{boolean}"
    );
    let numeric =
        with_secrets(toml::toml! { active = "k1" [keys.k1] value = 12345678 }).unwrap_err().to_string();
    assert!(numeric.contains("a secret must be a string") && !numeric.contains("12345678"), "{numeric}");
}

#[test]
fn the_catalog_publishes_the_bind_parameters_schema_only_where_the_plan_takes_them() {
    let plain = Config::from_toml(EXAMPLE).unwrap();
    let plan = &plain.catalog.services[0].plans[0];
    assert_eq!(plan.schemas, None);
    assert!(serde_json::to_value(plan).unwrap().get("schemas").is_none());
    assert!(!plain.plan_options[&plan.id].binding_parameters);
    let offered = with(|t| {
        let configs = t["plan_configs"].as_table_mut().unwrap();
        let first = configs.iter_mut().next().unwrap().1.as_table_mut().unwrap();
        first.insert("binding_parameters".into(), true.into());
    })
    .unwrap();
    let plan = &offered.catalog.services[0].plans[0];
    assert!(offered.plan_options[&plan.id].binding_parameters);
    let served = serde_json::to_value(plan).unwrap();
    assert_eq!(
        served["schemas"]["service_binding"]["create"]["parameters"],
        *crate::osb::bind_parameters::SCHEMA
    );
    // The schemas come from the options; a hand-written one is refused.
    let by_hand = with(|t| {
        let plans = t["catalog"]["services"][0]["plans"].as_array_mut().unwrap();
        plans[0].as_table_mut().unwrap().insert("schemas".into(), toml::Value::Table(Default::default()));
    });
    assert!(by_hand.is_err());
}

#[test]
fn limits_are_read_per_plan_and_per_organization() {
    let plain = Config::from_toml(EXAMPLE).unwrap();
    let shared = &plain.plan_options["0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b"];
    assert_eq!((shared.max_instances, shared.max_bindings_per_instance), (None, None));
    assert_eq!(plain.limits.max_instances_per_organization, None);
    let scoped = &plain.plan_options["3a5b6c7d-8e9f-4a0b-9c1d-3e4f5a6b7c8d"];
    assert_eq!((scoped.max_instances, scoped.max_bindings_per_instance), (Some(100), Some(10)));
    let limited = with(|t| {
        t.insert("limits".into(), toml::Value::Table(toml::toml! { max_instances_per_organization = 7 }));
    })
    .unwrap();
    assert_eq!(limited.limits.max_instances_per_organization, Some(7));
    let typo = with(|t| {
        t.insert("limits".into(), toml::Value::Table(toml::toml! { max_instances_per_org = 7 }));
    });
    assert!(typo.unwrap_err().to_string().contains("max_instances_per_org"));
    let negative = with(|t| {
        let configs = t["plan_configs"].as_table_mut().unwrap();
        let first = configs.iter_mut().next().unwrap().1.as_table_mut().unwrap();
        first.insert("max_instances".into(), (-1).into());
    });
    assert!(negative.is_err());
}

/// The example with `[certificates]` (a fresh CA, the key given as `key`, or as whatever
/// `edit` puts there), its plan handing out `kind`, and an https certificate endpoint.
fn with_certificates(
    kind: &str,
    edit: impl FnOnce(&mut toml::Table, &crate::pki::ClientCa),
) -> Result<Config, ConfigError> {
    let ca =
        crate::pki::ClientCa::generate("config test CA", std::time::Duration::from_secs(86_400)).unwrap();
    with(|t| {
        let key = ca.private_key_pem().unwrap().to_string();
        let mut certificates = toml::toml! { validity_days = 30 };
        certificates.insert("ca".into(), ca.certificate_pem().into());
        certificates.insert("key".into(), key.into());
        t.insert("certificates".into(), toml::Value::Table(certificates));
        let main = t["clusters"]["main"].as_table_mut().unwrap();
        main.insert(
            "certificate_endpoints".into(),
            toml::Value::Array(vec!["https://127.0.0.1:2380".into()]),
        );
        let plan = t["plan_configs"].as_table_mut().unwrap().iter_mut().next().unwrap().1;
        plan.as_table_mut().unwrap().insert("credentials".into(), kind.into());
        edit(t, &ca);
    })
}

#[test]
fn a_plan_with_certificates_loads_the_ca_and_its_cluster_endpoints() {
    let config = with_certificates("certificate", |_, _| {}).unwrap();
    let plan = "0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b";
    assert_eq!(config.plan_credentials[plan], crate::broker::certificates::CredentialKind::Certificate);
    let authority = config.certificates.as_ref().unwrap();
    assert_eq!(authority.validity, std::time::Duration::from_secs(30 * 86_400));
    assert_eq!(config.clusters["main"].certificate_endpoints[0].as_str(), "https://127.0.0.1:2380/");
    assert!(!format!("{config:?}").contains("PRIVATE KEY"));
    // The example's plan gets passwords, as before the option existed.
    let example = Config::from_toml(EXAMPLE).unwrap();
    assert_eq!(example.plan_credentials[plan], crate::broker::certificates::CredentialKind::Password);
    assert_eq!(example.clusters["main"].certificate_endpoints, example.clusters["main"].public_endpoints);
}

#[test]
fn certificate_plans_need_the_ca_and_https_and_a_bad_ca_names_its_field() {
    let no_ca = with_certificates("both", |t, _| {
        t.remove("certificates");
    });
    assert_eq!(field_of(no_ca), "plan_configs.\"0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b\".credentials");
    let plain = with_certificates("certificate", |t, _| {
        t["clusters"]["main"].as_table_mut().unwrap().remove("certificate_endpoints");
    });
    assert_eq!(field_of(plain), "clusters.main.certificate_endpoints");
    let unknown = with_certificates("tokens", |_, _| {}).unwrap_err().to_string();
    assert!(unknown.contains("tokens"), "{unknown}");
    let zero_days = with_certificates("certificate", |t, _| {
        t["certificates"].as_table_mut().unwrap().insert("validity_days".into(), 0.into());
    });
    assert_eq!(field_of(zero_days), "certificates.validity_days");
    let other_key = crate::pki::ClientCa::generate("other", std::time::Duration::from_secs(60)).unwrap();
    let other_key = other_key.private_key_pem().unwrap().to_string();
    let mismatch = with_certificates("certificate", |t, _| {
        t["certificates"].as_table_mut().unwrap().insert("key".into(), other_key.clone().into());
    })
    .unwrap_err();
    assert!(matches!(&mismatch, ConfigError::Invalid { field, .. } if field == "certificates"), "{mismatch}");
    assert!(!mismatch.to_string().contains("PRIVATE"), "{mismatch}");
    let both_forms = with_certificates("certificate", |t, _| {
        t["certificates"].as_table_mut().unwrap().insert("key_file".into(), "/nowhere".into());
    });
    assert_eq!(field_of(both_forms), "certificates");
}

#[test]
fn a_sealed_ca_key_unseals_with_the_keychain_only_for_its_record() {
    let keychain =
        crate::sealing::Keychain::new("k1", [crate::sealing::Key::from_text("k1", &key_text(1)).unwrap()])
            .unwrap();
    let secrets = |t: &mut toml::Table| {
        let mut secrets = toml::toml! { active = "k1" [keys.k1] };
        secrets["keys"]["k1"].as_table_mut().unwrap().insert("value".into(), key_text(1).into());
        t.insert("secrets".into(), toml::Value::Table(secrets));
    };
    let sealed_for = |record: &'static str| {
        let keychain = keychain.clone();
        move |t: &mut toml::Table, ca: &crate::pki::ClientCa| {
            let key = ca.private_key_pem().unwrap();
            let sealed = crate::sealing::seal(&keychain, record, key.as_bytes()).unwrap();
            let certificates = t["certificates"].as_table_mut().unwrap();
            certificates.remove("key");
            certificates.insert("key_sealed".into(), sealed.into());
            secrets(t);
        }
    };
    assert!(with_certificates("certificate", sealed_for("certificates.key")).is_ok());
    let elsewhere = with_certificates("certificate", sealed_for("/etcd-broker/bindings/i/b"));
    assert_eq!(field_of(elsewhere), "certificates.key_sealed");
}

#[test]
fn expiry_options_are_checked_and_published() {
    const PLAN: &str = "0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b";
    let plan_with = |options: toml::Table| {
        with(move |t| {
            let plan = t["plan_configs"][PLAN].as_table_mut().unwrap();
            plan.extend(options);
        })
    };
    let config = plan_with(toml::toml! { binding_rotatable = true
    binding_ttl_seconds = 1000 })
    .unwrap();
    let expiry = config.plan_options[PLAN].binding_expiry.unwrap();
    assert_eq!((expiry.ttl, expiry.renew_before), (1000, 200), "a fifth of the ttl by default");
    assert!(config.catalog.services[0].plans[0].binding_rotatable);
    let field = |name: &str| format!("plan_configs.\"{PLAN}\".{name}");
    for (options, bad) in [
        (toml::toml! { binding_ttl_seconds = 0 }, "binding_ttl_seconds"),
        (toml::toml! { binding_ttl_seconds = 400_000_000 }, "binding_ttl_seconds"),
        (
            toml::toml! { binding_ttl_seconds = 60
            binding_renew_before_seconds = 60 },
            "binding_renew_before_seconds",
        ),
        (toml::toml! { binding_renew_before_seconds = 60 }, "binding_renew_before_seconds"),
    ] {
        assert_eq!(field_of(plan_with(options)), field(bad));
    }
    for (key, value) in [("check_seconds", 0), ("leader_lease_seconds", 1), ("grace_seconds", 400_000_000)] {
        let expiry = with(|t| {
            let mut table = toml::Table::new();
            table.insert(key.into(), toml::Value::Integer(value));
            t.insert("binding_expiry".into(), toml::Value::Table(table));
        });
        assert_eq!(field_of(expiry), format!("binding_expiry.{key}"));
    }
    for value in [0, 3601] {
        let metrics = with(|t| {
            let metrics = t.entry("metrics").or_insert(toml::Value::Table(toml::Table::new()));
            metrics.as_table_mut().unwrap().insert("inventory_seconds".into(), toml::Value::Integer(value));
        });
        assert_eq!(field_of(metrics), "metrics.inventory_seconds");
    }
    // Plans without the option publish nothing about rotation.
    let plain = Config::from_toml(EXAMPLE).unwrap();
    let json = serde_json::to_value(&plain.catalog).unwrap();
    assert!(json["services"][0]["plans"][0].get("binding_rotatable").is_none(), "{json}");
}

#[test]
fn an_encrypting_plan_needs_a_keychain_and_the_proxys_urls() {
    const PLAN: &str = "0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b";
    let encrypting_with = |keychain: bool, proxy: bool, credentials: &'static str| {
        with(move |t| {
            let plan = t["plan_configs"][PLAN].as_table_mut().unwrap();
            plan.insert("encryption".into(), true.into());
            plan.insert("credentials".into(), credentials.into());
            let cluster = plan["cluster"].as_str().unwrap().to_owned();
            if proxy {
                let cluster = t["clusters"][&cluster].as_table_mut().unwrap();
                cluster.insert("proxy_endpoints".into(), vec!["https://etcd-proxy.example.com:2379"].into());
            }
            if keychain {
                let secrets = toml::toml! { active = "k1" };
                t.insert("secrets".into(), toml::Value::Table(secrets));
                let key = toml::toml! { value = "x" };
                t["secrets"].as_table_mut().unwrap().insert(
                    "keys".into(),
                    toml::Value::Table([("k1".to_owned(), toml::Value::Table(key))].into_iter().collect()),
                );
                t["secrets"]["keys"]["k1"].as_table_mut().unwrap().insert("value".into(), key_text(1).into());
            }
        })
    };
    let encrypting = |keychain: bool, proxy: bool| encrypting_with(keychain, proxy, "password");
    let field = format!("plan_configs.\"{PLAN}\".encryption");
    assert_eq!(field_of(encrypting(false, true)), field);
    let error = encrypting(true, false).unwrap_err().to_string();
    assert!(error.contains("proxy_endpoints"), "{error}");
    let config = encrypting(true, true).unwrap();
    assert!(config.plan_options[PLAN].encryption);
    // A client certificate cannot log in through the proxy: refused, naming the field.
    let error = encrypting_with(true, true, "certificate").unwrap_err().to_string();
    assert!(error.contains(&field) && error.contains("password bindings"), "{error}");
    let cluster = &config.clusters[&config.plan_clusters[PLAN]];
    assert_eq!(cluster.proxy_endpoints[0].as_str(), "https://etcd-proxy.example.com:2379/");
}

#[test]
fn quotas_are_plan_options_that_need_the_proxys_urls() {
    const PLAN: &str = "0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b";
    let limited = |proxy: bool, rate: i64| {
        with(move |t| {
            let plan = t["plan_configs"][PLAN].as_table_mut().unwrap();
            plan.insert("quota_bytes".into(), 1_000_000.into());
            plan.insert("quota_keys".into(), 100.into());
            plan.insert("quota_requests_per_second".into(), rate.into());
            let cluster = plan["cluster"].as_str().unwrap().to_owned();
            if proxy {
                let cluster = t["clusters"][&cluster].as_table_mut().unwrap();
                cluster.insert("proxy_endpoints".into(), vec!["https://etcd-proxy.example.com:2379"].into());
            }
        })
    };
    assert_eq!(field_of(limited(false, 50)), format!("plan_configs.\"{PLAN}\".quota_bytes"));
    assert_eq!(field_of(limited(true, 0)), format!("plan_configs.\"{PLAN}\".quota_requests_per_second"));
    let config = limited(true, 50).unwrap();
    let options = &config.plan_options[PLAN];
    assert_eq!(
        options.quotas,
        InstanceQuotas { bytes: Some(1_000_000), keys: Some(100), requests_per_second: Some(50) }
    );
    assert!(options.proxied() && !options.encryption);
    let plain = Config::from_toml(EXAMPLE).unwrap();
    assert!(plain.plan_options.values().all(|o| !o.quotas.any() && !o.proxied()));
}

#[test]
fn a_plan_keeping_secrets_in_openbao_needs_openbao_and_a_kv_path_of_plain_segments() {
    let keep_in_openbao = |kv: Option<toml::Table>, openbao: bool| {
        with(move |t| {
            let configs = t["plan_configs"].as_table_mut().unwrap();
            let first = configs.iter_mut().next().unwrap().1.as_table_mut().unwrap();
            first.insert("credential_store".into(), "openbao".into());
            let mut secrets = toml::toml! { sealing = "off" };
            if openbao {
                let mut table = toml::toml! { address = "https://bao.example.com:8200" };
                table.insert(
                    "approle".into(),
                    toml::Value::Table(toml::toml! { role_id = "r" secret_id = "s" }),
                );
                if let Some(kv) = kv {
                    table.insert("kv".into(), toml::Value::Table(kv));
                }
                secrets.insert("openbao".into(), toml::Value::Table(table));
            }
            t.insert("secrets".into(), toml::Value::Table(secrets));
        })
    };
    let config = keep_in_openbao(None, true).unwrap();
    let store = config.credential_store.as_ref().expect("a credential store");
    assert_eq!(store.describe(), "OpenBao KV 'secret' at https://bao.example.com:8200");
    assert_eq!(store.location("i1", "b1").to_string(), "secret/etcd-broker/i1/b1");
    let kv = toml::toml! { mount = "kv" prefix = "platform/etcd" };
    let config = keep_in_openbao(Some(kv), true).unwrap();
    let store = config.credential_store.as_ref().unwrap();
    assert_eq!(store.location("i1", "b1").to_string(), "kv/platform/etcd/i1/b1");
    assert_eq!(
        keep_in_openbao(None, false).unwrap_err().to_string(),
        "invalid configuration: plan_configs.\"0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b\".credential_store: 'openbao' \
         needs [secrets.openbao]: where OpenBao is and how the broker logs in"
    );
    for (kv, field) in [
        (toml::toml! { mount = "a/b" }, "secrets.openbao.kv.mount"),
        (toml::toml! { prefix = "a//b" }, "secrets.openbao.kv.prefix"),
        (toml::toml! { prefix = "../b" }, "secrets.openbao.kv.prefix"),
    ] {
        assert_eq!(field_of(keep_in_openbao(Some(kv), true)), field);
    }
    // No plan keeps its secrets in OpenBao: no store, as before the option existed.
    assert!(Config::from_toml(EXAMPLE).unwrap().credential_store.is_none());
    let unknown = with(|t| {
        let configs = t["plan_configs"].as_table_mut().unwrap();
        let first = configs.iter_mut().next().unwrap().1.as_table_mut().unwrap();
        first.insert("credential_store".into(), "vault".into());
    });
    assert!(unknown.unwrap_err().to_string().contains("unknown variant `vault`"));
    let reference_in_etcd = with(|t| {
        let configs = t["plan_configs"].as_table_mut().unwrap();
        let first = configs.iter_mut().next().unwrap().1.as_table_mut().unwrap();
        first.insert("credentials_by_reference".into(), true.into());
    });
    assert_eq!(
        field_of(reference_in_etcd),
        "plan_configs.\"0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b\".credentials_by_reference"
    );
}

#[test]
fn a_credential_template_that_fails_on_a_sample_binding_stops_the_load_naming_the_plan() {
    let with_template = |field: &'static str, value: String| {
        with(move |t| {
            let configs = t["plan_configs"].as_table_mut().unwrap();
            let first = configs.iter_mut().next().unwrap().1.as_table_mut().unwrap();
            first.insert(field.into(), value.into());
        })
    };
    let good = with_template("credentials_template", r#"{"url": "{{uri}}", "user": "{{username}}"}"#.into());
    assert!(good.unwrap().credential_templates.has("0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b"));
    let plan = "0d2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b";
    for (template, why) in
        [(r#"{"url": "{{url}}"}"#, "does not render"), (r#"{"url": {{uri}}}"#, "renders invalid JSON")]
    {
        let error = with_template("credentials_template", template.into()).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!(
                "invalid configuration: plan_configs.\"{plan}\".credentials_template: plan '{plan}': the template \
                 fails on a sample binding: it {why}"
            )),
            "{error}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.hbs");
    std::fs::write(&file, r#"{"user": "{{username}}"}"#).unwrap();
    let from_file = with_template("credentials_template_file", file.display().to_string()).unwrap();
    assert!(from_file.credential_templates.has(plan));
    std::fs::write(&file, "{{#each}}").unwrap();
    let error = with_template("credentials_template_file", file.display().to_string()).unwrap_err();
    assert_eq!(field_of(Err(error)), format!("plan_configs.\"{plan}\".credentials_template_file"));
}
