//! The ops crate's integration tests, one test binary (`cargo test -p etcd-broker-ops --test
//! it`): the `etcd-broker-ops` binary against real etcd, real brokers and fakes of BOSH and
//! Cloud Foundry. Fixtures stay in `ops/tests/fixtures` and `ops/tests/erb`.
//!
//! - `common`: the harness: a `dev` stack, an errand's properties.json
//! - `bench`, `blackbox`, `check_release`, `dev`, `registration`, `release_scripts`, `render`:
//!   one subcommand (or script) each

mod bench;
mod blackbox;
mod check_release;
mod common;
mod dev;
mod registration;
mod release_scripts;
mod render;
