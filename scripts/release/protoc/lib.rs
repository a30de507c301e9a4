//! Empty: this crate exists only to be vendored (see Cargo.toml).
