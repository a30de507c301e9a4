//! A KV v2 secrets engine as a [`CredentialStore`]: each binding's secret at
//! `<mount>/data/<prefix>/<instance>/<binding>`, written with check-and-set 0 (only if absent),
//! read back when an earlier attempt wrote it, deleted for good with its metadata
//! (`DELETE <mount>/metadata/<path>`: every version, not a soft delete), listed per instance
//! (`LIST <mount>/metadata/<prefix>/<instance>/`) so deprovision finds secrets no record names.

use std::sync::Arc;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::credential_store::{Created, CredentialStore, CredentialStoreError, Location, Secret};

use super::{BaoError, OpenBao};

/// One KV v2 engine of one OpenBao, and the folder in it that holds the broker's secrets.
#[derive(Debug)]
pub struct KvStore {
    bao: Arc<OpenBao>,
    /// The engine's mount (default `secret`).
    mount: String,
    /// The folder of the broker's secrets in it (default `etcd-broker`), without slashes at
    /// either end.
    prefix: String,
}

impl KvStore {
    /// The folder `prefix` of the KV v2 engine at `mount`.
    pub fn new(bao: Arc<OpenBao>, mount: &str, prefix: &str) -> KvStore {
        KvStore {
            bao,
            mount: mount.trim_matches('/').to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        }
    }

    fn failed(&self, e: BaoError) -> CredentialStoreError {
        match e {
            BaoError::Unavailable { .. } => CredentialStoreError::Unavailable(e.to_string()),
            _ => CredentialStoreError::Failed(e.to_string()),
        }
    }

    fn data_path(at: &Location) -> String {
        format!("{}/data/{}", at.mount, at.path)
    }

    fn metadata_path(at: &Location) -> String {
        format!("{}/metadata/{}", at.mount, at.path)
    }

    /// The `data.data` of a KV v2 read, as a secret of text fields; `None` for a version that
    /// is deleted (its data is null).
    fn secret_of(&self, at: &Location, answer: &Value) -> Result<Option<Secret>, CredentialStoreError> {
        let data = &answer["data"]["data"];
        if data.is_null() {
            return Ok(None);
        }
        let Some(fields) = data.as_object() else {
            return Err(CredentialStoreError::Failed(format!(
                "{}: the secret at {at} is not a JSON object",
                self.describe()
            )));
        };
        let mut secret = Secret::default();
        for (name, value) in fields {
            let Some(text) = value.as_str() else {
                return Err(CredentialStoreError::Failed(format!(
                    "{}: field '{name}' of the secret at {at} is not text",
                    self.describe()
                )));
            };
            secret.insert(name, text);
        }
        Ok(Some(secret))
    }
}

#[async_trait]
impl CredentialStore for KvStore {
    fn describe(&self) -> String {
        format!("OpenBao KV '{}' at {}", self.mount, self.bao.address())
    }

    fn address(&self) -> String {
        self.bao.address().to_owned()
    }

    fn read_path(&self, at: &Location) -> String {
        Self::data_path(at)
    }

    fn location(&self, instance: &str, binding: &str) -> Location {
        Location { mount: self.mount.clone(), path: format!("{}/{instance}/{binding}", self.prefix) }
    }

    fn instance_folder(&self, instance: &str) -> Location {
        Location { mount: self.mount.clone(), path: format!("{}/{instance}", self.prefix) }
    }

    async fn create(&self, at: &Location, secret: &Secret) -> Result<Created, CredentialStoreError> {
        let data: Map<String, Value> = secret.fields().map(|(k, v)| (k.to_owned(), json!(v))).collect();
        let body = json!({ "options": { "cas": 0 }, "data": data });
        match self.bao.call(Method::POST, &Self::data_path(at), Some(&body)).await {
            Ok(_) => Ok(Created::Written),
            // KV v2's answer when a version exists: "check-and-set parameter did not match the
            // current version".
            Err(BaoError::Refused { reason, .. }) if reason.contains("check-and-set") => {
                match self.read(at).await? {
                    Some(existing) => Ok(Created::Exists(existing)),
                    None => Err(CredentialStoreError::Failed(format!(
                        "{}: {at} has a deleted version, so nothing can be written there with \
                         check-and-set; destroy it with `bao kv metadata delete {at}` and repeat the request",
                        self.describe()
                    ))),
                }
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    async fn read(&self, at: &Location) -> Result<Option<Secret>, CredentialStoreError> {
        match self.bao.call(Method::GET, &Self::data_path(at), None).await {
            Ok(answer) => self.secret_of(at, &answer),
            Err(BaoError::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed(e)),
        }
    }

    async fn delete(&self, at: &Location) -> Result<(), CredentialStoreError> {
        match self.bao.call(Method::DELETE, &Self::metadata_path(at), None).await {
            Ok(_) | Err(BaoError::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed(e)),
        }
    }

    async fn list(&self, folder: &Location) -> Result<Vec<Location>, CredentialStoreError> {
        let list = Method::from_bytes(b"LIST").expect("a valid method name");
        let path = format!("{}/", Self::metadata_path(folder));
        let answer = match self.bao.call(list, &path, None).await {
            Ok(answer) => answer,
            Err(BaoError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(self.failed(e)),
        };
        let keys = answer["data"]["keys"].as_array().cloned().unwrap_or_default();
        Ok(keys
            .iter()
            .filter_map(Value::as_str)
            // A name ending in '/' is a folder: the broker writes none below an instance's.
            .filter(|name| !name.ends_with('/'))
            .map(|name| Location { mount: folder.mount.clone(), path: format!("{}/{name}", folder.path) })
            .collect())
    }
}
