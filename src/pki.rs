//! The client CA of certificate bindings, and the key pairs and certificates it mints (OpenSSL
//! only; nothing else of the crate).
//!
//! etcd started with `--client-cert-auth --trusted-ca-file <this CA>` takes the common name of
//! a verified client certificate as the user name when a request carries no token, so a
//! certificate binding is an etcd user without a password plus a certificate whose CN is that
//! user: etcd hashes nothing (a password user costs a bcrypt hash on every UserAdd and every
//! Authenticate). Minting is local and cheap (one P-256 key pair, one ECDSA signature).
//!
//! Errors name what is wrong, never PEM text (OpenSSL's messages may quote their input, and a
//! key's PEM is a secret), and [`ClientCa`] never prints its key.

use std::fmt;
use std::time::Duration;

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};
use zeroize::Zeroizing;

/// How far a minted certificate's `notBefore` lies in the past, so that a client whose clock
/// is slightly behind the broker's accepts it at once.
const BACKDATE_SECONDS: i64 = 5 * 60;

/// Why a CA could not be loaded or a certificate not minted: what is wrong, never the PEM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PkiError(String);

fn fail(what: &'static str) -> impl Fn(openssl::error::ErrorStack) -> PkiError {
    move |_| PkiError(what.to_owned())
}

/// A certificate with its private key, as PEM text: what a certificate binding hands out.
pub struct Minted {
    /// The certificate (PEM); public.
    pub certificate: String,
    /// The private key (PKCS#8 PEM); secret, wiped when dropped.
    pub private_key: Zeroizing<String>,
}

impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minted").field("certificate", &self.certificate).finish_non_exhaustive()
    }
}

/// The CA that signs certificate bindings' client certificates, which the etcd clusters trust.
#[derive(Clone)]
pub struct ClientCa {
    certificate: X509,
    key: PKey<Private>,
    /// `certificate` as PEM, handed out as it was configured (chain and all).
    pem: String,
}

impl fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject = common_name(&self.certificate).unwrap_or_default();
        f.debug_struct("ClientCa").field("subject", &subject).finish_non_exhaustive()
    }
}

impl ClientCa {
    /// Loads a CA certificate and its private key (PEM): the key must belong to the
    /// certificate, and the certificate must be a CA that may sign certificates.
    pub fn from_pem(certificate: &[u8], key: &[u8]) -> Result<Self, PkiError> {
        let parsed =
            X509::from_pem(certificate).map_err(fail("the CA certificate is not a PEM certificate"))?;
        let key = PKey::private_key_from_pem(key).map_err(fail("the CA key is not a PEM private key"))?;
        if !parsed.public_key().map_err(fail("the CA certificate has no usable public key"))?.public_eq(&key)
        {
            return Err(PkiError("the CA key does not belong to the CA certificate".into()));
        }
        let pem = String::from_utf8(certificate.to_vec())
            .map_err(|_| PkiError("the CA certificate is not text".into()))?;
        Ok(Self { certificate: parsed, key, pem })
    }

