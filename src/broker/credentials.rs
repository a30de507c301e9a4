//! The credentials a binding hands to the application (documented in `docs/credentials.md`).

use serde_json::{json, Value};
use url::Url;

use super::records::BindingRecord;
use super::Cluster;
use crate::credential_store::Location;

/// Builds the default credentials shape: `endpoints`, `host`, `port`, `username`, `password`,
/// `prefix`, `uri` and `tls`. Stable across versions: apps parse it. `password` is the record's,
/// unsealed.
pub fn credentials(record: &BindingRecord, password: &str, cluster: &Cluster) -> Value {
    let first = &cluster.public_endpoints[0];
    let tls = first.scheme() == "https";
    let mut uri = first.clone();
    // Both calls only fail for URLs without a host, which the config refuses.
    let _ = uri.set_username(&record.username);
    let _ = uri.set_password(Some(password));
    uri.set_path(&record.prefix);
    let mut tls_value = json!({ "enabled": tls });
    if let (true, Some(ca)) = (tls, &cluster.ca_certificate) {
        tls_value["ca_certificate"] = json!(ca);
    }
    json!({
        "endpoints": cluster.public_endpoints.iter().map(endpoint_string).collect::<Vec<_>>(),
        "host": first.host_str().unwrap_or_default(),
        "port": first.port_or_known_default(),
        "username": record.username,
        "password": password,
        "prefix": record.prefix,
        "uri": uri.as_str(),
        "tls": tls_value,
    })
}

/// What a certificate binding hands out besides (or instead of) a password.
pub struct CertificateCredentials<'a> {
    /// The client certificate (PEM; CN = the user).
    pub cert: &'a str,
    /// Its private key (PEM), unsealed.
    pub key: &'a str,
    /// The CA that verifies etcd's server certificate (PEM).
    pub ca_certificate: &'a str,
    /// The https client URLs that accept client certificates.
    pub endpoints: &'a [Url],
}

/// Builds a certificate binding's credentials: `endpoints`, `host`, `port`, `username` (the
/// certificate's CN: informational, clients send no user name), `prefix`, `cert`, `key`,
/// `ca_certificate` and `tls`. With `password` (plans of kind `both`) the default shape's
/// fields come first and the certificate client URLs go into `certificate_endpoints`.
pub fn certificate_credentials(
    record: &BindingRecord,
    password: Option<&str>,
    cluster: &Cluster,
    certificate: &CertificateCredentials<'_>,
) -> Value {
    let endpoints: Vec<String> = certificate.endpoints.iter().map(endpoint_string).collect();
    let mut value = match password {
        Some(password) => {
            let mut value = credentials(record, password, cluster);
            value["certificate_endpoints"] = json!(endpoints);
            value
        }
        None => {
            let first = &certificate.endpoints[0];
            json!({
                "endpoints": endpoints,
                "host": first.host_str().unwrap_or_default(),
                "port": first.port_or_known_default(),
                "username": record.username,
                "prefix": record.prefix,
                "tls": { "enabled": true, "ca_certificate": certificate.ca_certificate },
            })
        }
    };
    value["cert"] = json!(certificate.cert);
    value["key"] = json!(certificate.key);
    value["ca_certificate"] = json!(certificate.ca_certificate);
    value
}

/// The fields of the credentials that are secrets: what an answer by reference leaves out.
const SECRET_FIELDS: [&str; 3] = ["password", "uri", "key"];

/// Where an app reads a binding's secrets itself (plans with `credentials_by_reference`).
pub struct SecretReference<'a> {
    /// The store's address (`https://bao.example.com:8200`).
    pub address: &'a str,
    /// Where the secret is in the store.
    pub location: &'a Location,
    /// The path to read it at (`<mount>/data/<path>`).
    pub read_path: &'a str,
    /// The secret's fields (`password`, `certificate`, `private_key`).
    pub fields: Vec<&'a str>,
}

