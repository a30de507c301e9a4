//! A transit key as a [`KeyBackend`]: OpenBao encrypts and decrypts the data keys of sealed
//! values (`<mount>/encrypt/<key>`, `<mount>/decrypt/<key>`, with the envelope's header as
//! `associated_data`), and says which version is the latest (`<mount>/keys/<key>`). The key
//! must be of an AEAD type (the default `aes256-gcm96`), so that the associated data is
//! authenticated. Rotating it (`<mount>/keys/<key>/rotate`) is OpenBao's; the broker seals
//! with the latest version from then on and `reseal` moves older records to it.

use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use reqwest::Method;
use serde_json::json;
use zeroize::Zeroizing;

use crate::sealing::backend::{wrapped_version, BackendError, KeyBackend, Wrapped};

use super::{BaoError, OpenBao};

/// One transit key of one OpenBao.
pub struct TransitKey {
    bao: Arc<OpenBao>,
    /// The transit engine's mount (default `transit`).
    mount: String,
    /// The key's name in that engine.
    key: String,
}

impl TransitKey {
    /// The key `key` of the transit engine at `mount`.
    pub fn new(bao: Arc<OpenBao>, mount: &str, key: &str) -> TransitKey {
        TransitKey { bao, mount: mount.trim_matches('/').to_owned(), key: key.to_owned() }
    }
}

/// OpenBao's answer as a key backend's error: a failed authentication of the ciphertext is a
/// changed value, unavailability is worth a retry, the rest is a failure.
fn backend_error(e: BaoError) -> BackendError {
    match &e {
        BaoError::Unavailable { .. } => BackendError::Unavailable(e.to_string()),
        BaoError::Refused { reason, .. } if reason.contains("message authentication failed") => {
            BackendError::Rejected(e.to_string())
        }
        _ => BackendError::Failed(e.to_string()),
    }
}

#[async_trait]
impl KeyBackend for TransitKey {
    fn describe(&self) -> String {
        format!("OpenBao transit key '{}/{}' at {}", self.mount, self.key, self.bao.address())
    }

    async fn wrap(&self, data_key: &[u8], aad: &[u8]) -> Result<Wrapped, BackendError> {
        let plaintext = Zeroizing::new(BASE64.encode(data_key));
        let body = json!({ "plaintext": plaintext.as_str(), "associated_data": BASE64.encode(aad) });
        let path = format!("{}/encrypt/{}", self.mount, self.key);
        let answer = self.bao.call(Method::POST, &path, Some(&body)).await.map_err(backend_error)?;
        let data = &answer["data"];
        let text = data["ciphertext"].as_str().unwrap_or_default().to_owned();
        let version = data["key_version"].as_u64().and_then(|v| u32::try_from(v).ok());
        match (wrapped_version(&text), version) {
            (Some(named), Some(version)) if named == version => Ok(Wrapped { version, text }),
            // Older servers do not report `key_version`: the ciphertext names it.
            (Some(named), None) => Ok(Wrapped { version: named, text }),
            _ => Err(BackendError::Failed(format!(
                "{}: the encrypt answer has no transit ciphertext",
                self.describe()
            ))),
        }
    }

    async fn unwrap(&self, wrapped: &str, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let body = json!({ "ciphertext": wrapped, "associated_data": BASE64.encode(aad) });
        let path = format!("{}/decrypt/{}", self.mount, self.key);
        let answer = self.bao.call(Method::POST, &path, Some(&body)).await.map_err(backend_error)?;
        let plaintext = answer["data"]["plaintext"].as_str().unwrap_or_default();
        BASE64.decode(plaintext).map(Zeroizing::new).map_err(|_| {
            BackendError::Failed(format!("{}: the decrypt answer is not base64", self.describe()))
        })
    }

    async fn latest_version(&self) -> Result<u32, BackendError> {
        let path = format!("{}/keys/{}", self.mount, self.key);
        let answer = self.bao.call(Method::GET, &path, None).await.map_err(backend_error)?;
        answer["data"]["latest_version"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .ok_or_else(|| {
                BackendError::Failed(format!("{}: no latest_version in its description", self.describe()))
            })
    }
}