    /// A fresh self-signed CA (P-256) valid for `validity`: for local stacks and tests, where
    /// nobody has a CA yet. Production CAs come from the operator (BOSH: a certificate
    /// variable with `is_ca: true`).
    pub fn generate(common_name: &str, validity: Duration) -> Result<Self, PkiError> {
        let key = p256_key()?;
        let mut builder = builder(common_name, &key, validity)?;
        let issuer = name(common_name)?;
        builder.set_issuer_name(&issuer).map_err(fail("cannot set the CA's issuer"))?;
        let ca_ext = BasicConstraints::new().critical().ca().build();
        builder
            .append_extension(ca_ext.map_err(fail("cannot mark the certificate as a CA"))?)
            .map_err(fail("cannot mark the certificate as a CA"))?;
        let usage = KeyUsage::new().critical().key_cert_sign().crl_sign().build();
        builder
            .append_extension(usage.map_err(fail("cannot set key usage"))?)
            .map_err(fail("cannot set key usage"))?;
        let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None));
        builder
            .append_extension(ski.map_err(fail("cannot set the key identifier"))?)
            .map_err(fail("cannot set the key identifier"))?;
        builder.sign(&key, MessageDigest::sha256()).map_err(fail("cannot sign the CA certificate"))?;
        let certificate = builder.build();
        let pem = pem_text(certificate.to_pem())?;
        Ok(Self { certificate, key, pem })
    }

    /// The CA certificate as PEM (what etcd's `--trusted-ca-file` holds).
    pub fn certificate_pem(&self) -> &str {
        &self.pem
    }

    /// The CA's private key as PKCS#8 PEM, for writing a generated CA to a file (local stacks).
    pub fn private_key_pem(&self) -> Result<Zeroizing<String>, PkiError> {
        let pem = self.key.private_key_to_pem_pkcs8().map_err(fail("cannot encode the CA key"))?;
        Ok(Zeroizing::new(String::from_utf8(pem).map_err(|_| PkiError("the CA key is not text".into()))?))
    }

    /// A fresh P-256 key pair and a client certificate for etcd user `user` (the CN), valid
    /// from a few minutes ago for `validity`, usable for TLS client authentication only.
    pub fn mint_client(&self, user: &str, validity: Duration) -> Result<Minted, PkiError> {
        self.mint(user, validity, Usage::Client)
    }

    /// A fresh P-256 key pair and a server certificate for `ip` (CN and IP SAN), for local etcd
    /// servers that tests and `xtask dev` start with client-certificate auth.
    pub fn mint_server(&self, ip: &str, validity: Duration) -> Result<Minted, PkiError> {
        self.mint(ip, validity, Usage::Server)
    }

    fn mint(&self, common_name: &str, validity: Duration, usage: Usage) -> Result<Minted, PkiError> {
        let key = p256_key()?;
        let mut builder = builder(common_name, &key, validity)?;
        builder.set_issuer_name(self.certificate.subject_name()).map_err(fail("cannot set the issuer"))?;
        let not_ca =
            BasicConstraints::new().critical().build().map_err(fail("cannot set basic constraints"))?;
        builder.append_extension(not_ca).map_err(fail("cannot set basic constraints"))?;
        let key_usage =
            KeyUsage::new().critical().digital_signature().build().map_err(fail("cannot set key usage"))?;
        builder.append_extension(key_usage).map_err(fail("cannot set key usage"))?;
        let mut extended = ExtendedKeyUsage::new();
        match usage {
            Usage::Client => extended.client_auth(),
            // etcd's own client connections (peers, gateways) reuse server certificates.
            Usage::Server => extended.server_auth().client_auth(),
        };
        let extended = extended.build().map_err(fail("cannot set extended key usage"))?;
        builder.append_extension(extended).map_err(fail("cannot set extended key usage"))?;
        if usage == Usage::Server {
            let san = SubjectAlternativeName::new()
                .ip(common_name)
                .build(&builder.x509v3_context(Some(&self.certificate), None))
                .map_err(fail("cannot set the server's IP address"))?;
            builder.append_extension(san).map_err(fail("cannot set the server's IP address"))?;
        }
        let aki = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&builder.x509v3_context(Some(&self.certificate), None))
            .map_err(fail("cannot set the authority key identifier"))?;
        builder.append_extension(aki).map_err(fail("cannot set the authority key identifier"))?;
        builder.sign(&self.key, MessageDigest::sha256()).map_err(fail("cannot sign the certificate"))?;
        let certificate = pem_text(builder.build().to_pem())?;
        let key_pem = Zeroizing::new(key.private_key_to_pem_pkcs8().map_err(fail("cannot encode the key"))?);
        let private_key = Zeroizing::new(
            std::str::from_utf8(&key_pem).map_err(|_| PkiError("the key is not text".into()))?.to_owned(),
        );
        Ok(Minted { certificate, private_key })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Usage {
    Client,
    Server,
}

/// A new P-256 key pair (the curve every TLS stack and etcd client supports).
fn p256_key() -> Result<PKey<Private>, PkiError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(fail("OpenSSL lacks P-256"))?;
    let key = EcKey::generate(&group).map_err(fail("cannot generate a key pair"))?;
    PKey::from_ec_key(key).map_err(fail("cannot generate a key pair"))
}

fn name(common_name: &str) -> Result<openssl::x509::X509Name, PkiError> {
    let mut name = X509NameBuilder::new().map_err(fail("cannot build a name"))?;
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)
        .map_err(|_| PkiError(format!("'{common_name}' cannot be a certificate's common name")))?;
    Ok(name.build())
}

/// A v3 certificate for `common_name` and `key` with a random 127-bit serial, valid from a few
/// minutes ago for `validity`; extensions, issuer and signature to follow.
fn builder(common_name: &str, key: &PKey<Private>, validity: Duration) -> Result<X509Builder, PkiError> {
    let mut b = X509Builder::new().map_err(fail("cannot build a certificate"))?;
    b.set_version(2).map_err(fail("cannot build a certificate"))?;
    let mut serial = BigNum::new().map_err(fail("cannot draw a serial number"))?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false).map_err(fail("cannot draw a serial number"))?;
    let serial: Asn1Integer = serial.to_asn1_integer().map_err(fail("cannot draw a serial number"))?;
    b.set_serial_number(&serial).map_err(fail("cannot draw a serial number"))?;
    let subject = name(common_name)?;
    b.set_subject_name(&subject).map_err(fail("cannot set the subject"))?;
    b.set_pubkey(key).map_err(fail("cannot set the public key"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| PkiError("the system clock is before 1970".into()))?
        .as_secs() as i64;
    let seconds =
        i64::try_from(validity.as_secs()).map_err(|_| PkiError("the validity is too long".into()))?;
    let not_before = Asn1Time::from_unix(now - BACKDATE_SECONDS).map_err(fail("cannot set the validity"))?;
    let not_after =
        Asn1Time::from_unix(now.saturating_add(seconds)).map_err(fail("cannot set the validity"))?;
    b.set_not_before(&not_before).map_err(fail("cannot set the validity"))?;
    b.set_not_after(&not_after).map_err(fail("cannot set the validity"))?;
    Ok(b)
}

