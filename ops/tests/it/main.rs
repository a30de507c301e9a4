//! The ops crate's integration tests, one test binary (`cargo test -p etcd-broker-ops --test
//! it`): the `etcd-broker-ops` binary against real etcd, real brokers and fakes of BOSH and
//! Cloud Foundry. Fixtures stay in `ops/tests/fixtures` and `ops/tests/erb`.
//!
//! - `common`: the harness: a `dev` stack (through xtask), an errand's properties.json
//! - `blackbox`, `check_release`, `reconcile`, `registration`, `release_scripts`, `render`, `reseal`,
//!   `sealing`: one subcommand (or script, or family: `keys` / `seal` / `unseal`) each
//! - `proxy`: the tenant proxy's BOSH job rendered into a config it starts with, `proxy-user`
//! - `render_bosh_int`: our go-patch and interpolation against the real `bosh int`
//! - `bosh_release`: docs/bosh.md's steps to a final release with the real bosh CLI, and
//!   `check release` against what that CLI refuses

mod blackbox;
mod bosh_release;
mod check_release;
mod common;
mod proxy;
mod reconcile;
mod registration;
mod release_scripts;
mod render;
mod render_bosh_int;
mod reseal;
mod sealing;
