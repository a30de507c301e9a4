//! etcd-broker: an Open Service Broker that hands out isolated, revocable etcd namespaces.
//!
//! - [`osb`]: the OSB domain (ids, catalog, requests/outcomes, errors, the broker trait); no
//!   actix-web or etcd-client in it.
//! - [`broker`]: the etcd-backed broker logic, as ordered idempotent steps on a [`store::Store`].
//! - [`store`]: the storage contract the broker needs (keys with CAS, users, roles).
//! - [`etcd`]: the real store on etcd-client (connection, batching, retries, endpoint
//!   health, error tables, timing policy); the only user of etcd-client.
//! - [`http`]: the thin actix-web layer; the only user of actix-web besides [`server`].
//! - [`config`]: TOML + environment configuration, parsed once into typed settings.
//! - [`tls`]: TLS material and the OpenSSL contexts of the OSB listener and the etcd client.
//! - [`credential_store`]: where a binding's secrets live outside its record (the trait;
//!   OpenBao KV v2 implements it in [`openbao`]).
//! - [`sealing`]: secrets sealed at rest: the keychain and the envelope format (OpenSSL).
//! - [`openbao`]: OpenBao/Vault over its HTTP API (the only user of reqwest): the client, its
//!   token (token file or AppRole, renewed), transit keys as a `sealing` key backend, KV v2
//!   as a [`credential_store`].
//! - [`pki`]: the client CA of certificate bindings and the certificates it mints (OpenSSL).
//! - [`render`]: BOSH-style rendering of the TOML config from job properties (handlebars).
//! - [`server`]: wiring config -> broker -> HTTP server.
//! - [`reseal`]: wiring config -> state cluster -> [`broker::reseal`], for `etcd-broker-ops
//!   reseal` (which may not use the store or `etcd` beyond its client API).
//! - [`reconcile`]: wiring config -> clusters -> [`broker::reconcile`], for `etcd-broker-ops
//!   reconcile`.
//! - [`metrics`]: the Prometheus registry; [`store::metered`] times etcd calls; [`inventory`]
//!   collects the instance, binding and role-queue gauges.
//! - [`activity`]: how busy the OSB API is; the role reaper ([`broker::role_reaper`]) deletes
//!   unbound bindings' roles in its pauses.
//! - [`logging`], [`clock`], [`secrets`]: small services.

pub mod activity;
pub mod broker;
pub mod clock;
pub mod config;
pub mod credential_store;
pub mod etcd;
pub mod http;
pub mod inventory;
pub mod logging;
pub mod metrics;
pub mod openbao;
pub mod osb;
pub mod pki;
pub mod reconcile;
pub mod render;
pub mod reseal;
pub mod sealing;
pub mod secrets;
pub mod server;
pub mod store;
pub mod tls;

/// The fuzz targets' settings (src/http/fuzz.rs, src/config/fuzz.rs, src/render/fuzz.rs,
/// src/sealing/fuzz.rs): a case budget each, so that `cargo test` runs them in a bounded time;
/// `PROPTEST_CASES` replaces every budget for a longer run by hand. Nothing is written to
/// `proptest-regressions/`: a failure found becomes a named regression test instead.
#[cfg(test)]
pub(crate) fn fuzz_config(cases: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(cases);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