fn pem_text(pem: Result<Vec<u8>, openssl::error::ErrorStack>) -> Result<String, PkiError> {
    let pem = pem.map_err(fail("cannot encode the certificate"))?;
    String::from_utf8(pem).map_err(|_| PkiError("the certificate is not text".into()))
}

fn common_name(certificate: &X509) -> Option<String> {
    let entry = certificate.subject_name().entries_by_nid(Nid::COMMONNAME).next()?;
    entry.data().to_string().ok()
}

/// The common name of a PEM certificate, for tests and tools that check what was minted.
pub fn certificate_common_name(pem: &str) -> Result<String, PkiError> {
    let certificate = X509::from_pem(pem.as_bytes()).map_err(fail("not a PEM certificate"))?;
    common_name(&certificate).ok_or_else(|| PkiError("the certificate has no common name".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::{X509StoreContext, X509VerifyResult};

    const DAY: Duration = Duration::from_secs(86_400);

    fn verifies(ca: &ClientCa, pem: &str) -> bool {
        let mut store = X509StoreBuilder::new().unwrap();
        store.add_cert(X509::from_pem(ca.certificate_pem().as_bytes()).unwrap()).unwrap();
        let store = store.build();
        let cert = X509::from_pem(pem.as_bytes()).unwrap();
        let chain = Stack::new().unwrap();
        let mut context = X509StoreContext::new().unwrap();
        context
            .init(&store, &cert, &chain, |c| Ok(c.verify_cert()? && c.error() == X509VerifyResult::OK))
            .unwrap()
    }

    #[test]
    fn a_minted_client_certificate_is_signed_by_the_ca_for_its_user() {
        let ca = ClientCa::generate("test CA", DAY).unwrap();
        let minted = ca.mint_client("etcd-broker.i1.b1", Duration::from_secs(3600)).unwrap();
        assert!(verifies(&ca, &minted.certificate));
        assert_eq!(certificate_common_name(&minted.certificate).unwrap(), "etcd-broker.i1.b1");
        let cert = X509::from_pem(minted.certificate.as_bytes()).unwrap();
        let key = PKey::private_key_from_pem(minted.private_key.as_bytes()).unwrap();
        assert!(cert.public_key().unwrap().public_eq(&key), "the key belongs to the certificate");
        let ec = key.ec_key().unwrap();
        assert_eq!(ec.group().curve_name(), Some(Nid::X9_62_PRIME256V1));
        // Valid now, for the hour asked (plus the back-dating), not a day.
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let in_59_minutes = Asn1Time::from_unix(now + 59 * 60).unwrap();
        let in_61_minutes = Asn1Time::from_unix(now + 61 * 60).unwrap();
        assert!(cert.not_before() < Asn1Time::days_from_now(0).unwrap());
        assert!(cert.not_after() > in_59_minutes && cert.not_after() < in_61_minutes);
    }

    #[test]
    fn another_ca_does_not_verify_it_and_two_mints_differ() {
        let ca = ClientCa::generate("test CA", DAY).unwrap();
        let other = ClientCa::generate("test CA", DAY).unwrap();
        let a = ca.mint_client("u", DAY).unwrap();
        let b = ca.mint_client("u", DAY).unwrap();
        assert!(!verifies(&other, &a.certificate));
        assert_ne!(a.certificate, b.certificate);
        assert_ne!(*a.private_key, *b.private_key);
    }

    #[test]
    fn a_ca_loads_with_its_own_key_only_and_never_prints_it() {
        let ca = ClientCa::generate("test CA", DAY).unwrap();
        let key = ca.private_key_pem().unwrap();
        let loaded = ClientCa::from_pem(ca.certificate_pem().as_bytes(), key.as_bytes()).unwrap();
        assert!(verifies(&ca, &loaded.mint_client("u", DAY).unwrap().certificate));
        let other = ClientCa::generate("other", DAY).unwrap().private_key_pem().unwrap();
        let refused = ClientCa::from_pem(ca.certificate_pem().as_bytes(), other.as_bytes()).unwrap_err();
        assert_eq!(refused.to_string(), "the CA key does not belong to the CA certificate");
        let garbage = ClientCa::from_pem(b"-----BEGIN CERTIFICATE-----\nxx", key.as_bytes()).unwrap_err();
        assert_eq!(garbage.to_string(), "the CA certificate is not a PEM certificate");
        let printed = format!("{loaded:?} {:?}", loaded.mint_client("u", DAY).unwrap());
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
        assert!(printed.contains("test CA"), "{printed}");
    }

    #[test]
    fn a_server_certificate_names_its_address() {
        let ca = ClientCa::generate("test CA", DAY).unwrap();
        let server = ca.mint_server("127.0.0.1", DAY).unwrap();
        assert!(verifies(&ca, &server.certificate));
        let cert = X509::from_pem(server.certificate.as_bytes()).unwrap();
        let ips: Vec<Vec<u8>> = cert
            .subject_alt_names()
            .unwrap()
            .iter()
            .filter_map(|n| n.ipaddress().map(<[u8]>::to_vec))
            .collect();
        assert_eq!(ips, vec![vec![127, 0, 0, 1]]);
    }
}
