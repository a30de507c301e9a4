//! TLS material as the config loads it (PEM text, read once), and the two OpenSSL contexts the
//! broker builds from it: the OSB listener's acceptor and the etcd client's connector.
//!
//! Both contexts take a certificate chain and its key the same way (`use_identity`), so the
//! listener and the etcd client cannot drift apart in how they check them. Errors name what is
//! wrong, never the PEM text (a key's PEM is a secret).

use std::fmt;

use openssl::pkey::PKey;
use openssl::ssl::{
    SslAcceptor, SslAcceptorBuilder, SslConnector, SslConnectorBuilder, SslContextBuilder, SslMethod,
};
use openssl::x509::X509;

/// A certificate (with any chain certificates after it) and its private key, as PEM text.
#[derive(Clone)]
pub struct Identity {
    pub certificate: Vec<u8>,
    /// Secret: never printed.
    pub private_key: Vec<u8>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("certificate", &self.certificate.len()).finish_non_exhaustive()
    }
}

/// What a TLS client needs: the CAs that verify the server (the system's when absent) and a
/// client certificate to present, if any.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// CA certificates as PEM text.
    pub ca: Option<Vec<u8>>,
    pub identity: Option<Identity>,
}

/// Why a TLS context could not be built: what is wrong, never the PEM text.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(&'static str);

/// Maps OpenSSL's error (which may quote its input) to a fixed message.
fn fail(what: &'static str) -> impl Fn(openssl::error::ErrorStack) -> TlsError {
    move |_| TlsError(what)
}

/// The HTTPS settings of a listener: Mozilla's "intermediate" profile and `identity`.
pub fn acceptor(identity: &Identity) -> Result<SslAcceptorBuilder, TlsError> {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
        .map_err(fail("OpenSSL cannot set up TLS"))?;
    use_identity(&mut builder, identity)?;
    Ok(builder)
}

/// The settings of a gRPC client: HTTP/2 by ALPN (gRPC needs it), the CAs, the identity.
pub fn connector(tls: &ClientTls) -> Result<SslConnectorBuilder, TlsError> {
    let mut builder =
        SslConnector::builder(SslMethod::tls_client()).map_err(fail("OpenSSL cannot set up TLS"))?;
    builder.set_alpn_protos(b"\x02h2").map_err(fail("OpenSSL refuses ALPN h2"))?;
    if let Some(ca) = &tls.ca {
        let certificates = X509::stack_from_pem(ca).map_err(fail("the CA is not PEM"))?;
        if certificates.is_empty() {
            // Otherwise the system's CAs would verify etcd, which is not what was configured.
            return Err(TlsError("the CA PEM holds no certificate"));
        }
        for certificate in certificates {
            builder.cert_store_mut().add_cert(certificate).map_err(fail("OpenSSL refuses the CA"))?;
        }
    }
    if let Some(identity) = &tls.identity {
        use_identity(&mut builder, identity)?;
    }
    Ok(builder)
}

/// Presents `identity`: the first certificate of its PEM, the others as its chain, and the key,
/// which must belong to the first certificate.
fn use_identity(builder: &mut SslContextBuilder, identity: &Identity) -> Result<(), TlsError> {
    let chain = X509::stack_from_pem(&identity.certificate).map_err(fail("the certificate is not PEM"))?;
    let (leaf, intermediates) =
        chain.split_first().ok_or(TlsError("the certificate PEM holds no certificate"))?;
    builder.set_certificate(leaf).map_err(fail("OpenSSL refuses the certificate"))?;
    for certificate in intermediates {
        builder
            .add_extra_chain_cert(certificate.clone())
            .map_err(fail("OpenSSL refuses a chain certificate"))?;
    }
    let key = PKey::private_key_from_pem(&identity.private_key)
        .map_err(fail("the private key is not a PEM private key"))?;
    builder.set_private_key(&key).map_err(fail("the private key does not belong to the certificate"))?;
    builder.check_private_key().map_err(fail("the private key does not belong to the certificate"))
}

#[cfg(test)]
mod tests {
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::x509::X509Name;

    use super::*;

    /// The error of a context that must not build.
    fn refusal<T>(built: Result<T, TlsError>) -> String {
        match built {
            Ok(_) => panic!("OpenSSL accepted it"),
            Err(e) => e.to_string(),
        }
    }

    /// A self-signed certificate and its key, as PEM.
    fn self_signed(name: &str) -> Identity {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut subject = X509Name::builder().unwrap();
        subject.append_entry_by_nid(Nid::COMMONNAME, name).unwrap();
        let subject = subject.build();
        let mut certificate = X509::builder().unwrap();
        certificate.set_version(2).unwrap();
        certificate.set_subject_name(&subject).unwrap();
        certificate.set_issuer_name(&subject).unwrap();
        certificate.set_pubkey(&key).unwrap();
        certificate.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        certificate.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
        certificate.sign(&key, MessageDigest::sha256()).unwrap();
        Identity {
            certificate: certificate.build().to_pem().unwrap(),
            private_key: key.private_key_to_pem_pkcs8().unwrap(),
        }
    }

    #[test]
    fn both_contexts_take_a_matching_identity() {
        let identity = self_signed("broker");
        assert!(acceptor(&identity).is_ok());
        let client = ClientTls { ca: Some(identity.certificate.clone()), identity: Some(identity) };
        assert!(connector(&client).is_ok());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_by_both_without_printing_it() {
        let (one, other) = (self_signed("one"), self_signed("other"));
        let mismatched = Identity { certificate: one.certificate, private_key: other.private_key.clone() };
        let error = refusal(acceptor(&mismatched));
        assert_eq!(error, "the private key does not belong to the certificate");
        let client = ClientTls { ca: None, identity: Some(mismatched.clone()) };
        assert_eq!(refusal(connector(&client)), error);
        assert!(!format!("{mismatched:?}").contains("PRIVATE"), "{mismatched:?}");
    }

    #[test]
    fn text_without_a_certificate_is_named() {
        let garbage = Identity { certificate: b"nope".to_vec(), private_key: b"hunter2".to_vec() };
        assert_eq!(refusal(acceptor(&garbage)), "the certificate PEM holds no certificate");
        let ca = ClientTls { ca: Some(b"nope".to_vec()), identity: None };
        assert_eq!(refusal(connector(&ca)), "the CA PEM holds no certificate");
    }
}
