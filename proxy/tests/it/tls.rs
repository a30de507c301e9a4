//! TLS on both sides: clients reach the proxy over TLS (terminated by the proxy), the proxy
//! reaches etcd over TLS with a client certificate of its own, and still every request is
//! decided by etcd for the caller's token, never for the proxy's certificate.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use etcd_broker::pki::ClientCa;
use local_etcd::{ClientCertAuth, Options};

use crate::common::*;

const DAY: Duration = Duration::from_secs(86_400);

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn tls_is_terminated_by_the_proxy_and_the_callers_token_decides_over_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClientCa::generate("proxy test CA", DAY).unwrap();
    let etcd_server = ca.mint_server("127.0.0.1", DAY).unwrap();
    let ca_file = write(dir.path(), "ca.pem", ca.certificate_pem());
    let files = ClientCertAuth {
        cert_file: write(dir.path(), "etcd.pem", &etcd_server.certificate),
        key_file: write(dir.path(), "etcd.key", &etcd_server.private_key),
        trusted_ca_file: ca_file.clone(),
    };
    let etcd = start_etcd_with(Options { client_cert_auth: Some(files), ..Options::default() }).await;
    // A CN that names no etcd user: the certificate only opens the connection.
    let client = ca.mint_client("etcd-broker-proxy-connection", DAY).unwrap();
    let server = ca.mint_server("127.0.0.1", DAY).unwrap();
    let path = |p: PathBuf| p.to_str().unwrap().to_owned();
    let args = [
        "--endpoints".to_owned(),
        etcd.tls_endpoint().unwrap(),
        "--endpoints-ca-file".to_owned(),
        path(ca_file.clone()),
        "--endpoints-cert-file".to_owned(),
        path(write(dir.path(), "proxy-client.pem", &client.certificate)),
        "--endpoints-key-file".to_owned(),
        path(write(dir.path(), "proxy-client.key", &client.private_key)),
        "--tls-cert-file".to_owned(),
        path(write(dir.path(), "proxy.pem", &server.certificate)),
        "--tls-key-file".to_owned(),
        path(write(dir.path(), "proxy.key", &server.private_key)),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = ProxyProcess::start_with(&etcd, &args).await;
    assert!(proxy.url.starts_with("https://"));
    let cacert = format!("--cacert={}", ca_file.display());
    let key = format!("{}k", prefix("alice"));

    let out = etcdctl(&etcd, &proxy.url, "alice", &[&cacert, "put", &key, "over TLS"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = etcdctl(&etcd, &proxy.url, "alice", &[&cacert, "get", &key, "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over TLS");
    // bob's token, not the proxy's certificate, is what etcd judges.
    let out = etcdctl(&etcd, &proxy.url, "bob", &[&cacert, "get", &key]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"), "{out:?}");
    // Without a token the proxy refuses before etcd could take its certificate for the caller.
    let out = std::process::Command::new(etcd.etcdctl())
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &proxy.url, &cacert, "--command-timeout=5s", "put", &key, "anonymous"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no auth token"), "{out:?}");
}
