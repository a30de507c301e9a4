//! OpenBao as the broker's key backend, on a real OpenBao dev server (`local_etcd::bao`) with
//! real etcd and real broker processes: binding passwords sealed by a transit key the broker
//! never sees, a transit key rotation followed by `reseal`, OpenBao unavailable (503, nothing
//! half done), and the broker's token: AppRole, a token file renewed while idle, and a token
//! that cannot be renewed.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use etcd_broker::config::Config;
use etcd_broker::reseal::{Pace, Source};
use local_etcd::bao::LocalBao;
use reqwest::StatusCode;

use crate::common::*;
use crate::sealing::{broker_with, config_with, password, state_dump};

const KEY: &str = "etcd-broker";

/// The policy the broker's token gets: the transit key's encrypt, decrypt and description, and
/// the secrets of bindings in the dev server's KV v2 engine (`secret/`) under `etcd-broker/`:
/// create and read them, delete them with their metadata, list an instance's.
const POLICY: &str = r#"
path "transit/encrypt/etcd-broker" { capabilities = ["update"] }
path "transit/decrypt/etcd-broker" { capabilities = ["update"] }
path "transit/keys/etcd-broker" { capabilities = ["read"] }
path "secret/data/etcd-broker/*" { capabilities = ["create", "read"] }
path "secret/metadata/etcd-broker/*" { capabilities = ["delete", "list"] }
"#;

