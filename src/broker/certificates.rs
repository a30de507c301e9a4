//! Certificate bindings: which plans hand out client certificates, the CA that mints them, and
//! the endpoints certificate clients use.
//!
//! A certificate binding is the same etcd user and role as a password binding, but the user
//! has no password (`Store::ensure_certificate_user`) and the record holds a client
//! certificate whose CN is the user, with its private key sealed like a password
//! (`sealed.rs`). The key pair and certificate are minted (`pki`) before the record is first
//! written and stored in it, so every retry of the bind hands out the same certificate and no
//! crash point leaves a certificate that no record holds.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::osb::{BrokerError, BrokerResult};
use crate::pki::{ClientCa, Minted};

/// What credentials a plan's bindings get (`plan_configs."<id>".credentials`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    /// A password user (today's default): works with every etcd client and endpoint.
    #[default]
    Password,
    /// A user without a password and a client certificate: etcd hashes nothing.
    Certificate,
    /// A password user that also gets a client certificate.
    Both,
}

impl CredentialKind {
    /// Whether bindings get a password.
    pub fn password(self) -> bool {
        matches!(self, CredentialKind::Password | CredentialKind::Both)
    }

    /// Whether bindings get a client certificate.
    pub fn certificate(self) -> bool {
        matches!(self, CredentialKind::Certificate | CredentialKind::Both)
    }

    /// The name the config and the docs use.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Password => "password",
            CredentialKind::Certificate => "certificate",
            CredentialKind::Both => "both",
        }
    }
}

/// The CA that signs client certificates, and how long a minted certificate is valid.
#[derive(Debug, Clone)]
pub struct Authority {
    pub ca: ClientCa,
    pub validity: Duration,
}

/// Everything certificate bindings need, already checked by the config: every plan that hands
/// out certificates has an authority and https endpoints on its cluster. `Default`: passwords
/// for every plan.
#[derive(Debug, Clone, Default)]
pub struct CertificateSetup {
    /// Plan id -> its credential kind; a plan not listed gets passwords.
    pub plans: HashMap<String, CredentialKind>,
    /// The CA; `None` when no plan hands out certificates.
    pub authority: Option<Authority>,
    /// Cluster name -> the https client URLs put into certificate credentials (the cluster's
    /// `certificate_endpoints`, else its public endpoints).
    pub endpoints: HashMap<String, Vec<Url>>,
}

impl CertificateSetup {
    /// The credential kind of `plan`.
    pub fn kind(&self, plan: &str) -> CredentialKind {
        self.plans.get(plan).copied().unwrap_or_default()
    }

    /// A key pair and client certificate for `user`, valid for the configured validity or
    /// `at_most`, whichever is shorter; an internal error when no CA is configured (the config
    /// refuses that) or OpenSSL fails.
    pub fn mint(&self, user: &str, at_most: Option<std::time::Duration>) -> BrokerResult<Minted> {
        let Some(authority) = &self.authority else {
            return Err(BrokerError::Internal(
                "the plan hands out client certificates, but the broker has no [certificates] CA".into(),
            ));
        };
        authority
            .ca
            .mint_client(user, at_most.map_or(authority.validity, |d| d.min(authority.validity)))
            .map_err(|e| BrokerError::Internal(format!("minting a client certificate failed: {e}")))
    }

    /// The https client URLs that take client certificates on `cluster`; `None` when it has
    /// none (a plan's cluster always has them, the config checks it; an instance of another
    /// plan may live on a cluster without).
    pub fn endpoints_of(&self, cluster: &str) -> Option<&[Url]> {
        let endpoints = self.endpoints.get(cluster)?;
        let https = !endpoints.is_empty() && endpoints.iter().all(|url| url.scheme() == "https");
        https.then_some(endpoints.as_slice())
    }

    /// The client CA's certificate (PEM); `None` without one. Credentials hand it out as the
    /// CA of etcd's server certificate when the cluster's config names none (one CA for both).
    pub fn ca_certificate(&self) -> Option<&str> {
        self.authority.as_ref().map(|a| a.ca.certificate_pem())
    }
}
