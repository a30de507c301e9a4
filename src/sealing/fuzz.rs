//! Fuzz target: sealed-value parsing. A sealed value is read back from etcd, where anybody with
//! root could have written anything: `unseal`, `is_sealed` and `sealed_with` must answer every
//! text with a value or an error, never a panic, and `unseal` must never accept a value that is
//! not exactly one this keychain sealed for this record.

use base64::Engine;
use proptest::prelude::*;

use super::envelope::{is_sealed, seal, sealed_with, unseal};
use super::keychain::{Key, Keychain};

const RECORD: &str = "/etcd-broker/bindings/i1/b1";
const SECRET: &[u8] = b"the-binding-password";

fn keychain() -> Keychain {
    let text = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    Keychain::new("k1", [Key::from_text("k1", &text).unwrap()]).unwrap()
}

/// Texts near the format: a real sealed value with some of its characters replaced, removed or
/// inserted, its fields cut or repeated; and any text at all.
fn mutated(sealed: String) -> impl Strategy<Value = String> {
    let len = sealed.len();
    let edits = prop::collection::vec(
        (0..len, prop_oneof![Just(None), any::<char>().prop_map(Some)], 0..3usize),
        1..4,
    );
    prop_oneof![
        edits.prop_map({
            let sealed = sealed.clone();
            move |edits| {
                let mut chars: Vec<char> = sealed.chars().collect();
                for (at, with, how) in edits {
                    let at = at.min(chars.len().saturating_sub(1));
                    match (how, with) {
                        (0, Some(c)) if !chars.is_empty() => chars[at] = c,
                        (1, _) if !chars.is_empty() => {
                            chars.remove(at);
                        }
                        (_, Some(c)) => chars.insert(at, c),
                        _ => {}
                    }
                }
                chars.into_iter().collect()
            }
        }),
        (0..8usize, 0..8usize).prop_map({
            let sealed = sealed.clone();
            move |(keep, repeat)| {
                let fields: Vec<&str> = sealed.split(':').collect();
                let mut out: Vec<&str> = fields.iter().take(keep).copied().collect();
                out.extend(fields.iter().cycle().skip(keep).take(repeat));
                out.join(":")
            }
        }),
        "etcd-broker-sealed:[0-9a-z:+/=_-]{0,80}",
        any::<String>(),
    ]
}

#[test]
fn any_text_is_unsealed_or_refused_without_a_panic() {
    let chain = keychain();
    let sealed = seal(&chain, RECORD, SECRET).unwrap();
    assert_eq!(unseal(&chain, RECORD, &sealed).unwrap(), SECRET);
    let mut runner = proptest::test_runner::TestRunner::new(crate::fuzz_config(4000));
    runner
        .run(&mutated(sealed.clone()), |text| {
            let _ = is_sealed(&text);
            let _ = sealed_with(&text);
            match unseal(&chain, RECORD, &text) {
                // Only the value itself unseals: base64 has no second spelling of these bytes
                // (padded, no whitespace), and AES-GCM authenticates the rest.
                Ok(plain) => prop_assert!(text == sealed && plain == SECRET, "accepted {text:?}"),
                // The reason never quotes the secret.
                Err(e) => prop_assert!(!e.to_string().contains("the-binding-password")),
            }
            Ok(())
        })
        .unwrap();
}
