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

/// The policy the broker's token gets: the transit key's encrypt, decrypt and description.
const POLICY: &str = r#"
path "transit/encrypt/etcd-broker" { capabilities = ["update"] }
path "transit/decrypt/etcd-broker" { capabilities = ["update"] }
path "transit/keys/etcd-broker" { capabilities = ["read"] }
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