/// A dev server with the transit key [`KEY`], the policy `etcd-broker`, and an AppRole of that
/// policy; its role_id and a secret_id.
async fn openbao() -> (LocalBao, String, String) {
    let bao = LocalBao::start().await.unwrap();
    bao.bao(&["secrets", "enable", "transit"]).await.unwrap();
    bao.bao(&["write", "-f", &format!("transit/keys/{KEY}")]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.hcl");
    std::fs::write(&policy, POLICY).unwrap();
    bao.bao(&["policy", "write", "etcd-broker", policy.to_str().unwrap()]).await.unwrap();
    bao.bao(&["auth", "enable", "approle"]).await.unwrap();
    bao.bao(&["write", "auth/approle/role/etcd-broker", "token_policies=etcd-broker", "token_ttl=1h"])
        .await
        .unwrap();
    let role_id = bao.field("role_id", &["read", "auth/approle/role/etcd-broker/role-id"]).await.unwrap();
    let secret_id =
        bao.field("secret_id", &["write", "-f", "auth/approle/role/etcd-broker/secret-id"]).await.unwrap();
    (bao, role_id, secret_id)
}

/// `[secrets]` with the transit key `bao` active, logging in with `auth` (a TOML table body
/// for `[secrets.openbao]`'s credentials).
fn transit_secrets(bao: &LocalBao, auth: &str) -> String {
    format!(
        "\n[secrets]\nactive = \"bao\"\n[secrets.keys.bao]\ntransit = \"{KEY}\"\n[secrets.openbao]\naddress = \
         \"{}\"\ntimeout_seconds = 2\n{auth}\n",
        bao.address()
    )
}

fn approle(role_id: &str, secret_id: &str) -> String {
    format!("[secrets.openbao.approle]\nrole_id = \"{role_id}\"\nsecret_id = \"{secret_id}\"\n")
}

/// The key names the binding records' sealed passwords name, in key order.
async fn sealed_with(etcd: &local_etcd::LocalEtcd) -> Vec<String> {
    state_dump(etcd)
        .await
        .into_iter()
        .filter(|(key, _)| key.starts_with("/etcd-broker/bindings/"))
        .map(|(_, value)| {
            let record: serde_json::Value = serde_json::from_str(&value).unwrap();
            let sealed = record["password_sealed"].as_str().expect("sealed");
            etcd_broker::sealing::sealed_with(sealed).unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_transit_key_seals_bindings_and_a_rotation_is_resealed_to_its_latest_version() {
    let etcd = start_etcd().await;
    let (bao, role_id, secret_id) = openbao().await;
    let secrets = transit_secrets(&bao, &approle(&role_id, &secret_id));
    let broker = broker_with(&etcd, secrets.clone()).await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    let mut passwords = Vec::new();
    for b in ["b1", "b2"] {
        let bound = osb.bind("i1", b).await;
        assert_eq!(bound.status, StatusCode::CREATED, "{:?}", bound.body);
        passwords.push((b, password(&bound)));
    }
    // The tenant's etcd takes them; nothing handed out is in etcd's state, in clear or base64.
    tenant_client(&osb.get_binding("i1", "b1").await.body["credentials"]).await.unwrap();
    let state = format!("{:?}", state_dump(&etcd).await);
    for (_, secret) in &passwords {
        assert!(!state.contains(secret.as_str()));
    }
    assert_eq!(sealed_with(&etcd).await, ["bao.v1", "bao.v1"]);

    // OpenBao rotates the key: new binds name version 2, old records still unseal.
    bao.bao(&["write", "-f", &format!("transit/keys/{KEY}/rotate")]).await.unwrap();
    let bound = osb.bind("i1", "b3").await;
    assert_eq!(bound.status, StatusCode::CREATED, "{:?}", bound.body);
    passwords.push(("b3", password(&bound)));
    assert_eq!(sealed_with(&etcd).await, ["bao.v1", "bao.v1", "bao.v2"]);
    let config = Config::from_toml(&config_with(1, 2, &etcd, &secrets)).unwrap();
    let list = etcd_broker_ops::sealing::list_with_counts(&config).await.unwrap();
    let described = format!("OpenBao transit key 'transit/{KEY}' at {}", bao.address());
    assert_eq!(
        list,
        format!(
            "sealing: on\nkeys:\n  bao (active, {described}): 3 records\n    bao.v1: 2 records\n    bao.v2: 1 \
             record\nin clear: 0 records\n"
        )
    );

    // reseal moves the version-1 records to version 2, while the broker serves.
    let stop = AtomicBool::new(false);
    let summary =
        etcd_broker::reseal::reseal(&config, false, Pace::default(), &stop, &mut |_| {}).await.unwrap();
    assert_eq!(summary.failed, []);
    assert_eq!((summary.rewritten, summary.already_active), ([(Source::Key("bao.v1".into()), 2)].into(), 1));
    assert_eq!(sealed_with(&etcd).await, ["bao.v2", "bao.v2", "bao.v2"]);
    for (binding, secret) in &passwords {
        let got = osb.get_binding("i1", binding).await;
        assert_eq!((got.status, &password(&got)), (StatusCode::OK, secret), "{binding}");
    }
    assert_eq!(osb.unbind("i1", "b1").await.status, StatusCode::OK);
    assert_eq!(osb.deprovision("i1").await.status, StatusCode::OK);
    let log = broker.stop().await;
    assert!(!log.contains(&secret_id), "the secret_id is in the log");
}

#[tokio::test]
async fn openbao_unavailable_is_a_503_and_leaves_nothing_half_done() {
    let etcd = start_etcd().await;
    let (bao, role_id, secret_id) = openbao().await;
    let broker = broker_with(&etcd, transit_secrets(&bao, &approle(&role_id, &secret_id))).await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    let secret = password(&osb.bind("i1", "b1").await);
    let before = state_dump(&etcd).await;
    let made = broker_made_things(&etcd).await;

    bao.freeze();
    let refused = osb.bind("i1", "b2").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", refused.body);
    let description = refused.body["description"].as_str().unwrap();
    assert!(description.contains("OpenBao") && description.contains("repeat the request"), "{description}");
    let got = osb.get_binding("i1", "b1").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", got.body);
    // Nothing of b2 was made: no record, no index entry, no user, no role.
    assert_eq!(state_dump(&etcd).await, before);
    assert_eq!(broker_made_things(&etcd).await, made);

    bao.thaw();
    let bound = osb.bind("i1", "b2").await;
    assert_eq!(bound.status, StatusCode::CREATED, "{:?}", bound.body);
    assert_eq!(password(&osb.get_binding("i1", "b1").await), secret);
}

#[tokio::test]
async fn a_token_file_is_renewed_while_the_broker_idles_and_an_unrenewable_one_is_a_clear_error() {
    let etcd = start_etcd().await;
    let (bao, _, _) = openbao().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = |name: &str, token: &str| {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        format!("token_file = {:?}\n", path.to_str().unwrap())
    };
    // Renewable, 4 s to live: the broker renews it at two thirds while nothing happens.
    let renewable = bao
        .field(
            "token",
            &["token", "create", "-policy=etcd-broker", "-ttl=4s", "-explicit-max-ttl=120s", "-orphan"],
        )
        .await
        .unwrap();
    let broker = broker_with(&etcd, transit_secrets(&bao, &token_file("renewable", &renewable))).await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_secs(9)).await;
    let bound = osb.bind("i1", "b1").await;
    assert_eq!(bound.status, StatusCode::CREATED, "{:?}", bound.body);
    let log = broker.stop().await;
    assert!(!log.contains(&renewable), "the token is in the log");

    // Not renewable, 2 s to live: once it is over, binds fail naming the cause, not the token.
    let brief = bao
        .field("token", &["token", "create", "-policy=etcd-broker", "-ttl=2s", "-renewable=false", "-orphan"])
        .await
        .unwrap();
    let broker = broker_with(&etcd, transit_secrets(&bao, &token_file("brief", &brief))).await;
    let osb = Osb::new(&broker.url);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = osb.bind("i1", "b2").await;
    assert_eq!(refused.status, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", refused.body);
    let description = refused.body["description"].as_str().unwrap();
    assert!(description.contains("token_file"), "{description}");
    assert!(!description.contains(&brief));
    assert_eq!(sealed_with(&etcd).await, ["bao.v1"], "nothing of b2 was made");
    let log = broker.stop().await;
    assert!(!log.contains(&brief), "the token is in the log");
}

/// The test config with plan SHARED keeping its bindings' secrets in OpenBao KV, and plan
/// LARGE too, answering binds by reference.
fn kv_config(port: u16, metrics: u16, etcd: &local_etcd::LocalEtcd, secrets: &str) -> String {
    let shared = format!("[plan_configs.\"{SHARED}\"]\ncluster = \"main\"\n");
    let large = format!("[plan_configs.\"{LARGE}\"]\ncluster = \"main\"\n");
    let config = config_with(port, metrics, etcd, secrets);
    assert!(config.contains(&shared) && config.contains(&large));
    config
        .replace(&shared, &format!("{shared}credential_store = \"openbao\"\n"))
        .replace(&large, &format!("{large}credential_store = \"openbao\"\ncredentials_by_reference = true\n"))
}

/// What `bao kv get` finds at a binding's path: the field `field`, or `None` when nothing is
/// there (no version, no metadata).
async fn kv_field(bao: &LocalBao, instance: &str, binding: &str, field: &str) -> Option<String> {
    let path = format!("secret/etcd-broker/{instance}/{binding}");
    let metadata = bao.bao(&["kv", "metadata", "get", &path]).await;
    let value = bao.field(field, &["kv", "get", &path]).await.ok();
    assert_eq!(metadata.is_ok(), value.is_some(), "{path}: metadata without data, or the reverse");
    value
}

/// `[secrets]` with a local key `k1` active (the keychain seals, not transit) and OpenBao for
/// the credential store only, logging in with `auth`.
fn keychain_and_openbao(bao: &LocalBao, auth: &str) -> String {
    let key = etcd_broker::sealing::Key::generate("k1").unwrap().to_text().unwrap().as_str().to_owned();
    format!(
        "\n[secrets]\nactive = \"k1\"\n[secrets.keys.k1]\nvalue = {key:?}\n[secrets.openbao]\naddress = \
         \"{}\"\ntimeout_seconds = 2\n{auth}\n",
        bao.address()
    )
}

/// Both OpenBao backends together: transit seals, KV stores.
#[tokio::test]
async fn a_plan_keeps_its_secrets_in_openbao_kv_and_unbind_and_deprovision_delete_them() {
    kv_store_lifecycle(transit_secrets).await;
}

/// The KV credential store alone, beside the local keychain.
#[tokio::test]
async fn the_openbao_kv_store_works_beside_the_local_keychain() {
    kv_store_lifecycle(keychain_and_openbao).await;
}

/// Bind, GET, unbind, OpenBao down, a bind by reference and deprovision with plans keeping
/// their secrets in OpenBao KV, `secrets` making the `[secrets]` table.
async fn kv_store_lifecycle(secrets: impl Fn(&LocalBao, &str) -> String) {
    let etcd = start_etcd().await;
    let (bao, role_id, secret_id) = openbao().await;
    let secrets = secrets(&bao, &approle(&role_id, &secret_id));
    let broker =
        BrokerProcess::start_with_config(|port, metrics| kv_config(port, metrics, &etcd, &secrets), &[])
            .await;
    let osb = Osb::new(&broker.url);
    assert_eq!(osb.provision("i1", SHARED).await.status, StatusCode::CREATED);
    let mut handed_out = Vec::new();
    for b in ["b1", "b2"] {
        let bound = osb.bind("i1", b).await;
        assert_eq!(bound.status, StatusCode::CREATED, "{:?}", bound.body);
        let secret = password(&bound);
        assert_eq!(kv_field(&bao, "i1", b, "password").await.as_deref(), Some(secret.as_str()));
        handed_out.push(secret);
    }
    // The tenant's etcd takes them; the records hold no secret at all, they name its path.
    tenant_client(&osb.get_binding("i1", "b1").await.body["credentials"]).await.unwrap();
    for (key, value) in state_dump(&etcd).await {
        for secret in &handed_out {
            assert!(!value.contains(secret.as_str()), "{key} holds a password");
        }
        if key.starts_with("/etcd-broker/bindings/") {
            let record: serde_json::Value = serde_json::from_str(&value).unwrap();
            assert_eq!(record["secret_location"]["mount"], "secret", "{key}: {record}");
            for field in ["password", "password_sealed", "private_key", "private_key_sealed", "certificate"] {
                assert!(record.get(field).is_none(), "{key} has {field}");
            }
        }
    }
    // A repeated bind and GET answer the same secret, read back from OpenBao.
    assert_eq!(password(&osb.bind("i1", "b1").await), handed_out[0]);
    assert_eq!(password(&osb.get_binding("i1", "b2").await), handed_out[1]);

    // Unbind deletes the secret, every version and its metadata.
    assert_eq!(osb.unbind("i1", "b1").await.status, StatusCode::OK);
    assert_eq!(kv_field(&bao, "i1", "b1", "password").await, None);

    // OpenBao down: a bind is a 503 that makes nothing, in etcd or OpenBao; GET is a 503.
    let made = broker_made_things(&etcd).await; // waits for the role queue to drain first
    let before = state_dump(&etcd).await;
    bao.freeze();
    let refused = osb.bind("i1", "b3").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", refused.body);
    let description = refused.body["description"].as_str().unwrap();
    assert!(description.contains("OpenBao") && description.contains("repeat the request"), "{description}");
    let got = osb.get_binding("i1", "b2").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", got.body);
    assert_eq!(state_dump(&etcd).await, before);
    assert_eq!(broker_made_things(&etcd).await, made);
    bao.thaw();
    assert_eq!(kv_field(&bao, "i1", "b3", "password").await, None);
    let bound = osb.bind("i1", "b3").await;
    assert_eq!(bound.status, StatusCode::CREATED, "{:?}", bound.body);

    // A plan answering by reference: no secret in the answer, and the path it names holds it.
    let body = serde_json::json!({ "service_id": SERVICE_ID, "plan_id": LARGE });
    let by_reference =
        osb.put_binding("i1", "r1", &body, etcd_broker_ops::osb::Incomplete::Refused).await.unwrap();
    assert_eq!(by_reference.status, StatusCode::CREATED, "{:?}", by_reference.body);
    let mut credentials = by_reference.body["credentials"].clone();
    let reference = credentials["credentials_reference"].clone();
    assert_eq!(reference["address"], bao.address().as_str(), "{credentials}");
    assert!(credentials.get("password").is_none() && credentials.get("uri").is_none(), "{credentials}");
    // What an app that reads OpenBao itself does: GET <address>/v1/<read_path>.
    let read = format!("{}/v1/{}", bao.address(), reference["read_path"].as_str().unwrap());
    let answer: serde_json::Value = reqwest::Client::new()
        .get(read)
        .header("X-Vault-Token", bao.root_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    credentials["password"] = answer["data"]["data"]["password"].clone();
    tenant_client(&credentials).await.unwrap();

    // Deprovision deletes every secret of the instance.
    assert_eq!(osb.deprovision("i1").await.status, StatusCode::OK);
    assert_eq!(kv_field(&bao, "i1", "r1", "password").await, None);
    for b in ["b2", "b3"] {
        assert_eq!(kv_field(&bao, "i1", b, "password").await, None, "{b}");
    }
    let log = broker.stop().await;
    assert!(!log.contains(&secret_id), "the secret_id is in the log");
    for secret in &handed_out {
        assert!(!log.contains(secret.as_str()), "a password is in the log");
    }
}
