//! Validated platform ids.
//!
//! Instance and binding ids arrive from the platform in URL paths and become parts of etcd keys
//! and etcd user/role names, so they are checked once, here, before anything else sees them.
//! The rule (documented in `docs/api.md`): 1 to 64 characters from `A-Z a-z 0-9 _ -`, starting with a
//! letter or digit. That admits every GUID and excludes `/`, `.`, spaces and anything that could
//! escape a key prefix or a name.

use std::fmt;

/// Longest id accepted; GUIDs have 36 characters.
pub const MAX_ID_LEN: usize = 64;

/// Why an id was refused, for a 400 description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id: {reason} (ids are 1 to {MAX_ID_LEN} characters from A-Z, a-z, 0-9, '_' and '-', starting with a letter or digit)")]
pub struct InvalidId {
    /// "instance" or "binding".
    pub kind: &'static str,
    /// What exactly is wrong.
    pub reason: String,
}

fn validate(kind: &'static str, raw: &str) -> Result<(), InvalidId> {
    let fail = |reason: String| Err(InvalidId { kind, reason });
    if raw.is_empty() {
        return fail("it is empty".into());
    }
    if raw.chars().count() > MAX_ID_LEN {
        return fail(format!("it has {} characters", raw.chars().count()));
    }
    if let Some(bad) = raw.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return fail(format!("it contains {bad:?}"));
    }
    if !raw.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return fail("it must start with a letter or digit".into());
    }
    Ok(())
}

macro_rules! id_type {
    ($name:ident, $kind:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Checks `raw` against the id rule.
            pub fn parse(raw: &str) -> Result<Self, InvalidId> {
                validate($kind, raw).map(|()| Self(raw.to_owned()))
            }

            /// The id as the platform sent it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(InstanceId, "instance", "A service instance id that is safe to use in keys and names.");
id_type!(BindingId, "binding", "A service binding id that is safe to use in keys and names.");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_guids_and_simple_names() {
        for ok in ["6f1b5a2e-7c1d-4f8e-9a3b-2d4c6e8f0a1b", "abc", "a", "A_b-9", &"x".repeat(64)] {
            assert_eq!(InstanceId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_what_could_escape_a_prefix_or_name() {
        for bad in ["", "a/b", "..", ".", "a.b", "a b", "ünï", "-abc", "_abc", "a:b", "a\0", &"x".repeat(65)]
        {
            let err = BindingId::parse(bad).unwrap_err();
            assert_eq!(err.kind, "binding");
            assert!(err.to_string().contains("invalid binding id"), "{err}");
        }
    }
}
