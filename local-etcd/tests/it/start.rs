//! Starts real etcd servers of both supported versions.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use local_etcd::{etcd_binary_in, etcdctl_binary_in, EtcdVersion, LocalEtcd, Options};

const VERSIONS: [EtcdVersion; 2] = [EtcdVersion::V3_5, EtcdVersion::V3_4];

fn opts(version: EtcdVersion) -> Options {
    Options { version, bcrypt_cost: Some(4), ..Options::default() }
}

#[tokio::test]
async fn auth_is_enabled_and_root_can_write() {
    for v in VERSIONS {
        let etcd = LocalEtcd::start(opts(v)).await.unwrap();
        assert_eq!(etcd.version(), v);
        assert_eq!(etcd.endpoint(), format!("http://127.0.0.1:{}", etcd.client_port()));
        assert_eq!(etcd.root_username(), "root");
        assert_eq!(etcd.root_password().len(), 32);
        assert!(etcd.etcdctl().is_file());

        let mut anon = etcd_client::Client::connect([etcd.endpoint()], None).await.unwrap();
        assert!(anon.put("k", "v", None).await.is_err(), "{v}: unauthenticated put accepted");

        let mut root = etcd.root_client().await.unwrap();
        root.put("k", "v", None).await.unwrap();
        let got = root.get("k", None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"v", "{v}");
    }
}

#[tokio::test]
async fn concurrent_instances_get_different_ports() {
    for v in VERSIONS {
        let (a, b) = tokio::join!(LocalEtcd::start(opts(v)), LocalEtcd::start(opts(v)));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_ne!(a.client_port(), b.client_port(), "{v}");
        assert_ne!(a.root_password(), b.root_password(), "{v}");
    }
}

fn wait_closed(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test]
async fn drop_and_stop_end_the_process() {
    for v in VERSIONS {
        let etcd = LocalEtcd::start(opts(v)).await.unwrap();
        let port = etcd.client_port();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        drop(etcd);
        assert!(wait_closed(port), "{v}: port {port} still open after drop");

        let etcd = LocalEtcd::start(opts(v)).await.unwrap();
        let port = etcd.client_port();
        etcd.stop().await;
        assert!(wait_closed(port), "{v}: port {port} still open after stop");
    }
}

#[tokio::test]
async fn given_password_and_persistent_data_dir_are_reused() {
    for v in VERSIONS {
        let dir = tempfile::tempdir().unwrap();
        let o = Options {
            data_dir: Some(dir.path().join("data")),
            root_password: Some("s3cret-pw".into()),
            ..opts(v)
        };
        let etcd = LocalEtcd::start(o.clone()).await.unwrap();
        assert_eq!(etcd.root_password(), "s3cret-pw");
        etcd.root_client().await.unwrap().put("kept", "yes", None).await.unwrap();
        etcd.stop().await;

        let etcd = LocalEtcd::start(o.clone()).await.unwrap();
        let got = etcd.root_client().await.unwrap().get("kept", None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"yes", "{v}");
        drop(etcd);

        let err = LocalEtcd::start(Options { root_password: None, ..o }).await.err().unwrap();
        assert!(err.to_string().contains("root_password"), "{err}");
    }
}

#[test]
fn missing_binary_error_mentions_install_tools() {
    let empty = tempfile::tempdir().unwrap();
    for v in VERSIONS {
        for err in
            [etcd_binary_in(empty.path(), v).unwrap_err(), etcdctl_binary_in(empty.path(), v).unwrap_err()]
        {
            let msg = err.to_string();
            assert!(msg.contains("install-tools"), "{msg}");
            assert!(msg.contains(&format!("etcd-v{v}")), "{msg}");
        }
        assert!(local_etcd::etcd_binary(v).is_ok(), "tools not installed for {v}");
    }
}

#[test]
fn versions_parse_and_display() {
    assert_eq!(EtcdVersion::parse("3.5").unwrap(), EtcdVersion::V3_5);
    assert_eq!(EtcdVersion::parse("v3.4").unwrap(), EtcdVersion::V3_4);
    assert_eq!(EtcdVersion::V3_4.to_string(), "3.4");
    let err = EtcdVersion::parse("3.6").unwrap_err().to_string();
    assert!(err.contains("3.6") && err.contains("\"3.5\""), "{err}");
}

#[tokio::test]
async fn taken_client_port_fails_with_log_tail() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for v in VERSIONS {
        let o = Options { client_port: port, ..opts(v) };
        let err = LocalEtcd::start(o).await.err().unwrap().to_string();
        assert!(err.contains("exited during startup") && err.contains("address already in use"), "{err}");
    }
}

#[tokio::test]
async fn a_cluster_shares_data_password_and_token_keys() {
    for v in VERSIONS {
        for signed_tokens in [false, true] {
            let members = LocalEtcd::start_cluster(3, Options { signed_tokens, ..opts(v) }).await.unwrap();
            assert_eq!(members.len(), 3);
            let password = members[0].root_password();
            assert!(members.iter().all(|m| m.root_password() == password));
            let mut first = members[0].root_client().await.unwrap();
            first.put("k", "v", None).await.unwrap();
            // One login, requests spread over every member: each accepts the others' tokens.
            let endpoints: Vec<String> = members.iter().map(|m| m.endpoint()).collect();
            let login = etcd_client::ConnectOptions::new().with_user("root", password);
            let mut all = etcd_client::Client::connect(endpoints, Some(login)).await.unwrap();
            for _ in 0..30 {
                let got = all.get("k", None).await.unwrap_or_else(|e| panic!("{v} jwt={signed_tokens}: {e}"));
                assert_eq!(got.kvs()[0].value(), b"v");
            }
        }
    }
}

#[tokio::test]
async fn auto_compaction_removes_old_revisions() {
    for v in VERSIONS {
        let retention = Duration::from_secs(1);
        let etcd = LocalEtcd::start(Options { auto_compaction: Some(retention), ..opts(v) }).await.unwrap();
        let mut root = etcd.root_client().await.unwrap();
        let first = root.put("k", "1", None).await.unwrap().header().unwrap().revision();
        // etcd compacts a periodic retention's revisions once per retention at the earliest.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            root.put("k", "2", None).await.unwrap();
            let old = root.get("k", Some(etcd_client::GetOptions::new().with_revision(first))).await;
            match old {
                Err(e) if e.to_string().contains("compacted") => break,
                other => assert!(Instant::now() < deadline, "{v}: revision {first} still there: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Without the option nothing is compacted (etcd's default).
        let plain = LocalEtcd::start(opts(v)).await.unwrap();
        let mut root = plain.root_client().await.unwrap();
        let first = root.put("k", "1", None).await.unwrap().header().unwrap().revision();
        tokio::time::sleep(Duration::from_secs(3)).await;
        root.put("k", "2", None).await.unwrap();
        let old = root.get("k", Some(etcd_client::GetOptions::new().with_revision(first))).await.unwrap();
        assert_eq!(old.kvs()[0].value(), b"1", "{v}");
    }
}
