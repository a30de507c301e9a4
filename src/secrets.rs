//! Random secrets for bindings, from OpenSSL's CSPRNG.

use std::fmt::Write;

/// Bytes of entropy in a binding password (160 bits, above the 128-bit floor).
pub const PASSWORD_BYTES: usize = 20;

/// A fresh password: 40 lowercase hex characters, safe in URIs, shells and etcdctl.
///
/// Panics only if OpenSSL's CSPRNG cannot be seeded, in which case no safe secret can exist.
pub fn random_password() -> String {
    let mut bytes = [0u8; PASSWORD_BYTES];
    openssl::rand::rand_bytes(&mut bytes).expect("OpenSSL's random generator failed");
    bytes.iter().fold(String::with_capacity(2 * PASSWORD_BYTES), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_long_hex_and_differ() {
        let (a, b) = (super::random_password(), super::random_password());
        assert_eq!(a.len(), 40);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