/// `credentials` answered by reference: every secret field (`password`, `uri`, `key`) taken
/// out, and `credentials_reference` saying where the app reads them (docs/credentials.md).
pub fn by_reference(mut credentials: Value, reference: &SecretReference<'_>) -> Value {
    if let Some(fields) = credentials.as_object_mut() {
        for secret in SECRET_FIELDS {
            fields.remove(secret);
        }
    }
    credentials["credentials_reference"] = json!({
        "store": "openbao",
        "address": reference.address,
        "mount": reference.location.mount,
        "path": reference.location.path,
        "read_path": reference.read_path,
        "fields": reference.fields,
    });
    credentials
}

/// `scheme://host:port`, without the trailing slash `Url` adds.
fn endpoint_string(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::records::RecordState;
    use crate::store::memory::MemoryStore;
    use std::sync::Arc;

    fn record() -> BindingRecord {
        BindingRecord {
            instance_id: "i".into(),
            binding_id: "b".into(),
            service_id: "s".into(),
            plan_id: "p".into(),
            cluster: "main".into(),
            username: "etcd-broker.i.b".into(),
            role: "etcd-broker.i.b".into(),
            password_sealed: Some("etcd-broker-sealed:v1:k1:not:used:here".into()),
            prefix: "/service_instances/i/".into(),
            state: RecordState::Ready,
            created_at: 0,
            updated_at: 0,
            ..Default::default()
        }
    }

    #[test]
    fn certificate_credentials_have_the_documented_shape() {
        let cluster = Cluster {
            store: Arc::new(MemoryStore::default()),
            public_endpoints: vec![Url::parse("http://etcd-0.example.com:2379").unwrap()],
            ca_certificate: None,
            proxy_endpoints: vec![],
        };
        let endpoints = [Url::parse("https://etcd-0.example.com:2380").unwrap()];
        let certificate =
            CertificateCredentials { cert: "CERT", key: "KEY", ca_certificate: "CA", endpoints: &endpoints };
        assert_eq!(
            certificate_credentials(&record(), None, &cluster, &certificate),
            json!({
                "endpoints": ["https://etcd-0.example.com:2380"],
                "host": "etcd-0.example.com",
                "port": 2380,
                "username": "etcd-broker.i.b",
                "prefix": "/service_instances/i/",
                "cert": "CERT",
                "key": "KEY",
                "ca_certificate": "CA",
                "tls": { "enabled": true, "ca_certificate": "CA" },
            })
        );
        let both = certificate_credentials(&record(), Some("pw"), &cluster, &certificate);
        assert_eq!(both["endpoints"], json!(["http://etcd-0.example.com:2379"]));
        assert_eq!(both["certificate_endpoints"], json!(["https://etcd-0.example.com:2380"]));
        assert_eq!(
            (&both["password"], &both["cert"], &both["key"]),
            (&json!("pw"), &json!("CERT"), &json!("KEY"))
        );
        assert_eq!(both["uri"], "http://etcd-broker.i.b:pw@etcd-0.example.com:2379/service_instances/i/");
    }

    #[test]
    fn credentials_have_the_documented_shape() {
        let cluster = Cluster {
            store: Arc::new(MemoryStore::default()),
            public_endpoints: vec![
                Url::parse("https://etcd-0.example.com:2379").unwrap(),
                Url::parse("https://etcd-1.example.com:2379").unwrap(),
            ],
            ca_certificate: Some("-----BEGIN CERTIFICATE-----".into()),
            proxy_endpoints: vec![],
        };
        let record = record();
        assert_eq!(
            credentials(&record, "secret", &cluster),
            json!({
                "endpoints": ["https://etcd-0.example.com:2379", "https://etcd-1.example.com:2379"],
                "host": "etcd-0.example.com",
                "port": 2379,
                "username": "etcd-broker.i.b",
                "password": "secret",
                "prefix": "/service_instances/i/",
                "uri": "https://etcd-broker.i.b:secret@etcd-0.example.com:2379/service_instances/i/",
                "tls": { "enabled": true, "ca_certificate": "-----BEGIN CERTIFICATE-----" },
            })
        );
    }
}
